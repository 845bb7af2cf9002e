//! Property tests of the parsers that take untrusted input: the policy loader,
//! args validation, run tokens, secret detection and canonical JSON. None may
//! panic on any input; where a value goes out and comes back, it comes back
//! the same.

use countersign_core::audit::{canonical_json, hash_json};
use countersign_core::policy::load_policy;
use countersign_core::secrets::{find_secret, secret_kind};
use countersign_core::tokens::{Keyring, RunClaims, SigningKey};
use proptest::prelude::*;
use serde_json::{json, Value};

const EXAMPLE: &str = include_str!("../../examples/policy.toml");

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_policy_loader_never_panics_on_any_text(text in ".{0,400}") {
        let _ = load_policy(&text);
    }

    #[test]
    fn the_policy_loader_never_panics_on_a_mangled_real_policy(cut in 0usize..EXAMPLE.len(), junk in ".{0,40}") {
        let mut text = EXAMPLE.to_owned();
        let at = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &junk);
        if let Err(problems) = load_policy(&text) {
            prop_assert!(!problems.is_empty(), "a refusal says why");
            for p in problems {
                if let Some(line) = p.line {
                    prop_assert!(line >= 1 && line <= text.lines().count() + 1, "line {line} is in the file");
                }
            }
        }
    }

    #[test]
    fn args_validation_never_panics_and_refusals_name_fields(args in json_value()) {
        let policy = load_policy(EXAMPLE).unwrap();
        for tool in policy.tools.values() {
            if let Err(fields) = tool.args.validate(&args) {
                prop_assert!(!fields.is_empty());
            }
        }
    }

    #[test]
    fn valid_refund_args_pass_and_out_of_range_amounts_do_not(amount in any::<i64>(), customer in "C-[0-9]{1,8}") {
        let policy = load_policy(EXAMPLE).unwrap();
        let tool = policy.tool("refund.create").unwrap();
        let args = json!({ "customer_id": customer, "amount_cents": amount, "currency": "EUR" });
        let ok = (1..=100_000).contains(&amount);
        prop_assert_eq!(tool.args.validate(&args).is_ok(), ok);
    }

    /// The args schemas the API document publishes say
    /// what the gate does: an independent JSON Schema validator agrees with
    /// `validate` on random args and on args built to be valid.
    #[test]
    fn the_published_args_schema_agrees_with_validation(
        args in json_value(),
        ticket in "T-[0-9]{1,12}",
        reason in "[ -~\n\t\u{80}-\u{2000}]{0,210}",
        assignee in "[a-z][a-z0-9._-]{0,70}",
    ) {
        let policy = load_policy(EXAMPLE).unwrap();
        let built = [
            json!({ "ticket_id": ticket, "reason": reason }),
            json!({ "ticket_id": ticket, "assignee": assignee }),
            json!({ "ticket_id": ticket }),
        ];
        for tool in policy.tools.values() {
            let schema = jsonschema::validator_for(&tool.args.json_schema()).unwrap();
            for a in built.iter().chain([&args]) {
                prop_assert_eq!(schema.is_valid(a), tool.args.validate(a).is_ok(), "{} {}", tool.name, a);
            }
        }
    }

    #[test]
    fn run_token_parsing_never_panics_on_any_text(token in ".{0,200}", dotted in "crt_[a-z0-9_.]{0,80}") {
        let ring = Keyring::new(vec![SigningKey::generate()]);
        prop_assert!(ring.verify(&token, 0).is_err(), "a random text is never a token");
        let _ = ring.verify(&dotted, 0);
        let _ = Keyring::key_id_of(&token);
    }

    #[test]
    fn run_tokens_round_trip_and_any_changed_character_is_refused(
        tenant in "[a-z][a-z0-9-]{0,20}",
        route in "[a-z]{1,10}/[a-z]{1,10}",
        tools in prop::collection::vec("[a-z]{1,8}\\.[a-z]{1,8}", 0..5),
        flip in any::<prop::sample::Index>(),
    ) {
        let ring = Keyring::new(vec![SigningKey::generate()]);
        let claims = RunClaims { run: "run_x".into(), tenant, env: "prod".into(), route, tools, exp: 2_000 };
        let token = ring.sign(&claims).unwrap();
        prop_assert_eq!(ring.verify(&token, 1_000).unwrap(), claims);
        let mut bytes = token.clone().into_bytes();
        let i = flip.index(bytes.len());
        bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
        let changed = String::from_utf8(bytes).unwrap();
        if changed != token {
            prop_assert!(ring.verify(&changed, 1_000).is_err(), "{changed}");
        }
    }

    #[test]
    fn secret_detection_never_panics_and_finds_planted_keys(
        text in ".{0,200}",
        before in "[a-z ]{0,20}",
        body in "[0-9A-Za-z]{40}",
    ) {
        let _ = secret_kind(&text);
        let planted = format!("{before} sk_live_{body} ");
        prop_assert!(secret_kind(&planted).is_some(), "{planted}");
        let nested = json!({ "a": [1, { "note": planted }] });
        let found = find_secret(&nested, "args");
        prop_assert_eq!(found.map(|(path, _)| path), Some("args.a[1].note".to_owned()));
    }

    #[test]
    fn canonical_json_round_trips_and_ignores_key_order(v in json_value()) {
        let text = canonical_json(&v);
        let back: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(canonical_json(&back), text.clone());
        // The same object built in reverse key order encodes alike.
        if let Value::Object(m) = &v {
            let reversed: serde_json::Map<String, Value> = m.iter().rev().map(|(k, x)| (k.clone(), x.clone())).collect();
            prop_assert_eq!(canonical_json(&Value::Object(reversed.clone())), text);
            prop_assert_eq!(hash_json(&Value::Object(reversed)), hash_json(&v));
        }
    }
}
