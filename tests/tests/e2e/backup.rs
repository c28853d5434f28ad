//! Backups of a serving gateway and restores, through the real binary: a
//! backup taken while documents keep arriving holds every one acknowledged
//! before it began, and a partner reading the change feed before the move
//! goes on after it from its saved cursor, seeing every entry once; a
//! backup cut short is refused whole; a store is moved to PostgreSQL and back.

use evogate_e2e::{ADMIN_TOKEN, Gateway, TestSchema, evogate_bin, evotor_table, post_json, postgres_url, request};
use serde_json::{Value, json};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const USER: &str = "01-000000000000001";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";

/// The Evotor plugin on `/`, every user entitled; `top` before its table.
fn shop_config(top: &str) -> String {
    format!("{top}\n{}", evotor_table("/", "", "billing_enforcement = \"off\""))
}

fn shop(top: &str) -> Gateway {
    Gateway::start(&shop_config(top))
}

fn evogate(args: &[&str]) -> Output {
    std::process::Command::new(evogate_bin())
        .args(args)
        .env("EVOGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("EVOGATE_LOG", "warn")
        .output()
        .expect("running evogate")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn user(gateway: &Gateway) -> String {
    let created = post_json(
        &gateway.url("/api/v1/user/create"),
        Some("server-secret"),
        &json!({"userId": USER, "username": "shop", "password": "correct horse"}),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    created.json()["token"].as_str().expect("token").to_owned()
}

/// Puts document `n` through the gateway at `base`; whether it was acknowledged.
fn put_document(base: &str, token: &str, n: usize) -> bool {
    let body = json!([{"uuid": format!("doc-{n:05}"), "type": "SELL", "version": "V1",
                       "closeDate": "2026-11-27T09:41:12.000+0000", "closeSum": "1"}]);
    let auth = format!("Bearer {token}");
    let reply = request(
        "PUT",
        &format!("{base}/api/v1/inventories/stores/{STORE}/documents"),
        &[("authorization", auth.as_str()), ("content-type", "application/json")],
        Some(body.to_string().as_bytes()),
    );
    reply.status == 200
}

/// Every feed entry after `after`, read a page at a time as a partner does.
fn feed_after(gateway: &Gateway, after: Option<&str>) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = after.map(str::to_owned);
    loop {
        let query = after.as_ref().map(|after| format!("&after={after}")).unwrap_or_default();
        let page = request(
            "GET",
            &gateway.url(&format!("/partner/v1/feed?limit=100{query}")),
            &[("authorization", "Bearer partner-secret")],
            None,
        )
        .json();
        let items = page["items"].as_array().expect("items").clone();
        if items.is_empty() {
            return entries;
        }
        after = page["next"].as_str().map(str::to_owned);
        entries.extend(items);
    }
}

fn documents_of(feed: &[Value]) -> Vec<String> {
    feed.iter()
        .filter(|entry| entry["kind"] == "document.received")
        .map(|entry| entry["data"]["id"].to_string())
        .collect()
}

#[test]
fn a_backup_taken_while_writes_go_on_restores_every_acknowledged_write_and_the_feed_goes_on_from_its_cursor() {
    let gateway = shop("");
    let token = user(&gateway);
    for n in 0..40 {
        assert!(put_document(&gateway.base, &token, n));
    }
    // A partner has read the feed this far and saved its cursor.
    let read = feed_after(&gateway, None);
    let cursor = read.last().expect("entries")["cursor"].as_str().expect("cursor").to_owned();

    // Writers keep going while the backup is taken.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let (stop, next) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(40)));
    let writer = {
        let (base, token, acknowledged, stop, next) =
            (gateway.base.clone(), token.clone(), acknowledged.clone(), stop.clone(), next.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if put_document(&base, &token, n) {
                    acknowledged.lock().expect("lock").push(n);
                }
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before: Vec<usize> = acknowledged.lock().expect("lock").clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("store.backup");
    let admin = gateway.admin.trim_start_matches("http://").to_owned();
    let backup = evogate(&["backup", "--to", &file.to_string_lossy(), "--admin", &admin]);
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    assert!(backup.status.success(), "{}", text(&backup));
    assert!(text(&backup).contains("records"), "{}", text(&backup));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).expect("backup").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup holds every merchant's cloud token");
    }
    let verified = evogate(&["store", "verify", "--file", &file.to_string_lossy()]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(text(&verified).contains("evotor:"), "{}", text(&verified));

    // Restored into another gateway's store: refused while it holds anything, then forced.
    let mut restored = shop("");
    user(&restored);
    restored.stop();
    let config = restored.config_path().to_string_lossy().into_owned();
    let refused = evogate(&["restore", "--from", &file.to_string_lossy(), "--config", &config]);
    assert!(!refused.status.success() && text(&refused).contains("not empty"), "{}", text(&refused));
    let done = evogate(&["restore", "--from", &file.to_string_lossy(), "--config", &config, "--force"]);
    assert!(done.status.success(), "{}", text(&done));
    let checked = evogate(&["store", "verify", "--config", &config]);
    assert!(checked.status.success(), "{}", text(&checked));
    restored.restart();

    let there = documents_of(&feed_after(&restored, None));
    for n in (0..40).chain(before) {
        assert!(
            there.contains(&format!("\"doc-{n:05}\"")),
            "document {n}, acknowledged before the backup, is restored"
        );
    }
    // The partner's saved cursor goes on: the entries after it, each once, as the original had them.
    let after_original: Vec<Value> = feed_after(&gateway, Some(&cursor));
    let after_restored: Vec<Value> = feed_after(&restored, Some(&cursor));
    assert!(!after_restored.is_empty());
    assert_eq!(after_restored, after_original[..after_restored.len()], "a prefix of the original's, cursors and all");
    // Every restored document can be read: no commit is half there.
    let auth = ("authorization", "Bearer partner-secret");
    for entry in after_restored.iter().filter(|entry| entry["kind"] == "document.received") {
        let id = entry["data"]["id"].as_str().expect("id");
        let read = request("GET", &restored.url(&format!("/partner/v1/stores/{STORE}/documents/{id}")), &[auth], None);
        assert_eq!(read.status, 200, "{id}");
    }
    // The store goes on where the backup left it: new writes land after the restored feed.
    assert!(put_document(&restored.base, &token, 99_999), "the user's token works on the restored store");
    let newest = feed_after(&restored, after_restored.last().and_then(|entry| entry["cursor"].as_str()));
    assert_eq!(documents_of(&newest), ["\"doc-99999\""]);
}

#[test]
fn a_backup_cut_short_or_altered_is_refused_and_nothing_is_written() {
    let gateway = shop("");
    user(&gateway);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("whole.backup");
    let admin = gateway.admin.trim_start_matches("http://").to_owned();
    assert!(evogate(&["backup", "--to", &file.to_string_lossy(), "--admin", &admin]).status.success());
    let bytes = std::fs::read(&file).expect("read");
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let verified = evogate(&["store", "verify", "--file", &cut.to_string_lossy()]);
    assert!(!verified.status.success() && text(&verified).contains("cut short"), "{}", text(&verified));

    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, format!("data_dir = {:?}\n{}", dir.path().join("data").to_string_lossy(), shop_config("")))
        .expect("write");
    let refused = evogate(&["restore", "--from", &cut.to_string_lossy(), "--config", &empty.to_string_lossy()]);
    assert!(!refused.status.success() && text(&refused).contains("not a usable backup"), "{}", text(&refused));
    let store = evogate(&["store", "verify", "--config", &empty.to_string_lossy()]);
    assert!(text(&store).contains(": 0 records"), "nothing was written: {}", text(&store));
}

#[test]
fn a_store_moves_from_redb_to_postgresql_and_back_and_the_feed_goes_on_from_its_cursor() {
    let Some(url) = postgres_url("a_store_moves_from_redb_to_postgresql_and_back") else { return };
    let schema = TestSchema::new(&url);
    let mut gateway = shop("");
    let token = user(&gateway);
    for n in 0..20 {
        assert!(put_document(&gateway.base, &token, n));
    }
    let feed = feed_after(&gateway, None);
    let cursor = feed[feed.len() / 2]["cursor"].as_str().expect("cursor").to_owned();
    gateway.stop();

    let dir = tempfile::tempdir().expect("temp dir");
    let postgres = dir.path().join("postgres.toml");
    std::fs::write(
        &postgres,
        format!(
            "data_dir = {:?}\n{}\n{}",
            dir.path().join("pg").to_string_lossy(),
            schema.store_table(&url),
            shop_config("")
        ),
    )
    .expect("write");
    let from = gateway.config_path().to_string_lossy().into_owned();
    let copied = evogate(&["store", "copy", "--from", &from, "--to", &postgres.to_string_lossy()]);
    assert!(copied.status.success(), "{}", text(&copied));

    let on_postgres = shop(&schema.store_table(&url));
    assert_eq!(
        feed_after(&on_postgres, Some(&cursor)),
        feed_after_cursor(&feed, &cursor),
        "the same entries after the cursor"
    );
    assert!(put_document(&on_postgres.base, &token, 500));
    drop(on_postgres);

    // And back, into an emptied redb store.
    let back = evogate(&["store", "copy", "--from", &postgres.to_string_lossy(), "--to", &from, "--force"]);
    assert!(back.status.success(), "{}", text(&back));
    gateway.restart();
    let after = feed_after(&gateway, Some(&cursor));
    assert_eq!(after[..after.len() - 1], feed_after_cursor(&feed, &cursor), "every entry once, in order");
    assert_eq!(documents_of(&after[after.len() - 1..]), ["\"doc-00500\""], "then what PostgreSQL took");
}

fn feed_after_cursor(feed: &[Value], cursor: &str) -> Vec<Value> {
    let at = feed.iter().position(|entry| entry["cursor"] == cursor).expect("the cursor");
    feed[at + 1..].to_vec()
}

/// Writes a backup file of `records` values of `size` bytes in namespace `filler`.
fn generated_backup(path: &std::path::Path, records: u64, size: usize) {
    use sha2::Digest as _;
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut hash = sha2::Sha256::new();
    let mut put = |bytes: &[u8]| {
        hash.update(bytes);
        out.write_all(bytes).expect("write");
    };
    put(b"EVOGATE-BACKUP\n");
    put(&1u32.to_le_bytes());
    // Random bytes (xorshift): the store keeps them at their size, as it would not a repeated byte.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let value: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    for n in 0..records {
        let key = format!("k/{n:08}");
        put(&[1]);
        put(&6u32.to_le_bytes());
        put(b"filler");
        put(&(key.len() as u32).to_le_bytes());
        put(key.as_bytes());
        put(&(n + 1).to_le_bytes());
        put(&(size as u32).to_le_bytes());
        put(&value);
    }
    put(&[0xFF]);
    put(&records.to_le_bytes());
    put(&records.to_le_bytes());
    let sum = hash.finalize();
    out.write_all(&sum).expect("write");
    out.flush().expect("flush");
}

#[test]
fn a_backup_killed_mid_way_leaves_the_store_whole_and_no_file_a_restore_would_take() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gateway = shop("");
    gateway.stop();
    let config = gateway.config_path().to_string_lossy().into_owned();
    let fill = dir.path().join("fill.backup");
    generated_backup(&fill, 60_000, 4096);
    let filled = evogate(&["restore", "--from", &fill.to_string_lossy(), "--config", &config, "--force"]);
    assert!(filled.status.success(), "{}", text(&filled));
    gateway.restart();
    let token = user(&gateway);
    let admin = gateway.admin.trim_start_matches("http://").to_owned();

    // The client killed mid-way: what it leaves is not a backup.
    let file = dir.path().join("killed.backup");
    let mut client = std::process::Command::new(evogate_bin())
        .args(["backup", "--to", &file.to_string_lossy(), "--admin", &admin])
        .env("EVOGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .spawn()
        .expect("backup");
    let partial = dir.path().join("killed.backup.partial");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::metadata(&partial).map_or(0, |meta| meta.len()) < 1 << 20 {
        assert!(std::time::Instant::now() < until, "the backup never started");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    client.kill().expect("SIGKILL");
    let _ = client.wait();
    assert!(!file.exists(), "no FILE but a whole one");
    let refused = evogate(&["store", "verify", "--file", &partial.to_string_lossy()]);
    assert!(!refused.status.success() && text(&refused).contains("cut short"), "{}", text(&refused));

    // The gateway killed mid-way: the client fails, keeps nothing, and the store is whole.
    std::fs::remove_file(&partial).expect("the partial file");
    let client = std::process::Command::new(evogate_bin())
        .args(["backup", "--to", &file.to_string_lossy(), "--admin", &admin])
        .env("EVOGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("backup");
    while std::fs::metadata(&partial).map_or(0, |meta| meta.len()) < 1 << 20 {
        assert!(std::time::Instant::now() < until + std::time::Duration::from_secs(20), "the backup never started");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    gateway.signal("KILL");
    let output = client.wait_with_output().expect("the client ends");
    assert!(!output.status.success(), "{}", text(&output));
    assert!(!file.exists() && !partial.exists(), "nothing kept of a backup cut short");
    let _ = gateway.wait_exit(std::time::Duration::from_secs(5));
    let store = evogate(&["store", "verify", "--config", &config]);
    assert!(store.status.success(), "{}", text(&store));
    assert!(text(&store).contains("filler: 60000"), "{}", text(&store));
    gateway.restart();
    assert!(put_document(&gateway.base, &token, 1), "the gateway serves on");
}

#[test]
fn a_restore_killed_mid_way_is_reported_by_verify_and_repaired_by_a_second_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gateway = shop("");
    gateway.stop();
    let config = gateway.config_path().to_string_lossy().into_owned();
    let fill = dir.path().join("fill.backup");
    generated_backup(&fill, 150_000, 4096);
    let mut restore = std::process::Command::new(evogate_bin())
        .args(["restore", "--from", &fill.to_string_lossy(), "--config", &config, "--force"])
        .env("EVOGATE_LOG", "warn")
        .spawn()
        .expect("restore");
    // Killed once it has written some of the records (the store file has grown).
    let store = gateway.data_dir().join("data/evogate.redb");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&store).map_or(0, |meta| meta.len()) < 64 << 20 {
        assert!(std::time::Instant::now() < until, "the restore never wrote");
        assert!(restore.try_wait().expect("wait").is_none(), "the restore ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    restore.kill().expect("SIGKILL");
    let _ = restore.wait();
    let verified = evogate(&["store", "verify", "--config", &config]);
    assert!(!verified.status.success(), "{}", text(&verified));
    assert!(text(&verified).contains("a restore did not finish"), "{}", text(&verified));
    let again = evogate(&["restore", "--from", &fill.to_string_lossy(), "--config", &config]);
    assert!(!again.status.success() && text(&again).contains("an unfinished restore"), "{}", text(&again));
    let repaired = evogate(&["restore", "--from", &fill.to_string_lossy(), "--config", &config, "--force"]);
    assert!(repaired.status.success(), "{}", text(&repaired));
    let verified = evogate(&["store", "verify", "--config", &config]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(text(&verified).contains("filler: 150000"), "{}", text(&verified));
}
