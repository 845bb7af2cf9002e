//! The audit chain: an append-only log in which each event carries the hash of
//! the one before it, so editing, deleting, reordering or truncating history is
//! detectable. Events are appended by the store inside the same transaction as
//! the state change they record; this module owns the hashing and verification.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

tokio::task_local! {
    /// The id of the HTTP request being served, recorded in its audit events.
    pub static REQUEST_ID: String;
}

/// The request id of the task serving a request, if any. The store captures
/// it when a write is submitted (the writer runs in its own task).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|r| r.clone()).ok()
}

/// The hash the first event chains from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a use-case says about itself; the store adds seq, time, and hashes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditDraft {
    pub request_id: Option<String>,
    pub tenant: Option<String>,
    /// `user:alice`, `run:run_…`, `key:key_…`, `system`, `cli`.
    pub actor: String,
    /// Dotted verb: `proposal.created`, `decision.approve`, `job.claimed`, …
    pub action: String,
    /// The object acted on: a proposal, run, job, user or key id.
    pub subject: Option<String>,
    pub tool: Option<String>,
    pub args_hash: Option<String>,
    pub idempotency_key: Option<String>,
    /// `service:acme/prod`, `run:acme/prod/support/send`, `session:reviewer`, …
    pub credential_scope: Option<String>,
    pub approval_ids: Vec<String>,
    /// `ok`, `denied:tool_denied`, `refused:…`, `succeeded`, `failed`…
    pub result_status: String,
    pub duration_ms: Option<i64>,
    /// Small structured extras (never args values or secrets).
    pub details: Option<serde_json::Value>,
}

impl AuditDraft {
    pub fn new(actor: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            result_status: "ok".into(),
            ..Default::default()
        }
    }
    pub fn subject(mut self, s: impl Into<String>) -> Self {
        self.subject = Some(s.into());
        self
    }
    pub fn tenant(mut self, t: impl Into<String>) -> Self {
        self.tenant = Some(t.into());
        self
    }
    pub fn tool(mut self, t: impl Into<String>) -> Self {
        self.tool = Some(t.into());
        self
    }
    pub fn status(mut self, s: impl Into<String>) -> Self {
        self.result_status = s.into();
        self
    }
    pub fn scope(mut self, s: impl Into<String>) -> Self {
        self.credential_scope = Some(s.into());
        self
    }
    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = Some(d);
        self
    }
    pub fn request(mut self, r: Option<String>) -> Self {
        self.request_id = r;
        self
    }
}

/// A stored event. Field order here is the order hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AuditEvent {
    pub seq: i64,
    pub id: String,
    pub at_ms: i64,
    pub request_id: Option<String>,
    pub tenant: Option<String>,
    pub actor: String,
    pub action: String,
    pub subject: Option<String>,
    pub tool: Option<String>,
    pub args_hash: Option<String>,
    pub idempotency_key: Option<String>,
    pub credential_scope: Option<String>,
    /// JSON array of decision ids.
    pub approval_ids: String,
    pub result_status: String,
    pub duration_ms: Option<i64>,
    /// JSON, or empty.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEvent {
    pub fn from_draft(d: AuditDraft, seq: i64, at_ms: i64, prev_hash: &str) -> Self {
        let mut e = AuditEvent {
            seq,
            id: crate::ids::new_id("evt"),
            at_ms,
            request_id: d.request_id,
            tenant: d.tenant,
            actor: d.actor,
            action: d.action,
            subject: d.subject,
            tool: d.tool,
            args_hash: d.args_hash,
            idempotency_key: d.idempotency_key,
            credential_scope: d.credential_scope,
            approval_ids: serde_json::to_string(&d.approval_ids).unwrap_or_else(|_| "[]".into()),
            result_status: d.result_status,
            duration_ms: d.duration_ms,
            details: d.details.map(|v| v.to_string()).unwrap_or_default(),
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }

    /// SHA-256 over a length-prefixed encoding of every field but `hash`, so no
    /// two different events can encode alike.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        let opt = |o: &Option<String>| o.clone().map_or_else(|| "\u{0}".to_owned(), |s| format!("={s}"));
        field("countersign-audit-v1");
        field(&self.seq.to_string());
        field(&self.id);
        field(&self.at_ms.to_string());
        field(&opt(&self.request_id));
        field(&opt(&self.tenant));
        field(&self.actor);
        field(&self.action);
        field(&opt(&self.subject));
        field(&opt(&self.tool));
        field(&opt(&self.args_hash));
        field(&opt(&self.idempotency_key));
        field(&opt(&self.credential_scope));
        field(&self.approval_ids);
        field(&self.result_status);
        field(&self.duration_ms.map_or_else(|| "\u{0}".into(), |d| d.to_string()));
        field(&self.details);
        field(&self.prev_hash);
        hex::encode(h.finalize())
    }
}

/// Where and why a chain stops verifying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// The sequence number of the first event that fails, if an event does.
    pub seq: Option<i64>,
    pub event_id: Option<String>,
    pub reason: String,
}

/// Checks events one at a time, in `seq` order, so a chain of millions is
/// verified in pages without holding it in memory.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: String,
    pub checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            prev_hash: GENESIS.to_owned(),
            checked: 0,
        }
    }
}

impl ChainVerifier {
    /// Carry on from an event already verified: `seq` and its hash.
    pub fn resume(seq: i64, hash: &str, checked: u64) -> ChainVerifier {
        ChainVerifier {
            expected_seq: seq + 1,
            prev_hash: hash.to_owned(),
            checked,
        }
    }

    /// The last event verified so far: its seq and hash.
    pub fn position(&self) -> (i64, &str) {
        (self.expected_seq - 1, &self.prev_hash)
    }

