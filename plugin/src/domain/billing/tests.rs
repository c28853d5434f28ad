//! Tests only, one kind of thing kept together (hence over 800 lines).

use super::state::MAX_SKIPPED_LISTED;
use super::*;
use crate::config::{DEFAULT_GAP_TIMEOUT_SECS, DEFAULT_PENDING_GRACE_SECS};
use crate::domain::transact;
use crate::errors::ApiError;
use crate::http::Response;
use crate::storage;
use crate::testing::Fixture;
use proptest::prelude::*;
use serde_json::{Value, json};

const USER: &str = "01-000000000000001";
const SUB: &str = "a99fbf70-6307-4acc-b61c-741ee9eef6c0";
const SUB2: &str = "a99fbf70-6307-4acc-b61c-741ee9eef6c1";
const PRODUCT: &str = "c0d01e35-5193-4cc2-9bfb-be20e0679498";

/// Milliseconds of the Fixture's clock start ([`crate::testing::FIXTURE_START`]).
const T0: i64 = crate::testing::FIXTURE_START as i64 * 1000;

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

fn post(world: &Fixture, body: &Value) -> Response {
    world.server("/api/v1/subscription/event", body.clone())
}

fn state(world: &Fixture, sub: &str) -> Subscription {
    storage::read(&world.kv, &storage::subscription_key(sub)).expect("read").expect("state")
}

fn enforced() -> Fixture {
    Fixture::with(&[("billing_enforcement", "evotor")])
}

#[test]
fn only_events_without_an_identity_are_refused() {
    let world = Fixture::new();
    let code = |r: &Response| {
        (
            r.status,
            r.body_json()["errors"][0]["code"].as_u64(),
            r.body_json()["errors"][0]["subject"].as_str().map(str::to_owned),
        )
    };
    for field in ["sequenceNumber", "subscriptionId", "userId"] {
        let mut missing = created(SUB, "P14DT", 1);
        missing.as_object_mut().expect("object").remove(field);
        assert_eq!(code(&post(&world, &missing)), (400, Some(2002), Some(field.into())), "{field}");
    }
    let zero = event(SUB, 0, "SubscriptionTerminated", json!({}));
    assert_eq!(code(&post(&world, &zero)).1, Some(2003));
    assert!(world.kv.keys().iter().all(|k| !k.starts_with("subs/")), "nothing stored");
    assert_eq!(post(&world, &json!("not an object")).status, 400);
}

#[test]
fn doubtful_events_are_kept_and_reported() {
    let world = Fixture::new();
    let no_plan = event(SUB, 1, "SubscriptionCreated", json!({"trialPeriodDuration": "two weeks"}));
    assert_eq!(post(&world, &no_plan).status, 200);
    let no_date = event(SUB, 2, "SubscriptionActivated", json!({"nextBillingDate": "tomorrow"}));
    assert_eq!(post(&world, &no_date).status, 200);
    let mut odd = event("not-a-uuid", 1, "SubscriptionCreated", json!({"planId": "p"}));
    odd["timestamp"] = json!("yesterday");
    assert_eq!(post(&world, &odd).status, 200);
    assert_eq!(state(&world, SUB).status, Some(Status::Active));
    let issues = world.call("GET", "/partner/v1/data-issues", Some("partner"), None).body_json();
    let problems: Vec<String> = issues["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["problem"].as_str().unwrap_or_default().to_owned())
        .collect();
    for expected in ["trialPeriodDuration", "nextBillingDate", "is not a uuid", "timestamp"] {
        assert!(problems.iter().any(|problem| problem.contains(expected)), "{expected} in {problems:?}");
    }
}

#[test]
fn both_vocabularies_and_every_timestamp_form_are_understood() {
    let world = Fixture::new();
    let mut created = created(SUB, "14", 2);
    created["timestamp"] = json!(T0 + 1000);
    assert_eq!(post(&world, &created).status, 200);
    assert_eq!(state(&world, SUB).trial_end, Some(T0 + 1000 + 14 * 86_400_000), "a number of days, Unix ms");
    let mut activated = event(SUB, 2, "Activated", json!({}));
    activated["timestamp"] = json!((T0 + 2000).to_string());
    assert_eq!(post(&world, &activated).status, 200, "nextBillingDate is optional");
    assert_eq!(state(&world, SUB).status, Some(Status::Active));
    post(&world, &event(SUB, 3, "DeviceAssignmentChanged", json!({"deviceNumber": "4"})));
    assert_eq!(state(&world, SUB).device_number, Some(4));
    post(&world, &event(SUB, 4, "CancellationRequested", json!({"nextBillingDate": T0 + 86_400_000})));
    assert_eq!(state(&world, SUB).status, Some(Status::TerminationRequested));
    post(&world, &event(SUB, 5, "Cancelled", json!({})));
    assert_eq!(state(&world, SUB).status, Some(Status::Terminated));
    post(&world, &event(SUB, 6, "Renewed", json!({})));
    assert_eq!(state(&world, SUB).status, Some(Status::Active));
}

#[test]
fn trials_end_after_their_length_and_at_once_when_left() {
    let world = Fixture::new();
    post(&world, &created(SUB, "P7D", 1));
    let s = state(&world, SUB);
    assert!(s.usable(T0 + 6 * 86_400_000, 0));
    assert!(!s.usable(T0 + 8 * 86_400_000, 0), "the trial is over");
    post(
        &world,
        &event(SUB, 2, "SubscriptionTerminationRequested", json!({"nextBillingDate": stamp(T0 + 30 * 86_400_000)})),
    );
    let s = state(&world, SUB);
    assert_eq!(s.status, Some(Status::Terminated), "nothing paid: leaving a trial ends it");
    assert!(!s.usable(T0 + 3000, 0));
}

#[test]
fn a_gap_holds_later_events_until_its_timeout_then_they_apply() {
    let world = enforced();
    let token = world.register(USER, "ivan");
    post(&world, &created(SUB, "P0DT", 1));
    // Event 2 never comes; 3 and 4 wait for it.
    post(&world, &event(SUB, 3, "SubscriptionActivated", json!({})));
    post(&world, &event(SUB, 4, "SubscriptionTermsChanged", json!({"deviceNumber": 3})));
    assert_eq!(state(&world, SUB).applied_through, 1);
    world.clock.advance(DEFAULT_GAP_TIMEOUT_SECS - 10);
    assert_eq!(world.whoami(&token), Err(1004), "pending past its grace, the activation still waits");
    world.clock.advance(20);
    assert_eq!(world.whoami(&token), Ok(USER.to_owned()), "past the timeout the waiting events apply");
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.skipped.clone(), s.device_number, s.gap_since), (4, vec![2], Some(3), None));
    let issues = world.call("GET", "/partner/v1/data-issues", Some("partner"), None).body_json();
    assert!(issues.to_string().contains("events 2..=2 never arrived"), "{issues}");
    assert_eq!(post(&world, &event(SUB, 2, "SubscriptionTerminated", json!({}))).status, 200, "too late: a duplicate");
    assert_eq!(state(&world, SUB).status, Some(Status::Active));
}

