//! The Evotor plugin's cloud sync through the real gateway, against a mock
//! Evotor cloud: the `sync` job backfills the mirror and the catalog,
//! recovers documents only the cloud has (once), a second run adds
//! nothing, a 429 delays only its user, a refused token and a broken answer
//! are the partner's to see, and nothing leaves for a host the operator did
//! not allow; the partner's catalog changes are written into the cloud in
//! bulk, once, with the items the cloud refused told.

use evogate_e2e::cloud::{Account, MockCloud, Trouble};
use evogate_e2e::{Gateway, evotor_table, request, toml_str};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const AUTH: (&str, &str) = ("authorization", "Bearer admin-secret");
const PARTNER: (&str, &str) = ("authorization", "Bearer partner-secret");
const USER: &str = "01-100000000000001";
const SLOW: &str = "01-100000000000002";
const LOST: &str = "01-100000000000003";
const BROKEN: &str = "01-100000000000004";
const STORE: &str = "20170228-F4F1-401B-80FA-9ECCA8451FFB";
const DEVICE: &str = "20170301-AAAA-401B-80FA-9ECCA8451FFB";

/// The Evotor plugin on `/` with the sync job (run by hand here), calling
/// `api_url`, allowed to reach `allowed`.
fn gateway(api_url: &str, allowed: &str, settings: &str) -> Gateway {
    let table =
        format!("allowed_outbound_hosts = [{}]\n[[plugins.jobs]]\nname = \"sync\"\nevery = \"1h\"", toml_str(allowed));
    Gateway::start(&evotor_table("/", &table, &format!("evotor_api_url = {}\n{settings}", toml_str(api_url))))
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
    i64::try_from(since.as_millis()).expect("ms")
}

fn account(store: &str, documents: usize) -> Account {
    let products = (0..5)
        .map(|n| {
            json!({"id": format!("01ba18b6-8707-4f47-8d9c-4db0580540{n:02}"), "name": format!("Чай {n}"),
                "store_id": store, "type": "NORMAL", "price": 100 + n, "measure_name": "шт", "tax": "NO_VAT",
                "allow_to_sell": true, "updated_at": "2026-05-01T10:00:00.000+0000"})
        })
        .collect();
    let documents = (0..documents)
        .map(|n| {
            json!({"id": format!("a7619739-3548-450c-8752-34bd565b7f{n:02}"), "store_id": store, "device_id": DEVICE,
                "type": "SELL", "close_date": now_ms() - 3_600_000 + n as i64, "version": "V2", "body": {"n": n}})
        })
        .collect();
    Account {
        stores: vec![
            json!({"id": store, "name": "Лавка", "address": "Москва", "updated_at": "2026-05-01T10:00:00.000+0000"}),
        ],
        devices: vec![json!({"id": DEVICE, "name": "Касса", "store_id": store})],
        employees: vec![json!({"id": "20170302-BBBB-401B-80FA-9ECCA8451FFB", "name": "Анна", "stores": [store]})],
        products: [(store.to_owned(), products)].into(),
        groups: BTreeMap::new(),
        documents: [(store.to_owned(), documents)].into(),
    }
}

