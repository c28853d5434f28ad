//! Deploying plugin versions into a running gateway, and rolling back.
//!
//! A deploy validates the component, compiles it off the serving path
//! (wasmtime's cache under `data_dir/cache` makes a version seen before load
//! in milliseconds), instantiates it once to read its identity, records it
//! durably, and only then swaps it into the plugin's mount: new requests get
//! the new version, requests in flight finish on theirs, none is refused.
//!
//! On disk, per plugin, under `data_dir/plugins/{name}/`:
//! `{sha256}.wasm` — the artifacts of the live version and the last
//! [`KEPT_VERSIONS`] before it; `state.json` — which is live and which came
//! before. A restart serves the live version recorded there, not the file
//! named in the configuration.
//!
//! On a store shared by several nodes (PostgreSQL), a deploy or rollback
//! also records the artifact and the plugin's state in the store's reserved
//! namespace `evogate:deploy`; every node polls that state
//! ([`Deployer::follow`]) and swaps to what it names within about a second,
//! without a restart. A node starting up serves what the fleet serves.

mod artifacts;
mod changes;
mod fleet;

pub use self::artifacts::{VersionRecord, sha256_hex};

use self::artifacts::{PluginDir, State};
use crate::config::PluginConfig;
use crate::control::registry::{Deployment, Mount, Registry};
use crate::kv::{Backend, Namespace};
use crate::runtime::sandbox::Sandbox;
use anyhow::Context as _;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Versions kept for rollback besides the live one.
pub const KEPT_VERSIONS: usize = 3;
/// Why a deploy or rollback did not happen. The live version is untouched.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No plugin of that name is configured.
    #[error("no plugin named {0:?} is configured")]
    UnknownPlugin(String),
    /// The upload is not an acceptable component (size, format).
    #[error("{0}")]
    Invalid(String),
    /// The component failed to compile, link or start.
    #[error("{0:#}")]
    Refused(#[source] anyhow::Error),
    /// There is no earlier version to go back to.
    #[error("plugin {0:?} has no earlier version to roll back to")]
    NothingToRollBack(String),
    /// The version asked for is not among the kept ones (or names several).
    #[error("{0}")]
    NoSuchVersion(String),
    /// The upload is another program than the live version (its identity's
    /// name or its world differs), and the deploy was not forced.
    #[error("{0}")]
    IdentityChanged(String),
    /// The data directory could not be written.
    #[error("storing the deployment failed: {0:#}")]
    Storage(anyhow::Error),
}

/// The outcome of a deploy or rollback.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The plugin (mount) name.
    pub name: String,
    /// What this call made live (or found live, if unchanged).
    pub deployed: VersionRecord,
    /// `false` when the upload was the live version already: nothing changed.
    pub changed: bool,
    /// What is live when the answer is written (a later deploy may have won).
    pub live: VersionRecord,
}

/// A plugin as `GET /plugins` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    /// The configured name.
    pub name: String,
    /// The route it serves.
    pub route: String,
    /// The name the plugin reports.
    pub identity: String,
    /// The world the live version was built against, e.g. `wasi:http/proxy@0.2`.
    pub world: &'static str,
    /// The live version.
    pub live: VersionRecord,
    /// The versions live before this one, kept for rollback, the most recent first.
    pub previous: Vec<VersionRecord>,
    /// The versions rolled back from, kept to roll forward to, the nearest first.
    pub later: Vec<VersionRecord>,
}

struct Managed {
    mount: Arc<Mount>,
    files: PluginDir,
    /// Held for the whole of a deploy, rollback or fleet catch-up of this
    /// plugin: they happen one at a time.
    state: tokio::sync::Mutex<ManagedState>,
}

/// What a plugin's deploys change besides its mount.
#[derive(Debug)]
struct ManagedState {
    /// The versions live before the live one, the most recent first.
    previous: Vec<VersionRecord>,
    /// The versions rolled back from, the nearest first.
    later: Vec<VersionRecord>,
    /// The store version of the fleet state this node last acted on.
    fleet_seen: Option<u64>,
    /// What the plugin's builds are given (`[plugins.config]` and the
    /// rest); a reload replaces it, and every build loaded after.
    settings: Arc<crate::config::PluginSettings>,
}

