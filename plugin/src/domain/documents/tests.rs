//! Tests only, one kind of thing kept together (hence over 800 lines).

use super::*;
use crate::http::{Request, Response};
use crate::kv::Kv as _;
use crate::testing::Fixture;

const ALICE: &str = "01-000000000000001";
const BOB: &str = "02-000000000000002";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const STORE2: &str = "20170228-f4f1-401b-80fa-9ecca8451ffc";
const DEVICE: &str = "5a188de4-49b8-4cb4-800e-eb6b5202437e";

/// The real terminal documents, as files with `//` comments and trailing commas.
const POS_DOCS: &[(&str, &str)] = &[
    ("01-ACCEPT", include_str!("../../../testdata/pos-docs/01-ACCEPT.json")),
    ("02-SELL", include_str!("../../../testdata/pos-docs/02-SELL.json")),
    ("03-PAYBACK", include_str!("../../../testdata/pos-docs/03-PAYBACK.json")),
    ("04-CASH_INCOME", include_str!("../../../testdata/pos-docs/04-CASH_INCOME.json")),
    ("05-CASH_OUTCOME", include_str!("../../../testdata/pos-docs/05-CASH_OUTCOME.json")),
    ("06-CLOSE_SESSION", include_str!("../../../testdata/pos-docs/06-CLOSE_SESSION.json")),
    ("07-OPEN_SESSION", include_str!("../../../testdata/pos-docs/07-OPEN_SESSION.json")),
    ("08-INVENTORY", include_str!("../../../testdata/pos-docs/08-INVENTORY.json")),
    ("09-WRITE_OFF", include_str!("../../../testdata/pos-docs/09-WRITE_OFF.json")),
    ("10-RETURN", include_str!("../../../testdata/pos-docs/10-RETURN.json")),
    ("11-REVALUATION", include_str!("../../../testdata/pos-docs/11-REVALUATION.json")),
    ("12-FPRINT_X_REPORT", include_str!("../../../testdata/pos-docs/12-FPRINT_X_REPORT.json")),
    ("13-FPRINT-Z-REPORT", include_str!("../../../testdata/pos-docs/13-FPRINT-Z-REPORT.json")),
    ("14-BUY", include_str!("../../../testdata/pos-docs/14-BUY.json")),
    ("15-BUYBACK", include_str!("../../../testdata/pos-docs/15-BUYBACK.json")),
    ("16-OPEN_TARE", include_str!("../../../testdata/pos-docs/16-OPEN_TARE.json")),
];

/// Documents in the V2 format, as the developer console's hooks send them.
const V2_DOCS: &[(&str, &str)] = &[
    ("01-SELL", include_str!("../../../testdata/v2-docs/01-SELL.json")),
    ("02-PAYBACK", include_str!("../../../testdata/v2-docs/02-PAYBACK.json")),
    ("03-ACCEPT", include_str!("../../../testdata/v2-docs/03-ACCEPT.json")),
];

/// Strips `//` comments and trailing commas outside strings.
pub(crate) fn relaxed_json(text: &str) -> Value {
    let mut out = String::with_capacity(text.len());
    let (mut chars, mut in_string) = (text.chars().peekable(), false);
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => out.extend(chars.next()),
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '/' && chars.peek() == Some(&'/') {
            while chars.peek().is_some_and(|next| *next != '\n') {
                chars.next();
            }
        } else {
            in_string = c == '"';
            out.push(c);
        }
    }
    let mut cleaned = String::with_capacity(out.len());
    let (mut chars, mut in_string) = (out.chars().peekable(), false);
    while let Some(c) = chars.next() {
        if in_string {
            cleaned.push(c);
            match c {
                '\\' => cleaned.extend(chars.next()),
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if c == ',' {
            let rest: String = chars.clone().skip_while(|next| next.is_whitespace()).take(1).collect();
            if rest == "}" || rest == "]" {
                continue;
            }
        }
        in_string = c == '"';
        cleaned.push(c);
    }
    serde_json::from_str(&cleaned).unwrap_or_else(|err| panic!("{err}: {cleaned}"))
}

fn pos_doc(name: &str) -> Value {
    POS_DOCS.iter().find(|(doc, _)| *doc == name).map(|(_, text)| relaxed_json(text)).expect("known document")
}

fn put(world: &Fixture, token: &str, store: &str, docs: Value) -> Response {
    world.call("PUT", &format!("/api/v1/inventories/stores/{store}/documents"), Some(token), Some(docs))
}

fn feed(world: &Fixture, after: Option<&str>) -> Value {
    let query = after.map(|after| format!("?after={after}&limit=1000")).unwrap_or_else(|| "?limit=1000".into());
    world.call("GET", &format!("/partner/v1/feed{query}"), Some("partner"), None).body_json()
}

fn feed_kinds(world: &Fixture) -> Vec<String> {
    feed(world, None)["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn receipt_event(id: &str, user: &str, date: &str) -> Value {
    json!({"id": id, "timestamp": 1_700_000_000_000u64, "userId": user, "type": "ReceiptCreated", "version": 2,
           "data": {"id": format!("r-{id}"), "deviceId": DEVICE, "storeId": STORE, "dateTime": date, "type": "SELL",
                    "shiftId": "7", "employeeId": "e", "paymentSource": "PAY_CARD", "infoCheck": false, "egais": false,
                    "items": [{"name": "Cider", "quantity": 1, "price": 99.9, "sumPrice": 99.9}],
                    "totalTax": 16.65, "totalDiscount": 0, "totalAmount": 99.9, "extras": {}}})
}

#[test]
fn every_real_document_is_accepted_and_read_back_equal() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    for (name, _) in POS_DOCS {
        let doc = pos_doc(name);
        // BUY and BUYBACK reuse the uuids of PAYBACK and SELL: they come from another store.
        let store = match doc.get("storeUuid").and_then(Value::as_str) {
            Some(named) => named.to_ascii_lowercase(),
            None if name.contains("BUY") => STORE2.into(),
            None => STORE.into(),
        };
        let response = put(&world, &token, &store, json!([doc.clone()]));
        assert_eq!(response.status, 200, "{name}: {}", String::from_utf8_lossy(&response.body));
        assert_eq!(response.body_json()["accepted"], 1, "{name}");
        let id = doc["uuid"].as_str().expect("uuid");
        let read = world.call("GET", &format!("/partner/v1/stores/{store}/documents/{id}"), Some("partner"), None);
        assert_eq!(read.status, 200, "{name}");
        let view = read.body_json();
        assert_eq!(view["document"], doc, "{name} is kept whole");
        assert_eq!(view["type"], doc["type"]);
        assert_eq!(view["version"], doc.get("version").cloned().unwrap_or(json!("V1")), "{name}");
    }
    let sells = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents?type=SELL"), Some("partner"), None);
    assert_eq!(sells.body_json()["items"].as_array().map(Vec::len), Some(1));
}

#[test]
fn a_redelivery_stores_nothing_and_adds_no_feed_entry() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let batch = json!([pos_doc("02-SELL"), pos_doc("03-PAYBACK")]);
    assert_eq!(put(&world, &token, STORE, batch.clone()).body_json(), json!({"accepted": 2, "duplicates": 0}));
    let keys = world.kv.keys();
    let entries = feed_kinds(&world).len();
    assert_eq!(put(&world, &token, STORE, batch).body_json(), json!({"accepted": 0, "duplicates": 2}));
    assert_eq!(world.kv.keys(), keys, "nothing written");
    assert_eq!(feed_kinds(&world).len(), entries, "no new feed entry");
    let twice = put(&world, &token, STORE, json!([pos_doc("06-CLOSE_SESSION"), pos_doc("06-CLOSE_SESSION")]));
    assert_eq!(twice.body_json(), json!({"accepted": 1, "duplicates": 0}), "the same document twice in one delivery");
    let original = pos_doc("07-OPEN_SESSION");
    let mut changed = original.clone();
    changed["number"] = json!(99);
    let conflicting = json!([original.clone(), changed]);
    let kept = put(&world, &token, STORE, conflicting);
    assert_eq!(
        kept.body_json(),
        json!({"accepted": 1, "duplicates": 0}),
        "two versions of one document: the first kept"
    );
    let id = original["uuid"].as_str().expect("uuid");
    let read = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents/{id}"), Some("partner"), None);
    assert_eq!(read.body_json()["document"], original);
    assert!(problems(&world).iter().any(|p| p.contains("twice in one batch")), "{:?}", problems(&world));
}

