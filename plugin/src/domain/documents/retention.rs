//! Retention: what outlived `retention_days` is erased a little at a time,
//! by the writes that come after it — a store's own documents and receipts,
//! the documents a user delivered into other users' stores, and the feed and
//! the event log (with each logged event's idempotency marker), so a store
//! that keeps receiving at a steady rate stops growing.

use super::{DocumentType, delete_parts};
use crate::Ctx;
use crate::config::Settings;
use crate::domain::{quota, transact};
use crate::errors::ApiError;
use crate::storage;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

/// Records of each kind a write erases at least, when as many outlived
/// `retention_days`.
const EXPIRED_PER_WRITE: usize = 100;

/// Records of each kind one write erases at most.
const MAX_EXPIRED_PER_WRITE: usize = 1000;

/// How many records of each kind a write that brought `brought` erases at
/// most: twice what it brought (and at least [`EXPIRED_PER_WRITE`]), so
/// erasing outpaces what arrives and a backlog left by a quiet spell (or by
/// records not yet past their time when the write came) drains, and a store
/// that receives at a steady rate stays within `retention_days`.
fn expired_per_write(brought: usize) -> usize {
    brought.saturating_mul(2).clamp(EXPIRED_PER_WRITE, MAX_EXPIRED_PER_WRITE)
}

/// The time of a feed record (the latest of its entries'), read without
/// the rest of it.
#[derive(Deserialize)]
struct FeedTime {
    at: u64,
}

/// What erasing a logged event needs of its record.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoggedEvent {
    id: String,
    #[serde(default)]
    kind: String,
    received_at: u64,
}

/// Unix seconds before which records are past `retention_days` of `days`.
fn cutoff_secs(ctx: &Ctx<'_>, days: u64) -> u64 {
    ctx.clock.now_unix().saturating_sub(days.saturating_mul(86_400))
}

/// Erases the feed records (each a commit's entries) whose entries all
/// arrived more than `retention_days` ago, and the logged events (with
/// their idempotency markers) that did, the oldest first, at most
/// [`expired_per_write`] of each for a write that brought
/// `brought` records, and the data issues past their time when the write
/// noted `noted` new ones ([`expire_issues`]). A call with nothing due
/// reads one key of each. A partner whose feed cursor names an erased entry
/// goes on from the next one; an event delivered again after its record
/// was erased is taken as new.
pub(crate) fn expire_logs(ctx: &Ctx<'_>, settings: &Settings, brought: usize, noted: usize) -> Result<(), ApiError> {
    let Some(days) = settings.retention_days else { return Ok(()) };
    expire_issues(ctx, days, noted)?;
    let cutoff = cutoff_secs(ctx, days);
    let limit = expired_per_write(brought);
    let feed = oldest(ctx, storage::FEED_PREFIX, limit, |key, bytes| {
        Ok(storage::decode::<FeedTime>(key, bytes)?.at < cutoff).map(|due| due.then_some(()))
    })?;
    let log = oldest(ctx, crate::domain::events::LOG_PREFIX, limit, |key, bytes| {
        let event = storage::decode::<LoggedEvent>(key, bytes)?;
        Ok((event.received_at < cutoff).then(|| crate::domain::events::seen_key_of(&event.kind, &event.id)))
    })?;
    if feed.is_empty() && log.is_empty() {
        return Ok(());
    }
    transact(ctx, |txn| -> Result<(), ApiError> {
        for (key, ()) in &feed {
            txn.delete(key);
        }
        for (key, seen) in &log {
            txn.delete(key);
            txn.delete(seen);
        }
        Ok(())
    })
}

/// When a data issue was last seen, read without the rest of it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IssueSeen {
    last_seen: u64,
}

