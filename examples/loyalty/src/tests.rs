use super::*;
use evogate_evotor::testing::FakeEvotor;
use evogate_plugin::clock::ManualClock;
use evogate_plugin::config::MapConfig;
use evogate_plugin::kv::MemKv;
use evogate_plugin::outgoing::{self, Scripted};

const ALICE: &str = "01-000000000000001";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const BOBS_STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffc";

struct Shop {
    kv: MemKv,
    config: MapConfig,
    clock: ManualClock,
    evotor: FakeEvotor,
}

impl Shop {
    /// Alice's store, the ERP answering `erp` in order.
    fn new(erp: Vec<Result<outgoing::Response, outgoing::Error>>) -> Self {
        let evotor = FakeEvotor::new()
            .user(ALICE, "alice-token")
            .store(ALICE, STORE)
            .store("02-000000000000002", BOBS_STORE)
            .partner_token("partner")
            .with_http(Scripted::new(erp));
        let config = MapConfig::from([
            ("erp_url", "https://erp.example/sales"),
            ("erp_secret", "erp-secret"),
            ("relay_backoff_secs", "30"),
            ("relay_max_attempts", "3"),
        ]);
        Self { kv: MemKv::default(), config, clock: ManualClock::at(1_800_000_000), evotor }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx { kv: &self.kv, config: &self.config, clock: &self.clock, http: &self.evotor }
    }

    fn run(&self) {
        let run = JobRun { job: "relay".into(), scheduled_at_ms: 0, timeout_ms: 60_000, manual: false };
        Loyalty::run_job(&self.ctx(), &run).expect("the run");
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = Request::new("GET", path).header("x-evogate-base-path", "/loyalty");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        Loyalty::handle(&self.ctx(), &request)
    }

    fn summary(&self, store: &str) -> Response {
        self.get("/loyalty/v1/summary", &[("authorization", "Bearer alice-token"), ("x-evotor-store-uuid", store)])
    }

    /// The requests the ERP got.
    fn erp(&self) -> Vec<outgoing::Request> {
        self.evotor.http().sent()
    }
}

fn accepted() -> Result<outgoing::Response, outgoing::Error> {
    Ok(outgoing::Response { status: 200, headers: Vec::new(), body: Vec::new() })
}

fn failing(status: u16) -> Result<outgoing::Response, outgoing::Error> {
    Ok(outgoing::Response { status, headers: Vec::new(), body: Vec::new() })
}

fn v1_sale(id: &str, sum: &str) -> Value {
    json!({"uuid": id, "id": id, "type": "SELL", "version": "V1", "closeSum": sum})
}

fn v2_sale(id: &str, sum: f64) -> Value {
    json!({"id": id, "type": "SELL", "version": "V2", "body": {"result_sum": sum}})
}

#[test]
fn the_summary_counts_each_sale_of_the_terminals_store_whatever_its_format() {
    let shop = Shop::new(vec![accepted(), accepted()]);
    assert_eq!(shop.summary(STORE).body_json(), json!({"storeId": STORE, "sales": 0, "total": 0}));
    shop.evotor.receive_document(ALICE, STORE, v1_sale("d-1", "3548"));
    shop.evotor.receive_document(ALICE, STORE, json!({"id": "d-2", "type": "PAYBACK", "closeSum": "10"}));
    shop.evotor.receive_document(ALICE, STORE, v2_sale("d-3", 217.82));
    shop.run();
    shop.run();
    assert_eq!(shop.summary(STORE).body_json(), json!({"storeId": STORE, "sales": 2, "total": 3765.82}));
    assert_eq!(shop.erp().len(), 2, "two sales, each posted once");
}

#[test]
fn a_terminal_call_that_does_not_authenticate_gets_evotors_answer() {
    let shop = Shop::new(Vec::new());
    let bad = shop.get("/loyalty/v1/summary", &[("authorization", "Bearer nope"), ("x-evotor-store-uuid", STORE)]);
    assert_eq!((bad.status, bad.body_json()["errors"][0]["code"].as_u64()), (401, Some(1002)));
    assert_eq!(shop.summary(BOBS_STORE).status, 403, "another user's store");
    let no_store = shop.get("/loyalty/v1/summary", &[("authorization", "Bearer alice-token")]);
    assert_eq!(
        (no_store.status, no_store.body_json()["errors"][0]["subject"].as_str()),
        (400, Some("X-Evotor-Store-Uuid"))
    );
    assert_eq!(shop.get("/loyalty/v1/nothing", &[]).status, 404);
}

#[test]
fn a_sale_is_posted_signed_retried_with_a_doubling_delay_and_delivered_once() {
    let shop = Shop::new(vec![failing(503), Err(outgoing::Error::Timeout), accepted()]);
    shop.evotor.receive_document(ALICE, STORE, v1_sale("d-1", "10"));
    shop.run();
    assert_eq!(shop.erp().len(), 1, "first attempt: 503");
    shop.clock.advance(29);
    shop.run();
    assert_eq!(shop.erp().len(), 1, "not before relay_backoff_secs");
    shop.clock.advance(1);
    shop.run();
    assert_eq!(shop.erp().len(), 2, "second attempt: a time-out");
    shop.clock.advance(59);
    shop.run();
    assert_eq!(shop.erp().len(), 2, "the delay doubled");
    shop.clock.advance(1);
    shop.run();
    shop.clock.advance(3600);
    shop.run();
    let sent = shop.erp();
    assert_eq!(sent.len(), 3, "accepted at the third attempt, and never again");
    let body = &sent[2].body;
    assert_eq!(
        sent.iter().map(|request| &request.body).collect::<std::collections::BTreeSet<_>>().len(),
        1,
        "same bytes each time"
    );
    let header = |name: &str| sent[2].headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    assert_eq!(header("idempotency-key").as_deref(), Some("d-1"));
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"erp-secret").expect("key");
    hmac::Mac::update(&mut mac, body);
    assert_eq!(header("x-signature"), Some(hex::encode(hmac::Mac::finalize(mac).into_bytes())));
    let posted: Value = serde_json::from_slice(body).expect("json");
    assert_eq!((posted["documentId"].as_str(), posted["total"].as_i64()), (Some("d-1"), Some(10)));
    assert_eq!(sent[2].url, "https://erp.example/sales");
}

