//! The decision function and the load rules, exhaustively.

use super::*;
use serde_json::json;

const BASE_TOOLS: &str = r#"
[tools."kb.search"]
kind = "read"
args = { query = { type = "string", max_len = 200 } }

[tools."tickets.get"]
kind = "read"
args = { ticket_id = { type = "string", pattern = "^T-[0-9]{1,10}$" } }

[tools."ticket.close"]
kind = "write"
undo = "Reopen with ticket.reopen"
blast_radius = "1 ticket of {tenant}"
args.ticket_id = { type = "string", pattern = "^T-[0-9]{1,10}$" }

[tools."email.draft"]
kind = "write"
undo = "Delete the draft"
blast_radius = "1 draft"
args.body = { type = "string", max_len = 100 }

[tools."refund.create"]
kind = "write"
destructive = true
undo = "irreversible"
blast_radius = "Moves up to {amount_cents} cents to customer {customer_id}"
args.customer_id  = { type = "string", pattern = "^C-[0-9]+$" }
args.amount_cents = { type = "integer", min = 1, max = 100000 }
"#;

fn policy_with(routes: &str) -> Policy {
    let src = format!("{BASE_TOOLS}\n{routes}");
    load_policy(&src).unwrap_or_else(|e| panic!("policy should load: {e:?}"))
}

fn errors_of(src: &str) -> Vec<String> {
    match load_policy(src) {
        Ok(_) => panic!("policy should have been refused"),
        Err(es) => es.iter().map(|e| e.to_string()).collect(),
    }
}

fn assert_refused(routes: &str, needle: &str) {
    let errs = errors_of(&format!("{BASE_TOOLS}\n{routes}"));
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "expected an error containing {needle:?}, got {errs:#?}"
    );
}

const ALL_ROUTE: &str = r#"
[routes."r"]
allow_tools = ["kb.search", "tickets.get", "ticket.close", "email.draft", "refund.create"]
require_approval = ["ticket.close", "refund.create", "tickets.get"]
auto_approve = ["email.draft"]
"#;

#[test]
fn decision_table_covers_every_kind_of_tool() {
    let p = policy_with(ALL_ROUTE);
    let r = p.route("r").unwrap();
    assert_eq!(
        p.decide(r, "kb.search"),
        Decision::Allow,
        "a plain read tool is allowed"
    );
    assert_eq!(
        p.decide(r, "tickets.get"),
        Decision::RequireApproval { approvals: 1 },
        "a read tool the route gates needs approval"
    );
    assert_eq!(
        p.decide(r, "ticket.close"),
        Decision::RequireApproval { approvals: 1 },
        "a write tool needs one approval"
    );
    assert_eq!(
        p.decide(r, "email.draft"),
        Decision::Allow,
        "an auto-approved write tool is allowed"
    );
    assert_eq!(
        p.decide(r, "refund.create"),
        Decision::RequireApproval { approvals: 2 },
        "a destructive tool needs two"
    );
    assert_eq!(
        p.decide(r, "admin.grant"),
        Decision::Deny(Denial::NotAllowed),
        "an unknown tool is refused"
    );
}

#[test]
fn deny_tools_beats_allow_tools() {
    let p = policy_with(
        r#"
[routes."r"]
allow_tools = ["kb.search", "ticket.close"]
deny_tools = ["kb.search", "ticket.close"]
"#,
    );
    let r = p.route("r").unwrap();
    assert_eq!(p.decide(r, "kb.search"), Decision::Deny(Denial::Denied));
    assert_eq!(p.decide(r, "ticket.close"), Decision::Deny(Denial::Denied));
}

#[test]
fn deny_by_default_refuses_declared_tools_not_allowed() {
    let p = policy_with(
        r#"
[routes."r"]
allow_tools = ["kb.search"]
"#,
    );
    let r = p.route("r").unwrap();
    for t in ["tickets.get", "ticket.close", "refund.create", "email.draft", ""] {
        assert_eq!(p.decide(r, t), Decision::Deny(Denial::NotAllowed), "{t}");
    }
}

