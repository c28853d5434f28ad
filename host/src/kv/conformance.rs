//! One suite of kv semantics, run against every backend.

use super::*;
use proptest::prelude::*;

fn set(key: &str, value: &str) -> Write {
    Write::Set(key.into(), value.as_bytes().to_vec())
}

fn keys(page: &[(String, Entry)]) -> Vec<&str> {
    page.iter().map(|(key, _)| key.as_str()).collect()
}

/// The environment variable naming a PostgreSQL database for the suite.
pub const POSTGRES_URL_VAR: &str = "EVOGATE_TEST_POSTGRES_URL";

/// Something a test backend needs cleaned up when the test ends.
type Guard = Box<dyn std::any::Any>;

/// A fresh schema of the test database, dropped when the guard goes.
struct Schema(Arc<PostgresBackend>);

impl Drop for Schema {
    fn drop(&mut self) {
        if let Err(err) = self.0.destroy() {
            eprintln!("could not drop a test schema: {err}");
        }
    }
}

/// A PostgreSQL backend in a schema of its own, when the suite has a database.
pub fn postgres() -> Option<(Arc<PostgresBackend>, Guard)> {
    let url = std::env::var(POSTGRES_URL_VAR).ok().filter(|url| !url.is_empty())?;
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).expect("randomness");
    let options = PostgresOptions {
        url,
        schema: format!("evogate_test_{}", hex::encode(random)),
        pool_size: 8,
        connect_timeout: std::time::Duration::from_secs(5),
        statement_timeout: std::time::Duration::from_secs(30),
        tls_ca: None,
        compression: crate::kv::Compression::default(),
    };
    let backend = Arc::new(PostgresBackend::open(&options).expect("the test database is reachable"));
    Some((backend.clone(), Box::new(Schema(backend))))
}

/// Every backend under test, each fresh, and the reference store answering
/// as little as the contract allows (two entries per scan page or
/// `get-many`): what holds for it holds for any store that bounds its answers.
fn backends() -> Vec<(Arc<dyn Backend>, Option<Guard>)> {
    let mut all = full_backends();
    all.push((Arc::new(MemoryBackend::with_short_answers(2)), None));
    all
}

/// The backends that answer in full up to the byte budget (every real one).
fn full_backends() -> Vec<(Arc<dyn Backend>, Option<Guard>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let redb = RedbBackend::open(&dir.path().join("kv.redb")).expect("open redb");
    let mut all: Vec<(Arc<dyn Backend>, Option<Guard>)> =
        vec![(Arc::new(MemoryBackend::default()), None), (Arc::new(redb), Some(Box::new(dir)))];
    if let Some((backend, guard)) = postgres() {
        all.push((backend, Some(guard)));
    }
    all
}

/// Every entry under `prefix`, page after page (only an empty page ends it).
fn scan_all(kv: &Namespace, prefix: &str) -> Vec<(String, Entry)> {
    let mut all: Vec<(String, Entry)> = Vec::new();
    loop {
        let page = kv.scan(prefix, all.last().map(|(key, _)| key.as_str()), MAX_SCAN_LIMIT).expect("scan");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Every key's entry, asking again after short answers.
fn get_all(kv: &Namespace, keys: &[String]) -> Vec<Option<Entry>> {
    let mut all = Vec::new();
    while all.len() < keys.len() {
        let answer = kv.get_many(&keys[all.len()..]).expect("get-many");
        assert!(!answer.is_empty(), "get-many answered nothing");
        all.extend(answer);
    }
    all
}

#[test]
fn concurrent_checked_increments_lose_no_update() {
    for (backend, _guard) in backends() {
        let kv = Namespace::new(backend, "race");
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..25 {
                        loop {
                            let current = kv.get("counter").expect("get");
                            let (check, value) = match &current {
                                Some(entry) => (
                                    Check::VersionIs("counter".into(), entry.version),
                                    String::from_utf8_lossy(&entry.value).parse::<u32>().expect("a number") + 1,
                                ),
                                None => (Check::Absent("counter".into()), 1),
                            };
                            match kv.commit(&[check], &[set("counter", &value.to_string())]) {
                                Ok(()) => break,
                                Err(KvError::Conflict) => continue,
                                Err(err) => panic!("{err:?}"),
                            }
                        }
                    }
                });
            }
        });
        let total = kv.get("counter").expect("get").expect("present").value;
        assert_eq!(String::from_utf8_lossy(&total), "100", "{}: every increment counted once", kv.describe());
    }
}

