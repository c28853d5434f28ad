//! The embedded default backend: one redb file, one table per namespace.
//!
//! A value is stored as its 8-byte version followed by the bytes, which are
//! zstd-compressed when the version's top bit is set (see `kv::codec`: a
//! record of a kilobyte takes about half). Versions come from one counter in
//! the `evogate:meta` table, bumped by every commit, so a version is never
//! reused even after a key is deleted and re-created.
//!
//! A value of half a kilobyte or more that comes in a commit with others
//! like it (a delivery of documents or products) is kept apart from its key,
//! in the namespace's values table, under a slot numbered in the order values
//! are written; the key's entry keeps the version and the slot. Keys written
//! in no order (uuids) leave a B-tree's leaves about two thirds full, so a
//! value kept with such a key took half its size again; slots grow with
//! every commit, so a commit's values go in at the end of the values table
//! as one run that fills its leaves. A value written alone would split the
//! table's last leaf into two halves: it stays with its key, as do the
//! values of stamped keys and of a restore, whose keys come in order
//! already; a value once apart is rewritten in its slot.
//!
//! Records appended one a commit (an event's log and feed records) split
//! the last leaf of their family into halves whenever it fills, and redb
//! has no split that keeps the left leaf full: such a family would stay
//! half full. About one commit in [`PACK_TAIL_EVERY`] moves the records its
//! families got since the last such commit back in as one run, which fills
//! their leaves.
//!
//! After an I/O error (a full disk, say) redb refuses every later call until
//! the database is closed and opened again, which repairs it. The backend
//! does that itself: calls answer `unavailable` until the file opens again,
//! then the same process serves on, no restart needed.

use super::{
    APART, Backend, COMPRESSED, Check, Compression, Entry, KvError, Scan, ScanPage, Write, codec, decode_entry,
    encode_entry, entry_version, split_entry,
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
const REPACKED: &str = "evogate:repacking";

/// A value of at least this many bytes is kept apart from its key when its
/// commit brings [`APART_RUN_BYTES`] of such values.
const APART_FROM: usize = 512;

/// How many bytes of values of [`APART_FROM`] or more a commit brings for
/// them to go apart: a run that fills a few leaves (values are compressed to
/// about half), where the last leaf's split into halves costs little.
const APART_RUN_BYTES: usize = 16 << 10;

/// About one commit in this many packs the tail of each family of stamped
/// keys it appends to (see [`pack_tail`]): a few dozen records, a few
/// leaves' worth, moved at once.
const PACK_TAIL_EVERY: u64 = 32;
const _: () = assert!(PACK_TAIL_EVERY.is_power_of_two(), "packs_tail takes the top bits of a hash");

/// Most bytes of records one packing moves: records larger than a leaf
/// gain nothing from it, and a commit's work stays bounded.
const PACK_TAIL_BYTES: usize = 256 << 10;

/// Whether the commit of `version` packs the tails of the families it
/// appends to. Chosen by a hash of the version, not its remainder, so that
/// no pattern of commits (a family written every other commit, say) is
/// always passed over.
fn packs_tail(version: u64) -> bool {
    // The top bits of a multiplicative hash: a power of two's worth of them.
    const SHIFT: u32 = u64::BITS - PACK_TAIL_EVERY.trailing_zeros();
    version.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> SHIFT == 0
}

/// Moves the records appended to the family of keys stamped after `prefix`
/// since the last commit that packed it (the newest record whose stamp
/// [`packs_tail`] chose, and older than this commit's `version`) back in as
/// one run, from the gap after that record: redb rebuilds the leaf of the
/// gap and the run into full leaves, where appended one a commit the
/// records sat in leaves split into halves. Stops at a key of the range
/// that is not stamped (another family's), and after [`PACK_TAIL_BYTES`].
/// Entries move as they are stored: versions and slots are kept.
fn pack_tail(table: &mut redb::Table<'_, &str, &[u8]>, prefix: &str, version: u64) -> Result<(), redb::Error> {
    // Stamps are decimal digits: the family lies between `prefix0` and `prefix:`.
    let (low, high) = (format!("{prefix}0"), format!("{prefix}:"));
    let mut tail = Vec::new();
    let mut bytes = 0;
    for entry in table.range(low.as_str()..high.as_str())?.rev() {
        let (key, raw) = entry?;
        let key = key.value();
        let Some(stamp) = kv_contract::stamp_of(key, prefix) else { break };
        if stamp < version && packs_tail(stamp) {
            break;
        }
        bytes += key.len() + raw.value().len();
        if bytes > PACK_TAIL_BYTES {
            break;
        }
        tail.push((key.to_owned(), raw.value().to_vec()));
    }
    if tail.len() < 2 {
        return Ok(());
    }
    tail.reverse();
    let mut at = table.lower_bound_mut(std::ops::Bound::Included(tail[0].0.as_str()))?;
    for _ in &tail {
        at.remove_next()?;
    }
    for (key, raw) in &tail {
        at.insert_before(key.as_str(), raw.as_slice())?;
    }
    Ok(at.close()?)
}

/// Rewrites table `name` (keys of type `K`) in key order into full leaves,
/// in one transaction: a copy made as one run of ascending keys takes the
/// table's name.
fn repack<K: redb::Key + 'static>(db: &Database, name: &str) -> Result<(), redb::Error> {
    let definition = TableDefinition::<K, &[u8]>::new(name);
    let repacked = TableDefinition::<K, &[u8]>::new(REPACKED);
    let txn = db.begin_write()?;
    {
        let source = txn.open_table(definition)?;
        let mut copy = txn.open_table(repacked)?;
        let mut at = copy.upper_bound_mut(std::ops::Bound::<K::SelfType<'_>>::Unbounded)?;
        for entry in source.range::<K::SelfType<'_>>(..)? {
            let (key, value) = entry?;
            at.insert_before(key.value(), value.value())?;
        }
        at.close()?;
    }
    txn.delete_table(definition)?;
    txn.rename_table(repacked, definition)?;
    txn.commit()?;
    Ok(())
}