#[test]
fn unknown_tool_listed_in_deny_is_denied_not_merely_not_allowed() {
    // An unknown tool in deny_tools is refused at load, so deny beats unknown only
    // for declared names; an undeclared name is simply not allowed.
    let p = policy_with("[routes.\"r\"]\nallow_tools = [\"kb.search\"]\ndeny_tools = [\"ticket.close\"]\n");
    let r = p.route("r").unwrap();
    assert_eq!(p.decide(r, "ticket.close"), Decision::Deny(Denial::Denied));
    assert_eq!(p.decide(r, "nope.nope"), Decision::Deny(Denial::NotAllowed));
}

#[test]
fn destructive_tool_needs_two_approvers_even_if_approvals_says_more() {
    let src = BASE_TOOLS.replace("destructive = true", "destructive = true\napprovals = 3");
    let p = load_policy(&format!(
        "{src}\n[routes.\"r\"]\nallow_tools = [\"refund.create\"]\nrequire_approval = [\"refund.create\"]\n"
    ))
    .unwrap();
    let r = p.route("r").unwrap();
    assert_eq!(p.decide(r, "refund.create"), Decision::RequireApproval { approvals: 3 });
}

#[test]
fn destructive_tool_approvals_can_never_be_lowered_below_two() {
    let src = BASE_TOOLS.replace("destructive = true", "destructive = true\napprovals = 1");
    let errs = errors_of(&format!(
        "{src}\n[routes.\"r\"]\nallow_tools = [\"refund.create\"]\nrequire_approval = [\"refund.create\"]\n"
    ));
    assert!(errs.iter().any(|e| e.contains("at least 2 approvals")), "{errs:?}");
}

#[test]
fn write_tool_allowed_without_approval_is_refused_at_load() {
    assert_refused(
        "[routes.\"r\"]\nallow_tools = [\"ticket.close\"]\n",
        "allows write tool \"ticket.close\" without approval",
    );
}

#[test]
fn destructive_tool_can_never_be_auto_approved() {
    assert_refused(
        "[routes.\"r\"]\nallow_tools = [\"refund.create\"]\nauto_approve = [\"refund.create\"]\n",
        "can never be auto-approved",
    );
}

#[test]
fn route_naming_an_undeclared_tool_is_refused_with_its_line() {
    let src = format!("{BASE_TOOLS}\n[routes.\"r\"]\nallow_tools = [\"kb.search\", \"db.wrte\"]\n");
    let errs = load_policy(&src).unwrap_err();
    let e = errs
        .iter()
        .find(|e| e.message.contains("db.wrte"))
        .expect("an error about db.wrte");
    assert!(e.message.contains("route \"r\""), "{e}");
    let line = e.line.expect("a line");
    assert!(
        src.lines().nth(line - 1).unwrap().contains("db.wrte"),
        "line {line} is wrong"
    );
}

#[test]
fn undeclared_tools_in_every_list_are_refused() {
    for list in ["deny_tools", "require_approval", "auto_approve"] {
        assert_refused(
            &format!("[routes.\"r\"]\nallow_tools = [\"kb.search\"]\n{list} = [\"ghost.tool\"]\n"),
            "\"ghost.tool\", which is not a declared tool",
        );
    }
}

#[test]
fn require_approval_of_a_tool_not_allowed_is_refused() {
    assert_refused(
        "[routes.\"r\"]\nallow_tools = [\"kb.search\"]\nrequire_approval = [\"ticket.close\"]\n",
        "which the route does not allow",
    );
}

#[test]
fn auto_approve_of_a_read_tool_is_refused() {
    assert_refused(
        "[routes.\"r\"]\nallow_tools = [\"kb.search\"]\nauto_approve = [\"kb.search\"]\n",
        "only write tools are auto-approved",
    );
}

