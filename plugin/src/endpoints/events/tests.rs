use super::*;
use crate::kv::Kv as _;
use crate::storage::EntityRecord;
use crate::testing::Fixture;
use proptest::prelude::*;
use serde_json::Value;

const SECRET: &str = "console-secret";
const USER: &str = "02-200000000000108";
const OTHER: &str = "02-200000000000109";
const STORE: &str = "20180417-2396-4075-808C-50046017B78F";
const DEVICE: &str = "20180716-D877-40E8-8033-350054333E4B";
const EMPLOYEE: &str = "20180417-A1FF-4089-8048-D71414E1568D";

/// The gateway's clock in these tests: 2026-12-01, after every time the events carry.
const NOW: u64 = 1_796_083_200;

fn world() -> Fixture {
    let world = Fixture::with(&[(EVENTS_WEBHOOK_SECRET, SECRET)]);
    world.clock.0.set(NOW);
    world
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers `body` as Evotor does: JSON under its v2 media type, signed with `secret`.
fn deliver_raw(world: &Fixture, body: &[u8], signature: Option<&str>, content_type: &str) -> crate::http::Response {
    let mut request = Request::new("POST", "/events")
        .header("content-type", content_type)
        .header("user-agent", "Evotor-Hookshot")
        .header("x-evotor-delivery", "ed9eb563-f27e-8ed4-4d82-b801f57033c4");
    if let Some(signature) = signature {
        request = request.header("x-hub-signature", signature);
    }
    request.body = body.to_vec();
    crate::handle(&world.ctx(), &request)
}

fn deliver(world: &Fixture, event: &Value) -> crate::http::Response {
    let body = serde_json::to_vec(event).expect("json");
    deliver_raw(world, &body, Some(&sign(SECRET, &body)), "application/vnd.evotor.v2+json;charset=UTF-8")
}

fn envelope(id: &str, kind: &str, action: &str, timestamp: i64, payload: Value) -> Value {
    json!({"id": id, "timestamp": timestamp, "type": kind, "action": action, "payload": payload})
}

fn store_payload(name: &str, updated_at: &str) -> Value {
    json!({"id": STORE, "name": name, "address": "Lenina 1", "user_id": USER,
           "created_at": "2018-04-17T10:11:49.670+0000", "updated_at": updated_at})
}

fn entity(world: &Fixture, kind: &str, id: &str) -> Option<EntityRecord> {
    storage::read(&world.kv, &storage::entity_key(USER, kind, &id.to_ascii_lowercase())).expect("read")
}

fn listed(world: &Fixture, query: &str) -> Value {
    let answer = world.call("GET", &format!("/partner/v1/events{query}"), Some("partner"), None);
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    answer.body_json()
}

fn feed_kinds(world: &Fixture) -> Vec<String> {
    let feed = world.call("GET", "/partner/v1/feed?limit=1000", Some("partner"), None).body_json();
    feed["items"].as_array().expect("items").iter().filter_map(|e| e["kind"].as_str().map(str::to_owned)).collect()
}

fn issues(world: &Fixture) -> Vec<Value> {
    let answer = world.call("GET", "/partner/v1/data-issues?limit=1000", Some("partner"), None).body_json();
    answer["items"].as_array().cloned().unwrap_or_default()
}

/// The examples of Evotor's `rest_events.md` and `rest_webhooks_overview.md`, verbatim.
pub(crate) const EVOTOR_EXAMPLES: &str = include_str!("../../../testdata/evotor-api/cloud-2019/events.json");

fn evotor_examples() -> Vec<Value> {
    serde_json::from_str(EVOTOR_EXAMPLES).expect("the examples are JSON")
}

/// The 2025 spelling of a 2019 type: `StoreEvent` → `Store`.
fn respelled(mut event: Value) -> Value {
    let kind = event["type"].as_str().unwrap_or_default().trim_end_matches("Event").to_owned();
    event["type"] = json!(kind);
    event["id"] = json!(format!("{}-2025", event["id"].as_str().unwrap_or_default()));
    event
}

#[test]
fn every_evotor_example_is_taken_in_both_spellings_and_both_encodings() {
    for spelling in [false, true] {
        for form in [false, true] {
            let world = world();
            for example in evotor_examples() {
                let event = if spelling { respelled(example) } else { example };
                let json = serde_json::to_vec(&event).expect("json");
                let answer = if form {
                    let body: String = form_urlencoded::Serializer::new(String::new())
                        .append_pair("payload", std::str::from_utf8(&json).expect("utf-8"))
                        .finish();
                    let signature = sign(SECRET, body.as_bytes());
                    deliver_raw(&world, body.as_bytes(), Some(&signature), "application/x-www-form-urlencoded")
                } else {
                    deliver(&world, &event)
                };
                assert_eq!(answer.status, 200, "{event}: {}", String::from_utf8_lossy(&answer.body));
                assert_eq!(answer.body_json(), json!({"accepted": 1, "duplicates": 0}));
            }
            let label = format!("spelling 2025: {spelling}, form: {form}");
            let store = entity(&world, "store", STORE).expect("store mirrored");
            assert_eq!(store.data["name"], "Новое имя 1534431862462", "{label}");
            assert_eq!(store.uuid, STORE, "the id as Evotor sent it: {label}");
            assert!(entity(&world, "device", DEVICE).is_some(), "{label}");
            assert!(entity(&world, "employee", EMPLOYEE).is_some(), "{label}");
            let removed = entity(&world, "device", "20180417-2396-4075-808C-50046017B700").expect("kept");
            assert!(removed.removed_at.is_some(), "{label}");
            let documents = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents"), Some("partner"), None);
            assert_eq!(documents.body_json()["items"].as_array().map(Vec::len), Some(1), "{label}");
            let products = world.call("GET", &format!("/partner/v1/stores/{STORE}/products"), Some("partner"), None);
            let product = &products.body_json()["items"][0];
            assert_eq!(
                (&product["product"]["name"], &product["source"]),
                (&json!("Простой новый продукт 1534431849835"), &json!("evotor")),
                "{label}"
            );
            let raw = listed(&world, "");
            let outcomes: Vec<&str> =
                raw["items"].as_array().expect("items").iter().filter_map(|e| e["outcome"].as_str()).collect();
            assert_eq!(outcomes.len(), 8, "every event is listed: {label}");
            assert_eq!(outcomes.iter().filter(|o| **o == "kept").count(), 2, "image and system: {label}");
            let kinds = feed_kinds(&world);
            for kind in ["store.upserted", "device.upserted", "employee.upserted", "document.received"] {
                assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}: {label}");
            }
            assert!(kinds.iter().any(|k| k == "device.removed"), "{label}");
            assert_eq!(kinds.iter().filter(|k| *k == "event.received").count(), 2, "{label}");
        }
    }
}

