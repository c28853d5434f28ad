//! The sandbox: one wasmtime engine, and a fresh instance per request.
//!
//! A [`Sandbox`] owns the engine (pooling allocator, epoch interruption) and
//! the linker with the host side of the `plugin` world. [`Sandbox::load`]
//! compiles a component once into a [`PluginVersion`], which holds the
//! pre-instantiated component; [`PluginVersion::handle`] then makes a new
//! `Store` and instance for each request, so no state survives between
//! requests and a misbehaving request cannot affect another.
//!
//! A component is one of two kinds, told apart by its exports when it
//! loads ([`World`]): an evogate plugin (`evogate:plugin`, 0.2.x or 0.1.0)
//! or a standard `wasi:http/proxy` 0.2 component, served through
//! `wasmtime-wasi-http`, with `wasi:keyvalue` on the same store
//! (`keyvalue.rs`). Both get the same pool, limits and request path.

use crate::config::PluginSettings;
use crate::kv::{self, Namespace};
use crate::runtime::calls::{Calls, Chain, Router, RouterCell};
use crate::runtime::evogate::Current;
use crate::runtime::evogate_kv::KvCtx;
use crate::runtime::plugin_log::LogPipe;
use crate::runtime::{evogate_0_1, wasi_http};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

pub use crate::runtime::laps::{Laps, Phase};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::error::Context as _;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub use crate::edge::{Request, Response};
use crate::runtime::bindings::{generated_0_1, wit_0_1, wit_config, wit_job_outcome, wit_kv, wit_scheduled, wit_types};

/// How often the epoch ticks: the deadline's granularity, and how long a
/// plugin runs before it yields its thread to other requests.
const EPOCH_TICK: Duration = Duration::from_millis(2);
/// Instances beyond the requests' permits, for the smoke tests of deploys.
const DEPLOY_HEADROOM: u32 = 4;
/// Instance memory kept mapped between requests and reset in place.
const KEEP_RESIDENT_BYTES: usize = 4 * 1024 * 1024;

/// Set to `1`, plugin code shows up by name in `perf` profiles (a perf map
/// in `/tmp/perf-PID.map`).
pub const PERFMAP_VAR: &str = "EVOGATE_PERFMAP";

/// Core instances one component may hold (its modules and shims).
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 8;
/// Linear memories one component may hold.
const MAX_MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables one component may hold.
const MAX_TABLES_PER_COMPONENT: u32 = 8;
/// What one call from a plugin may make the host copy out of its memory:
/// the largest commit the kv limits allow (its bytes, and each check and
/// write as the host represents it), no more. A call past it traps.
const HOSTCALL_FUEL: usize =
    kv::MAX_COMMIT_BYTES + (kv::MAX_CHECKS_PER_COMMIT + kv::MAX_WRITES_PER_COMMIT) * HOSTCALL_FUEL_PER_ITEM;
// Below wasmtime's default (128 MiB), which would let a plugin make the host copy twice a commit's bytes.
const _: () = assert!(HOSTCALL_FUEL < 128 << 20);
/// The host's representation of one check or write (wasmtime charges its size per list element).
const HOSTCALL_FUEL_PER_ITEM: usize = std::mem::size_of::<wit_kv::Write>() + std::mem::size_of::<(String, Vec<u8>)>();

/// Longest plugin name or version accepted from a plugin's identity (they
/// go into logs, metric labels and the admin API).
const MAX_IDENTITY_BYTES: usize = 128;

/// Resource limits of one request's sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock budget of one request inside the plugin.
    pub timeout: Duration,
    /// Most linear memory one instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Most instances alive at once (the pooling allocator's capacity).
    pub max_instances: u32,
    /// Most store calls running on the blocking pool at once, across
    /// plugins; a call that finds none free by its request's deadline fails
    /// as `unavailable` without touching the store.
    pub max_kv_calls: u32,
    /// Largest response body an outgoing request may receive; past it the
    /// plugin's read of the body fails with `HTTP-response-body-size`.
    pub max_outbound_response_bytes: usize,
}

