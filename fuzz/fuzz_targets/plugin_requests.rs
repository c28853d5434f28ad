//! The Evotor plugin, natively, under sequences of requests built from real
//! ones: every endpoint's request as the definitions and the test data show
//! it, with credentials of the right, another or no user, and JSON edits or
//! raw bytes in the body. After every answer: no panic, no 5xx (the in-memory
//! store never fails), every error answer has the Evotor error shape, a
//! request made with one user's token left every record of the other user
//! untouched and read none of the other user's stores, and every index
//! agrees with its records. Evotor's event webhooks are part of it, signed
//! or, in half the runs, unsigned: a delivery not signed with the secret
//! (any credential but the server's) is answered 401 and changes nothing.
#![no_main]

use arbitrary::Arbitrary;
use evotor_partner::Ctx;
use evotor_partner::clock::ManualClock;
use evotor_partner::config::MapConfig;
use evotor_partner::http::{Request, Response};
use evotor_partner::kv::Kv as _;
use evotor_partner::kv::MemKv;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const USERS: [&str; 2] = ["01-000000000000001", "02-000000000000002"];
const STORES: [&str; 2] = ["20170228-f4f1-401b-80fa-9ecca8451ffb", "20170228-f4f1-401b-80fa-9ecca8451ffc"];
const DEVICE: &str = "5a188de4-49b8-4cb4-800e-eb6b5202437e";
const SUBSCRIPTION: &str = "a99fbf70-6307-4acc-b61c-000000000001";

const SELL: &str = include_str!("../../plugin/testdata/pos-docs/02-SELL.json");
const V2_SELL: &str = include_str!("../../plugin/testdata/v2-docs/01-SELL.json");

/// Who a request claims to be.
#[derive(Arbitrary, Debug)]
enum Auth {
    None,
    Server,
    Partner,
    /// The token of the step's user.
    Own,
    /// The token of the other user.
    Other,
    Raw(String),
}

/// A JSON value an edit puts somewhere in the body.
#[derive(Arbitrary, Debug)]
enum Leaf {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    EmptyArray,
    EmptyObject,
    /// The node is removed.
    Remove,
}

#[derive(Arbitrary, Debug)]
struct Edit {
    /// Which node of the body (taken modulo their number).
    node: u16,
    leaf: Leaf,
}

#[derive(Arbitrary, Debug)]
enum Body {
    AsIs,
    Edited(Vec<Edit>),
    /// Any bytes, JSON or not.
    Raw(Vec<u8>),
}

/// One run: whether the events webhook takes unsigned deliveries, and the steps.
#[derive(Arbitrary, Debug)]
struct Input {
    unsigned_events: bool,
    steps: Vec<Step>,
}

/// The events webhook's secret in a signed run.
const EVENTS_SECRET: &str = "hook-secret";

/// `X-Hub-Signature` of `body` keyed by `secret`.
fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Routes of the events webhook among the templates.
fn is_event_route(n: u8) -> bool {
    n % 23 >= 19
}

#[derive(Arbitrary, Debug)]
struct Step {
    route: u8,
    /// Use the other user, the other store.
    other_user: bool,
    other_store: bool,
    auth: Auth,
    body: Body,
    query: Option<String>,
    /// Seconds the clock moves before the step.
    advance: u16,
}

