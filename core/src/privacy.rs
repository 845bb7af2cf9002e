//! Personal data in args (policy `pii = true`): how a value looks where it
//! must not be read (masked), how free text is cleaned of it (previews,
//! reasons, results), and the marker an erased value leaves behind. Pure:
//! no I/O. Who may read what is decided by the use-cases (`service`).

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;
use std::collections::BTreeSet;

/// What an erased value, preview or receipt is replaced by.
pub const ERASED: &str = "[personal data erased]";

/// A personal value shorter than this is not looked for in free text: two
/// or three characters would match inside ordinary words. It is still masked
/// and erased where it is an arg.
pub const MIN_FOUND_CHARS: usize = 4;

/// A personal value as people other than its reviewers see it: an email
/// address keeps its first character and its domain (`d…@example.com`), any
/// other text only its length (`[personal data, 214 chars]`), and numbers
/// and booleans nothing. An erased value stays the erasure marker.
pub fn mask(v: &Value) -> Value {
    match v {
        Value::Null => Value::Null,
        Value::String(s) => Value::String(mask_text(s)),
        _ => Value::String("[personal data]".into()),
    }
}

fn mask_text(s: &str) -> String {
    if s == ERASED {
        return s.to_owned();
    }
    if let Some((local, domain)) = email_parts(s) {
        let first: String = local.chars().take(1).collect();
        return format!("{first}…@{domain}");
    }
    match s.chars().count() {
        1 => "[personal data, 1 char]".into(),
        n => format!("[personal data, {n} chars]"),
    }
}

/// `local@domain` when `s` is one email address and nothing else.
fn email_parts(s: &str) -> Option<(&str, &str)> {
    let (local, domain) = s.split_once('@')?;
    let plain = |p: &str| !p.is_empty() && !p.contains('@') && !p.chars().any(char::is_whitespace);
    (plain(local) && plain(domain) && domain.contains('.')).then_some((local, domain))
}

/// `args` with each personal field masked.
pub fn masked_args(args: &Value, personal: &BTreeSet<String>) -> Value {
    map_personal(args, personal, mask)
}

/// `args` with each personal field replaced by the erasure marker.
pub fn erased_args(args: &Value, personal: &BTreeSet<String>) -> Value {
    map_personal(args, personal, |v| match v {
        Value::Null => Value::Null,
        _ => Value::String(ERASED.into()),
    })
}

fn map_personal(args: &Value, personal: &BTreeSet<String>, f: impl Fn(&Value) -> Value) -> Value {
    let mut out = args.clone();
    if let Some(obj) = out.as_object_mut() {
        for (name, v) in obj.iter_mut() {
            if personal.contains(name) {
                *v = f(v);
            }
        }
    }
    out
}

/// Finds the personal values of one proposal's args wherever free text may
/// repeat them (a reason, a preview, an executor's result, a comment), with
/// the case of ASCII letters ignored, and replaces each: by its mask, or by
/// the erasure marker. Built in time linear in the values, so a page or an
/// export of many proposals builds one per proposal cheaply.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    found: Option<AhoCorasick>,
    /// What replaces each value, by its index in `found`.
    replacements: Vec<String>,
    /// The values that are numbers (a number arg, or text that is one), with
    /// the index of what replaces them: a JSON number equal to one is the
    /// value too, though no text search sees it.
    numbers: Vec<(f64, usize)>,
}

impl Redactor {
    /// Replaces each personal value of `args` by its mask.
    pub fn masking(args: &Value, personal: &BTreeSet<String>) -> Redactor {
        Self::build(args, personal, |v| match mask(v) {
            Value::String(s) => s,
            other => other.to_string(),
        })
    }

    /// Replaces each personal value of `args` by the erasure marker.
    pub fn erasing(args: &Value, personal: &BTreeSet<String>) -> Redactor {
        Self::build(args, personal, |_| ERASED.to_owned())
    }