#[test]
fn unbounded_string_field_is_refused() {
    let errs = errors_of(
        "[tools.\"a.b\"]\nkind = \"read\"\nargs.q = { type = \"string\" }\n[routes.\"r\"]\nallow_tools = [\"a.b\"]\n",
    );
    assert!(errs.iter().any(|e| e.contains("a string must be bounded")), "{errs:?}");
}

#[test]
fn unanchored_pattern_is_refused() {
    let errs = errors_of(
        "[tools.\"a.b\"]\nkind = \"read\"\nargs.q = { type = \"string\", pattern = \"T-[0-9]+\" }\n[routes.\"r\"]\nallow_tools = [\"a.b\"]\n",
    );
    assert!(errs.iter().any(|e| e.contains("must be anchored")), "{errs:?}");
}

#[test]
fn integer_without_both_bounds_is_refused() {
    let errs = errors_of(
        "[tools.\"a.b\"]\nkind = \"read\"\nargs.n = { type = \"integer\", min = 1 }\n[routes.\"r\"]\nallow_tools = [\"a.b\"]\n",
    );
    assert!(errs.iter().any(|e| e.contains("give both min and max")), "{errs:?}");
}

#[test]
fn unknown_keys_anywhere_are_refused_with_a_line() {
    let src = "[tools.\"a.b\"]\nkind = \"read\"\nargz = {}\n[routes.\"r\"]\nallow_tools = [\"a.b\"]\n";
    let errs = load_policy(src).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.contains("argz"), "{}", errs[0]);
    assert_eq!(errs[0].line, Some(3));

    let errs = errors_of("[routes.\"r\"]\nallow_tool = []\n");
    assert!(errs[0].contains("allow_tool"), "{errs:?}");
    let errs = errors_of(
        "[tools.\"a.b\"]\nkind = \"read\"\nargs.q = { type = \"string\", max_len = 5, maxlen = 3 }\n[routes.\"r\"]\nallow_tools = [\"a.b\"]\n",
    );
    assert!(errs[0].contains("maxlen"), "{errs:?}");
}

#[test]
fn syntax_errors_name_their_line() {
    let errs = load_policy("[routes.\"r\"]\nallow_tools = [\"a\"\n").unwrap_err();
    assert!(errs[0].line.is_some(), "{errs:?}");
}

#[test]
fn write_tool_without_undo_or_blast_radius_is_refused() {
    let errs = errors_of(
        "[tools.\"a.b\"]\nkind = \"write\"\n[routes.\"r\"]\nallow_tools = [\"a.b\"]\nrequire_approval = [\"a.b\"]\n",
    );
    assert!(errs.iter().any(|e| e.contains("how to undo")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("blast_radius")), "{errs:?}");
}

#[test]
fn blast_radius_placeholders_must_name_args() {
    let errs = errors_of(
        "[tools.\"a.b\"]\nkind = \"write\"\nundo = \"x\"\nblast_radius = \"{nope} of {tenant}\"\n[routes.\"r\"]\nallow_tools = [\"a.b\"]\nrequire_approval = [\"a.b\"]\n",
    );
    assert!(errs.iter().any(|e| e.contains("{nope}")), "{errs:?}");
}

#[test]
fn destructive_read_tool_is_refused() {
    let errs =
        errors_of("[tools.\"a.b\"]\nkind = \"read\"\ndestructive = true\n[routes.\"r\"]\nallow_tools = [\"a.b\"]\n");
    assert!(
        errs.iter().any(|e| e.contains("destructive tool must have kind")),
        "{errs:?}"
    );
}

#[test]
fn empty_policy_is_refused() {
    let errs = errors_of("");
    assert!(errs[0].contains("no routes"), "{errs:?}");
}