/// The entry of a value kept apart in `slot` (see [`APART`]). The slot is
/// big-endian: its first bytes are zeros, never a zstd frame's magic.
fn apart_entry(version: u64, slot: u64) -> Vec<u8> {
    [(version | COMPRESSED | APART).to_le_bytes(), slot.to_be_bytes()].concat()
}

/// The version and slot of an entry whose value is kept apart; `None` for
/// an entry that holds its value.
fn apart_slot(raw: &[u8]) -> Result<Option<(u64, u64)>, KvError> {
    let (bits, bytes) = split_entry(raw)?;
    if bits & APART == 0 {
        return Ok(None);
    }
    let slot = <[u8; 8]>::try_from(bytes)
        .map_err(|_| KvError::Unavailable("corrupt entry: a value kept apart without its slot".into()))?;
    Ok(Some((bits & !(COMPRESSED | APART), u64::from_be_bytes(slot))))
}

/// Where a write's value goes.
#[derive(Clone, Copy)]
enum Place {
    /// With its key (or a delete).
    Whole,
    /// Apart, in this slot of the values table.
    Apart(u64),
}

/// A write as [`write_entries`] takes it.
struct Pending<K, V> {
    key: K,
    /// The version and the value, or `None` to delete the key.
    value: Option<(u64, V)>,
    /// The value may go apart. A stamped key comes after every key of its
    /// family, so such values are in order with their keys already, and
    /// nothing is gained by moving them; nor in a restore, whose keys come
    /// in order into an empty table.
    may_go_apart: bool,
}

