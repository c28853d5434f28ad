//! End to end: the real `evogate` binary, the real plugins, real HTTP.
//!
//! - the Evotor plugin: the cloud token is stored and survives a restart;
//!   Evotor-format 404 / 405 / 413 answers; the gateway's own errors in each
//!   route's format (Evotor's, or RFC 9457 problems);
//! - hostile plugins: an endless loop meets the deadline while other requests
//!   are served; unbounded allocation and panics fail alone;
//! - isolation: two plugins on two routes never see each other's keys;
//! - plugins built against every earlier world (0.1.0, 0.2.0, 0.2.1) run beside the current one (0.2.2).

use evogate_e2e::{
    ADMIN_TOKEN, Gateway, evotor_wasm, get, guest_wasm, guest_wasm_version, plugin_table, post_chunked, post_json,
    request, toml_str,
};
use serde_json::json;
use std::time::{Duration, Instant};

const USER: &str = "01-000000000000001";

/// Two instances of the test guest, `alpha` on `/alpha` and `beta` on `/beta`.
fn guest_gateway(limits: &str) -> Gateway {
    let wasm = guest_wasm();
    Gateway::start(&format!(
        "{limits}\n{}{}",
        plugin_table("alpha", &wasm, "[plugins.config]\ngreeting = \"hello alpha\""),
        plugin_table("beta", &wasm, ""),
    ))
}

#[test]
fn cloud_token_is_stored_and_survives_a_restart() {
    let mut gateway = Gateway::evotor("");
    let body = json!({"userId": USER, "token": "evotor-cloud-token"});
    let stored = post_json(&gateway.url("/api/v1/user/token"), Some("server-secret"), &body);
    assert_eq!(stored.status, 200, "{}", stored.text());

    gateway.restart();
    let user = request(
        "GET",
        &gateway.url(&format!("/partner/v1/users/{USER}")),
        &[("authorization", "Bearer partner-secret")],
        None,
    );
    assert_eq!(user.status, 200, "{}", user.text());
    assert_eq!(user.json()["cloudToken"]["last4"], "oken", "present, only its last characters shown");
    let cloud = request(
        "GET",
        &gateway.url(&format!("/partner/v1/users/{USER}/cloud-token")),
        &[("authorization", "Bearer partner-secret")],
        None,
    );
    assert_eq!(cloud.json()["token"], "evotor-cloud-token");
    assert!(gateway.wait_for_log("cloud token of user"), "reading it is logged");
    assert!(!gateway.log().contains("evotor-cloud-token"), "the token is never logged");
}

#[test]
fn server_endpoints_refuse_wrong_credentials() {
    let gateway = Gateway::evotor("");
    let body = json!({"userId": USER, "token": "t"});
    for bearer in [None, Some("wrong")] {
        let reply = post_json(&gateway.url("/api/v1/user/token"), bearer, &body);
        assert_eq!((reply.status, reply.error_code()), (401, Some(1001)));
    }
    let bad =
        post_json(&gateway.url("/api/v1/user/token"), Some("server-secret"), &json!({"userId": "1", "token": "t"}));
    assert_eq!((bad.status, bad.error_code()), (400, Some(2003)));
    assert_eq!(bad.json()["errors"][0]["subject"], "userId");
}

#[test]
fn unknown_path_and_wrong_method_answer_in_evotor_format() {
    let gateway = Gateway::evotor("");
    let missing = get(&gateway.url("/api/v1/no-such-endpoint"));
    assert_eq!((missing.status, missing.error_code()), (404, Some(404)));
    let wrong_method = get(&gateway.url("/api/v1/user/token"));
    assert_eq!((wrong_method.status, wrong_method.error_code()), (405, Some(405)));
    assert_eq!(wrong_method.header("allow"), Some("POST"));
}

#[test]
fn a_path_no_plugin_serves_is_404_from_the_gateway() {
    let gateway = guest_gateway("");
    let reply = get(&gateway.url("/gamma/version"));
    assert_eq!((reply.status, reply.problem()), (404, Some((404, "not found".into()))), "{}", reply.text());
    let prefix_only = get(&gateway.url("/alphabet/version"));
    assert_eq!(prefix_only.status, 404, "routes match whole segments");
}

