//! The embedded default backend: one redb file, one table per namespace.
//!
//! A value is stored as its 8-byte version followed by the bytes, which are
//! zstd-compressed when the version's top bit is set (see `kv::codec`: a
//! record of a kilobyte takes about half). Versions come from one counter in
//! the `evogate:meta` table, bumped by every commit, so a version is never
//! reused even after a key is deleted and re-created.
//!
//! After an I/O error (a full disk, say) redb refuses every later call until
//! the database is closed and opened again, which repairs it. The backend
//! does that itself: calls answer `unavailable` until the file opens again,
//! then the same process serves on, no restart needed.

use super::{
    Backend, Check, Compression, Entry, KvError, Scan, ScanPage, Write, decode_entry, encode_entry, entry_version,
};
use kv_contract::Page;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError, TableHandle as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

const META: TableDefinition<'static, &str, u64> = TableDefinition::new("evogate:meta");
const LAST_VERSION: &str = "last_version";

/// How often a database that failed to open again is retried.
const REOPEN_EVERY: Duration = Duration::from_millis(200);

/// Where [`repack`] rewrites a table: outside the namespaces' names.
const REPACKED: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("evogate:repacking");

/// Rewrites table `name` in key order into full leaves, in one transaction:
/// a copy made as one run of ascending keys takes the table's name.
fn repack(db: &Database, name: &str) -> Result<(), redb::Error> {
    let definition = TableDefinition::<&str, &[u8]>::new(name);
    let txn = db.begin_write()?;
    {
        let source = txn.open_table(definition)?;
        let mut copy = txn.open_table(REPACKED)?;
        let mut at = copy.upper_bound_mut(std::ops::Bound::<&str>::Unbounded)?;
        for entry in source.range::<&str>(..)? {
            let (key, value) = entry?;
            at.insert_before(key.value(), value.value())?;
        }
        at.close()?;
    }
    txn.delete_table(definition)?;
    txn.rename_table(REPACKED, definition)?;
    txn.commit()?;
    Ok(())
}

/// Applies `writes` (a key and its value, or `None` to delete it; a later
/// write of a key wins) to `table`. New keys that come in ascending order
/// and fall in the same gap of the table (a delivery's index entries by
/// date, the records of a restore) go in through a cursor as one run, which
/// redb packs into full leaves: written one by one, each would split a full
/// leaf into two halves, and a family that grows at its end would stay
/// about half full. Any other write is made in place. Keys out of order are
/// written all the same, each where it belongs.
fn write_in_order<K: AsRef<str>, V: AsRef<[u8]>>(
    table: &mut redb::Table<'_, &str, &[u8]>,
    writes: impl IntoIterator<Item = (K, Option<V>)>,
) -> Result<(), redb::Error> {
    // Values are made as they are written (the iterator's), one ahead at most.
    let mut writes = writes.into_iter().peekable();
    while let Some((first, value)) = writes.next() {
        let key = first.as_ref();
        let mut at = table.lower_bound_mut(std::ops::Bound::Included(key))?;
        let next: Option<String> = at.peek_next()?.map(|(next, _)| next.value().to_owned());
        // A run: a new key, and the next write's key falls in the same gap.
        let same_gap = |second: &str| key < second && next.as_deref().is_none_or(|next| second < next);
        match &value {
            Some(value)
                if next.as_deref() != Some(key)
                    && writes.peek().is_some_and(|(second, _)| same_gap(second.as_ref())) =>
            {
                at.insert_before(key, value.as_ref())?;
            }
            _ => {
                // Alone in its gap, or a key the table has: written in place, as a
                // leaf already copied in this transaction takes it without a copy.
                at.close()?;
                match value {
                    Some(value) => table.insert(key, value.as_ref()).map(drop)?,
                    None => table.remove(key).map(drop)?,
                }
                continue;
            }
        }
        let mut last = first;
        while let Some((key, _)) = writes.peek() {
            // The gap is `key`'s too when it comes after the last key written
            // and no entry of the table lies between them.
            let key = key.as_ref();
            if !(last.as_ref() < key && at.peek_next()?.is_none_or(|(next, _)| next.value() >= key)) {
                break;
            }
            let Some((written, value)) = writes.next() else { break };
            let key = written.as_ref();
            if at.peek_next()?.is_some_and(|(next, _)| next.value() == key) {
                at.remove_next()?;
            }
            if let Some(value) = value {
                at.insert_before(key, value.as_ref())?;
            }
            last = written;
        }
        at.close()?;
    }
    Ok(())
}

