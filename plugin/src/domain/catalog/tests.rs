use super::*;
use crate::http::Response;
use crate::kv::Kv as _;
use crate::testing::Fixture;
use proptest::prelude::*;

const ALICE: &str = "01-000000000000001";
const BOB: &str = "02-000000000000002";
const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const STORE2: &str = "20170228-f4f1-401b-80fa-9ecca8451ffc";

/// A uuid whose order is scrambled relative to `n`.
fn uuid(n: u32) -> String {
    let mixed = n.wrapping_mul(2_654_435_761).rotate_left(13);
    format!("{mixed:08x}-0000-4000-8000-{n:012x}")
}

fn product(n: u32, barcode: Option<&str>) -> Value {
    let mut product = json!({"uuid": uuid(n), "group": false, "name": format!("Item {n}"), "type": "NORMAL",
        "allowToSell": true, "measureName": "шт", "price": 10.5, "quantity": 1, "tax": "VAT_20"});
    if let Some(code) = barcode {
        product["barCodes"] = json!([code]);
    }
    product
}

fn group(n: u32, parent: Option<u32>) -> Value {
    json!({"uuid": uuid(n), "group": true, "name": format!("Group {n}"), "parentUuid": parent.map(uuid)})
}

fn partner_put(world: &Fixture, store: &str, items: &[Value]) -> Response {
    world.call(
        "PUT",
        &format!("/partner/v1/stores/{store}/products"),
        Some("partner"),
        Some(Value::from(items.to_vec())),
    )
}

fn partner_delete(world: &Fixture, store: &str, uuids: &[String]) -> Response {
    world.call("POST", &format!("/partner/v1/stores/{store}/products/delete"), Some("partner"), Some(json!(uuids)))
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

fn evotor_page(world: &Fixture, token: &str, store: &str, query: &str) -> Response {
    world.call("GET", &format!("/api/v1/inventories/stores/{store}/products{query}"), Some(token), None)
}

fn uuids_of(response: &Response) -> Vec<String> {
    response
        .body_json()
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["uuid"].as_str().expect("uuid").to_owned())
        .collect()
}

/// Recomputes every index of `store` from its products and compares.
fn audit(world: &Fixture, store: &str) -> Vec<String> {
    let problems = crate::domain::audit::problems(&world.kv);
    assert!(problems.is_empty(), "{problems:?}");
    crate::domain::audit::catalog(&world.kv, &world.kv.keys(), store).expect("consistent")
}

#[test]
fn an_evotor_page_reads_token_store_and_directory_in_one_store_call() {
    let world = Fixture::with_full_answers();
    let token = world.register(ALICE, "alice");
    let items: Vec<Value> = (0..50).map(|n| product(n, None)).collect();
    assert_eq!(partner_put(&world, STORE, &items).status, 200);
    assert_eq!(evotor_page(&world, &token, STORE, "?page=0&size=10").status, 200, "the store is claimed");
    let before = world.kv.calls();
    let page = evotor_page(&world, &token, STORE, "?page=1&size=10");
    assert_eq!(uuids_of(&page).len(), 10);
    // Token (whose grant authorizes), owner and directory together; the scan.
    let calls = world.kv.calls() - before;
    assert_eq!(calls, 2, "store calls for one page");
}