#[test]
fn oversized_bodies_get_413_with_or_without_content_length_in_the_format_of_their_route() {
    let guest = plugin_table("g", &guest_wasm(), "");
    let gateway = Gateway::evotor(&format!("[limits]\nmax_body_bytes = 1024\n{guest}"));
    let big = vec![b'x'; 4096];
    let declared = request("POST", &gateway.url("/api/v1/user/token"), &[], Some(&big));
    assert_eq!((declared.status, declared.error_code()), (413, Some(413)));
    assert_eq!(declared.header("content-type"), Some("application/json"));
    assert_eq!(declared.json()["errors"][0]["value"], 1024, "{}", declared.text());
    let streamed = post_chunked(&gateway.url("/api/v1/user/token"), &big);
    assert_eq!((streamed.status, streamed.error_code()), (413, Some(413)));
    // The same limit on the standard-format route next to it: a problem.
    for reply in
        [request("POST", &gateway.url("/g/echo"), &[], Some(&big)), post_chunked(&gateway.url("/g/echo"), &big)]
    {
        assert_eq!((reply.status, reply.problem()), (413, Some((413, "payload too large".into()))), "{}", reply.text());
        assert_eq!(reply.json()["value"], 1024);
    }
    let fits =
        post_json(&gateway.url("/api/v1/user/token"), Some("server-secret"), &json!({"userId": USER, "token": "t"}));
    assert_eq!(fits.status, 200, "a body under the limit still passes");
}

