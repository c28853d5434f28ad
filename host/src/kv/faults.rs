//! Fault injection for the test suite: a backend wrapper that fails chosen
//! calls, configured by `[store.faults]`. It exists only in builds with the
//! `fault-injection` feature (the suite's `evogate-faults` binary); the
//! gateway users run refuses the table as an unknown key.
//!
//! Each call draws from a seeded generator: the same seed and the same
//! order of calls give the same faults. Every injected fault is logged and
//! counted in `evogate_store_faults_injected_total{kind}`.

use super::{Backend, Check, Entry, KvError, Scan, ScanPage, Write};
use std::sync::Mutex;
use std::time::Duration;

/// `[store.faults]`: how often each fault happens, in calls per thousand.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsConfig {
    /// Seed of the generator.
    #[serde(default)]
    pub seed: u64,
    /// A commit fails as unavailable before it reaches the store (nothing written).
    #[serde(default)]
    pub commit_before: u16,
    /// A commit is applied durably, then its answer is lost (outcome unknown).
    #[serde(default)]
    pub commit_after: u16,
    /// A call waits `slow_ms` first (past the request's deadline when longer than it).
    #[serde(default)]
    pub slow: u16,
    /// How long a slow call waits.
    #[serde(default)]
    pub slow_ms: u64,
    /// A scan fails as unavailable.
    #[serde(default)]
    pub scan: u16,
    /// A get fails as unavailable.
    #[serde(default)]
    pub get: u16,
    /// Namespaces (plugin names) the faults touch; empty: every one.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// Wraps a backend, failing calls as [`FaultsConfig`] says.
pub struct Faulty {
    inner: std::sync::Arc<dyn Backend>,
    config: FaultsConfig,
    state: Mutex<u64>,
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faulty").field("inner", &self.inner.describe()).field("config", &self.config).finish()
    }
}

impl Faulty {
    /// `inner` with the faults of `config`.
    pub fn new(inner: std::sync::Arc<dyn Backend>, config: FaultsConfig) -> Self {
        // splitmix64 needs a non-zero start to look random from the first draw.
        let state = Mutex::new(config.seed ^ 0x9e37_79b9_7f4a_7c15);
        tracing::warn!(?config, "store fault injection is on: calls will fail on purpose");
        Self { inner, config, state }
    }

    /// Whether a fault of `rate` per thousand happens to this call of `ns`.
    fn strikes(&self, ns: &str, rate: u16, kind: &'static str) -> bool {
        if rate == 0 || !(self.config.namespaces.is_empty() || self.config.namespaces.iter().any(|n| n == ns)) {
            return false;
        }
        let draw = {
            let mut state = self.state.lock().unwrap_or_else(|poison| poison.into_inner());
            *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let hit = draw % 1000 < u64::from(rate);
        if hit {
            tracing::warn!(kind, namespace = ns, "injected store fault");
            metrics::counter!(crate::telemetry::STORE_FAULTS_INJECTED, "kind" => kind).increment(1);
        }
        hit
    }

    fn maybe_slow(&self, ns: &str) {
        if self.strikes(ns, self.config.slow, "slow") {
            std::thread::sleep(Duration::from_millis(self.config.slow_ms));
        }
    }
}

impl Backend for Faulty {
    fn describe(&self) -> String {
        format!("{} with injected faults", self.inner.describe())
    }

    fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, KvError> {
        self.maybe_slow(ns);
        if self.strikes(ns, self.config.get, "get") {
            return Err(KvError::Unavailable("injected fault: get".into()));
        }
        self.inner.get(ns, key)
    }

    fn get_many(&self, ns: &str, keys: &[String], max_bytes: usize) -> Result<Vec<Option<Entry>>, KvError> {
        self.maybe_slow(ns);
        if self.strikes(ns, self.config.get, "get") {
            return Err(KvError::Unavailable("injected fault: get".into()));
        }
        self.inner.get_many(ns, keys, max_bytes)
    }

    fn scan(&self, ns: &str, bounds: &Scan) -> Result<ScanPage, KvError> {
        self.maybe_slow(ns);
        if self.strikes(ns, self.config.scan, "scan") {
            return Err(KvError::Unavailable("injected fault: scan".into()));
        }
        self.inner.scan(ns, bounds)
    }

    fn commit(&self, ns: &str, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        self.maybe_slow(ns);
        if self.strikes(ns, self.config.commit_before, "commit_before") {
            return Err(KvError::Unavailable("injected fault: before the commit".into()));
        }
        self.inner.commit(ns, checks, writes)?;
        if self.strikes(ns, self.config.commit_after, "commit_after") {
            return Err(KvError::OutcomeUnknown("injected fault: the commit is durable, its answer lost".into()));
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Box<dyn super::backup::Snapshot>, KvError> {
        self.inner.snapshot()
    }

    fn restore(&self, records: &[super::backup::Record], last_version: u64) -> Result<(), KvError> {
        self.inner.restore(records, last_version)
    }

    fn clear(&self) -> Result<(), KvError> {
        self.inner.clear()
    }

    fn ping(&self) -> Result<(), KvError> {
        self.inner.ping()
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn bytes_on_disk(&self) -> Result<Option<u64>, KvError> {
        self.inner.bytes_on_disk()
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryBackend;
    use std::sync::Arc;

    #[test]
    fn faults_strike_at_their_rate_and_only_in_their_namespaces() {
        let config = FaultsConfig {
            seed: 3,
            commit_before: 200,
            commit_after: 200,
            namespaces: vec!["a".into()],
            ..FaultsConfig::default()
        };
        let inner: Arc<MemoryBackend> = Arc::new(MemoryBackend::default());
        let faulty = Faulty::new(inner.clone(), config);
        let (mut before, mut after) = (0, 0);
        for n in 0..2000 {
            let key = format!("k{n}");
            match faulty.commit("a", &[], &[Write::Set(key.clone(), b"v".to_vec())]) {
                Ok(()) => assert!(Backend::get(&*inner, "a", &key).expect("get").is_some()),
                Err(KvError::Unavailable(_)) => {
                    before += 1;
                    assert!(
                        Backend::get(&*inner, "a", &key).expect("get").is_none(),
                        "nothing written before the commit"
                    );
                }
                Err(KvError::OutcomeUnknown(_)) => {
                    after += 1;
                    assert!(
                        Backend::get(&*inner, "a", &key).expect("get").is_some(),
                        "durable before the answer is lost"
                    );
                }
                Err(other) => panic!("{other:?}"),
            }
            faulty.commit("b", &[], &[Write::Set(key, b"v".to_vec())]).expect("namespace b has no faults");
        }
        // 20 % before; 20 % of the remaining 80 % after.
        assert!((300..500).contains(&before), "{before}");
        assert!((230..420).contains(&after), "{after}");
    }
}