#[test]
fn a_gap_kept_by_the_first_storage_format_starts_its_clock_on_upgrade() {
    let world = enforced();
    let token = world.register(USER, "ivan");
    post(&world, &created(SUB, "P0DT", 1));
    post(&world, &event(SUB, 3, "SubscriptionActivated", json!({})));
    // The state as the first format wrote it: the waiting list inside, no gap clock.
    let mut old = serde_json::to_value(state(&world, SUB)).expect("JSON");
    old.as_object_mut().expect("object").remove("gapSince");
    old["waiting"] = json!([3]);
    let write = crate::kv::Write::Set(storage::subscription_key(SUB), old.to_string().into_bytes());
    crate::kv::Kv::commit(&world.kv, Vec::new(), vec![write]).expect("old format");
    world.clock.advance(DEFAULT_PENDING_GRACE_SECS + 10);
    assert_eq!(world.whoami(&token), Err(1004), "still waiting: the clock starts now");
    assert_eq!(state(&world, SUB).gap_since, Some(crate::testing::FIXTURE_START + DEFAULT_PENDING_GRACE_SECS + 10));
    world.clock.advance(DEFAULT_GAP_TIMEOUT_SECS);
    assert_eq!(world.whoami(&token), Ok(USER.to_owned()), "then the waiting activation applies");
    let stored = crate::kv::Kv::get(&world.kv, &storage::subscription_key(SUB)).expect("get").expect("state").value;
    assert!(!String::from_utf8_lossy(&stored).contains("waiting"), "written back in the new format");
}

#[test]
fn a_sequence_number_far_ahead_skips_a_huge_gap_without_listing_every_number() {
    // Found by fuzzing: the gap's every number was listed (u64::MAX of them: an abort).
    let world = Fixture::new();
    post(&world, &created(SUB, "P0DT", 1));
    for seq in [1 << 40, u64::MAX] {
        post(&world, &event(SUB, seq, "SubscriptionRenewed", json!({})));
    }
    let path = format!("/partner/v1/users/{USER}/subscriptions/{SUB}/resolve-gap");
    let resolved = world.call("POST", &path, Some("partner"), None);
    assert_eq!(resolved.status, 200);
    let state = resolved.body_json()["state"].clone();
    assert_eq!(state["appliedThrough"], u64::MAX);
    assert_eq!(state["skipped"].as_array().map(Vec::len), Some(MAX_SKIPPED_LISTED));
    assert_eq!(state["skipped"][0], 2);
    let issues = world.call("GET", "/partner/v1/data-issues", Some("partner"), None).body_json().to_string();
    assert!(issues.contains(&format!("events 2..={} never arrived", (1u64 << 40) - 1)), "{issues}");
}

#[test]
fn the_partner_may_resolve_a_gap_at_once() {
    let world = Fixture::new();
    post(&world, &created(SUB, "P0DT", 1));
    post(&world, &event(SUB, 4, "SubscriptionActivated", json!({})));
    let path = format!("/partner/v1/users/{USER}/subscriptions/{SUB}/resolve-gap");
    let resolved = world.call("POST", &path, Some("partner"), None);
    assert_eq!(resolved.status, 200);
    assert_eq!(resolved.body_json()["state"]["appliedThrough"], 4);
    assert_eq!(resolved.body_json()["state"]["skipped"], json!([2, 3]));
    assert_eq!(state(&world, SUB).status, Some(Status::Active));
    let other = format!("/partner/v1/users/02-000000000000002/subscriptions/{SUB}/resolve-gap");
    assert_eq!(world.call("POST", &other, Some("partner"), None).status, 404, "another user's subscription");
}

