//! What a user may use now: the entitlement the installation state and
//! the usable subscriptions give, and the devices it licenses.

use super::state::{Installation, Subscription};
use super::time_rules::subscriptions;
use crate::errors::ApiError;
use crate::storage;
use crate::{Ctx, time};
use serde::Serialize;

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