/// One run of a scheduled job, as the plugin is told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    /// The job's configured name.
    pub job: String,
    /// When the tick was due (Unix milliseconds); for a manual run, when it was asked.
    pub scheduled_at_ms: u64,
    /// Whether an operator asked for the run.
    pub manual: bool,
}

impl From<wit_types::Response> for Response {
    fn from(answer: wit_types::Response) -> Self {
        Response { status: answer.status, headers: answer.headers, body: answer.body }
    }
}

/// Why a request's sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The plugin ran past the request deadline.
    #[error("deadline exceeded")]
    Deadline,
    /// The plugin tried to grow its memory past the limit.
    #[error("memory limit exceeded")]
    MemoryLimit,
    /// The plugin trapped (panic, unreachable, bad host call, …).
    #[error("plugin trapped: {0:#}")]
    Trap(wasmtime::Error),
}

impl Failure {
    /// The failure's kind, as metrics and traces name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Deadline => "deadline",
            Failure::MemoryLimit => "memory_limit",
            Failure::Trap(_) => "trap",
        }
    }
}

/// How a job run ended, as its plugin said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// All of its work done.
    Ok,
    /// Part of its work failed (`job-outcome.partial`, world 0.2.3 on): the summary.
    Partial(String),
    /// The run failed: the plugin's message.
    Error(String),
}

