use super::*;
use crate::testing::Fixture;

const ALICE: &str = "01-000000000000001";
const BOB: &str = "02-000000000000002";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const BOBS_STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffc";
const NEW_STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451f00";

/// A call of the extension API as the gateway delivers it from plugin `loyalty`.
fn ext(world: &Fixture, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = Request::new("GET", path).header(CALLER_HEADER, "loyalty");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    crate::handle(&world.ctx(), &request)
}

/// Alice with her store (and a product with barcode 777 in it), Bob with his.
fn shops() -> (Fixture, String, String) {
    let world = Fixture::new();
    let alice = world.register(ALICE, "alice");
    let bob = world.register(BOB, "bob");
    world.call("PUT", "/api/v1/inventories/stores", Some(&alice), Some(json!([{"uuid": STORE, "name": "A"}])));
    world.call("PUT", "/api/v1/inventories/stores", Some(&bob), Some(json!([{"uuid": BOBS_STORE, "name": "B"}])));
    let product = json!({"uuid": "20170228-0000-0000-0000-000000000001", "code": "1", "name": "Tea",
                         "price": 10, "barCodes": ["777"], "group": false, "type": "NORMAL", "measureName": "шт"});
    let path = format!("/api/v1/inventories/stores/{STORE}/products");
    assert_eq!(world.call("POST", &path, Some(&alice), Some(json!([product]))).status, 200);
    (world, alice, bob)
}

#[test]
fn the_extension_api_is_never_reachable_from_outside_the_gateway() {
    let (world, alice, _) = shops();
    for (path, bearer) in [
        ("/extension/v1/session", alice.as_str()),
        ("/extension/v1/feed", "partner"),
        ("/extension/v1/partner", "partner"),
        (&format!("/extension/v1/users/{ALICE}/stores") as &str, "partner"),
    ] {
        let outside = world.call("GET", path, Some(bearer), None);
        assert_eq!(outside.status, 404, "{path}");
        assert_eq!(outside.body, ApiError::not_found().into_response().body, "as for a path that does not exist");
    }
    let caller_empty = Request::new("GET", "/extension/v1/feed").header(CALLER_HEADER, "");
    assert_eq!(crate::handle(&world.ctx(), &caller_empty).status, 404);
    // The partner API is not opened to a caller: only the extension paths are.
    let partner = Request::new("GET", "/partner/v1/feed").header(CALLER_HEADER, "loyalty");
    assert_eq!(crate::handle(&world.ctx(), &partner).status, 401);
}

#[test]
fn a_terminal_apps_call_resolves_to_its_user_store_and_device_and_nothing_else() {
    let (world, alice, bob) = shops();
    let bearer = format!("Bearer {alice}");
    let session = |headers: &[(&str, &str)]| ext(&world, "/extension/v1/session", headers);

    let ok = session(&[("authorization", &bearer), ("x-evotor-store-uuid", &STORE.to_uppercase())]);
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.body_json(), json!({"userId": ALICE, "store": {"uuid": STORE, "known": true}, "device": null}));
    let unknown = session(&[("authorization", &bearer), ("x-evotor-store-uuid", NEW_STORE)]);
    assert_eq!(unknown.body_json()["store"], json!({"uuid": NEW_STORE, "known": false}));

    let foreign = session(&[("authorization", &bearer), ("x-evotor-store-uuid", BOBS_STORE)]);
    assert_eq!(foreign.status, 403);
    assert_eq!(foreign.body_json()["errors"][0]["subject"], "X-Evotor-Store-Uuid");
    let other_user = session(&[("authorization", &bearer), ("x-evotor-user-id", BOB)]);
    assert_eq!(other_user.status, 403, "a user id header naming someone else is refused, not trusted");
    assert_eq!(session(&[("authorization", &bearer), ("x-evotor-user-id", ALICE)]).status, 200);
    assert_eq!(session(&[("authorization", &bearer), ("x-evotor-store-uuid", "not a uuid")]).status, 400);

    // The token resolves exactly as on the protocol's user endpoints.
    for token in [alice.as_str(), bob.as_str(), "unknown", ""] {
        let answer = session(&[("authorization", &format!("Bearer {token}"))]);
        match world.whoami(token) {
            Ok(user) => assert_eq!(answer.body_json()["userId"], user),
            Err(code) => assert_eq!(answer.body_json()["errors"][0]["code"], code, "{token:?}"),
        }
    }
    assert_eq!(session(&[]).body_json()["errors"][0]["code"], 1002);
    let expired = Fixture::with(&[("user_token_ttl_secs", "60")]);
    let token = expired.register(ALICE, "alice");
    expired.clock.advance(61);
    let answer = ext(&expired, "/extension/v1/session", &[("authorization", &format!("Bearer {token}"))]);
    assert_eq!((answer.status, answer.body_json()["errors"][0]["code"].as_u64()), (401, Some(1003)));
}

