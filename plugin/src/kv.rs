//! The store as protocol code sees it: the WIT `kv` semantics as a trait.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A stored value and its version (changes on every write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Value bytes.
    pub value: Vec<u8>,
    /// Version; a `commit` check compares it.
    pub version: u64,
}

/// A precondition of [`Kv::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The key exists with this version.
    VersionIs(String, u64),
    /// The key is absent.
    Absent(String),
}

/// One change of [`Kv::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set the key.
    Set(String, Vec<u8>),
    /// Delete the key.
    Delete(String),
    /// Set `prefix` + the commit's stamp: keys that sort in commit order (WIT `set-stamped`).
    SetStamped(String, Vec<u8>),
}

/// The key the `index`-th stamped write of the commit stamped `stamp` gets.
pub fn stamped_key(prefix: &str, stamp: u64, index: usize) -> String {
    format!("{prefix}{stamp:020}.{index:06}")
}

/// Why a kv call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// A check failed; nothing written.
    Conflict,
    /// Over a size limit (key 1 KiB, value 4 MiB, 100,000 writes, scan 1000).
    TooLarge,
    /// The store cannot serve now; nothing written.
    Unavailable(String),
    /// A commit's answer was lost: it may or may not have been applied.
    OutcomeUnknown(String),
}

/// Longest key the host accepts.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value the host accepts.
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Largest scan limit the host accepts.
pub const MAX_SCAN_LIMIT: u32 = 1000;
/// Most writes in one commit.
pub const MAX_WRITES: usize = 100_000;

/// The host's transactional key-value store.
pub trait Kv {
    /// Reads one key.
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError>;
    /// Ordered prefix scan after `start_after`; an empty page means the end.
    fn scan(&self, prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError>;
    /// Atomic conditional write, durable on success. Takes the writes by
    /// value: a large commit's bytes are handed to the host, not copied.
    fn commit(&self, checks: Vec<Check>, writes: Vec<Write>) -> Result<(), KvError>;
}

/// An in-memory [`Kv`] with the host's semantics and limits, for native tests.
#[derive(Debug, Default)]
pub struct MemKv {
    inner: Mutex<(BTreeMap<String, Entry>, u64)>,
}

impl MemKv {
    fn lock(&self) -> std::sync::MutexGuard<'_, (BTreeMap<String, Entry>, u64)> {
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Every key, for assertions.
    pub fn keys(&self) -> Vec<String> {
        self.lock().0.keys().cloned().collect()
    }
}

impl Kv for MemKv {
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::TooLarge);
        }
        Ok(self.lock().0.get(key).cloned())
    }

    fn scan(&self, prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
        if limit > MAX_SCAN_LIMIT {
            return Err(KvError::TooLarge);
        }
        let guard = self.lock();
        Ok(guard
            .0
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(key, _)| start_after.is_none_or(|after| key.as_str() > after))
            .take(limit as usize)
            .map(|(key, entry)| (key.clone(), entry.clone()))
            .collect())
    }

    fn commit(&self, checks: Vec<Check>, writes: Vec<Write>) -> Result<(), KvError> {
        if writes.len() > MAX_WRITES {
            return Err(KvError::TooLarge);
        }
        let mut guard = self.lock();
        let (map, last) = &mut *guard;
        for check in &checks {
            let holds = match check {
                Check::VersionIs(key, version) => map.get(key).map(|e| e.version) == Some(*version),
                Check::Absent(key) => !map.contains_key(key),
            };
            if !holds {
                return Err(KvError::Conflict);
            }
        }
        for write in &writes {
            let (Write::Set(key, _) | Write::Delete(key) | Write::SetStamped(key, _)) = write;
            if key.len() > MAX_KEY_BYTES {
                return Err(KvError::TooLarge);
            }
            if let Write::Set(_, value) | Write::SetStamped(_, value) = write
                && value.len() > MAX_VALUE_BYTES
            {
                return Err(KvError::TooLarge);
            }
        }
        *last += 1;
        let mut stamped = 0;
        for write in writes {
            match write {
                Write::Set(key, value) => {
                    map.insert(key, Entry { value, version: *last });
                }
                Write::Delete(key) => {
                    map.remove(&key);
                }
                Write::SetStamped(prefix, value) => {
                    map.insert(stamped_key(&prefix, *last, stamped), Entry { value, version: *last });
                    stamped += 1;
                }
            }
        }
        Ok(())
    }
}
