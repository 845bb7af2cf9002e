use crate::error::Result;
use crate::roles::{Role, Roles};
use crate::store::on;
use crate::store::Conn;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub disabled: bool,
    pub sessions_valid_after: i64,
    pub created_at: i64,
}

const USER_COLUMNS: &str = "id, username, password_hash, disabled, sessions_valid_after, created_at";

/// The last change to whether, and where, a person may review.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReviewChange {
    pub user_id: String,
    pub at: i64,
    pub by: String,
    /// `added`, `access changed`, `password reset`, `re-enabled`.
    pub what: String,
}

pub async fn mark_review_change(conn: &mut Conn<'_>, c: &ReviewChange) -> Result<()> {
    on!(conn, cn => {
        sqlx::query("UPDATE users SET review_changed_at = $1, review_changed_by = $2, review_change = $3 WHERE id = $4")
            .bind(c.at).bind(&c.by).bind(&c.what).bind(&c.user_id).execute(&mut **cn).await?;
    });
    Ok(())
}

/// The review changes of these people made at or after `since`.
pub async fn review_changes_since(conn: &mut Conn<'_>, ids: &[String], since: i64) -> Result<Vec<ReviewChange>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(on!(conn, c => {
        let mut qb = sqlx::QueryBuilder::new(
            "SELECT id AS user_id, review_changed_at AS at, review_changed_by AS by, review_change AS what FROM users \
             WHERE review_changed_at IS NOT NULL AND review_changed_at >= ");
        qb.push_bind(since);
        qb.push(" AND id IN (");
        let mut sep = qb.separated(", ");
        for id in ids {
            sep.push_bind(id.clone());
        }
        sep.push_unseparated(")");
        qb.build_query_as::<ReviewChange>().fetch_all(&mut **c).await?
    }))
}

pub async fn insert_user(conn: &mut Conn<'_>, u: &UserRow) -> Result<()> {
    let sql = format!("INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)");
    on!(conn, c => {
        sqlx::query(&sql)
            .bind(&u.id).bind(&u.username).bind(&u.password_hash)
            .bind(u.disabled).bind(u.sessions_valid_after).bind(u.created_at)
            .execute(&mut **c).await?;
    });
    Ok(())
}

pub async fn by_name(conn: &mut Conn<'_>, username: &str) -> Result<Option<UserRow>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
    Ok(on!(conn, c => sqlx::query_as::<_, UserRow>(&sql).bind(username).fetch_optional(&mut **c).await?))
}

pub async fn by_id(conn: &mut Conn<'_>, id: &str) -> Result<Option<UserRow>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    Ok(on!(conn, c => sqlx::query_as::<_, UserRow>(&sql).bind(id).fetch_optional(&mut **c).await?))
}

pub async fn all(conn: &mut Conn<'_>) -> Result<Vec<UserRow>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY username");
    Ok(on!(conn, c => sqlx::query_as::<_, UserRow>(&sql).fetch_all(&mut **c).await?))
}

/// A person's roles and tenants, in one statement.
pub async fn access_of(conn: &mut Conn<'_>, user_id: &str) -> Result<(Roles, Vec<String>)> {
    let rows = on!(conn, c => sqlx::query_as::<_, (bool, String)>(
        "SELECT TRUE, role FROM user_roles WHERE user_id = $1 \
         UNION ALL SELECT FALSE, tenant FROM user_tenants WHERE user_id = $1 ORDER BY 1, 2")
        .bind(user_id).fetch_all(&mut **c).await?);
    let mut roles = Roles::default();
    let mut tenants = Vec::new();
    for (is_role, v) in rows {
        match (is_role, Role::parse(&v)) {
            (true, Some(r)) => roles.grant(r),
            (true, None) => {}
            (false, _) => tenants.push(v),
        }
    }
    Ok((roles, tenants))
}

pub async fn set_tenants(conn: &mut Conn<'_>, user_id: &str, tenants: &[String]) -> Result<()> {
    on!(conn, c => {
        sqlx::query("DELETE FROM user_tenants WHERE user_id = $1").bind(user_id).execute(&mut **c).await?;
        for t in tenants {
            sqlx::query("INSERT INTO user_tenants (user_id, tenant) VALUES ($1, $2)")
                .bind(user_id).bind(t).execute(&mut **c).await?;
        }
    });
    Ok(())
}

