//! The key-value store behind the WIT `kv` interface.
//!
//! Backends implement [`Backend`] and stay small and policy-free: they store
//! bytes under `(namespace, key)`, order keys bytewise, and apply a commit
//! atomically and durably. Every policy plugins rely on — size limits, the
//! scan cap, namespaces — lives in [`Namespace`], the one dispatch layer the
//! sandbox talks to, so no backend can forget it.

#[cfg(feature = "fault-injection")]
mod faults;
#[cfg(feature = "runtime")]
pub(crate) mod host;
mod memory;
mod postgres;
mod redb;

#[cfg(feature = "fault-injection")]
pub use self::faults::{FaultsConfig, Faulty};
#[cfg(test)]
pub(crate) use self::memory::Hooked;
pub use self::memory::MemoryBackend;
pub use self::postgres::{PostgresBackend, PostgresOptions};
pub use self::redb::RedbBackend;

use std::sync::Arc;

/// Longest key a plugin may use, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value a plugin may store, in bytes.
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Most writes one commit may carry.
pub const MAX_WRITES_PER_COMMIT: usize = 100_000;
/// Most checks one commit may carry.
pub const MAX_CHECKS_PER_COMMIT: usize = 100_000;
/// Most key and value bytes one commit may carry.
pub const MAX_COMMIT_BYTES: usize = 64 * 1024 * 1024;
/// Largest `limit` a scan may ask for.
pub const MAX_SCAN_LIMIT: u32 = 1000;
/// Most keys one `get-many` may ask for.
pub const MAX_GET_MANY_KEYS: usize = 1000;
/// Soft cap on the value bytes one scan or `get-many` returns; past it the answer ends early.
pub const MAX_SCAN_BYTES: usize = 16 * 1024 * 1024;

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value bytes.
    pub value: Vec<u8>,
    /// Changes on every write of the key; never reused within one store.
    pub version: u64,
}

/// A precondition of [`Backend::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The key exists with this version.
    VersionIs(String, u64),
    /// The key does not exist.
    Absent(String),
}

impl Check {
    fn key(&self) -> &str {
        match self {
            Check::VersionIs(key, _) | Check::Absent(key) => key,
        }
    }

    /// Whether the check holds given the key's current version.
    fn holds(&self, current: Option<u64>) -> bool {
        match self {
            Check::VersionIs(_, want) => current == Some(*want),
            Check::Absent(_) => current.is_none(),
        }
    }
}

/// One change of [`Backend::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set the key to the value.
    Set(String, Vec<u8>),
    /// Delete the key (a missing key is fine).
    Delete(String),
    /// Set the key `prefix` + the commit's stamp (see [`stamped_key`]).
    SetStamped(String, Vec<u8>),
}

impl Write {
    fn key(&self) -> &str {
        match self {
            Write::Set(key, _) | Write::Delete(key) | Write::SetStamped(key, _) => key,
        }
    }
}

/// Bytes a stamp adds to a prefix: 20 digits, `.`, 6 digits.
pub const STAMP_BYTES: usize = 27;

/// The key of the `index`-th stamped write of the commit stamped `stamp`.
pub fn stamped_key(prefix: &str, stamp: u64, index: usize) -> String {
    format!("{prefix}{stamp:020}.{index:06}")
}

/// The writes of a commit with stamped keys made: (key, value or `None` for a delete).
pub fn resolve(writes: &[Write], stamp: u64) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, Option<&[u8]>)> {
    let mut stamped = 0;
    writes.iter().map(move |write| match write {
        Write::Set(key, value) => (std::borrow::Cow::Borrowed(key.as_str()), Some(value.as_slice())),
        Write::Delete(key) => (std::borrow::Cow::Borrowed(key.as_str()), None),
        Write::SetStamped(prefix, value) => {
            stamped += 1;
            (std::borrow::Cow::Owned(stamped_key(prefix, stamp, stamped - 1)), Some(value.as_slice()))
        }
    })
}

/// Why a kv operation failed; mirrors the WIT `kv.error` variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A check did not hold; nothing was written.
    #[error("a commit check did not hold")]
    Conflict,
    /// A key, value, commit or scan limit over its bound.
    #[error("too large: {0}")]
    TooLarge(&'static str),
    /// The backend cannot serve the call (I/O or database error); nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A commit was sent but its answer was lost: it may have been applied.
    #[error("commit outcome unknown: {0}")]
    OutcomeUnknown(String),
}

