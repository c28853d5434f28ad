use super::*;
use crate::accounts::tests::World;
use proptest::prelude::*;

const USER: &str = "01-000000000000001";
const SUB: &str = "a99fbf70-6307-4acc-b61c-741ee9eef6c0";
const SUB2: &str = "a99fbf70-6307-4acc-b61c-741ee9eef6c1";
const PRODUCT: &str = "c0d01e35-5193-4cc2-9bfb-be20e0679498";

/// Milliseconds of the World's clock start (1_000_000 s).
const T0: i64 = 1_000_000_000;

fn stamp(ms: i64) -> String {
    // Evotor's format with a +0000 offset.
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let (h, m, s) = (secs.rem_euclid(86_400) / 3600, secs.rem_euclid(3600) / 60, secs.rem_euclid(60));
    let (y, mo, d) = civil(days);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}+0000", ms.rem_euclid(1000))
}

fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn event(sub: &str, seq: u64, kind: &str, extra: Value) -> Value {
    let mut body = json!({
        "subscriptionId": sub, "productId": PRODUCT, "userId": USER,
        "timestamp": stamp(T0 + seq as i64 * 1000), "sequenceNumber": seq, "type": kind,
    });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

fn created(sub: &str, trial: &str, devices: u64) -> Value {
    event(
        sub,
        1,
        "SubscriptionCreated",
        json!({"planId": "basic", "trialPeriodDuration": trial, "deviceNumber": devices}),
    )
}

fn post(world: &World, body: &Value) -> Response {
    world.server("/api/v1/subscription/event", body.clone())
}

fn state(world: &World, sub: &str) -> Subscription {
    storage::read(&world.kv, &storage::subscription_key(sub)).expect("read").expect("state")
}

fn enforced() -> World {
    World::with(&[("billing_enforcement", "evotor")])
}

#[test]
fn events_are_validated_with_evotor_codes() {
    let world = World::new();
    let mut missing = created(SUB, "P14DT", 1);
    missing.as_object_mut().expect("object").remove("sequenceNumber");
    let code = |r: &Response| {
        (
            r.status,
            r.body_json()["errors"][0]["code"].as_u64(),
            r.body_json()["errors"][0]["subject"].as_str().map(str::to_owned),
        )
    };
    assert_eq!(code(&post(&world, &missing)), (400, Some(2002), Some("sequenceNumber".into())));
    let no_plan = event(SUB, 1, "SubscriptionCreated", json!({"trialPeriodDuration": "P1DT"}));
    assert_eq!(code(&post(&world, &no_plan)).1, Some(2002));
    let bad_trial = event(SUB, 1, "SubscriptionCreated", json!({"planId": "p", "trialPeriodDuration": "two weeks"}));
    assert_eq!(code(&post(&world, &bad_trial)), (400, Some(2003), Some("trialPeriodDuration".into())));
    let bad_date = event(SUB, 2, "SubscriptionActivated", json!({"nextBillingDate": "tomorrow"}));
    assert_eq!(code(&post(&world, &bad_date)).1, Some(2003));
    let no_date = event(SUB, 2, "SubscriptionActivated", json!({}));
    assert_eq!(code(&post(&world, &no_date)).1, Some(2002));
    let zero = event(SUB, 0, "SubscriptionTerminated", json!({}));
    assert_eq!(code(&post(&world, &zero)).1, Some(2003));
    let bad_sub = event("not-a-uuid", 1, "SubscriptionTerminated", json!({}));
    assert_eq!(code(&post(&world, &bad_sub)).1, Some(2003));
    assert!(world.kv.keys().iter().all(|k| !k.starts_with("subs/")), "nothing stored");
}

#[test]
fn the_life_cycle_follows_the_events() {
    let world = World::new();
    let next_billing = stamp(T0 + 30 * 86_400_000);
    assert_eq!(post(&world, &created(SUB, "P14DT", 3)).status, 200);
    let s = state(&world, SUB);
    assert_eq!(
        (s.status, s.device_number, s.trial_end),
        (Some(Status::Trial), Some(3), Some(T0 + 1000 + 14 * 86_400_000))
    );
    post(
        &world,
        &event(
            SUB,
            2,
            "SubscriptionActivated",
            json!({"nextBillingDate": next_billing, "chargedSum": {"amount": 990.5, "currency": "RUB"}}),
        ),
    );
    assert_eq!(state(&world, SUB).status, Some(Status::Active));
    post(&world, &event(SUB, 3, "SubscriptionTermsChanged", json!({"deviceNumber": 5})));
    post(&world, &event(SUB, 4, "AddonsUpdated", json!({"addons": [{"id": "extra", "quantity": 2}]})));
    post(&world, &event(SUB, 5, "SubscriptionTerminationRequested", json!({})));
    let s = state(&world, SUB);
    assert_eq!((s.status, s.device_number), (Some(Status::TerminationRequested), Some(5)));
    assert_eq!(s.addons, Some(json!([{"id": "extra", "quantity": 2}])));
    assert_eq!(s.charged_sum, Some(json!({"amount": 990.5, "currency": "RUB"})));
    assert!(s.usable(T0, 0), "usable until the paid period ends");
    assert!(!s.usable(T0 + 31 * 86_400_000, 0));
    post(&world, &event(SUB, 6, "SubscriptionTerminated", json!({})));
    assert_eq!(state(&world, SUB).status, Some(Status::Terminated));
    post(&world, &event(SUB, 7, "SubscriptionRenewed", json!({"nextBillingDate": next_billing})));
    assert_eq!(state(&world, SUB).status, Some(Status::Active), "renewal revives");
}

#[test]
fn events_ahead_of_a_gap_wait_and_duplicates_change_nothing() {
    let world = World::new();
    let activated = event(SUB, 2, "SubscriptionActivated", json!({"nextBillingDate": stamp(T0 + 86_400_000)}));
    let terminated = event(SUB, 3, "SubscriptionTerminated", json!({}));
    assert_eq!(post(&world, &terminated).status, 200);
    assert_eq!(post(&world, &activated).status, 200);
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.waiting.clone(), s.status), (0, vec![2, 3], None), "the gap shows");
    assert_eq!(post(&world, &created(SUB, "P0DT", 1)).status, 200);
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.waiting.is_empty(), s.status), (3, true, Some(Status::Terminated)));
    let before = world.kv.keys().len();
    let state_before = state(&world, SUB);
    assert_eq!(post(&world, &activated).status, 200, "a duplicate is still 200");
    assert_eq!((world.kv.keys().len(), state(&world, SUB)), (before, state_before));
}

