//! A plugin's deploy state on disk, under `data_dir/plugins/{name}/`:
//! `{sha256}.wasm`, the artifacts of the live version and the kept ones, and
//! `state.json`, which is live and which came before. Every write is atomic
//! and durable; an artifact is served only when its bytes match its sha256.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

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
pub(super) struct State {
    pub(super) active: VersionRecord,
    /// The versions live before it, the most recent first: a rollback's targets.
    pub(super) previous: Vec<VersionRecord>,
    /// The versions rolled back from, the nearest first: a roll forward's targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) later: Vec<VersionRecord>,
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `text` is a SHA-256 in hex as evogate writes them (64 lower-case
/// hex digits): only such names are used in paths and keys.
pub(super) fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl State {
    /// Refuses a state naming anything but SHA-256 digests (it may come from another node, through the store).
    pub(super) fn checked(self) -> anyhow::Result<Self> {
        for record in self.versions() {
            anyhow::ensure!(is_sha256(&record.sha256), "the state names an invalid sha256 {:?}", record.sha256);
        }
        Ok(self)
    }

    /// The live version, then the kept ones: those before it, the most
    /// recent first, then those rolled back from.
    pub(super) fn versions(&self) -> impl Iterator<Item = &VersionRecord> {
        std::iter::once(&self.active).chain(&self.previous).chain(&self.later)
    }
}

/// Creates `dir` and its missing parents durably: each new directory's
/// entry is fsynced in its parent, so a crash cannot lose the directory
/// (and the files in it) after they were reported written.
pub(super) fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
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
pub(super) struct PluginDir {
    pub(super) dir: PathBuf,
}

impl PluginDir {
    pub(super) fn artifact(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.wasm"))
    }

    pub(super) fn read_state(&self) -> anyhow::Result<Option<State>> {
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
    pub(super) fn write_state(&self, state: &State) -> anyhow::Result<()> {
        let path = self.dir.join("state.json");
        let json = serde_json::to_vec_pretty(state).context("encoding the state")?;
        write_durably(&path, &json).with_context(|| format!("writing {}", path.display()))?;
        let keep: Vec<String> = state.versions().map(|v| format!("{}.wasm", v.sha256)).collect();
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
    pub(super) fn verified(&self, record: &VersionRecord) -> Option<Vec<u8>> {
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

    /// What a start serves from this directory: the state recorded, made
    /// live on the newest of its versions whose artifact is intact (the live
    /// one, unless it is damaged or missing: then the answer's `usize` says
    /// how many were passed over, and those are dropped), with that
    /// artifact's bytes; none before a first deploy.
    pub(super) fn intact_state(&self) -> anyhow::Result<Option<(State, Vec<u8>, usize)>> {
        Ok(self.read_state()?.and_then(|state| {
            let (position, bytes) =
                state.versions().enumerate().find_map(|(n, record)| Some((n, self.verified(record)?)))?;
            let mut versions: Vec<VersionRecord> = state.versions().skip(position).cloned().collect();
            let active = versions.remove(0);
            // Falling back drops the damaged ones; the order of the rest stays.
            let later = state.later.iter().filter(|record| versions.contains(record)).cloned().collect();
            versions.retain(|record| !state.later.contains(record));
            Some((State { active, previous: versions, later }, bytes, position))
        }))
    }

    pub(super) fn save_artifact(&self, sha256: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.artifact(sha256);
        if !path.is_file() {
            write_durably(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A version record of an artifact whose bytes are `content`.
    pub(crate) fn record(content: &str) -> VersionRecord {
        VersionRecord { sha256: sha256_hex(content.as_bytes()), version: content.into(), deployed_at: 1 }
    }

    #[test]
    fn state_round_trips_and_keeps_only_the_recorded_artifacts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = PluginDir { dir: dir.path().join("plugins").join("p") };
        assert_eq!(files.read_state().expect("read"), None, "nothing deployed yet");
        for content in ["a", "b", "c", "d"] {
            files.save_artifact(&record(content).sha256, content.as_bytes()).expect("save");
        }
        let state = State { active: record("d"), previous: vec![record("c"), record("b")], later: vec![] };
        files.write_state(&state).expect("write");
        assert_eq!(files.read_state().expect("read"), Some(state));
        assert!(!files.artifact(&record("a").sha256).exists(), "an artifact no longer recorded is removed");
        for kept in ["b", "c", "d"] {
            assert_eq!(std::fs::read(files.artifact(&record(kept).sha256)).expect("kept"), kept.as_bytes());
        }
        assert!(!files.dir.join("state.tmp").exists(), "no temp file left behind");
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