#[test]
fn a_batch_of_documents_costs_a_few_store_calls_not_one_per_document() {
    let world = Fixture::with_full_answers();
    let token = world.register(ALICE, "alice");
    let sell = pos_doc("02-SELL");
    let batch: Vec<Value> = (0..100)
        .map(|n| {
            let mut doc = sell.clone();
            doc["uuid"] = json!(format!("00000000-0000-4000-8000-{n:012}"));
            doc
        })
        .collect();
    let before = world.kv.calls();
    assert_eq!(put(&world, &token, STORE, json!(batch)).body_json(), json!({"accepted": 100, "duplicates": 0}));
    let first = world.kv.calls() - before;
    let before = world.kv.calls();
    assert_eq!(put(&world, &token, STORE, json!(batch)).body_json(), json!({"accepted": 0, "duplicates": 100}));
    let again = world.kv.calls() - before;
    // Token, user, account, the store's first claim and the rest in one read each, and the commit.
    assert!(first <= 8 && again <= 6, "{first} store calls for 100 new documents, {again} for their re-delivery");
}

/// The problems of every data issue recorded.
fn problems(world: &Fixture) -> Vec<String> {
    let issues = world.call("GET", "/partner/v1/data-issues?limit=1000", Some("partner"), None).body_json();
    issues["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["problem"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn documents_are_refused_only_without_an_id_and_kept_whole_otherwise() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let without = |name: &str, field: &str| {
        let mut doc = pos_doc(name);
        doc.as_object_mut().expect("object").remove(field);
        doc
    };
    let no_id = put(&world, &token, STORE, json!([pos_doc("03-PAYBACK"), without("02-SELL", "uuid")]));
    let error = &no_id.body_json()["errors"][0];
    assert_eq!((no_id.status, error["code"].as_u64(), error["subject"].as_str()), (400, Some(2002), Some("[1].uuid")));
    let mut bad_id = pos_doc("02-SELL");
    bad_id["uuid"] = json!({"not": "an id"});
    assert_eq!(put(&world, &token, STORE, json!([bad_id])).body_json()["errors"][0]["code"], 2003);
    assert!(world.kv.keys().iter().all(|key| !key.starts_with("docs/")), "nothing stored");
    assert_eq!(put(&world, &token, STORE, json!("a string")).status, 400);
    assert_eq!(
        world.call("PUT", &format!("/api/v1/inventories/stores/{STORE}/documents"), Some(&token), None).status,
        400
    );

    let with = |field: &str, value: Value| {
        let mut doc = pos_doc("02-SELL");
        doc[field] = value;
        doc
    };
    let cases = [
        ("no-close-date", without("02-SELL", "closeDate"), "no close date"),
        ("no-device", without("02-SELL", "deviceUuid"), "no device"),
        ("no-extras", without("02-SELL", "extras"), ""),
        ("no-number", without("02-SELL", "number"), ""),
        ("bad-date", with("closeDate", json!("yesterday")), "is not a date-time"),
        ("other-store", with("storeUuid", json!(STORE2)), "delivered to store"),
        ("odd-type", with("type", json!("sell me")), "kept as SELL_ME"),
        ("future-type", with("type", json!("MARKED_SELL")), "unknown document type MARKED_SELL"),
        ("not-a-uuid", with("uuid", json!("Z-1")), "is not a uuid"),
    ];
    for (n, (name, mut doc, problem)) in cases.into_iter().enumerate() {
        if doc["uuid"] != json!("Z-1") {
            doc["uuid"] = json!(format!("175d8ae9-79db-4588-a65a-{n:012}"));
        }
        let response = put(&world, &token, STORE, json!([doc.clone()]));
        assert_eq!(response.body_json(), json!({"accepted": 1, "duplicates": 0}), "{name}");
        let id = doc["uuid"].as_str().expect("id");
        let read = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents/{id}"), Some("partner"), None);
        assert_eq!(read.body_json()["document"], doc, "{name}: kept exactly as received");
        let problems = problems(&world);
        assert!(problems.iter().any(|p| p.contains(problem)), "{name}: {problem:?} in {problems:?}");
    }
    let read = world.call(
        "GET",
        &format!("/partner/v1/stores/{STORE}/documents/175d8ae9-79db-4588-a65a-000000000006"),
        Some("partner"),
        None,
    );
    assert_eq!(read.body_json()["type"], "SELL_ME", "listed under a key-safe type");
    let buy = without("14-BUY", "extras");
    assert_eq!(put(&world, &token, STORE2, json!([buy])).status, 200, "BUY comes without extras");
}

#[test]
fn v2_documents_are_taken_alone_or_in_arrays_at_both_paths() {
    let world = Fixture::new();
    let token = world.register("01-000000000004217", "alice");
    let v2: Vec<Value> = V2_DOCS.iter().map(|(_, text)| serde_json::from_str(text).expect("JSON")).collect();
    let store = "20181012-5c6d-4e7f-8091-a2b3c4d5e6f7";
    // One object at the bare webhook, as the developer console's V2 hooks send them.
    let single = world.call("PUT", "/", Some(&token), Some(v2[0].clone()));
    assert_eq!(
        single.body_json(),
        json!({"accepted": 1, "duplicates": 0}),
        "{}",
        String::from_utf8_lossy(&single.body)
    );
    // An array at the store path, V1 and V2 mixed, the store in upper case.
    let mixed = json!([v2[0].clone(), v2[1].clone(), v2[2].clone(), pos_doc("02-SELL")]);
    let response = put(&world, &token, &store.to_uppercase(), mixed);
    assert_eq!(response.body_json(), json!({"accepted": 3, "duplicates": 1}));
    for doc in &v2 {
        let id = doc["id"].as_str().expect("id");
        let read = world.call("GET", &format!("/partner/v1/stores/{store}/documents/{id}"), Some("partner"), None);
        let view = read.body_json();
        assert_eq!(view["document"], *doc, "kept whole");
        assert_eq!((view["format"].as_str(), view["version"].as_str()), (Some("V2"), Some("V2")));
        assert_eq!(view["type"], doc["type"]);
        assert_eq!(view["deviceUuid"], doc["device_id"]);
        assert_eq!(view["closeDate"], crate::time::timestamp(&doc["close_date"]).expect("date"));
    }
    let sells = world.call("GET", &format!("/partner/v1/stores/{store}/documents?type=SELL"), Some("partner"), None);
    assert_eq!(sells.body_json()["items"].as_array().map(Vec::len), Some(2), "V1 and V2 alike");
    let from = world.call(
        "GET",
        &format!("/partner/v1/stores/{store}/documents?from=2026-11-27T00:00:00Z&type=SELL"),
        Some("partner"),
        None,
    );
    assert_eq!(from.body_json()["items"][0]["id"], v2[0]["id"], "filters by the V2 close date");
    assert!(problems(&world).iter().all(|p| !p.contains("8d3c2f1e")), "a well-formed V2 document raises no issue");
    let orphan = json!({"id": "8d3c2f1e-5b7a-4c9d-9e0f-1a2b3c4d5e60", "type": "SELL", "version": "V2"});
    let refused = world.call("PUT", "/", Some(&token), Some(orphan));
    assert_eq!(refused.body_json()["errors"][0]["subject"], "store_id", "the bare path needs the document's store");
}

#[test]
fn the_bare_webhook_takes_the_store_from_each_document() {
    let world = Fixture::with(&[("documents_webhook_path", "/evotor/documents")]);
    let token = world.register(ALICE, "alice");
    let mut doc = pos_doc("02-SELL");
    let missing = world.call("PUT", "/evotor/documents", Some(&token), Some(json!([doc.clone()])));
    assert_eq!(missing.body_json()["errors"][0]["subject"], "[0].storeUuid");
    doc["storeUuid"] = json!(STORE.to_uppercase());
    let stored = world.call("PUT", "/evotor/documents/", Some(&token), Some(json!([doc])));
    assert_eq!(stored.status, 200, "{}", String::from_utf8_lossy(&stored.body));
    let read = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents"), Some("partner"), None);
    assert_eq!(read.body_json()["items"][0]["id"], "175d8ae9-79db-4588-a65a-8f0613e2d0ff");
    assert_eq!(world.call("PUT", "/", Some(&token), Some(json!([]))).status, 404, "only the configured path");
    let default = Fixture::new();
    let token = default.register(ALICE, "alice");
    assert_eq!(default.call("PUT", "/", Some(&token), Some(json!([]))).status, 200, "`/` by default");
}

