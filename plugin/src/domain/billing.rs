//! Subscription and installation events, and the entitlement they give.
//!
//! Evotor retries an event about once a minute for three days until it gets
//! 200, so events arrive duplicated and out of order. Each is stored once,
//! as its own record, under its natural id — (subscriptionId,
//! sequenceNumber), or the installation event's `id` — and a
//! subscription's state is what applying its events in sequence order
//! gives. An event ahead of a gap waits until the gap fills, at most
//! `billing_gap_timeout_secs`: then the waiting events apply past the gap
//! and the gap becomes a data issue (the partner may also apply them at
//! once, `POST …/resolve-gap`). A usable event is never refused because of
//! our own state (Evotor would retry it for three days): events for users
//! we do not know yet, or whose account is disabled or gone, are kept.

use crate::errors::ApiError;
use crate::input::{self, Fields, Object};
use crate::storage::{self, Issue, StorageError, Txn};
use crate::{Ctx, time};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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
    /// Payment failed, or cancelled: not usable.
    Terminated,
}

/// What an event does, whichever vocabulary named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `SubscriptionCreated`, `Created`.
    Created,
    /// `SubscriptionActivated`, `Activated`.
    Activated,
    /// `SubscriptionRenewed`, `Renewed`.
    Renewed,
    /// `SubscriptionTermsChanged`, `TermsChanged`, `DeviceAssignmentChanged`, `AddonsUpdated`.
    TermsChanged,
    /// `SubscriptionTerminationRequested`, `CancellationRequested`.
    TerminationRequested,
    /// `SubscriptionTerminated`, `Cancelled`, `Canceled`, `Terminated`.
    Terminated,
    /// Anything else: stored, its fields kept, its state unchanged.
    Other,
}

impl Kind {
    /// The kind of an event `type`, in either vocabulary.
    pub fn of(name: &str) -> Self {
        match name.strip_prefix("Subscription").unwrap_or(name) {
            "Created" => Kind::Created,
            "Activated" => Kind::Activated,
            "Renewed" => Kind::Renewed,
            "TermsChanged" | "DeviceAssignmentChanged" | "AddonsUpdated" => Kind::TermsChanged,
            "TerminationRequested" | "CancellationRequested" => Kind::TerminationRequested,
            "Terminated" | "Cancelled" | "Canceled" => Kind::Terminated,
            _ => Kind::Other,
        }
    }
}

/// A subscription event, read as far as it can be.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `subscriptionId`, lower case.
    pub subscription_id: String,
    /// `userId`.
    pub user_id: String,
    /// `productId`, when sent.
    pub product_id: String,
    /// `sequenceNumber`, from 1.
    pub sequence: u64,
    /// `timestamp`, Unix milliseconds (the arrival time when unusable).
    pub timestamp: i64,
    /// `type` as sent.
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
    /// What looks wrong in it (data issues).
    pub problems: Vec<String>,
}

/// A whole number as a number or a numeric string.
fn whole(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64))
        }
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// A short text (any scalar, as text); a problem noted when it is something else.
fn text(body: &Object, field: &str, problems: &mut Vec<String>) -> Option<String> {
    match Fields::of(body).get(field)? {
        Value::String(text) if !text.is_empty() => Some(text.chars().take(256).collect()),
        Value::Number(number) => Some(number.to_string()),
        other => {
            problems.push(format!("{field} {other} is not a text"));
            None
        }
    }
}

/// Reads a subscription event: refused only without what identifies it
/// (`subscriptionId`, `sequenceNumber`, `userId`) → 2002 / 2003; every
/// other oddity is kept and noted.
pub fn parse_event(body: &Object, now_ms: i64) -> Result<Event, ApiError> {
    let fields = Fields::of(body);
    let subscription_id = match fields.get("subscriptionId") {
        None => return Err(ApiError::missing("subscriptionId")),
        Some(value) => input::id_text(value).ok_or_else(|| ApiError::incorrect("subscriptionId", value.clone()))?,
    };
    let sequence = match fields.get("sequenceNumber") {
        None => return Err(ApiError::missing("sequenceNumber")),
        Some(value) => {
            whole(value).filter(|n| *n >= 1).ok_or_else(|| ApiError::incorrect("sequenceNumber", value.clone()))?
        }
    };
    let user_id = match fields.get("userId").or_else(|| fields.get("userUuid")) {
        None => return Err(ApiError::missing("userId")),
        Some(value) => input::id_text(value).ok_or_else(|| ApiError::incorrect("userId", value.clone()))?,
    };
    let mut problems = Vec::new();
    if !input::is_user_id(&user_id) {
        problems.push(format!("userId {user_id:?} is not NN-NNNNNNNNNNNNNNN"));
    }
    if !crate::input::is_uuid(&subscription_id) {
        problems.push(format!("subscriptionId {subscription_id:?} is not a uuid"));
    }
    let product_id = text(body, "productId", &mut problems).unwrap_or_default();
    let found = fields.get("timestamp").map(|value| ("timestamp", value));
    let timestamp = time::or_arrival(found, "timestamp", now_ms, &mut problems);
    let kind = text(body, "type", &mut problems).unwrap_or_default();
    if Kind::of(&kind) == Kind::Other {
        problems.push(format!("unknown event type {kind:?}: kept, the state unchanged"));
    }
    let trial_days = fields.get("trialPeriodDuration").and_then(|value| {
        let days = time::days(value);
        if days.is_none() {
            problems.push(format!("trialPeriodDuration {value} is not a number of days: no trial"));
        }
        days
    });
    let device_number = fields.get("deviceNumber").and_then(|value| {
        let count = whole(value);
        if count.is_none() {
            problems.push(format!("deviceNumber {value} is not a whole number: ignored"));
        }
        count
    });
    let next_billing_date = fields.get("nextBillingDate").and_then(|value| {
        let date = time::timestamp(value);
        if date.is_none() {
            problems.push(format!("nextBillingDate {value} is not a date-time: ignored"));
        }
        date
    });
    let charged_sum = fields.get("chargedSum").cloned();
    if let Some(sum) = &charged_sum
        && !sum.get("amount").is_some_and(|amount| amount.is_number() || amount.is_string())
    {
        problems.push(format!("chargedSum {sum} has no amount"));
    }
    let addons = fields.get("addons").cloned();
    if addons.as_ref().is_some_and(|addons| !addons.is_array()) {
        problems.push("addons is not an array".into());
    }
    Ok(Event {
        subscription_id: subscription_id.to_ascii_lowercase(),
        user_id,
        product_id,
        sequence,
        timestamp,
        plan_id: text(body, "planId", &mut problems),
        device_number,
        next_billing_date,
        trial_days,
        charged_sum,
        addons,
        kind,
        problems,
    })
}

