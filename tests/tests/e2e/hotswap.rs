//! Hot swap under load, end to end: deploys, refusals, rollback, restart,
//! the admin API's health and metrics, and the `evogate` CLI.

use evogate_e2e::{ADMIN_TOKEN, Gateway, Reply, evogate_bin, guest_wasm, guest_wasm_version, request, toml_str};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const AUTH: (&str, &str) = ("authorization", "Bearer admin-secret");

fn swap_gateway() -> Gateway {
    Gateway::start(&format!(
        "[[plugins]]\nname = \"swap\"\nroute = \"/swap\"\nwasm = {}\n",
        toml_str(&guest_wasm().to_string_lossy())
    ))
}

fn deploy(gateway: &Gateway, bytes: &[u8]) -> Reply {
    request("PUT", &gateway.admin_url("/plugins/swap"), &[AUTH], Some(bytes))
}

fn served_version(gateway: &Gateway) -> String {
    let reply = request("GET", &gateway.url("/swap/version"), &[], None);
    assert_eq!(reply.status, 200);
    reply.header("x-plugin-version").unwrap_or_default().to_owned()
}

/// What the load clients saw.
#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    failed: Vec<String>,
    versions: BTreeMap<String, usize>,
}

/// 8 keep-alive clients hammering `/swap/version` until `stop`.
fn load(base: String, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Seen>> {
    (0..8)
        .map(|_| {
            let url = format!("{base}/swap/version");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let agent = ureq::Agent::new_with_config(
                    ureq::config::Config::builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(10)))
                        .build(),
                );
                let mut seen = Seen::default();
                while !stop.load(Ordering::Relaxed) {
                    match agent.get(&url).call() {
                        Ok(response) if response.status() == 200 => {
                            let version = response
                                .headers()
                                .get("x-plugin-version")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("?")
                                .to_owned();
                            *seen.versions.entry(version).or_default() += 1;
                            seen.ok += 1;
                        }
                        Ok(response) => seen.failed.push(format!("status {}", response.status())),
                        Err(err) => seen.failed.push(err.to_string()),
                    }
                }
                seen
            })
        })
        .collect()
}