/// Write skew: two commits each check both keys and set its own only while
/// the other's is unset. Whatever the interleaving, never both.
#[test]
fn a_key_only_checked_is_guarded_like_a_key_written() {
    for (backend, _guard) in backends() {
        let kv = Namespace::new(backend.clone(), "skew");
        for round in 0..100 {
            kv.commit(&[], &[set("x", "0"), set("y", "0")]).expect("reset");
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|scope| {
                for (mine, theirs) in [("x", "y"), ("y", "x")] {
                    let (kv, barrier) = (&kv, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        loop {
                            let own = kv.get(mine).expect("get").expect("present");
                            let other = kv.get(theirs).expect("get").expect("present");
                            if other.value == b"1" {
                                return;
                            }
                            let checks = [
                                Check::VersionIs(mine.into(), own.version),
                                Check::VersionIs(theirs.into(), other.version),
                            ];
                            match kv.commit(&checks, &[set(mine, "1")]) {
                                Ok(()) | Err(KvError::Conflict) => {}
                                Err(err) => panic!("{err:?}"),
                            }
                            if kv.get(mine).expect("get").is_some_and(|entry| entry.value == b"1") {
                                return;
                            }
                        }
                    });
                }
            });
            let both = ["x", "y"].map(|key| kv.get(key).expect("get").expect("present").value);
            assert_ne!(both, [b"1".to_vec(), b"1".to_vec()], "{} round {round}: both set", backend.describe());
        }
    }
}

#[test]
fn stamped_writes_list_in_commit_order_even_from_racing_commits() {
    for (backend, _guard) in backends() {
        let kv = Namespace::new(backend, "log");
        kv.commit(
            &[],
            &[Write::SetStamped("log/".into(), b"a".to_vec()), Write::SetStamped("log/".into(), b"b".to_vec())],
        )
        .expect("commit");
        std::thread::scope(|scope| {
            for thread in 0..4u8 {
                let kv = &kv;
                scope.spawn(move || {
                    for n in 0..20u8 {
                        kv.commit(&[], &[Write::SetStamped("log/".into(), vec![thread, n])]).expect("commit");
                    }
                });
            }
        });
        let page = scan_all(&kv, "log/");
        assert_eq!(page.len(), 82, "{}", kv.describe());
        assert_eq!((page[0].1.value.as_slice(), page[1].1.value.as_slice()), (&b"a"[..], &b"b"[..]));
        assert!(page[0].0.ends_with(".000000") && page[1].0.ends_with(".000001"), "positions within a commit");
        assert_eq!(page[0].0.len(), "log/".len() + STAMP_BYTES);
        for thread in 0..4u8 {
            let mine: Vec<u8> = page
                .iter()
                .filter(|(_, e)| e.value.len() == 2 && e.value[0] == thread)
                .map(|(_, e)| e.value[1])
                .collect();
            assert_eq!(mine, (0..20).collect::<Vec<_>>(), "each writer's commits in its order");
        }
        let versions: Vec<u64> = page.iter().map(|(_, entry)| entry.version).collect();
        assert!(versions.windows(2).all(|w| w[0] <= w[1]), "key order is commit order");
        let too_long = "k".repeat(MAX_KEY_BYTES - STAMP_BYTES + 1);
        assert!(matches!(kv.commit(&[], &[Write::SetStamped(too_long, Vec::new())]), Err(KvError::TooLarge(_))));
    }
}

