//! The two migration sets must describe one schema: the same tables, columns,
//! types, nullability and indexes. Each database is migrated fresh and read
//! back from its own catalogue, so a column added to one set only, or an index
//! forgotten on one side, fails here rather than in production.

use super::testing::TestDb;
use super::{Conn, Store, StoreOptions};
use std::collections::BTreeMap;

/// (type, nullable) of each column, by table and column name.
type Columns = BTreeMap<String, BTreeMap<String, (String, bool)>>;

/// An index we created (not one backing a key): its table, columns, whether
/// it is unique and whether it is partial.
#[derive(Debug, PartialEq, Eq)]
struct Index {
    table: String,
    columns: Vec<String>,
    unique: bool,
    partial: bool,
}

fn normal_type(t: &str) -> String {
    match t.to_ascii_lowercase().as_str() {
        "text" => "text",
        "integer" | "bigint" | "smallint" => "integer",
        "real" | "double precision" => "real",
        "boolean" => "boolean",
        other => return other.to_owned(),
    }
    .to_owned()
}

/// The column list of `CREATE [UNIQUE] INDEX … ON t [USING m] (a, b) [WHERE …]`.
fn index_columns(sql: &str) -> Vec<String> {
    let start = sql.find('(').map_or(sql.len(), |i| i + 1);
    let end = sql[start..].find(')').map_or(sql.len(), |i| start + i);
    sql[start..end]
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_owned())
        .filter(|c| !c.is_empty())
        .collect()
}

fn describe_index(table: String, sql: &str) -> Index {
    Index {
        table,
        columns: index_columns(sql),
        unique: sql.to_ascii_uppercase().starts_with("CREATE UNIQUE"),
        partial: sql.to_ascii_uppercase().contains(" WHERE "),
    }
}

async fn sqlite_schema(conn: &mut Conn<'_>) -> (Columns, BTreeMap<String, Index>) {
    let Conn::Sqlite(c) = conn else {
        unreachable!("a SQLite connection")
    };
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
    )
    .fetch_all(&mut **c)
    .await
    .unwrap();
    let mut columns = Columns::new();
    for t in &tables {
        let rows: Vec<(String, String, bool, i64)> = sqlx::query_as(&format!(
            // `table_xinfo`, not `table_info`: generated columns too (hidden 2
            // or 3), as PostgreSQL's catalogue lists them.
            "SELECT name, type, \"notnull\", pk FROM pragma_table_xinfo('{t}') WHERE hidden <> 1"
        ))
        .fetch_all(&mut **c)
        .await
        .unwrap();
        columns.insert(
            t.clone(),
            rows.into_iter()
                .map(|(name, ty, notnull, pk)| (name, (normal_type(&ty), !notnull && pk == 0)))
                .collect(),
        );
    }
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
            .fetch_all(&mut **c)
            .await
            .unwrap();
    let indexes = rows
        .into_iter()
        .map(|(name, table, sql)| (name, describe_index(table, &sql)))
        .collect();
    (columns, indexes)
}

async fn postgres_schema(conn: &mut Conn<'_>) -> (Columns, BTreeMap<String, Index>) {
    let Conn::Postgres(c) = conn else {
        unreachable!("a PostgreSQL connection")
    };
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&mut **c)
    .await
    .unwrap();
    let mut columns = Columns::new();
    for (table, name, ty, nullable) in rows {
        columns
            .entry(table)
            .or_default()
            .insert(name, (normal_type(&ty), nullable == "YES"));
    }
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT i.indexname::text, i.tablename::text, i.indexdef::text FROM pg_indexes i WHERE i.schemaname = 'public' \
         AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conname = i.indexname)",
    )
    .fetch_all(&mut **c)
    .await
    .unwrap();
    let indexes = rows
        .into_iter()
        .map(|(name, table, sql)| (name, describe_index(table, &sql)))
        .collect();
    (columns, indexes)
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_migration_sets_make_the_same_schema() {
        let lite_db = TestDb::sqlite().await;
        let pg_db = TestDb::postgres().await;
        let lite = Store::open(StoreOptions::new(lite_db.url.clone())).await.unwrap();
        let pg = Store::open(StoreOptions::new(pg_db.url.clone())).await.unwrap();
        let (lite_columns, lite_indexes) = sqlite_schema(&mut lite.reader().await.unwrap().conn()).await;
        let (pg_columns, pg_indexes) = postgres_schema(&mut pg.reader().await.unwrap().conn()).await;
        assert!(lite_columns.contains_key("proposals") && lite_indexes.contains_key("proposals_pending"));
        assert_eq!(
            lite_columns.keys().collect::<Vec<_>>(),
            pg_columns.keys().collect::<Vec<_>>(),
            "the same tables"
        );
        for (table, cols) in &lite_columns {
            assert_eq!(
                cols, &pg_columns[table],
                "columns of {table}: SQLite (left), PostgreSQL (right)"
            );
        }
        assert_eq!(lite_indexes, pg_indexes, "indexes: SQLite (left), PostgreSQL (right)");
    }
}

#[test]
fn index_definitions_are_read_alike_from_both_catalogues() {
    let lite = describe_index(
        "jobs".into(),
        "CREATE INDEX jobs_claimable ON jobs (env, available_at, id) WHERE state = 'queued'",
    );
    let pg = describe_index(
        "jobs".into(),
        "CREATE INDEX jobs_claimable ON public.jobs USING btree (env, available_at, id) WHERE (state = 'queued'::text)",
    );
    assert_eq!(lite, pg);
    assert_eq!(lite.columns, ["env", "available_at", "id"]);
    assert!(lite.partial && !lite.unique);
}
