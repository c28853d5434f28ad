use super::*;
use crate::endpoints::request::PARTNER_API_TOKEN;
use crate::testing::Fixture;

const USER: &str = "01-000000000000001";

fn partner(world: &Fixture, method: &str, path: &str, body: Option<Value>) -> Response {
    world.call(method, path, Some("partner"), body)
}

#[test]
fn partner_api_is_absent_without_its_token() {
    let world = Fixture::new();
    let mut config = world.config.clone();
    config.0.remove(PARTNER_API_TOKEN);
    let ctx = Ctx { kv: &world.kv, config: &config, clock: &world.clock, http: &world.http };
    let request = Request::new("GET", "/partner/v1/accounts").header("authorization", "Bearer ");
    assert_eq!(crate::handle(&ctx, &request).status, 404);
}

#[test]
fn wrong_partner_token_is_401() {
    let world = Fixture::new();
    for bearer in [None, Some("srv"), Some("")] {
        assert_eq!(world.call("GET", "/partner/v1/accounts", bearer, None).status, 401, "{bearer:?}");
    }
}

#[test]
fn an_account_made_by_the_partner_can_be_verified_by_evotor() {
    let world = Fixture::new();
    let created = partner(
        &world,
        "POST",
        "/partner/v1/accounts",
        Some(json!({"login": "shop-7", "password": "s3cret", "hasBilling": true, "displayName": "Shop 7"})),
    );
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let account = created.body_json();
    assert_eq!((account["login"].as_str(), account["hasPassword"].as_bool()), (Some("shop-7"), Some(true)));
    assert!(account.get("passwordHash").is_none());

    let verified =
        world.server("/api/v1/user/verify", json!({"userId": USER, "username": "shop-7", "password": "s3cret"}));
    assert_eq!(verified.status, 200);
    assert_eq!(verified.body_json()["hasBilling"], true);

    let id = account["id"].as_str().expect("id");
    let linked = partner(&world, "GET", &format!("/partner/v1/accounts/{id}"), None).body_json();
    assert_eq!(linked["userId"], USER);
    let user = partner(&world, "GET", &format!("/partner/v1/users/{USER}"), None).body_json();
    assert_eq!(user["account"]["id"], id);
    assert_eq!(user["tokens"][0]["status"], "valid");
    assert!(
        !user.to_string().contains(verified.body_json()["token"].as_str().expect("token")),
        "issued tokens are never shown"
    );
}

#[test]
fn duplicate_logins_are_refused() {
    let world = Fixture::new();
    assert_eq!(partner(&world, "POST", "/partner/v1/accounts", Some(json!({"login": "a"}))).status, 201);
    let again = partner(&world, "POST", "/partner/v1/accounts", Some(json!({"login": "A"})));
    assert_eq!((again.status, again.body_json()["errors"][0]["code"].as_u64()), (409, Some(2005)));
}

#[test]
fn update_changes_password_billing_and_disabled() {
    let world = Fixture::new();
    let token = world.register(USER, "ivan");
    let user = partner(&world, "GET", &format!("/partner/v1/users/{USER}"), None).body_json();
    let id = user["account"]["id"].as_str().expect("id").to_owned();
    let path = format!("/partner/v1/accounts/{id}");

    let changed = partner(&world, "PATCH", &path, Some(json!({"password": "new-pw", "hasBilling": true})));
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body_json()["hasBilling"], true);
    let old_pw = world.server("/api/v1/user/verify", json!({"userId": USER, "username": "ivan", "password": "pw-1"}));
    assert_eq!(old_pw.status, 401);
    let new_pw = world.server("/api/v1/user/verify", json!({"userId": USER, "username": "ivan", "password": "new-pw"}));
    assert_eq!(new_pw.status, 200);

    assert_eq!(partner(&world, "PATCH", &path, Some(json!({"disabled": true}))).status, 200);
    assert_eq!(world.whoami(&token), Err(1002), "a disabled account's user is locked out");
    let disabled =
        world.server("/api/v1/user/verify", json!({"userId": USER, "username": "ivan", "password": "new-pw"}));
    assert_eq!(disabled.status, 401);
    assert_eq!(partner(&world, "PATCH", &path, Some(json!({"disabled": false}))).status, 200);
    assert_eq!(world.whoami(&token), Ok(USER.to_owned()));

    let login_change = partner(&world, "PATCH", &path, Some(json!({"login": "other"})));
    assert_eq!(login_change.status, 400);
    let bad_type = partner(&world, "PATCH", &path, Some(json!({"hasBilling": "yes"})));
    assert_eq!(bad_type.status, 400);
}

