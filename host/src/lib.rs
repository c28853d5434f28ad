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

// The leaves: what every part reads, and what the fuzz targets build.
pub mod config;
mod data_dir;
pub mod edge;
pub mod kv;
pub mod outbound;
mod telemetry;

// The gateway itself, behind the `runtime` feature: the HTTP side, the
// control plane, the wasmtime runtime, and their assembly.
#[cfg(feature = "runtime")]
mod app;
#[cfg(feature = "runtime")]
mod control;
#[cfg(feature = "runtime")]
mod http;
#[cfg(feature = "runtime")]
mod run;
#[cfg(feature = "runtime")]
mod runtime;
#[cfg(feature = "runtime")]
mod settings;

#[cfg(feature = "runtime")]
pub use run::{Running, run};
#[cfg(feature = "runtime")]
pub use runtime::sandbox;
