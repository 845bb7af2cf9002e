//! Identifiers and the small validated values that cross the edges.
//!
//! Ids are a kind prefix and a ULID (time-ordered, so new rows land at the end
//! of their index): `prp_01j…`. Parse, don't validate: a value of these types
//! has already been checked.

use serde::{Deserialize, Serialize};

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// True when `id` has the given prefix and a well-formed ULID after it.
pub fn is_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|u| u.len() == 26 && u.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// An idempotency key: 1–200 printable ASCII characters (docs/api.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 200 {
            return Err("idempotency_key must be 1 to 200 characters".into());
        }
        if !s.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return Err("idempotency_key must be printable ASCII".into());
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tenant or environment name: a short lowercase slug.
pub fn parse_slug(what: &str, s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{what} {s:?} must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit"
        ))
    }
}

/// Whether `s` is a tool name: lowercase words of letters, digits and `_`
/// joined by dots (`ticket.close`), at most 100 characters. Checked before a
/// name a caller sent goes anywhere (logs, audit, queries).
pub fn is_tool_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.split('.').all(|w| {
            w.starts_with(|c: char| c.is_ascii_lowercase())
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// A tool name a caller sent, checked.
pub fn parse_tool_name(s: &str) -> Result<&str, String> {
    if is_tool_name(s) {
        Ok(s)
    } else {
        Err("tool must be lowercase words of letters, digits and '_' joined by dots, at most 100 characters".into())
    }
}

/// A person's login name.
pub fn parse_username(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "username {s:?} must be 1-64 characters of letters, digits, '-', '_', '.' or '@'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_carry_their_prefix_and_parse_back() {
        let id = new_id("prp");
        assert!(id.starts_with("prp_"));
        assert!(is_id("prp", &id));
        assert!(!is_id("run", &id));
        assert!(!is_id("prp", "prp_short"));
    }

    #[test]
    fn idempotency_key_is_bounded_and_printable() {
        assert!(IdempotencyKey::parse("req_9f2c:ticket.close:T-18421").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"x".repeat(201)).is_err());
        assert!(IdempotencyKey::parse(&"x".repeat(200)).is_ok());
        assert!(IdempotencyKey::parse("tab\there").is_err());
        assert!(IdempotencyKey::parse("é").is_err());
    }

    #[test]
    fn tool_names_are_dotted_lowercase_words() {
        assert!(is_tool_name("ticket.close"));
        assert!(is_tool_name("kb.search_v2"));
        assert!(!is_tool_name("Ticket.close"));
        assert!(!is_tool_name("ticket..close"));
        assert!(!is_tool_name("ticket.close\nINFO forged"));
        assert!(!is_tool_name(""));
        assert!(!is_tool_name(&"a".repeat(101)));
    }

    #[test]
    fn slugs_refuse_uppercase_and_punctuation() {
        assert!(parse_slug("tenant", "acme").is_ok());
        assert!(parse_slug("tenant", "acme-2").is_ok());
        assert!(parse_slug("tenant", "Acme").is_err());
        assert!(parse_slug("tenant", "-acme").is_err());
        assert!(parse_slug("tenant", "").is_err());
        assert!(parse_slug("tenant", "a/b").is_err());
    }
}