/// Writes `writes` (in key order, each key once) to namespace `ns`'s tables
/// in `txn`. Values of [`APART_FROM`] or more that may go apart do when they
/// add up to [`APART_RUN_BYTES`], in new slots appended in key order; a
/// value apart already is rewritten in its slot, and the slots of the
/// entries a write replaced or deleted otherwise are let go. Only the keys of
/// values that may go apart are looked up first (to find a slot to rewrite
/// in); the others' entries are seen as they are replaced.
fn write_entries<K: AsRef<str>, V: AsRef<[u8]>>(
    txn: &redb::WriteTransaction,
    ns: &str,
    writes: &[Pending<K, V>],
    compression: Compression,
    fail: &dyn Fn(redb::Error) -> KvError,
) -> Result<(), KvError> {
    let name = table(ns);
    let mut table = txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(|err| fail(err.into()))?;
    // The value's length when it may go apart.
    let movable = |write: &Pending<K, V>| {
        let length = write.value.as_ref().map_or(0, |(_, value)| value.as_ref().len());
        (write.may_go_apart && length >= APART_FROM).then_some(length)
    };
    let run = writes.iter().filter_map(movable).sum::<usize>() >= APART_RUN_BYTES;
    // The slots that the keys of values that may go apart hold now.
    let mut held = Vec::with_capacity(writes.len());
    for write in writes {
        let slot = if movable(write).is_some() {
            match table.get(write.key.as_ref()).map_err(|err| fail(err.into()))? {
                Some(raw) => apart_slot(raw.value())?.map(|(_, slot)| slot),
                None => None,
            }
        } else {
            None
        };
        held.push(slot);
    }
    let mut places = vec![Place::Whole; writes.len()];
    if run || held.iter().any(Option::is_some) {
        let name = values_table(ns);
        let mut values = txn.open_table(TableDefinition::<u64, &[u8]>::new(&name)).map_err(|err| fail(err.into()))?;
        let mut next = values.last().map_err(|err| fail(err.into()))?.map_or(0, |(slot, _)| slot.value() + 1);
        let mut new = Vec::new();
        for (at, (write, slot)) in writes.iter().zip(&held).enumerate() {
            let value = &write.value;
            match (value, slot) {
                (Some((_, bytes)), Some(slot)) => {
                    let framed = codec::frame(bytes.as_ref(), compression);
                    values.insert(slot, framed.as_slice()).map_err(|err| fail(err.into()))?;
                    places[at] = Place::Apart(*slot);
                }
                (Some(_), None) if run && movable(write).is_some() => {
                    places[at] = Place::Apart(next);
                    new.push(at);
                    next += 1;
                }
                _ => {}
            }
        }
        // The new slots, at the table's end: one run, into full leaves.
        let mut end = values.upper_bound_mut(std::ops::Bound::<u64>::Unbounded).map_err(|err| fail(err.into()))?;
        for at in new {
            let (Place::Apart(slot), Some((_, bytes))) = (places[at], &writes[at].value) else { continue };
            let framed = codec::frame(bytes.as_ref(), compression);
            end.insert_before(slot, framed.as_slice()).map_err(|err| fail(err.into()))?;
        }
        end.close().map_err(|err| fail(err.into()))?;
    }
    let entries = writes.iter().zip(&places).map(|(Pending { key, value, .. }, place)| {
        let entry = value.as_ref().map(|(version, bytes)| match place {
            Place::Apart(slot) => apart_entry(*version, *slot),
            Place::Whole => encode_entry(*version, bytes.as_ref(), compression),
        });
        (key.as_ref(), entry)
    });
    // The slots of the entries replaced or deleted, but for those rewritten in place.
    let mut gone = Vec::new();
    let mut corrupt = None;
    write_in_order(&mut table, entries, &mut |old| match apart_slot(old) {
        Ok(Some((_, slot))) => gone.push(slot),
        Ok(None) => {}
        Err(err) => corrupt = Some(err),
    })
    .map_err(fail)?;
    if let Some(err) = corrupt {
        return Err(err);
    }
    let kept: std::collections::BTreeSet<u64> = held.into_iter().flatten().collect();
    gone.retain(|slot| !kept.contains(slot));
    if !gone.is_empty() {
        let name = values_table(ns);
        let mut values = txn.open_table(TableDefinition::<u64, &[u8]>::new(&name)).map_err(|err| fail(err.into()))?;
        for slot in gone {
            values.remove(slot).map_err(|err| fail(err.into()))?;
        }
    }
    Ok(())
}

