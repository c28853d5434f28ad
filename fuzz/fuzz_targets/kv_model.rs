//! The store's policy layer over the memory and redb backends, against a
//! model: arbitrary gets, scans (prefixes, `start_after`, limits) and
//! conditional commits (sets, deletes, stamped keys, every limit) in two
//! namespaces whose names are prefixes of each other.
//!
//! Checked after every call, on both backends: the same outcome as the
//! model (value, error kind and message), scans in bytewise order within
//! their limit and byte cap, a written key's version never seen before,
//! stamped keys of a later commit after those of earlier ones, and nothing
//! of one namespace visible in the other.
#![no_main]

use arbitrary::Arbitrary;
use evogate::kv::{
    Backend, Check, Entry, KvError, MAX_ANSWER_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES, MemoryBackend, Namespace,
    RedbBackend, STAMP_BYTES, Write,
};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Namespace names, one a prefix of the other.
const NAMESPACES: [&str; 2] = ["p", "p2"];

#[derive(Arbitrary, Debug, Clone)]
enum Key {
    /// Up to 4 characters of `a`, `b`, `/`, `é`: keys that are prefixes of each other.
    Small(u8, u8),
    /// Around the key limit (1014–1034 bytes).
    Long(u8),
    Any(String),
}

impl Key {
    fn text(&self) -> String {
        match self {
            Key::Small(len, bits) => {
                let alphabet = ["a", "b", "/", "é"];
                (0..usize::from(*len % 5)).map(|i| alphabet[usize::from(bits >> (2 * i)) % 4]).collect()
            }
            Key::Long(n) => "k".repeat(MAX_KEY_BYTES - 10 + usize::from(*n % 21)),
            Key::Any(text) => text.clone(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Value {
    Small(Vec<u8>),
    /// The value limit, or one past it.
    Limit(bool),
    /// 1–4 MiB of one byte (pages end early past 16 MiB).
    Large(u8),
    /// Half a kilobyte to 2.5 KiB: several in a commit are kept apart on redb.
    Medium(u8, u16),
}

impl Value {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Small(bytes) => bytes.clone(),
            Value::Limit(over) => vec![7; MAX_VALUE_BYTES + usize::from(*over)],
            Value::Large(n) => vec![*n; (1 + usize::from(*n % 4)) << 20],
            Value::Medium(n, len) => (0..512 + usize::from(*len % 2048)).map(|i| n.wrapping_add(i as u8)).collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum CheckOp {
    /// The key's version as last read (or a made-up one if never read).
    VersionIs(Key, Option<u64>),
    Absent(Key),
}

#[derive(Arbitrary, Debug)]
enum WriteOp {
    Set(Key, Value),
    Delete(Key),
    SetStamped(Key, Value),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Get(bool, Key),
    Scan { ns: bool, prefix: Key, start_after: Option<Key>, limit: u16 },
    Commit { ns: bool, checks: Vec<CheckOp>, writes: Vec<WriteOp> },
}

/// One backend and what it must hold.
struct Subject {
    namespaces: [Namespace; 2],
    models: [Model; 2],
    /// Every version seen, with the (namespace, key, write) it belonged to.
    versions: BTreeMap<u64, (usize, String, u64)>,
    last_stamp: Option<u64>,
}

#[derive(Default)]
struct Model {
    /// key → (value, the n-th write of the model that set it, its version once read)
    entries: BTreeMap<String, (Vec<u8>, u64, Option<u64>)>,
    writes: u64,
}

fuzz_target!(|ops: Vec<Op>| {
    let dir = tempfile::Builder::new().prefix("kv-model").tempdir_in(shm()).expect("temp dir");
    let redb: Arc<dyn Backend> = Arc::new(RedbBackend::open(&dir.path().join("kv.redb")).expect("redb"));
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
    let mut subjects: Vec<Subject> = [memory, redb]
        .into_iter()
        .map(|backend| Subject {
            namespaces: NAMESPACES.map(|name| Namespace::new(backend.clone(), name)),
            models: [Model::default(), Model::default()],
            versions: BTreeMap::new(),
            last_stamp: None,
        })
        .collect();
    let mut large = 0usize;
    for op in ops.iter().take(64) {
        // Large values cost time on the file backend: a few per input.
        if let Op::Commit { writes, .. } = op {
            large += writes
                .iter()
                .filter(
                    |w| matches!(w, WriteOp::Set(_, v) | WriteOp::SetStamped(_, v) if !matches!(v, Value::Small(_) | Value::Medium(..))),
                )
                .count();
            if large > 24 {
                break;
            }
        }
        for subject in &mut subjects {
            subject.apply(op);
        }
    }
});

/// A memory-backed directory when there is one: redb syncs every commit.
fn shm() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() }
}

impl Subject {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Get(ns, key) => {
                let (ns, key) = (usize::from(*ns), key.text());
                let got = self.namespaces[ns].get(&key);
                if key.len() > MAX_KEY_BYTES {
                    assert_eq!(got, Err(KvError::TooLarge("key over 1 KiB")));
                    return;
                }
                let got = got.expect("get");
                self.observe(ns, &key, got.as_ref());
            }
            Op::Scan { ns, prefix, start_after, limit } => {
                let ns = usize::from(*ns);
                let (prefix, start_after, limit) =
                    (prefix.text(), start_after.as_ref().map(Key::text), u32::from(*limit));
                let got = self.namespaces[ns].scan(&prefix, start_after.as_deref(), limit);
                let too_large = if limit > 1000 {
                    Some("scan limit over 1000")
                } else if prefix.len() > MAX_KEY_BYTES || start_after.as_ref().is_some_and(|a| a.len() > MAX_KEY_BYTES)
                {
                    Some("key over 1 KiB")
                } else {
                    None
                };
                if let Some(reason) = too_large {
                    assert_eq!(got, Err(KvError::TooLarge(reason)));
                    return;
                }
                let got = got.expect("scan");
                let mut want = Vec::new();
                let mut bytes = 0;
                for (key, (value, ..)) in self.models[ns].entries.range(prefix.clone()..) {
                    if !key.starts_with(&prefix)
                        || want.len() == limit as usize
                        || (!want.is_empty() && bytes >= MAX_ANSWER_BYTES)
                    {
                        break;
                    }
                    if start_after.as_ref().is_some_and(|after| key <= after) {
                        continue;
                    }
                    bytes += value.len();
                    want.push(key.clone());
                }
                let keys: Vec<String> = got.iter().map(|(key, _)| key.clone()).collect();
                assert_eq!(keys, want, "scan {prefix:?} after {start_after:?} limit {limit}");
                for (key, entry) in &got {
                    self.observe(ns, key, Some(entry));
                }
            }
            Op::Commit { ns, checks, writes } => self.commit(usize::from(*ns), checks, writes),
        }
    }

    /// Compares what the store returned for `key` with the model, and learns its version.
    fn observe(&mut self, ns: usize, key: &str, got: Option<&Entry>) {
        let model = self.models[ns].entries.get_mut(key);
        match (model, got) {
            (None, None) => {}
            (Some((value, write, known)), Some(entry)) => {
                assert!(entry.value == *value, "{key:?}: value differs from the model");
                match known {
                    Some(version) => assert_eq!(*version, entry.version, "{key:?}: version changed without a write"),
                    None => {
                        let owner = (ns, key.to_owned(), *write);
                        if let Some(previous) = self.versions.insert(entry.version, owner.clone()) {
                            assert_eq!(previous, owner, "version {} used twice", entry.version);
                        }
                        *known = Some(entry.version);
                    }
                }
            }
            (model, got) => panic!("{key:?} in namespace {ns}: model {:?}, store {:?}", model.is_some(), got.is_some()),
        }
    }

    fn commit(&mut self, ns: usize, checks: &[CheckOp], writes: &[WriteOp]) {
        // Checks name versions the model knows: read the keys whose version it has not seen yet.
        for check in checks.iter().take(16) {
            if let CheckOp::VersionIs(key, _) = check {
                let key = key.text();
                if self.models[ns].entries.get(&key).is_some_and(|(_, _, known)| known.is_none()) {
                    let got = self.namespaces[ns].get(&key).expect("get");
                    self.observe(ns, &key, got.as_ref());
                }
            }
        }
        let checks: Vec<Check> = checks
            .iter()
            .take(16)
            .map(|check| match check {
                CheckOp::VersionIs(key, made_up) => {
                    let key = key.text();
                    let known = self.models[ns].entries.get(&key).and_then(|(_, _, version)| *version);
                    let version = made_up.or(known).unwrap_or(u64::MAX);
                    Check::VersionIs(key, version)
                }
                CheckOp::Absent(key) => Check::Absent(key.text()),
            })
            .collect();
        let writes: Vec<Write> = writes
            .iter()
            .take(24)
            .map(|write| match write {
                WriteOp::Set(key, value) => Write::Set(key.text(), value.bytes()),
                WriteOp::Delete(key) => Write::Delete(key.text()),
                WriteOp::SetStamped(key, value) => Write::SetStamped(key.text(), value.bytes()),
            })
            .collect();
        let got = self.namespaces[ns].commit(&checks, &writes);

        // The policy layer's limits, in its order.
        let mut too_large = checks.iter().any(|check| key_of(check).len() > MAX_KEY_BYTES).then_some("key over 1 KiB");
        let mut bytes = 0;
        for write in &writes {
            if too_large.is_some() {
                break;
            }
            let (key, value, stamp) = match write {
                Write::Set(key, value) => (key, Some(value), 0),
                Write::Delete(key) => (key, None, 0),
                Write::SetStamped(key, value) => (key, Some(value), STAMP_BYTES),
            };
            if key.len() + stamp > MAX_KEY_BYTES {
                too_large = Some("key over 1 KiB");
            } else if value.is_some_and(|value| value.len() > MAX_VALUE_BYTES) {
                too_large = Some("value over 4 MiB");
            }
            bytes += key.len() + stamp + value.map_or(0, Vec::len);
        }
        if too_large.is_none() && bytes > 64 << 20 {
            too_large = Some("more than 64 MiB written in one commit");
        }
        if let Some(reason) = too_large {
            assert_eq!(got, Err(KvError::TooLarge(reason)));
            return;
        }
        let model = &self.models[ns];
        let holds = checks.iter().all(|check| match check {
            Check::VersionIs(key, version) => {
                model.entries.get(key).is_some_and(|(_, _, known)| *known == Some(*version))
            }
            Check::Absent(key) => !model.entries.contains_key(key),
        });
        if !holds {
            assert_eq!(got, Err(KvError::Conflict));
            return;
        }
        assert_eq!(got, Ok(()));
        if !writes.is_empty() {
            self.learn(ns, &writes);
        }
    }

    /// Applies a committed `writes` to the model, learning the commit's stamp from the store.
    fn learn(&mut self, ns: usize, writes: &[Write]) {
        let stamp = writes.iter().find_map(|write| match write {
            Write::SetStamped(prefix, _) => Some(self.stamp_of(ns, prefix)),
            _ => None,
        });
        let model = &mut self.models[ns];
        model.writes += 1;
        let mut stamped = 0;
        for write in writes {
            match write {
                Write::Set(key, value) => drop(model.entries.insert(key.clone(), (value.clone(), model.writes, None))),
                Write::Delete(key) => drop(model.entries.remove(key)),
                Write::SetStamped(prefix, value) => {
                    let stamp = stamp.expect("learned");
                    let key = format!("{prefix}{stamp:020}.{stamped:06}");
                    stamped += 1;
                    model.entries.insert(key, (value.clone(), model.writes, None));
                }
            }
        }
    }

    /// The stamp of the commit just made: the first stamped key under
    /// `prefix` the model does not hold (stamps only grow).
    fn stamp_of(&mut self, ns: usize, prefix: &str) -> u64 {
        let mut after: Option<String> = None;
        loop {
            let page = self.namespaces[ns].scan(prefix, after.as_deref(), 1000).expect("scan for the stamp");
            assert!(!page.is_empty(), "the stamped write under {prefix:?} is stored");
            for (key, _) in &page {
                let rest = &key[prefix.len()..];
                let stamped = rest.len() == 27
                    && rest.as_bytes()[20] == b'.'
                    && rest.bytes().enumerate().all(|(i, b)| i == 20 || b.is_ascii_digit());
                if stamped && !self.models[ns].entries.contains_key(key) {
                    let stamp: u64 = rest[..20].parse().expect("digits");
                    assert_eq!(&rest[21..], "000000", "the first stamped write of a commit has index 0");
                    assert!(self.last_stamp.is_none_or(|last| stamp > last), "stamps only grow");
                    self.last_stamp = Some(stamp);
                    return stamp;
                }
            }
            after = page.last().map(|(key, _)| key.clone());
        }
    }
}

fn key_of(check: &Check) -> &str {
    match check {
        Check::VersionIs(key, _) | Check::Absent(key) => key,
    }
}
