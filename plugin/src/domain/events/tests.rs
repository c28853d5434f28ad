use super::*;

#[test]
fn v2_products_and_groups_become_the_v1_items_terminals_read() {
    let product = json!({
        "id": "4be33817-bfb2-4e9f-90d0-3286c8c39f7e", "parent_id": "1be33817-bfb2-4e9f-90d0-3286c8c39f7e",
        "store_id": "20180417-2396-4075-808C-50046017B78F", "user_id": "02-200000000000108",
        "name": "Beer", "code": "7", "price": 95.5, "cost_price": 60, "quantity": 3, "measure_name": "шт",
        "tax": "VAT_20", "allow_to_sell": true, "description": "d", "article_number": "A-1", "type": "ALCOHOL_MARKED",
        "barcodes": ["2000000000060"], "alcocodes": ["0015932000001190604"], "alcohol_by_volume": 5.45,
        "alcohol_product_kind_code": 261, "tare_volume": 0.5, "created_at": "x", "updated_at": "y", "future": 1,
    });
    let Value::Object(payload) = product else { unreachable!() };
    let item = v1_item(&payload, false);
    assert_eq!(
        item,
        json!({
            "uuid": "4be33817-bfb2-4e9f-90d0-3286c8c39f7e", "parentUuid": "1be33817-bfb2-4e9f-90d0-3286c8c39f7e",
            "group": false, "name": "Beer", "code": "7", "price": 95.5, "costPrice": 60, "quantity": 3,
            "measureName": "шт", "tax": "VAT_20", "allowToSell": true, "description": "d", "articleNumber": "A-1",
            "type": "ALCOHOL_MARKED", "barCodes": ["2000000000060"], "alcoCodes": ["0015932000001190604"],
            "alcoholByVolume": 5.45, "alcoholProductKindCode": 261, "tareVolume": 0.5, "future": 1,
        })
    );
    let mut unknown = Vec::new();
    let strict = catalog::validate::item(item, 0, &mut unknown).expect("a valid v1 item");
    assert_eq!(strict.barcodes, ["2000000000060"]);
    let group = json!({"id": "1be33817-bfb2-4e9f-90d0-3286c8c39f7e", "name": "Drinks", "type": "GROUP"});
    let Value::Object(payload) = group else { unreachable!() };
    assert_eq!(
        v1_item(&payload, true),
        json!({"uuid": "1be33817-bfb2-4e9f-90d0-3286c8c39f7e", "name": "Drinks", "group": true})
    );
}

#[test]
fn events_are_ordered_by_updated_at_then_timestamp_then_arrival() {
    let event = |payload: Value, timestamp: Option<i64>| {
        let mut raw = json!({"id": "e", "type": "StoreEvent", "action": "updated", "payload": payload});
        if let Some(timestamp) = timestamp {
            raw["timestamp"] = json!(timestamp);
        }
        parse(raw, "").expect("event")
    };
    let updated = event(json!({"updated_at": "2018-08-16T15:04:22.548+0000"}), Some(1));
    let now = 1_600_000_000_000;
    assert_eq!(order_of(&updated, now), (1_534_431_862_548, None));
    assert_eq!(order_of(&event(json!({}), Some(5)), now), (5, None));
    assert_eq!(order_of(&event(json!({}), None), now), (now, None));
    // Within the clock skew a time ahead of the gateway's is taken; past it, the arrival with a problem.
    let ahead = now + MAX_CLOCK_SKEW_MS;
    assert_eq!(order_of(&event(json!({}), Some(ahead)), now), (ahead, None));
    let (order, problem) = order_of(&event(json!({"updated_at": "2099-01-01T00:00:00.000+0000"}), Some(1)), now);
    assert_eq!(order, now);
    assert!(problem.is_some_and(|problem| problem.contains("ahead of the gateway's clock")));
    assert_eq!(order_of(&event(json!({}), Some(i64::MAX)), now).0, now);
}
