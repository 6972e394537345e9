//! Command line: parsing, output formats and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::audit::{self, Severity};
use crate::config::{Config, ConfigOrigin, CONFIG_PATH_ENV};
use crate::logging::LogFormat;
use crate::report::events::{ConfigDefaults, LogEvent, ShutdownRequested};
use crate::restore::native::{Action, Change, RecoverReport};
use crate::text::printable;
use crate::warden::{StatusReport, Warden, WardenError};

/// Exit codes, stable for scripts and orchestrators.
pub(crate) mod exit {
    /// Everything asked for is done.
    pub(crate) const OK: u8 = 0;
    /// The operation failed (some writes were refused, or another runtime error).
    pub(crate) const FAILURE: u8 = 1;
    /// Bad usage or configuration.
    pub(crate) const USAGE: u8 = 2;
    /// Some rows were invalid and skipped; every valid row is in place
    /// (`export`: some schedulers cannot be rows and were left out).
    pub(crate) const INVALID_ROWS: u8 = 3;
    /// `check` found problems.
    pub(crate) const FINDINGS: u8 = 4;
    /// Redis could not be reached.
    pub(crate) const REDIS_UNREACHABLE: u8 = 5;
    /// The source database could not be reached or its query failed.
    pub(crate) const SOURCE_UNREACHABLE: u8 = 6;
    /// `recover` did not get the recovery lease within `recovery.lease_wait`
    /// (another bullmq-warden is restoring), or lost it and stopped writing.
    pub(crate) const LEASE: u8 = 7;
    /// `watch` could not start: the listen address is in use or cannot be
    /// bound, or the process could not set itself up. Kept apart from 1 so
    /// that an orchestrator can tell a clash of ports from refused writes.
    pub(crate) const STARTUP: u8 = 8;
}

/// Environment variable for `--log-format`.
const LOG_FORMAT_ENV: &str = "BULLMQ_WARDEN_LOG_FORMAT";
/// Environment variable for `watch --listen`.
const LISTEN_ENV: &str = "BULLMQ_WARDEN_LISTEN";

