use super::*;
use crate::kv::Kv as _;
use crate::testing::Fixture;
use serde_json::Value;

const ALICE: &str = "01-000000000000001";
const BOB: &str = "02-000000000000002";
const ALICES_STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const BOBS_STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffc";

/// A world where Alice and Bob each have stores, a terminal, an employee,
/// products, documents, receipts, a subscription and data issues.
fn populated() -> (Fixture, String) {
    let world = Fixture::with(&[("events_webhook_allow_unsigned", "true")]);
    let mut bobs_token = String::new();
    for (user, login, store, n) in [(ALICE, "alice", ALICES_STORE, 1), (BOB, "bob", BOBS_STORE, 2)] {
        let token = world.register(user, login);
        let call = |method: &str, path: &str, body: Value| {
            let answer = world.call(method, path, Some(&token), Some(body));
            assert_eq!(answer.status, 200, "{path}: {}", String::from_utf8_lossy(&answer.body));
        };
        let device = format!("5a188de4-49b8-4cb4-800e-eb6b5202437{n}");
        call("PUT", "/api/v1/inventories/stores", json!([{"uuid": store, "name": ""}]));
        call("PUT", "/api/v1/inventories/devices", json!([{"uuid": device, "storeUuid": store}]));
        call(
            "PUT",
            "/api/v1/inventories/employees",
            json!([{"uuid": format!("e-{n}"), "name": "E", "role": "ADMIN", "stores": []}]),
        );
        let product = json!([{"uuid": format!("6c3bfd7a-4e1b-4c55-9d3e-0d7f0c1a000{n}"), "group": true, "name": "G"}]);
        call("POST", &format!("/api/v1/inventories/stores/{store}/products"), product);
        let document = json!([{"id": format!("doc-{n}"), "store_id": store, "device_id": device, "type": "SELL",
            "close_date": 1_700_000_000_000i64, "user_id": user, "version": "V2", "body": {}}]);
        call("PUT", &format!("/api/v1/inventories/stores/{store}/documents"), document);
        let receipt = json!({"id": format!("rcpt-{n}"), "timestamp": 1, "userId": user, "type": "ReceiptCreated",
            "data": {"id": "r", "deviceId": device, "storeId": store, "dateTime": 1_700_000_000_000i64}});
        call("POST", "/api/v2/receipts", receipt);
        assert_eq!(world.server("/api/v1/user/token", json!({"userId": user, "token": "cloud"})).status, 200);
        let subscription = json!({"subscriptionId": format!("a99fbf70-6307-4acc-b61c-741ee9eef6c{n}"), "productId": "p",
            "userId": user, "sequenceNumber": 1, "timestamp": 1, "type": "SubscriptionCreated"});
        assert_eq!(world.server("/api/v1/subscription/event", subscription).status, 200);
        // Events with personal data, a product event, a legacy billing event.
        let order = json!({"id": format!("order-{n}"), "type": "Order", "action": "created",
            "payload": {"user_id": user, "customer": {"name": "Ivan", "phone": "+7 900 000-00-0{n}"}}});
        assert_eq!(world.call("POST", "/events", None, Some(order)).status, 200);
        let product = json!({"id": format!("pe-{n}"), "type": "ProductEvent", "action": "created",
            "payload": {"id": format!("7c3bfd7a-4e1b-4c55-9d3e-0d7f0c1a000{n}"), "store_id": store, "user_id": user,
                        "name": "Tea", "price": 1, "type": "NORMAL"}});
        assert_eq!(world.call("POST", "/events", None, Some(product)).status, 200);
        let legacy = json!({"type": "ApplicationInstalled", "userId": user, "customer": "Ivan"});
        assert_eq!(world.server("/api/v1/user/event", legacy).status, 200);
        // An installation event as earlier formats kept it.
        let install = json!({"v": 1, "receivedAt": 1, "event": {"id": format!("i-{n}"), "data": {"userId": user}}});
        world
            .kv
            .commit(vec![], vec![crate::kv::Write::Set(format!("installs/{n:064}"), install.to_string().into_bytes())])
            .expect("an earlier format's record");
        if user == BOB {
            bobs_token = token;
        }
    }
    // Alice's event for Bob's subscription: kept beside it.
    let stray = json!({"subscriptionId": "a99fbf70-6307-4acc-b61c-741ee9eef6c2", "productId": "p", "userId": ALICE,
        "sequenceNumber": 2, "timestamp": 1, "type": "SubscriptionRenewed"});
    assert_eq!(world.server("/api/v1/subscription/event", stray).status, 200);
    (world, bobs_token)
}