#[test]
fn unknown_event_types_are_stored_with_200() {
    let world = World::new();
    post(&world, &created(SUB, "P7DT", 1));
    assert_eq!(post(&world, &event(SUB, 2, "SubscriptionTeleported", json!({"x": 1}))).status, 200);
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.status), (2, Some(Status::Trial)));
}

#[test]
fn a_user_token_may_deliver_only_its_own_users_events_even_when_lapsed() {
    let world = enforced();
    let token = world.register(USER, "ivan");
    assert_eq!(world.whoami(&token), Err(1004), "no subscription yet");
    let own = world.call("POST", "/api/v1/subscription/event", Some(&token), Some(created(SUB, "P14DT", 1)));
    assert_eq!(own.status, 200);
    assert_eq!(world.whoami(&token), Ok(USER.to_owned()));
    let mut other = created(SUB2, "P14DT", 1);
    other["userId"] = json!("02-000000000000002");
    let foreign = world.call("POST", "/api/v1/subscription/event", Some(&token), Some(other));
    assert_eq!(foreign.status, 400);
    let anonymous = world.call("POST", "/api/v1/subscription/event", Some("nope"), Some(created(SUB2, "P1DT", 1)));
    assert_eq!(anonymous.status, 401);
}

#[test]
fn events_before_the_user_exists_count_once_the_user_appears() {
    let world = enforced();
    post(&world, &created(SUB, "P14DT", 2));
    let token = world.register(USER, "ivan");
    assert_eq!(world.whoami(&token), Ok(USER.to_owned()));
    let e = entitlement(&world.ctx(), USER, DEFAULT_PENDING_GRACE_SECS).expect("entitlement");
    assert_eq!((e.usable, e.licensed_devices), (true, 2));
}