#[test]
fn endless_loops_hit_the_deadline_while_other_requests_are_served() {
    let gateway = guest_gateway("[limits]\nrequest_timeout_ms = 1500");
    // More looping plugins than the gateway has threads: plugins must yield.
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let url = gateway.url("/alpha/loop");
            std::thread::spawn(move || {
                let started = Instant::now();
                (get(&url), started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    for _ in 0..5 {
        let started = Instant::now();
        let normal = get(&gateway.url("/beta/version"));
        let took = started.elapsed();
        assert_eq!(normal.status, 200);
        assert!(took < Duration::from_millis(1000), "served while the loops ran: {took:?}");
    }

    for looping in loops {
        let (looped, took) = looping.join().expect("loop thread");
        assert_eq!((looped.status, looped.problem()), (503, Some((503, "deadline exceeded".into()))));
        assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(5), "{took:?}");
    }
    assert!(gateway.wait_for_log("deadline exceeded"));
    assert_eq!(get(&gateway.url("/alpha/version")).status, 200, "the plugin serves on");
}

#[test]
fn unbounded_allocation_fails_that_request_only() {
    let gateway = guest_gateway("[limits]\ninstance_memory_bytes = 16777216");
    let reply = get(&gateway.url("/alpha/alloc"));
    assert_eq!((reply.status, reply.problem()), (500, Some((500, "memory limit exceeded".into()))));
    assert!(gateway.wait_for_log("memory limit"));
    assert_eq!(get(&gateway.url("/alpha/version")).status, 200);
}

#[test]
fn a_panic_is_500_logged_with_the_plugin_and_the_host_lives_on() {
    let gateway = guest_gateway("");
    let reply = get(&gateway.url("/alpha/panic"));
    assert_eq!((reply.status, reply.problem()), (500, Some((500, "plugin failed".into()))));
    // The guest's output and the host's trap line reach the log on their own ways: wait for both.
    assert!(gateway.wait_for_log("the test guest panics on request"), "{}", gateway.log());
    assert!(gateway.wait_for_log("plugin trapped"), "{}", gateway.log());
    let log = gateway.log();
    let line = log.lines().find(|l| l.contains("the test guest panics")).unwrap_or_default();
    assert!(line.contains("alpha@1.0.0"), "panic output is tagged with the plugin: {line}");
    for _ in 0..3 {
        assert_eq!(get(&gateway.url("/alpha/version")).status, 200);
    }
}

#[test]
fn plugin_output_reaches_the_host_log_tagged_with_the_plugin() {
    let gateway = guest_gateway("");
    assert_eq!(get(&gateway.url("/beta/print")).status, 200);
    for needle in ["hello from stdout", "hello from stderr"] {
        assert!(gateway.wait_for_log(needle), "{needle}: {}", gateway.log());
    }
    let log = gateway.log();
    for needle in ["hello from stdout", "hello from stderr"] {
        let line = log.lines().find(|l| l.contains(needle)).unwrap_or_default();
        assert!(line.contains("beta@1.0.0"), "{needle}: {line}");
    }
}

#[test]
fn every_request_gets_an_access_log_line() {
    let gateway = guest_gateway("");
    assert_eq!(get(&gateway.url("/beta/version")).status, 200);
    assert!(gateway.wait_for_log("/beta/version"));
    let log = gateway.log();
    let line = log.lines().find(|l| l.contains("/beta/version")).unwrap_or_default();
    for field in ["method=GET", "status=200", "latency_us=", "plugin=\"beta@1.0.0\""] {
        assert!(line.contains(field), "{field} in {line}");
    }
}

#[test]
fn two_plugins_cannot_read_each_others_keys() {
    let gateway = guest_gateway("");
    let put = request("POST", &gateway.url("/alpha/kv/put?key=secret"), &[], Some(b"alpha's"));
    assert_eq!(put.status, 200, "{}", put.text());
    let own = get(&gateway.url("/alpha/kv/get?key=secret"));
    assert_eq!((own.status, own.text().as_str()), (200, "alpha's"));
    assert_eq!(get(&gateway.url("/beta/kv/get?key=secret")).status, 404);
    assert_eq!(get(&gateway.url("/beta/kv/scan")).text(), "", "beta's scan sees nothing");
    assert_eq!(get(&gateway.url("/alpha/kv/scan")).text(), "secret");
}

#[test]
fn plugins_built_against_every_earlier_world_keep_linking_and_running() {
    let gateway = Gateway::start(&format!(
        "{}{}{}{}{}{}",
        plugin_table("first", &guest_wasm(), ""),
        plugin_table("second", &guest_wasm_version("world-0.2.0"), "[plugins.config]\ngreeting = \"hi\""),
        plugin_table("third", &guest_wasm_version("world-0.2.1"), ""),
        plugin_table("fourth", &guest_wasm_version("world-0.2.2"), ""),
        // Built before plugins checked their settings: not checked, so an unknown one starts.
        plugin_table("fifth", &guest_wasm_version("world-0.2.3"), "[plugins.config]\nnot_a_setting = \"1\"\n"),
        plugin_table("evotor", &evotor_wasm(), ""),
    ));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let plugins = request("GET", &gateway.admin_url("/plugins"), &[("authorization", auth.as_str())], None).json();
    let world = |name: &str| {
        let plugin = plugins.as_array().expect("a list").iter().find(|p| p["name"] == name).cloned();
        plugin.map(|p| p["world"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
    };
    assert_eq!(world("first"), "evogate:plugin@0.1.0");
    assert_eq!(world("second"), "evogate:plugin@0.2.0");
    assert_eq!(world("third"), "evogate:plugin@0.2.1");
    assert_eq!(world("fourth"), "evogate:plugin@0.2.2");
    assert_eq!(world("fifth"), "evogate:plugin@0.2.3");
    assert_eq!(world("evotor"), "evogate:plugin@0.2.4");
    for plugin in ["first", "second", "third", "fourth", "fifth"] {
        let put = request("POST", &gateway.url(&format!("/{plugin}/kv/put?key=k")), &[], Some(plugin.as_bytes()));
        assert_eq!(put.status, 200, "{plugin}: {}", put.text());
        let read = get(&gateway.url(&format!("/{plugin}/kv/get?key=k")));
        assert_eq!((read.status, read.text().as_str()), (200, plugin));
        assert_eq!(get(&gateway.url(&format!("/{plugin}/kv/scan"))).text(), "k");
    }
    let setting = get(&gateway.url("/second/config?name=greeting"));
    assert_eq!((setting.status, setting.text().as_str()), (200, "hi"));
    // The Evotor plugin, which imports `kv.get-many` and outgoing HTTP, serves beside them.
    assert_eq!(get(&gateway.url("/evotor/nowhere")).status, 404);
}

#[test]
fn the_host_refuses_guest_controlled_limits_over_the_cap() {
    let gateway = guest_gateway("");
    let reply = get(&gateway.url("/alpha/kv/scan?limit=1001"));
    assert_eq!((reply.status, reply.text().as_str()), (507, "Error::TooLarge"));
    let long_key = "k".repeat(1025);
    let reply = request("POST", &gateway.url(&format!("/alpha/kv/put?key={long_key}")), &[], Some(b"v"));
    assert_eq!((reply.status, reply.text().as_str()), (507, "Error::TooLarge"));
}

#[test]
fn operator_settings_reach_only_their_plugin() {
    let gateway = guest_gateway("");
    let alpha = get(&gateway.url("/alpha/config?name=greeting"));
    assert_eq!((alpha.status, alpha.text().as_str()), (200, "hello alpha"));
    assert_eq!(get(&gateway.url("/beta/config?name=greeting")).status, 404);
}

#[test]
fn plugins_see_no_files_environment_arguments_or_stdin() {
    let gateway = guest_gateway("");
    let reply = get(&gateway.url("/alpha/sandbox"));
    assert_eq!((reply.status, reply.text().as_str()), (200, "fs=denied cwd_file=false env=0 args=0 stdin=0"));
}

#[test]
fn an_invalid_status_from_a_plugin_becomes_500() {
    let gateway = guest_gateway("");
    assert_eq!(get(&gateway.url("/alpha/status?code=1000")).status, 500);
    assert_eq!(get(&gateway.url("/alpha/status?code=204")).status, 204);
    for informational in [100, 101, 199] {
        assert_eq!(get(&gateway.url(&format!("/alpha/status?code={informational}"))).status, 500);
    }
    assert!(gateway.wait_for_log("outside 200-599"), "the bad status is logged");
}

#[test]
fn a_flood_of_plugin_headers_is_500_and_the_gateway_lives_on() {
    let gateway = guest_gateway("");
    // 999 and the guest's own x-plugin-version: at the cap (read raw: clients cap header counts lower).
    let head = raw_head(&gateway, "/alpha/headers?count=999");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(head.lines().filter(|line| line.starts_with("x-h")).count(), 999);
    // HeaderMap panics past ~24k names: these must be refused before that.
    assert_eq!(get(&gateway.url("/alpha/headers?count=30000")).status, 500);
    assert_eq!(get(&gateway.url("/alpha/headers?count=30000&name=x-same")).status, 500);
    let hop = get(&gateway.url("/alpha/headers?count=1&name=proxy-connection&value=close"));
    assert_eq!((hop.status, hop.header("proxy-connection")), (200, None));
    assert_eq!(get(&gateway.url("/alpha/version")).status, 200);
}

#[test]
fn concurrent_requests_all_succeed() {
    let gateway = guest_gateway("");
    let urls: Vec<String> =
        (0..8).map(|i| gateway.url(if i % 2 == 0 { "/alpha/version" } else { "/beta/version" })).collect();
    let workers: Vec<_> = urls
        .into_iter()
        .map(|url| std::thread::spawn(move || (0..25).filter(|_| get(&url).status == 200).count()))
        .collect();
    let ok: usize = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    assert_eq!(ok, 200);
}

#[test]
fn a_missing_plugin_file_stops_startup_with_a_clear_message() {
    let output = std::process::Command::new(evogate_e2e::evogate_bin())
        .args(["serve", "--config"])
        .arg({
            let dir = tempfile::tempdir().expect("temp dir").keep();
            let path = dir.join("evogate.toml");
            let config = format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {}\n[[plugins]]\nname = \"x\"\nroute = \"/\"\nwasm = \"missing.wasm\"\n",
                toml_str(&dir.join("data").to_string_lossy())
            );
            std::fs::write(&path, config).expect("write config");
            path
        })
        .env("NO_COLOR", "1")
        .output()
        .expect("running evogate");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.wasm") && stderr.contains("\"x\""), "{stderr}");
}

#[test]
fn serve_without_a_configured_plugin_names_what_is_missing_and_opens_nothing() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(evogate_e2e::evogate_bin())
        .arg("serve")
        .current_dir(cwd.path())
        .env_remove("EVOGATE_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("running evogate");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no [[plugins]] configured") && stderr.contains("--config"), "{stderr}");
    assert!(!cwd.path().join("data").exists(), "no store is opened for nothing to serve");
}

