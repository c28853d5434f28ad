//! Stores, employees and terminals mirrored from Evotor (user token):
//! `PUT /api/v1/inventories/{stores,employees,devices}`.
//!
//! Evotor is the master: each call carries the current state of the listed
//! entities. Each is upserted under the calling user with a stable
//! `partnerId` of ours. An entity that another user owns is never changed
//! or revealed: it is answered with its uuid alone and recorded as a data
//! issue, and the rest of the call is kept. Devices past the licensed
//! number are not registered: 405 code 1005 names them.

use crate::Ctx;
use crate::config::Settings;
use crate::domain::transact;
use crate::errors::ApiError;
use crate::input::{Fields, is_uuid};
use crate::storage::{self, DeviceOrder, EntityRecord, Issue, OwnerIndex};
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

    /// The feed entry of a removal of the kind.
    pub fn removed_feed_kind(self) -> &'static str {
        match self {
            Kind::Store => "store.removed",
            Kind::Employee => "employee.removed",
            Kind::Device => "device.removed",
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

/// Reads one entity of `kind` (`at` is `[3].`): refused only without a
/// usable `uuid`. Returns its id (the key form: a uuid in lower case) and
/// what looks wrong in it.
pub(crate) fn validate(kind: Kind, item: &Map<String, Value>, at: &str) -> Result<(String, Vec<String>), ApiError> {
    let fields = Fields::at(item, at);
    let id = fields.required_id("uuid")?;
    let mut problems = Vec::new();
    if !is_uuid(&id) {
        problems.push(format!("uuid {id:?} is not a uuid"));
    }
    let mut text = |field: &str, required: bool| fields.noted_text(field, required, MAX_TEXT_CHARS, &mut problems);
    text("code", false);
    match kind {
        Kind::Store => {
            text("name", true);
            text("address", false);
        }
        Kind::Employee => {
            text("name", true);
            text("lastName", false);
            text("patronymicName", false);
            match text("role", true) {
                Some("ADMIN" | "CASHIER" | "MANUAL") | None => {}
                Some(other) => problems.push(format!("unknown role {other:?}")),
            }
            let phone = fields.get("phone").map(|phone| match phone {
                Value::String(number) => number.clone(),
                other => other.to_string(),
            });
            if let Some(phone) = phone
                && !(phone.len() == 11 && phone.starts_with('7') && phone.bytes().all(|b| b.is_ascii_digit()))
            {
                problems.push(format!("phone {phone} is not 7XXXXXXXXXX"));
            }
            match fields.get("stores") {
                None => problems.push("stores missing".into()),
                Some(Value::Array(stores)) => {
                    for store in stores {
                        // Evotor sends `{storeUuid}` objects; plain uuid strings are taken too.
                        let id = match store {
                            Value::Object(link) => link.get("storeUuid").and_then(Value::as_str),
                            Value::String(id) => Some(id.as_str()),
                            _ => None,
                        };
                        if !id.is_some_and(is_uuid) {
                            problems.push(format!("stores names {store}, not a store uuid"));
                        }
                    }
                }
                Some(other) => problems.push(format!("stores is not an array: {other}")),
            }
        }
        Kind::Device => {
            text("name", false);
            if let Some(store) = text("storeUuid", false)
                && !is_uuid(store)
            {
                problems.push(format!("storeUuid {store:?} is not a uuid"));
            }
            match fields.get("timezoneOffset") {
                None => {}
                Some(Value::Number(offset)) if offset.is_i64() => {}
                Some(other) => problems.push(format!("timezoneOffset {other} is not a whole number")),
            }
        }
    }
    Ok((id, problems))
}

/// Within a transaction: makes the entity `uuid` of `kind`, which nobody
/// owns, the user's, known by its uuid alone until Evotor sends it itself.
/// Returns our id of it.
pub fn adopt(txn: &mut storage::Txn<'_>, user_id: &str, kind: Kind, uuid: &str, now: u64) -> Result<String, ApiError> {
    let partner_id = crate::domain::accounts::new_account_id()?;
    let owner = OwnerIndex { v: storage::FORMAT, user_id: user_id.to_owned(), partner_id: partner_id.clone() };
    txn.put(&storage::owner_key(kind.name(), uuid), &owner);
    let record = EntityRecord {
        v: storage::FORMAT,
        uuid: uuid.to_owned(),
        partner_id: partner_id.clone(),
        data: json!({ "uuid": uuid }),
        updated_at: now,
        removed_at: None,
        order_ms: None,
        source: None,
    };
    txn.put(&storage::entity_key(user_id, kind.name(), uuid), &record);
    Ok(partner_id)
}

/// What became of a device a call names.
enum Admission {
    /// Licensed; `owned`: already the user's, else nobody's yet (the caller records it).
    Licensed { owned: bool },
    /// Another user's: not the caller's to register.
    Foreign(String),
    /// Past the licensed number of devices.
    OverLicence,
}

/// Within a transaction: places `device` in the user's device order
/// (`order`) when it is new and the licence (`limit` devices, `None`: no
/// limit) allows. Owning it is the caller's: each records it its own way.
fn admit_device(
    txn: &mut storage::Txn<'_>,
    order: &mut DeviceOrder,
    user_id: &str,
    device: &str,
    limit: Option<u64>,
) -> Result<Admission, ApiError> {
    let over = |count: usize| limit.is_some_and(|limit| count as u64 >= limit);
    if let Some(index) = order.devices.iter().position(|known| known == device) {
        return Ok(if over(index) { Admission::OverLicence } else { Admission::Licensed { owned: true } });
    }
    let owned = match txn.get::<OwnerIndex>(&storage::owner_key(Kind::Device.name(), device))? {
        Some(owner) if owner.user_id != user_id => return Ok(Admission::Foreign(owner.user_id)),
        _ if over(order.devices.len()) => return Ok(Admission::OverLicence),
        owner => owner.is_some(),
    };
    order.devices.push(device.to_owned());
    Ok(Admission::Licensed { owned })
}

/// What a delivery naming a terminal past the licence comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PastLicence {
    /// Refused whole, 405 1005 (the 2017 protocol's answer: Evotor shows it).
    Refuse,
    /// Kept, the terminal not registered, a data issue (an event webhook,
    /// where any 4xx loses the event for good).
    Report,
}

