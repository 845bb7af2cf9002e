//! Secret-shaped values: API keys, bearer tokens, private keys and long
//! high-entropy strings are refused before a proposal is stored, so they never
//! reach the database, a page or a log. Only *where* one was found is reported.

use regex::{Regex, RegexSet};
use serde_json::Value;
use std::sync::OnceLock;

struct Detector {
    /// The kinds, in the order of `known`'s patterns.
    kinds: Vec<&'static str>,
    /// Every known shape in one automaton: a string is read once, not once
    /// per shape (it runs over each field of every proposal).
    known: RegexSet,
    token: Regex,
}

fn detector() -> &'static Detector {
    static D: OnceLock<Detector> = OnceLock::new();
    D.get_or_init(|| {
        let known: [(&str, &str); 13] = [
            ("private key", r"-----BEGIN[A-Z ]*PRIVATE KEY"),
            ("Stripe key", r"\b[sr]k_(live|test)_[0-9A-Za-z]{10,}"),
            (
                "GitHub token",
                r"\b(gh[pousr]_[0-9A-Za-z]{20,}|github_pat_[0-9A-Za-z_]{20,})",
            ),
            ("Slack token", r"\bxox[abposr]-[0-9A-Za-z-]{10,}"),
            ("AWS access key", r"\b(AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
            ("Google API key", r"\bAIza[0-9A-Za-z_-]{35}"),
            ("OpenAI/Anthropic key", r"\bsk-(ant-|proj-)?[0-9A-Za-z_-]{20,}"),
            ("GitLab token", r"\bglpat-[0-9A-Za-z_-]{20,}"),
            ("JWT", r"\beyJ[0-9A-Za-z_-]{8,}\.eyJ[0-9A-Za-z_-]{8,}\.[0-9A-Za-z_-]*"),
            ("bearer token", r"(?i)\bbearer\s+[0-9A-Za-z._~+/=-]{16,}"),
            ("countersign key", r"\bc[se]k_[0-9A-Za-z]{20,}"),
            ("countersign run token", r"\bcrt_[0-9A-Za-z_-]{10,}\.[0-9A-Za-z_-]{20,}"),
            ("password in URL", r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),
        ];
        Detector {
            kinds: known.iter().map(|(k, _)| *k).collect(),
            known: RegexSet::new(known.iter().map(|(_, p)| *p)).expect("static secret patterns"),
            token: Regex::new(r"[0-9A-Za-z+/=_-]{32,}").expect("static token pattern"),
        }
    })
}

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = [0usize; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// A long run of token characters that looks random: mixed character classes
/// and high entropy. Hex digests (≤ 4 bits/char) and words do not qualify.
fn looks_random(tok: &str) -> bool {
    let classes = [
        tok.bytes().any(|b| b.is_ascii_lowercase()),
        tok.bytes().any(|b| b.is_ascii_uppercase()),
        tok.bytes().any(|b| b.is_ascii_digit()),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    classes >= 3 && entropy(tok) >= 4.3
}

/// The kind of secret `s` looks like, if any.
pub fn secret_kind(s: &str) -> Option<&'static str> {
    let d = detector();
    if let Some(i) = d.known.matches(s).iter().next() {
        return Some(d.kinds[i]);
    }
    d.token
        .find_iter(s)
        .any(|m| looks_random(m.as_str()))
        .then_some("high-entropy string")
}

/// Walk a JSON value and report the path of the first secret-shaped string.
pub fn find_secret(value: &Value, path: &str) -> Option<(String, &'static str)> {
    match value {
        Value::String(s) => secret_kind(s).map(|k| (path.to_owned(), k)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_secret(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            find_secret(v, &p)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_key_shapes_are_found() {
        let cases = [
            "sk_live_51HqLyjWDarjtT1zdp7dcXXXXXXXXXXXX",
            "use ghp_1234567890abcdefghijABCDEFGHIJ123456 please",
            "xoxb-123456789012-1234567890123-abcdefABCDEF",
            "AKIAIOSFODNN7EXAMPLE",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE...",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
            "sk-proj-abcdefghijklmnopqrstuvwxyz123456",
            "csk_4f9Qm2Zx8Lk1Pp0Ww7Rr3Tt6Yy5Uu",
            "postgres://admin:hunter2@db.internal/prod",
        ];
        for c in cases {
            assert!(secret_kind(c).is_some(), "missed: {c}");
        }
    }

    #[test]
    fn long_random_strings_are_found() {
        assert_eq!(
            secret_kind("token=Zx9Qm2L8kPw7Rr3Tt6Yy5Uu1Ii0Oo4Ee8Aa2Ss6Dd"),
            Some("high-entropy string")
        );
    }

    #[test]
    fn ordinary_text_ids_and_digests_pass() {
        let fine = [
            "Issue resolved: reset auth token and verified login",
            "T-18421",
            "C-1234567",
            "req_9f2c:ticket.close:T-18421",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "550e8400-e29b-41d4-a716-446655440000",
            "https://docs.example.com/guide/getting-started/install-on-linux",
            "supercalifragilisticexpialidocious_and_more_words_here",
            "bob@example.com",
            "sk_live is how Stripe names keys",
        ];
        for f in fine {
            assert_eq!(secret_kind(f), None, "false positive: {f}");
        }
    }

    #[test]
    fn the_path_of_a_nested_secret_is_reported_not_its_value() {
        let v = json!({"to": "bob@example.com", "headers": [{"x": "fine"}, {"auth": "ghp_1234567890abcdefghijABCDEFGHIJ123456"}]});
        let (path, kind) = find_secret(&v, "args").unwrap();
        assert_eq!(path, "args.headers[1].auth");
        assert_eq!(kind, "GitHub token");
        assert!(find_secret(&json!({"a": 1, "b": "ok"}), "args").is_none());
    }
}