#[test]
fn enforcement_follows_subscriptions_installation_and_partner_billing() {
    let world = enforced();
    let token = world.register(USER, "ivan");
    post(&world, &created(SUB, "P0DT", 4));
    assert_eq!(world.whoami(&token), Ok(USER.to_owned()), "pending, within its grace");
    world.clock.advance(DEFAULT_PENDING_GRACE_SECS + 10);
    assert_eq!(world.whoami(&token), Err(1004), "pending past its grace");
    post(&world, &event(SUB, 2, "SubscriptionActivated", json!({"nextBillingDate": stamp(T0 + 90 * 86_400_000)})));
    assert_eq!(world.whoami(&token), Ok(USER.to_owned()));

    let install = |id: &str, kind: &str, at: i64| {
        world.server("/api/v2/installation/event", json!({"id": id, "timestamp": stamp(at), "version": 1, "type": kind, "data": {"productId": PRODUCT, "userId": USER}}))
    };
    assert_eq!(install("e2", "ApplicationUninstalled", T0 + 5000).status, 200);
    assert_eq!(world.whoami(&token), Err(1004), "uninstalled");
    assert_eq!(install("e1", "ApplicationInstalled", T0 + 1000).status, 200, "an older event arriving late");
    assert_eq!(world.whoami(&token), Err(1004), "the latest event decides");
    assert_eq!(install("e3", "ApplicationInstalled", T0 + 9000).status, 200);
    assert_eq!(world.whoami(&token), Ok(USER.to_owned()));
    assert_eq!(install("e3", "ApplicationInstalled", T0 + 9000).status, 200, "idempotent by id");

    post(&world, &event(SUB, 3, "SubscriptionTerminated", json!({})));
    assert_eq!(world.whoami(&token), Err(1004));
    let account_id =
        world.call("GET", &format!("/partner/v1/users/{USER}"), Some("partner"), None).body_json()["account"]["id"]
            .as_str()
            .expect("account")
            .to_owned();
    world.call(
        "PATCH",
        &format!("/partner/v1/accounts/{account_id}"),
        Some("partner"),
        Some(json!({"hasBilling": true})),
    );
    assert_eq!(world.whoami(&token), Ok(USER.to_owned()), "the partner bills this user itself");
}

#[test]
fn licensed_devices_sum_over_usable_subscriptions() {
    let world = enforced();
    post(&world, &created(SUB, "P14DT", 3));
    let mut second = created(SUB2, "P0DT", 2);
    second["sequenceNumber"] = json!(1);
    post(&world, &second);
    let e = entitlement(&world.ctx(), USER, DEFAULT_PENDING_GRACE_SECS).expect("entitlement");
    assert_eq!(e.licensed_devices, 5);
    post(&world, &event(SUB2, 2, "SubscriptionTerminated", json!({})));
    let e = entitlement(&world.ctx(), USER, DEFAULT_PENDING_GRACE_SECS).expect("entitlement");
    assert_eq!(e.licensed_devices, 3);
    let view = world.call("GET", &format!("/partner/v1/users/{USER}/entitlement"), Some("partner"), None).body_json();
    assert_eq!(view["entitlement"]["licensedDevices"], 3);
    let subs = world.call("GET", &format!("/partner/v1/users/{USER}/subscriptions"), Some("partner"), None).body_json();
    assert_eq!(subs["subscriptions"].as_array().map(Vec::len), Some(2));
    assert_eq!(subs["subscriptions"][1]["events"].as_array().map(Vec::len), Some(2));
}

#[test]
fn legacy_events_are_recorded_once() {
    let world = World::new();
    let body = json!({"type": "trialStarted", "date": "2017-04-20T18:26:37.753+0000", "data": {"userId": USER}});
    assert_eq!(world.server("/api/v1/user/event", body.clone()).status, 200);
    assert_eq!(world.server("/api/v1/user/event", body).status, 200);
    assert_eq!(world.kv.keys().iter().filter(|k| k.starts_with("legacy-events/")).count(), 1);
    assert_eq!(world.call("POST", "/api/v1/user/event", None, Some(json!({"type": "x"}))).status, 401);
}

