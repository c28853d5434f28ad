//! The store as protocol code sees it: the WIT `kv` semantics as a trait.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
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
/// Most keys one [`Kv::get_many`] may ask for.
pub const MAX_GET_MANY_KEYS: usize = 1000;
/// Value bytes past which the host ends a scan page or a `get_many` answer early.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Most writes in one commit.
pub const MAX_WRITES: usize = 100_000;

/// The host's transactional key-value store.
pub trait Kv {
    /// Reads one key.
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError>;
    /// Reads up to [`MAX_GET_MANY_KEYS`] keys as of one moment, in one call
    /// (one round trip to a database). May answer only the first keys (at
    /// least one) to bound the answer's size; [`read_many`] asks again.
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError>;
    /// A hint: the request will soon `get` these keys. A store may read
    /// them now, together, and answer those `get`s from what it read. Never
    /// fails: anything that goes wrong shows up in the `get` itself.
    fn prefetch(&self, keys: &[String]) {
        let _ = keys;
    }
    /// Ordered prefix scan after `start_after`; an empty page means the end.
    fn scan(&self, prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError>;
    /// Atomic conditional write, durable on success. Takes the writes by
    /// value: a large commit's bytes are handed to the host, not copied.
    fn commit(&self, checks: Vec<Check>, writes: Vec<Write>) -> Result<(), KvError>;
}

/// Reads any number of keys as of one moment per [`Kv::get_many`] call:
/// batches of at most [`MAX_GET_MANY_KEYS`], each asked again from where a
/// short answer stopped.
pub fn read_many(kv: &dyn Kv, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
    let mut answer = Vec::with_capacity(keys.len());
    while answer.len() < keys.len() {
        let rest = &keys[answer.len()..];
        let batch = kv.get_many(&rest[..rest.len().min(MAX_GET_MANY_KEYS)])?;
        if batch.is_empty() || batch.len() > rest.len() {
            return Err(KvError::Unavailable(format!("get-many answered {} of {} keys", batch.len(), rest.len())));
        }
        answer.extend(batch);
    }
    Ok(answer)
}

/// A request's view of the store that answers each prefetched key's next
/// `get` from one `get_many` ([`Kv::prefetch`]). A prefetched entry is used
/// once; any commit forgets every one (the request then reads afresh).
/// Reading a key earlier than asked is safe: a read-only answer sees the
/// store as it was a moment before, and a commit checks the versions read.
pub struct Prefetching<'a> {
    kv: &'a dyn Kv,
    read: RefCell<HashMap<String, Option<Entry>>>,
}

impl std::fmt::Debug for Prefetching<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetching").field("prefetched", &self.read.borrow().len()).finish_non_exhaustive()
    }
}

impl<'a> Prefetching<'a> {
    /// Wraps `kv` for one request.
    pub fn new(kv: &'a dyn Kv) -> Self {
        Self { kv, read: RefCell::new(HashMap::new()) }
    }
}

impl Kv for Prefetching<'_> {
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        match self.read.borrow_mut().remove(key) {
            Some(entry) => Ok(entry),
            None => self.kv.get(key),
        }
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
        let mut read = self.read.borrow_mut();
        if !keys.is_empty() && keys.iter().all(|key| read.contains_key(key)) {
            // Each used once: a key asked twice is read the second time.
            let mut answer = Vec::with_capacity(keys.len());
            for key in keys {
                match read.remove(key) {
                    Some(entry) => answer.push(entry),
                    None => break,
                }
            }
            return Ok(answer);
        }
        drop(read);
        self.kv.get_many(keys)
    }

    fn prefetch(&self, keys: &[String]) {
        let wanted: Vec<String> = {
            let read = self.read.borrow();
            let mut wanted: Vec<String> = keys
                .iter()
                .filter(|key| key.len() <= MAX_KEY_BYTES && !read.contains_key(*key))
                .take(MAX_GET_MANY_KEYS)
                .cloned()
                .collect();
            wanted.sort_unstable();
            wanted.dedup();
            wanted
        };
        if wanted.is_empty() {
            return;
        }
        if let Ok(entries) = self.kv.get_many(&wanted) {
            self.read.borrow_mut().extend(wanted.into_iter().zip(entries));
        }
    }

    fn scan(&self, prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
        self.kv.scan(prefix, start_after, limit)
    }

    fn commit(&self, checks: Vec<Check>, writes: Vec<Write>) -> Result<(), KvError> {
        self.read.borrow_mut().clear();
        self.kv.commit(checks, writes)
    }
}

