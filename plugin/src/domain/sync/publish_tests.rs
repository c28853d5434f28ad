//! Publishing against a fake Evotor cloud that keeps bulk tasks: what is
//! sent, in what shape and how often; tasks followed to their end; failed
//! items; no echo; the conflict rule; waits and refusals.

use super::*;
use crate::clock::Clock as _;
use crate::domain::catalog::validate;
use crate::domain::catalog::{self, claim_store};
use crate::http::Request;
use crate::outgoing::{self, Http};
use crate::testing::Fixture;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};

const USER: &str = "01-000000000000001";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const NOW: u64 = 1_780_000_000;

/// A fake cloud: bulk requests make tasks that stay `RUNNING` until the test ends them.
#[derive(Default)]
struct Cloud {
    sent: RefCell<Vec<outgoing::Request>>,
    /// Answers given before the cloud's own, in order.
    scripted: RefCell<VecDeque<outgoing::Response>>,
    tasks: RefCell<BTreeMap<String, Value>>,
    next: Cell<u32>,
}

fn answer(status: u16, headers: &[(&str, &str)], body: Value) -> outgoing::Response {
    let headers = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    outgoing::Response { status, headers, body: serde_json::to_vec(&body).expect("json") }
}

impl Cloud {
    fn then(&self, response: outgoing::Response) {
        self.scripted.borrow_mut().push_back(response);
    }

    /// Ends task `id` with `status` and `details`.
    fn end(&self, id: &str, status: &str, details: Value) {
        let task = json!({"id": id, "status": status, "type": "product", "details": details});
        self.tasks.borrow_mut().insert(id.to_owned(), task);
    }

    fn end_all(&self) {
        let ids: Vec<String> = self.tasks.borrow().keys().cloned().collect();
        for id in ids {
            self.end(&id, "COMPLETED", json!([]));
        }
    }

    /// `METHOD path?query` of each request, in order, from `from` on.
    fn lines(&self, from: usize) -> Vec<String> {
        self.sent.borrow()[from..]
            .iter()
            .map(|request| {
                let path = request.url.strip_prefix("https://api.evotor.ru").expect("the configured API");
                format!("{} {path}", request.method)
            })
            .collect()
    }

    fn count(&self) -> usize {
        self.sent.borrow().len()
    }

    fn body(&self, index: usize) -> Value {
        serde_json::from_slice(&self.sent.borrow()[index].body).expect("a JSON body")
    }
}

impl Http for Cloud {
    fn send(&self, request: &outgoing::Request) -> Result<outgoing::Response, outgoing::Error> {
        self.sent.borrow_mut().push(request.clone());
        let header = |name: &str| request.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert!(header("authorization").is_some_and(|auth| auth.starts_with("Bearer tok")), "the owner's token");
        if let Some(scripted) = self.scripted.borrow_mut().pop_front() {
            return Ok(scripted);
        }
        let path = request.url.strip_prefix("https://api.evotor.ru").expect("the configured API");
        let path = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').collect();
        Ok(match (request.method.as_str(), segments.as_slice()) {
            ("PUT", ["", "stores", _, "products" | "product-groups"]) => {
                assert_eq!(header("content-type"), Some(cloud::BULK));
                let id = format!("task-{}", self.next.get());
                self.next.set(self.next.get() + 1);
                self.tasks.borrow_mut().insert(id.clone(), json!({"id": id, "status": "RUNNING"}));
                answer(202, &[], json!({"id": id, "status": "ACCEPTED", "type": "product"}))
            }
            ("GET", ["", "bulks", id]) => match self.tasks.borrow().get(*id) {
                Some(task) => answer(200, &[], task.clone()),
                None => answer(404, &[], json!({"code": "not-found"})),
            },
            ("DELETE", ["", "stores", _, "products" | "product-groups"]) => answer(204, &[], json!({})),
            ("PATCH", ["", "stores", _, "products", _]) => {
                assert_eq!(header("content-type"), Some(cloud::SINGLE));
                answer(200, &[], json!({}))
            }
            other => panic!("unexpected request {other:?}"),
        })
    }
}