#[test]
fn the_default_relative_data_dir_works_from_any_directory() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let config = cwd.path().join("evogate.toml");
    std::fs::write(
        &config,
        format!(
            "[[plugins]]\nname = \"evotor\"\nroute = \"/\"\nwasm = {}\n",
            toml_str(&evogate_e2e::evotor_wasm().to_string_lossy())
        ),
    )
    .expect("write config");
    let mut child = std::process::Command::new(evogate_e2e::evogate_bin())
        .args(["serve", "--config", "evogate.toml"])
        .current_dir(cwd.path())
        .env("EVOGATE_LISTEN", "127.0.0.1:0")
        .env("EVOGATE_ADMIN__LISTEN", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start evogate");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let started = lines.by_ref().map_while(Result::ok).any(|line| line.contains("evogate listening on"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "evogate did not start with the default data_dir");
    assert!(cwd.path().join("data/evogate.redb").is_file(), "the store is under ./data of the working directory");
}

#[test]
fn every_request_gets_an_id_echoed_and_in_the_plugins_log_lines() {
    let gateway = guest_gateway("");
    let generated = get(&gateway.url("/beta/version"));
    let id = generated.header("x-request-id").unwrap_or_default().to_owned();
    assert_eq!(id.len(), 24, "a generated id: {id:?}");
    assert_ne!(get(&gateway.url("/beta/version")).header("x-request-id"), Some(id.as_str()), "ids differ");

    let given = request("GET", &gateway.url("/beta/print"), &[("x-request-id", "order-42.retry:1")], None);
    assert_eq!(given.header("x-request-id"), Some("order-42.retry:1"), "a sane id is kept");
    assert!(gateway.wait_for_log("hello from stderr"));
    // The access line follows the plugin's own; the log is read from a pipe, so wait for it too.
    assert!(gateway.wait_for_log("/beta/print"));
    let log = gateway.log();
    let line = log.lines().find(|l| l.contains("hello from stderr")).unwrap_or_default();
    assert!(line.contains("order-42.retry:1"), "the plugin's own line carries the id: {line}");
    let access = log.lines().find(|l| l.contains("/beta/print") && l.contains("status=200")).unwrap_or_default();
    assert!(access.contains("order-42.retry:1"), "{access}");

    let insane = request("GET", &gateway.url("/beta/version"), &[("x-request-id", "no spaces allowed")], None);
    assert_ne!(insane.header("x-request-id"), Some("no spaces allowed"));
    let missing = get(&gateway.url("/nowhere"));
    assert!(missing.header("x-request-id").is_some(), "errors of the gateway itself carry one too");
}

