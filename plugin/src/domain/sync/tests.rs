//! The sync against a fake Evotor cloud answering through the HTTP trait:
//! cursor paging, filters on the first page only, rate limits with a reset,
//! refused tokens, failing pages, and the publisher's event feed.

use super::run::Summary;
use super::state::RunState;
use super::*;
use crate::Ctx;
use crate::domain::{billing, transact};
use crate::errors::ApiError;
use crate::http::Request;
use crate::outgoing::{self, Http};
use crate::storage;
use crate::testing::Fixture;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;

const USER: &str = "01-000000000000001";
const OTHER: &str = "02-000000000000002";
const STORE: &str = "20170228-F4F1-401B-80FA-9ECCA8451FFB";
const DEVICE: &str = "20170301-AAAA-401B-80FA-9ECCA8451FFB";
const NOW: u64 = 1_780_000_000;

/// What the cloud holds for one token.
#[derive(Default, Clone)]
struct Account {
    stores: Vec<Value>,
    devices: Vec<Value>,
    employees: Vec<Value>,
    products: Vec<Value>,
    groups: Vec<Value>,
    documents: Vec<Value>,
}

/// A status, headers and (when not the default error) a body to answer instead of the data.
type Scripted = (u16, Vec<(String, String)>, Option<Value>);

/// A fake Evotor cloud: pages of two items; the cursor carries the filter.
#[derive(Default)]
struct Cloud {
    accounts: RefCell<BTreeMap<String, Account>>,
    feed: RefCell<Vec<Value>>,
    /// Per token (or `pub`): answers to give before the real one, in order.
    scripted: RefCell<BTreeMap<String, Vec<Scripted>>>,
    sent: RefCell<Vec<(String, String)>>,
    /// The time-out of every request so far.
    timeouts: RefCell<Vec<Option<std::time::Duration>>>,
}

impl Cloud {
    fn with(token: &str, account: Account) -> Self {
        let cloud = Self::default();
        cloud.accounts.borrow_mut().insert(token.into(), account);
        cloud
    }

    fn then_answer(&self, token: &str, status: u16, headers: &[(&str, &str)]) {
        let headers = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.scripted.borrow_mut().entry(token.into()).or_default().push((status, headers, None));
    }

    fn then_page(&self, token: &str, body: Value) {
        self.scripted.borrow_mut().entry(token.into()).or_default().push((200, Vec::new(), Some(body)));
    }

    /// (token, path and query) of every request so far.
    fn sent(&self) -> Vec<(String, String)> {
        self.sent.borrow().clone()
    }

    fn sent_with(&self, token: &str) -> usize {
        self.sent().iter().filter(|(sent, _)| sent == token).count()
    }
}

fn json_answer(status: u16, headers: Vec<(String, String)>, body: &Value) -> outgoing::Response {
    outgoing::Response { status, headers, body: serde_json::to_vec(body).expect("json") }
}

fn page_of(items: &[Value], offset: usize, filter: &str) -> Value {
    let page: Vec<Value> = items.iter().skip(offset).take(2).cloned().collect();
    let paging =
        if offset + 2 < items.len() { json!({"next_cursor": format!("{}|{filter}", offset + 2)}) } else { json!({}) };
    json!({"items": page, "paging": paging})
}

