use super::*;
use crate::config::settings;
use crate::endpoints::auth;
use crate::http::{Request, Response};
use crate::kv::Kv as _;
use proptest::prelude::*;

const USER: &str = "01-000000000000001";
const OTHER: &str = "02-000000000000002";

use crate::testing::Fixture;

fn code(response: &Response) -> (u16, u64) {
    (response.status, response.body_json()["errors"][0]["code"].as_u64().unwrap_or(0))
}

#[test]
fn create_returns_a_working_token_under_both_id_names() {
    let world = Fixture::new();
    let response = world.server("/api/v1/user/create", json!({"userUuid": USER, "shop": "Lavka"}));
    assert_eq!(response.status, 200);
    let body = response.body_json();
    assert_eq!((&body["userUuid"], &body["userId"]), (&json!(USER), &json!(USER)));
    let token = body["token"].as_str().expect("token");
    assert!(token.len() <= 128 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b"_=-".contains(&b)));
    assert_eq!(world.whoami(token), Ok(USER.to_owned()));
}

#[test]
fn create_keeps_custom_fields_but_never_the_password() {
    let world = Fixture::new();
    world.register(USER, "ivan");
    let user: UserRecord = storage::read(&world.kv, &storage::user_key(USER)).expect("read").expect("user");
    let account: Account = storage::read(&world.kv, &storage::account_key(&user.account_id.expect("linked")))
        .expect("read")
        .expect("account");
    assert_eq!(account.fields, json!({"username": "ivan", "shop": "Lavka"}).as_object().cloned().expect("object"));
    assert!(account.password_hash.as_deref().is_some_and(|h| h.starts_with("$argon2id$")));
    let everything: String = world.kv.keys().join(" ");
    assert!(!everything.contains("ivan"), "logins are indexed by hash only");
    for key in world.kv.keys() {
        let raw = world.kv.get(&key).expect("get").expect("entry").value;
        assert!(!String::from_utf8_lossy(&raw).contains("pw-1"), "password in {key}");
    }
}

#[test]
fn the_identical_create_again_answers_200_with_a_new_working_token() {
    let world = Fixture::new();
    let first = world.register(USER, "ivan");
    let second = world.register(USER, "ivan");
    assert_ne!(first, second);
    assert_eq!(world.whoami(&second), Ok(USER.to_owned()));
    assert_eq!(world.whoami(&first), Ok(USER.to_owned()), "the previous token is in its grace period");
}

#[test]
fn create_with_other_data_for_a_known_user_or_login_is_2005() {
    let world = Fixture::new();
    world.register(USER, "ivan");
    let other_fields = world.server(
        "/api/v1/user/create",
        json!({"userId": USER, "username": "ivan", "password": "pw-1", "shop": "Other"}),
    );
    assert_eq!(code(&other_fields), (409, 2005));
    let other_password = world.server(
        "/api/v1/user/create",
        json!({"userId": USER, "username": "ivan", "password": "pw-2", "shop": "Lavka"}),
    );
    assert_eq!(code(&other_password), (409, 2005));
    let same_login = world.server("/api/v1/user/create", json!({"userId": OTHER, "username": "IVAN", "password": "x"}));
    assert_eq!(code(&same_login), (409, 2005));
    assert_eq!(same_login.body_json()["errors"][0]["subject"], "username");
}

#[test]
fn create_refuses_bad_input_and_writes_nothing() {
    let world = Fixture::new();
    let many: serde_json::Map<String, Value> =
        (0..=MAX_FIELDS).map(|i| (format!("f{i}"), json!(i))).chain([("userId".into(), json!(USER))]).collect();
    let cases = [
        (json!({"shop": "x"}), (400, 2002)),
        (json!({"userId": "01-1"}), (400, 2003)),
        (json!({"userId": USER, "username": "a".repeat(257), "password": "p"}), (400, 2003)),
        (json!({"userId": USER, "username": "ivan", "password": ""}), (400, 2003)),
        (json!({"userId": USER, "username": 5}), (400, 2001)),
        (json!({"userId": USER, "note": "x".repeat(MAX_FIELD_BYTES + 1)}), (400, 2003)),
        (Value::Object(many), (400, 2003)),
    ];
    for (body, want) in cases {
        assert_eq!(code(&world.server("/api/v1/user/create", body.clone())), want, "{body:.80}");
    }
    assert!(world.kv.keys().is_empty(), "{:?}", world.kv.keys());
    let no_server_auth = world.call("POST", "/api/v1/user/create", None, Some(json!({"userId": USER})));
    assert_eq!(code(&no_server_auth), (401, 1001));
}

#[test]
fn login_and_password_fields_are_configurable() {
    let world = Fixture::with(&[("login_field", "email"), ("password_field", "secret")]);
    let created = world.server("/api/v1/user/create", json!({"userId": USER, "email": "a@b.c", "secret": "s"}));
    assert_eq!(created.status, 200);
    let verified = world.server("/api/v1/user/verify", json!({"userId": USER, "email": "a@b.c", "secret": "s"}));
    assert_eq!(verified.status, 200, "{}", String::from_utf8_lossy(&verified.body));
}

#[test]
fn verify_links_and_answers_with_has_billing() {
    let world = Fixture::new();
    world.register(USER, "ivan");
    let response = world.server("/api/v1/user/verify", json!({"userId": USER, "username": "Ivan", "password": "pw-1"}));
    assert_eq!(response.status, 200);
    let body = response.body_json();
    assert_eq!((body["userId"].as_str(), body["hasBilling"].as_bool()), (Some(USER), Some(false)));
    assert_eq!(world.whoami(body["token"].as_str().expect("token")), Ok(USER.to_owned()));
}