#[test]
fn all_problems_are_reported_at_once() {
    let src = format!(
        "{BASE_TOOLS}\n[routes.\"r\"]\nallow_tools = [\"ticket.close\", \"ghost\"]\n[routes.\"s\"]\nallow_tools = [\"refund.create\"]\nauto_approve = [\"refund.create\"]\n"
    );
    assert!(load_policy(&src).unwrap_err().len() >= 3);
}

#[test]
fn budgets_default_and_are_checked() {
    let p = policy_with("[routes.\"r\"]\nallow_tools = [\"kb.search\"]\n");
    assert_eq!(p.route("r").unwrap().budgets, load::DEFAULT_BUDGETS);
    assert_refused(
        "[routes.\"r\"]\nallow_tools = [\"kb.search\"]\nbudgets = { steps = 0 }\n",
        "budgets.steps",
    );
}

#[test]
fn the_example_policy_loads_and_passes_its_tests() {
    let src = include_str!("../../../examples/policy.toml");
    let p = load_policy(src).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.routes.len(), 5);
    assert!(p.requires_passkey("support/accounts", "customer.email.change"));
    assert!(!p.requires_passkey("support/send", "ticket.close"));
    let tests = include_str!("../../../examples/policy.test.toml");
    let report = run_expectations(&p, tests).unwrap();
    assert!(report.passed(), "{:?}", report.failures);
    assert!(report.checked > 20);
}

#[test]
fn a_policy_test_that_expects_wrongly_fails() {
    let p = policy_with(ALL_ROUTE);
    let report = run_expectations(
        &p,
        "[[expect]]\nroute = \"r\"\nallows = [\"ticket.close\"]\nrequires_two_approvers = [\"ticket.close\"]\ndenies = [\"kb.search\"]\n",
    )
    .unwrap();
    assert_eq!(report.failures.len(), 3, "{:?}", report.failures);
    let report = run_expectations(&p, "[[expect]]\nroute = \"missing\"\nallows = [\"kb.search\"]\n").unwrap();
    assert!(!report.passed());
    assert!(run_expectations(&p, "").is_err(), "an empty test file is not a pass");
}

#[test]
fn blast_radius_template_is_filled_from_args_and_scope() {
    let s = render_template(
        "Moves up to {amount_cents} cents to customer {customer_id} of {tenant}/{env} ({missing})",
        &json!({"amount_cents": 500, "customer_id": "C-9"}),
        "acme",
        "prod",
        "support/send",
    );
    assert_eq!(s, "Moves up to 500 cents to customer C-9 of acme/prod ({missing})");
    assert_eq!(render_template("no braces {", &json!({}), "a", "b", "c"), "no braces {");
}

#[test]
fn policy_hash_changes_with_content() {
    let a = policy_with(ALL_ROUTE);
    let b = policy_with(&format!("{ALL_ROUTE}\n# a comment"));
    assert_ne!(a.hash, b.hash);
    assert_eq!(a.hash.len(), 64);
}

#[test]
fn args_marked_pii_are_the_tools_personal_fields() {
    let src = BASE_TOOLS.replace(
        "args.body = { type = \"string\", max_len = 100 }",
        "args.body = { type = \"string\", max_len = 100, pii = true }\nargs.to = { type = \"string\", max_len = 100, pii = false }",
    );
    let p = load_policy(&format!("{src}\n{ALL_ROUTE}")).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.personal_fields("email.draft"), ["body".to_owned()].into());
    assert!(p.personal_fields("ticket.close").is_empty());
    assert!(p.personal_fields("no.such").is_empty());
    assert_eq!(p.privacy.retain_pii_days, 30, "the default retention");
}

#[test]
fn pii_must_be_true_or_false() {
    let src = BASE_TOOLS.replace(
        "args.body = { type = \"string\", max_len = 100 }",
        "args.body = { type = \"string\", max_len = 100, pii = \"yes\" }",
    );
    let errs = load_policy(&format!("{src}\n{ALL_ROUTE}")).unwrap_err();
    let e = &errs[0];
    assert!(e.message.contains("boolean"), "{e}");
    let line = e.line.expect("a line");
    assert!(format!("{src}\n{ALL_ROUTE}")
        .lines()
        .nth(line - 1)
        .unwrap()
        .contains("pii"));
}

