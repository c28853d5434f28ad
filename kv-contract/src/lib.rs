//! The contract of evogate's `kv` interface (WIT `evogate:plugin/kv`), written
//! once for both sides of it: the gateway that implements it and the plugins
//! that call it.
//!
//! - the types a call carries: [`Entry`], [`Check`], [`Write`], [`KvError`];
//! - every limit ([`MAX_KEY_BYTES`] …) and the checks that enforce them
//!   ([`check_key`], [`check_get_many`], [`check_scan`], [`check_commit`]);
//! - the answer rules every store follows: the stamped-key format
//!   ([`stamped_key`], [`stamp_of`], [`resolve`]), the byte budget of a `get-many`
//!   ([`get_many_answer`]) and of a scan page ([`Page`]);
//! - [`MemStore`], the reference in-memory store with exactly those
//!   semantics. It is the gateway's `memory` backend and the store plugins'
//!   native tests run against; [`MemStore::with_short_answers`] makes it
//!   answer as little as the contract allows, so callers' paging loops meet
//!   short pages in tests.
//!
//! No dependencies: plugins compile this crate into their WebAssembly.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

/// Longest key, in bytes (stamped keys: prefix and stamp together).
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Most writes one commit may carry (stamped ones included).
pub const MAX_WRITES_PER_COMMIT: usize = 100_000;
/// Most checks one commit may carry.
pub const MAX_CHECKS_PER_COMMIT: usize = 100_000;
/// Most key and value bytes one commit may carry.
pub const MAX_COMMIT_BYTES: usize = 64 * 1024 * 1024;
/// Largest `limit` a scan may ask for.
pub const MAX_SCAN_LIMIT: u32 = 1000;
/// Most keys one `get-many` may ask for.
pub const MAX_GET_MANY_KEYS: usize = 1000;
/// Soft cap on the value bytes of one scan page or `get-many` answer: past
/// it the answer ends early (always at least one entry).
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Bytes a stamp adds to its prefix: 20 digits, `.`, 6 digits.
pub const STAMP_BYTES: usize = 27;

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value bytes.
    pub value: Vec<u8>,
    /// Changes on every write of the key; never reused within one store.
    pub version: u64,
}

/// A precondition of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The key exists with this version.
    VersionIs(String, u64),
    /// The key does not exist.
    Absent(String),
}

impl Check {
    /// The key checked.
    pub fn key(&self) -> &str {
        match self {
            Check::VersionIs(key, _) | Check::Absent(key) => key,
        }
    }

    /// Whether the check holds when the key's current version is `current`.
    pub fn holds(&self, current: Option<u64>) -> bool {
        match self {
            Check::VersionIs(_, want) => current == Some(*want),
            Check::Absent(_) => current.is_none(),
        }
    }
}

/// One change of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set the key to the value.
    Set(String, Vec<u8>),
    /// Delete the key (a missing key is fine).
    Delete(String),
    /// Set the key `prefix` + the commit's stamp (see [`stamped_key`]): keys
    /// that sort in commit order.
    SetStamped(String, Vec<u8>),
}

impl Write {
    /// The key written (for a stamped write: its prefix).
    pub fn key(&self) -> &str {
        match self {
            Write::Set(key, _) | Write::Delete(key) | Write::SetStamped(key, _) => key,
        }
    }
}

/// The key of the `index`-th stamped write of the commit stamped `stamp`.
pub fn stamped_key(prefix: &str, stamp: u64, index: usize) -> String {
    format!("{prefix}{stamp:020}.{index:06}")
}

/// The stamp of `key` when it is `prefix` and a stamp, as [`stamped_key`] makes them.
pub fn stamp_of(key: &str, prefix: &str) -> Option<u64> {
    let (digits, index) = key.strip_prefix(prefix)?.split_at_checked(20)?;
    let index = index.strip_prefix('.')?;
    let decimal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (decimal(digits) && index.len() == 6 && decimal(index)).then(|| digits.parse().ok()).flatten()
}

