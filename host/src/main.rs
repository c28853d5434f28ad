//! The `evogate` command line.

mod client;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
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
        });
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = tokio::spawn(evogate::admin::serve(admin_listener, admin, async {
            let _ = admin_stopped.await;
        }));
        tokio::spawn(hangups());
        tracing::info!("evogate admin listening on http://{admin_addr}");
        tracing::info!("evogate listening on http://{addr}");
        evogate::server::serve(listener, app.gateway.clone(), shutdown_signal(), Duration::from_secs(10)).await;
        let _ = stop_admin.send(());
        let _ = admin_task.await;
        tracing::info!("evogate stopped");
        Ok(())
    })
}

/// `SIGHUP` changes nothing: deploys go through the admin API, and the
/// configuration is read at start. Say so instead of dying (the default).
async fn hangups() {
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: nothing to reload (deploy plugins with `evogate deploy`)");
        }
    }
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