/// A subscription as its events so far make it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// Storage format version.
    pub v: u32,
    /// The subscription.
    pub subscription_id: String,
    /// Its user: the one its first event named, until an event with the
    /// server credential names one (then that user, for good).
    pub user_id: String,
    /// Whether an event with the server credential named `user_id` (states
    /// of earlier formats: not known, so not confirmed).
    #[serde(default)]
    pub owner_confirmed: bool,
    /// The app.
    pub product_id: String,
    /// The last sequence number applied; every earlier one was applied or skipped.
    pub applied_through: u64,
    /// When an event first waited for a missing one (Unix seconds); `None` without a gap.
    #[serde(default)]
    pub gap_since: Option<u64>,
    /// Sequence numbers that never arrived and were skipped: the first
    /// [`MAX_SKIPPED_LISTED`] of them (each gap is also a data issue naming
    /// its whole range, however long).
    #[serde(default)]
    pub skipped: Vec<u64>,
    /// What the first storage format kept of the events waiting behind a
    /// gap (they are stored as their own records as well); read, never written.
    #[serde(default, skip_serializing)]
    waiting: Vec<u64>,
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
    /// When the sync job found it no longer usable with time alone (the
    /// trial over, unpaid past the grace, the paid period over) and said so
    /// in the feed (`subscription.lapsed`), Unix seconds; cleared by the
    /// next event applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lapsed_at: Option<u64>,
}

impl Subscription {
    fn new(event: &Event, caller: &Caller) -> Self {
        Self {
            v: storage::FORMAT,
            subscription_id: event.subscription_id.clone(),
            user_id: event.user_id.clone(),
            owner_confirmed: matches!(caller, Caller::Server),
            product_id: event.product_id.clone(),
            ..Self::default()
        }
    }

    /// Brings a state of the first storage format up to date: its waiting
    /// events start their gap's clock now. Returns whether it changed.
    fn migrate(&mut self, now: u64) -> bool {
        if self.waiting.is_empty() {
            return false;
        }
        self.waiting.clear();
        self.gap_since.get_or_insert(now);
        true
    }

    /// Whether reading the state at `now` (Unix seconds) changes it: a gap
    /// has waited past `gap_timeout_secs`, or the state is of the first format.
    pub fn due_for_update(&self, now: u64, gap_timeout_secs: u64) -> bool {
        !self.waiting.is_empty() || self.gap_since.is_some_and(|since| now.saturating_sub(since) >= gap_timeout_secs)
    }

    /// The subscription as it is before any event is applied: its identity,
    /// owner and skipped numbers kept.
    fn unapplied(&self) -> Self {
        Self {
            applied_through: 0,
            status: None,
            plan_id: None,
            device_number: None,
            next_billing_date: None,
            trial_end: None,
            created_at: None,
            charged_sum: None,
            addons: None,
            ..self.clone()
        }
    }

    /// Applies the next event in sequence.
    pub fn apply(&mut self, event: &Event) {
        self.applied_through = event.sequence;
        self.lapsed_at = None;
        keep(&mut self.plan_id, &event.plan_id);
        keep(&mut self.device_number, &event.device_number);
        keep(&mut self.next_billing_date, &event.next_billing_date);
        keep(&mut self.charged_sum, &event.charged_sum);
        keep(&mut self.addons, &event.addons);
        match Kind::of(&event.kind) {
            Kind::Created => {
                let days = event.trial_days.unwrap_or(0);
                self.created_at = Some(event.timestamp);
                self.trial_end = (days > 0).then(|| event.timestamp.saturating_add(i64::from(days) * 86_400_000));
                self.status = Some(if days > 0 { Status::Trial } else { Status::Pending });
            }
            Kind::Activated | Kind::Renewed => {
                self.status = Some(Status::Active);
                self.trial_end = None;
            }
            // Nothing paid during a trial: leaving it ends it at once.
            Kind::TerminationRequested if self.status == Some(Status::Trial) => {
                self.status = Some(Status::Terminated);
                self.trial_end = Some(event.timestamp);
            }
            Kind::TerminationRequested => self.status = Some(Status::TerminationRequested),
            Kind::Terminated => self.status = Some(Status::Terminated),
            Kind::TermsChanged | Kind::Other => {}
        }
    }