/// Within a transaction: the devices a document or receipt delivery names.
/// Each new one is registered as the user's while the licence allows; one
/// past it refuses the delivery (405 1005) or, with [`PastLicence::Report`],
/// is left unregistered. Returns the data issues (devices that are another
/// user's or past the licence), for the caller to note when the delivery
/// stores something.
pub fn register_devices(
    txn: &mut storage::Txn<'_>,
    user_id: &str,
    devices: &std::collections::BTreeSet<&str>,
    limit: Option<u64>,
    past_licence: PastLicence,
    now: u64,
) -> Result<Vec<Issue>, ApiError> {
    let mut issues = Vec::new();
    if devices.is_empty() {
        return Ok(issues);
    }
    crate::domain::purge::refuse_while_erasing(txn, user_id)?;
    let order_key = storage::device_order_key(user_id);
    let mut order = txn.get::<DeviceOrder>(&order_key)?.unwrap_or_default();
    let registered = order.devices.len();
    for device in devices {
        match admit_device(txn, &mut order, user_id, device, limit)? {
            Admission::Licensed { owned: true } => {}
            Admission::Licensed { owned: false } => {
                let partner_id = adopt(txn, user_id, Kind::Device, device, now)?;
                txn.emit("device.registered", now, Some(user_id), json!({ "uuid": device, "partnerId": partner_id }));
            }
            Admission::Foreign(owner) => {
                issues.push(Issue::new(Some(user_id), "device", device, format!("belongs to user {owner}")));
            }
            Admission::OverLicence if past_licence == PastLicence::Refuse => {
                return Err(ApiError::device_not_allowed(device));
            }
            Admission::OverLicence => {
                let problem = "past the licensed number of terminals: not registered, its data kept";
                issues.push(Issue::new(Some(user_id), "device", device, problem));
            }
        }
    }
    if order.devices.len() != registered {
        order.v = storage::FORMAT;
        txn.put(&order_key, &order);
    }
    Ok(issues)
}

/// Within a transaction: our id of the entity whose owner index (at
/// `owner_key`) is `owner` — the user's, or nobody's yet and now the user's.
fn take_ownership(
    txn: &mut storage::Txn<'_>,
    owner_key: &str,
    owner: Option<OwnerIndex>,
    user_id: &str,
) -> Result<String, ApiError> {
    if let Some(owner) = owner {
        return Ok(owner.partner_id);
    }
    let owner = OwnerIndex {
        v: storage::FORMAT,
        user_id: user_id.to_owned(),
        partner_id: crate::domain::accounts::new_account_id()?,
    };
    txn.put(owner_key, &owner);
    Ok(owner.partner_id)
}

