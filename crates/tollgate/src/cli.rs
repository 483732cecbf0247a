use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "tollgate",
    version,
    about = "An AI FinOps gateway: exact cost for every token, attributed, bounded and smaller."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Start a simulated provider and the gateway, drive a multi-agent workload through
    /// it, print the spend report, and keep serving.
    Demo(DemoArgs),
    /// Reports from the ledger: spend (usage), ROI, tasks, savings.
    Report(ReportArgs),
    /// Export the ledger (FinOps FOCUS 1.2 cost-and-usage CSV).
    Export(ExportArgs),
    /// Match the ledger with a provider's own usage/cost export; exits 3 on drift.
    Reconcile(ReconcileArgs),
    /// What-if: re-price the recorded workload under another policy (model swap, prices,
    /// routing threshold, prompt and response caching, pruning); now vs policy.
    Replay(ReplayArgs),
    /// Task outcomes: record one, show a task.
    Tasks(TasksArgs),
    /// Create, list and revoke virtual keys.
    Keys(KeysArgs),
    /// Set, list and show budgets: limits, spend per period, what is left.
    Budgets(BudgetsArgs),
    /// Check a config file; exits non-zero and lists every problem if it is invalid.
    ValidateConfig(ConfigArgs),
    /// Apply the store's pending migrations (the config's `[store]`: PostgreSQL or the
    /// SQLite file) and print the schema version. `serve` also migrates on start.
    Migrate(ConfigArgs),
    /// Show what a model costs in the effective price table.
    Pricing(PricingArgs),
    /// Run only the simulated OpenAI-compatible provider (for tests and benchmarks).
    Sim(SimArgs),
    /// Train, apply and measure the light/heavy router.
    Router(crate::router::RouterArgs),
    /// The response cache's embedding model: score pairs as the semantic cache does.
    Cache(crate::cache::CacheArgs),
    /// Prune conversations (JSON Lines of `{"messages": [...]}`) as the gateway does;
    /// one pruned `messages` array per line on stdout.
    Prune(crate::prune::PruneArgs),
}

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Listen address; port 0 picks a free port. The bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Time to the first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Time between streamed tokens, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub token_ms: u64,
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Config file (default: $TOLLGATE_CONFIG, else ./tollgate.toml if present).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Listen address (overrides server.listen).
    #[arg(long)]
    pub listen: Option<String>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the gateway listens; if the port is taken a free one is used.
    #[arg(long, default_value = "127.0.0.1:4000")]
    pub listen: String,
    /// Simulated provider: time to the first token, in milliseconds.
    #[arg(long, default_value_t = 25)]
    pub latency_ms: u64,
    /// Simulated provider: time between streamed tokens, in milliseconds.
    #[arg(long, default_value_t = 1)]
    pub token_ms: u64,
    /// Exit after printing the report instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Directory for the demo's database and config (default: a new temporary one).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Ledger database (overrides the config's ledger.path).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Window start: a duration back from now (24h, 7d, 30m), an RFC 3339 time, or Unix ms.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Window end (same forms; default now).
    #[arg(long)]
    pub until: Option<String>,
    /// Dimension: agent, model, team, task, key, user, deployment, upstream, route.
    #[arg(long, default_value = "agent")]
    pub by: String,
    /// usage (spend and tokens), roi (value per dollar), tasks (per task), savings
    /// (by mechanism).
    #[arg(long, default_value = "usage")]
    pub view: String,
    /// Most rows for `--view tasks`.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// table, json or csv.
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// An SQLite ledger file (instead of the config's `[store]`).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The policy to replay (TOML: `[[swap]]`, `[prices.*]`, `[routes.*]`,
    /// `[prompt_cache]`, `[response_cache]`, `[pruning]`; see the README).
    #[arg(long)]
    pub policy: PathBuf,
    /// Window start: a duration back from now (24h, 30d), an RFC 3339 time, or Unix ms.
    #[arg(long, default_value = "30d")]
    pub since: String,
    /// Window end (same forms; default now).
    #[arg(long)]
    pub until: Option<String>,
    /// Group by agent, model, route or team (default: the total only).
    #[arg(long)]
    pub by: Option<String>,
    /// table, json or csv.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Also write an SVG bar chart (now vs policy per group) to this file.
    #[arg(long)]
    pub chart: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Ledger database (overrides the config's ledger.path).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Export format: focus (FOCUS 1.2 cost and usage, CSV).
    #[arg(long, default_value = "focus")]
    pub format: String,
    /// Window start: a duration back from now (24h, 30d), an RFC 3339 time, or Unix ms.
    #[arg(long, default_value = "30d")]
    pub since: String,
    /// Window end (same forms; default now).
    #[arg(long)]
    pub until: Option<String>,
    /// Output file (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Ledger database (overrides the config's ledger.path).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The provider's export (repeat: an OpenAI usage page and a costs page, an Anthropic
    /// usage report and a cost report). JSON (OpenAI, Anthropic) or CSV (AWS CUR 2.0,
    /// FOCUS 1.x); the format is read from the content.
    #[arg(long = "invoice", value_name = "FILE", required = true)]
    pub invoices: Vec<PathBuf>,
    /// openai, anthropic, aws or focus (default: what the files are). Selects the
    /// gateway upstreams of that kind.
    #[arg(long)]
    pub provider: Option<String>,
    /// Drift beyond this relative difference, per cell and overall (`1%`, `0.5%`, `0.02`).
    #[arg(long, default_value = "1%")]
    pub tolerance: String,
    /// Amount differences below this many USD are never a drift.
    #[arg(long, default_value = "0.01")]
    pub min_usd: String,
    /// Match a provider account (project, API key, workspace, AWS account id) with the
    /// gateway upstream that uses it: `--account proj_abc=openai` (repeat). Accounts not
    /// listed show as provider-only traffic.
    #[arg(long = "account", value_name = "ID=UPSTREAM")]
    pub accounts: Vec<String>,
    /// Match the file's account ids with the gateway's virtual key ids (a FOCUS file
    /// written by `tollgate export`).
    #[arg(long, conflicts_with = "accounts")]
    pub by_key: bool,
    /// Gateway upstreams to compare (repeat; default: the config's upstreams of the
    /// provider's kind).
    #[arg(long = "upstream", value_name = "NAME")]
    pub upstreams: Vec<String>,
    /// table, json or csv.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// List matched cells in the table too.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct TasksArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Ledger database (overrides the config's ledger.path).
    #[arg(long, global = true)]
    pub db: Option<PathBuf>,
    #[command(subcommand)]
    pub action: TasksAction,
}