fn cloud_token(gateway: &Gateway, user: &str, token: &str) {
    let body = json!({"userId": user, "token": token}).to_string();
    let reply = request(
        "POST",
        &gateway.url("/api/v1/user/token"),
        &[("authorization", "Bearer server-secret"), ("content-type", "application/json")],
        Some(body.as_bytes()),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
}

fn partner(gateway: &Gateway, method: &str, path: &str) -> Value {
    let reply = request(method, &gateway.url(path), &[PARTNER], None);
    assert_eq!(reply.status, 200, "{method} {path}: {}", reply.text());
    reply.json()
}

fn run_sync(gateway: &Gateway) {
    run_sync_ending(gateway, "ok");
}

/// Runs the sync job and checks how the run ended (`partial`: some users' part failed).
fn run_sync_ending(gateway: &Gateway, outcome: &str) {
    let run = request("POST", &gateway.admin_url("/plugins/evotor/jobs/sync/run"), &[AUTH], None);
    assert_eq!(run.status, 200, "{}", run.text());
    assert_eq!(run.json()["outcome"], outcome, "{}", run.text());
}

fn count(value: &Value) -> usize {
    value["items"].as_array().map_or(0, Vec::len)
}

#[test]
fn the_sync_job_backfills_recovers_what_only_the_cloud_has_once_and_keeps_each_user_to_itself() {
    let cloud = MockCloud::start(2);
    let gateway = gateway(&cloud.url, &cloud.url, "");
    cloud.account("token-1", account(STORE, 3));
    let slow_store = "20180101-CCCC-401B-80FA-9ECCA8451FFB";
    cloud.account("token-2", account(slow_store, 0));
    cloud.account("token-4", account("20180101-DDDD-401B-80FA-9ECCA8451FFB", 0));
    cloud_token(&gateway, USER, "token-1");
    cloud_token(&gateway, SLOW, "token-2");
    cloud_token(&gateway, LOST, "token-3");
    cloud_token(&gateway, BROKEN, "token-4");
    cloud.trouble("token-2", Trouble::Status(429, vec![("x-ratelimit-reset".into(), "600".into())]));
    cloud.trouble("token-4", Trouble::Broken);
    // The refused token and the broken answer failed their users' parts; the others went through.
    run_sync_ending(&gateway, "partial");

    let stores = partner(&gateway, "GET", &format!("/partner/v1/users/{USER}/stores"));
    assert_eq!(
        (stores["items"][0]["data"]["name"].as_str(), stores["items"][0]["source"].as_str()),
        (Some("Лавка"), Some("cloud"))
    );
    // Billing is enforced and the user has no subscription: the terminal is not registered, and said so.
    assert_eq!(count(&partner(&gateway, "GET", &format!("/partner/v1/users/{USER}/devices"))), 0);
    let issues = partner(&gateway, "GET", "/partner/v1/data-issues?limit=1000");
    let past_licence = |issue: &Value| issue["problem"].as_str().is_some_and(|p| p.contains("licensed number"));
    assert!(issues["items"].as_array().is_some_and(|items| items.iter().any(past_licence)), "{issues}");
    assert_eq!(count(&partner(&gateway, "GET", &format!("/partner/v1/users/{USER}/employees"))), 1);
    assert_eq!(count(&partner(&gateway, "GET", &format!("/partner/v1/stores/{STORE}/products?limit=100"))), 5);
    let documents = partner(&gateway, "GET", &format!("/partner/v1/stores/{STORE}/documents"));
    assert_eq!(count(&documents), 3, "{documents}");
    let status = partner(&gateway, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!(status["lastRun"]["outcome"], "complete", "{status}");
    assert_eq!(status["backfill"]["complete"], true);

    // The 429 held back its own user only.
    let slow = partner(&gateway, "GET", &format!("/partner/v1/users/{SLOW}/sync"));
    assert_eq!((slow["waitReason"].as_str(), slow["lastError"]["status"].as_u64()), (Some("rate-limited"), Some(429)));
    assert_eq!(count(&partner(&gateway, "GET", &format!("/partner/v1/users/{SLOW}/stores"))), 0);
    // A token the cloud refuses, and an answer that is not a listing, are the partner's to see.
    let lost = partner(&gateway, "GET", &format!("/partner/v1/users/{LOST}/sync"));
    assert_eq!(
        (lost["token"]["state"].as_str(), lost["token"]["refused"]["status"].as_u64()),
        (Some("refused"), Some(401))
    );
    let broken = partner(&gateway, "GET", &format!("/partner/v1/users/{BROKEN}/sync"));
    assert!(broken["lastError"]["message"].as_str().is_some_and(|m| m.contains("not a listing")), "{broken}");
    assert_eq!(broken["waitReason"], "backoff");

    // A second run adds nothing and asks neither the waiting users nor the refused token.
    let feed = partner(&gateway, "GET", "/partner/v1/feed?limit=1000");
    let asked = (cloud.requests_with("token-2"), cloud.requests_with("token-3"), cloud.requests_with("token-4"));
    // The refused token stays refused until Evotor sends another: its user's part fails again.
    run_sync_ending(&gateway, "partial");
    assert_eq!(
        partner(&gateway, "GET", "/partner/v1/feed?limit=1000")["items"],
        feed["items"],
        "nothing new in the feed"
    );
    assert_eq!(count(&partner(&gateway, "GET", &format!("/partner/v1/stores/{STORE}/documents"))), 3);
    assert_eq!((cloud.requests_with("token-2"), cloud.requests_with("token-3"), cloud.requests_with("token-4")), asked);

    // The partner runs one user now.
    let now = partner(&gateway, "POST", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!(now["outcome"], "complete", "{now}");
    assert!(gateway.wait_for_log("sync: 4 users"), "the job logs what it did");
}

#[test]
fn nothing_leaves_for_a_host_outside_allowed_outbound_hosts_and_the_sync_status_says_so() {
    let cloud = MockCloud::start(100);
    let gateway = gateway(&cloud.url, "https://api.evotor.ru", "");
    cloud.account("token-1", account(STORE, 1));
    cloud_token(&gateway, USER, "token-1");
    let ran = partner(&gateway, "POST", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!(ran["outcome"], "failed", "{ran}");
    let message = ran["sync"]["lastError"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("allowed_outbound_hosts"), "{message}");
    assert!(cloud.requests().is_empty(), "no request reached the cloud");
}

#[test]
fn the_publisher_feed_recovers_documents_for_every_user_with_x_authorization() {
    let cloud = MockCloud::start(2);
    let settings =
        "evotor_api_auth = \"x-authorization\"\nevotor_app_id = \"app-1\"\nevotor_publisher_token = \"pub\"\n";
    let gateway = gateway(&cloud.url, &cloud.url, settings);
    cloud.account("token-1", account(STORE, 0));
    let events: Vec<Value> = (0..3)
        .map(|n| {
            json!({"id": format!("ev-{n}"), "timestamp": now_ms() - 600_000 + n, "type": "Document", "action": "created",
                "payload": {"id": format!("b7619739-3548-450c-8752-34bd565b7f{n:02}"), "store_id": STORE,
                    "device_id": DEVICE, "type": "SELL", "close_date": now_ms() - 600_000, "user_id": USER,
                    "version": "V2", "body": {}}})
        })
        .collect();
    cloud.feed("pub", events);
    cloud_token(&gateway, USER, "token-1");
    run_sync(&gateway);
    assert_eq!(count(&partner(&gateway, "GET", &format!("/partner/v1/stores/{STORE}/documents"))), 3);
    assert_eq!(count(&partner(&gateway, "GET", "/partner/v1/events?limit=100")), 3);
    assert!(cloud.requests_with("token-1") >= 3, "the user's backfill went with X-Authorization");
    assert!(cloud.requests().iter().all(|(_, path)| !path.contains("/documents")), "documents came from the feed");
    run_sync(&gateway);
    assert_eq!(count(&partner(&gateway, "GET", "/partner/v1/events?limit=100")), 3, "taken once");
}

#[test]
fn a_cloud_that_stops_answering_costs_its_user_a_backoff_not_the_run() {
    let cloud = MockCloud::start(100);
    let gateway = gateway(&cloud.url, &cloud.url, "sync_request_timeout_secs = 1\nbilling_enforcement = \"off\"\n");
    cloud.account("token-1", account(STORE, 1));
    cloud.account("token-2", account("20180101-CCCC-401B-80FA-9ECCA8451FFB", 1));
    cloud_token(&gateway, SLOW, "token-1");
    cloud_token(&gateway, USER, "token-2");
    cloud.trouble("token-1", Trouble::Slow(std::time::Duration::from_secs(20)));
    let started = std::time::Instant::now();
    run_sync_ending(&gateway, "partial");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the run did not wait for the slow answer");
    let slow = partner(&gateway, "GET", &format!("/partner/v1/users/{SLOW}/sync"));
    let message = slow["lastError"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("sync_request_timeout_secs"), "{slow}");
    assert_eq!(slow["waitReason"], "backoff");
    let other = partner(&gateway, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!(other["lastRun"]["outcome"], "complete", "{other}");
    assert_eq!(count(&partner(&gateway, "GET", &format!("/partner/v1/users/{USER}/devices"))), 1);
}

#[test]
fn the_partners_catalog_is_written_into_the_cloud_by_the_sync_job_once_with_what_failed_told() {
    let cloud = MockCloud::start(100);
    let gateway = gateway(&cloud.url, &cloud.url, "");
    cloud.account("token-1", account(STORE, 0));
    cloud_token(&gateway, USER, "token-1");
    // The backfill brings the store and its products from the cloud: nothing of that goes back.
    run_sync(&gateway);
    assert!(cloud.catalog_writes().is_empty(), "{:?}", cloud.catalog_writes());

    let store = STORE.to_ascii_lowercase();
    let group = "01ba18b6-8707-4f47-8d9c-0000000000aa";
    let (kept, refused) = ("01ba18b6-8707-4f47-8d9c-0000000000b1", "01ba18b6-8707-4f47-8d9c-0000000000b2");
    let product = |uuid: &str, name: &str| {
        json!({"uuid": uuid, "group": false, "parentUuid": group, "name": name, "type": "NORMAL", "price": 55.5,
            "quantity": 7, "measureName": "шт", "tax": "VAT_20", "allowToSell": true, "barCodes": ["4600000000017"]})
    };
    let items = json!([{"uuid": group, "group": true, "name": "Чай"}, product(kept, "Чай зелёный"),
        product(refused, "Чай чёрный")]);
    let put = request(
        "PUT",
        &gateway.url(&format!("/partner/v1/stores/{store}/products")),
        &[PARTNER, ("content-type", "application/json")],
        Some(items.to_string().as_bytes()),
    );
    assert_eq!(put.status, 200, "{}", put.text());
    cloud.refuse_item(refused, "the name is taken");
    let publication = |gateway: &Gateway| partner(gateway, "GET", &format!("/partner/v1/stores/{store}/publication"));
    assert_eq!(publication(&gateway)["pending"]["upserts"], 3);

    // One run sends the groups, then the products, in bulk; the next follows the tasks to their end.
    run_sync(&gateway);
    let writes = cloud.catalog_writes();
    let sent: Vec<(&str, &str)> = writes.iter().map(|(method, path, _)| (method.as_str(), path.as_str())).collect();
    assert_eq!(
        sent,
        [
            ("PUT", format!("/stores/{store}/product-groups").as_str()),
            ("PUT", format!("/stores/{store}/products").as_str())
        ]
    );
    assert_eq!(writes[0].2, json!([{"id": group, "name": "Чай"}]));
    assert_eq!(
        writes[1].2[0],
        json!({"id": kept, "parent_id": group, "name": "Чай зелёный", "type": "NORMAL", "price": 55.5, "quantity": 7,
            "measure_name": "шт", "tax": "VAT_20", "allow_to_sell": true, "barcodes": ["4600000000017"]})
    );
    assert_eq!(publication(&gateway)["running"].as_array().map(Vec::len), Some(2));
    run_sync(&gateway);
    let view = publication(&gateway);
    assert_eq!((view["state"].as_str(), view["published"].as_u64()), (Some("idle"), Some(2)), "{view}");
    assert_eq!(view["failedItems"][0]["uuid"], refused, "{view}");
    assert!(view["failedItems"][0]["reason"].as_str().is_some_and(|reason| reason.contains("the name is taken")));
    let issues = partner(&gateway, "GET", "/partner/v1/data-issues?limit=1000");
    let told =
        |issue: &Value| issue["entityId"] == refused && issue["problem"].as_str().is_some_and(|p| p.contains("taken"));
    assert!(issues["items"].as_array().is_some_and(|items| items.iter().any(told)), "{issues}");
    let feed = partner(&gateway, "GET", &format!("/partner/v1/feed?limit=1000&userId={USER}"));
    let kinds: Vec<&str> = feed["items"].as_array().expect("items").iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"catalog.published") && kinds.contains(&"catalog.publication_failed"), "{kinds:?}");
    let held = cloud.store_catalog(&store);
    assert!(held.contains_key(group) && held.contains_key(kept) && !held.contains_key(refused), "{held:?}");

    // Nothing new is nothing sent; a deletion is one request.
    run_sync(&gateway);
    assert_eq!(cloud.catalog_writes().len(), 2);
    let delete = request(
        "POST",
        &gateway.url(&format!("/partner/v1/stores/{store}/products/delete")),
        &[PARTNER, ("content-type", "application/json")],
        Some(json!([kept]).to_string().as_bytes()),
    );
    assert_eq!(delete.status, 200, "{}", delete.text());
    run_sync(&gateway);
    let writes = cloud.catalog_writes();
    assert_eq!((writes.len(), writes[2].0.as_str()), (3, "DELETE"));
    assert_eq!(writes[2].1, format!("/stores/{store}/products?id={kept}"));
    assert!(!cloud.store_catalog(&store).contains_key(kept));
    assert_eq!(publication(&gateway)["state"], "idle");
}
