//! Subscription and installation events, and the entitlement they give.
//!
//! Evotor retries an event about once a minute for three days until it gets
//! 200, so events arrive duplicated and out of order. Each is stored once
//! under its natural id — (subscriptionId, sequenceNumber), or the
//! installation event's `id` — and a subscription's state is what applying
//! its events in sequence order gives: an event ahead of a gap waits, stored,
//! until the gap fills. A well-formed event is never refused because of our
//! own state (Evotor would retry it for three days): events for users we do
//! not know yet are kept and count as soon as the user appears.

use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::input::{self, Object};
use crate::router::Params;
use crate::storage::{self, StorageError};
use crate::{Ctx, auth, time};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Default time a subscription may stay unpaid (`PENDING`) and still be used.
pub const DEFAULT_PENDING_GRACE_SECS: u64 = 3 * 86_400;
/// Most addons one event may carry.
const MAX_ADDONS: usize = 256;

/// A subscription's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Created with a trial that is running.
    Trial,
    /// Created without a trial, not paid yet.
    Pending,
    /// Paid.
    Active,
    /// The user removed the app; usable until `nextBillingDate`.
    TerminationRequested,
    /// Payment failed: not usable.
    Terminated,
}

/// The event types this build knows; others are stored and logged.
const KNOWN_TYPES: &[&str] = &[
    "SubscriptionCreated",
    "AddonsUpdated",
    "SubscriptionActivated",
    "SubscriptionRenewed",
    "SubscriptionTermsChanged",
    "SubscriptionTerminationRequested",
    "SubscriptionTerminated",
];

/// A validated subscription event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `subscriptionId`, lower case.
    pub subscription_id: String,
    /// `userId`.
    pub user_id: String,
    /// `productId`.
    pub product_id: String,
    /// `sequenceNumber`, from 1.
    pub sequence: u64,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `type`.
    pub kind: String,
    /// `planId`, when sent.
    pub plan_id: Option<String>,
    /// `deviceNumber`, when sent.
    pub device_number: Option<u64>,
    /// `nextBillingDate`, Unix milliseconds, when sent.
    pub next_billing_date: Option<i64>,
    /// Trial length in days (`trialPeriodDuration`), when sent.
    pub trial_days: Option<u32>,
    /// `chargedSum`, when sent.
    pub charged_sum: Option<Value>,
    /// `addons`, when sent.
    pub addons: Option<Value>,
}

fn optional<'a>(body: &'a Object, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|value| !value.is_null())
}

fn datetime(body: &Object, field: &str, required: bool) -> Result<Option<i64>, ApiError> {
    match optional(body, field) {
        None if required => Err(ApiError::missing(field)),
        None => Ok(None),
        Some(Value::String(text)) => {
            time::parse_datetime(text).map(Some).ok_or_else(|| ApiError::incorrect(field, text.as_str()))
        }
        Some(_) => Err(ApiError::wrong_type(field, "a date-time string")),
    }
}

fn count(body: &Object, field: &str) -> Result<Option<u64>, ApiError> {
    match optional(body, field) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            n.as_u64().map(Some).ok_or_else(|| ApiError::incorrect(field, Value::Number(n.clone())))
        }
        Some(_) => Err(ApiError::wrong_type(field, "an integer")),
    }
}

fn short_text(body: &Object, field: &str, required: bool) -> Result<Option<String>, ApiError> {
    match optional(body, field) {
        None if required => Err(ApiError::missing(field)),
        None => Ok(None),
        Some(Value::String(text)) if !text.is_empty() && text.len() <= 256 => Ok(Some(text.clone())),
        Some(Value::String(text)) => Err(ApiError::incorrect(field, text.as_str())),
        Some(_) => Err(ApiError::wrong_type(field, "a string")),
    }
}

fn charged_sum(body: &Object) -> Result<Option<Value>, ApiError> {
    match optional(body, "chargedSum") {
        None => Ok(None),
        Some(Value::Object(sum)) => {
            let amount_ok = sum.get("amount").and_then(Value::as_f64).is_some_and(|a| a.is_finite() && a >= 0.0);
            let currency_ok =
                sum.get("currency").is_none_or(|c| c.as_str().is_some_and(|c| !c.is_empty() && c.len() <= 8));
            if amount_ok && currency_ok {
                Ok(Some(Value::Object(sum.clone())))
            } else {
                Err(ApiError::incorrect("chargedSum", Value::Object(sum.clone())))
            }
        }
        Some(_) => Err(ApiError::wrong_type("chargedSum", "an object")),
    }
}

