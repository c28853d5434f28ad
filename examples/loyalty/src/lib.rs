//! Loyalty: an example Evotor app backend on evogate, a plugin beside the
//! Evotor plugin (`docs/evotor-apps.md` walks through it).
//!
//! - `GET /loyalty/v1/summary`, from the terminal app through the Evotor
//!   cloud (its user token and `X-Evotor-Store-Uuid`): the number of sales
//!   of that store and their total, `{"storeId", "sales", "total"}`.
//! - Its job (`[[plugins.jobs]]`, any name) follows the Evotor plugin's
//!   change feed: each new sale document (`SELL`, V1 or V2, however it
//!   arrived) is counted, and posted once to the partner's ERP (`erp_url`),
//!   signed; failures are retried with a doubling delay, and after the last
//!   attempt the sale waits in a dead-letter list.
//! - `GET /loyalty/v1/dead-letters` and
//!   `POST /loyalty/v1/dead-letters/{documentId}/replay`, with the Evotor
//!   plugin's partner API token: what could not be delivered, and sending
//!   it again.
//!
//! Settings: `erp_url`, `erp_secret` (the HMAC-SHA256 key of `X-Signature`),
//! `relay_backoff_secs` (the first delay, 30), `relay_max_attempts` (5),
//! `relay_timeout_secs` (one delivery's limit, 10) and `evotor_plugin`
//! (the Evotor plugin's name, `evotor`).

use evogate_evotor::Evotor;
use evogate_plugin::http::{Request, Response};
use evogate_plugin::{Ctx, JobRun, Plugin};
use serde_json::{Value, json};

mod relay;

pub use relay::{Delivery, follow_feed, relay};

/// The plugin.
#[derive(Debug)]
pub struct Loyalty;

impl Plugin for Loyalty {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SETTINGS: &'static [&'static str] = relay::SETTINGS;

    fn check_settings(config: &dyn evogate_plugin::config::Config) -> Vec<evogate_plugin::config::Problem> {
        relay::problems(config)
    }

    fn handle(ctx: &Ctx<'_>, request: &Request) -> Response {
        let base = request.header_value("x-evogate-base-path").unwrap_or("/").trim_end_matches('/');
        let path = request.path.strip_prefix(base).unwrap_or(&request.path);
        let path = path.trim_end_matches('/');
        let evotor_name = evotor_plugin(ctx);
        let evotor = Evotor::named(ctx.http, &evotor_name);
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["v1", "summary"]) => summary(ctx, &evotor, request),
            ("GET", ["v1", "dead-letters"]) => match evotor.check_partner(request) {
                Ok(()) => relay::dead_letters(ctx, request),
                Err(refused) => refused.response(),
            },
            ("POST", ["v1", "dead-letters", id, "replay"]) => match evotor.check_partner(request) {
                Ok(()) => relay::replay(ctx, id),
                Err(refused) => refused.response(),
            },
            (_, ["v1", "summary" | "dead-letters"] | ["v1", "dead-letters", _, "replay"]) => {
                error(405, 405, "method not allowed", None)
            }
            _ => error(404, 404, "not found", None),
        }
    }

    fn run_job(ctx: &Ctx<'_>, run: &JobRun) -> Result<(), String> {
        let evotor_name = evotor_plugin(ctx);
        let evotor = Evotor::named(ctx.http, &evotor_name);
        // Half the run for the feed, the rest for the deliveries: neither starves the other.
        let (started, seconds) = (ctx.clock.now_unix(), run.timeout_ms / 1000);
        let folded = follow_feed(ctx, &evotor, started + seconds / 2).map_err(|err| err.to_string())?;
        let delivered = relay(ctx, started + seconds * 9 / 10).map_err(|err| err.to_string())?;
        if folded.sales > 0 || delivered.attempted > 0 {
            evogate_plugin::log::info(&format!(
                "loyalty: {} new sales from {} feed entries; {} delivered, {} to retry, {} dead-lettered",
                folded.sales, folded.entries, delivered.delivered, delivered.retrying, delivered.dead
            ));
        }
        Ok(())
    }
}

evogate_plugin::export_plugin!(Loyalty);

/// The Evotor plugin's name in the gateway's configuration.
fn evotor_plugin(ctx: &Ctx<'_>) -> String {
    ctx.config.non_empty("evotor_plugin").unwrap_or_else(|| evogate_evotor::DEFAULT_PLUGIN.into())
}

/// An error in Evotor's format, as the terminal app reads them.
pub(crate) fn error(status: u16, code: u32, reason: &str, subject: Option<&str>) -> Response {
    let mut item = json!({ "code": code, "reason": reason });
    if let Some(subject) = subject {
        item["subject"] = subject.into();
    }
    Response::json(status, &json!({ "errors": [item] }))
}

/// `GET /v1/summary`: the terminal's store's sales, as the job counted them.
fn summary(ctx: &Ctx<'_>, evotor: &Evotor<'_>, request: &Request) -> Response {
    let session = match evotor.session(request) {
        Ok(session) => session,
        Err(refused) => return refused.response(),
    };
    let Some(store) = session.store else {
        return error(400, 2002, "missing", Some("X-Evotor-Store-Uuid"));
    };
    match relay::sales(ctx, &store.uuid) {
        Ok(sales) => {
            Response::json(200, &json!({ "storeId": store.uuid, "sales": sales.count, "total": rubles(sales.kopecks) }))
        }
        Err(err) => error(503, 503, &format!("store unavailable: {err}"), None),
    }
}

/// Kopecks as a JSON number of rubles with two decimals at most.
fn rubles(kopecks: i64) -> Value {
    if kopecks % 100 == 0 {
        json!(kopecks / 100)
    } else {
        // Exact for any total below 2^53 kopecks.
        json!(kopecks as f64 / 100.0)
    }
}

#[cfg(test)]
mod tests;