#[test]
fn type_spellings_are_one_type() {
    use crate::domain::events::Kind;
    for name in ["StoreEvent", "Store", "store", "STORE", "storeevent"] {
        assert_eq!(Kind::of(name), Kind::Store, "{name}");
    }
    for name in ["ProductGroupEvent", "ProductGroup", "product_group", "product-group"] {
        assert_eq!(Kind::of(name), Kind::ProductGroup, "{name}");
    }
    assert_eq!(Kind::of("Order"), Kind::Other);
    assert_eq!(Kind::of("Event"), Kind::Other);
    assert_eq!(Kind::of(""), Kind::Other);
}

#[test]
fn a_bad_or_missing_signature_is_401_and_stores_nothing() {
    let world = world();
    let event = evotor_examples().remove(0);
    let body = serde_json::to_vec(&event).expect("json");
    let good = sign(SECRET, &body);
    let cases = [
        ("no signature", None),
        ("another secret", Some(sign("not-the-secret", &body))),
        ("truncated", Some(good[..good.len() - 2].to_owned())),
        ("another body", Some(sign(SECRET, b"{}"))),
        ("no scheme", Some(good.trim_start_matches("sha1=").to_owned())),
        ("not hex", Some("sha1=zz".to_owned())),
    ];
    for (label, signature) in cases {
        let before = world.kv.keys();
        let answer = deliver_raw(&world, &body, signature.as_deref(), "application/json");
        assert_eq!((answer.status, answer.body_json()["errors"][0]["code"].as_u64()), (401, Some(1001)), "{label}");
        let after: Vec<String> = world.kv.keys().into_iter().filter(|key| !key.starts_with("issues/")).collect();
        let before: Vec<String> = before.into_iter().filter(|key| !key.starts_with("issues/")).collect();
        assert_eq!(before, after, "{label}: nothing stored but the refusal count");
    }
    let refused = |world: &Fixture| -> Vec<u64> {
        issues(world)
            .iter()
            .filter(|issue| issue["entity"] == "events-webhook")
            .filter_map(|issue| issue["count"].as_u64())
            .collect()
    };
    assert_eq!(refused(&world), [1, 1], "refusals noted where the partner sees them, one record per reason");
    // Within the minute, a flood of refusals writes nothing at all.
    let versions = |world: &Fixture| -> Vec<(String, u64)> {
        world
            .kv
            .keys()
            .into_iter()
            .map(|key| {
                let version = world.kv.get(&key).expect("get").expect("entry").version;
                (key, version)
            })
            .collect()
    };
    let before = versions(&world);
    for _ in 0..200 {
        assert_eq!(deliver_raw(&world, &body, Some("sha1=00"), "application/json").status, 401);
        assert_eq!(deliver_raw(&world, &body, None, "application/json").status, 401);
    }
    assert_eq!(versions(&world), before, "no commit for a refusal within the minute");
    world.clock.advance(REFUSALS_NOTED_EVERY_SECS);
    assert_eq!(deliver_raw(&world, &body, None, "application/json").status, 401);
    assert_eq!(refused(&world).iter().sum::<u64>(), 3, "the next minute's refusals are noted again");
    assert_eq!(deliver_raw(&world, &body, Some(&good), "application/json").status, 200);
    // The signature is over the bytes received, not over a re-encoding.
    let spaced = serde_json::to_vec_pretty(&event).expect("json");
    assert_eq!(deliver_raw(&world, &spaced, Some(&good), "application/json").status, 401);
}

#[test]
fn the_previous_secret_verifies_during_a_rotation() {
    let world = Fixture::with(&[(EVENTS_WEBHOOK_SECRET, "new-secret"), (EVENTS_WEBHOOK_PREVIOUS_SECRET, SECRET)]);
    let event = evotor_examples().remove(0);
    let body = serde_json::to_vec(&event).expect("json");
    assert_eq!(deliver_raw(&world, &body, Some(&sign(SECRET, &body)), "application/json").status, 200);
    let second = respelled(event);
    let body = serde_json::to_vec(&second).expect("json");
    assert_eq!(deliver_raw(&world, &body, Some(&sign("new-secret", &body)), "application/json").status, 200);
    assert_eq!(deliver_raw(&world, &body, Some(&sign("older", &body)), "application/json").status, 401);
}