/// A real request of route `n` for `user` and `store`: method, path, body.
fn template(n: u8, user: &str, store: &str) -> (&'static str, String, Option<Value>) {
    let relaxed = |text: &str| -> Value {
        // The test data carries `//` comments: keep lines without them.
        let lines: Vec<&str> = text.lines().map(|line| line.split(" //").next().unwrap_or(line)).collect();
        serde_json::from_str(&lines.join("\n")).unwrap_or(Value::Null)
    };
    let product = json!({"uuid": "6c3bfd7a-4e1b-4c55-9d3e-0d7f0c1a0001", "group": false, "name": "Cider", "type": "NORMAL",
                         "allowToSell": true, "measureName": "шт", "price": 99.9, "quantity": 3, "tax": "VAT_20",
                         "barCodes": ["4600000000017"]});
    let envelope = |id: &str, kind: &str, action: &str, payload: Value| json!({"id": id, "timestamp": 1_790_000_000_000u64, "type": kind, "action": action, "payload": payload});
    match n % 23 {
        0 => (
            "POST",
            "/api/v1/user/create".into(),
            Some(json!({"userId": user, "username": "u", "password": "pw-1", "shop": "s"})),
        ),
        1 => ("POST", "/api/v1/user/verify".into(), Some(json!({"userId": user, "username": "u", "password": "pw-1"}))),
        2 => ("POST", "/api/v1/user/token".into(), Some(json!({"userId": user, "token": "cloud-token"}))),
        3 => (
            "POST",
            "/api/v1/subscription/event".into(),
            Some(json!({
            "subscriptionId": SUBSCRIPTION, "productId": "p", "userId": user, "sequenceNumber": 1,
            "timestamp": "2026-11-01T10:00:00.000+0000", "type": "SubscriptionCreated", "planId": "basic",
            "trialPeriodDuration": "P14DT", "nextBillingDate": "2026-12-01T00:00:00.000+0000", "deviceNumber": 1})),
        ),
        4 => (
            "POST",
            "/api/v2/installation/event".into(),
            Some(json!({
            "id": "i-1", "timestamp": 1_504_168_645_290u64, "version": 1, "type": "ApplicationInstalled",
            "data": {"productId": "p", "userId": user}})),
        ),
        5 => (
            "PUT",
            "/api/v1/inventories/stores".into(),
            Some(json!([{"uuid": store, "name": "Lavka", "address": "Moscow"}])),
        ),
        6 => (
            "PUT",
            "/api/v1/inventories/devices".into(),
            Some(json!([{"uuid": DEVICE, "storeUuid": store, "name": "T2",
                                                                         "imei": "1", "serialNumber": "2"}])),
        ),
        7 => (
            "PUT",
            "/api/v1/inventories/employees".into(),
            Some(json!([{"uuid": "e1", "name": "Ivan", "stores": [store]}])),
        ),
        8 => ("GET", format!("/api/v1/inventories/stores/{store}/products"), None),
        9 => ("POST", format!("/api/v1/inventories/stores/{store}/products"), Some(json!([product]))),
        10 => ("PUT", format!("/api/v1/inventories/stores/{store}/documents"), Some(json!([relaxed(SELL)]))),
        11 => ("PUT", "/".into(), Some(relaxed(V2_SELL))),
        12 => (
            "POST",
            "/api/v1/receipts".into(),
            Some(json!({"id": "ev-1", "timestamp": 1_700_000_000_000u64, "userId": user,
            "type": "ReceiptCreated", "version": 2, "data": {"id": "r-1", "deviceId": DEVICE, "storeId": store,
            "dateTime": "2026-11-01T10:00:00.000+0000", "type": "SELL", "items": [{"name": "Cider", "quantity": 1,
            "price": 99.9, "sumPrice": 99.9}], "totalAmount": 99.9}})),
        ),
        13 => ("GET", format!("/partner/v1/users/{user}"), None),
        14 => ("GET", "/partner/v1/feed".into(), None),
        15 => ("GET", "/partner/v1/data-issues".into(), None),
        16 => ("PUT", format!("/partner/v1/stores/{store}/products"), Some(json!([product]))),
        17 => ("GET", format!("/partner/v1/stores/{store}/documents"), None),
        18 => ("POST", format!("/partner/v1/users/{user}/subscriptions/{SUBSCRIPTION}/resolve-gap"), Some(json!({}))),
        19 => (
            "POST",
            "/events".into(),
            Some(envelope(
                "ev-store",
                "StoreEvent",
                "updated",
                json!({"id": store, "name": "Lavka", "user_id": user,
                "updated_at": "2026-11-01T10:00:00.000+0000"}),
            )),
        ),
        20 => (
            "POST",
            "/events".into(),
            Some(envelope(
                "ev-product",
                "Product",
                "created",
                json!({"id": "6c3bfd7a-4e1b-4c55-9d3e-0d7f0c1a0002",
                "store_id": store, "user_id": user, "name": "Kvass", "price": 60, "type": "NORMAL",
                "barcodes": ["4600000000024"], "updated_at": "2026-11-01T10:00:00.000+0000"}),
            )),
        ),
        21 => {
            let mut document = relaxed(V2_SELL);
            document["store_id"] = json!(store);
            document["user_id"] = json!(user);
            document["device_id"] = json!(DEVICE);
            ("POST", "/events".into(), Some(envelope("ev-doc", "DocumentEvent", "created", document)))
        }
        _ => (
            "POST",
            "/events".into(),
            Some(json!([
                envelope("ev-order", "Order", "created", json!({"user_id": user})),
                envelope("ev-device", "device", "removed", json!({"id": DEVICE, "store_id": store, "user_id": user}))
            ])),
        ),
    }
}