/// An in-memory [`Kv`] with the host's semantics and limits, for native tests.
#[derive(Debug, Default)]
pub struct MemKv {
    inner: Mutex<(BTreeMap<String, Entry>, u64)>,
    calls: std::sync::atomic::AtomicUsize,
}

impl MemKv {
    fn lock(&self) -> std::sync::MutexGuard<'_, (BTreeMap<String, Entry>, u64)> {
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Every key, for assertions.
    pub fn keys(&self) -> Vec<String> {
        self.lock().0.keys().cloned().collect()
    }

    /// How many calls the store has answered: each would be a host call,
    /// and a round trip to a database.
    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Kv for MemKv {
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        self.count();
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::TooLarge);
        }
        Ok(self.lock().0.get(key).cloned())
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
        self.count();
        if keys.len() > MAX_GET_MANY_KEYS || keys.iter().any(|key| key.len() > MAX_KEY_BYTES) {
            return Err(KvError::TooLarge);
        }
        let guard = self.lock();
        let mut answer = Vec::with_capacity(keys.len());
        let mut bytes = 0;
        for key in keys {
            if !answer.is_empty() && bytes >= MAX_ANSWER_BYTES {
                break;
            }
            let entry = guard.0.get(key).cloned();
            bytes += entry.as_ref().map_or(0, |entry| entry.value.len());
            answer.push(entry);
        }
        Ok(answer)
    }

    fn scan(&self, prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
        self.count();
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
        self.count();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that answers at most two keys per `get_many`.
    struct Short(MemKv);

    impl Kv for Short {
        fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
            self.0.get(key)
        }
        fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
            assert!(keys.len() <= MAX_GET_MANY_KEYS, "asked {} keys at once", keys.len());
            let mut answer = self.0.get_many(keys)?;
            answer.truncate(2);
            Ok(answer)
        }
        fn scan(&self, prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
            self.0.scan(prefix, after, limit)
        }
        fn commit(&self, checks: Vec<Check>, writes: Vec<Write>) -> Result<(), KvError> {
            self.0.commit(checks, writes)
        }
    }

    fn set(key: &str, value: &str) -> Write {
        Write::Set(key.into(), value.as_bytes().to_vec())
    }

    #[test]
    fn read_many_asks_again_after_short_answers_and_in_batches_the_host_takes() {
        let kv = Short(MemKv::default());
        kv.commit(vec![], (0..3000).step_by(3).map(|i| set(&format!("k{i:04}"), &i.to_string())).collect())
            .expect("commit");
        let keys: Vec<String> = (0..2500).map(|i| format!("k{i:04}")).collect();
        let read = read_many(&kv, &keys).expect("read");
        let expected: Vec<Option<Vec<u8>>> =
            (0..2500).map(|i| (i % 3 == 0).then(|| i.to_string().into_bytes())).collect();
        assert_eq!(read.into_iter().map(|e| e.map(|e| e.value)).collect::<Vec<_>>(), expected);
        assert_eq!(read_many(&kv, &[]).expect("nothing"), Vec::new());
    }

    #[test]
    fn a_prefetched_key_is_read_once_from_one_call_and_a_commit_forgets_it() {
        let store = MemKv::default();
        store.commit(vec![], vec![set("a", "1"), set("b", "2")]).expect("commit");
        let kv = Prefetching::new(&store);
        let before = store.calls();
        kv.prefetch(&["a".into(), "b".into(), "missing".into(), "a".into(), "k".repeat(MAX_KEY_BYTES + 1)]);
        assert_eq!(store.calls(), before + 1, "one call for every key, the oversized one left out");
        assert_eq!(kv.get("a").expect("a").map(|e| e.value), Some(b"1".to_vec()));
        assert_eq!(kv.get("missing").expect("missing"), None);
        assert_eq!(store.calls(), before + 1, "answered from the prefetch");
        store.commit(vec![], vec![set("a", "changed")]).expect("commit");
        assert_eq!(kv.get("a").expect("a").map(|e| e.value), Some(b"changed".to_vec()), "used once");
        // A commit through the view forgets what was prefetched: `b` is read afresh.
        kv.commit(vec![], vec![set("b", "new")]).expect("commit");
        assert_eq!(kv.get("b").expect("b").map(|e| e.value), Some(b"new".to_vec()));
        // `get_many` of prefetched keys takes them; of others, asks the store.
        kv.prefetch(&["a".into(), "b".into()]);
        let calls = store.calls();
        assert_eq!(kv.get_many(&["b".into(), "a".into()]).expect("both").len(), 2);
        assert_eq!(store.calls(), calls);
        assert_eq!(kv.get_many(&["a".into(), "zzz".into()]).expect("fresh").len(), 2);
        assert_eq!(store.calls(), calls + 1);
    }
}
