//! The decision whether a user token authorizes a request: from the
//! token's grant when it is trusted and complete, else from the records.

use super::grants::{self, account_grant, trusted};
use crate::config::Settings;
use crate::domain::billing::{self, Entitlement, Installation, Subscription};
use crate::domain::tokens;
use crate::errors::ApiError;
use crate::{Ctx, storage};
use serde::Deserialize as _;

/// The Evotor user the token with this hash (SHA-256 of the presented
/// token) acts for. The token must name exactly one user: unknown,
/// revoked or replaced-past-grace token, or a disabled account → 401 1002;
/// past its lifetime → 401 1003. Then the billing guard: the legacy tariff
/// INACTIVE, or (with `billing_enforcement = "evotor"`, for users the
/// partner does not bill itself) no usable subscription or the app
/// uninstalled → 402 1004.
///
/// The token's record carries a copy of everything this decides from (its
/// [`storage::Grant`]), so one read decides; a grant that is missing
/// (records of earlier versions), not trusted now, or incomplete leaves the
/// decision to the records themselves, and a missing or old one is then
/// built again.
pub fn authorize(ctx: &Ctx<'_>, token_hash: &str, settings: &Settings) -> Result<String, ApiError> {
    let Some(index) = storage::read::<storage::TokenIndex>(ctx.kv, &storage::token_key(token_hash))? else {
        return Err(ApiError::unknown_token());
    };
    let now = ctx.clock.now_unix();
    let (grant, decided) = by_grant(&index, now, settings);
    if let Some(decided) = decided {
        return decided.map(|()| index.user_id);
    }
    let decided = decide_by_records(ctx, &index.user_id, token_hash, now, settings);
    if grant.is_none() && !matches!(decided, Err(ApiError { code: 1002, .. })) {
        // The next request decides from the grant. Should this commit fail,
        // nothing is lost: the records decided this one, and the next
        // request tries again.
        let _ = grants::refresh(ctx, token_hash);
    }
    decided.map(|()| index.user_id)
}

/// The decision for the token with this hash, made both ways: from its
/// grant (`None` when it is missing, not trusted now, or leaves it to the
/// records) and from the records; Evotor's error codes.
#[cfg(test)]
pub(crate) fn both_decisions(
    ctx: &Ctx<'_>,
    token_hash: &str,
    settings: &Settings,
) -> (Option<Result<(), u32>>, Result<(), u32>) {
    let Some(index) = storage::read::<storage::TokenIndex>(ctx.kv, &storage::token_key(token_hash)).expect("read")
    else {
        return (None, Err(ApiError::unknown_token().code));
    };
    let now = ctx.clock.now_unix();
    let code = |result: Result<(), ApiError>| result.map_err(|err| err.code);
    (
        by_grant(&index, now, settings).1.map(code),
        code(decide_by_records(ctx, &index.user_id, token_hash, now, settings)),
    )
}

/// The token's grant if it is trusted at `now`, and what it decides
/// (`None`: the records decide).
fn by_grant<'a>(
    index: &'a storage::TokenIndex,
    now: u64,
    settings: &Settings,
) -> (Option<&'a storage::Grant>, Option<Result<(), ApiError>>) {
    let grant = index.grant.as_ref().filter(|grant| trusted(grant, now));
    (grant, grant.and_then(|grant| decide_by_grant(grant, &index.user_id, now, settings)))
}

/// Decides from a trusted grant; `None` when the records must decide (an
/// incomplete grant, a copy this build cannot read, or a subscription that
/// reading would change: see [`Subscription::due_for_update`]).
fn decide_by_grant(
    grant: &storage::Grant,
    user_id: &str,
    now: u64,
    settings: &Settings,
) -> Option<Result<(), ApiError>> {
    if grant.partial {
        return None;
    }
    let installation: Option<Installation> = match &grant.installation {
        None => None,
        Some(value) => Some(Installation::deserialize(value).ok()?),
    };
    let subscriptions =
        grant.subscriptions.iter().map(Subscription::deserialize).collect::<Result<Vec<Subscription>, _>>().ok()?;
    if subscriptions.iter().any(|subscription| subscription.due_for_update(now, settings.gap_timeout_secs)) {
        return None;
    }
    Some(decide(user_id, Some(&grant.token), grant.account, grant.tariff.as_ref(), now, settings, || {
        Ok(Entitlement::of(installation.as_ref(), &subscriptions, now, settings))
    }))
}

/// Decides from the user's records.
fn decide_by_records(ctx: &Ctx<'_>, user_id: &str, hash: &str, now: u64, settings: &Settings) -> Result<(), ApiError> {
    let Some(user) = storage::read::<storage::UserRecord>(ctx.kv, &storage::user_key(user_id))? else {
        return Err(ApiError::unknown_token());
    };
    let issued = user.tokens.iter().find(|issued| issued.hash == hash);
    let account = match &user.account_id {
        None => None,
        Some(account_id) => {
            if settings.billing_enforced {
                // What the billing guard reads next, unless the account says the partner bills the user.
                ctx.kv.prefetch(&[storage::account_key(account_id), storage::installation_key(user_id)]);
            }
            let account = storage::read::<storage::Account>(ctx.kv, &storage::account_key(account_id))?;
            Some(account_grant(account.as_ref()))
        }
    };
    decide(user_id, issued, account, user.tariff.as_ref(), now, settings, || {
        billing::entitlement(ctx, user_id, settings)
    })
}

/// The decision, from its inputs however they were read: the token as the
/// user's record lists it (`None`: not listed), the linked account's state,
/// the legacy tariff, and the user's entitlement, asked for only when the
/// billing guard needs it.
fn decide(
    user_id: &str,
    issued: Option<&storage::IssuedToken>,
    account: Option<storage::AccountGrant>,
    tariff: Option<&storage::Tariff>,
    now: u64,
    settings: &Settings,
    entitlement: impl FnOnce() -> Result<Entitlement, ApiError>,
) -> Result<(), ApiError> {
    let issued = issued.ok_or_else(ApiError::unknown_token)?;
    match tokens::usable(issued, now, settings) {
        tokens::Status::Valid => {}
        tokens::Status::Expired => return Err(ApiError::expired_token()),
        tokens::Status::Unknown => return Err(ApiError::unknown_token()),
    }
    let has_billing = match account {
        None => false,
        Some(account) if account.usable => account.has_billing,
        Some(_) => return Err(ApiError::unknown_token()),
    };
    if tariff.is_some_and(|tariff| !tariff.active) {
        return Err(ApiError::payment_required(user_id));
    }
    if settings.billing_enforced && !has_billing && !entitlement()?.usable {
        return Err(ApiError::payment_required(user_id));
    }
    Ok(())
}
