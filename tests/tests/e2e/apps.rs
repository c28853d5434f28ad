//! Evotor apps on evogate: the loyalty example beside the Evotor plugin,
//! calling it in process — a terminal app's summary, each sale relayed once
//! to a mock ERP through failures and a restart — and calls between plugins
//! refused when not allowed, back along the way, or not from a plugin.

use evogate_e2e::erp::Erp;
use evogate_e2e::{
    Gateway, evotor_table, guest_wasm_version, loyalty_wasm, plugin_table, post_json, request, toml_str,
};
use hmac::Mac as _;
use serde_json::json;
use std::time::{Duration, Instant};

const ALICE: &str = "01-000000000000001";
const BOB: &str = "02-000000000000002";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const BOBS_STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffc";

/// The Evotor plugin on `/` and the loyalty example on `/loyalty`, relaying to `erp`.
fn shop_config(erp: &Erp) -> String {
    let loyalty = format!(
        "calls = [\"evotor\"]\nallowed_outbound_hosts = [{erp}]\n\
         [[plugins.jobs]]\nname = \"relay\"\nevery = \"1s\"\n\
         [plugins.config]\nerp_url = {url}\nerp_secret = \"erp-secret\"\nrelay_backoff_secs = 1\nrelay_max_attempts = 5\n",
        erp = toml_str(&erp.url),
        url = toml_str(&format!("{}/sales", erp.url)),
    );
    format!(
        "{}\n{}",
        evotor_table("/", "", "billing_enforcement = \"off\""),
        plugin_table("loyalty", &loyalty_wasm(), &loyalty)
    )
}

fn send(
    method: &str,
    url: &str,
    bearer: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> evogate_e2e::Reply {
    let auth = format!("Bearer {bearer}");
    let mut all = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
    all.extend_from_slice(headers);
    let body = body.map(|body| body.to_string());
    request(method, url, &all, body.as_deref().map(str::as_bytes))
}

/// Registers `user` with a store; the user token.
fn merchant(gateway: &Gateway, user: &str, login: &str, store: &str) -> String {
    let created = post_json(
        &gateway.url("/api/v1/user/create"),
        Some("server-secret"),
        &json!({"userId": user, "username": login, "password": "correct horse"}),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let token = created.json()["token"].as_str().expect("token").to_owned();
    let stores = send(
        "PUT",
        &gateway.url("/api/v1/inventories/stores"),
        &token,
        &[],
        Some(json!([{"uuid": store, "name": login}])),
    );
    assert_eq!(stores.status, 200, "{}", stores.text());
    token
}

fn put_documents(gateway: &Gateway, token: &str, documents: serde_json::Value) {
    let url = gateway.url(&format!("/api/v1/inventories/stores/{STORE}/documents"));
    let put = send("PUT", &url, token, &[], Some(documents));
    assert_eq!(put.status, 200, "{}", put.text());
}

fn summary(gateway: &Gateway, token: &str, store: &str) -> evogate_e2e::Reply {
    send("GET", &gateway.url("/loyalty/v1/summary"), token, &[("x-evotor-store-uuid", store)], None)
}

/// Waits until `done` holds, at most 30 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < until, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_evotor_app_answers_its_terminal_and_relays_each_sale_once_through_failures_and_a_restart() {
    let erp = Erp::start(2);
    let mut gateway = Gateway::start(&shop_config(&erp));
    let alice = merchant(&gateway, ALICE, "alice", STORE);
    merchant(&gateway, BOB, "bob", BOBS_STORE);

    // The terminal app's call: authenticated by the Evotor plugin, in Evotor's error format when not.
    let empty = summary(&gateway, &alice, STORE);
    assert_eq!(
        (empty.status, empty.json()),
        (200, json!({"storeId": STORE, "sales": 0, "total": 0})),
        "{}",
        empty.text()
    );
    let bad = summary(&gateway, "not-a-token", STORE);
    assert_eq!((bad.status, bad.error_code()), (401, Some(1002)), "{}", bad.text());
    assert_eq!(summary(&gateway, &alice, BOBS_STORE).status, 403, "another user's store");
    let no_store = send("GET", &gateway.url("/loyalty/v1/summary"), &alice, &[], None);
    assert_eq!(no_store.status, 400, "{}", no_store.text());

    // No client reaches the extension API, not even one that claims to be a plugin.
    let forged = send("GET", &gateway.url("/extension/v1/session"), &alice, &[("x-evogate-caller", "loyalty")], None);
    assert_eq!(forged.status, 404, "{}", forged.text());

    put_documents(
        &gateway,
        &alice,
        json!([
            {"uuid": "sale-1", "type": "SELL", "version": "V1", "closeDate": "2026-11-27T09:41:12.000+0000", "closeSum": "3548"},
            {"uuid": "back-1", "type": "PAYBACK", "version": "V1", "closeDate": "2026-11-27T09:42:12.000+0000", "closeSum": "10"},
            {"id": "sale-2", "type": "SELL", "version": "V2", "close_date": "2026-11-27T09:43:12.000+0000",
             "store_id": STORE, "body": {"result_sum": 217.82}},
        ]),
    );
    eventually("both sales counted", || summary(&gateway, &alice, STORE).json()["sales"] == 2);
    assert_eq!(summary(&gateway, &alice, STORE).json()["total"], 3765.82);
    eventually("both sales accepted by the ERP", || erp.accepted().len() == 2);

    // A restart: the relay goes on from where it was, nothing skipped or sent twice.
    gateway.restart();
    put_documents(
        &gateway,
        &alice,
        json!([{"uuid": "sale-3", "type": "SELL", "version": "V1", "closeDate": "2026-11-28T09:41:12.000+0000", "closeSum": "1.5"}]),
    );
    eventually("the third sale accepted", || erp.accepted().len() == 3);
    std::thread::sleep(Duration::from_secs(3));
    let accepted = erp.accepted();
    let mut keys: Vec<&str> = accepted.iter().map(|sale| sale.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["sale-1", "sale-2", "sale-3"], "each sale once, after its failed attempts");
    assert_eq!(erp.attempts("sale-1"), 3, "two 503s, then accepted");
    for sale in &accepted {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"erp-secret").expect("key");
        mac.update(&sale.body);
        assert_eq!(sale.signature, hex::encode(mac.finalize().into_bytes()), "signed");
    }
    assert_eq!(summary(&gateway, &alice, STORE).json()["sales"], 3);

    let dead =
        request("GET", &gateway.url("/loyalty/v1/dead-letters"), &[("authorization", "Bearer partner-secret")], None);
    assert_eq!((dead.status, dead.json()["items"].clone()), (200, json!([])), "{}", dead.text());
    let refused =
        request("GET", &gateway.url("/loyalty/v1/dead-letters"), &[("authorization", "Bearer server-secret")], None);
    assert_eq!(refused.status, 401, "the partner token only");
}

