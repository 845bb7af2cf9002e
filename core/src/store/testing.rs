//! Fresh databases for tests: a SQLite file in a temporary directory, or a new
//! PostgreSQL database on the server named by `COUNTERSIGN_TEST_PG_URL`
//! (default: the local server, user postgres). An unreachable PostgreSQL
//! fails the test: a test never passes without the store it names.
//! `scripts/test` leaves the PostgreSQL half out, and says so, when no
//! server answers outside CI.

use sqlx::Connection;

pub const DEFAULT_PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestDb {
    pub url: String,
    dir: Option<std::path::PathBuf>,
    pg: Option<(String, String)>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!("countersign-test-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TestDb {
            url: format!("sqlite://{}/test.db", dir.display()),
            dir: Some(dir),
            pg: None,
        }
    }

    /// A new, empty PostgreSQL database.
    pub async fn postgres() -> TestDb {
        let admin = std::env::var("COUNTERSIGN_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_ADMIN_URL.into());
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => panic!(
                "PostgreSQL is unreachable at {admin} ({e}): start it, or run scripts/test, \
                 which leaves the PostgreSQL tests out (reported as skipped) when no server answers"
            ),
        };
        let name = format!("cs_test_{}", ulid::Ulid::new().to_string().to_lowercase());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let _ = conn.close().await;
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(admin.clone());
        TestDb {
            url: format!("{base}/{name}"),
            dir: None,
            pg: Some((admin, name)),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs inside the test's runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    return;
                };
                rt.block_on(async move {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut c)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Generate one `#[tokio::test]` per store for each listed async fn taking a
/// `&TestDb`: `store_tests!(fn_a, fn_b);` makes `sqlite::fn_a`,
/// `postgres::fn_a`, ….
#[macro_export]
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::testing::TestDb::sqlite().await;
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::testing::TestDb::postgres().await;
                    super::$name(&db).await;
                }
            )*
        }
    };
}