/// A namespace's entries as a read transaction sees them: values kept apart
/// are read from the namespace's values table, opened at the first.
struct Entries<'t> {
    txn: &'t redb::ReadTransaction,
    ns: &'t str,
    values: Option<redb::ReadOnlyTable<u64, &'static [u8]>>,
    fail: &'t dyn Fn(redb::Error) -> KvError,
}

impl<'t> Entries<'t> {
    fn new(txn: &'t redb::ReadTransaction, ns: &'t str, fail: &'t dyn Fn(redb::Error) -> KvError) -> Self {
        Self { txn, ns, values: None, fail }
    }

    /// The entry stored as `raw`.
    fn decode(&mut self, raw: &[u8]) -> Result<Entry, KvError> {
        let Some((version, slot)) = apart_slot(raw)? else { return decode_entry(raw) };
        let values = match &mut self.values {
            Some(values) => values,
            None => {
                let name = values_table(self.ns);
                let values = self
                    .txn
                    .open_table(TableDefinition::<u64, &[u8]>::new(&name))
                    .map_err(|err| (self.fail)(err.into()))?;
                self.values.insert(values)
            }
        };
        let framed = values.get(slot).map_err(|err| (self.fail)(err.into()))?.ok_or_else(|| {
            KvError::Unavailable(format!("corrupt entry: the value kept apart in slot {slot} is missing"))
        })?;
        Ok(Entry { value: codec::unframe(framed.value().to_vec())?, version })
    }
}

