//! End to end through the gateway: the Evotor protocol as the Evotor cloud
//! and the partner's own systems use it.

use evogate_e2e::{Gateway, post_json, request};
use serde_json::json;

const USER: &str = "01-000000000000042";
const STORE: &str = "20170228-f4f1-401b-80fa-9eccca8451ff";

fn put_json(url: &str, bearer: &str, body: &serde_json::Value) -> evogate_e2e::Reply {
    let auth = format!("Bearer {bearer}");
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
    request("PUT", url, &headers, Some(body.to_string().as_bytes()))
}

#[test]
fn register_verify_cloud_token_then_user_calls_until_the_tariff_lapses() {
    let gateway = Gateway::evotor("");
    let server = Some("server-secret");

    let created = post_json(
        &gateway.url("/api/v1/user/create"),
        server,
        &json!({"userUuid": USER, "username": "shop-owner", "password": "correct horse", "city": "Kazan"}),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(created.json()["userUuid"], USER);

    let verified = post_json(
        &gateway.url("/api/v1/user/verify"),
        server,
        &json!({"userId": USER, "username": "shop-owner", "password": "correct horse"}),
    );
    assert_eq!(verified.status, 200, "{}", verified.text());
    assert_eq!(verified.json()["hasBilling"], false);
    let token = verified.json()["token"].as_str().expect("token").to_owned();

    let wrong = post_json(
        &gateway.url("/api/v1/user/verify"),
        server,
        &json!({"userId": USER, "username": "shop-owner", "password": "wrong"}),
    );
    assert_eq!((wrong.status, wrong.error_code()), (401, Some(1006)));

    let cloud =
        post_json(&gateway.url("/api/v1/user/token"), server, &json!({"userId": USER, "token": "evotor-cloud"}));
    assert_eq!(cloud.status, 200);

    let stores = json!([{"uuid": STORE, "name": "Main street"}]);
    let mirrored = put_json(&gateway.url("/api/v1/inventories/stores"), &token, &stores);
    assert_eq!(mirrored.status, 200, "{}", mirrored.text());
    assert_eq!(mirrored.json()[0]["uuid"], STORE);

    let tariff = |status: &str| {
        post_json(
            &gateway.url("/api/v1/user/tariff"),
            server,
            &json!({"userId": USER, "tariffId": "pro", "status": status}),
        )
    };
    assert_eq!(tariff("INACTIVE").status, 200);
    let unpaid = put_json(&gateway.url("/api/v1/inventories/stores"), &token, &stores);
    assert_eq!((unpaid.status, unpaid.error_code()), (402, Some(1004)));
    assert_eq!(unpaid.json()["errors"][0]["value"], USER);
    assert_eq!(tariff("ACTIVE").status, 200);
    assert_eq!(put_json(&gateway.url("/api/v1/inventories/stores"), &token, &stores).status, 200);

    let user = request(
        "GET",
        &gateway.url(&format!("/partner/v1/users/{USER}")),
        &[("authorization", "Bearer partner-secret")],
        None,
    );
    assert_eq!(user.status, 200);
    let user = user.json();
    assert_eq!(user["cloudToken"]["token"], "evotor-cloud");
    assert_eq!(user["account"]["login"], "shop-owner");
    assert_eq!(user["tariff"]["status"], "ACTIVE");
    assert!(!user.to_string().contains(&token), "issued tokens are never shown");

    let log = gateway.log();
    for secret in ["correct horse", "evotor-cloud", token.as_str()] {
        assert!(!log.contains(secret), "{secret} must never be logged");
    }
}

#[test]
fn a_token_of_one_user_never_acts_for_another() {
    let gateway = Gateway::evotor("");
    let server = Some("server-secret");
    let token = |user: &str, login: &str| {
        let reply = post_json(
            &gateway.url("/api/v1/user/create"),
            server,
            &json!({"userId": user, "username": login, "password": "pw"}),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["token"].as_str().expect("token").to_owned()
    };
    let alice = token("01-000000000000001", "alice");
    let bob = token("01-000000000000002", "bob");
    let url = gateway.url("/api/v1/inventories/stores");
    assert_eq!(put_json(&url, &alice, &json!([{"uuid": STORE, "name": "Alice's"}])).status, 200);
    let taken = put_json(&url, &bob, &json!([{"uuid": STORE, "name": "Bob's"}]));
    assert_eq!(taken.status, 409);
    assert!(!taken.text().contains("Alice"));
}