#[test]
fn fifty_deploys_under_load_drop_no_request() {
    let gateway = swap_gateway();
    let v1 = std::fs::read(guest_wasm()).expect("v1");
    let v2 = std::fs::read(guest_wasm_version("2.0.0")).expect("v2");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(gateway.base.clone(), stop.clone());
    let started = Instant::now();

    let mut last = "1.0.0";
    for round in 0..50 {
        let (bytes, version) = if round % 2 == 0 { (&v2, "2.0.0") } else { (&v1, "1.0.0") };
        let reply = deploy(&gateway, bytes);
        assert_eq!(reply.status, 200, "deploy {round}: {}", reply.text());
        let outcome = reply.json();
        assert_eq!(
            (outcome["changed"].as_bool(), outcome["deployed"]["version"].as_str()),
            (Some(true), Some(version))
        );
        last = version;
        if round == 25 {
            // A broken component in the middle is refused; the live version serves on.
            let refused = deploy(&gateway, b"\0asm\x01\0\0\0");
            assert_eq!(refused.status, 400, "{}", refused.text());
            assert!(refused.text().contains("not a component"), "{}", refused.text());
            let empty_component = deploy(&gateway, b"\0asm\x0d\0\x01\0");
            assert_eq!(empty_component.status, 422, "{}", empty_component.text());
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    // Every new request after the last deploy is served by it.
    for _ in 0..20 {
        assert_eq!(served_version(&gateway), last);
    }
    while started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = Seen::default();
    for client in clients {
        let seen = client.join().expect("client");
        total.ok += seen.ok;
        total.failed.extend(seen.failed);
        for (version, count) in seen.versions {
            *total.versions.entry(version).or_default() += count;
        }
    }
    assert!(
        total.failed.is_empty(),
        "{} failed requests, e.g. {:?}",
        total.failed.len(),
        &total.failed[..total.failed.len().min(5)]
    );
    assert!(total.ok > 1000, "the load ran: {} requests", total.ok);
    let versions: Vec<&str> = total.versions.keys().map(String::as_str).collect();
    assert_eq!(versions, ["1.0.0", "2.0.0"], "every answer came from one of the two versions");
    eprintln!("{} requests during 50 deploys, none failed: {:?}", total.ok, total.versions);
}

#[test]
fn unchanged_deploy_is_a_no_op_and_rollback_and_restart_keep_the_last_deployed() {
    let mut gateway = swap_gateway();
    let v1 = std::fs::read(guest_wasm()).expect("v1");
    let v2 = std::fs::read(guest_wasm_version("2.0.0")).expect("v2");

    let same = deploy(&gateway, &v1);
    assert_eq!((same.status, same.json()["changed"].as_bool()), (200, Some(false)));
    assert_eq!(request("POST", &gateway.admin_url("/plugins/swap/rollback"), &[AUTH], None).status, 409);

    assert_eq!(deploy(&gateway, &v2).status, 200);
    assert_eq!(served_version(&gateway), "2.0.0");
    let plugins = request("GET", &gateway.admin_url("/plugins"), &[AUTH], None).json();
    assert_eq!(plugins[0]["live"]["version"], "2.0.0");
    assert_eq!(plugins[0]["previous"][0]["version"], "1.0.0");
    assert_eq!(plugins[0]["route"], "/swap");
    assert_eq!(plugins[0]["live"]["sha256"].as_str().map(str::len), Some(64));

    gateway.signal("HUP");
    assert!(gateway.wait_for_log("reload: nothing changed"));
    assert_eq!(served_version(&gateway), "2.0.0", "SIGHUP changes nothing");

    gateway.restart();
    assert_eq!(served_version(&gateway), "2.0.0", "a restart serves the last deployed version");
    assert!(gateway.wait_for_log("serving the last deployed version"));

    let rolled = request("POST", &gateway.admin_url("/plugins/swap/rollback"), &[AUTH], None);
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    assert_eq!(served_version(&gateway), "1.0.0");
    gateway.restart();
    assert_eq!(served_version(&gateway), "1.0.0", "the rollback is durable too");
}

#[test]
fn concurrent_deploys_are_serialized_and_each_answer_says_what_is_live() {
    let gateway = swap_gateway();
    let v2 = std::fs::read(guest_wasm_version("2.0.0")).expect("v2");
    let v1 = std::fs::read(guest_wasm()).expect("v1");
    let url = gateway.admin_url("/plugins/swap");
    let racers: Vec<_> = [v2, v1, Vec::from(&b"garbage"[..])]
        .into_iter()
        .map(|bytes| {
            let url = url.clone();
            std::thread::spawn(move || request("PUT", &url, &[AUTH], Some(&bytes)))
        })
        .collect();
    let replies: Vec<Reply> = racers.into_iter().map(|r| r.join().expect("racer")).collect();
    assert_eq!(replies[2].status, 400);
    let live = served_version(&gateway);
    for reply in &replies[..2] {
        assert_eq!(reply.status, 200, "{}", reply.text());
        let live_then = reply.json()["live"]["version"].as_str().unwrap_or_default().to_owned();
        assert!(live_then == "1.0.0" || live_then == "2.0.0");
    }
    let plugins = request("GET", &gateway.admin_url("/plugins"), &[AUTH], None).json();
    assert_eq!(plugins[0]["live"]["version"].as_str(), Some(live.as_str()), "the last one won and stays live");
}

#[test]
fn admin_api_needs_its_token_and_reports_health_and_metrics() {
    let gateway = swap_gateway();
    assert_eq!(request("GET", &gateway.admin_url("/healthz"), &[], None).status, 200);
    assert_eq!(request("GET", &gateway.admin_url("/readyz"), &[], None).status, 200);
    for path in ["/plugins", "/metrics"] {
        let reply = request("GET", &gateway.admin_url(path), &[("authorization", "Bearer wrong")], None);
        assert_eq!(reply.status, 401, "{path}");
    }
    assert_eq!(deploy_without_token(&gateway).status, 401);
    assert_eq!(request("PUT", &gateway.admin_url("/plugins/nope"), &[AUTH], Some(b"\0asm\x0d\0\x01\0")).status, 404);

    served_version(&gateway);
    let _ = request("GET", &gateway.url("/swap/panic"), &[], None);
    let metrics = request("GET", &gateway.admin_url("/metrics"), &[AUTH], None).text();
    for series in [
        "evogate_requests_total{",
        "evogate_request_duration_seconds",
        "evogate_plugin_failures_total{",
        "evogate_instances_in_use",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    assert!(metrics.contains("kind=\"trap\""), "{metrics}");
}

fn deploy_without_token(gateway: &Gateway) -> Reply {
    request("PUT", &gateway.admin_url("/plugins/swap"), &[], Some(b"\0asm\x0d\0\x01\0"))
}

#[test]
fn the_cli_deploys_lists_and_rolls_back() {
    let gateway = swap_gateway();
    let addr = gateway.admin.trim_start_matches("http://").to_owned();
    let cli = |args: &[&str]| {
        std::process::Command::new(evogate_bin())
            .args(args)
            .args(["--admin", &addr])
            .env("EVOGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("EVOGATE_LOG", "warn")
            .output()
            .expect("running evogate")
    };
    let v2 = guest_wasm_version("2.0.0");
    let deployed = cli(&["deploy", "swap", &v2.to_string_lossy()]);
    let stdout = String::from_utf8_lossy(&deployed.stdout);
    assert!(deployed.status.success(), "{stdout} {}", String::from_utf8_lossy(&deployed.stderr));
    assert!(stdout.contains("version 2.0.0"), "{stdout}");

    let listed = cli(&["plugins", "--json"]);
    let plugins: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(plugins[0]["live"]["version"], "2.0.0");

    let rolled = cli(&["rollback", "swap"]);
    assert!(rolled.status.success());
    assert!(String::from_utf8_lossy(&rolled.stdout).contains("1.0.0"));
    assert_eq!(served_version(&gateway), "1.0.0");

    let bad_file = std::env::temp_dir().join("evogate-not-a-component.wasm");
    std::fs::write(&bad_file, b"\0asm\x01\0\0\0").expect("write");
    let refused = cli(&["deploy", "swap", &bad_file.to_string_lossy()]);
    assert!(!refused.status.success(), "a refused deploy exits non-zero");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a component"));
    let wrong_token = std::process::Command::new(evogate_bin())
        .args(["plugins", "--admin", &addr, "--token", "wrong"])
        .output()
        .expect("running evogate");
    assert!(!wrong_token.status.success());
}

#[test]
fn a_damaged_live_artifact_is_not_served_after_a_restart_the_last_intact_version_is() {
    let mut gateway = swap_gateway();
    let v2 = std::fs::read(guest_wasm_version("2.0.0")).expect("the 2.0.0 build");
    assert_eq!(deploy(&gateway, &v2).status, 200);
    assert_eq!(served_version(&gateway), "2.0.0");
    let dir = gateway.data_dir().join("data").join("plugins").join("swap");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).expect("state.json")).expect("json");
    let live = state["active"]["sha256"].as_str().expect("sha").to_owned();
    gateway.stop();
    // A disk error or a hand edit: the bytes no longer hash to what state.json records.
    let mut damaged = v2.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(dir.join(format!("{live}.wasm")), damaged).expect("damage");
    gateway.restart();
    assert_eq!(served_version(&gateway), "1.0.0", "the previous kept version, intact");
    assert!(gateway.wait_for_log("does not match the sha256"), "{}", gateway.log());
    assert!(gateway.wait_for_log("falling back to an earlier kept version"), "{}", gateway.log());
    let listed = request("GET", &gateway.admin_url("/plugins"), &[AUTH], None).json();
    assert_eq!(listed[0]["live"]["version"], "1.0.0");
}

#[test]
fn the_compilation_cache_is_private_to_the_gateways_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let gateway = swap_gateway();
    let mode =
        std::fs::metadata(gateway.data_dir().join("data").join("cache")).expect("cache dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
}

#[test]
fn the_admin_api_refuses_an_upload_over_its_limit_without_reading_it_all() {
    let gateway = Gateway::start(&format!(
        "[admin]\nmax_plugin_bytes = 1048576\n[[plugins]]\nname = \"swap\"\nroute = \"/swap\"\nwasm = {}\n",
        toml_str(&guest_wasm().to_string_lossy())
    ));
    // The head alone, declaring 3 MiB: the answer comes before a byte of the body is sent.
    use std::io::{Read as _, Write as _};
    let addr = gateway.admin.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        stream,
        "PUT /plugins/swap HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-length: {}\r\n\r\n",
        3 << 20
    )
    .expect("send the head");
    let mut answer = [0u8; 4096];
    let read = stream.read(&mut answer).expect("an answer without the body");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("1048576"), "{answer}");
    assert_eq!(served_version(&gateway), "1.0.0");
}