fn addons(body: &Object, required: bool) -> Result<Option<Value>, ApiError> {
    match optional(body, "addons") {
        None if required => Err(ApiError::missing("addons")),
        None => Ok(None),
        Some(Value::Array(items)) if items.len() <= MAX_ADDONS => {
            for (n, item) in items.iter().enumerate() {
                let id_ok = item.get("id").and_then(Value::as_str).is_some_and(|id| !id.is_empty() && id.len() <= 256);
                let quantity_ok = item.get("quantity").is_none_or(|q| q.as_u64().is_some());
                if !id_ok || !quantity_ok {
                    return Err(ApiError::incorrect(&format!("addons[{n}]"), item.clone()));
                }
            }
            Ok(Some(Value::Array(items.clone())))
        }
        Some(Value::Array(items)) => Err(ApiError::incorrect("addons", format!("{} items", items.len()))),
        Some(_) => Err(ApiError::wrong_type("addons", "an array")),
    }
}

/// Validates a subscription event: required fields → 2002, bad values → 2003.
pub fn parse_event(body: &Object) -> Result<Event, ApiError> {
    let subscription_id = short_text(body, "subscriptionId", true)?.unwrap_or_default();
    if !crate::inventory::is_uuid(&subscription_id) {
        return Err(ApiError::incorrect("subscriptionId", subscription_id));
    }
    let user_id = input::required_str(body, "userId")?;
    if !input::is_user_id(user_id) {
        return Err(ApiError::incorrect("userId", user_id));
    }
    let product_id = short_text(body, "productId", true)?.unwrap_or_default();
    let sequence = match body.get("sequenceNumber") {
        None | Some(Value::Null) => return Err(ApiError::missing("sequenceNumber")),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::incorrect("sequenceNumber", Value::Number(n.clone())))?,
        Some(_) => return Err(ApiError::wrong_type("sequenceNumber", "an integer")),
    };
    let timestamp = datetime(body, "timestamp", true)?.unwrap_or_default();
    let kind = short_text(body, "type", true)?.unwrap_or_default();
    let created = kind == "SubscriptionCreated";
    let paid = matches!(kind.as_str(), "SubscriptionActivated" | "SubscriptionRenewed");
    let trial_days = match short_text(body, "trialPeriodDuration", created)? {
        None => None,
        Some(text) => Some(time::parse_days(&text).ok_or_else(|| ApiError::incorrect("trialPeriodDuration", text))?),
    };
    Ok(Event {
        subscription_id: subscription_id.to_ascii_lowercase(),
        user_id: user_id.to_owned(),
        product_id,
        sequence,
        timestamp,
        plan_id: short_text(body, "planId", created)?,
        device_number: count(body, "deviceNumber")?,
        next_billing_date: datetime(body, "nextBillingDate", paid)?,
        trial_days,
        charged_sum: charged_sum(body)?,
        addons: addons(body, kind == "AddonsUpdated")?,
        kind,
    })
}

/// A subscription as its events so far make it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// Storage format version.
    pub v: u32,
    /// The subscription.
    pub subscription_id: String,
    /// Its user.
    pub user_id: String,
    /// The app.
    pub product_id: String,
    /// The last sequence number applied; every earlier one was applied in order.
    pub applied_through: u64,
    /// Sequence numbers stored but waiting for a gap before them to fill.
    pub waiting: Vec<u64>,
    /// None until `SubscriptionCreated` is applied.
    pub status: Option<Status>,
    /// Plan.
    pub plan_id: Option<String>,
    /// Licensed devices.
    pub device_number: Option<u64>,
    /// Next payment, Unix milliseconds.
    pub next_billing_date: Option<i64>,
    /// When the trial ends, Unix milliseconds.
    pub trial_end: Option<i64>,
    /// When it was created (event time), Unix milliseconds.
    pub created_at: Option<i64>,
    /// The last `chargedSum`.
    pub charged_sum: Option<Value>,
    /// The current addons.
    pub addons: Option<Value>,
}

impl Subscription {
    fn new(event: &Event) -> Self {
        Self {
            v: storage::FORMAT,
            subscription_id: event.subscription_id.clone(),
            user_id: event.user_id.clone(),
            product_id: event.product_id.clone(),
            applied_through: 0,
            waiting: Vec::new(),
            status: None,
            plan_id: None,
            device_number: None,
            next_billing_date: None,
            trial_end: None,
            created_at: None,
            charged_sum: None,
            addons: None,
        }
    }