#[test]
fn without_a_secret_the_path_is_404_unless_unsigned_is_allowed_explicitly() {
    let event = evotor_examples().remove(0);
    let body = serde_json::to_vec(&event).expect("json");
    let closed = Fixture::new();
    assert_eq!(deliver_raw(&closed, &body, None, "application/json").status, 404);
    let almost = Fixture::with(&[(EVENTS_WEBHOOK_ALLOW_UNSIGNED, "yes")]);
    assert_eq!(deliver_raw(&almost, &body, None, "application/json").status, 404, "only \"true\" opens it");
    let open = Fixture::with(&[(EVENTS_WEBHOOK_ALLOW_UNSIGNED, "true")]);
    assert_eq!(deliver_raw(&open, &body, None, "application/json").status, 200);
    let elsewhere = Fixture::with(&[(EVENTS_WEBHOOK_SECRET, SECRET), (EVENTS_WEBHOOK_PATH, "/hooks/evotor")]);
    let signature = sign(SECRET, &body);
    assert_eq!(deliver_raw(&elsewhere, &body, Some(&signature), "application/json").status, 404);
    let mut request = Request::new("POST", "/hooks/evotor/").header("x-hub-signature", &signature);
    request.body = body;
    assert_eq!(crate::handle(&elsewhere.ctx(), &request).status, 200);
}