#[test]
fn evotor_pages_carry_conformant_headers_and_every_product_once() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    for batch in 0..5u32 {
        let items: Vec<Value> = (batch * 500..batch * 500 + 500).map(|n| product(n, None)).collect();
        assert_eq!(partner_put(&world, STORE, &items).status, 200);
    }
    let all = audit(&world, STORE);
    assert_eq!(all.len(), 2500);

    let first = evotor_page(&world, &token, STORE, "?page=0&size=1000");
    assert_eq!(first.status, 200);
    assert_eq!(header(&first, "x-total-items-count"), Some("2500"));
    assert_eq!(header(&first, "x-pagination-page-size"), Some("1000"));
    assert_eq!(header(&first, "x-pagination-total-page-count"), Some("3"));
    assert_eq!(header(&first, "x-pagination-next-page"), Some("1"));
    let middle = evotor_page(&world, &token, STORE, "?page=1&size=1000");
    assert_eq!(header(&middle, "x-pagination-next-page"), Some("2"));
    let last = evotor_page(&world, &token, STORE, "?page=2&size=1000");
    assert_eq!(header(&last, "x-pagination-next-page"), None, "no next page after the last");
    assert_eq!(uuids_of(&last).len(), 500);
    assert_eq!(header(&last, "x-pagination-page-size"), Some("500"), "the items on this page");
    let past = evotor_page(&world, &token, STORE, "?page=3&size=1000");
    assert_eq!((past.status, past.body_json()), (200, json!([])));
    assert_eq!(header(&past, "x-total-items-count"), Some("2500"));
    assert_eq!(header(&past, "x-pagination-page-size"), Some("0"));
    assert_eq!(header(&past, "x-pagination-next-page"), None);

    let paged: Vec<String> = [first, middle, last].iter().flat_map(uuids_of).collect();
    assert_eq!(paged, all, "every product exactly once, in uuid order");
    for size in [1, 7, 333, 2500] {
        let mut seen = Vec::new();
        for page in 0.. {
            let response = evotor_page(&world, &token, STORE, &format!("?page={page}&size={size}"));
            let items = uuids_of(&response);
            if items.is_empty() {
                break;
            }
            seen.extend(items);
            if size == 1 && page == 40 {
                break;
            }
        }
        let expected = if size == 1 { &all[..41] } else { &all[..] };
        assert_eq!(seen, expected, "size {size}");
    }
    let unpaged = evotor_page(&world, &token, STORE, "");
    assert_eq!(uuids_of(&unpaged), all);
    assert!(unpaged.headers.iter().all(|(name, _)| !name.starts_with("x-")), "no paging headers unpaged");
    let page_alone = evotor_page(&world, &token, STORE, "?page=1");
    assert_eq!(uuids_of(&page_alone), all[DEFAULT_PAGE_SIZE as usize..2 * DEFAULT_PAGE_SIZE as usize]);
    assert_eq!(header(&page_alone, "x-pagination-page-size"), Some("1000"), "page alone: the default size");
    let size_alone = evotor_page(&world, &token, STORE, "?size=7");
    assert_eq!(uuids_of(&size_alone), all[..7], "size alone: page 0");
    assert_eq!(header(&size_alone, "x-pagination-next-page"), Some("1"));
}

#[test]
fn an_empty_catalog_has_one_empty_page() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let response = evotor_page(&world, &token, STORE, "?page=0&size=10");
    assert_eq!(response.body_json(), json!([]));
    assert_eq!(header(&response, "x-pagination-total-page-count"), Some("1"));
    assert_eq!(header(&response, "x-total-items-count"), Some("0"));
    assert_eq!(header(&response, "x-pagination-next-page"), None);
}

#[test]
fn paging_parameters_are_numbers_within_range() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let cases = [
        ("?page=0&size=0", 2003, "size"),
        ("?page=0&size=10001", 2003, "size"),
        ("?page=-1&size=10", 2003, "page"),
        ("?page=x&size=10", 2003, "page"),
    ];
    for (query, code, subject) in cases {
        let response = evotor_page(&world, &token, STORE, query);
        let error = &response.body_json()["errors"][0];
        assert_eq!(
            (response.status, error["code"].as_u64(), error["subject"].as_str()),
            (400, Some(code), Some(subject))
        );
    }
}

#[test]
fn an_unpaged_catalog_answers_every_product_however_many() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let items: Vec<Value> = (0..10_000).map(|n| product(n, None)).collect();
    assert_eq!(partner_put(&world, STORE, &items).status, 200);
    assert_eq!(partner_put(&world, STORE, &[product(10_000, None)]).status, 200);
    let response = evotor_page(&world, &token, STORE, "");
    assert_eq!(uuids_of(&response), audit(&world, STORE));
    assert_eq!(uuids_of(&response).len(), 10_001);
    assert_eq!(header(&response, "x-total-items-count"), None);
}

