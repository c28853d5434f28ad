//! Read-modify-write: [`Txn`], whose every read becomes a check of the
//! commit, and [`transact`], which runs one and retries it on conflict. The
//! changes a transaction announces go to the feed in the same commit.

use super::codec::{FORMAT, StorageError, decode, encode};
use super::grants;
use super::issues::Issue;
use super::keys::FEED_PREFIX;
use super::read::collect;
use super::records::FeedEntry;
use crate::Ctx;
use crate::kv::{Check, Kv, KvError, Write};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeSet;

/// How often [`transact`] tries before giving up on a contended record.
const MAX_ATTEMPTS: u32 = 24;

/// A change to announce in the feed, in the same commit as the change.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: &'static str,
    /// When, Unix seconds.
    pub at: u64,
    /// The Evotor user concerned, if any.
    pub user_id: Option<String>,
    /// The ids that say what changed.
    pub data: Value,
}

/// A read-modify-write unit: every read becomes a check of the commit, so
/// the writes apply only if nothing read has changed meanwhile.
pub struct Txn<'a> {
    kv: &'a dyn Kv,
    checks: Vec<Check>,
    writes: Vec<Write>,
    events: Vec<Event>,
    /// Data issues noted, by key, with how often and when.
    pub(super) issues: std::collections::BTreeMap<String, (Issue, u64, u64)>,
    /// Lines to log once the commit holds.
    pub(super) logs: Vec<String>,
    /// When the transaction runs, Unix seconds.
    now: u64,
    /// Users whose grant inputs this transaction writes (see [`super::grants`]).
    grants_due: BTreeSet<String>,
    /// Keys written whose stored record names a user whose grant inputs change too.
    named_before: Vec<String>,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn").field("checks", &self.checks.len()).field("writes", &self.writes.len()).finish()
    }
}

impl Txn<'_> {
    /// Reads a record and remembers its version as a check.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, StorageError> {
        let entry = self.kv.get(key)?;
        self.checks.push(match &entry {
            Some(entry) => Check::VersionIs(key.to_owned(), entry.version),
            None => Check::Absent(key.to_owned()),
        });
        entry.map(|entry| decode(key, &entry.value)).transpose()
    }

    /// Reads records in one store call (or a few, for many keys) and
    /// remembers each version as a check; answers in the keys' order.
    pub fn get_many<T: DeserializeOwned>(&mut self, keys: &[String]) -> Result<Vec<Option<T>>, StorageError> {
        let entries = crate::kv::read_many(self.kv, keys)?;
        let mut records = Vec::with_capacity(keys.len());
        for (key, entry) in keys.iter().zip(entries) {
            self.checks.push(match &entry {
                Some(entry) => Check::VersionIs(key.clone(), entry.version),
                None => Check::Absent(key.clone()),
            });
            records.push(entry.map(|entry| decode(key, &entry.value)).transpose()?);
        }
        Ok(records)
    }

    /// Writes a record at commit.
    pub fn put<T: Serialize>(&mut self, key: &str, record: &T) {
        let bytes = encode(record);
        self.note_grant_input(key, Some(&bytes));
        self.writes.push(Write::Set(key.to_owned(), bytes));
    }

    /// Deletes a key at commit.
    pub fn delete(&mut self, key: &str) {
        self.note_grant_input(key, None);
        self.writes.push(Write::Delete(key.to_owned()));
    }

    /// Notes the users whose grants a write of `key` (with `value`, or a
    /// delete) makes due for a rebuild before the commit.
    fn note_grant_input(&mut self, key: &str, value: Option<&[u8]>) {
        if let Some(user) = grants::user_in_key(key) {
            self.grants_due.insert(user.to_owned());
        } else if grants::user_in_record(key) {
            self.grants_due.extend(value.and_then(grants::user_named_by));
            self.named_before.push(key.to_owned());
        }
    }

    /// Makes `user_id`'s grants due for a rebuild in this transaction.
    pub(super) fn rebuild_grant_of(&mut self, user_id: &str) {
        self.grants_due.insert(user_id.to_owned());
    }

    /// Rebuilds the grants due: those of the users named by the keys
    /// written, and by the records those keys held before.
    fn rebuild_due_grants(&mut self) -> Result<(), StorageError> {
        let named_before = std::mem::take(&mut self.named_before);
        if !named_before.is_empty() {
            for entry in crate::kv::read_many(self.kv, &named_before)?.into_iter().flatten() {
                self.grants_due.extend(grants::user_named_by(&entry.value));
            }
        }
        for user in std::mem::take(&mut self.grants_due) {
            grants::rebuild(self, &user, self.now)?;
        }
        Ok(())
    }

    /// The values `keys` will hold after this transaction: each one's last
    /// write here, else the store's (read as a check), those in one store call.
    pub(super) fn latest_many(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let mut answer: Vec<Option<Option<Vec<u8>>>> = keys.iter().map(|key| self.written(key)).collect();
        let unread: Vec<String> =
            keys.iter().zip(&answer).filter(|(_, written)| written.is_none()).map(|(key, _)| key.clone()).collect();
        let mut stored = crate::kv::read_many(self.kv, &unread)?.into_iter();
        for (key, slot) in keys.iter().zip(answer.iter_mut()) {
            if slot.is_none() {
                let entry = stored.next().flatten();
                self.checks.push(match &entry {
                    Some(entry) => Check::VersionIs(key.clone(), entry.version),
                    None => Check::Absent(key.clone()),
                });
                *slot = Some(entry.map(|entry| entry.value));
            }
        }
        Ok(answer.into_iter().map(Option::flatten).collect())
    }

    /// The last write of `key` in this transaction: `Some(None)` for a delete.
    fn written(&self, key: &str) -> Option<Option<Vec<u8>>> {
        self.writes.iter().rev().find_map(|write| match write {
            Write::Set(written, value) if written == key => Some(Some(value.clone())),
            Write::Delete(written) if written == key => Some(None),
            _ => None,
        })
    }

    /// Up to `limit` keys under `prefix` after this transaction: the
    /// store's (as committed) with this transaction's writes and deletes.
    pub(super) fn latest_keys(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StorageError> {
        // Deletes here may remove some of the first stored keys: read as many more.
        let deletes = self.writes.iter().filter(|write| matches!(write, Write::Delete(key) if key.starts_with(prefix)));
        let mut keys: BTreeSet<String> =
            self.scan_keys(prefix, None, limit.saturating_add(deletes.count()))?.into_iter().collect();
        for write in &self.writes {
            match write {
                Write::Set(key, _) if key.starts_with(prefix) => keys.insert(key.clone()),
                Write::Delete(key) => keys.remove(key),
                _ => false,
            };
        }
        Ok(keys.into_iter().take(limit).collect())
    }

    /// Announces a change in the feed; the entry commits with the change or not at all.
    pub fn emit(&mut self, kind: &'static str, at: u64, user_id: Option<&str>, data: Value) {
        self.events.push(Event { kind, at, user_id: user_id.map(str::to_owned), data });
    }

    /// Appends the emitted events to the feed with stamped keys: the host
    /// orders them by commit, so feed writers never contend on a shared
    /// record, and an entry exists exactly when its change does.
    fn append_feed(&mut self) {
        for event in std::mem::take(&mut self.events) {
            let entry = FeedEntry {
                v: FORMAT,
                kind: event.kind.to_owned(),
                at: event.at,
                user_id: event.user_id,
                data: event.data,
            };
            self.append(FEED_PREFIX, &entry);
        }
    }

    /// Appends `record` under `prefix` with a stamped key: the host orders
    /// such entries by commit.
    pub fn append<T: Serialize>(&mut self, prefix: &str, record: &T) {
        self.writes.push(Write::SetStamped(prefix.to_owned(), encode(record)));
    }

    /// Keys under `prefix` after `start_after` as committed, up to `limit`.
    /// A scan is not a check: the caller guards the range by a record it
    /// reads with [`Txn::get`] and that every change of the range rewrites.
    pub fn scan_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        Ok(collect(self.kv, prefix, start_after.map(str::to_owned), limit)?.into_iter().map(|(key, _)| key).collect())
    }
}