#[test]
fn after_the_last_attempt_a_sale_waits_in_the_dead_letters_until_replayed() {
    let shop = Shop::new(vec![failing(500), failing(502), failing(503), accepted()]);
    shop.evotor.receive_document(ALICE, STORE, v1_sale("d-1", "10"));
    for _ in 0..3 {
        shop.run();
        shop.clock.advance(3600);
    }
    assert_eq!(shop.erp().len(), 3, "relay_max_attempts");
    shop.run();
    assert_eq!(shop.erp().len(), 3, "dead letters are not retried by themselves");

    assert_eq!(shop.get("/loyalty/v1/dead-letters", &[]).status, 401, "the partner's token only");
    assert_eq!(shop.get("/loyalty/v1/dead-letters", &[("authorization", "Bearer alice-token")]).status, 401);
    let dead = shop.get("/loyalty/v1/dead-letters", &[("authorization", "Bearer partner")]).body_json();
    assert_eq!(dead["items"][0]["documentId"], "d-1");
    assert_eq!(dead["items"][0]["attempts"], 3);
    assert_eq!(dead["items"][0]["lastError"], "the ERP answered 503");

    let replay = |id: &str, bearer: &str| {
        let request = Request::new("POST", &format!("/loyalty/v1/dead-letters/{id}/replay"))
            .header("x-evogate-base-path", "/loyalty")
            .header("authorization", bearer);
        Loyalty::handle(&shop.ctx(), &request).status
    };
    assert_eq!(replay("d-1", "Bearer nope"), 401);
    assert_eq!(replay("d-9", "Bearer partner"), 404);
    assert_eq!(replay("d-1", "Bearer partner"), 202);
    shop.run();
    assert_eq!(shop.erp().len(), 4, "replayed and accepted");
    let dead = shop.get("/loyalty/v1/dead-letters", &[("authorization", "Bearer partner")]).body_json();
    assert_eq!(dead["items"], json!([]));
}

#[test]
fn a_client_error_of_the_erp_is_not_retried() {
    let shop = Shop::new(vec![failing(422)]);
    shop.evotor.receive_document(ALICE, STORE, v1_sale("d-1", "10"));
    shop.run();
    let dead = shop.get("/loyalty/v1/dead-letters", &[("authorization", "Bearer partner")]).body_json();
    assert_eq!((dead["items"][0]["attempts"].as_u64(), shop.erp().len()), (Some(1), 1));
}

#[test]
fn the_position_in_the_feed_never_skips_nor_repeats_a_sale() {
    let shop = Shop::new((0..20).map(|_| accepted()).collect());
    for n in 0..5 {
        shop.evotor.receive_document(ALICE, STORE, v1_sale(&format!("d-{n}"), "1"));
    }
    shop.run();
    // More sales among other entries, read from where the last run left off.
    for n in 5..8 {
        shop.evotor.receive_document(ALICE, STORE, v1_sale(&format!("d-{n}"), "1"));
        shop.evotor.announce("products.upserted", Some(ALICE), json!({"storeUuid": STORE}));
    }
    shop.run();
    shop.run();
    assert_eq!(shop.summary(STORE).body_json()["sales"], 8);
    let keys: std::collections::BTreeSet<String> = shop
        .erp()
        .iter()
        .filter_map(|request| {
            request.headers.iter().find(|(key, _)| key == "idempotency-key").map(|(_, id)| id.clone())
        })
        .collect();
    assert_eq!((keys.len(), shop.erp().len()), (8, 8), "each sale posted once");
}

#[test]
fn without_the_erps_settings_the_run_fails_saying_which() {
    let mut shop = Shop::new(Vec::new());
    shop.config.0.remove("erp_url");
    let run = JobRun { job: "relay".into(), scheduled_at_ms: 0, timeout_ms: 60_000, manual: false };
    assert_eq!(Loyalty::run_job(&shop.ctx(), &run), Err("erp_url is not set".into()));
}

#[test]
fn the_settings_check_names_a_mistyped_key_and_a_bad_number_and_takes_an_unset_erp() {
    use evogate_plugin::config::{MapConfig, check};
    let found = |pairs: &[(&str, &str)]| -> Vec<String> {
        let config = MapConfig(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
        check::<crate::Loyalty>(&config).iter().map(ToString::to_string).collect()
    };
    assert_eq!(found(&[]), Vec::<String>::new(), "the ERP may be set later: the relay waits for it");
    assert_eq!(
        found(&[("erp_url", "https://erp"), ("erp_secret", "s"), ("relay_max_attempts", "3")]),
        Vec::<String>::new()
    );
    assert_eq!(found(&[("erp_ulr", "https://erp")]), ["erp_ulr: not a setting of this plugin; did you mean erp_url?"]);
    assert_eq!(found(&[("relay_backoff_secs", "soon")]), ["relay_backoff_secs = \"soon\" is not a whole number"]);
    assert_eq!(found(&[("relay_max_attempts", "0")]), ["relay_max_attempts must be at least 1"]);
    assert_eq!(found(&[("erp_url", "erp.local")]), ["erp_url = \"erp.local\" must be an http:// or https:// URL"]);
}