    /// Whether the subscription entitles its user at `now` (Unix ms).
    pub fn usable(&self, now: i64, pending_grace_secs: u64) -> bool {
        match self.status {
            Some(Status::Trial) => self.trial_end.is_none_or(|end| now < end),
            Some(Status::Active) => true,
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
    /// Whether a user token delivered it (`None`: kept by an earlier format,
    /// not known); Evotor's own event with its number replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by_user_token: Option<bool>,
    event: Value,
}

/// `user_quota_records` when `caller` is a user's token: what a user's own
/// deliveries store counts against it; the Evotor cloud's do not.
fn user_quota(ctx: &Ctx<'_>, caller: &Caller) -> Result<Option<u64>, ApiError> {
    match caller {
        Caller::User(_) => Ok(crate::domain::accounts::settings(ctx)?.user_quota_records),
        Caller::Server => Ok(None),
    }
}

/// Where the request came from: the Evotor cloud, or a user's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The server credential (the Evotor cloud).
    Server,
    /// A user token we issued, of this user.
    User(String),
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
    /// It names another user than the subscription's owner: kept beside the
    /// subscription and reported, never applied.
    Foreign,
    /// A user token sent it for a subscription Evotor speaks for: kept
    /// beside the subscription and reported, never applied.
    Kept,
}

/// The stored event `sequence` of a subscription, read.
fn stored_event(
    txn: &mut Txn<'_>,
    subscription_id: &str,
    sequence: u64,
    now_ms: i64,
) -> Result<Option<Event>, ApiError> {
    let key = storage::subscription_event_key(subscription_id, sequence);
    let Some(stored) = txn.get::<StoredEvent>(&key)? else { return Ok(None) };
    let Value::Object(body) = stored.event else { return Err(StorageError::Corrupt(key).into()) };
    parse_event(&body, now_ms).map(Some)
}

fn announce(txn: &mut Txn<'_>, now: u64, event: &Event) {
    let data = json!({ "subscriptionId": event.subscription_id, "sequenceNumber": event.sequence, "type": event.kind });
    txn.emit("subscription.event-applied", now, Some(&event.user_id), data);
}

/// Applies the stored events that follow `state.applied_through` without a gap.
fn apply_contiguous(txn: &mut Txn<'_>, state: &mut Subscription, now: u64, now_ms: i64) -> Result<(), ApiError> {
    let subscription_id = state.subscription_id.clone();
    // Nothing follows the last sequence number there is.
    while let Some(following) = state.applied_through.checked_add(1)
        && let Some(next) = stored_event(txn, &subscription_id, following, now_ms)?
    {
        state.apply(&next);
        announce(txn, now, &next);
    }
    Ok(())
}

/// Most skipped sequence numbers a subscription's state lists.
pub const MAX_SKIPPED_LISTED: usize = 1000;

/// Applies the waiting events past every gap before them; each gap skipped
/// becomes a data issue. Returns whether anything was waiting.
fn skip_gaps(txn: &mut Txn<'_>, state: &mut Subscription, now: u64, now_ms: i64, why: &str) -> Result<bool, ApiError> {
    let prefix = storage::subscription_events_prefix(&state.subscription_id);
    let mut applied = false;
    loop {
        // Not a check: every stored event rewrites the state record, which is one.
        let after = storage::subscription_event_key(&state.subscription_id, state.applied_through);
        let waiting = txn.scan_keys(&prefix, Some(&after), 1)?;
        let Some(next) =
            waiting.first().and_then(|key| key.strip_prefix(&prefix)).and_then(|seq| seq.parse::<u64>().ok())
        else {
            break;
        };
        let (first, last) = (state.applied_through + 1, next - 1);
        // A sequence number far ahead (a hostile or broken sender) must not list billions.
        let room = MAX_SKIPPED_LISTED.saturating_sub(state.skipped.len());
        state.skipped.extend((first..=last).take(room));
        let problem = format!("events {first}..={last} never arrived: later ones applied past them ({why})");
        let user_id = state.user_id.clone();
        txn.issue(now, Issue::new(Some(&user_id), "subscription", &state.subscription_id, problem));
        state.applied_through = last;
        apply_contiguous(txn, state, now, now_ms)?;
        applied = true;
    }
    state.gap_since = None;
    Ok(applied)
}

/// Rebuilds `state` from its stored events in sequence order, with
/// `replacement` instead of the event stored under its number (the commit
/// that writes it is this one, so the store still holds the old one).
fn replay(txn: &mut Txn<'_>, state: &mut Subscription, replacement: &Event, now_ms: i64) -> Result<(), ApiError> {
    let through = state.applied_through;
    let mut fresh = state.unapplied();
    let prefix = storage::subscription_events_prefix(&state.subscription_id);
    let mut after: Option<String> = None;
    'pages: loop {
        let keys = txn.scan_keys(&prefix, after.as_deref(), crate::kv::MAX_SCAN_LIMIT as usize)?;
        let Some(last) = keys.last().cloned() else { break };
        for key in keys {
            let Some(sequence) = key.strip_prefix(&prefix).and_then(|seq| seq.parse::<u64>().ok()) else { continue };
            if sequence > through {
                break 'pages;
            }
            if sequence == replacement.sequence {
                fresh.apply(replacement);
            } else if let Some(event) = stored_event(txn, &state.subscription_id, sequence, now_ms)? {
                fresh.apply(&event);
            }
        }
        after = Some(last);
    }
    // Numbers skipped past a gap stay skipped.
    fresh.applied_through = through;
    *state = fresh;
    Ok(())
}