/// A redb database file shared by every plugin.
pub struct RedbBackend {
    /// `None` while the file, closed after an I/O error, could not be opened again.
    db: RwLock<Option<Database>>,
    /// Set by a call that met an I/O error: the database must be reopened.
    broken: AtomicBool,
    /// When reopening was last tried.
    reopened: Mutex<Option<Instant>>,
    path: PathBuf,
    /// How values are written.
    compression: Compression,
}

impl std::fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbBackend").field("path", &self.path).finish_non_exhaustive()
    }
}

impl RedbBackend {
    /// Opens (or creates) the database file, creating its directory too.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent() {
            crate::data_dir::create(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
        }
        // Every merchant's cloud token is in it: made readable by this user
        // only (redb would make it with the process's umask).
        let mut file = std::fs::OpenOptions::new();
        file.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
        file.open(path).with_context(|| format!("creating redb store {}", path.display()))?;
        let db = Database::create(path).with_context(|| format!("opening redb store {}", path.display()))?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            broken: AtomicBool::new(false),
            reopened: Mutex::new(None),
            path: path.to_owned(),
            compression: Compression::default(),
        })
    }

    /// The same store, writing values as `compression` says from now on
    /// (what is written either way reads back either way).
    #[must_use]
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Rewrites every namespace's table in key order, its leaves packed full,
    /// then gives the file's free pages back to the file system (redb's
    /// compaction), with no gateway on the file: its size before and after.
    ///
    /// Leaves of keys written in no order (uuids) settle about two thirds
    /// full, and erasures leave them emptier; the rewrite packs them. Each
    /// table is rewritten in a transaction of its own, so an interruption
    /// leaves every table whole, rewritten or as it was; the file needs room
    /// for the largest table twice while it is rewritten.
    pub fn compact(&self) -> anyhow::Result<(u64, u64)> {
        use anyhow::Context as _;
        let size = || {
            std::fs::metadata(&self.path)
                .map(|meta| meta.len())
                .with_context(|| format!("reading {}", self.path.display()))
        };
        let before = size()?;
        let mut db = self.db.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let db = db.as_mut().context("the store is closed after an I/O error")?;
        let names: Vec<String> = {
            let txn = db.begin_read().context("reading the store's tables")?;
            namespace_tables(txn.list_tables().context("reading the store's tables")?)
        };
        for name in &names {
            repack(db, name).with_context(|| format!("rewriting {name} in {}", self.path.display()))?;
        }
        // Each pass moves pages down and frees the end; a pass that moves nothing ends it.
        for _ in 0..8 {
            if !db.compact().with_context(|| format!("compacting {}", self.path.display()))? {
                break;
            }
        }
        Ok((before, size()?))
    }

    /// Runs `call` on the open database; reopens it first or after when an I/O error broke it.
    fn with_db<T>(&self, call: impl FnOnce(&Database) -> Result<T, KvError>) -> Result<T, KvError> {
        if self.broken.load(Ordering::Acquire) {
            self.reopen();
        }
        let result = {
            let db = self.db.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            match db.as_ref() {
                Some(db) => call(db),
                None => Err(KvError::Unavailable(format!(
                    "redb store {} is closed after an I/O error and could not be opened again yet",
                    self.path.display()
                ))),
            }
        };
        if self.broken.load(Ordering::Acquire) {
            self.reopen();
        }
        result
    }

    /// Closes the database and opens it again (redb repairs it on open), at
    /// most every [`REOPEN_EVERY`]; calls in progress finish first.
    fn reopen(&self) {
        {
            let mut last = self.reopened.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < REOPEN_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut db = self.db.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.broken.load(Ordering::Acquire) {
            return;
        }
        // redb holds a lock on the file: the old handle must be gone before the new one opens.
        drop(db.take());
        match Database::create(&self.path) {
            Ok(opened) => {
                *db = Some(opened);
                self.broken.store(false, Ordering::Release);
                tracing::warn!(path = %self.path.display(), "redb store reopened after an I/O error");
            }
            Err(err) => {
                tracing::error!(path = %self.path.display(), error = %err, "redb store could not be reopened yet")
            }
        }
    }

    /// A failed call as `unavailable`; an I/O error marks the database for reopening.
    fn failed(&self, err: impl Into<redb::Error>) -> KvError {
        let err = err.into();
        if matches!(err, redb::Error::Io(_) | redb::Error::PreviousIo) && !self.broken.swap(true, Ordering::AcqRel) {
            tracing::error!(path = %self.path.display(), error = %err, "redb store I/O error: it will be reopened");
        }
        KvError::Unavailable(err.to_string())
    }
}