impl Http for Cloud {
    fn send(&self, request: &outgoing::Request) -> Result<outgoing::Response, outgoing::Error> {
        let header = |name: &str| request.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let token =
            header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned)).unwrap_or_default();
        let target = request.url.strip_prefix("https://api.evotor.ru").expect("the configured API").to_owned();
        self.sent.borrow_mut().push((token.clone(), target.clone()));
        self.timeouts.borrow_mut().push(request.timeout);
        assert_eq!(header("accept").as_deref(), Some(cloud::ACCEPT));
        if let Some(answers) = self.scripted.borrow_mut().get_mut(&token)
            && !answers.is_empty()
        {
            let (status, headers, body) = answers.remove(0);
            let body = body.unwrap_or_else(|| json!({"code": "x", "message": "scripted"}));
            return Ok(json_answer(status, headers, &body));
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        // A cursor names the offset and the first page's filter.
        let (offset, filter) = match params.get("cursor") {
            Some(cursor) => {
                let (offset, filter) = cursor.split_once('|').expect("our cursor");
                (offset.parse().expect("offset"), filter.to_owned())
            }
            None => (0, query.to_owned()),
        };
        let window: BTreeMap<String, String> = form_urlencoded::parse(filter.as_bytes()).into_owned().collect();
        let in_window = |item: &Value, field: &str| {
            let at = crate::time::timestamp(&item[field]).expect("a time");
            let bound = |name: &str| window.get(name).map(|v| v.parse::<i64>().expect("ms"));
            bound("since").is_none_or(|since| at >= since) && bound("until").is_none_or(|until| at < until)
        };
        if path == "/api/apps/app-1/events" {
            assert_eq!(token, "pub");
            let events: Vec<Value> = self.feed.borrow().iter().filter(|e| in_window(e, "timestamp")).cloned().collect();
            return Ok(json_answer(200, vec![], &page_of(&events, offset, &filter)));
        }
        let accounts = self.accounts.borrow();
        let Some(account) = accounts.get(&token) else {
            return Ok(json_answer(401, vec![], &json!({"code": "unauthorized", "message": "unknown token"})));
        };
        let items = match path.split('/').collect::<Vec<_>>().as_slice() {
            ["", "stores"] => account.stores.clone(),
            ["", "devices"] => account.devices.clone(),
            ["", "employees"] => account.employees.clone(),
            ["", "stores", _, "products"] => account.products.clone(),
            ["", "stores", _, "product-groups"] => account.groups.clone(),
            ["", "stores", _, "documents"] => {
                account.documents.iter().filter(|d| in_window(d, "close_date")).cloned().collect()
            }
            _ => return Ok(json_answer(404, vec![], &json!({"code": "not-found"}))),
        };
        Ok(json_answer(200, vec![], &page_of(&items, offset, &filter)))
    }
}

fn world(extra: &[(&str, &str)]) -> Fixture {
    let world = Fixture::with(extra);
    world.clock.0.set(NOW);
    world
}

fn ctx<'a>(world: &'a Fixture, cloud: &'a Cloud) -> Ctx<'a> {
    Ctx { kv: &world.kv, config: &world.config, clock: &world.clock, http: cloud }
}

fn partner(world: &Fixture, cloud: &Cloud, method: &str, path: &str) -> Value {
    let request = Request::new(method, path).header("authorization", "Bearer partner");
    let response = crate::handle(&ctx(world, cloud), &request);
    assert_eq!(response.status, 200, "{method} {path}: {}", String::from_utf8_lossy(&response.body));
    response.body_json()
}

fn token(world: &Fixture, user: &str, token: &str) {
    let reply = world.server("/api/v1/user/token", json!({"userId": user, "token": token}));
    assert_eq!(reply.status, 200);
}

fn run_job(world: &Fixture, cloud: &Cloud) -> Summary {
    run(&ctx(world, cloud), NOW + 60).expect("a run")
}

fn store(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "address": "Moscow", "user_id": USER, "created_at": "2026-05-01T10:00:00.000+0000",
        "updated_at": "2026-05-01T10:00:00.000+0000"})
}

fn product(n: usize) -> Value {
    json!({"id": format!("01ba18b6-8707-4f47-8d9c-4db0580540{n:02}"), "name": format!("Tea {n}"), "store_id": STORE,
        "type": "NORMAL", "price": 100 + n, "measure_name": "шт", "tax": "NO_VAT", "allow_to_sell": true,
        "user_id": USER, "updated_at": "2026-05-01T10:00:00.000+0000"})
}

fn document(n: usize, close_ms: u64) -> Value {
    json!({"id": format!("a7619739-3548-450c-8752-34bd565b7f{n:02}"), "store_id": STORE, "device_id": DEVICE,
        "type": "SELL", "close_date": close_ms, "user_id": USER, "version": "V2", "body": {"n": n}})
}

fn account() -> Account {
    Account {
        stores: vec![store(STORE, "Lavka")],
        devices: vec![json!({"id": DEVICE, "name": "Till", "store_id": STORE, "user_id": USER})],
        employees: vec![json!({"id": "20170302-BBBB-401B-80FA-9ECCA8451FFB", "name": "Ann", "user_id": USER,
            "stores": [STORE]})],
        products: (0..5).map(product).collect(),
        groups: vec![json!({"id": "01ba18b6-8707-4f47-8d9c-4db058054c99", "name": "Drinks", "store_id": STORE,
            "user_id": USER})],
        documents: (0..3).map(|n| document(n, (NOW - 3600) * 1000 + n as u64)).collect(),
    }
}

