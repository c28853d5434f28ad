//! Push notifications to the partner's app on a user's terminals, through
//! the publisher API (`POST /api/apps/{app}/push-notifications`), and their
//! delivery status.
//!
//! A notification goes to the devices named, each one of the user's own
//! terminals in the mirror (not removed), or by default to the user's
//! licensed terminals. The cloud's answer (`{id, status, details}`) is kept
//! as the user's [`Notification`] (`user/{userId}/push/{id}`), with a global
//! index by id (`push/id/{id}`) and, while its status is not final
//! (`COMPLETED`, `FAILED`), an entry among the open ones (`push/open/{id}`),
//! which the sync job polls ([`poll_open`]) and a read of it refreshes.
//!
//! With an `Idempotency-Key` a retried call is one notification: the key's
//! SHA-256 is reserved for the user (`user/{userId}/push-keys/{sha256}`)
//! in a commit before the request leaves, together with the SHA-256 of the
//! request; a repeat answers the stored notification, a repeat with
//! another request is refused, a repeat while the first is still sending
//! waits; a send that created nothing releases the key.
//!
//! Feed entries: `push-notification.sent` `{id, userId, devices}` and
//! `push-notification.updated` `{id, status}` (its status changed).

use crate::Ctx;
use crate::config::CloudSettings;
use crate::domain::evotor_api::{ACCEPT, reset_secs, transport_failure};
use crate::domain::publisher::{self, PublisherToken, Unusable};
use crate::domain::{billing, transact};
use crate::errors::ApiError;
use crate::outgoing;
use crate::storage::{self, DeviceOrder, EntityRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Largest payload, serialized, bytes.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most devices one notification goes to: what the publisher API's own
/// client takes in one request.
pub const MAX_DEVICES: usize = 100;
/// Most open notifications one run of the sync job asks about.
pub const MAX_POLLED_PER_RUN: u32 = 50;
/// How long after its `activeTill` an open notification is still asked
/// about, seconds: past it, its status is kept as last known.
const POLL_PAST_ACTIVE_SECS: u64 = 86_400;
/// How long the cloud keeps a notification active without `activeTill`, seconds.
const DEFAULT_ACTIVE_SECS: u64 = 2 * 86_400;
/// A reservation of an `Idempotency-Key` older than the call's budget and
/// this many seconds is of a call that ended without an answer.
const RESERVATION_GRACE_SECS: u64 = 60;
/// The statuses after which a notification does not change.
const FINAL: [&str; 2] = ["COMPLETED", "FAILED"];

/// Prefix of a user's notifications.
pub fn user_prefix(user_id: &str) -> String {
    format!("user/{user_id}/push/")
}

fn notification_key(user_id: &str, id: &str) -> String {
    format!("{}{id}", user_prefix(user_id))
}

/// Prefix of the global index of notifications by id.
const INDEX_PREFIX: &str = "push/id/";
/// Prefix of the notifications whose status is not final.
const OPEN_PREFIX: &str = "push/open/";

/// The keys of a notification's global index entries.
pub fn index_keys(id: &str) -> [String; 2] {
    [format!("{INDEX_PREFIX}{id}"), format!("{OPEN_PREFIX}{id}")]
}

fn reservation_key(user_id: &str, digest: &str) -> String {
    format!("user/{user_id}/push-keys/{digest}")
}

/// Where the next poll of open notifications goes on.
fn poll_cursor_key() -> String {
    storage::meta_key("push-poll")
}

/// A push notification as the cloud last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Storage format version.
    pub v: u32,
    /// The cloud's id, as sent.
    pub id: String,
    /// The user whose terminals it went to.
    pub user_id: String,
    /// Each device and its delivery status.
    pub devices: Vec<DeviceStatus>,
    /// The payload's size, serialized, bytes.
    pub payload_bytes: u64,
    /// Until when it is active, Unix ms (none: the cloud's default, two days).
    pub active_till: Option<i64>,
    /// The task's status: `ACCEPTED`, `RUNNING`, `COMPLETED`, `FAILED`, or as received.
    pub status: String,
    /// When it was sent, Unix seconds.
    pub created_at: u64,
    /// When what the cloud reported last changed, Unix seconds.
    pub updated_at: u64,
    /// SHA-256 of its `Idempotency-Key`, if it had one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// One device's delivery status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// The device, lower case.
    pub device_uuid: String,
    /// `ACCEPTED`, `DELIVERED`, `EXPIRED`, `REJECTED`, `UNKNOWN`, or as
    /// received; none while the cloud has not reported it.
    pub status: Option<String>,
}