fn history(sub: &str, kinds: &[u8]) -> Vec<Value> {
    let mut events = vec![created(sub, "P14DT", 2)];
    for (i, kind) in kinds.iter().enumerate() {
        let seq = i as u64 + 2;
        let next = json!({"nextBillingDate": stamp(T0 + seq as i64 * 86_400_000)});
        events.push(match kind % 5 {
            0 => event(sub, seq, "SubscriptionActivated", next),
            1 => event(sub, seq, "SubscriptionRenewed", next),
            2 => event(sub, seq, "SubscriptionTermsChanged", json!({"deviceNumber": seq})),
            3 => event(sub, seq, "SubscriptionTerminationRequested", json!({})),
            _ => event(sub, seq, "SubscriptionTerminated", json!({})),
        });
    }
    events
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any delivery order, with any duplicates, ends in the in-order state.
    #[test]
    fn any_order_with_duplicates_gives_the_in_order_state(
        kinds_a in proptest::collection::vec(0u8..5, 0..8),
        kinds_b in proptest::collection::vec(0u8..5, 0..8),
        order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..24),
        dups in proptest::collection::vec(any::<proptest::sample::Index>(), 0..8),
    ) {
        let mut events = history(SUB, &kinds_a);
        events.extend(history(SUB2, &kinds_b));

        let in_order = World::new();
        for body in &events {
            prop_assert_eq!(post(&in_order, body).status, 200);
        }

        let mut shuffled = events.clone();
        for (i, index) in order.iter().enumerate() {
            let len = shuffled.len();
            shuffled.swap(i % len, index.index(len));
        }
        for index in &dups {
            shuffled.push(events[index.index(events.len())].clone());
        }
        let scrambled = World::new();
        for body in &shuffled {
            prop_assert_eq!(post(&scrambled, body).status, 200);
        }
        for sub in [SUB, SUB2] {
            prop_assert_eq!(state(&scrambled, sub), state(&in_order, sub));
            prop_assert!(state(&scrambled, sub).waiting.is_empty());
        }
    }
}

const DEV: [&str; 3] = [
    "20170222-d58c-40e0-8051-b53adff38860",
    "20170222-d58c-40e0-8051-b53adff38861",
    "20170222-d58c-40e0-8051-b53adff38862",
];

#[test]
fn devices_beyond_the_license_are_refused_with_1007_and_the_rest_saved() {
    let world = enforced();
    let token = world.register(USER, "ivan");
    post(&world, &created(SUB, "P14DT", 2));
    let devices = json!([{"uuid": DEV[0], "name": "A"}, {"uuid": DEV[1], "name": "B"}, {"uuid": DEV[2], "name": "C"}]);
    let response = world.call("PUT", "/api/v1/inventories/devices", Some(&token), Some(devices.clone()));
    assert_eq!(response.status, 405);
    let body = response.body_json();
    assert_eq!(
        body["errors"][0],
        json!({"code": 1007, "reason": "license overhead", "subject": "deviceUuid", "value": DEV[2]})
    );
    assert_eq!(body["accepted"].as_array().map(Vec::len), Some(2));
    let settings = crate::accounts::settings(&world.ctx()).expect("settings");
    assert!(require_device(&world.ctx(), USER, DEV[0], &settings).is_ok());
    assert!(require_device(&world.ctx(), USER, &DEV[1].to_uppercase(), &settings).is_ok());
    let refused = require_device(&world.ctx(), USER, DEV[2], &settings).expect_err("not licensed");
    assert_eq!((refused.status, refused.code, refused.subject.as_deref()), (405, 1005, Some("deviceUuid")));

    // Updating the registered devices is fine; one more licensed device admits the third.
    let again =
        world.call("PUT", "/api/v1/inventories/devices", Some(&token), Some(json!([{"uuid": DEV[1], "name": "B2"}])));
    assert_eq!(again.status, 200);
    post(&world, &event(SUB, 2, "SubscriptionTermsChanged", json!({"deviceNumber": 3})));
    assert_eq!(world.call("PUT", "/api/v1/inventories/devices", Some(&token), Some(devices)).status, 200);
    assert!(require_device(&world.ctx(), USER, DEV[2], &settings).is_ok());
    // Fewer licenses later: the devices registered first keep working.
    post(&world, &event(SUB, 3, "SubscriptionTermsChanged", json!({"deviceNumber": 1})));
    assert!(require_device(&world.ctx(), USER, DEV[0], &settings).is_ok());
    assert!(require_device(&world.ctx(), USER, DEV[1], &settings).is_err());
}

#[test]
fn without_enforcement_devices_are_not_limited() {
    let world = World::new();
    let token = world.register(USER, "ivan");
    let devices: Vec<Value> = DEV.iter().map(|uuid| json!({"uuid": uuid})).collect();
    assert_eq!(world.call("PUT", "/api/v1/inventories/devices", Some(&token), Some(Value::Array(devices))).status, 200);
    let settings = crate::accounts::settings(&world.ctx()).expect("settings");
    assert!(require_device(&world.ctx(), USER, "20170222-d58c-40e0-8051-b53adff38869", &settings).is_ok());
}
