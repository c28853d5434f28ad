//! Standard `wasi:http/proxy` components (tests/standard) beside evogate
//! plugins: served through the same request path, limits, logs, metrics,
//! deploys and fleet; `wasi:keyvalue` on the gateway's store; outgoing
//! HTTP only to the hosts a plugin lists.

use evogate_e2e::{
    ADMIN_TOKEN, Gateway, Reply, TestSchema, get, guest_wasm, plugin_table, postgres_url, request, standard_hello_v2,
    standard_wasm,
};
use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn admin(gateway: &Gateway, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    request(method, &gateway.admin_url(path), &[("authorization", auth.as_str())], body)
}

/// hello on `/hello` (with `extra` in its table), the counter on `/counter`, the CAS counter on `/cas`.
fn standard_gateway(top: &str, extra: &str) -> Gateway {
    Gateway::start(&format!(
        "{top}\n{}{}{}",
        plugin_table("hello", &standard_wasm("hello"), extra),
        plugin_table("counter", &standard_wasm("counter"), ""),
        plugin_table("cas", &standard_wasm("cas"), ""),
    ))
}

#[test]
fn a_standard_component_is_served_with_request_ids_logs_metrics_and_its_environment() {
    let gateway = standard_gateway("", "[plugins.config]\ngreeting = \"привет\"");
    let hello = get(&gateway.url("/hello/anything"));
    assert_eq!((hello.status, hello.text().as_str()), (200, "hello from standard-hello 1\n"));
    assert_eq!(hello.header("x-hello-version"), Some("1"));
    assert!(hello.header("x-request-id").is_some_and(|id| id.len() == 24), "{:?}", hello.headers);

    let echo =
        request("POST", &gateway.url("/hello/echo?q=1"), &[("x-request-id", "client-id-7")], Some(b"body bytes"));
    assert_eq!((echo.status, echo.text().as_str()), (200, "body bytes"));
    assert_eq!(echo.header("x-method"), Some("POST"));
    assert_eq!(echo.header("x-path"), Some("/hello/echo"), "the full path, as evogate plugins get it");
    assert_eq!(echo.header("x-seen-request-id"), Some("client-id-7"), "the component sees the request id");
    assert_eq!(echo.header("x-request-id"), Some("client-id-7"));

    assert_eq!(get(&gateway.url("/hello/env/greeting")).text(), "привет", "[plugins.config] is its environment");
    assert_eq!(get(&gateway.url("/hello/env/HOME")).status, 404, "and nothing else is");

    let plugins = admin(&gateway, "GET", "/plugins", None).json();
    let worlds: Vec<(&str, &str)> = plugins
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| (p["name"].as_str().unwrap_or_default(), p["world"].as_str().unwrap_or_default()))
        .collect();
    assert!(worlds.contains(&("hello", "wasi:http/proxy@0.2")), "{worlds:?}");
    let live = &plugins.as_array().expect("a list").iter().find(|p| p["name"] == "hello").expect("hello")["live"];
    let sha = live["sha256"].as_str().expect("sha256");
    assert_eq!(live["version"].as_str(), Some(&sha[..12]), "a standard component's version is its hash");

    assert!(gateway.wait_for_log("plugin=\"hello@"), "the access log names it");
    let metrics = admin(&gateway, "GET", "/metrics", None).text();
    assert!(metrics.contains("evogate_requests_total{plugin=\"hello\""), "{metrics}");
}

#[test]
fn the_deadline_memory_limit_body_limit_and_concurrency_cap_hold_for_standard_components() {
    let gateway = standard_gateway(
        "[limits]\nrequest_timeout_ms = 500\ninstance_memory_bytes = 33554432\nmax_body_bytes = 65536",
        "max_concurrent_requests = 1",
    );
    let started = Instant::now();
    let spin = get(&gateway.url("/hello/spin"));
    assert_eq!(spin.status, 503, "{}", spin.text());
    assert!(spin.text().contains("deadline"), "{}", spin.text());
    assert!(started.elapsed() < Duration::from_secs(3), "stopped at its deadline: {:?}", started.elapsed());

    // Its own cap: while one request spins, the next is refused at once.
    let spinning = std::thread::spawn({
        let url = gateway.url("/hello/spin");
        move || get(&url).status
    });
    std::thread::sleep(Duration::from_millis(150));
    let busy = get(&gateway.url("/hello/x"));
    assert_eq!((busy.status, busy.header("retry-after")), (503, Some("1")), "{}", busy.text());
    assert_eq!(spinning.join().expect("spinning"), 503);

    let grow = get(&gateway.url("/hello/grow"));
    assert_eq!(grow.status, 500, "{}", grow.text());
    assert!(grow.text().contains("memory limit"), "{}", grow.text());

    let big = vec![b'x'; 65537];
    assert_eq!(request("POST", &gateway.url("/hello/echo"), &[], Some(&big)).status, 413);
    let fits = vec![b'y'; 65536];
    assert_eq!(request("POST", &gateway.url("/hello/echo"), &[], Some(&fits)).body, fits);
    assert_eq!(get(&gateway.url("/hello/x")).status, 200, "and the next request is served as ever");
}

