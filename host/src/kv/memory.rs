//! The in-memory backend: a `BTreeMap` per namespace behind one lock.

use super::{Backend, Check, Entry, KvError, Page, Write, scan_start};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

/// Keeps everything in process memory; nothing survives a restart.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    namespaces: HashMap<String, BTreeMap<String, Entry>>,
    last_version: u64,
}

impl MemoryBackend {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied commit
        // (commits mutate only after every check passed), so poison is safe to clear.
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn describe(&self) -> String {
        "memory (nothing is kept across restarts)".into()
    }

    fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, KvError> {
        Ok(self.lock().namespaces.get(ns).and_then(|map| map.get(key)).cloned())
    }

    fn get_many(&self, ns: &str, keys: &[String], max_bytes: usize) -> Result<Vec<Option<Entry>>, KvError> {
        let inner = self.lock();
        let map = inner.namespaces.get(ns);
        super::read_many(keys, max_bytes, |key| Ok(map.and_then(|map| map.get(key)).cloned()))
    }

    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, Entry)>, KvError> {
        let inner = self.lock();
        let Some(map) = inner.namespaces.get(ns) else {
            return Ok(Vec::new());
        };
        let mut page = Page::new(prefix, start_after, limit, max_bytes);
        for (key, entry) in map.range::<str, _>((scan_start(prefix, start_after), std::ops::Bound::Unbounded)) {
            if !page.offer(key, || Ok(entry.clone()))? {
                break;
            }
        }
        Ok(page.entries)
    }

    fn commit(&self, ns: &str, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        let mut inner = self.lock();
        let current =
            |inner: &Inner, key: &str| inner.namespaces.get(ns).and_then(|map| map.get(key)).map(|entry| entry.version);
        if !checks.iter().all(|check| check.holds(current(&inner, check.key()))) {
            return Err(KvError::Conflict);
        }
        inner.last_version += 1;
        let version = inner.last_version;
        let map = inner.namespaces.entry(ns.to_owned()).or_default();
        for (key, value) in super::resolve(writes, version) {
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

    fn ping(&self) -> Result<(), KvError> {
        Ok(())
    }
}

/// A hook run before each `get` of a [`Hooked`] store, with its data.
#[cfg(test)]
pub(crate) type GetHook = Box<dyn Fn(&MemoryBackend) + Send + Sync>;

/// A memory store with hooks on `get` and `ping`, for tests of what
/// surrounds a store (a ping that hangs, a write that lands between two reads).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Hooked {
    pub(crate) inner: MemoryBackend,
    /// Runs before each `get`, with the data.
    pub(crate) before_get: Option<GetHook>,
    /// Answers `ping` instead of the memory store.
    pub(crate) ping: Option<Box<dyn Fn() -> Result<(), KvError> + Send + Sync>>,
}

#[cfg(test)]
impl Backend for Hooked {
    fn describe(&self) -> String {
        "memory with test hooks".into()
    }

    fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, KvError> {
        if let Some(hook) = &self.before_get {
            hook(&self.inner);
        }
        self.inner.get(ns, key)
    }

    fn get_many(&self, ns: &str, keys: &[String], max_bytes: usize) -> Result<Vec<Option<Entry>>, KvError> {
        if let Some(hook) = &self.before_get {
            hook(&self.inner);
        }
        self.inner.get_many(ns, keys, max_bytes)
    }

    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, Entry)>, KvError> {
        self.inner.scan(ns, prefix, start_after, limit, max_bytes)
    }

    fn commit(&self, ns: &str, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        self.inner.commit(ns, checks, writes)
    }

    fn ping(&self) -> Result<(), KvError> {
        self.ping.as_ref().map_or(Ok(()), |ping| ping())
    }
}
