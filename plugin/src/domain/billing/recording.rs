//! Recording billing events in the store: each subscription event once,
//! applied in sequence (a gap waits, then is skipped), events of another
//! user or of a user token Evotor speaks over kept aside; installation
//! events and legacy events, each once.

use super::parsing::{Caller, Event, parse_event};
use super::state::{Installation, MAX_SKIPPED_LISTED, Subscription};
use crate::domain::transact;
use crate::errors::ApiError;
use crate::input::{self, Fields, Object};
use crate::storage::{self, Issue, StorageError, Txn};
use crate::{Ctx, time};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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
        Caller::User(_) => Ok(crate::config::settings(ctx)?.user_quota_records),
        Caller::Server => Ok(None),
    }
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

/// Applies the waiting events past every gap before them; each gap skipped
/// becomes a data issue. Returns whether anything was waiting.
pub(super) fn skip_gaps(
    txn: &mut Txn<'_>,
    state: &mut Subscription,
    now: u64,
    now_ms: i64,
    why: &str,
) -> Result<bool, ApiError> {
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
    transact(ctx, |txn| {
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

/// Applies the events of subscription `subscription_id` of user `user_id`
/// waiting behind a gap now (the partner resolved it); its state after.
pub(crate) fn resolve_gap_now(ctx: &Ctx<'_>, user_id: &str, subscription_id: &str) -> Result<Subscription, ApiError> {
    let now = ctx.clock.now_unix();
    transact(ctx, |txn| -> Result<Subscription, ApiError> {
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
    transact(ctx, |txn| -> Result<(), ApiError> {
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
    transact(ctx, |txn| -> Result<(), ApiError> {
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
