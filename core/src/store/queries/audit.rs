use crate::audit::AuditEvent;
use crate::error::Result;
use crate::store::on;
use crate::store::Conn;
use sqlx::Row;

const EVENT_COLUMNS: &str = "seq, id, at_ms, request_id, tenant, actor, action, subject, tool, args_hash, \
     idempotency_key, credential_scope, approval_ids, result_status, duration_ms, details, prev_hash, hash";

/// Move the chain's head (the one row of `audit_head`).
const SET_HEAD_SQL: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";

/// SQLite: the end of a write transaction in one hand-off, as
/// `append_and_notify` is one round trip on PostgreSQL: its events inserted
/// (the one-row insert, prepared once and run for each), the head moved to
/// `head` if it moved, and the commit, run on this thread through the raw
/// connection (`on_sqlite_directly`). An error leaves the transaction open,
/// for the caller to roll back.
pub async fn append_and_commit_sqlite(
    c: &mut sqlx::SqliteConnection,
    events: &[AuditEvent],
    head: Option<(i64, &str)>,
) -> Result<()> {
    static INSERT_ONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let n = EVENT_COLUMNS.split(',').count();
        let params: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
        format!(
            "INSERT INTO audit_events ({EVENT_COLUMNS}) VALUES ({})",
            params.join(", ")
        )
    });
    super::on_sqlite_directly(c, |conn| {
        if !events.is_empty() {
            let mut insert = conn.prepare(&INSERT_ONE)?;
            for e in events {
                // In `EVENT_COLUMNS` order.
                insert.execute(rusqlite::params![
                    e.seq,
                    e.id,
                    e.at_ms,
                    e.request_id,
                    e.tenant,
                    e.actor,
                    e.action,
                    e.subject,
                    e.tool,
                    e.args_hash,
                    e.idempotency_key,
                    e.credential_scope,
                    e.approval_ids,
                    e.result_status,
                    e.duration_ms,
                    e.details,
                    e.prev_hash,
                    e.hash,
                ])?;
            }
        }
        if let Some((seq, hash)) = head {
            conn.execute(SET_HEAD_SQL, rusqlite::params![seq, hash])?;
        }
        conn.execute_batch("COMMIT")
    })
    .await
}

/// Begin a write transaction and read the chain head (locked for the
/// transaction on PostgreSQL), in one call to the database: on SQLite on
/// the writer's thread (`on_sqlite_directly`), on PostgreSQL one round trip.
pub async fn begin_and_head(conn: &mut Conn<'_>) -> Result<(i64, String)> {
    const HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
    let begin = conn.dialect().begin_write();
    match conn {
        Conn::Sqlite(c) => {
            super::on_sqlite_directly(c, |db| {
                db.execute_batch(begin)?;
                db.query_row(HEAD, [], |r| Ok((r.get(0)?, r.get(1)?)))
            })
            .await
        }
        Conn::Postgres(c) => {
            let sql = format!("{begin}; {HEAD}{}", crate::store::Backend::Postgres.lock_rows());
            let row = sqlx::raw_sql(&sql).fetch_one(&mut **c).await?;
            Ok((row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?))
        }
    }
}

