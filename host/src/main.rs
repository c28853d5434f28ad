//! The `evogate` command line.

mod client;
mod store;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "evogate", version, about = "A small WebAssembly gateway: HTTP routes served by sandboxed components")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the configured plugins over HTTP, with the admin listener beside.
    Serve {
        /// TOML configuration file; every setting has a default.
        #[arg(long, short, env = "EVOGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration as `serve` would take it — every plugin
    /// loaded and its settings checked — without opening the store or
    /// binding a port (so also beside a running gateway); exit status 1
    /// with each problem on a line of its own.
    Check {
        /// TOML configuration file.
        #[arg(long, short, env = "EVOGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Deploy a component as the new version of a running plugin.
    Deploy {
        /// The plugin's configured name.
        name: String,
        /// The component (`.wasm`).
        file: PathBuf,
        /// Deploy it even when it is another program than the live version
        /// (its identity's name or its world differs): it gets the route
        /// and all of the plugin's data.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// List the running plugins and their versions.
    Plugins {
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Make a plugin's previous version live again, or with `--to` any
    /// kept version (earlier ones, or those rolled back from).
    Rollback {
        /// The plugin's configured name.
        name: String,
        /// The version to make live: as the plugin reports it (`evogate
        /// plugins` lists the kept ones), or the start of its SHA-256.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Have the running gateway read its configuration again and put it
    /// in force — plugin settings and secrets, plugins and routes, jobs,
    /// per-plugin caps — or, with any problem, keep the one in force (exit
    /// status 1, each problem on its own line). As `SIGHUP` does.
    Reload {
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Run one of a plugin's scheduled jobs now and wait for its outcome
    /// (exit status 1 unless it is `ok`).
    RunJob {
        /// The plugin's configured name.
        name: String,
        /// The job's name (`[[plugins.jobs]] name`).
        job: String,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Back the whole store up from the running gateway, as of one moment,
    /// while it serves (the admin API's `GET /backup`).
    Backup {
        /// The file to write (made readable by this user only; written
        /// beside as FILE.partial, then checked and renamed).
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Restore a backup into the configured store, with the gateway
    /// stopped: the file is checked whole first; the store must be empty.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// Delete everything in the store first, if it holds anything.
        #[arg(long)]
        force: bool,
        /// The configuration whose `[store]` (and `data_dir`) to restore into.
        #[arg(long, short, env = "EVOGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Work on a store directly, with the gateway stopped.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy one store into another (redb to PostgreSQL, or back): every
    /// record, version and the version counter.
    Copy {
        /// The configuration of the store to copy.
        #[arg(long)]
        from: PathBuf,
        /// The configuration of the store to copy into; it must be empty.
        #[arg(long)]
        to: PathBuf,
        /// Delete everything in the target store first, if it holds anything.
        #[arg(long)]
        force: bool,
    },
    /// Rewrite every table of the configured redb store with its leaves
    /// packed full and give the free space back to the file system, with
    /// the gateway stopped.
    Compact {
        /// The configuration whose store to compact.
        #[arg(long, short, env = "EVOGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Walk the configured store (or a backup file) and report its records
    /// per namespace and any inconsistency; exit status 1 on a problem.
    Verify {
        /// Check this backup file instead of the store.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The configuration whose store to walk.
        #[arg(long, short, env = "EVOGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    return_large_buffers_to_the_system();
    let cli = Cli::parse();
    // `serve` writes its log as its configuration says; the other commands write text.
    let (serve_config, format) = match &cli.command {
        Command::Serve { config } => match evogate::config::Config::load(config.as_deref()) {
            Ok(config) => {
                let format = config.log.format;
                (Some(config), format)
            }
            Err(err) => {
                eprintln!("error: {err:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => (None, evogate::config::LogFormat::Text),
    };
    // Log lines (the access log among them) are written to stderr by a
    // thread of their own, in batches, so a request's thread never waits
    // on the terminal or pipe. Not lossy: when the queue is full the
    // writer waits, rather than drop lines.
    let (writer, flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("evogate-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    evogate::logs::init(format, writer);
    let result = match cli.command {
        Command::Serve { .. } => serve(serve_config),
        Command::Check { config } => check(config.as_deref()),
        Command::Deploy { name, file, force, admin } => client::deploy(&admin, &name, &file, force),
        Command::Plugins { admin } => client::plugins(&admin),
        Command::Reload { admin } => client::reload(&admin),
        Command::RunJob { name, job, admin } => client::run_job(&admin, &name, &job),
        Command::Rollback { name, to, admin } => client::rollback(&admin, &name, to.as_deref()),
        Command::Backup { to, admin } => client::backup(&admin, &to),
        Command::Restore { from, force, config } => store::restore(config.as_deref(), &from, force),
        Command::Store(StoreCommand::Copy { from, to, force }) => store::copy(&from, &to, force),
        Command::Store(StoreCommand::Verify { file, config }) => store::verify(config.as_deref(), file.as_deref()),
        Command::Store(StoreCommand::Compact { config }) => store::compact(config.as_deref()),
    };
    // Every queued line is out before the last word.
    drop(flush_on_exit);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Sets glibc's mmap threshold once, so that request bodies (up to
/// `limits.max_body_bytes`) and other large buffers go back to the system
/// when freed. Left to itself, glibc raises the threshold to the size of
/// the first large buffer freed (up to 32 MiB) and keeps freed bodies in its
/// heap from then on: the process then holds far more than
/// `limits.max_body_bytes_in_flight` once the bodies are gone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_large_buffers_to_the_system() {
    /// Allocations of this size and more are mapped from the system.
    const LARGE_BUFFER_BYTES: i32 = 4 << 20;
    // SAFETY: called first in `main`, before any other thread exists;
    // `mallopt` only sets a parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_buffers_to_the_system() {}

/// Log lines waiting for the writer thread, at most; past it, loggers wait.
const LOG_QUEUE_LINES: usize = 64 * 1024;

fn serve(config: Option<evogate::config::Config>) -> anyhow::Result<()> {
    let config = config.context("the configuration was not read")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("evogate")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async { evogate::run(&config, shutdown_signal()).await?.stopped().await })
}

/// `evogate check`: what was checked on stdout, each problem on stderr.
fn check(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = evogate::config::Config::load(file)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let report = runtime.block_on(evogate::check::check(&config));
    for line in &report.checked {
        println!("{line}");
    }
    for problem in &report.problems {
        eprintln!("{problem}");
    }
    anyhow::ensure!(report.problems.is_empty(), "the configuration has {} problem(s)", report.problems.len());
    println!("configuration OK");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. Both are listened for from the call on,
/// not from the future's first poll: a signal that comes right after the
/// gateway says it is listening (before its serving task first runs) drains
/// it rather than ending the process at once.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (term, int) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                (term, int) => {
                    for err in [term.err(), int.err()].into_iter().flatten() {
                        tracing::warn!(error = %err, "cannot listen for SIGTERM or SIGINT");
                    }
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