fn ctx<'a>(world: &'a Fixture, cloud: &'a Cloud) -> Ctx<'a> {
    Ctx { kv: &world.kv, config: &world.config, clock: &world.clock, http: cloud }
}

/// A world whose user owns the store and has the cloud token `tok`.
fn world() -> Fixture {
    let world = Fixture::new();
    world.clock.0.set(NOW);
    assert_eq!(world.server("/api/v1/user/token", json!({"userId": USER, "token": "tok"})).status, 200);
    claim_store(&world.ctx(), USER, STORE).expect("claimed");
    world
}

fn uuid(n: u32) -> String {
    format!("01ba18b6-8707-4f47-8d9c-{n:012x}")
}

fn product(n: u32, price: f64, quantity: f64) -> Value {
    json!({"uuid": uuid(n), "group": false, "name": format!("Tea {n}"), "type": "NORMAL", "allowToSell": true,
        "measureName": "шт", "price": price, "quantity": quantity, "tax": "NO_VAT", "parentUuid": uuid(999)})
}

fn group() -> Value {
    json!({"uuid": uuid(999), "group": true, "name": "Tea"})
}

fn partner(world: &Fixture, cloud: &Cloud, method: &str, path: &str, body: Option<Value>) -> Value {
    let mut request = Request::new(method, path).header("authorization", "Bearer partner");
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = crate::handle(&ctx(world, cloud), &request);
    assert_eq!(response.status, 200, "{method} {path}: {}", String::from_utf8_lossy(&response.body));
    response.body_json()
}

fn put(world: &Fixture, cloud: &Cloud, items: Vec<Value>) {
    partner(world, cloud, "PUT", &format!("/partner/v1/stores/{STORE}/products"), Some(Value::Array(items)));
}

fn status(world: &Fixture, cloud: &Cloud) -> Value {
    partner(world, cloud, "GET", &format!("/partner/v1/stores/{STORE}/publication"), None)
}

fn publish_now(world: &Fixture, cloud: &Cloud) -> (Done, Vec<&'static str>) {
    let settings = CloudSettings::read(&world.config).expect("settings");
    let now = world.clock.now_unix();
    let mut budget = Budget::new(&world.clock, now + 60, 2000);
    let mut outcomes = Vec::new();
    let done = publish(&ctx(world, cloud), &settings, &mut budget, &mut |outcome| outcomes.push(outcome.name()))
        .expect("a run");
    (done, outcomes)
}

fn feed_kinds(world: &Fixture) -> Vec<String> {
    storage::scan_all(&world.kv, storage::FEED_PREFIX)
        .expect("feed")
        .iter()
        .flat_map(|(key, record)| storage::feed_entries(key, &record.value).expect("entries"))
        .map(|(_, entry)| entry.kind)
        .collect()
}

fn issues(world: &Fixture) -> Vec<storage::IssueRecord> {
    storage::scan_all(&world.kv, storage::ISSUES_PREFIX)
        .expect("issues")
        .iter()
        .map(|(key, entry)| storage::decode(key, &entry.value).expect("issue"))
        .collect()
}