#[test]
fn delete_unlinks_the_user_revokes_tokens_and_frees_the_login() {
    let world = Fixture::new();
    let token = world.register(USER, "ivan");
    let user = partner(&world, "GET", &format!("/partner/v1/users/{USER}"), None).body_json();
    let id = user["account"]["id"].as_str().expect("id").to_owned();
    assert_eq!(partner(&world, "DELETE", &format!("/partner/v1/accounts/{id}"), None).status, 204);
    assert_eq!(partner(&world, "GET", &format!("/partner/v1/accounts/{id}"), None).status, 404);
    assert_eq!(world.whoami(&token), Err(1002));
    assert!(world.kv.keys().iter().all(|k| !k.starts_with("logins/") && !k.starts_with("tokens/")));
    world.register(USER, "ivan");
}

#[test]
fn listings_page_with_a_cursor() {
    let world = Fixture::new();
    for i in 0..5 {
        world.register(&format!("01-{i:015}"), &format!("login{i}"));
    }
    let mut seen = Vec::new();
    let mut path = "/partner/v1/users?limit=2".to_owned();
    loop {
        let page = partner(&world, "GET", &path, None).body_json();
        seen.extend(
            page["items"].as_array().expect("items").iter().map(|u| u["userId"].as_str().expect("id").to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/partner/v1/users?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..5).map(|i| format!("01-{i:015}")).collect::<Vec<_>>());
    let accounts = partner(&world, "GET", "/partner/v1/accounts?limit=1000", None).body_json();
    assert_eq!(accounts["items"].as_array().map(Vec::len), Some(5));
    for bad in ["limit=0", "limit=1001", "limit=x", "after=a/b"] {
        assert_eq!(partner(&world, "GET", &format!("/partner/v1/accounts?{bad}"), None).status, 400, "{bad}");
    }
}

#[test]
fn user_shows_cloud_token_tariff_and_token_states() {
    let world = Fixture::new();
    assert_eq!(partner(&world, "GET", &format!("/partner/v1/users/{USER}"), None).status, 404);
    let cloud = partner(&world, "GET", &format!("/partner/v1/users/{USER}/cloud-token"), None);
    assert_eq!(cloud.status, 404, "no token yet");
    let token = "f1e2d3c4-0000-4000-8000-00000000a1b2";
    crate::domain::sync::put_cloud_token(&world.ctx(), USER, token).expect("store");
    let body = partner(&world, "GET", &format!("/partner/v1/users/{USER}"), None).body_json();
    assert_eq!(
        body["cloudToken"],
        json!({"last4": "a1b2", "receivedAt": crate::testing::FIXTURE_START}),
        "present, not shown"
    );
    assert!(!String::from_utf8_lossy(&partner(&world, "GET", "/partner/v1/users", None).body).contains(token));
    let cloud = partner(&world, "GET", &format!("/partner/v1/users/{USER}/cloud-token"), None);
    assert_eq!(
        cloud.body_json(),
        json!({"token": token, "receivedAt": crate::testing::FIXTURE_START}),
        "only from its own endpoint"
    );
    let anonymous = world.call("GET", &format!("/partner/v1/users/{USER}/cloud-token"), Some("guess"), None);
    assert_eq!(anonymous.status, 401);
    assert_eq!(body["account"], Value::Null);
    world.register(USER, "ivan");
    world.register(USER, "ivan");
    world.server("/api/v1/user/tariff", json!({"userId": USER, "tariffId": "pro", "status": "INACTIVE"}));
    let body = partner(&world, "GET", &format!("/partner/v1/users/{USER}"), None).body_json();
    let states: Vec<&str> =
        body["tokens"].as_array().expect("tokens").iter().filter_map(|t| t["status"].as_str()).collect();
    assert_eq!(states, ["grace", "valid"]);
    assert_eq!(body["tariff"]["status"], "INACTIVE");
    assert_eq!(partner(&world, "GET", "/partner/v1/users/nope", None).status, 400);
}
