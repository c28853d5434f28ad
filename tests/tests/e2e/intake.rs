//! End to end: what the Evotor cloud really sends is taken, whole, through
//! the real gateway — V2 documents at a bare URL, Unix-millisecond
//! timestamps, tokens without a scheme, the largest delivery the limits
//! allow, a whole catalog unpaged, the plugin mounted under a prefix.

use evogate_e2e::{Gateway, evotor_table, post_json, request};
use serde_json::{Value, json};

const USER: &str = "01-000000000004217";
const STORE: &str = "20181012-5c6d-4e7f-8091-a2b3c4d5e6f7";
const V2_SELL: &str = include_str!("../../../plugin/testdata/v2-docs/01-SELL.json");

/// Registers `USER` with a running trial, the plugin mounted at `/`; returns the user token.
fn register(gateway: &Gateway) -> String {
    register_at(gateway, "")
}

/// Registers `USER` with a running trial, the plugin mounted at `base`; returns the user token.
fn register_at(gateway: &Gateway, base: &str) -> String {
    let trial = json!({"subscriptionId": "a99fbf70-6307-4acc-b61c-000000000001", "productId": "p", "userId": USER,
        "timestamp": "2026-11-01T10:00:00.000+0000", "sequenceNumber": 1, "type": "SubscriptionCreated",
        "planId": "basic", "trialPeriodDuration": "P3650DT", "deviceNumber": 10});
    let subscribed =
        post_json(&gateway.url(&format!("{base}/api/v1/subscription/event")), Some("server-secret"), &trial);
    assert_eq!(subscribed.status, 200, "{}", subscribed.text());
    let created = post_json(
        &gateway.url(&format!("{base}/api/v1/user/create")),
        Some("server-secret"),
        &json!({"userId": USER, "username": "owner", "password": "pw"}),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let body = created.json();
    assert_eq!((&body["userId"], &body["userUuid"]), (&json!(USER), &json!(USER)), "both id names");
    body["token"].as_str().expect("token").to_owned()
}

fn partner(gateway: &Gateway, path: &str) -> Value {
    let reply = request("GET", &gateway.url(path), &[("authorization", "Bearer partner-secret")], None);
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply.json()
}

/// `method path` with the user token as Evotor's own example sends it: no scheme.
fn bare_token(gateway: &Gateway, method: &str, path: &str, token: &str, body: &[u8]) -> evogate_e2e::Reply {
    let headers = [("content-type", "application/json"), ("authorization", token)];
    request(method, &gateway.url(path), &headers, Some(body))
}

#[test]
fn a_v2_document_alone_at_the_bare_url_with_a_bare_token_is_kept_whole() {
    let gateway = Gateway::evotor("");
    let token = register(&gateway);
    let reply = bare_token(&gateway, "PUT", "/", &token, V2_SELL.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), json!({"accepted": 1, "duplicates": 0}));
    let again = bare_token(&gateway, "PUT", "/", &token, V2_SELL.as_bytes());
    assert_eq!(again.json(), json!({"accepted": 0, "duplicates": 1}), "a redelivery changes nothing");

    let sent: Value = serde_json::from_str(V2_SELL).expect("JSON");
    let id = sent["id"].as_str().expect("id");
    let read = partner(&gateway, &format!("/partner/v1/stores/{}/documents/{id}", STORE.to_uppercase()));
    assert_eq!(read["document"], sent);
    assert_eq!((read["format"].as_str(), read["type"].as_str()), (Some("V2"), Some("SELL")));
    let listed =
        partner(&gateway, &format!("/partner/v1/stores/{STORE}/documents?type=SELL&from=2026-11-27T00:00:00Z"));
    assert_eq!(listed["items"][0]["id"], id);
    let device = sent["device_id"].as_str().expect("device");
    let devices = partner(&gateway, &format!("/partner/v1/users/{USER}/devices"));
    assert_eq!(devices["items"][0]["uuid"], device, "the terminal is registered by its first document");
}