/// The engine and linker shared by every plugin and version.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
    kv_calls: Arc<tokio::sync::Semaphore>,
    /// One permit per request of the instance pool; held by an instance until
    /// it is dropped (after its answer), so a request never finds the pool empty.
    instances: Arc<tokio::sync::Semaphore>,
    /// What serves the plugins' calls to each other, once the gateway exists.
    router: RouterCell,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Builds the engine with the pooling allocator sized for `limits`;
    /// compiled code is cached in `cache_dir` when given.
    pub fn new(limits: Limits, cache_dir: Option<&std::path::Path>) -> wasmtime::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        // Request permits, plus room for deploys to smoke-test new versions
        // while every request permit is held.
        let n = limits.max_instances.max(1).saturating_add(DEPLOY_HEADROOM);
        // A Rust component holds its main module plus a few small shim
        // modules. Each component may take its share of the pool and no
        // more, so one that would exhaust it is refused when it compiles
        // (at deploy), not when requests start failing.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT))
            .total_memories(n.saturating_mul(MAX_MEMORIES_PER_COMPONENT))
            .total_tables(n.saturating_mul(MAX_TABLES_PER_COMPONENT))
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .max_memory_size(limits.memory_bytes);
        // Reset instance memory by rewriting only the pages the request
        // dirtied (found with PAGEMAP_SCAN on Linux 6.7+) instead of
        // `madvise`: no page faults on the next request and no TLB
        // shootdowns across cores. Plugins dirty far less than this per request.
        pool.pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES.min(limits.memory_bytes))
            .table_keep_resident(64 * 1024);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if let Some(dir) = cache_dir {
            // Keyed by the component's bytes and the engine's settings: a
            // version compiled once loads in milliseconds after that.
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(wasmtime::Cache::new(cache).context("opening the compilation cache")?));
        }
        if std::env::var_os(PERFMAP_VAR).is_some_and(|on| on == "1") {
            // Names of compiled plugin functions in /tmp/perf-PID.map, for `perf report`.
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).context("creating the wasmtime engine")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).context("linking WASI")?;
        wit_types::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).context("linking types")?;
        wit_config::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).context("linking config")?;
        wit_job_outcome::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .context("linking job-outcome")?;
        wit_0_1::types::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .context("linking types 0.1.0")?;
        wit_0_1::config::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .context("linking config 0.1.0")?;
        crate::runtime::evogate_kv::add_to_linker(&mut linker, |s: &mut HostState| &mut s.evogate_kv)
            .context("linking kv")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).context("linking wasi:http")?;
        crate::runtime::wasi_keyvalue::add_to_linker(&mut linker, |s: &mut HostState| {
            crate::runtime::wasi_keyvalue::KeyValueView {
                table: &mut s.table,
                kv: &mut s.evogate_kv,
                state: &mut s.wasi_keyvalue,
            }
        })
        .context("linking wasi:keyvalue")?;

        let ticker = EpochTicker::start(engine.clone());
        let kv_calls = Arc::new(tokio::sync::Semaphore::new(limits.max_kv_calls.max(1) as usize));
        let instances = Arc::new(tokio::sync::Semaphore::new(limits.max_instances.max(1) as usize));
        Ok(Self { engine, linker, limits, kv_calls, instances, router: RouterCell::default(), _ticker: ticker })
    }

    /// Has `router` serve the calls plugins make to each other
    /// ([`crate::runtime::calls`]); until then every such call is refused.
    pub fn serve_calls(&self, router: Weak<dyn Router>) {
        let _ = self.router.set(router);
    }

    /// Compiles `wasm` (whose SHA-256 in hex is `sha256`) and checks it by
    /// instantiating it once and reading its identity. Compilation is slow:
    /// it runs on a blocking thread.
    pub async fn load(
        &self,
        plugin: &str,
        wasm: Vec<u8>,
        sha256: &str,
        settings: Arc<PluginSettings>,
        kv: Namespace,
    ) -> wasmtime::Result<PluginVersion> {
        let engine = self.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, wasm))
            .await
            .context("the compile task failed")?
            .with_context(|| format!("compiling plugin {plugin:?}"))?;
        let pre = self.linker.instantiate_pre(&component).with_context(|| {
            format!(
                "plugin {plugin:?} imports what evogate does not provide \
                 (it provides the evogate:plugin world, and wasi:http/proxy 0.2 with wasi:keyvalue 0.2.0-draft and -draft2)"
            )
        })?;
        // The current world, else the first one, else a standard component.
        let pre = match Current::new(pre.clone()) {
            Ok(current) => Pre::Current(current),
            Err(current) => match generated_0_1::PluginPre::new(pre.clone()) {
                Ok(first) => Pre::Evogate0_1_0(first),
                Err(_) => match ProxyPre::new(pre) {
                    Ok(proxy) => Pre::WasiHttp(proxy),
                    Err(_) => {
                        return Err(current).with_context(|| {
                            format!(
                                "plugin {plugin:?} exports neither the evogate:plugin handler and identity (0.2.x or 0.1.0) \
                                 nor wasi:http/incoming-handler 0.2.x"
                            )
                        });
                    }
                },
            },
        };
        let world = match pre {
            // A 0.2.x plugin exports its handler under its own version; the lookup took it by semver.
            Pre::Current(_) => {
                let exports: Vec<String> =
                    component.component_type().exports(&self.engine).map(|(name, _)| name.to_owned()).collect();
                World::evogate_from_exports(&exports)
            }
            Pre::Evogate0_1_0(_) => World::Evogate0_1_0,
            Pre::WasiHttp(_) => World::WasiHttp,
        };
        let outbound = Arc::new(
            crate::runtime::outgoing::Client::new(
                settings.outbound_ca.as_deref(),
                self.limits.max_outbound_response_bytes,
            )
            .map_err(|err| wasmtime::format_err!("plugin {plugin:?}: outbound_ca: {err:#}"))?,
        );
        let settings_calls: Arc<[String]> = settings.calls.clone().into();
        let mut version = PluginVersion {
            plugin: plugin.into(),
            pre,
            world,
            engine: self.engine.clone(),
            limits: self.limits,
            outbound,
            kv_calls: self.kv_calls.clone(),
            instances: self.instances.clone(),
            settings,
            kv,
            calls: settings_calls,
            router: self.router.clone(),
            name: String::new(),
            version: String::new(),
            label: Arc::from(plugin),
            memory_metric: metrics::histogram!(crate::telemetry::PLUGIN_MEMORY, "plugin" => plugin.to_owned()),
            kv_counters: Arc::new(crate::runtime::evogate_kv::KvCounters::new(plugin)),
        };
        let (name, semver) =
            version.read_identity().await.with_context(|| format!("reading the identity of plugin {plugin:?}"))?;
        // A standard component has no identity of its own: the plugin's
        // name, and the start of its SHA-256 as the version.
        let (name, semver) = match version.pre {
            Pre::WasiHttp(_) => (plugin.to_owned(), sha256.chars().take(12).collect()),
            Pre::Current(_) | Pre::Evogate0_1_0(_) => (name, semver),
        };
        for (what, text) in [("name", &name), ("version", &semver)] {
            let printable = !text.is_empty() && text.len() <= MAX_IDENTITY_BYTES && !text.chars().any(char::is_control);
            wasmtime::ensure!(
                printable,
                "plugin {plugin:?} reports an identity {what} that is empty, over {MAX_IDENTITY_BYTES} bytes or holds control characters: {:?}",
                crate::runtime::plugin_log::escape_controls(&text.chars().take(MAX_IDENTITY_BYTES).collect::<String>())
            );
        }
        version.label = format!("{plugin}@{semver}").into();
        version.name = name;
        version.version = semver;
        let problems = version.check_settings(&version.settings.config).await?;
        if !problems.is_empty() {
            return Err(wasmtime::Error::msg(SettingsRefused { plugin: plugin.to_owned(), problems }));
        }
        Ok(version)
    }
}