/// Keeps an event that names another user than the subscription's owner
/// beside the subscription (once per user and sequence number) and reports
/// it; it is never applied.
fn keep_foreign(
    txn: &mut Txn<'_>,
    now: u64,
    event: &Event,
    stored: &StoredEvent,
    owner: &str,
) -> Result<Stored, ApiError> {
    let key = storage::foreign_subscription_event_key(&event.subscription_id, &event.user_id, event.sequence);
    if txn.get::<StoredEvent>(&key)?.is_some() {
        return Ok(Stored::Duplicate);
    }
    txn.put(&key, stored);
    let problem = format!(
        "event {} names user {}, the subscription is user {owner}'s: kept, not applied",
        event.sequence, event.user_id
    );
    txn.issue(now, Issue::new(Some(&event.user_id), "subscription", &event.subscription_id, problem.clone()));
    txn.issue(now, Issue::new(Some(owner), "subscription", &event.subscription_id, problem));
    Ok(Stored::Foreign)
}

/// A user token's event for a subscription Evotor speaks for: kept beside
/// the subscription (once per sequence number) and reported, never applied.
fn keep_user_tokens(txn: &mut Txn<'_>, now: u64, event: &Event, stored: &StoredEvent) -> Result<Stored, ApiError> {
    let key = storage::foreign_subscription_event_key(&event.subscription_id, &event.user_id, event.sequence);
    if txn.get::<StoredEvent>(&key)?.is_some() {
        return Ok(Stored::Duplicate);
    }
    txn.put(&key, stored);
    let problem = format!(
        "event {} came with the user's token after Evotor's own events: kept, not applied (Evotor's events alone make the state)",
        event.sequence
    );
    txn.issue(now, Issue::new(Some(&event.user_id), "subscription", &event.subscription_id, problem));
    Ok(Stored::Kept)
}

/// Evotor speaks for a subscription its owner's token built so far: the
/// events that token sent are set aside (kept beside it, reported) and the
/// state is rebuilt from Evotor's own events alone, in one commit; answers
/// how many were set aside. A user token's event applied before Evotor
/// spoke must not outlive Evotor's events replacing those around it.
fn evotor_speaks(txn: &mut Txn<'_>, now: u64, state: &mut Subscription, now_ms: i64) -> Result<u64, ApiError> {
    let (moved, evotors) = move_aside(txn, state, |stored| stored.by_user_token == Some(true))?;
    if moved == 0 {
        return Ok(0);
    }
    // The state again from Evotor's events: contiguous ones applied, numbers skipped before stay skipped.
    let mut fresh = state.unapplied();
    while let Some(next) = fresh.applied_through.checked_add(1) {
        match evotors.get(&next) {
            Some(stored) => {
                let Value::Object(body) = &stored.event else {
                    let key = storage::subscription_event_key(&state.subscription_id, next);
                    return Err(StorageError::Corrupt(key).into());
                };
                fresh.apply(&parse_event(body, now_ms)?);
            }
            None if state.skipped.contains(&next) => fresh.applied_through = next,
            None => break,
        }
    }
    let waiting = evotors.range(fresh.applied_through.saturating_add(1)..).next().is_some();
    fresh.gap_since = if waiting { Some(state.gap_since.unwrap_or(now)) } else { None };
    *state = fresh;
    let problem = format!(
        "Evotor's own events now speak for the subscription: {moved} event(s) the user's token sent set aside, not applied; \
         the state rebuilt from Evotor's"
    );
    txn.issue(now, Issue::new(Some(&state.user_id), "subscription", &state.subscription_id, problem));
    Ok(moved)
}

/// Within `txn`: moves the stored events of `state`'s subscription that
/// `aside` picks beside it (`subs/…/foreign/{owner}/…`, kept, never
/// applied); answers how many moved and the events that stay, by number.
fn move_aside(
    txn: &mut Txn<'_>,
    state: &Subscription,
    aside: impl Fn(&StoredEvent) -> bool,
) -> Result<(u64, std::collections::BTreeMap<u64, StoredEvent>), ApiError> {
    let prefix = storage::subscription_events_prefix(&state.subscription_id);
    let mut after: Option<String> = None;
    let (mut moved, mut staying) = (0u64, std::collections::BTreeMap::new());
    loop {
        let keys = txn.scan_keys(&prefix, after.as_deref(), crate::kv::MAX_SCAN_LIMIT as usize)?;
        let Some(last) = keys.last().cloned() else { break };
        for key in keys {
            let Some(stored) = txn.get::<StoredEvent>(&key)? else { continue };
            let sequence = key.strip_prefix(&prefix).and_then(|seq| seq.parse::<u64>().ok());
            if aside(&stored) {
                let sequence = sequence.unwrap_or_default();
                let kept = storage::foreign_subscription_event_key(&state.subscription_id, &state.user_id, sequence);
                txn.put(&kept, &stored);
                txn.delete(&key);
                moved += 1;
            } else if let Some(sequence) = sequence {
                staying.insert(sequence, stored);
            }
        }
        after = Some(last);
    }
    Ok((moved, staying))
}

/// Evotor named another owner than the user whose own token built the
/// subscription so far: that user's events are set aside (kept as foreign
/// events, reported) and the subscription starts again from Evotor's.
fn set_aside(txn: &mut Txn<'_>, now: u64, state: &Subscription, owner: &str) -> Result<(), ApiError> {
    let (moved, _) = move_aside(txn, state, |_| true)?;
    txn.delete(&storage::user_subscription_key(&state.user_id, &state.subscription_id));
    let problem = format!(
        "Evotor names user {owner} as the owner: {moved} event(s) user {}'s token sent set aside, not applied",
        state.user_id
    );
    txn.issue(now, Issue::new(Some(&state.user_id), "subscription", &state.subscription_id, problem.clone()));
    txn.issue(now, Issue::new(Some(owner), "subscription", &state.subscription_id, problem));
    Ok(())
}