#[test]
fn millisecond_timestamps_and_doubtful_content_are_taken_and_reported() {
    let gateway = Gateway::evotor("");
    let token = register(&gateway);
    let install = json!({"id": "ev-1", "timestamp": 1_504_168_645_290u64, "version": 1,
        "type": "ApplicationInstalled", "data": {"productId": "p", "userId": USER}});
    assert_eq!(post_json(&gateway.url("/api/v2/installation/event"), Some("server-secret"), &install).status, 200);
    let created = json!({"subscriptionId": "a99fbf70-6307-4acc-b61c-741ee9eef6c0", "productId": "p", "userId": USER,
        "timestamp": "1504168645290", "sequenceNumber": 1, "type": "SubscriptionCreated", "trialPeriodDuration": 14,
        "deviceNumber": "2"});
    assert_eq!(post_json(&gateway.url("/api/v1/subscription/event"), Some(&token), &created).status, 200);
    let employees = json!([{"uuid": "20181012-7b4c-40d2-80a7-2f7e1c9b5a31", "name": "", "role": "CASHIER",
        "phone": "+7 (900) 123-45-67", "stores": []}]);
    let reply = bare_token(&gateway, "PUT", "/api/v1/inventories/employees", &token, employees.to_string().as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    let issues = partner(&gateway, "/partner/v1/data-issues");
    let problems: Vec<&str> =
        issues["items"].as_array().expect("items").iter().filter_map(|i| i["problem"].as_str()).collect();
    assert!(problems.contains(&"name empty"), "{problems:?}");
    assert!(problems.iter().any(|p| p.starts_with("phone")), "{problems:?}");
    let subs = partner(&gateway, &format!("/partner/v1/users/{USER}/subscriptions"));
    let state = &subs["subscriptions"][1]["state"];
    assert_eq!(state["subscriptionId"], "a99fbf70-6307-4acc-b61c-741ee9eef6c0");
    assert_eq!((&state["status"], &state["deviceNumber"]), (&json!("TRIAL"), &json!(2)));
    assert_eq!(state["trialEnd"], 1_504_168_645_290u64 + 14 * 86_400_000);
    assert!(gateway.wait_for_log("data issue: employee"), "a new issue is logged once");
}

#[test]
fn the_largest_delivery_the_limits_allow_fits_the_default_instance_memory() {
    let gateway = Gateway::evotor("");
    let token = register(&gateway);
    let template: Value = serde_json::from_str(V2_SELL).expect("JSON");
    let limit = 32 * 1024 * 1024;
    let mut docs = Vec::new();
    let mut size = 2;
    // Documents of about 8 KiB each, up to just under the body limit.
    for n in 0u64.. {
        let mut doc = template.clone();
        doc["id"] = json!(format!("8d3c2f1e-5b7a-4c9d-9e0f-{n:012x}"));
        doc["extras"] = json!({"padding": "x".repeat(6000)});
        let len = doc.to_string().len() + 1;
        if size + len > limit {
            break;
        }
        size += len;
        docs.push(doc);
    }
    let body = Value::from(docs).to_string();
    assert!(body.len() > limit - 16 * 1024 && body.len() <= limit, "{} bytes", body.len());
    let count = body.matches("\"padding\"").count();
    let reply =
        bare_token(&gateway, "PUT", &format!("/api/v1/inventories/stores/{STORE}/documents"), &token, body.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), json!({"accepted": count, "duplicates": 0}));
    // Listed back in pages of at most 4 MiB of documents, each once.
    assert_eq!(documents_listed(&gateway), count);
}

