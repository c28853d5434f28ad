//! Read-modify-write: [`Txn`], whose every read becomes a check of the
//! commit, and [`transact`], which runs one and retries it on conflict. The
//! changes a transaction announces go to the feed in the same commit, its
//! data issues are counted in it, and the records derived from what it
//! writes are rebuilt in it, by the rules of a [`CommitHook`].

use super::codec::{StorageError, decode, encode};
use super::feed::{self, FeedEntry};
use super::issues::{self, Issue, Noted};
use super::keys::FEED_PREFIX;
use super::read::collect;
use super::records::IssueRecord;
use crate::Ctx;
use crate::kv::{Check, Kv, KvError, Write};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeSet;

/// How often [`transact`] tries before giving up on a contended record.
const MAX_ATTEMPTS: u32 = 24;

/// Whose derived records a write makes due for a rebuild before the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due<'k> {
    /// Nobody's: the key feeds no derived record.
    Nobody,
    /// The user the key names.
    User(&'k str),
    /// The user the record under the key names, both the one written and
    /// the one stored before ([`CommitHook::named_by`] reads them).
    NamedByRecord,
}

/// The rules of records derived from others, which every commit that
/// writes their inputs rebuilds before it commits: storage calls them,
/// the layer above holds them. A derived record belongs to a user, and the
/// hook says which writes make a user's due and rebuilds them.
pub trait CommitHook {
    /// Whose derived records a write (or delete) of `key` makes due.
    fn due<'k>(&self, key: &'k str) -> Due<'k>;
    /// The user a record stored under a [`Due::NamedByRecord`] key names.
    fn named_by(&self, value: &[u8]) -> Option<String>;
    /// Rebuilds, inside `txn`, the derived records of `user_id` as of `now`
    /// (Unix seconds), from the transaction's writes over the store.
    fn rebuild(&self, txn: &mut Txn<'_>, user_id: &str, now: u64) -> Result<(), StorageError>;
}

/// The hook of transactions whose writes feed no derived record, such as
/// service records (`meta/…`): it makes nobody due.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl CommitHook for NoHook {
    fn due<'k>(&self, _key: &'k str) -> Due<'k> {
        Due::Nobody
    }
    fn named_by(&self, _value: &[u8]) -> Option<String> {
        None
    }
    fn rebuild(&self, _txn: &mut Txn<'_>, _user_id: &str, _now: u64) -> Result<(), StorageError> {
        Ok(())
    }
}

