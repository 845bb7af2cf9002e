//! Settings from flags and environment. Every flag has an environment variable
//! (named in `--help`); secrets are never printed. A credential may instead
//! come from a file (`NAME_FILE`, as secret managers mount them).

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

pub use countersign_core::DEFAULT_DATABASE_URL;

/// The settings that hold credentials. Each may be given as `NAME` or as
/// `NAME_FILE`, the path of a file holding it.
pub const CREDENTIAL_VARS: &[&str] = &["DATABASE_URL"];

/// For each credential whose `NAME_FILE` is set: its value, read from that
/// file once (at start-up), trailing newline trimmed. Refused: both `NAME`
/// and `NAME_FILE`, and a file that cannot be read or is empty. The value is
/// never part of an error.
pub fn credentials_from_files(
    names: &[&str],
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Vec<(String, String)>, String> {
    let mut found = Vec::new();
    for name in names {
        let file_var = format!("{name}_FILE");
        let Some(path) = var(&file_var) else { continue };
        if var(name).is_some() {
            return Err(format!("set {name} or {file_var}, not both"));
        }
        let shown = PathBuf::from(&path).display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {file_var} ({shown}): {e}"))?;
        let value = text.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(format!("{file_var} ({shown}) is empty"));
        }
        found.push(((*name).to_owned(), value.to_owned()));
    }
    Ok(found)
}

#[derive(Debug, Parser)]
#[command(
    name = "countersign",
    version,
    about = "A human-approval gate for AI agents' tool calls."
)]
pub struct Cli {
    /// Database: sqlite://PATH (embedded, the default) or postgres://…
    /// (or DATABASE_URL_FILE: a file holding it).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true, hide_env_values = true)]
    pub database_url: String,

    /// Log format.
    #[arg(long, env = "COUNTERSIGN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// People who review, audit and administer.
    #[command(subcommand)]
    User(UserCommand),
    /// Service, executor keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check a policy file or run policy tests.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Verify or export the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The server's run-token signing secret.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// The key that signs approval receipts.
    #[command(subcommand, name = "receipt-key")]
    ReceiptKey(ReceiptKeyCommand),
    /// Kill switches: refuse new work and hold release.
    Switch(SwitchArgs),
    /// Agent runs.
    #[command(subcommand)]
    Run(RunCommand),
    /// Route circuit breakers.
    #[command(subcommand)]
    Breaker(BreakerCommand),
    /// The MCP gateway's upstream servers.
    #[command(subcommand)]
    Mcp(McpCommand),
    /// Webhooks that receive signed notifications.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Personal data in args (`pii = true` in the policy).
    #[command(subcommand)]
    Privacy(PrivacyCommand),
}