/// Every key and value that names `user` or one of its stores.
fn traces(world: &Fixture, user: &str, store: &str) -> Vec<String> {
    world
        .kv
        .keys()
        .into_iter()
        .filter(|key| !key.starts_with("feed/"))
        .filter(|key| {
            let value =
                world.kv.get(key).ok().flatten().map(|entry| String::from_utf8_lossy(&entry.value).into_owned());
            key.contains(user) || key.contains(store) || value.is_some_and(|value| value.contains(user))
        })
        .collect()
}

/// The [`traces`] of `user` with the version of each, but those that also
/// name `erased` (another user's data issue about it goes with it).
fn versions(world: &Fixture, user: &str, store: &str, erased: &str) -> Vec<(String, u64)> {
    let theirs = traces(world, erased, "\0");
    traces(world, user, store)
        .into_iter()
        .filter(|key| !theirs.contains(key))
        .map(|key| {
            let version = world.kv.get(&key).expect("get").expect("entry").version;
            (key, version)
        })
        .collect()
}

#[test]
fn erasing_a_user_leaves_nothing_of_it_and_everything_of_the_others() {
    let (world, bobs_token) = populated();
    assert!(!traces(&world, ALICE, ALICES_STORE).is_empty());
    let bobs_before = versions(&world, BOB, BOBS_STORE, ALICE);
    let answer = world.call("DELETE", &format!("/partner/v1/users/{ALICE}/data"), Some("partner"), None);
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.body_json()["complete"], true);
    assert!(answer.body_json()["deleted"].as_u64().unwrap_or_default() > 10);
    assert_eq!(traces(&world, ALICE, ALICES_STORE), Vec::<String>::new(), "nothing of Alice is left");
    let bobs_after = versions(&world, BOB, BOBS_STORE, ALICE);
    assert_eq!(bobs_before, bobs_after, "Bob's data untouched");
    assert_eq!(world.whoami(&bobs_token), Ok(BOB.to_owned()));
    let feed = world.call("GET", "/partner/v1/feed?limit=1000", Some("partner"), None).body_json();
    let purged: Vec<&Value> =
        feed["items"].as_array().expect("items").iter().filter(|e| e["kind"] == "user.purged").collect();
    assert_eq!(purged.len(), 1);
    assert_eq!(purged[0]["userId"], ALICE);
    let again = world.call("DELETE", &format!("/partner/v1/users/{ALICE}/data"), Some("partner"), None);
    assert_eq!((again.status, again.body_json()["deleted"].as_u64()), (200, Some(0)), "idempotent");
    let profile = world.call("GET", &format!("/partner/v1/users/{ALICE}"), Some("partner"), None);
    assert_eq!(profile.status, 404, "the user itself is gone");
}

#[test]
fn an_erasure_larger_than_one_call_goes_on_where_it_stopped() {
    let (world, _) = populated();
    let mut calls = 0;
    loop {
        let progress = purge_at_most(&world.ctx(), ALICE, 3).expect("purge");
        calls += 1;
        assert!(progress.deleted <= 3 + CHUNK, "{progress:?}");
        if progress.complete {
            break;
        }
        assert!(calls < 200, "it makes progress");
    }
    assert!(calls > 3, "{calls} calls");
    assert_eq!(traces(&world, ALICE, ALICES_STORE), Vec::<String>::new());
    assert!(!traces(&world, BOB, BOBS_STORE).is_empty());
}

#[test]
fn only_the_partner_may_erase_and_only_a_user_id() {
    let (world, bobs_token) = populated();
    let path = format!("/partner/v1/users/{ALICE}/data");
    assert_eq!(world.call("DELETE", &path, Some(&bobs_token), None).status, 401);
    assert_eq!(world.call("DELETE", "/partner/v1/users/nobody/data", Some("partner"), None).status, 400);
    assert!(!traces(&world, ALICE, ALICES_STORE).is_empty());
}