#[test]
fn terminal_products_are_upserted_answered_by_uuid_and_doubts_reported() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let path = format!("/api/v1/inventories/stores/{}/products", STORE.to_uppercase());
    let created = world.call("POST", &path, Some(&token), Some(json!([product(1, Some("460")), group(2, None)])));
    assert_eq!(created.status, 200, "{}", String::from_utf8_lossy(&created.body));
    assert_eq!(created.body_json(), json!([{"uuid": uuid(1)}, {"uuid": uuid(2)}]));
    let mut renamed = product(3, None);
    renamed["name"] = json!("Renamed");
    let twice = world.call("POST", &path, Some(&token), Some(json!([product(3, None), renamed])));
    assert_eq!(twice.body_json(), json!([{"uuid": uuid(3)}]), "once in the answer, the last version kept");
    let stored: ProductRecord =
        storage::read(&world.kv, &storage::product_key(STORE, &uuid(3))).expect("read").expect("stored");
    assert_eq!(stored.product["name"], "Renamed");
    let no_id = world.call("POST", &path, Some(&token), Some(json!([{"group": true, "name": "x"}])));
    assert_eq!((no_id.status, no_id.body_json()["errors"][0]["subject"].as_str()), (400, Some("[0].uuid")));
    let negative = world.call(
        "POST",
        &path,
        Some(&token),
        Some(json!([{"uuid": uuid(4), "group": false, "name": "x",
        "type": "SERVICE", "measureName": "ед", "price": -1, "tax": "NO_VAT"}])),
    );
    assert_eq!(negative.body_json(), json!([{"uuid": uuid(4)}]), "kept as sent");
    let issues = world.call("GET", "/partner/v1/data-issues", Some("partner"), None).body_json();
    let problems: Vec<&str> =
        issues["items"].as_array().expect("items").iter().filter_map(|i| i["problem"].as_str()).collect();
    assert!(problems.contains(&"price: incorrect -1"), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("sent twice")), "{problems:?}");
    let record: ProductRecord =
        storage::read(&world.kv, &storage::product_key(STORE, &uuid(1))).expect("read").expect("stored");
    assert_eq!(record.source, "evotor");
    assert_eq!(audit(&world, STORE), {
        let mut ids = vec![uuid(1), uuid(2), uuid(3), uuid(4)];
        ids.sort();
        ids
    });
}

#[test]
fn a_terminals_empty_or_unprintable_barcodes_are_kept_but_not_indexed() {
    // Found by fuzzing: the index skipped the empty barcode, the audit of what to delete did not.
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let path = format!("/api/v1/inventories/stores/{STORE}/products");
    let mut item = product(1, Some("460"));
    item["barCodes"] = json!(["", "460", "a\u{7}b"]);
    assert_eq!(world.call("POST", &path, Some(&token), Some(json!([item.clone()]))).status, 200);
    let stored: ProductRecord =
        storage::read(&world.kv, &storage::product_key(STORE, &uuid(1))).expect("read").expect("stored");
    assert_eq!(stored.product["barCodes"], json!(["", "460", "a\u{7}b"]), "kept as sent");
    assert_eq!(audit(&world, STORE), [uuid(1)]);
    item["barCodes"] = json!([""]);
    assert_eq!(world.call("POST", &path, Some(&token), Some(json!([item]))).status, 200);
    assert_eq!(audit(&world, STORE), [uuid(1)]);
    assert!(world.kv.keys().iter().all(|key| !key.contains("/bc/")), "no barcode left indexed");
}

