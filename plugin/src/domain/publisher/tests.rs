//! The publisher token: renewed before it expires, the refresh token the
//! OAuth server rotates kept, a refusal recorded once and nothing asked
//! after it, a renewal that lost to another one using the winner's token.

use super::*;
use crate::clock::Clock as _;
use crate::kv::{Kv as _, MemKv};
use crate::outgoing::{Error, Http, Request, Response, Scripted};
use crate::testing::{FIXTURE_START, Fixture};

const OAUTH: [(&str, &str); 4] = [
    ("evotor_app_id", "app-1"),
    ("evotor_oauth_client_id", "client"),
    ("evotor_oauth_client_secret", "secret"),
    ("evotor_oauth_refresh_token", "seed+1"),
];

fn answer(status: u16, body: Value) -> Result<Response, Error> {
    Ok(Response { status, headers: Vec::new(), body: body.to_string().into_bytes() })
}

fn grant(access: &str, refresh: Option<&str>) -> Result<Response, Error> {
    let mut body = json!({"access_token": access, "token_type": "bearer", "expires_in": 1799, "scope": "event:read"});
    if let Some(refresh) = refresh {
        body["refresh_token"] = refresh.into();
    }
    answer(200, body)
}

fn cloud(world: &Fixture) -> CloudSettings {
    CloudSettings::read(&world.config).expect("settings")
}

fn stored(world: &Fixture) -> PublisherState {
    storage::read(&world.kv, KEY).expect("read").expect("stored")
}

fn partner(world: &Fixture, path: &str) -> Value {
    let response = world.call("GET", path, Some("partner"), None);
    assert_eq!(response.status, 200, "{path}: {}", String::from_utf8_lossy(&response.body));
    response.body_json()
}

fn feed_kinds(world: &Fixture) -> Vec<Value> {
    let feed = partner(world, "/partner/v1/feed?limit=1000");
    feed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["kind"] == "publisher-token.refused")
        .cloned()
        .collect()
}

#[test]
fn an_expired_token_is_renewed_and_the_rotated_refresh_token_is_kept() {
    let mut world = Fixture::with(&OAUTH);
    world.http = Scripted::new([grant("access-1", Some("refresh-2")), grant("access-2", None)]);
    let renewed = token(&world.ctx(), &cloud(&world), 20).expect("renewed");
    assert_eq!((renewed.bearer(), renewed.mode), ("access-1", Mode::OAuth));
    let sent = world.http.sent();
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].url, "https://oauth.evotor.ru/oauth/token", "the refresh token never in the URL");
    assert_eq!(sent[0].body, b"grant_type=refresh_token&refresh_token=seed%2B1");
    assert!(sent[0].headers.contains(&("authorization".into(), "Basic Y2xpZW50OnNlY3JldA==".into())), "{sent:?}");
    let state = stored(&world);
    assert_eq!(state.refresh_token.as_deref(), Some("refresh-2"));
    assert_eq!((state.expires_at, state.refreshed_at), (Some(FIXTURE_START + 1799), Some(FIXTURE_START)));

    // Within its lifetime the token is used as it is.
    world.clock.advance(1000);
    assert_eq!(token(&world.ctx(), &cloud(&world), 20).expect("stored").bearer(), "access-1");
    assert_eq!(world.http.sent().len(), 1, "no request while the token lives");

    // Within a minute of its end it is renewed with the refresh token the server handed out.
    world.clock.advance(1799 - 1000 - 59);
    assert_eq!(token(&world.ctx(), &cloud(&world), 20).expect("renewed again").bearer(), "access-2");
    let sent = world.http.sent();
    assert!(sent[1].body.ends_with(b"refresh_token=refresh-2"), "{:?}", sent[1].body);
    assert_eq!(stored(&world).refresh_token.as_deref(), Some("refresh-2"), "kept when the answer names none");

    let view = partner(&world, "/partner/v1/publisher");
    assert_eq!((view["mode"].as_str(), view["state"].as_str()), (Some("oauth"), Some("usable")), "{view}");
    assert_eq!(view["expiresAt"], FIXTURE_START + 1740 + 1799);
    let text = view.to_string();
    assert!(!text.contains("access-2") && !text.contains("refresh-2") && !text.contains("seed"), "{text}");
}