/// Three test plugins: `a` and `b` may call each other, `c` nobody; each
/// one's `fetch` action gets `fetch_url` + its `path` parameter.
fn callers_config(top: &str) -> String {
    let table = |name: &str, calls: &str, target: &str| {
        plugin_table(
            name,
            &guest_wasm_version("world-0.2.2"),
            &format!("calls = [{calls}]\n[plugins.config]\nfetch_url = \"http://{target}.evogate.internal\"\n"),
        )
    };
    format!("{top}\n{}{}{}", table("a", "\"b\"", "b"), table("b", "\"a\"", "a"), table("c", "", "b"))
}

#[test]
fn calls_between_plugins_go_in_process_when_allowed_and_never_back_along_the_way() {
    let gateway = Gateway::start(&callers_config("[limits]\nrequest_timeout_ms = 2000\n"));
    let fetched = request("GET", &gateway.url("/a/fetch?path=/b/version"), &[], None);
    assert_eq!(fetched.text(), "status=200 location= body=1.0.0", "a called b");
    // b calling a back, within a's request: refused before any instance of a runs.
    let back = request("GET", &gateway.url("/a/fetch?path=/b/fetch"), &[], None);
    assert_eq!(back.text(), "status=502 location= body=ErrorCode::HttpRequestDenied", "b could not call a back");
    // c may call nobody.
    let denied = request("GET", &gateway.url("/c/fetch?path=/b/version"), &[], None);
    assert_eq!((denied.status, denied.text()), (502, "ErrorCode::HttpRequestDenied".to_owned()));
    // The callee runs by the caller's deadline.
    let started = Instant::now();
    let looping = request("GET", &gateway.url("/a/fetch?path=/b/loop"), &[], None);
    assert!(started.elapsed() < Duration::from_secs(4), "ended by the deadline: {:?}", started.elapsed());
    assert!(looping.status == 503 || looping.text().starts_with("status=503"), "{} {}", looping.status, looping.text());

    let auth = format!("Bearer {}", evogate_e2e::ADMIN_TOKEN);
    let metrics = request("GET", &gateway.admin_url("/metrics"), &[("authorization", auth.as_str())], None).text();
    for line in [
        r#"evogate_plugin_calls_total{caller="a",callee="b",outcome="ok"} 1"#,
        r#"evogate_plugin_calls_total{caller="a",callee="b",outcome="error"} 2"#,
        r#"evogate_plugin_calls_total{caller="b",callee="a",outcome="refused"} 1"#,
        r#"evogate_plugin_calls_total{caller="c",callee="b",outcome="refused"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(gateway.log().contains("call refused"), "each refusal is logged");
}

#[test]
fn the_evotor_plugin_is_swapped_under_a_running_extension_without_redeploying_it() {
    // The Evotor plugin's route starts with another build (the test plugin), as before an upgrade.
    let erp = Erp::start(0);
    let placeholder = shop_config(&erp).replacen(
        &toml_str(&evogate_e2e::evotor_wasm().to_string_lossy()),
        &toml_str(&guest_wasm_version("world-0.2.2").to_string_lossy()),
        1,
    );
    let gateway = Gateway::start(&placeholder);
    let before = summary(&gateway, "any-token", STORE);
    assert_eq!(before.status, 404, "the placeholder knows no extension API: {}", before.text());

    let wasm = std::fs::read(evogate_e2e::evotor_wasm()).expect("the Evotor plugin");
    let auth = format!("Bearer {}", evogate_e2e::ADMIN_TOKEN);
    // Another program than the placeholder: forced, as an operator replacing it does.
    let url = gateway.admin_url("/plugins/evotor?force=true");
    let deployed = request("PUT", &url, &[("authorization", auth.as_str())], Some(&wasm));
    assert_eq!(deployed.status, 200, "{}", deployed.text());

    // The same extension build, never redeployed, now reaches the Evotor plugin's new version.
    let alice = merchant(&gateway, ALICE, "alice", STORE);
    let after = summary(&gateway, &alice, STORE);
    assert_eq!((after.status, after.json()["storeId"].as_str()), (200, Some(STORE)), "{}", after.text());
    assert_eq!(summary(&gateway, "not-a-token", STORE).error_code(), Some(1002));
}