#[test]
fn another_users_store_is_indistinguishable_from_a_missing_one() {
    let world = Fixture::new();
    let alice = world.register(ALICE, "alice");
    let bob = world.register(BOB, "bob");
    world.call("PUT", "/api/v1/inventories/stores", Some(&alice), Some(json!([{"uuid": STORE, "name": "A"}])));
    let path = format!("/api/v1/inventories/stores/{STORE}/products");
    assert_eq!(world.call("POST", &path, Some(&alice), Some(json!([product(1, Some("777"))]))).status, 200);

    let missing = "20170228-f4f1-401b-80fa-9ecca8451f00";
    // Bob claims a store nobody owns by using it, which makes it his.
    let read = |token: &str, store: &str| evotor_page(&world, token, store, "?page=0&size=10");
    let foreign = read(&bob, STORE);
    assert_eq!(foreign.status, 404);
    assert_eq!(world.call("POST", &path, Some(&bob), Some(json!([product(9, None)]))).status, 404);
    assert_eq!(foreign.body, ApiError::not_found().into_response().body, "same answer as for nothing");
    assert_eq!(read(&bob, "not-a-uuid").status, 404);
    assert_eq!(read(&bob, missing).status, 200, "an unowned store is claimed by its first user");
    assert_eq!(read(&alice, missing).status, 404, "…and is then his alone");
    let commodity = world.call("GET", "/api/v1/commodities?scanCode=777", Some(&bob), None);
    assert_eq!(commodity.status, 404, "Bob cannot find Alice's barcode");
    let mirrored =
        world.call("PUT", "/api/v1/inventories/stores", Some(&bob), Some(json!([{"uuid": STORE, "name": "B"}])));
    assert_eq!(mirrored.body_json(), json!([{"uuid": STORE}]), "answered, nothing of Alice's revealed");
    assert_eq!(uuids_of(&read(&alice, STORE)), [uuid(1)], "nothing of Bob's reached Alice's catalog");
}

#[test]
fn barcode_lookup_follows_every_change_of_the_catalog() {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    let find = |query: &str| world.call("GET", &format!("/api/v1/commodities?{query}"), Some(&token), None);
    let path = format!("/api/v1/inventories/stores/{STORE}/products");
    let mut beer = product(1, None);
    beer["type"] = json!("ALCOHOL_MARKED");
    beer["barCodes"] = json!(["4601", "4602"]);
    beer["alcoCodes"] = json!(["0000000000000000001"]);
    beer["alcoholByVolume"] = json!(4.5);
    beer["alcoholProductKindCode"] = json!(261);
    beer["tareVolume"] = json!(0.5);
    beer["parentUuid"] = Value::Null;
    assert_eq!(world.call("POST", &path, Some(&token), Some(json!([beer.clone()]))).status, 200);
    let found = find("scanCode=4602");
    assert_eq!(found.status, 200);
    assert_eq!(
        found.body_json(),
        json!({"name": "Item 1", "alcCodes": ["0000000000000000001"], "scanCodes": ["4601", "4602"],
               "alcoholByVolume": 4.5, "alcoholProductKindCode": 261, "tareVolume": 0.5, "measure": "шт"})
    );
    assert_eq!(find("scanCode=4601&alcCode=0000000000000000001").status, 200);
    assert_eq!(find("scanCode=4601&alcCode=0000000000000000002").status, 404, "alc code must match too");
    assert_eq!(find("scanCode=46").status, 404, "whole codes only");

    beer["barCodes"] = json!(["4601", "4603"]);
    assert_eq!(partner_put(&world, STORE, &[beer]).status, 200);
    assert_eq!(find("scanCode=4602").status, 404, "a removed barcode is gone from the index");
    assert_eq!(find("scanCode=4603").status, 200, "an added one is found");
    assert_eq!(partner_delete(&world, STORE, &[uuid(1)]).body_json(), json!({"deleted": 1}));
    assert_eq!(find("scanCode=4601").status, 404, "a deleted product is not found");

    let in_other_store = world.call(
        "POST",
        &format!("/api/v1/inventories/stores/{STORE2}/products"),
        Some(&token),
        Some(json!([product(5, Some("a b/%"))])),
    );
    assert_eq!(in_other_store.status, 200);
    assert_eq!(find("scanCode=a+b%2F%25").status, 200, "every store of the user, escapes decoded");
    let missing = find("alcCode=1");
    assert_eq!((missing.status, missing.body_json()["errors"][0]["code"].as_u64()), (400, Some(2002)));
    audit(&world, STORE);
    audit(&world, STORE2);
}

