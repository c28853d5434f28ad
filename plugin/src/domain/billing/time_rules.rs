//! Subscriptions read as of now, and the rules that depend on time alone:
//! a gap that waited past `billing_gap_timeout_secs` is skipped when it is
//! read, and a subscription that lapsed is announced once.

use super::recording::skip_gaps;
use super::state::{Status, Subscription};
use crate::domain::transact;
use crate::errors::ApiError;
use crate::storage::{self, StorageError};
use crate::{Ctx, time};
use serde_json::json;

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
    transact(ctx, |txn| -> Result<Option<Subscription>, ApiError> {
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
        let lapsed = transact(ctx, |txn| -> Result<bool, ApiError> {
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
