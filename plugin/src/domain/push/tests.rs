//! Push notifications against a scripted publisher API: the licensed
//! terminals by default, another user's terminal refused, a retried call
//! with the same `Idempotency-Key` one notification, the status asked
//! while it is open and kept, a refused token, the erasure.

use super::*;
use crate::outgoing::{Error, Response, Scripted};
use crate::testing::{FIXTURE_START, Fixture};

const USER: &str = "01-000000000000001";
const OTHER: &str = "02-000000000000002";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const OTHER_STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffc";
const D1: &str = "5a188de4-49b8-4cb4-800e-eb6b52024371";
const D2: &str = "5a188de4-49b8-4cb4-800e-eb6b52024372";
const D3: &str = "5a188de4-49b8-4cb4-800e-eb6b52024373";
const N1: &str = "0b3c8e6a-1f7e-4b8e-9a51-3c9d2f1e0a01";
const N2: &str = "0b3c8e6a-1f7e-4b8e-9a51-3c9d2f1e0a02";
const PUBLISHER: [(&str, &str); 2] = [("evotor_app_id", "app-1"), ("evotor_publisher_token", "pub")];

/// A user with two terminals, another user with one, the publisher settings.
fn world() -> Fixture {
    let world = Fixture::with(&PUBLISHER);
    for (user, login, store, devices) in [(USER, "ivan", STORE, vec![D1, D2]), (OTHER, "anna", OTHER_STORE, vec![D3])] {
        let token = world.register(user, login);
        let put = |path: &str, body: Value| {
            let answer = world.call("PUT", path, Some(&token), Some(body));
            assert_eq!(answer.status, 200, "{path}: {}", String::from_utf8_lossy(&answer.body));
        };
        put("/api/v1/inventories/stores", json!([{"uuid": store, "name": "Shop"}]));
        let devices: Vec<Value> =
            devices.iter().map(|d| json!({"uuid": d, "name": "Till", "storeUuid": store})).collect();
        put("/api/v1/inventories/devices", Value::Array(devices));
    }
    world
}

fn answer(status: u16, body: Value) -> Result<Response, Error> {
    Ok(Response { status, headers: Vec::new(), body: body.to_string().into_bytes() })
}

fn created(id: &str, status: &str, details: &[(&str, &str)]) -> Result<Response, Error> {
    let details: Vec<Value> = details.iter().map(|(d, s)| json!({"device_id": d, "status": s})).collect();
    answer(200, json!({"id": id, "status": status, "details": details}))
}

fn send(world: &Fixture, key: Option<&str>, body: Value) -> crate::http::Response {
    let mut request = crate::http::Request::new("POST", &format!("/partner/v1/users/{USER}/push-notifications"))
        .header("authorization", "Bearer partner")
        .json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    crate::handle(&world.ctx(), &request)
}

fn get(world: &Fixture, id: &str) -> crate::http::Response {
    world.call("GET", &format!("/partner/v1/push-notifications/{id}"), Some("partner"), None)
}

fn feed(world: &Fixture, kind: &str) -> Vec<Value> {
    let feed = world.call("GET", "/partner/v1/feed?limit=1000", Some("partner"), None).body_json();
    feed["items"].as_array().expect("items").iter().filter(|e| e["kind"] == kind).map(|e| e["data"].clone()).collect()
}

fn error(response: &crate::http::Response) -> (u16, Value) {
    (response.status, response.body_json()["errors"][0].clone())
}