#[derive(Debug, Parser)]
#[command(
    name = "bullmq-warden",
    version,
    about = "Watches the Redis behind BullMQ and restores job schedulers from a SQL source of truth, or from a journal it keeps of them",
    after_help = "Exit codes: 0 ok, 1 failure (writes refused), 2 usage or config error, 3 invalid rows skipped (export: schedulers left out), \
                  4 check found problems, 5 Redis unreachable, 6 source database unreachable or its query failed, \
                  7 recovery lease held by another bullmq-warden (or lost while writing), \
                  8 watch could not start (listen address in use or not bindable).\n\
                  Without --config or BULLMQ_WARDEN_CONFIG no file is read: built-in defaults apply.\n\
                  Every config key can be set as BULLMQ_WARDEN__<SECTION>__<KEY>, e.g. BULLMQ_WARDEN__REDIS__URL; \
                  an empty variable counts as unset.\n\
                  Plain logs are coloured only on a terminal, never with NO_COLOR set."
)]
pub(crate) struct Cli {
    /// TOML config file (else BULLMQ_WARDEN_CONFIG; empty counts as unset); without
    /// either, built-in defaults and environment overrides apply.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Log line format, logs go to stderr (else BULLMQ_WARDEN_LOG_FORMAT; default plain).
    #[arg(long, global = true, value_enum)]
    pub(crate) log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the sidecar: watch Redis, export metrics, restore lost schedulers (until SIGTERM;
    /// SIGHUP or a changed config file reloads the config).
    Watch {
        /// Address for /metrics and the API, instead of `[http] listen` (else
        /// BULLMQ_WARDEN_LISTEN); "" serves nothing.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Job counts per queue, schedulers in Redis, rows wanting them, and the drift.
    Status {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Print JSON: {"queues": {"<name>": {…}}}.
        #[arg(long)]
        json: bool,
    },
    /// Restore the job schedulers from the database (create missing, fix differing).
    Recover {
        /// Print the plan without writing anything.
        #[arg(long)]
        dry_run: bool,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// List every scheduler created, updated, removed or kept (with --json,
        /// the `changes` array); without it only the counts, invalid rows,
        /// failures and withheld queues are printed.
        #[arg(long)]
        changes: bool,
    },
    /// Remove the job schedulers of a queue (through BullMQ), e.g. before a clean rebuild.
    RemoveSchedulers {
        /// The queue to clear.
        #[arg(long)]
        queue: String,
        /// Also remove schedulers outside the id template's prefix (the application's own).
        #[arg(long)]
        all: bool,
        /// Confirm; without it nothing is removed.
        #[arg(long)]
        yes: bool,
    },
    /// Print the job schedulers now in Redis as rows of the default table (inspection_tasks),
    /// to start a task table from an application that defines them in code; read them back
    /// with `[source] scheduler_id = "{id}"`. Schedulers that cannot be rows are named on
    /// stderr, and the exit code is then 3.
    Export {
        /// Only this queue (default: every queue under the prefix).
        #[arg(long)]
        queue: Option<String>,
        /// sql: CREATE TABLE IF NOT EXISTS and INSERTs for SQLite, PostgreSQL and MySQL;
        /// json: an array of rows; csv: a header line and one line per row.
        #[arg(long, value_enum, default_value = "sql")]
        format: crate::export::Format,
    },
    /// Audit config, connectivity, Redis persistence and drift; non-zero exit on problems.
    Check {
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses arguments, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match cli.log_format {
        Some(format) => format,
        None => {
            match env_value(LOG_FORMAT_ENV).map(|v| LogFormat::from_str(&v, true)) {
                None => LogFormat::Plain,
                Some(Ok(format)) => format,
                Some(Err(_)) => {
                    eprintln!("bullmq-warden: environment variable {LOG_FORMAT_ENV}: must be plain or json");
                    return ExitCode::from(exit::USAGE);
                }
            }
        }
    };
    crate::logging::init(log_format);
    // Without a process-wide TLS provider the first rediss:// connection
    // panics; fails only when one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .on_thread_park(crate::memory::collect_when_idle)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bullmq-warden: cannot start the async runtime: {e}");
            return ExitCode::from(exit::STARTUP);
        }
    };
    // On a worker rather than on this thread: workers give back what they
    // freed when they next go idle (`collect_when_idle`), the thread that
    // blocks on the runtime never does. The start-up work it did (loading
    // the snapshot file of 100,000 schedulers among it) left about 5 MiB
    // of freed pages resident for the life of the process.
    match runtime.block_on(async { tokio::spawn(run(cli)).await }) {
        Ok(code) => ExitCode::from(code),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn run(cli: Cli) -> u8 {
    let (config, origin) = match load_config(&cli) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&WardenError::Config(e)),
    };
    match cli.command {
        Command::Watch { .. } => watch(config, origin).await,
        Command::Status { queue, json } => status(config, queue.as_deref(), json).await,
        Command::Recover {
            dry_run,
            queue,
            json,
            changes,
        } => recover(config, queue.as_deref(), dry_run, json, changes).await,
        Command::RemoveSchedulers { queue, all, yes } => {
            remove_schedulers(config, &queue, all, yes).await
        }
        Command::Export { queue, format } => export(&config, queue.as_deref(), format).await,
        Command::Check { json } => {
            with_warden(config, async |warden| check(warden, json).await).await
        }
    }
}

/// `status`: the job counts and drift per queue, as a table or JSON.
async fn status(config: Config, queue: Option<&str>, json: bool) -> u8 {
    with_warden(config, async |warden| match warden.status(queue).await {
        Ok(report) => {
            print_status(&report, json);
            exit::OK
        }
        Err(e) => fail(&e),
    })
    .await
}

/// `recover`: the report printed, the exit code from what it says.
async fn recover(
    config: Config,
    queue: Option<&str>,
    dry_run: bool,
    json: bool,
    list_changes: bool,
) -> u8 {
    with_warden(config, async |warden| {
        match warden.recover(queue, dry_run).await {
            Ok(report) => {
                let code = recover_exit_code(&report);
                print_recover(report, json, list_changes);
                code
            }
            Err(e) => fail(&e),
        }
    })
    .await
}

/// `remove-schedulers`: nothing is connected to without `--yes`.
async fn remove_schedulers(config: Config, queue: &str, all: bool, yes: bool) -> u8 {
    if !yes {
        eprintln!(
            "bullmq-warden: remove-schedulers removes the job schedulers of queue \
             {queue:?}; add --yes to confirm"
        );
        return exit::USAGE;
    }
    with_warden(config, async |warden| {
        match warden.remove_schedulers(queue, all).await {
            Ok(removed) => {
                let queue = printable(queue);
                println!("removed {removed} job schedulers from queue {queue}");
                exit::OK
            }
            Err(e) => fail(&e),
        }
    })
    .await
}

/// The config from the file the command line or the environment names (or
/// the defaults), with the overrides, and where it came from for reloads.
fn load_config(cli: &Cli) -> Result<(Config, ConfigOrigin), crate::config::ConfigError> {
    // Read here rather than by clap, which refuses an empty variable: an
    // empty BULLMQ_WARDEN_CONFIG names no file, as an empty override sets no key.
    let config_path = cli.config.clone().or_else(|| {
        std::env::var_os(CONFIG_PATH_ENV)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    });
    if config_path.is_none() {
        ConfigDefaults {
            redis_url: &crate::config::RedisConfig::default().url,
            source_url: &crate::config::SourceConfig::default().url,
            path_variable: CONFIG_PATH_ENV,
        }
        .log();
    }
    let origin = ConfigOrigin {
        path: config_path,
        listen: match &cli.command {
            Command::Watch { listen } => listen.clone().or_else(|| env_value(LISTEN_ENV)),
            _ => None,
        },
    };
    let config = origin.load()?;
    Ok((config, origin))
}

/// Runs a one-shot command against Redis and the source, and closes them.
async fn with_warden(config: Config, command: impl AsyncFnOnce(&Warden) -> u8) -> u8 {
    let warden = match Warden::connect(config).await {
        Ok(warden) => warden,
        Err(e) => return fail(&e),
    };
    let code = command(&warden).await;
    warden.close().await;
    code
}

/// `export`: the rows on stdout, what was left out on stderr (exit 3).
async fn export(config: &Config, queue: Option<&str>, format: crate::export::Format) -> u8 {
    let store = match crate::store::BullmqStore::connect(&config.redis).await {
        Ok(store) => store,
        Err(e) => return fail(&WardenError::Store(e)),
    };
    let exported = match crate::export::collect(&store, queue, config.source.max_value_bytes).await
    {
        Ok(exported) => exported,
        Err(e) => return fail(&WardenError::Store(e)),
    };
    print!("{}", crate::export::render(&exported.rows, format));
    for left in &exported.left_out {
        eprintln!(
            "bullmq-warden: left out {}/{}: {}",
            printable(&left.queue),
            printable(&left.id),
            printable(&left.reason)
        );
    }
    match exported.left_out.is_empty() {
        true => exit::OK,
        false => exit::INVALID_ROWS,
    }
}

/// `recover`'s exit code: the lease lost, a write refused, invalid rows.
fn recover_exit_code(report: &RecoverReport) -> u8 {
    if report.stopped.is_some() {
        exit::LEASE
    } else if !report.success {
        exit::FAILURE
    } else if !report.invalid.is_empty() {
        exit::INVALID_ROWS
    } else {
        exit::OK
    }
}

/// `check`: prints every finding with its verdict.
async fn check(warden: &Warden, json: bool) -> u8 {
    let audit = audit::run(warden).await;
    if json {
        print_json(&audit);
    } else {
        for f in &audit.findings {
            let label = match f.severity {
                Severity::Info => "ok     ",
                Severity::Warning => "warning",
                Severity::Error => "error  ",
            };
            println!("{label} {:<18} {}", f.check, printable(&f.message));
        }
    }
    if audit.has_errors() {
        exit::FINDINGS
    } else {
        exit::OK
    }
}

/// A variable's value; clap's own `env` would refuse an empty one, which
/// counts as unset here as it does for the config overrides.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Runs the watcher until SIGTERM or SIGINT; SIGHUP reloads the config.
async fn watch(config: Config, origin: ConfigOrigin) -> u8 {
    use crate::watch::WatchError;
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match crate::watch::run(config, origin, shutdown).await {
        Ok(()) => exit::OK,
        Err(error) => {
            eprintln!("bullmq-warden: {}", printable(&error.to_string()));
            match error {
                WatchError::Http(crate::http::HttpError::Bind { .. }) => exit::STARTUP,
                WatchError::Source(_) | WatchError::Journal(_) => exit::SOURCE_UNREACHABLE,
                _ => exit::USAGE,
            }
        }
    }
}

async fn cancel_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    ShutdownRequested.log();
    shutdown.cancel();
}