/// What the name of every namespace's table starts with.
const TABLE_PREFIX: &str = "kv:";

/// The names of the namespaces' tables among `tables`, sorted.
fn namespace_tables(tables: impl Iterator<Item = redb::UntypedTableHandle>) -> Vec<String> {
    let mut names: Vec<String> =
        tables.map(|table| table.name().to_owned()).filter(|name| name.starts_with(TABLE_PREFIX)).collect();
    names.sort();
    names
}

/// The table holding namespace `ns`.
fn table(ns: &str) -> String {
    format!("{TABLE_PREFIX}{ns}")
}

impl Backend for RedbBackend {
    fn describe(&self) -> String {
        format!("redb at {}", self.path.display())
    }

    fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, KvError> {
        self.with_db(|db| {
            let name = table(ns);
            let txn = db.begin_read().map_err(|err| self.failed(err))?;
            let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(err) => return Err(self.failed(err)),
            };
            match table.get(key).map_err(|err| self.failed(err))? {
                Some(raw) => decode_entry(raw.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    fn get_many(&self, ns: &str, keys: &[String], max_bytes: usize) -> Result<Vec<Option<Entry>>, KvError> {
        self.with_db(|db| {
            let name = table(ns);
            // One read transaction: every key as of the same commit.
            let txn = db.begin_read().map_err(|err| self.failed(err))?;
            let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return super::get_many_answer(keys, max_bytes, |_| Ok(None)),
                Err(err) => return Err(self.failed(err)),
            };
            super::get_many_answer(keys, max_bytes, |key| match table.get(key).map_err(|err| self.failed(err))? {
                Some(raw) => decode_entry(raw.value()).map(Some),
                None => Ok(None),
            })
        })
    }

    fn scan(&self, ns: &str, bounds: &Scan) -> Result<ScanPage, KvError> {
        self.with_db(|db| {
            let name = table(ns);
            let txn = db.begin_read().map_err(|err| self.failed(err))?;
            let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(err) => return Err(self.failed(err)),
            };
            let mut page = Page::new(&bounds.prefix, bounds.start_after.as_deref(), bounds.limit, bounds.max_bytes);
            let range =
                table.range::<&str>((page.start(), std::ops::Bound::Unbounded)).map_err(|err| self.failed(err))?;
            for item in range {
                let (key, raw) = item.map_err(|err| self.failed(err))?;
                if !page.offer(key.value(), || decode_entry(raw.value()))? {
                    break;
                }
            }
            Ok(page.into_entries())
        })
    }

    fn commit(&self, ns: &str, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        self.with_db(|db| {
            let name = table(ns);
            // The default durability of a redb write transaction is `Immediate`:
            // `commit` returns only once the data is fsynced.
            let txn = db.begin_write().map_err(|err| self.failed(err))?;
            {
                let mut table =
                    txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(|err| self.failed(err))?;
                for check in checks {
                    let current = match table.get(check.key()).map_err(|err| self.failed(err))? {
                        Some(raw) => Some(entry_version(raw.value())?),
                        None => None,
                    };
                    if !check.holds(current) {
                        // Dropping `txn` without commit aborts it: nothing is written.
                        return Err(KvError::Conflict);
                    }
                }
                let mut meta = txn.open_table(META).map_err(|err| self.failed(err))?;
                let version = meta.get(LAST_VERSION).map_err(|err| self.failed(err))?.map_or(0, |v| v.value()) + 1;
                meta.insert(LAST_VERSION, version).map_err(|err| self.failed(err))?;
                // One writer at a time: versions, and so stamps, follow commit order.
                let mut resolved: Vec<_> = super::resolve(writes, version).collect();
                // In key order (a stable sort: of two writes of a key, the later still wins).
                resolved.sort_by(|(a, _), (b, _)| a.cmp(b));
                let encoded = resolved
                    .into_iter()
                    .map(|(key, value)| (key, value.map(|value| encode_entry(version, value, self.compression))));
                write_in_order(&mut table, encoded).map_err(|err| self.failed(err))?;
            }
            // An I/O error while committing leaves it open whether the commit
            // reached the disk (the repair on reopen decides): outcome unknown.
            txn.commit().map_err(|err| {
                let err: redb::Error = err.into();
                let written = matches!(err, redb::Error::Io(_));
                match self.failed(err) {
                    KvError::Unavailable(reason) if written => KvError::OutcomeUnknown(reason),
                    other => other,
                }
            })
        })
    }

    fn ping(&self) -> Result<(), KvError> {
        self.with_db(|db| db.begin_read().map(drop).map_err(|err| self.failed(err)))
    }

    fn kind(&self) -> &'static str {
        "redb"
    }

    /// The file's blocks, as `du` counts them. redb lengthens the file
    /// ahead of its needs, doubling it while it is under 4 GiB: the part not
    /// written yet is a hole that takes no disk, so the file's length says
    /// more than the disk pays.
    fn bytes_on_disk(&self) -> Result<Option<u64>, KvError> {
        let metadata = std::fs::metadata(&self.path)
            .map_err(|err| KvError::Unavailable(format!("reading the size of {}: {err}", self.path.display())))?;
        #[cfg(unix)]
        let bytes = std::os::unix::fs::MetadataExt::blocks(&metadata) * 512;
        #[cfg(not(unix))]
        let bytes = metadata.len();
        Ok(Some(bytes))
    }

    fn snapshot(&self) -> Result<Box<dyn super::backup::Snapshot>, KvError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(|err| self.failed(err))?;
            let tables = namespace_tables(txn.list_tables().map_err(|err| self.failed(err))?);
            let last_version = match txn.open_table(META) {
                Ok(meta) => meta.get(LAST_VERSION).map_err(|err| self.failed(err))?.map_or(0, |v| v.value()),
                Err(TableError::TableDoesNotExist(_)) => 0,
                Err(err) => return Err(self.failed(err)),
            };
            Ok(Box::new(RedbSnapshot { txn, tables, at: 0, after: None, last_version })
                as Box<dyn super::backup::Snapshot>)
        })
    }

    fn restore(&self, records: &[super::backup::Record], last_version: u64) -> Result<(), KvError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(|err| self.failed(err))?;
            {
                let highest = records.iter().map(|record| record.entry.version).fold(last_version, u64::max);
                // A namespace's records at a time: a table is open once at a time in a transaction.
                for group in records.chunk_by(|a, b| a.ns == b.ns) {
                    let name = table(&group[0].ns);
                    let mut table =
                        txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(|err| self.failed(err))?;
                    let writes = group.iter().map(|record| {
                        let value = encode_entry(record.entry.version, &record.entry.value, self.compression);
                        (record.key.as_str(), Some(value))
                    });
                    write_in_order(&mut table, writes).map_err(|err| self.failed(err))?;
                }
                let mut meta = txn.open_table(META).map_err(|err| self.failed(err))?;
                let current = meta.get(LAST_VERSION).map_err(|err| self.failed(err))?.map_or(0, |v| v.value());
                meta.insert(LAST_VERSION, current.max(highest)).map_err(|err| self.failed(err))?;
            }
            txn.commit().map_err(|err| self.failed(err))
        })
    }

    fn clear(&self) -> Result<(), KvError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(|err| self.failed(err))?;
            for name in namespace_tables(txn.list_tables().map_err(|err| self.failed(err))?) {
                txn.delete_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(|err| self.failed(err))?;
            }
            txn.commit().map_err(|err| self.failed(err))
        })
    }
}

