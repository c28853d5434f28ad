//! A stream of Evotor document deliveries with known content, sent the way
//! the Evotor cloud sends them (a batch not answered 200 is sent again, the
//! same), and the check of what a gateway kept of it afterwards.
//!
//! Every batch holds [`BATCH`] documents whose uuids start with the batch
//! number, so the stored documents tell which batch they came from.

use crate::{Gateway, Reply, request, try_request};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Documents per delivery.
pub const BATCH: usize = 10;

/// The user, store and device the deliveries belong to.
#[derive(Debug, Clone)]
pub struct Account {
    /// Evotor user id.
    pub user: String,
    /// The store the documents are for.
    pub store: String,
    /// The terminal that sent them.
    pub device: String,
    /// The user's token, as the partner service issued it.
    pub token: String,
}

/// Sends `send` until it answers 200 (an injected fault or a restart may
/// refuse it for a while), at most for 60 s.
pub fn until_ok(what: &str, mut send: impl FnMut() -> Option<Reply>) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match send() {
            Some(reply) if reply.status == 200 => return reply,
            Some(reply) if reply.status != 503 => panic!("{what}: {} {}", reply.status, reply.text()),
            other => {
                assert!(Instant::now() < deadline, "{what}: no 200 within 60 s (last: {:?})", other.map(|r| r.status))
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Account {
    /// Creates user `n` with a ten-year trial and one device on `gateway`
    /// (server credential `server-secret`).
    pub fn register(gateway: &Gateway, n: u32) -> Self {
        let user = format!("01-{n:015}");
        let store = format!("20170228-f4f1-401b-80fa-{n:012}");
        let device = format!("5a188de4-49b8-4cb4-800e-{n:012}");
        let server = [("content-type", "application/json"), ("authorization", "Bearer server-secret")];
        let create = json!({"userId": user, "username": format!("user-{n}"), "password": "correct horse"}).to_string();
        let created = until_ok("user/create", || {
            try_request("POST", &gateway.url("/api/v1/user/create"), &server, create.as_bytes())
        });
        let token = created.json()["token"].as_str().expect("token").to_owned();
        let trial = json!({"subscriptionId": format!("6e3f7a52-0000-4000-8000-{n:012}"), "productId": "p",
            "userId": user, "timestamp": "2026-11-01T10:00:00.000+0000", "sequenceNumber": 1,
            "type": "SubscriptionCreated", "planId": "basic", "trialPeriodDuration": "P3650DT", "deviceNumber": 1})
        .to_string();
        until_ok("subscription", || {
            try_request("POST", &gateway.url("/api/v1/subscription/event"), &server, trial.as_bytes())
        });
        let auth = format!("Bearer {token}");
        let user_headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
        let devices = json!([{"uuid": device, "name": "Till"}]).to_string();
        until_ok("device", || {
            try_request("PUT", &gateway.url("/api/v1/inventories/devices"), &user_headers, devices.as_bytes())
        });
        Self { user, store, device, token }
    }

    /// Document `n` of batch `batch`.
    pub fn document(&self, batch: usize, n: usize) -> Value {
        json!({"uuid": format!("{batch:08x}-0000-4000-8000-{n:012x}"), "type": "SELL", "deviceUuid": self.device,
               "closeDate": "2026-11-01T10:00:00.000+0000", "openDate": "2026-11-01T09:59:00.000+0000",
               "openUserCode": null, "openUserUuid": "u", "closeUserCode": null, "closeUserUuid": "u",
               "sessionUUID": "150b9045-ce0f-4ee8-9222-291c6f94ea7b", "sessionNumber": "1", "number": n,
               "closeResultSum": "100", "closeSum": "100", "extras": {},
               "transactions": [{"type": "REGISTER_POSITION", "price": 100, "quantity": 1, "padding": "x".repeat(2000)}]})
    }
}

/// What happened to the deliveries of a stream.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Batches answered 200.
    pub acknowledged: BTreeSet<usize>,
    /// Batches sent at least once.
    pub sent: BTreeSet<usize>,
    /// Requests made, by answer (`0`: no answer: connection refused or cut).
    pub answers: BTreeMap<u16, usize>,
}

impl Ledger {
    /// Requests made.
    pub fn deliveries(&self) -> usize {
        self.answers.values().sum()
    }
}

/// Delivery senders running in the background.
#[derive(Debug)]
pub struct Stream {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    senders: Vec<std::thread::JoinHandle<()>>,
}

/// How a stream sends.
#[derive(Debug, Clone, Copy)]
pub struct Sending {
    /// Threads sending at once.
    pub senders: usize,
    /// Times a batch is sent before it is given up (Evotor retries for days;
    /// giving up leaves batches that were never acknowledged to check).
    pub attempts: usize,
}

impl Stream {
    /// Starts sending batches for `account` to the gateway at `base` (read
    /// afresh before each request from `base`, so a restarted gateway on a
    /// new port is followed).
    pub fn start(base: Arc<Mutex<String>>, account: &Account, sending: Sending) -> Self {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let senders = (0..sending.senders)
            .map(|sender| {
                let (ledger, stop, base, account) = (ledger.clone(), stop.clone(), base.clone(), account.clone());
                std::thread::spawn(move || {
                    let auth = format!("Bearer {}", account.token);
                    let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
                    let path = format!("/api/v1/inventories/stores/{}/documents", account.store);
                    for round in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let batch = sender * 100_000 + round;
                        let docs: Vec<Value> = (0..BATCH).map(|n| account.document(batch, n)).collect();
                        let body = Value::from(docs).to_string();
                        ledger.lock().expect("ledger").sent.insert(batch);
                        for _ in 0..sending.attempts {
                            let url = format!("{}{path}", base.lock().expect("base"));
                            let reply = try_request("PUT", &url, &headers, body.as_bytes());
                            let status = reply.as_ref().map_or(0, |reply| reply.status);
                            let mut ledger = ledger.lock().expect("ledger");
                            *ledger.answers.entry(status).or_default() += 1;
                            match reply {
                                Some(reply) if reply.status == 200 => {
                                    ledger.acknowledged.insert(batch);
                                    break;
                                }
                                // A 4xx would make Evotor drop the delivery for good.
                                Some(reply) if reply.status != 503 => {
                                    panic!("batch {batch}: {} {}", reply.status, reply.text())
                                }
                                _ => {}
                            }
                            drop(ledger);
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        Self { ledger, stop, senders }
    }

    /// What happened so far.
    pub fn ledger(&self) -> Ledger {
        self.ledger.lock().expect("ledger").clone()
    }

    /// Waits until `more` further batches are acknowledged (at most 60 s).
    pub fn wait_for(&self, more: usize) {
        let target = self.ledger().acknowledged.len() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ledger().acknowledged.len() < target {
            assert!(Instant::now() < deadline, "the stream stalled: {:?}", self.ledger().answers);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops sending (a batch in flight finishes) and returns the ledger.
    pub fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for sender in self.senders {
            sender.join().expect("sender");
        }
        self.ledger.lock().expect("ledger").clone()
    }
}

/// A partner API read, retried while the gateway answers 503.
fn partner_get(gateway: &Gateway, path: &str) -> Value {
    until_ok(path, || Some(request("GET", &gateway.url(path), &[("authorization", "Bearer partner-secret")], None)))
        .json()
}

/// What a gateway kept of a stream.
#[derive(Debug)]
pub struct Kept {
    /// Batches stored (all whole).
    pub batches: usize,
    /// Documents stored.
    pub documents: usize,
    /// Acknowledged batches not stored whole (the check fails unless 0).
    pub lost: usize,
}

/// Checks what `gateway` kept of the stream in `ledger`: every acknowledged
/// batch stored once, whole; no batch stored in part; one feed entry per
/// stored document, cursors growing (no hole, no repeat).
pub fn verify(gateway: &Gateway, account: &Account, ledger: &Ledger) -> Kept {
    let mut stored: BTreeMap<usize, usize> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|a| format!("&after={a}")).unwrap_or_default();
        let page = partner_get(gateway, &format!("/partner/v1/stores/{}/documents?limit=100{cursor}", account.store));
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
    let lost = ledger.acknowledged.iter().filter(|batch| stored.get(batch) != Some(&BATCH)).count();
    for batch in &ledger.acknowledged {
        assert_eq!(stored.get(batch), Some(&BATCH), "acknowledged batch {batch} is stored, whole");
    }
    for (batch, count) in &stored {
        assert_eq!(*count, BATCH, "batch {batch} is whole, never partial");
        assert!(ledger.sent.contains(batch), "batch {batch} was sent");
    }

    let mut cursors = Vec::new();
    let mut documents = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|a| format!("&after={a}")).unwrap_or_default();
        let page = partner_get(gateway, &format!("/partner/v1/feed?limit=200{cursor}"));
        let items = page["items"].as_array().expect("items");
        if items.is_empty() {
            break;
        }
        for item in items {
            cursors.push(item["cursor"].as_str().expect("cursor").to_owned());
            if item["kind"] == "document.received" && item["data"]["storeUuid"] == account.store.as_str() {
                assert!(documents.insert(item["data"]["id"].as_str().expect("id").to_owned()), "no repeated entry");
            }
        }
        after = page["next"].as_str().map(str::to_owned);
    }
    assert!(cursors.windows(2).all(|pair| pair[0] < pair[1]), "cursors only grow");
    let total: usize = stored.values().sum();
    assert_eq!(documents.len(), total, "one feed entry per stored document");
    Kept { batches: stored.len(), documents: total, lost }
}
