//! Backups of the whole store, and moving it between backends.
//!
//! A backup is every record of every namespace — the plugins' and the
//! gateway's own (deployments, job leases) — as of one moment: a backend's
//! [`Snapshot`] reads them in (namespace, key) order from one read
//! transaction while the gateway serves on. Each record keeps its version,
//! and the backup keeps the store's version counter, so a restore brings
//! back every `version-is` check, every stamped key (the change feed's
//! cursors) and a counter that only goes on growing.
//!
//! The file format, version 1 (integers little-endian):
//!
//! ```text
//! "EVOGATE-BACKUP\n"  u32 format (1)
//! per record:  0x01  u32 namespace length, namespace  u32 key length, key
//!              u64 version  u32 value length, value
//! the end:     0xFF  u64 records  u64 the store's last version
//!              32 bytes: SHA-256 of every byte before them
//! ```
//!
//! A reader checks the checksum before it trusts anything: [`verify`]
//! reads a file whole, and a restore writes nothing until it has. Records
//! over the store's limits (a key over 1 KiB, a value over 4 MiB) are
//! refused as corrupt, so a hostile file cannot make a reader allocate more.

use super::{Backend, Entry, KvError, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// The first bytes of every backup file.
pub const MAGIC: &[u8] = b"EVOGATE-BACKUP\n";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Longest namespace name in a backup (a plugin's name, or the gateway's own).
const MAX_NAMESPACE_BYTES: usize = 128;
const RECORD: u8 = 0x01;
const END: u8 = 0xFF;
/// Records written to the target store per commit, at most.
const BATCH_RECORDS: usize = 1000;
/// Value bytes written to the target store per commit, at most (one record may exceed it).
const BATCH_BYTES: usize = 16 << 20;
/// Value bytes a snapshot reads per chunk.
pub const CHUNK_BYTES: usize = 4 << 20;

/// One stored key of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The namespace (a plugin's name, or one of the gateway's).
    pub ns: String,
    /// The key.
    pub key: String,
    /// Its version and value.
    pub entry: Entry,
}

/// A consistent view of a whole store as of one moment (a backend's read
/// transaction), read a chunk at a time.
pub trait Snapshot: Send {
    /// The store's version counter when the snapshot was taken: no record
    /// of it has a higher version.
    fn last_version(&self) -> u64;

    /// The next records in (namespace, key) order, about `max_bytes` of
    /// values (at least one record); none at the end.
    fn next(&mut self, max_bytes: usize) -> Result<Vec<Record>, KvError>;
}

/// What a backup (or a store) holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records per namespace.
    pub namespaces: BTreeMap<String, u64>,
    /// Records in all.
    pub records: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
    /// The store's version counter.
    pub last_version: u64,
}

impl Summary {
    fn count(&mut self, record: &Record) {
        *self.namespaces.entry(record.ns.clone()).or_default() += 1;
        self.records += 1;
        self.bytes += (record.key.len() + record.entry.value.len()) as u64;
    }
}

/// Why a backup file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a backup, another format, cut short, or altered.
    #[error("not a usable backup: {0}")]
    Corrupt(String),
    /// The store failed.
    #[error("the store failed: {0}")]
    Store(#[from] KvError),
}

/// Writes a backup file record by record, checksumming as it goes.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    hash: sha2::Sha256,
    records: u64,
}