/// Owns the plugins' mounts and changes what they serve.
pub struct Deployer {
    sandbox: Arc<Sandbox>,
    backend: Arc<dyn Backend>,
    max_bytes: usize,
    data_dir: std::path::PathBuf,
    /// The plugins by name; a reload replaces the map.
    plugins: std::sync::RwLock<BTreeMap<String, Arc<Managed>>>,
    /// Deploys, rollbacks and fleet catch-ups hold it shared; a reload
    /// holds it alone, so none of them works on a plugin it replaces.
    changes: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer").field("plugins", &self.names()).finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Checks that `bytes` are a component within the size limit.
pub fn validate(bytes: &[u8], max_bytes: usize) -> Result<(), DeployError> {
    if bytes.len() > max_bytes {
        return Err(DeployError::Invalid(format!("the component is {} bytes; the limit is {max_bytes}", bytes.len())));
    }
    // The preamble tells the two apart: `\0asm`, then version 1 for a core
    // module, or version 0x0d layer 1 for a component. Compiling checks the rest.
    let preamble = bytes.get(..8);
    if preamble == Some(b"\0asm\x0d\0\x01\0") {
        return Ok(());
    }
    if preamble == Some(b"\0asm\x01\0\0\0") {
        return Err(DeployError::Invalid(
            "this is a core WebAssembly module, not a component: build the plugin for wasm32-wasip2".into(),
        ));
    }
    Err(DeployError::Invalid("this is not a WebAssembly component".into()))
}

/// The build `serve` starts plugin `name` with from `data_dir`: the live
/// version recorded there, or the newest kept one whose artifact is intact;
/// none before a first deploy. Reads only.
pub(crate) fn recorded_build(data_dir: &Path, name: &str) -> anyhow::Result<Option<(VersionRecord, Vec<u8>)>> {
    let files = PluginDir { dir: data_dir.join("plugins").join(name) };
    Ok(files.intact_state()?.map(|(state, bytes, _)| (state.active, bytes)))
}

impl Managed {
    fn live_record(&self) -> VersionRecord {
        let live = self.mount.current();
        VersionRecord {
            sha256: live.sha256.clone(),
            version: live.plugin.version.clone(),
            deployed_at: live.deployed_at,
        }
    }
}

impl Deployer {
    /// Loads every configured plugin — the last deployed version where one
    /// was deployed, else the configured file — and builds the routing table.
    pub async fn start(
        plugins: &[PluginConfig],
        sandbox: Arc<Sandbox>,
        backend: Arc<dyn Backend>,
        data_dir: &Path,
        max_bytes: usize,
    ) -> anyhow::Result<(Deployer, Registry)> {
        let mut managed = BTreeMap::new();
        for plugin in plugins {
            let entry = prepare(plugin, &sandbox, &backend, data_dir).await?;
            managed.insert(plugin.name.clone(), Arc::new(entry));
        }
        let registry = Registry::from_mounts(managed.values().map(|managed| managed.mount.clone()).collect());
        let deployer = Deployer {
            sandbox,
            backend,
            max_bytes,
            data_dir: data_dir.to_owned(),
            plugins: std::sync::RwLock::new(managed),
            changes: tokio::sync::RwLock::new(()),
        };
        Ok((deployer, registry))
    }

    fn managed(&self, name: &str) -> Result<Arc<Managed>, DeployError> {
        self.snapshot().get(name).cloned().ok_or_else(|| DeployError::UnknownPlugin(name.into()))
    }