#[test]
fn another_users_store_is_a_data_issue_and_unlicensed_devices_are_refused() {
    let world = Fixture::with(&[("billing_enforcement", "evotor")]);
    let alice = world.register(ALICE, "alice");
    let bob = world.register(BOB, "bob");
    for (user, sub) in [(ALICE, "a99fbf70-6307-4acc-b61c-741ee9eef6c1"), (BOB, "a99fbf70-6307-4acc-b61c-741ee9eef6c2")]
    {
        let trial = json!({"subscriptionId": sub, "productId": "p", "userId": user, "sequenceNumber": 1,
            "timestamp": "2026-01-01T00:00:00.000+0000", "type": "SubscriptionCreated", "planId": "basic",
            "trialPeriodDuration": "P3650DT", "deviceNumber": 1});
        assert_eq!(world.server("/api/v1/subscription/event", trial).status, 200);
    }
    assert_eq!(put(&world, &alice, STORE, json!([pos_doc("02-SELL")])).status, 200, "the first terminal is registered");
    let mut other_device = pos_doc("03-PAYBACK");
    other_device["deviceUuid"] = json!("5a188de4-49b8-4cb4-800e-eb6b52024370");
    let unlicensed = put(&world, &alice, STORE, json!([other_device]));
    assert_eq!((unlicensed.status, unlicensed.body_json()["errors"][0]["code"].as_u64()), (405, Some(1005)));
    let mut bobs = pos_doc("03-PAYBACK");
    bobs["deviceUuid"] = json!("5a188de4-49b8-4cb4-800e-eb6b52024371");
    let foreign = put(&world, &bob, STORE, json!([bobs.clone()]));
    assert_eq!(foreign.status, 200, "taken: Evotor would retry a refusal for three days");
    assert!(
        problems(&world).iter().any(|p| p.starts_with(&format!("belongs to user {ALICE}: the documents kept apart")))
    );
    assert_eq!(put(&world, &bob, STORE, json!([bobs])).body_json(), json!({"accepted": 0, "duplicates": 1}));
    let issues = world.call("GET", "/partner/v1/data-issues", Some("partner"), None).body_json();
    let counted: Vec<&Value> =
        issues["items"].as_array().expect("items").iter().filter(|i| i["entity"] == "store").collect();
    assert_eq!(counted.len(), 1);
    assert_eq!(counted[0]["count"], 1, "a re-delivery that stores nothing counts nothing");
    let owner = world.call("GET", &format!("/partner/v1/users/{ALICE}/stores"), Some("partner"), None).body_json();
    assert_eq!(owner["items"].as_array().map(Vec::len), Some(1), "still Alice's store");
    let bobs_stores = world.call("GET", &format!("/partner/v1/users/{BOB}/stores"), Some("partner"), None).body_json();
    assert_eq!(bobs_stores["items"], json!([]), "Bob holds nothing of it");
}

#[test]
fn receipts_are_kept_once_per_user_and_event() {
    let world = Fixture::new();
    let alice = world.register(ALICE, "alice");
    let bob = world.register(BOB, "bob");
    let first = receipt_event("evt-1", ALICE, "2026-01-02T10:00:00.000+0000");
    let v1 = world.call("POST", "/api/v1/receipt", Some(&alice), Some(json!([first.clone()])));
    assert_eq!(v1.body_json(), json!({"accepted": 1, "duplicates": 0}));
    let again = world.call("POST", "/api/v2/receipts", Some(&alice), Some(first.clone()));
    assert_eq!(again.body_json(), json!({"accepted": 0, "duplicates": 1}), "v2 takes one event; the id decides");
    let plural = world.call("POST", "/api/v1/receipts", Some(&alice), Some(first.clone()));
    assert_eq!(plural.body_json(), json!({"accepted": 0, "duplicates": 1}), "the plural v1 path");
    let mut bobs = receipt_event("evt-1", BOB, "2026-01-03T10:00:00.000+0000");
    bobs["data"]["storeId"] = json!(STORE2);
    bobs["data"]["deviceId"] = json!("5a188de4-49b8-4cb4-800e-eb6b52024371");
    let same_id = world.call("POST", "/api/v2/receipts", Some(&bob), Some(bobs.clone()));
    assert_eq!(same_id.body_json(), json!({"accepted": 1, "duplicates": 0}), "another user's event with the same id");
    let foreign = json!([
        receipt_event("evt-2", ALICE, "2026-01-02T11:00:00.000+0000"),
        receipt_event("evt-3", BOB, "2026-01-02T12:00:00.000+0000")
    ]);
    let kept = world.call("POST", "/api/v2/receipts", Some(&alice), Some(foreign));
    assert_eq!(kept.body_json(), json!({"accepted": 2, "duplicates": 0}));
    assert!(problems(&world).iter().any(|p| p == &format!("userId {BOB} is not the delivering user")));
    let read = world.call("GET", "/partner/v1/receipts/evt-1", Some("partner"), None).body_json();
    assert_eq!((&read["event"], &read["userId"]), (&first, &json!(ALICE)));
    let read =
        world.call("GET", &format!("/partner/v1/receipts/evt-1?userId={BOB}"), Some("partner"), None).body_json();
    assert_eq!(read["event"], bobs);
    assert_eq!(read["storeUuid"], STORE2);
    let no_id = world.call("POST", "/api/v2/receipts", Some(&alice), Some(json!({"type": "ReceiptCreated"})));
    assert_eq!((no_id.status, no_id.body_json()["errors"][0]["subject"].as_str()), (400, Some("id")));
}

#[test]
fn receipts_kept_before_they_were_per_user_are_still_read_and_deduplicated() {
    let world = Fixture::new();
    let alice = world.register(ALICE, "alice");
    let event = receipt_event("evt-old", ALICE, "2026-01-02T10:00:00.000+0000");
    let hash = storage::receipt_id_hash("evt-old");
    let record = ReceiptRecord {
        v: 1,
        id: "evt-old".into(),
        store_uuid: STORE.into(),
        date_time: 1_767_348_000_000,
        user_id: ALICE.into(),
        received_at: 1,
        event: event.clone(),
    };
    let writes = vec![
        crate::kv::Write::Set(storage::receipt_key_by_hash(&hash), storage::encode(&record)),
        crate::kv::Write::Set(
            format!("{}{:013}.{hash}", storage::receipts_by_date_prefix(STORE), record.date_time),
            b"{\"v\":1}".to_vec(),
        ),
    ];
    crate::kv::Kv::commit(&world.kv, Vec::new(), writes).expect("old layout");
    let again = world.call("POST", "/api/v2/receipts", Some(&alice), Some(event.clone()));
    assert_eq!(again.body_json(), json!({"accepted": 0, "duplicates": 1}));
    let listed = world.call("GET", &format!("/partner/v1/stores/{STORE}/receipts"), Some("partner"), None).body_json();
    assert_eq!(listed["items"][0]["event"], event);
    assert_eq!(world.call("GET", "/partner/v1/receipts/evt-old", Some("partner"), None).body_json()["event"], event);
}

#[test]
fn partner_listings_filter_by_type_and_date_with_stable_cursors() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let docs: Vec<Value> =
        (1..=30u32).map(|day| january_doc(if day % 3 == 1 { "03-PAYBACK" } else { "02-SELL" }, day)).collect();
    assert_eq!(put(&world, &token, STORE, Value::from(docs)).status, 200);
    let list = |query: &str| document_pages(&world, &format!("limit=4{query}")).concat();
    let all = list("");
    assert_eq!(all.len(), 30);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "in close-date order");
    assert_eq!(list("&type=PAYBACK").len(), 10);
    let window = list("&from=2026-01-05T10:00:00.000%2B0000&to=2026-01-09T10:00:00.000%2B0000");
    assert_eq!(window, (5..9).map(january).collect::<Vec<_>>(), "from inclusive, to exclusive");
    assert_eq!(list(&format!("&type=SELL&from={}", january(28))).len(), 2);

    for n in 0..5u32 {
        let event = receipt_event(&format!("evt-{n}"), ALICE, &format!("2026-02-{:02}T10:00:00.000+0000", 5 - n));
        assert_eq!(world.call("POST", "/api/v2/receipts", Some(&token), Some(event)).status, 200);
    }
    let receipts =
        world.call("GET", &format!("/partner/v1/stores/{STORE}/receipts?limit=3"), Some("partner"), None).body_json();
    let ids: Vec<_> = receipts["items"].as_array().expect("items").iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, [json!("evt-4"), json!("evt-3"), json!("evt-2")], "by receipt date");
    assert!(receipts["next"].is_string());
}