#[test]
fn readiness_answers_at_once_while_every_request_slot_is_busy() {
    let gateway = Gateway::start(&format!(
        "[limits]\nmax_concurrent_requests = 2\n[[plugins]]\nname = \"swap\"\nroute = \"/swap\"\nwasm = {}\n",
        toml_str(&guest_wasm().to_string_lossy())
    ));
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let url = gateway.url("/swap/sleep?ms=1500");
            std::thread::spawn(move || request("GET", &url, &[], None).status)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    assert_eq!(request("GET", &gateway.admin_url("/readyz"), &[], None).status, 200);
    assert!(asked.elapsed() < Duration::from_millis(300), "{:?}", asked.elapsed());
    for client in busy {
        assert_eq!(client.join().expect("client"), 200);
    }
}

#[test]
fn a_gateway_killed_during_deploys_restarts_on_a_consistent_version() {
    let mut gateway = swap_gateway();
    let builds =
        [std::fs::read(guest_wasm_version("2.0.0")).expect("2.0.0"), std::fs::read(guest_wasm()).expect("1.0.0")];
    for (round, delay_ms) in [5u64, 20, 45, 80, 150].into_iter().enumerate() {
        let url = gateway.admin_url("/plugins/swap");
        let build = builds[round % 2].clone();
        let deploying = std::thread::spawn(move || evogate_e2e::try_request("PUT", &url, &[AUTH], &build));
        std::thread::sleep(Duration::from_millis(delay_ms));
        gateway.signal("KILL");
        let _ = deploying.join();
        let _ = gateway.wait_exit(Duration::from_secs(10));
        gateway.restart();
        // Whatever the moment of the crash: the version served is the one recorded, intact.
        let dir = gateway.data_dir().join("data").join("plugins").join("swap");
        let listed = request("GET", &gateway.admin_url("/plugins"), &[AUTH], None).json();
        let live = listed[0]["live"]["sha256"].as_str().expect("sha").to_owned();
        let served = served_version(&gateway);
        assert!(["1.0.0", "2.0.0"].contains(&served.as_str()), "round {round}: {served}");
        assert_eq!(listed[0]["live"]["version"], served, "round {round}");
        if let Ok(bytes) = std::fs::read(dir.join("state.json")) {
            let state: serde_json::Value = serde_json::from_slice(&bytes).expect("state.json is whole");
            assert_eq!(state["active"]["sha256"], live.as_str(), "round {round}: state.json names what is served");
        }
        let artifact = std::fs::read(dir.join(format!("{live}.wasm"))).expect("the live artifact is kept");
        assert!(builds.contains(&artifact), "round {round}: the artifact is whole");
    }
}

