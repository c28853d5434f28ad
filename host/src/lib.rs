//! evogate: a small WebAssembly gateway for Evotor partner services.
//!
//! The binary (`evogate serve`) reads a [`config::Config`], opens the
//! key-value store ([`kv`]), compiles each configured plugin in the
//! [`sandbox`], registers it on its route ([`registry`]) and serves HTTP
//! ([`server`]): every request runs in a fresh, limited instance of the
//! plugin that owns its route.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = evogate::config::Config::load(None)?;
//! let gateway = evogate::Gateway::start(&config).await?;
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! evogate::server::serve(listener, gateway, std::future::pending(), std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

pub mod config;
pub mod kv;
mod plugin_log;
pub mod registry;
pub mod sandbox;
pub mod server;

pub use server::Gateway;

use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;

impl Gateway {
    /// Opens the store and loads every configured plugin; fails with the
    /// reason when any plugin cannot be loaded.
    pub async fn start(config: &config::Config) -> anyhow::Result<Arc<Gateway>> {
        let data_dir = config.data_dir();
        let backend = kv::open(config.store.backend, &data_dir)?;
        tracing::info!(store = %backend.describe(), "key-value store open");
        let limits = sandbox::Limits {
            timeout: Duration::from_millis(config.limits.request_timeout_ms),
            memory_bytes: config.limits.instance_memory_bytes,
            max_instances: config.limits.max_concurrent_requests,
        };
        let sandbox = sandbox::Sandbox::new(limits)?;
        let mut registry = registry::Registry::default();
        for plugin in &config.plugins {
            let path = plugin.wasm.relative();
            let wasm = std::fs::read(&path).with_context(|| {
                let hint = if plugin.wasm.original() == std::path::Path::new(config::DEFAULT_PLUGIN_WASM) {
                    " (build it first: cargo xtask build)"
                } else {
                    ""
                };
                format!("reading plugin {:?} from {}{hint}", plugin.name, path.display())
            })?;
            let started = std::time::Instant::now();
            let namespace = kv::Namespace::new(backend.clone(), &plugin.name);
            let version = sandbox.load(&plugin.name, wasm, Arc::new(plugin.plugin_settings()), namespace).await?;
            tracing::info!(
                plugin = %plugin.name,
                route = %plugin.route,
                identity = %format!("{}@{}", version.name, version.version),
                wasm = %path.display(),
                load_ms = started.elapsed().as_millis() as u64,
                "plugin loaded"
            );
            registry.insert(&plugin.name, &plugin.route, Arc::new(version));
        }
        Ok(Arc::new(Gateway {
            registry,
            max_body_bytes: config.limits.max_body_bytes,
            request_timeout: limits.timeout,
            permits: Arc::new(tokio::sync::Semaphore::new(limits.max_instances as usize)),
            _sandbox: Arc::new(sandbox),
        }))
    }
}