#[test]
fn counters_on_wasi_keyvalue_are_kept_in_the_store_and_list_keys_pages_with_its_cursor() {
    let mut gateway = standard_gateway("", "");
    for expected in 1..=3 {
        assert_eq!(get(&gateway.url("/counter/count/visits")).text(), format!("visits={expected}"));
    }
    assert_eq!(get(&gateway.url("/cas/incr/visits/5")).text(), "visits=5", "each plugin has its own namespace");
    gateway.restart();
    assert_eq!(get(&gateway.url("/counter/count/visits")).text(), "visits=4", "kept across a restart");

    assert_eq!(request("POST", &gateway.url("/counter/fill/b/600"), &[], Some(b"")).text(), "600");
    let keys = get(&gateway.url("/counter/keys/b")).text();
    assert_eq!(keys, "keys=600 pages=3 first=k00000 last=k00599", "pages of 256 keys, in order");
    assert_eq!(get(&gateway.url("/counter/get/b/k00042")).text(), "v42");
    assert_eq!(get(&gateway.url("/counter/get/default/k00042")).status, 404, "buckets are apart");
    assert_eq!(get(&gateway.url("/counter/keys/default")).text(), "keys=1 pages=1 first=visits last=visits");
    assert_eq!(get(&gateway.url("/counter/drop/b")).text(), "600");
    assert_eq!(get(&gateway.url("/counter/keys/b")).text(), "keys=0 pages=0 first= last=");
    let bad_bucket = get(&gateway.url("/counter/keys/no%20such"));
    assert_eq!(bad_bucket.status, 500);
    assert!(bad_bucket.text().contains("NoSuchStore"), "{}", bad_bucket.text());

    assert_eq!(request("POST", &gateway.url("/cas/incr/n/0"), &[], Some(b"")).text(), "n=0");
    assert_eq!(get(&gateway.url("/cas/keys/default")).text(), "keys=2 pages=1", "the string cursor ends");
}

#[test]
fn compare_and_swap_loses_no_increment_among_concurrent_requests() {
    let gateway = standard_gateway("", "");
    let retried = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (url, retried) = (gateway.url("/cas/add/hits"), retried.clone());
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let reply = get(&url);
                    assert_eq!(reply.status, 200, "{}", reply.text());
                    let attempts: usize =
                        reply.text().rsplit("attempts=").next().and_then(|n| n.parse().ok()).expect("attempts");
                    retried.fetch_add(attempts - 1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client");
    }
    let last = get(&gateway.url("/cas/incr/hits/0")).text();
    assert_eq!(last, "hits=200", "every increment counted");
    eprintln!("200 CAS increments from 8 clients; {} swaps lost a race and retried", retried.load(Ordering::Relaxed));
    assert_eq!(get(&gateway.url("/cas/incr/hits/-201")).text(), "hits=-1", "the draft2 counter is signed");
}

/// A plain HTTP server on a free port answering every request with `body`; counts connections.
fn upstream(body: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let answer =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (port, connections)
}

#[test]
fn outgoing_requests_reach_only_the_hosts_a_plugin_lists() {
    let (port, connections) = upstream("upstream says hi");
    let allowed = format!("allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]");
    let gateway = Gateway::start(&format!(
        "{}{}",
        plugin_table("closed", &standard_wasm("hello"), ""),
        plugin_table("open", &standard_wasm("hello"), &allowed),
    ));
    let target = format!("http://127.0.0.1:{port}/resource");

    let refused = get(&gateway.url(&format!("/closed/fetch?{target}")));
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert!(refused.text().contains("HttpRequestDenied"), "{}", refused.text());
    assert_eq!(connections.load(Ordering::SeqCst), 0, "no connection was made");

    let fetched = get(&gateway.url(&format!("/open/fetch?{target}")));
    assert_eq!((fetched.status, fetched.text().as_str()), (200, "upstream says hi"));
    assert_eq!(fetched.header("x-upstream-status"), Some("200"));
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    let other_port = get(&gateway.url(&format!("/open/fetch?http://127.0.0.1:{}/", port.wrapping_add(1))));
    assert!(other_port.text().contains("HttpRequestDenied"), "another port is another host: {}", other_port.text());
    assert!(gateway.wait_for_log("outgoing request refused"));
    let metrics = admin(&gateway, "GET", "/metrics", None).text();
    let refusals = metrics.lines().find(|line| {
        line.starts_with("evogate_outbound_requests_total{")
            && line.contains("plugin=\"closed\"")
            && line.contains("outcome=\"refused\"")
    });
    assert!(refusals.is_some_and(|line| line.ends_with(" 1")), "{metrics}");
}

