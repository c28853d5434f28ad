//! Stores, employees and terminals mirrored from Evotor (user token):
//! `PUT /api/v1/inventories/{stores,employees,devices}`.
//!
//! Evotor is the master: each call carries the current state of the listed
//! entities. Each is upserted under the calling user with a stable
//! `partnerId` of ours. An entity that another user owns is never changed
//! or revealed: the answer is 409 naming it, and the rest of the batch is
//! kept.

use crate::accounts::settings;
use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::router::Params;
use crate::storage::{self, DeviceOrder, EntityRecord, OwnerIndex};
use crate::{Ctx, auth};
use serde_json::{Map, Value, json};

/// Most entities one call may carry.
pub const MAX_BATCH: usize = 2000;
/// Longest name, address or code, in characters.
const MAX_TEXT_CHARS: usize = 1024;

/// What is mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `store`.
    Store,
    /// `employee`.
    Employee,
    /// `device` (a smart terminal).
    Device,
}

impl Kind {
    /// The feed entry of an upsert of the kind.
    pub fn feed_kind(self) -> &'static str {
        match self {
            Kind::Store => "store.upserted",
            Kind::Employee => "employee.upserted",
            Kind::Device => "device.upserted",
        }
    }

    /// The storage name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Store => "store",
            Kind::Employee => "employee",
            Kind::Device => "device",
        }
    }
}

/// Whether `id` is an Evotor uuid (`uuid4`-style, any case).
pub fn is_uuid(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
        && (b'1'..=b'5').contains(&bytes[14])
        && matches!(bytes[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B')
}

/// Validation of one field of item `index`: `subject` reads `[3].uuid`.
fn subject(index: usize, field: &str) -> String {
    format!("[{index}].{field}")
}

fn text<'a>(
    item: &'a Map<String, Value>,
    index: usize,
    field: &str,
    required: bool,
) -> Result<Option<&'a str>, ApiError> {
    match item.get(field) {
        None | Some(Value::Null) if required => Err(ApiError::missing(&subject(index, field))),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) if required && value.is_empty() => {
            Err(ApiError::incorrect(&subject(index, field), ""))
        }
        Some(Value::String(value)) if value.chars().count() > MAX_TEXT_CHARS => {
            Err(ApiError::incorrect(&subject(index, field), format!("<{} characters>", value.chars().count())))
        }
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(ApiError::wrong_type(&subject(index, field), "a string")),
    }
}

fn uuid(item: &Map<String, Value>, index: usize, field: &str, required: bool) -> Result<Option<String>, ApiError> {
    match text(item, index, field, required)? {
        Some(id) if is_uuid(id) => Ok(Some(id.to_ascii_lowercase())),
        Some(id) => Err(ApiError::incorrect(&subject(index, field), id)),
        None => Ok(None),
    }
}

/// Checks one entity of `kind`; returns its uuid (lower case).
fn validate(kind: Kind, item: &Map<String, Value>, index: usize) -> Result<String, ApiError> {
    let id = uuid(item, index, "uuid", true)?.unwrap_or_default();
    text(item, index, "code", false)?;
    match kind {
        Kind::Store => {
            text(item, index, "name", true)?;
            text(item, index, "address", false)?;
        }
        Kind::Employee => {
            text(item, index, "name", true)?;
            text(item, index, "lastName", false)?;
            text(item, index, "patronymicName", false)?;
            match text(item, index, "role", true)? {
                Some("ADMIN" | "CASHIER" | "MANUAL") => {}
                other => return Err(ApiError::incorrect(&subject(index, "role"), other.unwrap_or_default())),
            }
            let phone = match item.get("phone") {
                None | Some(Value::Null) => None,
                Some(Value::Number(number)) => Some(number.to_string()),
                Some(Value::String(number)) => Some(number.clone()),
                Some(_) => return Err(ApiError::wrong_type(&subject(index, "phone"), "a number")),
            };
            if let Some(phone) = phone
                && !(phone.len() == 11 && phone.starts_with('7') && phone.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(ApiError::incorrect(&subject(index, "phone"), phone));
            }
            let Some(stores) = item.get("stores") else {
                return Err(ApiError::missing(&subject(index, "stores")));
            };
            let Value::Array(stores) = stores else {
                return Err(ApiError::wrong_type(&subject(index, "stores"), "an array"));
            };
            for (n, store) in stores.iter().enumerate() {
                // Evotor sends `{storeUuid}` objects; plain uuid strings are taken too.
                let id = match store {
                    Value::Object(link) => link.get("storeUuid").and_then(Value::as_str),
                    Value::String(id) => Some(id.as_str()),
                    _ => None,
                };
                if !id.is_some_and(is_uuid) {
                    return Err(ApiError::incorrect(&format!("[{index}].stores[{n}]"), store.clone()));
                }
            }
        }
        Kind::Device => {
            text(item, index, "name", false)?;
            uuid(item, index, "storeUuid", false)?;
            match item.get("timezoneOffset") {
                None | Some(Value::Null) => {}
                Some(Value::Number(offset)) if offset.is_i64() => {}
                Some(other) => return Err(ApiError::incorrect(&subject(index, "timezoneOffset"), other.clone())),
            }
        }
    }
    Ok(id)
}