    /// Applies the next event in sequence.
    pub fn apply(&mut self, event: &Event) {
        debug_assert_eq!(event.sequence, self.applied_through + 1);
        self.applied_through = event.sequence;
        keep(&mut self.plan_id, &event.plan_id);
        keep(&mut self.device_number, &event.device_number);
        keep(&mut self.next_billing_date, &event.next_billing_date);
        keep(&mut self.charged_sum, &event.charged_sum);
        keep(&mut self.addons, &event.addons);
        match event.kind.as_str() {
            "SubscriptionCreated" => {
                let days = event.trial_days.unwrap_or(0);
                self.created_at = Some(event.timestamp);
                self.trial_end = (days > 0).then(|| event.timestamp + i64::from(days) * 86_400_000);
                self.status = Some(if days > 0 { Status::Trial } else { Status::Pending });
            }
            "SubscriptionActivated" | "SubscriptionRenewed" => self.status = Some(Status::Active),
            "SubscriptionTerminationRequested" => self.status = Some(Status::TerminationRequested),
            "SubscriptionTerminated" => self.status = Some(Status::Terminated),
            _ => {}
        }
    }

    /// Whether the subscription entitles its user at `now` (Unix ms).
    pub fn usable(&self, now: i64, pending_grace_secs: u64) -> bool {
        match self.status {
            Some(Status::Trial | Status::Active) => true,
            Some(Status::Pending) => {
                let grace = i64::try_from(pending_grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                self.created_at.is_some_and(|created| now < created.saturating_add(grace))
            }
            Some(Status::TerminationRequested) => self.next_billing_date.is_some_and(|until| now < until),
            Some(Status::Terminated) | None => false,
        }
    }

    /// Licensed devices while usable (`deviceNumber`, 1 when Evotor sent none).
    pub fn devices(&self) -> u64 {
        self.device_number.unwrap_or(1)
    }
}

/// Overwrites `field` with `value` when the event carried one.
fn keep<T: Clone>(field: &mut Option<T>, value: &Option<T>) {
    if value.is_some() {
        field.clone_from(value);
    }
}

/// An event as stored, with the time it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredEvent {
    v: u32,
    received_at: u64,
    event: Value,
}

/// Where the request came from: the Evotor cloud, or a user's token.
enum Caller {
    Server,
    User(String),
}

fn caller(ctx: &Ctx<'_>, request: &Request) -> Result<Caller, ApiError> {
    if auth::is_server(ctx, request) {
        return Ok(Caller::Server);
    }
    let settings = crate::accounts::settings(ctx)?;
    // No billing guard here: a lapsed user's token must still deliver the event that revives it.
    auth::authenticate_user(ctx, request, &settings).map(|user| Caller::User(user.user_id))
}

/// Result of storing one subscription event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// New, and applied (with any waiting successors).
    Applied,
    /// New, waiting for earlier events.
    Waiting,
    /// Seen before: nothing changed.
    Duplicate,
}

/// Stores `event` once and applies whatever became contiguous.
pub fn record_event(ctx: &Ctx<'_>, event: &Event, raw: &Object) -> Result<Stored, ApiError> {
    let now = ctx.clock.now_unix();
    storage::transact(ctx.kv, |txn| {
        let state_key = storage::subscription_key(&event.subscription_id);
        let existing = txn.get::<Subscription>(&state_key)?;
        let is_new = existing.is_none();
        let mut state = existing.unwrap_or_else(|| Subscription::new(event));
        if state.user_id != event.user_id {
            return Err(ApiError::incorrect("userId", event.user_id.as_str()));
        }
        if event.sequence <= state.applied_through || state.waiting.contains(&event.sequence) {
            return Ok(Stored::Duplicate);
        }
        let stored = StoredEvent { v: storage::FORMAT, received_at: now, event: Value::Object(raw.clone()) };
        txn.put(&storage::subscription_event_key(&event.subscription_id, event.sequence), &stored);
        let applied = |txn: &mut storage::Txn<'_>, event: &Event| {
            let data = json!({
                "subscriptionId": event.subscription_id, "sequenceNumber": event.sequence, "type": event.kind,
            });
            txn.emit("subscription.event-applied", now, Some(&event.user_id), data);
        };
        let outcome = if event.sequence == state.applied_through + 1 {
            state.apply(event);
            applied(txn, event);
            // Apply the successors that were waiting for this one.
            while let Some(position) = state.waiting.iter().position(|seq| *seq == state.applied_through + 1) {
                let seq = state.waiting.remove(position);
                let key = storage::subscription_event_key(&event.subscription_id, seq);
                let next = txn.get::<StoredEvent>(&key)?.ok_or(StorageError::Corrupt(key.clone()))?;
                let Value::Object(body) = next.event else { return Err(StorageError::Corrupt(key).into()) };
                let next = parse_event(&body)?;
                state.apply(&next);
                applied(txn, &next);
            }
            Stored::Applied
        } else {
            state.waiting.push(event.sequence);
            state.waiting.sort_unstable();
            Stored::Waiting
        };
        if is_new {
            txn.put(
                &storage::user_subscription_key(&event.user_id, &event.subscription_id),
                &json!({ "v": storage::FORMAT }),
            );
        }
        txn.put(&state_key, &state);
        Ok(outcome)
    })
}