/// Prints the one-line error and picks its exit code.
fn fail(error: &WardenError) -> u8 {
    eprintln!("bullmq-warden: {}", printable(&error.to_string()));
    match error {
        WardenError::Config(_) => exit::USAGE,
        WardenError::Store(_) => exit::REDIS_UNREACHABLE,
        WardenError::Source(_) => exit::SOURCE_UNREACHABLE,
        WardenError::LeaseBusy(_) => exit::LEASE,
    }
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("bullmq-warden: cannot encode the result as JSON: {e}"),
    }
}

/// `recover --json`: the REST route's shape, without `changes` unless listed.
fn print_recover_json(report: &RecoverReport, list_changes: bool) {
    let mut value = match serde_json::to_value(report) {
        Ok(value) => value,
        Err(e) => return eprintln!("bullmq-warden: cannot encode the result as JSON: {e}"),
    };
    if let (false, Some(fields)) = (list_changes, value.as_object_mut()) {
        fields.remove("changes");
    }
    print_json(&value);
}

fn print_status(report: &StatusReport, json: bool) {
    if json {
        return print_json(report);
    }
    println!(
        "{:<24} {:>8} {:>7} {:>9} {:>7} {:>8} {:>11} {:>7} {:>9} {:>10} {:>8} {:>8} {:>11} {:>8} {:>8}",
        "QUEUE", "WAITING", "ACTIVE", "COMPLETED", "FAILED", "DELAYED", "PRIORITIZED", "PAUSED",
        "WAIT-CHLD", "REPEATABLE", "DESIRED", "MISSING", "MISMATCHED", "ORPHANED", "INVALID"
    );
    for (name, q) in &report.queues {
        let c = &q.counts;
        println!(
            "{:<24} {:>8} {:>7} {:>9} {:>7} {:>8} {:>11} {:>7} {:>9} {:>10} {:>8} {:>8} {:>11} {:>8} {:>8}",
            printable(name), c.waiting, c.active, c.completed, c.failed, c.delayed, c.prioritized, c.paused,
            c.waiting_children, c.repeatable, q.desired, q.drift.missing, q.drift.mismatched,
            q.drift.orphaned, q.drift.invalid
        );
    }
}

