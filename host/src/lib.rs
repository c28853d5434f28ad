//! evogate: a small, generic WebAssembly gateway. It serves HTTP routes by
//! WebAssembly components — plugins of its own `evogate:plugin` world, or
//! standard `wasi:http/proxy` components — each request in a fresh, limited
//! instance, with a transactional key-value store, outgoing HTTP and
//! scheduled jobs provided by the host. Nothing in it is specific to one
//! service: the Evotor partner protocol is a plugin it serves.
//!
//! [`run`] starts one from a [`config::Config`]: it opens the key-value
//! store ([`kv`]), compiles each configured plugin and serves HTTP: every
//! request runs in an instance of the plugin that owns its route. The admin listener beside it deploys and
//! rolls back plugin versions without a restart.
//!
//! Everything that needs wasmtime is behind the default `runtime` feature;
//! without it the crate is its [`config`], [`kv`] store and HTTP [`edge`]
//! (what the fuzz targets build).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = evogate::config::Config::load(Some(std::path::Path::new("evogate.toml")))?;
//! let running = evogate::run(&config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! println!("serving on {}", running.addr());
//! running.stopped().await
//! # }
//! ```

#![deny(missing_docs)]

// The leaves: what every part reads, and what the fuzz targets build.
pub mod allowed_hosts;
pub mod config;
pub mod crypto;
mod data_dir;
pub mod edge;
pub mod kv;
pub mod logs;
mod telemetry;

// The gateway itself, behind the `runtime` feature: the HTTP side, the
// control plane, the wasmtime runtime, and their assembly.
#[cfg(feature = "runtime")]
mod app;
#[cfg(feature = "runtime")]
pub mod check;
#[cfg(feature = "runtime")]
mod control;
#[cfg(feature = "runtime")]
mod http;
#[cfg(feature = "runtime")]
mod listeners;
#[cfg(feature = "runtime")]
mod run;
#[cfg(feature = "runtime")]
mod runtime;
#[cfg(feature = "runtime")]
mod settings;
#[cfg(feature = "runtime")]
mod traces;

#[cfg(feature = "runtime")]
pub use run::{Running, run};
/// The test build's switch on the time plugins see (`runtime/clock.rs`).
#[cfg(all(feature = "runtime", feature = "fault-injection"))]
pub use runtime::clock::{advance_plugin_clock, plugin_now};
#[cfg(feature = "runtime")]
pub use runtime::sandbox;