#[test]
fn a_reader_following_a_log_misses_no_entry_of_racing_commits() {
    // A stamp drawn out of commit order shows as an entry that appears
    // behind a reader's position: a feed reader going on from its cursor
    // would never see it.
    for (backend, _guard) in full_backends() {
        let kv = Namespace::new(backend, "log");
        let finished = std::sync::atomic::AtomicU8::new(0);
        let (writers, commits) = (4u8, 60u8);
        let seen = std::thread::scope(|scope| {
            for thread in 0..writers {
                let (kv, finished) = (&kv, &finished);
                scope.spawn(move || {
                    for n in 0..commits {
                        kv.commit(&[], &[Write::SetStamped("log/".into(), vec![thread, n])]).expect("commit");
                    }
                    finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
            let (mut cursor, mut seen) = (None::<String>, 0usize);
            loop {
                let all_written = finished.load(std::sync::atomic::Ordering::SeqCst) == writers;
                let page = kv.scan("log/", cursor.as_deref(), MAX_SCAN_LIMIT).expect("scan");
                match page.last() {
                    Some((last, _)) => cursor = Some(last.clone()),
                    None if all_written => break seen,
                    None => {}
                }
                seen += page.len();
            }
        });
        let written = usize::from(writers) * usize::from(commits);
        assert_eq!(scan_all(&kv, "log/").len(), written, "{}", kv.describe());
        assert_eq!(seen, written, "{}: entries appeared behind the reader's position", kv.describe());
    }
}

#[test]
fn a_plain_key_shaped_like_a_stamped_key_keeps_the_last_write() {
    // PostgreSQL names stamped keys in the database unless a plain key of
    // the commit could be one of them; either way the last write of a key
    // wins. The key aimed at is the next commit's own stamped key: the
    // version after the one a commit just drew.
    each_backend(|kv| {
        for round in 0..4 {
            kv.commit(&[], &[set("probe", "x")]).expect("commit");
            let next = kv.get("probe").expect("get").expect("present").version + 1;
            let shaped = stamped_key("s/", next, 0);
            let stamped = Write::SetStamped("s/".into(), b"stamped".to_vec());
            let plain = Write::Set(shaped.clone(), b"plain".to_vec());
            let (writes, last) = match round % 2 {
                0 => ([stamped, plain], &b"plain"[..]),
                _ => ([plain, stamped], &b"stamped"[..]),
            };
            kv.commit(&[Check::Absent(format!("s/{round}"))], &writes).expect("commit");
            let value = kv.get(&shaped).expect("get").map(|entry| entry.value);
            assert_eq!(value.as_deref(), Some(last), "{} round {round}", kv.describe());
        }
    });
}

#[test]
fn the_postgres_suite_runs_when_a_database_is_given() {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => assert!(full_backends().len() == 3, "PostgreSQL at {url} is in the suite"),
        _ => eprintln!(
            "NOTE: the PostgreSQL backend suite was skipped: set {POSTGRES_URL_VAR}=postgres://user@host:port/db to run it"
        ),
    }
}

fn each_backend(test: impl Fn(Namespace)) {
    for (backend, _guard) in backends() {
        eprintln!("backend: {}", backend.describe());
        test(Namespace::new(backend, "test"));
    }
}

#[test]
fn get_of_missing_key_is_none() {
    each_backend(|kv| assert_eq!(kv.get("nope").expect("get"), None));
}

#[test]
fn set_then_get_returns_value_and_a_version() {
    each_backend(|kv| {
        kv.commit(&[], &[set("a", "1")]).expect("commit");
        let entry = kv.get("a").expect("get").expect("present");
        assert_eq!(entry.value, b"1");
    });
}

#[test]
fn every_write_changes_the_version_even_after_delete_and_recreate() {
    each_backend(|kv| {
        kv.commit(&[], &[set("a", "1")]).expect("commit");
        let v1 = kv.get("a").expect("get").expect("present").version;
        kv.commit(&[], &[set("a", "1")]).expect("commit");
        let v2 = kv.get("a").expect("get").expect("present").version;
        kv.commit(&[], &[Write::Delete("a".into())]).expect("commit");
        kv.commit(&[], &[set("a", "1")]).expect("commit");
        let v3 = kv.get("a").expect("get").expect("present").version;
        assert!(v1 != v2 && v2 != v3 && v1 != v3, "{v1} {v2} {v3}");
    });
}

#[test]
fn failed_check_writes_nothing_and_reports_conflict() {
    each_backend(|kv| {
        kv.commit(&[], &[set("a", "1")]).expect("commit");
        let version = kv.get("a").expect("get").expect("present").version;
        let stale = Check::VersionIs("a".into(), version + 1000);
        assert_eq!(kv.commit(&[stale], &[set("a", "2"), set("b", "2")]), Err(KvError::Conflict));
        assert_eq!(kv.commit(&[Check::Absent("a".into())], &[set("b", "2")]), Err(KvError::Conflict));
        assert_eq!(kv.get("a").expect("get").expect("present").value, b"1");
        assert_eq!(kv.get("b").expect("get"), None);
    });
}

#[test]
fn passing_checks_apply_all_writes() {
    each_backend(|kv| {
        kv.commit(&[], &[set("a", "1")]).expect("commit");
        let version = kv.get("a").expect("get").expect("present").version;
        let checks = [Check::VersionIs("a".into(), version), Check::Absent("b".into())];
        kv.commit(&checks, &[set("a", "2"), set("b", "2"), Write::Delete("zzz".into())]).expect("commit");
        assert_eq!(kv.get("a").expect("get").expect("present").value, b"2");
        assert_eq!(kv.get("b").expect("get").expect("present").value, b"2");
    });
}

#[test]
fn scan_is_ordered_bytewise_and_bounded_by_prefix() {
    each_backend(|kv| {
        let writes: Vec<_> = ["b/2", "a", "b/10", "b/1", "b0", "c", "b/"].iter().map(|k| set(k, k)).collect();
        kv.commit(&[], &writes).expect("commit");
        let page = scan_all(&kv, "b/");
        assert_eq!(keys(&page), ["b/", "b/1", "b/10", "b/2"]);
        let all = scan_all(&kv, "");
        assert_eq!(keys(&all), ["a", "b/", "b/1", "b/10", "b/2", "b0", "c"]);
    });
}

#[test]
fn scan_pages_with_start_after_and_limit() {
    each_backend(|kv| {
        let writes: Vec<_> = (0..25).map(|i| set(&format!("k/{i:03}"), "v")).collect();
        kv.commit(&[], &writes).expect("commit");
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = kv.scan("k/", after.as_deref(), 10).expect("scan");
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 10);
            after = page.last().map(|(key, _)| key.clone());
            seen.extend(page.into_iter().map(|(key, _)| key));
        }
        let want: Vec<_> = (0..25).map(|i| format!("k/{i:03}")).collect();
        assert_eq!(seen, want);
    });
}