#[test]
fn verify_answers_1006_alike_for_unknown_login_and_wrong_password() {
    let world = Fixture::new();
    world.register(USER, "ivan");
    let unknown = world.server("/api/v1/user/verify", json!({"userId": USER, "username": "petr", "password": "pw-1"}));
    let wrong = world.server("/api/v1/user/verify", json!({"userId": USER, "username": "ivan", "password": "pw-2"}));
    assert_eq!(code(&unknown), (401, 1006));
    assert_eq!(unknown.body, wrong.body, "the same answer either way");
    assert_eq!(unknown.status, wrong.status);
    let missing = world.server("/api/v1/user/verify", json!({"userId": USER, "username": "ivan"}));
    assert_eq!(code(&missing), (400, 2002));
}

#[test]
fn verify_refuses_an_account_linked_to_another_user_with_2004() {
    let world = Fixture::new();
    world.register(USER, "ivan");
    let response =
        world.server("/api/v1/user/verify", json!({"userId": OTHER, "username": "ivan", "password": "pw-1"}));
    assert_eq!(code(&response), (409, 2004));
}

#[test]
fn tariff_inactive_makes_user_calls_402_and_active_lifts_it() {
    let world = Fixture::new();
    let token = world.register(USER, "ivan");
    let off =
        world.server("/api/v1/user/tariff", json!({"userUuid": USER, "tariffId": "starter", "status": "INACTIVE"}));
    assert_eq!(off.status, 200);
    assert_eq!(world.whoami(&token), Err(1004));
    let on = world.server("/api/v1/user/tariff", json!({"userUuid": USER, "tariffId": "starter", "status": "ACTIVE"}));
    assert_eq!(on.status, 200);
    assert_eq!(world.whoami(&token), Ok(USER.to_owned()));
    let bad = world.server("/api/v1/user/tariff", json!({"userUuid": USER, "tariffId": "a b", "status": "ACTIVE"}));
    assert_eq!(code(&bad), (400, 2003));
    let bad = world.server("/api/v1/user/tariff", json!({"userUuid": USER, "tariffId": "x", "status": "PAUSED"}));
    assert_eq!(code(&bad), (400, 2003));
}

#[test]
fn a_replaced_token_works_through_the_grace_period_then_is_unknown() {
    let world = Fixture::with(&[("user_token_grace_secs", "600")]);
    let first = world.register(USER, "ivan");
    world.clock.advance(100);
    let second = world.register(USER, "ivan");
    world.clock.advance(600);
    assert_eq!(world.whoami(&first), Ok(USER.to_owned()), "600 s after replacement: still in grace");
    world.clock.advance(1);
    assert_eq!(world.whoami(&first), Err(1002));
    assert_eq!(world.whoami(&second), Ok(USER.to_owned()));
}

#[test]
fn tokens_expire_after_their_lifetime_when_one_is_set() {
    let world = Fixture::with(&[("user_token_ttl_secs", "3600")]);
    let token = world.register(USER, "ivan");
    world.clock.advance(3600);
    assert_eq!(world.whoami(&token), Ok(USER.to_owned()));
    world.clock.advance(1);
    assert_eq!(world.whoami(&token), Err(1003));
}

#[test]
fn unknown_missing_or_malformed_tokens_are_1002() {
    let world = Fixture::new();
    world.register(USER, "ivan");
    assert_eq!(world.whoami("not-a-token"), Err(1002));
    assert_eq!(world.whoami(""), Err(1002));
    let request = Request::new("GET", "/");
    let settings = settings(&world.ctx()).expect("settings");
    assert_eq!(auth::require_user(&world.ctx(), &request, &settings).map_err(|e| e.code), Err(1002));
}

#[test]
fn old_tokens_past_grace_are_dropped_from_storage_on_the_next_issue() {
    let world = Fixture::with(&[("user_token_grace_secs", "10")]);
    let first = world.register(USER, "ivan");
    let second = world.register(USER, "ivan");
    world.clock.advance(11);
    let third = world.register(USER, "ivan");
    let stored: Vec<String> =
        world.kv.keys().into_iter().filter_map(|k| k.strip_prefix("tokens/").map(str::to_owned)).collect();
    assert!(!stored.contains(&tokens::hash(&first)), "past its grace: dropped");
    assert!(stored.contains(&tokens::hash(&second)), "just replaced: in grace");
    assert!(stored.contains(&tokens::hash(&third)));
    assert_eq!(stored.len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// A token of user A never authorizes as user B, whatever the ids and order.
    #[test]
    fn a_token_authenticates_only_its_own_user(a in 0u64..1_000_000, b in 0u64..1_000_000, swap in any::<bool>()) {
        prop_assume!(a != b);
        let (user_a, user_b) = (format!("01-{a:015}"), format!("01-{b:015}"));
        let world = Fixture::new();
        let (first, second) = if swap { (&user_b, &user_a) } else { (&user_a, &user_b) };
        let token_first = world.register(first, &format!("login-{first}"));
        let token_second = world.register(second, &format!("login-{second}"));
        prop_assert_eq!(world.whoami(&token_first), Ok(first.clone()));
        prop_assert_eq!(world.whoami(&token_second), Ok(second.clone()));
    }
}
