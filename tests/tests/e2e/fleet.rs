//! Several gateway nodes on one PostgreSQL database: shared data,
//! converging concurrent deliveries, fleet-wide deploys and rollbacks, and
//! a database outage survived. Skipped (with a note) without
//! `EVOGATE_TEST_POSTGRES_URL`.

use evogate_e2e::{ADMIN_TOKEN, Gateway, TestSchema, get, guest_wasm_version, post_json, postgres_url, request};
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451f99";

fn partner(gateway: &Gateway, method: &str, path: &str, body: Option<&Value>) -> evogate_e2e::Reply {
    let text = body.map(Value::to_string);
    let headers = [("authorization", "Bearer partner-secret"), ("content-type", "application/json")];
    request(method, &gateway.url(path), &headers, text.as_deref().map(str::as_bytes))
}

fn user(n: usize) -> String {
    format!("01-{n:015}")
}

fn subscription(n: usize) -> String {
    format!("a99fbf70-6307-4acc-b61c-{n:012x}")
}

fn event(n: usize, seq: u64) -> Value {
    let kind = match seq {
        1 => "SubscriptionCreated",
        2 => "SubscriptionActivated",
        3 | 4 => "SubscriptionRenewed",
        _ => "SubscriptionTermsChanged",
    };
    json!({"subscriptionId": subscription(n), "productId": "p", "userId": user(n), "sequenceNumber": seq,
           "timestamp": format!("2026-11-0{seq}T10:00:00.000+0000"), "type": kind, "planId": "basic",
           "trialPeriodDuration": "P14DT", "nextBillingDate": "2026-12-01T00:00:00.000+0000", "deviceNumber": seq})
}

fn products(range: std::ops::Range<u32>) -> Value {
    Value::from(
        range
            .map(|n| {
                json!({"uuid": format!("{:08x}-0000-4000-8000-{n:012x}", n.wrapping_mul(2_654_435_761)), "group": false,
                       "name": format!("Item {n}"), "type": "NORMAL", "allowToSell": true, "measureName": "шт",
                       "price": 10, "quantity": 1, "tax": "VAT_20", "barCodes": [format!("46{n:011}")]})
            })
            .collect::<Vec<_>>(),
    )
}

/// Every request of the scenario: (path, body, authorization).
fn scenario() -> Vec<(String, Value, &'static str)> {
    let mut requests = Vec::new();
    for n in 0..4 {
        // Out of order, and every event twice.
        for seq in [3, 1, 5, 2, 4, 1, 3, 5, 4, 2] {
            requests.push(("/api/v1/subscription/event".to_owned(), event(n, seq), "Bearer server-secret"));
        }
    }
    for batch in 0..6u32 {
        let path = format!("/partner/v1/stores/{STORE}/products");
        // Overlapping batches with identical content: any order gives one result.
        requests.push((path, products(batch * 150..batch * 150 + 300), "Bearer partner-secret"));
    }
    requests
}