/// The writes of a commit stamped `stamp`, stamped keys made: (key, value,
/// or `None` for a delete), in order.
pub fn resolve(writes: &[Write], stamp: u64) -> impl Iterator<Item = (Cow<'_, str>, Option<&[u8]>)> {
    let mut stamped = 0;
    writes.iter().map(move |write| match write {
        Write::Set(key, value) => (Cow::Borrowed(key.as_str()), Some(value.as_slice())),
        Write::Delete(key) => (Cow::Borrowed(key.as_str()), None),
        Write::SetStamped(prefix, value) => {
            stamped += 1;
            (Cow::Owned(stamped_key(prefix, stamp, stamped - 1)), Some(value.as_slice()))
        }
    })
}

/// Why a kv call failed; the WIT `kv.error` variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// A check did not hold; nothing was written.
    Conflict,
    /// A key, value, commit, scan or `get-many` over its limit; says which.
    TooLarge(&'static str),
    /// The store cannot serve the call (I/O or database error); nothing was written.
    Unavailable(String),
    /// A commit was sent but its answer was lost: it may have been applied.
    OutcomeUnknown(String),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Conflict => f.write_str("a commit check did not hold"),
            KvError::TooLarge(what) => write!(f, "too large: {what}"),
            KvError::Unavailable(why) => write!(f, "store unavailable: {why}"),
            KvError::OutcomeUnknown(why) => write!(f, "commit outcome unknown: {why}"),
        }
    }
}

impl std::error::Error for KvError {}

/// A key within [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::TooLarge("key over 1 KiB"));
    }
    Ok(())
}

/// A `get-many` within [`MAX_GET_MANY_KEYS`] keys, each within [`MAX_KEY_BYTES`].
pub fn check_get_many(keys: &[String]) -> Result<(), KvError> {
    if keys.len() > MAX_GET_MANY_KEYS {
        return Err(KvError::TooLarge("more than 1000 keys in one get-many"));
    }
    keys.iter().try_for_each(|key| check_key(key))
}

/// A scan within [`MAX_SCAN_LIMIT`], its prefix and start within [`MAX_KEY_BYTES`].
pub fn check_scan(prefix: &str, start_after: Option<&str>, limit: u32) -> Result<(), KvError> {
    if limit > MAX_SCAN_LIMIT {
        return Err(KvError::TooLarge("scan limit over 1000"));
    }
    check_key(prefix)?;
    start_after.map_or(Ok(()), check_key)
}

/// A commit within every limit: writes, checks, key and value sizes (a
/// stamped key counted with its stamp) and the bytes of the whole commit.
pub fn check_commit(checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
    if writes.len() > MAX_WRITES_PER_COMMIT {
        return Err(KvError::TooLarge("more than 100000 writes in one commit"));
    }
    if checks.len() > MAX_CHECKS_PER_COMMIT {
        return Err(KvError::TooLarge("more than 100000 checks in one commit"));
    }
    checks.iter().try_for_each(|check| check_key(check.key()))?;
    let mut bytes = 0;
    for write in writes {
        let key = write.key().len() + if matches!(write, Write::SetStamped(..)) { STAMP_BYTES } else { 0 };
        if key > MAX_KEY_BYTES {
            return Err(KvError::TooLarge("key over 1 KiB"));
        }
        bytes += key;
        if let Write::Set(_, value) | Write::SetStamped(_, value) = write {
            if value.len() > MAX_VALUE_BYTES {
                return Err(KvError::TooLarge("value over 4 MiB"));
            }
            bytes += value.len();
        }
    }
    if bytes > MAX_COMMIT_BYTES {
        return Err(KvError::TooLarge("more than 64 MiB written in one commit"));
    }
    Ok(())
}