/// The head of the answer to `GET path`, read over a plain socket.
fn raw_head(gateway: &Gateway, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let addr = gateway.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

/// The most memory the gateway's process has held (`VmHWM`), in MiB.
fn peak_rss_mib(gateway: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.pid())).expect("status");
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).expect("kB") / 1024
}

/// Opens once `count` clients have arrived or at `opens_by`, whichever
/// comes first, and stays open.
struct Gate {
    arrived: std::sync::Mutex<usize>,
    changed: std::sync::Condvar,
    count: usize,
    opens_by: Instant,
}

impl Gate {
    fn new(count: usize, patience: Duration) -> Self {
        let (arrived, changed) = (std::sync::Mutex::new(0), std::sync::Condvar::new());
        Self { arrived, changed, count, opens_by: Instant::now() + patience }
    }

    /// Arrives, and waits for the gate to open.
    fn pass(&self) {
        let mut arrived = self.arrived.lock().expect("gate");
        *arrived += 1;
        self.changed.notify_all();
        while *arrived < self.count {
            let left = self.opens_by.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            arrived = self.changed.wait_timeout(arrived, left).expect("gate").0;
        }
    }
}

/// POSTs `body` to `path` over a plain socket (chunked or with a length),
/// holding its last byte back until `gate` opens; the answer's status.
fn post_held_back(addr: &str, path: &str, body: &[u8], chunked: bool, gate: &Gate) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let (most, last) = body.split_at(body.len() - 1);
    // A write fails only when the gateway has answered already; the answer says why.
    let _ = if chunked {
        write!(stream, "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n")
            .and_then(|()| write!(stream, "{:x}\r\n", most.len()))
            .and_then(|()| stream.write_all(most))
            .and_then(|()| stream.write_all(b"\r\n"))
            .map(|()| gate.pass())
            .and_then(|()| stream.write_all(b"1\r\n"))
            .and_then(|()| stream.write_all(last))
            .and_then(|()| stream.write_all(b"\r\n0\r\n\r\n"))
    } else {
        write!(stream, "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n", body.len())
            .and_then(|()| stream.write_all(most))
            .map(|()| gate.pass())
            .and_then(|()| stream.write_all(last))
    };
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer.split(' ').nth(1).and_then(|status| status.parse().ok()).unwrap_or(0)
}