#[test]
fn missing_parents_are_accepted_and_reported_until_they_arrive() {
    let world = Fixture::new();
    let issues = || {
        world.call("GET", &format!("/partner/v1/stores/{STORE}/catalog-issues"), Some("partner"), None).body_json()
            ["items"]
            .clone()
    };
    let mut child = product(1, None);
    child["parentUuid"] = json!(uuid(10).to_uppercase());
    assert_eq!(partner_put(&world, STORE, &[child, group(11, Some(10))]).status, 200);
    let reported: Vec<(String, String)> = issues()
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (i["uuid"].as_str().unwrap_or_default().to_owned(), i["parentUuid"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    let mut expected = vec![(uuid(1), uuid(10)), (uuid(11), uuid(10))];
    expected.sort();
    assert_eq!(reported, expected);
    assert_eq!(partner_put(&world, STORE, &[group(10, None)]).status, 200);
    assert_eq!(issues(), json!([]), "the parent arrived");
    assert_eq!(partner_delete(&world, STORE, &[uuid(10)]).status, 200);
    assert_eq!(issues().as_array().map(Vec::len), Some(2), "the parent left again");
    assert_eq!(partner_put(&world, STORE, &[group(11, None)]).status, 200);
    assert_eq!(issues().as_array().map(Vec::len), Some(1), "a moved group is no longer missing its parent");
    audit(&world, STORE);
}

#[test]
fn partner_catalog_calls_need_the_partner_token_and_are_atomic() {
    let world = Fixture::new();
    let path = format!("/partner/v1/stores/{STORE}/products");
    assert_eq!(world.call("GET", &path, Some("wrong"), None).status, 401);
    let mut items: Vec<Value> = (0..20).map(|n| product(n, None)).collect();
    items.push(json!({"uuid": uuid(99), "group": false, "name": "broken"}));
    let refused = partner_put(&world, STORE, &items);
    assert_eq!(refused.body_json()["errors"][0]["subject"], "[20].type");
    assert!(world.kv.keys().iter().all(|key| !key.starts_with("cat/")), "nothing of a refused batch is written");
    items.pop();
    assert_eq!(partner_put(&world, STORE, &items).body_json(), json!({"upserted": 20}));
    assert_eq!(partner_delete(&world, STORE, &[]).body_json(), json!({"deleted": 0}), "empty means none");
    let listed = world.call("GET", &format!("{path}?limit=15"), Some("partner"), None).body_json();
    assert_eq!((listed["items"].as_array().map(Vec::len), listed["total"].as_u64()), (Some(15), Some(20)));
    let rest = world.call(
        "GET",
        &format!("{path}?limit=15&after={}", listed["next"].as_str().expect("next")),
        Some("partner"),
        None,
    );
    assert_eq!(rest.body_json()["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(rest.body_json()["items"][0]["source"], "partner");
    let bad = world.call("POST", &format!("{path}/delete"), Some("partner"), Some(json!(["nope"])));
    assert_eq!(bad.status, 400);
}

#[test]
fn unknown_enumeration_values_are_kept_and_logged_once() {
    let world = Fixture::new();
    let mut item = product(1, None);
    item["tax"] = json!("VAT_99");
    assert_eq!(partner_put(&world, STORE, &[item.clone()]).status, 200);
    let logged =
        |kv: &crate::kv::MemKv| kv.keys().into_iter().filter(|key| key.starts_with("meta/logged/unknown/")).count();
    assert_eq!(logged(&world.kv), 1);
    let version = |kv: &crate::kv::MemKv| {
        let key = kv.keys().into_iter().find(|key| key.starts_with("meta/logged/unknown/")).expect("key");
        kv.get(&key).expect("get").expect("entry").version
    };
    let before = version(&world.kv);
    assert_eq!(partner_put(&world, STORE, &[item]).status, 200);
    assert_eq!(version(&world.kv), before, "not logged again");
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<(u32, Option<u32>, Option<u8>)>),
    Delete(Vec<u32>),
}

/// Changes of a catalog of `ids` possible items, `batch` at most per request.
fn op(ids: u32, batch: usize) -> impl Strategy<Value = Op> {
    let item = (0..ids, proptest::option::of(0..ids), proptest::option::of(0u8..20));
    prop_oneof![
        3 => proptest::collection::vec(item, 1..batch).prop_map(Op::Put),
        1 => proptest::collection::vec(0..ids, 0..batch / 2).prop_map(Op::Delete),
    ]
}

/// Applies `ops` and checks every index and every page after each.
fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let world = Fixture::new();
    let token = world.register(ALICE, "alice");
    for op in ops {
        match op {
            Op::Put(items) => {
                let mut seen = HashSet::new();
                let items: Vec<Value> = items
                    .into_iter()
                    .filter(|(n, ..)| seen.insert(*n))
                    .map(|(n, parent, code)| {
                        let mut item = product(n, code.map(|c| format!("code-{c}")).as_deref());
                        item["parentUuid"] = json!(parent.filter(|p| *p != n).map(uuid));
                        item
                    })
                    .collect();
                prop_assert_eq!(partner_put(&world, STORE, &items).status, 200);
            }
            Op::Delete(ids) => {
                let uuids: Vec<String> = ids.into_iter().map(uuid).collect();
                prop_assert_eq!(partner_delete(&world, STORE, &uuids).status, 200);
            }
        }
        let all = audit(&world, STORE);
        let mut paged = Vec::new();
        for page in 0.. {
            let items = uuids_of(&evotor_page(&world, &token, STORE, &format!("?page={page}&size=97")));
            if items.is_empty() {
                break;
            }
            paged.extend(items);
        }
        prop_assert_eq!(paged, all);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_small_tree_stays_consistent_under_any_changes(ops in proptest::collection::vec(op(12, 10), 1..10)) {
        run(ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn a_large_catalog_stays_consistent_as_ranges_split_and_merge(ops in proptest::collection::vec(op(3000, 800), 1..8)) {
        run(ops)?;
    }
}

#[test]
fn a_catalog_past_one_commits_limits_is_written_in_several_and_whole() {
    let world = Fixture::new();
    // 1000 products of 100 barcodes each: more than 100,000 writes, past what one commit may hold.
    let items: Vec<Value> = (0..1000u32)
        .map(|n| {
            let mut item = product(n, None);
            item["barCodes"] = json!((0..100).map(|b| format!("{n:05}{b:03}")).collect::<Vec<_>>());
            item
        })
        .collect();
    let answer = partner_put(&world, STORE, &items);
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let barcodes = world.kv.keys().iter().filter(|key| key.contains("/bc/")).count();
    assert_eq!(barcodes, 100_000);
    assert_eq!(audit(&world, STORE).len(), 1000, "every index agrees with the products");
    let found = world.call("GET", &format!("/partner/v1/stores/{STORE}/products?limit=1000"), Some("partner"), None);
    assert_eq!(found.body_json()["items"].as_array().map(Vec::len), Some(1000));
    // And deleted likewise.
    let uuids: Vec<String> = (0..1000u32).map(uuid).collect();
    assert_eq!(partner_delete(&world, STORE, &uuids).status, 200);
    assert_eq!(world.kv.keys().iter().filter(|key| key.contains("/bc/")).count(), 0);
    assert!(audit(&world, STORE).is_empty());
}

#[test]
fn runs_of_a_change_keep_every_item_once_in_order_and_within_the_limit() {
    let writes = [5usize, 30_000, 30_000, 1, 39_999, 50_000, 2];
    let runs = commits_of(&writes, |w| *w);
    assert_eq!(runs.concat(), writes);
    for run in &runs {
        assert!(run.len() == 1 || run.iter().sum::<usize>() <= WRITES_PER_COMMIT, "{run:?}");
    }
    assert_eq!(commits_of(&[1usize, 2, 3], |w| *w).len(), 1, "what fits is one commit");
    assert!(commits_of::<usize>(&[], |w| *w).is_empty());
}