#[test]
fn a_notification_goes_to_the_licensed_terminals_by_default_and_is_kept() {
    let mut world = world();
    world.http = Scripted::new([created(N1, "ACCEPTED", &[(&D1.to_uppercase(), "ACCEPTED")])]);
    let sent = send(&world, None, json!({"payload": {"text": "Привет", "n": 1}}));
    assert_eq!(sent.status, 201, "{}", String::from_utf8_lossy(&sent.body));
    let body = sent.body_json();
    assert_eq!(
        (body["id"].as_str(), body["userId"].as_str(), body["status"].as_str()),
        (Some(N1), Some(USER), Some("ACCEPTED"))
    );
    assert_eq!(
        body["devices"],
        json!([{"deviceUuid": D1, "status": "ACCEPTED"}, {"deviceUuid": D2, "status": null}]),
        "the cloud's report per device, lower case"
    );
    let request = &world.http.sent()[0];
    assert_eq!(
        (request.method.as_str(), request.url.as_str()),
        ("POST", "https://api.evotor.ru/api/apps/app-1/push-notifications")
    );
    for header in [("authorization", "Bearer pub"), ("content-type", "application/json"), ("accept", ACCEPT)] {
        assert!(request.headers.contains(&(header.0.into(), header.1.into())), "{header:?}");
    }
    let asked: Value = serde_json::from_slice(&request.body).expect("json");
    assert_eq!(
        asked,
        json!({"devices": [D1, D2], "payload": {"text": "Привет", "n": 1}}),
        "no active_till: the cloud's default"
    );
    assert_eq!(feed(&world, "push-notification.sent"), [json!({"id": N1, "userId": USER, "devices": [D1, D2]})]);
    assert_eq!(get(&world, N1).status, 200, "kept; the cloud is asked again, and cannot be: stale");

    // With the licence enforced and one terminal licensed, the first registered one.
    world.config.0.insert("billing_enforcement".into(), "evotor".into());
    let trial = json!({"subscriptionId": "a99fbf70-6307-4acc-b61c-741ee9eef6c1", "productId": "p", "userId": USER,
        "timestamp": "2026-12-30T00:00:00.000+0000", "sequenceNumber": 1, "type": "SubscriptionCreated",
        "planId": "basic", "trialPeriodDuration": "P14DT", "deviceNumber": 1});
    assert_eq!(world.server("/api/v1/subscription/event", trial).status, 200);
    world.http = Scripted::new([created(N2, "ACCEPTED", &[])]);
    let till = "2027-01-02T00:00:00.000+0000";
    assert_eq!(send(&world, None, json!({"payload": {}, "activeTill": till})).status, 201);
    let asked: Value = serde_json::from_slice(&world.http.sent()[0].body).expect("json");
    assert_eq!(asked, json!({"devices": [D1], "payload": {}, "active_till": (FIXTURE_START + 86_400) * 1000}));
}

#[test]
fn only_the_users_own_terminals_are_sent_to_and_the_limits_hold() {
    let mut world = world();
    world.http = Scripted::new([created(N1, "ACCEPTED", &[])]);
    for (body, status, subject) in [
        (json!({"devices": [D3], "payload": {}}), 422, "devices"),
        (json!({"devices": [D1, "5a188de4-49b8-4cb4-800e-eb6b52024379"], "payload": {}}), 422, "devices"),
        (json!({"devices": [], "payload": {}}), 422, "devices"),
        (json!({"devices": [D1]}), 400, "payload"),
        (json!({"devices": [D1], "payload": [1]}), 400, "payload"),
        (json!({"devices": [D1], "payload": {}, "activetill": 1}), 400, "activetill"),
        (json!({"devices": [D1], "payload": {}, "activeTill": "2020-01-01T00:00:00Z"}), 422, "activeTill"),
        (json!({"devices": [D1], "payload": {"x": "a".repeat(MAX_PAYLOAD_BYTES)}}), 422, "payload"),
    ] {
        let refused = send(&world, None, body.clone());
        let (got, item) = error(&refused);
        assert_eq!((got, item["subject"].as_str()), (status, Some(subject)), "{body}: {item}");
    }
    let foreign = error(&send(&world, None, json!({"devices": [D3], "payload": {}})));
    assert_eq!(foreign.1["value"], D3, "the device is named");
    let many: Vec<String> = (0..=MAX_DEVICES).map(|n| format!("5a188de4-49b8-4cb4-800e-{n:012}")).collect();
    assert_eq!(send(&world, None, json!({"devices": many, "payload": {}})).status, 422);
    assert_eq!(send(&world, Some("ключ"), json!({"payload": {}})).status, 400, "a key of printable ASCII only");
    assert!(world.http.sent().is_empty(), "nothing was asked of the cloud");
    assert_eq!(send(&world, None, json!({"devices": [D2.to_uppercase()], "payload": {}})).status, 201);
}