/// A redb read transaction, read table by table (namespace order), key by key.
struct RedbSnapshot {
    txn: redb::ReadTransaction,
    /// The namespaces' tables, in order.
    tables: Vec<String>,
    /// The table being read.
    at: usize,
    /// The last key read from it.
    after: Option<String>,
    last_version: u64,
}

impl super::backup::Snapshot for RedbSnapshot {
    fn last_version(&self) -> u64 {
        self.last_version
    }

    fn next(&mut self, max_bytes: usize) -> Result<Vec<super::backup::Record>, KvError> {
        let unavailable = |err: redb::Error| KvError::Unavailable(format!("redb snapshot: {err}"));
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while let Some(name) = self.tables.get(self.at) {
            let ns = name.strip_prefix(TABLE_PREFIX).unwrap_or(name).to_owned();
            let table = self
                .txn
                .open_table(TableDefinition::<&str, &[u8]>::new(name))
                .map_err(|err| unavailable(err.into()))?;
            let range = match self.after.as_deref() {
                Some(after) => table.range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
                None => table.range::<&str>(..),
            }
            .map_err(|err| unavailable(err.into()))?;
            for item in range {
                let (key, raw) = item.map_err(|err| unavailable(err.into()))?;
                let key = key.value().to_owned();
                let entry = decode_entry(raw.value())?;
                bytes += key.len() + entry.value.len();
                self.after = Some(key.clone());
                chunk.push(super::backup::Record { ns: ns.clone(), key, entry });
                if bytes >= max_bytes {
                    return Ok(chunk);
                }
            }
            self.at += 1;
            self.after = None;
        }
        Ok(chunk)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// Bytes of the records in `ns`'s table against the bytes of its leaves.
    fn leaf_fill(store: &RedbBackend, ns: &str) -> f64 {
        store
            .with_db(|db| {
                use redb::ReadableTableMetadata as _;
                let txn = db.begin_read().map_err(|err| store.failed(err))?;
                let name = table(ns);
                let table =
                    txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(|err| store.failed(err))?;
                let stats = table.stats().map_err(|err| store.failed(err))?;
                Ok(stats.stored_bytes() as f64 / (stats.leaf_pages() * 4096) as f64)
            })
            .expect("stats")
    }

    #[test]
    fn keys_that_arrive_in_ascending_order_fill_their_leaves() {
        let temp = tempfile::tempdir().expect("temp dir");
        let store =
            RedbBackend::open(&temp.path().join("fill.redb")).expect("open").with_compression(Compression::None);
        // A log: a hundred ascending keys a commit, as a delivery's index entries come,
        // with keys of another family before and after them.
        store
            .commit("p", &[], &[Write::Set("a".into(), vec![1; 100]), Write::Set("z".into(), vec![1; 100])])
            .expect("commit");
        for commit in 0..50 {
            let writes: Vec<Write> = (0..100)
                .map(|n| Write::Set(format!("log/{:06}", commit * 100 + n), vec![(n % 251) as u8; 200]))
                .collect();
            store.commit("p", &[], &writes).expect("commit");
        }
        let fill = leaf_fill(&store, "p");
        assert!(fill > 0.85, "leaves {:.0} % full", fill * 100.0);
        // The same records from a restore of them.
        let records: Vec<_> = store.snapshot().expect("snapshot").next(usize::MAX).expect("records");
        let copy = RedbBackend::open(&temp.path().join("copy.redb")).expect("open").with_compression(Compression::None);
        copy.restore(&records, 0).expect("restore");
        let fill = leaf_fill(&copy, "p");
        assert!(fill > 0.85, "restored leaves {:.0} % full", fill * 100.0);
        let page = |store: &RedbBackend, after: &str| {
            store.scan("p", &crate::kv::Scan::of("", Some(after), 1000, usize::MAX)).expect("scan")
        };
        for after in ["", "log/001999", "log/004500"] {
            assert_eq!(page(&copy, after), page(&store, after), "after {after:?}");
        }
    }

    #[test]
    fn compaction_packs_the_leaves_of_keys_written_in_no_order_and_keeps_every_record() {
        let temp = tempfile::tempdir().expect("temp dir");
        let store = RedbBackend::open(&temp.path().join("r.redb")).expect("open").with_compression(Compression::None);
        // Keys in no order, as uuids come, a few a commit, in two namespaces.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..400 {
            let writes: Vec<Write> =
                (0..10).map(|n| Write::Set(format!("doc/{:016x}", random()), vec![n as u8; 300])).collect();
            store.commit("p", &[], &writes).expect("commit");
            store.commit("q", &[], &writes[..2]).expect("commit");
        }
        let all = |store: &RedbBackend, ns: &str| {
            store.scan(ns, &crate::kv::Scan::of("", None, 10_000, usize::MAX)).expect("scan")
        };
        let (p, q) = (all(&store, "p"), all(&store, "q"));
        assert_eq!((p.len(), q.len()), (4000, 800));
        let loose = leaf_fill(&store, "p");
        assert!(loose < 0.8, "leaves {:.0} % full before", loose * 100.0);
        let (before, after) = store.compact().expect("compact");
        let packed = leaf_fill(&store, "p");
        assert!(packed > 0.9, "leaves {:.0} % full after, {:.0} % before", packed * 100.0, loose * 100.0);
        assert!(after < before, "{before} → {after}");
        let highest = p.iter().chain(&q).map(|(_, entry)| entry.version).max().unwrap_or(0);
        assert_eq!((all(&store, "p"), all(&store, "q")), (p, q), "every record, with its version");
        // The store goes on: versions keep growing.
        store.commit("q", &[], &[Write::Set("after".into(), b"compaction".to_vec())]).expect("commit");
        let entry = store.get("q", "after").expect("get").expect("present");
        assert!(entry.version > highest);
    }