#[test]
fn scan_start_after_before_the_prefix_starts_at_the_prefix() {
    each_backend(|kv| {
        kv.commit(&[], &[set("a", "1"), set("m/1", "1"), set("z", "1")]).expect("commit");
        assert_eq!(keys(&kv.scan("m/", Some("b"), 10).expect("scan")), ["m/1"]);
        assert!(kv.scan("m/", Some("n"), 10).expect("scan").is_empty());
    });
}

#[test]
fn namespaces_never_see_each_other() {
    for (backend, _dir) in backends() {
        let alpha = Namespace::new(backend.clone(), "alpha");
        let beta = Namespace::new(backend, "beta");
        alpha.commit(&[], &[set("secret", "a")]).expect("commit");
        assert_eq!(beta.get("secret").expect("get"), None);
        assert!(beta.scan("", None, 1000).expect("scan").is_empty());
        assert_eq!(beta.commit(&[Check::Absent("secret".into())], &[set("secret", "b")]), Ok(()));
        assert_eq!(alpha.get("secret").expect("get").expect("present").value, b"a");
    }
}

#[test]
fn limits_are_enforced_before_the_backend() {
    each_backend(|kv| {
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(kv.get(&long_key), Err(KvError::TooLarge(_))));
        assert!(matches!(kv.scan("", None, MAX_SCAN_LIMIT + 1), Err(KvError::TooLarge(_))));
        let big = Write::Set("big".into(), vec![0; MAX_VALUE_BYTES + 1]);
        assert!(matches!(kv.commit(&[], &[big]), Err(KvError::TooLarge(_))));
        let many: Vec<_> = (0..=MAX_WRITES_PER_COMMIT).map(|i| set(&i.to_string(), "")).collect();
        assert!(matches!(kv.commit(&[], &many), Err(KvError::TooLarge(_))));
        assert!(kv.scan("", None, 0).expect("scan").is_empty());
        let exact = Write::Set("k".repeat(MAX_KEY_BYTES), vec![1; MAX_VALUE_BYTES]);
        kv.commit(&[], &[exact]).expect("the limits themselves are allowed");
    });
}