/// Every node of `value` by JSON pointer, the root first.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => map.iter().for_each(|(key, child)| pointers(child, format!("{at}/{key}"), out)),
        Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, child)| pointers(child, format!("{at}/{i}"), out))
        }
        _ => {}
    }
}

fn edit(body: &mut Value, edit: Edit) {
    let mut nodes = Vec::new();
    pointers(body, String::new(), &mut nodes);
    let pointer = &nodes[usize::from(edit.node) % nodes.len()];
    let leaf = match edit.leaf {
        Leaf::Null => Value::Null,
        Leaf::Bool(b) => Value::Bool(b),
        Leaf::Int(n) => json!(n),
        Leaf::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Leaf::Text(text) => Value::String(text),
        Leaf::EmptyArray => json!([]),
        Leaf::EmptyObject => json!({}),
        Leaf::Remove => {
            if let Some((parent, key)) = pointer.rsplit_once('/') {
                match body.pointer_mut(parent) {
                    Some(Value::Object(map)) => drop(map.remove(key)),
                    Some(Value::Array(items)) => {
                        if let Ok(i) = key.parse::<usize>() {
                            if i < items.len() {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
            return;
        }
    };
    if let Some(node) = body.pointer_mut(pointer) {
        *node = leaf;
    }
}

struct World {
    kv: MemKv,
    config: MapConfig,
    clock: ManualClock,
}

impl World {
    fn call(&self, request: &Request) -> Response {
        let http = evotor_partner::outgoing::Scripted::default();
        let ctx = Ctx { kv: &self.kv, config: &self.config, clock: &self.clock, http: &http };
        evotor_partner::handle(&ctx, request)
    }
}

fn check(step: &str, response: &Response) {
    assert!(response.status < 500, "{step}: {} {}", response.status, String::from_utf8_lossy(&response.body));
    if response.status >= 400 {
        let body: Value = serde_json::from_slice(&response.body).expect("an error answer is JSON");
        let first = &body["errors"][0];
        assert!(first["code"].is_u64() && first["reason"].is_string(), "{step}: not the Evotor error shape: {body}");
    }
}

/// Every record of `user` with its version: the user's own keys and those of
/// the stores it owns.
fn records_of(kv: &MemKv, user: &str) -> BTreeMap<String, u64> {
    let keys = kv.keys();
    let stores: Vec<&str> = keys
        .iter()
        .filter_map(|key| key.strip_prefix("owners/store/"))
        .filter(|store| {
            let owner = kv.get(&format!("owners/store/{store}")).ok().flatten();
            owner
                .and_then(|entry| serde_json::from_slice::<Value>(&entry.value).ok())
                .is_some_and(|o| o["userId"] == user)
        })
        .collect();
    let mine = |key: &str| {
        key == format!("users/{user}")
            || key.starts_with(&format!("user/{user}/"))
            || (key.starts_with("receipts/") && key.ends_with(&format!("/{user}")))
            || stores
                .iter()
                .any(|store| ["docs", "cat", "rcpts"].iter().any(|head| key.starts_with(&format!("{head}/{store}/"))))
    };
    keys.iter().filter(|key| mine(key)).filter_map(|key| Some((key.clone(), kv.get(key).ok()??.version))).collect()
}

fuzz_target!(|input: Input| {
    let Input { unsigned_events, steps } = input;
    let mut config = MapConfig::from([
        ("server_bearer_token", "srv"),
        ("partner_api_token", "partner"),
        ("password_argon2_memory_kib", "8"),
        ("password_argon2_iterations", "1"),
    ]);
    let events_setting = if unsigned_events {
        ("events_webhook_allow_unsigned", "true")
    } else {
        ("events_webhook_secret", EVENTS_SECRET)
    };
    config.0.insert(events_setting.0.into(), events_setting.1.into());
    let world = World { kv: MemKv::default(), config, clock: ManualClock::at(1_790_000_000) };
    // Both users exist, with a token each, before the steps.
    let mut tokens = Vec::new();
    for user in USERS {
        let (_, path, body) = template(0, user, STORES[0]);
        let request = Request::new("POST", &path).header("authorization", "Bearer srv").json(&body.unwrap_or_default());
        let answer = world.call(&request);
        tokens.push(
            serde_json::from_slice::<Value>(&answer.body).ok().and_then(|b| b["token"].as_str().map(str::to_owned)),
        );
    }
    for step in steps.into_iter().take(24) {
        world.clock.advance(u64::from(step.advance));
        let who = usize::from(step.other_user);
        let (method, path, template_body) = template(step.route, USERS[who], STORES[usize::from(step.other_store)]);
        let target = match &step.query {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let mut request = Request::new(method, &target);
        let token = |n: usize| tokens[n].clone().unwrap_or_default();
        // Whose records a user token must leave alone: the user it does not belong to.
        // (An event names its user itself: whoever may deliver events may speak for every user.)
        let bystander = match step.auth {
            _ if is_event_route(step.route) => None,
            Auth::Own => Some(USERS[1 - who]),
            Auth::Other => Some(USERS[who]),
            _ => None,
        };
        let before = bystander.map(|user| records_of(&world.kv, user));
        let event = is_event_route(step.route);
        // Deliveries are authenticated by their signature: only "the server" signs with the secret.
        let server = matches!(step.auth, Auth::Server);
        let forged = event && !unsigned_events && !server;
        let untouched = forged.then(|| USERS.map(|user| records_of(&world.kv, user)));
        let authorization = match step.auth {
            Auth::None => None,
            Auth::Server => Some("Bearer srv".to_owned()),
            Auth::Partner => Some("Bearer partner".to_owned()),
            Auth::Own => Some(format!("Bearer {}", token(who))),
            Auth::Other => Some(format!("Bearer {}", token(1 - who))),
            Auth::Raw(raw) => Some(raw),
        };
        if let Some(value) = authorization {
            request = request.header("authorization", &value);
        }
        match (step.body, template_body) {
            (Body::Raw(bytes), _) => request.body = bytes,
            (_, None) => {}
            (Body::AsIs, Some(body)) => request = request.json(&body),
            (Body::Edited(edits), Some(mut body)) => {
                for one in edits.into_iter().take(8) {
                    edit(&mut body, one);
                }
                request = request.json(&body);
            }
        }
        if event && !unsigned_events {
            let secret = if server { EVENTS_SECRET } else { "not-the-secret" };
            let signed = signature(secret, &request.body);
            request = request.header("x-hub-signature", &signed);
        }
        let answer = world.call(&request);
        check(&format!("{method} {target}"), &answer);
        if let Some(untouched) = untouched {
            assert_eq!(answer.status, 401, "a forged delivery to {target} was answered {}", answer.status);
            assert!(untouched == USERS.map(|user| records_of(&world.kv, user)), "a forged delivery changed records");
        }
        if let (Some(user), Some(before)) = (bystander, before) {
            // A read of the other user's store reveals nothing of it: no id of its products or documents.
            if method == "GET" {
                for key in before.keys() {
                    let Some(id) = key.strip_prefix("cat/").or_else(|| key.strip_prefix("docs/")) else { continue };
                    let Some((store, rest)) = id.split_once('/') else { continue };
                    let id = rest.strip_prefix("p/").or_else(|| rest.strip_prefix("doc/"));
                    if let Some(id) = id.filter(|_| target.contains(store)) {
                        let body = String::from_utf8_lossy(&answer.body);
                        assert!(!body.contains(id), "GET {target} with another user's token showed {user}'s {id}");
                    }
                }
            }
            let after = records_of(&world.kv, user);
            assert!(before == after, "{method} {target} with another user's token changed {user}'s records");
        }
        let problems = evotor_partner::audit::problems(&world.kv);
        assert!(problems.is_empty(), "after {method} {target}: {problems:?}");
    }
});