/// PostgreSQL: the end of a write transaction in one statement, one round
/// trip: its events inserted (one statement text whatever their number, so
/// it is prepared once), the head moved to `seq`/`hash`, and the notices'
/// payloads sent on the channel (delivered when the transaction commits).
pub async fn append_and_notify(
    conn: &mut Conn<'_>,
    events: &[AuditEvent],
    seq: i64,
    hash: &str,
    payloads: &[String],
) -> Result<()> {
    // The arrays are bound below in `EVENT_COLUMNS` order.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH ev AS (INSERT INTO audit_events ({EVENT_COLUMNS}) SELECT * FROM UNNEST($1::BIGINT[], \
             $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], \
             $10::TEXT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], $14::TEXT[], $15::BIGINT[], $16::TEXT[], \
             $17::TEXT[], $18::TEXT[])), \
             head AS (UPDATE audit_head SET seq = $19, hash = $20 WHERE id = 1 AND seq <> $19) \
             SELECT pg_notify($21, p)::TEXT FROM UNNEST($22::TEXT[]) AS p"
        )
    });
    fn col<T: Clone>(events: &[AuditEvent], f: impl Fn(&AuditEvent) -> &T) -> Vec<T> {
        events.iter().map(|e| f(e).clone()).collect()
    }
    // Arrays bound as parameters are PostgreSQL's.
    let Conn::Postgres(c) = conn else {
        return Err(crate::error::Error::internal("append_and_notify is for PostgreSQL"));
    };
    sqlx::query(SQL.as_str())
        .bind(col(events, |e| &e.seq))
        .bind(col(events, |e| &e.id))
        .bind(col(events, |e| &e.at_ms))
        .bind(col(events, |e| &e.request_id))
        .bind(col(events, |e| &e.tenant))
        .bind(col(events, |e| &e.actor))
        .bind(col(events, |e| &e.action))
        .bind(col(events, |e| &e.subject))
        .bind(col(events, |e| &e.tool))
        .bind(col(events, |e| &e.args_hash))
        .bind(col(events, |e| &e.idempotency_key))
        .bind(col(events, |e| &e.credential_scope))
        .bind(col(events, |e| &e.approval_ids))
        .bind(col(events, |e| &e.result_status))
        .bind(col(events, |e| &e.duration_ms))
        .bind(col(events, |e| &e.details))
        .bind(col(events, |e| &e.prev_hash))
        .bind(col(events, |e| &e.hash))
        .bind(seq)
        .bind(hash)
        .bind(crate::store::NOTICE_CHANNEL)
        .bind(payloads)
        .execute(&mut **c)
        .await?;
    Ok(())
}

pub async fn head(conn: &mut Conn<'_>) -> Result<(i64, String)> {
    Ok(
        on!(conn, c => sqlx::query_as::<_, (i64, String)>("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut **c).await?),
    )
}

/// Events with `seq > after`, in order, at most `limit`.
pub async fn events_after(conn: &mut Conn<'_>, after: i64, limit: i64) -> Result<Vec<AuditEvent>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2");
    Ok(on!(conn, c => sqlx::query_as::<_, AuditEvent>(&sql).bind(after).bind(limit).fetch_all(&mut **c).await?))
}

/// Filters for browsing the log; `tenants` None means all.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub tenants: Option<Vec<String>>,
    /// With `tenants`: also the events of no tenant (policy loads, people,
    /// keys, break-glass), which concern everyone.
    pub untenanted: bool,
    pub since_ms: Option<i64>,
    /// Page backwards from this seq (exclusive).
    pub before_seq: Option<i64>,
    pub subject: Option<String>,
}

/// Newest first, one page.
pub async fn events_page(conn: &mut Conn<'_>, f: &EventFilter, limit: i64) -> Result<Vec<AuditEvent>> {
    if f.tenants.as_ref().is_some_and(|t| t.is_empty()) {
        return Ok(Vec::new());
    }
    Ok(on!(conn, c => {
        let mut qb = sqlx::QueryBuilder::new(format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq < "));
        qb.push_bind(f.before_seq.unwrap_or(i64::MAX));
        if let Some(since) = f.since_ms {
            qb.push(" AND at_ms >= ").push_bind(since);
        }
        if let Some(s) = &f.subject {
            qb.push(" AND subject = ").push_bind(s.clone());
        }
        if let Some(ts) = &f.tenants {
            qb.push(" AND (tenant IN (");
            let mut sep = qb.separated(", ");
            for t in ts {
                sep.push_bind(t.clone());
            }
            sep.push_unseparated(")");
            if f.untenanted {
                qb.push(" OR tenant IS NULL");
            }
            qb.push(")");
        }
        qb.push(" ORDER BY seq DESC LIMIT ").push_bind(limit);
        qb.build_query_as::<AuditEvent>().fetch_all(&mut **c).await?
    }))
}