#[test]
fn scan_stops_early_past_the_byte_budget_but_returns_at_least_one() {
    for (backend, _dir) in full_backends() {
        let big = vec![7u8; 600];
        let writes: Vec<_> = (0..5).map(|i| Write::Set(format!("k{i}"), big.clone())).collect();
        backend.commit("ns", &[], &writes).expect("commit");
        assert_eq!(backend.scan("ns", &Scan::of("", None, 10, 1000)).expect("scan").len(), 2);
        assert_eq!(backend.scan("ns", &Scan::of("", None, 10, 1)).expect("scan").len(), 1);
    }
}

#[test]
fn get_many_answers_in_the_keys_order_like_get() {
    each_backend(|kv| {
        kv.commit(&[], &[set("a", "1"), set("c", "3")]).expect("commit");
        let asked: Vec<String> = ["c", "b", "a", "c", ""].map(String::from).to_vec();
        let answer = get_all(&kv, &asked);
        let one_by_one: Vec<_> = asked.iter().map(|key| kv.get(key).expect("get")).collect();
        assert_eq!(answer, one_by_one);
        let values: Vec<_> = answer.iter().map(|entry| entry.as_ref().map(|e| e.value.as_slice())).collect();
        assert_eq!(values, [Some(b"3".as_slice()), None, Some(b"1"), Some(b"3"), None]);
        assert_eq!(kv.get_many(&[]).expect("nothing asked"), Vec::new());
    });
}

#[test]
fn get_many_stops_early_past_the_byte_budget_but_answers_at_least_one() {
    for (backend, _guard) in full_backends() {
        let big = vec![7u8; 600];
        let writes: Vec<_> = (0..5).map(|i| Write::Set(format!("k{i}"), big.clone())).collect();
        backend.commit("ns", &[], &writes).expect("commit");
        let asked: Vec<String> = ["k0", "missing", "k1", "k2", "k3"].map(String::from).to_vec();
        let answer = backend.get_many("ns", &asked, 1000).expect("get-many");
        assert_eq!(answer.len(), 3, "{}: k0 and the missing key leave room, k1 fills the budget", backend.describe());
        assert_eq!(backend.get_many("ns", &asked, 1).expect("get-many").len(), 1);
        assert_eq!(backend.get_many("ns", &asked, usize::MAX).expect("get-many").len(), 5);
    }
}

#[test]
fn get_many_limits_are_enforced_before_the_backend() {
    each_backend(|kv| {
        let many: Vec<String> = (0..=MAX_GET_MANY_KEYS).map(|i| i.to_string()).collect();
        assert!(matches!(kv.get_many(&many), Err(KvError::TooLarge(_))));
        assert_eq!(get_all(&kv, &many[..MAX_GET_MANY_KEYS]).len(), MAX_GET_MANY_KEYS);
        let long = vec!["a".to_owned(), "k".repeat(MAX_KEY_BYTES + 1)];
        assert!(matches!(kv.get_many(&long), Err(KvError::TooLarge(_))));
    });
}