/// The `uuid` of `item` exactly as sent (`id`, its key form, when it cannot be read so).
fn sent_uuid(item: &Map<String, Value>, id: &str) -> String {
    item.get("uuid").and_then(Value::as_str).and_then(crate::input::id_as_sent).unwrap_or_else(|| id.to_owned())
}

/// What brought an entity's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A `PUT /api/v1/inventories/…` of the 2017 protocol.
    Inventory,
    /// An event webhook, or the same event read from the application's feed.
    Event,
    /// Read from the Evotor cloud by the sync.
    Cloud,
}

impl Source {
    /// Its stored name.
    pub fn name(self) -> &'static str {
        match self {
            Source::Inventory => "inventory",
            Source::Event => "event",
            Source::Cloud => "cloud",
        }
    }
}

/// What an event does to a mirrored entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityChange {
    /// `created`, `updated`: its state as sent.
    Upsert,
    /// `removed`: kept, marked removed.
    Remove,
}

/// What became of an event's change to a mirrored entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityOutcome {
    /// The record changed.
    Changed,
    /// The record already held it.
    Unchanged,
    /// The record holds a newer state: nothing changed.
    Stale,
    /// Another user's entity: nothing changed.
    Foreign(String),
    /// A terminal past the licensed number: not registered.
    OverLicence,
}

/// Within a transaction: applies an event's `change` to entity `id` (as
/// Evotor sent it) of `kind` of user `user_id`, whose state `payload` is as
/// of `order_ms`. A state older than the stored one changes nothing, and
/// neither does an update as old as a removal; a new terminal is
/// registered while the licence (`limit`) allows. `source` says what brought it.
#[expect(clippy::too_many_arguments, reason = "one event's parts, each needed")]
pub(crate) fn apply_event(
    txn: &mut storage::Txn<'_>,
    user_id: &str,
    kind: Kind,
    id: &str,
    payload: &Map<String, Value>,
    order_ms: i64,
    change: EntityChange,
    limit: Option<u64>,
    now: u64,
    source: Source,
) -> Result<EntityOutcome, ApiError> {
    let uuid = id.to_ascii_lowercase();
    let owner_key = storage::owner_key(kind.name(), &uuid);
    let owner = txn.get::<OwnerIndex>(&owner_key)?;
    if let Some(owner) = owner.as_ref().filter(|owner| owner.user_id != user_id) {
        return Ok(EntityOutcome::Foreign(owner.user_id.clone()));
    }
    let key = storage::entity_key(user_id, kind.name(), &uuid);
    let known = txn.get::<EntityRecord>(&key)?;
    if let Some(known) = &known
        && let Some(stored) = known.order_ms
        && (order_ms < stored || (order_ms == stored && known.removed_at.is_some() && change == EntityChange::Upsert))
    {
        return Ok(EntityOutcome::Stale);
    }
    if kind == Kind::Device && change == EntityChange::Upsert && owner.is_none() {
        let order_key = storage::device_order_key(user_id);
        let mut order = txn.get::<DeviceOrder>(&order_key)?.unwrap_or_default();
        match admit_device(txn, &mut order, user_id, &uuid, limit)? {
            Admission::OverLicence => return Ok(EntityOutcome::OverLicence),
            Admission::Foreign(owner) => return Ok(EntityOutcome::Foreign(owner)),
            Admission::Licensed { .. } => {
                order.v = storage::FORMAT;
                txn.put(&order_key, &order);
            }
        }
    }
    let partner_id = take_ownership(txn, &owner_key, owner, user_id)?;
    let removed_at = match change {
        EntityChange::Upsert => None,
        EntityChange::Remove => Some(known.as_ref().and_then(|known| known.removed_at).unwrap_or(now)),
    };
    // A removal keeps the last state when its payload carries none of its own.
    let data = match (change, &known) {
        (EntityChange::Remove, Some(known)) if payload.len() <= 2 => known.data.clone(),
        _ => Value::Object(payload.clone()),
    };
    let unchanged = known.as_ref().is_some_and(|known| {
        known.data == data && known.removed_at.is_some() == removed_at.is_some() && known.order_ms == Some(order_ms)
    });
    if unchanged {
        return Ok(EntityOutcome::Unchanged);
    }
    let record = EntityRecord {
        v: storage::FORMAT,
        uuid: id.to_owned(),
        partner_id: partner_id.clone(),
        data,
        updated_at: now,
        removed_at,
        order_ms: Some(order_ms),
        source: Some(source.name().to_owned()),
    };
    txn.put(&key, &record);
    let feed = match change {
        EntityChange::Upsert => kind.feed_kind(),
        EntityChange::Remove => kind.removed_feed_kind(),
    };
    txn.emit(feed, now, Some(user_id), json!({ "uuid": id, "partnerId": partner_id }));
    Ok(EntityOutcome::Changed)
}