    /// The plugins as they are now.
    fn snapshot(&self) -> BTreeMap<String, Arc<Managed>> {
        self.plugins.read().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// The names of the plugins managed.
    pub fn names(&self) -> Vec<String> {
        self.snapshot().into_keys().collect()
    }

    /// The largest component a deploy accepts.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Every plugin with its live and kept versions (waits for a deploy in progress).
    pub async fn list(&self) -> Vec<PluginStatus> {
        let plugins = self.snapshot();
        let mut list = Vec::with_capacity(plugins.len());
        for (name, managed) in &plugins {
            let (previous, later) = {
                let state = managed.state.lock().await;
                (state.previous.clone(), state.later.clone())
            };
            let live = managed.mount.current();
            list.push(PluginStatus {
                name: name.clone(),
                route: managed.mount.route.clone(),
                identity: live.plugin.name.clone(),
                world: live.plugin.world().as_str(),
                live: managed.live_record(),
                previous,
                later,
            });
        }
        list
    }

    /// Deploys `bytes` as the new version of plugin `name`. Unless
    /// `force`, a build that is another program than the live one — its
    /// identity's name or its world family differs — is refused: it would
    /// get the live plugin's route and all of its data.
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>, force: bool) -> Result<Outcome, DeployError> {
        let trace = deploy_span(format!("deploy {name}"));
        let _changes = self.changes.read().await;
        let outcome = self.deploy_now(name, bytes, force).await;
        deploy_span_ends(&trace, name, &outcome);
        outcome
    }

