//! The store conformance suite: the same tests against SQLite and PostgreSQL.

use super::queries::{audit, users};
use super::testing::TestDb;
use super::{Store, StoreOptions};
use crate::audit::{AuditDraft, ChainVerifier};
use crate::error::Error;

async fn open(db: &TestDb) -> Store {
    Store::open(StoreOptions::new(db.url.clone()))
        .await
        .expect("open the store")
}

async fn append(store: &Store, n: usize) {
    for i in 0..n {
        store
            .write(move |tx| {
                Box::pin(async move {
                    tx.audit(AuditDraft::new("test", "thing.happened").subject(format!("s{i}")));
                    Ok(())
                })
            })
            .await
            .unwrap();
    }
}

async fn verify(store: &Store) -> Result<u64, crate::audit::ChainBreak> {
    let mut r = store.reader().await.unwrap();
    let events = audit::events_after(&mut r.conn(), 0, 10_000).await.unwrap();
    let (seq, hash) = audit::head(&mut r.conn()).await.unwrap();
    let mut v = ChainVerifier::default();
    for e in &events {
        v.check(e)?;
    }
    v.finish(seq, &hash)?;
    Ok(v.checked)
}

async fn migrations_apply_and_reopen_cleanly(db: &TestDb) {
    let s = open(db).await;
    assert!(s.ping().await);
    drop(s);
    // A second open finds the migrations applied and changes nothing.
    let s = open(db).await;
    assert_eq!(users::count(&mut s.reader().await.unwrap().conn()).await.unwrap(), 0);
}

async fn a_failed_write_leaves_nothing_behind(db: &TestDb) {
    let s = open(db).await;
    let r: Result<(), Error> = s
        .write(|tx| {
            Box::pin(async move {
                tx.audit(AuditDraft::new("test", "half.done"));
                Err(Error::BadRequest("changed my mind".into()))
            })
        })
        .await;
    assert_eq!(r, Err(Error::BadRequest("changed my mind".into())));
    append(&s, 1).await;
    let mut rd = s.reader().await.unwrap();
    let events = audit::events_after(&mut rd.conn(), 0, 10).await.unwrap();
    assert_eq!(events.len(), 1, "the failed write's event must be rolled back");
    assert_eq!(events[0].seq, 1);
    assert_eq!(verify(&s).await, Ok(1));
}

/// The end of a write (its events, the chain's head, the commit: on SQLite
/// one call on the writer's own thread) is all or nothing: an event that
/// cannot be stored fails the write, and nothing the write did is kept.
async fn a_write_whose_events_cannot_be_stored_commits_nothing(db: &TestDb) {
    let s = open(db).await;
    let r: Result<(), Error> = s
        .write(|tx| {
            Box::pin(async move {
                // A row in the place of the chain's next event, then that event.
                tx.conn
                    .exec(
                        "INSERT INTO audit_events (seq, id, at_ms, actor, action, approval_ids, result_status, \
                         details, prev_hash, hash) SELECT seq + 1, 'evt_in_the_way', 0, 'test', 'in.the.way', '[]', \
                         '', '', '', '' FROM audit_head WHERE id = 1",
                    )
                    .await?;
                tx.audit(AuditDraft::new("test", "collides"));
                Ok(())
            })
        })
        .await;
    assert!(r.is_err(), "an event that cannot be inserted must fail its write");
    let mut rd = s.reader().await.unwrap();
    assert_eq!(
        audit::events_after(&mut rd.conn(), 0, 10).await.unwrap(),
        Vec::new(),
        "nothing of the failed write is kept"
    );
    assert_eq!(audit::head(&mut rd.conn()).await.unwrap().0, 0, "the head did not move");
    drop(rd);
    // The writer goes on, and the chain is whole.
    append(&s, 2).await;
    assert_eq!(verify(&s).await, Ok(2));
}

async fn concurrent_writes_are_grouped_and_the_chain_stays_whole(db: &TestDb) {
    let s = open(db).await;
    let batches_before = s.batches_committed();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let fail = i % 7 == 0;
            s.write(move |tx| {
                Box::pin(async move {
                    tx.audit(AuditDraft::new("test", "concurrent"));
                    if fail {
                        return Err(Error::BadRequest("no".into()));
                    }
                    Ok(())
                })
            })
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 200 - 29);
    assert_eq!(verify(&s).await, Ok(ok as u64));
    let batches = s.batches_committed() - batches_before;
    assert!(
        batches <= 100,
        "200 concurrent writes took {batches} transactions: they were not grouped"
    );
}

