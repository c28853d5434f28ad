//! What a `200 OK` promises when the gateway process dies: the data is on
//! disk. Documents stream in batches while the gateway is killed with
//! SIGKILL; after a restart every acknowledged batch is there whole, no
//! batch is there in part, and the change feed has no hole and no repeat.

use evogate_e2e::{Gateway, post_json, request, try_request};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const USER: &str = "01-000000000000077";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451f77";
const DEVICE: &str = "5a188de4-49b8-4cb4-800e-eb6b52024377";
const BATCH: usize = 25;

fn document(batch: usize, n: usize) -> Value {
    json!({"uuid": format!("{batch:08x}-0000-4000-8000-{n:012x}"), "type": "SELL", "deviceUuid": DEVICE,
           "closeDate": "2026-11-01T10:00:00.000+0000", "openDate": "2026-11-01T09:59:00.000+0000",
           "openUserCode": null, "openUserUuid": "u", "closeUserCode": null, "closeUserUuid": "u",
           "sessionUUID": "150b9045-ce0f-4ee8-9222-291c6f94ea7b", "sessionNumber": "1", "number": n,
           "closeResultSum": "100", "closeSum": "100", "extras": {},
           "transactions": [{"type": "REGISTER_POSITION", "price": 100, "quantity": 1, "padding": "x".repeat(2000)}]})
}

fn partner_get(gateway: &Gateway, path: &str) -> Value {
    let reply = request("GET", &gateway.url(path), &[("authorization", "Bearer partner-secret")], None);
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply.json()
}

#[test]
fn every_acknowledged_batch_survives_sigkill_whole_and_the_feed_has_no_holes() {
    let mut gateway = Gateway::evotor("");
    let created = post_json(
        &gateway.url("/api/v1/user/create"),
        Some("server-secret"),
        &json!({"userId": USER, "username": "durable", "password": "correct horse"}),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let token = created.json()["token"].as_str().expect("token").to_owned();
    let trial = json!({"subscriptionId": "6e3f7a52-0000-4000-8000-000000000077", "productId": "p", "userId": USER,
        "timestamp": "2026-11-01T10:00:00.000+0000", "sequenceNumber": 1, "type": "SubscriptionCreated",
        "planId": "basic", "trialPeriodDuration": "P3650DT", "deviceNumber": 1});
    assert_eq!(post_json(&gateway.url("/api/v1/subscription/event"), Some("server-secret"), &trial).status, 200);
    let auth = format!("Bearer {token}");
    let device = json!([{"uuid": DEVICE, "name": "Till"}]).to_string();
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
    let registered = request("PUT", &gateway.url("/api/v1/inventories/devices"), &headers, Some(device.as_bytes()));
    assert_eq!(registered.status, 200, "{}", registered.text());

    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..3)
        .map(|sender| {
            let (url, token) = (gateway.url(&format!("/api/v1/inventories/stores/{STORE}/documents")), token.clone());
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {token}");
                let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
                for round in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let batch = sender * 100_000 + round;
                    let docs: Vec<Value> = (0..BATCH).map(|n| document(batch, n)).collect();
                    let body = Value::from(docs).to_string();
                    match try_request("PUT", &url, &headers, body.as_bytes()) {
                        Some(reply) if reply.status == 200 => {
                            acknowledged.lock().expect("lock").insert(batch);
                        }
                        Some(reply) => panic!("batch {batch}: {} {}", reply.status, reply.text()),
                        None => break,
                    }
                }
            })
        })
        .collect();
    // Let batches flow, then kill the process mid-stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while acknowledged.lock().expect("lock").len() < 30 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    gateway.signal("KILL");
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().expect("sender");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(acknowledged.len() >= 30, "the stream was flowing when the process died");
    gateway.restart();

    let mut stored: BTreeMap<usize, usize> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|a| format!("&after={a}")).unwrap_or_default();
        let page = partner_get(&gateway, &format!("/partner/v1/stores/{STORE}/documents?limit=1000{cursor}"));
        for item in page["items"].as_array().expect("items") {
            let id = item["id"].as_str().expect("id");
            let batch = usize::from_str_radix(&id[..8], 16).expect("batch in the uuid");
            *stored.entry(batch).or_default() += 1;
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    for batch in &acknowledged {
        assert_eq!(stored.get(batch), Some(&BATCH), "acknowledged batch {batch} is complete");
    }
    for (batch, count) in &stored {
        assert_eq!(*count, BATCH, "batch {batch} is whole, never partial");
    }

    let mut cursors = Vec::new();
    let mut documents = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|a| format!("&after={a}")).unwrap_or_default();
        let page = partner_get(&gateway, &format!("/partner/v1/feed?limit=1000{cursor}"));
        let items = page["items"].as_array().expect("items");
        if items.is_empty() {
            break;
        }
        for item in items {
            cursors.push(item["cursor"].as_str().expect("cursor").to_owned());
            if item["kind"] == "document.received" {
                assert!(documents.insert(item["data"]["id"].as_str().expect("id").to_owned()), "no repeated entry");
            }
        }
        after = page["next"].as_str().map(str::to_owned);
    }
    assert!(cursors.windows(2).all(|pair| pair[0] < pair[1]), "cursors only grow");
    // No holes: every stored document has its entry, and nothing else does.
    assert_eq!(documents.len(), stored.values().sum::<usize>(), "one feed entry per stored document");
}