/// The pages of a listing of `STORE`'s documents (`query` after `?`), followed
/// by `next` to the end: each page's close dates.
fn document_pages(world: &Fixture, query: &str) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|a| format!("&after={a}")).unwrap_or_default();
        let path = format!("/partner/v1/stores/{STORE}/documents?{query}{cursor}");
        let page = world.call("GET", &path, Some("partner"), None).body_json();
        let items = page["items"].as_array().expect("items");
        pages.push(items.iter().map(|d| d["closeDate"].as_i64().unwrap_or(0)).collect());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return pages,
        }
    }
}

/// Unix milliseconds of 10:00 on the `day`th of January 2026 (UTC).
fn january(day: u32) -> i64 {
    crate::time::parse_datetime(&format!("2026-01-{day:02}T10:00:00.000+0000")).unwrap_or(0)
}

/// A document of `name` dated the `day`th of January 2026, with a uuid of its own.
fn january_doc(name: &str, day: u32) -> Value {
    let mut doc = pos_doc(name);
    doc["uuid"] = json!(format!("175d8ae9-79db-4588-a65a-{day:012x}"));
    doc["closeDate"] = json!(format!("2026-01-{day:02}T10:00:00.000+0000"));
    doc
}

#[test]
fn a_document_is_indexed_once_by_date_naming_its_type_and_those_indexed_by_type_before_still_list() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let by_date = storage::documents_by_date_prefix(STORE);
    assert_eq!(
        put(&world, &token, STORE, json!([january_doc("02-SELL", 1), january_doc("03-PAYBACK", 2)])).status,
        200
    );
    let keys = world.kv.keys();
    assert!(keys.iter().all(|key| !key.contains("/by-type/")), "no second index: {keys:?}");
    let entries: Vec<(String, Value)> = keys
        .iter()
        .filter(|key| key.starts_with(&by_date))
        .map(|key| {
            (key.clone(), serde_json::from_slice(&world.kv.get(key).expect("get").expect("entry").value).expect("json"))
        })
        .collect();
    let named: Vec<&Value> = entries.iter().map(|(_, entry)| &entry["type"]).collect();
    assert_eq!(named, [&json!("SELL"), &json!("PAYBACK")]);

    // The same two as earlier builds indexed them: an entry by date naming no type, one by type.
    let mut writes = Vec::new();
    for ((key, _), kind) in entries.iter().zip(["SELL", "PAYBACK"]) {
        let position = key.strip_prefix(&by_date).expect("position");
        writes.push(crate::kv::Write::Set(key.clone(), b"{\"v\":1}".to_vec()));
        let old = format!("{}{position}", storage::documents_by_type_prefix(STORE, kind));
        writes.push(crate::kv::Write::Set(old, b"{\"v\":1}".to_vec()));
    }
    crate::kv::Kv::commit(&world.kv, Vec::new(), writes).expect("the earlier layout");
    assert_eq!(
        put(&world, &token, STORE, json!([january_doc("02-SELL", 3), january_doc("03-PAYBACK", 4)])).status,
        200
    );

    let listed = |query: &str| document_pages(&world, query).concat();
    assert_eq!(listed("type=PAYBACK&limit=1"), [january(2), january(4)], "old and new alike, by close date");
    assert_eq!(listed("type=SELL"), [january(1), january(3)]);
    assert_eq!(listed("limit=3"), (1..=4).map(january).collect::<Vec<_>>());
    assert_eq!(listed("type=Z_REPORT"), Vec::<i64>::new());
    let problems = crate::audit::problems(&world.kv);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn a_rare_type_is_listed_in_pages_that_each_look_at_a_bounded_part_of_the_index() {
    use crate::endpoints::documents::SCANNED_PER_PAGE;
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    // Entries of another type between two payback documents, more than a page looks at.
    let by_date = storage::documents_by_date_prefix(STORE);
    let writes = (0..SCANNED_PER_PAGE + 50)
        .map(|n| {
            let key = format!("{by_date}{:013}.sell-{n:06}", january(5));
            crate::kv::Write::Set(key, b"{\"v\":1,\"type\":\"SELL\"}".to_vec())
        })
        .collect();
    crate::kv::Kv::commit(&world.kv, Vec::new(), writes).expect("entries");
    let docs = json!([january_doc("03-PAYBACK", 2), january_doc("03-PAYBACK", 9)]);
    assert_eq!(put(&world, &token, STORE, docs).status, 200);
    let pages = document_pages(&world, "type=PAYBACK&limit=10");
    assert_eq!(pages.concat(), [january(2), january(9)], "{pages:?}");
    assert!(pages.len() >= 2, "a page stops looking after {SCANNED_PER_PAGE} entries: {pages:?}");
    assert_eq!(pages[0], [january(2)], "a short page, with a next");
}

#[test]
fn the_feed_has_every_accepted_change_once_in_commit_order() {
    let world = Fixture::new();
    let sub = "a99fbf70-6307-4acc-b61c-741ee9eef6c1";
    let event = |seq: u64, kind: &str| {
        json!({"subscriptionId": sub, "productId": "p", "userId": ALICE, "sequenceNumber": seq,
               "timestamp": "2026-01-01T00:00:00.000+0000", "type": kind, "planId": "basic",
               "trialPeriodDuration": "P14DT", "nextBillingDate": "2026-02-01T00:00:00.000+0000"})
    };
    // The second event first: it waits, and both are announced when the gap closes.
    assert_eq!(world.server("/api/v1/subscription/event", event(2, "SubscriptionActivated")).status, 200);
    assert!(feed_kinds(&world).is_empty(), "a waiting event is not applied yet");
    assert_eq!(world.server("/api/v1/subscription/event", event(1, "SubscriptionCreated")).status, 200);
    let token = world.register(ALICE, "alice");
    for _ in 0..2 {
        world.server("/api/v1/user/token", json!({"userId": ALICE, "token": "cloud-1"}));
        world.server("/api/v1/user/tariff", json!({"userId": ALICE, "tariffId": "t", "status": "ACTIVE"}));
        world.server(
            "/api/v2/installation/event",
            json!({"id": "i-1", "timestamp": "2026-01-01T00:00:00.000+0000",
            "type": "ApplicationInstalled", "data": {"userId": ALICE, "productId": "p"}}),
        );
        world.call("PUT", "/api/v1/inventories/stores", Some(&token), Some(json!([{"uuid": STORE, "name": "Shop"}])));
        world.call(
            "POST",
            &format!("/api/v1/inventories/stores/{STORE}/products"),
            Some(&token),
            Some(json!([
            {"uuid": STORE2, "group": true, "name": "Drinks"}])),
        );
        put(&world, &token, STORE, json!([pos_doc("02-SELL")]));
        world.call(
            "POST",
            "/api/v2/receipts",
            Some(&token),
            Some(receipt_event("evt-1", ALICE, "2026-01-02T10:00:00.000+0000")),
        );
    }
    assert_eq!(
        feed_kinds(&world),
        [
            "subscription.event-applied",
            "subscription.event-applied",
            "account.created",
            "cloud-token.received",
            "tariff.changed",
            "installation.event",
            "store.upserted",
            "products.upserted",
            "device.registered",
            "document.received",
            "receipt.received",
        ],
        "each change once, the repeats add nothing"
    );
    let page = feed(&world, None);
    let cursors: Vec<&str> =
        page["items"].as_array().expect("items").iter().filter_map(|e| e["cursor"].as_str()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "cursors increase");
    assert_eq!(page["items"][1]["data"]["sequenceNumber"], 2);
    let rest = feed(&world, Some(cursors[8]));
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(2), "resumes after a cursor");
    let idle = feed(&world, Some(cursors[10]));
    assert_eq!(
        (idle["items"].clone(), idle["next"].as_str()),
        (json!([]), Some(cursors[10])),
        "nothing new: same cursor"
    );
    let bad = world.call("GET", "/partner/v1/feed?after=xyz", Some("partner"), None);
    assert_eq!(bad.status, 400);
}