/// Another user's account: a store, terminal and employee of its own, no documents.
fn other_account() -> Account {
    let mut other = account();
    other.stores = vec![store("20180101-CCCC-401B-80FA-9ECCA8451FFB", "Other")];
    for item in other.devices.iter_mut().chain(&mut other.employees) {
        item["id"] = json!(format!("{}9", &item["id"].as_str().expect("id")[..35]));
    }
    other.documents.clear();
    other
}

fn feed_kinds(world: &Fixture, cloud: &Cloud) -> Vec<String> {
    let feed = partner(world, cloud, "GET", "/partner/v1/feed?limit=1000");
    feed["items"].as_array().expect("items").iter().map(|item| item["kind"].as_str().unwrap_or("").to_owned()).collect()
}

fn items(value: &Value) -> usize {
    value["items"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_new_token_backfills_the_mirror_and_the_catalog_and_a_second_run_adds_nothing() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    token(&world, USER, "cloud-1");
    let summary = run_job(&world, &cloud);
    assert_eq!(summary.outcomes.get("complete"), Some(&1), "{summary}");
    let stores = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/stores"));
    assert_eq!(stores["items"][0]["data"]["name"], "Lavka");
    assert_eq!(stores["items"][0]["source"], "cloud");
    assert_eq!(items(&partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/devices"))), 1);
    assert_eq!(items(&partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/employees"))), 1);
    let catalog = partner(&world, &cloud, "GET", &format!("/partner/v1/stores/{STORE}/products?limit=100"));
    assert_eq!(items(&catalog), 6, "five products over three pages and a group: {catalog}");
    let documents = partner(&world, &cloud, "GET", &format!("/partner/v1/stores/{STORE}/documents"));
    assert_eq!(items(&documents), 3, "{documents}");
    // Every page asked once: stores, devices, employees, 3 pages of products, groups, 2 of documents.
    assert_eq!(cloud.sent().len(), 9, "{:?}", cloud.sent());
    let paged: Vec<&str> =
        cloud.sent.borrow().iter().filter(|(_, path)| path.contains("cursor=")).map(|_| "").collect::<Vec<_>>();
    assert_eq!(paged.len(), 3);
    let documents_first = cloud.sent().into_iter().find(|(_, path)| path.contains("/documents")).expect("asked").1;
    assert!(documents_first.contains("since=") && documents_first.contains("until="), "{documents_first}");

    let feed = feed_kinds(&world, &cloud);
    let status = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!(status["token"]["state"], "usable");
    assert_eq!(status["backfill"]["complete"], true);
    assert_eq!((status["read"].as_u64(), status["new"].as_u64()), (Some(12), Some(12)), "{status}");
    let through = status["documents"]["stores"][0]["throughMs"].as_i64().expect("a position");
    assert_eq!(through, crate::time::millis(NOW - 60), "read up to now minus the settling time");

    // Later: the window since the last one, from the position minus the overlap; nothing is new.
    world.clock.advance(600);
    let summary = run(&ctx(&world, &cloud), NOW + 660).expect("a run");
    assert_eq!((summary.requests, summary.new), (1, 0), "{summary}");
    let last = cloud.sent().last().cloned().expect("asked").1;
    assert!(last.contains(&format!("since={}", through - 600_000)), "{last}");
    assert_eq!(feed_kinds(&world, &cloud), feed, "a second run adds no feed entry");
    assert_eq!(items(&partner(&world, &cloud, "GET", &format!("/partner/v1/stores/{STORE}/documents"))), 3);
}

#[test]
fn a_document_pushed_and_pulled_is_one_record_and_only_the_clouds_own_are_added() {
    let world = world(&[]);
    let mut cloud_account = account();
    cloud_account.documents = (0..4).map(|n| document(n, (NOW - 7200) * 1000 + n as u64)).collect();
    let cloud = Cloud::with("cloud-1", cloud_account);
    let user_token = world.register(USER, "ivan");
    token(&world, USER, "cloud-1");
    let pushed = world.call(
        "PUT",
        &format!("/api/v1/inventories/stores/{STORE}/documents"),
        Some(&user_token),
        Some(json!([document(1, (NOW - 7200) * 1000 + 1)])),
    );
    assert_eq!(pushed.status, 200);
    run_job(&world, &cloud);
    let documents = partner(&world, &cloud, "GET", &format!("/partner/v1/stores/{STORE}/documents"));
    assert_eq!(items(&documents), 4, "{documents}");
    let received = feed_kinds(&world, &cloud).into_iter().filter(|kind| kind == "document.received").count();
    assert_eq!(received, 4, "one entry per document, the pushed one included once");
}

#[test]
fn a_rate_limited_user_waits_for_the_reset_and_the_others_go_on() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    cloud.accounts.borrow_mut().insert("cloud-2".into(), other_account());
    token(&world, USER, "cloud-1");
    token(&world, OTHER, "cloud-2");
    cloud.then_answer("cloud-1", 429, &[("x-ratelimit-reset", "30"), ("x-ratelimit-remaining", "0")]);
    let summary = run_job(&world, &cloud);
    assert_eq!((summary.outcomes.get("rate-limited"), summary.outcomes.get("complete")), (Some(&1), Some(&1)));
    assert_eq!(cloud.sent_with("cloud-1"), 1);
    let status = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!((status["waitUntil"].as_u64(), status["waitReason"].as_str()), (Some(NOW + 30), Some("rate-limited")));
    assert_eq!(status["lastError"]["status"], 429);

    world.clock.advance(29);
    run(&ctx(&world, &cloud), NOW + 90).expect("a run");
    assert_eq!(cloud.sent_with("cloud-1"), 1, "nothing asked before the reset");
    world.clock.advance(1);
    run(&ctx(&world, &cloud), NOW + 90).expect("a run");
    assert!(cloud.sent_with("cloud-1") > 1);
    let status = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!((status["backfill"]["complete"].as_bool(), status["waitUntil"].as_u64()), (Some(true), None));
}

#[test]
fn a_refused_token_is_marked_unusable_until_a_new_one_arrives() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-2", account());
    token(&world, USER, "cloud-1");
    run_job(&world, &cloud);
    let status = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!(status["token"]["state"], "refused");
    assert_eq!(status["token"]["refused"]["status"], 401);
    assert!(feed_kinds(&world, &cloud).contains(&"cloud-token.refused".to_owned()));
    let issues = partner(&world, &cloud, "GET", "/partner/v1/data-issues");
    assert!(
        issues["items"]
            .as_array()
            .expect("issues")
            .iter()
            .any(|i| i["problem"].as_str().is_some_and(|p| p.contains("refused the user's token")))
    );
    world.clock.advance(3600);
    run(&ctx(&world, &cloud), NOW + 3700).expect("a run");
    assert_eq!(cloud.sent().len(), 1, "a refused token is not tried again");

    token(&world, USER, "cloud-2");
    run(&ctx(&world, &cloud), NOW + 3700).expect("a run");
    let status = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!(
        (status["token"]["state"].as_str(), status["backfill"]["complete"].as_bool()),
        (Some("usable"), Some(true))
    );
}

#[test]
fn a_failing_page_is_tried_again_after_a_wait_from_where_it_stopped() {
    let world = world(&[("sync_max_requests_per_user", "4")]);
    let cloud = Cloud::with("cloud-1", account());
    token(&world, USER, "cloud-1");
    // Four requests: stores, devices, employees, the first page of products; the run ends there.
    let summary = run_job(&world, &cloud);
    assert_eq!(summary.outcomes.get("budget"), Some(&1), "{summary}");
    cloud.then_answer("cloud-1", 503, &[]);
    world.clock.advance(300);
    run(&ctx(&world, &cloud), NOW + 360).expect("a run");
    let failed = cloud.sent().last().cloned().expect("asked").1;
    assert!(failed.contains("/products?cursor="), "the run went on from the cursor: {failed}");
    let status = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!((status["waitReason"].as_str(), status["failures"].as_u64()), (Some("backoff"), Some(1)));
    assert_eq!(status["lastRun"]["outcome"], "failed");
    let asked = cloud.sent().len();
    run(&ctx(&world, &cloud), NOW + 360).expect("a run");
    assert_eq!(cloud.sent().len(), asked, "waiting out the backoff");
    world.clock.advance(60);
    run(&ctx(&world, &cloud), NOW + 420).expect("a run");
    assert_eq!(cloud.sent()[asked].1, failed, "the same page again");
    let catalog = partner(&world, &cloud, "GET", &format!("/partner/v1/stores/{STORE}/products?limit=100"));
    assert!(items(&catalog) >= 4, "{catalog}");
}

#[test]
fn the_publisher_feed_goes_through_the_webhook_intake_and_a_delivered_event_is_taken_once() {
    let world = world(&[
        ("evotor_app_id", "app-1"),
        ("evotor_publisher_token", "pub"),
        ("events_webhook_allow_unsigned", "true"),
    ]);
    let cloud = Cloud::with("cloud-1", account());
    let events: Vec<Value> = (0..3)
        .map(|n| json!({"id": format!("ev-{n}"), "timestamp": (NOW - 600) * 1000 + n, "type": "Document", "action": "created",
            "payload": document(n as usize, (NOW - 600) * 1000 + n)}))
        .collect();
    *cloud.feed.borrow_mut() = events.clone();
    // One of them came by webhook already (in the 2019 spelling of its type).
    let mut delivered = events[0].clone();
    delivered["type"] = json!("DocumentEvent");
    assert_eq!(world.call("POST", "/events", None, Some(delivered)).status, 200);
    token(&world, USER, "cloud-1");
    let summary = run_job(&world, &cloud);
    assert_eq!(summary.outcomes.get("feed-complete"), Some(&1), "{summary}");
    assert!(cloud.sent().iter().all(|(_, path)| !path.contains("/documents")), "documents come from the feed");
    let documents = partner(&world, &cloud, "GET", &format!("/partner/v1/stores/{STORE}/documents"));
    assert_eq!(items(&documents), 3);
    let listed = partner(&world, &cloud, "GET", "/partner/v1/events?limit=100");
    assert_eq!(items(&listed), 3, "the delivered event is not taken twice: {listed}");
    let status = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!(status["documents"]["source"], "feed");
    assert_eq!(status["documents"]["feed"]["new"], 2);
    assert_eq!(status["documents"]["feed"]["throughMs"], crate::time::millis(NOW - 60));
}

#[test]
fn the_partner_runs_one_users_sync_now_and_reads_where_it_stands() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    let request = |method: &str, user: &str| {
        let request =
            Request::new(method, &format!("/partner/v1/users/{user}/sync")).header("authorization", "Bearer partner");
        crate::handle(&ctx(&world, &cloud), &request)
    };
    assert_eq!(request("GET", USER).status, 404, "no token, nothing to sync");
    assert_eq!(request("POST", USER).status, 404);
    assert_eq!(request("GET", "nope").status, 400);
    token(&world, USER, "cloud-1");
    let ran = request("POST", USER);
    assert_eq!(ran.status, 200);
    let body = ran.body_json();
    assert_eq!((body["outcome"].as_str(), body["run"]["requests"].as_u64()), (Some("complete"), Some(9)), "{body}");
    assert_eq!(body["sync"]["backfill"]["complete"], true);
    assert!(cloud.sent().iter().all(|(token, _)| token == "cloud-1"));
    assert_eq!(request("GET", USER).body_json()["lastRun"]["requests"], 9);
}

#[test]
fn the_job_applies_the_time_based_rules_of_billing_once() {
    let world = world(&[("billing_enforcement", "evotor")]);
    let cloud = Cloud::default();
    let trial = json!({"subscriptionId": "a99fbf70-6307-4acc-b61c-741ee9eef6c1", "productId": "p", "userId": USER,
        "timestamp": (NOW - 15 * 86_400) * 1000, "sequenceNumber": 1, "type": "SubscriptionCreated",
        "planId": "basic", "trialPeriodDuration": "P14DT", "deviceNumber": 1});
    assert_eq!(world.server("/api/v1/subscription/event", trial).status, 200);
    let summary = run_job(&world, &cloud);
    assert_eq!((summary.time_rules.checked, summary.time_rules.lapsed), (1, 1), "{summary}");
    assert_eq!(feed_kinds(&world, &cloud).iter().filter(|kind| *kind == "subscription.lapsed").count(), 1);
    run_job(&world, &cloud);
    assert_eq!(feed_kinds(&world, &cloud).iter().filter(|kind| *kind == "subscription.lapsed").count(), 1, "once");
    assert!(cloud.sent().is_empty(), "no user has a token: nothing asked");
}

#[test]
fn a_gap_past_its_timeout_is_skipped_by_the_job_without_a_read() {
    let world = world(&[("billing_gap_timeout_secs", "100")]);
    let cloud = Cloud::default();
    let event = |sequence: u64, kind: &str| {
        json!({"subscriptionId": "b99fbf70-6307-4acc-b61c-741ee9eef6c1", "productId": "p", "userId": USER,
            "timestamp": NOW * 1000, "sequenceNumber": sequence, "type": kind, "planId": "basic"})
    };
    assert_eq!(world.server("/api/v1/subscription/event", event(1, "SubscriptionCreated")).status, 200);
    assert_eq!(world.server("/api/v1/subscription/event", event(3, "SubscriptionActivated")).status, 200);
    assert_eq!(run_job(&world, &cloud).time_rules.gaps_skipped, 0, "not yet");
    world.clock.advance(101);
    assert_eq!(run(&ctx(&world, &cloud), NOW + 200).expect("run").time_rules.gaps_skipped, 1);
    let state: billing::Subscription =
        storage::read(&world.kv, &storage::subscription_key("b99fbf70-6307-4acc-b61c-741ee9eef6c1"))
            .expect("read")
            .expect("a state");
    assert_eq!((state.applied_through, state.status), (3, Some(billing::Status::Active)));
}

#[test]
fn a_run_out_of_time_stops_before_asking_and_the_next_goes_on() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    token(&world, USER, "cloud-1");
    run(&ctx(&world, &cloud), NOW).expect("a run with no time left");
    assert!(cloud.sent().is_empty());
    run_job(&world, &cloud);
    assert_eq!(cloud.sent().len(), 9);
}

#[test]
fn erasing_a_users_data_erases_its_sync_state_and_its_token() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    token(&world, USER, "cloud-1");
    run_job(&world, &cloud);
    let erased = partner(&world, &cloud, "DELETE", &format!("/partner/v1/users/{USER}/data"));
    assert_eq!(erased["complete"], true);
    let request =
        Request::new("GET", &format!("/partner/v1/users/{USER}/sync")).header("authorization", "Bearer partner");
    assert_eq!(crate::handle(&ctx(&world, &cloud), &request).status, 404);
    let asked = cloud.sent().len();
    run_job(&world, &cloud);
    assert_eq!(cloud.sent().len(), asked, "nothing is asked for an erased user");
}

