//! Deploys across the nodes of a shared store (PostgreSQL): a deploy or
//! rollback also records the plugin's state and artifacts in the store's
//! reserved namespace `evogate:deploy`; every node polls that state
//! ([`Deployer::follow`]) and swaps to what it names; a node starting up
//! takes up what the fleet serves ([`adopt_fleet_state`]).

use super::artifacts::{PluginDir, State, is_sha256, sha256_hex};
use super::{DeployError, Deployer, Managed, ManagedState};
use crate::kv::{Backend, Check, KvError, Write};
use anyhow::Context as _;
use std::sync::Arc;

/// The store namespace of fleet deploys; `:` keeps it apart from every plugin's.
pub(super) const FLEET_NS: &str = "evogate:deploy";
/// How often a node looks for deploys made through other nodes.
pub(super) const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

fn fleet_state_key(name: &str) -> String {
    format!("state/{name}")
}

fn fleet_artifact_key(name: &str, sha256: &str) -> String {
    format!("artifact/{name}/{sha256}")
}

impl Deployer {
    /// On a shared store, records `state` (and the artifact) for the other nodes.
    pub(super) async fn publish(
        &self,
        guard: &mut ManagedState,
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
            .map_err(super::storage_task_failed)?
            .map_err(DeployError::Storage)?;
        // Another node's deploy that landed after ours stays unseen, so this node follows it.
        if let Some(seen) = seen {
            guard.fleet_seen = Some(seen);
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
            let _changes = self.changes.read().await;
            for (name, managed) in &self.snapshot() {
                if let Err(err) = self.catch_up(name, managed).await {
                    tracing::warn!(plugin = %name, error = %format!("{err:#}"), "following the fleet's deploys failed; retrying");
                }
            }
        }
    }

    async fn catch_up(&self, name: &str, managed: &Managed) -> anyhow::Result<()> {
        let backend = self.backend.clone();
        let key = fleet_state_key(name);
        // Read under the plugin's lock: a deploy through this node between
        // the read and the lock would otherwise be undone by a stale state.
        let mut guard = managed.state.lock().await;
        let Some(entry) = tokio::task::spawn_blocking(move || backend.get(FLEET_NS, &key)).await?? else {
            return Ok(());
        };
        if guard.fleet_seen == Some(entry.version) {
            return Ok(());
        }
        let state: State = serde_json::from_slice(&entry.value).context("reading the fleet state")?;
        let state = state.checked().context("the fleet state")?;
        if state.active.sha256 != managed.mount.current().sha256 {
            let (backend, files, plugin) = (self.backend.clone(), managed.files.clone(), name.to_owned());
            let sha = state.active.sha256.clone();
            let bytes = tokio::task::spawn_blocking(move || fetch_artifact(&*backend, &plugin, &files, &sha)).await??;
            let mut deployment = self.load(name, &state.active.sha256, bytes, guard.settings.clone()).await?;
            deployment.deployed_at = state.active.deployed_at;
            tracing::info!(plugin = %name, version = %state.active.version, "following a deploy made through another node");
            self.persist(managed, &state, None).await?;
            self.go_live(managed, &mut guard, deployment, &state);
        } else {
            self.persist(managed, &state, None).await?;
            guard.previous.clone_from(&state.previous);
            guard.later.clone_from(&state.later);
        }
        guard.fleet_seen = Some(entry.version);
        Ok(())
    }
}