#[test]
fn events_get_through_whatever_the_state_of_the_account() {
    let world = enforced();
    let token = world.register(USER, "ivan");
    let account = world.call("GET", &format!("/partner/v1/users/{USER}"), Some("partner"), None).body_json()["account"]
        ["id"]
        .as_str()
        .expect("account")
        .to_owned();
    world.call("PATCH", &format!("/partner/v1/accounts/{account}"), Some("partner"), Some(json!({"disabled": true})));
    assert_eq!(world.whoami(&token), Err(1002), "a disabled account's token does not act");
    let own = world.call("POST", "/api/v1/subscription/event", Some(&token), Some(created(SUB, "P14DT", 1)));
    assert_eq!(own.status, 200, "but its events are taken");
    let install = json!({"id": "i-1", "timestamp": 1_504_168_645_290u64, "version": 1, "type": "ApplicationInstalled",
                         "data": {"productId": PRODUCT, "userId": USER}});
    assert_eq!(world.call("POST", "/api/v2/installation/event", Some(&token), Some(install)).status, 200);
    world.call("DELETE", &format!("/partner/v1/accounts/{account}"), Some("partner"), None);
    assert_eq!(post(&world, &event(SUB, 2, "SubscriptionRenewed", json!({}))).status, 200, "a deleted account too");
}

#[test]
fn the_life_cycle_follows_the_events() {
    let world = Fixture::new();
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
    let world = Fixture::new();
    let activated = event(SUB, 2, "SubscriptionActivated", json!({"nextBillingDate": stamp(T0 + 86_400_000)}));
    let terminated = event(SUB, 3, "SubscriptionTerminated", json!({}));
    assert_eq!(post(&world, &terminated).status, 200);
    assert_eq!(post(&world, &activated).status, 200);
    let s = state(&world, SUB);
    assert_eq!(
        (s.applied_through, s.gap_since, s.status),
        (0, Some(crate::testing::FIXTURE_START), None),
        "the gap shows"
    );
    assert_eq!(post(&world, &created(SUB, "P0DT", 1)).status, 200);
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.gap_since, s.status), (3, None, Some(Status::Terminated)));
    let before = world.kv.keys().len();
    let state_before = state(&world, SUB);
    assert_eq!(post(&world, &activated).status, 200, "a duplicate is still 200");
    assert_eq!((world.kv.keys().len(), state(&world, SUB)), (before, state_before));
}

#[test]
fn unknown_event_types_are_stored_with_200() {
    let world = Fixture::new();
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
    let e = entitlement(&world.ctx(), USER, &crate::config::settings(&world.ctx()).expect("settings"))
        .expect("entitlement");
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
    let e = entitlement(&world.ctx(), USER, &crate::config::settings(&world.ctx()).expect("settings"))
        .expect("entitlement");
    assert_eq!(e.licensed_devices, 5);
    post(&world, &event(SUB2, 2, "SubscriptionTerminated", json!({})));
    let e = entitlement(&world.ctx(), USER, &crate::config::settings(&world.ctx()).expect("settings"))
        .expect("entitlement");
    assert_eq!(e.licensed_devices, 3);
    let view = world.call("GET", &format!("/partner/v1/users/{USER}/entitlement"), Some("partner"), None).body_json();
    assert_eq!(view["entitlement"]["licensedDevices"], 3);
    let subs = world.call("GET", &format!("/partner/v1/users/{USER}/subscriptions"), Some("partner"), None).body_json();
    assert_eq!(subs["subscriptions"].as_array().map(Vec::len), Some(2));
    assert_eq!(subs["subscriptions"][1]["events"].as_array().map(Vec::len), Some(2));
}

#[test]
fn legacy_events_are_recorded_once() {
    let world = Fixture::new();
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

        let in_order = Fixture::new();
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
        let scrambled = Fixture::new();
        for body in &shuffled {
            prop_assert_eq!(post(&scrambled, body).status, 200);
        }
        for sub in [SUB, SUB2] {
            prop_assert_eq!(state(&scrambled, sub), state(&in_order, sub));
            prop_assert_eq!(state(&scrambled, sub).gap_since, None);
        }
    }
}

const DEV: [&str; 3] = [
    "20170222-d58c-40e0-8051-b53adff38860",
    "20170222-d58c-40e0-8051-b53adff38861",
    "20170222-d58c-40e0-8051-b53adff38862",
];

/// A document from `device` delivered with `token`; its answer's status.
fn document_from(world: &Fixture, token: &str, device: &str, n: u32) -> u16 {
    let doc = json!({"id": format!("5a188de4-49b8-4cb4-800e-{n:012}"), "type": "SELL", "version": "V2",
                     "store_id": "20181012-5c6d-4e7f-8091-a2b3c4d5e6f7", "device_id": device,
                     "close_date": "2026-11-27T09:41:12.000+0000", "body": {}});
    world.call("PUT", "/", Some(token), Some(doc)).status
}

