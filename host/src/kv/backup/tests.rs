use super::*;
use crate::kv::{Check, MemoryBackend, RedbBackend, Write};

fn set(key: &str, value: &str) -> Write {
    Write::Set(key.into(), value.as_bytes().to_vec())
}

/// A store with two namespaces, a stamped log, a key written twice and one deleted.
fn filled(backend: &dyn Backend) {
    backend.commit("evotor", &[], &[set("users/1", "a"), set("users/2", "b")]).expect("commit");
    backend.commit("evotor", &[], &[Write::SetStamped("feed/".into(), b"one".to_vec())]).expect("stamped");
    backend.commit("evotor", &[], &[set("users/1", "a2"), Write::Delete("users/2".into())]).expect("commit");
    backend.commit("evogate:deploy", &[], &[set("evotor/state", "{}")]).expect("commit");
    backend.commit("loyalty", &[], &[Write::SetStamped("log/".into(), vec![0, 255, 1])]).expect("stamped");
}

fn everything(backend: &dyn Backend) -> (Vec<Record>, u64) {
    let mut snapshot = backend.snapshot().expect("snapshot");
    let mut all = Vec::new();
    loop {
        let chunk = snapshot.next(1).expect("chunk");
        if chunk.is_empty() {
            return (all, snapshot.last_version());
        }
        all.extend(chunk);
    }
}

fn backup_of(backend: &dyn Backend) -> Vec<u8> {
    let mut snapshot = backend.snapshot().expect("snapshot");
    write_snapshot(snapshot.as_mut(), Vec::new(), |_| {}).expect("backup").0
}

fn restore_into(target: &dyn Backend, file: &[u8]) -> Result<Summary, FileError> {
    verify(file)?;
    let mut reader = Reader::new(file)?;
    let mut last = 0;
    let records = std::iter::from_fn(|| match reader.next_record() {
        Ok(Some(record)) => Some(Ok(record)),
        Ok(None) => {
            last = reader.last_version().unwrap_or_default();
            None
        }
        Err(err) => Some(Err(err)),
    });
    let summary = restore_records(target, records.collect::<Vec<_>>().into_iter(), || 0, |_| {})?;
    target.restore(&[], last)?;
    Ok(Summary { last_version: last, ..summary })
}

#[test]
fn every_record_version_and_the_counter_come_back_on_every_backend() {
    let temp = tempfile::tempdir().expect("temp dir");
    let redb = RedbBackend::open(&temp.path().join("a.redb")).expect("redb");
    let memory = MemoryBackend::default();
    for (n, source) in [&redb as &dyn Backend, &memory].into_iter().enumerate() {
        filled(source);
        let (records, last_version) = everything(source);
        assert_eq!(last_version, 5, "{}", source.describe());
        let keys: Vec<(&str, &str)> = records.iter().map(|r| (r.ns.as_str(), r.key.as_str())).collect();
        assert_eq!(
            keys,
            [
                ("evogate:deploy", "evotor/state"),
                ("evotor", "feed/00000000000000000002.000000"),
                ("evotor", "users/1"),
                ("loyalty", "log/00000000000000000005.000000"),
            ]
        );
        assert_eq!(records[2].entry, Entry { value: b"a2".to_vec(), version: 3 });

        let file = backup_of(source);
        let summary = verify(file.as_slice()).expect("a good backup");
        assert_eq!((summary.records, summary.last_version), (4, 5));
        assert_eq!(summary.namespaces.get("evotor"), Some(&2));
        for target in [
            Box::new(MemoryBackend::default()) as Box<dyn Backend>,
            Box::new(RedbBackend::open(&temp.path().join(format!("target-{n}.redb"))).expect("redb")),
        ] {
            restore_into(target.as_ref(), &file).expect("restored");
            assert_eq!(everything(target.as_ref()), (records.clone(), 5));
            // The counter goes on from the backup's: a new commit never reuses a version.
            target
                .commit("evotor", &[Check::VersionIs("users/1".into(), 3)], &[set("users/1", "a3")])
                .expect("same version");
            assert_eq!(target.get("evotor", "users/1").expect("get").map(|e| e.version), Some(6));
        }
    }
}