/// A remote backend's reads on the request's task answer what its blocking reads answer.
#[test]
fn reads_on_the_request_task_answer_like_the_blocking_ones() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for (backend, _guard) in backends() {
        let kv = Namespace::new(backend.clone(), "async");
        let writes: Vec<_> = (0..20).map(|i| set(&format!("p/{i:02}"), &i.to_string())).collect();
        kv.commit(&[], &writes).expect("commit");
        let asked: Vec<String> = ["p/03", "p/99", "p/07"].map(String::from).to_vec();
        match kv.get_many_async(asked.clone()).expect("within the limits") {
            Some(read) => assert_eq!(runtime.block_on(read), kv.get_many(&asked), "{}", backend.describe()),
            None => assert!(!backend.is_remote(), "{} reads on the blocking pool", backend.describe()),
        }
        if let Some(read) = kv.scan_async("p/".into(), Some("p/04".into()), 5).expect("within the limits") {
            assert_eq!(runtime.block_on(read), kv.scan("p/", Some("p/04"), 5));
        }
        let refused = kv.get_many_async((0..=MAX_GET_MANY_KEYS).map(|i| i.to_string()).collect());
        assert!(matches!(refused, Err(KvError::TooLarge(_))));
    }
}

#[test]
fn redb_data_survives_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.redb");
    let version = {
        let kv = Namespace::new(Arc::new(RedbBackend::open(&path).expect("open")), "p");
        kv.commit(&[], &[set("a", "durable")]).expect("commit");
        kv.get("a").expect("get").expect("present").version
    };
    let kv = Namespace::new(Arc::new(RedbBackend::open(&path).expect("reopen")), "p");
    let entry = kv.get("a").expect("get").expect("present");
    assert_eq!((entry.value.as_slice(), entry.version), (&b"durable"[..], version));
    kv.commit(&[], &[set("a", "again")]).expect("commit");
    assert!(kv.get("a").expect("get").expect("present").version > version, "versions keep growing");
}

#[derive(Debug, Clone)]
enum Op {
    Set(u8, u8),
    Delete(u8),
    CheckedSet {
        key: u8,
        expect_absent: bool,
        value: u8,
    },
    /// A record stamped after prefix `s{0}/`, as a log or the feed appends.
    Append(u8, u8),
    /// The oldest record stamped after prefix `s{0}/` deleted, as retention does.
    Trim(u8),
}