/// Mirrors the entities of `kind` in `items` (a delivery of user
/// `user_id`): refused whole only when an item has no usable `uuid`;
/// everything else is kept, doubts recorded as data issues. Answers each
/// item's `uuid` and `partnerId` (an entity of another user: its `uuid`
/// alone, unchanged), and the devices refused past the licence.
pub(crate) fn mirror_items(
    ctx: &Ctx<'_>,
    settings: &Settings,
    user_id: &str,
    kind: Kind,
    items: Vec<Value>,
) -> Result<(Vec<Value>, Vec<String>), ApiError> {
    // Read everything first: an item without an id refuses the whole call, nothing written.
    // Each entity by its key form: ids compare case-insensitively.
    let mut batch: Vec<(String, Map<String, Value>, Vec<String>)> = Vec::with_capacity(items.len());
    let mut positions: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (index, item) in items.into_iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(ApiError::wrong_type(&format!("[{index}]"), "an object"));
        };
        let (id, problems) = validate(kind, &item, &format!("[{index}]."))?;
        match positions.get(&id) {
            // The same entity twice: Evotor's later state wins.
            Some(&earlier) => {
                let (_, known, known_problems) = &mut batch[earlier];
                if *known != item {
                    known_problems.push("sent twice in one call with different content: the last kept".into());
                    *known = item;
                }
            }
            None => {
                positions.insert(id.clone(), batch.len());
                batch.push((id, item, problems));
            }
        }
    }

    let device_limit = match kind {
        Kind::Device => crate::domain::billing::device_limit(ctx, user_id, settings)?,
        _ => None,
    };
    let now = ctx.clock.now_unix();
    transact(ctx, |txn| -> Result<_, ApiError> {
        let mut mapped = Vec::new();
        let mut over = Vec::new();
        let order_key = storage::device_order_key(user_id);
        let mut order = match kind {
            Kind::Device => txn.get::<DeviceOrder>(&order_key)?.unwrap_or_default(),
            _ => DeviceOrder::default(),
        };
        let registered = order.devices.len();
        let mut created = 0;
        for (id, item, problems) in &batch {
            let sent = sent_uuid(item, id);
            let issue = |problem: String| Issue::new(Some(user_id), kind.name(), id, problem);
            let owner_key = storage::owner_key(kind.name(), id);
            let owner = match kind {
                Kind::Device => match admit_device(txn, &mut order, user_id, id, device_limit)? {
                    Admission::Licensed { owned: true } => txn.get::<OwnerIndex>(&owner_key)?,
                    Admission::Licensed { owned: false } => None,
                    Admission::Foreign(owner) => {
                        txn.issue(now, issue(format!("belongs to user {owner}: not changed")));
                        mapped.push(json!({ "uuid": id }));
                        continue;
                    }
                    Admission::OverLicence => {
                        over.push(id.clone());
                        continue;
                    }
                },
                _ => txn.get::<OwnerIndex>(&owner_key)?,
            };
            if let Some(owner) = owner.as_ref().filter(|owner| owner.user_id != user_id) {
                // Never changed or revealed: the caller learns nothing of it.
                txn.issue(now, issue(format!("belongs to user {}: not changed", owner.user_id)));
                mapped.push(json!({ "uuid": id }));
                continue;
            }
            let partner_id = take_ownership(txn, &owner_key, owner, user_id)?;
            let key = storage::entity_key(user_id, kind.name(), id);
            let data = Value::Object(item.clone());
            let known = txn.get::<EntityRecord>(&key)?;
            created += usize::from(known.is_none());
            if known.is_none_or(|known| known.data != data || known.removed_at.is_some()) {
                let record = EntityRecord {
                    v: storage::FORMAT,
                    uuid: sent.clone(),
                    partner_id: partner_id.clone(),
                    data,
                    updated_at: now,
                    removed_at: None,
                    order_ms: Some(crate::time::millis(now)),
                    source: Some(Source::Inventory.name().to_owned()),
                };
                txn.put(&key, &record);
                txn.emit(kind.feed_kind(), now, Some(user_id), json!({ "uuid": sent, "partnerId": partner_id }));
                for problem in problems {
                    txn.issue(now, issue(problem.clone()));
                }
            }
            // The definitions answer uuids in lower case; the partner API shows them as sent.
            mapped.push(json!({ "uuid": id, "partnerId": partner_id }));
        }
        if order.devices.len() != registered {
            order.v = storage::FORMAT;
            txn.put(&order_key, &order);
        }
        crate::domain::quota::count_usage(txn, settings, user_id, created)?;
        Ok((mapped, over))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;

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
        let world = Fixture::new();
        let token = world.register(USER, "ivan");
        let first = world.call(
            "PUT",
            "/api/v1/inventories/stores",
            Some(&token),
            Some(json!([{"uuid": STORE, "name": "Shop"}])),
        );
        assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
        let partner_id = first.body_json()[0]["partnerId"].clone();
        assert_eq!(first.body_json()[0]["uuid"], STORE.to_lowercase(), "the definitions' lower case");
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
        assert_eq!(stored.uuid, STORE.to_lowercase(), "the partner API shows the uuid as last sent");
        let listed = world.call("GET", &format!("/partner/v1/users/{USER}/stores"), Some("partner"), None);
        assert_eq!(listed.body_json()["items"][0]["uuid"], STORE.to_lowercase());
        world.call("PUT", "/api/v1/inventories/stores", Some(&token), Some(json!([{"uuid": STORE, "name": "Again"}])));
        let listed = world.call("GET", &format!("/partner/v1/users/{USER}/stores"), Some("partner"), None);
        assert_eq!(listed.body_json()["items"][0]["uuid"], STORE, "as Evotor sent it");
    }

    #[test]
    fn a_new_device_gets_one_partner_id_and_one_feed_entry() {
        let world = Fixture::new();
        let token = world.register(USER, "ivan");
        let response = world.call(
            "PUT",
            "/api/v1/inventories/devices",
            Some(&token),
            Some(json!([{"uuid": STORE, "name": "Till"}])),
        );
        let answered = response.body_json()[0]["partnerId"].clone();
        let owner: OwnerIndex = storage::read(&world.kv, &storage::owner_key("device", &STORE.to_lowercase()))
            .expect("read")
            .expect("owner");
        let stored: EntityRecord =
            storage::read(&world.kv, &storage::entity_key(USER, "device", &STORE.to_lowercase()))
                .expect("read")
                .expect("stored");
        assert_eq!((json!(owner.partner_id), json!(stored.partner_id)), (answered.clone(), answered));
        assert_eq!(stored.data["name"], "Till");
        let feed = world.call("GET", "/partner/v1/feed?limit=1000", Some("partner"), None).body_json();
        let kinds: Vec<&str> =
            feed["items"].as_array().expect("items").iter().filter_map(|e| e["kind"].as_str()).collect();
        assert_eq!(kinds.iter().filter(|kind| kind.starts_with("device.")).collect::<Vec<_>>(), [&"device.upserted"]);
    }

    #[test]
    fn another_users_entity_is_a_data_issue_never_changed_nor_revealed() {
        let world = Fixture::new();
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
            assert_eq!(response.status, 200, "{kind}: taken, Evotor would retry a refusal for three days");
            let body = response.body_json();
            assert_eq!(body[0], json!({"uuid": STORE.to_lowercase()}), "{kind}: answered by uuid alone");
            assert_eq!(body[1]["uuid"], STORE2.to_lowercase());
            assert!(body[1]["partnerId"].is_string());
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
        let issues = world.call("GET", "/partner/v1/data-issues", Some("partner"), None).body_json();
        let foreign: Vec<&Value> = issues["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|issue| issue["problem"] == format!("belongs to user {USER}: not changed"))
            .collect();
        assert_eq!(foreign.len(), 3, "one per kind: {issues}");
        assert!(foreign.iter().all(|issue| issue["userId"] == "02-000000000000002"));
    }

    #[test]
    fn only_entities_without_an_id_refuse_the_call_and_doubts_are_reported() {
        let world = Fixture::new();
        let token = world.register(USER, "ivan");
        for (body, code, subject) in [
            (json!([{"name": "x"}]), 2002, "[0].uuid"),
            (json!([{"uuid": STORE, "name": "x"}, {"uuid": "a/b", "name": "y"}]), 2003, "[1].uuid"),
            (json!([{"uuid": STORE}, 5]), 2001, "[1]"),
        ] {
            let response = world.call("PUT", "/api/v1/inventories/stores", Some(&token), Some(body.clone()));
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

        let cases = [
            ("stores", json!({"uuid": STORE, "name": ""}), "name empty"),
            ("stores", json!({"uuid": "store-7", "name": "Shop"}), "is not a uuid"),
            ("employees", json!({"uuid": STORE, "name": "E", "role": "BOSS", "stores": []}), "unknown role \"BOSS\""),
            (
                "employees",
                json!({"uuid": STORE2, "name": "E", "role": "ADMIN", "stores": [], "phone": 89001234567u64}),
                "phone 89001234567 is not 7XXXXXXXXXX",
            ),
            ("employees", json!({"uuid": STORE, "name": "E", "role": "ADMIN"}), "stores missing"),
            ("devices", json!({"uuid": STORE, "timezoneOffset": 1.5}), "timezoneOffset 1.5 is not a whole number"),
            ("devices", json!({"uuid": STORE2, "name": 7}), "name is not a string: 7"),
        ];
        for (kind, item, problem) in cases {
            let response =
                world.call("PUT", &format!("/api/v1/inventories/{kind}"), Some(&token), Some(json!([item.clone()])));
            assert_eq!(response.status, 200, "{item}");
            let issues = world.call("GET", "/partner/v1/data-issues?limit=1000", Some("partner"), None).body_json();
            assert!(
                issues["items"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .any(|issue| issue["problem"].as_str().is_some_and(|p| p.contains(problem))),
                "{problem} in {issues}"
            );
        }
        let twice = json!([{"uuid": STORE, "name": "First"}, {"uuid": STORE, "name": "Second"}]);
        let response = world.call("PUT", "/api/v1/inventories/stores", Some(&token), Some(twice));
        assert_eq!(response.body_json().as_array().map(Vec::len), Some(1));
        let stored: EntityRecord = storage::read(&world.kv, &storage::entity_key(USER, "store", &STORE.to_lowercase()))
            .expect("read")
            .expect("stored");
        assert_eq!(stored.data["name"], "Second", "Evotor's later state wins");
    }

    #[test]
    fn employees_may_name_stores_not_yet_seen_and_devices_take_integers() {
        let world = Fixture::new();
        let token = world.register(USER, "ivan");
        let employee = json!([{"uuid": STORE, "name": "Ivan", "role": "CASHIER", "phone": 79001234567u64, "stores": [{"storeUuid": STORE2}]}]);
        assert_eq!(world.call("PUT", "/api/v1/inventories/employees", Some(&token), Some(employee)).status, 200);
        let device = json!([{"uuid": STORE2, "name": "Till 3", "storeUuid": STORE, "timezoneOffset": 10800000}]);
        assert_eq!(world.call("PUT", "/api/v1/inventories/devices", Some(&token), Some(device)).status, 200);
    }

    #[test]
    fn mirror_calls_need_a_user_token_and_an_active_tariff() {
        let world = Fixture::new();
        let token = world.register(USER, "ivan");
        let body = json!([{"uuid": STORE, "name": "Shop"}]);
        let anonymous = world.call("PUT", "/api/v1/inventories/stores", Some("bogus"), Some(body.clone()));
        assert_eq!(anonymous.status, 401);
        world.server("/api/v1/user/tariff", json!({"userId": USER, "tariffId": "t", "status": "INACTIVE"}));
        let unpaid = world.call("PUT", "/api/v1/inventories/stores", Some(&token), Some(body));
        assert_eq!((unpaid.status, unpaid.body_json()["errors"][0]["value"].as_str()), (402, Some(USER)));
    }
}