#[test]
fn reads_of_a_store_need_the_store_to_be_that_users() {
    let (world, _, _) = shops();
    let products = ext(&world, &format!("/extension/v1/users/{ALICE}/stores/{STORE}/products"), &[]);
    assert_eq!(products.status, 200);
    assert_eq!(products.body_json()["items"][0]["product"]["name"], "Tea");
    let by_barcode = ext(&world, &format!("/extension/v1/users/{ALICE}/stores/{STORE}/products?barcode=777"), &[]);
    assert_eq!(by_barcode.body_json()["items"][0]["product"]["barCodes"], json!(["777"]));
    let none = ext(&world, &format!("/extension/v1/users/{ALICE}/stores/{STORE}/products?barcode=77"), &[]);
    assert_eq!(none.body_json()["items"], json!([]), "whole barcodes only");

    for path in ["products", "documents", "receipts", "documents/x"] {
        let crossed = ext(&world, &format!("/extension/v1/users/{BOB}/stores/{STORE}/{path}"), &[]);
        assert_eq!(crossed.status, 404, "{path}: Alice's store read as Bob's");
    }
    assert_eq!(ext(&world, &format!("/extension/v1/users/{ALICE}/stores/{STORE}/documents"), &[]).status, 200);
    let stores = ext(&world, &format!("/extension/v1/users/{ALICE}/stores"), &[]).body_json();
    assert_eq!(stores["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(stores["items"][0]["uuid"], STORE);
    let user = ext(&world, &format!("/extension/v1/users/{ALICE}"), &[]).body_json();
    assert_eq!(user["userId"], ALICE);
    assert_eq!(ext(&world, &format!("/extension/v1/users/{ALICE}/entitlement"), &[]).status, 200);
}

#[test]
fn the_feed_is_the_partner_apis_with_the_same_cursors_and_a_user_filter() {
    let (world, _, _) = shops();
    let partner = world.call("GET", "/partner/v1/feed?limit=1000", Some("partner"), None).body_json();
    let all = ext(&world, "/extension/v1/feed?limit=1000", &[]).body_json();
    assert_eq!(all, partner, "same entries, order and cursors");
    let alices: Vec<Value> =
        partner["items"].as_array().expect("items").iter().filter(|item| item["userId"] == ALICE).cloned().collect();
    assert!(alices.len() >= 2 && alices.len() < partner["items"].as_array().map_or(0, Vec::len));
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = ext(&world, &format!("/extension/v1/feed?limit=1&userId={ALICE}{after}"), &[]).body_json();
        let items = page["items"].as_array().expect("items").clone();
        if items.is_empty() {
            break;
        }
        seen.extend(items);
        after = format!("&after={}", page["next"].as_str().expect("next"));
    }
    assert_eq!(seen, alices, "one user's entries, one by one, each once");
    assert_eq!(ext(&world, "/extension/v1/feed?userId=nobody", &[]).status, 400);
}

#[test]
fn an_extension_checks_the_partner_token_without_holding_it() {
    let world = Fixture::new();
    let check = |bearer: &str| ext(&world, "/extension/v1/partner", &[("authorization", bearer)]).status;
    assert_eq!(check("Bearer partner"), 204);
    assert_eq!(check("Bearer srv"), 401);
    assert_eq!(check(""), 401);
    let mut config = world.config.clone();
    config.0.remove(crate::endpoints::request::PARTNER_API_TOKEN);
    let ctx = Ctx { kv: &world.kv, config: &config, clock: &world.clock, http: &world.http };
    let request = Request::new("GET", "/extension/v1/partner")
        .header(CALLER_HEADER, "loyalty")
        .header("authorization", "Bearer partner");
    assert_eq!(crate::handle(&ctx, &request).status, 404, "no partner API, nothing to check against");
}

#[test]
fn the_sdks_client_reads_every_answer_it_asks_for() {
    use evogate_evotor::{Document, Entity, FeedEntry, Page, Product, Session};
    let (world, alice, _) = shops();
    let docs = json!([{"uuid": "d-1", "type": "SELL", "closeDate": "2026-11-27T09:41:12.000+0000",
                       "closeSum": "3548", "version": "V1", "deviceUuid": null}]);
    let put = world.call("PUT", &format!("/api/v1/inventories/stores/{STORE}/documents"), Some(&alice), Some(docs));
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    let read = |path: &str, headers: &[(&str, &str)]| {
        let answer = ext(&world, path, headers);
        assert_eq!(answer.status, 200, "{path}: {}", String::from_utf8_lossy(&answer.body));
        answer.body
    };
    let bearer = format!("Bearer {alice}");
    let session: Session = serde_json::from_slice(&read(
        "/extension/v1/session",
        &[("authorization", &bearer), ("x-evotor-store-uuid", STORE)],
    ))
    .expect("session");
    assert_eq!(session.user_id, ALICE);
    let stores: Page<Entity> =
        serde_json::from_slice(&read(&format!("/extension/v1/users/{ALICE}/stores"), &[])).expect("stores");
    assert_eq!(stores.items[0].uuid, STORE);
    let products: Page<Product> =
        serde_json::from_slice(&read(&format!("/extension/v1/users/{ALICE}/stores/{STORE}/products"), &[]))
            .expect("products");
    assert_eq!(products.items.len(), 1);
    let feed: Page<FeedEntry> = serde_json::from_slice(&read("/extension/v1/feed", &[])).expect("feed");
    let received = feed.items.iter().find(|entry| entry.kind == "document.received").expect("announced");
    assert_eq!((received.data["type"].as_str(), received.data["id"].as_str()), (Some("SELL"), Some("d-1")));
    let document: Document =
        serde_json::from_slice(&read(&format!("/extension/v1/users/{ALICE}/stores/{STORE}/documents/d-1"), &[]))
            .expect("document");
    assert_eq!(document.total_kopecks(), Some(354_800));
    let documents: Page<Document> =
        serde_json::from_slice(&read(&format!("/extension/v1/users/{ALICE}/stores/{STORE}/documents"), &[]))
            .expect("documents");
    assert_eq!(documents.items.len(), 1);
}