#[test]
fn the_partners_products_go_in_bulk_once_followed_to_their_end_and_a_lone_quantity_by_patch() {
    let (world, cloud) = (world(), Cloud::default());
    put(&world, &cloud, vec![group(), product(1, 10.0, 5.0), product(2, 20.0, 0.0)]);
    assert_eq!(status(&world, &cloud)["pending"]["upserts"], 3);

    let (done, outcomes) = publish_now(&world, &cloud);
    assert_eq!(
        cloud.lines(0),
        [format!("PUT /stores/{STORE}/product-groups"), format!("PUT /stores/{STORE}/products")],
        "groups, then their products, each in one bulk"
    );
    assert_eq!(
        cloud.body(1)[0],
        json!({"id": uuid(1), "parent_id": uuid(999), "name": "Tea 1", "measure_name": "шт", "tax": "NO_VAT",
            "allow_to_sell": true, "price": 10.0, "type": "NORMAL", "quantity": 5.0}),
        "the v2 shape, with the partner's id and its quantity"
    );
    assert_eq!(cloud.body(0), json!([{"id": uuid(999), "name": "Tea"}]));
    assert_eq!((done.sent, done.published, outcomes), (3, 0, vec!["publish-complete"]));
    let view = status(&world, &cloud);
    assert_eq!((view["pending"]["sending"].as_u64(), view["running"].as_array().map(Vec::len)), (Some(3), Some(2)));

    // Under way: asked about, nothing sent again.
    let (done, _) = publish_now(&world, &cloud);
    assert_eq!(cloud.lines(2), ["GET /bulks/task-0", "GET /bulks/task-1"]);
    assert_eq!(done.sent, 0);

    cloud.end_all();
    let (done, _) = publish_now(&world, &cloud);
    assert_eq!(done.published, 3);
    let view = status(&world, &cloud);
    assert_eq!((view["state"].as_str(), view["published"].as_u64()), (Some("idle"), Some(3)));
    assert_eq!(view["tasks"][0]["status"], "COMPLETED");
    assert_eq!(feed_kinds(&world).iter().filter(|kind| *kind == "catalog.published").count(), 2);

    // Nothing new: nothing asked, and the store's mark of work is gone.
    let before = cloud.count();
    let (done, _) = publish_now(&world, &cloud);
    assert_eq!((cloud.count(), done.requests), (before, 0));
    assert!(storage::scan_all(&world.kv, publication::DUE_PREFIX).expect("due").is_empty());

    // The same products again are no change; a quantity alone is a PATCH; a price is a bulk of one.
    put(&world, &cloud, vec![group(), product(1, 10.0, 5.0), product(2, 20.0, 0.0)]);
    assert_eq!(status(&world, &cloud)["pending"]["upserts"], 0);
    put(&world, &cloud, vec![product(1, 10.0, 4.0), product(2, 21.0, 0.0)]);
    publish_now(&world, &cloud);
    assert_eq!(
        cloud.lines(before),
        [format!("PUT /stores/{STORE}/products"), format!("PATCH /stores/{STORE}/products/{}", uuid(1))]
    );
    assert_eq!(cloud.body(before).as_array().map(Vec::len), Some(1));
    assert_eq!(cloud.body(before + 1), json!({"quantity": 4.0}));
}

#[test]
fn a_thousand_items_a_bulk_and_many_quantities_go_in_bulk_not_one_by_one() {
    let (world, cloud) = (world(), Cloud::default());
    put(&world, &cloud, vec![group()]);
    put(&world, &cloud, (1000..3500).map(|n| product(n, 1.0, 1.0)).collect());
    let (done, _) = publish_now(&world, &cloud);
    let sizes: Vec<usize> = (0..cloud.count()).map(|i| cloud.body(i).as_array().map_or(0, Vec::len)).collect();
    assert_eq!(sizes, [1, 1000, 1000, 500]);
    assert_eq!((done.requests, done.sent), (4, 2501));
    cloud.end_all();
    publish_now(&world, &cloud);
    // Stock for 30 products: over the PATCH threshold, so one bulk.
    put(&world, &cloud, (1000..1030).map(|n| product(n, 1.0, 2.0)).collect());
    let before = cloud.count();
    publish_now(&world, &cloud);
    let lines = cloud.lines(before);
    assert_eq!(lines.iter().filter(|line| line.starts_with("PUT")).count(), 1, "{lines:?}");
    assert!(lines.iter().all(|line| !line.starts_with("PATCH")), "{lines:?}");
}