impl Notification {
    /// Whether its status no longer changes.
    pub fn is_final(&self) -> bool {
        FINAL.contains(&self.status.as_str())
    }

    /// The partner's view of it.
    pub fn view(&self) -> Value {
        let devices: Vec<Value> =
            self.devices.iter().map(|d| json!({ "deviceUuid": d.device_uuid, "status": d.status })).collect();
        json!({
            "id": self.id,
            "userId": self.user_id,
            "status": self.status,
            "devices": devices,
            "activeTill": self.active_till,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        })
    }

    /// Takes the cloud's report (`status`, `details`); whether anything changed.
    fn take(&mut self, report: &Report) -> bool {
        let mut changed = false;
        if let Some(status) = &report.status
            && *status != self.status
        {
            self.status = status.clone();
            changed = true;
        }
        // Only the devices it was sent to: a report naming others adds nothing to keep.
        for (device, status) in &report.details {
            match self.devices.iter_mut().find(|known| known.device_uuid == *device) {
                Some(known) if known.status.as_deref() == Some(status.as_str()) => {}
                Some(known) => {
                    known.status = Some(status.clone());
                    changed = true;
                }
                None => {}
            }
        }
        changed
    }

    /// Until when the poll asks about it, Unix seconds.
    fn polled_until(&self) -> u64 {
        let active = match self.active_till {
            Some(ms) => u64::try_from(ms / 1000).unwrap_or(0),
            None => self.created_at.saturating_add(DEFAULT_ACTIVE_SECS),
        };
        active.saturating_add(POLL_PAST_ACTIVE_SECS)
    }
}

/// An `Idempotency-Key` taken for a user: the request it came with, and the notification it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reservation {
    v: u32,
    /// SHA-256 of the request.
    request: String,
    /// When it was reserved, Unix seconds.
    since: u64,
    /// The notification it made; none while it is being sent.
    #[serde(default)]
    notification: Option<String>,
}

/// The user a notification id belongs to (`push/id/…`, `push/open/…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Indexed {
    v: u32,
    user_id: String,
}

/// Where the poll of open notifications goes on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PollCursor {
    v: u32,
    #[serde(default)]
    after: Option<String>,
}

/// A notification to send, as the partner asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// The devices (lower case); none: the user's licensed terminals.
    pub devices: Option<Vec<String>>,
    /// What the app on the terminal receives.
    pub payload: Map<String, Value>,
    /// Until when it is active, Unix ms.
    pub active_till: Option<i64>,
    /// The `Idempotency-Key`, if one was given.
    pub idempotency_key: Option<String>,
}

/// What a send came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    /// A new notification.
    Created(Notification),
    /// The one an earlier call with the same `Idempotency-Key` made.
    Repeated(Notification),
}

/// What the cloud reported of a notification.
#[derive(Debug, Default)]
struct Report {
    id: Option<String>,
    status: Option<String>,
    /// (device lower case, status as received).
    details: Vec<(String, String)>,
}

/// Why the cloud gave no report.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// 401 or 403: the publisher token.
    Refused { status: u16, message: String },
    /// 429: wait this long, seconds.
    RateLimited { reset_secs: u64 },
    /// Another 4xx: the cloud will not do it as asked.
    Rejected { status: u16, message: String },
    /// 5xx, no answer in time, an answer that is not a report.
    Retry { message: String },
}

