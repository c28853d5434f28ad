//! The plugin's whole behaviour, natively: the SDK's fakes stand in for
//! the gateway (its reference store answers as little as the contract
//! allows, so the listing meets short pages).

use super::Counter;
use evogate_plugin::Plugin as _;
use evogate_plugin::http::{Request, Response};
use evogate_plugin::kv::{Check, Entry, Kv, KvError, Write};
use evogate_plugin::testing::Fakes;

fn call(fakes: &Fakes, method: &str, target: &str) -> Response {
    Counter::handle(&fakes.ctx(), &Request::new(method, target).header("x-evogate-base-path", "/c"))
}

#[test]
fn a_counter_counts_from_one_and_reads_back() {
    let fakes = Fakes::default();
    assert_eq!(call(&fakes, "GET", "/c/counters/visits").status, 404);
    for expected in 1..=3 {
        let added = call(&fakes, "POST", "/c/counters/visits");
        assert_eq!((added.status, added.body_json()["value"].as_u64()), (200, Some(expected)));
    }
    assert_eq!(call(&fakes, "GET", "/c/counters/visits").body_json()["value"], 3);
}

#[test]
fn the_listing_pages_through_every_counter_in_name_order() {
    let fakes = Fakes::default();
    for name in ["b", "a", "d", "c", "e", "b"] {
        assert_eq!(call(&fakes, "POST", &format!("/c/counters/{name}")).status, 200);
    }
    let (mut seen, mut after) = (Vec::new(), String::new());
    loop {
        let page = call(&fakes, "GET", &format!("/c/counters?after={after}")).body_json();
        let Some(next) = page["next"].as_str() else { break };
        seen.extend(page["items"].as_array().expect("items").iter().map(|item| item.to_string()));
        after = next.to_owned();
    }
    let expected = [("a", 1), ("b", 2), ("c", 1), ("d", 1), ("e", 1)]
        .map(|(name, value)| serde_json::json!({ "name": name, "value": value }).to_string());
    assert_eq!(seen, expected);
}

#[test]
fn a_write_between_the_read_and_the_commit_is_not_lost() {
    // A store whose first commit finds that another request got there first.
    struct Racing<'a> {
        fakes: &'a Fakes,
        raced: std::cell::Cell<bool>,
    }
    impl Kv for Racing<'_> {
        fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
            self.fakes.kv.get(key)
        }
        fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
            self.fakes.kv.get_many(keys)
        }
        fn scan(&self, prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
            self.fakes.kv.scan(prefix, after, limit)
        }
        fn commit(&self, checks: Vec<Check>, writes: Vec<Write>) -> Result<(), KvError> {
            if !self.raced.replace(true) {
                Counter::handle(&self.fakes.ctx(), &Request::new("POST", "/counters/hits"));
            }
            self.fakes.kv.commit(checks, writes)
        }
    }
    let fakes = Fakes::default();
    let racing = Racing { fakes: &fakes, raced: Default::default() };
    let ctx = evogate_plugin::Ctx { kv: &racing, ..fakes.ctx() };
    let added = Counter::handle(&ctx, &Request::new("POST", "/counters/hits"));
    assert_eq!(added.body_json()["value"], 2, "the racing request's one and this one");
}

#[test]
fn bad_names_unknown_paths_and_a_store_that_cannot_answer() {
    let fakes = Fakes::default();
    assert_eq!(call(&fakes, "POST", "/c/counters/No%20Spaces").status, 400);
    assert_eq!(call(&fakes, "POST", &format!("/c/counters/{}", "a".repeat(65))).status, 400);
    assert_eq!(call(&fakes, "DELETE", "/c/counters").status, 404);
    assert_eq!(call(&fakes, "GET", "/c/elsewhere").status, 404);
    struct Down;
    impl Kv for Down {
        fn get(&self, _: &str) -> Result<Option<Entry>, KvError> {
            Err(KvError::Unavailable("down".into()))
        }
        fn get_many(&self, _: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
            Err(KvError::Unavailable("down".into()))
        }
        fn scan(&self, _: &str, _: Option<&str>, _: u32) -> Result<Vec<(String, Entry)>, KvError> {
            Err(KvError::Unavailable("down".into()))
        }
        fn commit(&self, _: Vec<Check>, _: Vec<Write>) -> Result<(), KvError> {
            Err(KvError::Unavailable("down".into()))
        }
    }
    let ctx = evogate_plugin::Ctx { kv: &Down, ..fakes.ctx() };
    assert_eq!(Counter::handle(&ctx, &Request::new("POST", "/counters/x")).status, 503);
}