#[test]
fn the_plugin_runs_the_sync_job_and_names_it_for_any_other() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    token(&world, USER, "cloud-1");
    let job = |name: &str| crate::JobRun { job: name.into(), scheduled_at_ms: 0, timeout_ms: 60_000, manual: false };
    assert_eq!(crate::run_job(&ctx(&world, &cloud), &job("sync")), Ok(crate::JobOutcome::Done));
    assert_eq!(cloud.sent().len(), 9);
    let other = crate::run_job(&ctx(&world, &cloud), &job("tick")).expect_err("no such job");
    assert!(other.contains("\"sync\""), "{other}");
    let broken = Fixture::with(&[("evotor_api_auth", "basic")]);
    let failed = crate::run_job(&ctx(&broken, &cloud), &job("sync")).expect_err("a bad setting");
    assert!(failed.contains("evotor_api_auth"), "{failed}");
}

#[test]
fn a_run_where_some_users_failed_is_partial_and_one_where_every_user_failed_is_an_error() {
    let job = crate::JobRun { job: "sync".into(), scheduled_at_ms: 0, timeout_ms: 60_000, manual: false };
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    token(&world, USER, "cloud-1");
    // The cloud knows no account for this token: it refuses it.
    token(&world, OTHER, "cloud-refused");
    let partial = crate::run_job(&ctx(&world, &cloud), &job.clone()).expect("not every user failed");
    let crate::JobOutcome::Partial(summary) = partial else { panic!("partial, not {partial:?}") };
    assert!(summary.contains("1 of ") && summary.contains("token-refused 1"), "{summary}");

    let refused = self::world(&[]);
    token(&refused, USER, "cloud-refused");
    token(&refused, OTHER, "cloud-refused-too");
    let error = crate::run_job(&ctx(&refused, &cloud), &job).expect_err("every user failed");
    assert!(error.contains("every part tried failed (2)"), "{error}");
}