#[test]
fn deploys_of_a_standard_component_under_load_drop_no_request_and_roll_back() {
    let gateway = standard_gateway("", "");
    let v1 = std::fs::read(standard_wasm("hello")).expect("v1");
    let v2 = std::fs::read(standard_hello_v2()).expect("v2");
    // `/hello/version`: the hello component answers any path, the test plugin this one.
    let load = evogate_e2e::Load::start((0..8).map(|_| gateway.url("/hello/version")));
    for round in 0..20 {
        let (bytes, version) = if round % 2 == 0 { (&v2, "2") } else { (&v1, "1") };
        let deployed = admin(&gateway, "PUT", "/plugins/hello", Some(bytes));
        assert_eq!(deployed.status, 200, "deploy {round}: {}", deployed.text());
        assert_eq!(get(&gateway.url("/hello/x")).header("x-hello-version"), Some(version));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Kinds may change in a deploy: an evogate plugin takes the route, and back. Another
    // program: refused unless forced.
    let guest = std::fs::read(guest_wasm()).expect("the test plugin");
    assert_eq!(admin(&gateway, "PUT", "/plugins/hello", Some(&guest)).status, 409);
    assert_eq!(admin(&gateway, "PUT", "/plugins/hello?force=true", Some(&guest)).status, 200);
    let status = admin(&gateway, "GET", "/plugins", None).json();
    let hello = status.as_array().expect("list").iter().find(|p| p["name"] == "hello").cloned().expect("hello");
    assert_eq!(hello["world"], "evogate:plugin@0.1.0");
    let back = admin(&gateway, "POST", "/plugins/hello/rollback", None);
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(
        get(&gateway.url("/hello/x")).header("x-hello-version"),
        Some("1"),
        "rolled back to the last standard one"
    );

    // A component of neither kind is refused with the reason; the live one serves on.
    let refused = admin(&gateway, "PUT", "/plugins/hello", Some(b"\0asm\x0d\0\x01\0"));
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(refused.text().contains("wasi:http/incoming-handler"), "{}", refused.text());

    let (served, failures) = load.stop();
    assert!(served > 100, "the load ran ({served})");
    assert_eq!(failures, &[] as &[(u16, String)], "no request failed");
    eprintln!("{served} requests during 22 deploys and a rollback of a standard component, none failed");
}

#[test]
fn a_standard_components_deploy_and_its_counters_are_shared_by_the_fleet() {
    let Some(url) = postgres_url("a_standard_components_deploy_and_its_counters_are_shared_by_the_fleet") else {
        return;
    };
    let schema = TestSchema::new(&url);
    let nodes: Vec<Gateway> = (0..2).map(|_| standard_gateway(&schema.store_table(&url), "")).collect();
    assert_eq!(get(&nodes[0].url("/counter/count/fleet")).text(), "fleet=1");
    assert_eq!(get(&nodes[1].url("/counter/count/fleet")).text(), "fleet=2", "one store for the fleet");

    let v2 = std::fs::read(standard_hello_v2()).expect("v2");
    assert_eq!(admin(&nodes[0], "PUT", "/plugins/hello", Some(&v2)).status, 200);
    let started = Instant::now();
    while get(&nodes[1].url("/hello/x")).header("x-hello-version") != Some("2") {
        assert!(started.elapsed() < Duration::from_secs(5), "the other node did not follow the deploy");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `target/wasmtime-cli/bin/wasmtime` when `cargo xtask bench-serve` installed it.
fn wasmtime_cli() -> Option<std::path::PathBuf> {
    let path = evogate_e2e::workspace_root().join("target/wasmtime-cli/bin/wasmtime");
    path.is_file().then_some(path)
}

#[test]
fn the_test_components_run_unchanged_under_wasmtime_serve() {
    let Some(wasmtime) = wasmtime_cli() else {
        eprintln!("SKIPPED: no target/wasmtime-cli/bin/wasmtime (cargo xtask bench-serve installs it)");
        return;
    };
    for (component, path, expected) in
        [("hello", "/hello/x", "hello from standard-hello 1\n"), ("counter", "/counter/count/a", "a=1")]
    {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut serve = std::process::Command::new(&wasmtime)
            .args(["serve", "-S", "cli=y,keyvalue=y", "--addr", &format!("127.0.0.1:{port}")])
            .arg(standard_wasm(component))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("wasmtime serve");
        let url = format!("http://127.0.0.1:{port}{path}");
        let started = Instant::now();
        let reply = loop {
            match evogate_e2e::try_request("GET", &url, &[], b"") {
                Some(reply) => break reply,
                None if started.elapsed() < Duration::from_secs(30) => std::thread::sleep(Duration::from_millis(50)),
                None => panic!("wasmtime serve did not answer"),
            }
        };
        let _ = serve.kill();
        let _ = serve.wait();
        assert_eq!((reply.status, reply.text().as_str()), (200, expected), "{component} under wasmtime serve");
    }
}