/// The value an op writes: a byte of `v`, then `v / 2` bytes of another
/// one, so about half the values are long enough to be stored compressed
/// and the rest are not.
fn value(v: u8) -> Vec<u8> {
    std::iter::once(v).chain(std::iter::repeat_n(v.wrapping_mul(31), usize::from(v) / 2)).collect()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..8, any::<u8>()).prop_map(|(k, v)| Op::Set(k, v)),
        1 => (0u8..8).prop_map(Op::Delete),
        1 => (0u8..8, any::<bool>(), any::<u8>())
            .prop_map(|(key, expect_absent, value)| { Op::CheckedSet { key, expect_absent, value } }),
        3 => (0u8..2, any::<u8>()).prop_map(|(prefix, v)| Op::Append(prefix, v)),
        1 => (0u8..2).prop_map(Op::Trim),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every backend agrees with a plain `BTreeMap` model on any op sequence,
    /// and lists the records appended after a prefix in the order they were
    /// appended (sequences long enough for redb to pack their tails).
    #[test]
    fn backends_match_a_model(ops in proptest::collection::vec(op(), 1..130)) {
        for (backend, _guard) in backends() {
            let kv = Namespace::new(backend, "model");
            let mut model = std::collections::BTreeMap::<String, Vec<u8>>::new();
            let mut appended: [Vec<Vec<u8>>; 2] = Default::default();
            for op in &ops {
                match op {
                    Op::Append(prefix, v) => {
                        kv.commit(&[], &[Write::SetStamped(format!("s{prefix}/"), value(*v))]).expect("commit");
                        appended[usize::from(*prefix)].push(value(*v));
                    }
                    Op::Trim(prefix) => {
                        let oldest = kv.scan(&format!("s{prefix}/"), None, 1).expect("scan");
                        if let Some((key, _)) = oldest.first() {
                            kv.commit(&[], &[Write::Delete(key.clone())]).expect("commit");
                            appended[usize::from(*prefix)].remove(0);
                        }
                    }
                    Op::Set(k, v) => {
                        kv.commit(&[], &[Write::Set(format!("k{k}"), value(*v))]).expect("commit");
                        model.insert(format!("k{k}"), value(*v));
                    }
                    Op::Delete(k) => {
                        kv.commit(&[], &[Write::Delete(format!("k{k}"))]).expect("commit");
                        model.remove(&format!("k{k}"));
                    }
                    Op::CheckedSet { key, expect_absent, value } => {
                        let key = format!("k{key}");
                        let check = if *expect_absent {
                            Check::Absent(key.clone())
                        } else {
                            let version = kv.get(&key).expect("get").map_or(u64::MAX, |e| e.version);
                            Check::VersionIs(key.clone(), version)
                        };
                        let should_apply = !expect_absent || !model.contains_key(&key);
                        let should_apply = should_apply && (*expect_absent || model.contains_key(&key));
                        let result = kv.commit(&[check], &[Write::Set(key.clone(), self::value(*value))]);
                        if should_apply {
                            prop_assert_eq!(result, Ok(()));
                            model.insert(key, self::value(*value));
                        } else {
                            prop_assert_eq!(result, Err(KvError::Conflict));
                        }
                    }
                }
            }
            for (prefix, appended) in appended.iter().enumerate() {
                let listed: Vec<_> = scan_all(&kv, &format!("s{prefix}/")).into_iter().map(|(_, e)| e.value).collect();
                prop_assert_eq!(&listed, appended);
            }
            let scanned: Vec<_> = scan_all(&kv, "k").into_iter().map(|(k, e)| (k, e.value)).collect();
            let all: Vec<String> = (0..8).map(|k| format!("k{k}")).collect();
            let read: Vec<_> = get_all(&kv, &all).into_iter().map(|e| e.map(|e| e.value)).collect();
            let modelled: Vec<_> = all.iter().map(|key| model.get(key).cloned()).collect();
            prop_assert_eq!(read, modelled);
            let expected: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(scanned, expected);
        }
    }

    /// Commits of many writes each, in any key order, a key written twice
    /// or set and deleted in one commit (the later write wins), between and
    /// around keys already stored, with values large and many enough to be
    /// kept apart on redb, then rewritten, shrunk or deleted: every backend
    /// agrees with the model, in scans and in gets.
    #[test]
    fn commits_of_many_writes_match_a_model(
        commits in proptest::collection::vec(proptest::collection::vec((0u8..64, proptest::option::of(any::<u8>())), 1..60), 1..8),
    ) {
        for (backend, _guard) in backends() {
            let kv = Namespace::new(backend, "runs");
            let mut model = std::collections::BTreeMap::<String, Vec<u8>>::new();
            for commit in &commits {
                // Values up to a few kilobytes, so that a commit spans several leaves.
                let long = |v: u8| value(v).repeat(usize::from(v % 16) + 1);
                let writes: Vec<Write> = commit
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => Write::Set(format!("k{k:02}"), long(*v)),
                        None => Write::Delete(format!("k{k:02}")),
                    })
                    .collect();
                kv.commit(&[], &writes).expect("commit");
                for (k, v) in commit {
                    match v {
                        Some(v) => model.insert(format!("k{k:02}"), long(*v)),
                        None => model.remove(&format!("k{k:02}")),
                    };
                }
            }
            let scanned: Vec<_> = scan_all(&kv, "").into_iter().map(|(k, e)| (k, e.value)).collect();
            let expected: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(&scanned, &expected);
            for (key, value) in &expected {
                let read = kv.get(key).expect("get").map(|entry| entry.value);
                prop_assert_eq!(read.as_ref(), Some(value));
            }
        }
    }
}

