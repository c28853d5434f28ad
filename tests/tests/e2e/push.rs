//! Push notifications through the real gateway against a mock publisher
//! API: the OAuth publisher token renewed with the refresh token the server
//! rotates, a retried call with the same `Idempotency-Key` one
//! notification, its delivery status read back, and a refused renewal the
//! partner's to see.

use evogate_e2e::cloud::MockCloud;
use evogate_e2e::{Gateway, evotor_table, request, toml_str};
use serde_json::{Value, json};

const PARTNER: (&str, &str) = ("authorization", "Bearer partner-secret");
const SERVER: (&str, &str) = ("authorization", "Bearer server-secret");
const USER: &str = "01-200000000000001";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const D1: &str = "5a188de4-49b8-4cb4-800e-eb6b52024371";
const D2: &str = "5a188de4-49b8-4cb4-800e-eb6b52024372";
/// Lifetime of the mock's access tokens: renewed when used past its sixth second.
const LIFETIME_SECS: u64 = 66;

/// The Evotor plugin with the OAuth publisher settings, the cloud and the OAuth server both the mock.
fn gateway(cloud: &MockCloud) -> Gateway {
    let table = format!("allowed_outbound_hosts = [{}]", toml_str(&cloud.url));
    let settings = format!(
        "evotor_api_url = {url}\nevotor_oauth_url = {url}\nevotor_app_id = \"app-1\"\n\
         evotor_oauth_client_id = \"client\"\nevotor_oauth_client_secret = \"secret\"\n\
         evotor_oauth_refresh_token = \"seed-1\"\nbilling_enforcement = \"off\"\n",
        url = toml_str(&cloud.url)
    );
    Gateway::start(&evotor_table("/", &table, &settings))
}

fn call(
    gateway: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> evogate_e2e::Reply {
    let body = body.map(Value::to_string);
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request(method, &gateway.url(path), &all, body.as_deref().map(str::as_bytes))
}

fn partner(gateway: &Gateway, path: &str) -> Value {
    let reply = call(gateway, "GET", path, &[PARTNER], None);
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply.json()
}

fn kinds(gateway: &Gateway) -> Vec<String> {
    let feed = partner(gateway, "/partner/v1/feed?limit=1000");
    feed["items"].as_array().expect("items").iter().filter_map(|e| e["kind"].as_str().map(str::to_owned)).collect()
}

#[test]
fn a_push_notification_goes_out_once_with_a_renewed_token_and_its_status_comes_back() {
    let cloud = MockCloud::start(100);
    cloud.oauth("client", "secret", "seed-1", LIFETIME_SECS);
    let gateway = gateway(&cloud);
    let created = call(
        &gateway,
        "POST",
        "/api/v1/user/create",
        &[SERVER],
        Some(&json!({"userId": USER, "username": "push-owner", "password": "correct horse"})),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let token = format!("Bearer {}", created.json()["token"].as_str().expect("token"));
    let user = [("authorization", token.as_str())];
    let stores =
        call(&gateway, "PUT", "/api/v1/inventories/stores", &user, Some(&json!([{"uuid": STORE, "name": "Shop"}])));
    assert_eq!(stores.status, 200, "{}", stores.text());
    let devices =
        json!([{"uuid": D1, "name": "Till 1", "storeUuid": STORE}, {"uuid": D2, "name": "Till 2", "storeUuid": STORE}]);
    assert_eq!(call(&gateway, "PUT", "/api/v1/inventories/devices", &user, Some(&devices)).status, 200);

    // Sent to the user's terminals, with a token renewed from the configured seed.
    let path = format!("/partner/v1/users/{USER}/push-notifications");
    let body = json!({"payload": {"message": "Новая акция", "discount": 10}});
    let keyed = [PARTNER, ("idempotency-key", "campaign-7")];
    let first = call(&gateway, "POST", &path, &keyed, Some(&body));
    assert_eq!(first.status, 201, "{}", first.text());
    let notification = first.json();
    let id = notification["id"].as_str().expect("id").to_owned();
    assert_eq!(
        notification["devices"],
        json!([{"deviceUuid": D1, "status": "ACCEPTED"}, {"deviceUuid": D2, "status": "ACCEPTED"}])
    );
    assert_eq!(cloud.pushed(), [json!({"devices": [D1, D2], "payload": {"message": "Новая акция", "discount": 10}})]);
    assert_eq!(cloud.renewals(), 1);

    // A retry with the same key is the same notification; nothing more leaves.
    let again = call(&gateway, "POST", &path, &keyed, Some(&body));
    assert_eq!((again.status, again.json()), (200, notification.clone()));
    let other = call(&gateway, "POST", &path, &keyed, Some(&json!({"payload": {}})));
    assert_eq!(other.status, 422, "{}", other.text());
    assert_eq!((cloud.pushed().len(), cloud.renewals()), (1, 1));
    let publisher = partner(&gateway, "/partner/v1/publisher");
    assert_eq!((publisher["mode"].as_str(), publisher["state"].as_str()), (Some("oauth"), Some("usable")));
    let shown = publisher.to_string();
    assert!(!shown.contains("access-") && !shown.contains("refresh-") && !shown.contains("seed"), "{shown}");

    // Its status, asked once the token is near its end: renewed with the rotated refresh token.
    cloud.push_status(&id, "COMPLETED", &[(D1, "DELIVERED"), (D2, "EXPIRED")]);
    std::thread::sleep(std::time::Duration::from_secs(7));
    let status = partner(&gateway, &format!("/partner/v1/push-notifications/{id}"));
    assert_eq!(status["status"], "COMPLETED", "{status}");
    assert_eq!(
        status["devices"],
        json!([{"deviceUuid": D1, "status": "DELIVERED"}, {"deviceUuid": D2, "status": "EXPIRED"}])
    );
    assert_eq!(cloud.renewals(), 2, "the second renewal took the refresh token the first handed out");
    let told = kinds(&gateway);
    assert!(told.contains(&"push-notification.sent".into()) && told.contains(&"push-notification.updated".into()));

    // The OAuth server stops taking the stored refresh token: refused, told, and nothing sent.
    cloud.oauth("client", "secret", "another-seed", LIFETIME_SECS);
    std::thread::sleep(std::time::Duration::from_secs(7));
    let refused = call(&gateway, "POST", &path, &[PARTNER], Some(&body));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("invalid_grant"), "{}", refused.text());
    let publisher = partner(&gateway, "/partner/v1/publisher");
    assert_eq!((publisher["state"].as_str(), publisher["refused"]["status"].as_u64()), (Some("refused"), Some(400)));
    assert!(kinds(&gateway).contains(&"publisher-token.refused".into()));
    let issues = partner(&gateway, "/partner/v1/data-issues");
    assert!(issues["items"].as_array().is_some_and(|items| items.iter().any(|i| i["entity"] == "publisher-token")));
    assert_eq!(cloud.pushed().len(), 1);
}