/// An account whose employees take `pages` pages of two to list.
fn endless(pages: usize, n: u8) -> Account {
    let mut account = account();
    account.stores = vec![store(&format!("20180101-CCCC-401B-80FA-9ECCA8451F{n:02}"), "Other")];
    account.devices.clear();
    account.documents.clear();
    account.products.clear();
    account.groups.clear();
    account.employees = (0..pages * 2)
        .map(|e| json!({"id": format!("20170302-{n:04}-401B-80FA-9ECCA84{e:05}"), "name": "E", "stores": []}))
        .collect();
    account
}

#[test]
fn users_take_turns_so_long_backfills_never_starve_the_others() {
    const THIRD: &str = "03-000000000000003";
    let world = world(&[("sync_max_requests_per_user", "3"), ("sync_max_requests_per_run", "6")]);
    let cloud = Cloud::with("cloud-1", endless(500, 1));
    cloud.accounts.borrow_mut().insert("cloud-2".into(), endless(500, 2));
    let mut third = account();
    third.documents.clear();
    cloud.accounts.borrow_mut().insert("cloud-3".into(), third);
    token(&world, USER, "cloud-1");
    token(&world, OTHER, "cloud-2");
    token(&world, THIRD, "cloud-3");
    let mut served_third_at = None;
    for run_number in 1..=6 {
        run_job(&world, &cloud);
        if served_third_at.is_none() && cloud.sent_with("cloud-3") > 0 {
            served_third_at = Some(run_number);
        }
    }
    assert!(served_third_at.is_some_and(|at| at <= 2), "the third user first served in run {served_third_at:?}");
    // Each took its turns: all three were asked alike, within one turn's allowance.
    let (a, b, c) = (cloud.sent_with("cloud-1"), cloud.sent_with("cloud-2"), cloud.sent_with("cloud-3"));
    assert!(a.abs_diff(b) <= 3 && c >= 6, "requests per user: {a}, {b}, {c}");
}