async fn audit_rows_cannot_be_updated_or_deleted_through_the_app_connection(db: &TestDb) {
    let s = open(db).await;
    append(&s, 2).await;
    let r: Result<(), Error> = s
        .write(|tx| {
            Box::pin(async move {
                tx.conn
                    .exec("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
                    .await
            })
        })
        .await;
    assert!(
        matches!(&r, Err(Error::Internal(m)) if m.contains("append-only")),
        "updates are refused by a trigger: {r:?}"
    );
    let r: Result<(), Error> = s
        .write(|tx| Box::pin(async move { tx.conn.exec("DELETE FROM audit_events WHERE seq = 2").await }))
        .await;
    assert!(
        matches!(&r, Err(Error::Internal(m)) if m.contains("append-only")),
        "deletes are refused by a trigger: {r:?}"
    );
    assert_eq!(verify(&s).await, Ok(2));
}

/// An attacker with DDL rights drops the guard and then tampers: verify names it.
async fn tamper(s: &Store, sql: &'static str) {
    let pg = s.backend() == super::Backend::Postgres;
    s.write(move |tx| {
        Box::pin(async move {
            if pg {
                tx.conn.exec("ALTER TABLE audit_events DISABLE TRIGGER USER").await?;
            } else {
                tx.conn.exec("DROP TRIGGER IF EXISTS audit_events_no_update").await?;
                tx.conn.exec("DROP TRIGGER IF EXISTS audit_events_no_delete").await?;
            }
            tx.conn.exec(sql).await
        })
    })
    .await
    .unwrap();
}

async fn verify_names_an_edited_event(db: &TestDb) {
    let s = open(db).await;
    append(&s, 5).await;
    tamper(&s, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3").await;
    let b = verify(&s).await.unwrap_err();
    assert_eq!(b.seq, Some(3), "{b:?}");
}

async fn verify_names_a_deleted_event(db: &TestDb) {
    let s = open(db).await;
    append(&s, 5).await;
    tamper(&s, "DELETE FROM audit_events WHERE seq = 2").await;
    assert_eq!(verify(&s).await.unwrap_err().seq, Some(3));
}

async fn verify_names_reordered_events(db: &TestDb) {
    let s = open(db).await;
    append(&s, 5).await;
    // Swap the order of events 2 and 3 by renumbering them.
    tamper(
        &s,
        "UPDATE audit_events SET seq = CASE seq WHEN 2 THEN 1002 WHEN 3 THEN 1003 ELSE seq END WHERE seq IN (2, 3)",
    )
    .await;
    tamper(&s, "UPDATE audit_events SET seq = CASE seq WHEN 1002 THEN 3 WHEN 1003 THEN 2 ELSE seq END WHERE seq IN (1002, 1003)").await;
    assert_eq!(verify(&s).await.unwrap_err().seq, Some(2));
}

async fn verify_catches_truncation(db: &TestDb) {
    let s = open(db).await;
    append(&s, 5).await;
    tamper(&s, "DELETE FROM audit_events WHERE seq > 3").await;
    let b = verify(&s).await.unwrap_err();
    assert!(b.reason.contains("truncated"), "{b:?}");
}

async fn notices_are_published_only_after_commit(db: &TestDb) {
    let s = open(db).await;
    let mut rx = s.subscribe();
    let _: Result<(), Error> = s
        .write(|tx| {
            Box::pin(async move {
                tx.notify(super::Notice::Controls);
                Err(Error::BadRequest("rolled back".into()))
            })
        })
        .await;
    s.write(|tx| {
        Box::pin(async move {
            tx.notify(super::Notice::JobReady { env: "prod".into() });
            Ok(())
        })
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        super::Notice::JobReady { env: "prod".into() },
        "the rolled-back notice is never sent"
    );
}

/// A run with a key behind it, and a proposal of it with idempotency key `key`.
async fn run_and_proposal(s: &Store) -> super::queries::proposals::ProposalRow {
    use super::queries::{keys, proposals::ProposalRow, runs};
    s.write(|tx| {
        Box::pin(async move {
            let key = keys::KeyRow {
                id: "key_1".into(),
                kind: crate::tokens::KeyKind::Service,
                name: "svc".into(),
                tenant: Some("acme".into()),
                env: "prod".into(),
                tools: "[]".into(),
                key_hash: "h".into(),
                hint: "h".into(),
                created_at: 0,
                created_by: "test".into(),
                revoked_at: None,
            };
            keys::insert(&mut tx.conn, &key).await?;
            let run = runs::RunRow {
                id: "run_1".into(),
                tenant: "acme".into(),
                env: "prod".into(),
                route: "r".into(),
                on_behalf_of: None,
                service_key_id: "key_1".into(),
                created_at: 0,
                expires_at: 1_000_000,
                steps_used: 0,
                usd_used: 0.0,
                denials_in_row: 2,
                revoked_at: None,
                revoked_reason: None,
            };
            runs::insert(&mut tx.conn, &run).await
        })
    })
    .await
    .unwrap();
    ProposalRow {
        id: "prp_1".into(),
        tenant: "acme".into(),
        env: "prod".into(),
        route: "r".into(),
        run_id: "run_1".into(),
        tool: "t".into(),
        args: "{}".into(),
        args_hash: "a".into(),
        content_hash: "c".into(),
        idempotency_key: Some("k1".into()),
        reason: String::new(),
        preview_before: None,
        preview_after: None,
        diff: None,
        on_behalf_of: None,
        status: crate::lifecycle::Status::Pending,
        approvals_required: 1,
        approvals: 0,
        destructive: false,
        irreversible: false,
        created_at: 10,
        expires_at: 100,
        decided_at: None,
        execute_by: None,
        preview_state: None,
        preview_by: None,
        preview_at: None,
        idempotency_scope: Some("acme/prod".into()),
        pii_fields: None,
        pii_erased_at: None,
        upstream: Some("tickets".into()),
        upstream_tool: Some("close_ticket".into()),
        via: Some("mcp".into()),
    }
}

/// Inserts `p` into run_1, charged one step against a budget with room to
/// spare: for tests about what happens to a proposal after intake.
async fn insert_charged(
    conn: &mut super::Conn<'_>,
    p: &super::queries::proposals::ProposalRow,
) -> crate::error::Result<super::queries::proposals::Inserted> {
    let budgets = crate::policy::Budgets {
        steps: 10,
        seconds: 3600,
        usd: 10.0,
    };
    let spend = super::queries::runs::Spend {
        run_id: "run_1",
        steps: 1,
        usd: 0.0,
        now: 20,
        budgets: &budgets,
    };
    super::queries::proposals::insert_and_spend(conn, p, &spend).await
}

async fn a_proposal_is_charged_to_its_run_once_and_only_if_inserted(db: &TestDb) {
    use super::queries::proposals::{self, Inserted};
    use super::queries::runs;
    let s = open(db).await;
    let p = run_and_proposal(&s).await;
    let budgets = crate::policy::Budgets {
        steps: 2,
        seconds: 3600,
        usd: 1.0,
    };
    let attempt = |p: super::queries::proposals::ProposalRow| {
        s.write(move |tx| {
            Box::pin(async move {
                let spend = runs::Spend {
                    run_id: "run_1",
                    steps: 1,
                    usd: 0.25,
                    now: 20,
                    budgets: &budgets,
                };
                proposals::insert_and_spend(&mut tx.conn, &p, &spend).await
            })
        })
    };
    let used = || async {
        let r = runs::get(&mut s.reader().await.unwrap().conn(), "run_1")
            .await
            .unwrap()
            .unwrap();
        (r.steps_used, r.usd_used, r.denials_in_row)
    };
    assert_eq!(attempt(p.clone()).await, Ok(Inserted::Paid));
    assert_eq!(
        used().await,
        (1, 0.25, 0),
        "a new proposal is charged, and the denial streak ends"
    );
    // The same idempotency key again (a retry): neither inserted nor charged.
    let retry = proposals::ProposalRow {
        id: "prp_2".into(),
        ..p.clone()
    };
    assert_eq!(attempt(retry).await, Ok(Inserted::Repeat));
    assert_eq!(used().await, (1, 0.25, 0));
    let second = proposals::ProposalRow {
        id: "prp_3".into(),
        idempotency_key: Some("k2".into()),
        ..p.clone()
    };
    assert_eq!(attempt(second).await, Ok(Inserted::Paid));
    // Over the steps budget: inserted (the caller takes it back) but not charged.
    let third = proposals::ProposalRow {
        id: "prp_4".into(),
        idempotency_key: Some("k3".into()),
        ..p
    };
    assert_eq!(attempt(third).await, Ok(Inserted::Unpaid));
    assert_eq!(used().await, (2, 0.5, 0), "a run over its budget is not charged");
    let mut r = s.reader().await.unwrap();
    assert!(proposals::get(&mut r.conn(), "prp_4").await.unwrap().is_some());
    assert!(proposals::get(&mut r.conn(), "prp_2").await.unwrap().is_none());
}

/// On PostgreSQL a proposal's moves after approval (queued, running,
/// succeeded) must be heap-only updates: no index may name `status`, or each
/// move writes an entry into every index of the table (migration 0013).
mod hot_updates {
    mod postgres {
        use super::super::{insert_charged, open, run_and_proposal};
        use crate::lifecycle::Status::*;
        use crate::store::queries::proposals;
        use crate::store::testing::TestDb;
        use crate::store::Conn;

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn status_changes_after_approval_are_heap_only_updates() {
            let db = TestDb::postgres().await;
            let s = open(&db).await;
            let p = proposals::ProposalRow {
                status: Queued,
                ..run_and_proposal(&s).await
            };
            let (updated, hot) = s
                .write(move |tx| {
                    Box::pin(async move {
                        insert_charged(&mut tx.conn, &p).await?;
                        let ids = vec![p.id.clone()];
                        proposals::transition_many(&mut tx.conn, &ids, Queued, Running).await?;
                        proposals::transition_many(&mut tx.conn, &ids, Running, Succeeded).await?;
                        let Conn::Postgres(c) = &mut tx.conn else {
                            unreachable!("a PostgreSQL store")
                        };
                        // This transaction's own counts, before any statistics are sent.
                        Ok(sqlx::query_as::<_, (i64, i64)>(
                            "SELECT pg_stat_get_xact_tuples_updated('proposals'::regclass), \
                             pg_stat_get_xact_tuples_hot_updated('proposals'::regclass)",
                        )
                        .fetch_one(&mut **c)
                        .await?)
                    })
                })
                .await
                .unwrap();
            assert_eq!((updated, hot), (2, 2), "both moves are heap-only updates");
        }
    }
}

/// A statement that finds jobs by id must read them through the primary
/// key, whatever the statistics say. After a burst (the statistics taken
/// while few jobs were queued), PostgreSQL read the whole of a partial index
/// on queued jobs (`jobs_claimable` or `jobs_due`) at every claim, to AND it
/// with the ids or to filter it: a claim cost as much as the queue was long.
mod plans {
    mod postgres {
        use super::super::{insert_charged, open, run_and_proposal};
        use crate::lifecycle::{JobKind, JobState, Status};
        use crate::store::queries::jobs;
        use crate::store::queries::proposals::{self, ProposalRow, PROPOSAL_COLUMNS as COLUMNS};
        use crate::store::testing::TestDb;
        use crate::store::Conn;

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn moving_jobs_named_by_id_reads_only_the_primary_key_when_statistics_are_stale() {
            let db = TestDb::postgres().await;
            let s = open(&db).await;
            let p = ProposalRow {
                status: Status::Succeeded,
                ..run_and_proposal(&s).await
            };
            let job = jobs::JobRow {
                id: "job_1".into(),
                proposal_id: p.id.clone(),
                tenant: p.tenant.clone(),
                env: p.env.clone(),
                route: p.route.clone(),
                tool: p.tool.clone(),
                state: JobState::Succeeded,
                attempt: 1,
                max_attempts: 3,
                lease_id: None,
                lease_expires_at: None,
                leased_at: None,
                available_at: 10,
                execute_by: 1_000_000,
                result: None,
                completion: None,
                created_at: 10,
                finished_at: Some(20),
                kind: JobKind::Execute,
                execution_key: "exk_1".into(),
                receipt: None,
            };
            let (leased, moved, scans) = s
                .write(move |tx| {
                    Box::pin(async move {
                        insert_charged(&mut tx.conn, &p).await?;
                        jobs::insert(&mut tx.conn, &job).await?;
                        let Conn::Postgres(c) = &mut tx.conn else {
                            unreachable!("a PostgreSQL store")
                        };
                        // 4,000 finished jobs, and their statistics...
                        copy_proposal(c, 4000).await?;
                        sqlx::query(
                            "INSERT INTO jobs (id, proposal_id, tenant, env, route, tool, state, attempt, max_attempts, \
                             available_at, execute_by, created_at, finished_at, kind, execution_key) \
                             SELECT 'job_' || g, 'prp_' || g, tenant, env, route, tool, state, attempt, max_attempts, \
                             available_at + g, execute_by, created_at, finished_at, kind, 'exk_' || g \
                             FROM jobs, generate_series(2, 4000) g WHERE id = 'job_1'",
                        )
                        .execute(&mut **c)
                        .await?;
                        sqlx::query("ANALYZE jobs").execute(&mut **c).await?;
                        // ...then all of them queued again at once, as after a burst.
                        for sql in [
                            "UPDATE jobs SET state = 'queued', attempt = 0, finished_at = NULL",
                            "UPDATE proposals SET status = 'queued'",
                        ] {
                            sqlx::query(sql).execute(&mut **c).await?;
                        }
                        let ids: Vec<String> = (1..=50).map(|i| format!("job_{i}")).collect();
                        let before = index_scans(&mut tx.conn, JOBS_BUT_THE_KEY).await?;
                        let leased = jobs::lease_many(&mut tx.conn, &ids, "c1", 30, 1_000).await?;
                        // And the rest of a lease's life, job by job and many at once.
                        let lease = |i: usize| format!("lse_c1_job_{i}");
                        let done = [jobs::Success { id: "job_1", result: "{}", completion: "{}" }];
                        let moved = [
                            jobs::extend_lease(&mut tx.conn, "job_2", &lease(2), 40, 2_000).await?,
                            jobs::succeed_many(&mut tx.conn, &done, 50).await? == 1,
                            jobs::finish(&mut tx.conn, "job_3", &lease(3), JobState::Failed, "{}", "{}", 50).await?,
                            jobs::requeue(&mut tx.conn, "job_4", 60, None, None).await?,
                            jobs::set_state(&mut tx.conn, "job_4", JobState::Queued, JobState::Cancelled, 70).await?,
                        ];
                        let after = index_scans(&mut tx.conn, JOBS_BUT_THE_KEY).await?;
                        Ok((leased.len(), moved, after - before))
                    })
                })
                .await
                .unwrap();
            assert_eq!(leased, 50, "every job named is leased");
            assert_eq!(moved, [true; 5], "each move found its job");
            assert_eq!(
                scans, 0,
                "no index but the primary key is read to move jobs named by id"
            );
        }

        /// The review queue and the sweeper each read their own index of
        /// pending proposals, whatever the statistics say (migration 0014).
        /// The sweeper's, by expiry, was also a way to every pending
        /// proposal: right after a burst PostgreSQL read the whole of it
        /// for the queue, and sorted.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_review_queue_reads_its_own_index_when_statistics_are_stale() {
            let db = TestDb::postgres().await;
            let s = open(&db).await;
            let p = ProposalRow {
                status: Status::Succeeded,
                ..run_and_proposal(&s).await
            };
            let (queue, expired, scans) = s
                .write(move |tx| {
                    Box::pin(async move {
                        insert_charged(&mut tx.conn, &p).await?;
                        let Conn::Postgres(c) = &mut tx.conn else {
                            unreachable!("a PostgreSQL store")
                        };
                        // 4,000 decided proposals, and their statistics...
                        copy_proposal(c, 4000).await?;
                        sqlx::query("ANALYZE proposals").execute(&mut **c).await?;
                        // ...then all of them pending at once, as after a burst.
                        sqlx::query("UPDATE proposals SET status = 'pending'")
                            .execute(&mut **c)
                            .await?;
                        let before = index_scans(&mut tx.conn, EXPIRY).await?;
                        let queue = proposals::pending(&mut tx.conn, &["acme".into()], 10).await?;
                        let after_queue = index_scans(&mut tx.conn, EXPIRY).await?;
                        let expired = proposals::pending_expired(&mut tx.conn, 1_000_000, 1).await?;
                        let after_sweep = index_scans(&mut tx.conn, EXPIRY).await?;
                        Ok((queue, expired, (after_queue - before, after_sweep - after_queue)))
                    })
                })
                .await
                .unwrap();
            assert_eq!(queue.len(), 10);
            assert_eq!(queue[0].id, "prp_1", "oldest first");
            assert_eq!(expired.len(), 1);
            assert_eq!(scans, (0, 1), "the queue leaves the expiry index to the sweeper");
        }

        /// The indexes of `jobs` other than its primary key, and the
        /// sweeper's expiry index, as conditions on `pg_index`.
        const JOBS_BUT_THE_KEY: &str = "indrelid = 'jobs'::regclass AND indexrelid <> 'jobs_pkey'::regclass";
        const EXPIRY: &str = "indexrelid = 'proposals_pending_expiry'::regclass";

        /// This transaction's scans so far of the indexes `which` picks.
        async fn index_scans(conn: &mut Conn<'_>, which: &str) -> crate::error::Result<i64> {
            let Conn::Postgres(c) = conn else {
                unreachable!("a PostgreSQL store")
            };
            Ok(sqlx::query_scalar(&format!(
                "SELECT COALESCE(SUM(pg_stat_get_xact_numscans(indexrelid)), 0)::BIGINT FROM pg_index WHERE {which}"
            ))
            .fetch_one(&mut **c)
            .await?)
        }

        /// Copies of proposal prp_1 as prp_2 to prp_`last`, each with its own
        /// idempotency key and a later creation time.
        async fn copy_proposal(c: &mut sqlx::PgConnection, last: i64) -> crate::error::Result<()> {
            let copies = COLUMNS
                .replacen("id, ", "'prp_' || g, ", 1)
                .replacen("idempotency_key, ", "'k' || g, ", 1)
                .replacen("created_at, ", "created_at + g, ", 1);
            sqlx::query(&format!(
                "INSERT INTO proposals ({COLUMNS}) SELECT {copies} FROM proposals, \
                 generate_series(2, $1) g WHERE id = 'prp_1'"
            ))
            .bind(last)
            .execute(c)
            .await?;
            Ok(())
        }
    }
}

/// The writer inserts and charges the leading proposals of a batch in one
/// call (one statement on PostgreSQL, one hand-off to the connection's
/// thread on SQLite): each row must come out as the one-row statement would
/// make it.
async fn many_proposals_are_inserted_and_charged_as_each_would_be_alone(db: &TestDb) {
    use super::queries::proposals::{self, Inserted, ProposalRow, ToInsert};
    use super::queries::runs;
    let s = open(db).await;
    let p = run_and_proposal(&s).await;
    // A second run of the same key, one step from its budget.
    let run_1 = runs::get(&mut s.reader().await.unwrap().conn(), "run_1")
        .await
        .unwrap()
        .unwrap();
    let spent = runs::RunRow {
        id: "run_2".into(),
        steps_used: 1,
        denials_in_row: 1,
        ..run_1.clone()
    };
    let used = ProposalRow {
        id: "prp_old".into(),
        run_id: "run_2".into(),
        idempotency_key: Some("used".into()),
        ..p.clone()
    };
    let budgets = crate::policy::Budgets {
        steps: 2,
        seconds: 3600,
        usd: 1.0,
    };
    // Its last step spent on the proposal whose key is asked again below.
    let first = s
        .write(move |tx| {
            Box::pin(async move {
                runs::insert(&mut tx.conn, &spent).await?;
                let spend = runs::Spend {
                    run_id: "run_2",
                    steps: 1,
                    usd: 0.0,
                    now: 10,
                    budgets: &budgets,
                };
                proposals::insert_and_spend(&mut tx.conn, &used, &spend).await
            })
        })
        .await;
    assert_eq!(first, Ok(Inserted::Paid));
    let charge = |row: ProposalRow| ToInsert {
        row,
        steps: 1,
        usd: 0.25,
        budgets,
    };
    // run_1 has budget left: inserted and charged. run_2 asks again with
    // a used key: a repeat, neither inserted nor charged. (Rows of one
    // statement have distinct runs: run_2 over its budget comes next.)
    let fresh = ProposalRow {
        id: "prp_a".into(),
        idempotency_key: Some("new".into()),
        ..p.clone()
    };
    let again = ProposalRow {
        id: "prp_b".into(),
        run_id: "run_2".into(),
        idempotency_key: Some("used".into()),
        ..p.clone()
    };
    let rows = vec![charge(fresh.clone()), charge(again)];
    let out = s
        .write(move |tx| Box::pin(async move { proposals::insert_and_spend_many(&mut tx.conn, &rows, 20).await }))
        .await
        .unwrap();
    assert_eq!(out, vec![Inserted::Paid, Inserted::Repeat]);
    let over = ProposalRow {
        id: "prp_c".into(),
        run_id: "run_2".into(),
        idempotency_key: Some("other".into()),
        ..p.clone()
    };
    let second = ProposalRow {
        id: "prp_d".into(),
        idempotency_key: Some("second".into()),
        ..p.clone()
    };
    let rows = vec![charge(over), charge(second)];
    let out = s
        .write(move |tx| Box::pin(async move { proposals::insert_and_spend_many(&mut tx.conn, &rows, 20).await }))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![Inserted::Unpaid, Inserted::Paid],
        "run_2 is over its steps budget"
    );

    let mut r = s.reader().await.unwrap();
    let run1 = runs::get(&mut r.conn(), "run_1").await.unwrap().unwrap();
    assert_eq!(
        (run1.steps_used, run1.usd_used, run1.denials_in_row),
        (2, 0.5, 0),
        "charged once per inserted proposal, and the denial streak ends"
    );
    let run2 = runs::get(&mut r.conn(), "run_2").await.unwrap().unwrap();
    assert_eq!(
        (run2.steps_used, run2.usd_used, run2.denials_in_row),
        (2, 0.0, 0),
        "a repeat and an over-budget proposal charge nothing"
    );
    // Every column as given: the row read back is the row inserted.
    assert_eq!(proposals::get(&mut r.conn(), "prp_a").await.unwrap(), Some(fresh));
    assert!(
        proposals::get(&mut r.conn(), "prp_b").await.unwrap().is_none(),
        "a repeat is not inserted"
    );
    assert!(
        proposals::get(&mut r.conn(), "prp_c").await.unwrap().is_some(),
        "over budget: inserted, for the caller to take back"
    );
    drop(r);

    // Three fresh runs at once: each proposal inserted, each run charged once.
    let fresh_runs: Vec<runs::RunRow> = (3..=5)
        .map(|i| runs::RunRow {
            id: format!("run_{i}"),
            steps_used: 0,
            usd_used: 0.0,
            denials_in_row: 0,
            ..run_1.clone()
        })
        .collect();
    let rows: Vec<ToInsert> = (3..=5)
        .map(|i| {
            charge(ProposalRow {
                id: format!("prp_{i}"),
                run_id: format!("run_{i}"),
                idempotency_key: Some(format!("k{i}")),
                ..p.clone()
            })
        })
        .collect();
    let out = s
        .write(move |tx| {
            Box::pin(async move {
                for r in &fresh_runs {
                    runs::insert(&mut tx.conn, r).await?;
                }
                proposals::insert_and_spend_many(&mut tx.conn, &rows, 20).await
            })
        })
        .await
        .unwrap();
    assert_eq!(out, vec![Inserted::Paid; 3]);
    let mut r = s.reader().await.unwrap();
    for i in 3..=5 {
        let run = runs::get(&mut r.conn(), &format!("run_{i}")).await.unwrap().unwrap();
        assert_eq!((run.steps_used, run.usd_used), (1, 0.25), "run_{i} is charged once");
        assert!(proposals::get(&mut r.conn(), &format!("prp_{i}"))
            .await
            .unwrap()
            .is_some());
    }
}

/// The queue, the sweeper, the pending count and the history's gone-wrong
/// filter find proposals through columns generated from `status` (migration
/// 0013): each must follow the status through every move.
async fn pending_and_gone_wrong_proposals_are_found_as_their_status_moves(db: &TestDb) {
    use super::queries::proposals::{self, HistoryFilter};
    use crate::lifecycle::Status::{self, *};
    let s = open(db).await;
    let p = run_and_proposal(&s).await;
    let (a, b) = (
        p.clone(),
        proposals::ProposalRow {
            id: "prp_2".into(),
            idempotency_key: Some("k2".into()),
            created_at: 11,
            ..p
        },
    );
    s.write(move |tx| {
        Box::pin(async move {
            for p in [a, b] {
                insert_charged(&mut tx.conn, &p).await?;
            }
            Ok(())
        })
    })
    .await
    .unwrap();
    let found = |status: Option<Status>| {
        let s = &s;
        async move {
            let mut r = s.reader().await.unwrap();
            let mut c = r.conn();
            let ids = |rows: Vec<proposals::ProposalRow>| rows.into_iter().map(|p| p.id).collect::<Vec<_>>();
            let queue = ids(proposals::pending(&mut c, &["acme".into(), "other".into()], 10)
                .await
                .unwrap());
            let overdue = ids(proposals::pending_expired(&mut c, 1_000, 10).await.unwrap());
            assert_eq!(queue, overdue, "the queue and the sweeper agree");
            let (count, oldest) = proposals::pending_count_and_oldest(&mut c).await.unwrap();
            assert_eq!(count as usize, queue.len());
            assert_eq!(oldest, queue.first().map(|id| if id == "prp_1" { 10 } else { 11 }));
            let filter = HistoryFilter {
                status,
                ..HistoryFilter::default()
            };
            let history = status.map(|_| async { ids(proposals::history(&mut r.conn(), &filter, 10).await.unwrap()) });
            (
                queue,
                match history {
                    Some(h) => h.await,
                    None => Vec::new(),
                },
            )
        }
    };
    let step = |id: &'static str, from: Status, to: Status| {
        let s = &s;
        async move {
            let moved = s
                .write(move |tx| Box::pin(async move { proposals::transition(&mut tx.conn, id, from, to).await }))
                .await
                .unwrap();
            assert!(moved, "{id}: {from} -> {to}");
        }
    };
    assert_eq!(found(None).await.0, ["prp_1", "prp_2"], "both pending, oldest first");
    step("prp_2", Pending, Rejected).await;
    assert_eq!(
        found(Some(Rejected)).await,
        (vec!["prp_1".to_owned()], vec!["prp_2".to_owned()])
    );
    step("prp_1", Pending, Approved).await;
    for (from, to) in [(Approved, Queued), (Queued, Running)] {
        step("prp_1", from, to).await;
        assert_eq!(
            found(Some(Failed)).await,
            (vec![], vec![]),
            "{to}: neither pending nor gone wrong"
        );
        assert_eq!(found(Some(to)).await.1, ["prp_1"], "the history finds it as {to}");
    }
    step("prp_1", Running, Failed).await;
    assert_eq!(found(Some(Failed)).await, (vec![], vec!["prp_1".to_owned()]));
    assert_eq!(
        found(Some(Rejected)).await.1,
        ["prp_2"],
        "each gone-wrong status finds its own"
    );
}

