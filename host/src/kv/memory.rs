//! The in-memory backend: the kv contract's reference store
//! ([`kv_contract::MemStore`]) as a [`Backend`], and a hooked one for tests.

use super::{Backend, Check, Entry, KvError, MemoryBackend, Scan, ScanPage, Write};

impl Backend for MemoryBackend {
    fn describe(&self) -> String {
        "memory (nothing is kept across restarts)".into()
    }

    fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, KvError> {
        Ok(MemoryBackend::get(self, ns, key))
    }

    fn get_many(&self, ns: &str, keys: &[String], max_bytes: usize) -> Result<Vec<Option<Entry>>, KvError> {
        Ok(MemoryBackend::get_many(self, ns, keys, max_bytes))
    }

    fn scan(&self, ns: &str, bounds: &Scan) -> Result<ScanPage, KvError> {
        Ok(MemoryBackend::scan(self, ns, &bounds.prefix, bounds.start_after.as_deref(), bounds.limit, bounds.max_bytes))
    }

    fn commit(&self, ns: &str, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        MemoryBackend::commit(self, ns, checks, writes)
    }

    fn ping(&self) -> Result<(), KvError> {
        Ok(())
    }

    fn snapshot(&self) -> Result<Box<dyn super::backup::Snapshot>, KvError> {
        let (records, last_version) = MemoryBackend::dump(self);
        let records = records.into_iter().map(|(ns, key, entry)| super::backup::Record { ns, key, entry }).collect();
        Ok(Box::new(super::backup::InMemory::new(records, last_version)))
    }

    fn restore(&self, records: &[super::backup::Record], last_version: u64) -> Result<(), KvError> {
        MemoryBackend::load(self, records.iter().map(|r| (r.ns.as_str(), r.key.as_str(), &r.entry)), last_version);
        Ok(())
    }

    fn clear(&self) -> Result<(), KvError> {
        MemoryBackend::clear(self);
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
        Backend::get(&self.inner, ns, key)
    }

    fn get_many(&self, ns: &str, keys: &[String], max_bytes: usize) -> Result<Vec<Option<Entry>>, KvError> {
        if let Some(hook) = &self.before_get {
            hook(&self.inner);
        }
        Backend::get_many(&self.inner, ns, keys, max_bytes)
    }

    fn scan(&self, ns: &str, bounds: &Scan) -> Result<ScanPage, KvError> {
        Backend::scan(&self.inner, ns, bounds)
    }

    fn commit(&self, ns: &str, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        self.inner.commit(ns, checks, writes)
    }

    fn snapshot(&self) -> Result<Box<dyn super::backup::Snapshot>, KvError> {
        self.inner.snapshot()
    }

    fn restore(&self, records: &[super::backup::Record], last_version: u64) -> Result<(), KvError> {
        Backend::restore(&self.inner, records, last_version)
    }

    fn clear(&self) -> Result<(), KvError> {
        Backend::clear(&self.inner)
    }

    fn ping(&self) -> Result<(), KvError> {
        self.ping.as_ref().map_or(Ok(()), |ping| ping())
    }
}