#[derive(Debug, Subcommand)]
pub enum PrivacyCommand {
    /// Erase now the personal data of finished proposals (the server erases
    /// it by itself `retain_pii_days` after each finished). The args hash,
    /// the decisions and the audit log remain.
    Purge {
        /// Erase what finished by this time: RFC 3339, YYYY-MM-DD, or
        /// `now`. Default: `retain_pii_days` ago, as the server would.
        #[arg(long)]
        before: Option<String>,
        /// The policy that marks the personal args and sets the retention.
        #[arg(long, env = "COUNTERSIGN_POLICY", default_value = "policy.toml")]
        policy: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Say which upstreams answer and which tools the policy performs on
    /// them that they do not offer; non-zero exit if any.
    Check {
        /// The policy that declares the upstreams.
        #[arg(long, env = "COUNTERSIGN_POLICY", default_value = "policy.toml")]
        policy: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Close a tripped route breaker: the route releases again.
    Reset { route: String },
    /// List tripped breakers.
    List,
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Add a webhook; its signing secret is printed once.
    Add {
        url: String,
        /// Comma-separated events, or * for all.
        #[arg(long, default_value = "*")]
        events: String,
        /// json, or slack (a text line linking to the review, no args values).
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// List webhooks (never their secrets).
    List,
    /// Remove a webhook by its id.
    Remove { id: String },
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "COUNTERSIGN_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,
    /// The policy file (TOML).
    #[arg(long, env = "COUNTERSIGN_POLICY", default_value = "policy.toml")]
    pub policy: PathBuf,
    /// The URL people use to reach this server (review links, cookie security).
    /// Default: http://ADDR.
    #[arg(long, env = "COUNTERSIGN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Where the built site (wasm, js, css) is.
    #[arg(long, env = "LEPTOS_SITE_ROOT", default_value = "target/site")]
    pub site_root: PathBuf,
    /// The longest a run token may live, in seconds.
    #[arg(long, env = "COUNTERSIGN_MAX_RUN_TTL", default_value_t = 900, value_parser = clap::value_parser!(i64).range(1..=86_400))]
    pub max_run_ttl: i64,
    /// A browser session ends after this many idle seconds.
    #[arg(long, env = "COUNTERSIGN_SESSION_IDLE", default_value_t = 1800, value_parser = clap::value_parser!(i64).range(60..=604_800))]
    pub session_idle: i64,
    /// A browser session ends this many seconds after sign-in, however active.
    #[arg(long, env = "COUNTERSIGN_SESSION_ABSOLUTE", default_value_t = 43_200, value_parser = clap::value_parser!(i64).range(60..=2_592_000))]
    pub session_absolute: i64,
    /// Mark cookies Secure. Default: when the public URL is https.
    #[arg(long, env = "COUNTERSIGN_SECURE_COOKIES")]
    pub secure_cookies: Option<bool>,
    /// Read connections in the pool.
    #[arg(long, env = "COUNTERSIGN_READ_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub read_connections: u32,
    /// Sign-in sessions one address may start a minute (each is a write;
    /// people behind one NAT share it).
    #[arg(long, env = "COUNTERSIGN_SIGN_IN_SESSIONS_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub sign_in_sessions_per_minute: u32,
    /// The lease, in seconds, the built-in upstream executor takes on each
    /// job; heartbeats renew it while it calls. A job whose server died is
    /// offered again once its lease runs out.
    #[arg(long, env = "COUNTERSIGN_UPSTREAM_LEASE", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub upstream_lease: u64,
}

impl ServeArgs {
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.addr))
            .trim_end_matches('/')
            .to_owned()
    }
    pub fn secure_cookies(&self) -> bool {
        self.secure_cookies
            .unwrap_or_else(|| self.public_url().starts_with("https://"))
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a person. The password is read from standard input, never from an argument.
    Add {
        name: String,
        /// reviewer, auditor or admin (repeat or comma-separate for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// A tenant this person sees (repeatable).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// Refused: a password on the command line ends up in shell history.
        #[arg(long, hide = true)]
        password: Option<String>,
    },
    /// List people.
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a key; it is printed once.
    #[command(subcommand)]
    Create(KeyKind),
    /// Revoke a key by its id.
    Revoke { id: String },
    /// List keys (never the keys themselves).
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeyKind {
    /// A service key: mints runs for one tenant and env.
    Service {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        env: String,
        #[arg(long)]
        name: String,
    },
    /// An executor key: claims jobs of one env and some tools.
    Executor {
        #[arg(long)]
        env: String,
        /// Comma-separated tool names.
        #[arg(long, value_delimiter = ',', required = true)]
        tools: Vec<String>,
        #[arg(long)]
        name: String,
        /// The policy that declares the tools.
        #[arg(long, env = "COUNTERSIGN_POLICY", default_value = "policy.toml")]
        policy: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file.
    Check { file: PathBuf },
    /// Run policy tests. The policy defaults to X.toml beside X.test.toml.
    Test {
        file: PathBuf,
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain and say where it breaks, if it does.
    Verify,
    /// Write the audit log to standard output.
    Export {
        /// Only events at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Make a new signing secret current. Tokens signed with the previous one
    /// stay valid until they expire; rotating twice voids every run token.
    Rotate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SwitchState {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum ReceiptKeyCommand {
    /// Make a new current receipt signing key. Receipts signed with the
    /// previous ones still verify: those keys stay published until their
    /// receipts expire.
    Rotate,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["tool", "tenant", "route", "global"])))]
pub struct SwitchArgs {
    pub state: SwitchState,
    #[arg(long)]
    pub tool: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub route: Option<String>,
    #[arg(long)]
    pub global: bool,
    /// Why (required).
    #[arg(long)]
    pub reason: String,
    /// The policy that names the tools and routes.
    #[arg(long, env = "COUNTERSIGN_POLICY", default_value = "policy.toml")]
    pub policy: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Revoke a run: its token stops working at once.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
    },
}
