//! The store as protocol code sees it: the WIT `kv` semantics as a trait.

use std::cell::RefCell;
use std::collections::HashMap;

#[cfg(any(test, feature = "testing"))]
use kv_contract::MemStore;
pub use kv_contract::{Check, Entry, KvError, MAX_GET_MANY_KEYS, MAX_KEY_BYTES, MAX_SCAN_LIMIT, Write};

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

/// The kv contract's reference store ([`MemStore`], the gateway's memory
/// backend) as a [`Kv`], for native tests. By default it answers as little
/// as the contract allows ([`MemKv::SHORT_ANSWERS`] entries per scan page or
/// `get_many`), so every paging loop meets short pages;
/// [`MemKv::with_full_answers`] for tests that count store calls.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
pub struct MemKv {
    store: MemStore,
    calls: std::sync::atomic::AtomicUsize,
}

#[cfg(any(test, feature = "testing"))]
impl Default for MemKv {
    fn default() -> Self {
        Self::new(MemStore::with_short_answers(Self::SHORT_ANSWERS))
    }
}

#[cfg(any(test, feature = "testing"))]
impl MemKv {
    /// Entries per scan page or `get_many` answer of [`MemKv::default`].
    pub const SHORT_ANSWERS: usize = 3;
    /// The plugin's namespace in the store.
    const NS: &'static str = "plugin";

    fn new(store: MemStore) -> Self {
        Self { store, calls: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// A store that answers scans and `get_many`s in full (up to the byte budget).
    pub fn with_full_answers() -> Self {
        Self::new(MemStore::default())
    }

    /// Every key, for assertions.
    pub fn keys(&self) -> Vec<String> {
        self.store.keys(Self::NS)
    }

    /// How many calls the store has answered: each would be a host call,
    /// and a round trip to a database.
    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count(&self) -> kv_contract::MemNamespace<'_> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.store.namespace(Self::NS)
    }
}

#[cfg(any(test, feature = "testing"))]
impl Kv for MemKv {
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        self.count().get(key)
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
        self.count().get_many(keys)
    }

    fn scan(&self, prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
        self.count().scan(prefix, start_after, limit)
    }

    fn commit(&self, checks: Vec<Check>, writes: Vec<Write>) -> Result<(), KvError> {
        self.count().commit(&checks, &writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Write {
        Write::Set(key.into(), value.as_bytes().to_vec())
    }

    #[test]
    fn read_many_asks_again_after_short_answers_and_in_batches_the_host_takes() {
        // Short answers (the default), and batches over the limit refused.
        let kv = MemKv::default();
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
        let store = MemKv::with_full_answers();
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