impl<W: Write> Writer<W> {
    /// Starts a backup on `out` (its header written).
    pub fn new(out: W) -> std::io::Result<Self> {
        let mut writer = Self { out, hash: sha2::Sha256::new(), records: 0 };
        writer.put(MAGIC)?;
        writer.put(&FORMAT.to_le_bytes())?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)
    }

    /// Appends one record.
    pub fn record(&mut self, record: &Record) -> std::io::Result<()> {
        self.put(&[RECORD])?;
        for text in [&record.ns, &record.key] {
            self.put(&len32(text.len())?.to_le_bytes())?;
            self.put(text.as_bytes())?;
        }
        self.put(&record.entry.version.to_le_bytes())?;
        self.put(&len32(record.entry.value.len())?.to_le_bytes())?;
        self.put(&record.entry.value)?;
        self.records += 1;
        Ok(())
    }

    /// Ends the file with the count, the store's counter and the checksum; the writer back.
    pub fn finish(mut self, last_version: u64) -> std::io::Result<W> {
        self.put(&[END])?;
        let records = self.records;
        self.put(&records.to_le_bytes())?;
        self.put(&last_version.to_le_bytes())?;
        let sum = self.hash.finalize_reset();
        self.out.write_all(&sum)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn len32(len: usize) -> std::io::Result<u32> {
    u32::try_from(len).map_err(|_| std::io::Error::other("a record field over 4 GiB"))
}

/// Reads a backup file record by record; the last call checks the checksum.
#[derive(Debug)]
pub struct Reader<R: Read> {
    input: R,
    hash: sha2::Sha256,
    records: u64,
    done: Option<(u64, u64)>,
}

impl<R: Read> Reader<R> {
    /// Opens a backup on `input`: its header must be this build's format.
    pub fn new(input: R) -> Result<Self, FileError> {
        let mut reader = Self { input, hash: sha2::Sha256::new(), records: 0, done: None };
        let mut magic = [0; MAGIC.len()];
        reader.take(&mut magic)?;
        if magic != MAGIC {
            return Err(FileError::Corrupt("it does not start as an evogate backup".into()));
        }
        let format = reader.u32()?;
        if format != FORMAT {
            return Err(FileError::Corrupt(format!("format {format}; this build reads format {FORMAT}")));
        }
        Ok(reader)
    }

    fn take(&mut self, into: &mut [u8]) -> Result<(), FileError> {
        self.input.read_exact(into).map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => FileError::Corrupt("it ends before its end: cut short".into()),
            _ => FileError::Io(err),
        })?;
        self.hash.update(&*into);
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, FileError> {
        let mut bytes = [0; 4];
        self.take(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn u64(&mut self) -> Result<u64, FileError> {
        let mut bytes = [0; 8];
        self.take(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn bytes(&mut self, max: usize, what: &str) -> Result<Vec<u8>, FileError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(FileError::Corrupt(format!("a {what} of {len} bytes, over the store's {max}")));
        }
        let mut bytes = vec![0; len];
        self.take(&mut bytes)?;
        Ok(bytes)
    }

    fn text(&mut self, max: usize, what: &str) -> Result<String, FileError> {
        String::from_utf8(self.bytes(max, what)?).map_err(|_| FileError::Corrupt(format!("a {what} that is not UTF-8")))
    }

    /// The next record; `None` once the end is read and the checksum holds.
    pub fn next_record(&mut self) -> Result<Option<Record>, FileError> {
        if self.done.is_some() {
            return Ok(None);
        }
        let mut tag = [0];
        self.take(&mut tag)?;
        match tag[0] {
            RECORD => {
                let ns = self.text(MAX_NAMESPACE_BYTES, "namespace")?;
                let key = self.text(MAX_KEY_BYTES, "key")?;
                let version = self.u64()?;
                let value = self.bytes(MAX_VALUE_BYTES, "value")?;
                self.records += 1;
                Ok(Some(Record { ns, key, entry: Entry { value, version } }))
            }
            END => {
                let records = self.u64()?;
                let last_version = self.u64()?;
                let computed = self.hash.finalize_reset();
                let mut sum = [0; 32];
                self.input.read_exact(&mut sum).map_err(|_| FileError::Corrupt("its checksum is cut short".into()))?;
                if computed.as_slice() != sum {
                    return Err(FileError::Corrupt("its checksum does not match: the file was altered".into()));
                }
                if records != self.records {
                    return Err(FileError::Corrupt(format!("{} records, the end says {records}", self.records)));
                }
                let mut rest = [0];
                if self.input.read(&mut rest)? != 0 {
                    return Err(FileError::Corrupt("bytes follow its end".into()));
                }
                self.done = Some((records, last_version));
                Ok(None)
            }
            other => Err(FileError::Corrupt(format!("an unknown record tag {other:#04x}"))),
        }
    }

    /// The store's version counter, once the end is read.
    pub fn last_version(&self) -> Option<u64> {
        self.done.map(|(_, last_version)| last_version)
    }
}

/// Reads a backup whole and checks it: what it holds, or why it is not usable.
pub fn verify(input: impl Read) -> Result<Summary, FileError> {
    let mut reader = Reader::new(input)?;
    let mut summary = Summary::default();
    let mut previous: Option<(String, String)> = None;
    while let Some(record) = reader.next_record()? {
        let position = (record.ns.clone(), record.key.clone());
        if previous.as_ref().is_some_and(|previous| *previous >= position) {
            return Err(FileError::Corrupt(format!(
                "record {:?}/{:?} out of order or repeated",
                record.ns, record.key
            )));
        }
        previous = Some(position);
        summary.count(&record);
    }
    summary.last_version = reader.last_version().unwrap_or_default();
    Ok(summary)
}

/// Writes `snapshot` whole to `out` as a backup file; `progress` hears the
/// running summary after each chunk.
pub fn write_snapshot<W: Write>(
    snapshot: &mut dyn Snapshot,
    out: W,
    mut progress: impl FnMut(&Summary),
) -> Result<(W, Summary), FileError> {
    let mut writer = Writer::new(out)?;
    let mut summary = Summary { last_version: snapshot.last_version(), ..Summary::default() };
    loop {
        let chunk = snapshot.next(CHUNK_BYTES)?;
        if chunk.is_empty() {
            break;
        }
        for record in &chunk {
            writer.record(record)?;
            summary.count(record);
        }
        progress(&summary);
    }
    Ok((writer.finish(summary.last_version)?, summary))
}

/// Writes `records` into `target` in batches, raising its version counter
/// to `last_version` with the last one; what was written.
pub fn restore_records(
    target: &dyn Backend,
    records: impl Iterator<Item = Result<Record, FileError>>,
    last_version: impl FnOnce() -> u64,
    mut progress: impl FnMut(&Summary),
) -> Result<Summary, FileError> {
    let mut summary = Summary::default();
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for record in records {
        let record = record?;
        bytes += record.entry.value.len();
        summary.count(&record);
        batch.push(record);
        if batch.len() >= BATCH_RECORDS || bytes >= BATCH_BYTES {
            target.restore(&std::mem::take(&mut batch), 0)?;
            bytes = 0;
            progress(&summary);
        }
    }
    summary.last_version = last_version();
    target.restore(&batch, summary.last_version)?;
    progress(&summary);
    Ok(summary)
}

/// Copies every record of `source` (one snapshot) into `target`, versions
/// and counter included.
pub fn copy(source: &dyn Backend, target: &dyn Backend, progress: impl FnMut(&Summary)) -> Result<Summary, FileError> {
    let mut snapshot = source.snapshot()?;
    let last_version = snapshot.last_version();
    let mut chunk = std::collections::VecDeque::new();
    let records = std::iter::from_fn(|| {
        if chunk.is_empty() {
            match snapshot.next(CHUNK_BYTES) {
                Ok(next) => chunk.extend(next),
                Err(err) => return Some(Err(FileError::Store(err))),
            }
        }
        chunk.pop_front().map(Ok)
    });
    restore_records(target, records, || last_version, progress)
}

/// A snapshot of records held in memory, in order (the memory backend's).
pub(crate) struct InMemory {
    records: std::vec::IntoIter<Record>,
    last_version: u64,
}

impl InMemory {
    pub(crate) fn new(mut records: Vec<Record>, last_version: u64) -> Self {
        records.sort_by(|a, b| (&a.ns, &a.key).cmp(&(&b.ns, &b.key)));
        Self { records: records.into_iter(), last_version }
    }
}

impl Snapshot for InMemory {
    fn last_version(&self) -> u64 {
        self.last_version
    }

    fn next(&mut self, max_bytes: usize) -> Result<Vec<Record>, KvError> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while bytes < max_bytes.max(1) {
            let Some(record) = self.records.next() else { break };
            bytes += record.entry.value.len() + 1;
            chunk.push(record);
        }
        Ok(chunk)
    }
}

/// The namespace of the marker an unfinished restore leaves.
pub const RESTORE_NS: &str = "evogate:restore";
/// The marker's key: present while a restore runs, and after one that did not finish.
const UNFINISHED: &str = "unfinished";

/// Why a restore or a copy did not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The file is not a usable backup, or reading or writing failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The target store holds records, and `--force` was not given.
    #[error(
        "the target store is not empty ({0}): restore into an empty store, or give --force to delete everything in it first"
    )]
    NotEmpty(String),
}

