//! The grant rules: which writes feed a token's [`Grant`], how it is built
//! from the records, when it is trusted. [`Grants`] is the commit hook
//! that rebuilds grants in every commit that changes their inputs, and
//! [`transact`] the domain's transaction, which runs with it.

use crate::Ctx;
use crate::storage::{self, Account, AccountGrant, CommitHook, Due, Grant, StorageError, TokenIndex, Txn, UserRecord};
use serde::Deserialize;
use serde_json::Value;

/// The grant format this build writes and trusts.
pub const GRANT_FORMAT: u32 = 1;

/// How long a grant is trusted after it was built, in seconds.
pub const GRANT_MAX_AGE_SECS: u64 = 60;

/// The most subscriptions a grant copies; a user with more is decided
/// from the records (the grant says so).
pub const MAX_GRANT_SUBSCRIPTIONS: usize = 16;

/// Runs `body` in a storage transaction ([`storage::transact`]) whose
/// commit rebuilds the grants of the users whose authorization its writes
/// change ([`Grants`]). Every transaction of the domain and the endpoints
/// runs through it.
pub fn transact<R, E>(ctx: &Ctx<'_>, body: impl FnMut(&mut Txn<'_>) -> Result<R, E>) -> Result<R, E>
where
    E: From<StorageError>,
{
    storage::transact(ctx, &Grants, body)
}

/// The commit hook of grants: a write of a user's record, installation or
/// subscription marker makes that user's grants due; a write of an account
/// or a subscription's state, those of the user the record names before
/// and after. The commit rebuilds them from its own writes over the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Grants;

impl CommitHook for Grants {
    fn due<'k>(&self, key: &'k str) -> Due<'k> {
        if let Some(user) = user_in_key(key) {
            Due::User(user)
        } else if user_in_record(key) {
            Due::NamedByRecord
        } else {
            Due::Nobody
        }
    }

    fn named_by(&self, value: &[u8]) -> Option<String> {
        user_named_by(value)
    }

    fn rebuild(&self, txn: &mut Txn<'_>, user_id: &str, now: u64) -> Result<(), StorageError> {
        rebuild(txn, user_id, now)
    }
}

/// Whether `grant` may decide a request at `now` (Unix seconds).
pub fn trusted(grant: &Grant, now: u64) -> bool {
    grant.format == GRANT_FORMAT
        && now.saturating_sub(grant.built_at) < GRANT_MAX_AGE_SECS
        && grant.built_at <= now.saturating_add(GRANT_MAX_AGE_SECS)
}

/// A linked account's state as a grant holds it: an account that is gone
/// or disabled authorizes nothing.
pub fn account_grant(account: Option<&Account>) -> AccountGrant {
    match account {
        Some(account) if !account.disabled => AccountGrant { usable: true, has_billing: account.has_billing },
        _ => AccountGrant { usable: false, has_billing: false },
    }
}

/// The user a write to `key` changes the grant inputs of, when the key names it.
fn user_in_key(key: &str) -> Option<&str> {
    if let Some(user) = key.strip_prefix(storage::USERS_PREFIX) {
        return Some(user);
    }
    let (user, _) = key.strip_prefix("user/")?.split_once('/')?;
    (key == storage::installation_key(user) || key.starts_with(&storage::user_subscriptions_prefix(user)))
        .then_some(user)
}

/// Whether a write to `key` changes the grant inputs of the user its
/// record names (before or after): an account, a subscription's state.
fn user_in_record(key: &str) -> bool {
    let subscription = key.strip_prefix("subs/").and_then(|rest| rest.split_once('/')).map(|(id, _)| id);
    key.starts_with(storage::ACCOUNTS_PREFIX) || subscription.is_some_and(|id| key == storage::subscription_key(id))
}

/// The user a stored account or subscription state names.
fn user_named_by(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Named {
        user_id: Option<String>,
    }
    serde_json::from_slice::<Named>(bytes).ok()?.user_id
}

/// Where grants are built from: a transaction (its writes over the store,
/// every read a check) or the store as committed.
trait Source {
    /// The values of `keys`, in their order.
    fn values(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StorageError>;
    /// Up to `limit` keys under `prefix`, in order.
    fn keys(&mut self, prefix: &str, limit: usize) -> Result<Vec<String>, StorageError>;
}

impl Source for Txn<'_> {
    fn values(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        self.latest_many(keys)
    }
    fn keys(&mut self, prefix: &str, limit: usize) -> Result<Vec<String>, StorageError> {
        self.latest_keys(prefix, limit)
    }
}

#[cfg(any(test, feature = "testing"))]
impl Source for &dyn crate::kv::Kv {
    fn values(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        Ok(crate::kv::read_many(*self, keys)?.into_iter().map(|entry| entry.map(|entry| entry.value)).collect())
    }
    fn keys(&mut self, prefix: &str, limit: usize) -> Result<Vec<String>, StorageError> {
        Ok(storage::collect(*self, prefix, None, limit)?.into_iter().map(|(key, _)| key).collect())
    }
}