#[test]
fn every_key_layout_has_an_erasure_step() {
    let docs = include_str!("../../storage/mod.rs");
    let table = docs.split("//! | key | value |").nth(1).expect("the table of keys");
    let documented: std::collections::BTreeSet<&str> = table
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with("//! |"))
        .filter_map(|line| line.strip_prefix("//! | `"))
        .filter_map(|row| row.split_once("` |").map(|(key, _)| key))
        .collect();
    assert!(documented.len() > 30, "{documented:?}");
    let erased: std::collections::BTreeSet<&str> = LAYOUTS.iter().map(|(key, _)| *key).collect();
    let missing: Vec<&&str> = documented.difference(&erased).collect();
    assert!(missing.is_empty(), "layouts without an erasure step: {missing:?}");
    let gone: Vec<&&str> = erased.difference(&documented).collect();
    assert!(gone.is_empty(), "erasure steps of layouts the store no longer has: {gone:?}");
    // Each step names where it acts: the shared key spaces are scanned, the stores' heads deleted.
    for (key, erasure) in LAYOUTS {
        match erasure {
            Erasure::UnderUser => assert!(key.starts_with("user/{userId}/"), "{key}"),
            Erasure::OwnedStore => {
                assert!(STORE_HEADS.iter().any(|head| key.starts_with(&format!("{head}/{{store}}/"))))
            }
            Erasure::Scanned => {
                let scanned = ["receipts/", storage::ISSUES_PREFIX].into_iter().chain(SCANS.iter().map(|s| s.prefix));
                assert!(scanned.into_iter().any(|prefix| key.starts_with(prefix)), "{key} is scanned by no step");
            }
            _ => {}
        }
    }
}

#[test]
fn a_delivery_authorized_before_the_erasure_but_committed_after_it_stores_nothing() {
    let (world, _) = populated();
    let settings = crate::config::Settings::read(&crate::config::MapConfig::default()).expect("settings");
    let progress = purge_at_most(&world.ctx(), ALICE, 1).expect("the erasure starts");
    assert!(!progress.complete);
    // The request was let in as Alice's before the erasure's first commit; it commits now.
    let document = json!([{"id": "raced", "store_id": ALICES_STORE, "device_id": "5a188de4-49b8-4cb4-800e-eb6b52024371",
        "type": "SELL", "close_date": 1_700_000_000_000i64, "user_id": ALICE, "version": "V2", "body": {}}]);
    let refused = crate::domain::documents::ingest_documents(
        &world.ctx(),
        &settings,
        ALICE,
        document.to_string().as_bytes(),
        Some(ALICES_STORE),
        crate::domain::inventory::PastLicence::Refuse,
    )
    .expect_err("refused while the erasure runs");
    assert_eq!((refused.status, refused.reason.as_str()), (409, "the user's data is being erased"));
    while !purge(&world.ctx(), ALICE).expect("purge").complete {}
    assert_eq!(traces(&world, ALICE, ALICES_STORE), Vec::<String>::new(), "nothing of Alice is left");
    assert!(world.kv.get(&storage::erasing_key(ALICE)).expect("read").is_none(), "the mark goes at the end");
}

#[test]
fn a_users_deliveries_stop_when_its_erasure_starts() {
    let (world, _) = populated();
    let alices_token = world.register(ALICE, "alice");
    assert_eq!(world.whoami(&alices_token), Ok(ALICE.to_owned()));
    let document = |n: usize| {
        json!([{"id": format!("late-{n}"), "store_id": ALICES_STORE, "device_id": "5a188de4-49b8-4cb4-800e-eb6b52024371",
            "type": "SELL", "close_date": 1_700_000_000_000i64, "user_id": ALICE, "version": "V2", "body": {}}])
    };
    let path = format!("/api/v1/inventories/stores/{ALICES_STORE}/documents");
    let mut calls = 0;
    loop {
        let progress = purge_at_most(&world.ctx(), ALICE, 5).expect("purge");
        calls += 1;
        // A delivery between two steps of the erasure is refused: the tokens went first.
        let late = world.call("PUT", &path, Some(&alices_token), Some(document(calls)));
        assert_eq!(late.status, 401, "call {calls}: {}", String::from_utf8_lossy(&late.body));
        if progress.complete {
            break;
        }
        assert!(calls < 300, "it makes progress");
    }
    assert_eq!(traces(&world, ALICE, ALICES_STORE), Vec::<String>::new(), "nothing of Alice is left");
}
