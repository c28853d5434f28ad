//! Erasing everything stored for one Evotor user (a merchant's request
//! under 152-FZ or the GDPR): `DELETE /partner/v1/users/{userId}/data`.
//!
//! First the user's deliveries stop: every token issued to it is revoked,
//! and the erasure is marked (`erasing/{userId}`), in one commit. A write
//! for the user reads the mark in its own transaction ([`refuse_while_erasing`]):
//! one authorized before that commit but committing after it conflicts
//! with it, is retried, and is refused then; so nothing lands behind the
//! erasure, whatever credential brought it. The mark goes with the last step.
//!
//! What goes: the stores the user owns with their documents, receipt
//! indexes, catalogs and the order of their events; the user's terminals
//! and employees; its subscriptions with their events, and its events kept
//! beside another user's; its receipts, installation events (earlier
//! formats too), legacy billing events and documents kept apart; every
//! event taken that is the user's or names it; its data issues and those
//! of others that name it; its push notifications; its cloud token, its user record and every
//! token issued to it (a linked partner account stays, unlinked). The
//! change feed keeps its entries (ids, no content) and gets one
//! `user.purged`. [`LAYOUTS`] says, for each key layout of the store, how
//! it is erased or why it is kept.
//!
//! A user's data can outgrow one request, so a call erases at most
//! [`BUDGET`] records and says whether it is done; calling again goes on
//! where it stopped (every step is idempotent, the full scans resume from a
//! cursor kept under `meta/`).

use crate::Ctx;
use crate::domain::documents::ReceiptRecord;
use crate::domain::tokens;
use crate::domain::transact;
use crate::errors::ApiError;
use crate::storage::{self, Account, EntityRecord, IssueRecord, UserRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Most records one call erases.
pub const BUDGET: usize = 20_000;
/// Keys deleted in one commit.
const CHUNK: usize = 1000;

/// How far an erasure has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Records erased by this call.
    pub deleted: usize,
    /// Whether nothing of the user is left.
    pub complete: bool,
}

/// Where the scans of the shared key spaces stopped (`meta/purge/{user}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cursor {
    v: u32,
    /// `receipts/` scanned up to this key.
    receipts_after: Option<String>,
    receipts_done: bool,
    /// `issues/` scanned up to this key.
    issues_after: Option<String>,
    issues_done: bool,
    /// The other shared key spaces ([`SCANS`]), by prefix: scanned up to
    /// this key, or through (`None` in the map: not started).
    #[serde(default)]
    scans: std::collections::BTreeMap<String, Scanned>,
}

/// How far the scan of one shared key space came.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Scanned {
    after: Option<String>,
    done: bool,
}