/// A `get-many` answer as every store builds it: `read` each key in order
/// until the values read reach `max_bytes` (the first key always).
pub fn get_many_answer(
    keys: &[String],
    max_bytes: usize,
    mut read: impl FnMut(&str) -> Result<Option<Entry>, KvError>,
) -> Result<Vec<Option<Entry>>, KvError> {
    let mut answer = Vec::with_capacity(keys.len());
    let mut bytes = 0;
    for key in keys {
        if !answer.is_empty() && bytes >= max_bytes {
            break;
        }
        let entry = read(key)?;
        bytes += entry.as_ref().map_or(0, |entry| entry.value.len());
        answer.push(entry);
    }
    Ok(answer)
}

/// One scan page being collected, with the bounds every store's scan
/// shares: a store walks its keys in order from [`Page::start`] and
/// [`Page::offer`]s each until told to stop.
#[derive(Debug)]
pub struct Page<'a> {
    prefix: &'a str,
    start_after: Option<&'a str>,
    limit: usize,
    max_bytes: usize,
    bytes: usize,
    entries: Vec<(String, Entry)>,
}

impl<'a> Page<'a> {
    /// A page of keys starting with `prefix` after `start_after`, at most
    /// `limit` of them, ending once their values reach `max_bytes`.
    pub fn new(prefix: &'a str, start_after: Option<&'a str>, limit: usize, max_bytes: usize) -> Self {
        Self { prefix, start_after, limit, max_bytes, bytes: 0, entries: Vec::new() }
    }

    /// The first key the walk must look at: the larger of the prefix and `start_after`.
    pub fn start(&self) -> Bound<&'a str> {
        match self.start_after {
            Some(after) if after >= self.prefix => Bound::Excluded(after),
            _ => Bound::Included(self.prefix),
        }
    }

    /// Offers the next key in order; `entry` is read only if the key is taken.
    /// Returns `false` once the page is complete and the walk should stop.
    pub fn offer(&mut self, key: &str, entry: impl FnOnce() -> Result<Entry, KvError>) -> Result<bool, KvError> {
        if !key.starts_with(self.prefix) {
            return Ok(false);
        }
        if self.start_after.is_some_and(|after| key <= after) {
            return Ok(true);
        }
        if self.entries.len() == self.limit || (!self.entries.is_empty() && self.bytes >= self.max_bytes) {
            return Ok(false);
        }
        let entry = entry()?;
        self.bytes += entry.value.len();
        self.entries.push((key.to_owned(), entry));
        Ok(true)
    }

    /// The entries taken, in key order.
    pub fn into_entries(self) -> Vec<(String, Entry)> {
        self.entries
    }
}

/// The reference store: every namespace a `BTreeMap` behind one lock, with
/// the contract's exact semantics. Its methods are a store's side of the
/// contract (a namespace, a byte budget); callers check the limits first
/// ([`check_key`] …), as the gateway does for every store, or use
/// [`MemStore::namespace`], which does.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    /// At most this many entries per scan page or `get-many` answer.
    short: Option<usize>,
}

#[derive(Debug, Default)]
struct Inner {
    namespaces: HashMap<String, BTreeMap<String, Entry>>,
    last_version: u64,
}