/// A compiled component, by the world it was built against: each world's
/// calls are in a file of its own (`evogate.rs`, `evogate_0_1.rs`,
/// `wasi_http.rs`).
enum Pre {
    Current(Current),
    Evogate0_1_0(evogate_0_1::Pre),
    WasiHttp(wasi_http::Pre),
}

/// The world a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `evogate:plugin@0.2.4`, the current world (outgoing HTTP, scheduled
    /// jobs and their outcomes, the check of its settings).
    Evogate,
    /// `evogate:plugin@0.2.3`: the current world without `settings`.
    Evogate0_2_3,
    /// `evogate:plugin@0.2.2`: the current world without `job-outcome`.
    Evogate0_2_2,
    /// `evogate:plugin@0.2.1`: 0.2.2 without outgoing HTTP and jobs.
    Evogate0_2_1,
    /// `evogate:plugin@0.2.0`: 0.2.1 without `kv.get-many`.
    Evogate0_2_0,
    /// `evogate:plugin@0.1.0`, the first world.
    Evogate0_1_0,
    /// The standard `wasi:http/proxy` world (0.2.x).
    WasiHttp,
}

impl World {
    /// The world's name, as the admin API and the logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Evogate => "evogate:plugin@0.2.4",
            World::Evogate0_2_3 => "evogate:plugin@0.2.3",
            World::Evogate0_2_2 => "evogate:plugin@0.2.2",
            World::Evogate0_2_1 => "evogate:plugin@0.2.1",
            World::Evogate0_2_0 => "evogate:plugin@0.2.0",
            World::Evogate0_1_0 => "evogate:plugin@0.1.0",
            World::WasiHttp => "wasi:http/proxy@0.2",
        }
    }

    /// The family of the world: `evogate:plugin` (every version) or
    /// `wasi:http/proxy`. A deploy that changes it is another program.
    pub fn family(self) -> &'static str {
        match self {
            World::WasiHttp => "wasi:http/proxy",
            _ => "evogate:plugin",
        }
    }

    /// Which 0.2.x a component's export names say it was built against.
    fn evogate_from_exports(exports: &[String]) -> Self {
        let exported = |version: &str| exports.iter().any(|name| *name == format!("evogate:plugin/handler@{version}"));
        if exported("0.2.0") {
            World::Evogate0_2_0
        } else if exported("0.2.1") {
            World::Evogate0_2_1
        } else if exported("0.2.2") {
            World::Evogate0_2_2
        } else if exported("0.2.3") {
            World::Evogate0_2_3
        } else {
            World::Evogate
        }
    }
}