/// Stores `event` once and applies whatever became contiguous; a gap older
/// than `gap_timeout_secs` is skipped. The subscription belongs to the user
/// its first event named until an event of the server credential names
/// one; an event naming another user is kept and reported, never applied.
/// Once an event of the server credential named the owner, the state is
/// what Evotor's events alone make: a user token's events are kept and
/// reported, never applied.
pub fn record_event(
    ctx: &Ctx<'_>,
    caller: &Caller,
    event: &Event,
    raw: &Object,
    gap_timeout_secs: u64,
) -> Result<Stored, ApiError> {
    let now = ctx.clock.now_unix();
    let quota = user_quota(ctx, caller)?;
    // Evotor naming another owner first sets the old owner's events aside,
    // and Evotor speaking first for the owner sets aside what the owner's
    // token sent (one commit); then the event is taken as any other (the next).
    loop {
        if let Some(stored) = record_event_once(ctx, caller, event, raw, gap_timeout_secs, now, quota)? {
            return Ok(stored);
        }
    }
}

/// One attempt of [`record_event`]: `None` when the subscription changed
/// hands, or Evotor first spoke for it, in this commit and the event is
/// still to be recorded.
fn record_event_once(
    ctx: &Ctx<'_>,
    caller: &Caller,
    event: &Event,
    raw: &Object,
    gap_timeout_secs: u64,
    now: u64,
    quota: Option<u64>,
) -> Result<Option<Stored>, ApiError> {
    let now_ms = time::millis(now);
    // A user token's event, once stored, counts against the user's quota.
    let count = |txn: &mut Txn<'_>| match caller {
        Caller::User(user_id) => crate::domain::quota::count_against(txn, quota, user_id, 1),
        Caller::Server => Ok(()),
    };
    storage::transact(ctx, |txn| {
        let state_key = storage::subscription_key(&event.subscription_id);
        let by_user_token = Some(*caller != Caller::Server);
        let stored =
            StoredEvent { v: storage::FORMAT, received_at: now, by_user_token, event: Value::Object(raw.clone()) };
        let mut confirmed = false;
        let (mut state, is_new) = match txn.get::<Subscription>(&state_key)? {
            None => (Subscription::new(event, caller), true),
            Some(mut state) if state.user_id == event.user_id => {
                confirmed = *caller == Caller::Server && !state.owner_confirmed;
                if confirmed {
                    state.owner_confirmed = true;
                    state.migrate(now);
                    if evotor_speaks(txn, now, &mut state, now_ms)? > 0 {
                        // The event itself in the next commit, on the rebuilt state.
                        txn.put(&state_key, &state);
                        return Ok(None);
                    }
                } else if *caller != Caller::Server && state.owner_confirmed {
                    let kept = keep_user_tokens(txn, now, event, &stored)?;
                    if kept == Stored::Kept {
                        count(txn)?;
                    }
                    return Ok(Some(kept));
                }
                (state, false)
            }
            Some(state) if *caller == Caller::Server && !state.owner_confirmed => {
                set_aside(txn, now, &state, &event.user_id)?;
                let fresh = Subscription::new(event, caller);
                txn.put(
                    &storage::user_subscription_key(&event.user_id, &event.subscription_id),
                    &json!({ "v": storage::FORMAT }),
                );
                txn.put(&state_key, &fresh);
                return Ok(None);
            }
            Some(state) => {
                let kept = keep_foreign(txn, now, event, &stored, &state.user_id)?;
                if kept == Stored::Foreign {
                    count(txn)?;
                }
                return Ok(Some(kept));
            }
        };
        state.migrate(now);
        let event_key = storage::subscription_event_key(&event.subscription_id, event.sequence);
        let known = txn.get::<StoredEvent>(&event_key)?;
        // Evotor's own event outranks one a user token sent with its number.
        let replaces =
            *caller == Caller::Server && known.as_ref().is_some_and(|known| known.by_user_token == Some(true));
        if !replaces && (event.sequence <= state.applied_through || known.is_some()) {
            if confirmed {
                txn.put(&state_key, &state);
            }
            return Ok(Some(Stored::Duplicate));
        }
        if !replaces {
            count(txn)?;
        }
        txn.put(&event_key, &stored);
        if replaces {
            let problem = format!("event {} a user token sent was replaced by Evotor's own", event.sequence);
            txn.issue(now, Issue::new(Some(&event.user_id), "subscription", &event.subscription_id, problem));
            if event.sequence <= state.applied_through {
                replay(txn, &mut state, event, now_ms)?;
                announce(txn, now, event);
                txn.put(&state_key, &state);
                return Ok(Some(Stored::Applied));
            }
        }
        for problem in event.problems.clone() {
            txn.issue(now, Issue::new(Some(&event.user_id), "subscription", &event.subscription_id, problem));
        }
        let outcome = if Some(event.sequence) == state.applied_through.checked_add(1) {
            state.apply(event);
            announce(txn, now, event);
            apply_contiguous(txn, &mut state, now, now_ms)?;
            Stored::Applied
        } else {
            Stored::Waiting
        };
        // Still a gap? Start its clock, or skip it once it has waited long enough.
        let waiting = outcome == Stored::Waiting || state.gap_since.is_some();
        if waiting {
            let since = *state.gap_since.get_or_insert(now);
            if now.saturating_sub(since) >= gap_timeout_secs {
                skip_gaps(txn, &mut state, now, now_ms, "waited past billing_gap_timeout_secs")?;
            } else if outcome == Stored::Applied && !has_waiting(txn, &state)? {
                state.gap_since = None;
            }
        }
        if is_new {
            txn.put(
                &storage::user_subscription_key(&event.user_id, &event.subscription_id),
                &json!({ "v": storage::FORMAT }),
            );
        }
        txn.put(&state_key, &state);
        Ok(Some(outcome))
    })
}

