//! Scheduled jobs: `[[plugins.jobs]]`, run through a plugin's `scheduled`
//! export, once per tick across every node of a store.
//!
//! Ticks fall on whole multiples of the job's `every` since the Unix epoch,
//! so every node computes the same ones. At each tick (after its jitter) a
//! node tries to take the job's **lease**, one record per job in the
//! store's reserved namespace `evogate:jobs` (a `:` keeps it apart from
//! every plugin's), by compare-and-set:
//!
//! - a lease marked running whose expiry has not passed: the run before is
//!   still going (here or on another node), this tick is left out — runs of
//!   one job never overlap;
//! - a lease that already names this tick (or a later one): another node
//!   took it;
//! - else the node writes the lease (running, this tick, expiry now +
//!   [`LEASE_TTL`]); of several nodes trying at once, one commit wins.
//!
//! The winner runs the job in a fresh instance of the version live when the
//! run starts, renews the lease every [`LEASE_TTL`] / 3 while it runs, and
//! writes the outcome into it at the end. A node killed mid-run stops
//! renewing: the lease expires and the next tick runs elsewhere. With the
//! store down, nobody can take the lease, so nobody runs the tick; the next
//! tick runs as usual (missed ticks are not replayed). Node clocks must agree
//! to well within [`LEASE_TTL`] (NTP does).

use crate::config::{JobConfig, JobSchedule, PluginConfig};
use crate::control::registry::Mount;
use crate::kv::{Backend, Check, KvError, Write};
use crate::runtime::sandbox::{Failure, JobEnd, JobRun};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The store namespace of job leases.
pub(crate) const JOBS_NS: &str = "evogate:jobs";
/// How long a lease holds without renewal: a node that died mid-run blocks
/// its job this long at most.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(10);

/// How long past its timeout a run waits for a host call (a store call) to return.
const HOST_CALL_GRACE: Duration = Duration::from_secs(2);

fn lease_key(plugin: &str, job: &str) -> String {
    format!("lease/{plugin}/{job}")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// A job's lease and last run, as stored (JSON) and shown by `GET /plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Lease {
    /// The last scheduled tick taken (Unix ms); manual runs leave it.
    pub tick: u64,
    /// Whether a run holds the lease now.
    pub running: bool,
    /// Until when the running lease holds without renewal (Unix ms).
    pub expires_ms: u64,
    /// The node that runs or ran the last run.
    pub node: String,
    /// The last run: when it started (Unix ms).
    pub started_ms: u64,
    /// When it ended; none while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// `ok`, `partial`, `error`, `timeout`, `memory`, `trap` or `skipped`; none while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// What went wrong, for any outcome but `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `plugin@version` that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether an operator asked for it.
    #[serde(default)]
    pub manual: bool,
}

/// One configured job of one plugin.
struct Job {
    plugin: String,
    name: String,
    schedule: JobSchedule,
    mount: Arc<Mount>,
    /// Held by this node's run of the job.
    running: tokio::sync::Mutex<()>,
    /// The next tick this node waits for (Unix ms).
    next_ms: std::sync::atomic::AtomicU64,
    /// Versions (sha256) already logged for lacking the `scheduled` export.
    warned: Mutex<HashSet<String>>,
    /// Set when a reload removed or changed the job: it ticks no more (a
    /// run going on finishes).
    retired: tokio::sync::watch::Sender<bool>,
}

impl Job {
    fn key(&self) -> String {
        lease_key(&self.plugin, &self.name)
    }
}

/// Why a manual run did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunNowError {
    /// No such plugin or job.
    #[error("plugin {0:?} has no job {1:?}")]
    Unknown(String, String),
    /// A run of the job is going on (here or on another node).
    #[error("job {0:?} is running (on {1}); try again when it is done")]
    Running(String, String),
    /// The store did not answer, so the lease could not be taken.
    #[error("the store is unavailable: {0}")]
    Store(String),
}

/// What taking the lease found.
enum Taken {
    /// This node holds it now, as this record says.
    Here(Lease),
    /// A run holds it (the node is named).
    Running(String),
    /// Another node took this tick already.
    Elsewhere,
}