#[test]
fn one_users_data_failing_is_that_users_failure_and_the_run_goes_on() {
    let world = world(&[]);
    // A store whose record the store cannot take (over its 4 MiB a value): storing it fails.
    let mut broken = account();
    broken.stores[0]["address"] = json!("x".repeat(5 << 20));
    let cloud = Cloud::with("cloud-1", broken);
    cloud.accounts.borrow_mut().insert("cloud-2".into(), other_account());
    token(&world, USER, "cloud-1");
    token(&world, OTHER, "cloud-2");
    let summary = run_job(&world, &cloud);
    assert_eq!((summary.outcomes.get("failed"), summary.outcomes.get("complete")), (Some(&1), Some(&1)), "{summary}");
    let status = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!(status["waitReason"], "backoff", "{status}");
    assert!(status["lastError"]["message"].as_str().is_some_and(|m| m.contains("too large")), "{status}");
    let other = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{OTHER}/sync"));
    assert_eq!(other["backfill"]["complete"], true, "the other user synced: {other}");
    // Backed off: the next run does not ask for the broken user at once.
    let asked = cloud.sent_with("cloud-1");
    run_job(&world, &cloud);
    assert_eq!(cloud.sent_with("cloud-1"), asked);
}

#[test]
fn a_run_that_died_inside_a_user_backs_that_user_off_and_goes_on_after_it() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    cloud.accounts.borrow_mut().insert("cloud-2".into(), other_account());
    token(&world, USER, "cloud-1");
    token(&world, OTHER, "cloud-2");
    // What a run that trapped inside USER left behind.
    let died = RunState { v: storage::FORMAT, current: Some(USER.to_owned()), ..RunState::default() };
    transact(&world.ctx(), |txn| -> Result<(), ApiError> {
        txn.put(storage::SYNC_NEXT_USER_KEY, &died);
        Ok(())
    })
    .expect("store");
    run_job(&world, &cloud);
    assert_eq!(cloud.sent_with("cloud-1"), 0, "the culprit waits");
    assert!(cloud.sent_with("cloud-2") > 0, "the others go on");
    let status = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert!(status["lastError"]["message"].as_str().is_some_and(|m| m.contains("last run ended")), "{status}");
    let saved: RunState = storage::read(&world.kv, storage::SYNC_NEXT_USER_KEY).expect("read").expect("saved");
    assert_eq!(saved.current, None, "a run that ended saves that it did");
}