/// Every entry of the feed, paged `limit` at a time (for `user`, if named): (cursor, kind, user).
fn feed_pages(world: &Fixture, limit: u32, user: Option<&str>) -> Vec<(String, String, Value)> {
    let (mut entries, mut after) = (Vec::new(), None::<String>);
    loop {
        let mut query = format!("?limit={limit}");
        if let Some(user) = user {
            query.push_str(&format!("&userId={user}"));
        }
        if let Some(after) = &after {
            query.push_str(&format!("&after={after}"));
        }
        let page = world.call("GET", &format!("/partner/v1/feed{query}"), Some("partner"), None).body_json();
        for item in page["items"].as_array().expect("items") {
            let text = |field: &str| item[field].as_str().unwrap_or_default().to_owned();
            entries.push((text("cursor"), text("kind"), item["userId"].clone()));
        }
        let next = page["next"].as_str().map(str::to_owned);
        if next == after {
            return entries;
        }
        after = next;
    }
}

#[test]
fn a_commits_feed_entries_share_a_record_and_page_with_cursors_of_their_own() {
    let world = Fixture::new();
    let alice = world.register(ALICE, "alice");
    let bob = world.register(BOB, "bob");
    let docs = |from: u32| {
        let docs = (from..from + 40).map(|n| {
            let mut doc = january_doc("02-SELL", 1);
            doc["uuid"] = json!(format!("175d8ae9-79db-4588-a65a-{n:012x}"));
            doc
        });
        Value::Array(docs.collect())
    };
    assert_eq!(put(&world, &alice, STORE, docs(0)).status, 200);
    // An entry as earlier builds stored it: one a record, its key's stamp its cursor.
    let old = json!({"v": 1, "kind": "tariff.changed", "at": 1, "userId": ALICE, "data": {"tariffId": "t"}});
    let write = crate::kv::Write::SetStamped(storage::FEED_PREFIX.into(), old.to_string().into_bytes());
    crate::kv::Kv::commit(&world.kv, Vec::new(), vec![write]).expect("an earlier entry");
    assert_eq!(put(&world, &bob, STORE2, docs(100)).status, 200);
    assert_eq!(put(&world, &alice, STORE, docs(200)).status, 200);

    let records: Vec<(String, Vec<(String, storage::FeedEntry)>)> = storage::scan_all(&world.kv, storage::FEED_PREFIX)
        .expect("feed")
        .into_iter()
        .map(|(key, record)| {
            let entries = storage::feed_entries(&key, &record.value).expect("entries");
            (key, entries)
        })
        .collect();
    let received = |entries: &[(String, storage::FeedEntry)]| {
        entries.iter().filter(|(_, entry)| entry.kind == "document.received").count()
    };
    let deliveries: Vec<usize> = records.iter().map(|(_, entries)| received(entries)).filter(|&n| n > 0).collect();
    assert_eq!(deliveries, [40, 40, 40], "a delivery, a record");
    let (old_key, old_entries) =
        records.iter().find(|(_, entries)| entries.iter().any(|(_, entry)| entry.at == 1)).expect("the earlier entry");
    assert_eq!(old_entries.len(), 1);
    assert_eq!(format!("{}{}", storage::FEED_PREFIX, old_entries[0].0), *old_key, "its key's stamp is its cursor");

    let all = feed_pages(&world, 1000, None);
    assert_eq!(all.len(), records.iter().map(|(_, entries)| entries.len()).sum::<usize>());
    assert!(all.windows(2).all(|pair| pair[0].0 < pair[1].0), "cursors increase: {all:?}");
    let old = all.iter().position(|(cursor, _, _)| *cursor == old_entries[0].0).expect("listed");
    let documents_of = |entries: &[(String, String, Value)]| -> Vec<Value> {
        entries.iter().filter(|(_, kind, _)| kind == "document.received").map(|(_, _, user)| user.clone()).collect()
    };
    assert_eq!(documents_of(&all[..old]), vec![json!(ALICE); 40], "in commit order");
    assert_eq!(documents_of(&all[old..])[..41], [vec![json!(BOB); 40], vec![json!(ALICE)]].concat());
    for limit in [1, 7, 40, 41] {
        assert_eq!(feed_pages(&world, limit, None), all, "pages of {limit} resume inside a record");
    }
    for user in [ALICE, BOB] {
        let theirs: Vec<_> = all.iter().filter(|(_, _, id)| id == &json!(user)).cloned().collect();
        assert!(theirs.len() >= 40, "{user}: {theirs:?}");
        assert_eq!(feed_pages(&world, 3, Some(user)), theirs, "{user}'s entries, the same cursors");
    }
}

#[test]
fn a_commit_with_an_unknown_outcome_is_re_read_and_leaves_each_document_stored_once() {
    for applied in [true, false] {
        let world = Fixture::new();
        let token = world.register(ALICE, "alice");
        // The next commit answers "outcome unknown": applied first when `applied`, else not at all.
        let lose_next = std::cell::Cell::new(Some(applied));
        let losing = crate::testing::CommitThrough {
            kv: &world.kv,
            commit: Box::new(|kv, checks, writes| match lose_next.take() {
                None => kv.commit(checks, writes),
                Some(applied) => {
                    if applied {
                        kv.commit(checks, writes)?;
                    }
                    Err(crate::kv::KvError::OutcomeUnknown("the connection broke after COMMIT".into()))
                }
            }),
        };
        let ctx = Ctx { kv: &losing, ..world.ctx() };
        let request = Request::new("PUT", &format!("/api/v1/inventories/stores/{STORE}/documents"))
            .header("authorization", &format!("Bearer {token}"))
            .json(&json!([pos_doc("02-SELL"), pos_doc("03-PAYBACK")]));
        let answer = crate::handle(&ctx, &request);
        assert_eq!(answer.status, 200, "applied first: {applied}");
        assert_eq!(lose_next.take(), None, "the lost commit happened");
        let kinds = feed_kinds(&world);
        assert_eq!(kinds.iter().filter(|kind| kind.starts_with("document")).count(), 2, "applied {applied}: {kinds:?}");
        let again = put(&world, &token, STORE, json!([pos_doc("02-SELL"), pos_doc("03-PAYBACK")]));
        assert_eq!(again.body_json(), json!({"accepted": 0, "duplicates": 2}), "both stored, once");
    }
}

#[test]
fn large_documents_make_shorter_pages_with_a_next_never_a_failed_listing() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let filler = "x".repeat(1_500_000);
    for n in 0..6 {
        let document = json!({"id": format!("big-{n}"), "store_id": STORE, "device_id": DEVICE, "type": "SELL",
            "close_date": 1_700_000_000_000i64 + n, "user_id": ALICE, "version": "V2", "body": {"filler": filler}});
        assert_eq!(put(&world, &token, STORE, json!([document])).status, 200);
    }
    let (mut seen, mut after, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let query = after.as_deref().map(|after| format!("&after={after}")).unwrap_or_default();
        let answer =
            world.call("GET", &format!("/partner/v1/stores/{STORE}/documents?limit=100{query}"), Some("partner"), None);
        assert_eq!(answer.status, 200);
        assert!(answer.body.len() < 8 << 20, "a page stays small: {} bytes", answer.body.len());
        let body = answer.body_json();
        let items = body["items"].as_array().expect("items");
        assert!(!items.is_empty());
        seen.extend(items.iter().filter_map(|item| item["id"].as_str().map(str::to_owned)));
        pages += 1;
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (0..6).map(|n| format!("big-{n}")).collect::<Vec<_>>(), "each once, in order");
    assert!(pages >= 3, "{pages} pages");
}