/// How each key layout of the store (the table in `storage`'s docs) is
/// erased for a user, or why it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))] // the record of the steps; a test holds it against the store
enum Erasure {
    /// Under `user/{userId}/`, deleted last.
    UnderUser,
    /// The user's own record, or a token issued to it: deleted (tokens first of all).
    UserRecord,
    /// Under a store the user owns, deleted with the store.
    OwnedStore,
    /// Of an entity the user owns, deleted with it.
    OwnedEntity,
    /// Of a subscription the user owns, deleted with it.
    OwnedSubscription,
    /// Found by a scan of a shared key space, matching the user.
    Scanned,
    /// Kept: it holds nothing of the user (the reason is in the table).
    Kept(&'static str),
}

/// Every key layout of the store and its erasure; a test holds it against
/// the table in `storage`'s docs, so a new layout cannot miss its step.
#[cfg_attr(not(test), allow(dead_code))]
const LAYOUTS: &[(&str, Erasure)] = &[
    ("users/{userId}", Erasure::UserRecord),
    ("erasing/{userId}", Erasure::UserRecord),
    ("user/{userId}/cloud-token", Erasure::UnderUser),
    ("accounts/{accountId}", Erasure::Kept("the partner's own account: it stays, unlinked from the user")),
    ("logins/{sha256(lowercase login)}", Erasure::Kept("the partner account's login, which stays")),
    ("tokens/{sha256(token)}", Erasure::UserRecord),
    ("owners/{kind}/{uuid}", Erasure::OwnedEntity),
    ("user/{userId}/{kind}/{uuid}", Erasure::UnderUser),
    ("subs/{subscriptionId}/state", Erasure::OwnedSubscription),
    ("subs/{subscriptionId}/event/{seq:010}", Erasure::OwnedSubscription),
    ("subs/{subscriptionId}/foreign/{userId}/{seq:010}", Erasure::Scanned),
    ("user/{userId}/sub/{subscriptionId}", Erasure::UnderUser),
    ("user/{userId}/device-order", Erasure::UnderUser),
    ("user/{userId}/installation", Erasure::UnderUser),
    ("user/{userId}/installs/{sha256(id)}", Erasure::UnderUser),
    ("installs/{sha256(id)}", Erasure::Scanned),
    ("legacy-events/{sha256(body)}", Erasure::Scanned),
    ("cat/{store}/p/{uuid}", Erasure::OwnedStore),
    ("cat/{store}/dir", Erasure::OwnedStore),
    ("cat/{store}/bc/{sha256(barcode)[..32]}/{uuid}", Erasure::OwnedStore),
    ("cat/{store}/kids/{parentUuid}/{uuid}", Erasure::OwnedStore),
    ("cat/{store}/orphan/{uuid}", Erasure::OwnedStore),
    ("cat/{store}/pub/pending/{uuid}", Erasure::OwnedStore),
    ("cat/{store}/pub/task/{taskId}", Erasure::OwnedStore),
    ("cat/{store}/pub/state", Erasure::OwnedStore),
    ("cat/{store}/pub/conflict/{uuid}", Erasure::OwnedStore),
    (
        "pub/due/{store}",
        Erasure::Kept("a store id with publication work; the next run drops it once the store has none"),
    ),
    ("docs/{store}/doc/{id}", Erasure::OwnedStore),
    ("docs/{store}/part/{id}/{n:04}", Erasure::OwnedStore),
    ("user/{userId}/foreign-parts/{store}/{id}/{n:04}", Erasure::UnderUser),
    ("user/{userId}/foreign-by-date/{closeDate ms:013}/{store}/{id}", Erasure::UnderUser),
    ("docs/{store}/by-date/{closeDate ms:013}.{id}", Erasure::OwnedStore),
    ("docs/{store}/by-type/{type}/{closeDate ms:013}.{id}", Erasure::OwnedStore),
    ("user/{userId}/foreign-docs/{store}/{id}", Erasure::UnderUser),
    ("user/{userId}/usage", Erasure::UnderUser),
    ("receipts/{sha256(event id)[..32]}/{userId}", Erasure::Scanned),
    ("rcpts/{store}/by-date/{dateTime ms:013}.{sha256(event id)[..32]}.{userId}", Erasure::OwnedStore),
    (
        "events/seen/{sha256(type, id)[..32]}",
        Erasure::Kept(
            "a digest, a time and an outcome: nothing of the event; it keeps a late re-delivery from coming back",
        ),
    ),
    ("events/log/{stamp}", Erasure::Scanned),
    ("events/order/product/{store}/{uuid}", Erasure::OwnedStore),
    ("feed/{stamp}", Erasure::Kept("ids only, no content; partner systems' positions depend on it")),
    ("issues/{sha256(user, store, entity, id, problem)[..32]}", Erasure::Scanned),
    ("sync/users/{userId}", Erasure::UserRecord),
    ("sync/feed", Erasure::Kept("a position in the application's feed, of no user")),
    ("sync/next-user", Erasure::Kept("a position among user ids: the next run goes on after it")),
    ("meta/{name}", Erasure::Kept("service records; the erasure's own cursor is deleted when it completes")),
    ("publisher/token", Erasure::Kept("the application's publisher token, of no user")),
    ("user/{userId}/push/{id}", Erasure::UnderUser),
    ("user/{userId}/push-keys/{sha256(key)}", Erasure::UnderUser),
    ("push/id/{id}", Erasure::OwnedEntity),
    ("push/open/{id}", Erasure::OwnedEntity),
];

/// The heads of what lives under a store the user owns.
const STORE_HEADS: [&str; 4] = ["docs", "cat", "rcpts", "events/order/product"];

/// A shared key space scanned for a user's records (besides `receipts/`
/// and `issues/`): its prefix and whether an entry is the user's.
struct SharedScan {
    prefix: &'static str,
    matches: fn(user_id: &str, key: &str, value: &[u8]) -> bool,
}

/// Whether a record's bytes name the user (its id is `NN-NNNNNNNNNNNNNNN`,
/// so it never appears inside another id by chance).
fn names(user_id: &str, value: &[u8]) -> bool {
    let needle = user_id.as_bytes();
    value.windows(needle.len()).any(|window| window == needle)
}

/// The shared key spaces scanned after receipts and data issues.
const SCANS: [SharedScan; 4] = [
    // Every event taken: those of the user, or naming it.
    SharedScan { prefix: "events/log/", matches: |user, _, value| names(user, value) },
    // Legacy `/user/event` bodies and earlier installation events.
    SharedScan { prefix: "legacy-events/", matches: |user, _, value| names(user, value) },
    SharedScan { prefix: "installs/", matches: |user, _, value| names(user, value) },
    // The user's events kept beside another user's subscription.
    SharedScan { prefix: "subs/", matches: |user, key, _| key.contains(&format!("/foreign/{user}/")) },
];

/// A call's remaining budget.
struct Budget {
    left: usize,
    deleted: usize,
}

impl Budget {
    fn spent(&self) -> bool {
        self.left == 0
    }