#[test]
fn a_retried_call_with_the_same_key_is_one_notification() {
    let mut world = world();
    world.http = Scripted::new([answer(503, json!({"message": "down"})), created(N1, "ACCEPTED", &[])]);
    let body = json!({"devices": [D1], "payload": {"a": 1}});
    // The cloud fails: nothing was made, the key is released.
    let failed = send(&world, Some("order-7"), body.clone());
    assert_eq!(failed.status, 502, "{}", String::from_utf8_lossy(&failed.body));
    let first = send(&world, Some("order-7"), body.clone());
    assert_eq!(first.status, 201);
    let again = send(&world, Some("order-7"), body.clone());
    assert_eq!((again.status, again.body_json()), (200, first.body_json()), "the stored notification");
    assert_eq!(world.http.sent().len(), 2, "one request for the retry that failed, one that made it");
    let other = send(&world, Some("order-7"), json!({"devices": [D1], "payload": {"a": 2}}));
    assert_eq!(error(&other).0, 422);
    assert_eq!(feed(&world, "push-notification.sent").len(), 1);
    // A key is kept as its digest only.
    assert!(world.kv.keys().iter().all(|key| !key.contains("order-7")));
}

#[test]
fn a_key_still_being_sent_waits_and_one_that_never_finished_goes_out_after_the_budget() {
    let mut world = world();
    let body = json!({"devices": [D1], "payload": {}});
    let request = json!({ "devices": [D1], "payload": {}, "activeTill": null });
    let digest = storage::sha256_hex(b"k");
    let request = storage::sha256_hex(request.to_string().as_bytes());
    assert_eq!(claim(&world.ctx(), USER, &digest, &request, FIXTURE_START, 66).expect("reserved"), None);
    assert_eq!(error(&send(&world, Some("k"), body.clone())).0, 409);
    world.clock.advance(66);
    world.http = Scripted::new([created(N1, "RUNNING", &[])]);
    assert_eq!(send(&world, Some("k"), body).status, 201, "the reservation outlived any call");
}

#[test]
fn the_status_is_asked_while_open_and_kept() {
    let mut world = world();
    world.http = Scripted::new([
        created(N1, "ACCEPTED", &[]),
        Err(Error::Timeout),
        answer(
            200,
            json!({"id": N1, "status": "COMPLETED", "modified_at": "2027-01-01T00:01:00.000+0000",
            "details": [{"device_id": D1, "status": "DELIVERED", "reply": {"ok": true}}, {"device_id": D2, "status": "SEEN"}]}),
        ),
    ]);
    assert_eq!(send(&world, None, json!({"payload": {}})).status, 201);
    let stale = get(&world, N1).body_json();
    assert_eq!((stale["status"].as_str(), stale["stale"].as_bool()), (Some("ACCEPTED"), Some(true)), "{stale}");
    world.clock.advance(30);
    let fresh = get(&world, &N1.to_uppercase()).body_json();
    assert_eq!(fresh["status"], "COMPLETED", "{fresh}");
    assert!(fresh.get("stale").is_none());
    assert_eq!(
        fresh["devices"],
        json!([{"deviceUuid": D1, "status": "DELIVERED"}, {"deviceUuid": D2, "status": "SEEN"}])
    );
    assert_eq!(fresh["updatedAt"], FIXTURE_START + 30);
    let asked = &world.http.sent()[2];
    assert_eq!(
        (asked.method.as_str(), asked.url.as_str()),
        ("GET", format!("https://api.evotor.ru/api/apps/app-1/push-notifications/{N1}").as_str())
    );
    assert_eq!(feed(&world, "push-notification.updated"), [json!({"id": N1, "status": "COMPLETED"})]);
    assert_eq!(get(&world, N1).body_json(), fresh, "final: not asked again");
    assert_eq!(world.http.sent().len(), 3);
    assert!(!world.kv.keys().iter().any(|key| key.starts_with(OPEN_PREFIX)), "no longer open");
    assert_eq!(get(&world, N2).status, 404);
}

