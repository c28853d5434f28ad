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
    /// Earlier versions kept for rollback, newest first.
    pub previous: Vec<VersionRecord>,
}

struct Managed {
    mount: Arc<Mount>,
    settings: Arc<crate::config::PluginSettings>,
    files: PluginDir,
    /// Held for the whole of a deploy, rollback or fleet catch-up of this
    /// plugin: they happen one at a time.
    state: tokio::sync::Mutex<ManagedState>,
}

/// What a plugin's deploys change besides its mount.
#[derive(Debug)]
struct ManagedState {
    /// The kept versions, newest first.
    previous: Vec<VersionRecord>,
    /// The store version of the fleet state this node last acted on.
    fleet_seen: Option<u64>,
}

/// Owns the plugins' mounts and changes what they serve.
pub struct Deployer {
    sandbox: Arc<Sandbox>,
    backend: Arc<dyn Backend>,
    max_bytes: usize,
    plugins: BTreeMap<String, Managed>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer").field("plugins", &self.plugins.keys()).finish_non_exhaustive()
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
        let mut registry = Registry::default();
        let mut managed = BTreeMap::new();
        for plugin in plugins {
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
            let state = files.read_state()?.and_then(|state| {
                let (position, bytes) =
                    state.versions().enumerate().find_map(|(n, record)| Some((n, files.verified(record)?)))?;
                let mut versions: Vec<VersionRecord> = state.versions().skip(position).cloned().collect();
                let active = versions.remove(0);
                if position > 0 {
                    tracing::error!(plugin = %plugin.name, version = %active.version, sha256 = %&active.sha256[..12], "falling back to an earlier kept version: the live one's artifact is damaged or missing");
                }
                Some((State { active, previous: versions }, bytes))
            });
            let (bytes, source, deployed_at) = match &state {
                Some((state, bytes)) => (bytes.clone(), files.artifact(&state.active.sha256), state.active.deployed_at),
                None => {
                    let path = plugin.wasm.relative();
                    let bytes = std::fs::read(&path).with_context(|| {
                        let hint =
                            if plugin.wasm.original().components().any(|part| part.as_os_str() == "wasm32-wasip2") {
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
                tracing::info!(
                    plugin = %plugin.name,
                    "serving the last deployed version {} (sha256 {}), not the configured file {}",
                    deployment.label(),
                    &sha256[..12],
                    plugin.wasm.relative().display(),
                );
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
            let mount = registry.insert(&plugin.name, &plugin.route, plugin.error_format, deployment);
            files.save_artifact(&sha256, &bytes)?;
            let entry = Managed {
                mount,
                settings,
                files,
                state: tokio::sync::Mutex::new(ManagedState {
                    previous: state.map(|(s, _)| s.previous).unwrap_or_default(),
                    fleet_seen,
                }),
            };
            managed.insert(plugin.name.clone(), entry);
        }
        Ok((Deployer { sandbox, backend, max_bytes, plugins: managed }, registry))
    }

    fn managed(&self, name: &str) -> Result<&Managed, DeployError> {
        self.plugins.get(name).ok_or_else(|| DeployError::UnknownPlugin(name.into()))
    }

    /// The largest component a deploy accepts.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Every plugin with its live and kept versions (waits for a deploy in progress).
    pub async fn list(&self) -> Vec<PluginStatus> {
        let mut list = Vec::with_capacity(self.plugins.len());
        for (name, managed) in &self.plugins {
            let previous = managed.state.lock().await.previous.clone();
            let live = managed.mount.current();
            list.push(PluginStatus {
                name: name.clone(),
                route: managed.mount.route.clone(),
                identity: live.plugin.name.clone(),
                world: live.plugin.world().as_str(),
                live: managed.live_record(),
                previous,
            });
        }
        list
    }

    /// Deploys `bytes` as the new version of plugin `name`.
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>) -> Result<Outcome, DeployError> {
        let trace = deploy_span(format!("deploy {name}"));
        let outcome = self.deploy_now(name, bytes).await;
        deploy_span_ends(&trace, name, &outcome);
        outcome
    }

    async fn deploy_now(&self, name: &str, bytes: Vec<u8>) -> Result<Outcome, DeployError> {
        let managed = self.managed(name)?;
        validate(&bytes, self.max_bytes)?;
        let sha256 = sha256_hex(&bytes);
        let mut guard = managed.state.lock().await;
        let live = managed.live_record();
        if live.sha256 == sha256 {
            return Ok(Outcome { name: name.into(), deployed: live.clone(), changed: false, live });
        }
        let deployment = self.load(managed, name, &sha256, bytes.clone()).await?;
        let record = VersionRecord {
            sha256: sha256.clone(),
            version: deployment.plugin.version.clone(),
            deployed_at: deployment.deployed_at,
        };
        let kept = guard.previous.clone();
        let before = State { active: live.clone(), previous: kept.clone() };
        let mut previous = vec![live];
        previous.extend(kept);
        previous.retain(|old| old.sha256 != sha256);
        previous.truncate(KEPT_VERSIONS);
        let state = State { active: record.clone(), previous };
        self.persist(managed, &state, Some((&sha256, bytes.clone()))).await?;
        // The fleet gets the new build and the one it replaces, so any node can roll back.
        let replaced = managed.mount.current().sha256.clone();
        let mut artifacts = vec![(sha256.clone(), bytes)];
        if let Ok(old) = std::fs::read(managed.files.artifact(&replaced)) {
            artifacts.push((replaced, old));
        }
        self.publish_or_restore(managed, &mut guard, name, &state, artifacts, &before).await?;
        self.go_live(managed, &mut guard, deployment, state.previous);
        metrics::counter!(crate::telemetry::DEPLOYS, "plugin" => name.to_owned()).increment(1);
        Ok(Outcome { name: name.into(), deployed: record, changed: true, live: managed.live_record() })
    }

    /// Makes the version before the live one live again.
    pub async fn rollback(&self, name: &str) -> Result<Outcome, DeployError> {
        let trace = deploy_span(format!("rollback {name}"));
        let outcome = self.rollback_now(name).await;
        deploy_span_ends(&trace, name, &outcome);
        outcome
    }

    async fn rollback_now(&self, name: &str) -> Result<Outcome, DeployError> {
        let managed = self.managed(name)?;
        let mut guard = managed.state.lock().await;
        let previous = guard.previous.clone();
        let Some((target, older)) = previous.split_first() else {
            return Err(DeployError::NothingToRollBack(name.into()));
        };
        let path = managed.files.artifact(&target.sha256);
        let bytes = tokio::task::spawn_blocking(move || {
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        })
        .await
        .map_err(storage_task_failed)?
        .map_err(DeployError::Storage)?;
        let bytes_for_fleet = if self.backend.is_shared() { bytes.clone() } else { Vec::new() };
        let deployment = self.load(managed, name, &target.sha256, bytes).await?;
        let record = VersionRecord {
            sha256: target.sha256.clone(),
            version: deployment.plugin.version.clone(),
            deployed_at: deployment.deployed_at,
        };
        let before = State { active: managed.live_record(), previous: previous.clone() };
        let state = State { active: record.clone(), previous: older.to_vec() };
        self.persist(managed, &state, None).await?;
        let artifacts = vec![(target.sha256.clone(), bytes_for_fleet)];
        self.publish_or_restore(managed, &mut guard, name, &state, artifacts, &before).await?;
        self.go_live(managed, &mut guard, deployment, state.previous);
        metrics::counter!(crate::telemetry::ROLLBACKS, "plugin" => name.to_owned()).increment(1);
        Ok(Outcome { name: name.into(), deployed: record, changed: true, live: managed.live_record() })
    }

    async fn load(
        &self,
        managed: &Managed,
        name: &str,
        sha256: &str,
        bytes: Vec<u8>,
    ) -> Result<Deployment, DeployError> {
        let namespace = Namespace::new(self.backend.clone(), name);
        let started = std::time::Instant::now();
        let plugin =
            self.sandbox.load(name, bytes, sha256, managed.settings.clone(), namespace).await.map_err(|err| {
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

    fn go_live(
        &self,
        managed: &Managed,
        guard: &mut ManagedState,
        deployment: Deployment,
        previous: Vec<VersionRecord>,
    ) {
        let label = deployment.label().to_owned();
        let old = managed.mount.swap(Arc::new(deployment));
        guard.previous = previous;
        tracing::info!(plugin = %managed.mount.name, from = %old.label(), to = %label, "swapped");
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

    #[tokio::test]
    async fn a_failed_storage_task_is_reported_with_its_cause() {
        let join = tokio::spawn(async { panic!("the disk caught fire") }).await.expect_err("the task panicked");
        let DeployError::Storage(err) = storage_task_failed(join) else { panic!("not a storage error") };
        assert_eq!(err.to_string(), "the storage task failed");
        let cause = err.source().map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("the disk caught fire"), "{cause}");
    }
}