/// Records `state` and `artifacts` of plugin `name` in the shared store.
/// The store version of the state when what is stored now is this state,
/// `None` when another node's later publication already replaced it (that
/// one must not be taken for this one, or this node would never follow it).
pub(super) fn publish_to_fleet(
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
            Some(entry) => Check::VersionIs(fleet_state_key(name), entry.version),
            None => Check::Absent(fleet_state_key(name)),
        };
        let writes = fleet_writes(backend, name, state, &artifacts, &json)?;
        match backend.commit(FLEET_NS, &[check], &writes) {
            Ok(()) => break,
            Err(KvError::Conflict) if attempts < 20 => continue,
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
) -> anyhow::Result<Vec<Write>> {
    let mut writes: Vec<Write> =
        artifacts.iter().map(|(sha, bytes)| Write::Set(fleet_artifact_key(name, sha), bytes.clone())).collect();
    let kept: Vec<String> = state.versions().map(|record| fleet_artifact_key(name, &record.sha256)).collect();
    let prefix = fleet_artifact_key(name, "");
    let mut after: Option<String> = None;
    loop {
        let page = backend
            .scan(FLEET_NS, &crate::kv::Scan::of(&prefix, after.as_deref(), 1000, 64 * 1024 * 1024))
            .context("listing the shared store's artifacts")?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        writes.extend(page.into_iter().filter(|(key, _)| !kept.contains(key)).map(|(key, _)| Write::Delete(key)));
    }
    writes.push(Write::Set(fleet_state_key(name), json.to_vec()));
    Ok(writes)
}

/// The artifact `sha256` of plugin `name`: from this node's files, or from
/// the shared store (then kept in the files too).
pub(super) fn fetch_artifact(
    backend: &dyn Backend,
    name: &str,
    files: &PluginDir,
    sha256: &str,
) -> anyhow::Result<Vec<u8>> {
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

/// At start on a shared store: makes the fleet's state this node's own
/// (artifact included), so the node serves what the fleet serves.
pub(super) fn adopt_fleet_state(backend: &dyn Backend, name: &str, files: &PluginDir) -> anyhow::Result<Option<u64>> {
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
    use super::super::KEPT_VERSIONS;
    use super::super::artifacts::{VersionRecord, tests::record};
    use super::*;
    use std::sync::Mutex;

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
        let ours = State { active: record("a"), previous: vec![], later: vec![] };
        let theirs = State { active: record("b"), previous: vec![record("a")], later: vec![] };
        let alone = interleaved(None);
        let seen = publish_to_fleet(&alone, "p", &ours, vec![]).expect("publish");
        assert!(seen.is_some(), "our own publication is seen");
        let raced = interleaved(Some(theirs.clone()));
        let seen = publish_to_fleet(&raced, "p", &ours, vec![]).expect("publish");
        assert_eq!(seen, None, "theirs landed after ours: still to be followed");
        let stored = raced.inner.get(FLEET_NS, &fleet_state_key("p")).expect("state");
        assert_eq!(serde_json::from_slice::<State>(&stored.value).expect("state"), theirs);
    }

    #[test]
    fn states_naming_anything_but_a_sha256_are_refused_before_any_path_is_built() {
        for bad in ["../../etc/passwd", "", "A".repeat(64).as_str(), &"a".repeat(63), &"g".repeat(64)] {
            let state = State {
                active: VersionRecord { sha256: bad.into(), version: "x".into(), deployed_at: 1 },
                previous: vec![],
                later: vec![],
            };
            assert!(state.checked().is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let files = PluginDir { dir: dir.path().join("p") };
        let store = crate::kv::MemoryBackend::default();
        let evil = serde_json::json!({"active": {"sha256": "../../../escape", "version": "x", "deployedAt": 1}, "previous": []});
        store
            .commit(FLEET_NS, &[], &[Write::Set(fleet_state_key("p"), evil.to_string().into_bytes())])
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
            let state = State {
                active: active.clone(),
                previous: history.iter().take(KEPT_VERSIONS).cloned().collect(),
                later: vec![],
            };
            publish_to_fleet(&store, "p", &state, vec![(active.sha256.clone(), content.into_bytes())])
                .expect("publish");
            history.insert(0, active);
        }
        let stored = store.scan(FLEET_NS, &fleet_artifact_key("p", ""), None, 1000, usize::MAX);
        let mut expected: Vec<String> =
            history.iter().take(KEPT_VERSIONS + 1).map(|record| fleet_artifact_key("p", &record.sha256)).collect();
        expected.sort();
        assert_eq!(stored.into_iter().map(|(key, _)| key).collect::<Vec<_>>(), expected);
    }
}