#[test]
fn deletions_go_a_hundred_ids_a_request_each_item_deleted_in_the_cloud_once() {
    let (world, cloud) = (world(), Cloud::default());
    put(&world, &cloud, vec![group()]);
    put(&world, &cloud, (0..150).map(|n| product(n, 1.0, 1.0)).collect());
    publish_now(&world, &cloud);
    cloud.end_all();
    publish_now(&world, &cloud);
    // 151 is the partner's and was never published: whether the cloud has it cannot be known for sure.
    put(&world, &cloud, vec![product(151, 1.0, 1.0)]);
    let ids: Vec<Value> = (0..152).map(|n| json!(uuid(n))).collect();
    partner(&world, &cloud, "POST", &format!("/partner/v1/stores/{STORE}/products/delete"), Some(json!(ids)));
    let before = cloud.count();
    let (done, _) = publish_now(&world, &cloud);
    let lines = cloud.lines(before);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|line| line.starts_with(&format!("DELETE /stores/{STORE}/products?id="))));
    let ids: usize = lines.iter().map(|line| line.split(',').count()).sum();
    assert_eq!((ids, done.published), (151, 151));
    assert_eq!(status(&world, &cloud)["state"], "idle");
    let before = cloud.count();
    publish_now(&world, &cloud);
    assert_eq!(cloud.count(), before, "deleted once");
}

#[test]
fn an_item_the_cloud_refuses_is_a_data_issue_and_that_version_is_not_sent_again() {
    let (world, cloud) = (world(), Cloud::default());
    put(&world, &cloud, vec![group(), product(1, 10.0, 1.0), product(2, 10.0, 1.0)]);
    publish_now(&world, &cloud);
    cloud.end("task-0", "COMPLETED", json!([]));
    cloud.end(
        "task-1",
        "FAILED",
        json!([{"code": "validation_failed", "message": "validation failed for specified payload",
            "product_id": uuid(2), "violations": [{"subject": "tax", "reason": "unknown tax"}]}]),
    );
    let (done, _) = publish_now(&world, &cloud);
    assert_eq!((done.published, done.failed), (2, 1));
    let view = status(&world, &cloud);
    assert_eq!(view["failedItems"][0]["uuid"], uuid(2));
    let reason = view["failedItems"][0]["reason"].as_str().expect("a reason").to_owned();
    assert!(reason.contains("validation_failed") && reason.contains("tax: unknown tax"), "{reason}");
    let issue = issues(&world).into_iter().find(|issue| issue.entity_id == uuid(2)).expect("a data issue");
    assert!(issue.problem.contains("not published to the Evotor cloud"), "{}", issue.problem);
    assert!(feed_kinds(&world).contains(&"catalog.publication_failed".to_owned()));
    let before = cloud.count();
    publish_now(&world, &cloud);
    assert_eq!(cloud.count(), before, "the failed version is not sent again");
    // The partner's fix is.
    put(&world, &cloud, vec![product(2, 11.0, 1.0)]);
    publish_now(&world, &cloud);
    assert_eq!(cloud.lines(before), [format!("PUT /stores/{STORE}/products")]);
}

#[test]
fn what_came_from_evotor_is_not_sent_back_nor_is_the_partners_own_publication_coming_back() {
    let (world, cloud) = (world(), Cloud::default());
    let from_evotor = |n: u32, price: f64| (from_evotor(&world, product(n, price, 1.0), NOW),);
    from_evotor(1, 10.0);
    assert_eq!(status(&world, &cloud)["pending"]["upserts"], 0);
    let (done, _) = publish_now(&world, &cloud);
    assert_eq!((done.requests, cloud.count()), (0, 0));

    put(&world, &cloud, vec![product(2, 10.0, 1.0)]);
    publish_now(&world, &cloud);
    cloud.end_all();
    publish_now(&world, &cloud);
    // The cloud's event of the partner's own change: the same content, the same quantity.
    assert_eq!(from_evotor(2, 10.0).0, 0, "an echo changes nothing");
    let listed = partner(&world, &cloud, "GET", &format!("/partner/v1/stores/{STORE}/products"), None);
    let item = listed["items"].as_array().expect("items").iter().find(|item| item["product"]["uuid"] == uuid(2));
    assert_eq!(item.expect("listed")["source"], "partner");
    assert!(issues(&world).is_empty());
    // A terminal's change of it is Evotor's, kept, and not sent back.
    assert_eq!(from_evotor(2, 12.0).0, 1);
    let before = cloud.count();
    publish_now(&world, &cloud);
    assert_eq!(cloud.count(), before);
}