/// One compiled plugin build, ready to serve requests.
pub struct PluginVersion {
    plugin: Arc<str>,
    pre: Pre,
    world: World,
    engine: Engine,
    limits: Limits,
    /// How outgoing requests are sent (TLS roots, response cap).
    outbound: Arc<crate::runtime::outgoing::Client>,
    kv_calls: Arc<tokio::sync::Semaphore>,
    instances: Arc<tokio::sync::Semaphore>,
    settings: Arc<PluginSettings>,
    kv: Namespace,
    /// The plugins it may call (`calls`).
    calls: Arc<[String]>,
    router: RouterCell,
    /// The name the plugin reports in its identity (a standard component's: the plugin's name).
    pub name: String,
    /// The version the plugin reports in its identity (a standard
    /// component's: the first 12 hex digits of its SHA-256).
    pub version: String,
    /// `plugin@version`: the configured name and the reported version, as
    /// the access log, warnings, job logs and the plugin's own output name it.
    label: Arc<str>,
    /// [`crate::telemetry::PLUGIN_MEMORY`] of this plugin, registered once.
    memory_metric: metrics::Histogram,
    /// [`crate::telemetry::STORE_CALLS`] of this plugin, registered once.
    kv_counters: Arc<crate::runtime::evogate_kv::KvCounters>,
}

