//! Evotor's signed event webhooks through the real gateway: a delivery as
//! Evotor's Hookshot sends it (signed, `User-Agent: Evotor-Hookshot`, no
//! `Authorization`), JSON or form-encoded; forged ones refused and never
//! stored; a re-delivery taken once; the result read back as the partner
//! does.

use evogate_e2e::{Gateway, evotor_table, request};
use hmac::Mac as _;
use serde_json::{Value, json};

const SECRET: &str = "console-secret";
const USER: &str = "02-200000000000108";
const STORE: &str = "20180417-2396-4075-808C-50046017B78F";

fn gateway() -> Gateway {
    Gateway::start(&evotor_table("/evotor", "", &format!("events_webhook_secret = \"{SECRET}\"")))
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

fn deliver(gateway: &Gateway, body: &[u8], signature: Option<&str>, content_type: &str) -> evogate_e2e::Reply {
    let mut headers = vec![
        ("user-agent", "Evotor-Hookshot"),
        ("x-evotor-delivery", "ed9eb563-f27e-8ed4-4d82-b801f57033c4"),
        ("content-type", content_type),
    ];
    if let Some(signature) = signature {
        headers.push(("x-hub-signature", signature));
    }
    request("POST", &gateway.url("/evotor/events"), &headers, Some(body))
}

fn partner(gateway: &Gateway, path: &str) -> Value {
    let reply = request("GET", &gateway.url(path), &[("authorization", "Bearer partner-secret")], None);
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply.json()
}

#[test]
fn a_signed_delivery_is_stored_once_and_a_forged_one_never() {
    let gateway = gateway();
    let store_event = json!({"id": "ded7bf3a-3c51-4f0e-9872-05f75aab041d", "timestamp": 1534431863189i64,
        "type": "StoreEvent", "action": "updated", "payload": {"address": "Новый адрес", "id": STORE,
        "name": "Новое имя", "user_id": USER, "created_at": "2018-04-17T10:11:49.670+0000",
        "updated_at": "2018-08-16T15:04:22.548+0000"}});
    let body = serde_json::to_vec_pretty(&store_event).expect("json");

    let forged = deliver(&gateway, &body, Some(&sign("guess", &body)), "application/vnd.evotor.v2+json;charset=UTF-8");
    assert_eq!((forged.status, forged.error_code()), (401, Some(1001)), "{}", forged.text());
    let unsigned = deliver(&gateway, &body, None, "application/vnd.evotor.v2+json;charset=UTF-8");
    assert_eq!(unsigned.status, 401);
    assert!(gateway.wait_for_log("refused delivery ed9eb563-f27e-8ed4-4d82-b801f57033c4"), "{}", gateway.log());
    assert_eq!(partner(&gateway, "/evotor/partner/v1/events")["items"], json!([]), "nothing stored");

    let signature = sign(SECRET, &body);
    let taken = deliver(&gateway, &body, Some(&signature), "application/vnd.evotor.v2+json;charset=UTF-8");
    assert_eq!(taken.status, 200, "{}", taken.text());
    assert_eq!(taken.json(), json!({"accepted": 1, "duplicates": 0}));
    let again = deliver(&gateway, &body, Some(&signature), "application/vnd.evotor.v2+json;charset=UTF-8");
    assert_eq!(again.json(), json!({"accepted": 0, "duplicates": 1}));

    // The console's form encoding: the JSON in the `payload` field, the signature over the form.
    let order = json!({"id": "o-1", "timestamp": 1534431863190i64, "type": "Order", "action": "created",
        "payload": {"user_id": USER, "total": 100}});
    let form = form_urlencoded::Serializer::new(String::new()).append_pair("payload", &order.to_string()).finish();
    let form_taken =
        deliver(&gateway, form.as_bytes(), Some(&sign(SECRET, form.as_bytes())), "application/x-www-form-urlencoded");
    assert_eq!(form_taken.status, 200, "{}", form_taken.text());

    let stores = partner(&gateway, &format!("/evotor/partner/v1/users/{USER}/stores"));
    assert_eq!(stores["items"][0]["uuid"], STORE, "the id as Evotor sent it");
    assert_eq!(stores["items"][0]["data"]["name"], "Новое имя");
    let events = partner(&gateway, "/evotor/partner/v1/events?type=OrderEvent");
    assert_eq!(events["items"][0]["event"]["payload"]["total"], 100);
    assert_eq!(events["items"][0]["outcome"], "kept");
    let issues = partner(&gateway, "/evotor/partner/v1/data-issues");
    // One record per reason (missing, not matching), each counting the minutes with refusals.
    let refusals: Vec<u64> = issues["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["entity"] == "events-webhook")
        .filter_map(|i| i["count"].as_u64())
        .collect();
    assert_eq!(refusals, [1, 1], "{issues}");
}

#[test]
fn every_example_of_evotors_pages_is_taken_in_both_spellings_and_both_encodings() {
    let gateway = gateway();
    let examples: Vec<Value> =
        serde_json::from_str(include_str!("../../../plugin/testdata/evotor-api/cloud-2019/events.json")).expect("json");
    let mut taken = 0;
    for example in &examples {
        for (spelling, form) in [(false, false), (true, true)] {
            let mut event = example.clone();
            if spelling {
                // The 2025 spelling: `StoreEvent` → `Store`; the same event, so a duplicate.
                let kind = event["type"].as_str().unwrap_or_default().trim_end_matches("Event").to_owned();
                event["type"] = json!(kind);
            }
            let json = event.to_string();
            let (body, content_type) = if form {
                let body = form_urlencoded::Serializer::new(String::new()).append_pair("payload", &json).finish();
                (body.into_bytes(), "application/x-www-form-urlencoded")
            } else {
                (json.into_bytes(), "application/vnd.evotor.v2+json;charset=UTF-8")
            };
            let reply = deliver(&gateway, &body, Some(&sign(SECRET, &body)), content_type);
            assert_eq!(reply.status, 200, "{event}: {}", reply.text());
            taken += reply.json()["accepted"].as_u64().unwrap_or_default();
        }
    }
    assert_eq!(taken as usize, examples.len(), "each once, whatever its spelling");
    let events = partner(&gateway, "/evotor/partner/v1/events?limit=100");
    assert_eq!(events["items"].as_array().map(Vec::len), Some(examples.len()));
    let documents = partner(&gateway, &format!("/evotor/partner/v1/stores/{STORE}/documents"));
    assert_eq!(documents["items"][0]["type"], "OPEN_SESSION");
    let products = partner(&gateway, &format!("/evotor/partner/v1/stores/{STORE}/products"));
    assert_eq!(products["items"][0]["source"], "evotor");
    let devices = partner(&gateway, &format!("/evotor/partner/v1/users/{USER}/devices?removed=true"));
    let removed = devices["items"].as_array().expect("items").iter().filter(|d| !d["removedAt"].is_null()).count();
    assert_eq!(removed, 1, "{devices}");
}

fn product_event(id: &str, user: &str, store: &str, product: &str, name: &str, price: f64, updated_at: &str) -> Value {
    json!({"id": id, "timestamp": 1534431849835i64, "type": "ProductEvent", "action": "updated",
        "payload": {"id": product, "store_id": store, "user_id": user, "name": name, "price": price,
                    "type": "NORMAL", "updated_at": updated_at}})
}

fn prices(gateway: &Gateway, store: &str) -> std::collections::BTreeMap<String, f64> {
    let listed = partner(gateway, &format!("/evotor/partner/v1/stores/{store}/products?limit=1000"));
    listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| Some((item["product"]["uuid"].as_str()?.to_owned(), item["product"]["price"].as_f64()?)))
        .collect()
}

#[test]
fn a_signed_json_delivery_replayed_with_a_form_content_type_is_no_forgery() {
    let gateway = gateway();
    let (victim, victim_store, product) =
        ("02-200000000000109", "20190417-2396-4075-808c-50046017b7aa", "4be33817-bfb2-4e9f-90d0-3286c8c39f7e");
    let json_type = "application/vnd.evotor.v2+json;charset=UTF-8";
    let genuine = product_event("v1", victim, victim_store, product, "Tea", 99.9, "2026-11-01T10:00:00.000+0000");
    let body = serde_json::to_vec(&genuine).expect("json");
    assert_eq!(deliver(&gateway, &body, Some(&sign(SECRET, &body)), json_type).status, 200);

    // A merchant's product name smuggles a form field into a genuine signed delivery.
    let forged = product_event("forged", victim, victim_store, product, "x", 0.01, "2099-01-01T00:00:00.000+0000");
    let field = form_urlencoded::Serializer::new(String::new()).append_pair("payload", &forged.to_string()).finish();
    let carrier = product_event("c1", USER, STORE, product, &format!("&{field}&"), 5.0, "2026-11-01T10:00:00.000+0000");
    let body = serde_json::to_vec(&carrier).expect("json");
    let signature = sign(SECRET, &body);
    assert_eq!(deliver(&gateway, &body, Some(&signature), json_type).status, 200);
    let replayed = deliver(&gateway, &body, Some(&signature), "application/x-www-form-urlencoded");
    assert_eq!(replayed.status, 200, "{}", replayed.text());
    assert_eq!(replayed.json(), json!({"accepted": 0, "duplicates": 1}), "the same JSON, taken before");
    assert_eq!(prices(&gateway, victim_store).get(product), Some(&99.9), "the other user's price is untouched");
    let ids: Vec<Value> = partner(&gateway, "/evotor/partner/v1/events")["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|event| event["id"].clone())
        .collect();
    assert_eq!(ids, [json!("v1"), json!("c1")]);
}

#[test]
fn of_a_newer_and_an_older_event_delivered_at_once_the_newer_state_stays() {
    let gateway = gateway();
    let json_type = "application/vnd.evotor.v2+json;charset=UTF-8";
    const RACES: usize = 30;
    let deliver_signed = |event: &Value| {
        let body = serde_json::to_vec(event).expect("json");
        let reply = deliver(&gateway, &body, Some(&sign(SECRET, &body)), json_type);
        assert_eq!(reply.status, 200, "{}", reply.text());
    };
    for race in 0..RACES {
        let product = format!("4be33817-bfb2-4e9f-90d0-3286c8c39f{race:02}");
        let newer =
            product_event(&format!("n{race}"), USER, STORE, &product, "New", 2.0, "2026-11-02T10:00:00.000+0000");
        let older =
            product_event(&format!("o{race}"), USER, STORE, &product, "Old", 1.0, "2026-11-01T10:00:00.000+0000");
        // Alternate which one starts first.
        let (first, second) = if race % 2 == 0 { (newer, older) } else { (older, newer) };
        std::thread::scope(|scope| {
            scope.spawn(|| deliver_signed(&first));
            scope.spawn(|| deliver_signed(&second));
        });
    }
    let prices = prices(&gateway, STORE);
    assert_eq!(prices.len(), RACES);
    let older_won: Vec<&String> = prices.iter().filter(|(_, price)| **price != 2.0).map(|(uuid, _)| uuid).collect();
    assert!(older_won.is_empty(), "the older state stayed for {older_won:?}");
    // And a later genuine update of every one of them still applies.
    for race in 0..RACES {
        let product = format!("4be33817-bfb2-4e9f-90d0-3286c8c39f{race:02}");
        deliver_signed(&product_event(
            &format!("l{race}"),
            USER,
            STORE,
            &product,
            "Later",
            3.0,
            "2026-11-03T10:00:00.000+0000",
        ));
    }
    let later = partner(&gateway, &format!("/evotor/partner/v1/stores/{STORE}/products?limit=1000"));
    let stale = later["items"].as_array().expect("items").iter().filter(|item| item["product"]["price"] != 3.0).count();
    assert_eq!(stale, 0, "no later update was taken as stale");
}

#[test]
fn the_largest_events_fit_the_default_instance_memory_and_a_25_mb_event_is_refused_and_noted() {
    let gateway = gateway();
    let json_type = "application/vnd.evotor.v2+json;charset=UTF-8";
    // Four events just under 3.5 MB each, in one delivery just under its 16 MiB cap.
    let events: Vec<Value> = (0..4)
        .map(|n| {
            json!({"id": format!("big-{n}"), "type": "Order", "action": "created",
                   "payload": {"user_id": USER, "note": "x".repeat(3_499_000 - 120)}})
        })
        .collect();
    let body = serde_json::to_vec(&events).expect("json");
    assert!(body.len() > 13_900_000 && body.len() < 16 << 20, "{} bytes", body.len());
    let taken = deliver(&gateway, &body, Some(&sign(SECRET, &body)), json_type);
    assert_eq!(taken.status, 200, "{}", taken.text());
    assert_eq!(taken.json(), json!({"accepted": 4, "duplicates": 0}));
    // A 25 MB event: refused at intake (Evotor counts 413 as delivered), noted for the partner, never a 500.
    let huge = json!({"id": "huge", "type": "Order", "action": "created",
                      "payload": {"user_id": USER, "note": "x".repeat(25_000_000)}});
    let body = serde_json::to_vec(&huge).expect("json");
    let refused = deliver(&gateway, &body, Some(&sign(SECRET, &body)), json_type);
    assert_eq!(refused.status, 413, "{}", refused.text());
    let issues = partner(&gateway, "/evotor/partner/v1/data-issues");
    let noted = issues["items"]
        .as_array()
        .expect("items")
        .iter()
        .any(|issue| issue["problem"].as_str().is_some_and(|problem| problem.contains("413")));
    assert!(noted, "{issues}");
}