#[test]
fn an_evotor_change_and_a_pending_partner_version_the_later_wins_and_the_other_is_kept() {
    let (world, cloud) = (world(), Cloud::default());
    let evotor = |n: u32, price: f64, at: u64| {
        let mut unknown = Vec::new();
        let mut item = validate::lenient_item(product(n, price, 1.0), 0, &mut unknown).expect("an item");
        item.changed_ms = Some(i64::try_from(at * 1000).expect("ms"));
        let batch = std::collections::HashSet::from([item.uuid.clone()]);
        let now = world.clock.now_unix();
        transact(&world.ctx(), |txn| catalog::upsert_in(txn, STORE, Some(USER), &[item.clone()], &batch, "evotor", now))
            .expect("stored")
    };
    let price = |n: u32| {
        let listed = partner(&world, &cloud, "GET", &format!("/partner/v1/stores/{STORE}/products"), None);
        let items = listed["items"].as_array().expect("items").clone();
        items.into_iter().find(|item| item["product"]["uuid"] == uuid(n)).expect("listed")["product"]["price"].clone()
    };
    put(&world, &cloud, vec![product(1, 10.0, 1.0), product(2, 10.0, 1.0)]);
    world.clock.0.set(NOW + 100);
    // Made on a terminal after the partner's change: Evotor's wins, the partner's is withdrawn.
    evotor(1, 15.0, NOW + 50);
    // Made before it, delivered late: the partner's stays and is published.
    evotor(2, 16.0, NOW - 50);
    assert_eq!((price(1), price(2)), (json!(15.0), json!(10.0)));
    let view = status(&world, &cloud);
    let conflicts = view["conflicts"].as_array().expect("conflicts");
    let kept: BTreeMap<String, (String, Value)> = conflicts
        .iter()
        .map(|c| {
            (c["uuid"].as_str().unwrap_or_default().to_owned(), (c["kept"].to_string(), c["other"]["price"].clone()))
        })
        .collect();
    assert_eq!(kept[&uuid(1)], ("\"evotor\"".to_owned(), json!(10.0)), "the partner's version kept aside");
    assert_eq!(kept[&uuid(2)], ("\"partner\"".to_owned(), json!(16.0)), "Evotor's version kept aside");
    assert_eq!(issues(&world).iter().filter(|issue| issue.problem.contains("the later change")).count(), 2);
    publish_now(&world, &cloud);
    assert_eq!(
        cloud.body(0).as_array().map(|items| items.iter().map(|item| item["id"].clone()).collect()),
        Some(vec![json!(uuid(2))]),
        "only the partner's winner is published"
    );
    // A version already sent wins whatever comes.
    evotor(2, 17.0, NOW + 500);
    assert_eq!(price(2), json!(10.0));
}