/// Sends `draft` to `user_id`'s terminals (see the module docs).
pub fn send(ctx: &Ctx<'_>, user_id: &str, draft: &Draft) -> Result<Sent, ApiError> {
    let settings = crate::config::settings(ctx)?;
    let cloud = CloudSettings::read(ctx.config).map_err(|why| ApiError::internal(&why))?;
    let started = ctx.clock.now_unix();
    let deadline = started.saturating_add(cloud.now_budget_secs);
    let payload_bytes = serde_json::to_vec(&draft.payload).map_or(0, |bytes| bytes.len());
    if payload_bytes > MAX_PAYLOAD_BYTES {
        return Err(ApiError::unprocessable(
            "payload",
            format!("{payload_bytes} bytes"),
            &format!("payload over {MAX_PAYLOAD_BYTES} bytes serialized"),
        ));
    }
    if draft.devices.as_ref().is_some_and(|devices| devices.len() > MAX_DEVICES) {
        return Err(ApiError::unprocessable("devices", MAX_DEVICES, &format!("more than {MAX_DEVICES} devices")));
    }
    let key = draft.idempotency_key.as_deref().map(|key| storage::sha256_hex(key.as_bytes()));
    let request = json!({ "devices": draft.devices, "payload": draft.payload, "activeTill": draft.active_till });
    let request = storage::sha256_hex(request.to_string().as_bytes());
    if let Some(digest) = &key {
        let stale_after = cloud.now_budget_secs.saturating_add(RESERVATION_GRACE_SECS);
        if let Some(done) = claim(ctx, user_id, digest, &request, started, stale_after)? {
            return Ok(Sent::Repeated(done));
        }
    }
    let sent = send_now(ctx, &settings, &cloud, user_id, draft, key.as_deref(), payload_bytes, deadline);
    // A notification the cloud took without an id to follow may exist: its key stays taken until it
    // goes stale, as after a call that ended without an answer. Any other failure made none.
    if let (Err(err), Some(digest)) = (&sent, &key)
        && err.reason != NO_ID
    {
        release(ctx, user_id, digest, started)?;
    }
    sent.map(Sent::Created)
}

/// Why a notification the cloud took cannot be kept.
const NO_ID: &str = "the Evotor cloud's answer carries no usable notification id";

/// Sends `draft` and stores what the cloud made of it.
#[expect(clippy::too_many_arguments, reason = "the parts of one send, each its own")]
fn send_now(
    ctx: &Ctx<'_>,
    settings: &crate::config::Settings,
    cloud: &CloudSettings,
    user_id: &str,
    draft: &Draft,
    key: Option<&str>,
    payload_bytes: usize,
    deadline: u64,
) -> Result<Notification, ApiError> {
    if cloud.publisher.is_none() {
        return Err(missing_settings());
    }
    let devices = devices(ctx, settings, user_id, draft.devices.as_deref())?;
    let timeout = || cloud.request_timeout_secs.min(deadline.saturating_sub(ctx.clock.now_unix())).max(1);
    let token = publisher::token(ctx, cloud, timeout()).map_err(unusable)?;
    let mut body = json!({ "devices": devices, "payload": draft.payload });
    if let Some(active_till) = draft.active_till {
        body["active_till"] = active_till.into();
    }
    let url = format!("{}/api/apps/{}/push-notifications", cloud.api_url, token.app_id);
    let report = match ask(ctx, ("POST", &url), &token, Some(&body), timeout()) {
        Ok(report) => report,
        Err(failure) => return Err(failed(ctx, cloud, &token, &url, failure)),
    };
    let Some(id) = report.id.as_deref().and_then(crate::input::id_as_sent) else {
        return Err(ApiError::bad_gateway(NO_ID));
    };
    let now = ctx.clock.now_unix();
    let mut notification = Notification {
        v: storage::FORMAT,
        id: id.clone(),
        user_id: user_id.to_owned(),
        devices: devices.iter().map(|device| DeviceStatus { device_uuid: device.clone(), status: None }).collect(),
        payload_bytes: payload_bytes as u64,
        active_till: draft.active_till,
        status: String::new(),
        created_at: now,
        updated_at: now,
        idempotency_key: key.map(str::to_owned),
    };
    notification.take(&report);
    let stored_id = crate::input::id_str(&id).unwrap_or(id);
    transact(ctx, |txn| -> Result<(), ApiError> {
        crate::domain::purge::refuse_while_erasing(txn, user_id)?;
        if let Some(digest) = key {
            let reserved = reservation_key(user_id, digest);
            if let Some(mut reservation) = txn.get::<Reservation>(&reserved)? {
                reservation.notification = Some(stored_id.clone());
                txn.put(&reserved, &reservation);
            }
        }
        txn.put(&notification_key(user_id, &stored_id), &notification);
        let [index, open] = index_keys(&stored_id);
        let indexed = Indexed { v: storage::FORMAT, user_id: user_id.to_owned() };
        txn.put(&index, &indexed);
        if !notification.is_final() {
            txn.put(&open, &indexed);
        }
        let devices: Vec<&str> = notification.devices.iter().map(|d| d.device_uuid.as_str()).collect();
        txn.emit(
            "push-notification.sent",
            now,
            Some(user_id),
            json!({ "id": notification.id, "userId": user_id, "devices": devices }),
        );
        Ok(())
    })?;
    Ok(notification)
}