impl MemStore {
    /// A store that answers as little as the contract allows: at most
    /// `entries` (at least one) per scan page and per `get-many` answer, as a
    /// store bounding its answers' size would. Paging loops written against
    /// the contract read everything from it anyway.
    pub fn with_short_answers(entries: usize) -> Self {
        Self { short: Some(entries.max(1)), ..Self::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied commit
        // (commits mutate only after every check passed), so poison is safe to clear.
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Reads one key of `ns`.
    pub fn get(&self, ns: &str, key: &str) -> Option<Entry> {
        self.lock().namespaces.get(ns).and_then(|map| map.get(key)).cloned()
    }

    /// Reads `keys` of `ns` as of one moment, in their order, within `max_bytes` ([`get_many_answer`]).
    pub fn get_many(&self, ns: &str, keys: &[String], max_bytes: usize) -> Vec<Option<Entry>> {
        let inner = self.lock();
        let map = inner.namespaces.get(ns);
        let keys = &keys[..keys.len().min(self.short.unwrap_or(usize::MAX))];
        let read = get_many_answer(keys, max_bytes, |key| Ok(map.and_then(|map| map.get(key)).cloned()));
        read.unwrap_or_default() // the reader above never fails
    }

    /// One scan page of `ns` (see [`Page`]).
    pub fn scan(
        &self,
        ns: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Vec<(String, Entry)> {
        let inner = self.lock();
        let Some(map) = inner.namespaces.get(ns) else {
            return Vec::new();
        };
        let mut page = Page::new(prefix, start_after, limit.min(self.short.unwrap_or(usize::MAX)), max_bytes);
        for (key, entry) in map.range::<str, _>((page.start(), Bound::Unbounded)) {
            match page.offer(key, || Ok(entry.clone())) {
                Ok(true) => {}
                Ok(false) | Err(_) => break,
            }
        }
        page.into_entries()
    }

    /// Applies `writes` to `ns` if every check holds, atomically; every
    /// commit that writes gets the next version, which stamps its stamped keys.
    pub fn commit(&self, ns: &str, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        let mut inner = self.lock();
        let map = inner.namespaces.get(ns);
        if !checks.iter().all(|check| check.holds(map.and_then(|map| map.get(check.key())).map(|e| e.version))) {
            return Err(KvError::Conflict);
        }
        if writes.is_empty() {
            return Ok(());
        }
        inner.last_version += 1;
        let version = inner.last_version;
        let map = inner.namespaces.entry(ns.to_owned()).or_default();
        for (key, value) in resolve(writes, version) {
            match value {
                Some(value) => {
                    map.insert(key.into_owned(), Entry { value: value.to_vec(), version });
                }
                None => {
                    map.remove(key.as_ref());
                }
            }
        }
        Ok(())
    }

    /// Every record of every namespace, and the version counter: one moment's copy.
    pub fn dump(&self) -> (Vec<(String, String, Entry)>, u64) {
        let inner = self.lock();
        let records = inner
            .namespaces
            .iter()
            .flat_map(|(ns, map)| map.iter().map(move |(key, entry)| (ns.clone(), key.clone(), entry.clone())))
            .collect();
        (records, inner.last_version)
    }

    /// Stores `records` as given, versions included, and raises the
    /// version counter to `last_version` and every version stored.
    pub fn load<'a>(&self, records: impl Iterator<Item = (&'a str, &'a str, &'a Entry)>, last_version: u64) {
        let mut inner = self.lock();
        let mut highest = last_version.max(inner.last_version);
        for (ns, key, entry) in records {
            highest = highest.max(entry.version);
            inner.namespaces.entry(ns.to_owned()).or_default().insert(key.to_owned(), entry.clone());
        }
        inner.last_version = highest;
    }

    /// Deletes every record; the version counter stays.
    pub fn clear(&self) {
        self.lock().namespaces.clear();
    }

    /// Every key of `ns`, in order (for assertions).
    pub fn keys(&self, ns: &str) -> Vec<String> {
        self.lock().namespaces.get(ns).map(|map| map.keys().cloned().collect()).unwrap_or_default()
    }

    /// The store as a plugin sees namespace `ns` through the WIT `kv`
    /// interface: every limit checked before the store is asked.
    pub fn namespace<'a>(&'a self, ns: &'a str) -> MemNamespace<'a> {
        MemNamespace { store: self, ns }
    }
}

/// One namespace of a [`MemStore`] with the WIT `kv` calls' semantics: the
/// limits refused with [`KvError::TooLarge`], answers bounded by
/// [`MAX_ANSWER_BYTES`], empty calls answered without the store.
#[derive(Debug, Clone, Copy)]
pub struct MemNamespace<'a> {
    store: &'a MemStore,
    ns: &'a str,
}