#[test]
fn devices_beyond_the_license_are_refused_with_1005_and_the_rest_saved() {
    let world = enforced();
    let token = world.register(USER, "ivan");
    post(&world, &created(SUB, "P14DT", 2));
    let devices = json!([{"uuid": DEV[0], "name": "A"}, {"uuid": DEV[1], "name": "B"}, {"uuid": DEV[2], "name": "C"}]);
    let response = world.call("PUT", "/api/v1/inventories/devices", Some(&token), Some(devices.clone()));
    assert_eq!(response.status, 405);
    assert_eq!(
        response.body_json(),
        json!({"errors": [{"code": 1005, "reason": "not allowed", "subject": "deviceUuid", "value": DEV[2]}]})
    );
    assert_eq!(document_from(&world, &token, DEV[0], 1), 200);
    assert_eq!(document_from(&world, &token, &DEV[1].to_uppercase(), 2), 200);
    assert_eq!(document_from(&world, &token, DEV[2], 3), 405, "not licensed");

    // Updating the registered devices is fine; one more licensed device admits the third.
    let again =
        world.call("PUT", "/api/v1/inventories/devices", Some(&token), Some(json!([{"uuid": DEV[1], "name": "B2"}])));
    assert_eq!(again.status, 200);
    post(&world, &event(SUB, 2, "SubscriptionTermsChanged", json!({"deviceNumber": 3})));
    assert_eq!(world.call("PUT", "/api/v1/inventories/devices", Some(&token), Some(devices)).status, 200);
    assert_eq!(document_from(&world, &token, DEV[2], 3), 200);
    // Fewer licenses later: the devices registered first keep working.
    post(&world, &event(SUB, 3, "SubscriptionTermsChanged", json!({"deviceNumber": 1})));
    assert_eq!(document_from(&world, &token, DEV[0], 4), 200);
    assert_eq!(document_from(&world, &token, DEV[1], 5), 405);
}

#[test]
fn a_terminal_is_registered_on_its_first_document_while_the_licence_allows() {
    let world = enforced();
    let token = world.register(USER, "ivan");
    post(&world, &created(SUB, "P14DT", 2));
    assert_eq!(document_from(&world, &token, DEV[0], 1), 200, "not registered yet: registered now");
    assert_eq!(document_from(&world, &token, DEV[1], 2), 200);
    assert_eq!(document_from(&world, &token, DEV[2], 3), 405, "beyond the licence");
    let devices = world.call("GET", &format!("/partner/v1/users/{USER}/devices"), Some("partner"), None).body_json();
    let registered: Vec<&str> =
        devices["items"].as_array().expect("items").iter().filter_map(|d| d["uuid"].as_str()).collect();
    assert_eq!(registered, [DEV[0], DEV[1]]);
}

#[test]
fn without_enforcement_devices_are_not_limited() {
    let world = Fixture::new();
    let token = world.register(USER, "ivan");
    let devices: Vec<Value> = DEV.iter().map(|uuid| json!({"uuid": uuid})).collect();
    assert_eq!(world.call("PUT", "/api/v1/inventories/devices", Some(&token), Some(Value::Array(devices))).status, 200);
    assert_eq!(document_from(&world, &token, "20170222-d58c-40e0-8051-b53adff38869", 1), 200);
}

#[test]
fn licensed_devices_saturate_instead_of_wrapping() {
    let world = enforced();
    post(&world, &created(SUB, "P14DT", u64::MAX));
    let mut second = created(SUB2, "P14DT", 5);
    second["sequenceNumber"] = json!(1);
    post(&world, &second);
    let e = entitlement(&world.ctx(), USER, &crate::config::settings(&world.ctx()).expect("settings"))
        .expect("entitlement");
    assert_eq!(e.licensed_devices, u64::MAX);
}

const OTHER: &str = "02-000000000000002";

fn foreign_issues(world: &Fixture) -> Vec<Value> {
    let answer = world.call("GET", "/partner/v1/data-issues?limit=100", Some("partner"), None);
    let items = answer.body_json()["items"].as_array().cloned().unwrap_or_default();
    items.into_iter().filter(|issue| issue["entity"] == "subscription").collect()
}

#[test]
fn a_users_token_never_changes_another_users_subscription() {
    let world = enforced();
    let victim = world.register(USER, "ivan");
    let attacker = world.register(OTHER, "petr");
    assert_eq!(post(&world, &created(SUB, "P14DT", 1)).status, 200);
    assert_eq!(post(&world, &event(SUB, 2, "SubscriptionActivated", json!({}))).status, 200);
    let mut terminate = event(SUB, 3, "SubscriptionTerminated", json!({}));
    terminate["userId"] = json!(OTHER);
    let answer = world.call("POST", "/api/v1/subscription/event", Some(&attacker), Some(terminate.clone()));
    assert_eq!(answer.status, 200, "kept, not refused");
    let s = state(&world, SUB);
    assert_eq!((s.user_id.as_str(), s.applied_through, s.status), (USER, 2, Some(Status::Active)));
    assert_eq!(world.whoami(&victim), Ok(USER.to_owned()), "the owner is not cut off");
    assert!(world.whoami(&attacker).is_err(), "nor does the attacker gain it");
    let kept = storage::foreign_subscription_event_key(SUB, OTHER, 3);
    assert!(storage::read::<Value>(&world.kv, &kept).expect("read").is_some(), "the foreign event is kept");
    let issues = foreign_issues(&world);
    assert!(issues.iter().any(|i| i["userId"] == USER && i["problem"].as_str().unwrap_or("").contains("not applied")));
    // Evotor's own event 3 is not a duplicate of the foreign one.
    assert_eq!(post(&world, &event(SUB, 3, "SubscriptionRenewed", json!({}))).status, 200);
    assert_eq!(state(&world, SUB).applied_through, 3);
    // The server credential cannot move a confirmed subscription either.
    assert_eq!(post(&world, &terminate).status, 200);
    assert_eq!(state(&world, SUB).status, Some(Status::Active));
}