#[test]
fn a_document_another_user_sends_into_a_store_first_never_makes_the_owners_a_duplicate() {
    let world = Fixture::new();
    let alice = world.register(ALICE, "alice");
    let bob = world.register(BOB, "bob");
    // Alice's store is hers; Bob sends a document with the id of her real one into it first.
    let store = json!([{"uuid": STORE, "name": "Alice's"}]);
    assert_eq!(world.call("PUT", "/api/v1/inventories/stores", Some(&alice), Some(store)).status, 200);
    let mut squatted = pos_doc("02-SELL");
    squatted["closeResultSum"] = json!("0.00");
    assert_eq!(put(&world, &bob, STORE, json!([squatted])).body_json(), json!({"accepted": 1, "duplicates": 0}));
    let listed = |world: &Fixture| {
        let answer = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents"), Some("partner"), None);
        answer.body_json()["items"].as_array().cloned().unwrap_or_default()
    };
    assert!(listed(&world).is_empty(), "Bob's document stays out of Alice's listings");
    let real = put(&world, &alice, STORE, json!([pos_doc("02-SELL")]));
    assert_eq!(real.body_json(), json!({"accepted": 1, "duplicates": 0}), "Alice's real delivery is stored");
    let items = listed(&world);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["userId"], ALICE);
    assert!(problems(&world).iter().any(|p| p.contains("kept apart")));
}

#[test]
fn one_delivery_writes_a_bounded_number_of_data_issues_however_many_items_it_carries() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    // A thousand receipts, each with its own problems (no store, no terminal, no date).
    let receipts: Vec<Value> = (0..1000)
        .map(|n| json!({"id": format!("r-{n}"), "userId": ALICE, "type": "ReceiptCreated", "data": {}}))
        .collect();
    let answer = world.call("POST", "/api/v2/receipts", Some(&token), Some(Value::Array(receipts)));
    assert_eq!(answer.body_json()["accepted"], 1000);
    let issues: Vec<String> =
        world.kv.keys().into_iter().filter(|key| key.starts_with(storage::ISSUES_PREFIX)).collect();
    assert!(issues.len() <= storage::MAX_ISSUES_PER_COMMIT + 4, "{} issue records", issues.len());
    let listed = world.call("GET", "/partner/v1/data-issues?limit=1000", Some("partner"), None).body_json();
    let summary = listed["items"].as_array().expect("items").iter().find(|i| i["entityId"] == "*").expect("a summary");
    assert!(
        summary["problem"].as_str().unwrap_or_default().contains("more receipt issues in one delivery"),
        "{summary}"
    );
    let total: u64 = listed["items"].as_array().expect("items").iter().filter_map(|i| i["count"].as_u64()).sum();
    assert_eq!(total, 3000, "every problem still counted: {listed}");
}

/// With `retention_days`, a store that receives the same every day stops
/// growing: documents and receipts go by their own dates, the feed and the
/// event log (with each event's idempotency marker) by their arrival. A
/// partner's feed cursor on an erased entry goes on from the next one.
#[test]
fn data_issues_last_seen_before_retention_days_go_with_deliveries_that_note_more() {
    let world = Fixture::with(&[("retention_days", "2")]);
    let token = world.register(ALICE, "alice");
    let issues = || world.kv.keys().iter().filter(|key| key.starts_with(storage::ISSUES_PREFIX)).count();
    let mut counted = Vec::new();
    for day in 0..7u64 {
        world.clock.advance(86_400);
        let now_ms = crate::time::millis(crate::clock::Clock::now_unix(&world.clock));
        // Each without a terminal: one data issue a document.
        let documents: Vec<Value> = (0..20u64)
            .map(|n| {
                json!({"id": format!("00000000-0000-4000-8000-{day:06}{n:06}"), "store_id": STORE, "type": "SELL",
                       "close_date": now_ms, "user_id": ALICE, "version": "V2", "body": {}})
            })
            .collect();
        assert_eq!(put(&world, &token, STORE, json!(documents)).status, 200);
        counted.push(issues());
    }
    // Three days' issues (the cutoff's day and the two after it) from the third day on.
    assert_eq!(counted, [20, 40, 60, 60, 60, 60, 60], "issues stop growing");
    let listed = world.call("GET", "/partner/v1/data-issues?limit=1000", Some("partner"), None).body_json();
    let oldest = listed["items"].as_array().expect("items").iter().filter_map(|item| item["lastSeen"].as_u64()).min();
    let cutoff = crate::clock::Clock::now_unix(&world.clock) - 2 * 86_400;
    assert!(oldest.is_some_and(|oldest| oldest >= cutoff), "none past its time: {oldest:?} < {cutoff}");
    // Without retention_days, nothing goes.
    let kept = Fixture::new();
    let token = kept.register(ALICE, "alice");
    for day in 0..4u64 {
        kept.clock.advance(86_400);
        let document = json!({"id": format!("00000000-0000-4000-8000-{day:012}"), "store_id": STORE, "type": "SELL",
                              "close_date": 0, "user_id": ALICE, "version": "V2", "body": {}});
        assert_eq!(put(&kept, &token, STORE, json!([document])).status, 200);
    }
    let kept_issues = kept.kv.keys().iter().filter(|key| key.starts_with(storage::ISSUES_PREFIX)).count();
    assert!(kept_issues >= 4, "{kept_issues}");
}

#[test]
fn a_store_receiving_the_same_every_day_stops_growing_under_retention_days() {
    let world = Fixture::with(&[("retention_days", "2"), ("events_webhook_allow_unsigned", "true")]);
    let token = world.register(ALICE, "alice");
    let deliver_event = |event: Value| {
        let mut request = Request::new("POST", "/events").header("content-type", "application/json");
        request.body = serde_json::to_vec(&event).expect("json");
        crate::handle(&world.ctx(), &request).status
    };
    let (mut keys, mut cursors) = (Vec::new(), Vec::new());
    for day in 0..9u64 {
        world.clock.advance(86_400);
        let now_ms = crate::time::millis(crate::clock::Clock::now_unix(&world.clock));
        let documents: Vec<Value> = (0..20u64)
            .map(|n| {
                json!({"id": format!("00000000-0000-4000-8000-{:06}{n:06}", day), "store_id": STORE, "device_id": DEVICE,
                       "type": "SELL", "close_date": now_ms, "user_id": ALICE, "version": "V2", "body": {}})
            })
            .collect();
        assert_eq!(put(&world, &token, STORE, json!(documents)).status, 200);
        for n in 0..10u64 {
            let event = json!({"id": format!("ev-{day}-{n}"), "type": "StoreEvent", "action": "updated",
                               "timestamp": now_ms, "payload": {"id": STORE, "user_id": ALICE, "name": format!("Shop {day}")}});
            assert_eq!(deliver_event(event), 200);
        }
        keys.push(world.kv.keys().len());
        cursors.push(feed(&world, None)["items"][0]["cursor"].as_str().map(str::to_owned));
    }
    // Growing while the first days are within retention, then level: what one day brings, another takes away.
    assert!(keys[2] > keys[0], "{keys:?}");
    assert!(keys[5..].windows(2).all(|pair| pair[0] == pair[1]), "the store stops growing: {keys:?}");
    let problems = crate::audit::problems(&world.kv);
    assert!(problems.is_empty(), "{problems:?}");
    // The first day's entries are gone; a cursor on one of them reads on from what is left.
    let first = cursors[0].clone().expect("a cursor");
    assert_ne!(cursors[8], cursors[0], "the oldest entries were erased");
    let after_erased = feed(&world, Some(&first));
    assert_eq!(after_erased["items"][0]["cursor"], feed(&world, None)["items"][0]["cursor"]);
    // An event delivered again after its record was erased is taken as new; a recent one is still a repeat.
    let logged = || world.kv.keys().iter().filter(|key| key.starts_with(crate::domain::events::LOG_PREFIX)).count();
    let again = |id: &str| {
        json!({"id": id, "type": "StoreEvent", "action": "updated", "timestamp": 0,
                                  "payload": {"id": STORE, "user_id": ALICE, "name": "Shop"}})
    };
    let before = logged();
    assert_eq!(deliver_event(again("ev-8-0")), 200);
    assert_eq!(logged(), before, "a repeat within retention is not logged again");
    assert_eq!(deliver_event(again("ev-0-0")), 200);
    assert_eq!(logged(), before + 1, "its marker went with its record");
}