/// Whether events wait behind a gap.
fn has_waiting(txn: &Txn<'_>, state: &Subscription) -> Result<bool, ApiError> {
    let prefix = storage::subscription_events_prefix(&state.subscription_id);
    let after = storage::subscription_event_key(&state.subscription_id, state.applied_through);
    Ok(!txn.scan_keys(&prefix, Some(&after), 1)?.is_empty())
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
    /// Whether a user token delivered that event (`None`: kept by an earlier
    /// format, not known). Evotor's own events outrank a user token's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_user_token: Option<bool>,
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

/// Every subscription of a user; a gap that has waited past
/// `gap_timeout_secs` is skipped first (nothing else would: the events
/// behind it were answered already and are not sent again).
pub fn subscriptions(ctx: &Ctx<'_>, user_id: &str, gap_timeout_secs: u64) -> Result<Vec<Subscription>, ApiError> {
    let prefix = storage::user_subscriptions_prefix(user_id);
    let mut out = Vec::new();
    for (key, _) in storage::scan_all(ctx.kv, &prefix)? {
        let id = key.strip_prefix(&prefix).unwrap_or_default();
        out.extend(subscription_now(ctx, id, gap_timeout_secs)?);
    }
    Ok(out)
}

/// Up to `limit` subscriptions of a user after the subscription id `after`,
/// as [`subscriptions`] reads them, and where the next page starts.
pub fn subscriptions_page(
    ctx: &Ctx<'_>,
    user_id: &str,
    gap_timeout_secs: u64,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<Subscription>, Option<String>), ApiError> {
    let prefix = storage::user_subscriptions_prefix(user_id);
    let markers = storage::collect(ctx.kv, &prefix, after.map(|after| format!("{prefix}{after}")), limit as usize)?;
    let ids: Vec<String> = markers.iter().filter_map(|(key, _)| key.strip_prefix(&prefix).map(str::to_owned)).collect();
    let next = (ids.len() == limit as usize).then(|| ids.last().cloned()).flatten();
    let mut out = Vec::with_capacity(ids.len());
    for id in &ids {
        out.extend(subscription_now(ctx, id, gap_timeout_secs)?);
    }
    Ok((out, next))
}

/// Subscription `id` as of now: a gap that has waited past
/// `gap_timeout_secs` skipped, a state of the first format brought up to date.
fn subscription_now(ctx: &Ctx<'_>, id: &str, gap_timeout_secs: u64) -> Result<Option<Subscription>, ApiError> {
    let now = ctx.clock.now_unix();
    let Some(state) = storage::read::<Subscription>(ctx.kv, &storage::subscription_key(id))? else { return Ok(None) };
    if !state.due_for_update(now, gap_timeout_secs) {
        return Ok(Some(state));
    }
    storage::transact(ctx, |txn| -> Result<Option<Subscription>, ApiError> {
        let key = storage::subscription_key(id);
        let mut state = txn.get::<Subscription>(&key)?.ok_or(StorageError::Corrupt(key.clone()))?;
        let mut changed = state.migrate(now);
        if state.gap_since.is_some_and(|since| now.saturating_sub(since) >= gap_timeout_secs) {
            skip_gaps(txn, &mut state, now, time::millis(now), "waited past billing_gap_timeout_secs")?;
            changed = true;
        }
        if changed {
            txn.put(&key, &state);
        }
        Ok(Some(state))
    })
}

/// What one pass of the time-based rules did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimeRules {
    /// Subscriptions looked at.
    pub checked: u64,
    /// Gaps that had waited past `billing_gap_timeout_secs`, skipped.
    pub gaps_skipped: u64,
    /// Subscriptions newly found lapsed (`subscription.lapsed` in the feed).
    pub lapsed: u64,
}

/// Why a subscription stopped being usable with time alone, if it did.
fn lapse_reason(state: &Subscription, now_ms: i64, pending_grace_secs: u64) -> Option<&'static str> {
    if state.lapsed_at.is_some() || state.usable(now_ms, pending_grace_secs) {
        return None;
    }
    match state.status? {
        Status::Trial => Some("the trial ended"),
        Status::Pending => Some("unpaid past billing_pending_grace_secs"),
        Status::TerminationRequested => Some("the paid period ended"),
        Status::Active | Status::Terminated => None,
    }
}