impl MemNamespace<'_> {
    /// WIT `get`.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        check_key(key)?;
        Ok(self.store.get(self.ns, key))
    }

    /// WIT `get-many`.
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
        check_get_many(keys)?;
        Ok(self.store.get_many(self.ns, keys, MAX_ANSWER_BYTES))
    }

    /// WIT `scan`.
    pub fn scan(&self, prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
        check_scan(prefix, start_after, limit)?;
        Ok(self.store.scan(self.ns, prefix, start_after, limit as usize, MAX_ANSWER_BYTES))
    }

    /// WIT `commit` / `commit-stamped` (stamped writes as [`Write::SetStamped`]).
    pub fn commit(&self, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        check_commit(checks, writes)?;
        self.store.commit(self.ns, checks, writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Write {
        Write::Set(key.into(), value.as_bytes().to_vec())
    }

    #[test]
    fn a_key_is_stamped_only_as_a_prefix_and_a_stamp() {
        let key = stamped_key("log/", 123, 4);
        assert_eq!(stamp_of(&key, "log/"), Some(123));
        assert_eq!(stamp_of(&stamped_key("log/", u64::MAX, 999_999), "log/"), Some(u64::MAX));
        for other in ["log/", "log/0", "log/1/00000000000000000123.000004", &format!("{key}0"), &key.replace('.', "-")]
        {
            assert_eq!(stamp_of(other, "log/"), None, "{other}");
        }
        assert_eq!(stamp_of(&key, "feed/"), None);
    }

    #[test]
    fn short_answers_hold_at_most_their_entries_yet_paging_reads_everything() {
        let store = MemStore::with_short_answers(3);
        let kv = store.namespace("p");
        let writes: Vec<_> = (0..10).map(|i| set(&format!("k{i}"), "v")).collect();
        kv.commit(&[], &writes).expect("commit");
        let page = kv.scan("k", None, 1000).expect("scan");
        assert_eq!(page.len(), 3);
        let mut seen = Vec::new();
        let mut after = None::<String>;
        loop {
            let page = kv.scan("k", after.as_deref(), 1000).expect("scan");
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            seen.extend(page.into_iter().map(|(key, _)| key));
        }
        assert_eq!(seen, store.keys("p"));
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        assert_eq!(kv.get_many(&keys).expect("get-many").len(), 3);
        assert_eq!(MemStore::with_short_answers(0).namespace("p").scan("", None, 5).expect("scan").len(), 0);
    }

    #[test]
    fn limits_are_refused_before_the_store_and_the_bounds_themselves_pass() {
        let store = MemStore::default();
        let kv = store.namespace("p");
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(kv.get(&long), Err(KvError::TooLarge(_))));
        assert!(matches!(kv.scan("", None, MAX_SCAN_LIMIT + 1), Err(KvError::TooLarge(_))));
        let stamped = Write::SetStamped("k".repeat(MAX_KEY_BYTES - STAMP_BYTES + 1), Vec::new());
        assert!(matches!(kv.commit(&[], &[stamped]), Err(KvError::TooLarge(_))));
        let checks: Vec<_> = (0..=MAX_CHECKS_PER_COMMIT).map(|i| Check::Absent(i.to_string())).collect();
        assert!(matches!(kv.commit(&checks, &[]), Err(KvError::TooLarge(_))));
        let stamped = Write::SetStamped("k".repeat(MAX_KEY_BYTES - STAMP_BYTES), Vec::new());
        kv.commit(&checks[1..], &[stamped]).expect("at the limits");
        assert_eq!(kv.scan("k", None, 10).expect("scan")[0].0.len(), MAX_KEY_BYTES);
        assert_eq!(store.keys("other"), Vec::<String>::new(), "namespaces apart");
    }
}