/// Runs `body` in a [`Txn`] and commits its writes, with the grants of the
/// users whose authorization they change rebuilt ([`super::grants`]); on a
/// conflict (someone changed what it read) runs it again, up to a bound.
/// An `Err` from `body` writes nothing.
pub fn transact<R, E>(ctx: &Ctx<'_>, mut body: impl FnMut(&mut Txn<'_>) -> Result<R, E>) -> Result<R, E>
where
    E: From<StorageError>,
{
    let kv = ctx.kv;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt);
        }
        let mut txn = Txn {
            kv,
            checks: Vec::new(),
            writes: Vec::new(),
            events: Vec::new(),
            issues: std::collections::BTreeMap::new(),
            logs: Vec::new(),
            now: ctx.clock.now_unix(),
            grants_due: BTreeSet::new(),
            named_before: Vec::new(),
        };
        let result = body(&mut txn)?;
        txn.rebuild_due_grants()?;
        txn.write_issues()?;
        txn.append_feed();
        if txn.writes.is_empty() {
            return Ok(result);
        }
        match kv.commit(txn.checks, txn.writes) {
            Ok(()) => {
                for line in txn.logs {
                    eprintln!("{line}");
                }
                return Ok(result);
            }
            Err(KvError::Conflict) => continue,
            // Applied or not: the next attempt re-reads and finds out. A
            // commit that was applied makes the rerun a re-delivery, which
            // stores nothing twice; one that was not is simply made again.
            Err(KvError::OutcomeUnknown(why)) => {
                eprintln!("kv commit outcome unknown ({why}); re-reading before trying again");
                continue;
            }
            Err(err) => return Err(StorageError::Kv(err).into()),
        }
    }
    Err(StorageError::Kv(KvError::Unavailable("too much contention on the same records".into())).into())
}

/// Waits a random time before retry `attempt`, growing to at most 32 ms, so
/// writers racing for one record spread out instead of colliding again.
fn backoff(attempt: u32) {
    let ceiling_ms = 1u64 << attempt.min(5);
    let mut random = [0u8; 2];
    let jitter = if getrandom::fill(&mut random).is_ok() { u64::from(u16::from_le_bytes(random)) } else { 0 };
    std::thread::sleep(std::time::Duration::from_micros(jitter % (ceiling_ms * 1000)));
}