#[test]
fn idle_admin_connections_are_capped_apart_from_the_public_listener() {
    use std::io::Read as _;
    let gateway = Gateway::guest("[limits]\nmax_connections = 100", "");
    let admin = gateway.admin_url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    // Far more idle admin connections than the admin listener takes.
    let idle: Vec<std::net::TcpStream> = (0..90).filter_map(|_| std::net::TcpStream::connect(&admin).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let closed = idle
        .iter()
        .filter(|stream| {
            let mut stream = *stream;
            stream.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            matches!(stream.read(&mut [0u8; 1]), Ok(0))
        })
        .count();
    assert!(closed >= 90 - 64, "{closed} of 90 idle admin connections closed at once");
    assert_eq!(evogate_e2e::get(&gateway.url("/g/version")).status, 200, "the public listener is untouched");
    // Held idle connections never lock out the health checks: the oldest idle one makes room.
    for probe in ["/healthz", "/readyz", "/healthz"] {
        let started = std::time::Instant::now();
        let health = request("GET", &gateway.admin_url(probe), &[], None);
        assert_eq!(health.status, 200, "{probe} with {} idle admin connections held", idle.len());
        assert!(started.elapsed() < Duration::from_secs(2), "{probe} took {:?}", started.elapsed());
    }
    drop(idle);
    std::thread::sleep(Duration::from_millis(100));
    let health = request("GET", &gateway.admin_url("/healthz"), &[], None);
    assert_eq!(health.status, 200, "the admin listener serves once they are gone");
}
