//! Keeps `openapi/partner-api.json` honest: it describes exactly the
//! partner endpoints the router serves, and every documented success
//! answer matches what a real call returns.

use crate::testing::Fixture;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const SPEC: &str = include_str!("../../../../openapi/partner-api.json");
const USER: &str = "01-000000000000001";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const DEVICE: &str = "5a188de4-49b8-4cb4-800e-eb6b5202437e";
const DOCUMENT: &str = "175d8ae9-79db-4588-a65a-8f0613e2d0ff";
const PRODUCT: &str = "01ba18b6-8707-4f47-8d9c-4db058054cb2";

fn spec() -> Value {
    serde_json::from_str(SPEC).expect("the API description is JSON")
}

/// Checks `value` against an OpenAPI 3.1 schema (the subset the file uses).
fn check(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return check(spec, &spec["components"]["schemas"][name], value, at);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        return if options.iter().any(|option| check(spec, option, value, at).is_ok()) {
            Ok(())
        } else {
            Err(format!("{at}: {value} matches no option"))
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(kind) => vec![kind.as_str()],
        Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let type_of = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if !types.is_empty() && !types.iter().any(|kind| *kind == type_of || (*kind == "number" && type_of == "integer")) {
        return Err(format!("{at}: {type_of}, documented as {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not among {allowed:?}"));
    }
    if let Value::Object(map) = value {
        for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !map.contains_key(required) {
                return Err(format!("{at}: `{required}` is documented as always present"));
            }
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (key, field) in map {
                match properties.get(key) {
                    Some(property) => check(spec, property, field, &format!("{at}.{key}"))?,
                    None => return Err(format!("{at}: `{key}` is not documented")),
                }
            }
        }
    }
    if let (Value::Array(items), Some(item)) = (value, schema.get("items")) {
        for (index, element) in items.iter().enumerate() {
            check(spec, item, element, &format!("{at}[{index}]"))?;
        }
    }
    Ok(())
}