/// A read-modify-write unit: every read becomes a check of the commit, so
/// the writes apply only if nothing read has changed meanwhile.
pub struct Txn<'a> {
    kv: &'a dyn Kv,
    checks: Vec<Check>,
    writes: Vec<Write>,
    /// The changes to announce in the feed, in the same commit as the changes.
    events: Vec<FeedEntry>,
    /// Data issues noted.
    issues: Noted,
    /// Lines to log once the commit holds.
    logs: Vec<String>,
    /// When the transaction runs, Unix seconds.
    now: u64,
    /// The rules of the derived records this transaction's writes feed.
    hook: &'a dyn CommitHook,
    /// Users whose derived records this transaction makes due.
    due: BTreeSet<String>,
    /// Keys written whose stored record names a user whose derived records are due too.
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
        self.note_due(key, Some(&bytes));
        self.writes.push(Write::Set(key.to_owned(), bytes));
    }

    /// Deletes a key at commit.
    pub fn delete(&mut self, key: &str) {
        self.note_due(key, None);
        self.writes.push(Write::Delete(key.to_owned()));
    }

    /// Notes the users whose derived records a write of `key` (with
    /// `value`, or a delete) makes due for a rebuild before the commit.
    fn note_due(&mut self, key: &str, value: Option<&[u8]>) {
        let hook = self.hook;
        match hook.due(key) {
            Due::Nobody => {}
            Due::User(user) => {
                self.due.insert(user.to_owned());
            }
            Due::NamedByRecord => {
                self.due.extend(value.and_then(|value| hook.named_by(value)));
                self.named_before.push(key.to_owned());
            }
        }
    }

    /// Makes `user_id`'s derived records due for a rebuild in this transaction.
    pub fn make_due(&mut self, user_id: &str) {
        self.due.insert(user_id.to_owned());
    }

    /// Rebuilds the derived records due: those of the users named by the
    /// keys written, and by the records those keys held before.
    fn rebuild_due(&mut self) -> Result<(), StorageError> {
        let hook = self.hook;
        let named_before = std::mem::take(&mut self.named_before);
        if !named_before.is_empty() {
            for entry in crate::kv::read_many(self.kv, &named_before)?.into_iter().flatten() {
                self.due.extend(hook.named_by(&entry.value));
            }
        }
        for user in std::mem::take(&mut self.due) {
            hook.rebuild(self, &user, self.now)?;
        }
        Ok(())
    }

    /// Notes a data issue; it is counted in the same commit as the change
    /// that carried it, and logged when it is first seen.
    pub fn issue(&mut self, now: u64, issue: Issue) {
        self.issues.note(now, issue);
    }

    /// How many distinct data issues this transaction noted so far.
    pub fn noted_issues(&self) -> usize {
        self.issues.len()
    }

    /// Writes the noted data issues (grouped past
    /// [`issues::MAX_ISSUES_PER_COMMIT`]): each read (a check) and counted up.
    fn write_issues(&mut self) -> Result<(), StorageError> {
        for (key, (issue, count, now)) in std::mem::take(&mut self.issues).grouped() {
            let known = self.get::<IssueRecord>(&key)?;
            let (record, line) = issues::counted(known, issue, count, now);
            self.logs.extend(line);
            self.put(&key, &record);
        }
        Ok(())
    }

    /// The values `keys` will hold after this transaction: each one's last
    /// write here, else the store's (read as a check), those in one store call.
    pub fn latest_many(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
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
    pub fn latest_keys(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StorageError> {
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
        self.events.push(FeedEntry { kind: kind.to_owned(), at, user_id: user_id.map(str::to_owned), data });
    }

    /// Appends the emitted events to the feed, in one record (or as few as
    /// [`feed::records`] makes) with a stamped key: the host orders them by
    /// commit, so feed writers never contend on a shared record, and an
    /// entry exists exactly when its change does.
    fn append_feed(&mut self) -> Result<(), StorageError> {
        let entries = std::mem::take(&mut self.events);
        let records =
            feed::records(entries).ok_or(StorageError::Kv(KvError::TooLarge("feed entries of one commit")))?;
        for record in records {
            self.writes.push(Write::SetStamped(FEED_PREFIX.to_owned(), record));
        }
        Ok(())
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

/// Runs `body` in a [`Txn`] and commits its writes, with the records
/// derived from them rebuilt by `hook`'s rules in the same commit; on a
/// conflict (someone changed what it read) runs it again, up to a bound.
/// An `Err` from `body` writes nothing.
pub fn transact<R, E>(
    ctx: &Ctx<'_>,
    hook: &dyn CommitHook,
    mut body: impl FnMut(&mut Txn<'_>) -> Result<R, E>,
) -> Result<R, E>
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
            issues: Noted::default(),
            logs: Vec::new(),
            now: ctx.clock.now_unix(),
            hook,
            due: BTreeSet::new(),
            named_before: Vec::new(),
        };
        let result = body(&mut txn)?;
        txn.rebuild_due()?;
        txn.write_issues()?;
        txn.append_feed()?;
        if txn.writes.is_empty() {
            return Ok(result);
        }
        match kv.commit(txn.checks, txn.writes) {
            Ok(()) => {
                for line in txn.logs {
                    evogate_plugin::log::warn(&line);
                }
                return Ok(result);
            }
            Err(KvError::Conflict) => continue,
            // Applied or not: the next attempt re-reads and finds out. A
            // commit that was applied makes the rerun a re-delivery, which
            // stores nothing twice; one that was not is simply made again.
            Err(KvError::OutcomeUnknown(why)) => {
                evogate_plugin::log::warn(&format!(
                    "kv commit outcome unknown ({why}); re-reading before trying again"
                ));
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
