//! Write an evogate plugin in plain Rust.
//!
//! A plugin is a type implementing [`Plugin`]: it answers each request
//! (and, if it has any, runs its scheduled jobs) with a [`Ctx`] — the
//! gateway's transactional key-value store ([`kv::Kv`]), the operator's
//! settings ([`config::Config`]), the time ([`clock::Clock`]) and outgoing
//! HTTP ([`outgoing::Http`]). [`export_plugin!`] turns the type into the
//! component the gateway runs (world `evogate:plugin/plugin-with-jobs@0.2.4`);
//! it is the only place the generated bindings are touched.
//!
//! With the `testing` feature the same traits have native fakes —
//! `kv::MemKv`, the reference store with the gateway's exact semantics
//! (short answers included), `config::MapConfig`, `clock::FixedClock` and
//! `clock::ManualClock`, and `outgoing::Scripted` — gathered in
//! `testing::Fakes`, so the whole plugin is tested with `cargo test`,
//! no WebAssembly involved:
//!
//! ```
//! use evogate_plugin::http::{Request, Response};
//! use evogate_plugin::{Ctx, Plugin};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     const NAME: &'static str = "hello";
//!     const VERSION: &'static str = "1.0.0";
//!
//!     fn handle(ctx: &Ctx<'_>, request: &Request) -> Response {
//!         let greeting = ctx.config.non_empty("greeting").unwrap_or_else(|| "hello".into());
//!         Response::json(200, &serde_json::json!({ "greeting": greeting, "path": request.path }))
//!     }
//! }
//!
//! evogate_plugin::export_plugin!(Hello);
//!
//! let fakes = evogate_plugin::testing::Fakes::with_config([("greeting", "hi")]);
//! let answer = Hello::handle(&fakes.ctx(), &Request::new("GET", "/hello"));
//! assert_eq!(answer.body_json()["greeting"], "hi");
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and deploy
//! the `.wasm`; `docs/writing-a-plugin.md` in the repository walks through
//! it. The store's promises are those of `wit/kv.wit`.

#![deny(missing_docs)]

pub mod clock;
pub mod config;
pub mod http;
pub mod kv;
pub mod log;
pub mod outgoing;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[allow(unsafe_code, reason = "the bindings wit-bindgen generates may call into the ABI unsafely")]
pub mod __component;

/// What a request handler or a job may use.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The store: the plugin's own namespace of the gateway's key-value store.
    pub kv: &'a dyn kv::Kv,
    /// The operator's settings (`[plugins.config]`).
    pub config: &'a dyn config::Config,
    /// Wall-clock time.
    pub clock: &'a dyn clock::Clock,
    /// Outgoing HTTP, to the hosts the operator allows (`allowed_outbound_hosts`).
    pub http: &'a dyn outgoing::Http,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").finish_non_exhaustive()
    }
}

/// One run of a scheduled job (`[[plugins.jobs]]`), as the gateway starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    /// The job's name (`[[plugins.jobs]] name`).
    pub job: String,
    /// When the tick was due, Unix milliseconds.
    pub scheduled_at_ms: u64,
    /// How long the run may take before the gateway ends it, ms.
    pub timeout_ms: u64,
    /// Started by an operator rather than the schedule.
    pub manual: bool,
}

/// An evogate plugin. Every request runs in a fresh instance: nothing
/// survives between calls but what is in the store.
pub trait Plugin {
    /// The name the plugin reports to the gateway (`GET /plugins` shows it).
    const NAME: &'static str;
    /// The version the plugin reports: logs and metrics name each build by it.
    const VERSION: &'static str;

    /// Every setting (`[plugins.config]` key) the plugin reads. With a
    /// list, the gateway refuses a configuration holding any other key —
    /// at start, deploy and reload — naming the nearest listed key; empty,
    /// the default: every key is taken as it is.
    const SETTINGS: &'static [&'static str] = &[];

    /// Checks the settings' values (and their combinations) before a build
    /// serves with them: each problem found, naming its setting. Must not
    /// touch the store or the network: `config` is all it has. The
    /// default finds none. Unknown keys are found from
    /// [`Plugin::SETTINGS`]; [`config::check`] runs both.
    fn check_settings(config: &dyn config::Config) -> Vec<config::Problem> {
        let _ = config;
        Vec::new()
    }

    /// Answers one request. The path is the whole path; the route the
    /// plugin is mounted at is in the `x-evogate-base-path` header.
    fn handle(ctx: &Ctx<'_>, request: &http::Request) -> http::Response;

    /// Runs one scheduled job; `Err` is logged and counted as a failed run.
    /// The default: the plugin has no jobs, every name is an error.
    fn run_job(ctx: &Ctx<'_>, run: &JobRun) -> Result<(), String> {
        let _ = ctx;
        Err(format!("no job {:?} here: this plugin has no scheduled jobs", run.job))
    }

    /// Runs one scheduled job and says how it ended: its work all done, or
    /// part of it failed ([`JobOutcome::Partial`]: the run's outcome is then
    /// `partial` in the gateway's metrics, logs and admin API); `Err`, as
    /// for [`Plugin::run_job`], the run failed. The default runs
    /// [`Plugin::run_job`]: implement this one instead when a run can end
    /// half done.
    fn run_job_outcome(ctx: &Ctx<'_>, run: &JobRun) -> Result<JobOutcome, String> {
        Self::run_job(ctx, run).map(|()| JobOutcome::Done)
    }
}

/// How a job run that did not fail ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// All of its work done.
    Done,
    /// Part of its work failed: the summary the operator sees (what failed, how much).
    Partial(String),
}

/// Exports `$plugin` (a type implementing [`Plugin`]) as the component's
/// `handler`, `identity`, `settings` and `scheduled`; expands to nothing outside
/// `wasm32`, so the same crate builds and tests natively. Call it once, at
/// the crate's root.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            struct Component;

            impl $crate::__component::handler::Guest for Component {
                fn handle(request: $crate::__component::types::Request) -> $crate::__component::types::Response {
                    $crate::__component::handle::<$plugin>(request)
                }
            }

            impl $crate::__component::identity::Guest for Component {
                fn info() -> $crate::__component::identity::PluginInfo {
                    $crate::__component::info::<$plugin>()
                }
            }

            impl $crate::__component::settings::Guest for Component {
                fn check(settings: Vec<(String, String)>) -> Vec<$crate::__component::settings::Problem> {
                    $crate::__component::check::<$plugin>(settings)
                }
            }

            impl $crate::__component::scheduled::Guest for Component {
                fn run(run: $crate::__component::scheduled::JobRun) -> Result<(), String> {
                    $crate::__component::run::<$plugin>(run)
                }
            }

    $crate::__component::bindings::export!(Component with_types_in $crate::__component::bindings);
        };
    };
}
