//! What an operator sees: one trace from a delivery through the gateway and
//! the plugin, and the sync's requests to the cloud continuing theirs, at an
//! OTLP receiver in the harness; JSON log lines; honest job outcomes; the
//! metrics the dashboard and the alert rules use.

use evogate_e2e::cloud::{Account, MockCloud};
use evogate_e2e::otlp::{Receiver, Span};
use evogate_e2e::{Gateway, evotor_table, request, toml_str};
use serde_json::{Value, json};

const AUTH: (&str, &str) = ("authorization", "Bearer admin-secret");
const SERVER: (&str, &str) = ("authorization", "Bearer server-secret");
const USER: &str = "01-200000000000001";
const OTHER: &str = "01-200000000000002";
const B3_TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";
const B3_SPAN: &str = "a2fb4a1d1a96d312";

/// The Evotor plugin with the sync job against `cloud`, its traces to
/// `receiver` in `protocol`, sent every 100 ms; `top` goes first.
fn traced_gateway(cloud: &MockCloud, receiver: &Receiver, protocol: &str, top: &str) -> Gateway {
    let table = format!(
        "allowed_outbound_hosts = [{}]\n[[plugins.jobs]]\nname = \"sync\"\nevery = \"1h\"",
        toml_str(&cloud.url)
    );
    let settings = format!("evotor_api_url = {}\nbilling_enforcement = \"off\"", toml_str(&cloud.url));
    Gateway::start(&format!(
        "{top}\n[telemetry]\notlp_endpoint = {}\notlp_protocol = {}\nservice_name = \"evogate-e2e\"\n{}",
        toml_str(&receiver.url),
        toml_str(protocol),
        evotor_table("/", &table, &settings)
    ))
}

fn cloud_token(gateway: &Gateway, user: &str, token: &str, extra: &[(&str, &str)]) -> evogate_e2e::Reply {
    let body = json!({"userId": user, "token": token}).to_string();
    let mut headers = vec![SERVER, ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    request("POST", &gateway.url("/api/v1/user/token"), &headers, Some(body.as_bytes()))
}

fn account() -> Account {
    let store = "20170228-F4F1-401B-80FA-9ECCA8451F01";
    Account {
        stores: vec![json!({"id": store, "name": "Лавка", "updated_at": "2026-05-01T10:00:00.000+0000"})],
        devices: Vec::new(),
        employees: Vec::new(),
        products: Default::default(),
        groups: Default::default(),
        documents: Default::default(),
    }
}

fn run_sync(gateway: &Gateway) -> Value {
    let run = request("POST", &gateway.admin_url("/plugins/evotor/jobs/sync/run"), &[AUTH], None);
    assert_eq!(run.status, 200, "{}", run.text());
    run.json()
}

fn child_of<'a>(spans: &'a [Span], parent: &Span, name: &str) -> Option<&'a Span> {
    spans.iter().find(|span| span.name == name && span.parent_span_id == parent.span_id)
}

