//! Faults under a stream of Evotor deliveries: store calls failing on
//! purpose (`[store.faults]`, in the test build only), a full disk under
//! redb, PostgreSQL stopped with `-m immediate` mid-stream, the gateway
//! killed during a deploy. After each: every delivery answered 200 is stored
//! once, whole; no delivery is stored in part; the feed has no hole and no
//! repeat; the gateway serves again without a restart where the fault
//! allows. Each test prints its figures (`cargo xtask test --test e2e --
//! --nocapture faults::` shows them).

use evogate_e2e::stream::{Account, Ledger, Sending, Stream, verify};
use evogate_e2e::{ADMIN_TOKEN, Gateway, evotor_config, evotor_wasm, request, toml_str};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn admin_auth() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

/// Faults injected so far, by kind, from the gateway's metrics.
fn injected(gateway: &Gateway) -> std::collections::BTreeMap<String, u64> {
    let auth = admin_auth();
    let metrics = request("GET", &gateway.admin_url("/metrics"), &[("authorization", auth.as_str())], None).text();
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("evogate_store_faults_injected_total{kind=\""))
        .filter_map(|rest| {
            let (kind, count) = rest.split_once("\"} ")?;
            Some((kind.to_owned(), count.trim().parse().ok()?))
        })
        .collect()
}

fn report(test: &str, faults: &str, ledger: &Ledger, kept: &evogate_e2e::stream::Kept) {
    println!(
        "{test}: faults {faults}; deliveries {} ({:?} by answer); batches sent {}, acknowledged {}, stored {} \
         ({} documents); lost {}",
        ledger.deliveries(),
        ledger.answers,
        ledger.sent.len(),
        ledger.acknowledged.len(),
        kept.batches,
        kept.documents,
        kept.lost,
    );
}

#[test]
fn injected_store_faults_lose_no_acknowledged_delivery() {
    // Per thousand calls: commits refused before and lost after they are durable,
    // reads failing, calls slower than the request's deadline.
    let gateway = Gateway::start(&evotor_config(
        "[limits]\nrequest_timeout_ms = 1000\n\
         [store.faults]\nseed = 11\ncommit_before = 60\ncommit_after = 60\nscan = 40\nget = 5\n\
         slow = 4\nslow_ms = 1500\nnamespaces = [\"evotor\"]\n",
    ));
    assert!(gateway.wait_for_log("store fault injection is on"));
    let account = Account::register(&gateway, 1);
    let stream =
        Stream::start(Arc::new(Mutex::new(gateway.base.clone())), &account, Sending { senders: 3, attempts: 4 });
    stream.wait_for(250);
    let ledger = stream.stop();
    let faults = injected(&gateway);
    let total: u64 = faults.values().sum();
    assert!(total >= 50, "faults were injected: {faults:?}");
    for kind in ["commit_before", "commit_after", "get", "slow"] {
        assert!(faults.get(kind).is_some_and(|n| *n > 0), "{kind} faults happened: {faults:?}");
    }
    assert!(ledger.answers.get(&503).is_some_and(|n| *n > 0), "some deliveries were refused: {:?}", ledger.answers);
    let kept = verify(&gateway, &account, &ledger);
    // Without a restart the gateway is ready and serves.
    assert_eq!(request("GET", &gateway.admin_url("/readyz"), &[], None).status, 200);
    report("injected store faults", &format!("{total} {faults:?}"), &ledger, &kept);
}

