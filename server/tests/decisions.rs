//! Who may decide, and deciding under contention, on SQLite and PostgreSQL.

mod common;
use common::*;
use countersign_core::lifecycle::Status;
use countersign_core::lifecycle::Verdict;
use countersign_core::service::HistoryQuery;
use countersign_core::service::{DecideRequest, Person};
use countersign_core::testing::TestDb;
use countersign_core::Error;

async fn propose(t: &TestApp, body: serde_json::Value, on_behalf_of: Option<&str>) -> (String, String) {
    let (_, token) = t.run("acme", "prod", "support/send", on_behalf_of).await;
    let r = t.post("/api/v1/proposals", &token, body).await;
    assert_eq!(r.status, reqwest::StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let hash = t.inspect().proposal(&id).await.unwrap().unwrap().content_hash;
    (id, hash)
}

/// Propose in an existing run (an agent's parallel calls).
async fn propose_in(t: &TestApp, token: &str, body: serde_json::Value) -> (String, String) {
    t.advance(1);
    let r = t.post("/api/v1/proposals", token, body).await;
    assert_eq!(r.status, reqwest::StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let hash = t.inspect().proposal(&id).await.unwrap().unwrap().content_hash;
    (id, hash)
}

fn req(id: &str, hash: &str, verdict: Verdict, comment: &str) -> DecideRequest {
    DecideRequest {
        proposal_id: id.into(),
        verdict,
        comment: comment.into(),
        content_hash: hash.into(),
        view_ms: Some(8000),
        passkey: None,
    }
}

async fn status(t: &TestApp, id: &str) -> (String, i64) {
    let p = t.inspect().proposal(id).await.unwrap().unwrap();
    (p.status.to_string(), p.approvals)
}

async fn fifty_reviewers_approving_at_once_release_it_exactly_once(db: &TestDb) {
    let t = spawn(db).await;
    let mut people: Vec<Person> = Vec::new();
    for i in 0..50 {
        people.push(t.person(&format!("r{i:02}"), &["reviewer"], &["acme"]).await);
    }
    let (id, hash) = propose(&t, refund("refund-1"), None).await;
    let core = t.app.core.clone();
    let tasks: Vec<_> = people
        .into_iter()
        .map(|p| {
            let (core, id, hash) = (core.clone(), id.clone(), hash.clone());
            tokio::spawn(async move { core.decide(&p, req(&id, &hash, Verdict::Approve, "ok")).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::Forbidden(m)) => assert!(m.contains("Already"), "{m}"),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 2, "two approvals are counted, the rest find it decided");
    assert_eq!(status(&t, &id).await, ("queued".into(), 2));
    let decisions = t.inspect().decisions(&id).await.unwrap();
    assert_eq!(decisions.iter().filter(|d| d.verdict == Verdict::Approve).count(), 2);
    assert!(t.inspect().job_of(&id).await.unwrap().is_some());
    let mut released = 0;
    t.core()
        .export_audit(0, |e| {
            if e.action == "job.released" && e.subject.as_deref() == Some(id.as_str()) {
                released += 1;
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(released, 1);
    assert!(t.core().verify_audit_chain().await.unwrap().ok());
}

async fn a_reviewer_racing_themselves_counts_once(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let (id, hash) = propose(&t, refund("refund-2"), None).await;
    let core = t.app.core.clone();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (core, id, hash, alice) = (core.clone(), id.clone(), hash.clone(), alice.clone());
            tokio::spawn(async move { core.decide(&alice, req(&id, &hash, Verdict::Approve, "")).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(status(&t, &id).await, ("pending".into(), 1));
}

async fn second_approver_must_differ_from_first(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let bob = t.person("bob", &["reviewer"], &["acme"]).await;
    let (id, hash) = propose(&t, refund("refund-3"), None).await;
    t.core()
        .decide(&alice, req(&id, &hash, Verdict::Approve, ""))
        .await
        .unwrap();
    let e = t
        .core()
        .decide(&alice, req(&id, &hash, Verdict::Approve, ""))
        .await
        .unwrap_err();
    assert_eq!(e, Error::Forbidden("Needs a second reviewer: not you".into()));
    let review = t.core().review_for(&alice, &id).await.unwrap();
    assert_eq!(review.why_not.as_deref(), Some("Needs a second reviewer: not you"));
    assert_eq!(
        review.eligible,
        vec!["bob".to_owned()],
        "the first approver learns whom to ask"
    );
    assert_eq!(
        t.core()
            .decide(&bob, req(&id, &hash, Verdict::Approve, ""))
            .await
            .unwrap(),
        Status::Queued
    );
}

async fn requester_cannot_approve_own_action(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let bob = t.person("bob", &["reviewer"], &["acme"]).await;
    let (id, hash) = propose(&t, close_ticket("k"), Some("alice")).await;
    let e = t
        .core()
        .decide(&alice, req(&id, &hash, Verdict::Approve, ""))
        .await
        .unwrap_err();
    assert_eq!(e, Error::Forbidden("You requested this".into()));
    let review = t.core().review_for(&alice, &id).await.unwrap();
    assert_eq!(review.why_not.as_deref(), Some("You requested this"));
    assert!(review.eligible.contains(&"bob".to_owned()) && !review.eligible.contains(&"alice".to_owned()));
    t.core()
        .decide(&bob, req(&id, &hash, Verdict::Approve, ""))
        .await
        .unwrap();
}

async fn only_reviewers_of_the_tenant_see_or_decide(db: &TestDb) {
    let t = spawn(db).await;
    let carol = t.person("carol", &["reviewer"], &["globex"]).await;
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    let (id, hash) = propose(&t, close_ticket("k"), None).await;
    assert_eq!(t.core().review_for(&carol, &id).await.unwrap_err(), Error::NotFound);
    assert_eq!(
        t.core()
            .decide(&carol, req(&id, &hash, Verdict::Approve, ""))
            .await
            .unwrap_err(),
        Error::NotFound
    );
    assert!(t.core().queue_for(&carol).await.unwrap().is_empty());
    // An auditor sees it but cannot decide.
    let review = t.core().review_for(&audrey, &id).await.unwrap();
    assert!(review.why_not.is_some());
    assert!(matches!(
        t.core().decide(&audrey, req(&id, &hash, Verdict::Approve, "")).await,
        Err(Error::Forbidden(_))
    ));
}

async fn a_decision_is_bound_to_what_the_reviewer_saw(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let (id, _) = propose(&t, close_ticket("k"), None).await;
    let e = t
        .core()
        .decide(&alice, req(&id, "not-the-hash", Verdict::Approve, ""))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden(m) if m.contains("not what would run")));
    assert_eq!(status(&t, &id).await.0, "pending");
}

async fn a_rejection_needs_a_comment_and_ends_it(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let bob = t.person("bob", &["reviewer"], &["acme"]).await;
    let (id, hash) = propose(&t, refund("refund-4"), None).await;
    let e = t
        .core()
        .decide(&alice, req(&id, &hash, Verdict::Reject, "  "))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::BadRequest(_)));
    t.core()
        .decide(&alice, req(&id, &hash, Verdict::Approve, ""))
        .await
        .unwrap();
    assert_eq!(
        t.core()
            .decide(&bob, req(&id, &hash, Verdict::Reject, "wrong customer"))
            .await
            .unwrap(),
        Status::Rejected
    );
    // History finds it by its status (through the index of statuses gone
    // wrong), and not under another.
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    let by_status = |s: &str| HistoryQuery {
        status: Some(s.into()),
        ..Default::default()
    };
    let rejected = t.core().history(&audrey, &by_status("rejected")).await.unwrap();
    assert_eq!(
        rejected
            .entries
            .iter()
            .map(|r| r.proposal.id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert!(t
        .core()
        .history(&audrey, &by_status("failed"))
        .await
        .unwrap()
        .entries
        .is_empty());
    let carl = t.person("carl", &["reviewer"], &["acme"]).await;
    let late = t.core().decide(&carl, req(&id, &hash, Verdict::Approve, "")).await;
    assert!(
        matches!(&late, Err(Error::Forbidden(m)) if m == "Already rejected: nothing left to decide"),
        "{late:?}"
    );
}

async fn an_expired_proposal_cannot_be_approved(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let (id, hash) = propose(&t, refund("refund-5"), None).await;
    t.advance(3601);
    let e = t
        .core()
        .decide(&alice, req(&id, &hash, Verdict::Approve, ""))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden(m) if m.contains("expired")));
}

async fn quick_decisions_are_flagged_in_history(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    let (id, hash) = propose(&t, close_ticket("k"), None).await;
    let mut r = req(&id, &hash, Verdict::Approve, "lgtm");
    r.view_ms = Some(800);
    t.core().decide(&alice, r).await.unwrap();
    let page = t.core().history(&audrey, &HistoryQuery::default()).await.unwrap();
    let entry = page.entries.iter().find(|e| e.proposal.id == id).unwrap();
    let row = app::functions::views::history_row(entry, t.core().settings().quick_decision_ms);
    assert_eq!(row.decisions[0].username, "alice");
    assert!(row.decisions[0].quick, "decided in 0.8 s: flagged");
    // Filters: by person and status; other tenants are invisible to the auditor.
    let q = HistoryQuery {
        person: Some("alice".into()),
        status: Some("queued".into()),
        ..Default::default()
    };
    assert_eq!(t.core().history(&audrey, &q).await.unwrap().entries.len(), 1);
    let q = HistoryQuery {
        tenant: Some("globex".into()),
        ..Default::default()
    };
    assert!(t.core().history(&audrey, &q).await.unwrap().entries.is_empty());
    assert!(matches!(
        t.core().history(&alice, &HistoryQuery::default()).await,
        Err(Error::Forbidden(_))
    ));
}

async fn history_pages_through_everything(db: &TestDb) {
    let t = spawn(db).await;
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    for i in 0..24 {
        // keep the run inside its 25-step budget
        let r = t
            .post("/api/v1/proposals", &token, close_ticket(&format!("k{i}")))
            .await;
        assert_eq!(r.status, reqwest::StatusCode::CREATED);
        t.clock.advance_ms(5);
    }
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    for i in 0..36 {
        if i == 24 {
            break;
        }
        t.post("/api/v1/proposals", &token, close_ticket(&format!("m{i}")))
            .await;
        t.clock.advance_ms(5);
    }
    let mut seen = std::collections::HashSet::new();
    let mut q = HistoryQuery::default();
    loop {
        let page = t.core().history(&audrey, &q).await.unwrap();
        for e in &page.entries {
            assert!(seen.insert(e.proposal.id.clone()), "no row twice");
        }
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 48);
    let mut exported = 0;
    t.core()
        .history_export(&audrey, &HistoryQuery::default(), |_| {
            exported += 1;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(exported, 48);
}

async fn after_a_decision_the_next_is_the_same_runs_then_the_oldest_the_reviewer_may_decide(db: &TestDb) {
    let t = spawn(db).await;
    let rosa = t.person("rosa", &["reviewer"], &["acme"]).await;
    let sam = t.person("sam", &["reviewer"], &["acme"]).await;
    let (_, run_a) = t.run("acme", "prod", "support/send", None).await;
    let (_, run_b) = t.run("acme", "prod", "support/send", None).await;
    let (_, run_for_rosa) = t.run("acme", "prod", "support/send", Some("rosa")).await;
    let (a1, a1_hash) = propose_in(&t, &run_a, close_ticket("a1")).await;
    let (b1, b1_hash) = propose_in(&t, &run_b, close_ticket("b1")).await;
    let (refund_id, refund_hash) = propose_in(&t, &run_b, refund("b-refund")).await;
    let (own, _) = propose_in(&t, &run_for_rosa, close_ticket("own")).await;
    let (a2, a2_hash) = propose_in(&t, &run_a, close_ticket("a2")).await;

    // The review screen lists the run's calls, oldest first, decided or not.
    let review = t.core().review_for(&rosa, &a1).await.unwrap();
    let listed: Vec<&str> = review.run.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(listed, vec![a1.as_str(), a2.as_str()]);

    let core = t.core();
    core.decide(&rosa, req(&a1, &a1_hash, Verdict::Approve, ""))
        .await
        .unwrap();
    assert_eq!(
        core.next_for(&rosa, &a1).await.unwrap().as_deref(),
        Some(a2.as_str()),
        "the same run's pending call comes first, though run b's is older"
    );
    let review = core.review_for(&rosa, &a2).await.unwrap();
    let statuses: Vec<String> = review.run.iter().map(|e| e.status.to_string()).collect();
    assert_eq!(statuses, vec!["queued", "pending"], "the decided one stays listed");

    core.decide(&rosa, req(&a2, &a2_hash, Verdict::Approve, ""))
        .await
        .unwrap();
    assert_eq!(core.next_for(&rosa, &a2).await.unwrap().as_deref(), Some(b1.as_str()));

    // Rosa approved the refund once: it still waits, but not for her; nor
    // does the proposal made for her.
    core.decide(&rosa, req(&refund_id, &refund_hash, Verdict::Approve, ""))
        .await
        .unwrap();
    core.decide(&rosa, req(&b1, &b1_hash, Verdict::Approve, ""))
        .await
        .unwrap();
    assert_eq!(
        core.next_for(&rosa, &b1).await.unwrap(),
        None,
        "nothing else waits for rosa"
    );
    assert_eq!(
        core.next_for(&sam, &b1).await.unwrap().as_deref(),
        Some(refund_id.as_str()),
        "the refund waits for a second reviewer"
    );
    assert_eq!(
        core.next_for(&sam, &refund_id).await.unwrap().as_deref(),
        Some(own.as_str())
    );

    // An expired proposal is nobody's next.
    t.advance(7200);
    assert_eq!(core.next_for(&sam, &b1).await.unwrap().as_deref(), Some(own.as_str()));
}

async fn a_reviewer_deciding_fast_again_and_again_is_warned_and_sees_their_pace(db: &TestDb) {
    let t = spawn(db).await;
    let quinn = t.person("quinn", &["reviewer"], &["acme"]).await;
    let (_, run) = t.run("acme", "prod", "support/send", None).await;
    let core = t.core();
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(propose_in(&t, &run, close_ticket(&format!("fast-{i}"))).await);
    }
    let fresh = core.review_for(&quinn, &ids[6].0).await.unwrap();
    assert!(!fresh.too_fast && fresh.own_pace_ms.is_empty(), "nothing decided yet");
    for (i, (id, hash)) in ids[..5].iter().enumerate() {
        let view_ms = if i == 0 { 9000 } else { 700 };
        let r = DecideRequest {
            view_ms: Some(view_ms),
            passkey: None,
            ..req(id, hash, Verdict::Approve, "")
        };
        core.decide(&quinn, r).await.unwrap();
    }
    let after_four = core.review_for(&quinn, &ids[6].0).await.unwrap();
    assert_eq!(
        after_four.own_pace_ms,
        vec![Some(700), Some(700), Some(700), Some(700), Some(9000)]
    );
    assert!(
        !after_four.too_fast,
        "four quick ones after a read one are not yet a habit"
    );
    let (id, hash) = &ids[5];
    let r = DecideRequest {
        view_ms: Some(700),
        passkey: None,
        ..req(id, hash, Verdict::Approve, "")
    };
    core.decide(&quinn, r).await.unwrap();
    assert!(
        core.review_for(&quinn, &ids[6].0).await.unwrap().too_fast,
        "five quick ones in a row"
    );
    let other = t.person("olga", &["reviewer"], &["acme"]).await;
    let theirs = core.review_for(&other, &ids[6].0).await.unwrap();
    assert!(
        !theirs.too_fast && theirs.own_pace_ms.is_empty(),
        "each sees only their own pace"
    );
}

countersign_core::store_tests!(
    a_reviewer_deciding_fast_again_and_again_is_warned_and_sees_their_pace,
    after_a_decision_the_next_is_the_same_runs_then_the_oldest_the_reviewer_may_decide,
    fifty_reviewers_approving_at_once_release_it_exactly_once,
    a_reviewer_racing_themselves_counts_once,
    second_approver_must_differ_from_first,
    requester_cannot_approve_own_action,
    only_reviewers_of_the_tenant_see_or_decide,
    a_decision_is_bound_to_what_the_reviewer_saw,
    a_rejection_needs_a_comment_and_ends_it,
    an_expired_proposal_cannot_be_approved,
    quick_decisions_are_flagged_in_history,
    history_pages_through_everything,
);