impl std::fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginVersion")
            .field("plugin", &self.plugin)
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl PluginVersion {
    /// `plugin@version`: the configured name and the version the build
    /// reports, the one name logs and metrics give this build.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `name@version` as the build reports itself in its identity (its
    /// [`label`](Self::label) names it by the configured name instead).
    pub fn identity(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The world the component was built against.
    pub fn world(&self) -> World {
        self.world
    }

    /// Answers one request in a fresh instance, within `timeout`.
    ///
    /// The plugin runs on the calling task and yields to other tasks at
    /// every epoch tick, so a busy plugin shares the thread instead of
    /// holding it; past the deadline it traps.
    pub async fn handle(&self, request: Request, timeout: Duration) -> Result<Response, Failure> {
        self.answer(request, timeout).await.0
    }

    /// [`PluginVersion::handle`], the instance kept: dropping [`Spent`]
    /// resets its memory for the next request, which the gateway does once
    /// the answer is on its way.
    pub async fn answer(&self, request: Request, timeout: Duration) -> (Result<Response, Failure>, Spent) {
        self.answer_timed(request, timeout, &mut Laps::off()).await
    }

    /// [`PluginVersion::answer`], the time of each step of the instance's
    /// life added to `laps` (for benchmarks: see [`Laps`]).
    pub async fn answer_timed(
        &self,
        request: Request,
        timeout: Duration,
        laps: &mut Laps,
    ) -> (Result<Response, Failure>, Spent) {
        self.answer_in(request, timeout, Chain::start(&self.plugin), laps).await
    }

    /// [`PluginVersion::answer`] for a request that came along `chain`:
    /// from a client (a chain of this plugin alone) or from other plugins.
    pub(crate) async fn answer_in(
        &self,
        request: Request,
        timeout: Duration,
        chain: Chain,
        laps: &mut Laps,
    ) -> (Result<Response, Failure>, Spent) {
        let Some(permit) = self.instance_permit(timeout).await else {
            return (Err(Failure::Deadline), Spent { store: None, _permit: None });
        };
        // A traced request's instance gets spans of its steps: timed here, not by the caller's laps.
        let traced = crate::traces::recording(chain.trace()).then(|| (chain.trace().clone(), SystemTime::now()));
        let mut own_laps = Laps::new();
        let laps = if traced.is_some() { &mut own_laps } else { laps };
        laps.start();
        let request_id = request.headers.iter().find(|(name, _)| name == "x-request-id").map_or("-", |(_, id)| id);
        let mut store = self.new_store(timeout, request_id, chain);
        laps.lap(Phase::Store);
        let result = match &self.pre {
            Pre::Current(current) => current.handle(&mut store, request, laps).await,
            Pre::Evogate0_1_0(pre) => evogate_0_1::handle(pre, &mut store, request, laps).await,
            Pre::WasiHttp(pre) => wasi_http::handle(pre, &mut store, request, self.limits.memory_bytes, laps).await,
        };
        laps.lap(Phase::Call);
        let peak = store.data().limiter.peak;
        PEAK_INSTANCE_MEMORY.fetch_max(peak, std::sync::atomic::Ordering::Relaxed);
        self.memory_metric.record(peak as f64);
        let outcome = self.finish(&store, result);
        if let Some((trace, started)) = traced {
            let steps = [Phase::Store, Phase::Instantiate, Phase::Call].map(|phase| laps.total(phase));
            let failure = outcome.as_ref().err().map(Failure::kind);
            crate::traces::instance_ends(&trace, started, steps, store.data().evogate_kv.spent(), peak, failure);
        }
        (outcome, Spent { store: Some(store), _permit: Some(permit) })
    }

    /// A permit of the instance pool, waited for at most `timeout` (free at
    /// once unless instances that answered are still being reset).
    async fn instance_permit(&self, timeout: Duration) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let deadline = tokio::time::Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, self.instances.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => None,
        }
    }

    /// Whether the plugin exports `scheduled` (built against `plugin-with-jobs`, 0.2.2 on).
    pub fn runs_jobs(&self) -> bool {
        matches!(&self.pre, Pre::Current(current) if current.runs_jobs())
    }

    /// Runs one scheduled job in a fresh instance, within `timeout` (the
    /// instance's deadline, its store calls' and its outgoing requests'):
    /// how the plugin says the run ended, or how the instance failed.
    /// Plugins that do not export `scheduled` ([`PluginVersion::runs_jobs`])
    /// fail with a trap saying so.
    pub async fn run_job(&self, run: JobRun, timeout: Duration) -> Result<JobEnd, Failure> {
        self.run_job_in(run, timeout, Chain::start(&self.plugin)).await
    }

    /// [`PluginVersion::run_job`] as part of `chain` (its trace).
    pub(crate) async fn run_job_in(&self, run: JobRun, timeout: Duration, chain: Chain) -> Result<JobEnd, Failure> {
        let Pre::Current(current) = &self.pre else {
            return Err(Failure::Trap(wasmtime::format_err!("the plugin does not export evogate:plugin/scheduled")));
        };
        let Some(_permit) = self.instance_permit(timeout).await else {
            return Err(Failure::Deadline);
        };
        let mut store = self.new_store(timeout, &format!("job:{}", run.job), chain);
        let run = wit_scheduled::JobRun {
            job: run.job,
            scheduled_at_ms: run.scheduled_at_ms,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            manual: run.manual,
        };
        let result = current.run_job(&mut store, &run).await;
        let partial = store.data_mut().job_partial.take();
        Ok(match self.finish(&store, result)? {
            Ok(()) => partial.map_or(JobEnd::Ok, JobEnd::Partial),
            Err(message) => JobEnd::Error(message),
        })
    }

    /// Instantiates once and reads the plugin's identity.
    async fn read_identity(&self) -> Result<(String, String), Failure> {
        let mut store = self.new_store(self.limits.timeout, "-", Chain::start(&self.plugin));
        let result = match &self.pre {
            Pre::Current(current) => current.identity(&mut store).await,
            Pre::Evogate0_1_0(pre) => evogate_0_1::identity(pre, &mut store).await,
            // No identity to read: instantiating once is the smoke test.
            Pre::WasiHttp(pre) => {
                wasi_http::instantiate(pre, &mut store).await.map(|()| (String::new(), String::new()))
            }
        };
        self.finish(&store, result)
    }

    fn new_store(&self, timeout: Duration, request_id: &str, chain: Chain) -> Store<HostState> {
        let tag = self.label.clone();
        let request_id: Arc<str> = request_id.into();
        // No preopened directories or arguments (the builder's defaults),
        // stdin closed, and every socket refused explicitly. A standard
        // component reads its settings from its environment; an evogate
        // plugin has none (it has the `config` interface).
        let mut wasi = WasiCtx::builder();
        wasi.stdout(LogPipe::new(tag.clone(), request_id.clone(), "stdout"))
            .stderr(LogPipe::new(tag.clone(), request_id.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        #[cfg(feature = "fault-injection")]
        wasi.wall_clock(crate::runtime::clock::Ahead);
        if matches!(self.pre, Pre::WasiHttp(_)) {
            for (name, value) in &self.settings.config {
                wasi.env(name, value);
            }
        }
        let wasi = wasi.build();
        let deadline = Instant::now() + timeout;
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { max_bytes: self.limits.memory_bytes, hit: false, peak: 0 },
            evogate_kv: KvCtx::new(self.kv.clone(), self.kv_calls.clone(), deadline, self.kv_counters.clone()),
            settings: self.settings.clone(),
            http: WasiHttpCtx::new(),
            outbound: crate::runtime::outgoing::Hooks::new(
                self.outbound.clone(),
                self.settings.clone(),
                self.plugin.clone(),
                tag,
                deadline,
                Calls { router: self.router.clone(), allowed: self.calls.clone(), chain, request_id },
            ),
            wasi_keyvalue: crate::runtime::wasi_keyvalue::KeyValueState::default(),
            job_partial: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(HOSTCALL_FUEL);
        // At every tick: past the deadline trap, else yield and run on.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });
        store
    }

    /// Turns a wasmtime error into the [`Failure`] it stands for.
    fn finish<T>(&self, store: &Store<HostState>, result: wasmtime::Result<T>) -> Result<T, Failure> {
        result.map_err(|err| {
            if store.data().limiter.hit {
                Failure::MemoryLimit
            } else if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                Failure::Deadline
            } else {
                Failure::Trap(err)
            }
        })
    }
}