#[test]
fn evotor_names_the_owner_of_a_subscription_a_users_token_squatted() {
    let world = enforced();
    let victim = world.register(USER, "ivan");
    let squatter = world.register(OTHER, "petr");
    let mut squat = created(SUB, "P14DT", 50);
    squat["userId"] = json!(OTHER);
    let answer = world.call("POST", "/api/v1/subscription/event", Some(&squatter), Some(squat));
    assert_eq!(answer.status, 200);
    assert_eq!(state(&world, SUB).user_id, OTHER);
    // Evotor's real first event names the victim: it owns the subscription from now on.
    assert_eq!(post(&world, &created(SUB, "P14DT", 1)).status, 200);
    let s = state(&world, SUB);
    assert_eq!((s.user_id.as_str(), s.owner_confirmed, s.device_number), (USER, true, Some(1)));
    assert_eq!(world.whoami(&victim), Ok(USER.to_owned()));
    assert_eq!(world.whoami(&squatter), Err(1004), "the squatter's subscription marker is gone");
    let kept = storage::foreign_subscription_event_key(SUB, OTHER, 1);
    assert!(storage::read::<Value>(&world.kv, &kept).expect("read").is_some());
    assert!(foreign_issues(&world).iter().any(|i| i["problem"].as_str().unwrap_or("").contains("set aside")));
    // Evotor speaks for it now: even the owner's own token is kept, not applied; Evotor's event is.
    let renew = event(SUB, 2, "SubscriptionActivated", json!({}));
    assert_eq!(world.call("POST", "/api/v1/subscription/event", Some(&victim), Some(renew.clone())).status, 200);
    assert_eq!(state(&world, SUB).status, Some(Status::Trial));
    assert_eq!(post(&world, &renew).status, 200);
    assert_eq!(state(&world, SUB).status, Some(Status::Active));
}

#[test]
fn one_users_installation_event_id_never_makes_anothers_a_duplicate() {
    let world = enforced();
    let squatter = world.register(OTHER, "petr");
    let install = |user: &str, kind: &str| json!({"id": "evt-1", "timestamp": stamp(T0), "type": kind, "data": {"productId": PRODUCT, "userId": user}});
    let first =
        world.call("POST", "/api/v2/installation/event", Some(&squatter), Some(install(OTHER, "ApplicationInstalled")));
    assert_eq!(first.status, 200);
    assert_eq!(world.server("/api/v2/installation/event", install(USER, "ApplicationUninstalled")).status, 200);
    let state: Installation =
        storage::read(&world.kv, &storage::installation_key(USER)).expect("read").expect("the victim's event counted");
    assert!(!state.installed);
    // A re-delivery of either is still a duplicate.
    assert_eq!(world.server("/api/v2/installation/event", install(USER, "ApplicationUninstalled")).status, 200);
    let feed = world.call("GET", "/partner/v1/feed?limit=100", Some("partner"), None).body_json();
    let installs =
        feed["items"].as_array().expect("items").iter().filter(|e| e["kind"] == "installation.event").count();
    assert_eq!(installs, 2);
}

#[test]
fn once_evotor_speaks_a_user_tokens_events_are_kept_not_applied() {
    let world = enforced();
    let token = world.register(USER, "ivan");
    assert_eq!(post(&world, &created(SUB, "P14DT", 1)).status, 200);
    // The user pre-sends number 2 with a huge licence, and number 4.
    let greedy = event(SUB, 2, "SubscriptionActivated", json!({"deviceNumber": 1_000_000}));
    assert_eq!(world.call("POST", "/api/v1/subscription/event", Some(&token), Some(greedy)).status, 200);
    let early = event(SUB, 4, "SubscriptionRenewed", json!({}));
    assert_eq!(world.call("POST", "/api/v1/subscription/event", Some(&token), Some(early)).status, 200);
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.device_number), (1, Some(1)), "Evotor spoke first: nothing of the user's applied");
    assert!(foreign_issues(&world).iter().any(|i| i["problem"].as_str().unwrap_or("").contains("kept, not applied")));
    // Evotor's real 2, 3 and 4 apply as they come.
    assert_eq!(post(&world, &event(SUB, 2, "SubscriptionActivated", json!({"deviceNumber": 2}))).status, 200);
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.status, s.device_number), (2, Some(Status::Active), Some(2)));
    assert_eq!(post(&world, &event(SUB, 4, "SubscriptionTerminated", json!({}))).status, 200);
    assert_eq!(post(&world, &event(SUB, 3, "SubscriptionRenewed", json!({}))).status, 200);
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.status), (4, Some(Status::Terminated)), "Evotor's 4 applied, not the user's");
    // A user token cannot take a number back, nor add one.
    for seq in [4, 5] {
        let again = event(SUB, seq, "SubscriptionRenewed", json!({}));
        assert_eq!(world.call("POST", "/api/v1/subscription/event", Some(&token), Some(again)).status, 200);
    }
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.status), (4, Some(Status::Terminated)));
}