#[test]
fn a_catalog_of_100000_products_answers_whole_unpaged() {
    let gateway = Gateway::evotor("");
    let token = register(&gateway);
    let product = |n: u32| {
        json!({"uuid": format!("{:08x}-0000-4000-8000-{n:012x}", n.wrapping_mul(2_654_435_761)), "group": false,
               "name": format!("Product number {n}"), "type": "NORMAL", "allowToSell": true, "measureName": "шт",
               "price": 99.9, "costPrice": 50, "quantity": 12.5, "tax": "VAT_20", "code": format!("{n}"),
               "articleNumber": format!("A-{n}"), "barCodes": [format!("46{n:011}")], "parentUuid": null,
               "description": "A product of the test"})
    };
    for batch in 0..10u32 {
        let items: Vec<Value> = (batch * 10_000..(batch + 1) * 10_000).map(product).collect();
        let reply = request(
            "PUT",
            &gateway.url(&format!("/partner/v1/stores/{STORE}/products")),
            &[("authorization", "Bearer partner-secret"), ("content-type", "application/json")],
            Some(Value::from(items).to_string().as_bytes()),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // The store is the user's once the user reads it.
    let path = format!("/api/v1/inventories/stores/{STORE}/products");
    let whole = bare_token(&gateway, "GET", &path, &token, b"");
    assert_eq!(whole.status, 200, "{}", whole.text());
    let items: Vec<Value> = serde_json::from_str(&whole.text()).expect("an array");
    assert_eq!(items.len(), 100_000);
    assert_eq!(whole.header("x-total-items-count"), None, "no paging headers unpaged");
    let last = bare_token(&gateway, "GET", &format!("{path}?page=33&size=3000"), &token, b"");
    assert_eq!(last.header("x-pagination-page-size"), Some("1000"), "the items on this page");
    assert_eq!(last.header("x-pagination-total-page-count"), Some("34"));
    assert_eq!(last.header("x-pagination-next-page"), None);
}

#[test]
fn the_plugin_works_mounted_under_a_route_prefix() {
    let gateway = Gateway::start(&evotor_table("/evotor", "", ""));
    let token = register_at(&gateway, "/evotor");
    let reply = bare_token(&gateway, "PUT", "/evotor", &token, V2_SELL.as_bytes());
    assert_eq!(reply.json(), json!({"accepted": 1, "duplicates": 0}), "the bare webhook is the route itself");
    let forged = [("authorization", "Bearer partner-secret"), ("x-evogate-base-path", "/")];
    let read = request("GET", &gateway.url(&format!("/evotor/partner/v1/stores/{STORE}/documents")), &forged, None);
    assert_eq!(read.status, 200, "the gateway's base path wins over a client's: {}", read.text());
    assert_eq!(read.json()["items"].as_array().map(Vec::len), Some(1));
    let unprefixed = post_json(&gateway.url("/api/v1/user/create"), Some("server-secret"), &json!({"userId": USER}));
    assert_eq!(unprefixed.status, 404, "nothing is served outside the route");
}

#[test]
fn ten_documents_of_three_mib_in_one_delivery_are_taken_and_listed() {
    let gateway = Gateway::evotor("");
    let token = register(&gateway);
    let template: Value = serde_json::from_str(V2_SELL).expect("JSON");
    let docs: Vec<Value> = (0u64..10)
        .map(|n| {
            let mut doc = template.clone();
            doc["id"] = json!(format!("8d3c2f1e-5b7a-4c9d-9e0f-{n:012x}"));
            doc["extras"] = json!({"padding": "x".repeat(3 << 20)});
            doc
        })
        .collect();
    let body = Value::from(docs).to_string();
    assert!(body.len() > 30 << 20 && body.len() < 32 << 20, "{} bytes", body.len());
    let reply =
        bare_token(&gateway, "PUT", &format!("/api/v1/inventories/stores/{STORE}/documents"), &token, body.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), json!({"accepted": 10, "duplicates": 0}));
    assert_eq!(documents_listed(&gateway), 10);
}

/// How many documents the partner API lists for the store, following `next` to the end.
fn documents_listed(gateway: &Gateway) -> usize {
    let (mut listed, mut after) = (0, String::new());
    loop {
        let page = partner(gateway, &format!("/partner/v1/stores/{STORE}/documents?limit=1000{after}"));
        listed += page["items"].as_array().map_or(0, Vec::len);
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return listed,
        }
    }
}
