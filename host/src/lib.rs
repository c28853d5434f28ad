//! evogate: a small WebAssembly gateway for Evotor partner services.
//!
//! [`run`] starts one from a [`config::Config`]: it opens the key-value
//! store ([`kv`]), compiles each configured plugin in the [`sandbox`] and
//! serves HTTP: every request runs in a fresh, limited instance of the
//! plugin that owns its route. The admin listener beside it deploys and
//! rolls back plugin versions without a restart.
//!
//! Everything that needs wasmtime is behind the default `runtime` feature;
//! without it the crate is its [`config`], [`kv`] store and HTTP [`edge`]
//! (what the fuzz targets build).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = evogate::config::Config::load(None)?;
//! let running = evogate::run(&config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! println!("serving on {}", running.addr());
//! running.stopped().await
//! # }
//! ```

#![deny(missing_docs)]

#[cfg(feature = "runtime")]
mod admin;
#[cfg(feature = "runtime")]
mod app;
#[cfg(feature = "runtime")]
mod bindings;
pub mod config;
mod data_dir;
#[cfg(feature = "runtime")]
mod deploy;
pub mod edge;
#[cfg(feature = "runtime")]
mod jobs;
#[cfg(feature = "runtime")]
mod keyvalue;
pub mod kv;
pub mod outbound;
#[cfg(feature = "runtime")]
mod outgoing;
#[cfg(feature = "runtime")]
mod plugin_log;
#[cfg(feature = "runtime")]
mod registry;
#[cfg(feature = "runtime")]
mod run;
#[cfg(feature = "runtime")]
pub mod sandbox;
#[cfg(feature = "runtime")]
mod server;
#[cfg(feature = "runtime")]
mod settings;
mod telemetry;
#[cfg(feature = "runtime")]
mod tls;

#[cfg(feature = "runtime")]
pub use run::{Running, run};