/// A storage engine for all plugins' keys.
///
/// Implementations keep namespaces fully apart: a key of one namespace is
/// never visible through another.
pub trait Backend: Send + Sync + 'static {
    /// One line for the logs, e.g. `redb at ./data/evogate.redb`.
    fn describe(&self) -> String;

    /// Reads one key.
    fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, KvError>;

    /// Reads `keys` (at least one) as of one moment, in their order; stops
    /// early once the values read reach `max_bytes` (always answers the
    /// first key). See [`read_many`].
    fn get_many(&self, ns: &str, keys: &[String], max_bytes: usize) -> Result<Vec<Option<Entry>>, KvError>;

    /// For a backend whose every call is a network round trip: `get_many`
    /// as a future the request's own task awaits, so no thread waits for the
    /// answer. `None` (the default): the blocking [`Backend::get_many`].
    fn get_many_async(&self, _ns: &str, _keys: Vec<String>, _max_bytes: usize) -> Option<Read<Vec<Option<Entry>>>> {
        None
    }

    /// [`Backend::scan`] as a future, like [`Backend::get_many_async`].
    fn scan_async(&self, _ns: &str, _scan: Scan) -> Option<Read<ScanPage>> {
        None
    }

    /// Keys of `ns` starting with `prefix`, after `start_after` (exclusive),
    /// in bytewise order; at most `limit` entries, and stops early once the
    /// returned values reach `max_bytes` (always at least one entry if any).
    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, Entry)>, KvError>;

    /// Applies `writes` if every check holds, atomically and durably.
    fn commit(&self, ns: &str, checks: &[Check], writes: &[Write]) -> Result<(), KvError>;

    /// Whether the backend can serve calls now.
    fn ping(&self) -> Result<(), KvError>;

    /// Whether every call may wait on the network (then even `get` runs off the async threads).
    fn is_remote(&self) -> bool {
        false
    }

    /// Whether other gateway nodes use the same store (deploys then reach them through it).
    fn is_shared(&self) -> bool {
        false
    }
}

/// A read running on the request's task (see [`Backend::get_many_async`]).
pub type Read<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, KvError>> + Send>>;

/// One scan page: keys and entries in key order.
pub type ScanPage = Vec<(String, Entry)>;

/// One scan's bounds, owned (for [`Backend::scan_async`]).
#[derive(Debug, Clone)]
pub struct Scan {
    /// Keys starting with this.
    pub prefix: String,
    /// Only keys after this one.
    pub start_after: Option<String>,
    /// At most this many entries.
    pub limit: usize,
    /// Stop once the values reach this many bytes (at least one entry).
    pub max_bytes: usize,
}

/// The answer to a `get-many` as every backend builds it: `read` each key
/// in order until the values read reach `max_bytes` (the first key always).
pub fn read_many(
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

/// Which backend to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// In process memory; lost on exit. For tests.
    Memory,
    /// A redb file in the data directory (the default).
    Redb,
    /// A PostgreSQL database shared by several nodes (`store.url`).
    Postgres,
}

/// Opens the configured backend.
pub fn open(store: &crate::config::StoreConfig, data_dir: &std::path::Path) -> anyhow::Result<Arc<dyn Backend>> {
    let backend: Arc<dyn Backend> = match store.backend {
        BackendKind::Memory => Arc::new(MemoryBackend::default()),
        BackendKind::Redb => Arc::new(RedbBackend::open(&data_dir.join("evogate.redb"))?),
        BackendKind::Postgres => Arc::new(PostgresBackend::open(&store.postgres_options()?)?),
    };
    #[cfg(feature = "fault-injection")]
    if let Some(faults) = &store.faults {
        return Ok(Arc::new(Faulty::new(backend, faults.clone())));
    }
    Ok(backend)
}

/// One plugin's view of the store: its namespace plus every limit.
#[derive(Clone)]
pub struct Namespace {
    backend: Arc<dyn Backend>,
    name: Arc<str>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Namespace {
    /// The view of `backend` that plugin `name` gets.
    pub fn new(backend: Arc<dyn Backend>, name: &str) -> Self {
        Self { backend, name: name.into() }
    }

    /// The backend, for messages.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Whether calls may wait on the network.
    pub fn is_remote(&self) -> bool {
        self.backend.is_remote()
    }

    /// Reads one key.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        check_key(key)?;
        self.backend.get(&self.name, key)
    }

    /// Reads several keys as of one moment; see the WIT `kv.get-many`.
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
        check_keys(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.backend.get_many(&self.name, keys, MAX_SCAN_BYTES)
    }