impl From<KvError> for RestoreError {
    fn from(err: KvError) -> Self {
        RestoreError::File(FileError::Store(err))
    }
}

/// What `target` holds first, if anything: the namespace of its first record.
fn first_namespace(target: &dyn Backend) -> Result<Option<String>, KvError> {
    Ok(target.snapshot()?.next(1)?.into_iter().next().map(|record| record.ns))
}

/// Makes `target` ready for a restore: empty, or emptied with `force`;
/// then marks it as being restored until [`finish`] removes the mark.
fn prepare(target: &dyn Backend, force: bool, from: &str) -> Result<(), RestoreError> {
    if let Some(ns) = first_namespace(target)? {
        if !force {
            let what = match ns.as_str() {
                RESTORE_NS => "an unfinished restore".to_owned(),
                ns => format!("namespace {ns:?} has records"),
            };
            return Err(RestoreError::NotEmpty(what));
        }
        target.clear()?;
    }
    let marker = Record {
        ns: RESTORE_NS.into(),
        key: UNFINISHED.into(),
        entry: Entry { value: format!("{{\"from\":{from:?}}}").into_bytes(), version: 0 },
    };
    target.restore(&[marker], 0)?;
    Ok(())
}

/// Removes the mark [`prepare`] left: the restore is whole.
fn finish(target: &dyn Backend) -> Result<(), KvError> {
    target.commit(RESTORE_NS, &[], &[super::Write::Delete(UNFINISHED.into())])
}

