//! The host side of the evogate `kv` interface (both worlds): a
//! [`KvCtx`] per request, holding the plugin's [`Namespace`], the shared
//! store-call permits and the request's deadline, implements the generated
//! host traits; [`add_to_linker`] puts them in a linker whose store data can
//! lend one. Every call goes through the namespace's policy layer, and each
//! runs in a debug-level span (`kv.get`, `kv.commit`, …).

use crate::kv::{self, Namespace};
use crate::runtime::bindings::{wit_0_1, wit_kv};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;
use wasmtime::component::{HasData, Linker};

/// What the `kv` calls of one request use.
pub(crate) struct KvCtx {
    kv: Namespace,
    /// Permits for store calls on the blocking pool, shared by every instance.
    kv_calls: Arc<tokio::sync::Semaphore>,
    /// The request's deadline: how long a store call may wait for a permit.
    deadline: Instant,
    /// The plugin's store-call counters.
    counters: Arc<KvCounters>,
    /// What this request's store calls came to.
    spent: KvSpent,
}

impl KvCtx {
    /// The context of one request on `kv`, with `permits` shared by every
    /// request and `deadline` its own, counted in the plugin's `counters`.
    pub(crate) fn new(
        kv: Namespace,
        permits: Arc<tokio::sync::Semaphore>,
        deadline: Instant,
        counters: Arc<KvCounters>,
    ) -> Self {
        Self { kv, kv_calls: permits, deadline, counters, spent: KvSpent::default() }
    }

    /// What the request's store calls came to so far.
    pub(crate) fn spent(&self) -> KvSpent {
        self.spent
    }

    /// Counts one call of `op` that started at `started`.
    fn count(&mut self, op: Op, started: Instant) {
        self.spent.calls += 1;
        self.spent.time += started.elapsed();
        match op {
            Op::Get => self.counters.get.increment(1),
            Op::Scan => self.counters.scan.increment(1),
            Op::Commit => self.counters.commit.increment(1),
        }
    }
}

/// A store call's kind, as [`crate::telemetry::STORE_CALLS`] counts it.
#[derive(Clone, Copy)]
enum Op {
    Get,
    Scan,
    Commit,
}

/// One plugin's [`crate::telemetry::STORE_CALLS`], registered once.
pub(crate) struct KvCounters {
    get: metrics::Counter,
    scan: metrics::Counter,
    commit: metrics::Counter,
}

impl KvCounters {
    /// The counters of plugin `plugin`.
    pub(crate) fn new(plugin: &str) -> Self {
        let counter = |op: &'static str| metrics::counter!(crate::telemetry::STORE_CALLS, "plugin" => plugin.to_owned(), "op" => op);
        Self { get: counter("get"), scan: counter("scan"), commit: counter("commit") }
    }
}

/// What one request's store calls came to: how many, and their time
/// (what its trace's call span records, rather than a span per call).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KvSpent {
    pub(crate) calls: u32,
    pub(crate) time: std::time::Duration,
}

/// Adds the `kv` interface of both evogate worlds to `linker`, served by
/// the [`KvCtx`] that `get` lends from the store's data.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut KvCtx,
) -> wasmtime::Result<()> {
    wit_kv::add_to_linker::<T, Ctx>(linker, get)?;
    wit_0_1::kv::add_to_linker::<T, Ctx>(linker, get)
}

/// [`HasData`] for the linker: the store's data lends a [`KvCtx`].
struct Ctx;

impl HasData for Ctx {
    type Data<'a> = &'a mut KvCtx;
}

impl From<kv::KvError> for wit_kv::Error {
    fn from(err: kv::KvError) -> Self {
        match err {
            kv::KvError::Conflict => wit_kv::Error::Conflict,
            kv::KvError::TooLarge(_) => wit_kv::Error::TooLarge,
            kv::KvError::Unavailable(why) => wit_kv::Error::Unavailable(why),
            kv::KvError::OutcomeUnknown(why) => wit_kv::Error::OutcomeUnknown(why),
        }
    }
}

/// 0.1.0 has no `outcome-unknown`: its `unavailable` says so in the message.
impl From<wit_kv::Error> for wit_0_1::kv::Error {
    fn from(err: wit_kv::Error) -> Self {
        match err {
            wit_kv::Error::Conflict => wit_0_1::kv::Error::Conflict,
            wit_kv::Error::TooLarge => wit_0_1::kv::Error::TooLarge,
            wit_kv::Error::Unavailable(why) => wit_0_1::kv::Error::Unavailable(why),
            wit_kv::Error::OutcomeUnknown(why) => wit_0_1::kv::Error::Unavailable(format!("outcome unknown: {why}")),
        }
    }
}

fn entry_0_1(entry: wit_kv::Entry) -> wit_0_1::kv::Entry {
    wit_0_1::kv::Entry { value: entry.value, version: entry.version }
}