/// The jobs `plugins` configure, each on its plugin's mount; a job with a
/// bad schedule (the configuration's check refused it) or without a mount is left out.
fn jobs_of(plugins: &[PluginConfig], mounts: &[Arc<Mount>]) -> Vec<Arc<Job>> {
    plugins
        .iter()
        .flat_map(|plugin| {
            let mount = mounts.iter().find(|mount| mount.name == plugin.name).cloned();
            plugin.jobs.iter().filter_map(move |job: &JobConfig| {
                let schedule = job.schedule().ok()?;
                Some(Arc::new(Job {
                    plugin: plugin.name.clone(),
                    name: job.name.clone(),
                    schedule,
                    mount: mount.clone()?,
                    running: tokio::sync::Mutex::new(()),
                    next_ms: std::sync::atomic::AtomicU64::new(0),
                    warned: Mutex::new(HashSet::new()),
                    retired: tokio::sync::watch::Sender::new(false),
                }))
            })
        })
        .collect()
}

/// The scheduler of every job of every plugin on this node.
pub(crate) struct Scheduler {
    node: String,
    backend: Arc<dyn Backend>,
    /// The jobs scheduled now; a reload replaces the list.
    jobs: Mutex<Vec<Arc<Job>>>,
    /// Whether [`Scheduler::start`] was called: jobs a reload adds start at once.
    started: std::sync::atomic::AtomicBool,
    stopping: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("node", &self.node).field("jobs", &self.jobs().len()).finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Schedules the jobs of `plugins` (served by `mounts`), on `backend`.
    /// Call [`Scheduler::start`] to begin ticking.
    pub(crate) fn new(plugins: &[PluginConfig], mounts: &[Arc<Mount>], backend: Arc<dyn Backend>) -> Self {
        let node = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        Self {
            node,
            backend,
            jobs: Mutex::new(jobs_of(plugins, mounts)),
            started: std::sync::atomic::AtomicBool::new(false),
            stopping: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The jobs scheduled now.
    fn jobs(&self) -> Vec<Arc<Job>> {
        self.jobs.lock().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// Schedules the jobs of `plugins` (served by `mounts`) from now on (a
    /// reload): a job whose plugin, name, schedule and mount are unchanged
    /// ticks on as it did; the others stop ticking (a run going on ends as
    /// it would) and the new ones start. Answers what changed, a line each.
    pub(crate) fn reschedule(self: &Arc<Self>, plugins: &[PluginConfig], mounts: &[Arc<Mount>]) -> Vec<String> {
        let mut changes = Vec::new();
        let mut jobs = self.jobs.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut next = Vec::new();
        for job in jobs_of(plugins, mounts) {
            let same = jobs.iter().find(|old| {
                old.plugin == job.plugin
                    && old.name == job.name
                    && old.schedule == job.schedule
                    && Arc::ptr_eq(&old.mount, &job.mount)
            });
            match same {
                Some(old) => next.push(old.clone()),
                None => {
                    changes.push(format!(
                        "job {}/{} scheduled every {} s",
                        job.plugin,
                        job.name,
                        job.schedule.every.as_secs()
                    ));
                    if self.started.load(std::sync::atomic::Ordering::SeqCst) {
                        tokio::spawn(self.clone().tick_forever(job.clone()));
                    }
                    next.push(job);
                }
            }
        }
        for old in jobs.iter().filter(|old| !next.iter().any(|kept| Arc::ptr_eq(kept, old))) {
            old.retired.send_replace(true);
            if !next.iter().any(|job| job.plugin == old.plugin && job.name == old.name) {
                changes.push(format!("job {}/{} no longer scheduled", old.plugin, old.name));
            }
        }
        *jobs = next;
        changes
    }

    /// Starts one ticking task per job.
    pub(crate) fn start(self: &Arc<Self>) {
        self.started.store(true, std::sync::atomic::Ordering::SeqCst);
        for job in &self.jobs() {
            tracing::info!(
                plugin = %job.plugin, job = %job.name, every_s = job.schedule.every.as_secs(), node = %self.node,
                "job scheduled"
            );
            tokio::spawn(self.clone().tick_forever(job.clone()));
        }
    }

    /// Stops ticking and waits, at most `timeout`, for the runs going on here to end.
    pub(crate) async fn drain(&self, timeout: Duration) {
        self.stopping.send_replace(true);
        let all = async {
            for job in &self.jobs() {
                let _ = job.running.lock().await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!("jobs still running at shutdown; their leases expire and the next tick runs elsewhere");
        }
    }

    async fn tick_forever(self: Arc<Self>, job: Arc<Job>) {
        let mut stopping = self.stopping.subscribe();
        let mut retired = job.retired.subscribe();
        let every = job.schedule.every.as_millis() as u64;
        loop {
            let now = now_ms();
            let tick = (now / every + 1) * every;
            job.next_ms.store(tick, std::sync::atomic::Ordering::Relaxed);
            let jitter = match job.schedule.jitter.as_millis() as u64 {
                0 => 0,
                most => rand::random_range(0..=most),
            };
            let wait = Duration::from_millis(tick + jitter - now);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
                _ = retired.wait_for(|retired| *retired) => return,
            }
            // The wall clock may have been set back meanwhile: never run a tick early.
            if now_ms() < tick {
                continue;
            }
            match self.attempt(&job, tick, false).await {
                Ok(_) => {}
                Err(RunNowError::Running(_, node)) => {
                    tracing::info!(plugin = %job.plugin, job = %job.name, tick, %node, "tick left out: the run before is still going");
                    missed(&job, "still_running");
                }
                Err(RunNowError::Store(why)) => {
                    tracing::warn!(plugin = %job.plugin, job = %job.name, tick, error = %why, "tick left out: the store is unavailable");
                    missed(&job, "store_unavailable");
                }
                Err(RunNowError::Unknown(..)) => {}
            }
        }
    }

    /// Runs `job` of `plugin` now, on this node, and answers its outcome.
    pub(crate) async fn run_now(&self, plugin: &str, job: &str) -> Result<Lease, RunNowError> {
        let jobs = self.jobs();
        let found = jobs.iter().find(|j| j.plugin == plugin && j.name == job);
        let job = found.ok_or_else(|| RunNowError::Unknown(plugin.into(), job.into()))?;
        match self.attempt(job, now_ms(), true).await? {
            Some(lease) => Ok(lease),
            None => Err(RunNowError::Running(job.name.clone(), "another node".into())),
        }
    }

    /// The jobs of `plugin` with their schedule, next tick and last run (read from the store).
    pub(crate) async fn status(&self, plugin: &str) -> Vec<serde_json::Value> {
        let mut list = Vec::new();
        for job in self.jobs().iter().filter(|job| job.plugin == plugin) {
            let backend = self.backend.clone();
            let key = job.key();
            let lease = tokio::task::spawn_blocking(move || backend.get(JOBS_NS, &key)).await;
            let last = match lease {
                Ok(Ok(Some(entry))) => serde_json::from_slice::<Lease>(&entry.value)
                    .map_or_else(|_| serde_json::json!({"error": "unreadable lease record"}), |l| serde_json::json!(l)),
                Ok(Ok(None)) => serde_json::Value::Null,
                Ok(Err(err)) => serde_json::json!({"error": format!("the store is unavailable: {err}")}),
                Err(_) => serde_json::json!({"error": "the store task failed"}),
            };
            let next = job.next_ms.load(std::sync::atomic::Ordering::Relaxed);
            list.push(serde_json::json!({
                "name": job.name,
                "everySeconds": job.schedule.every.as_secs(),
                "jitterMs": job.schedule.jitter.as_millis() as u64,
                "timeoutMs": job.schedule.timeout.as_millis() as u64,
                "nextRunMs": (next > 0).then_some(next),
                "lastRun": last,
                "exported": job.mount.current().plugin.runs_jobs(),
            }));
        }
        list
    }

    /// Takes the lease for `tick` and runs the job: `Ok(None)` when another
    /// node took the tick, `Ok(Some(lease))` with the run's outcome.
    async fn attempt(&self, job: &Arc<Job>, tick: u64, manual: bool) -> Result<Option<Lease>, RunNowError> {
        let Ok(_running) = job.running.try_lock() else {
            return Err(RunNowError::Running(job.name.clone(), format!("{} (this node)", self.node)));
        };
        let started_ms = now_ms();
        let lease = Lease {
            tick,
            running: true,
            expires_ms: started_ms + LEASE_TTL.as_millis() as u64,
            node: self.node.clone(),
            started_ms,
            finished_ms: None,
            outcome: None,
            error: None,
            version: None,
            manual,
        };
        let lease = match self.take(job, lease).await? {
            Taken::Here(lease) => lease,
            Taken::Elsewhere => return Ok(None),
            Taken::Running(node) => return Err(RunNowError::Running(job.name.clone(), node)),
        };
        // The version live now runs it to the end, whatever is deployed meanwhile.
        let deployment = job.mount.current();
        let label = deployment.label();
        let mut done = Lease { version: Some(label.to_owned()), ..lease };
        if !deployment.plugin.runs_jobs() {
            if job.warned.lock().map(|mut warned| warned.insert(deployment.sha256.clone())).unwrap_or(true) {
                tracing::warn!(
                    plugin = %label, job = %job.name,
                    "job skipped: this version does not export evogate:plugin/scheduled (world plugin-with-jobs, 0.2.2 on)"
                );
            }
            done.outcome = Some("skipped".into());
            done.error = Some("the live version does not export evogate:plugin/scheduled".into());
        } else {
            tracing::info!(plugin = %label, job = %job.name, tick, manual, node = %self.node, "job run started");
            let started = Instant::now();
            let run = JobRun { job: job.name.clone(), scheduled_at_ms: tick, manual };
            // Epoch interruption stops plugin code at the deadline; this outer
            // timeout covers a host call that hangs past it.
            let timeout = job.schedule.timeout;
            // A trace of its own: the run's outgoing requests are its children.
            let trace = crate::traces::start(
                &opentelemetry::Context::new(),
                format!("job {}/{}", job.plugin, job.name),
                opentelemetry::trace::SpanKind::Internal,
            );
            let chain = crate::runtime::calls::Chain::start(&job.plugin).traced(trace.clone());
            let call = deployment.plugin.run_job_in(run, timeout, chain);
            let mut run = std::pin::pin!(async move {
                tokio::time::timeout(timeout + HOST_CALL_GRACE, call).await.unwrap_or(Err(Failure::Deadline))
            });
            let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + LEASE_TTL / 3, LEASE_TTL / 3);
            let result = loop {
                tokio::select! {
                    result = &mut run => break result,
                    _ = renew.tick() => self.renew(job, &done).await,
                }
            };
            let elapsed = started.elapsed();
            let (outcome, error) = match result {
                Ok(JobEnd::Ok) => ("ok", None),
                Ok(JobEnd::Partial(summary)) => ("partial", Some(summary)),
                Ok(JobEnd::Error(message)) => ("error", Some(message)),
                Err(Failure::Deadline) => {
                    ("timeout", Some(format!("ran past its {} ms", job.schedule.timeout.as_millis())))
                }
                Err(Failure::MemoryLimit) => ("memory", Some("memory limit exceeded".into())),
                Err(Failure::Trap(err)) => ("trap", Some(format!("{err:#}"))),
            };
            metrics::histogram!(crate::telemetry::JOB_DURATION, "plugin" => job.plugin.clone(), "job" => job.name.clone())
                .record(elapsed.as_secs_f64());
            let error_text = error.as_deref().map(crate::runtime::plugin_log::escape_controls);
            tracing::info!(
                plugin = %label, job = %job.name, tick, manual, outcome, duration_ms = elapsed.as_millis() as u64,
                error = error_text.as_deref().unwrap_or(""), "job run ended"
            );
            if crate::traces::recording(&trace) {
                use opentelemetry::trace::TraceContextExt as _;
                let span = trace.span();
                span.set_attributes([
                    opentelemetry::KeyValue::new("evogate.plugin", job.plugin.clone()),
                    opentelemetry::KeyValue::new("evogate.plugin.version", label.to_owned()),
                    opentelemetry::KeyValue::new("evogate.job", job.name.clone()),
                    opentelemetry::KeyValue::new("evogate.job.outcome", outcome),
                    opentelemetry::KeyValue::new("evogate.job.manual", manual),
                ]);
                if outcome != "ok" {
                    span.set_status(opentelemetry::trace::Status::error(
                        error_text.as_deref().unwrap_or(outcome).to_owned(),
                    ));
                }
                span.end();
            }
            done.outcome = Some(outcome.into());
            done.error = error.map(|error| error.chars().take(1024).collect());
        }
        let outcome = done.outcome.clone().unwrap_or_default();
        metrics::counter!(crate::telemetry::JOB_RUNS, "plugin" => job.plugin.clone(), "job" => job.name.clone(), "outcome" => outcome)
            .increment(1);
        done.running = false;
        done.expires_ms = 0;
        done.finished_ms = Some(now_ms());
        self.release(job, &done).await;
        Ok(Some(done))
    }

    /// Takes the lease with `lease` by compare-and-set.
    async fn take(&self, job: &Job, mut lease: Lease) -> Result<Taken, RunNowError> {
        let backend = self.backend.clone();
        let key = job.key();
        let task = tokio::task::spawn_blocking(move || -> Result<Taken, KvError> {
            let current = backend.get(JOBS_NS, &key)?;
            let check = match &current {
                None => Check::Absent(key.clone()),
                Some(entry) => {
                    // An unreadable record is taken over.
                    if let Ok(held) = serde_json::from_slice::<Lease>(&entry.value) {
                        if held.running && held.expires_ms > now_ms() {
                            return Ok(Taken::Running(held.node));
                        }
                        if lease.manual {
                            lease.tick = held.tick;
                        } else if held.tick >= lease.tick {
                            return Ok(Taken::Elsewhere);
                        }
                    }
                    Check::VersionIs(key.clone(), entry.version)
                }
            };
            let value = serde_json::to_vec(&lease).unwrap_or_default();
            match backend.commit(JOBS_NS, &[check], &[Write::Set(key, value)]) {
                Ok(()) => Ok(Taken::Here(lease)),
                Err(KvError::Conflict) => Ok(Taken::Elsewhere),
                Err(err) => Err(err),
            }
        });
        match task.await {
            Ok(Ok(taken)) => Ok(taken),
            Ok(Err(err)) => Err(RunNowError::Store(err.to_string())),
            Err(err) => Err(RunNowError::Store(format!("the store task failed: {err}"))),
        }
    }

    /// Writes `lease` over the stored one if it is still this run's (same
    /// node and start); `extend` pushes its expiry out by [`LEASE_TTL`].
    async fn rewrite(&self, job: &Job, lease: &Lease, extend: bool) -> Result<bool, String> {
        let backend = self.backend.clone();
        let key = job.key();
        let mut lease = lease.clone();
        let task = tokio::task::spawn_blocking(move || -> Result<bool, KvError> {
            let Some(entry) = backend.get(JOBS_NS, &key)? else { return Ok(false) };
            let ours = serde_json::from_slice::<Lease>(&entry.value)
                .is_ok_and(|held| held.node == lease.node && held.started_ms == lease.started_ms && held.running);
            if !ours {
                return Ok(false);
            }
            if extend {
                lease.expires_ms = now_ms() + LEASE_TTL.as_millis() as u64;
            }
            let value = serde_json::to_vec(&lease).unwrap_or_default();
            match backend.commit(JOBS_NS, &[Check::VersionIs(key.clone(), entry.version)], &[Write::Set(key, value)]) {
                Ok(()) => Ok(true),
                Err(KvError::Conflict) => Ok(false),
                Err(err) => Err(err),
            }
        });
        match task.await {
            Ok(result) => result.map_err(|err| err.to_string()),
            Err(err) => Err(format!("the store task failed: {err}")),
        }
    }

    async fn renew(&self, job: &Job, lease: &Lease) {
        match self.rewrite(job, lease, true).await {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                plugin = %job.plugin, job = %job.name,
                "job lease lost while running (it expired and another node took it): runs may overlap"
            ),
            Err(why) => {
                tracing::warn!(plugin = %job.plugin, job = %job.name, error = %why, "renewing the job lease failed; retrying")
            }
        }
    }

    /// Records the run's end in its lease, so the next tick may run.
    async fn release(&self, job: &Job, done: &Lease) {
        // A few tries: an unwritten end leaves the job blocked until the lease expires.
        for attempt in 0..3 {
            match self.rewrite(job, done, false).await {
                Ok(true) => return,
                Ok(false) => {
                    tracing::error!(plugin = %job.plugin, job = %job.name, "job lease lost before the run ended");
                    return;
                }
                Err(why) => {
                    tracing::warn!(plugin = %job.plugin, job = %job.name, attempt, error = %why, "recording the job's end failed");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }
}

fn missed(job: &Job, reason: &'static str) {
    metrics::counter!(crate::telemetry::JOB_TICKS_MISSED, "plugin" => job.plugin.clone(), "job" => job.name.clone(), "reason" => reason)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_record_reads_back_and_tolerates_missing_optional_fields() {
        let lease = Lease {
            tick: 2000,
            running: false,
            expires_ms: 0,
            node: "n".into(),
            started_ms: 2001,
            finished_ms: Some(2005),
            outcome: Some("ok".into()),
            error: None,
            version: Some("p@1".into()),
            manual: false,
        };
        let json = serde_json::to_vec(&lease).expect("json");
        assert_eq!(serde_json::from_slice::<Lease>(&json).expect("back"), lease);
        let minimal: Lease =
            serde_json::from_str(r#"{"tick":1,"running":true,"expiresMs":5,"node":"a","startedMs":1}"#)
                .expect("minimal");
        assert!(minimal.running && minimal.outcome.is_none() && !minimal.manual);
    }
}