#[test]
fn the_sync_job_polls_open_notifications_within_its_allowance() {
    let mut world = world();
    world.http = Scripted::new([created(N1, "ACCEPTED", &[]), created(N2, "ACCEPTED", &[])]);
    assert_eq!(send(&world, None, json!({"payload": {}})).status, 201);
    assert_eq!(send(&world, None, json!({"payload": {}})).status, 201);
    world.http = Scripted::new([
        answer(200, json!({"id": N1, "status": "COMPLETED", "details": []})),
        answer(200, json!({"id": N2, "status": "RUNNING", "details": []})),
        answer(200, json!({"items": [], "paging": {}})),
    ]);
    let summary = crate::domain::sync::run(&world.ctx(), FIXTURE_START + 30).expect("a run");
    let urls: Vec<String> = world.http.sent().iter().map(|request| request.url.clone()).collect();
    assert!(urls[0].ends_with(N1) && urls[1].ends_with(N2) && urls[2].contains("/events"), "{urls:?}");
    assert!(summary.requests >= 3, "{summary}");
    assert_eq!(get(&world, N1).body_json()["status"], "COMPLETED");
    let statuses = feed(&world, "push-notification.updated");
    assert_eq!(statuses, [json!({"id": N1, "status": "COMPLETED"}), json!({"id": N2, "status": "RUNNING"})]);
    // Within an allowance of one, the poll goes on where it stopped.
    world.http = Scripted::new([answer(200, json!({"id": N2, "status": "RUNNING", "details": []}))]);
    let cloud = CloudSettings::read(&world.config).expect("settings");
    assert_eq!(poll_open(&world.ctx(), &cloud, 1, FIXTURE_START + 30).expect("poll"), 1);
    assert_eq!(poll_open(&world.ctx(), &cloud, 0, FIXTURE_START + 30).expect("poll"), 0);
    // Past its active time and a day, it is no longer asked about.
    world.clock.advance(3 * 86_400 + 1);
    assert_eq!(poll_open(&world.ctx(), &cloud, 10, FIXTURE_START + 4 * 86_400).expect("poll"), 0);
    assert_eq!(world.http.sent().len(), 1);
}

#[test]
fn a_refused_publisher_token_is_told_and_nothing_more_is_sent() {
    let mut world = world();
    world.http = Scripted::new([answer(401, json!({"code": "unauthorized", "message": "token revoked"}))]);
    let refused = send(&world, Some("k"), json!({"payload": {}}));
    let (status, item) = error(&refused);
    assert_eq!(status, 503, "{item}");
    assert!(item["reason"].as_str().is_some_and(|r| r.contains("token revoked")), "{item}");
    assert_eq!(
        feed(&world, "publisher-token.refused"),
        [json!({"status": 401, "path": "/api/apps/app-1/push-notifications"})]
    );
    let view = world.call("GET", "/partner/v1/publisher", Some("partner"), None).body_json();
    assert_eq!(view["state"], "refused");
    assert_eq!(error(&send(&world, Some("k"), json!({"payload": {}}))).0, 503, "the key was released; still refused");
    assert_eq!(world.http.sent().len(), 1, "nothing asked with a refused token");
    // Another token: a 429 is a wait, told with Retry-After.
    world.config.0.insert("evotor_publisher_token".into(), "pub-2".into());
    world.http = Scripted::new([Ok(Response {
        status: 429,
        headers: vec![("x-ratelimit-reset".into(), "17".into())],
        body: Vec::new(),
    })]);
    let waiting = send(&world, None, json!({"payload": {}}));
    assert_eq!(waiting.status, 503);
    assert!(waiting.headers.contains(&("retry-after".into(), "17".into())), "{:?}", waiting.headers);
}

#[test]
fn without_the_publisher_settings_nothing_is_sent_and_the_setting_is_named() {
    let world = Fixture::new();
    world.register(USER, "ivan");
    let (status, item) = error(&send(&world, None, json!({"payload": {}})));
    assert_eq!(status, 409);
    assert!(item["reason"].as_str().is_some_and(|r| r.contains("evotor_app_id")), "{item}");
}

#[test]
fn erasing_the_user_erases_its_notifications() {
    let mut world = world();
    world.http = Scripted::new([created(N1, "ACCEPTED", &[])]);
    assert_eq!(send(&world, Some("k"), json!({"payload": {}})).status, 201);
    assert!(world.kv.keys().iter().any(|key| key.starts_with("push/")));
    let erased = world.call("DELETE", &format!("/partner/v1/users/{USER}/data"), Some("partner"), None);
    assert_eq!(erased.status, 200, "{}", String::from_utf8_lossy(&erased.body));
    let left: Vec<String> =
        world.kv.keys().into_iter().filter(|key| key.contains("push") && !key.starts_with("meta/")).collect();
    assert_eq!(left, Vec::<String>::new());
    assert_eq!(get(&world, N1).status, 404);
}
