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
//!
//! | module | what it holds |
//! |---|---|
//! | `parsing` | reading a subscription event ([`parse_event`]), its kind, the [`Caller`] that sent it |
//! | `state` | the [`Subscription`] state machine, the [`Installation`] state |
//! | `recording` | storing subscription, installation and legacy events once, applying them in sequence, gaps, events kept aside |
//! | `time_rules` | subscriptions read as of now, the rules that depend on time alone ([`apply_time_rules`]) |
//! | `entitlement` | what a user may use now ([`Entitlement`], [`device_limit`]) |

mod entitlement;
mod parsing;
mod recording;
mod state;
mod time_rules;

pub use entitlement::{Entitlement, device_limit, entitlement};
pub use parsing::{Caller, parse_event};
pub use recording::record_event;
pub(crate) use recording::{record_installation_event, record_legacy_event, resolve_gap_now};
pub use state::{Installation, Subscription};
// Only tests elsewhere name it: the rest of the crate reads it through a subscription.
#[cfg(test)]
pub use state::Status;
pub(crate) use time_rules::apply_time_rules;
pub use time_rules::{TimeRules, subscriptions_page};

#[cfg(test)]
mod tests;