/// The token records of `user_id` (key and record) with their grants as
/// `source` makes them at `now`: the tokens the user's record lists whose
/// records exist and name the user.
fn build(source: &mut impl Source, user_id: &str, now: u64) -> Result<Vec<(String, TokenIndex)>, StorageError> {
    let key = storage::user_key(user_id);
    let Some(bytes) = source.values(std::slice::from_ref(&key))?.pop().flatten() else { return Ok(Vec::new()) };
    let Ok(user) = storage::decode::<UserRecord>(&key, &bytes) else { return Ok(Vec::new()) };
    if user.tokens.is_empty() {
        return Ok(Vec::new());
    }
    let mut keys: Vec<String> = user.tokens.iter().map(|issued| storage::token_key(&issued.hash)).collect();
    keys.push(storage::installation_key(user_id));
    keys.extend(user.account_id.as_deref().map(storage::account_key));
    let mut found = source.values(&keys)?;
    let account = user.account_id.as_ref().map(|_| found.pop().flatten());
    let installation = found.pop().flatten();
    let prefix = storage::user_subscriptions_prefix(user_id);
    let markers = source.keys(&prefix, MAX_GRANT_SUBSCRIPTIONS + 1)?;
    let mut partial = markers.len() > MAX_GRANT_SUBSCRIPTIONS;
    let mut subscriptions = Vec::new();
    if !partial {
        let states: Vec<String> =
            markers.iter().filter_map(|marker| marker.strip_prefix(&prefix)).map(storage::subscription_key).collect();
        for state in source.values(&states)?.into_iter().flatten() {
            match serde_json::from_slice::<Value>(&state) {
                Ok(state) => subscriptions.push(state),
                Err(_) => partial = true,
            }
        }
    }
    let account = match account {
        None => None,
        Some(None) => Some(account_grant(None)),
        Some(Some(bytes)) => match serde_json::from_slice::<Account>(&bytes) {
            Ok(account) => Some(account_grant(Some(&account))),
            Err(_) => {
                partial = true;
                None
            }
        },
    };
    let installation = match installation.map(|bytes| serde_json::from_slice::<Value>(&bytes)).transpose() {
        Ok(installation) => installation,
        Err(_) => {
            partial = true;
            None
        }
    };
    let mut built = Vec::new();
    for (issued, (key, record)) in user.tokens.iter().zip(keys.into_iter().zip(found)) {
        let Some(record) = record else { continue };
        let Ok(mut index) = storage::decode::<TokenIndex>(&key, &record) else { continue };
        if index.user_id != user_id {
            continue;
        }
        index.v = storage::FORMAT;
        index.grant = Some(Grant {
            format: GRANT_FORMAT,
            built_at: now,
            partial,
            token: issued.clone(),
            account,
            tariff: user.tariff.clone(),
            installation: installation.clone(),
            subscriptions: if partial { Vec::new() } else { subscriptions.clone() },
        });
        built.push((key, index));
    }
    Ok(built)
}

/// Rebuilds, inside `txn`, the grants of `user_id`'s tokens from the
/// transaction's writes over the store, as of `now`.
fn rebuild(txn: &mut Txn<'_>, user_id: &str, now: u64) -> Result<(), StorageError> {
    for (key, index) in build(txn, user_id, now)? {
        txn.put(&key, &index);
    }
    Ok(())
}

/// The token records whose grant (of this build's format) differs from
/// what the records make now: none, since every commit that changes the
/// records rebuilds it. For audits of the store.
#[cfg(any(test, feature = "testing"))]
pub fn stale(kv: &dyn crate::kv::Kv) -> Result<Vec<String>, StorageError> {
    let mut stale = Vec::new();
    for (key, entry) in storage::collect(kv, "tokens/", None, usize::MAX)? {
        let Ok(index) = storage::decode::<TokenIndex>(&key, &entry.value) else { continue };
        let Some(grant) = index.grant.filter(|grant| grant.format == GRANT_FORMAT) else { continue };
        let mut source = kv;
        let rebuilt = build(&mut source, &index.user_id, grant.built_at)?;
        let fresh = rebuilt.into_iter().find(|(rebuilt, _)| *rebuilt == key).and_then(|(_, index)| index.grant);
        if fresh.as_ref() != Some(&grant) {
            stale.push(format!("{key}: grant {grant:?}, the records make {fresh:?}"));
        }
    }
    Ok(stale)
}

/// Builds the grant of the token with this hash again unless it is trusted
/// now (the request that found it missing or old decided from the records).
pub fn refresh(ctx: &Ctx<'_>, token_hash: &str) -> Result<(), StorageError> {
    let now = ctx.clock.now_unix();
    transact(ctx, |txn| -> Result<(), StorageError> {
        let Some(index) = txn.get::<TokenIndex>(&storage::token_key(token_hash))? else { return Ok(()) };
        if !index.grant.as_ref().is_some_and(|grant| trusted(grant, now)) {
            txn.make_due(&index.user_id);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{
        account_key, cloud_token_key, device_order_key, installation_event_key, installation_key,
        subscription_event_key, subscription_key, token_key, user_key, user_subscription_key,
    };

    #[test]
    fn the_writes_that_change_a_grant_are_known_by_their_keys() {
        let user = "01-000000000000001";
        for key in [user_key(user), installation_key(user), user_subscription_key(user, "s1")] {
            assert_eq!(user_in_key(&key), Some(user), "{key}");
        }
        let others = [cloud_token_key(user), installation_event_key(user, "h"), device_order_key(user), token_key("h")];
        for key in others {
            assert_eq!(user_in_key(&key), None, "{key}");
            assert!(!user_in_record(&key), "{key}");
        }
        assert!(user_in_record(&account_key("a1")) && user_in_record(&subscription_key("s1")));
        assert!(!user_in_record(&subscription_event_key("s1", 3)));
    }
}