/// The report as text or JSON. The list of changes, one entry per
/// scheduler (100,000 after a total loss), is printed only when asked for;
/// changes left undone are always counted.
fn print_recover(mut report: RecoverReport, json: bool, list_changes: bool) {
    let not_done = report.changes.iter().filter(|c| c.not_done).count();
    if !list_changes {
        report.changes = Vec::new();
    }
    if json {
        return print_recover_json(&report, list_changes);
    }
    for change in &report.changes {
        print_change(change, report.dry_run);
    }
    print_not_restored(&report);
    if let Some(reason) = &report.stopped {
        println!("stopped       {reason}; {not_done} changes not done");
    }
    println!(
        "{}: {} created, {} updated, {} unchanged, {} removed, {} invalid, {} failed in {} ms",
        if report.dry_run { "plan" } else { "recovered" },
        report.created,
        report.updated,
        report.unchanged,
        report.removed,
        report.invalid.len(),
        report.failed.len(),
        report.duration_ms
    );
}

fn print_change(change: &Change, dry_run: bool) {
    let verb = match (change.action, dry_run) {
        _ if change.not_done => "not done",
        (Action::Create, true) => "would create",
        (Action::Create, false) => "created",
        (Action::Update, true) => "would update",
        (Action::Update, false) => "updated",
        (Action::Remove, true) => "would remove",
        (Action::Remove, false) => "removed",
        (Action::Keep, _) => "orphan (kept)",
    };
    let differs = if change.differs.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = change.differs.iter().map(|d| d.as_str()).collect();
        format!(" ({} differs)", names.join(", "))
    };
    println!(
        "{verb:<13} {}/{}{differs}",
        printable(&change.queue),
        printable(&change.scheduler_id)
    );
}

/// Invalid rows, refused writes and withheld queues: printed whether or not
/// the changes are listed, as each needs someone to act.
fn print_not_restored(report: &RecoverReport) {
    for invalid in &report.invalid {
        println!(
            "invalid row   {}: {}",
            printable(&invalid.id),
            printable(&invalid.reason)
        );
    }
    for failure in &report.failed {
        println!(
            "failed        {}: {}",
            printable(&failure.scheduler_id),
            printable(&failure.reason)
        );
    }
    for withheld in &report.withheld {
        println!(
            "withheld      queue {} was set up by {}, a BullMQ major version bullmq-warden \
             was not verified against; set [recovery] allow_unverified_bullmq = true to write there",
            printable(&withheld.queue),
            printable(&withheld.version)
        );
    }
}