/// Applies the rules that depend on time alone to the subscriptions after
/// `after` (a subscription id; none: from the first), in id order, while
/// `more()` allows: a gap that waited past `billing_gap_timeout_secs` is
/// skipped, a subscription that lapsed (trial over, unpaid past the grace,
/// paid period over) is announced once in the feed. Answers what it did and
/// the subscription to go on after, or none when it went through them all.
pub(crate) fn apply_time_rules(
    ctx: &Ctx<'_>,
    settings: &crate::config::Settings,
    after: Option<&str>,
    more: &dyn Fn() -> bool,
) -> Result<(TimeRules, Option<String>), ApiError> {
    const PREFIX: &str = "subs/";
    let mut done = TimeRules::default();
    let mut start = after.map(storage::subscription_key);
    // The last subscription looked at: where the next pass goes on.
    let mut resume = after.map(str::to_owned);
    loop {
        if !more() {
            return Ok((done, resume));
        }
        let page = ctx.kv.scan(PREFIX, start.as_deref(), 1).map_err(StorageError::Kv)?;
        let Some((key, _)) = page.into_iter().next() else { return Ok((done, None)) };
        let Some((id, rest)) = key.strip_prefix(PREFIX).and_then(|rest| rest.split_once('/')) else {
            start = Some(key);
            continue;
        };
        if rest != "state" {
            // Its events come before its state: past them at once.
            start = Some(format!("{PREFIX}{id}/event/~"));
            continue;
        }
        start = Some(key.clone());
        resume = Some(id.to_owned());
        let waiting = storage::read::<Subscription>(ctx.kv, &key)?.is_some_and(|state| state.gap_since.is_some());
        let Some(state) = subscription_now(ctx, id, settings.gap_timeout_secs)? else { continue };
        done.checked += 1;
        if waiting && state.gap_since.is_none() {
            done.gaps_skipped += 1;
        }
        let now = ctx.clock.now_unix();
        if lapse_reason(&state, time::millis(now), settings.pending_grace_secs).is_none() {
            continue;
        }
        let lapsed = storage::transact(ctx, |txn| -> Result<bool, ApiError> {
            let Some(mut state) = txn.get::<Subscription>(&key)? else { return Ok(false) };
            let Some(reason) = lapse_reason(&state, time::millis(now), settings.pending_grace_secs) else {
                return Ok(false);
            };
            state.lapsed_at = Some(now);
            let data = json!({ "subscriptionId": state.subscription_id, "status": state.status, "reason": reason });
            txn.emit("subscription.lapsed", now, Some(&state.user_id), data);
            txn.put(&key, &state);
            Ok(true)
        })?;
        done.lapsed += u64::from(lapsed);
    }
}

/// The user's entitlement at the clock's now.
pub fn entitlement(ctx: &Ctx<'_>, user_id: &str, settings: &crate::config::Settings) -> Result<Entitlement, ApiError> {
    let now = ctx.clock.now_unix();
    let installation = storage::read::<Installation>(ctx.kv, &storage::installation_key(user_id))?;
    if installation.as_ref().is_some_and(|installation| !installation.installed) {
        return Ok(Entitlement::of(installation.as_ref(), &[], now, settings));
    }
    let subscriptions = subscriptions(ctx, user_id, settings.gap_timeout_secs)?;
    Ok(Entitlement::of(installation.as_ref(), &subscriptions, now, settings))
}

impl Entitlement {
    /// What the installation state and the subscriptions (brought up to
    /// date: see [`Subscription::due_for_update`]) entitle a user to at `now`
    /// (Unix seconds).
    pub fn of(
        installation: Option<&Installation>,
        subscriptions: &[Subscription],
        now: u64,
        settings: &crate::config::Settings,
    ) -> Self {
        if installation.is_some_and(|installation| !installation.installed) {
            return Entitlement { usable: false, licensed_devices: 0, reason: Some("the app is uninstalled".into()) };
        }
        let now = time::millis(now);
        let usable: Vec<&Subscription> =
            subscriptions.iter().filter(|s| s.usable(now, settings.pending_grace_secs)).collect();
        if usable.is_empty() {
            let reason = if subscriptions.is_empty() { "no subscription" } else { "no usable subscription" };
            return Entitlement { usable: false, licensed_devices: 0, reason: Some(reason.into()) };
        }
        let licensed_devices = usable.iter().fold(0u64, |sum, s| sum.saturating_add(s.devices()));
        Entitlement { usable: true, licensed_devices, reason: None }
    }
}

/// How many devices `user_id` may have registered: none when billing is
/// not enforced for the user (enforcement off, or the partner bills them).
pub fn device_limit(ctx: &Ctx<'_>, user_id: &str, settings: &crate::config::Settings) -> Result<Option<u64>, ApiError> {
    if !settings.billing_enforced || partner_bills(ctx, user_id)? {
        return Ok(None);
    }
    Ok(Some(entitlement(ctx, user_id, settings)?.licensed_devices))
}

fn partner_bills(ctx: &Ctx<'_>, user_id: &str) -> Result<bool, ApiError> {
    let Some(user) = storage::read::<storage::UserRecord>(ctx.kv, &storage::user_key(user_id))? else {
        return Ok(false);
    };
    let Some(account_id) = user.account_id else { return Ok(false) };
    Ok(storage::read::<storage::Account>(ctx.kv, &storage::account_key(&account_id))?.is_some_and(|a| a.has_billing))
}

/// Applies the events of subscription `subscription_id` of user `user_id`
/// waiting behind a gap now (the partner resolved it); its state after.
pub(crate) fn resolve_gap_now(ctx: &Ctx<'_>, user_id: &str, subscription_id: &str) -> Result<Subscription, ApiError> {
    let now = ctx.clock.now_unix();
    storage::transact(ctx, |txn| -> Result<Subscription, ApiError> {
        let key = storage::subscription_key(subscription_id);
        let mut state =
            txn.get::<Subscription>(&key)?.filter(|state| state.user_id == user_id).ok_or_else(ApiError::not_found)?;
        if skip_gaps(txn, &mut state, now, time::millis(now), "resolved by the partner")? || state.gap_since.is_some() {
            txn.put(&key, &state);
        }
        Ok(state)
    })
}