    /// [`Namespace::get_many`] as a future for the request's task, when the
    /// backend offers one (a remote backend); `Ok(None)` otherwise.
    pub fn get_many_async(&self, keys: Vec<String>) -> Result<Option<Read<Vec<Option<Entry>>>>, KvError> {
        check_keys(&keys)?;
        if keys.is_empty() {
            return Ok(Some(Box::pin(std::future::ready(Ok(Vec::new())))));
        }
        Ok(self.backend.get_many_async(&self.name, keys, MAX_SCAN_BYTES))
    }

    /// Ordered prefix scan; see the WIT `kv.scan` for the contract.
    pub fn scan(&self, prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
        check_scan(prefix, start_after, limit)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.backend.scan(&self.name, prefix, start_after, limit as usize, MAX_SCAN_BYTES)
    }

    /// [`Namespace::scan`] as a future for the request's task, when the
    /// backend offers one (a remote backend); `Ok(None)` otherwise.
    pub fn scan_async(
        &self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> Result<Option<Read<ScanPage>>, KvError> {
        check_scan(&prefix, start_after.as_deref(), limit)?;
        if limit == 0 {
            return Ok(Some(Box::pin(std::future::ready(Ok(Vec::new())))));
        }
        let scan = Scan { prefix, start_after, limit: limit as usize, max_bytes: MAX_SCAN_BYTES };
        Ok(self.backend.scan_async(&self.name, scan))
    }

    /// Atomic, durable conditional write; see the WIT `kv.commit`.
    pub fn commit(&self, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        if writes.len() > MAX_WRITES_PER_COMMIT {
            return Err(KvError::TooLarge("more than 100000 writes in one commit"));
        }
        if checks.len() > MAX_CHECKS_PER_COMMIT {
            return Err(KvError::TooLarge("more than 100000 checks in one commit"));
        }
        for check in checks {
            check_key(check.key())?;
        }
        let mut bytes = 0;
        for write in writes {
            let stamp = if matches!(write, Write::SetStamped(..)) { STAMP_BYTES } else { 0 };
            if write.key().len() + stamp > MAX_KEY_BYTES {
                return Err(KvError::TooLarge("key over 1 KiB"));
            }
            bytes += write.key().len() + stamp;
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
        if writes.is_empty() && checks.is_empty() {
            return Ok(());
        }
        self.backend.commit(&self.name, checks, writes)
    }
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::TooLarge("key over 1 KiB"));
    }
    Ok(())
}

fn check_keys(keys: &[String]) -> Result<(), KvError> {
    if keys.len() > MAX_GET_MANY_KEYS {
        return Err(KvError::TooLarge("more than 1000 keys in one get-many"));
    }
    keys.iter().try_for_each(|key| check_key(key))
}

// `limit` and the keys are guest-controlled: bound them before use.
fn check_scan(prefix: &str, start_after: Option<&str>, limit: u32) -> Result<(), KvError> {
    if limit > MAX_SCAN_LIMIT {
        return Err(KvError::TooLarge("scan limit over 1000"));
    }
    check_key(prefix)?;
    start_after.map_or(Ok(()), check_key)
}

/// Encodes a stored value as its version (8 bytes, little endian) then the bytes.
fn encode_entry(version: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Reverses [`encode_entry`].
fn decode_entry(raw: &[u8]) -> Result<Entry, KvError> {
    let (version, value) = raw
        .split_first_chunk::<8>()
        .ok_or_else(|| KvError::Unavailable("corrupt entry: shorter than its version".into()))?;
    Ok(Entry { value: value.to_vec(), version: u64::from_le_bytes(*version) })
}

/// One scan page being collected: the bounds every backend's scan shares.
/// Backends walk their keys in order from [`scan_start`] and offer each.
struct Page<'a> {
    prefix: &'a str,
    start_after: Option<&'a str>,
    limit: usize,
    max_bytes: usize,
    bytes: usize,
    entries: Vec<(String, Entry)>,
}

impl<'a> Page<'a> {
    fn new(prefix: &'a str, start_after: Option<&'a str>, limit: usize, max_bytes: usize) -> Self {
        Self { prefix, start_after, limit, max_bytes, bytes: 0, entries: Vec::new() }
    }

    /// Offers the next key in order; `entry` is read only if the key is taken.
    /// Returns `false` once the page is complete and the walk should stop.
    fn offer(&mut self, key: &str, entry: impl FnOnce() -> Result<Entry, KvError>) -> Result<bool, KvError> {
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
}

/// The first key a scan must look at: the larger of the prefix and `start_after`.
fn scan_start<'a>(prefix: &'a str, start_after: Option<&'a str>) -> std::ops::Bound<&'a str> {
    use std::ops::Bound;
    match start_after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    }
}

#[cfg(test)]
mod conformance;
