//! What a merchant costs in requests to the Evotor cloud: a day of the
//! `sync` job every five minutes at its defaults, on a hand-moved clock,
//! against a mock cloud that counts each request by what it asked for.
//!
//! `cargo test --release -p evotor-partner --lib merchant_day -- --nocapture`
//! prints the table `docs/evotor.md` quotes.

use super::run::run;
use crate::Ctx;
use crate::clock::Clock as _;
use crate::outgoing::{self, Http};
use crate::testing::Fixture;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;

const USER: &str = "01-000000000000001";
/// 2026-06-01T00:00:00Z: the day simulated starts here.
const DAY: u64 = 1_780_272_000;
/// The job's period.
const EVERY: u64 = 300;

/// One merchant as the cloud holds it.
struct Merchant {
    stores: usize,
    terminals: usize,
    products_per_store: usize,
    documents_per_store_per_day: usize,
    /// Documents come from the application's event feed (`evotor_app_id`), not from each store.
    feed: bool,
}

fn store_id(n: usize) -> String {
    format!("20170228-f4f1-401b-80fa-{n:012x}")
}

/// A cloud answering the REST API's listings in pages of 1000, counting each request by its resource.
struct Cloud {
    merchant: Merchant,
    asked: RefCell<BTreeMap<&'static str, u64>>,
}

/// The number of a store of [`store_id`].
fn store_number(store: &str) -> usize {
    usize::from_str_radix(&store[24..], 16).expect("a store of the mock")
}

impl Cloud {
    fn products(&self, store: &str) -> Vec<Value> {
        (0..self.merchant.products_per_store)
            .map(|n| {
                let id = format!("01ba18b6-8707-4f47-{:04x}-{n:012x}", store_number(store));
                json!({"id": id, "name": format!("Tea {n}"),
                    "store_id": store, "type": "NORMAL", "price": 100, "measure_name": "шт", "tax": "NO_VAT",
                    "allow_to_sell": true, "updated_at": "2026-05-01T10:00:00.000+0000"})
            })
            .collect()
    }

    /// The store's documents closed in `[since, until)` ms: evenly spread over each day.
    fn documents(&self, store: &str, since: i64, until: i64) -> Vec<Value> {
        let per_day = self.merchant.documents_per_store_per_day as i64;
        let gap = 86_400_000 / per_day;
        let first = since.div_euclid(gap) * gap + if since.rem_euclid(gap) == 0 { 0 } else { gap };
        (0..)
            .map(|n| first + n * gap)
            .take_while(|at| *at < until)
            .map(|at| {
                json!({"id": format!("a7619739-3548-450c-{:04x}-{at:012x}", store_number(store)), "store_id": store,
                    "device_id": store_id(1000), "type": "SELL", "close_date": at, "user_id": USER,
                    "version": "V2", "body": {"at": at}})
            })
            .collect()
    }
}

impl Http for Cloud {
    fn send(&self, request: &outgoing::Request) -> Result<outgoing::Response, outgoing::Error> {
        let target = request.url.strip_prefix("https://api.evotor.ru").expect("the configured API");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let asked: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        // The cursor carries the offset and the first page's filter, as the real one does.
        let (offset, filter) = match asked.get("cursor").and_then(|cursor| cursor.split_once('|')) {
            Some((offset, filter)) => (offset.parse::<usize>().expect("an offset"), filter.to_owned()),
            None => (0, query.to_owned()),
        };
        let params: BTreeMap<String, String> = form_urlencoded::parse(filter.as_bytes()).into_owned().collect();
        let segments: Vec<&str> = path.split('/').collect();
        let (kind, items): (&'static str, Vec<Value>) = match segments.as_slice() {
            ["", "stores"] => (
                "stores",
                (0..self.merchant.stores).map(|n| json!({"id": store_id(n), "name": format!("Store {n}")})).collect(),
            ),
            ["", "devices"] => (
                "devices",
                (0..self.merchant.terminals)
                    .map(|n| json!({"id": store_id(1000 + n), "name": "Till", "store_id": store_id(0)}))
                    .collect(),
            ),
            ["", "employees"] => ("employees", vec![json!({"id": store_id(2000), "name": "Ann"})]),
            ["", "stores", store, "products"] => ("products", self.products(store)),
            ["", "stores", _, "product-groups"] => ("product groups", Vec::new()),
            ["", "api", "apps", "app-1", "events"] => {
                let bound = |name: &str| params.get(name).and_then(|value| value.parse::<i64>().ok());
                let (since, until) = (bound("since").expect("a window"), bound("until").expect("a window"));
                let events = (0..self.merchant.stores)
                    .flat_map(|n| self.documents(&store_id(n), since, until))
                    .map(|document| {
                        json!({"id": document["id"], "timestamp": document["close_date"], "type": "Document",
                            "action": "created", "payload": document})
                    })
                    .collect();
                ("feed", events)
            }
            ["", "stores", store, "documents"] => {
                let bound = |name: &str| params.get(name).and_then(|value| value.parse::<i64>().ok());
                let (since, until) = (bound("since").expect("a window"), bound("until").expect("a window"));
                ("documents", self.documents(store, since, until))
            }
            other => panic!("unexpected request {other:?}"),
        };
        *self.asked.borrow_mut().entry(kind).or_default() += 1;
        // Pages of 1000, the cloud's own size; the cursor is the offset.
        let page: Vec<Value> = items.iter().skip(offset).take(1000).cloned().collect();
        let next = offset + 1000;
        let paging = if next < items.len() { json!({"next_cursor": format!("{next}|{filter}")}) } else { json!({}) };
        let body = serde_json::to_vec(&json!({"items": page, "paging": paging})).expect("json");
        Ok(outgoing::Response { status: 200, headers: Vec::new(), body })
    }
}