#[derive(Subcommand, Debug)]
pub enum TasksAction {
    /// Record a task's outcome (a later outcome replaces an earlier one; both are kept
    /// in the history).
    Outcome {
        /// The task id (the `x-tollgate-task` label).
        task: String,
        /// success, failure or abandoned.
        #[arg(long)]
        status: String,
        /// What the outcome was worth, in USD.
        #[arg(long, conflicts_with = "minutes_saved")]
        value_usd: Option<String>,
        /// Minutes of human work saved (priced at the hourly rate).
        #[arg(long)]
        minutes_saved: Option<u64>,
        /// USD per hour for minutes saved (default: [outcomes] rate of the task's agent,
        /// its team, or the default).
        #[arg(long)]
        hourly_rate_usd: Option<String>,
        /// Free-form `key=value` labels (repeat).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A task's calls, tokens, cost, duration, models, outcome and outcome history, and
    /// what the runaway-agent guard did: status, incidents with evidence, alerts.
    Show {
        task: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Tasks the runaway-agent guard halted or flagged, and recent tasks' calls and spend.
    List {
        /// Recent tasks since (24h, 7d, an RFC 3339 time).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let a halted task run again (with Redis counters on every replica at once;
    /// otherwise a running gateway applies it within seconds).
    Release { task: String },
}

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Ledger database (overrides the config's ledger.path).
    #[arg(long, global = true)]
    pub db: Option<PathBuf>,
    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// Create a key; its secret is printed once.
    Create {
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated public model names this key may call (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Args, Debug)]
pub struct PricingArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Model ids (catalog ids or `deployment:NAME`); none prints the table's hash and size.
    pub models: Vec<String>,
}

#[derive(Args, Debug)]
pub struct BudgetsArgs {
    /// Config file (default: $TOLLGATE_CONFIG, else ./tollgate.toml if present).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Ledger database (overrides the config's ledger.path).
    #[arg(long, global = true)]
    pub db: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub action: BudgetsAction,
}

#[derive(Subcommand, Debug)]
pub enum BudgetsAction {
    /// Create or replace a run-time budget (a running gateway applies it within seconds).
    Set {
        /// `org`, `team:NAME`, `agent:NAME`, `user:NAME`, `key:ID`, `task:ID`, or `KIND:*`.
        #[arg(long)]
        scope: String,
        /// day, week, month or lifetime.
        #[arg(long)]
        period: String,
        /// The limit in USD (`500`, `0.25`).
        #[arg(long)]
        limit_usd: String,
        /// Only alert, never refuse.
        #[arg(long)]
        soft: bool,
        /// Alert thresholds in percent (default 50,80,100).
        #[arg(long, value_delimiter = ',')]
        alert_at: Vec<u8>,
    },
    /// Remove a run-time budget.
    Delete {
        #[arg(long)]
        scope: String,
        #[arg(long)]
        period: String,
    },
    /// Every budget in force, with this period's spend and what is left.
    List,
    /// The budgets on a scope, with spend per period (current and past).
    Show {
        /// `team:support`, `agent:*`, `org`, ...
        scope: String,
        /// Past periods to show.
        #[arg(long, default_value_t = 6)]
        periods: usize,
    },
}