    fn build(args: &Value, personal: &BTreeSet<String>, replace: impl Fn(&Value) -> String) -> Redactor {
        let mut values: Vec<(String, String)> = Vec::new();
        for (name, v) in args.as_object().into_iter().flatten() {
            if !personal.contains(name) {
                continue;
            }
            let text = match v {
                Value::String(s) if s != ERASED => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            if text.chars().count() >= MIN_FOUND_CHARS {
                values.push((text, replace(v)));
            }
        }
        values.sort_by_key(|(v, _)| v.to_ascii_lowercase());
        values.dedup_by(|a, b| a.0.eq_ignore_ascii_case(&b.0));
        if values.is_empty() {
            return Redactor::default();
        }
        // Leftmost-longest: where one value contains another, the whole is
        // replaced.
        let found = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build(values.iter().map(|(v, _)| v))
            .ok();
        // As JSON reads them: "4915112345678" is a number, "0049…" and
        // "+49…" are not.
        let numbers = values
            .iter()
            .enumerate()
            .filter_map(|(i, (v, _))| Some((v.parse::<serde_json::Number>().ok()?.as_f64()?, i)))
            .collect();
        Redactor {
            found,
            replacements: values.into_iter().map(|(_, r)| r).collect(),
            numbers,
        }
    }

    /// What replaces a JSON number equal to a personal value.
    fn number(&self, n: &serde_json::Number) -> Option<&str> {
        let n = n.as_f64()?;
        let (_, i) = self.numbers.iter().find(|(v, _)| *v == n)?;
        Some(&self.replacements[*i])
    }

    /// Whether there is anything to look for.
    pub fn is_empty(&self) -> bool {
        self.found.is_none()
    }

    /// Whether `text` holds a personal value.
    pub fn finds(&self, text: &str) -> bool {
        self.found.as_ref().is_some_and(|ac| ac.is_match(text))
    }

    /// `text` with every personal value replaced.
    pub fn text(&self, text: &str) -> String {
        match &self.found {
            None => text.to_owned(),
            Some(ac) => {
                let mut out = String::with_capacity(text.len());
                ac.replace_all_with(text, &mut out, |m, _, dst| {
                    dst.push_str(&self.replacements[m.pattern().as_usize()]);
                    true
                });
                out
            }
        }
    }

    /// A JSON value with every personal value replaced in its strings (keys
    /// included), and each number equal to a personal value replaced whole
    /// (by a string: the marker or the mask). Booleans stay: `true` alone
    /// names no one.
    pub fn json(&self, v: &Value) -> Value {
        if self.is_empty() {
            return v.clone();
        }
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Number(n) => match self.number(n) {
                Some(r) => Value::String(r.to_owned()),
                None => v.clone(),
            },
            Value::Array(a) => Value::Array(a.iter().map(|x| self.json(x)).collect()),
            Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (self.text(k), self.json(x))).collect()),
            other => other.clone(),
        }
    }

    /// Stored JSON text with every personal value replaced, as `json` does:
    /// read as JSON (a value may be written escaped there), or as plain text
    /// if it is not JSON.
    pub fn json_text(&self, stored: &str) -> String {
        if self.is_empty() {
            return stored.to_owned();
        }
        match serde_json::from_str::<Value>(stored) {
            Ok(v) => self.json(&v).to_string(),
            Err(_) => self.text(stored),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn personal(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_email_address_keeps_its_first_letter_and_domain() {
        assert_eq!(mask(&json!("dana.smith@example.com")), json!("d…@example.com"));
        assert_eq!(mask(&json!("d@example.org")), json!("d…@example.org"));
    }

    #[test]
    fn other_text_keeps_only_its_length() {
        let body = "x".repeat(214);
        assert_eq!(mask(&json!(body)), json!("[personal data, 214 chars]"));
        assert_eq!(mask(&json!("Dana Smith")), json!("[personal data, 10 chars]"));
        assert_eq!(mask(&json!("D")), json!("[personal data, 1 char]"));
        assert_eq!(
            mask(&json!("write to dana@example.com today")),
            json!("[personal data, 31 chars]"),
            "text around an address is not an address"
        );
        assert_eq!(mask(&json!(42)), json!("[personal data]"));
        assert_eq!(mask(&json!(true)), json!("[personal data]"));
        assert_eq!(mask(&Value::Null), Value::Null);
        assert_eq!(mask(&json!(ERASED)), json!(ERASED), "an erased value says so");
    }

    #[test]
    fn only_personal_fields_are_masked_or_erased() {
        let args = json!({"to": "dana@example.com", "subject": "Your refund", "body": "Hello Dana", "cc": null});
        let p = personal(&["to", "body", "cc"]);
        assert_eq!(
            masked_args(&args, &p),
            json!({"to": "d…@example.com", "subject": "Your refund", "body": "[personal data, 10 chars]", "cc": null})
        );
        assert_eq!(
            erased_args(&args, &p),
            json!({"to": ERASED, "subject": "Your refund", "body": ERASED, "cc": null})
        );
        assert_eq!(masked_args(&args, &BTreeSet::new()), args);
    }

    #[test]
    fn free_text_loses_every_personal_value_whatever_its_ascii_case() {
        let args = json!({"to": "dana@example.com", "name": "Dana Smith", "subject": "Refund"});
        let r = Redactor::masking(&args, &personal(&["to", "name"]));
        assert_eq!(
            r.text("Mail DANA@example.com for Dana Smith about the Refund"),
            "Mail d…@example.com for [personal data, 10 chars] about the Refund"
        );
        let e = Redactor::erasing(&args, &personal(&["to", "name"]));
        assert_eq!(e.text("to: dana@example.com"), format!("to: {ERASED}"));
        assert!(e.finds("cc Dana smith"));
        assert!(!e.finds("nothing personal"));
    }

    #[test]
    fn the_longer_of_two_overlapping_values_is_replaced_whole() {
        let args = json!({"a": "dana", "b": "dana@example.com"});
        let e = Redactor::erasing(&args, &personal(&["a", "b"]));
        assert_eq!(e.text("dana@example.com and dana"), format!("{ERASED} and {ERASED}"));
    }

    #[test]
    fn short_values_are_not_looked_for_in_text() {
        let args = json!({"initials": "DS", "id": 12});
        let r = Redactor::erasing(&args, &personal(&["initials", "id"]));
        assert!(r.is_empty());
        assert_eq!(r.text("DS paid 12"), "DS paid 12");
    }

    #[test]
    fn json_is_cleaned_in_its_strings_and_keys() {
        let args = json!({"to": "dana@example.com", "phone": 4915112345678_i64});
        let e = Redactor::erasing(&args, &personal(&["to", "phone"]));
        let stored = json!({"sent_to": "dana@example.com", "dana@example.com": [1, "call 4915112345678"]}).to_string();
        let clean: Value = serde_json::from_str(&e.json_text(&stored)).unwrap();
        assert_eq!(clean, json!({"sent_to": ERASED, ERASED: [1, format!("call {ERASED}")]}));
        assert!(!e.json_text(&stored).contains("dana"));
        assert_eq!(e.json_text("not json: dana@example.com"), format!("not json: {ERASED}"));
    }

    #[test]
    fn a_number_equal_to_a_personal_value_is_replaced_whole() {
        let args = json!({"phone": 4915112345678_i64, "to": "dana@example.com", "floor": 3});
        let p = personal(&["phone", "to", "floor"]);
        let result = json!({
            "called": 4915112345678_i64, "as_float": 4915112345678.0, "in_a_list": [4915112345678_i64],
            "neighbour": 4915112345679_i64, "count": 3, "ok": true, "note": "rang 4915112345678",
        });
        let e = Redactor::erasing(&args, &p);
        assert_eq!(
            e.json(&result),
            json!({
                "called": ERASED, "as_float": ERASED, "in_a_list": [ERASED],
                "neighbour": 4915112345679_i64, "count": 3, "ok": true, "note": format!("rang {ERASED}"),
            }),
            "short numbers, like short text, are not looked for; booleans stay"
        );
        let stored = e.json_text(&result.to_string());
        assert!(!stored.contains("4915112345678"), "{stored}");
        let m = Redactor::masking(&args, &p);
        assert_eq!(
            m.json(&json!({"called": 4915112345678_i64}))["called"],
            "[personal data]"
        );
        assert_eq!(
            m.json_text(r#"{"called":4915112345678}"#),
            r#"{"called":"[personal data]"}"#
        );
    }

    #[test]
    fn a_number_equal_to_personal_text_is_that_value() {
        let args = json!({"phone": "4915112345678", "code": "0049151", "id": "-2024"});
        let e = Redactor::erasing(&args, &personal(&["phone", "code", "id"]));
        assert_eq!(
            e.json(&json!([4915112345678_i64, 49151, -2024, 2024])),
            json!([ERASED, 49151, ERASED, 2024]),
            "text that JSON does not read as that number is not it"
        );
    }

    #[test]
    fn values_are_matched_as_literals() {
        let args = json!({"q": "a+b (c)*"});
        let e = Redactor::erasing(&args, &personal(&["q"]));
        assert_eq!(e.text("x a+b (c)* y aab c"), format!("x {ERASED} y aab c"));
    }
}
