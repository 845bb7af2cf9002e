//! The command line, run as a user would: exit codes, messages, bad input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_countersign");

struct Sandbox {
    dir: std::path::PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = std::env::temp_dir().join(format!("countersign-cli-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        Sandbox { dir }
    }
    fn db(&self) -> String {
        format!("sqlite://{}/cli.db", self.dir.display())
    }
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", self.db())
            .env("RUST_LOG", "error")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().unwrap()
    }
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const POLICY: &str = "../examples/policy.toml";
const POLICY_TESTS: &str = "../examples/policy.test.toml";

#[test]
fn unknown_subcommands_and_malformed_flags_print_usage_and_fail() {
    let s = Sandbox::new();
    let o = s.run(&["frobnicate"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(out(&o).contains("Usage"), "{}", out(&o));
    let o = s.run(&["serve", "--addr", "not-an-address"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(out(&o).contains("--addr"), "{}", out(&o));
    let o = s.run(&["serve", "--max-run-ttl", "0"], None);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_database_url_of_another_kind_is_refused_clearly() {
    let s = Sandbox::new();
    let o = Command::new(BIN)
        .args(["migrate"])
        .env("DATABASE_URL", "mysql://x")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o).contains("DATABASE_URL must start with sqlite: or postgres://"),
        "{}",
        out(&o)
    );
    drop(s);
}

#[test]
fn an_invalid_policy_refuses_to_start_naming_the_line() {
    let s = Sandbox::new();
    let bad = s.file(
        "bad.toml",
        "[tools.\"a.b\"]\nkind = \"write\"\nundo = \"x\"\nblast_radius = \"y\"\n[routes.\"r\"]\nallow_tools = [\"a.b\"]\n",
    );
    let o = s.run(&["serve", "--policy", &bad, "--addr", "127.0.0.1:0"], None);
    assert_eq!(o.status.code(), Some(1));
    let text = out(&o);
    assert!(text.contains("bad.toml:6:"), "{text}");
    assert!(text.contains("without approval"), "{text}");
    let o = s.run(&["policy", "check", &bad], None);
    assert_eq!(o.status.code(), Some(1));
    let o = s.run(
        &["serve", "--policy", "/no/such/policy.toml", "--addr", "127.0.0.1:0"],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("cannot read the policy"), "{}", out(&o));
}

#[test]
fn the_example_policy_checks_and_passes_its_tests() {
    let s = Sandbox::new();
    let o = s.run(&["policy", "check", POLICY], None);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("ok (16 tools, 5 routes"), "{}", out(&o));
    let o = s.run(&["policy", "test", POLICY_TESTS], None);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("0 failed"), "{}", out(&o));
}

#[test]
fn policy_check_warns_when_admins_may_review() {
    let s = Sandbox::new();
    let example = std::fs::read_to_string(POLICY).unwrap();
    let lenient = s.file(
        "lenient.toml",
        &format!("{example}\n[people]\nadmins_may_review = true\n"),
    );
    let o = s.run(&["policy", "check", &lenient], None);
    assert!(o.status.success(), "a warning is not an error: {}", out(&o));
    let text = out(&o);
    let line = example.lines().count() + 3;
    assert!(
        text.contains(&format!("lenient.toml:{line}: warning: admins_may_review = true")),
        "{text}"
    );
    assert!(text.contains("1 warnings"), "{text}");
    let o = s.run(&["policy", "check", POLICY], None);
    assert!(out(&o).contains("0 warnings"), "{}", out(&o));
}

#[test]
fn a_failing_policy_test_fails_the_command() {
    let s = Sandbox::new();
    let tests = s.file(
        "wrong.test.toml",
        "[[expect]]\nroute = \"research\"\nallows = [\"email.send\"]\n",
    );
    let o = s.run(&["policy", "test", &tests, "--policy", POLICY], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o).contains("FAIL route \"research\" should satisfy allows for \"email.send\""),
        "{}",
        out(&o)
    );
}

#[test]
fn a_password_on_the_command_line_is_refused() {
    let s = Sandbox::new();
    let o = s.run(
        &[
            "user",
            "add",
            "eve",
            "--role",
            "reviewer",
            "--tenant",
            "acme",
            "--password",
            "hunter2hunter2",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("never taken on the command line"), "{}", out(&o));
    let o = s.run(
        &["user", "add", "eve", "--role", "reviewer", "--tenant", "acme"],
        Some(""),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("no password on standard input"), "{}", out(&o));
    let o = s.run(
        &["user", "add", "eve", "--role", "reviewer", "--tenant", "acme"],
        Some("short\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("at least 12 characters"), "{}", out(&o));
}

#[test]
fn users_are_added_from_stdin_and_listed() {
    let s = Sandbox::new();
    let o = s.run(
        &[
            "user", "add", "alice", "--role", "reviewer", "--tenant", "acme", "--tenant", "globex",
        ],
        Some("correct horse battery staple\n"),
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("added alice (reviewer), tenants acme, globex"));
    let o = s.run(
        &["user", "add", "alice", "--role", "auditor", "--tenant", "acme"],
        Some("correct horse battery staple\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("already exists"));
    let o = s.run(
        &["user", "add", "rita", "--role", "reviewer"],
        Some("correct horse battery staple\n"),
    );
    assert_eq!(o.status.code(), Some(1), "a reviewer needs a tenant");
    let o = s.run(
        &["user", "add", "root", "--role", "superuser"],
        Some("correct horse battery staple\n"),
    );
    assert!(out(&o).contains("unknown role"));
    let o = s.run(&["user", "list"], None);
    assert!(out(&o).contains("alice\treviewer\tacme,globex"), "{}", out(&o));
}

#[test]
fn keys_are_printed_once_listed_without_secrets_and_revoked() {
    let s = Sandbox::new();
    let o = s.run(
        &[
            "key",
            "create",
            "service",
            "--tenant",
            "acme",
            "--env",
            "prod",
            "--name",
            "orchestrator",
        ],
        None,
    );
    assert!(o.status.success(), "{}", out(&o));
    let key = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(key.starts_with("csk_") && key.len() > 40, "{key}");
    let o = s.run(
        &[
            "key",
            "create",
            "executor",
            "--env",
            "prod",
            "--tools",
            "ticket.close,email.send",
            "--name",
            "exec",
            "--policy",
            POLICY,
        ],
        None,
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(String::from_utf8_lossy(&o.stdout).trim().starts_with("cek_"));
    let o = s.run(
        &[
            "key",
            "create",
            "executor",
            "--env",
            "prod",
            "--tools",
            "nope.nope",
            "--name",
            "x",
            "--policy",
            POLICY,
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("not declared"), "{}", out(&o));
    let o = s.run(&["key", "list"], None);
    let list = out(&o);
    assert!(!list.contains(&key), "the key itself is never shown again");
    let id = list
        .lines()
        .find(|l| l.contains("orchestrator"))
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned();
    let o = s.run(&["key", "revoke", &id], None);
    assert!(o.status.success(), "{}", out(&o));
    let o = s.run(&["key", "revoke", &id], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&s.run(&["key", "list"], None)).contains("revoked"));
}

#[test]
fn audit_verify_passes_then_names_a_tampered_event() {
    let s = Sandbox::new();
    for name in ["a1", "a2", "a3"] {
        s.run(
            &["user", "add", name, "--role", "admin"],
            Some("correct horse battery staple\n"),
        );
    }
    let o = s.run(&["audit", "verify"], None);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("the audit chain verifies"), "{}", out(&o));

    let o = s.run(&["audit", "export", "--format", "csv"], None);
    let csv = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(csv.starts_with("seq,id,at,"), "{csv}");
    assert_eq!(
        csv.lines().count(),
        1 + 5,
        "header, a signing key, a receipt key and three users"
    );
    let o = s.run(&["audit", "export", "--format", "jsonl", "--since", "2000-01-01"], None);
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    let o = s.run(&["audit", "export", "--since", "yesterday"], None);
    assert_eq!(o.status.code(), Some(1));

    // Someone with the database file drops the guard and edits event 3.
    let path = s.db().trim_start_matches("sqlite://").to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
            .await
            .unwrap();
        sqlx::query("DROP TRIGGER audit_events_no_update")
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")
            .execute(&mut c)
            .await
            .unwrap();
    });
    let o = s.run(&["audit", "verify"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("broken at event 3"), "{}", out(&o));
}

#[test]
fn migrate_creates_the_database() {
    let s = Sandbox::new();
    let o = s.run(&["migrate"], None);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("migrations applied (sqlite)"));
    assert!(s.dir.join("cli.db").exists());
}