/// A tmpfs of `size` mounted at a directory; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .is_ok_and(|out| out.status.success());
        mounted.then(|| Self(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` with `filler` until a write fails.
fn fill(filler: &Path) {
    use std::io::Write as _;
    let mut file = std::fs::File::create(filler).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

#[test]
fn a_full_disk_refuses_deliveries_and_they_land_when_space_returns() {
    let mut mount = None;
    let mut gateway = Gateway::start_prepared(&[], |dir| mount = Tmpfs::mount(dir, "96m"), &evotor_config(""));
    let Some(_mount) = mount else {
        eprintln!("SKIPPED: mounting a tmpfs was refused (the full-disk test needs root)");
        return;
    };
    let account = Account::register(&gateway, 2);
    let base = Arc::new(Mutex::new(gateway.base.clone()));
    let stream = Stream::start(base.clone(), &account, Sending { senders: 2, attempts: 1000 });
    stream.wait_for(20);
    let filler = gateway.data_dir().join("data").join("filler");
    fill(&filler);
    // Deliveries now fail: the stream stalls with 503s (not 4xx, not 500).
    let full_since = Instant::now();
    let refused_before = stream.ledger().answers.get(&503).copied().unwrap_or(0);
    while stream.ledger().answers.get(&503).copied().unwrap_or(0) < refused_before + 20 {
        assert!(full_since.elapsed() < Duration::from_secs(60), "a full disk refuses deliveries");
        fill(&filler.with_extension(format!("{}", full_since.elapsed().as_millis())));
        std::thread::sleep(Duration::from_millis(50));
    }
    let acknowledged_while_full = stream.ledger().acknowledged.len();
    std::thread::sleep(Duration::from_millis(500));
    // Space returns: the same gateway process takes the stream again.
    for entry in std::fs::read_dir(gateway.data_dir().join("data")).expect("data dir").flatten() {
        if entry.file_name().to_string_lossy().starts_with("filler") {
            std::fs::remove_file(entry.path()).expect("removing the filler");
        }
    }
    stream.wait_for(20);
    assert!(gateway.wait_for_log("redb store reopened after an I/O error"), "{}", gateway.log());
    let ledger = stream.stop();
    let kept = verify(&gateway, &account, &ledger);
    report(
        "full disk",
        &format!("disk full for {:?}, {acknowledged_while_full} batches acknowledged before", full_since.elapsed()),
        &ledger,
        &kept,
    );
    // And after a restart, everything is still there.
    gateway.restart();
    *base.lock().expect("base") = gateway.base.clone();
    verify(&gateway, &account, &ledger);
}

/// A PostgreSQL cluster of the test's own, run as the `postgres` user.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn create() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .find(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())?;
        let dir = tempfile::tempdir().ok()?;
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .ok()?
            .success()
            .then_some(())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let cluster = Self { bin, dir, port };
        cluster.pg(&["initdb", "-D", &cluster.data(), "-A", "trust", "-U", "postgres", "--no-sync"])?;
        cluster.start().then_some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("pg").to_string_lossy().into_owned()
    }

    /// Runs a PostgreSQL program as the `postgres` user.
    fn pg(&self, args: &[&str]) -> Option<()> {
        let (program, rest) = args.split_first()?;
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(rest)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(())
    }

    fn start(&self) -> bool {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let log = self.dir.path().join("pg.log").to_string_lossy().into_owned();
        self.pg(&["pg_ctl", "-D", &self.data(), "-o", &options, "-l", &log, "-w", "start"]).is_some()
    }

    fn stop_immediately(&self) -> bool {
        self.pg(&["pg_ctl", "-D", &self.data(), "-m", "immediate", "-w", "stop"]).is_some()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_immediately();
    }
}

#[test]
fn postgres_stopped_immediately_mid_stream_loses_no_acknowledged_delivery() {
    let Some(cluster) = Cluster::create() else {
        eprintln!("SKIPPED: no PostgreSQL server binaries (initdb, pg_ctl) runnable as user postgres here");
        return;
    };
    let gateway = Gateway::start(&evotor_config(&format!(
        "[limits]\nrequest_timeout_ms = 3000\n[store]\nbackend = \"postgres\"\nurl = {}\nconnect_timeout_ms = 1000\n",
        toml_str(&cluster.url())
    )));
    let account = Account::register(&gateway, 3);
    let stream =
        Stream::start(Arc::new(Mutex::new(gateway.base.clone())), &account, Sending { senders: 3, attempts: 1000 });
    let mut stops = 0;
    for _ in 0..2 {
        stream.wait_for(15);
        assert!(cluster.stop_immediately(), "pg_ctl stop -m immediate");
        stops += 1;
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(request("GET", &gateway.admin_url("/readyz"), &[], None).status, 503, "not ready without its store");
        assert!(cluster.start(), "pg_ctl start");
    }
    // The same process serves again once the database is back.
    stream.wait_for(15);
    let ledger = stream.stop();
    let kept = verify(&gateway, &account, &ledger);
    assert_eq!(request("GET", &gateway.admin_url("/readyz"), &[], None).status, 200);
    report("PostgreSQL -m immediate", &format!("{stops} stops"), &ledger, &kept);
}

#[test]
fn a_gateway_killed_during_deploys_loses_no_acknowledged_delivery() {
    let mut gateway = Gateway::evotor("");
    let account = Account::register(&gateway, 4);
    let base = Arc::new(Mutex::new(gateway.base.clone()));
    let stream = Stream::start(base.clone(), &account, Sending { senders: 2, attempts: 1000 });
    let wasm = std::fs::read(evotor_wasm()).expect("plugin");
    let mut kills = 0;
    for delay_ms in [10u64, 60, 200] {
        stream.wait_for(10);
        let url = gateway.admin_url("/plugins/evotor");
        let build = wasm.clone();
        let deploying = std::thread::spawn(move || {
            let auth = admin_auth();
            evogate_e2e::try_request("PUT", &url, &[("authorization", auth.as_str())], &build)
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        gateway.signal("KILL");
        kills += 1;
        let _ = deploying.join();
        let _ = gateway.wait_exit(Duration::from_secs(10));
        gateway.restart();
        *base.lock().expect("base") = gateway.base.clone();
    }
    stream.wait_for(10);
    let ledger = stream.stop();
    let kept = verify(&gateway, &account, &ledger);
    report("SIGKILL during deploys", &format!("{kills} kills"), &ledger, &kept);
}