/// Requests by resource on the first day (the backfill and the documents)
/// and on the second (documents only), the job running every five minutes.
fn two_days(merchant: Merchant) -> (BTreeMap<&'static str, u64>, BTreeMap<&'static str, u64>) {
    let feed: &[(&str, &str)] = &[("evotor_app_id", "app-1"), ("evotor_publisher_token", "pub")];
    let world = Fixture::with(if merchant.feed { feed } else { &[] });
    world.clock.0.set(DAY);
    let cloud = Cloud { merchant, asked: RefCell::default() };
    let ctx = Ctx { kv: &world.kv, config: &world.config, clock: &world.clock, http: &cloud };
    assert_eq!(world.server("/api/v1/user/token", json!({"userId": USER, "token": "tok"})).status, 200);
    let mut days = Vec::new();
    for _ in 0..2 {
        cloud.asked.borrow_mut().clear();
        for _ in 0..86_400 / EVERY {
            run(&ctx, world.clock.now_unix() + 225).expect("a run");
            world.clock.0.set(world.clock.now_unix() + EVERY);
        }
        days.push(cloud.asked.borrow().clone());
    }
    let second = days.pop().expect("day 2");
    (days.pop().expect("day 1"), second)
}

fn total(day: &BTreeMap<&'static str, u64>) -> u64 {
    day.values().sum()
}

#[test]
fn merchant_day_a_typical_and_a_large_merchant_cost_one_request_per_store_and_run_and_no_catalog_rereads() {
    let typical =
        Merchant { stores: 1, terminals: 2, products_per_store: 500, documents_per_store_per_day: 200, feed: false };
    let large =
        Merchant { stores: 20, terminals: 40, products_per_store: 5000, documents_per_store_per_day: 200, feed: false };
    let mut rows = Vec::new();
    for (name, merchant) in [("typical", typical), ("large", large)] {
        let stores = merchant.stores as u64;
        let pages = (merchant.products_per_store as u64).div_ceil(1000) * stores;
        let (first, second) = two_days(merchant);
        assert_eq!(first.get("products"), Some(&pages), "{name}: each product page once: {first:?}");
        println!("{name}: day 1 {} requests {first:?}; day 2 {} requests {second:?}", total(&first), total(&second));
        // The catalog is read once, with the backfill: never again while nothing brings a new token.
        assert_eq!(second.get("products"), None, "{name}: {second:?}");
        assert_eq!(second.get("stores"), None, "{name}: {second:?}");
        // Day 2: one documents request per store and run (288 runs), each window's page holding
        // under 1000 documents.
        assert_eq!(second.get("documents"), Some(&(288 * stores)), "{name}: {second:?}");
        assert_eq!(total(&second), 288 * stores, "{name}");
        rows.push((name, total(&first), total(&second)));
    }
    // Day 1 adds the backfill: 3 listings, each store's product pages (1000 a page) and groups,
    // and the first window's extra pages (it reaches `sync_lookback_days` back).
    assert!(rows[0].1 <= 3 + 2 + 288 + 2, "{rows:?}");
    assert!(rows[1].1 <= 3 + 20 * 6 + 20 * 288 + 20 * 2, "{rows:?}");
}

#[test]
fn merchant_day_with_the_publisher_feed_documents_cost_one_request_per_run_for_every_store() {
    let large =
        Merchant { stores: 20, terminals: 40, products_per_store: 5000, documents_per_store_per_day: 200, feed: true };
    let (first, second) = two_days(large);
    println!(
        "large, publisher feed: day 1 {} requests {first:?}; day 2 {} requests {second:?}",
        total(&first),
        total(&second)
    );
    assert_eq!(second.get("documents"), None, "no store's documents are asked for: {second:?}");
    assert_eq!(second.get("feed"), Some(&288), "one feed request per run, for all stores: {second:?}");
    assert_eq!(total(&second), 288);
}
