//! Deploying plugin versions into a running gateway, and rolling back.
//!
//! A deploy validates the component, compiles it off the serving path
//! (wasmtime's cache under `data_dir/cache` makes a version seen before load
//! in milliseconds), instantiates it once to read its identity, records it
//! durably, and only then swaps it into the plugin's slot: new requests get
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

use crate::config::PluginConfig;
use crate::kv::{Backend, Namespace};
use crate::registry::{Deployment, Registry, Slot};
use crate::sandbox::Sandbox;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Versions kept for rollback besides the live one.
pub const KEPT_VERSIONS: usize = 3;
/// The store namespace of fleet deploys; `:` keeps it apart from every plugin's.
const FLEET_NS: &str = "evogate:deploy";
/// How often a node looks for deploys made through other nodes.
pub const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

fn fleet_state_key(name: &str) -> String {
    format!("state/{name}")
}

fn fleet_artifact_key(name: &str, sha256: &str) -> String {
    format!("artifact/{name}/{sha256}")
}

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
    #[error("{0}")]
    Refused(String),
    /// There is no earlier version to go back to.
    #[error("plugin {0:?} has no earlier version to roll back to")]
    NothingToRollBack(String),
    /// The data directory could not be written.
    #[error("storing the deployment failed: {0:#}")]
    Storage(anyhow::Error),
}

/// One recorded version of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRecord {
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// The version the plugin reported.
    pub version: String,
    /// When it went live, Unix seconds.
    pub deployed_at: u64,
}

/// `state.json` of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    active: VersionRecord,
    previous: Vec<VersionRecord>,
}

/// The outcome of a deploy or rollback.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The plugin (slot) name.
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
    slot: Arc<Slot>,
    settings: Arc<crate::config::PluginSettings>,
    files: PluginDir,
    /// Serializes deploys and rollbacks of this plugin.
    lock: tokio::sync::Mutex<()>,
    previous: Mutex<Vec<VersionRecord>>,
    /// The store version of the fleet state this node last acted on.
    fleet_seen: Mutex<Option<u64>>,
}

/// Owns the plugins' slots and changes what they serve.
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

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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