#[test]
fn a_user_tokens_events_before_evotor_spoke_do_not_outlive_evotors() {
    let world = enforced();
    let token = world.register(USER, "ivan");
    // The user's token sends 1–5, a huge licence, before Evotor says anything.
    let user_events = [
        created(SUB, "P14DT", 1_000_000),
        event(SUB, 2, "SubscriptionActivated", json!({"deviceNumber": 1_000_000})),
        event(SUB, 3, "SubscriptionActivated", json!({"deviceNumber": 1_000_000})),
        event(SUB, 4, "SubscriptionActivated", json!({"deviceNumber": 1_000_000})),
        event(SUB, 5, "SubscriptionActivated", json!({"deviceNumber": 1_000_000})),
    ];
    for body in user_events {
        assert_eq!(world.call("POST", "/api/v1/subscription/event", Some(&token), Some(body)).status, 200);
    }
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.status, s.device_number), (5, Some(Status::Active), Some(1_000_000)));
    // Evotor's own 1 and 2: its events alone make the state.
    assert_eq!(post(&world, &created(SUB, "P14DT", 1)).status, 200);
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.status, s.device_number), (1, Some(Status::Trial), Some(1)));
    assert_eq!(post(&world, &event(SUB, 2, "SubscriptionTerminated", json!({}))).status, 200);
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.status, s.device_number), (2, Some(Status::Terminated), Some(1)));
    let e = entitlement(&world.ctx(), USER, &crate::config::settings(&world.ctx()).expect("settings"))
        .expect("entitlement");
    assert!(!e.usable, "terminated, whatever the user's token sent");
    assert!(
        foreign_issues(&world)
            .iter()
            .any(|i| i["problem"].as_str().unwrap_or("").contains("5 event(s) the user's token")),
        "{:?}",
        foreign_issues(&world)
    );
    // Evotor's later numbers are not taken as duplicates of the user's.
    assert_eq!(post(&world, &event(SUB, 3, "SubscriptionActivated", json!({"deviceNumber": 3}))).status, 200);
    let s = state(&world, SUB);
    assert_eq!((s.applied_through, s.status, s.device_number), (3, Some(Status::Active), Some(3)));
}

#[test]
fn a_user_tokens_installation_event_never_outranks_evotors_nor_decides_the_future() {
    let world = enforced();
    let token = world.register(USER, "ivan");
    let install = |id: &str, kind: &str, at: i64| json!({"id": id, "timestamp": stamp(at), "type": kind, "data": {"productId": PRODUCT, "userId": USER}});
    let installed = || -> Installation {
        storage::read(&world.kv, &storage::installation_key(USER)).expect("read").expect("state")
    };
    // Dated a year ahead by the user's token: taken as of its arrival.
    let future = install("u-1", "ApplicationInstalled", T0 + 365 * 86_400_000);
    assert_eq!(world.call("POST", "/api/v2/installation/event", Some(&token), Some(future)).status, 200);
    assert!(installed().installed);
    assert!(installed().at <= T0, "not in the future");
    // Evotor's uninstall, even dated before the user's event, decides.
    assert_eq!(
        world.server("/api/v2/installation/event", install("s-1", "ApplicationUninstalled", T0 - 5000)).status,
        200
    );
    assert!(!installed().installed);
    // A user token's later event does not undo Evotor's.
    let later = install("u-2", "ApplicationInstalled", T0 - 1000);
    assert_eq!(world.call("POST", "/api/v2/installation/event", Some(&token), Some(later)).status, 200);
    assert!(!installed().installed);
    // Evotor's own later event does.
    assert_eq!(world.server("/api/v2/installation/event", install("s-2", "ApplicationInstalled", T0)).status, 200);
    assert!(installed().installed);
}

#[test]
fn billing_events_auth_server_refuses_user_tokens() {
    let world = Fixture::with(&[("billing_enforcement", "evotor"), ("billing_events_auth", "server")]);
    let token = world.register(USER, "ivan");
    let own = world.call("POST", "/api/v1/subscription/event", Some(&token), Some(created(SUB, "P14DT", 1)));
    assert_eq!((own.status, own.body_json()["errors"][0]["code"].as_u64()), (401, Some(1001)));
    let install = json!({"id": "i", "timestamp": stamp(T0), "type": "ApplicationInstalled", "data": {"userId": USER}});
    assert_eq!(world.call("POST", "/api/v2/installation/event", Some(&token), Some(install.clone())).status, 401);
    assert_eq!(world.call("POST", "/api/v1/user/event", Some(&token), Some(json!({"type": "X"}))).status, 401);
    assert_eq!(post(&world, &created(SUB, "P14DT", 1)).status, 200, "the server credential still works");
    assert_eq!(world.server("/api/v2/installation/event", install).status, 200);
    let bad = Fixture::with(&[("billing_events_auth", "users")]);
    assert_eq!(bad.server("/api/v1/subscription/event", created(SUB, "P14DT", 1)).status, 500);
}

#[test]
fn subscriptions_page_and_large_events_never_fail_the_listing() {
    let world = Fixture::new();
    let big = "x".repeat(1_500_000);
    for (n, sub) in [SUB, SUB2].iter().enumerate() {
        for seq in 1..=4u64 {
            let kind = if seq == 1 { "SubscriptionCreated" } else { "SubscriptionRenewed" };
            assert_eq!(post(&world, &event(sub, seq, kind, json!({"note": big, "n": n}))).status, 200);
        }
    }
    let page = |query: &str| {
        let answer =
            world.call("GET", &format!("/partner/v1/users/{USER}/subscriptions{query}"), Some("partner"), None);
        assert_eq!(answer.status, 200);
        assert!(answer.body.len() < 8 << 20, "{} bytes", answer.body.len());
        answer.body_json()
    };
    let first = page("");
    let items = first["subscriptions"].as_array().expect("items");
    assert_eq!(items.len(), 1, "the second does not fit beside the first's 6 MB of events");
    assert_eq!(items[0]["eventsComplete"], false, "4 events of 1.5 MB: those that fit");
    assert!(!items[0]["events"].as_array().expect("events").is_empty());
    let next = first["next"].as_str().expect("a next page");
    let second = page(&format!("?after={next}"));
    assert_eq!(second["subscriptions"][0]["state"]["subscriptionId"], SUB2);
    assert!(second["next"].is_null());
    let small = page("?limit=1");
    assert_eq!(small["subscriptions"].as_array().map(Vec::len), Some(1));
}