pub async fn set_roles(conn: &mut Conn<'_>, user_id: &str, roles: &Roles) -> Result<()> {
    on!(conn, c => {
        sqlx::query("DELETE FROM user_roles WHERE user_id = $1").bind(user_id).execute(&mut **c).await?;
        for r in roles.list() {
            sqlx::query("INSERT INTO user_roles (user_id, role) VALUES ($1, $2)")
                .bind(user_id).bind(r).execute(&mut **c).await?;
        }
    });
    Ok(())
}

/// Everyone holding `role`, by id.
pub async fn ids_with_role(conn: &mut Conn<'_>, role: Role) -> Result<Vec<String>> {
    Ok(
        on!(conn, c => sqlx::query_scalar::<_, String>("SELECT user_id FROM user_roles WHERE role = $1")
        .bind(role).fetch_all(&mut **c).await?),
    )
}

/// Active users holding `role` in `tenant`, by name.
pub async fn with_role_in_tenant(conn: &mut Conn<'_>, role: Role, tenant: &str) -> Result<Vec<UserRow>> {
    let sql = format!(
        "SELECT {} FROM users u JOIN user_tenants t ON t.user_id = u.id JOIN user_roles r ON r.user_id = u.id \
         WHERE t.tenant = $1 AND r.role = $2 AND u.disabled = FALSE ORDER BY u.username",
        USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(on!(conn, c => sqlx::query_as::<_, UserRow>(&sql).bind(tenant).bind(role).fetch_all(&mut **c).await?))
}

pub async fn set_disabled(conn: &mut Conn<'_>, id: &str, disabled: bool, now: i64) -> Result<bool> {
    let n = on!(conn, c => sqlx::query(
        "UPDATE users SET disabled = $1, sessions_valid_after = $2 WHERE id = $3")
        .bind(disabled).bind(now).bind(id).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

pub async fn set_password(conn: &mut Conn<'_>, id: &str, hash: &str, now: i64) -> Result<bool> {
    let n = on!(conn, c => sqlx::query(
        "UPDATE users SET password_hash = $1, sessions_valid_after = $2 WHERE id = $3")
        .bind(hash).bind(now).bind(id).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

pub async fn count(conn: &mut Conn<'_>) -> Result<i64> {
    Ok(on!(conn, c => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users").fetch_one(&mut **c).await?))
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ThrottleRow {
    pub key: String,
    pub failures: i64,
    pub first_failure_at: i64,
    pub blocked_until: i64,
}

pub async fn throttle(conn: &mut Conn<'_>, key: &str) -> Result<Option<ThrottleRow>> {
    Ok(on!(conn, c => sqlx::query_as::<_, ThrottleRow>(
        "SELECT key, failures, first_failure_at, blocked_until FROM login_throttle WHERE key = $1")
        .bind(key).fetch_optional(&mut **c).await?))
}

pub async fn put_throttle(conn: &mut Conn<'_>, t: &ThrottleRow) -> Result<()> {
    on!(conn, c => {
        sqlx::query(
            "INSERT INTO login_throttle (key, failures, first_failure_at, blocked_until) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, \
             first_failure_at = excluded.first_failure_at, blocked_until = excluded.blocked_until")
            .bind(&t.key).bind(t.failures).bind(t.first_failure_at).bind(t.blocked_until)
            .execute(&mut **c).await?;
    });
    Ok(())
}

/// Delete up to 1,000 throttle records that started before `window_start`
/// and block nothing at `now`; answers how many.
pub async fn forget_throttles(conn: &mut Conn<'_>, window_start: i64, now: i64) -> Result<usize> {
    let n = on!(conn, c => sqlx::query(
        "DELETE FROM login_throttle WHERE key IN (SELECT key FROM login_throttle \
         WHERE first_failure_at < $1 AND blocked_until <= $2 LIMIT 1000)")
        .bind(window_start).bind(now).execute(&mut **c).await?.rows_affected());
    Ok(n as usize)
}

pub async fn clear_throttle(conn: &mut Conn<'_>, key: &str) -> Result<()> {
    on!(conn, c => {
        sqlx::query("DELETE FROM login_throttle WHERE key = $1").bind(key).execute(&mut **c).await?;
    });
    Ok(())
}
