//! The `evogate` command line.

mod client;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(name = "evogate", version, about = "A WebAssembly gateway for Evotor partner services")]
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
    /// Deploy a component as the new version of a running plugin.
    Deploy {
        /// The plugin's configured name.
        name: String,
        /// The component (`.wasm`).
        file: PathBuf,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// List the running plugins and their versions.
    Plugins {
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Make a plugin's previous version live again.
    Rollback {
        /// The plugin's configured name.
        name: String,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVOGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn")),
        )
        .init();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Deploy { name, file, admin } => client::deploy(&admin, &name, &file),
        Command::Plugins { admin } => client::plugins(&admin),
        Command::Rollback { name, admin } => client::rollback(&admin, &name),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = evogate::config::Config::load(config_file.as_deref())?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("evogate")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Before anything slow (plugins compile for seconds): a certificate
        // renewal's SIGHUP during start must not kill the process.
        let hangup = hangup_signal();
        raise_open_file_limit(config.limits.max_connections);
        let tls = match &config.tls {
            Some(tls) => Some(Arc::new(evogate::tls::Tls::new(&tls.cert.relative(), &tls.key.relative())?)),
            None => None,
        };
        let admin_tls = match &config.admin.tls {
            Some(tls) => Some(Arc::new(
                evogate::tls::Tls::http1(&tls.cert.relative(), &tls.key.relative()).context("[admin.tls]")?,
            )),
            None => None,
        };
        let app = Arc::new(evogate::start(&config).await?);
        let listener =
            tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("binding the admin listener {}", config.admin.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let admin_addr = admin_listener.local_addr().context("reading the admin address")?;
        let admin = Arc::new(evogate::admin::Admin {
            app: app.clone(),
            metrics: Some(metrics),
            token: config.admin.token.clone(),
            probe: Default::default(),
        });
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_scheme = if admin_tls.is_some() { "https" } else { "http" };
        let reloadable = [("public", tls.clone()), ("admin", admin_tls.clone())]
            .into_iter()
            .filter_map(|(which, tls)| Some((which, tls?)))
            .collect();
        let admin_task = tokio::spawn(evogate::admin::serve(admin_listener, admin, admin_tls, async {
            let _ = admin_stopped.await;
        }));
        tokio::spawn(hangups(hangup, reloadable));
        tracing::info!("evogate admin listening on {admin_scheme}://{admin_addr}");
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!("evogate listening on {scheme}://{addr}");
        let options = evogate::server::ServeOptions::from_config(&config, tls);
        evogate::server::serve(listener, app.gateway.clone(), shutdown_signal(), options).await;
        let _ = stop_admin.send(());
        let _ = admin_task.await;
        // Every acknowledged commit is already on disk; dropping the last handle closes the store.
        match Arc::try_unwrap(app) {
            Ok(app) => {
                drop(app);
                tracing::info!("store closed");
            }
            Err(_) => tracing::debug!("the store closes with the process"),
        }
        tracing::info!("evogate stopped");
        Ok(())
    })
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

/// Listens for `SIGHUP` from now on (its default action ends the process).
fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    return match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP");
            None
        }
    };
}

/// `SIGHUP` re-reads the TLS certificates and keys (public and admin
/// listeners); a bad new pair keeps the old one. Without TLS it changes
/// nothing (deploys go through the admin API, and the configuration is
/// read at start) and says so.
async fn hangups(hangup: Hangup, tls: Vec<(&'static str, Arc<evogate::tls::Tls>)>) {
    #[cfg(unix)]
    if let Some(mut hup) = hangup {
        while hup.recv().await.is_some() {
            if tls.is_empty() {
                tracing::info!("SIGHUP: nothing to reload (no TLS; deploy plugins with `evogate deploy`)");
            }
            for (listener, tls) in &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!(listener, "SIGHUP: TLS certificate reloaded"),
                    Err(err) => tracing::error!(
                        listener,
                        error = %format!("{err:#}"),
                        "SIGHUP: keeping the current TLS certificate"
                    ),
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (hangup, tls);
}

/// Descriptors the gateway needs besides client connections: listeners,
/// the store, the compilation cache, database connections, logs.
const FILE_HEADROOM: u64 = 256;

/// Raises the soft open-file limit to the hard one (a connection is a
/// descriptor; the usual soft limit of 1024 is far below
/// `limits.max_connections`) and warns when even that is too low.
fn raise_open_file_limit(max_connections: usize) {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
        // "Unlimited" is not accepted for open files: Linux's own ceiling then.
        let target = maximum.unwrap_or(1 << 20);
        let mut soft = current.unwrap_or(target);
        if soft < target {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum }) {
                Ok(()) => soft = target,
                Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit"),
            }
        }
        let needed = max_connections as u64 + FILE_HEADROOM;
        if soft < needed {
            tracing::warn!(
                open_files = soft,
                needed,
                "the open-file limit is below limits.max_connections plus {FILE_HEADROOM}: connections past it fail \
                 to be accepted; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower limits.max_connections"
            );
        } else {
            tracing::debug!(open_files = soft, "open-file limit");
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