/// Takes the `Idempotency-Key` `digest` for `request`: `None` when it is
/// reserved now for this call, the notification an earlier call made with
/// it; 422 for another request, 409 while another call is sending it.
fn claim(
    ctx: &Ctx<'_>,
    user_id: &str,
    digest: &str,
    request: &str,
    now: u64,
    stale_after: u64,
) -> Result<Option<Notification>, ApiError> {
    let key = reservation_key(user_id, digest);
    transact(ctx, |txn| -> Result<Option<Notification>, ApiError> {
        crate::domain::purge::refuse_while_erasing(txn, user_id)?;
        let known = txn.get::<Reservation>(&key)?;
        match &known {
            Some(known) if known.request != request => {
                return Err(ApiError::unprocessable(
                    "Idempotency-Key",
                    Value::Null,
                    "this Idempotency-Key was used with another request",
                ));
            }
            Some(Reservation { notification: Some(id), .. }) => {
                if let Some(done) = txn.get::<Notification>(&notification_key(user_id, id))? {
                    return Ok(Some(done));
                }
            }
            Some(known) if now < known.since.saturating_add(stale_after) => {
                return Err(ApiError::conflict(
                    "a request with this Idempotency-Key is still being sent: try again in a few seconds",
                ));
            }
            _ => {}
        }
        txn.put(&key, &Reservation { v: storage::FORMAT, request: request.to_owned(), since: now, notification: None });
        Ok(None)
    })
}

/// Releases the `Idempotency-Key` `digest` this call reserved at `since`:
/// nothing was created with it, so a retry sends.
fn release(ctx: &Ctx<'_>, user_id: &str, digest: &str, since: u64) -> Result<(), ApiError> {
    let key = reservation_key(user_id, digest);
    transact(ctx, |txn| -> Result<(), ApiError> {
        if txn.get::<Reservation>(&key)?.is_some_and(|known| known.notification.is_none() && known.since == since) {
            txn.delete(&key);
        }
        Ok(())
    })
}