#[test]
fn a_truncated_or_altered_backup_is_refused_whole() {
    let memory = MemoryBackend::default();
    filled(&memory);
    let file = backup_of(&memory);
    for cut in [0, 10, MAGIC.len() + 4, file.len() / 2, file.len() - 33, file.len() - 1] {
        let err = verify(&file[..cut]).expect_err("cut short");
        assert!(matches!(err, FileError::Corrupt(_)), "{cut}: {err}");
    }
    let mut altered = file.clone();
    let at = altered.windows(2).position(|w| w == b"a2").expect("a value");
    altered[at] = b'b';
    assert!(verify(altered.as_slice()).expect_err("altered").to_string().contains("checksum"));
    let target = MemoryBackend::default();
    assert!(restore_into(&target, &altered).is_err());
    assert!(everything(&target).0.is_empty(), "nothing written");
    let mut longer = file.clone();
    longer.push(0);
    assert!(verify(longer.as_slice()).is_err(), "bytes after the end");
    let mut future = file;
    future[MAGIC.len()] = 2;
    assert!(verify(future.as_slice()).expect_err("format 2").to_string().contains("format 2"));
}

#[test]
fn a_hostile_length_is_refused_before_anything_is_allocated() {
    let mut file = MAGIC.to_vec();
    file.extend(FORMAT.to_le_bytes());
    file.push(RECORD);
    file.extend(3u32.to_le_bytes());
    file.extend(b"evo");
    file.extend(u32::MAX.to_le_bytes());
    let err = verify(file.as_slice()).expect_err("a 4 GiB key");
    assert!(err.to_string().contains("over the store's"), "{err}");
}

#[test]
fn a_snapshot_is_one_moment_whatever_is_written_while_it_is_read() {
    let temp = tempfile::tempdir().expect("temp dir");
    let redb = RedbBackend::open(&temp.path().join("s.redb")).expect("redb");
    for n in 0..50 {
        redb.commit("p", &[], &[set(&format!("k/{n:03}"), "v")]).expect("commit");
    }
    let mut snapshot = redb.snapshot().expect("snapshot");
    let first = snapshot.next(1).expect("first chunk");
    for n in 0..50 {
        redb.commit("p", &[], &[set(&format!("k/{n:03}"), "changed"), set(&format!("z/{n}"), "new")]).expect("commit");
    }
    let mut seen = first;
    loop {
        let chunk = snapshot.next(1).expect("chunk");
        if chunk.is_empty() {
            break;
        }
        seen.extend(chunk);
    }
    assert_eq!(seen.len(), 50);
    assert!(seen.iter().all(|record| record.entry.value == b"v"), "as of the snapshot's moment");
    assert_eq!(snapshot.last_version(), 50);
}

#[test]
fn clearing_a_store_leaves_no_record_and_keeps_the_counter() {
    let temp = tempfile::tempdir().expect("temp dir");
    let redb = RedbBackend::open(&temp.path().join("c.redb")).expect("redb");
    filled(&redb);
    redb.clear().expect("clear");
    assert_eq!(everything(&redb), (Vec::new(), 5));
    redb.commit("p", &[], &[set("k", "v")]).expect("commit");
    assert_eq!(redb.get("p", "k").expect("get").map(|e| e.version), Some(6));
}