fn send(gateway: &Gateway, (path, body, auth): &(String, Value, &'static str)) -> u16 {
    let method = if path.starts_with("/partner") { "PUT" } else { "POST" };
    let headers = [("authorization", *auth), ("content-type", "application/json")];
    request(method, &gateway.url(path), &headers, Some(body.to_string().as_bytes())).status
}

/// What the partner API shows of the scenario's outcome.
fn outcome(gateway: &Gateway) -> Value {
    let subscriptions: Vec<Value> = (0..4)
        .map(|n| {
            let reply = partner(gateway, "GET", &format!("/partner/v1/users/{}/subscriptions", user(n)), None).json();
            let mut state = reply["subscriptions"][0]["state"].clone();
            state.as_object_mut().map(|s| s.remove("updatedAt"));
            let events = reply["subscriptions"][0]["events"].as_array().map(Vec::len);
            json!({"state": state, "events": events})
        })
        .collect();
    let mut catalog = Vec::new();
    let mut after = String::new();
    loop {
        let page =
            partner(gateway, "GET", &format!("/partner/v1/stores/{STORE}/products?limit=1000{after}"), None).json();
        catalog.extend(page["items"].as_array().expect("items").iter().map(|item| item["product"].clone()));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    let lookup = request(
        "GET",
        &gateway.url(&format!("/partner/v1/stores/{STORE}/catalog-issues")),
        &[("authorization", "Bearer partner-secret")],
        None,
    )
    .json();
    let mut kinds: Vec<String> = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = partner(gateway, "GET", &format!("/partner/v1/feed?limit=1000{cursor}"), None).json();
        let items = page["items"].as_array().expect("items").clone();
        if items.is_empty() {
            break;
        }
        kinds.extend(
            items
                .iter()
                .filter(|e| e["kind"] != "products.upserted")
                .map(|e| format!("{} {}", e["kind"].as_str().unwrap_or_default(), e["data"]["sequenceNumber"])),
        );
        cursor = format!("&after={}", page["next"].as_str().expect("next"));
    }
    kinds.sort();
    json!({"subscriptions": subscriptions, "catalog": catalog, "issues": lookup["items"], "feed": kinds})
}

#[test]
fn three_nodes_on_one_database_converge_to_the_single_node_result() {
    let Some(url) = postgres_url("three_nodes_on_one_database_converge_to_the_single_node_result") else { return };
    let schema = TestSchema::new(&url);
    let nodes: Vec<Gateway> = (0..3).map(|_| Gateway::evotor(&schema.store_table(&url))).collect();
    let requests = scenario();
    std::thread::scope(|scope| {
        for (index, node) in nodes.iter().enumerate() {
            let requests = &requests;
            scope.spawn(move || {
                // Each node takes every request, in its own rotated order: all of them race.
                let offset = index * requests.len() / 3;
                for request in requests.iter().cycle().skip(offset).take(requests.len()) {
                    assert_eq!(send(node, request), 200, "{}", request.0);
                }
            });
        }
    });
    let written = partner(&nodes[0], "GET", &format!("/partner/v1/stores/{STORE}/products?limit=5"), None).json();
    let seen = partner(&nodes[2], "GET", &format!("/partner/v1/stores/{STORE}/products?limit=5"), None).json();
    assert_eq!(written, seen, "what one node wrote, the others read at once");

    let single = Gateway::evotor("");
    for request in &requests {
        assert_eq!(send(&single, request), 200);
    }
    let expected = outcome(&single);
    assert_eq!(expected["catalog"].as_array().map(Vec::len), Some(1050));
    for node in &nodes {
        assert_eq!(outcome(node), expected, "node {} agrees with a single node", node.base);
    }
}

fn admin(gateway: &Gateway, method: &str, path: &str, body: Option<&[u8]>) -> evogate_e2e::Reply {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    request(method, &gateway.admin_url(path), &[("authorization", auth.as_str())], body)
}

fn wait_for_version(nodes: &[Gateway], version: &str) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if nodes.iter().all(|node| get(&node.url("/g/version")).text() == version) {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("not every node serves {version} after 5 s");
}

#[test]
fn a_deploy_through_one_node_reaches_the_fleet_under_load_without_a_failed_request() {
    let Some(url) = postgres_url("a_deploy_through_one_node_reaches_the_fleet_under_load_without_a_failed_request")
    else {
        return;
    };
    let schema = TestSchema::new(&url);
    let nodes: Vec<Gateway> = (0..3).map(|_| Gateway::guest(&schema.store_table(&url), "")).collect();
    let original = get(&nodes[0].url("/g/version")).text();
    let load = evogate_e2e::Load::start(nodes.iter().map(|node| node.url("/g/version")));

    let build = std::fs::read(guest_wasm_version("2.0.0")).expect("the 2.0.0 build");
    let deployed = admin(&nodes[0], "PUT", "/plugins/g", Some(&build));
    assert_eq!(deployed.status, 200, "{}", deployed.text());
    let took = wait_for_version(&nodes, "2.0.0");
    assert!(took < Duration::from_secs(2), "the fleet followed in {took:?}");

    let rolled_back = admin(&nodes[1], "POST", "/plugins/g/rollback", None);
    assert_eq!(rolled_back.status, 200, "{}", rolled_back.text());
    let took = wait_for_version(&nodes, &original);
    assert!(took < Duration::from_secs(2), "the rollback reached the fleet in {took:?}");

    let (served, failures) = load.stop();
    assert!(served > 100, "the load ran");
    assert_eq!(failures, &[] as &[(u16, String)], "no request failed");

    // A node started now serves what the fleet serves.
    let late = Gateway::guest(&schema.store_table(&url), "");
    assert_eq!(get(&late.url("/g/version")).text(), original);
    let late_view = admin(&late, "GET", "/plugins", None).json();
    let fleet_view = admin(&nodes[2], "GET", "/plugins", None).json();
    assert_eq!(late_view[0]["live"], fleet_view[0]["live"], "the same build, recorded the same way");
    assert_eq!(late_view[0]["previous"], fleet_view[0]["previous"], "and the same history for rollback");
}

#[test]
fn two_nodes_deploying_at_once_end_on_one_version() {
    let Some(url) = postgres_url("two_nodes_deploying_at_once_end_on_one_version") else {
        return;
    };
    let schema = TestSchema::new(&url);
    let nodes: Vec<Gateway> = (0..2).map(|_| Gateway::guest(&schema.store_table(&url), "")).collect();
    let builds = [
        std::fs::read(guest_wasm_version("2.0.0")).expect("the 2.0.0 build"),
        std::fs::read(evogate_e2e::evotor_wasm()).expect("the Evotor build"),
        std::fs::read(evogate_e2e::guest_wasm()).expect("the 1.0.0 build"),
    ];
    let live = |node: &Gateway| admin(node, "GET", "/plugins", None).json()[0]["live"]["sha256"].clone();
    for round in 0..6 {
        let barrier = Arc::new(std::sync::Barrier::new(2));
        std::thread::scope(|scope| {
            for (n, node) in nodes.iter().enumerate() {
                let (barrier, build) = (barrier.clone(), &builds[(round + n) % builds.len()]);
                scope.spawn(move || {
                    barrier.wait();
                    // Two programs in turn: forced.
                    let reply = admin(node, "PUT", "/plugins/g?force=true", Some(build));
                    assert_eq!(reply.status, 200, "{}", reply.text());
                });
            }
        });
        let started = Instant::now();
        while live(&nodes[0]) != live(&nodes[1]) {
            assert!(started.elapsed() < Duration::from_secs(5), "round {round}: the nodes serve different versions");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A TCP proxy to the database that can drop every connection and refuse
/// new ones, or freeze: keep every connection open and answer nothing.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let down = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (flag, ice, streams) = (down.clone(), frozen.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                if ice.load(Ordering::SeqCst) {
                    // Accepted, and never a byte back.
                    streams.lock().expect("lock").push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                if let Ok(mut open) = streams.lock() {
                    open.extend([client.try_clone(), server.try_clone()].into_iter().flatten());
                }
                for (mut from, mut to) in
                    [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
                {
                    let ice = ice.clone();
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buffer) {
                            while ice.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { port, down, frozen, open }
    }

    /// A database that takes connections and bytes and never answers.
    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Starts a proxy to the database of `url`; the URL that reaches it through the proxy.
    fn to_database(url: &str) -> (Self, String) {
        let config: tokio_postgres::Config = url.parse().expect("a postgres URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".into(),
        };
        let upstream = format!("{host}:{}", config.get_ports().first().copied().unwrap_or(5432));
        let proxy = Proxy::start(upstream);
        let user = config.get_user().unwrap_or("postgres");
        let database = config.get_dbname().unwrap_or("postgres");
        let proxied = format!("postgres://{user}@127.0.0.1:{}/{database}", proxy.port);
        (proxy, proxied)
    }

    /// The database goes away: open connections break, new ones are refused.
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for stream in self.open.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

#[test]
fn a_database_outage_answers_503_loses_no_acknowledged_write_and_heals_itself() {
    let Some(url) = postgres_url("a_database_outage_answers_503_loses_no_acknowledged_write_and_heals_itself") else {
        return;
    };
    let (proxy, proxied) = Proxy::to_database(&url);
    let schema = TestSchema::new(&url);
    let node = Gateway::evotor(&format!("{}connect_timeout_ms = 1000\n", schema.store_table(&proxied)));

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, acknowledged, refused, stop) =
            (node.url("/api/v1/user/token"), acknowledged.clone(), refused.clone(), stop.clone());
        std::thread::spawn(move || {
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = json!({"userId": user_id(n), "token": format!("cloud-{n}")});
                let reply = post_json(&url, Some("server-secret"), &body);
                match reply.status {
                    200 => acknowledged.lock().expect("lock").push(n),
                    _ => refused.lock().expect("lock").push((
                        reply.status,
                        reply.json(),
                        reply.header("retry-after").map(str::to_owned),
                    )),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    proxy.cut();
    let ready = node.admin_url("/readyz");
    let outage = Instant::now();
    let mut not_ready = false;
    while outage.elapsed() < Duration::from_secs(5) && !not_ready {
        not_ready = get(&ready).status == 503;
    }
    assert!(not_ready, "/readyz says not ready while the database is away");
    std::thread::sleep(Duration::from_millis(1500));
    proxy.restore();
    let healed = Instant::now();
    while get(&ready).status != 200 {
        assert!(healed.elapsed() < Duration::from_secs(10), "the node recovers by itself");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = acknowledged.lock().expect("lock").len();
    let resumed = Instant::now();
    while acknowledged.lock().expect("lock").len() < before + 20 {
        assert!(resumed.elapsed() < Duration::from_secs(10), "writes succeed again");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");

    let refused = refused.lock().expect("lock").clone();
    assert!(!refused.is_empty(), "the outage was seen by requests");
    for (status, body, retry_after) in &refused {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["errors"][0]["code"], 503, "the Evotor error format");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    for n in acknowledged.lock().expect("lock").iter() {
        let view = partner(&node, "GET", &format!("/partner/v1/users/{}/cloud-token", user_id(*n)), None).json();
        assert_eq!(view["token"], format!("cloud-{n}"), "acknowledged write {n} is kept");
    }
}

#[test]
fn a_database_that_never_answers_is_not_ready_within_2_s_and_other_requests_go_on() {
    let Some(url) = postgres_url("a_database_that_never_answers_is_not_ready_within_2_s_and_other_requests_go_on")
    else {
        return;
    };
    let (proxy, proxied) = Proxy::to_database(&url);
    let schema = TestSchema::new(&url);
    let node = Gateway::guest(&format!("[limits]\nrequest_timeout_ms = 1000\n{}", schema.store_table(&proxied)), "");
    let ready = node.admin_url("/readyz");
    assert_eq!(get(&ready).status, 200);
    proxy.freeze();
    // A plugin stuck in a store call past its deadline: its request is answered all the same.
    let stuck = Instant::now();
    let reply = get(&node.url("/g/kv/get?key=a"));
    assert_eq!((reply.status, reply.header("retry-after")), (503, Some("1")), "{}", reply.text());
    assert!(stuck.elapsed() < Duration::from_millis(2500), "answered after {:?}", stuck.elapsed());
    // More probes at once than the machine has cores, as several load balancers would send.
    let probes: Vec<_> = (0..6)
        .map(|_| {
            let ready = ready.clone();
            std::thread::spawn(move || {
                let asked = Instant::now();
                (get(&ready).status, asked.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(get(&node.url("/g/version")).status, 200, "a request without the store is served");
        assert!(started.elapsed() < Duration::from_millis(500), "and at once: {:?}", started.elapsed());
    }
    for probe in probes {
        let (status, took) = probe.join().expect("probe");
        assert_eq!(status, 503);
        assert!(took < Duration::from_millis(2500), "/readyz answered in {took:?}");
    }
    proxy.thaw();
    let healed = Instant::now();
    while get(&ready).status != 200 {
        assert!(healed.elapsed() < Duration::from_secs(30), "ready again once the database answers");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_deploy_the_fleet_did_not_get_is_not_served_after_a_restart() {
    let Some(url) = postgres_url("a_deploy_the_fleet_did_not_get_is_not_served_after_a_restart") else {
        return;
    };
    let (proxy, proxied) = Proxy::to_database(&url);
    let schema = TestSchema::new(&url);
    let mut node = Gateway::guest(&format!("{}connect_timeout_ms = 1000\n", schema.store_table(&proxied)), "");
    assert_eq!(get(&node.url("/g/version")).text(), "1.0.0");
    proxy.cut();
    let build = std::fs::read(guest_wasm_version("2.0.0")).expect("the 2.0.0 build");
    let refused = admin(&node, "PUT", "/plugins/g", Some(&build));
    assert_eq!(refused.status, 500, "{}", refused.text());
    assert_eq!(get(&node.url("/g/version")).text(), "1.0.0", "nothing went live");
    let state = std::fs::read_to_string(node.data_dir().join("data/plugins/g/state.json")).unwrap_or_default();
    assert!(!state.contains("\"2.0.0\""), "state.json does not name the unpublished version: {state}");
    proxy.restore();
    node.restart();
    assert_eq!(get(&node.url("/g/version")).text(), "1.0.0", "after a restart either");
}

fn user_id(n: usize) -> String {
    format!("02-{n:015}")
}