#[test]
fn a_refused_renewal_is_told_once_nothing_is_asked_after_it_and_a_new_seed_starts_afresh() {
    let mut world = Fixture::with(&OAUTH);
    world.http = Scripted::new([answer(400, json!({"error": "invalid_grant", "error_description": "expired"}))]);
    let refused = token(&world.ctx(), &cloud(&world), 20);
    assert!(matches!(&refused, Err(Unusable::Refused(Refusal { status: 400, by_renewal: true, .. }))), "{refused:?}");
    assert_eq!(feed_kinds(&world).len(), 1);
    assert_eq!(feed_kinds(&world)[0]["data"], json!({"status": 400, "path": "/oauth/token"}));
    let issues = partner(&world, "/partner/v1/data-issues");
    assert!(issues["items"][0]["problem"].as_str().is_some_and(|p| p.contains("invalid_grant: expired")), "{issues}");
    assert_eq!(issues["items"][0]["entity"], "publisher-token");
    let view = partner(&world, "/partner/v1/publisher");
    assert_eq!((view["state"].as_str(), view["refused"]["status"].as_u64()), (Some("refused"), Some(400)));

    // The sync job's feed asks nothing, neither the OAuth server nor the cloud.
    world.clock.advance(86_400);
    crate::domain::sync::run(&world.ctx(), world.clock.now_unix() + 30).expect("a run");
    assert!(token(&world.ctx(), &cloud(&world), 20).is_err());
    assert_eq!(world.http.sent().len(), 1, "nothing asked while refused");
    assert_eq!(feed_kinds(&world).len(), 1, "told once");

    // Another seed is another configuration: renewed with it.
    world.config.0.insert("evotor_oauth_refresh_token".into(), "seed-2".into());
    world.http = Scripted::new([grant("access-9", Some("refresh-9"))]);
    assert_eq!(token(&world.ctx(), &cloud(&world), 20).expect("afresh").bearer(), "access-9");
    assert!(world.http.sent()[0].body.ends_with(b"refresh_token=seed-2"));
    assert_eq!(partner(&world, "/partner/v1/publisher")["state"], "usable");
}

#[test]
fn a_failing_oauth_server_is_a_retry_never_a_refusal() {
    let mut world = Fixture::with(&OAUTH);
    world.http = Scripted::new([answer(503, json!({})), Err(Error::Timeout), grant("access-1", None)]);
    for _ in 0..2 {
        let failed = token(&world.ctx(), &cloud(&world), 20);
        assert!(matches!(failed, Err(Unusable::Retry { .. })), "{failed:?}");
    }
    assert!(feed_kinds(&world).is_empty());
    let view = partner(&world, "/partner/v1/publisher");
    assert_eq!(view["state"], "usable");
    assert!(view["lastError"]["message"].as_str().is_some_and(|m| m.contains("no answer")), "{view}");
    assert_eq!(token(&world.ctx(), &cloud(&world), 20).expect("renewed").bearer(), "access-1");
    assert_eq!(stored(&world).refresh_token.as_deref(), Some("seed+1"), "the seed, until the server hands out another");
    assert_eq!(partner(&world, "/partner/v1/publisher")["lastError"], Value::Null);
}

/// A client whose answer comes after another instance stored its own renewal.
struct Racing<'a> {
    kv: &'a MemKv,
    winner: PublisherState,
    answer: Scripted,
}

impl Http for Racing<'_> {
    fn send(&self, request: &Request) -> Result<Response, Error> {
        let bytes = serde_json::to_vec(&self.winner).expect("json");
        self.kv.commit(vec![], vec![crate::kv::Write::Set(KEY.into(), bytes)]).expect("the winner's commit");
        self.answer.send(request)
    }
}

