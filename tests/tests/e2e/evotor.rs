//! End to end through the gateway: the Evotor protocol as the Evotor cloud
//! and the partner's own systems use it.

use evogate_e2e::{Gateway, post_json, request};
use serde_json::json;

const USER: &str = "01-000000000000042";
const STORE: &str = "20170228-f4f1-401b-80fa-9eccca8451ff";
const PRODUCT: &str = "c0d01e35-5193-4cc2-9bfb-be20e0679498";

/// A subscription event of `user` as Evotor sends it.
fn subscription_event(
    user: &str,
    subscription: &str,
    seq: u64,
    kind: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut body = json!({
        "subscriptionId": subscription, "productId": PRODUCT, "userId": user,
        "timestamp": "2026-11-01T10:00:00.000+0000", "sequenceNumber": seq, "type": kind,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

fn trial(user: &str, subscription: &str) -> serde_json::Value {
    subscription_event(
        user,
        subscription,
        1,
        "SubscriptionCreated",
        json!({"planId": "basic", "trialPeriodDuration": "P3650DT", "deviceNumber": 2}),
    )
}

fn put_json(url: &str, bearer: &str, body: &serde_json::Value) -> evogate_e2e::Reply {
    let auth = format!("Bearer {bearer}");
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
    request("PUT", url, &headers, Some(body.to_string().as_bytes()))
}

#[test]
fn register_verify_cloud_token_then_user_calls_until_the_tariff_lapses() {
    let gateway = Gateway::evotor("");
    let server = Some("server-secret");
    // Evotor often announces the subscription before the account exists.
    let sub = "a99fbf70-6307-4acc-b61c-741ee9eef6c0";
    assert_eq!(post_json(&gateway.url("/api/v1/subscription/event"), server, &trial(USER, sub)).status, 200);

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
    assert!(user["cloudToken"].is_object(), "a cloud token is present");
    assert!(!user.to_string().contains("evotor-cloud\""), "the cloud token itself only from its endpoint");
    let cloud = request(
        "GET",
        &gateway.url(&format!("/partner/v1/users/{USER}/cloud-token")),
        &[("authorization", "Bearer partner-secret")],
        None,
    );
    assert_eq!(cloud.json()["token"], "evotor-cloud");
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
    for (user, sub) in [
        ("01-000000000000001", "a99fbf70-6307-4acc-b61c-741ee9eef601"),
        ("01-000000000000002", "a99fbf70-6307-4acc-b61c-741ee9eef602"),
    ] {
        assert_eq!(post_json(&gateway.url("/api/v1/subscription/event"), server, &trial(user, sub)).status, 200);
    }
    let url = gateway.url("/api/v1/inventories/stores");
    assert_eq!(put_json(&url, &alice, &json!([{"uuid": STORE, "name": "Alice's"}])).status, 200);
    let taken = put_json(&url, &bob, &json!([{"uuid": STORE, "name": "Bob's"}]));
    assert_eq!(taken.json(), json!([{"uuid": STORE}]), "answered by uuid alone, nothing of Alice's revealed");
    let stores = request(
        "GET",
        &gateway.url("/partner/v1/users/01-000000000000001/stores"),
        &[("authorization", "Bearer partner-secret")],
        None,
    );
    assert_eq!(stores.json()["items"][0]["data"]["name"], "Alice's", "left unchanged");
}

#[test]
fn install_trial_activate_terminate_is_402_and_renewal_lets_the_user_back() {
    let gateway = Gateway::evotor("");
    let server = Some("server-secret");
    let user = "01-000000000000077";
    let sub = "b99fbf70-6307-4acc-b61c-741ee9eef6c0";
    let event = |seq: u64, kind: &str, extra: serde_json::Value| {
        let reply = post_json(
            &gateway.url("/api/v1/subscription/event"),
            server,
            &subscription_event(user, sub, seq, kind, extra),
        );
        assert_eq!(reply.status, 200, "{kind}: {}", reply.text());
    };
    let installed = post_json(
        &gateway.url("/api/v2/installation/event"),
        server,
        &json!({"id": "inst-1", "timestamp": "2026-11-01T09:00:00.000+0000", "version": 2, "type": "ApplicationInstalled", "data": {"productId": PRODUCT, "userId": user}}),
    );
    assert_eq!(installed.status, 200);
    let created = post_json(
        &gateway.url("/api/v1/user/create"),
        server,
        &json!({"userId": user, "username": "u77", "password": "pw"}),
    );
    let token = created.json()["token"].as_str().expect("token").to_owned();
    let call =
        || put_json(&gateway.url("/api/v1/inventories/stores"), &token, &json!([{"uuid": STORE, "name": "Shop"}]));
    assert_eq!(call().status, 402, "no subscription yet");

    event(1, "SubscriptionCreated", json!({"planId": "basic", "trialPeriodDuration": "P3650DT"}));
    assert_eq!(call().status, 200, "trial");
    event(2, "SubscriptionActivated", json!({"nextBillingDate": "2099-01-01T00:00:00.000+0000"}));
    assert_eq!(call().status, 200, "active");
    event(3, "SubscriptionTerminated", json!({}));
    let lapsed = call();
    assert_eq!((lapsed.status, lapsed.error_code()), (402, Some(1004)), "terminated");
    // Evotor speaks for the subscription: the user's own token delivering a renewal is kept, not applied.
    let renewed = subscription_event(
        user,
        sub,
        4,
        "SubscriptionRenewed",
        json!({"nextBillingDate": "2099-02-01T00:00:00.000+0000"}),
    );
    assert_eq!(post_json(&gateway.url("/api/v1/subscription/event"), Some(&token), &renewed).status, 200);
    assert_eq!(call().status, 402, "a user token's renewal does not revive it");
    // Evotor's own renewal does.
    event(4, "SubscriptionRenewed", json!({"nextBillingDate": "2099-02-01T00:00:00.000+0000"}));
    assert_eq!(call().status, 200, "renewed");
}

#[test]
fn concurrent_interleaved_deliveries_converge_to_the_in_order_state() {
    let gateway = Gateway::evotor("");
    let user = "01-000000000000088";
    let sub = "c99fbf70-6307-4acc-b61c-741ee9eef6c0";
    let mut events = vec![subscription_event(
        user,
        sub,
        1,
        "SubscriptionCreated",
        json!({"planId": "basic", "trialPeriodDuration": "P0DT", "deviceNumber": 1}),
    )];
    for seq in 2..=24u64 {
        let kind = ["SubscriptionActivated", "SubscriptionTermsChanged", "SubscriptionRenewed"][(seq % 3) as usize];
        events.push(subscription_event(
            user,
            sub,
            seq,
            kind,
            json!({"nextBillingDate": "2099-01-01T00:00:00.000+0000", "deviceNumber": seq}),
        ));
    }
    // 8 deliverers, each sending every event in its own rotated order: duplicates and reordering at once.
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let url = gateway.url("/api/v1/subscription/event");
            let mut mine = events.clone();
            mine.rotate_left(worker * 3);
            if worker % 2 == 1 {
                mine.reverse();
            }
            std::thread::spawn(move || {
                mine.iter().filter(|body| post_json(&url, Some("server-secret"), body).status == 200).count()
            })
        })
        .collect();
    let delivered: usize = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    assert_eq!(delivered, 8 * events.len(), "every delivery answered 200");
    let view = request(
        "GET",
        &gateway.url(&format!("/partner/v1/users/{user}/subscriptions")),
        &[("authorization", "Bearer partner-secret")],
        None,
    )
    .json();
    let state = &view["subscriptions"][0]["state"];
    assert_eq!(state["appliedThrough"], 24);
    assert_eq!((&state["gapSince"], &state["skipped"]), (&json!(null), &json!([])), "no gap left, none skipped");
    assert_eq!(state["deviceNumber"], 24, "the last event in sequence order decides");
    assert_eq!(state["status"], "ACTIVE");
    assert_eq!(view["subscriptions"][0]["events"].as_array().map(Vec::len), Some(24), "each event stored once");
}

fn get(url: &str, bearer: &str) -> evogate_e2e::Reply {
    request("GET", url, &[("authorization", &format!("Bearer {bearer}"))], None)
}

/// Registers `user` with a long trial; returns the user token.
fn entitled_user(gateway: &Gateway, user: &str, login: &str, subscription: &str) -> String {
    let server = Some("server-secret");
    assert_eq!(post_json(&gateway.url("/api/v1/subscription/event"), server, &trial(user, subscription)).status, 200);
    let created = post_json(
        &gateway.url("/api/v1/user/create"),
        server,
        &json!({"userId": user, "username": login, "password": "correct horse"}),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    created.json()["token"].as_str().expect("token").to_owned()
}

#[test]
fn the_partner_publishes_a_catalog_that_terminals_page_through_and_scan() {
    let gateway = Gateway::evotor("");
    let alice = entitled_user(&gateway, USER, "alice", "a99fbf70-6307-4acc-b61c-741ee9eef6c1");
    let bob = entitled_user(&gateway, "01-000000000000043", "bob", "a99fbf70-6307-4acc-b61c-741ee9eef6c2");
    assert_eq!(
        put_json(&gateway.url("/api/v1/inventories/stores"), &alice, &json!([{"uuid": STORE, "name": "Shop"}])).status,
        200
    );

    let products: Vec<serde_json::Value> = (0..2500u32)
        .map(|n| {
            json!({"uuid": format!("{:08x}-0000-4000-8000-{n:012x}", n.wrapping_mul(2_654_435_761)), "group": false,
                   "name": format!("Item {n}"), "type": "NORMAL", "allowToSell": true, "measureName": "шт",
                   "price": 10, "quantity": 1, "tax": "VAT_22", "barCodes": [format!("46{n:011}")]})
        })
        .collect();
    let published = put_json(
        &gateway.url(&format!("/partner/v1/stores/{STORE}/products")),
        "partner-secret",
        &serde_json::Value::from(products.clone()),
    );
    assert_eq!(published.status, 200, "{}", published.text());

    let page =
        |n: u32| get(&gateway.url(&format!("/api/v1/inventories/stores/{STORE}/products?page={n}&size=1000")), &alice);
    let mut seen = Vec::new();
    for n in 0..3 {
        let reply = page(n);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-total-items-count"), Some("2500"));
        assert_eq!(reply.header("x-pagination-total-page-count"), Some("3"));
        assert_eq!(reply.header("x-pagination-next-page"), (n < 2).then(|| (n + 1).to_string()).as_deref());
        seen.extend(
            reply.json().as_array().expect("array").iter().map(|p| p["uuid"].as_str().unwrap_or_default().to_owned()),
        );
    }
    let mut expected: Vec<String> =
        products.iter().map(|p| p["uuid"].as_str().unwrap_or_default().to_owned()).collect();
    expected.sort();
    assert_eq!(seen, expected, "every product once, in a stable order");
    assert_eq!(page(3).json(), json!([]));

    let scan = |token: &str, code: &str| get(&gateway.url(&format!("/api/v1/commodities?scanCode={code}")), token);
    let found = scan(&alice, "4600000001234");
    assert_eq!((found.status, found.json()["name"].as_str()), (200, Some("Item 1234")));
    assert_eq!(scan(&bob, "4600000001234").status, 404, "another user's catalog is invisible");
    let foreign = get(&gateway.url(&format!("/api/v1/inventories/stores/{STORE}/products")), &bob);
    assert_eq!(foreign.status, 404, "another user's store answers as a missing one");
}

#[test]
fn deliveries_during_an_erasure_never_survive_it() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let gateway = Gateway::evotor("");
    let account = evogate_e2e::stream::Account::register(&gateway, 7);
    let partner = [("authorization", "Bearer partner-secret")];
    let erase = || {
        let url = gateway.url(&format!("/partner/v1/users/{}/data", account.user));
        loop {
            let reply = request("DELETE", &url, &partner, None);
            assert!(matches!(reply.status, 200 | 202), "{} {}", reply.status, reply.text());
            if reply.json()["complete"] == true {
                return reply.json()["deleted"].as_u64().expect("deleted");
            }
        }
    };
    let (stop, accepted, erased) = (AtomicBool::new(false), AtomicUsize::new(0), AtomicBool::new(false));
    let statuses_after_erasure = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            let auth = format!("Bearer {}", account.token);
            let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
            let url = gateway.url(&format!("/api/v1/inventories/stores/{}/documents", account.store));
            let mut after = Vec::new();
            for batch in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let was_erased = erased.load(Ordering::Acquire);
                let docs: Vec<serde_json::Value> = (0..5).map(|n| account.document(batch, n)).collect();
                let reply = request("PUT", &url, &headers, Some(serde_json::Value::from(docs).to_string().as_bytes()));
                if reply.status == 200 {
                    accepted.fetch_add(1, Ordering::Release);
                }
                if was_erased {
                    after.push(reply.status);
                }
            }
            after
        });
        while accepted.load(Ordering::Acquire) < 3 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        erase();
        erased.store(true, Ordering::Release);
        std::thread::sleep(std::time::Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        sender.join().expect("sender")
    });
    assert!(!statuses_after_erasure.is_empty(), "deliveries went on after the erasure");
    assert!(statuses_after_erasure.iter().all(|status| *status == 401), "{statuses_after_erasure:?}");
    // A second erasure finds whatever a delivery in flight left, and then nothing is left.
    erase();
    let documents =
        request("GET", &gateway.url(&format!("/partner/v1/stores/{}/documents", account.store)), &partner, None);
    let left = if documents.status == 200 { documents.json()["items"].as_array().map_or(0, Vec::len) } else { 0 };
    assert_eq!(left, 0, "no document of the erased user survives");
    let user = request("GET", &gateway.url(&format!("/partner/v1/users/{}", account.user)), &partner, None);
    assert_eq!(user.status, 404, "the user is gone");
    assert_eq!(erase(), 0, "nothing more to find");
}