/// Records an installation event (`ApplicationInstalled` /
/// `ApplicationUninstalled`) once per `id`, the installation state when it
/// is newer. Refused only without an `id` or a user (`data.userId`).
pub(crate) fn record_installation_event(ctx: &Ctx<'_>, caller: &Caller, body: Object) -> Result<(), ApiError> {
    let fields = Fields::of(&body);
    let now = ctx.clock.now_unix();
    let id = match fields.get("id") {
        None => return Err(ApiError::missing("id")),
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 256 => id.clone(),
        Some(Value::Number(id)) => id.to_string(),
        Some(other) => return Err(ApiError::incorrect("id", other.clone())),
    };
    let data = fields.get("data").and_then(Value::as_object);
    let named = data.and_then(|data| Fields::of(data).get("userId")).or_else(|| fields.get("userId"));
    let user_id = match (named, caller) {
        // A user token names the user when the event does not.
        (None, Caller::User(user)) => user.clone(),
        (None, Caller::Server) => return Err(ApiError::missing("data.userId")),
        (Some(value), _) => input::id_text(value).ok_or_else(|| ApiError::incorrect("data.userId", value.clone()))?,
    };
    if let Caller::User(caller) = caller
        && *caller != user_id
    {
        return Err(ApiError::incorrect("data.userId", user_id));
    }
    let mut problems = Vec::new();
    let found = fields.get("timestamp").map(|value| ("timestamp", value));
    let mut at = time::or_arrival(found, "timestamp", time::millis(now), &mut problems);
    let by_user_token = matches!(caller, Caller::User(_));
    if by_user_token && at > time::millis(now) {
        // A user's own clock may not decide the future.
        problems.push(format!("timestamp {at} is in the future: taken as its arrival"));
        at = time::millis(now);
    }
    let kind = fields.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    let installed = match kind.as_str() {
        "ApplicationInstalled" => Some(true),
        "ApplicationUninstalled" => Some(false),
        other => {
            problems.push(format!("unknown installation event type {other:?}: kept"));
            None
        }
    };
    if data.and_then(|data| Fields::of(data).get("productId")).is_none() {
        problems.push("no data.productId".into());
    }
    let id_hash = storage::sha256_hex(id.as_bytes());
    let event_key = storage::installation_event_key(&user_id, &id_hash);
    let stored = |body: &Object| StoredEvent {
        v: storage::FORMAT,
        received_at: now,
        by_user_token: Some(by_user_token),
        event: Value::Object(body.clone()),
    };
    let legacy_key = storage::legacy_installation_event_key(&id_hash);
    let quota = user_quota(ctx, caller)?;
    storage::transact(ctx, |txn| -> Result<(), ApiError> {
        if txn.get::<StoredEvent>(&event_key)?.is_some() {
            return Ok(());
        }
        // Kept by an earlier format under its id alone: the same event only if it named this user.
        if let Some(legacy) = txn.get::<StoredEvent>(&legacy_key)?
            && installation_user(&legacy.event).is_some_and(|named| named == user_id)
        {
            return Ok(());
        }
        if by_user_token {
            crate::domain::quota::count_against(txn, quota, &user_id, 1)?;
        }
        txn.put(&event_key, &stored(&body));
        txn.emit("installation.event", now, Some(&user_id), json!({ "id": id, "type": kind }));
        for problem in &problems {
            txn.issue(now, Issue::new(Some(&user_id), "installation-event", &id, problem.as_str()));
        }
        if let Some(installed) = installed {
            let key = storage::installation_key(&user_id);
            let current = txn.get::<Installation>(&key)?;
            // The latest event decides, but a user token's never outranks Evotor's own.
            let decides = match &current {
                None => true,
                Some(current) if !by_user_token && current.by_user_token != Some(false) => true,
                Some(current) if by_user_token && current.by_user_token == Some(false) => false,
                Some(current) => at > current.at,
            };
            if decides {
                let by_user_token = Some(by_user_token);
                txn.put(&key, &Installation { v: storage::FORMAT, installed, at, event_id: id.clone(), by_user_token });
            }
        }
        Ok(())
    })
}

/// The user an installation event as stored names (`data.userId`, else `userId`).
fn installation_user(event: &Value) -> Option<String> {
    let named = event.pointer("/data/userId").or_else(|| event.get("userId"))?;
    input::id_text(named)
}

/// Records a legacy billing event (`raw`, its body `body`) once.
pub(crate) fn record_legacy_event(ctx: &Ctx<'_>, caller: &Caller, body: Object, raw: &[u8]) -> Result<(), ApiError> {
    let key = storage::legacy_event_key(&storage::sha256_hex(raw));
    let now = ctx.clock.now_unix();
    let named = ["userUuid", "userId"].iter().find_map(|field| body.get(*field).and_then(Value::as_str));
    let user = match caller {
        Caller::User(user) => Some(user.as_str()),
        Caller::Server => named.filter(|id| input::is_user_id(id)),
    };
    let quota = user_quota(ctx, caller)?;
    storage::transact(ctx, |txn| -> Result<(), ApiError> {
        if txn.get::<StoredEvent>(&key)?.is_none() {
            if let Caller::User(user_id) = caller {
                crate::domain::quota::count_against(txn, quota, user_id, 1)?;
            }
            let by_user_token = Some(matches!(caller, Caller::User(_)));
            let event = Value::Object(body.clone());
            txn.put(&key, &StoredEvent { v: storage::FORMAT, received_at: now, by_user_token, event });
            txn.emit("legacy-event.received", now, user, json!({ "type": body.get("type") }));
            if let (Caller::User(caller), Some(named)) = (caller, named)
                && caller != named
            {
                let issue =
                    Issue::new(Some(caller), "legacy-event", &key[key.len() - 16..], format!("names user {named}"));
                txn.issue(now, issue);
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests;