/// The devices a notification goes to: those `given`, each one of the
/// user's own terminals, else the user's licensed terminals.
fn devices(
    ctx: &Ctx<'_>,
    settings: &crate::config::Settings,
    user_id: &str,
    given: Option<&[String]>,
) -> Result<Vec<String>, ApiError> {
    let own = |devices: &[String]| -> Result<Vec<bool>, ApiError> {
        let keys: Vec<String> = devices.iter().map(|device| storage::entity_key(user_id, "device", device)).collect();
        let entries = crate::kv::read_many(ctx.kv, &keys)?;
        keys.iter()
            .zip(entries)
            .map(|(key, entry)| match entry {
                None => Ok(false),
                Some(entry) => Ok(storage::decode::<EntityRecord>(key, &entry.value)?.removed_at.is_none()),
            })
            .collect()
    };
    if let Some(given) = given {
        for (device, own) in given.iter().zip(own(given)?) {
            if !own {
                return Err(ApiError::unprocessable("devices", device.as_str(), "not one of the user's terminals"));
            }
        }
        if given.is_empty() {
            return Err(ApiError::unprocessable("devices", json!([]), "no device to send to"));
        }
        return Ok(given.to_vec());
    }
    let order = storage::read::<DeviceOrder>(ctx.kv, &storage::device_order_key(user_id))?.unwrap_or_default();
    let licensed = billing::device_limit(ctx, user_id, settings)?.map_or(usize::MAX, |limit| limit as usize);
    let candidates: Vec<String> = order.devices.into_iter().take(licensed).collect();
    let devices: Vec<String> =
        candidates.iter().zip(own(&candidates)?).filter(|(_, own)| *own).map(|(device, _)| device.clone()).collect();
    if devices.is_empty() {
        return Err(ApiError::unprocessable("devices", json!([]), "the user has no licensed terminal to send to"));
    }
    if devices.len() > MAX_DEVICES {
        // None is left out unsaid: the partner names the devices, in notifications of at most MAX_DEVICES.
        return Err(ApiError::unprocessable(
            "devices",
            devices.len(),
            &format!("the user has {} licensed terminals, over {MAX_DEVICES}: name the devices", devices.len()),
        ));
    }
    Ok(devices)
}

/// The notification `id` as stored, refreshed from the cloud first when its
/// status is not final; `stale` when the cloud could not be asked.
pub fn get(ctx: &Ctx<'_>, id: &str) -> Result<Option<(Notification, bool)>, ApiError> {
    let [index, _] = index_keys(id);
    let Some(indexed) = storage::read::<Indexed>(ctx.kv, &index)? else { return Ok(None) };
    let key = notification_key(&indexed.user_id, id);
    let Some(notification) = storage::read::<Notification>(ctx.kv, &key)? else { return Ok(None) };
    if notification.is_final() {
        return Ok(Some((notification, false)));
    }
    let cloud = CloudSettings::read(ctx.config).map_err(|why| ApiError::internal(&why))?;
    let deadline = ctx.clock.now_unix().saturating_add(cloud.now_budget_secs);
    let timeout = || cloud.request_timeout_secs.min(deadline.saturating_sub(ctx.clock.now_unix())).max(1);
    let token = match publisher::token(ctx, &cloud, timeout()) {
        Ok(token) => token,
        Err(Unusable::Store(err)) => return Err(err),
        Err(_) => return Ok(Some((notification, true))),
    };
    match refresh(ctx, &cloud, &token, &notification, timeout())? {
        Some(fresh) => Ok(Some((fresh, false))),
        None => Ok(Some((notification, true))),
    }
}

/// Asks the cloud for `notification`'s status and stores what changed: the
/// notification after, none when the cloud gave no report.
fn refresh(
    ctx: &Ctx<'_>,
    cloud: &CloudSettings,
    token: &PublisherToken,
    notification: &Notification,
    timeout_secs: u64,
) -> Result<Option<Notification>, ApiError> {
    let id: String = form_urlencoded::byte_serialize(notification.id.as_bytes()).collect();
    let url = format!("{}/api/apps/{}/push-notifications/{id}", cloud.api_url, token.app_id);
    let report = match ask(ctx, ("GET", &url), token, None, timeout_secs) {
        Ok(report) => report,
        Err(failure) => {
            failed(ctx, cloud, token, &url, failure);
            return Ok(None);
        }
    };
    let stored_id = crate::input::id_str(&notification.id).unwrap_or_else(|| notification.id.clone());
    let key = notification_key(&notification.user_id, &stored_id);
    let now = ctx.clock.now_unix();
    let fresh = transact(ctx, |txn| -> Result<Option<Notification>, ApiError> {
        let Some(mut stored) = txn.get::<Notification>(&key)? else { return Ok(None) };
        let before = stored.status.clone();
        if !stored.take(&report) {
            return Ok(Some(stored));
        }
        stored.updated_at = now;
        txn.put(&key, &stored);
        if stored.is_final() {
            txn.delete(&index_keys(&stored_id)[1]);
        }
        if stored.status != before {
            txn.emit(
                "push-notification.updated",
                now,
                Some(&stored.user_id),
                json!({ "id": stored.id, "status": stored.status }),
            );
        }
        Ok(Some(stored))
    })?;
    Ok(fresh)
}

