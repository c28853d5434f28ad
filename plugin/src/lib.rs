//! The Evotor partner-service protocol as an evogate plugin.
//!
//! Everything here is plain Rust over two small traits, [`kv::Kv`] (the
//! host's transactional key-value store) and [`config::Config`] (the
//! operator's settings), so the protocol is unit-tested natively with
//! [`kv::MemKv`] and [`config::MapConfig`]. The traits, their fakes and the
//! component glue are the evogate plugin SDK's (`evogate-plugin`):
//! [`EvotorPartner`] is exported through its `export_plugin!`, and nothing
//! here touches the generated WIT bindings.
//!
//! ```
//! use evotor_partner::{Ctx, http::Request};
//! let kv = evotor_partner::kv::MemKv::default();
//! let config = evotor_partner::config::MapConfig::from([("server_bearer_token", "s3cret")]);
//! let clock = evotor_partner::clock::FixedClock(1_700_000_000);
//! let http = evotor_partner::outgoing::Scripted::default();
//! let ctx = Ctx { kv: &kv, config: &config, clock: &clock, http: &http };
//! let response = evotor_partner::handle(&ctx, &Request::new("GET", "/nowhere"));
//! assert_eq!(response.status, 404);
//! ```
//!
//! ## Layers
//! Each imports only the layers below it (tests may reach any):
//!
//! - `endpoints`: the Evotor protocol and the partner API over HTTP —
//!   routing, request authentication, reading requests, writing answers;
//! - `domain`: the rules — accounts and tokens, billing, inventory,
//!   catalog, documents, the cloud sync;
//! - `storage`: key layouts, records, transactions over the store;
//! - the base: [`kv`], `input`, `errors`, `time`, [`clock`], [`config`],
//!   [`http`], [`outgoing`], [`Ctx`].
//!
//! Only the endpoints see HTTP requests and answers: the domain imports no
//! [`http`] (it reaches the Evotor cloud through [`outgoing`], the sync's
//! client). The domain does speak Evotor's error codes: it fails with
//! `errors::ApiError`, which is Evotor's error model — a code and a reason
//! (with the field and value concerned), each code tied to its HTTP status
//! by Evotor's definitions — not an HTTP type; only the endpoints turn it
//! into an answer.
//!
//! ## Stored data
//! Every stored record is JSON with a `"v"` field, the storage format
//! version that wrote it. A newer plugin version must read every older
//! format (migrating on read, writing back in the new format on its next
//! write); it never rewrites data in bulk.

#![deny(missing_docs)]

pub mod clock;
pub mod config;
mod context;
mod domain;
mod endpoints;
mod errors;
pub mod http;
mod input;
pub mod kv;
pub mod outgoing;
mod storage;
#[cfg(test)]
mod testing;
mod time;

pub use context::Ctx;
#[cfg(any(test, feature = "testing"))]
pub use domain::audit;

/// The plugin's name as reported to the gateway.
pub const NAME: &str = env!("CARGO_PKG_NAME");
/// The plugin's version as reported to the gateway.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Answers one request: routes it and turns errors into Evotor error bodies.
pub fn handle(ctx: &Ctx<'_>, request: &http::Request) -> http::Response {
    let kv = kv::Prefetching::new(ctx.kv);
    endpoints::dispatch(&Ctx { kv: &kv, ..*ctx }, request)
}

/// One run of a scheduled job, as the gateway starts it.
pub use evogate_plugin::{JobOutcome, JobRun};

/// The plugin as the gateway runs it.
#[derive(Debug)]
pub struct EvotorPartner;

impl evogate_plugin::Plugin for EvotorPartner {
    const NAME: &'static str = NAME;
    const VERSION: &'static str = VERSION;
    const SETTINGS: &'static [&'static str] = config::SETTINGS;

    fn check_settings(config: &dyn evogate_plugin::config::Config) -> Vec<evogate_plugin::config::Problem> {
        // The check reads every declared setting, so that the ones read alone are known.
        let known = config::MapConfig(
            config::SETTINGS.iter().filter_map(|key| Some(((*key).to_owned(), config.get(key)?))).collect(),
        );
        config::problems(&known)
    }

    fn handle(ctx: &Ctx<'_>, request: &http::Request) -> http::Response {
        handle(ctx, request)
    }

    fn run_job_outcome(ctx: &Ctx<'_>, run: &JobRun) -> Result<JobOutcome, String> {
        run_job(ctx, run)
    }
}

evogate_plugin::export_plugin!(EvotorPartner);

/// Share of a job's timeout a run plans to use: the rest is room for the
/// request in flight and the commit after it.
const JOB_TIME_SHARE: (u64, u64) = (3, 4);

/// Runs one scheduled job: `sync` (the Evotor cloud sync, the time-based
/// rules of billing); any other name is an error naming the one there is.
/// A log line says what the run did. A run where some users' sync failed
/// (the cloud refused their token, or kept failing) is `partial`; one where
/// every user it tried failed (the cloud down, say) is an error.
pub fn run_job(ctx: &Ctx<'_>, run: &JobRun) -> Result<JobOutcome, String> {
    if run.job != domain::sync::JOB {
        return Err(format!("no job {:?} here: this plugin runs {:?}", run.job, domain::sync::JOB));
    }
    let kv = kv::Prefetching::new(ctx.kv);
    let ctx = Ctx { kv: &kv, ..*ctx };
    let budget_secs = run.timeout_ms.saturating_mul(JOB_TIME_SHARE.0) / JOB_TIME_SHARE.1 / 1000;
    let deadline = ctx.clock.now_unix().saturating_add(budget_secs.max(1));
    match domain::sync::run(&ctx, deadline) {
        Ok(summary) => {
            let (failed, tried) = (summary.failed(), summary.tried());
            if failed == 0 {
                evogate_plugin::log::info(&format!("sync: {summary}"));
                Ok(JobOutcome::Done)
            } else if failed == tried {
                Err(format!("sync: {summary}; every part tried failed ({failed})"))
            } else {
                let partial = format!("sync: {summary}; {failed} of {tried} parts failed");
                evogate_plugin::log::warn(&partial);
                Ok(JobOutcome::Partial(partial))
            }
        }
        Err(err) => Err(format!("sync stopped: {} ({})", err.reason, err.status)),
    }
}