/// `POST /api/v1/subscription/event` (server authorization or the user's token).
pub fn subscription_event(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    let caller = caller(ctx, request)?;
    let body = input::object(&request.body)?;
    let event = parse_event(&body)?;
    if let Caller::User(user_id) = &caller
        && *user_id != event.user_id
    {
        return Err(ApiError::incorrect("userId", event.user_id.as_str()));
    }
    if !KNOWN_TYPES.contains(&event.kind.as_str()) {
        eprintln!(
            "storing a subscription event of unknown type {:?} (subscription {})",
            event.kind, event.subscription_id
        );
    }
    record_event(ctx, &event, &body)?;
    Ok(Response::empty(200))
}

/// The app's installation state for a user, by the latest event time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Installation {
    /// Storage format version.
    pub v: u32,
    /// Installed (true) or uninstalled.
    pub installed: bool,
    /// Time of the event that decided it, Unix milliseconds.
    pub at: i64,
    /// That event's id.
    pub event_id: String,
}

/// `POST /api/v2/installation/event` (server authorization or the user's
/// token): `ApplicationInstalled` / `ApplicationUninstalled`, once per `id`.
pub fn installation_event(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    let caller = caller(ctx, request)?;
    let body = input::object(&request.body)?;
    let id = short_text(&body, "id", true)?.unwrap_or_default();
    let at = datetime(&body, "timestamp", true)?.unwrap_or_default();
    let kind = short_text(&body, "type", true)?.unwrap_or_default();
    let Some(Value::Object(data)) = optional(&body, "data") else {
        return Err(if body.contains_key("data") {
            ApiError::wrong_type("data", "an object")
        } else {
            ApiError::missing("data")
        });
    };
    let user_id = match data.get("userId") {
        None | Some(Value::Null) => return Err(ApiError::missing("data.userId")),
        Some(Value::String(user)) if input::is_user_id(user) => user.clone(),
        Some(other) => return Err(ApiError::incorrect("data.userId", other.clone())),
    };
    short_text(data, "productId", true).map_err(|mut err| {
        err.subject = Some("data.productId".into());
        err
    })?;
    if let Caller::User(caller) = &caller
        && *caller != user_id
    {
        return Err(ApiError::incorrect("data.userId", user_id));
    }
    let installed = match kind.as_str() {
        "ApplicationInstalled" => Some(true),
        "ApplicationUninstalled" => Some(false),
        other => {
            eprintln!("storing an installation event of unknown type {other:?} ({id})");
            None
        }
    };
    let now = ctx.clock.now_unix();
    let event_key = storage::installation_event_key(&storage::sha256_hex(id.as_bytes()));
    storage::transact(ctx.kv, |txn| -> Result<(), ApiError> {
        if txn.get::<StoredEvent>(&event_key)?.is_some() {
            return Ok(());
        }
        txn.put(&event_key, &StoredEvent { v: storage::FORMAT, received_at: now, event: Value::Object(body.clone()) });
        txn.emit("installation.event", now, Some(&user_id), json!({ "id": id, "type": kind }));
        if let Some(installed) = installed {
            let key = storage::installation_key(&user_id);
            let current = txn.get::<Installation>(&key)?;
            if current.as_ref().is_none_or(|current| at > current.at) {
                txn.put(&key, &Installation { v: storage::FORMAT, installed, at, event_id: id.clone() });
            }
        }
        Ok(())
    })?;
    Ok(Response::empty(200))
}