/// Asks up to `allowance` (at most [`MAX_POLLED_PER_RUN`]) open
/// notifications' status, going on where the last poll stopped, none
/// starting at or after `deadline` (Unix seconds); the requests it made.
pub fn poll_open(ctx: &Ctx<'_>, cloud: &CloudSettings, allowance: u32, deadline: u64) -> Result<u32, ApiError> {
    let limit = allowance.min(MAX_POLLED_PER_RUN) as usize;
    if cloud.publisher.is_none() || limit == 0 {
        return Ok(0);
    }
    let cursor_key = poll_cursor_key();
    let mut cursor = storage::read::<PollCursor>(ctx.kv, &cursor_key)?.unwrap_or_default();
    let after = cursor.after.as_ref().map(|after| format!("{OPEN_PREFIX}{after}"));
    let mut open = storage::collect(ctx.kv, OPEN_PREFIX, after.clone(), limit)?;
    if open.len() < limit && after.is_some() {
        // Round again from the start, up to where this round began.
        let first = storage::collect(ctx.kv, OPEN_PREFIX, None, limit - open.len())?;
        open.extend(first.into_iter().filter(|(key, _)| after.as_ref().is_some_and(|after| key <= after)));
    }
    if open.is_empty() {
        return Ok(0);
    }
    let timeout = || cloud.request_timeout_secs.min(deadline.saturating_sub(ctx.clock.now_unix())).max(1);
    let token = match publisher::token(ctx, cloud, timeout()) {
        Ok(token) => token,
        Err(Unusable::Store(err)) => return Err(err),
        Err(_) => return Ok(0),
    };
    let mut requests = 0;
    for (key, entry) in open {
        if ctx.clock.now_unix() >= deadline {
            break;
        }
        let Some(id) = key.strip_prefix(OPEN_PREFIX) else { continue };
        cursor.after = Some(id.to_owned());
        let indexed: Indexed = storage::decode(&key, &entry.value)?;
        let notification = storage::read::<Notification>(ctx.kv, &notification_key(&indexed.user_id, id))?;
        match notification {
            Some(notification) if !notification.is_final() && ctx.clock.now_unix() < notification.polled_until() => {
                requests += 1;
                match refresh(ctx, cloud, &token, &notification, timeout()) {
                    Ok(Some(_)) => {}
                    // Refused, rate-limited or failing: the next run goes on from here.
                    Ok(None) => break,
                    Err(err) if err.status == 503 => return Err(err),
                    // This notification's own trouble (its record, say): the others go on.
                    Err(err) => evogate_plugin::log::warn(&format!(
                        "push notifications: notification {id} not refreshed: {} ({})",
                        err.reason, err.status
                    )),
                }
            }
            // Gone, final, or past its time: no longer open.
            _ => transact(ctx, |txn| -> Result<(), ApiError> {
                txn.delete(&key);
                Ok(())
            })?,
        }
    }
    cursor.v = storage::FORMAT;
    transact(ctx, |txn| -> Result<(), ApiError> {
        txn.put(&cursor_key, &cursor);
        Ok(())
    })?;
    Ok(requests)
}

