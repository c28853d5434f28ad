//! `user_quota_records`: the records a user's own deliveries store
//! (documents, receipts, stores, terminals, employees, products, billing
//! events), counted in the commits that store them (`user/{id}/usage`), and
//! the 402 1004 past the quota. Every domain module that stores a user's
//! delivery counts through here; retention and erasure give back.

use crate::config::Settings;
use crate::errors::ApiError;
use crate::storage;
use serde::{Deserialize, Serialize};

/// How many records a user's own deliveries stored, counted while
/// `user_quota_records` is set (`user/{id}/usage`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Usage {
    pub(crate) v: u32,
    pub(crate) records: u64,
}

pub(crate) fn usage_key(user_id: &str) -> String {
    format!("user/{user_id}/usage")
}

/// Within the commit that stores `new` records of `user_id`'s delivery
/// (documents, receipts, stores, terminals, employees, products, billing
/// events): counts them, or refuses the whole delivery past the user's
/// quota (402 1004, what the protocol answers a user whose plan does not
/// allow the call).
pub(crate) fn count_usage(
    txn: &mut storage::Txn<'_>,
    settings: &Settings,
    user_id: &str,
    new: usize,
) -> Result<(), ApiError> {
    count_against(txn, settings.user_quota_records, user_id, new)
}

/// Whether `new` more records of `user_id` stay within the user's quota:
/// 402 1004 when they would not. Reads only: a delivery written in several
/// commits is checked whole first.
pub(crate) fn check_quota(
    kv: &dyn crate::kv::Kv,
    settings: &Settings,
    user_id: &str,
    new: usize,
) -> Result<(), ApiError> {
    let Some(quota) = settings.user_quota_records else { return Ok(()) };
    let usage = storage::read::<Usage>(kv, &usage_key(user_id))?.unwrap_or_default();
    if usage.records.saturating_add(new as u64) > quota {
        return Err(ApiError::quota_exceeded(user_id, quota));
    }
    Ok(())
}

/// Within the commit that erases `records` of `user_id` (retention): they
/// count no more, when quotas are counted.
pub(crate) fn give_back(
    txn: &mut storage::Txn<'_>,
    settings: &Settings,
    user_id: &str,
    records: u64,
) -> Result<(), ApiError> {
    if settings.user_quota_records.is_none() {
        return Ok(());
    }
    let key = usage_key(user_id);
    if let Some(mut usage) = txn.get::<Usage>(&key)? {
        usage.records = usage.records.saturating_sub(records);
        txn.put(&key, &usage);
    }
    Ok(())
}

/// [`count_usage`] against `quota` (`None`: not counted).
pub(crate) fn count_against(
    txn: &mut storage::Txn<'_>,
    quota: Option<u64>,
    user_id: &str,
    new: usize,
) -> Result<(), ApiError> {
    let Some(quota) = quota else { return Ok(()) };
    if new == 0 {
        return Ok(());
    }
    let key = usage_key(user_id);
    let mut usage = txn.get::<Usage>(&key)?.unwrap_or_default();
    let after = usage.records.saturating_add(new as u64);
    if after > quota {
        return Err(ApiError::quota_exceeded(user_id, quota));
    }
    usage.v = storage::FORMAT;
    usage.records = after;
    txn.put(&key, &usage);
    Ok(())
}