/// `PUT /api/v1/inventories/stores`.
pub fn put_stores(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    mirror(ctx, request, Kind::Store)
}

/// `PUT /api/v1/inventories/employees`.
pub fn put_employees(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    mirror(ctx, request, Kind::Employee)
}

/// `PUT /api/v1/inventories/devices`.
pub fn put_devices(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    mirror(ctx, request, Kind::Device)
}

fn mirror(ctx: &Ctx<'_>, request: &Request, kind: Kind) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    let items = crate::input::array(&request.body, MAX_BATCH)?;
    // Validate everything first: a bad item refuses the whole call, nothing written.
    let mut batch = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::new();
    for (index, item) in items.into_iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(ApiError::wrong_type(&format!("[{index}]"), "an object"));
        };
        let id = validate(kind, &item, index)?;
        if !seen.insert(id.clone()) {
            return Err(ApiError::incorrect(&subject(index, "uuid"), id));
        }
        batch.push((id, item));
    }

    // Devices beyond the licensed number are not registered (405 1007).
    let device_limit = match kind {
        Kind::Device => crate::billing::device_limit(ctx, &user_id, &settings)?,
        _ => None,
    };
    let now = ctx.clock.now_unix();
    let (mapped, foreign, over) = storage::transact(ctx.kv, |txn| -> Result<_, ApiError> {
        let mut mapped = Vec::new();
        let mut foreign = Vec::new();
        let mut over = Vec::new();
        let order_key = storage::device_order_key(&user_id);
        let mut order = match kind {
            Kind::Device => txn.get::<DeviceOrder>(&order_key)?.unwrap_or_default(),
            _ => DeviceOrder::default(),
        };
        let registered = order.devices.len();
        for (id, item) in &batch {
            let owner_key = storage::owner_key(kind.name(), id);
            let owner = txn.get::<OwnerIndex>(&owner_key)?;
            if owner.as_ref().is_some_and(|owner| owner.user_id != user_id) {
                foreign.push(id.clone());
                continue;
            }
            if kind == Kind::Device && !order.devices.contains(id) {
                if device_limit.is_some_and(|limit| order.devices.len() as u64 >= limit) {
                    over.push(id.clone());
                    continue;
                }
                order.devices.push(id.clone());
            }
            let partner_id = match owner {
                Some(owner) => owner.partner_id,
                None => {
                    let owner = OwnerIndex {
                        v: storage::FORMAT,
                        user_id: user_id.clone(),
                        partner_id: crate::accounts::new_account_id()?,
                    };
                    txn.put(&owner_key, &owner);
                    owner.partner_id
                }
            };
            let key = storage::entity_key(&user_id, kind.name(), id);
            let data = Value::Object(item.clone());
            if txn.get::<EntityRecord>(&key)?.is_none_or(|known| known.data != data) {
                let record = EntityRecord {
                    v: storage::FORMAT,
                    uuid: id.clone(),
                    partner_id: partner_id.clone(),
                    data,
                    updated_at: now,
                };
                txn.put(&key, &record);
                txn.emit(kind.feed_kind(), now, Some(&user_id), json!({ "uuid": id, "partnerId": partner_id }));
            }
            mapped.push(json!({ "uuid": id, "partnerId": partner_id }));
        }
        if order.devices.len() != registered {
            order.v = storage::FORMAT;
            txn.put(&order_key, &order);
        }
        Ok((mapped, foreign, over))
    })?;
    if foreign.is_empty() && over.is_empty() {
        return Ok(Response::json(200, &Value::Array(mapped)));
    }
    let errors: Vec<Value> = over
        .iter()
        .map(|id| json!({ "code": 1007, "reason": "license overhead", "subject": "deviceUuid", "value": id }))
        .chain(
            foreign
                .iter()
                .map(|id| json!({ "code": 2005, "reason": "belongs to another user", "subject": "uuid", "value": id })),
        )
        .collect();
    let status = if over.is_empty() { 409 } else { 405 };
    Ok(Response::json(status, &json!({ "errors": errors, "accepted": mapped })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::tests::World;

    const USER: &str = "01-000000000000001";
    const STORE: &str = "20170228-F4F1-401B-80FA-9ECCA8451FFB";
    const STORE2: &str = "20170228-F4F1-401B-80FA-9ECCA8451FFC";

    #[test]
    fn uuid_pattern_is_the_evotor_one_in_any_case() {
        assert!(is_uuid(STORE));
        assert!(is_uuid(&STORE.to_lowercase()));
        assert!(!is_uuid("20170228-F4F1-601B-80FA-9ECCA8451FFB"), "version 6");
        assert!(!is_uuid("20170228-F4F1-401B-C0FA-9ECCA8451FFB"), "variant c");
        assert!(!is_uuid("20170228F4F1-401B-80FA-9ECCA8451FFBX"));
    }

    #[test]
    fn stores_are_upserted_with_a_stable_partner_id() {
        let world = World::new();
        let token = world.register(USER, "ivan");
        let first = world.call(
            "PUT",
            "/api/v1/inventories/stores",
            Some(&token),
            Some(json!([{"uuid": STORE, "name": "Shop"}])),
        );
        assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
        let partner_id = first.body_json()[0]["partnerId"].clone();
        assert_eq!(first.body_json()[0]["uuid"], STORE.to_lowercase());
        let again = world.call(
            "PUT",
            "/api/v1/inventories/stores",
            Some(&token),
            Some(json!([{"uuid": STORE.to_lowercase(), "name": "Renamed"}])),
        );
        assert_eq!(again.body_json()[0]["partnerId"], partner_id, "same entity, same id, any case");
        let stored: EntityRecord = storage::read(&world.kv, &storage::entity_key(USER, "store", &STORE.to_lowercase()))
            .expect("read")
            .expect("stored");
        assert_eq!(stored.data["name"], "Renamed");
    }

    #[test]
    fn another_users_entity_is_refused_by_name_and_the_rest_is_kept() {
        let world = World::new();
        let alice = world.register(USER, "alice");
        let bob = world.register("02-000000000000002", "bob");
        let entity = |kind: &str, uuid: &str, name: &str| match kind {
            "employees" => json!({"uuid": uuid, "name": name, "role": "CASHIER", "stores": []}),
            _ => json!({"uuid": uuid, "name": name}),
        };
        for (kind, stored) in [("stores", "store"), ("employees", "employee"), ("devices", "device")] {
            let path = format!("/api/v1/inventories/{kind}");
            let mine = world.call("PUT", &path, Some(&alice), Some(json!([entity(kind, STORE, "Alice's")])));
            assert_eq!(mine.status, 200, "{kind}");
            let response = world.call(
                "PUT",
                &path,
                Some(&bob),
                Some(json!([entity(kind, STORE, "Bob's now"), entity(kind, STORE2, "Bob's")])),
            );
            assert_eq!(response.status, 409, "{kind}");
            let body = response.body_json();
            assert_eq!(body["errors"][0]["value"], STORE.to_lowercase());
            assert_eq!(body["accepted"][0]["uuid"], STORE2.to_lowercase());
            assert!(!body.to_string().contains("Alice"), "nothing of the owner is revealed");
            let alices: EntityRecord =
                storage::read(&world.kv, &storage::entity_key(USER, stored, &STORE.to_lowercase()))
                    .expect("read")
                    .expect("stored");
            assert_eq!(alices.data["name"], "Alice's", "{kind} unchanged");
            assert!(
                storage::read::<EntityRecord>(
                    &world.kv,
                    &storage::entity_key("02-000000000000002", stored, &STORE.to_lowercase())
                )
                .expect("read")
                .is_none(),
                "{kind}: Bob holds no copy"
            );
        }
    }

    #[test]
    fn invalid_entities_refuse_the_whole_call() {
        let world = World::new();
        let token = world.register(USER, "ivan");
        let cases = [
            ("stores", json!([{"uuid": STORE}]), 2002, "[0].name"),
            ("stores", json!([{"uuid": "nope", "name": "x"}]), 2003, "[0].uuid"),
            ("stores", json!([{"uuid": STORE, "name": "a"}, {"uuid": STORE, "name": "b"}]), 2003, "[1].uuid"),
            ("employees", json!([{"uuid": STORE, "name": "E", "role": "BOSS", "stores": []}]), 2003, "[0].role"),
            (
                "employees",
                json!([{"uuid": STORE, "name": "E", "role": "ADMIN", "stores": [], "phone": 89001234567u64}]),
                2003,
                "[0].phone",
            ),
            ("employees", json!([{"uuid": STORE, "name": "E", "role": "ADMIN"}]), 2002, "[0].stores"),
            ("devices", json!([{"uuid": STORE, "timezoneOffset": 1.5}]), 2003, "[0].timezoneOffset"),
            ("devices", json!([{"uuid": STORE, "name": 7}]), 2001, "[0].name"),
        ];
        for (kind, body, code, subject) in cases {
            let response = world.call("PUT", &format!("/api/v1/inventories/{kind}"), Some(&token), Some(body.clone()));
            let error = &response.body_json()["errors"][0];
            assert_eq!(
                (response.status, error["code"].as_u64(), error["subject"].as_str()),
                (400, Some(code), Some(subject)),
                "{body}"
            );
        }
        assert!(world.kv.keys().iter().all(|k| !k.starts_with("owners/")), "nothing written");
        let not_array = world.call("PUT", "/api/v1/inventories/stores", Some(&token), Some(json!({"uuid": STORE})));
        assert_eq!(not_array.status, 400);
    }

    #[test]
    fn employees_may_name_stores_not_yet_seen_and_devices_take_integers() {
        let world = World::new();
        let token = world.register(USER, "ivan");
        let employee = json!([{"uuid": STORE, "name": "Ivan", "role": "CASHIER", "phone": 79001234567u64, "stores": [{"storeUuid": STORE2}]}]);
        assert_eq!(world.call("PUT", "/api/v1/inventories/employees", Some(&token), Some(employee)).status, 200);
        let device = json!([{"uuid": STORE2, "name": "Till 3", "storeUuid": STORE, "timezoneOffset": 10800000}]);
        assert_eq!(world.call("PUT", "/api/v1/inventories/devices", Some(&token), Some(device)).status, 200);
    }

    #[test]
    fn mirror_calls_need_a_user_token_and_an_active_tariff() {
        let world = World::new();
        let token = world.register(USER, "ivan");
        let body = json!([{"uuid": STORE, "name": "Shop"}]);
        let anonymous = world.call("PUT", "/api/v1/inventories/stores", Some("bogus"), Some(body.clone()));
        assert_eq!(anonymous.status, 401);
        world.server("/api/v1/user/tariff", json!({"userId": USER, "tariffId": "t", "status": "INACTIVE"}));
        let unpaid = world.call("PUT", "/api/v1/inventories/stores", Some(&token), Some(body));
        assert_eq!((unpaid.status, unpaid.body_json()["errors"][0]["value"].as_str()), (402, Some(USER)));
    }
}