#[test]
fn retention_is_between_one_day_and_ten_years() {
    let p = policy_with(&format!("{ALL_ROUTE}\n[privacy]\nretain_pii_days = 7\n"));
    assert_eq!(p.privacy.retain_pii_days, 7);
    assert_eq!(p.privacy.retain_ms(), 7 * 86_400_000);
    for bad in ["0", "-1", "3651"] {
        assert_refused(
            &format!("{ALL_ROUTE}\n[privacy]\nretain_pii_days = {bad}\n"),
            "privacy: retain_pii_days must be between 1 and 3650",
        );
    }
    let errs = errors_of(&format!("{BASE_TOOLS}\n{ALL_ROUTE}\n[privacy]\nretain_days = 7\n"));
    assert!(errs.iter().any(|e| e.contains("unknown field")), "{errs:?}");
}

#[test]
fn the_example_policy_marks_addresses_and_bodies_as_personal() {
    let p = load_policy(include_str!("../../../examples/policy.toml")).unwrap();
    for tool in ["email.send", "email.draft"] {
        assert_eq!(
            p.personal_fields(tool),
            ["body".to_owned(), "to".to_owned()].into(),
            "{tool}"
        );
    }
    assert!(p.personal_fields("ticket.close").is_empty());
    assert_eq!(p.privacy.retain_pii_days, 30);
}

#[test]
fn a_schema_problem_never_repeats_the_value() {
    let p = load_policy(include_str!("../../../examples/policy.toml")).unwrap();
    let schema = &p.tool("email.send").unwrap().args;
    let value = "dana.smith@example com";
    let problems = schema
        .validate(&json!({"to": value, "subject": 7, "body": "x".repeat(4001), "bcc": value}))
        .unwrap_err();
    assert_eq!(problems.len(), 4, "{problems:?}");
    for (field, problem) in &problems {
        assert!(
            !problem.contains("dana") && !field.contains("dana"),
            "{field}: {problem}"
        );
        assert!(!problem.contains("xxxx"), "{field}: {problem}");
    }
}

#[test]
fn require_passkey_on_a_route_or_a_tool_and_never_with_auto_approve() {
    let p = policy_with(
        "[routes.\"r\"]\nallow_tools = [\"ticket.close\", \"email.draft\"]\nrequire_approval = [\"ticket.close\", \"email.draft\"]\nrequire_passkey = true\n\n[routes.\"s\"]\nallow_tools = [\"ticket.close\"]\nrequire_approval = [\"ticket.close\"]\n",
    );
    assert!(p.requires_passkey("r", "ticket.close"));
    assert!(p.requires_passkey("r", "email.draft"));
    assert!(!p.requires_passkey("s", "ticket.close"));
    assert!(!p.requires_passkey("nope", "nope"));
    assert_refused(
        "[routes.\"r\"]\nallow_tools = [\"email.draft\"]\nauto_approve = [\"email.draft\"]\nrequire_passkey = true\n",
        "needs a passkey is never automatic",
    );
    let src = format!("{BASE_TOOLS}\n[tools.\"x.set\"]\nkind = \"write\"\nrequire_passkey = true\nundo = \"u\"\nblast_radius = \"b\"\nargs.v = {{ type = \"string\", max_len = 5 }}\n\n[routes.\"r\"]\nallow_tools = [\"x.set\"]\nrequire_approval = [\"x.set\"]\n");
    let p = load_policy(&src).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(p.requires_passkey("r", "x.set"));
    assert!(p.tool("x.set").unwrap().require_passkey);
    assert!(!p.tool("ticket.close").unwrap().require_passkey);
}