    async fn deploy_now(&self, name: &str, bytes: Vec<u8>, force: bool) -> Result<Outcome, DeployError> {
        let managed = self.managed(name)?;
        let managed = &*managed;
        validate(&bytes, self.max_bytes)?;
        let sha256 = sha256_hex(&bytes);
        let mut guard = managed.state.lock().await;
        let live = managed.live_record();
        if live.sha256 == sha256 {
            return Ok(Outcome { name: name.into(), deployed: live.clone(), changed: false, live });
        }
        let deployment = self.load(name, &sha256, bytes.clone(), guard.settings.clone()).await?;
        let current = managed.mount.current();
        let (was, new) = (&current.plugin, &deployment.plugin);
        if was.name != new.name || was.world().family() != new.world().family() {
            let (was, new) = (
                format!("{} ({})", was.identity(), was.world().as_str()),
                format!("{} ({})", new.identity(), new.world().as_str()),
            );
            if !force {
                metrics::counter!(crate::telemetry::DEPLOYS_REFUSED, "plugin" => name.to_owned()).increment(1);
                return Err(DeployError::IdentityChanged(format!(
                    "plugin {name:?} runs {was}; the upload is {new}, another program, which would get this plugin's \
                     route and all of its data: deploy it with --force (?force=true) if that is what you mean"
                )));
            }
            tracing::warn!(plugin = name, from_identity = %was, to_identity = %new, "deploying another program, as forced");
        }
        let record = VersionRecord {
            sha256: sha256.clone(),
            version: deployment.plugin.version.clone(),
            deployed_at: deployment.deployed_at,
        };
        let before = State { active: live.clone(), previous: guard.previous.clone(), later: guard.later.clone() };
        // The versions rolled back from become earlier ones: kept, in the order they were live.
        let mut previous = vec![live];
        previous.extend(guard.later.iter().cloned());
        previous.extend(guard.previous.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        previous.retain(|old| old.sha256 != sha256 && seen.insert(old.sha256.clone()));
        previous.truncate(KEPT_VERSIONS);
        let state = State { active: record.clone(), previous, later: Vec::new() };
        self.persist(managed, &state, Some((&sha256, bytes.clone()))).await?;
        // The fleet gets the new build and the one it replaces, so any node can roll back.
        let replaced = managed.mount.current().sha256.clone();
        let mut artifacts = vec![(sha256.clone(), bytes)];
        if let Ok(old) = std::fs::read(managed.files.artifact(&replaced)) {
            artifacts.push((replaced, old));
        }
        self.publish_or_restore(managed, &mut guard, name, &state, artifacts, &before).await?;
        self.go_live(managed, &mut guard, deployment, &state);
        metrics::counter!(crate::telemetry::DEPLOYS, "plugin" => name.to_owned()).increment(1);
        Ok(Outcome { name: name.into(), deployed: record, changed: true, live: managed.live_record() })
    }

    /// Makes a kept version live again: `to` (a version the plugin reported,
    /// or the start of a SHA-256, at least 6 hex digits) among the versions
    /// before the live one and those rolled back from; without `to`, the
    /// version live before this one. The live version is kept, so going
    /// back and forth loses nothing.
    pub async fn rollback(&self, name: &str, to: Option<&str>) -> Result<Outcome, DeployError> {
        let trace = deploy_span(format!("rollback {name}"));
        let _changes = self.changes.read().await;
        let outcome = self.rollback_now(name, to).await;
        deploy_span_ends(&trace, name, &outcome);
        outcome
    }

    async fn rollback_now(&self, name: &str, to: Option<&str>) -> Result<Outcome, DeployError> {
        let managed = self.managed(name)?;
        let managed = &*managed;
        let mut guard = managed.state.lock().await;
        let live = managed.live_record();
        if let Some(to) = to
            && version_matches(&live, to)
        {
            return Ok(Outcome { name: name.into(), deployed: live.clone(), changed: false, live });
        }
        let (previous, later) = (guard.previous.clone(), guard.later.clone());
        let state = match to {
            None if previous.is_empty() => return Err(DeployError::NothingToRollBack(name.into())),
            None => moved_to(&live, &previous, &later, Place::Previous(0)),
            Some(to) => moved_to(&live, &previous, &later, find_kept(name, &previous, &later, to)?),
        };
        let target = state.active.clone();
        let path = managed.files.artifact(&target.sha256);
        let bytes = tokio::task::spawn_blocking(move || {
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        })
        .await
        .map_err(storage_task_failed)?
        .map_err(DeployError::Storage)?;
        let bytes_for_fleet = if self.backend.is_shared() { bytes.clone() } else { Vec::new() };
        let deployment = self.load(name, &target.sha256, bytes, guard.settings.clone()).await?;
        let record = VersionRecord {
            sha256: target.sha256.clone(),
            version: deployment.plugin.version.clone(),
            deployed_at: deployment.deployed_at,
        };
        let before = State { active: live, previous, later };
        let state = State { active: record.clone(), ..state };
        self.persist(managed, &state, None).await?;
        let artifacts = vec![(target.sha256.clone(), bytes_for_fleet)];
        self.publish_or_restore(managed, &mut guard, name, &state, artifacts, &before).await?;
        self.go_live(managed, &mut guard, deployment, &state);
        metrics::counter!(crate::telemetry::ROLLBACKS, "plugin" => name.to_owned()).increment(1);
        Ok(Outcome { name: name.into(), deployed: record, changed: true, live: managed.live_record() })
    }

    async fn load(
        &self,
        name: &str,
        sha256: &str,
        bytes: Vec<u8>,
        settings: Arc<crate::config::PluginSettings>,
    ) -> Result<Deployment, DeployError> {
        let namespace = Namespace::new(self.backend.clone(), name);
        let started = std::time::Instant::now();
        let plugin = self.sandbox.load(name, bytes, sha256, settings, namespace).await.map_err(|err| {
            metrics::counter!(crate::telemetry::DEPLOYS_REFUSED, "plugin" => name.to_owned()).increment(1);
            DeployError::Refused(err.into())
        })?;
        tracing::info!(plugin = name, identity = %plugin.identity(), sha256 = &sha256[..12], load_ms = started.elapsed().as_millis() as u64, "plugin version ready");
        Ok(Deployment { plugin, sha256: sha256.to_owned(), deployed_at: now_unix() })
    }

    async fn persist(
        &self,
        managed: &Managed,
        state: &State,
        artifact: Option<(&str, Vec<u8>)>,
    ) -> Result<(), DeployError> {
        let files = managed.files.clone();
        let state = state.clone();
        let artifact = artifact.map(|(sha, bytes)| (sha.to_owned(), bytes));
        tokio::task::spawn_blocking(move || {
            if let Some((sha, bytes)) = artifact {
                files.save_artifact(&sha, &bytes)?;
            }
            files.write_state(&state)
        })
        .await
        .map_err(storage_task_failed)?
        .map_err(DeployError::Storage)
    }

    /// [`Deployer::publish`]; when that fails, `state.json` goes back to
    /// `before`, so a restart never serves a version the fleet never got.
    async fn publish_or_restore(
        &self,
        managed: &Managed,
        guard: &mut ManagedState,
        name: &str,
        state: &State,
        artifacts: Vec<(String, Vec<u8>)>,
        before: &State,
    ) -> Result<(), DeployError> {
        let Err(err) = self.publish(guard, name, state, artifacts).await else { return Ok(()) };
        if let Err(restore) = self.persist(managed, before, None).await {
            tracing::error!(plugin = name, error = %restore, "restoring state.json after a failed publication failed");
        }
        Err(err)
    }

    fn go_live(&self, managed: &Managed, guard: &mut ManagedState, deployment: Deployment, state: &State) {
        let (label, identity) = (deployment.label().to_owned(), deployment.plugin.identity());
        let old = managed.mount.swap(Arc::new(deployment));
        guard.previous.clone_from(&state.previous);
        guard.later.clone_from(&state.later);
        tracing::info!(
            plugin = %managed.mount.name,
            from = %old.label(),
            to = %label,
            from_identity = %old.plugin.identity(),
            to_identity = %identity,
            "swapped"
        );
    }
}

/// Loads plugin `plugin` as a start does — the fleet's version on a shared
/// store, else the last one deployed here, else the configured file — on
/// a mount of its own, not yet routed to.
async fn prepare(
    plugin: &PluginConfig,
    sandbox: &Sandbox,
    backend: &Arc<dyn Backend>,
    data_dir: &Path,
) -> anyhow::Result<Managed> {
    let files = PluginDir { dir: data_dir.join("plugins").join(&plugin.name) };
    let settings = Arc::new(plugin.plugin_settings());
    let mut fleet_seen = None;
    if backend.is_shared() {
        // What the fleet serves wins over what this node served last.
        let (fleet, backend, name) = (files.clone(), backend.clone(), plugin.name.clone());
        match tokio::task::spawn_blocking(move || fleet::adopt_fleet_state(&*backend, &name, &fleet)).await {
            Ok(Ok(seen)) => fleet_seen = seen,
            Ok(Err(err)) => {
                tracing::warn!(plugin = %plugin.name, error = %format!("{err:#}"), "cannot take up the fleet's version; serving this node's own until the next deploy")
            }
            Err(join) => return Err(anyhow::Error::new(join).context("reading the fleet state")),
        }
    }
    // The live version recorded, or the newest kept one whose artifact is intact.
    let state = files.intact_state()?.map(|(state, bytes, passed_over)| {
        if passed_over > 0 {
            tracing::error!(plugin = %plugin.name, version = %state.active.version, sha256 = %&state.active.sha256[..12], "falling back to an earlier kept version: the live one's artifact is damaged or missing");
        }
        (state, bytes)
    });
    let (bytes, source, deployed_at) = match &state {
        Some((state, bytes)) => (bytes.clone(), files.artifact(&state.active.sha256), state.active.deployed_at),
        None => {
            let path = plugin.wasm.relative();
            let bytes = std::fs::read(&path).with_context(|| {
                let hint = if plugin.wasm.original().components().any(|part| part.as_os_str() == "wasm32-wasip2") {
                    " (build it first: cargo xtask build)"
                } else {
                    ""
                };
                format!("reading plugin {:?} from {}{hint}", plugin.name, path.display())
            })?;
            (bytes, path, now_unix())
        }
    };
    // Keep the configured build as an artifact (below), so a first deploy can be rolled back to it.
    validate(&bytes, usize::MAX).with_context(|| format!("plugin {:?}", plugin.name))?;
    let sha256 = sha256_hex(&bytes);
    let started = std::time::Instant::now();
    let namespace = Namespace::new(backend.clone(), &plugin.name);
    let version = sandbox.load(&plugin.name, bytes.clone(), &sha256, settings.clone(), namespace).await?;
    let deployment = Arc::new(Deployment { plugin: version, sha256: sha256.clone(), deployed_at });
    if state.is_some() {
        // A new build in the configured file (an upgrade) is not served until deployed: say so.
        let configured = std::fs::read(plugin.wasm.relative()).ok().map(|bytes| sha256_hex(&bytes));
        if configured.as_ref().is_some_and(|configured| *configured != sha256) {
            tracing::warn!(
                plugin = %plugin.name,
                "serving the last deployed version {} (sha256 {}), not the configured file {}, which \
                 differs: deploy that file (evogate deploy {} FILE) to serve it",
                deployment.label(),
                &sha256[..12],
                plugin.wasm.relative().display(),
                plugin.name,
            );
        } else {
            tracing::info!(
                plugin = %plugin.name,
                "serving the last deployed version {} (sha256 {})",
                deployment.label(),
                &sha256[..12],
            );
        }
    }
    tracing::info!(
        plugin = %plugin.name,
        route = %plugin.route,
        identity = %deployment.plugin.identity(),
        world = deployment.plugin.world().as_str(),
        sha256 = %&sha256[..12],
        wasm = %source.display(),
        load_ms = started.elapsed().as_millis() as u64,
        "plugin loaded"
    );
    let mount = Mount::new(&plugin.name, &plugin.route, plugin.error_format, deployment);
    files.save_artifact(&sha256, &bytes)?;
    let (previous, later) = state.map(|(s, _)| (s.previous, s.later)).unwrap_or_default();
    Ok(Managed { mount, files, state: tokio::sync::Mutex::new(ManagedState { previous, later, fleet_seen, settings }) })
}

/// Where a kept version is: among those before the live one, or those rolled back from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Previous(usize),
    Later(usize),
}

/// Whether `record` is the version `to` names: its reported version, or a
/// SHA-256 prefix of at least 6 hex digits.
fn version_matches(record: &VersionRecord, to: &str) -> bool {
    record.version == to || (to.len() >= 6 && to.len() <= 64 && record.sha256.starts_with(&to.to_ascii_lowercase()))
}

/// The kept version `to` names; an error listing the kept ones when it names none or several.
fn find_kept(name: &str, previous: &[VersionRecord], later: &[VersionRecord], to: &str) -> Result<Place, DeployError> {
    let found: Vec<Place> = (previous.iter().enumerate().map(|(n, record)| (Place::Previous(n), record)))
        .chain(later.iter().enumerate().map(|(n, record)| (Place::Later(n), record)))
        .filter(|(_, record)| version_matches(record, to))
        .map(|(place, _)| place)
        .collect();
    let kept = || {
        let list: Vec<String> = previous
            .iter()
            .chain(later)
            .map(|record| format!("{} ({})", record.version, &record.sha256[..12]))
            .collect();
        if list.is_empty() { "none".to_owned() } else { list.join(", ") }
    };
    match found.as_slice() {
        [place] => Ok(*place),
        [] => Err(DeployError::NoSuchVersion(format!("plugin {name:?} keeps no version {to:?}; kept: {}", kept()))),
        _ => Err(DeployError::NoSuchVersion(format!(
            "{to:?} names several kept versions of plugin {name:?}: give the start of a SHA-256; kept: {}",
            kept()
        ))),
    }
}

/// The state after making the kept version at `place` live: the versions
/// between it and the live one, and the live one, move to the other side,
/// so the line of versions keeps its order and nothing is dropped.
fn moved_to(live: &VersionRecord, previous: &[VersionRecord], later: &[VersionRecord], place: Place) -> State {
    match place {
        Place::Previous(at) => {
            let mut forward: Vec<VersionRecord> = previous[..at].iter().rev().cloned().collect();
            forward.push(live.clone());
            forward.extend(later.iter().cloned());
            State { active: previous[at].clone(), previous: previous[at + 1..].to_vec(), later: forward }
        }
        Place::Later(at) => {
            let mut back: Vec<VersionRecord> = later[..at].iter().rev().cloned().collect();
            back.push(live.clone());
            back.extend(previous.iter().cloned());
            State { active: later[at].clone(), previous: back, later: later[at + 1..].to_vec() }
        }
    }
}

/// A deploy's or rollback's span: a trace of its own.
fn deploy_span(name: String) -> opentelemetry::Context {
    crate::traces::start(&opentelemetry::Context::new(), name, opentelemetry::trace::SpanKind::Internal)
}

/// Ends a deploy's span with the version it made live, or why it did not.
fn deploy_span_ends(trace: &opentelemetry::Context, plugin: &str, outcome: &Result<Outcome, DeployError>) {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::TraceContextExt as _;
    if !crate::traces::recording(trace) {
        return;
    }
    let span = trace.span();
    span.set_attribute(KeyValue::new("evogate.plugin", plugin.to_owned()));
    match outcome {
        Ok(outcome) => span.set_attributes([
            KeyValue::new("evogate.plugin.version", outcome.deployed.version.clone()),
            KeyValue::new("evogate.plugin.sha256", outcome.deployed.sha256.clone()),
            KeyValue::new("evogate.deploy.changed", outcome.changed),
        ]),
        Err(err) => span.set_status(opentelemetry::trace::Status::error(err.to_string())),
    }
    span.end();
}

/// A storage task that panicked or was cancelled.
fn storage_task_failed(join: tokio::task::JoinError) -> DeployError {
    DeployError::Storage(anyhow::Error::new(join).context("the storage task failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_components_within_the_limit_pass_validation() {
        let component = b"\0asm\x0d\0\x01\0rest";
        assert!(validate(component, 64).is_ok());
        let too_big = validate(component, 8).expect_err("over the limit");
        assert!(too_big.to_string().contains("limit is 8"), "{too_big}");
        let core = validate(b"\0asm\x01\0\0\0", 64).expect_err("core module");
        assert!(core.to_string().contains("wasm32-wasip2"), "{core}");
        for garbage in [&b""[..], b"\0asm", b"hello world!"] {
            assert!(matches!(validate(garbage, 64), Err(DeployError::Invalid(_))));
        }
    }

    #[test]
    fn rolling_back_and_forward_moves_along_the_line_of_versions_and_drops_none() {
        use artifacts::tests::record;
        let (a, b, c, d) = (record("a"), record("b"), record("c"), record("d"));
        // Deployed a, b, c, d in turn: d live.
        let line = |state: &State| -> Vec<VersionRecord> {
            let mut line: Vec<VersionRecord> = state.previous.iter().rev().cloned().collect();
            line.push(state.active.clone());
            line.extend(state.later.iter().cloned());
            line
        };
        let start = State { active: d.clone(), previous: vec![c.clone(), b.clone(), a.clone()], later: vec![] };
        let back = moved_to(&start.active, &start.previous, &start.later, Place::Previous(0));
        assert_eq!((back.active.clone(), back.later.clone()), (c.clone(), vec![d.clone()]));
        let oldest = moved_to(
            &back.active,
            &back.previous,
            &back.later,
            find_kept("p", &back.previous, &back.later, &a.sha256[..8]).expect("a"),
        );
        assert_eq!(oldest.active, a);
        assert_eq!(oldest.later, vec![b.clone(), c.clone(), d.clone()]);
        assert_eq!(line(&oldest), line(&start), "the order of the versions stays");
        let forward = moved_to(
            &oldest.active,
            &oldest.previous,
            &oldest.later,
            find_kept("p", &oldest.previous, &oldest.later, &d.sha256).expect("d"),
        );
        assert_eq!(forward, start, "rolled forward to where it began");
        let missing = find_kept("p", &start.previous, &start.later, "9.9.9").expect_err("none");
        assert!(missing.to_string().contains("keeps no version \"9.9.9\""), "{missing}");
        let twice = [
            VersionRecord { version: "1.0.0".into(), ..a.clone() },
            VersionRecord { version: "1.0.0".into(), ..b.clone() },
        ];
        let ambiguous = find_kept("p", &twice, &[], "1.0.0").expect_err("two");
        assert!(ambiguous.to_string().contains("several"), "{ambiguous}");
        assert!(!version_matches(&a, &a.sha256[..5]), "a SHA-256 prefix needs 6 digits");
    }

    #[tokio::test]
    async fn a_failed_storage_task_is_reported_with_its_cause() {
        let join = tokio::spawn(async { panic!("the disk caught fire") }).await.expect_err("the task panicked");
        let DeployError::Storage(err) = storage_task_failed(join) else { panic!("not a storage error") };
        assert_eq!(err.to_string(), "the storage task failed");
        let cause = err.source().map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("the disk caught fire"), "{cause}");
    }
}