#[test]
fn a_b3_delivery_is_one_trace_through_the_gateway_and_the_plugin_and_the_sync_continues_its_own_to_the_cloud() {
    let (cloud, receiver) = (MockCloud::start(50), Receiver::start());
    cloud.account("cloud-1", account());
    let mut gateway = traced_gateway(&cloud, &receiver, "http/protobuf", "");

    // The Evotor cloud's headers, as it sends them with a delivery.
    let b3 = [
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-parentspanid", "0020000000000001"),
        ("x-b3-sampled", "1"),
    ];
    let reply = cloud_token(&gateway, USER, "cloud-1", &b3);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let request_id = reply.header("x-request-id").expect("a request id").to_owned();
    assert!(
        gateway.wait_for_log(&format!("trace_id=\"{B3_TRACE}\"")),
        "the access log names the trace:\n{}",
        gateway.log()
    );

    let sync = run_sync(&gateway);
    assert_eq!(sync["outcome"], "ok", "{sync}");
    let traceparents = cloud.traceparents();
    assert!(!traceparents.is_empty(), "the sync's requests carry the trace");

    // The last spans leave when the gateway drains.
    gateway.stop();
    let server = receiver
        .wait_for(|span| span.trace_id == B3_TRACE && span.parent_span_id == B3_SPAN)
        .unwrap_or_else(|| panic!("the delivery's span, below Evotor's: {:#?}", receiver.spans()));
    assert_eq!(server.name, "POST /");
    assert_eq!(server.service, "evogate-e2e");
    for (key, value) in [
        ("http.request.method", "POST"),
        ("url.path", "/api/v1/user/token"),
        ("http.route", "/"),
        ("http.response.status_code", "200"),
        ("evogate.plugin", "evotor"),
        ("evogate.request_id", request_id.as_str()),
    ] {
        assert_eq!(server.attributes.get(key).map(String::as_str), Some(value), "{key}: {server:#?}");
    }
    assert!(server.attributes.get("evogate.plugin.version").is_some_and(|v| !v.is_empty()), "{server:#?}");
    let spans = receiver.spans();
    child_of(&spans, &server, "instantiate").unwrap_or_else(|| panic!("the instance's start: {spans:#?}"));
    let call = child_of(&spans, &server, "call").unwrap_or_else(|| panic!("the call: {spans:#?}"));
    let kv_calls: u32 = call.attributes["evogate.kv.calls"].parse().expect("a count");
    assert!(kv_calls >= 2, "the store calls counted on the call's span, not a span each: {call:#?}");
    assert!(call.attributes.contains_key("evogate.kv.time_us"), "{call:#?}");
    assert!(spans.iter().filter(|span| span.trace_id == B3_TRACE).all(|span| !span.name.starts_with("kv")));

    // The sync run's trace: its requests to the cloud are its children, and the cloud got them.
    let job = spans.iter().find(|span| span.name == "job evotor/sync").expect("the job run's span");
    assert_eq!(job.attributes.get("evogate.job.outcome").map(String::as_str), Some("ok"));
    let outgoing: Vec<&Span> =
        spans.iter().filter(|span| span.trace_id == job.trace_id && span.name == "GET").collect();
    assert!(!outgoing.is_empty(), "the sync's requests are spans of the run's trace: {spans:#?}");
    for traceparent in &traceparents {
        let [version, trace, parent, flags] = traceparent.split('-').collect::<Vec<_>>()[..] else {
            panic!("a traceparent: {traceparent}")
        };
        assert_eq!((version, trace, flags), ("00", job.trace_id.as_str(), "01"), "{traceparent}");
        assert!(outgoing.iter().any(|span| span.span_id == parent), "{traceparent} names a request's span");
    }
    assert!(outgoing.iter().all(|span| span.attributes.get("url.full").is_some_and(|url| url.starts_with(&cloud.url))));
}