/// Creates `dir` and its missing parents durably: each new directory's
/// entry is fsynced in its parent, so a crash cannot lose the directory
/// (and the files in it) after they were reported written.
fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    create_dir_durably(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::File::open(parent)?.sync_all(),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Whether `text` is a SHA-256 in hex as evogate writes them (64 lower-case
/// hex digits): only such names are used in paths and keys.
fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl State {
    /// Refuses a state naming anything but SHA-256 digests (it may come from another node, through the store).
    fn checked(self) -> anyhow::Result<Self> {
        for record in std::iter::once(&self.active).chain(&self.previous) {
            anyhow::ensure!(is_sha256(&record.sha256), "the state names an invalid sha256 {:?}", record.sha256);
        }
        Ok(self)
    }

    /// The live version, then the kept ones, newest first.
    fn versions(&self) -> impl Iterator<Item = &VersionRecord> {
        std::iter::once(&self.active).chain(&self.previous)
    }
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir_durably(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A plugin's directory of artifacts and state.
#[derive(Debug, Clone)]
struct PluginDir {
    dir: PathBuf,
}

impl PluginDir {
    fn artifact(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.wasm"))
    }

    fn read_state(&self) -> anyhow::Result<Option<State>> {
        let path = self.dir.join("state.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let state: State =
                    serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
                Ok(Some(state.checked().with_context(|| format!("reading {}", path.display()))?))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Records `state` and keeps only its artifacts.
    fn write_state(&self, state: &State) -> anyhow::Result<()> {
        let path = self.dir.join("state.json");
        let json = serde_json::to_vec_pretty(state).context("encoding the state")?;
        write_durably(&path, &json).with_context(|| format!("writing {}", path.display()))?;
        let keep: Vec<String> =
            std::iter::once(&state.active).chain(&state.previous).map(|v| format!("{}.wasm", v.sha256)).collect();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.ends_with(".wasm") && !keep.contains(&file) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The artifact of `record` when it is on disk and its bytes hash to its
    /// sha256; a mismatch (a damaged or replaced file) is logged and skipped.
    fn verified(&self, record: &VersionRecord) -> Option<Vec<u8>> {
        let path = self.artifact(&record.sha256);
        let bytes = std::fs::read(&path).ok()?;
        if sha256_hex(&bytes) == record.sha256 {
            return Some(bytes);
        }
        tracing::error!(
            artifact = %path.display(),
            version = %record.version,
            "the artifact does not match the sha256 state.json records for it; not serving it"
        );
        None
    }

    fn save_artifact(&self, sha256: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.artifact(sha256);
        if !path.is_file() {
            write_durably(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

impl Managed {
    fn live_record(&self) -> VersionRecord {
        let live = self.slot.current();
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
                match tokio::task::spawn_blocking(move || adopt_fleet_state(&*backend, &name, &fleet)).await {
                    Ok(Ok(seen)) => fleet_seen = seen,
                    Ok(Err(err)) => {
                        tracing::warn!(plugin = %plugin.name, error = %format!("{err:#}"), "cannot take up the fleet's version; serving this node's own until the next deploy")
                    }
                    Err(join) => anyhow::bail!("reading the fleet state: {join}"),
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
                        let hint = if plugin.wasm.original() == Path::new(crate::config::DEFAULT_PLUGIN_WASM) {
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
            validate(&bytes, usize::MAX).map_err(|err| anyhow::anyhow!("plugin {:?}: {err}", plugin.name))?;
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
                identity = %deployment.label(),
                world = deployment.plugin.world().as_str(),
                sha256 = %&sha256[..12],
                wasm = %source.display(),
                load_ms = started.elapsed().as_millis() as u64,
                "plugin loaded"
            );
            let slot = registry.insert(&plugin.name, &plugin.route, deployment);
            files.save_artifact(&sha256, &bytes)?;
            let entry = Managed {
                slot,
                settings,
                files,
                lock: tokio::sync::Mutex::new(()),
                previous: Mutex::new(state.map(|(s, _)| s.previous).unwrap_or_default()),
                fleet_seen: Mutex::new(fleet_seen),
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

    /// Every plugin with its live and kept versions.
    pub fn list(&self) -> Vec<PluginStatus> {
        self.plugins
            .iter()
            .map(|(name, managed)| PluginStatus {
                name: name.clone(),
                route: managed.slot.route.clone(),
                identity: managed.slot.current().plugin.name.clone(),
                world: managed.slot.current().plugin.world().as_str(),
                live: managed.live_record(),
                previous: locked(&managed.previous).clone(),
            })
            .collect()
    }

    /// Deploys `bytes` as the new version of plugin `name`.
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>) -> Result<Outcome, DeployError> {
        let managed = self.managed(name)?;
        validate(&bytes, self.max_bytes)?;
        let sha256 = sha256_hex(&bytes);
        let _serial = managed.lock.lock().await;
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
        let kept = locked(&managed.previous).clone();
        let before = State { active: live.clone(), previous: kept.clone() };
        let mut previous = vec![live];
        previous.extend(kept);
        previous.retain(|old| old.sha256 != sha256);
        previous.truncate(KEPT_VERSIONS);
        let state = State { active: record.clone(), previous };
        self.persist(managed, &state, Some((&sha256, bytes.clone()))).await?;
        // The fleet gets the new build and the one it replaces, so any node can roll back.
        let replaced = managed.slot.current().sha256.clone();
        let mut artifacts = vec![(sha256.clone(), bytes)];
        if let Ok(old) = std::fs::read(managed.files.artifact(&replaced)) {
            artifacts.push((replaced, old));
        }
        self.publish_or_restore(managed, name, &state, artifacts, &before).await?;
        self.go_live(managed, deployment, state.previous);
        metrics::counter!("evogate_deploys_total", "plugin" => name.to_owned()).increment(1);
        Ok(Outcome { name: name.into(), deployed: record, changed: true, live: managed.live_record() })
    }

    /// Makes the version before the live one live again.
    pub async fn rollback(&self, name: &str) -> Result<Outcome, DeployError> {
        let managed = self.managed(name)?;
        let _serial = managed.lock.lock().await;
        let previous = locked(&managed.previous).clone();
        let Some((target, older)) = previous.split_first() else {
            return Err(DeployError::NothingToRollBack(name.into()));
        };
        let path = managed.files.artifact(&target.sha256);
        let bytes = tokio::task::spawn_blocking(move || {
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        })
        .await
        .map_err(|join| DeployError::Storage(anyhow::anyhow!("the storage task failed: {join}")))?
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
        self.publish_or_restore(managed, name, &state, artifacts, &before).await?;
        self.go_live(managed, deployment, state.previous);
        metrics::counter!("evogate_rollbacks_total", "plugin" => name.to_owned()).increment(1);
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
                metrics::counter!("evogate_deploys_refused_total", "plugin" => name.to_owned()).increment(1);
                DeployError::Refused(format!("{err:#}"))
            })?;
        tracing::info!(plugin = name, identity = %format!("{}@{}", plugin.name, plugin.version), sha256 = &sha256[..12], load_ms = started.elapsed().as_millis() as u64, "plugin version ready");
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
        .map_err(|join| DeployError::Storage(anyhow::anyhow!("the storage task failed: {join}")))?
        .map_err(DeployError::Storage)
    }

    /// [`Deployer::publish`]; when that fails, `state.json` goes back to
    /// `before`, so a restart never serves a version the fleet never got.
    async fn publish_or_restore(
        &self,
        managed: &Managed,
        name: &str,
        state: &State,
        artifacts: Vec<(String, Vec<u8>)>,
        before: &State,
    ) -> Result<(), DeployError> {
        let Err(err) = self.publish(managed, name, state, artifacts).await else { return Ok(()) };
        if let Err(restore) = self.persist(managed, before, None).await {
            tracing::error!(plugin = name, error = %restore, "restoring state.json after a failed publication failed");
        }
        Err(err)
    }

    /// On a shared store, records `state` (and the artifact) for the other nodes.
    async fn publish(
        &self,
        managed: &Managed,
        name: &str,
        state: &State,
        artifacts: Vec<(String, Vec<u8>)>,
    ) -> Result<(), DeployError> {
        if !self.backend.is_shared() {
            return Ok(());
        }
        let backend = self.backend.clone();
        let (name, state) = (name.to_owned(), state.clone());
        let seen = tokio::task::spawn_blocking(move || publish_to_fleet(&*backend, &name, &state, artifacts))
            .await
            .map_err(|join| DeployError::Storage(anyhow::anyhow!("the storage task failed: {join}")))?
            .map_err(DeployError::Storage)?;
        // Another node's deploy that landed after ours stays unseen, so this node follows it.
        if let Some(seen) = seen {
            *locked(&managed.fleet_seen) = Some(seen);
        }
        Ok(())
    }

    /// Follows deploys made through other nodes of a shared store, forever:
    /// every [`FOLLOW_INTERVAL`], each plugin's fleet state is read, and a
    /// change is loaded and swapped in here too. Does nothing on a store of
    /// this node alone.
    pub async fn follow(self: Arc<Self>) {
        if !self.backend.is_shared() {
            return;
        }
        loop {
            tokio::time::sleep(FOLLOW_INTERVAL).await;
            for (name, managed) in &self.plugins {
                if let Err(err) = self.catch_up(name, managed).await {
                    tracing::warn!(plugin = %name, error = %format!("{err:#}"), "following the fleet's deploys failed; retrying");
                }
            }
        }
    }

    async fn catch_up(&self, name: &str, managed: &Managed) -> anyhow::Result<()> {
        let backend = self.backend.clone();
        let key = fleet_state_key(name);
        let Some(entry) = tokio::task::spawn_blocking(move || backend.get(FLEET_NS, &key))
            .await??
            .filter(|entry| *locked(&managed.fleet_seen) != Some(entry.version))
        else {
            return Ok(());
        };
        let _serial = managed.lock.lock().await;
        let state: State = serde_json::from_slice(&entry.value).context("reading the fleet state")?;
        let state = state.checked().context("the fleet state")?;
        if state.active.sha256 != managed.slot.current().sha256 {
            let (backend, files, plugin) = (self.backend.clone(), managed.files.clone(), name.to_owned());
            let sha = state.active.sha256.clone();
            let bytes = tokio::task::spawn_blocking(move || fetch_artifact(&*backend, &plugin, &files, &sha)).await??;
            let mut deployment = self.load(managed, name, &state.active.sha256, bytes).await?;
            deployment.deployed_at = state.active.deployed_at;
            tracing::info!(plugin = %name, version = %state.active.version, "following a deploy made through another node");
            self.persist(managed, &state, None).await?;
            self.go_live(managed, deployment, state.previous.clone());
        } else {
            self.persist(managed, &state, None).await?;
            locked(&managed.previous).clone_from(&state.previous);
        }
        *locked(&managed.fleet_seen) = Some(entry.version);
        Ok(())
    }

    fn go_live(&self, managed: &Managed, deployment: Deployment, previous: Vec<VersionRecord>) {
        let label = deployment.label();
        let old = managed.slot.swap(Arc::new(deployment));
        *locked(&managed.previous) = previous;
        tracing::info!(plugin = %managed.slot.name, from = %old.label(), to = %label, "swapped");
    }
}

/// Records `state` and `artifacts` of plugin `name` in the shared store.
/// The store version of the state when what is stored now is this state,
/// `None` when another node's later publication already replaced it (that
/// one must not be taken for this one, or this node would never follow it).
fn publish_to_fleet(
    backend: &dyn Backend,
    name: &str,
    state: &State,
    artifacts: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<Option<u64>> {
    let json = serde_json::to_vec(state).context("encoding the state")?;
    // Another node publishing at the same moment makes a serializable store
    // refuse one of the two commits: the later one simply goes again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        // The state as it was when the artifacts were listed: a publication
        // in between makes this one go again, so it never deletes an
        // artifact the other one names.
        let check = match backend.get(FLEET_NS, &fleet_state_key(name)).context("reading the fleet state")? {
            Some(entry) => crate::kv::Check::VersionIs(fleet_state_key(name), entry.version),
            None => crate::kv::Check::Absent(fleet_state_key(name)),
        };
        let writes = fleet_writes(backend, name, state, &artifacts, &json)?;
        match backend.commit(FLEET_NS, &[check], &writes) {
            Ok(()) => break,
            Err(crate::kv::KvError::Conflict) if attempts < 20 => continue,
            Err(err) => return Err(err).context("publishing the deploy to the shared store"),
        }
    }
    let stored = backend.get(FLEET_NS, &fleet_state_key(name)).context("reading the published state back")?;
    Ok(stored.filter(|entry| entry.value == json).map(|entry| entry.version))
}

/// The writes that publish `state`: its artifacts, the state itself, and
/// the deletion of artifacts the state no longer names (megabytes each).
fn fleet_writes(
    backend: &dyn Backend,
    name: &str,
    state: &State,
    artifacts: &[(String, Vec<u8>)],
    json: &[u8],
) -> anyhow::Result<Vec<crate::kv::Write>> {
    let mut writes: Vec<crate::kv::Write> = artifacts
        .iter()
        .map(|(sha, bytes)| crate::kv::Write::Set(fleet_artifact_key(name, sha), bytes.clone()))
        .collect();
    let kept: Vec<String> = state.versions().map(|record| fleet_artifact_key(name, &record.sha256)).collect();
    let prefix = fleet_artifact_key(name, "");
    let mut after: Option<String> = None;
    loop {
        let page = backend
            .scan(FLEET_NS, &prefix, after.as_deref(), 1000, 64 * 1024 * 1024)
            .context("listing the shared store's artifacts")?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        writes.extend(
            page.into_iter().filter(|(key, _)| !kept.contains(key)).map(|(key, _)| crate::kv::Write::Delete(key)),
        );
    }
    writes.push(crate::kv::Write::Set(fleet_state_key(name), json.to_vec()));
    Ok(writes)
}

/// The artifact `sha256` of plugin `name`: from this node's files, or from
/// the shared store (then kept in the files too).
fn fetch_artifact(backend: &dyn Backend, name: &str, files: &PluginDir, sha256: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(is_sha256(sha256), "{sha256:?} is not a sha256");
    if let Ok(bytes) = std::fs::read(files.artifact(sha256))
        && sha256_hex(&bytes) == sha256
    {
        return Ok(bytes);
    }
    let entry = backend
        .get(FLEET_NS, &fleet_artifact_key(name, sha256))
        .with_context(|| format!("reading artifact {sha256} of plugin {name:?} from the shared store"))?
        .with_context(|| format!("the shared store has no artifact {sha256} of plugin {name:?}"))?;
    anyhow::ensure!(sha256_hex(&entry.value) == sha256, "the stored artifact of {name:?} does not match its sha256");
    files.save_artifact(sha256, &entry.value)?;
    Ok(entry.value)
}

/// Locks `mutex`, keeping its data when a panic poisoned it: every value
/// behind these locks is replaced whole, never left half-written, so a
/// panic elsewhere must not turn a rollback list into an empty one.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// At start on a shared store: makes the fleet's state this node's own
/// (artifact included), so the node serves what the fleet serves.
fn adopt_fleet_state(backend: &dyn Backend, name: &str, files: &PluginDir) -> anyhow::Result<Option<u64>> {
    let Some(entry) = backend.get(FLEET_NS, &fleet_state_key(name)).context("reading the fleet state")? else {
        return Ok(None);
    };
    let state: State = serde_json::from_slice(&entry.value).context("reading the fleet state")?;
    let state = state.checked().context("the fleet state")?;
    fetch_artifact(backend, name, files, &state.active.sha256)?;
    files.write_state(&state)?;
    Ok(Some(entry.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version record of an artifact whose bytes are `content`.
    fn record(content: &str) -> VersionRecord {
        VersionRecord { sha256: sha256_hex(content.as_bytes()), version: content.into(), deployed_at: 1 }
    }

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
    fn state_round_trips_and_keeps_only_the_recorded_artifacts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = PluginDir { dir: dir.path().join("plugins").join("p") };
        assert_eq!(files.read_state().expect("read"), None, "nothing deployed yet");
        for content in ["a", "b", "c", "d"] {
            files.save_artifact(&record(content).sha256, content.as_bytes()).expect("save");
        }
        let state = State { active: record("d"), previous: vec![record("c"), record("b")] };
        files.write_state(&state).expect("write");
        assert_eq!(files.read_state().expect("read"), Some(state));
        assert!(!files.artifact(&record("a").sha256).exists(), "an artifact no longer recorded is removed");
        for kept in ["b", "c", "d"] {
            assert_eq!(std::fs::read(files.artifact(&record(kept).sha256)).expect("kept"), kept.as_bytes());
        }
        assert!(!files.dir.join("state.tmp").exists(), "no temp file left behind");
    }

    /// A store where another node publishes `other` right after this
    /// node's commit (before its second read of the state: the read-back).
    fn interleaved(other: Option<State>) -> crate::kv::Hooked {
        let (other, reads) = (Mutex::new(other), std::sync::atomic::AtomicUsize::new(0));
        let before_get = move |inner: &crate::kv::MemoryBackend| {
            let second = reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1;
            if let Some(other) = second.then(|| other.lock().expect("lock").take()).flatten() {
                publish_to_fleet(inner, "p", &other, Vec::new()).expect("the other node publishes");
            }
        };
        crate::kv::Hooked { before_get: Some(Box::new(before_get)), ..Default::default() }
    }

    #[test]
    fn a_later_publication_by_another_node_is_not_taken_for_ours() {
        let ours = State { active: record("a"), previous: vec![] };
        let theirs = State { active: record("b"), previous: vec![record("a")] };
        let alone = interleaved(None);
        let seen = publish_to_fleet(&alone, "p", &ours, vec![]).expect("publish");
        assert!(seen.is_some(), "our own publication is seen");
        let raced = interleaved(Some(theirs.clone()));
        let seen = publish_to_fleet(&raced, "p", &ours, vec![]).expect("publish");
        assert_eq!(seen, None, "theirs landed after ours: still to be followed");
        let stored = raced.inner.get(FLEET_NS, &fleet_state_key("p")).expect("get").expect("state");
        assert_eq!(serde_json::from_slice::<State>(&stored.value).expect("state"), theirs);
    }

    #[test]
    fn artifacts_are_served_only_when_they_match_their_recorded_sha256() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = PluginDir { dir: dir.path().join("p") };
        files.save_artifact(&record("one").sha256, b"one").expect("save");
        assert_eq!(files.verified(&record("one")), Some(b"one".to_vec()));
        std::fs::write(files.artifact(&record("two").sha256), b"tampered").expect("write");
        assert_eq!(files.verified(&record("two")), None, "a damaged artifact is not served");
        assert_eq!(files.verified(&record("three")), None, "nor a missing one");
    }

    #[test]
    fn states_naming_anything_but_a_sha256_are_refused_before_any_path_is_built() {
        for bad in ["../../etc/passwd", "", "A".repeat(64).as_str(), &"a".repeat(63), &"g".repeat(64)] {
            let state = State {
                active: VersionRecord { sha256: bad.into(), version: "x".into(), deployed_at: 1 },
                previous: vec![],
            };
            assert!(state.checked().is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let files = PluginDir { dir: dir.path().join("p") };
        let store = crate::kv::MemoryBackend::default();
        let evil = serde_json::json!({"active": {"sha256": "../../../escape", "version": "x", "deployedAt": 1}, "previous": []});
        store
            .commit(FLEET_NS, &[], &[crate::kv::Write::Set(fleet_state_key("p"), evil.to_string().into_bytes())])
            .expect("commit");
        let err = adopt_fleet_state(&store, "p", &files).expect_err("refused");
        assert!(format!("{err:#}").contains("invalid sha256"), "{err:#}");
        assert!(fetch_artifact(&store, "p", &files, "../x").is_err());
        assert!(!dir.path().join("escape").exists() && !files.dir.join("state.json").exists());
    }

    #[test]
    fn publishing_removes_artifacts_the_state_no_longer_names_from_the_shared_store() {
        let store = crate::kv::MemoryBackend::default();
        let mut history: Vec<VersionRecord> = Vec::new();
        for n in 0..8 {
            let content = format!("build {n}");
            let active = record(&content);
            let state =
                State { active: active.clone(), previous: history.iter().take(KEPT_VERSIONS).cloned().collect() };
            publish_to_fleet(&store, "p", &state, vec![(active.sha256.clone(), content.into_bytes())])
                .expect("publish");
            history.insert(0, active);
        }
        let stored = store.scan(FLEET_NS, &fleet_artifact_key("p", ""), None, 1000, usize::MAX).expect("scan");
        let mut expected: Vec<String> =
            history.iter().take(KEPT_VERSIONS + 1).map(|record| fleet_artifact_key("p", &record.sha256)).collect();
        expected.sort();
        assert_eq!(stored.into_iter().map(|(key, _)| key).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn new_directories_are_created_with_their_parents() {
        let dir = tempfile::tempdir().expect("temp dir");
        let deep = dir.path().join("a").join("b").join("c");
        create_dir_durably(&deep).expect("create");
        assert!(deep.is_dir());
        create_dir_durably(&deep).expect("again: nothing to do");
    }

    #[test]
    fn an_unreadable_state_file_is_an_error_not_a_silent_reset() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = PluginDir { dir: dir.path().to_owned() };
        std::fs::write(dir.path().join("state.json"), b"{not json").expect("write");
        let err = files.read_state().expect_err("corrupt");
        assert!(format!("{err:#}").contains("state.json"), "{err:#}");
    }
}
