//! Reading billing events: a subscription event as far as it can be read
//! ([`parse_event`]), the kind of event whichever vocabulary named it, and
//! who sent it ([`Caller`]).

use crate::errors::ApiError;
use crate::input::{self, Fields, Object};
use crate::time;
use serde_json::Value;

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

/// Where the request came from: the Evotor cloud, or a user's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The server credential (the Evotor cloud).
    Server,
    /// A user token we issued, of this user.
    User(String),
}