    pub fn check(&mut self, e: &AuditEvent) -> Result<(), ChainBreak> {
        let brk = |reason: String| ChainBreak {
            seq: Some(e.seq),
            event_id: Some(e.id.clone()),
            reason,
        };
        if e.seq != self.expected_seq {
            return Err(brk(if e.seq > self.expected_seq {
                format!("event {} is missing (found {} next)", self.expected_seq, e.seq)
            } else {
                format!("sequence goes back: {} after {}", e.seq, self.expected_seq - 1)
            }));
        }
        if e.prev_hash != self.prev_hash {
            return Err(brk("its prev_hash does not match the hash of the event before it (an event was removed, reordered or edited)".into()));
        }
        if e.compute_hash() != e.hash {
            return Err(brk("its content does not match its hash (the event was edited)".into()));
        }
        self.expected_seq += 1;
        self.prev_hash = e.hash.clone();
        self.checked += 1;
        Ok(())
    }

    /// After the last event: the chain's recorded head must be where it ended,
    /// or events were cut off the end.
    pub fn finish(&self, head_seq: i64, head_hash: &str) -> Result<(), ChainBreak> {
        let last = self.expected_seq - 1;
        if head_seq != last || head_hash != self.prev_hash {
            return Err(ChainBreak {
                seq: Some(last + 1),
                event_id: None,
                reason: format!(
                    "the chain head records event {head_seq} but the log ends at event {last} (events were truncated or the head was edited)"
                ),
            });
        }
        Ok(())
    }
}

/// JSON with object keys sorted at every level, whatever map type serde_json
/// was built with: equal values always encode alike.
pub fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// SHA-256 (hex) of the canonical encoding of a JSON value.
pub fn hash_json(v: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(canonical_json(v).as_bytes()))
}

/// SHA-256 (hex) over length-prefixed parts.
pub fn hash_parts(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|i| {
                let e = AuditEvent::from_draft(
                    AuditDraft::new("user:alice", "proposal.created").subject(format!("prp_{i}")),
                    i,
                    1000 + i,
                    &prev,
                );
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn verify(events: &[AuditEvent], head: (i64, &str)) -> Result<u64, ChainBreak> {
        let mut v = ChainVerifier::default();
        for e in events {
            v.check(e)?;
        }
        v.finish(head.0, head.1)?;
        Ok(v.checked)
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let c = chain(5);
        let head = c.last().unwrap().hash.clone();
        assert_eq!(verify(&c, (5, &head)), Ok(5));
        assert_eq!(verify(&[], (0, GENESIS)), Ok(0));
    }

    #[test]
    fn an_edited_event_is_named() {
        let mut c = chain(5);
        let head = c.last().unwrap().hash.clone();
        c[2].actor = "user:mallory".into();
        let b = verify(&c, (5, &head)).unwrap_err();
        assert_eq!(b.seq, Some(3));
        assert!(b.reason.contains("edited"));
    }

    #[test]
    fn an_edited_event_with_a_recomputed_hash_breaks_the_next_link() {
        let mut c = chain(5);
        let head = c.last().unwrap().hash.clone();
        c[1].result_status = "denied".into();
        c[1].hash = c[1].compute_hash();
        assert_eq!(verify(&c, (5, &head)).unwrap_err().seq, Some(3));
    }

    #[test]
    fn a_deleted_event_is_named() {
        let mut c = chain(5);
        let head = c.last().unwrap().hash.clone();
        c.remove(1);
        let b = verify(&c, (5, &head)).unwrap_err();
        assert_eq!(b.seq, Some(3));
        assert!(b.reason.contains("missing"));
    }

    #[test]
    fn reordered_events_are_named() {
        let mut c = chain(5);
        let head = c.last().unwrap().hash.clone();
        // Swap the contents of 2 and 3 but keep seq in order, as an UPDATE would.
        let (a, b) = (c[1].clone(), c[2].clone());
        c[1] = AuditEvent { seq: 2, ..b };
        c[2] = AuditEvent { seq: 3, ..a };
        assert_eq!(verify(&c, (5, &head)).unwrap_err().seq, Some(2));
    }

    #[test]
    fn truncation_is_caught_by_the_head() {
        let mut c = chain(5);
        let head = c.last().unwrap().hash.clone();
        c.truncate(3);
        let b = verify(&c, (5, &head)).unwrap_err();
        assert!(b.reason.contains("truncated"), "{}", b.reason);
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":"s"}}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(hash_json(&a), hash_json(&b));
        assert_ne!(hash_parts(&["ab", "c"]), hash_parts(&["a", "bc"]));
    }

    #[test]
    fn hash_covers_every_field() {
        let base = chain(1).remove(0);
        let variants: Vec<AuditEvent> = vec![
            AuditEvent {
                request_id: Some("r".into()),
                ..base.clone()
            },
            AuditEvent {
                tenant: Some("t".into()),
                ..base.clone()
            },
            AuditEvent {
                tool: Some("x".into()),
                ..base.clone()
            },
            AuditEvent {
                args_hash: Some("h".into()),
                ..base.clone()
            },
            AuditEvent {
                idempotency_key: Some("k".into()),
                ..base.clone()
            },
            AuditEvent {
                credential_scope: Some("s".into()),
                ..base.clone()
            },
            AuditEvent {
                approval_ids: "[\"d\"]".into(),
                ..base.clone()
            },
            AuditEvent {
                duration_ms: Some(1),
                ..base.clone()
            },
            AuditEvent {
                details: "{}".into(),
                ..base.clone()
            },
            AuditEvent {
                at_ms: 1,
                ..base.clone()
            },
            AuditEvent {
                subject: None,
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.compute_hash(), base.hash, "{v:?}");
        }
    }
}