    /// Deletes `keys` in commits of [`CHUNK`].
    fn delete(&mut self, ctx: &Ctx<'_>, keys: &[String]) -> Result<(), ApiError> {
        for chunk in keys.chunks(CHUNK) {
            transact(ctx, |txn| -> Result<(), ApiError> {
                for key in chunk {
                    txn.delete(key);
                }
                Ok(())
            })?;
            self.left = self.left.saturating_sub(chunk.len());
            self.deleted += chunk.len();
        }
        Ok(())
    }

    /// Deletes every key under `prefix` while the budget lasts; whether none is left.
    fn delete_prefix(&mut self, ctx: &Ctx<'_>, prefix: &str) -> Result<bool, ApiError> {
        while !self.spent() {
            let keys: Vec<String> =
                storage::collect(ctx.kv, prefix, None, CHUNK.min(self.left))?.into_iter().map(|(key, _)| key).collect();
            if keys.is_empty() {
                return Ok(true);
            }
            self.delete(ctx, &keys)?;
        }
        Ok(storage::collect(ctx.kv, prefix, None, 1)?.is_empty())
    }
}

fn cursor_key(user_id: &str) -> String {
    storage::meta_key(&format!("purge/{user_id}"))
}

/// Erases what is stored for `user_id`, at most [`BUDGET`] records a call.
pub fn purge(ctx: &Ctx<'_>, user_id: &str) -> Result<Progress, ApiError> {
    purge_at_most(ctx, user_id, BUDGET)
}

/// [`purge`] with a budget of `records`.
fn purge_at_most(ctx: &Ctx<'_>, user_id: &str, records: usize) -> Result<Progress, ApiError> {
    let mut budget = Budget { left: records, deleted: 0 };
    let done = purge_within(ctx, user_id, &mut budget)?;
    if done {
        let now = ctx.clock.now_unix();
        transact(ctx, |txn| -> Result<(), ApiError> {
            txn.delete(&cursor_key(user_id));
            txn.delete(&storage::erasing_key(user_id));
            txn.emit("user.purged", now, Some(user_id), json!({ "userId": user_id }));
            Ok(())
        })?;
    }
    Ok(Progress { deleted: budget.deleted, complete: done })
}

/// Within a transaction that writes for `user_id`: refuses it while the
/// user's data is being erased. The mark is read through the transaction,
/// so a commit that races the erasure's first one conflicts and is retried.
pub fn refuse_while_erasing(txn: &mut storage::Txn<'_>, user_id: &str) -> Result<(), ApiError> {
    match txn.get::<u64>(&storage::erasing_key(user_id))? {
        Some(_) => Err(ApiError::being_erased(user_id)),
        None => Ok(()),
    }
}

/// The steps, each idempotent; `true` once every one is through.
fn purge_within(ctx: &Ctx<'_>, user_id: &str, budget: &mut Budget) -> Result<bool, ApiError> {
    // First the user's deliveries stop: every token issued to it revoked, and the erasure marked, in one commit.
    let now = ctx.clock.now_unix();
    transact(ctx, |txn| -> Result<(), ApiError> {
        let mark = storage::erasing_key(user_id);
        if txn.get::<u64>(&mark)?.is_none() {
            txn.put(&mark, &now);
        }
        let key = storage::user_key(user_id);
        if let Some(mut user) = txn.get::<UserRecord>(&key)?
            && !user.tokens.is_empty()
        {
            tokens::revoke_all(txn, &mut user);
            txn.put(&key, &user);
        }
        Ok(())
    })?;
    // The stores the user owns, with what lives under them; then its terminals and employees.
    for kind in ["store", "device", "employee"] {
        let prefix = storage::entities_prefix(user_id, kind);
        for (key, entry) in storage::scan_all(ctx.kv, &prefix)? {
            let record: EntityRecord = storage::decode(&key, &entry.value)?;
            let uuid = record.uuid.to_ascii_lowercase();
            if kind == "store" {
                for head in STORE_HEADS {
                    if !budget.delete_prefix(ctx, &format!("{head}/{uuid}/"))? {
                        return Ok(false);
                    }
                }
            }
            let owner_key = storage::owner_key(kind, &uuid);
            let owned =
                storage::read::<storage::OwnerIndex>(ctx.kv, &owner_key)?.is_some_and(|owner| owner.user_id == user_id);
            let mut keys = vec![key];
            if owned {
                keys.push(owner_key);
            }
            budget.delete(ctx, &keys)?;
            if budget.spent() {
                return Ok(false);
            }
        }
    }
    // Its subscriptions and their events.
    let prefix = storage::user_subscriptions_prefix(user_id);
    for (key, _) in storage::scan_all(ctx.kv, &prefix)? {
        let id = key.strip_prefix(&prefix).unwrap_or_default().to_owned();
        let state = storage::read::<crate::domain::billing::Subscription>(ctx.kv, &storage::subscription_key(&id))?;
        if state.is_some_and(|state| state.user_id == user_id) && !budget.delete_prefix(ctx, &format!("subs/{id}/"))? {
            return Ok(false);
        }
        budget.delete(ctx, &[key])?;
        if budget.spent() {
            return Ok(false);
        }
    }
    // Its receipts and data issues, found by a scan of each shared key space.
    let mut cursor = storage::read::<Cursor>(ctx.kv, &cursor_key(user_id))?.unwrap_or_default();
    let suffix = format!("/{user_id}");
    let receipt_of_user = |key: &str, value: &[u8]| -> Result<bool, ApiError> {
        // `receipts/{hash}/{user}`, or `receipts/{hash}` as earlier formats kept them.
        if key.ends_with(&suffix) {
            return Ok(true);
        }
        let legacy = key.strip_prefix("receipts/").is_some_and(|rest| !rest.contains('/'));
        Ok(legacy && storage::decode::<ReceiptRecord>(key, value)?.user_id == user_id)
    };
    // The user's data issues, and another user's that name it.
    let issue_of_user = |key: &str, value: &[u8]| -> Result<bool, ApiError> {
        Ok(storage::decode::<IssueRecord>(key, value)?.user_id.as_deref() == Some(user_id) || names(user_id, value))
    };
    let mut scanned =
        scan_delete(ctx, budget, "receipts/", &mut cursor.receipts_after, &mut cursor.receipts_done, receipt_of_user)
            .and_then(|receipts| match receipts {
                true => scan_delete(
                    ctx,
                    budget,
                    storage::ISSUES_PREFIX,
                    &mut cursor.issues_after,
                    &mut cursor.issues_done,
                    issue_of_user,
                ),
                false => Ok(false),
            });
    for scan in &SCANS {
        if !matches!(scanned, Ok(true)) {
            break;
        }
        let position = cursor.scans.entry(scan.prefix.to_owned()).or_default();
        let matches = |key: &str, value: &[u8]| Ok(key.starts_with(scan.prefix) && (scan.matches)(user_id, key, value));
        scanned = scan_delete(ctx, budget, scan.prefix, &mut position.after, &mut position.done, matches);
    }
    // Where the scans stopped is kept even when a step failed: the next call goes on from there.
    cursor.v = storage::FORMAT;
    transact(ctx, |txn| -> Result<(), ApiError> {
        txn.put(&cursor_key(user_id), &cursor);
        Ok(())
    })?;
    if !scanned? {
        return Ok(false);
    }
    // Its push notifications, each with its index entries.
    let prefix = crate::domain::push::user_prefix(user_id);
    loop {
        let page = storage::collect(ctx.kv, &prefix, None, CHUNK / 3)?;
        if page.is_empty() {
            break;
        }
        // The index entries before the record: a call that stops between them finds the record again.
        let keys: Vec<String> = page
            .into_iter()
            .flat_map(|(key, _)| {
                let id = key.strip_prefix(&prefix).unwrap_or_default().to_owned();
                crate::domain::push::index_keys(&id).into_iter().chain([key])
            })
            .collect();
        budget.delete(ctx, &keys)?;
        if budget.spent() {
            return Ok(false);
        }
    }
    // Last, what names the user itself: everything under `user/{id}/`, its tokens, its record.
    if !budget.delete_prefix(ctx, &format!("user/{user_id}/"))? {
        return Ok(false);
    }
    transact(ctx, |txn| -> Result<(), ApiError> {
        let key = storage::user_key(user_id);
        if let Some(mut user) = txn.get::<UserRecord>(&key)? {
            tokens::revoke_all(txn, &mut user);
            if let Some(account_id) = &user.account_id
                && let Some(mut account) = txn.get::<Account>(&storage::account_key(account_id))?
            {
                account.user_id = None;
                txn.put(&storage::account_key(account_id), &account);
            }
            txn.delete(&key);
        }
        txn.delete(&storage::sync_user_key(user_id));
        Ok(())
    })?;
    Ok(true)
}

/// Scans `prefix` from `after`, deleting each entry `matches` picks, while
/// the budget lasts; `done` once the scan reached the end.
fn scan_delete(
    ctx: &Ctx<'_>,
    budget: &mut Budget,
    prefix: &str,
    after: &mut Option<String>,
    done: &mut bool,
    matches: impl Fn(&str, &[u8]) -> Result<bool, ApiError>,
) -> Result<bool, ApiError> {
    // Scanning costs too: a budget unit reads this many entries.
    const READS_PER_UNIT: usize = 10;
    while !*done && !budget.spent() {
        let entries = storage::collect(ctx.kv, prefix, after.clone(), CHUNK)?;
        let Some((last, _)) = entries.last() else {
            *done = true;
            break;
        };
        let last = last.clone();
        let mut doomed = Vec::new();
        for (key, entry) in &entries {
            if matches(key, &entry.value)? {
                doomed.push(key.clone());
            }
        }
        budget.delete(ctx, &doomed)?;
        budget.left = budget.left.saturating_sub(entries.len() / READS_PER_UNIT);
        *after = Some(last);
    }
    Ok(*done)
}

#[cfg(test)]
mod tests;