/// Applies `writes` (a key and its value, or `None` to delete it; a later
/// write of a key wins) to `table`. New keys that come in ascending order
/// and fall in the same gap of the table (a delivery's index entries by
/// date, the records of a restore) go in through a cursor as one run, which
/// redb packs into full leaves: written one by one, each would split a full
/// leaf into two halves, and a family that grows at its end would stay
/// about half full. Any other write is made in place. Keys out of order are
/// written all the same, each where it belongs. `displaced` is given the
/// entry each write replaced or deleted.
fn write_in_order<K: AsRef<str>, V: AsRef<[u8]>>(
    table: &mut redb::Table<'_, &str, &[u8]>,
    writes: impl IntoIterator<Item = (K, Option<V>)>,
    displaced: &mut dyn FnMut(&[u8]),
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
                let old = match value {
                    Some(value) => table.insert(key, value.as_ref())?,
                    None => table.remove(key)?,
                };
                if let Some(old) = old {
                    displaced(old.value());
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
            if at.peek_next()?.is_some_and(|(next, _)| next.value() == key)
                && let Some((_, old)) = at.remove_next()?
            {
                displaced(old.value());
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
        let (names, values): (Vec<String>, Vec<String>) = {
            let txn = db.begin_read().context("reading the store's tables")?;
            let tables: Vec<_> = txn.list_tables().context("reading the store's tables")?.collect();
            (tables_named(tables.iter(), TABLE_PREFIX), tables_named(tables.iter(), VALUES_PREFIX))
        };
        for name in &names {
            repack::<&str>(db, name).with_context(|| format!("rewriting {name} in {}", self.path.display()))?;
        }
        for name in &values {
            repack::<u64>(db, name).with_context(|| format!("rewriting {name} in {}", self.path.display()))?;
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

/// What the name of every namespace's values table starts with: its values
/// kept apart from their keys, by slot.
const VALUES_PREFIX: &str = "values:";

/// The names among `tables` that start with `prefix`, sorted.
fn tables_named<'t>(tables: impl Iterator<Item = &'t redb::UntypedTableHandle>, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> =
        tables.map(|table| table.name().to_owned()).filter(|name| name.starts_with(prefix)).collect();
    names.sort();
    names
}

/// The table holding namespace `ns`.
fn table(ns: &str) -> String {
    format!("{TABLE_PREFIX}{ns}")
}

/// The table holding namespace `ns`'s values kept apart.
fn values_table(ns: &str) -> String {
    format!("{VALUES_PREFIX}{ns}")
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
            let fail = |err: redb::Error| self.failed(err);
            match table.get(key).map_err(|err| self.failed(err))? {
                Some(raw) => Entries::new(&txn, ns, &fail).decode(raw.value()).map(Some),
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
            let fail = |err: redb::Error| self.failed(err);
            let mut entries = Entries::new(&txn, ns, &fail);
            super::get_many_answer(keys, max_bytes, |key| match table.get(key).map_err(|err| self.failed(err))? {
                Some(raw) => entries.decode(raw.value()).map(Some),
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
            let fail = |err: redb::Error| self.failed(err);
            let mut entries = Entries::new(&txn, ns, &fail);
            let mut page = Page::new(&bounds.prefix, bounds.start_after.as_deref(), bounds.limit, bounds.max_bytes);
            let range =
                table.range::<&str>((page.start(), std::ops::Bound::Unbounded)).map_err(|err| self.failed(err))?;
            for item in range {
                let (key, raw) = item.map_err(|err| self.failed(err))?;
                if !page.offer(key.value(), || entries.decode(raw.value()))? {
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
                let table =
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
                drop(table);
                let mut meta = txn.open_table(META).map_err(|err| self.failed(err))?;
                let version = meta.get(LAST_VERSION).map_err(|err| self.failed(err))?.map_or(0, |v| v.value()) + 1;
                meta.insert(LAST_VERSION, version).map_err(|err| self.failed(err))?;
                // One writer at a time: versions, and so stamps, follow commit order.
                let mut resolved: Vec<_> = super::resolve(writes, version)
                    .zip(writes)
                    .map(|((key, value), write)| Pending {
                        key,
                        value: value.map(|value| (version, value)),
                        may_go_apart: !matches!(write, Write::SetStamped(..)),
                    })
                    .collect();
                // In key order, each key once: of two writes of a key, the later wins
                // (a stable sort keeps them in order; the last of a run is kept).
                resolved.sort_by(|a, b| a.key.cmp(&b.key));
                resolved.reverse();
                resolved.dedup_by(|later, earlier| later.key == earlier.key);
                resolved.reverse();
                write_entries(&txn, ns, &resolved, self.compression, &|err| self.failed(err))?;
                if packs_tail(version) {
                    let prefixes: std::collections::BTreeSet<&str> = writes
                        .iter()
                        .filter_map(|write| match write {
                            Write::SetStamped(prefix, _) => Some(prefix.as_str()),
                            _ => None,
                        })
                        .collect();
                    if !prefixes.is_empty() {
                        let mut table = txn
                            .open_table(TableDefinition::<&str, &[u8]>::new(&name))
                            .map_err(|err| self.failed(err))?;
                        for prefix in prefixes {
                            pack_tail(&mut table, prefix, version).map_err(|err| self.failed(err))?;
                        }
                    }
                }
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
            let tables: Vec<_> = txn.list_tables().map_err(|err| self.failed(err))?.collect();
            let tables = tables_named(tables.iter(), TABLE_PREFIX);
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
                    let writes: Vec<_> = group
                        .iter()
                        .map(|record| Pending {
                            key: record.key.as_str(),
                            value: Some((record.entry.version, record.entry.value.as_slice())),
                            may_go_apart: false,
                        })
                        .collect();
                    write_entries(&txn, &group[0].ns, &writes, self.compression, &|err| self.failed(err))?;
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
            let tables: Vec<_> = txn.list_tables().map_err(|err| self.failed(err))?.collect();
            let ours = |table: &redb::UntypedTableHandle| {
                table.name().starts_with(TABLE_PREFIX) || table.name().starts_with(VALUES_PREFIX)
            };
            for table in tables.into_iter().filter(ours) {
                txn.delete_table(table).map_err(|err| self.failed(err))?;
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
            let mut entries = Entries::new(&self.txn, &ns, &unavailable);
            for item in range {
                let (key, raw) = item.map_err(|err| unavailable(err.into()))?;
                let key = key.value().to_owned();
                let entry = entries.decode(raw.value())?;
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

    /// Bytes of the records in table `name` (keys of type `K`) against the bytes of its leaves, and its records.
    fn fill<K: redb::Key + 'static>(store: &RedbBackend, name: &str) -> (f64, u64) {
        store
            .with_db(|db| {
                use redb::ReadableTableMetadata as _;
                let txn = db.begin_read().map_err(|err| store.failed(err))?;
                let table = txn.open_table(TableDefinition::<K, &[u8]>::new(name)).map_err(|err| store.failed(err))?;
                let stats = table.stats().map_err(|err| store.failed(err))?;
                let records = table.len().map_err(|err| store.failed(err))?;
                Ok((stats.stored_bytes() as f64 / (stats.leaf_pages() * 4096) as f64, records))
            })
            .expect("stats")
    }

    /// Bytes of the records in `ns`'s table against the bytes of its leaves.
    fn leaf_fill(store: &RedbBackend, ns: &str) -> f64 {
        fill::<&str>(store, &table(ns)).0
    }

    /// Bytes of the records in `ns`'s values table against the bytes of its leaves, and its records.
    fn values_fill(store: &RedbBackend, ns: &str) -> (f64, u64) {
        fill::<u64>(store, &values_table(ns))
    }

    /// The version of the store's last commit.
    fn last_version(store: &RedbBackend) -> u64 {
        store
            .with_db(|db| {
                let txn = db.begin_read().map_err(|err| store.failed(err))?;
                let meta = txn.open_table(META).map_err(|err| store.failed(err))?;
                Ok(meta.get(LAST_VERSION).map_err(|err| store.failed(err))?.expect("a commit").value())
            })
            .expect("last version")
    }

    /// The slot of `key`'s value, when it is kept apart.
    fn slot_of(store: &RedbBackend, ns: &str, key: &str) -> Option<u64> {
        store
            .with_db(|db| {
                let txn = db.begin_read().map_err(|err| store.failed(err))?;
                let table =
                    txn.open_table(TableDefinition::<&str, &[u8]>::new(&table(ns))).map_err(|err| store.failed(err))?;
                let raw = table.get(key).map_err(|err| store.failed(err))?.expect("present");
                Ok(apart_slot(raw.value())?.map(|(_, slot)| slot))
            })
            .expect("raw entry")
    }

    /// Bytes that no compression shortens, as ids and sums make records.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn values_of_a_delivery_are_kept_apart_in_full_leaves_and_read_as_written() {
        let temp = tempfile::tempdir().expect("temp dir");
        let store = RedbBackend::open(&temp.path().join("a.redb")).expect("open").with_compression(Compression::None);
        // Deliveries of fifty records of a kilobyte under keys in no order, as documents come.
        let mut model = std::collections::BTreeMap::new();
        for delivery in 0..40u64 {
            let writes: Vec<Write> = (0..50u64)
                .map(|n| {
                    let seed = delivery * 50 + n + 1;
                    let key = format!("doc/{:016x}", u64::from_le_bytes(noise(seed, 8).try_into().expect("8")));
                    Write::Set(key, noise(seed, 1000))
                })
                .collect();
            for write in &writes {
                if let Write::Set(key, value) = write {
                    model.insert(key.clone(), value.clone());
                }
            }
            store.commit("p", &[], &writes).expect("commit");
        }
        assert!(model.keys().all(|key| slot_of(&store, "p", key).is_some()), "every value of a delivery apart");
        let (fill, records) = values_fill(&store, "p");
        assert_eq!(records, 2000);
        assert!(fill > 0.85, "values' leaves {:.0} % full", fill * 100.0);
        assert!(leaf_fill(&store, "p") < 0.8, "the keys' own leaves fill as keys in no order do");
        let keys: Vec<String> = model.keys().cloned().collect();
        // A value written alone stays with its key; one apart is rewritten in its slot.
        store.commit("p", &[], &[Write::Set("alone".into(), noise(7, 1000))]).expect("commit");
        model.insert("alone".into(), noise(7, 1000));
        assert_eq!(slot_of(&store, "p", "alone"), None);
        let slot = slot_of(&store, "p", &keys[0]);
        store.commit("p", &[], &[Write::Set(keys[0].clone(), noise(8, 1200))]).expect("commit");
        model.insert(keys[0].clone(), noise(8, 1200));
        assert_eq!(slot_of(&store, "p", &keys[0]), slot, "rewritten in its slot");
        // Made small, a value goes back to its key; deleted, it goes: their slots are let go.
        store.commit("p", &[], &[Write::Set(keys[1].clone(), b"small".to_vec())]).expect("commit");
        model.insert(keys[1].clone(), b"small".to_vec());
        assert_eq!(slot_of(&store, "p", &keys[1]), None);
        store.commit("p", &[], &[Write::Delete(keys[2].clone())]).expect("commit");
        model.remove(&keys[2]);
        assert_eq!(values_fill(&store, "p").1, 1998, "no slot is left behind");
        let expected: Vec<(String, Vec<u8>)> = model.into_iter().collect();
        let all = |store: &RedbBackend| {
            store
                .scan("p", &crate::kv::Scan::of("", None, 10_000, usize::MAX))
                .expect("scan")
                .into_iter()
                .map(|(key, entry)| (key, entry.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(all(&store), expected);
        let many = store.get_many("p", &keys[..100], usize::MAX).expect("get_many");
        for (entry, key) in many.iter().zip(&keys) {
            let expected = expected.iter().find(|(k, _)| k == key).map(|(_, v)| v);
            assert_eq!(entry.as_ref().map(|entry| &entry.value), expected, "{key}");
        }
        // Stamped keys come in order: their values stay with them.
        let log: Vec<Write> = (0..40).map(|n| Write::SetStamped("log/".into(), noise(100 + n, 1000))).collect();
        store.commit("p", &[], &log).expect("commit");
        let stamped = store.scan("p", &crate::kv::Scan::of("log/", None, 100, usize::MAX)).expect("scan");
        assert_eq!(stamped.len(), 40);
        assert!(stamped.iter().all(|(key, _)| slot_of(&store, "p", key).is_none()), "stamped values apart");
        store
            .commit("p", &[], &stamped.iter().map(|(key, _)| Write::Delete(key.clone())).collect::<Vec<_>>())
            .expect("commit");
        // A copy of the store holds values with their keys: a restore writes its keys in order.
        let records: Vec<_> = store.snapshot().expect("snapshot").next(usize::MAX).expect("records");
        let copy = RedbBackend::open(&temp.path().join("copy.redb")).expect("open");
        copy.restore(&records, 0).expect("restore");
        assert_eq!(all(&copy), expected);
        assert!(expected.iter().all(|(key, _)| slot_of(&copy, "p", key).is_none()), "restored values apart");
        store.compact().expect("compact");
        assert_eq!(all(&store), expected, "after compaction");
        store.clear().expect("clear");
        assert!(all(&store).is_empty());
        let tables = store
            .with_db(|db| {
                let txn = db.begin_read().map_err(|err| store.failed(err))?;
                Ok(txn.list_tables().map_err(|err| store.failed(err))?.map(|t| t.name().to_owned()).collect::<Vec<_>>())
            })
            .expect("tables");
        assert!(tables.iter().all(|name| !name.starts_with(VALUES_PREFIX)), "{tables:?}");
    }

    proptest::proptest! {
        /// A build that knows nothing of values kept apart takes an entry
        /// that is for a compressed value, and fails on it: it never reads a
        /// slot as a value.
        #[test]
        fn an_entry_kept_apart_is_a_corrupt_value_to_a_build_that_does_not_know_it(
            version in 1u64..1 << 40, slot in 0u64..1 << 56,
        ) {
            let raw = apart_entry(version, slot);
            let (bits, bytes) = split_entry(&raw).expect("split");
            proptest::prop_assert!(bits & COMPRESSED != 0);
            proptest::prop_assert!(codec::decompress(bytes).is_err());
            proptest::prop_assert!(decode_entry(&raw).is_err());
            proptest::prop_assert_eq!(entry_version(&raw).expect("version"), version);
            proptest::prop_assert_eq!(apart_slot(&raw).expect("slot"), Some((version, slot)));
        }
    }

    /// A store writing values as given, its namespace `p` holding a key
    /// before and one after the families a test writes.
    fn store_between_two_keys(path: &Path) -> RedbBackend {
        let store = RedbBackend::open(path).expect("open").with_compression(Compression::None);
        store
            .commit("p", &[], &[Write::Set("a".into(), vec![1; 100]), Write::Set("z".into(), vec![1; 100])])
            .expect("commit");
        store
    }

    #[test]
    fn keys_that_arrive_in_ascending_order_fill_their_leaves() {
        let temp = tempfile::tempdir().expect("temp dir");
        // A log: a hundred ascending keys a commit, as a delivery's index entries come,
        // with keys of another family before and after them.
        let store = store_between_two_keys(&temp.path().join("fill.redb"));
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
    fn records_appended_one_a_commit_fill_their_leaves() {
        let temp = tempfile::tempdir().expect("temp dir");
        // Events: each commit appends a log record and a feed record, and sets a
        // marker under a key in no order; other families lie before and after.
        let store = store_between_two_keys(&temp.path().join("tail.redb"));
        let mut model = std::collections::BTreeMap::new();
        for n in 0..3000u64 {
            let (log, feed) = (noise(n, 300 + (n % 7) as usize * 40), noise((1 << 32) + n, 120));
            let marker = format!("seen/{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let writes = [
                Write::SetStamped("log/".into(), log.clone()),
                Write::SetStamped("feed/".into(), feed.clone()),
                Write::Set(marker.clone(), vec![]),
            ];
            store.commit("p", &[], &writes).expect("commit");
            let stamp = last_version(&store);
            model.insert(kv_contract::stamped_key("log/", stamp, 0), log);
            // A commit's stamped writes are numbered across their prefixes.
            model.insert(kv_contract::stamped_key("feed/", stamp, 1), feed);
            model.insert(marker, vec![]);
            // Retention takes the oldest records now and then.
            if n % 500 == 499 {
                let stamped = |key: &&String| key.starts_with("log/") || key.starts_with("feed/");
                let old: Vec<String> = model.keys().filter(stamped).take(200).cloned().collect();
                let writes: Vec<Write> = old.iter().map(|key| Write::Delete(key.clone())).collect();
                store.commit("p", &[], &writes).expect("commit");
                old.iter().for_each(|key| drop(model.remove(key)));
            }
        }
        model.insert("a".into(), vec![1; 100]);
        model.insert("z".into(), vec![1; 100]);
        let fill = leaf_fill(&store, "p");
        assert!(fill > 0.8, "leaves {:.0} % full", fill * 100.0);
        let stored: std::collections::BTreeMap<String, Vec<u8>> = store
            .scan("p", &crate::kv::Scan::of("", None, 100_000, usize::MAX))
            .expect("scan")
            .into_iter()
            .map(|(key, entry)| (key, entry.value))
            .collect();
        let missing = model.keys().filter(|key| !stored.contains_key(*key));
        let extra = stored.keys().filter(|key| !model.contains_key(*key));
        let differ: Vec<_> = missing.chain(extra).take(5).collect();
        assert!(differ.is_empty(), "keys not as written: {differ:?}");
        assert!(stored == model, "values as written");
        for key in model.keys().step_by(97) {
            assert_eq!(store.get("p", key).expect("get").map(|entry| entry.value).as_ref(), model.get(key), "{key}");
        }
    }

    #[test]
    fn about_one_commit_in_pack_tail_every_packs_whatever_the_stride_of_its_versions() {
        for stride in [1u64, 2, 3, 32, 1000] {
            let chosen = (1..=64_000u64).filter(|n| packs_tail(n * stride)).count() as f64;
            let expected = 64_000.0 / PACK_TAIL_EVERY as f64;
            assert!((chosen / expected - 1.0).abs() < 0.1, "stride {stride}: {chosen} of 64000");
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
