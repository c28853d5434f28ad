use super::*;
use crate::testing::FakeEvotor;
use evogate_plugin::outgoing::Scripted;
use serde_json::json;

const ALICE: &str = "01-000000000000001";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";

/// Answers one request with `body` and keeps what was asked.
fn answering(status: u16, body: Value) -> Scripted {
    Scripted::new([Ok(outgoing::Response { status, headers: Vec::new(), body: body.to_string().into_bytes() })])
}

#[test]
fn a_session_forwards_only_the_terminal_apps_identity_to_the_evotor_plugin() {
    let http = answering(200, json!({"userId": ALICE, "store": {"uuid": STORE, "known": true}, "device": null}));
    let request = http::Request::new("GET", "/loyalty/v1/summary")
        .header("Authorization", "Bearer t")
        .header("X-Evotor-Store-Uuid", STORE)
        .header("cookie", "not forwarded");
    let session = Evotor::new(&http).session(&request).expect("session");
    assert_eq!(session.user_id, ALICE);
    assert_eq!(session.store, Some(Named { uuid: STORE.into(), known: true }));
    let sent = &http.sent()[0];
    assert_eq!(sent.url, "http://evotor.evogate.internal/extension/v1/session");
    assert_eq!(
        sent.headers,
        [("authorization".to_owned(), "Bearer t".to_owned()), ("x-evotor-store-uuid".to_owned(), STORE.to_owned())]
    );
}

#[test]
fn answers_of_a_later_version_of_the_api_are_read_by_this_one() {
    // A version only grows: fields this client does not know are skipped.
    let http = answering(
        200,
        json!({"items": [{"cursor": "1", "kind": "k", "at": 5, "userId": null, "data": {}, "new": 1}],
               "next": "1", "alsoNew": true}),
    );
    let page = Evotor::named(&http, "evotor-2").feed(None, 10, Some(ALICE)).expect("page");
    assert_eq!(page.items[0].kind, "k");
    assert_eq!(
        http.sent()[0].url,
        format!("http://evotor-2.evogate.internal/extension/v1/feed?limit=10&userId={ALICE}")
    );
}

#[test]
fn a_refusal_is_passed_on_to_the_terminal_app_as_the_evotor_plugin_wrote_it() {
    let body = json!({"errors": [{"code": 1003, "reason": "token expired"}]});
    let http = answering(401, body.clone());
    let refused = Evotor::new(&http).session(&http::Request::new("GET", "/")).expect_err("refused");
    assert_eq!(refused.code(), Some(1003));
    let answer = refused.response();
    assert_eq!((answer.status, answer.body_json()), (401, body));

    let unreachable = Evotor::new(&Scripted::new([Err(outgoing::Error::Denied)])).user(ALICE).expect_err("denied");
    assert_eq!(unreachable, Error::Unreachable(outgoing::Error::Denied));
    assert_eq!(unreachable.response().status, 502);
    let late = Evotor::new(&Scripted::new([Err(outgoing::Error::Timeout)])).user(ALICE).expect_err("late");
    assert_eq!(late.response().status, 504);
    let garbled = Evotor::new(&answering(200, json!([1]))).stores(ALICE, None, 5).expect_err("not a page");
    assert!(matches!(garbled, Error::Malformed(_)));
}

#[test]
fn sale_totals_are_read_from_either_format_in_kopecks() {
    let doc = |format: &str, document: Value| Document {
        id: "d".into(),
        store_uuid: STORE.into(),
        kind: "SELL".into(),
        format: format.into(),
        user_id: ALICE.into(),
        document,
    };
    assert_eq!(doc("V1", json!({"closeSum": "3548"})).total_kopecks(), Some(354_800));
    assert_eq!(doc("V1", json!({"closeSum": 12.5})).total_kopecks(), Some(1250));
    assert_eq!(doc("V2", json!({"body": {"result_sum": 217.82}})).total_kopecks(), Some(21_782));
    assert_eq!(doc("V2", json!({"body": {"result_sum": "0,999"}})).total_kopecks(), Some(100));
    assert_eq!(doc("V2", json!({"closeSum": "1"})).total_kopecks(), None, "a V2 total is in its body");
    assert_eq!(doc("V1", json!({"closeSum": "12a"})).total_kopecks(), None);
    assert_eq!(doc("V1", json!({"closeSum": "-1.5"})).total_kopecks(), Some(-150));
}

#[test]
fn the_fake_answers_as_the_evotor_plugin_does() {
    let fake = FakeEvotor::new()
        .user(ALICE, "tok")
        .refusing("old", 401, 1003)
        .store(ALICE, STORE)
        .store("02-000000000000002", "20170228-f4f1-401b-80fa-9ecca8451ffc")
        .partner_token("partner");
    let evotor = Evotor::new(&fake);
    let terminal = |token: &str, store: &str| {
        http::Request::new("GET", "/")
            .header("authorization", &format!("Bearer {token}"))
            .header("x-evotor-store-uuid", store)
    };
    assert_eq!(evotor.session(&terminal("tok", STORE)).expect("ok").store.map(|s| s.known), Some(true));
    assert_eq!(evotor.session(&terminal("old", STORE)).expect_err("expired").code(), Some(1003));
    assert_eq!(evotor.session(&terminal("nope", STORE)).expect_err("unknown").code(), Some(1002));
    let foreign = evotor.session(&terminal("tok", "20170228-f4f1-401b-80fa-9ecca8451ffc")).expect_err("foreign");
    assert_eq!(foreign.response().status, 403);
    assert!(evotor.check_partner(&http::Request::new("GET", "/").header("authorization", "Bearer partner")).is_ok());
    assert!(evotor.check_partner(&http::Request::new("GET", "/")).is_err());

    let cursor = fake.receive_document(ALICE, STORE, json!({"id": "d-1", "type": "SELL", "closeSum": "10"}));
    let page = evotor.feed(None, 10, None).expect("feed");
    assert_eq!((page.items.len(), page.next.as_deref()), (1, Some(cursor.as_str())));
    assert_eq!(evotor.feed(Some(&cursor), 10, None).expect("feed").next.as_deref(), Some(cursor.as_str()));
    let document = evotor.document(ALICE, STORE, "d-1").expect("read").expect("found");
    assert_eq!(document.total_kopecks(), Some(1000));
    assert_eq!(evotor.document("02-000000000000002", STORE, "d-1").expect("read"), None, "not his store");
    assert_eq!(evotor.document(ALICE, STORE, "d-2").expect("read"), None);
}
