//! Evotor's event webhooks: `POST {events_webhook_path}` (default
//! `/events`), authenticated by `X-Hub-Signature` (HMAC-SHA1 of the raw
//! body keyed by the secret set in the developer console), never by
//! `Authorization`; and the partner's listing, `GET /partner/v1/events`.

use crate::Ctx;
use crate::config::settings;
use crate::domain::events::{self, EventRecord, LOG_PREFIX, normalized};
use crate::domain::transact;
use crate::endpoints::request::{paging, query, require_partner};
use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::input;
use crate::storage::{self, Issue, IssueRecord};
use hmac::{Hmac, Mac as _};
use serde_json::json;

/// Config key of the path the events webhook is served at.
pub const EVENTS_WEBHOOK_PATH: &str = "events_webhook_path";
/// Its default.
pub const DEFAULT_EVENTS_WEBHOOK_PATH: &str = "/events";
/// Config key of the signing secret set in the developer console.
pub const EVENTS_WEBHOOK_SECRET: &str = "events_webhook_secret";
/// Config key of the secret before the current one, still taken during a rotation.
pub const EVENTS_WEBHOOK_PREVIOUS_SECRET: &str = "events_webhook_previous_secret";
/// Config key that serves the webhook without a secret (`"true"` only).
pub const EVENTS_WEBHOOK_ALLOW_UNSIGNED: &str = "events_webhook_allow_unsigned";

/// Whether `path` is the configured events webhook.
pub fn is_events_webhook(ctx: &Ctx<'_>, path: &str) -> bool {
    let configured = ctx.config.get(EVENTS_WEBHOOK_PATH);
    let webhook = configured.as_deref().unwrap_or(DEFAULT_EVENTS_WEBHOOK_PATH);
    !webhook.is_empty() && (path == webhook || path.strip_suffix('/') == Some(webhook))
}

/// Whether `signature` (`sha1=<hex>`) is the HMAC-SHA1 of `body` keyed by
/// `secret`; compared in constant time.
pub fn signature_valid(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_digest) = signature.trim().strip_prefix("sha1=").or_else(|| signature.trim().strip_prefix("SHA1="))
    else {
        return false;
    };
    let Ok(digest) = hex::decode(hex_digest) else { return false };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else { return false };
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

/// The JSON of a delivery, decided from the signed bytes alone: the
/// `Content-Type` is not signed, so it never chooses how they are read. A
/// body that is JSON is the JSON, whatever the header says; otherwise the
/// body must be a form of exactly one field, `payload`, holding the JSON
/// (how Hookshot posts form-encoded deliveries). Anything else is refused as
/// malformed: reading the `payload=` pair of a body that has more in it
/// would take an event the signer never sent (a string inside a signed JSON
/// event can carry `&payload=…&`).
pub fn delivered_json(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        return Ok(body.to_vec());
    }
    let mut fields = form_urlencoded::parse(body);
    match (fields.next(), fields.next()) {
        (Some((name, payload)), None) if name == "payload" && body.starts_with(b"payload=") => {
            Ok(payload.into_owned().into_bytes())
        }
        _ => Err(ApiError::syntax("malformed JSON: the body is neither JSON nor a form of one payload field")),
    }
}

/// `POST {events_webhook_path}`: one event or an array. 200 once every
/// event is stored (or was before); 503 when the store cannot take them
/// now (Evotor retries); 4xx only for what can never be usable.
pub fn receive(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    let secrets: Vec<String> = [EVENTS_WEBHOOK_SECRET, EVENTS_WEBHOOK_PREVIOUS_SECRET]
        .iter()
        .filter_map(|key| ctx.config.non_empty(key))
        .collect();
    let delivery = request.header_value("x-evotor-delivery").map(|id| id.chars().take(128).collect::<String>());
    if secrets.is_empty() {
        // Unsigned deliveries are taken only when the operator wrote so explicitly.
        if ctx.config.get(EVENTS_WEBHOOK_ALLOW_UNSIGNED).as_deref() != Some("true") {
            return Err(ApiError::not_found());
        }
    } else {
        let signature = request.header_value("x-hub-signature").unwrap_or_default();
        if !secrets.iter().any(|secret| signature_valid(secret.as_bytes(), &request.body, signature)) {
            refused(ctx, delivery.as_deref(), signature.is_empty());
            return Err(ApiError::bad_signature());
        }
    }
    let settings = settings(ctx)?;
    let json = delivered_json(&request.body)?;
    let delivered = match events::parse_delivery(&json) {
        Err(err) if err.status == 413 => {
            crate::endpoints::note_too_large(ctx, REFUSED_ENTITY, delivery.as_deref().unwrap_or("-"), &err.reason);
            return Err(err);
        }
        parsed => parsed?,
    };
    let (new, repeated) = events::take(ctx, &settings, delivered, delivery.as_deref())?;
    Ok(Response::json(200, &json!({ "accepted": new, "duplicates": repeated })))
}