/// Sends `clients` bodies of 30 MiB at once (half with a length, half
/// chunked), each holding its last byte back until all the others' are in
/// or a few seconds have passed, so the gateway holds as many as it lets
/// itself; the statuses and the gateway's peak memory in MiB.
fn thirty_mib_bodies_at_once(gateway: &Gateway, clients: usize) -> (Vec<u16>, u64) {
    let body = std::sync::Arc::new(vec![b'x'; 30 << 20]);
    let gate = std::sync::Arc::new(Gate::new(clients, Duration::from_secs(3)));
    let addr = gateway.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let senders: Vec<_> = (0..clients)
        .map(|n| {
            let (body, gate, addr) = (body.clone(), gate.clone(), addr.clone());
            std::thread::spawn(move || post_held_back(&addr, "/alpha/version", &body, n % 2 == 1, &gate))
        })
        .collect();
    let statuses = senders.into_iter().map(|sender| sender.join().expect("client")).collect();
    (statuses, peak_rss_mib(gateway))
}

#[test]
fn request_bodies_held_at_once_stay_within_their_budget_and_every_request_is_answered() {
    // No minimum body rate: a body waiting for its last byte is not too slow here.
    let limits = "[limits]\nmax_body_bytes = 33554432\nmax_concurrent_requests = 16\nrequest_timeout_ms = 30000\n\
                  min_body_bytes_per_sec = 0\n";
    let bounded = guest_gateway(&format!("{limits}max_body_bytes_in_flight = 67108864\n"));
    let (statuses, bounded_peak) = thirty_mib_bodies_at_once(&bounded, 16);
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    let unbounded = guest_gateway(&format!("{limits}max_body_bytes_in_flight = 4294967296\n"));
    let (statuses, unbounded_peak) = thirty_mib_bodies_at_once(&unbounded, 16);
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    eprintln!(
        "peak memory with 16 bodies of 30 MiB: {bounded_peak} MiB within a 64 MiB budget, {unbounded_peak} MiB without"
    );
    // Two bodies held by the gateway at most, each also copied into its plugin instance.
    assert!(bounded_peak < 64 + 2 * 32 + 120, "{bounded_peak} MiB");
    // The load shows the budget at work: without it the gateway holds every body sent with a length
    // and one chunked body growing at a time (nine here), more than twice the budget.
    assert!(bounded_peak + 2 * 64 < unbounded_peak, "{bounded_peak} MiB vs {unbounded_peak} MiB");
}

#[test]
fn a_host_call_copying_more_than_the_largest_commit_traps_before_the_host_allocates_it() {
    let gateway = guest_gateway("");
    let refused = get(&gateway.url("/alpha/kv/huge?mib=8"));
    assert_eq!(
        (refused.status, refused.text().as_str()),
        (507, "Error::TooLarge"),
        "over the value limit: the plugin hears why"
    );
    let trapped = get(&gateway.url("/alpha/kv/huge?mib=96"));
    assert_eq!(trapped.status, 500, "{}", trapped.text());
    assert!(gateway.wait_for_log("too much data is being copied"), "{}", gateway.log());
    assert_eq!(get(&gateway.url("/alpha/version")).status, 200);
}

