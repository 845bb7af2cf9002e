//! Args schemas: each tool declares a closed set of typed, bounded fields, and
//! proposals' args are checked against them before anything is stored.

use regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;

/// The longest string any field accepts, whatever the policy says: a pattern
/// alone bounds the shape, this bounds the size.
pub const HARD_MAX_STRING: usize = 4096;

#[derive(Debug, Clone)]
pub enum FieldType {
    String { max_len: usize, pattern: Option<Regex> },
    Integer { min: i64, max: i64 },
    Enum { values: Vec<String> },
    Boolean,
}

#[derive(Debug, Clone)]
pub struct FieldSchema {
    pub ty: FieldType,
    pub required: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ArgsSchema {
    pub fields: BTreeMap<String, FieldSchema>,
}

/// Problems found in args: field name → a sentence about it.
pub type FieldProblems = BTreeMap<String, String>;

impl ArgsSchema {
    /// Check `args` against the schema. Unknown fields are refused (the schema is
    /// closed); every problem is reported, not only the first.
    pub fn validate(&self, args: &Value) -> Result<(), FieldProblems> {
        let mut problems = FieldProblems::new();
        let Some(obj) = args.as_object() else {
            problems.insert("args".into(), "must be a JSON object".into());
            return Err(problems);
        };
        for key in obj.keys() {
            if !self.fields.contains_key(key) {
                problems.insert(key.clone(), "unknown field".into());
            }
        }
        for (name, field) in &self.fields {
            match obj.get(name) {
                None | Some(Value::Null) => {
                    if field.required {
                        problems.insert(name.clone(), "is required".into());
                    }
                }
                Some(v) => {
                    if let Err(p) = field.ty.check(v) {
                        problems.insert(name.clone(), p);
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

impl FieldType {
    fn check(&self, v: &Value) -> Result<(), String> {
        match self {
            FieldType::String { max_len, pattern } => {
                let s = v.as_str().ok_or("must be a string")?;
                let n = s.chars().count();
                if n > *max_len {
                    return Err(format!("must be at most {max_len} characters (got {n})"));
                }
                if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                    return Err("must not contain control characters".into());
                }
                if let Some(re) = pattern {
                    if !re.is_match(s) {
                        return Err(format!("must match {}", re.as_str()));
                    }
                }
                Ok(())
            }
            FieldType::Integer { min, max } => {
                let i = v
                    .as_i64()
                    .filter(|_| v.is_i64() || v.is_u64())
                    .ok_or("must be an integer")?;
                if i < *min || i > *max {
                    return Err(format!("must be between {min} and {max}"));
                }
                Ok(())
            }
            FieldType::Enum { values } => {
                let s = v.as_str().ok_or("must be a string")?;
                if values.iter().any(|x| x == s) {
                    Ok(())
                } else {
                    Err(format!("must be one of {}", values.join(", ")))
                }
            }
            FieldType::Boolean => v.as_bool().map(|_| ()).ok_or_else(|| "must be true or false".into()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            FieldType::String { max_len, pattern } => match pattern {
                Some(p) => format!("string matching {} (≤ {max_len})", p.as_str()),
                None => format!("string (≤ {max_len})"),
            },
            FieldType::Integer { min, max } => format!("integer {min}..{max}"),
            FieldType::Enum { values } => format!("one of {}", values.join(", ")),
            FieldType::Boolean => "true or false".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> ArgsSchema {
        let mut fields = BTreeMap::new();
        fields.insert(
            "ticket_id".into(),
            FieldSchema {
                ty: FieldType::String {
                    max_len: HARD_MAX_STRING,
                    pattern: Some(Regex::new("^T-[0-9]{1,10}$").unwrap()),
                },
                required: true,
            },
        );
        fields.insert(
            "reason".into(),
            FieldSchema {
                ty: FieldType::String {
                    max_len: 10,
                    pattern: None,
                },
                required: false,
            },
        );
        fields.insert(
            "amount".into(),
            FieldSchema {
                ty: FieldType::Integer { min: 1, max: 100 },
                required: false,
            },
        );
        fields.insert(
            "currency".into(),
            FieldSchema {
                ty: FieldType::Enum {
                    values: vec!["EUR".into(), "USD".into()],
                },
                required: false,
            },
        );
        fields.insert(
            "notify".into(),
            FieldSchema {
                ty: FieldType::Boolean,
                required: false,
            },
        );
        ArgsSchema { fields }
    }

    #[test]
    fn valid_args_pass() {
        let s = schema();
        assert!(s
            .validate(&json!({"ticket_id": "T-1", "reason": "done", "amount": 5, "currency": "EUR", "notify": true}))
            .is_ok());
    }

    #[test]
    fn unknown_fields_are_refused_because_schemas_are_closed() {
        let e = schema()
            .validate(&json!({"ticket_id": "T-1", "admin": true}))
            .unwrap_err();
        assert_eq!(e.get("admin").map(String::as_str), Some("unknown field"));
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let e = schema()
            .validate(&json!({"reason": "far too long a reason", "amount": 500, "currency": "GBP", "notify": "yes"}))
            .unwrap_err();
        assert_eq!(e["ticket_id"], "is required");
        assert!(e["reason"].contains("at most 10"), "{}", e["reason"]);
        assert!(e["amount"].contains("between 1 and 100"));
        assert!(e["currency"].contains("EUR, USD"));
        assert!(e["notify"].contains("true or false"));
    }

    #[test]
    fn wrong_types_are_refused() {
        let e = schema()
            .validate(&json!({"ticket_id": 5, "amount": 1.5, "currency": 1}))
            .unwrap_err();
        assert_eq!(e["ticket_id"], "must be a string");
        assert_eq!(e["amount"], "must be an integer");
        assert_eq!(e["currency"], "must be a string");
        assert!(schema().validate(&json!(["T-1"])).is_err());
        assert!(schema().validate(&json!({"ticket_id": "T-1", "amount": "5"})).is_err());
    }

    #[test]
    fn pattern_must_match_the_whole_value() {
        let s = schema();
        assert!(s.validate(&json!({"ticket_id": "T-12345678901"})).is_err());
        assert!(s.validate(&json!({"ticket_id": "xT-1"})).is_err());
    }

    #[test]
    fn control_characters_are_refused_in_strings() {
        let e = schema()
            .validate(&json!({"ticket_id": "T-1", "reason": "a\u{7}b"}))
            .unwrap_err();
        assert!(e["reason"].contains("control"));
    }

    #[test]
    fn null_counts_as_missing() {
        let e = schema().validate(&json!({"ticket_id": null})).unwrap_err();
        assert_eq!(e["ticket_id"], "is required");
        assert!(schema().validate(&json!({"ticket_id": "T-1", "reason": null})).is_ok());
    }
}