/// How often, at most, refused deliveries are noted (a log line and the
/// data issue's count): refusals cost no credential, so each must not cost
/// a durable commit. The gateway's `evogate_requests_total` counts each 401.
pub const REFUSALS_NOTED_EVERY_SECS: u64 = 60;

/// Notes a refused delivery where the partner sees it, at most once every
/// [`REFUSALS_NOTED_EVERY_SECS`] for each reason: one data issue counts
/// the intervals with refusals, the log names the first delivery of each.
fn refused(ctx: &Ctx<'_>, delivery: Option<&str>, missing: bool) {
    let why = if missing { "no X-Hub-Signature" } else { "X-Hub-Signature does not match" };
    let problem = format!(
        "deliveries were refused with 401 ({why}); noted at most once a minute, the gateway's metrics count each"
    );
    let now = ctx.clock.now_unix();
    let key = storage::issue_key(None, None, REFUSED_ENTITY, REFUSED_ID, &problem);
    // A read, not a commit: within the interval nothing is written or logged.
    if let Ok(Some(known)) = storage::read::<IssueRecord>(ctx.kv, &key)
        && now < known.last_seen.saturating_add(REFUSALS_NOTED_EVERY_SECS)
    {
        return;
    }
    let delivery = delivery.unwrap_or("-").escape_debug().to_string();
    evogate_plugin::log::warn(&format!(
        "events webhook: refused delivery {delivery}: {why} (401); the next are noted after a minute"
    ));
    let counted = transact(ctx, |txn| -> Result<(), ApiError> {
        txn.issue(now, Issue::new(None, REFUSED_ENTITY, REFUSED_ID, problem.as_str()));
        Ok(())
    });
    if let Err(err) = counted {
        evogate_plugin::log::warn(&format!("events webhook: the refusal was not counted ({})", err.reason));
    }
}

/// The data issue of refused deliveries: its entity and id.
const REFUSED_ENTITY: &str = "events-webhook";
const REFUSED_ID: &str = "signature";

/// Most log entries one listing reads while filtering.
const MAX_SCANNED: usize = 10_000;

/// Stored bytes of the events one page answers at most: past them the page
/// ends early (with at least one event) and `next` goes on from there, so
/// large events never make a page the instance cannot build.
pub const PAGE_BYTES: usize = 4 << 20;

/// `GET /partner/v1/events?type=&userId=&after=&limit=`: the events taken,
/// in the order they were, filtered by type (any spelling) and user.
pub fn list(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let (after, limit) = paging(request)?;
    let decoded = |name: &str| -> Result<Option<String>, ApiError> {
        match query(request, name).filter(|value| !value.is_empty()) {
            None => Ok(None),
            Some(text) => input::percent_decode(text).map(Some).ok_or_else(|| ApiError::incorrect(name, text)),
        }
    };
    let kind = decoded("type")?.map(|kind| normalized(&kind));
    let user = decoded("userId")?;
    let mut cursor = after.map(|after| format!("{LOG_PREFIX}{after}"));
    let (mut items, mut scanned, mut bytes) = (Vec::new(), 0, 0usize);
    let mut ended = false;
    let mut full = false;
    while !full && !ended && scanned < MAX_SCANNED {
        let entries = storage::collect(ctx.kv, LOG_PREFIX, cursor.clone(), limit as usize)?;
        ended = entries.len() < limit as usize;
        for (key, entry) in entries {
            let record: EventRecord = storage::decode(&key, &entry.value)?;
            let wanted = kind.as_ref().is_none_or(|kind| *kind == record.kind)
                && user.as_ref().is_none_or(|user| record.user_id.as_ref() == Some(user));
            if wanted && !items.is_empty() && bytes + entry.value.len() > PAGE_BYTES {
                // This one starts the next page.
                full = true;
                break;
            }
            scanned += 1;
            cursor = Some(key.clone());
            if wanted {
                bytes += entry.value.len();
                let position = key.strip_prefix(LOG_PREFIX).unwrap_or_default();
                items.push(json!({
                    "cursor": position, "id": record.id, "type": record.r#type, "kind": record.kind,
                    "action": record.action, "timestamp": record.timestamp, "userId": record.user_id,
                    "receivedAt": record.received_at, "delivery": record.delivery, "outcome": record.outcome,
                    "event": record.event,
                }));
                if items.len() == limit as usize {
                    full = true;
                    break;
                }
            }
        }
    }
    let next =
        if ended && !full { None } else { cursor.and_then(|key| key.strip_prefix(LOG_PREFIX).map(str::to_owned)) };
    Ok(Response::json(200, &json!({ "items": items, "next": next })))
}

#[cfg(test)]
mod tests;