/// Sends `method` `url` with `token` (and `body`), read as a report.
fn ask(
    ctx: &Ctx<'_>,
    (method, url): (&str, &str),
    token: &PublisherToken,
    body: Option<&Value>,
    timeout_secs: u64,
) -> Result<Report, Failure> {
    let mut headers = vec![
        ("accept".to_owned(), ACCEPT.to_owned()),
        ("authorization".to_owned(), format!("Bearer {}", token.bearer())),
    ];
    if body.is_some() {
        headers.push(("content-type".to_owned(), "application/json".to_owned()));
    }
    let request = outgoing::Request {
        method: method.to_owned(),
        url: url.to_owned(),
        headers,
        body: body.map(|body| body.to_string().into_bytes()).unwrap_or_default(),
        timeout: Some(std::time::Duration::from_secs(timeout_secs)),
    };
    let response =
        ctx.http.send(&request).map_err(|err| Failure::Retry { message: transport_failure(&err, timeout_secs) })?;
    match response.status {
        200..=299 => report(&response.body).ok_or_else(|| Failure::Retry {
            message: format!("HTTP {}: the answer is not a push notification", response.status),
        }),
        401 | 403 => Err(Failure::Refused { status: response.status, message: publisher::message(&response) }),
        429 => Err(Failure::RateLimited { reset_secs: reset_secs(&response) }),
        status @ 400..=499 => Err(Failure::Rejected { status, message: publisher::message(&response) }),
        _ => Err(Failure::Retry { message: publisher::message(&response) }),
    }
}

/// Reads `{id, status, details: [{device_id, status}]}`.
fn report(body: &[u8]) -> Option<Report> {
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else { return None };
    // Ids and statuses are short words: anything longer is not kept (an answer may be hostile).
    let text = |value: Option<&Value>| match value {
        Some(Value::String(text)) if text.len() <= 64 => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    };
    let details = answer
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|detail| {
            let device = text(detail.get("device_id"))?.to_ascii_lowercase();
            Some((device, text(detail.get("status"))?))
        })
        .collect();
    Some(Report { id: text(answer.get("id")), status: text(answer.get("status")), details })
}

/// What a failed request to the cloud is for the caller; a refusal marks
/// the publisher token refused.
fn failed(ctx: &Ctx<'_>, cloud: &CloudSettings, token: &PublisherToken, url: &str, failure: Failure) -> ApiError {
    let path = url.strip_prefix(cloud.api_url.as_str()).unwrap_or(url);
    match failure {
        Failure::Refused { status, message } => {
            if let Err(err) = publisher::refused(ctx, cloud, token, (status, &message), path) {
                return err;
            }
            ApiError::unavailable_now(
                &format!("the Evotor cloud refused the publisher token ({message}); see GET /partner/v1/publisher"),
                None,
            )
        }
        Failure::RateLimited { reset_secs } => {
            ApiError::unavailable_now("the Evotor cloud's rate limit: try again later", Some(reset_secs))
        }
        Failure::Rejected { status: _, message } => ApiError::unprocessable(
            "payload",
            Value::Null,
            &format!("the Evotor cloud refused the notification ({message})"),
        ),
        Failure::Retry { message } => {
            ApiError::bad_gateway(&format!("the Evotor cloud did not answer usably: {message}"))
        }
    }
}

/// Why there is no publisher token, for the caller.
fn unusable(why: Unusable) -> ApiError {
    match why {
        Unusable::Missing => missing_settings(),
        Unusable::Refused(refusal) => ApiError::unavailable_now(
            &format!(
                "the publisher token was refused ({}, at {}); nothing is sent until the publisher settings change; see GET /partner/v1/publisher",
                refusal.message, refusal.path
            ),
            None,
        ),
        Unusable::Retry { message, reset_secs: Some(reset), .. } => {
            ApiError::unavailable_now(&format!("the publisher token could not be renewed: {message}"), Some(reset))
        }
        Unusable::Retry { message, .. } => {
            ApiError::bad_gateway(&format!("the publisher token could not be renewed: {message}"))
        }
        Unusable::Store(err) => err,
    }
}

fn missing_settings() -> ApiError {
    ApiError::conflict(
        "push notifications need the publisher settings: evotor_app_id with evotor_publisher_token or the evotor_oauth_* settings",
    )
}

#[cfg(test)]
mod tests;