#[test]
fn traces_go_as_otlp_json_too_and_an_unsampled_delivery_leaves_no_span() {
    let (cloud, receiver) = (MockCloud::start(50), Receiver::start());
    let mut gateway = traced_gateway(&cloud, &receiver, "http/json", "");
    let unsampled =
        [("x-b3-traceid", "11111111111111111111111111111111"), ("x-b3-spanid", B3_SPAN), ("x-b3-sampled", "0")];
    assert_eq!(cloud_token(&gateway, OTHER, "cloud-9", &unsampled).status, 200);
    let traceparent = [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")];
    assert_eq!(cloud_token(&gateway, USER, "cloud-1", &traceparent).status, 200);
    gateway.stop();
    let server = receiver
        .wait_for(|span| {
            span.trace_id == "0af7651916cd43dd8448eb211c80319c" && span.parent_span_id == "b7ad6b7169203331"
        })
        .unwrap_or_else(|| panic!("the W3C delivery's span: {:#?}", receiver.spans()));
    assert_eq!((server.name.as_str(), server.parent_span_id.as_str()), ("POST /", "b7ad6b7169203331"));
    assert!(receiver.formats().iter().all(|format| format.starts_with("application/json")), "{:?}", receiver.formats());
    assert!(
        receiver.spans().iter().all(|span| span.trace_id != "11111111111111111111111111111111"),
        "the caller's decision not to sample holds"
    );
}

#[test]
fn json_logs_are_one_object_a_line_with_the_request_trace_plugin_and_version() {
    let gateway = Gateway::evotor("[log]\nformat = \"json\"");
    let traceparent = [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")];
    let reply = cloud_token(&gateway, USER, "cloud-1", &traceparent);
    assert_eq!(reply.status, 200);
    let request_id = reply.header("x-request-id").expect("a request id").to_owned();
    assert!(gateway.wait_for_log(&request_id));
    let log = gateway.log();
    let lines: Vec<Value> =
        log.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"))).collect();
    let access = lines
        .iter()
        .find(|line| line["target"] == "evogate::access" && line["request_id"] == request_id.as_str())
        .unwrap_or_else(|| panic!("the access line: {log}"));
    assert_eq!(access["trace_id"], "0af7651916cd43dd8448eb211c80319c", "{access}");
    assert_eq!(access["plugin"], "evotor", "{access}");
    assert!(access["version"].as_str().is_some_and(|version| !version.is_empty()), "{access}");
    assert_eq!((access["level"].as_str(), access["status"].as_u64()), (Some("INFO"), Some(200)), "{access}");
    assert!(access["time"].as_str().is_some_and(|time| time.ends_with('Z')), "{access}");
}

#[test]
fn a_sync_where_some_users_failed_is_partial_where_all_did_an_error_and_its_summary_is_not_a_warning() {
    let cloud = MockCloud::start(50);
    cloud.account("cloud-1", account());
    let table = format!(
        "allowed_outbound_hosts = [{}]\n[[plugins.jobs]]\nname = \"sync\"\nevery = \"1h\"",
        toml_str(&cloud.url)
    );
    let settings = format!("evotor_api_url = {}\nbilling_enforcement = \"off\"", toml_str(&cloud.url));
    let gateway = Gateway::start(&evotor_table("/", &table, &settings));

    assert_eq!(cloud_token(&gateway, USER, "cloud-1", &[]).status, 200);
    assert_eq!(run_sync(&gateway)["outcome"], "ok");
    let line =
        gateway.log().lines().rev().find(|line| line.contains("sync: ")).map(str::to_owned).expect("the summary");
    assert!(line.contains(" INFO ") && !line.contains(" WARN "), "routine lines are not warnings: {line}");

    // The cloud refuses the second user's token: that user's part fails, the first's does not.
    assert_eq!(cloud_token(&gateway, OTHER, "cloud-refused", &[]).status, 200);
    let partial = run_sync(&gateway);
    assert_eq!(partial["outcome"], "partial", "{partial}");
    assert!(partial["error"].as_str().is_some_and(|summary| summary.contains("token-refused")), "{partial}");

    // Now neither token works: every part tried failed.
    assert_eq!(cloud_token(&gateway, USER, "cloud-refused-too", &[]).status, 200);
    let failed = run_sync(&gateway);
    assert_eq!(failed["outcome"], "error", "{failed}");

    let metrics = request("GET", &gateway.admin_url("/metrics"), &[AUTH], None).text();
    for outcome in ["ok", "partial", "error"] {
        let series = format!(r#"evogate_job_runs_total{{plugin="evotor",job="sync",outcome="{outcome}"}} 1"#);
        assert!(metrics.contains(&series), "{series}\n{metrics}");
    }
    let plugins = request("GET", &gateway.admin_url("/plugins"), &[AUTH], None).json();
    let last = &plugins[0]["jobs"][0]["lastRun"];
    assert_eq!(last["outcome"], "error", "{plugins}");
    assert!(last["error"].as_str().is_some_and(|error| error.contains("every part tried failed")), "{plugins}");
}

#[test]
fn the_metrics_an_operator_needs_are_there_build_process_store_size_and_store_calls_per_plugin() {
    let gateway = Gateway::evotor("");
    assert_eq!(cloud_token(&gateway, USER, "cloud-1", &[]).status, 200);
    let metrics = request("GET", &gateway.admin_url("/metrics"), &[AUTH], None).text();
    let value = |series: &str| -> f64 {
        let line =
            metrics.lines().find(|line| line.starts_with(series)).unwrap_or_else(|| panic!("{series}:\n{metrics}"));
        line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    assert_eq!(value(&format!(r#"evogate_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))), 1.0);
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("process_open_fds") >= 3.0 && value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_cpu_seconds_total") > 0.0);
    // What the file takes on disk, as `du` counts it (its length is more: redb extends it ahead, sparsely).
    let redb = std::os::unix::fs::MetadataExt::blocks(
        &std::fs::metadata(gateway.data_dir().join("data/evogate.redb")).expect("the store"),
    ) * 512;
    assert_eq!(value(r#"evogate_store_bytes{backend="redb"}"#), redb as f64);
    assert_eq!(value(r#"evogate_store_up{backend="redb"}"#), 1.0);
    assert!(value(r#"evogate_store_calls_total{plugin="evotor",op="commit"}"#) >= 1.0);
    assert!(value(r#"evogate_store_calls_total{plugin="evotor",op="get"}"#) >= 1.0);
    assert_eq!(value("evogate_instances_max"), 256.0);
}