    #[test]
    fn compaction_gives_freed_pages_back_and_keeps_every_record() {
        let temp = tempfile::tempdir().expect("temp dir");
        let store = RedbBackend::open(&temp.path().join("c.redb")).expect("open");
        let value = vec![7u8; 64 << 10];
        for n in 0..200 {
            store.commit("p", &[], &[Write::Set(format!("k/{n:03}"), value.clone())]).expect("commit");
        }
        let deletes: Vec<Write> = (0..190).map(|n| Write::Delete(format!("k/{n:03}"))).collect();
        store.commit("p", &[], &deletes).expect("delete");
        let (before, after) = store.compact().expect("compact");
        assert!(after * 2 < before, "{before} → {after}");
        let left = store.scan("p", &crate::kv::Scan::of("k/", None, 1000, usize::MAX)).expect("scan");
        assert_eq!(left.len(), 10);
        assert!(left.iter().all(|(_, entry)| entry.value == value));
    }

    /// Entries written before values were compressed (the version's top bit
    /// clear) read as they always did beside compressed ones.
    #[test]
    fn records_of_a_kilobyte_are_kept_compressed_beside_entries_written_as_they_were() {
        let temp = tempfile::tempdir().expect("temp dir");
        let store = RedbBackend::open(&temp.path().join("z.redb")).expect("open");
        let old = br#"{"v":1,"name":"Tea","price":100,"name2":"Tea","price2":100,"name3":"Tea","price3":100}"#;
        store
            .with_db(|db| {
                let txn = db.begin_write().map_err(|err| store.failed(err))?;
                {
                    let mut table = txn
                        .open_table(TableDefinition::<&str, &[u8]>::new(&table("p")))
                        .map_err(|err| store.failed(err))?;
                    let raw = [7u64.to_le_bytes().as_slice(), old.as_slice()].concat();
                    table.insert("old", raw.as_slice()).map_err(|err| store.failed(err))?;
                }
                txn.commit().map_err(|err| store.failed(err))
            })
            .expect("an entry as earlier builds wrote it");
        let record = |n: usize| {
            format!(r#"{{"v":1,"id":"doc-{n:08}","positions":[{}]}}"#, r#"{"name":"Tea","price":100},"#.repeat(30))
        };
        store.commit("p", &[], &[Write::Set("new".into(), record(1).into_bytes())]).expect("commit");
        let entry = store.get("p", "old").expect("get").expect("present");
        assert_eq!((entry.value.as_slice(), entry.version), (old.as_slice(), 7));
        let new = store.get("p", "new").expect("get").expect("present");
        assert_eq!(new.value, record(1).into_bytes());
        // The version reads the same from the entry as the check of a commit sees it.
        let current = Check::VersionIs("new".into(), new.version);
        store.commit("p", &[current], &[Write::Set("new".into(), b"x".to_vec())]).expect("the check holds");
        let stored = store
            .with_db(|db| {
                let txn = db.begin_read().map_err(|err| store.failed(err))?;
                let table = txn
                    .open_table(TableDefinition::<&str, &[u8]>::new(&table("p")))
                    .map_err(|err| store.failed(err))?;
                let raw = table.get("old").map_err(|err| store.failed(err))?.expect("present");
                Ok(raw.value().len())
            })
            .expect("raw");
        assert_eq!(stored, 8 + old.len(), "an old entry is left as it is");
        let packed = super::super::encode_entry(3, record(2).as_bytes(), Compression::Zstd);
        assert!(packed.len() * 4 < record(2).len(), "{} → {}", record(2).len(), packed.len());
        assert_eq!(decode_entry(&packed).expect("decode").value, record(2).into_bytes());
    }

    /// `store.compression = "none"`: what is written from then on is kept
    /// as given, and what was written compressed still reads.
    #[test]
    fn a_store_without_compression_writes_values_as_given_and_reads_compressed_ones() {
        let temp = tempfile::tempdir().expect("temp dir");
        let path = temp.path().join("n.redb");
        let record = r#"{"name":"Tea","price":100},"#.repeat(40).into_bytes();
        let stored_bytes = |store: &RedbBackend, key: &str| {
            store
                .with_db(|db| {
                    let txn = db.begin_read().map_err(|err| store.failed(err))?;
                    let table = txn
                        .open_table(TableDefinition::<&str, &[u8]>::new(&table("p")))
                        .map_err(|err| store.failed(err))?;
                    Ok(table.get(key).map_err(|err| store.failed(err))?.expect("present").value().len())
                })
                .expect("raw")
        };
        {
            let store = RedbBackend::open(&path).expect("open");
            store.commit("p", &[], &[Write::Set("zstd".into(), record.clone())]).expect("commit");
            assert!(stored_bytes(&store, "zstd") * 4 < record.len(), "compressed by default");
        }
        let store = RedbBackend::open(&path).expect("open").with_compression(Compression::None);
        store.commit("p", &[], &[Write::Set("plain".into(), record.clone())]).expect("commit");
        assert_eq!(stored_bytes(&store, "plain"), 8 + record.len(), "kept as given");
        for key in ["zstd", "plain"] {
            assert_eq!(store.get("p", key).expect("get").expect("present").value, record, "{key}");
        }
    }

    #[test]
    fn a_new_store_file_and_its_directory_are_readable_by_this_user_only() {
        let temp = tempfile::tempdir().expect("temp dir");
        let store = temp.path().join("data/evogate.redb");
        drop(RedbBackend::open(&store).expect("open"));
        let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&store), 0o600, "the store holds every merchant's cloud token");
        assert_eq!(mode(store.parent().expect("dir")), 0o700);
    }
}