/// Restores the backup file at `path` into `target`: the file is read and
/// checked whole first (a file cut short or altered is refused and nothing
/// is written); then `target` must be empty, or is emptied with `force`.
pub fn restore_file(
    target: &dyn Backend,
    path: &std::path::Path,
    force: bool,
    progress: impl FnMut(&Summary),
) -> Result<Summary, RestoreError> {
    let open = || -> Result<std::io::BufReader<std::fs::File>, FileError> {
        Ok(std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?))
    };
    let checked = verify(open()?)?;
    prepare(target, force, &path.display().to_string())?;
    let mut reader = Reader::new(open()?)?;
    let records = std::iter::from_fn(|| reader.next_record().transpose());
    let mut restored = restore_records(target, records, || checked.last_version, progress)?;
    finish(target)?;
    restored.last_version = checked.last_version;
    Ok(restored)
}

/// Copies `source` into `target` (empty, or emptied with `force`): every
/// record, version and the counter, from one snapshot of `source`.
pub fn copy_store(
    source: &dyn Backend,
    target: &dyn Backend,
    force: bool,
    progress: impl FnMut(&Summary),
) -> Result<Summary, RestoreError> {
    prepare(target, force, &source.describe())?;
    let copied = copy(source, target, progress)?;
    finish(target)?;
    Ok(copied)
}

/// What a walk over a store found: its records per namespace, and what is wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    /// The records, per namespace.
    pub summary: Summary,
    /// Each inconsistency, in words; none when the store is sound.
    pub problems: Vec<String>,
}

/// Walks `backend` from one snapshot: every record must decode, none may
/// carry a version above the store's counter, and no restore may have been
/// left unfinished.
pub fn inspect(backend: &dyn Backend) -> Result<Inspection, KvError> {
    let mut snapshot = backend.snapshot()?;
    let mut inspection = Inspection::default();
    inspection.summary.last_version = snapshot.last_version();
    loop {
        let chunk = match snapshot.next(CHUNK_BYTES) {
            Ok(chunk) => chunk,
            Err(err) => {
                inspection.problems.push(format!("a record could not be read: {err}"));
                return Ok(inspection);
            }
        };
        if chunk.is_empty() {
            return Ok(inspection);
        }
        for record in &chunk {
            if record.ns == RESTORE_NS {
                inspection.problems.push(format!(
                    "a restore did not finish ({}): restore again with --force",
                    String::from_utf8_lossy(&record.entry.value)
                ));
                continue;
            }
            if record.entry.version > inspection.summary.last_version {
                inspection.problems.push(format!(
                    "{:?}/{:?} has version {}, above the store's counter {}",
                    record.ns, record.key, record.entry.version, inspection.summary.last_version
                ));
            }
            inspection.summary.count(record);
        }
    }
}

#[cfg(test)]
mod tests;