/// `POST /api/v1/user/event` (legacy billing events, server authorization):
/// each distinct event is recorded once.
pub fn legacy_event(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    auth::require_server(ctx, request)?;
    let body = input::object(&request.body)?;
    short_text(&body, "type", true)?;
    let key = storage::legacy_event_key(&storage::sha256_hex(&request.body));
    let now = ctx.clock.now_unix();
    storage::transact(ctx.kv, |txn| -> Result<(), ApiError> {
        if txn.get::<StoredEvent>(&key)?.is_none() {
            txn.put(&key, &StoredEvent { v: storage::FORMAT, received_at: now, event: Value::Object(body.clone()) });
            let user = ["userUuid", "userId"].iter().find_map(|field| body.get(*field).and_then(Value::as_str));
            txn.emit(
                "legacy-event.received",
                now,
                user.filter(|id| input::is_user_id(id)),
                json!({ "type": body["type"] }),
            );
        }
        Ok(())
    })?;
    Ok(Response::empty(200))
}

/// What a user may use now, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entitlement {
    /// Whether user-token calls are allowed.
    pub usable: bool,
    /// Devices licensed by the usable subscriptions.
    pub licensed_devices: u64,
    /// Why not usable.
    pub reason: Option<String>,
}

/// Every subscription of a user.
pub fn subscriptions(ctx: &Ctx<'_>, user_id: &str) -> Result<Vec<Subscription>, ApiError> {
    let prefix = storage::user_subscriptions_prefix(user_id);
    let mut out = Vec::new();
    for (key, _) in storage::scan_all(ctx.kv, &prefix)? {
        let id = key.strip_prefix(&prefix).unwrap_or_default();
        if let Some(state) = storage::read::<Subscription>(ctx.kv, &storage::subscription_key(id))? {
            out.push(state);
        }
    }
    Ok(out)
}

/// The user's entitlement at the clock's now.
pub fn entitlement(ctx: &Ctx<'_>, user_id: &str, pending_grace_secs: u64) -> Result<Entitlement, ApiError> {
    let now = i64::try_from(ctx.clock.now_unix()).unwrap_or(i64::MAX).saturating_mul(1000);
    if let Some(installation) = storage::read::<Installation>(ctx.kv, &storage::installation_key(user_id))?
        && !installation.installed
    {
        return Ok(Entitlement { usable: false, licensed_devices: 0, reason: Some("the app is uninstalled".into()) });
    }
    let subscriptions = subscriptions(ctx, user_id)?;
    let usable: Vec<&Subscription> = subscriptions.iter().filter(|s| s.usable(now, pending_grace_secs)).collect();
    if usable.is_empty() {
        let reason = if subscriptions.is_empty() { "no subscription" } else { "no usable subscription" };
        return Ok(Entitlement { usable: false, licensed_devices: 0, reason: Some(reason.into()) });
    }
    Ok(Entitlement { usable: true, licensed_devices: usable.iter().map(|s| s.devices()).sum(), reason: None })
}

/// How many devices `user_id` may have registered: none when billing is
/// not enforced for the user (enforcement off, or the partner bills them).
pub fn device_limit(ctx: &Ctx<'_>, user_id: &str, settings: &crate::config::Settings) -> Result<Option<u64>, ApiError> {
    if !settings.billing_enforced || partner_bills(ctx, user_id)? {
        return Ok(None);
    }
    Ok(Some(entitlement(ctx, user_id, settings.pending_grace_secs)?.licensed_devices))
}

fn partner_bills(ctx: &Ctx<'_>, user_id: &str) -> Result<bool, ApiError> {
    let Some(user) = storage::read::<storage::UserRecord>(ctx.kv, &storage::user_key(user_id))? else {
        return Ok(false);
    };
    let Some(account_id) = user.account_id else { return Ok(false) };
    Ok(storage::read::<storage::Account>(ctx.kv, &storage::account_key(&account_id))?.is_some_and(|a| a.has_billing))
}

/// The device guard for calls made in the context of a terminal (documents'
/// `deviceUuid`, receipts' `deviceId`): only the first N devices the user
/// registered, N = licensed devices, may act → else 405 1005.
pub fn require_device(
    ctx: &Ctx<'_>,
    user_id: &str,
    device_uuid: &str,
    settings: &crate::config::Settings,
) -> Result<(), ApiError> {
    let Some(limit) = device_limit(ctx, user_id, settings)? else { return Ok(()) };
    let order = storage::read::<storage::DeviceOrder>(ctx.kv, &storage::device_order_key(user_id))?.unwrap_or_default();
    let wanted = device_uuid.to_ascii_lowercase();
    match order.devices.iter().position(|device| *device == wanted) {
        Some(index) if (index as u64) < limit => Ok(()),
        _ => Err(ApiError::device_not_allowed(device_uuid)),
    }
}

#[cfg(test)]
mod tests;