#[test]
fn no_cloud_request_waits_past_the_runs_deadline() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    token(&world, USER, "cloud-1");
    // Five seconds left of the run: no request may wait the configured 20.
    run(&ctx(&world, &cloud), NOW + 5).expect("a run");
    let timeouts = cloud.timeouts.borrow().clone();
    assert!(!timeouts.is_empty());
    assert!(timeouts.iter().all(|t| t.is_some_and(|t| t.as_secs() <= 5)), "{timeouts:?}");
    // The partner's sync-now stays within its budget, under the gateway's 8 s request deadline.
    cloud.timeouts.borrow_mut().clear();
    let request =
        Request::new("POST", &format!("/partner/v1/users/{USER}/sync")).header("authorization", "Bearer partner");
    assert_eq!(crate::handle(&ctx(&world, &cloud), &request).status, 200);
    let timeouts = cloud.timeouts.borrow().clone();
    assert!(timeouts.iter().all(|t| t.is_some_and(|t| t.as_secs() <= crate::config::DEFAULT_NOW_BUDGET_SECS)));
    const { assert!(crate::config::DEFAULT_NOW_BUDGET_SECS < 8) };
}

/// A page of `count` tiny items: far more than a page holds.
fn flood(count: usize) -> Value {
    json!({"items": vec![json!({}); count], "paging": {}})
}

