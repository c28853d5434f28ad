//! The states billing events make: a subscription's, as its events
//! applied in sequence make it (the state machine: [`Subscription::apply`],
//! [`Subscription::usable`]), and the app's installation state.

use super::parsing::{Caller, Event, Kind};
use crate::storage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// Most skipped sequence numbers a subscription's state lists.
pub const MAX_SKIPPED_LISTED: usize = 1000;

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
    pub(super) fn new(event: &Event, caller: &Caller) -> Self {
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
    pub(super) fn migrate(&mut self, now: u64) -> bool {
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
    pub(super) fn unapplied(&self) -> Self {
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