/// Erases data issues last seen more than `days` ago, with a
/// delivery that noted `noted` of them (a delivery that noted none adds
/// none and reads nothing here).
///
/// Issues are keyed by a digest, in no order of time: each call looks at
/// [`expired_per_write`]`(noted)` consecutive issues from a random point
/// (going on from the first when it reaches the last) and erases those past
/// their time. As each call looks at at least twice what its delivery could
/// add, issues past their time are at most about as many as those within
/// it, whatever the rate: the issues stop growing with the rest of the store.
/// An issue seen again after it was erased is noted as new.
fn expire_issues(ctx: &Ctx<'_>, days: u64, noted: usize) -> Result<(), ApiError> {
    if noted == 0 {
        return Ok(());
    }
    let cutoff = cutoff_secs(ctx, days);
    let limit = expired_per_write(noted);
    let mut point = [0u8; 16];
    getrandom::fill(&mut point).map_err(|_| ApiError::internal("no randomness available"))?;
    let from = format!("{}{}", storage::ISSUES_PREFIX, hex::encode(point));
    let mut window = storage::collect(ctx.kv, storage::ISSUES_PREFIX, Some(from), limit)?;
    if window.len() < limit {
        let first = window.first().map(|(key, _)| key.clone());
        for (key, entry) in storage::collect(ctx.kv, storage::ISSUES_PREFIX, None, limit - window.len())? {
            if first.as_ref() == Some(&key) {
                break;
            }
            window.push((key, entry));
        }
    }
    let mut due = Vec::new();
    for (key, entry) in window {
        if storage::decode::<IssueSeen>(&key, &entry.value)?.last_seen < cutoff {
            due.push(key);
        }
    }
    if due.is_empty() {
        return Ok(());
    }
    transact(ctx, |txn| -> Result<(), ApiError> {
        for key in &due {
            // Seen again meanwhile: it stays.
            if txn.get::<IssueSeen>(key)?.is_some_and(|issue| issue.last_seen < cutoff) {
                txn.delete(key);
            }
        }
        Ok(())
    })
}

/// The oldest records under `prefix` (a log with stamped keys) while `due`
/// says they are, at most `limit`, each with what `due` answered. They are
/// read one, then two, four… at a time: one key read when the oldest is not
/// due, and never much more than what is (a feed record holds a commit's
/// entries, kilobytes of them).
fn oldest<T>(
    ctx: &Ctx<'_>,
    prefix: &str,
    limit: usize,
    due: impl Fn(&str, &[u8]) -> Result<Option<T>, storage::StorageError>,
) -> Result<Vec<(String, T)>, ApiError> {
    let (mut expired, mut scan) = (Vec::new(), storage::GrowingScan::new(ctx.kv, prefix, None, 1, limit));
    while expired.len() < limit {
        let records = scan.next(limit - expired.len())?;
        if records.is_empty() {
            break;
        }
        for (key, record) in records {
            match due(&key, &record.value)? {
                Some(value) => expired.push((key, value)),
                None => return Ok(expired),
            }
        }
    }
    Ok(expired)
}

/// Unix milliseconds before which records are past `retention_days` at `now`.
fn retention_cutoff(now: u64, days: u64) -> i64 {
    crate::time::millis(now).saturating_sub(i64::try_from(days.saturating_mul(86_400_000)).unwrap_or(i64::MAX))
}

/// Erases the documents user `user_id` delivered into other users' stores
/// (kept apart) older than `retention_days`, at most [`expired_per_write`]
/// for a write that brought `brought`, as [`expire`] does for a store's own.
pub(super) fn expire_kept_apart(
    ctx: &Ctx<'_>,
    settings: &Settings,
    user_id: &str,
    brought: usize,
) -> Result<(), ApiError> {
    let Some(days) = settings.retention_days else { return Ok(()) };
    let now = ctx.clock.now_unix();
    let cutoff = retention_cutoff(now, days);
    let prefix = storage::foreign_documents_by_date_prefix(user_id);
    // `{ms:013}/{store}/{id}`.
    let expired: Vec<(String, String, String)> = storage::collect(ctx.kv, &prefix, None, expired_per_write(brought))?
        .into_iter()
        .filter_map(|(key, _)| {
            let mut parts = key.strip_prefix(&prefix)?.splitn(3, '/');
            let (at, store, id) = (parts.next()?, parts.next()?, parts.next()?);
            Some((key.clone(), at.to_owned(), format!("{store}/{id}")))
        })
        .take_while(|(_, at, _)| at.parse::<i64>().is_ok_and(|at| at < cutoff))
        .collect();
    if expired.is_empty() {
        return Ok(());
    }
    transact(ctx, |txn| -> Result<(), ApiError> {
        let mut freed = 0u64;
        for (index, _, place) in &expired {
            let (store, id) = place.split_once('/').unwrap_or_default();
            let key = storage::foreign_document_key(store, user_id, id);
            if let Some(document) = txn.get::<DocumentType>(&key)? {
                delete_parts(txn, &storage::foreign_document_parts_prefix(store, user_id, id), document.parts);
                freed += 1;
            }
            txn.delete(&key);
            txn.delete(index);
        }
        quota::give_back(txn, settings, user_id, freed)?;
        let data = json!({ "userId": user_id, "keptApart": expired.len(), "retentionDays": days });
        txn.emit("data.expired", now, Some(user_id), data);
        Ok(())
    })
}

