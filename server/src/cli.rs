//! The command line: `serve` and the subcommands of the docs' CLI table.
//! Each prints what it did, or a clear message and a non-zero exit.

use crate::config::*;
use crate::startup::{self, AppConfig, StartError};
use clap::Parser;
use countersign_core::clock::{parse_rfc3339, rfc3339};
use countersign_core::controls::Scope;
use countersign_core::policy::{load_policy, run_expectations, Policy};
use countersign_core::service::{Admin, Core, NewKey, NewUser, Settings, StoreOptions};
use countersign_core::tokens::KeyKind as CoreKeyKind;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Why a command failed, said to the person who ran it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Core(#[from] countersign_core::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    /// A policy file that does not load, with each problem on its line.
    #[error("{0}")]
    Policy(String),
    /// The command was given something it cannot use.
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
}

impl CliError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let what = what.into();
        move |source| CliError::Io { what, source }
    }
}

type CliResult = Result<ExitCode, CliError>;

pub fn main() -> ExitCode {
    // Before anything else runs (no other thread exists yet): credentials
    // given as files become the settings clap reads.
    match credentials_from_files(CREDENTIAL_VARS, |name| std::env::var_os(name)) {
        Ok(found) => {
            for (name, value) in found {
                std::env::set_var(name, value);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
    crate::telemetry::init(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> CliResult {
    let db = cli.database_url.clone();
    match cli.command {
        Command::Serve(args) => serve(db, args).await,
        Command::Migrate => {
            let core = open_core(&db, Policy::empty()).await?;
            println!("migrations applied ({})", core.backend().name());
            Ok(ExitCode::SUCCESS)
        }
        Command::User(c) => user(db, c).await,
        Command::Key(c) => key(db, c).await,
        Command::Policy(c) => policy(c),
        Command::Audit(c) => audit(db, c).await,
        Command::Secret(SecretCommand::Rotate) => {
            let core = open_core(&db, Policy::empty()).await?;
            let id = core.rotate_signing_key(&Admin::cli()).await?;
            println!(
                "signing key {id} is now current; tokens signed with the previous key stay valid until they expire"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ReceiptKey(ReceiptKeyCommand::Rotate) => {
            let core = open_core(&db, Policy::empty()).await?;
            let id = core.rotate_receipt_key(&Admin::cli()).await?;
            println!(
                "receipt key {id} now signs receipts; the previous keys stay in /.well-known/jwks.json until their receipts expire"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Switch(a) => switch(db, a).await,
        Command::Breaker(c) => {
            let core = open_core(&db, Policy::empty()).await?;
            match c {
                BreakerCommand::Reset { route } => {
                    core.reset_breaker(&Admin::cli(), &route).await?;
                    println!("route {route} releases again");
                }
                BreakerCommand::List => {
                    for b in core.breakers().await? {
                        println!("{}\t{}\t{}", b.route, rfc3339(b.tripped_at), b.reason);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Webhook(c) => {
            let core = open_core(&db, Policy::empty()).await?;
            match c {
                WebhookCommand::Add { url, events, format } => {
                    let (id, secret) = core.add_webhook(&Admin::cli(), &url, &[events], &format).await?;
                    eprintln!("webhook {id} added. Its signing secret is shown once, now:");
                    println!("{secret}");
                }
                WebhookCommand::List => {
                    for w in core.webhooks().await? {
                        println!("{}\t{}\t{}\t{}", w.id, w.url, w.format, w.events);
                    }
                }
                WebhookCommand::Remove { id } => {
                    core.remove_webhook(&Admin::cli(), &id).await?;
                    println!("webhook {id} removed");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Mcp(McpCommand::Check { policy }) => mcp_check(&policy).await,
        Command::Privacy(PrivacyCommand::Purge { before, policy }) => purge(db, before, policy).await,
        Command::Run(RunCommand::Revoke { id, reason }) => {
            let core = open_core(&db, Policy::empty()).await?;
            core.revoke_run(&Admin::cli(), &id, &reason).await?;
            println!("run {id} revoked: its token stops working now");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Read and check a policy file; problems come back as `FILE:LINE: message`.
pub fn read_policy(path: &Path) -> Result<Policy, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(CliError::io(format!("cannot read the policy {}", path.display())))?;
    load_policy(&text).map_err(|errs| {
        let mut msg = format!("the policy {} is invalid:", path.display());
        for e in errs {
            match e.line {
                Some(l) => msg.push_str(&format!("\n  {}:{l}: {}", path.display(), e.message)),
                None => msg.push_str(&format!("\n  {}: {}", path.display(), e.message)),
            }
        }
        CliError::Policy(msg)
    })
}

/// `mcp check`: each upstream of the policy, whether it answers, and the
/// tools the policy performs on it that it does not offer.
async fn mcp_check(path: &Path) -> CliResult {
    let policy = read_policy(path)?;
    if policy.upstreams.is_empty() {
        println!("the policy {} declares no upstreams", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let reports = crate::mcp::upstream::Upstreams::new().check(&policy).await;
    let mut healthy = true;
    for r in &reports {
        match &r.offered {
            Ok(tools) => {
                println!(
                    "{}  {}  answers, offering {} tool(s): {}",
                    r.name,
                    r.url,
                    tools.len(),
                    tools.join(", ")
                );
                if !r.missing.is_empty() {
                    healthy = false;
                    println!("  lacks tools the policy performs on it: {}", r.missing.join(", "));
                }
            }
            Err(e) => {
                healthy = false;
                println!("{}  {}  does not answer: {e}", r.name, r.url);
            }
        }
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn open_core(db: &str, policy: Policy) -> Result<Arc<Core>, CliError> {
    Ok(Core::open(StoreOptions::new(db), policy, Settings::default()).await?)
}

async fn serve(db: String, args: ServeArgs) -> CliResult {
    let policy = read_policy(&args.policy)?;
    let cfg = AppConfig {
        addr: args.addr,
        public_url: Some(args.public_url()),
        site_root: args.site_root.clone(),
        max_run_ttl: args.max_run_ttl,
        session_idle: args.session_idle,
        session_absolute: args.session_absolute,
        secure_cookies: args.secure_cookies(),
        read_connections: args.read_connections,
        sign_in_sessions_per_minute: args.sign_in_sessions_per_minute,
        upstream_lease: std::time::Duration::from_secs(args.upstream_lease),
        ..AppConfig::new(db.clone(), policy)
    };
    let app = startup::start(cfg).await?;
    let shown_db = db.rsplit('@').next().unwrap_or(&db);
    println!(
        "countersign is running at {} (database {}, policy {})",
        args.public_url(),
        shown_db,
        args.policy.display()
    );
    if app.core.count_users().await? == 0 {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| {
                p.strip_prefix(std::env::current_dir().ok()?)
                    .ok()
                    .map(|p| p.to_path_buf())
            })
            .unwrap_or_else(|| PathBuf::from("countersign"));
        println!("No one can sign in yet. Create the first admin (the password is read from standard input):");
        println!("  {} user add admin --role admin", exe.display());
        println!("and a reviewer who sees tenant acme:");
        println!("  {} user add alice --role reviewer --tenant acme", exe.display());
    }
    let _ = std::io::stdout().flush();
    app.wait_for_signal().await;
    Ok(ExitCode::SUCCESS)
}

/// A password from standard input: prompted twice without echo on a
/// terminal, one line otherwise.
fn read_password() -> Result<String, CliError> {
    if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("Password: ").map_err(CliError::io("reading the password"))?;
        let b = rpassword::prompt_password("Again: ").map_err(CliError::io("reading the password"))?;
        if a != b {
            return Err(CliError::Usage("the passwords differ".into()));
        }
        Ok(a)
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(CliError::io("reading the password from standard input"))?;
        let pw = line.trim_end_matches(['\n', '\r']).to_owned();
        if pw.is_empty() {
            return Err(CliError::Usage(
                "no password on standard input (pipe it in: the command line never takes one)".into(),
            ));
        }
        Ok(pw)
    }
}

async fn user(db: String, c: UserCommand) -> CliResult {
    match c {
        UserCommand::Add {
            name,
            roles,
            tenants,
            password,
        } => {
            if password.is_some() {
                return Err(CliError::Usage("passwords are never taken on the command line (they end up in shell history and process lists); pipe the password to standard input".into()));
            }
            let pw = read_password()?;
            let core = open_core(&db, Policy::empty()).await?;
            let p = core
                .add_user(
                    &Admin::cli(),
                    NewUser {
                        username: name,
                        password: pw,
                        roles,
                        tenants,
                    },
                )
                .await?;
            println!(
                "added {} ({}){}",
                p.username,
                p.roles.names().join(", "),
                if p.tenants.is_empty() {
                    String::new()
                } else {
                    format!(", tenants {}", p.tenants.join(", "))
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List => {
            let core = open_core(&db, Policy::empty()).await?;
            for p in core.people().await? {
                println!(
                    "{}\t{}\t{}\t{}{}",
                    p.id,
                    p.username,
                    p.roles.names().join(","),
                    p.tenants.join(","),
                    if p.disabled { "\tdisabled" } else { "" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn key(db: String, c: KeyCommand) -> CliResult {
    match c {
        KeyCommand::Create(kind) => {
            let (policy, k) = match kind {
                KeyKind::Service { tenant, env, name } => (
                    Policy::empty(),
                    NewKey {
                        kind: CoreKeyKind::Service,
                        name,
                        tenant: Some(tenant),
                        env,
                        tools: vec![],
                    },
                ),
                KeyKind::Executor {
                    env,
                    tools,
                    name,
                    policy,
                } => (
                    read_policy(&policy)?,
                    NewKey {
                        kind: CoreKeyKind::Executor,
                        name,
                        tenant: None,
                        env,
                        tools,
                    },
                ),
            };
            let core = open_core(&db, policy).await?;
            let kind = k.kind;
            let (id, plaintext) = core.create_key(&Admin::cli(), k).await?;
            eprintln!("{kind} key {id} created. It is shown once, now; store it in your secret manager:");
            println!("{plaintext}");
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::Revoke { id } => {
            let core = open_core(&db, Policy::empty()).await?;
            core.revoke_key(&Admin::cli(), &id).await?;
            println!("key {id} revoked");
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::List => {
            let core = open_core(&db, Policy::empty()).await?;
            for k in core.list_keys().await? {
                println!(
                    "{}\t{}\t{}\t{}/{}\t{}…\t{}{}",
                    k.id,
                    k.kind,
                    k.name,
                    k.tenant.unwrap_or_else(|| "*".into()),
                    k.env,
                    k.hint,
                    k.tools,
                    if k.revoked_at.is_some() { "\trevoked" } else { "" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn policy(c: PolicyCommand) -> CliResult {
    match c {
        PolicyCommand::Check { file } => {
            let p = read_policy(&file)?;
            for w in &p.warnings {
                match w.line {
                    Some(l) => println!("{}:{l}: {}", file.display(), w.message),
                    None => println!("{}: {}", file.display(), w.message),
                }
            }
            println!(
                "{}: ok ({} tools, {} routes, {} warnings, sha256 {})",
                file.display(),
                p.tools.len(),
                p.routes.len(),
                p.warnings.len(),
                &p.hash[..16]
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test { file, policy } => {
            let policy_path = policy.unwrap_or_else(|| default_policy_for(&file));
            let p = read_policy(&policy_path)?;
            let text =
                std::fs::read_to_string(&file).map_err(CliError::io(format!("cannot read {}", file.display())))?;
            let report =
                run_expectations(&p, &text).map_err(|e| CliError::Policy(format!("{}: {e}", file.display())))?;
            for f in &report.failures {
                println!("FAIL {f}");
            }
            println!(
                "{}: {} expectations checked against {}, {} failed",
                file.display(),
                report.checked,
                policy_path.display(),
                report.failures.len()
            );
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `x.test.toml` tests `x.toml`; anything else tests `./policy.toml`.
fn default_policy_for(test_file: &Path) -> PathBuf {
    let name = test_file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match name.strip_suffix(".test.toml") {
        Some(stem) => test_file.with_file_name(format!("{stem}.toml")),
        None => PathBuf::from("policy.toml"),
    }
}

async fn audit(db: String, c: AuditCommand) -> CliResult {
    let core = open_core(&db, Policy::empty()).await?;
    match c {
        AuditCommand::Verify => {
            let report = core.verify_audit_chain().await?;
            println!("{}", report.message());
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Export { since, format } => {
            let since_ms = match since {
                None => 0,
                Some(s) => parse_time("--since", &s)?,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = match format {
                ExportFormat::Jsonl => {
                    core.export_audit(since_ms, |e| {
                        let mut v = serde_json::to_value(e)?;
                        v["at"] = serde_json::Value::String(rfc3339(e.at_ms));
                        writeln!(out, "{v}").map_err(countersign_core::Error::internal)
                    })
                    .await?
                }
                ExportFormat::Csv => {
                    let mut w = csv::Writer::from_writer(&mut out);
                    w.write_record([
                        "seq",
                        "id",
                        "at",
                        "request_id",
                        "tenant",
                        "actor",
                        "action",
                        "subject",
                        "tool",
                        "args_hash",
                        "idempotency_key",
                        "credential_scope",
                        "approval_ids",
                        "result_status",
                        "duration_ms",
                        "details",
                        "prev_hash",
                        "hash",
                    ])?;
                    let n = core
                        .export_audit(since_ms, |e| {
                            w.write_record([
                                e.seq.to_string(),
                                e.id.clone(),
                                rfc3339(e.at_ms),
                                e.request_id.clone().unwrap_or_default(),
                                e.tenant.clone().unwrap_or_default(),
                                e.actor.clone(),
                                e.action.clone(),
                                e.subject.clone().unwrap_or_default(),
                                e.tool.clone().unwrap_or_default(),
                                e.args_hash.clone().unwrap_or_default(),
                                e.idempotency_key.clone().unwrap_or_default(),
                                e.credential_scope.clone().unwrap_or_default(),
                                e.approval_ids.clone(),
                                e.result_status.clone(),
                                e.duration_ms.map(|d| d.to_string()).unwrap_or_default(),
                                e.details.clone(),
                                e.prev_hash.clone(),
                                e.hash.clone(),
                            ])
                            .map_err(countersign_core::Error::internal)
                        })
                        .await?;
                    w.flush().map_err(CliError::io("writing the export"))?;
                    n
                }
            };
            out.flush().map_err(CliError::io("writing the export"))?;
            eprintln!("{n} events exported");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A time given on the command line: RFC 3339, or a date (its midnight, UTC).
fn parse_time(flag: &str, s: &str) -> Result<i64, CliError> {
    parse_rfc3339(s)
        .or_else(|| parse_rfc3339(&format!("{s}T00:00:00Z")))
        .ok_or_else(|| CliError::Usage(format!("{flag} {s:?} is not a date (YYYY-MM-DD) or an RFC 3339 time")))
}

async fn purge(db: String, before: Option<String>, policy: PathBuf) -> CliResult {
    let policy = read_policy(&policy)?;
    let core = open_core(&db, policy).await?;
    let before = match before.as_deref() {
        None => None,
        Some("now") => Some(core.now_ms()),
        Some(s) => Some(parse_time("--before", s)?),
    };
    let report = core.purge_personal_data(&Admin::cli(), before).await?;
    println!(
        "erased the personal data of {} finished proposal(s) (finished by {}); args hashes, decisions and the audit log remain",
        report.erased,
        rfc3339(report.finished_by)
    );
    Ok(ExitCode::SUCCESS)
}

async fn switch(db: String, a: SwitchArgs) -> CliResult {
    // clap's `target` group makes exactly one of these present.
    let (scope, target) = match (a.tool, a.tenant, a.route) {
        (Some(t), _, _) => (Scope::Tool, t),
        (_, Some(t), _) => (Scope::Tenant, t),
        (_, _, Some(r)) => (Scope::Route, r),
        _ => (Scope::Global, String::new()),
    };
    let policy = match scope {
        Scope::Tool | Scope::Route => read_policy(&a.policy)?,
        _ => Policy::empty(),
    };
    let core = open_core(&db, policy).await?;
    let on = a.state == SwitchState::On;
    core.set_switch(&Admin::cli(), scope, &target, on, &a.reason).await?;
    println!(
        "kill switch {} {}{}",
        if on { "ON for" } else { "off for" },
        scope,
        if target.is_empty() {
            String::new()
        } else {
            format!(" {target}")
        }
    );
    Ok(ExitCode::SUCCESS)
}