#[test]
fn the_description_lists_exactly_the_partner_endpoints_served() {
    let spec = spec();
    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|key| *key != "parameters")
                .map(move |method| (path.clone(), method.to_uppercase()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = crate::endpoints::endpoints()
        .filter(|(pattern, _)| pattern.starts_with("/partner/"))
        .map(|(pattern, method)| (pattern.to_owned(), method.to_owned()))
        .collect();
    assert_eq!(documented, served);
}

/// A world with one of everything the partner API shows.
fn populated() -> (Fixture, String) {
    let mut world = Fixture::with(&[
        ("events_webhook_allow_unsigned", "true"),
        ("evotor_app_id", "app-1"),
        ("evotor_publisher_token", "pub"),
    ]);
    // The publisher API's answers: a push notification sent here, and the one the checks send.
    let notification = |id: &str, status: &str| {
        let body = json!({"id": id, "status": status, "details": [{"device_id": DEVICE, "status": "DELIVERED"}]});
        Ok(crate::outgoing::Response { status: 200, headers: Vec::new(), body: body.to_string().into_bytes() })
    };
    world.http =
        crate::outgoing::Scripted::new([notification(DOCUMENT, "COMPLETED"), notification(PRODUCT, "ACCEPTED")]);
    let token = world.register(USER, "ivan");
    let trial = json!({"subscriptionId": "a99fbf70-6307-4acc-b61c-741ee9eef6c1", "productId": "p", "userId": USER,
        "timestamp": "2026-01-01T00:00:00.000+0000", "sequenceNumber": 1, "type": "SubscriptionCreated",
        "planId": "basic", "trialPeriodDuration": "P14DT", "deviceNumber": 1});
    assert_eq!(world.server("/api/v1/subscription/event", trial).status, 200);
    world.server("/api/v1/user/token", json!({"userId": USER, "token": "cloud"}));
    world.server("/api/v1/user/tariff", json!({"userId": USER, "tariffId": "t", "status": "ACTIVE"}));
    let user_call = |path: &str, body: Value| {
        let response = world.call("PUT", path, Some(&token), Some(body));
        assert_eq!(response.status, 200, "{path}: {}", String::from_utf8_lossy(&response.body));
    };
    user_call("/api/v1/inventories/stores", json!([{"uuid": STORE, "name": "Shop"}]));
    user_call(
        "/api/v1/inventories/employees",
        json!([{"uuid": PRODUCT, "name": "Ann", "role": "ADMIN", "stores": [{"storeUuid": STORE}], "phone": "8-900"}]),
    );
    user_call("/api/v1/inventories/devices", json!([{"uuid": DEVICE, "name": "Till", "storeUuid": STORE}]));
    let orphan = json!({"uuid": PRODUCT, "group": true, "name": "Drinks", "parentUuid": DEVICE});
    let posted = world.call(
        "POST",
        &format!("/api/v1/inventories/stores/{STORE}/products"),
        Some(&token),
        Some(json!([orphan])),
    );
    assert_eq!(posted.status, 200);
    let sell = crate::domain::documents::tests::relaxed_json(include_str!("../../../testdata/pos-docs/02-SELL.json"));
    user_call(&format!("/api/v1/inventories/stores/{STORE}/documents"), json!([sell]));
    let receipt = json!({"id": "evt-1", "timestamp": 1, "userId": USER, "type": "ReceiptCreated", "version": 2,
        "data": {"id": "r", "deviceId": DEVICE, "storeId": STORE, "dateTime": "2026-01-02T10:00:00.000+0000", "items": []}});
    assert_eq!(world.call("POST", "/api/v2/receipts", Some(&token), Some(receipt)).status, 200);
    let order =
        json!({"id": "ev-1", "timestamp": 1, "type": "Order", "action": "created", "payload": {"user_id": USER}});
    assert_eq!(world.call("POST", "/events", None, Some(order)).status, 200);
    let account =
        world.call("POST", "/partner/v1/accounts", Some("partner"), Some(json!({"login": "desk", "password": "pw"})));
    let account_id = account.body_json()["id"].as_str().expect("id").to_owned();
    let pushed = world.call(
        "POST",
        &format!("/partner/v1/users/{USER}/push-notifications"),
        Some("partner"),
        Some(json!({"payload": {"text": "hello"}})),
    );
    assert_eq!(pushed.status, 201, "{}", String::from_utf8_lossy(&pushed.body));
    (world, account_id)
}

#[test]
fn every_documented_answer_matches_a_real_one() {
    let spec = spec();
    let (world, account_id) = populated();
    let mut endpoints: Vec<(String, String, Value)> = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item").iter().filter(|(key, _)| *key != "parameters") {
            endpoints.push((path.clone(), method.to_uppercase(), operation.clone()));
        }
    }
    // Deletions last, so every other call sees the data.
    endpoints.sort_by_key(|(_, method, _)| method == "DELETE");
    for (path, method, operation) in endpoints {
        let id = if path.contains("receipts/") { "evt-1" } else { DOCUMENT };
        let url = path
            .replace("{userId}", USER)
            .replace("{storeUuid}", STORE)
            .replace("{accountId}", &account_id)
            .replace("{subscriptionId}", "a99fbf70-6307-4acc-b61c-741ee9eef6c1")
            .replace("{id}", id);
        let body = match (method.as_str(), path.as_str()) {
            ("POST", "/partner/v1/accounts") => Some(json!({"login": "another", "displayName": "Front desk"})),
            ("POST", "/partner/v1/users/{userId}/push-notifications") => Some(json!({"payload": {"n": 1}})),
            ("PATCH", _) => Some(json!({"displayName": "Renamed"})),
            ("PUT", _) => Some(json!([{"uuid": DOCUMENT, "group": true, "name": "Group"}])),
            ("POST", _) => Some(json!([DOCUMENT])),
            _ => None,
        };
        let response = world.call(&method, &url, Some("partner"), body);
        let (status, documented) = operation["responses"]
            .as_object()
            .expect("responses")
            .iter()
            .find(|(status, _)| *status != "default")
            .expect("a success");
        assert_eq!(response.status.to_string(), *status, "{method} {url}: {}", String::from_utf8_lossy(&response.body));
        if let Some(schema) = documented.pointer("/content/application~1json/schema") {
            let body = response.body_json();
            check(&spec, schema, &body, &format!("{method} {path}")).unwrap_or_else(|why| panic!("{why}"));
            if let Some(items) = body["items"].as_array() {
                assert!(!items.is_empty(), "{method} {url}: an empty page proves nothing about its items");
            }
        }
    }
    let broken = world.call("GET", "/partner/v1/accounts/0", Some("partner"), None);
    let error_schema = json!({"$ref": "#/components/schemas/Error"});
    check(&spec, &error_schema, &broken.body_json(), "error").unwrap_or_else(|why| panic!("{why}"));
}