/// Erases the documents and receipts of `store` older than
/// `retention_days` (by close date, receipt date), at most
/// [`expired_per_write`] of each for a write that brought `brought`: each write to a store takes away
/// some of what outlived its time, so a store that keeps receiving data
/// stays within it.
pub(super) fn expire(ctx: &Ctx<'_>, settings: &Settings, store: &str, brought: usize) -> Result<(), ApiError> {
    let Some(days) = settings.retention_days else { return Ok(()) };
    let limit = expired_per_write(brought);
    let now = ctx.clock.now_unix();
    let cutoff = retention_cutoff(now, days);
    let older =
        |position: &str| position.split('.').next().and_then(|ms| ms.parse::<i64>().ok()).is_some_and(|ms| ms < cutoff);
    let documents = storage::documents_by_date_prefix(store);
    let receipts = storage::receipts_by_date_prefix(store);
    let document_positions: Vec<String> = storage::collect(ctx.kv, &documents, None, limit)?
        .into_iter()
        .filter_map(|(key, _)| key.strip_prefix(&documents).map(str::to_owned))
        .take_while(|position| older(position))
        .collect();
    let receipt_positions: Vec<String> = storage::collect(ctx.kv, &receipts, None, limit)?
        .into_iter()
        .filter_map(|(key, _)| key.strip_prefix(&receipts).map(str::to_owned))
        .take_while(|position| older(position))
        .collect();
    if document_positions.is_empty() && receipt_positions.is_empty() {
        return Ok(());
    }
    transact(ctx, |txn| -> Result<(), ApiError> {
        // Whose counted records go, when quotas are counted.
        let mut freed: BTreeMap<String, u64> = BTreeMap::new();
        for position in &document_positions {
            let id = position.split_once('.').map(|(_, id)| id).unwrap_or_default();
            let key = storage::document_key(store, id);
            if let Some(document) = txn.get::<DocumentType>(&key)? {
                txn.delete(&format!("{}{position}", storage::documents_by_type_prefix(store, &document.r#type)));
                delete_parts(txn, &storage::document_parts_prefix(store, id), document.parts);
                *freed.entry(document.user_id).or_default() += 1;
            }
            txn.delete(&key);
            txn.delete(&format!("{documents}{position}"));
        }
        for position in &receipt_positions {
            let mut parts = position.split('.').skip(1);
            let hash = parts.next().unwrap_or_default();
            match parts.next() {
                Some(user_id) => {
                    txn.delete(&storage::receipt_key(hash, user_id));
                    *freed.entry(user_id.to_owned()).or_default() += 1;
                }
                None => txn.delete(&storage::receipt_key_by_hash(hash)),
            }
            txn.delete(&format!("{receipts}{position}"));
        }
        for (user_id, records) in freed {
            quota::give_back(txn, settings, &user_id, records)?;
        }
        let data = json!({
            "storeUuid": store, "documents": document_positions.len(), "receipts": receipt_positions.len(),
            "retentionDays": days,
        });
        txn.emit("data.expired", now, None, data);
        Ok(())
    })
}
