//! The key-value store behind the WIT `kv` interface.
//!
//! Backends implement [`Backend`] and stay small and policy-free: they store
//! bytes under `(namespace, key)`, order keys bytewise, and apply a commit
//! atomically and durably. Every policy plugins rely on — size limits, the
//! scan cap, namespaces — lives in [`Namespace`], the one dispatch layer the
//! sandbox talks to, so no backend can forget it.

pub mod backup;
mod codec;
#[cfg(feature = "fault-injection")]
mod faults;
mod memory;
mod postgres;
mod redb;

#[cfg(feature = "fault-injection")]
pub use self::faults::{FaultsConfig, Faulty};
#[cfg(test)]
pub(crate) use self::memory::Hooked;
/// The in-memory backend: the kv contract's reference store ([`kv_contract::MemStore`]).
pub type MemoryBackend = kv_contract::MemStore;
pub use self::postgres::{PostgresBackend, PostgresOptions};
pub use self::redb::RedbBackend;
pub use codec::Compression;

use anyhow::Context as _;
use figment::value::magic::RelativePathBuf;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use kv_contract::{
    Check, Entry, KvError, MAX_ANSWER_BYTES, MAX_CHECKS_PER_COMMIT, MAX_COMMIT_BYTES, MAX_GET_MANY_KEYS, MAX_KEY_BYTES,
    MAX_SCAN_LIMIT, MAX_VALUE_BYTES, MAX_WRITES_PER_COMMIT, STAMP_BYTES, Write, get_many_answer, resolve, stamped_key,
};
use kv_contract::{check_commit, check_get_many, check_key, check_scan};

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
    /// first key). See [`get_many_answer`].
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

    /// Keys of `ns` within `bounds`, in bytewise order (see [`Scan`]).
    fn scan(&self, ns: &str, bounds: &Scan) -> Result<ScanPage, KvError>;

    /// Applies `writes` if every check holds, atomically and durably.
    fn commit(&self, ns: &str, checks: &[Check], writes: &[Write]) -> Result<(), KvError>;

    /// Whether the backend can serve calls now.
    fn ping(&self) -> Result<(), KvError>;

    /// A consistent view of every namespace as of now (one read
    /// transaction), for backups and copies ([`backup`]); writes go on beside it.
    fn snapshot(&self) -> Result<Box<dyn backup::Snapshot>, KvError>;

    /// Writes `records` exactly as given — versions included — in one
    /// transaction, and raises the version counter to at least
    /// `last_version` and every version written: for restores and copies
    /// into a store no gateway serves.
    fn restore(&self, records: &[backup::Record], last_version: u64) -> Result<(), KvError>;

    /// Deletes every record of every namespace; the version counter stays,
    /// so no version is ever given twice.
    fn clear(&self) -> Result<(), KvError>;

    /// Whether every call may wait on the network (then even `get` runs off the async threads).
    fn is_remote(&self) -> bool {
        false
    }

    /// The backend's kind as metrics label it: `memory`, `redb` or `postgres`.
    fn kind(&self) -> &'static str {
        "memory"
    }

    /// What the store takes on disk, in bytes (the file; the tables with
    /// their indexes and TOAST); `None` for a store in memory.
    fn bytes_on_disk(&self) -> Result<Option<u64>, KvError> {
        Ok(None)
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

/// One scan's bounds: the keys starting with `prefix`, after
/// `start_after` (exclusive); at most `limit` entries, and it stops early
/// once the returned values reach `max_bytes` (always at least one entry
/// if any). The one shape of [`Backend::scan`] and [`Backend::scan_async`].
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

impl Scan {
    /// The bounds, owned.
    pub fn of(prefix: &str, start_after: Option<&str>, limit: usize, max_bytes: usize) -> Self {
        Self { prefix: prefix.to_owned(), start_after: start_after.map(str::to_owned), limit, max_bytes }
    }
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

/// `[store]` of the configuration: which backend, and its settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (tests; nothing kept), `redb` (a file in `data_dir`) or `postgres` (shared by nodes).
    pub backend: BackendKind,
    /// PostgreSQL URL (`postgres://user:password@host:port/db?sslmode=require`); also `EVOGATE_STORE_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// PostgreSQL schema of evogate's tables, created if missing.
    pub schema: String,
    /// PostgreSQL connections per node, at most.
    pub pool_size: usize,
    /// Time to connect to PostgreSQL or to wait for a free connection.
    pub connect_timeout_ms: u64,
    /// Longest a PostgreSQL statement may run.
    pub statement_timeout_ms: u64,
    /// PEM file of extra CA certificates trusted for `sslmode=require`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<RelativePathBuf>,
    /// How values are written: `zstd` (the default) or `none`.
    pub compression: Compression,
    /// Store calls that fail on purpose, for the test suite (only in builds
    /// with the `fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultsConfig>,
}

impl StoreConfig {
    /// The PostgreSQL settings; fails when `url` is missing.
    pub fn postgres_options(&self) -> anyhow::Result<PostgresOptions> {
        let url = self
            .url
            .clone()
            .filter(|url| !url.is_empty())
            .context("store.backend = \"postgres\" needs store.url (or EVOGATE_STORE_URL)")?;
        Ok(PostgresOptions {
            url,
            schema: self.schema.clone(),
            pool_size: self.pool_size,
            connect_timeout: std::time::Duration::from_millis(self.connect_timeout_ms),
            statement_timeout: std::time::Duration::from_millis(self.statement_timeout_ms),
            tls_ca: self.tls_ca.as_ref().map(RelativePathBuf::relative),
            compression: self.compression,
        })
    }
}

/// Opens the configured backend.
pub fn open(store: &StoreConfig, data_dir: &std::path::Path) -> anyhow::Result<Arc<dyn Backend>> {
    let backend: Arc<dyn Backend> = match store.backend {
        BackendKind::Memory => Arc::new(MemoryBackend::default()),
        BackendKind::Redb => {
            Arc::new(RedbBackend::open(&data_dir.join("evogate.redb"))?.with_compression(store.compression))
        }
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
        check_get_many(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.backend.get_many(&self.name, keys, MAX_ANSWER_BYTES)
    }

    /// [`Namespace::get_many`] as a future for the request's task, when the
    /// backend offers one (a remote backend); `Ok(None)` otherwise.
    pub fn get_many_async(&self, keys: Vec<String>) -> Result<Option<Read<Vec<Option<Entry>>>>, KvError> {
        check_get_many(&keys)?;
        if keys.is_empty() {
            return Ok(Some(Box::pin(std::future::ready(Ok(Vec::new())))));
        }
        Ok(self.backend.get_many_async(&self.name, keys, MAX_ANSWER_BYTES))
    }

    /// Ordered prefix scan; see the WIT `kv.scan` for the contract.
    pub fn scan(&self, prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
        check_scan(prefix, start_after, limit)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.backend.scan(&self.name, &Scan::of(prefix, start_after, limit as usize, MAX_ANSWER_BYTES))
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
        let scan = Scan { prefix, start_after, limit: limit as usize, max_bytes: MAX_ANSWER_BYTES };
        Ok(self.backend.scan_async(&self.name, scan))
    }

    /// Atomic, durable conditional write; see the WIT `kv.commit`.
    pub fn commit(&self, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        check_commit(checks, writes)?;
        if writes.is_empty() && checks.is_empty() {
            return Ok(());
        }
        self.backend.commit(&self.name, checks, writes)
    }
}

/// The version's top bit in an encoded entry: its bytes are compressed
/// ([`codec`]). Versions count commits from 1 and never reach it, so an
/// entry written before values were compressed reads as it always did.
const COMPRESSED: u64 = 1 << 63;

/// The version's next bit, always with [`COMPRESSED`]: the entry's value is
/// kept apart from its key (redb's values tables), and its bytes say where.
/// Set with [`COMPRESSED`], so that a build that knows nothing of values
/// kept apart fails on the entry as a corrupt compressed value rather than
/// reading its place as its value.
const APART: u64 = 1 << 62;

/// Encodes a stored value as its version (8 bytes, little endian) then the
/// bytes, compressed when `compression` asks for it and
/// [`codec::compress`] finds it worth it.
fn encode_entry(version: u64, value: &[u8], compression: Compression) -> Vec<u8> {
    debug_assert_eq!(version & COMPRESSED, 0, "a version never reaches the top bit");
    let (compressed, bytes) = codec::pack(value, compression);
    let version = if compressed { version | COMPRESSED } else { version };
    let mut out = Vec::with_capacity(8 + bytes.len());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&bytes);
    out
}

/// An encoded entry's first 8 bytes as written (the version, with
/// [`COMPRESSED`] when set) and the value's bytes.
fn split_entry(raw: &[u8]) -> Result<(u64, &[u8]), KvError> {
    let (version, bytes) = raw
        .split_first_chunk::<8>()
        .ok_or_else(|| KvError::Unavailable("corrupt entry: shorter than its version".into()))?;
    Ok((u64::from_le_bytes(*version), bytes))
}

/// Reverses [`encode_entry`].
fn decode_entry(raw: &[u8]) -> Result<Entry, KvError> {
    let (version, bytes) = split_entry(raw)?;
    if version & APART != 0 {
        return Err(KvError::Unavailable("corrupt entry: its value is kept apart".into()));
    }
    let value = if version & COMPRESSED != 0 { codec::decompress(bytes)? } else { bytes.to_vec() };
    Ok(Entry { value, version: version & !COMPRESSED })
}

/// The version of an encoded entry, without reading its value.
fn entry_version(raw: &[u8]) -> Result<u64, KvError> {
    Ok(split_entry(raw)?.0 & !(COMPRESSED | APART))
}

#[cfg(test)]
mod conformance;