crate::store_tests!(
    migrations_apply_and_reopen_cleanly,
    a_failed_write_leaves_nothing_behind,
    concurrent_writes_are_grouped_and_the_chain_stays_whole,
    audit_rows_cannot_be_updated_or_deleted_through_the_app_connection,
    verify_names_an_edited_event,
    verify_names_a_deleted_event,
    verify_names_reordered_events,
    verify_catches_truncation,
    notices_are_published_only_after_commit,
    a_proposal_is_charged_to_its_run_once_and_only_if_inserted,
    many_proposals_are_inserted_and_charged_as_each_would_be_alone,
    a_write_whose_events_cannot_be_stored_commits_nothing,
    pending_and_gone_wrong_proposals_are_found_as_their_status_moves,
);

/// Notices cross processes through one PostgreSQL connection per process;
/// SQLite has only the one process, so this is PostgreSQL's alone.
mod listener {
    mod postgres {
        use super::super::open;
        use crate::store::testing::TestDb;
        use crate::store::Notice;
        use sqlx::Connection;
        use std::time::Duration;

        async fn next_matching(rx: &mut tokio::sync::broadcast::Receiver<Notice>, want: &Notice) {
            loop {
                match rx.recv().await {
                    Ok(n) if &n == want => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(e) => panic!("the notices ended: {e}"),
                }
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_cut_listener_comes_back_and_says_notices_may_have_been_missed() {
            let db = TestDb::postgres().await;
            let a = open(&db).await;
            let b = open(&db).await;
            let mut heard = b.subscribe();
            // Every connection of both processes is cut (as a failover would).
            let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .execute(&mut admin)
            .await
            .unwrap();
            tokio::time::timeout(Duration::from_secs(15), next_matching(&mut heard, &Notice::Missed))
                .await
                .expect("the listener came back and said so within 15 s");
            // And notices cross again: a write on one process reaches the other.
            let ready = Notice::JobReady { env: "prod".into() };
            let mut tries = 0;
            loop {
                let n = ready.clone();
                let r = a
                    .write(move |tx| {
                        Box::pin(async move {
                            tx.notify(n);
                            Ok(())
                        })
                    })
                    .await;
                match r {
                    Ok(()) => break,
                    // The writer's own connection was cut too: the first
                    // write may fail while it reconnects.
                    Err(e) if tries < 20 => {
                        tries += 1;
                        eprintln!("write {tries}: {e}");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => panic!("the writer did not come back: {e}"),
                }
            }
            tokio::time::timeout(Duration::from_secs(10), next_matching(&mut heard, &ready))
                .await
                .expect("a notice crossed processes after the cut");
        }
    }
}