#[test]
fn documents_and_receipts_past_retention_days_are_erased_as_their_store_receives_more() {
    let world = Fixture::with(&[("retention_days", "30"), ("user_quota_records", "100")]);
    let token = world.register(ALICE, "alice");
    world.clock.advance(100 * 86_400);
    let now_ms = crate::time::millis(crate::clock::Clock::now_unix(&world.clock));
    let day = 86_400_000i64;
    let document = |id: &str, at: i64| {
        json!({"id": id, "store_id": STORE, "device_id": DEVICE, "type": "SELL", "close_date": at, "user_id": ALICE,
               "version": "V2", "body": {}})
    };
    let receipt = |id: &str, at: i64| json!({"id": id, "userId": ALICE, "type": "ReceiptCreated", "data": {"id": id, "storeId": STORE, "deviceId": DEVICE, "dateTime": at}});
    // Kept while within 30 days…
    assert_eq!(put(&world, &token, STORE, json!([document("old", now_ms - 20 * day)])).status, 200);
    assert_eq!(
        world.call("POST", "/api/v2/receipts", Some(&token), Some(receipt("old-r", now_ms - 20 * day))).status,
        200
    );
    let listed = |path: &str| {
        let answer = world.call("GET", &format!("/partner/v1/stores/{STORE}/{path}"), Some("partner"), None);
        answer.body_json()["items"]
            .as_array()
            .map(|items| items.iter().filter_map(|i| i["id"].as_str().map(str::to_owned)).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(listed("documents"), ["old"]);
    // …and erased by a later write to the store once they are past them.
    world.clock.advance(15 * 86_400);
    assert_eq!(put(&world, &token, STORE, json!([document("new", now_ms + 15 * day)])).status, 200);
    assert_eq!(listed("documents"), ["new"]);
    assert_eq!(
        world.call("POST", "/api/v2/receipts", Some(&token), Some(receipt("new-r", now_ms + 15 * day))).status,
        200
    );
    assert_eq!(listed("receipts"), ["new-r"]);
    assert!(world.kv.keys().iter().all(|key| !key.contains("/doc/old")), "the record itself is gone");
    let feed = world.call("GET", "/partner/v1/feed?limit=1000", Some("partner"), None).body_json();
    assert!(feed["items"].as_array().expect("items").iter().any(|e| e["kind"] == "data.expired"));
    assert!(crate::audit::problems(&world.kv).is_empty(), "{:?}", crate::audit::problems(&world.kv));
    let usage: Value = storage::read(&world.kv, &format!("user/{ALICE}/usage")).expect("read").expect("counted");
    assert_eq!(usage["records"], 2, "what expired no longer counts against the quota");
}

#[test]
fn the_partner_api_shows_document_and_receipt_ids_as_sent_and_finds_them_in_any_case() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let id = "20170222-D58C-40E0-8051-B53ADFF38860";
    let document = json!({"id": id, "store_id": STORE, "device_id": DEVICE, "type": "SELL",
        "close_date": 1_700_000_000_000i64, "user_id": ALICE, "version": "V2", "body": {}});
    assert_eq!(put(&world, &token, STORE, json!([document])).status, 200);
    let listed = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents"), Some("partner"), None).body_json();
    assert_eq!(listed["items"][0]["id"], id);
    for asked in [id.to_owned(), id.to_lowercase()] {
        let one = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents/{asked}"), Some("partner"), None);
        assert_eq!((one.status, one.body_json()["id"].clone()), (200, json!(id)), "{asked}");
    }
    let receipt = json!({"id": id, "userId": ALICE, "type": "ReceiptCreated",
        "data": {"id": "r", "storeId": STORE, "deviceId": DEVICE, "dateTime": 1_700_000_000_000i64}});
    assert_eq!(world.call("POST", "/api/v2/receipts", Some(&token), Some(receipt)).status, 200);
    for asked in [id.to_owned(), id.to_lowercase()] {
        let one = world.call("GET", &format!("/partner/v1/receipts/{asked}"), Some("partner"), None);
        assert_eq!((one.status, one.body_json()["id"].clone()), (200, json!(id)), "{asked}");
    }
}

#[test]
fn a_user_past_its_quota_is_answered_402_and_nothing_of_the_delivery_is_stored() {
    let world = Fixture::with(&[("user_quota_records", "3")]);
    let alice = world.register(ALICE, "alice");
    let bob = world.register(BOB, "bob");
    let document = |id: &str| {
        json!({"id": id, "store_id": STORE, "device_id": DEVICE, "type": "SELL", "close_date": 1_700_000_000_000i64,
               "user_id": ALICE, "version": "V2", "body": {}})
    };
    assert_eq!(put(&world, &alice, STORE, json!([document("d1"), document("d2")])).status, 200);
    let over = put(&world, &alice, STORE, json!([document("d3"), document("d4")]));
    assert_eq!((over.status, over.body_json()["errors"][0]["code"].as_u64()), (402, Some(1004)));
    assert!(over.body_json()["errors"][0]["reason"].as_str().unwrap_or_default().contains("quota exceeded"));
    let listed = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents"), Some("partner"), None);
    assert_eq!(listed.body_json()["items"].as_array().map(Vec::len), Some(2), "nothing of it stored");
    // A re-delivery stores nothing, so it costs nothing; one more record fits.
    assert_eq!(put(&world, &alice, STORE, json!([document("d1"), document("d3")])).body_json()["accepted"], 1);
    let receipt =
        json!({"id": "r", "userId": ALICE, "type": "ReceiptCreated", "data": {"storeId": STORE, "deviceId": DEVICE}});
    assert_eq!(
        world.call("POST", "/api/v2/receipts", Some(&alice), Some(receipt.clone())).status,
        402,
        "receipts count too"
    );
    // Another user has a quota of its own.
    assert_eq!(world.call("POST", "/api/v2/receipts", Some(&bob), Some(receipt)).status, 200);
    // Erasing the user frees its quota.
    let erased = world.call("DELETE", &format!("/partner/v1/users/{ALICE}/data"), Some("partner"), None);
    assert_eq!(erased.status, 200);
    // (The partner account of the first registration stays, its login with it: a new login.)
    let alice = world.register(ALICE, "alice-again");
    assert_eq!(put(&world, &alice, STORE, json!([document("d1"), document("d2"), document("d3")])).status, 200);
}

#[test]
fn a_document_larger_than_a_record_is_kept_whole_in_parts_and_expires_whole() {
    let world = Fixture::with(&[("retention_days", "30")]);
    let token = world.register(ALICE, "alice");
    world.clock.advance(100 * 86_400);
    let now_ms = crate::time::millis(crate::clock::Clock::now_unix(&world.clock));
    // 5.3 MB, with quotes and multi-byte characters across the cuts.
    let lines: Vec<Value> = (0..60_000)
        .map(|n| json!({"name": format!("Сидр \"яблочный\" №{n}"), "price": n, "note": "é".repeat(20)}))
        .collect();
    let big = json!({"id": "big-1", "store_id": STORE, "device_id": DEVICE, "type": "SELL", "close_date": now_ms,
                     "user_id": ALICE, "version": "V2", "body": {"positions": lines}});
    let size = big.to_string().len();
    assert!(size > 5_000_000, "{size} bytes: more than a record may hold");
    let small = json!({"id": "small-1", "store_id": STORE, "device_id": DEVICE, "type": "SELL", "close_date": now_ms,
                       "user_id": ALICE, "version": "V2", "body": {}});
    let answer = put(&world, &token, STORE, json!([big.clone(), small]));
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.body_json()["accepted"], 2);
    let parts = world.kv.keys().into_iter().filter(|key| key.contains("/part/big-1/")).count();
    assert!(parts >= 3, "{parts} parts");
    let read = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents/big-1"), Some("partner"), None);
    assert_eq!(read.status, 200);
    assert_eq!(read.body_json()["document"], big, "read back whole, byte for byte the same JSON");
    let listed = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents"), Some("partner"), None);
    let items = listed.body_json()["items"].as_array().cloned().expect("items");
    assert!(items.iter().any(|item| item["document"] == big), "the listing shows it whole");
    assert_eq!(put(&world, &token, STORE, json!([big.clone()])).body_json()["duplicates"], 1, "taken once");
    assert!(crate::audit::problems(&world.kv).is_empty(), "{:?}", crate::audit::problems(&world.kv));
    // Past retention_days the whole of it goes, parts too.
    world.clock.advance(40 * 86_400);
    let later = json!({"id": "later", "store_id": STORE, "device_id": DEVICE, "type": "SELL",
                       "close_date": now_ms + 40 * 86_400_000i64, "user_id": ALICE, "version": "V2", "body": {}});
    assert_eq!(put(&world, &token, STORE, json!([later])).status, 200);
    assert!(world.kv.keys().iter().all(|key| !key.contains("big-1")), "no part of it is left");
    assert!(crate::audit::problems(&world.kv).is_empty(), "{:?}", crate::audit::problems(&world.kv));
}