/// The first world's store calls: the current ones, with the types converted.
impl wit_0_1::kv::Host for KvCtx {
    async fn get(&mut self, key: String) -> Result<Option<wit_0_1::kv::Entry>, wit_0_1::kv::Error> {
        Ok(wit_kv::Host::get(self, key).await?.map(entry_0_1))
    }

    async fn scan(
        &mut self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> Result<Vec<(String, wit_0_1::kv::Entry)>, wit_0_1::kv::Error> {
        let page = wit_kv::Host::scan(self, prefix, start_after, limit).await?;
        Ok(page.into_iter().map(|(key, entry)| (key, entry_0_1(entry))).collect())
    }

    async fn commit(
        &mut self,
        checks: Vec<wit_0_1::kv::Check>,
        writes: Vec<wit_0_1::kv::Write>,
    ) -> Result<(), wit_0_1::kv::Error> {
        self.commit_stamped(checks, writes, Vec::new()).await
    }

    async fn commit_stamped(
        &mut self,
        checks: Vec<wit_0_1::kv::Check>,
        writes: Vec<wit_0_1::kv::Write>,
        stamped: Vec<(String, Vec<u8>)>,
    ) -> Result<(), wit_0_1::kv::Error> {
        let checks = checks
            .into_iter()
            .map(|check| match check {
                wit_0_1::kv::Check::VersionIs(pair) => wit_kv::Check::VersionIs(pair),
                wit_0_1::kv::Check::Absent(key) => wit_kv::Check::Absent(key),
            })
            .collect();
        let writes = writes
            .into_iter()
            .map(|write| match write {
                wit_0_1::kv::Write::Set(pair) => wit_kv::Write::Set(pair),
                wit_0_1::kv::Write::Delete(key) => wit_kv::Write::Delete(key),
            })
            .collect();
        Ok(wit_kv::Host::commit_stamped(self, checks, writes, stamped).await?)
    }
}

fn wit_entry(entry: kv::Entry) -> wit_kv::Entry {
    wit_kv::Entry { value: entry.value, version: entry.version }
}

/// Keys a `get-many` reads on the request's task from a local store (a
/// B-tree lookup each); more go to the blocking pool, like a scan.
const INLINE_GET_MANY_KEYS: usize = 16;

impl wit_kv::Host for KvCtx {
    async fn get(&mut self, key: String) -> Result<Option<wit_kv::Entry>, wit_kv::Error> {
        let mut answer = wit_kv::Host::get_many(self, vec![key]).await?;
        Ok(answer.pop().flatten())
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<wit_kv::Entry>>, wit_kv::Error> {
        let span = tracing::debug_span!("kv.get_many", keys = keys.len());
        let started = Instant::now();
        let answer = async {
            let remote = match self.kv.is_remote() {
                true => self.kv.get_many_async(keys.clone())?,
                false => None,
            };
            if let Some(read) = remote {
                // A database: awaited here, no thread waits for the answer.
                self.remote(read).await
            } else if self.kv.is_remote() || keys.len() > INLINE_GET_MANY_KEYS {
                let kv = self.kv.clone();
                self.blocking(false, move || kv.get_many(&keys)).await
            } else {
                // A few B-tree lookups: cheap enough for the request's task.
                self.kv.get_many(&keys)
            }
        };
        let answer = answer.instrument(span).await;
        self.count(Op::Get, started);
        let answer = answer?;
        Ok(answer.into_iter().map(|entry| entry.map(wit_entry)).collect())
    }

    async fn scan(
        &mut self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> Result<Vec<(String, wit_kv::Entry)>, wit_kv::Error> {
        let span = tracing::debug_span!("kv.scan", limit);
        let started = Instant::now();
        let page = async {
            let remote = match self.kv.is_remote() {
                true => self.kv.scan_async(prefix.clone(), start_after.clone(), limit)?,
                false => None,
            };
            match remote {
                Some(read) => self.remote(read).await,
                None => {
                    // Up to 16 MiB of values: read them off the async threads.
                    let kv = self.kv.clone();
                    self.blocking(false, move || kv.scan(&prefix, start_after.as_deref(), limit)).await
                }
            }
        };
        let page = page.instrument(span).await;
        self.count(Op::Scan, started);
        let page = page?;
        Ok(page.into_iter().map(|(key, entry)| (key, wit_entry(entry))).collect())
    }

    async fn commit(&mut self, checks: Vec<wit_kv::Check>, writes: Vec<wit_kv::Write>) -> Result<(), wit_kv::Error> {
        self.commit_stamped(checks, writes, Vec::new()).await
    }

    async fn commit_stamped(
        &mut self,
        checks: Vec<wit_kv::Check>,
        writes: Vec<wit_kv::Write>,
        stamped: Vec<(String, Vec<u8>)>,
    ) -> Result<(), wit_kv::Error> {
        let checks: Vec<_> = checks
            .into_iter()
            .map(|check| match check {
                wit_kv::Check::VersionIs((key, version)) => kv::Check::VersionIs(key, version),
                wit_kv::Check::Absent(key) => kv::Check::Absent(key),
            })
            .collect();
        let writes: Vec<_> = writes
            .into_iter()
            .map(|write| match write {
                wit_kv::Write::Set((key, value)) => kv::Write::Set(key, value),
                wit_kv::Write::Delete(key) => kv::Write::Delete(key),
            })
            .chain(stamped.into_iter().map(|(prefix, value)| kv::Write::SetStamped(prefix, value)))
            .collect();
        // A durable commit waits for the disk: never on the async threads.
        let kv = self.kv.clone();
        let started = Instant::now();
        let span = tracing::debug_span!("kv.commit", checks = checks.len(), writes = writes.len());
        let result = self.blocking(true, move || kv.commit(&checks, &writes)).instrument(span).await;
        self.count(Op::Commit, started);
        metrics::histogram!(crate::telemetry::KV_COMMIT_DURATION).record(started.elapsed().as_secs_f64());
        result.map_err(|err| {
            match &err {
                kv::KvError::Conflict => metrics::counter!(crate::telemetry::KV_CONFLICTS).increment(1),
                kv::KvError::Unavailable(why) => tracing::error!(error = %why, "kv commit failed"),
                kv::KvError::OutcomeUnknown(why) => {
                    metrics::counter!(crate::telemetry::KV_OUTCOME_UNKNOWN).increment(1);
                    tracing::error!(error = %why, "kv commit outcome unknown")
                }
                kv::KvError::TooLarge(_) => {}
            }
            err.into()
        })
    }
}

impl KvCtx {
    /// Awaits a read from a remote store on the request's task, holding one
    /// of the shared store-call permits while it runs; waits for a permit until
    /// the request's deadline at most, then reads nothing.
    fn remote<T: Send + 'static>(
        &self,
        read: kv::Read<T>,
    ) -> impl std::future::Future<Output = Result<T, kv::KvError>> + Send + 'static {
        let (permits, deadline) = (self.kv_calls.clone(), self.deadline);
        async move {
            let _permit = call_permit(&permits, deadline).await?;
            read.await
        }
    }