#[test]
fn only_what_can_never_be_usable_is_refused() {
    let world = world();
    let signed = |body: &[u8]| deliver_raw(&world, body, Some(&sign(SECRET, body)), "application/json").status;
    assert_eq!(signed(b"not json"), 400);
    assert_eq!(signed(br#"{"type":"StoreEvent","action":"updated","payload":{}}"#), 400, "no id");
    assert_eq!(signed(br#"[{"id":"a","type":"x"},{"type":"x"}]"#), 400, "an event without an id refuses the array");
    assert!(world.kv.keys().iter().all(|key| !key.starts_with("events/")), "nothing stored");
    // Everything else is kept: unknown types and actions, missing fields, extra fields, unknown users.
    for (n, event) in [
        json!({"id": "e1", "type": "Order", "action": "created", "payload": {"user_id": USER, "total": 5}}),
        json!({"id": "e2", "type": "StoreEvent", "action": "teleported", "payload": {"id": STORE, "user_id": USER}}),
        json!({"id": "e3", "type": "StoreEvent", "action": "updated", "payload": {"id": STORE}}),
        json!({"id": "e4"}),
        json!({"id": "e5", "type": "StoreEvent", "action": "updated", "payload": {"id": STORE, "user_id": "01-999999999999999", "x": [1]}}),
        json!({"id": 6, "type": 7, "action": null, "timestamp": "yesterday", "payload": "text"}),
    ]
    .into_iter()
    .enumerate()
    {
        let body = serde_json::to_vec(&event).expect("json");
        assert_eq!(signed(&body), 200, "{n}: {event}");
    }
    let all = listed(&world, "?limit=100");
    assert_eq!(all["items"].as_array().map(Vec::len), Some(6));
    let problems: Vec<String> =
        issues(&world).iter().filter_map(|issue| issue["problem"].as_str().map(str::to_owned)).collect();
    assert!(problems.iter().any(|p| p.contains("unknown event type \"Order\"")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("teleported")), "{problems:?}");
    let untyped: Vec<String> = issues(&world)
        .iter()
        .filter(|issue| issue["entityId"] == "e4")
        .filter_map(|issue| issue["problem"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(untyped, ["no type"], "a missing type is one problem, not an unknown type besides");
    let unknown_user: EntityRecord =
        storage::read(&world.kv, &storage::entity_key("01-999999999999999", "store", &STORE.to_ascii_lowercase()))
            .expect("read")
            .expect("a user never registered still gets its store");
    assert_eq!(unknown_user.data["x"], json!([1]), "extra fields kept");
}

#[test]
fn a_redelivery_stores_nothing_and_adds_no_feed_entry() {
    let world = world();
    for event in evotor_examples() {
        assert_eq!(deliver(&world, &event).status, 200);
    }
    let (keys, feed) = (world.kv.keys(), feed_kinds(&world));
    for event in evotor_examples() {
        let answer = deliver(&world, &event);
        assert_eq!(answer.body_json(), json!({"accepted": 0, "duplicates": 1}));
    }
    assert_eq!(world.kv.keys(), keys);
    assert_eq!(feed_kinds(&world), feed);
    let batch = Value::Array(evotor_examples());
    assert_eq!(deliver(&world, &batch).body_json(), json!({"accepted": 0, "duplicates": 8}));
}

#[test]
fn older_events_never_overwrite_newer_state_nor_bring_back_a_removed_entity() {
    let world = world();
    let newer = envelope("n", "StoreEvent", "updated", 2_000, store_payload("Newer", "2018-08-16T15:00:00.000+0000"));
    let older = envelope("o", "StoreEvent", "updated", 1_000, store_payload("Older", "2018-08-15T15:00:00.000+0000"));
    assert_eq!(deliver(&world, &newer).status, 200);
    assert_eq!(deliver(&world, &older).status, 200);
    assert_eq!(entity(&world, "store", STORE).expect("store").data["name"], "Newer");
    assert!(listed(&world, "")["items"].as_array().expect("items").iter().any(|e| e["outcome"] == "stale"));

    let removed = envelope("r", "StoreEvent", "removed", 3_000, store_payload("Newer", "2018-08-17T15:00:00.000+0000"));
    assert_eq!(deliver(&world, &removed).status, 200);
    let late = envelope("l", "StoreEvent", "updated", 2_500, store_payload("Late", "2018-08-16T20:00:00.000+0000"));
    assert_eq!(deliver(&world, &late).status, 200);
    let record = entity(&world, "store", STORE).expect("kept");
    assert!(record.removed_at.is_some(), "an older update does not bring it back");
    assert_eq!(record.data["name"], "Newer");
    assert!(feed_kinds(&world).iter().any(|kind| kind == "store.removed"));

    let listing = |query: &str| {
        let answer = world.call("GET", &format!("/partner/v1/users/{USER}/stores{query}"), Some("partner"), None);
        answer.body_json()["items"].as_array().map(Vec::len)
    };
    assert_eq!(listing(""), Some(0), "removed entities are left out");
    assert_eq!(listing("?removed=true"), Some(1));
    let back = envelope("b", "StoreEvent", "created", 4_000, store_payload("Back", "2018-08-18T15:00:00.000+0000"));
    assert_eq!(deliver(&world, &back).status, 200);
    assert_eq!(listing(""), Some(1), "a newer creation brings it back");

    // Products alike: a removal is not undone by an older update.
    let product = |id: &str, action: &str, updated: &str, name: &str| {
        envelope(
            id,
            "Product",
            action,
            0,
            json!({"id": "4be33817-bfb2-4e9f-90d0-3286c8c39f7e", "store_id": STORE,
            "user_id": USER, "name": name, "price": 1, "updated_at": updated, "type": "NORMAL"}),
        )
    };
    let products = || {
        let answer = world.call("GET", &format!("/partner/v1/stores/{STORE}/products"), Some("partner"), None);
        answer.body_json()["items"].as_array().map(Vec::len).unwrap_or_default()
    };
    assert_eq!(deliver(&world, &product("p1", "created", "2018-08-16T15:00:00.000+0000", "A")).status, 200);
    assert_eq!(products(), 1);
    assert_eq!(deliver(&world, &product("p2", "removed", "2018-08-17T15:00:00.000+0000", "A")).status, 200);
    assert_eq!(products(), 0);
    assert_eq!(deliver(&world, &product("p3", "updated", "2018-08-16T20:00:00.000+0000", "B")).status, 200);
    assert_eq!(products(), 0, "the older update stays out");
}

#[test]
fn an_entity_pushed_by_the_2017_protocol_and_by_an_event_is_one_record() {
    let world = world();
    let token = world.register(USER, "ivan");
    let pushed =
        world.call("PUT", "/api/v1/inventories/stores", Some(&token), Some(json!([{"uuid": STORE, "name": "Pushed"}])));
    assert_eq!(pushed.status, 200);
    let partner_id = pushed.body_json()[0]["partnerId"].clone();
    let event =
        envelope("x", "StoreEvent", "updated", i64::MAX / 4, store_payload("Evented", "2100-01-01T00:00:00.000+0000"));
    assert_eq!(deliver(&world, &event).status, 200);
    let record = entity(&world, "store", STORE).expect("one record");
    assert_eq!((record.data["name"].as_str(), json!(record.partner_id)), (Some("Evented"), partner_id));
    let stores = world.call("GET", &format!("/partner/v1/users/{USER}/stores"), Some("partner"), None).body_json();
    assert_eq!(stores["items"].as_array().map(Vec::len), Some(1));

    // A document pushed by PUT and then by an event is one document.
    let document = json!({"id": "a7619739-3548-450c-8752-34bd565b7f1e", "store_id": STORE, "device_id": DEVICE,
        "type": "SELL", "close_date": "2018-08-16T15:04:08.221+0000", "user_id": USER, "version": "V2", "body": {}});
    let put = world.call(
        "PUT",
        &format!("/api/v1/inventories/stores/{STORE}/documents"),
        Some(&token),
        Some(json!([document.clone()])),
    );
    assert_eq!(put.body_json()["accepted"], 1);
    assert_eq!(deliver(&world, &envelope("d", "DocumentEvent", "created", 0, document)).status, 200);
    let listed = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents"), Some("partner"), None);
    assert_eq!(listed.body_json()["items"].as_array().map(Vec::len), Some(1));
    let received = feed_kinds(&world).into_iter().filter(|kind| kind == "document.received").count();
    assert_eq!(received, 1);
}

#[test]
fn another_users_entity_is_never_changed_by_an_event_only_reported() {
    let world = world();
    let mine = envelope("m", "StoreEvent", "created", 1_000, store_payload("Mine", "2018-08-16T15:00:00.000+0000"));
    assert_eq!(deliver(&world, &mine).status, 200);
    let mut theirs = store_payload("Theirs", "2018-08-17T15:00:00.000+0000");
    theirs["user_id"] = json!(OTHER);
    assert_eq!(deliver(&world, &envelope("t", "StoreEvent", "updated", 2_000, theirs)).status, 200);
    assert_eq!(entity(&world, "store", STORE).expect("mine").data["name"], "Mine");
    let other: Option<EntityRecord> =
        storage::read(&world.kv, &storage::entity_key(OTHER, "store", &STORE.to_ascii_lowercase())).expect("read");
    assert!(other.is_none());
    assert!(issues(&world).iter().any(|i| i["problem"].as_str().is_some_and(|p| p.contains("belongs to user"))));
    let item = listed(&world, "?userId=02-200000000000109");
    assert_eq!(item["items"][0]["outcome"], "not-applied");
}

#[test]
fn a_terminal_past_the_licence_is_kept_and_reported_with_200() {
    let world = Fixture::with(&[(EVENTS_WEBHOOK_SECRET, SECRET), ("billing_enforcement", "evotor")]);
    let device =
        envelope("d", "DeviceEvent", "created", 1_000, json!({"id": DEVICE, "store_id": STORE, "user_id": USER}));
    assert_eq!(deliver(&world, &device).status, 200);
    assert!(entity(&world, "device", DEVICE).is_none(), "no subscription: not registered");
    assert_eq!(listed(&world, "")["items"][0]["outcome"], "not-applied");
    assert!(issues(&world).iter().any(|i| i["problem"].as_str().is_some_and(|p| p.contains("licensed"))));
    // A document from that terminal is data the merchant made: stored and listed, the terminal not registered.
    let document = json!({"id": "doc-1", "store_id": STORE, "device_id": DEVICE, "type": "SELL", "user_id": USER,
        "close_date": "2018-08-16T15:04:08.221+0000", "version": "V2", "body": {}});
    assert_eq!(deliver(&world, &envelope("doc", "DocumentEvent", "created", 0, document)).status, 200);
    let listed = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents"), Some("partner"), None);
    assert_eq!(listed.body_json()["items"].as_array().map(Vec::len), Some(1));
    assert!(entity(&world, "device", DEVICE).is_none(), "still not registered");
    assert!(issues(&world).iter().any(|i| i["problem"].as_str().is_some_and(|p| p.contains("its data kept"))));
}

#[test]
fn the_listing_filters_by_type_in_any_spelling_and_by_user_and_pages() {
    let world = world();
    for n in 0..5 {
        let mut order =
            json!({"id": format!("o{n}"), "type": "Order", "action": "created", "payload": {"user_id": USER}});
        if n % 2 == 1 {
            order["payload"]["user_id"] = json!(OTHER);
        }
        assert_eq!(deliver(&world, &order).status, 200);
    }
    assert_eq!(deliver(&world, &evotor_examples().remove(0)).status, 200);
    let orders = listed(&world, "?type=OrderEvent");
    assert_eq!(orders["items"].as_array().map(Vec::len), Some(5));
    let stores = listed(&world, "?type=store");
    assert_eq!(stores["items"].as_array().map(Vec::len), Some(1));
    let theirs = listed(&world, &format!("?type=order&userId={OTHER}"));
    assert_eq!(theirs["items"].as_array().map(Vec::len), Some(2));
    let first = listed(&world, "?type=Order&limit=2");
    assert_eq!(first["items"].as_array().map(Vec::len), Some(2));
    let next = first["next"].as_str().expect("a next page");
    let rest = listed(&world, &format!("?type=Order&limit=10&after={next}"));
    let ids: Vec<&str> = rest["items"].as_array().expect("items").iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, ["o2", "o3", "o4"]);
    assert!(rest["next"].is_null(), "the end");
    let anonymous = world.call("GET", "/partner/v1/events", None, None);
    assert_eq!(anonymous.status, 401);
}

#[test]
fn the_store_failing_answers_503_so_evotor_retries() {
    let world = world();
    let down = crate::testing::CommitThrough {
        kv: &world.kv,
        commit: Box::new(|_, _, _| Err(crate::kv::KvError::Unavailable("disk full".into()))),
    };
    let ctx = Ctx { kv: &down, config: &world.config, clock: &world.clock, http: &world.http };
    let body = serde_json::to_vec(&evotor_examples().remove(0)).expect("json");
    let mut request = Request::new("POST", "/events").header("x-hub-signature", &sign(SECRET, &body));
    request.body = body;
    let answer = crate::handle(&ctx, &request);
    assert_eq!(answer.status, 503);
    assert!(answer.headers.iter().any(|(name, _)| name == "retry-after"));
    assert_eq!(deliver_raw(&world, &request.body, request.header_value("x-hub-signature"), "").status, 200);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_body_with_any_wrong_signature_is_401_and_the_store_untouched(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        signature in "(sha1=)?[0-9a-f]{0,44}",
        valid_json in any::<bool>(),
    ) {
        let world = world();
        let body = if valid_json { serde_json::to_vec(&json!({"id": "x", "junk": body})).expect("json") } else { body };
        prop_assume!(signature != sign(SECRET, &body));
        let before: Vec<String> = world.kv.keys();
        let answer = deliver_raw(&world, &body, Some(&signature), "application/json");
        prop_assert_eq!(answer.status, 401);
        let after: Vec<String> = world.kv.keys().into_iter().filter(|key| !key.starts_with("issues/")).collect();
        prop_assert_eq!(before, after);
    }
}

#[test]
fn products_from_events_reach_terminals_in_the_v1_shape_and_by_barcode() {
    let world = world();
    let token = world.register(USER, "ivan");
    let group = envelope(
        "g",
        "ProductGroupEvent",
        "created",
        1,
        json!({"id": "1be33817-bfb2-4e9f-90d0-3286c8c39f7e",
        "store_id": STORE, "user_id": USER, "name": "Напитки", "updated_at": "2018-08-16T15:00:00.000+0000"}),
    );
    let product = envelope(
        "p",
        "ProductEvent",
        "created",
        2,
        json!({"id": "4be33817-bfb2-4e9f-90d0-3286c8c39f7e",
        "parent_id": "1be33817-bfb2-4e9f-90d0-3286c8c39f7e", "store_id": STORE, "user_id": USER, "name": "Квас",
        "price": 60, "quantity": 3, "measure_name": "шт", "tax": "NO_VAT", "allow_to_sell": true, "type": "NORMAL",
        "barcodes": ["4600000000024"], "updated_at": "2018-08-16T15:00:00.000+0000"}),
    );
    assert_eq!(deliver(&world, &group).status, 200);
    assert_eq!(deliver(&world, &product).status, 200);
    let read = world.call("GET", &format!("/api/v1/inventories/stores/{STORE}/products"), Some(&token), None);
    assert_eq!(read.status, 200, "{}", String::from_utf8_lossy(&read.body));
    let items = read.body_json();
    let kvass = items.as_array().expect("an array").iter().find(|item| item["name"] == "Квас").expect("the product");
    assert_eq!(kvass["uuid"], "4be33817-bfb2-4e9f-90d0-3286c8c39f7e");
    assert_eq!(kvass["parentUuid"], "1be33817-bfb2-4e9f-90d0-3286c8c39f7e");
    assert_eq!(
        (&kvass["group"], &kvass["allowToSell"], &kvass["measureName"]),
        (&json!(false), &json!(true), &json!("шт"))
    );
    assert!(kvass.get("store_id").is_none() && kvass.get("barcodes").is_none(), "{kvass}");
    let drinks = items.as_array().expect("an array").iter().find(|item| item["name"] == "Напитки").expect("the group");
    assert_eq!(drinks["group"], true);
    let found = world.call("GET", "/api/v1/commodities?scanCode=4600000000024", Some(&token), None);
    assert_eq!(found.status, 200, "{}", String::from_utf8_lossy(&found.body));
    assert!(found.body_json().to_string().contains("Квас"));
    let feed = world.call("GET", "/partner/v1/feed?limit=1000", Some("partner"), None).body_json();
    let sources: Vec<&Value> = feed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["kind"] == "products.upserted")
        .map(|e| &e["data"]["source"])
        .collect();
    assert_eq!(sources, [&json!("evotor"), &json!("evotor")]);
}

#[test]
fn every_store_id_the_intake_takes_can_be_read_back() {
    let world = world();
    let store = "00000000-0000-0000-0000-000000000000";
    let document = json!({"id": "doc-1", "store_id": store, "device_id": DEVICE, "type": "Z_REPORT", "user_id": USER,
        "close_date": "2018-08-16T15:04:08.221+0000", "version": "V2", "body": {}});
    assert_eq!(deliver(&world, &envelope("z", "DocumentEvent", "created", 0, document)).status, 200);
    let listed = world.call("GET", &format!("/partner/v1/stores/{store}/documents"), Some("partner"), None);
    assert_eq!(listed.status, 200, "{}", String::from_utf8_lossy(&listed.body));
    assert_eq!(listed.body_json()["items"][0]["type"], "Z_REPORT");
    let problems: Vec<String> =
        issues(&world).iter().filter_map(|issue| issue["problem"].as_str().map(str::to_owned)).collect();
    assert!(!problems.iter().any(|p| p.contains("unknown document type")), "Z_REPORT is known: {problems:?}");
}

#[test]
fn the_same_event_through_the_webhook_and_the_events_api_is_taken_once() {
    let world = world();
    let webhook = evotor_examples().remove(0);
    let mut api = webhook.clone();
    api["type"] = json!("Store");
    api["source"] = json!("APPLICATION");
    assert_eq!(deliver(&world, &webhook).body_json()["accepted"], 1);
    assert_eq!(deliver(&world, &api).body_json()["duplicates"], 1);
    // Another type under the same id is another event (Evotor's own examples share one between two types).
    let mut other = webhook;
    other["type"] = json!("Order");
    assert_eq!(deliver(&world, &other).body_json()["accepted"], 1);
}

/// Evotor's genuine ProductEvent for `user`, whose name a merchant chose.
fn product_event(id: &str, user: &str, store: &str, name: &str, price: f64, updated_at: &str) -> Value {
    envelope(
        id,
        "ProductEvent",
        "updated",
        1_534_431_849_835,
        json!({"id": "4be33817-bfb2-4e9f-90d0-3286c8c39f7e", "store_id": store, "user_id": user, "name": name,
               "price": price, "type": "NORMAL", "updated_at": updated_at}),
    )
}

fn price_of(world: &Fixture, store: &str) -> Option<f64> {
    let answer = world.call("GET", &format!("/partner/v1/stores/{store}/products"), Some("partner"), None);
    answer.body_json()["items"][0]["product"]["price"].as_f64()
}

#[test]
fn a_signed_json_delivery_replayed_as_a_form_is_the_same_json_never_another_event() {
    let world = world();
    let victim_store = "20190417-2396-4075-808C-50046017B7AA";
    let genuine = product_event("v1", OTHER, victim_store, "Tea", 99.9, "2026-11-01T10:00:00.000+0000");
    assert_eq!(deliver(&world, &genuine).status, 200);
    assert_eq!(price_of(&world, victim_store), Some(99.9));

    // A merchant names a product so that the signed JSON carries a form field.
    let forged = product_event("forged", OTHER, victim_store, "x", 0.01, "2099-01-01T00:00:00.000+0000");
    let smuggled: String =
        form_urlencoded::Serializer::new(String::new()).append_pair("payload", &forged.to_string()).finish();
    let carrier = product_event("c1", USER, STORE, &format!("&{smuggled}&"), 5.0, "2026-11-01T10:00:00.000+0000");
    let body = serde_json::to_vec(&carrier).expect("json");
    let signature = sign(SECRET, &body);
    assert_eq!(deliver_raw(&world, &body, Some(&signature), "application/json").status, 200);

    // The same signed bytes under any content type are that JSON: taken before, nothing else.
    for content_type in
        ["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8", "text/plain", ""]
    {
        let answer = deliver_raw(&world, &body, Some(&signature), content_type);
        assert_eq!(answer.status, 200, "{content_type}: {}", String::from_utf8_lossy(&answer.body));
        assert_eq!(answer.body_json(), json!({"accepted": 0, "duplicates": 1}), "{content_type}");
    }
    assert_eq!(price_of(&world, victim_store), Some(99.9), "the other user's price is untouched");
    let ids: Vec<Value> =
        listed(&world, "")["items"].as_array().expect("items").iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids, [json!("v1"), json!("c1")], "no forged event was taken");

    // Evotor's genuine later update still applies.
    let later = product_event("v2", OTHER, victim_store, "Tea", 120.0, "2026-11-20T10:00:00.000+0000");
    assert_eq!(deliver(&world, &later).status, 200);
    assert_eq!(price_of(&world, victim_store), Some(120.0));
}

#[test]
fn a_form_delivery_is_taken_only_when_the_whole_body_is_one_payload_field() {
    let world = world();
    let event = product_event("f1", USER, STORE, "Tea", 10.0, "2026-11-01T10:00:00.000+0000");
    let json = event.to_string();
    let one = form_urlencoded::Serializer::new(String::new()).append_pair("payload", &json).finish();
    let two = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &json)
        .append_pair("payload", &json)
        .finish();
    let extra = form_urlencoded::Serializer::new(String::new())
        .append_pair("other", "1")
        .append_pair("payload", &json)
        .finish();
    let form = "application/x-www-form-urlencoded";
    for refused in [&two, &extra, &format!("x{one}"), &"payload".to_owned()] {
        let answer = deliver_raw(&world, refused.as_bytes(), Some(&sign(SECRET, refused.as_bytes())), form);
        assert_eq!(answer.status, 400, "{refused}");
    }
    assert_eq!(price_of(&world, STORE), None, "nothing taken from a refused form");
    // Whatever the header says, a one-field form is the payload.
    for content_type in [form, "application/json"] {
        let answer = deliver_raw(&world, one.as_bytes(), Some(&sign(SECRET, one.as_bytes())), content_type);
        assert_eq!(answer.status, 200, "{content_type}: {}", String::from_utf8_lossy(&answer.body));
    }
    assert_eq!(price_of(&world, STORE), Some(10.0));
}

#[test]
fn a_time_far_ahead_never_freezes_an_entity() {
    let world = world();
    let ahead = product_event("p1", USER, STORE, "Tea", 0.01, "2099-01-01T00:00:00.000+0000");
    assert_eq!(deliver(&world, &ahead).status, 200);
    assert_eq!(price_of(&world, STORE), Some(0.01));
    let reported = issues(&world)
        .iter()
        .any(|issue| issue["problem"].as_str().is_some_and(|problem| problem.contains("ahead of the gateway's clock")));
    assert!(reported, "the future time is a data issue: {:?}", issues(&world));
    // Evotor's genuine update a little later wins.
    world.clock.advance(60);
    let genuine = product_event("p2", USER, STORE, "Tea", 99.9, "2026-12-01T00:01:00.000+0000");
    assert_eq!(deliver(&world, &genuine).status, 200);
    assert_eq!(price_of(&world, STORE), Some(99.9));

    // A store alike, and a time within the clock skew still orders.
    let store =
        |id: &str, name: &str, updated: &str| envelope(id, "StoreEvent", "updated", 0, store_payload(name, updated));
    assert_eq!(deliver(&world, &store("s1", "Future", "2100-01-01T00:00:00.000+0000")).status, 200);
    world.clock.advance(60);
    assert_eq!(deliver(&world, &store("s2", "Now", "2026-12-01T00:02:00.000+0000")).status, 200);
    assert_eq!(entity(&world, "store", STORE).expect("store").data["name"], "Now");
    assert_eq!(deliver(&world, &store("s3", "Skewed", "2026-12-01T00:06:00.000+0000")).status, 200);
    assert_eq!(deliver(&world, &store("s4", "Older", "2026-12-01T00:04:00.000+0000")).status, 200);
    assert_eq!(entity(&world, "store", STORE).expect("store").data["name"], "Skewed", "within the skew it orders");
}

#[test]
fn a_page_of_large_events_ends_at_its_byte_cap_and_the_next_goes_on() {
    let world = world();
    let big = "x".repeat(1_500_000);
    for n in 0..5 {
        let order = json!({"id": format!("big-{n}"), "type": "Order", "action": "created",
                           "payload": {"user_id": USER, "note": big}});
        assert_eq!(deliver(&world, &order).status, 200);
    }
    let (mut seen, mut after, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let answer = world.call("GET", &format!("/partner/v1/events?limit=20{after}"), Some("partner"), None);
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        assert!(answer.body.len() < PAGE_BYTES + 1_600_000, "one page: {} bytes", answer.body.len());
        let page = answer.body_json();
        let items = page["items"].as_array().expect("items");
        assert!(!items.is_empty() || page["next"].is_null());
        seen.extend(items.iter().map(|item| item["id"].as_str().unwrap_or_default().to_owned()));
        pages += 1;
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
        assert!(pages < 10, "the pages end");
    }
    assert_eq!(seen, (0..5).map(|n| format!("big-{n}")).collect::<Vec<_>>());
    assert!(pages >= 2, "5 events of 1.5 MB do not fit one page");
}

#[test]
fn an_event_too_large_to_keep_is_refused_with_413_and_noted_and_one_that_fits_is_taken() {
    let world = world();
    let event = |id: &str, bytes: usize| json!({"id": id, "type": "Order", "action": "created", "payload": {"user_id": USER, "note": "x".repeat(bytes)}});
    let fits = event("fits", crate::input::MAX_ITEM_BYTES - 200);
    assert_eq!(deliver(&world, &fits).status, 200, "the largest event kept as received");
    let first = listed(&world, "?limit=1");
    assert_eq!(first["items"][0]["event"], fits);
    let over = deliver(&world, &event("over", crate::input::MAX_ITEM_BYTES));
    assert_eq!(over.status, 413);
    let noted = issues(&world).iter().any(|issue| {
        issue["entity"] == "events-webhook" && issue["problem"].as_str().is_some_and(|p| p.contains("413"))
    });
    assert!(noted, "{:?}", issues(&world));
    // A delivery over its own cap is refused before it is read.
    let many: Vec<Value> = (0..6).map(|n| event(&format!("m{n}"), 3_000_000)).collect();
    assert_eq!(deliver(&world, &Value::from(many)).status, 413);
    assert_eq!(listed(&world, "")["items"].as_array().map(Vec::len), Some(1), "nothing of them stored");
}

#[test]
fn one_delivery_notes_at_most_32_issues_one_by_one_and_counts_the_rest() {
    let world = world();
    // 200 events, each with a problem of its own (an unknown type names itself).
    let events: Vec<Value> = (0..200)
        .map(|n| json!({"id": format!("u{n}"), "type": format!("Unknown{n}"), "action": "x", "payload": {"user_id": USER}}))
        .collect();
    let answer = deliver(&world, &Value::from(events));
    assert_eq!(answer.body_json()["accepted"], 200);
    let issues = issues(&world);
    assert!(issues.len() <= 33, "{} issue records from one delivery", issues.len());
    let rest = issues.iter().find(|issue| issue["entityId"] == "*").expect("the rest counted in one");
    assert_eq!(rest["count"], 200 - 32);
}

/// An event of nothing but an id: its log record, feed entry and data issue
/// keep no empty field, and read back as those that kept them (`null`, `""`)
/// always did.
#[test]
fn records_of_a_bare_event_keep_no_empty_fields_and_list_as_they_always_did() {
    let world = world();
    assert_eq!(deliver(&world, &json!({"id": "bare-1"})).status, 200);
    let stored = |prefix: &str| -> Vec<Value> {
        world
            .kv
            .keys()
            .iter()
            .filter(|key| key.starts_with(prefix))
            .map(|key| serde_json::from_slice(&world.kv.get(key).expect("get").expect("entry").value).expect("json"))
            .collect()
    };
    let [log] = stored(events::LOG_PREFIX).try_into().expect("one log record");
    let [issue] = stored(storage::ISSUES_PREFIX).try_into().expect("one issue");
    let [record] = stored(storage::FEED_PREFIX).try_into().expect("one feed record");
    let [entry] = record["entries"].as_array().cloned().unwrap_or_default().try_into().expect("one feed entry");
    for (record, absent) in [
        (&log, &["type", "kind", "action", "timestamp", "userId"][..]),
        (&issue, &["userId", "storeUuid"][..]),
        (&entry, &["userId"][..]),
    ] {
        for field in absent {
            assert!(record.get(field).is_none(), "{field} in {record}");
        }
    }
    let item = |listing: Value| listing["items"][0].clone();
    let listed_event = item(listed(&world, ""));
    assert_eq!(
        (&listed_event["type"], &listed_event["kind"], &listed_event["timestamp"], &listed_event["userId"]),
        (&json!(""), &json!(""), &Value::Null, &Value::Null)
    );
    assert_eq!(issues(&world)[0]["userId"], Value::Null);
    let feed = world.call("GET", "/partner/v1/feed?limit=10", Some("partner"), None).body_json();
    assert_eq!(item(feed)["userId"], Value::Null);

    // The same records as earlier builds wrote them, with their empty fields: listed alike.
    let mut full_log = log.clone();
    for (field, value) in [
        ("type", json!("")),
        ("kind", json!("")),
        ("action", json!("")),
        ("timestamp", Value::Null),
        ("userId", Value::Null),
    ] {
        full_log[field] = value;
    }
    let log_key = world.kv.keys().into_iter().find(|key| key.starts_with(events::LOG_PREFIX)).expect("log key");
    let write = crate::kv::Write::Set(log_key, serde_json::to_vec(&full_log).expect("json"));
    crate::kv::Kv::commit(&world.kv, Vec::new(), vec![write]).expect("earlier format");
    assert_eq!(item(listed(&world, "")), listed_event);
}