/// An instance that has answered. Dropping it returns its permit to the
/// pool, rewriting the memory pages the request dirtied: a few
/// microseconds that need not delay the answer.
pub struct Spent {
    // Dropped in this order: the instance, then its permit.
    store: Option<Store<HostState>>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Spent {
    /// Resets the instance now, its time added to `laps` as [`Phase::Reset`].
    pub fn reset(self, laps: &mut Laps) {
        laps.start();
        drop(self);
        laps.lap(Phase::Reset);
    }
}

impl std::fmt::Debug for Spent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spent").field("instance", &self.store.is_some()).finish()
    }
}

/// Per-request state of one instance.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    /// The evogate `kv` interface's per-request state.
    evogate_kv: KvCtx,
    settings: Arc<PluginSettings>,
    http: WasiHttpCtx,
    outbound: crate::runtime::outgoing::Hooks,
    /// The standard `wasi:keyvalue` interface's per-request state.
    wasi_keyvalue: crate::runtime::wasi_keyvalue::KeyValueState,
    /// What a job run said it failed of its work (`job-outcome.partial`).
    job_partial: Option<String>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

/// Refuses memory growth past the limit and remembers that it did, so the
/// trap that follows (Rust aborts on allocation failure) is reported as a
/// memory-limit hit rather than a plain trap.
struct MemoryLimiter {
    max_bytes: usize,
    hit: bool,
    /// The most linear memory the instance held.
    peak: usize,
}

/// The most linear memory any plugin instance of this process has held.
static PEAK_INSTANCE_MEMORY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The most linear memory any plugin instance of this process has held, in
/// bytes (also the `evogate_plugin_memory_bytes` histogram, per request).
pub fn peak_instance_memory() -> usize {
    PEAK_INSTANCE_MEMORY.load(std::sync::atomic::Ordering::Relaxed)
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_bytes;
        self.hit |= !allowed;
        if allowed {
            self.peak = self.peak.max(desired);
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

impl wit_types::Host for HostState {}

impl wit_config::Host for HostState {
    fn get(&mut self, name: String) -> Option<String> {
        self.settings.config.get(&name).cloned()
    }
}

impl wit_job_outcome::Host for HostState {
    fn partial(&mut self, summary: String) {
        // As much as the admin API keeps of a run's error.
        self.job_partial = Some(summary.chars().take(1024).collect());
    }
}

impl wit_0_1::types::Host for HostState {}

impl wit_0_1::config::Host for HostState {
    fn get(&mut self, name: String) -> Option<String> {
        wit_config::Host::get(self, name)
    }
}

/// Advances the engine's epoch on a background thread until dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("evogate-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

mod settings;
pub use settings::SettingsRefused;

#[cfg(test)]
mod tests;