#[test]
fn failures_wait_rate_limits_wait_for_the_reset_and_a_refused_token_stops_until_a_new_one() {
    let (world, cloud) = (world(), Cloud::default());
    put(&world, &cloud, vec![product(1, 10.0, 1.0)]);
    cloud.then(answer(503, &[], json!({"message": "maintenance"})));
    let (done, outcomes) = publish_now(&world, &cloud);
    assert_eq!((done.requests, done.sent, outcomes), (1, 0, vec!["publish-failed"]));
    let view = status(&world, &cloud);
    assert_eq!((view["state"].as_str(), view["waitReason"].as_str()), (Some("waiting"), Some("backoff")));
    assert_eq!(view["lastError"]["status"], 503);
    publish_now(&world, &cloud);
    assert_eq!(cloud.count(), 1, "nothing asked while waiting");
    world.clock.0.set(NOW + 61);
    publish_now(&world, &cloud);
    assert_eq!(cloud.lines(1), [format!("PUT /stores/{STORE}/products")], "sent again after the wait");

    // The cloud's count says none left: nothing more until the window resets.
    put(&world, &cloud, vec![product(2, 10.0, 1.0)]);
    cloud.then(answer(
        200,
        &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "30")],
        json!({"id": "task-0", "status": "RUNNING"}),
    ));
    publish_now(&world, &cloud);
    assert_eq!(status(&world, &cloud)["waitReason"], "rate-limited");
    let before = cloud.count();
    world.clock.0.set(NOW + 80);
    publish_now(&world, &cloud);
    assert_eq!(cloud.count(), before);

    world.clock.0.set(NOW + 100);
    cloud.then(answer(401, &[], json!({"code": "unauthorized", "message": "token expired"})));
    let (_, outcomes) = publish_now(&world, &cloud);
    assert_eq!(outcomes, ["publish-blocked"]);
    let view = status(&world, &cloud);
    assert_eq!((view["state"].as_str(), view["blocked"].as_str()), (Some("blocked"), Some("token-refused")));
    assert!(issues(&world).iter().any(|issue| issue.entity == "publication" && issue.problem.contains("refused")));
    let before = cloud.count();
    world.clock.0.set(NOW + 10_000);
    publish_now(&world, &cloud);
    assert_eq!(cloud.count(), before, "nothing asked with a refused token");
    assert_eq!(world.server("/api/v1/user/token", json!({"userId": USER, "token": "tok"})).status, 200);
    // The same token sent again is still the refused one; a new one is what unblocks.
    publish_now(&world, &cloud);
    assert_eq!(cloud.count(), before);
    assert_eq!(world.server("/api/v1/user/token", json!({"userId": USER, "token": "tok2"})).status, 200);
    let (_, outcomes) = publish_now(&world, &cloud);
    let resumed = vec!["GET /bulks/task-0".to_owned(), format!("PUT /stores/{STORE}/products")];
    assert_eq!((outcomes, cloud.lines(before)), (vec!["publish-complete"], resumed), "the task, then what waited");
    assert_eq!(status(&world, &cloud)["blocked"], Value::Null);
}

/// Stores `product` as Evotor's change made at `at` (Unix seconds), as an event or the cloud sync would.
fn from_evotor(world: &Fixture, product: Value, at: u64) -> usize {
    let mut unknown = Vec::new();
    let mut item = validate::lenient_item(product, 0, &mut unknown).expect("an item");
    item.changed_ms = Some(i64::try_from(at * 1000).expect("ms"));
    let batch = std::collections::HashSet::from([item.uuid.clone()]);
    let now = world.clock.now_unix();
    transact(&world.ctx(), |txn| catalog::upsert_in(txn, STORE, Some(USER), &[item.clone()], &batch, "evotor", now))
        .expect("stored")
        .0
}

#[test]
fn after_a_sale_the_partners_same_stock_again_is_sent_because_the_cloud_holds_the_sale() {
    let (world, cloud) = (world(), Cloud::default());
    put(&world, &cloud, vec![product(1, 10.0, 10.0)]);
    publish_now(&world, &cloud);
    cloud.end_all();
    publish_now(&world, &cloud);
    // A sale on a terminal: 9 left, in the cloud and here.
    assert_eq!(from_evotor(&world, product(1, 10.0, 9.0), NOW + 10), 1);
    world.clock.0.set(NOW + 20);
    put(&world, &cloud, vec![product(1, 10.0, 10.0)]);
    let before = cloud.count();
    publish_now(&world, &cloud);
    assert_eq!(cloud.lines(before), [format!("PATCH /stores/{STORE}/products/{}", uuid(1))]);
    assert_eq!(cloud.body(before), json!({"quantity": 10.0}));
}

#[test]
fn the_partners_change_coming_back_while_its_task_runs_is_no_conflict() {
    let (world, cloud) = (world(), Cloud::default());
    put(&world, &cloud, vec![product(1, 10.0, 1.0)]);
    publish_now(&world, &cloud);
    // The cloud's event of the bulk arrives before the task is asked about.
    assert_eq!(from_evotor(&world, product(1, 10.0, 1.0), NOW + 5), 0);
    // And a window read again brings the same state once more.
    assert_eq!(from_evotor(&world, product(1, 10.0, 1.0), NOW + 5), 0);
    assert!(issues(&world).is_empty(), "{:?}", issues(&world));
    assert_eq!(status(&world, &cloud)["conflicts"], json!([]));
}