/// A user token's grant (see `domain::authorization`) decides as the records do.
mod grants {
    use super::*;
    use crate::clock::Clock as _;
    use crate::domain::authorization::grants::{GRANT_MAX_AGE_SECS, trusted};
    use crate::kv::Kv as _;

    /// What can happen to a user between two requests.
    #[derive(Debug, Clone)]
    enum Step {
        Event { second: bool, seq: u64, kind: u8 },
        Install { id: u8, installed: bool, at_secs: i64 },
        PartnerBills(bool),
        Disabled(bool),
        NewToken,
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (any::<bool>(), 1u64..6, 0u8..7).prop_map(|(second, seq, kind)| Step::Event { second, seq, kind }),
            1 => (0u8..4, any::<bool>(), 0i64..200_000).prop_map(|(id, installed, at_secs)| Step::Install { id, installed, at_secs }),
            1 => any::<bool>().prop_map(Step::PartnerBills),
            1 => any::<bool>().prop_map(Step::Disabled),
            1 => Just(Step::NewToken),
            2 => prop_oneof![0u64..120, 0u64..4 * 86_400].prop_map(Step::Wait),
        ]
    }

    fn account_id(world: &Fixture) -> String {
        let user = world.call("GET", &format!("/partner/v1/users/{USER}"), Some("partner"), None).body_json();
        user["account"]["id"].as_str().expect("account").to_owned()
    }

    fn take(world: &Fixture, step: &Step, tokens: &mut Vec<String>) {
        match *step {
            Step::Event { second, seq, kind } => {
                let sub = if second { SUB2 } else { SUB };
                let body = match kind {
                    0 => created(sub, "P14DT", 2),
                    1 => created(sub, "P0DT", 1),
                    2 => event(
                        sub,
                        seq,
                        "SubscriptionActivated",
                        json!({"nextBillingDate": stamp(T0 + 30 * 86_400_000)}),
                    ),
                    3 => {
                        event(sub, seq, "SubscriptionRenewed", json!({"nextBillingDate": stamp(T0 + 60 * 86_400_000)}))
                    }
                    4 => event(sub, seq, "SubscriptionTerminationRequested", json!({})),
                    5 => event(sub, seq, "SubscriptionTerminated", json!({})),
                    _ => event(sub, seq, "SubscriptionTermsChanged", json!({"deviceNumber": 3})),
                };
                assert_eq!(post(world, &body).status, 200);
            }
            Step::Install { id, installed, at_secs } => {
                let kind = if installed { "ApplicationInstalled" } else { "ApplicationUninstalled" };
                let body = json!({"id": format!("i{id}"), "timestamp": stamp(T0 + at_secs * 1000), "version": 1,
                    "type": kind, "data": {"productId": PRODUCT, "userId": USER}});
                assert_eq!(world.server("/api/v2/installation/event", body).status, 200);
            }
            Step::PartnerBills(flag) | Step::Disabled(flag) => {
                let field = if matches!(step, Step::PartnerBills(_)) { "hasBilling" } else { "disabled" };
                let path = format!("/partner/v1/accounts/{}", account_id(world));
                assert_eq!(world.call("PATCH", &path, Some("partner"), Some(json!({ field: flag }))).status, 200);
            }
            Step::NewToken => {
                let verified = world
                    .server("/api/v1/user/verify", json!({"userId": USER, "username": "ivan", "password": "pw-1"}));
                if verified.status == 200 {
                    tokens.push(verified.body_json()["token"].as_str().expect("token").to_owned());
                }
            }
            Step::Wait(secs) => world.clock.advance(secs),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// After any history of billing and account changes and of time,
        /// a trusted grant decides every token exactly as the records do,
        /// and after a request every token has one again.
        #[test]
        fn a_trusted_grant_decides_as_the_records(steps in prop::collection::vec(step(), 1..24)) {
            let world = enforced();
            let mut tokens = vec![world.register(USER, "ivan")];
            for step in &steps {
                take(&world, step, &mut tokens);
                let stale = crate::domain::authorization::grants::stale(&world.kv).expect("read");
                prop_assert!(stale.is_empty(), "after {:?}: {:?}", step, stale);
                for token in &tokens {
                    let (by_grant, by_records) = world.decisions(token);
                    if let Some(by_grant) = by_grant {
                        prop_assert_eq!(by_grant, by_records, "after {:?}", step);
                    }
                    // A request builds a missing or old grant again (unless the
                    // token no longer works at all, or a gap waits on its timeout).
                    let _ = world.whoami(token);
                    let now = world.clock.now_unix();
                    if world.whoami(token) != Err(1002) {
                        prop_assert!(world.grant(token).is_some_and(|grant| trusted(&grant, now)), "after {:?}", step);
                        let (by_grant, by_records) = world.decisions(token);
                        prop_assert_eq!(by_grant.unwrap_or(by_records), by_records);
                    }
                }
            }
        }
    }

    #[test]
    fn every_change_of_what_authorizes_takes_effect_at_once() {
        let world = enforced();
        let token = world.register(USER, "ivan");
        let built = world.grant(&token).expect("a grant from the registration's commit");
        assert_eq!(world.decisions(&token).0, Some(Err(1004)), "no subscription: decided by the grant");
        post(&world, &created(SUB, "P14DT", 2));
        assert_eq!(world.decisions(&token).0, Some(Ok(())), "the event's commit rebuilt it");
        assert_eq!(world.grant(&token).expect("grant").subscriptions.len(), 1);
        assert_ne!(world.grant(&token), Some(built));
        let path = format!("/partner/v1/accounts/{}", account_id(&world));
        world.call("PATCH", &path, Some("partner"), Some(json!({"disabled": true})));
        assert_eq!(world.decisions(&token).0, Some(Err(1002)), "a disabled account");
        world.call("PATCH", &path, Some("partner"), Some(json!({"disabled": false})));
        post(&world, &event(SUB, 2, "SubscriptionTerminated", json!({})));
        assert_eq!(world.decisions(&token).0, Some(Err(1004)), "terminated");
        assert_eq!(world.call("DELETE", &path, Some("partner"), None).status, 204);
        assert_eq!(world.whoami(&token), Err(1002), "the account's deletion revoked the token");
    }

    #[test]
    fn a_token_record_of_an_earlier_version_gets_its_grant_on_first_use() {
        let world = enforced();
        let token = world.register(USER, "ivan");
        post(&world, &created(SUB, "P14DT", 2));
        let key = storage::token_key(&crate::domain::tokens::hash(&token));
        let earlier = json!({"v": 1, "userId": USER}).to_string().into_bytes();
        world.kv.commit(Vec::new(), vec![crate::kv::Write::Set(key, earlier)]).expect("write");
        assert_eq!(world.grant(&token), None);
        assert_eq!(world.whoami(&token), Ok(USER.to_owned()), "the records decide");
        assert_eq!(world.decisions(&token).0, Some(Ok(())), "and the grant is built");
    }

    #[test]
    fn a_grant_a_version_before_grants_left_behind_is_not_used_past_its_age() {
        let world = enforced();
        let token = world.register(USER, "ivan");
        post(&world, &created(SUB, "P14DT", 2));
        assert_eq!(world.whoami(&token), Ok(USER.to_owned()));
        // An earlier plugin version (live again after a rollback) ends the
        // subscription without knowing grants.
        let mut ended = state(&world, SUB);
        ended.status = Some(Status::Terminated);
        let write = crate::kv::Write::Set(storage::subscription_key(SUB), storage::encode(&ended));
        world.kv.commit(Vec::new(), vec![write]).expect("write");
        assert_eq!(world.decisions(&token), (Some(Ok(())), Err(1004)), "the copy is stale for now");
        world.clock.advance(GRANT_MAX_AGE_SECS);
        assert_eq!(world.whoami(&token), Err(1004), "past its age the records decide");
        assert_eq!(world.decisions(&token), (Some(Err(1004)), Err(1004)), "and the grant is built again");
    }

    #[test]
    fn commits_changing_one_users_subscriptions_at_once_never_lose_one_from_the_grant() {
        let world = enforced();
        let token = world.register(USER, "ivan");
        post(&world, &created(SUB, "P14DT", 2));
        // Another request adds a second subscription after this commit
        // built its grant and before it reaches the store.
        let commits = std::cell::Cell::new(0);
        let kv = crate::testing::CommitThrough {
            kv: &world.kv,
            commit: Box::new(|kv, checks, writes| {
                commits.set(commits.get() + 1);
                if commits.get() == 1 {
                    assert_eq!(post(&world, &created(SUB2, "P14DT", 1)).status, 200);
                }
                kv.commit(checks, writes)
            }),
        };
        let ctx = crate::Ctx { kv: &kv, ..world.ctx() };
        transact(&ctx, |txn| -> Result<(), ApiError> {
            let mut state = txn.get::<Subscription>(&storage::subscription_key(SUB))?.expect("state");
            state.status = Some(Status::Active);
            txn.put(&storage::subscription_key(SUB), &state);
            Ok(())
        })
        .expect("commit");
        assert_eq!(commits.get(), 2, "the token record read for the grant made the two commits conflict");
        let grant = world.grant(&token).expect("grant");
        assert_eq!(grant.subscriptions.len(), 2, "{grant:?}");
        assert_eq!(world.decisions(&token).0, Some(Ok(())));
    }

    #[test]
    fn a_user_with_more_subscriptions_than_a_grant_holds_is_decided_by_the_records() {
        let world = enforced();
        let token = world.register(USER, "ivan");
        for n in 0..=crate::domain::authorization::grants::MAX_GRANT_SUBSCRIPTIONS {
            let sub = format!("a99fbf70-6307-4acc-b61c-{n:012}");
            assert_eq!(post(&world, &created(&sub, "P14DT", 1)).status, 200);
        }
        let grant = world.grant(&token).expect("grant");
        assert!(grant.partial && grant.subscriptions.is_empty());
        assert_eq!(world.decisions(&token), (None, Ok(())));
        assert_eq!(world.whoami(&token), Ok(USER.to_owned()));
    }
}