#[test]
fn every_commit_limit_holds_at_its_bound_and_refuses_one_past_it() {
    each_backend(|kv| {
        // 100,000 checks pass; one more is refused before the backend sees them.
        kv.commit(&[], &[set("c", "1")]).expect("seed");
        let version = kv.get("c").expect("get").expect("present").version;
        let checks: Vec<_> = (0..MAX_CHECKS_PER_COMMIT).map(|_| Check::VersionIs("c".into(), version)).collect();
        kv.commit(&checks, &[set("c", "2")]).expect("100,000 checks of one key");
        let over: Vec<_> = (0..=MAX_CHECKS_PER_COMMIT).map(|i| Check::Absent(format!("x{i}"))).collect();
        assert!(matches!(kv.commit(&over, &[]), Err(KvError::TooLarge(_))));
        // 64 MiB per commit, keys included.
        let value = |n: usize| vec![b'v'; n];
        let mut at_limit: Vec<_> = (0..15).map(|i| Write::Set(format!("m{i:02}"), value(MAX_VALUE_BYTES))).collect();
        let used = 15 * (3 + MAX_VALUE_BYTES);
        at_limit.push(Write::Set("m15".into(), value(MAX_COMMIT_BYTES - used - 3)));
        kv.commit(&[], &at_limit).expect("exactly 64 MiB");
        at_limit.push(Write::Set("m".into(), Vec::new()));
        assert!(matches!(kv.commit(&[], &at_limit), Err(KvError::TooLarge(_))), "one byte more");
        assert_eq!(kv.get("m").expect("get"), None, "nothing of the refused commit was written");
        // Oversized keys anywhere: checks, stamped prefixes, start_after.
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(kv.commit(&[Check::Absent(long.clone())], &[]), Err(KvError::TooLarge(_))));
        assert!(matches!(kv.commit(&[], &[Write::SetStamped(long.clone(), Vec::new())]), Err(KvError::TooLarge(_))));
        assert!(matches!(kv.scan("", Some(&long), 10), Err(KvError::TooLarge(_))));
    });
}

#[test]
fn scans_past_their_prefix_are_empty_and_checked_deletes_and_repeated_checks_behave() {
    each_backend(|kv| {
        kv.commit(&[], &[set("a/1", "x"), set("a/2", "y"), set("b/1", "z")]).expect("seed");
        assert!(kv.scan("a/", Some("b"), 10).expect("scan").is_empty(), "start_after beyond the prefix");
        assert!(kv.scan("a/", Some("a/2"), 10).expect("scan").is_empty());
        // A delete guarded by the key's own version (PostgreSQL's fast path), then a stale one.
        let version = kv.get("a/1").expect("get").expect("present").version;
        kv.commit(&[Check::VersionIs("a/1".into(), version)], &[Write::Delete("a/1".into())]).expect("checked delete");
        assert_eq!(kv.get("a/1").expect("get"), None);
        let stale = kv.commit(&[Check::VersionIs("a/1".into(), version)], &[Write::Delete("a/1".into())]);
        assert!(matches!(stale, Err(KvError::Conflict)), "{stale:?}");
        // Deleting a key checked absent: nothing to delete, not a conflict.
        kv.commit(&[Check::Absent("a/1".into())], &[Write::Delete("a/1".into())]).expect("absent and deleted");
        // The same check twice holds; two checks of one key that cannot both hold conflict and write nothing.
        let version = kv.get("a/2").expect("get").expect("present").version;
        let twice = [Check::VersionIs("a/2".into(), version), Check::VersionIs("a/2".into(), version)];
        kv.commit(&twice, &[set("a/2", "y2")]).expect("a repeated check");
        let version = kv.get("a/2").expect("get").expect("present").version;
        let contradictory = [Check::VersionIs("a/2".into(), version), Check::Absent("a/2".into())];
        assert!(matches!(kv.commit(&contradictory, &[set("a/2", "no")]), Err(KvError::Conflict)));
        assert_eq!(kv.get("a/2").expect("get").expect("present").value, b"y2");
    });
}