    /// Runs blocking store work on tokio's blocking pool, holding one of
    /// the shared permits until the work ends — even when the request that
    /// asked for it is gone — so abandoned work cannot pile up. Waits for a
    /// permit until the request's deadline at most; then nothing is done.
    fn blocking<T: Send + 'static>(
        &self,
        commit: bool,
        work: impl FnOnce() -> Result<T, kv::KvError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, kv::KvError>> + Send + 'static {
        let (permits, deadline) = (self.kv_calls.clone(), self.deadline);
        blocking(permits, deadline, commit, work)
    }
}

async fn blocking<T: Send + 'static>(
    permits: Arc<tokio::sync::Semaphore>,
    deadline: Instant,
    commit: bool,
    work: impl FnOnce() -> Result<T, kv::KvError> + Send + 'static,
) -> Result<T, kv::KvError> {
    let permit = call_permit(&permits, deadline).await?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .unwrap_or_else(|join| {
        let why = format!("store task failed: {join}");
        Err(if commit { kv::KvError::OutcomeUnknown(why) } else { kv::KvError::Unavailable(why) })
    })
}

/// One of the shared store-call permits, waited for until `deadline` at most.
async fn call_permit(
    permits: &Arc<tokio::sync::Semaphore>,
    deadline: Instant,
) -> Result<tokio::sync::OwnedSemaphorePermit, kv::KvError> {
    match tokio::time::timeout_at(deadline.into(), permits.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => {
            metrics::counter!(crate::telemetry::KV_CALLS_REFUSED).increment(1);
            Err(kv::KvError::Unavailable("too many store calls in flight".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_calls_past_the_cap_fail_at_their_deadline_without_running_and_abandoned_ones_keep_their_permit() {
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let work = |millis: u64| {
            let ran = ran.clone();
            move || {
                std::thread::sleep(Duration::from_millis(millis));
                ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        };
        // A commit whose request gave up: dropped while its work runs on.
        let abandoned = blocking(permits.clone(), Instant::now() + Duration::from_secs(5), true, work(600));
        let _ = tokio::time::timeout(Duration::from_millis(100), abandoned).await;
        let started = Instant::now();
        let refused = blocking(permits.clone(), Instant::now() + Duration::from_millis(200), false, work(0)).await;
        assert!(matches!(&refused, Err(kv::KvError::Unavailable(why)) if why.contains("in flight")), "{refused:?}");
        assert!(started.elapsed() < Duration::from_millis(400), "refused at its deadline");
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0, "the refused call did nothing");
        let served = blocking(permits.clone(), Instant::now() + Duration::from_secs(5), false, work(0)).await;
        assert!(served.is_ok());
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 2, "the abandoned commit finished first");
    }
}