#[test]
fn a_page_too_large_to_read_is_asked_for_again_smaller() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    token(&world, USER, "cloud-1");
    cloud.then_page("cloud-1", flood(5000));
    let summary = run_job(&world, &cloud);
    assert_eq!(summary.outcomes.get("complete"), Some(&1), "{summary}");
    let sent = cloud.sent();
    assert!(!sent[0].1.contains("limit="), "the first page at the cloud's own size");
    assert!(sent[1..].iter().all(|(_, url)| url.contains("limit=250")), "then smaller: {sent:?}");
    let status = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!(status["backfill"]["complete"], true, "{status}");
    let stores = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/stores"));
    assert_eq!(items(&stores), 1, "nothing of the flood was stored");
}

#[test]
fn a_cloud_that_floods_every_page_is_skipped_with_a_data_issue_and_the_rest_goes_on() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    token(&world, USER, "cloud-1");
    // Asked for 1000, 250, 62, 15 and 10: too many every time.
    for _ in 0..5 {
        cloud.then_page("cloud-1", flood(5000));
    }
    run_job(&world, &cloud);
    let limits: Vec<String> = cloud.sent().iter().take(5).map(|(_, url)| url.clone()).collect();
    for (url, limit) in limits.iter().zip(["", "limit=250", "limit=62", "limit=15", "limit=10"]) {
        assert!(url.contains(limit), "{url} asks {limit}");
    }
    let issues = partner(&world, &cloud, "GET", "/partner/v1/data-issues?limit=100");
    let skipped =
        issues["items"].as_array().expect("items").iter().any(|issue| {
            issue["problem"].as_str().is_some_and(|problem| problem.contains("skipped, its items not read"))
        });
    assert!(skipped, "{issues}");
    let status = partner(&world, &cloud, "GET", &format!("/partner/v1/users/{USER}/sync"));
    assert_eq!(status["backfill"]["complete"], true, "the other listings were read: {status}");
}

#[test]
fn a_warning_of_the_cloud_is_a_data_issue_once_per_path_counted_each_time() {
    let world = world(&[]);
    let cloud = Cloud::with("cloud-1", account());
    let warning = "299 - \"this URL stops working on 2027-03-01: use /api/v2/stores\"";
    let scripted = |cloud: &Cloud| {
        let listing = json!({"items": [store(STORE, "Лавка")], "paging": {}});
        cloud.scripted.borrow_mut().entry("cloud-1".into()).or_default().push((
            200,
            vec![("warning".into(), warning.into())],
            Some(listing),
        ));
    };
    scripted(&cloud);
    token(&world, USER, "cloud-1");
    run_job(&world, &cloud);
    scripted(&cloud);
    token(&world, USER, "cloud-1-again");
    cloud.accounts.borrow_mut().insert("cloud-1-again".into(), account());
    let moved = cloud.scripted.borrow_mut().remove("cloud-1").unwrap_or_default();
    cloud.scripted.borrow_mut().insert("cloud-1-again".into(), moved);
    run_job(&world, &cloud);
    let issues = partner(&world, &cloud, "GET", "/partner/v1/data-issues?limit=100");
    let warned: Vec<&Value> = issues["items"]
        .as_array()
        .expect("issues")
        .iter()
        .filter(|issue| {
            issue["problem"].as_str().is_some_and(|problem| problem.contains("stops working on 2027-03-01"))
        })
        .collect();
    assert_eq!(warned.len(), 1, "one issue for the path: {issues}");
    assert_eq!(warned[0]["entity"], "cloud-endpoint");
    assert_eq!(warned[0]["entityId"], "/stores");
    assert_eq!(warned[0]["count"], 2, "counted each time: {issues}");
}
