//! evogate: a small WebAssembly gateway for Evotor partner services.
//!
//! The binary (`evogate serve`) reads a [`config::Config`], opens the
//! key-value store ([`kv`]), compiles each configured plugin in the
//! [`sandbox`], registers it on its route ([`registry`]) and serves HTTP
//! ([`server`]): every request runs in a fresh, limited instance of the
//! plugin that owns its route.
//!
//! Everything that needs wasmtime is behind the default `runtime` feature;
//! without it the crate is its [`config`], [`kv`] store and HTTP [`edge`]
//! (what the fuzz targets build).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = evogate::config::Config::load(None)?;
//! let app = evogate::start(&config).await?;
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! evogate::server::serve(listener, app.gateway, std::future::pending(), evogate::server::ServeOptions::default()).await;
//! # Ok(()) }
//! ```

#[cfg(feature = "runtime")]
pub mod admin;
pub mod config;
#[cfg(feature = "runtime")]
pub mod deploy;
pub mod edge;
#[cfg(feature = "runtime")]
mod keyvalue;
pub mod kv;
pub mod outbound;
#[cfg(feature = "runtime")]
mod plugin_log;
#[cfg(feature = "runtime")]
pub mod registry;
#[cfg(feature = "runtime")]
pub mod sandbox;
#[cfg(feature = "runtime")]
pub mod server;
#[cfg(feature = "runtime")]
pub mod tls;

#[cfg(feature = "runtime")]
pub use server::Gateway;

/// Starting a gateway: store, sandbox, plugins, request path.
#[cfg(feature = "runtime")]
mod runtime {
    use super::{Gateway, config, deploy, kv, sandbox, server};
    use anyhow::Context as _;
    use std::sync::Arc;
    use std::time::Duration;

    /// A started gateway: the request path, the deployer, and the store.
    pub struct App {
        /// Serves plugin requests.
        pub gateway: Arc<Gateway>,
        /// Deploys and rolls back plugin versions.
        pub deployer: Arc<deploy::Deployer>,
        /// The key-value store.
        pub backend: Arc<dyn kv::Backend>,
    }

    impl std::fmt::Debug for App {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("App").field("store", &self.backend.describe()).finish_non_exhaustive()
        }
    }

    /// Opens the store and loads every configured plugin (or its last
    /// deployed version); fails with the reason when any cannot be loaded.
    pub async fn start(config: &config::Config) -> anyhow::Result<App> {
        // Absolute, so that every part (the compilation cache insists) agrees on it.
        let data_dir = std::path::absolute(config.data_dir()).context("resolving data_dir")?;
        std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data_dir {}", data_dir.display()))?;
        let backend = kv::open(&config.store, &data_dir)?;
        tracing::info!(store = %backend.describe(), "key-value store open");
        let limits = sandbox::Limits {
            timeout: Duration::from_millis(config.limits.request_timeout_ms),
            memory_bytes: config.limits.instance_memory_bytes,
            max_instances: config.limits.max_concurrent_requests,
            max_kv_calls: config.limits.max_kv_calls_in_flight,
        };
        // Compiled code is loaded and run as is: only this user may write it.
        let cache_dir = data_dir.join("cache");
        std::fs::create_dir_all(&cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private", cache_dir.display()))?;
        }
        let sandbox = Arc::new(sandbox::Sandbox::new(limits, Some(&cache_dir))?);
        let (deployer, registry) = deploy::Deployer::start(
            &config.plugins,
            sandbox.clone(),
            backend.clone(),
            &data_dir,
            config.admin.max_plugin_bytes,
        )
        .await?;
        let gateway = Arc::new(Gateway {
            registry,
            max_body_bytes: config.limits.max_body_bytes,
            body_budget: server::BodyBudget::new(config.limits.body_bytes_in_flight()),
            request_timeout: limits.timeout,
            max_instances: limits.max_instances as usize,
            permits: Arc::new(tokio::sync::Semaphore::new(limits.max_instances as usize)),
            plugin_permits: config
                .plugins
                .iter()
                .filter_map(|plugin| plugin.max_concurrent_requests.map(|cap| (plugin.name.clone(), cap)))
                .map(|(name, cap)| (name, Arc::new(tokio::sync::Semaphore::new(cap as usize))))
                .collect(),
            draining: std::sync::atomic::AtomicBool::new(false),
            _sandbox: sandbox,
        });
        let deployer = Arc::new(deployer);
        // On a shared store: take up deploys made through other nodes.
        tokio::spawn(deployer.clone().follow());
        Ok(App { gateway, deployer, backend })
    }
}

#[cfg(feature = "runtime")]
pub use runtime::{App, start};