#[test]
fn a_restore_goes_into_an_empty_store_unless_forced_and_one_left_unfinished_is_reported_then_repaired() {
    let temp = tempfile::tempdir().expect("temp dir");
    let source = MemoryBackend::default();
    filled(&source);
    let path = temp.path().join("store.backup");
    std::fs::write(&path, backup_of(&source)).expect("write");

    let target = RedbBackend::open(&temp.path().join("t.redb")).expect("redb");
    target.commit("other", &[], &[set("k", "v")]).expect("commit");
    let refused = restore_file(&target, &path, false, |_| {}).expect_err("not empty");
    assert!(refused.to_string().contains("\"other\" has records"), "{refused}");
    let restored = restore_file(&target, &path, true, |_| {}).expect("forced");
    assert_eq!((restored.records, restored.last_version), (4, 5));
    let (records, _) = everything(&target);
    assert_eq!(records, everything(&source).0, "the backup's records only");
    assert!(inspect(&target).expect("inspect").problems.is_empty());

    // A restore that stops half-way: the mark stays, `verify` reports it, a forced restore repairs it.
    let broken = RedbBackend::open(&temp.path().join("b.redb")).expect("redb");
    prepare(&broken, false, "a test").expect("prepared");
    broken.restore(&records[..2], 0).expect("half");
    let inspection = inspect(&broken).expect("inspect");
    assert!(inspection.problems[0].contains("did not finish"), "{:?}", inspection.problems);
    assert!(matches!(restore_file(&broken, &path, false, |_| {}), Err(RestoreError::NotEmpty(_))));
    restore_file(&broken, &path, true, |_| {}).expect("repaired");
    assert!(inspect(&broken).expect("inspect").problems.is_empty());
    assert_eq!(everything(&broken).0, records);

    // A file cut short writes nothing, even with --force.
    let cut = temp.path().join("cut.backup");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&cut, &bytes[..bytes.len() - 40]).expect("write");
    let empty = MemoryBackend::default();
    assert!(matches!(restore_file(&empty, &cut, true, |_| {}), Err(RestoreError::File(FileError::Corrupt(_)))));
    assert!(everything(&empty).0.is_empty());
}

#[test]
fn a_copy_between_backends_keeps_versions_and_the_counter() {
    let temp = tempfile::tempdir().expect("temp dir");
    let redb = RedbBackend::open(&temp.path().join("from.redb")).expect("redb");
    filled(&redb);
    let memory = MemoryBackend::default();
    copy_store(&redb, &memory, false, |_| {}).expect("copied");
    assert_eq!(everything(&memory).0, everything(&redb).0);
    let back = RedbBackend::open(&temp.path().join("back.redb")).expect("redb");
    copy_store(&memory, &back, false, |_| {}).expect("back");
    assert_eq!(everything(&back).0, everything(&redb).0);
    // One commit past the counter: the restore's mark is removed with a commit of its own.
    assert!(everything(&back).1 >= 5);
}

#[test]
fn postgres_backs_up_restores_and_copies_like_the_others() {
    let Some((postgres, _guard)) = crate::kv::conformance::postgres() else { return };
    let temp = tempfile::tempdir().expect("temp dir");
    filled(postgres.as_ref());
    // Namespaces in bytewise order whatever the database's collation: `evogate:…` before `evotor`.
    postgres.commit("Zeta", &[], &[set("k", "v")]).expect("commit");
    let (records, last_version) = everything(postgres.as_ref());
    assert_eq!(last_version, 6);
    let names: Vec<&str> = records.iter().map(|r| r.ns.as_str()).collect();
    assert_eq!(names, ["Zeta", "evogate:deploy", "evotor", "evotor", "loyalty"]);
    let file = backup_of(postgres.as_ref());
    assert_eq!(verify(file.as_slice()).expect("whole").records, 5);

    let redb = RedbBackend::open(&temp.path().join("from-postgres.redb")).expect("redb");
    copy_store(postgres.as_ref(), &redb, false, |_| {}).expect("to redb");
    assert_eq!(everything(&redb).0, records);
    // Back into PostgreSQL, emptied first: the same records, the counter goes on past them.
    copy_store(&redb, postgres.as_ref(), true, |_| {}).expect("back");
    assert_eq!(everything(postgres.as_ref()).0, records);
    postgres.commit("evotor", &[Check::VersionIs("users/1".into(), 3)], &[set("users/1", "x")]).expect("same version");
    assert!(postgres.get("evotor", "users/1").expect("get").expect("there").version > 6);
}
