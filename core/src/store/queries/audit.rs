use crate::audit::AuditEvent;
use crate::error::Result;
use crate::store::on;
use crate::store::Conn;

const EVENT_COLUMNS: &str = "seq, id, at_ms, request_id, tenant, actor, action, subject, tool, args_hash, \
     idempotency_key, credential_scope, approval_ids, result_status, duration_ms, details, prev_hash, hash";

/// Insert many events in as few statements as the databases allow.
pub async fn insert_events(conn: &mut Conn<'_>, events: &[AuditEvent]) -> Result<()> {
    // 18 columns, at most 256 rows a statement: under SQLite's limit of
    // 32766 bound variables, and few statement texts (see `padded`).
    let pad = conn.dialect().pads_lists();
    for chunk in super::power_of_two_chunks(events, pad) {
        on!(conn, c => {
            let mut qb = sqlx::QueryBuilder::new(format!("INSERT INTO audit_events ({EVENT_COLUMNS}) "));
            qb.push_values(chunk, |mut b, e| {
                b.push_bind(e.seq)
                    .push_bind(e.id.clone())
                    .push_bind(e.at_ms)
                    .push_bind(e.request_id.clone())
                    .push_bind(e.tenant.clone())
                    .push_bind(e.actor.clone())
                    .push_bind(e.action.clone())
                    .push_bind(e.subject.clone())
                    .push_bind(e.tool.clone())
                    .push_bind(e.args_hash.clone())
                    .push_bind(e.idempotency_key.clone())
                    .push_bind(e.credential_scope.clone())
                    .push_bind(e.approval_ids.clone())
                    .push_bind(e.result_status.clone())
                    .push_bind(e.duration_ms)
                    .push_bind(e.details.clone())
                    .push_bind(e.prev_hash.clone())
                    .push_bind(e.hash.clone());
            });
            qb.build().execute(&mut **c).await?;
        });
    }
    Ok(())
}

/// The chain head, locked for this transaction on PostgreSQL.
pub async fn head_for_update(conn: &mut Conn<'_>) -> Result<(i64, String)> {
    let sql = format!(
        "SELECT seq, hash FROM audit_head WHERE id = 1{}",
        conn.dialect().lock_rows()
    );
    Ok(on!(conn, c => sqlx::query_as::<_, (i64, String)>(&sql).fetch_one(&mut **c).await?))
}

pub async fn head(conn: &mut Conn<'_>) -> Result<(i64, String)> {
    Ok(
        on!(conn, c => sqlx::query_as::<_, (i64, String)>("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut **c).await?),
    )
}

pub async fn set_head(conn: &mut Conn<'_>, seq: i64, hash: &str) -> Result<()> {
    on!(conn, c => {
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(hash)
            .execute(&mut **c)
            .await?;
    });
    Ok(())
}

pub async fn pg_notify(conn: &mut Conn<'_>, payload: &str) -> Result<()> {
    on!(conn, c => {
        sqlx::query("SELECT pg_notify($1, $2)").bind(crate::store::NOTICE_CHANNEL).bind(payload).execute(&mut **c).await?;
    });
    Ok(())
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