#[test]
fn a_renewal_that_lost_to_another_uses_the_winners_token_and_records_no_refusal() {
    let world = Fixture::with(&OAUTH);
    let cloud = cloud(&world);
    let configured = configured(cloud.publisher.as_ref().expect("publisher"));
    let winner = PublisherState {
        v: storage::FORMAT,
        configured,
        access_token: Some("winner".into()),
        refresh_token: Some("refresh-w".into()),
        expires_at: Some(FIXTURE_START + 1799),
        refreshed_at: Some(FIXTURE_START),
        ..PublisherState::default()
    };
    // The winner spent the seed: this renewal is refused, which is not this token's refusal.
    let http =
        Racing { kv: &world.kv, winner, answer: Scripted::new([answer(400, json!({"error": "invalid_grant"}))]) };
    let ctx = Ctx { http: &http, ..world.ctx() };
    assert_eq!(token(&ctx, &cloud, 20).expect("the winner's").bearer(), "winner");
    assert!(stored(&world).refused.is_none());
    assert!(feed_kinds(&world).is_empty());
}

#[test]
fn a_renewal_granted_while_another_was_refused_with_the_same_refresh_token_stands() {
    let world = Fixture::with(&OAUTH);
    let cloud = cloud(&world);
    let configured = configured(cloud.publisher.as_ref().expect("publisher"));
    // The other renewal asked with the seed after this one spent it, and its refusal committed first.
    let refused = PublisherState {
        v: storage::FORMAT,
        configured,
        refused: Some(Refusal {
            status: 400,
            message: "invalid_grant".into(),
            at: FIXTURE_START,
            path: TOKEN_PATH.into(),
            by_renewal: true,
        }),
        ..PublisherState::default()
    };
    let http = Racing { kv: &world.kv, winner: refused, answer: Scripted::new([grant("access-1", Some("refresh-2"))]) };
    let ctx = Ctx { http: &http, ..world.ctx() };
    assert_eq!(token(&ctx, &cloud, 20).expect("this grant").bearer(), "access-1");
    let state = stored(&world);
    assert_eq!((state.refused, state.refresh_token.as_deref()), (None, Some("refresh-2")), "the rotated token kept");
}

#[test]
fn the_api_refusing_a_personal_token_stops_the_feed_until_another_token_is_configured() {
    let mut world = Fixture::with(&[("evotor_app_id", "app-1"), ("evotor_publisher_token", "pub")]);
    world.http = Scripted::new([answer(401, json!({"message": "token revoked"}))]);
    crate::domain::sync::run(&world.ctx(), FIXTURE_START + 30).expect("a run");
    assert_eq!(world.http.sent().len(), 1);
    assert!(world.http.sent()[0].url.contains("/api/apps/app-1/events"));
    assert_eq!(feed_kinds(&world)[0]["data"], json!({"status": 401, "path": "/api/apps/app-1/events"}));
    let view = partner(&world, "/partner/v1/publisher");
    assert_eq!((view["mode"].as_str(), view["state"].as_str()), (Some("personal"), Some("refused")), "{view}");
    world.clock.advance(3600);
    crate::domain::sync::run(&world.ctx(), world.clock.now_unix() + 30).expect("a run");
    assert_eq!(world.http.sent().len(), 1, "nothing asked with a refused token");
    world.config.0.insert("evotor_publisher_token".into(), "pub-2".into());
    assert_eq!(token(&world.ctx(), &cloud(&world), 20).expect("another token").bearer(), "pub-2");
    assert_eq!(partner(&world, "/partner/v1/publisher")["state"], "usable");
}

#[test]
fn without_the_publisher_settings_there_is_no_token() {
    let world = Fixture::new();
    assert_eq!(token(&world.ctx(), &cloud(&world), 20), Err(Unusable::Missing));
    let view = partner(&world, "/partner/v1/publisher");
    assert_eq!((view["state"].as_str(), view["appId"].clone()), (Some("missing"), Value::Null));
}