/// A connection that sent a request head declaring `length` body bytes and
/// then `sent` of them, and holds still.
fn held_head(gateway: &Gateway, path: &str, length: usize, sent: &[u8]) -> std::net::TcpStream {
    use std::io::Write as _;
    let addr = gateway.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "PUT {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n").expect("head");
    stream.write_all(sent).expect("body start");
    stream
}

#[test]
fn clients_that_send_a_head_and_no_body_stall_nobody() {
    // Eight heads of 32 MiB bodies would have held the whole budget before a byte arrived.
    let gateway = guest_gateway(
        "[limits]\nmax_body_bytes = 33554432\nmax_body_bytes_in_flight = 67108864\nrequest_timeout_ms = 8000\n",
    );
    let heads: Vec<_> = (0..8).map(|_| held_head(&gateway, "/alpha/version", 32 << 20, b"")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let bodyless = get(&gateway.url("/alpha/version"));
    let bodyless_took = started.elapsed();
    assert_eq!(bodyless.status, 200);
    assert!(bodyless_took < Duration::from_millis(100), "a GET without a body waited {bodyless_took:?}");
    let started = Instant::now();
    let small = request("PUT", &gateway.url("/alpha/version"), &[], Some(b"{\"small\":true}"));
    let small_took = started.elapsed();
    assert_eq!(small.status, 200);
    assert!(small_took < Duration::from_secs(1), "a small PUT waited {small_took:?}");
    drop(heads);

    // Clients that send the first bytes of a large body and then stall hold
    // room only for a moment: past the minimum rate they get 408.
    let stalled: Vec<_> = (0..2).map(|_| held_head(&gateway, "/alpha/version", 32 << 20, b"{\"x\":")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let body = vec![b' '; 30 << 20];
    let large = request("PUT", &gateway.url("/alpha/version"), &[], Some(&body));
    assert_eq!(large.status, 200, "{}", large.text());
    let large_took = started.elapsed();
    assert!(large_took < Duration::from_secs(3), "a large body waited {large_took:?} behind stalled ones");
    for mut stream in stalled {
        use std::io::Read as _;
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let (mut answer, mut chunk) = (Vec::new(), [0u8; 4096]);
        while let Ok(read @ 1..) = stream.read(&mut chunk) {
            answer.extend_from_slice(&chunk[..read]);
            if answer.ends_with(b"}") {
                break;
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("too slowly"), "{answer}");
    }
}

#[test]
fn one_credential_gets_at_most_its_share_of_a_plugin_and_others_are_served() {
    let wasm = guest_wasm();
    let gateway = Gateway::start(&format!(
        "[limits]\nrequest_timeout_ms = 2000\n{}",
        plugin_table("alpha", &wasm, "max_concurrent_per_credential = 1"),
    ));
    let busy = {
        let url = gateway.url("/alpha/loop");
        std::thread::spawn(move || request("GET", &url, &[("authorization", "Bearer user-a")], None).status)
    };
    std::thread::sleep(Duration::from_millis(300));
    let same = request("GET", &gateway.url("/alpha/version"), &[("authorization", "Bearer user-a")], None);
    assert_eq!((same.status, same.header("retry-after")), (503, Some("1")), "user a has its one request running");
    let other = request("GET", &gateway.url("/alpha/version"), &[("authorization", "Bearer user-b")], None);
    assert_eq!(other.status, 200, "another credential is served");
    assert_eq!(get(&gateway.url("/alpha/version")).status, 200, "so is a request without one");
    assert_eq!(busy.join().expect("the looping request"), 503, "it ran into its deadline");
    let again = request("GET", &gateway.url("/alpha/version"), &[("authorization", "Bearer user-a")], None);
    assert_eq!(again.status, 200, "its slot is free again");
}