#[test]
fn a_completed_task_whose_details_are_the_products_fails_none_of_them() {
    let (world, cloud) = (world(), Cloud::default());
    put(&world, &cloud, vec![product(1, 10.0, 1.0), product(2, 10.0, 1.0)]);
    publish_now(&world, &cloud);
    // Each item's own answer: the product itself, whose `code` is its article code.
    cloud.end(
        "task-0",
        "COMPLETED",
        json!([{"id": uuid(1), "code": "42", "name": "Tea 1"},
        {"id": uuid(2), "code": "43", "name": "Tea 2"}]),
    );
    let (done, _) = publish_now(&world, &cloud);
    assert_eq!((done.published, done.failed), (2, 0));
    assert!(issues(&world).is_empty());
}

#[test]
fn a_bulk_taken_without_a_task_to_follow_is_sent_again_later_never_taken_as_published() {
    let (world, cloud) = (world(), Cloud::default());
    put(&world, &cloud, vec![product(1, 10.0, 1.0)]);
    cloud.then(answer(202, &[], json!({"status": "ACCEPTED"})));
    let (done, outcomes) = publish_now(&world, &cloud);
    assert_eq!((done.published, outcomes), (0, vec!["publish-failed"]));
    let view = status(&world, &cloud);
    assert_eq!((view["pending"]["upserts"].as_u64(), view["waitReason"].as_str()), (Some(1), Some("backoff")));
    world.clock.0.set(NOW + 61);
    publish_now(&world, &cloud);
    assert_eq!(cloud.lines(1), [format!("PUT /stores/{STORE}/products")]);
    assert_eq!(status(&world, &cloud)["running"].as_array().map(Vec::len), Some(1));
}

#[test]
fn a_run_that_ended_between_marking_and_the_answer_sends_again_and_an_evotor_change_meanwhile_loses() {
    let (world, cloud) = (world(), Cloud::default());
    put(&world, &cloud, vec![product(1, 10.0, 1.0)]);
    // The request is under way (marked); the run ends before the answer is recorded.
    let key = publication::pending_key(STORE, &uuid(1));
    transact(&world.ctx(), |txn| -> Result<(), ApiError> {
        let mut pending: Pending = txn.get(&key)?.expect("pending");
        pending.sending = Some(Sending { task: None, version: pending.version, digest: None, quantity: None });
        txn.put(&key, &pending);
        Ok(())
    })
    .expect("marked");
    // A terminal's change made later than the partner's, meanwhile: the version on its way wins.
    assert_eq!(from_evotor(&world, product(1, 12.0, 1.0), NOW + 30), 0);
    publish_now(&world, &cloud);
    assert_eq!(cloud.lines(0), [format!("PUT /stores/{STORE}/products")], "sent again");
    assert_eq!(cloud.body(0)[0]["price"], json!(10.0));
}

#[test]
fn nothing_is_sent_for_a_store_whose_owner_is_being_erased_and_an_erased_store_leaves_no_work_behind() {
    let (world, cloud) = (world(), Cloud::default());
    put(&world, &cloud, vec![product(1, 10.0, 1.0)]);
    transact(&world.ctx(), |txn| -> Result<(), ApiError> {
        txn.put(&storage::erasing_key(USER), &NOW);
        Ok(())
    })
    .expect("marked");
    let (_, outcomes) = publish_now(&world, &cloud);
    assert_eq!((cloud.count(), outcomes), (0, vec!["publish-failed"]));
    transact(&world.ctx(), |txn| -> Result<(), ApiError> {
        txn.delete(&storage::erasing_key(USER));
        Ok(())
    })
    .expect("unmarked");
    partner(&world, &cloud, "DELETE", &format!("/partner/v1/users/{USER}/data"), None);
    publish_now(&world, &cloud);
    assert_eq!(cloud.count(), 0);
    assert!(storage::scan_all(&world.kv, publication::DUE_PREFIX).expect("due").is_empty(), "no work left");
    assert!(storage::scan_all(&world.kv, &format!("cat/{STORE}/")).expect("catalog").is_empty(), "nothing written");
}