#[test]
fn cutting_keeps_every_character_and_each_part_fits_a_record() {
    let text = format!("[{}]", "\"é—\\\"x".repeat(700_000));
    let parts = cut(&text);
    assert_eq!(parts.concat(), text);
    for part in &parts {
        assert!(part.len() <= PART_BYTES);
        let record = serde_json::to_vec(&Part { v: 1, text: (*part).to_owned() }).expect("json");
        assert!(record.len() <= 4 * 1024 * 1024, "{} bytes", record.len());
    }
}

#[test]
fn documents_dated_far_ahead_and_documents_kept_apart_expire_too() {
    let world = Fixture::with(&[("retention_days", "30")]);
    let alice = world.register(ALICE, "alice");
    let bob = world.register(BOB, "bob");
    world.clock.advance(100 * 86_400);
    let now_ms = crate::time::millis(crate::clock::Clock::now_unix(&world.clock));
    let day = 86_400_000i64;
    let document = |id: &str, at: i64, user: &str| {
        json!({"id": id, "store_id": STORE, "device_id": DEVICE, "type": "SELL", "close_date": at, "user_id": user,
               "version": "V2", "body": {}})
    };
    // Dated 2999: filed at its arrival, with a data issue.
    let y2999 = 32_503_680_000_000i64;
    assert_eq!(put(&world, &alice, STORE, json!([document("future", y2999, ALICE)])).status, 200);
    assert!(problems(&world).iter().any(|p| p.contains("more than a day after its arrival")), "{:?}", problems(&world));
    let listed = world.call("GET", &format!("/partner/v1/stores/{STORE}/documents"), Some("partner"), None);
    assert_eq!(listed.body_json()["items"][0]["closeDate"], y2999, "its own date is shown as sent");
    // Bob's document into Alice's store: kept apart.
    assert_eq!(put(&world, &bob, STORE, json!([document("bobs", now_ms, BOB)])).status, 200);
    assert!(world.kv.keys().iter().any(|key| key.contains("/foreign-docs/") && key.ends_with("/bobs")));
    // Past retention_days both go, with the next writes of their store and of their deliverer.
    world.clock.advance(31 * 86_400);
    let later = now_ms + 31 * day;
    assert_eq!(put(&world, &alice, STORE, json!([document("alice-later", later, ALICE)])).status, 200);
    assert_eq!(put(&world, &bob, STORE, json!([document("bob-later", later, BOB)])).status, 200);
    let keys = world.kv.keys();
    assert!(keys.iter().all(|key| !key.contains("future")), "the far-dated document expired");
    assert!(keys.iter().all(|key| !key.ends_with("/bobs")), "the kept-apart document expired: {keys:?}");
    assert!(keys.iter().any(|key| key.ends_with("/bob-later")), "the newer one stays");
    assert!(crate::audit::problems(&world.kv).is_empty(), "{:?}", crate::audit::problems(&world.kv));
}

#[test]
fn every_record_a_users_deliveries_create_counts_against_its_quota() {
    let world = Fixture::with(&[("billing_enforcement", "off"), ("user_quota_records", "10")]);
    let token = world.register(ALICE, "alice");
    let stores = |range: std::ops::Range<u32>| {
        Value::from(
            range.map(|n| json!({"uuid": format!("20170228-f4f1-401b-80fa-{n:012}"), "name": "S"})).collect::<Vec<_>>(),
        )
    };
    let call = |method: &str, path: &str, body: Value| world.call(method, path, Some(&token), Some(body));
    let quota_code = |response: &Response| (response.status, response.body_json()["errors"][0]["code"].as_u64());
    assert_eq!(call("PUT", "/api/v1/inventories/stores", stores(0..7)).status, 200);
    // Sending the same stores again adds nothing.
    assert_eq!(call("PUT", "/api/v1/inventories/stores", stores(0..7)).status, 200);
    let over = call("PUT", "/api/v1/inventories/stores", stores(7..11));
    assert_eq!(quota_code(&over), (402, Some(1004)), "4 more stores would make 11");
    let listed = world.call("GET", &format!("/partner/v1/users/{ALICE}/stores"), Some("partner"), None).body_json();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(7), "nothing of a refused delivery is stored");
    let store = "20170228-f4f1-401b-80fa-000000000000";
    let products = |range: std::ops::Range<u32>| {
        Value::from(
            range
                .map(|n| json!({"uuid": format!("6c3bfd7a-4e1b-4c55-9d3e-{n:012}"), "group": true, "name": "G"}))
                .collect::<Vec<_>>(),
        )
    };
    let path = format!("/api/v1/inventories/stores/{store}/products");
    assert_eq!(quota_code(&call("POST", &path, products(0..4))), (402, Some(1004)), "4 products would make 11");
    assert!(world.kv.keys().iter().all(|key| !key.contains("/p/6c3bfd7a")), "none of them written");
    assert_eq!(call("POST", &path, products(0..2)).status, 200, "2 make 9");
    let event = |seq: u64| {
        json!({"subscriptionId": "a99fbf70-6307-4acc-b61c-741ee9eef6c1", "productId": "p",
        "userId": ALICE, "sequenceNumber": seq, "timestamp": 1, "type": "SubscriptionCreated"})
    };
    assert_eq!(call("POST", "/api/v1/subscription/event", event(1)).status, 200, "the 10th record");
    assert_eq!(quota_code(&call("POST", "/api/v1/subscription/event", event(2))), (402, Some(1004)));
    assert_eq!(
        quota_code(&call("POST", "/api/v1/user/event", json!({"type": "X", "userId": ALICE, "blob": "x"}))),
        (402, Some(1004))
    );
    let install = json!({"id": "i-1", "timestamp": 1, "type": "ApplicationInstalled", "data": {"userId": ALICE}});
    assert_eq!(quota_code(&call("POST", "/api/v2/installation/event", install.clone())), (402, Some(1004)));
    // What the Evotor cloud sends is not the user's delivery: it is taken.
    assert_eq!(world.server("/api/v1/subscription/event", event(2)).status, 200);
    assert_eq!(world.server("/api/v2/installation/event", install).status, 200);
}

#[test]
fn an_item_too_large_for_a_record_is_refused_with_413_and_noted_never_a_500() {
    let world = Fixture::with(&[("billing_enforcement", "off")]);
    let token = world.register(ALICE, "alice");
    let big = "x".repeat(crate::input::MAX_ITEM_BYTES);
    let calls: [(&str, String, Value); 4] = [
        ("PUT", "/api/v1/inventories/stores".into(), json!([{"uuid": STORE, "name": "S", "address": big}])),
        (
            "POST",
            format!("/api/v1/inventories/stores/{STORE}/products"),
            json!([{"uuid": DEVICE, "group": true, "name": big}]),
        ),
        ("POST", "/api/v2/receipts".into(), receipt_event("huge", ALICE, &big)),
        ("POST", "/api/v1/user/event".into(), json!({"type": "X", "userId": ALICE, "blob": big})),
    ];
    for (method, path, body) in calls {
        let before = world.kv.keys().into_iter().filter(|key| !key.starts_with("issues/")).count();
        let answer = world.call(method, &path, Some(&token), Some(body));
        assert_eq!(answer.status, 413, "{method} {path}: {}", String::from_utf8_lossy(&answer.body));
        let after = world.kv.keys().into_iter().filter(|key| !key.starts_with("issues/")).count();
        assert_eq!(before, after, "{path}: nothing stored");
    }
    let noted = problems(&world).iter().filter(|p| p.contains("refused with 413")).count();
    assert_eq!(noted, 4, "{:?}", problems(&world));
    // Just under the limit is taken.
    let fits = "x".repeat(crate::input::MAX_ITEM_BYTES - 100);
    let answer =
        world.call("PUT", "/api/v1/inventories/stores", Some(&token), Some(json!([{"uuid": STORE, "address": fits}])));
    assert_eq!(answer.status, 200);
}
