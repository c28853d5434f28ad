//! Evotor's signed event webhooks ("Hookshot"): the envelope
//! `{id, timestamp, type, action, payload}`, whatever delivered it.
//!
//! Evotor counts any answer below 500 as delivered, so an event is refused
//! only when it can never become usable (no `id`); everything else is kept.
//! Each event is taken once by its type and `id`; its effect depends on its type:
//!
//! | type (any spelling) | actions | effect |
//! |---|---|---|
//! | store, device, employee | created, updated | the mirror the inventory `PUT`s write |
//! | store, device, employee | removed | the record kept, marked removed |
//! | document | created | what a `PUT` of that V2 document does |
//! | product, product group | created, updated, removed | the store's catalog, source `evotor` |
//! | everything else | any | a raw event record (`GET /partner/v1/events`) |
//!
//! Events of one entity may arrive out of order: an event older than what
//! is stored (its payload's `updated_at`, else the envelope's `timestamp`)
//! never overwrites newer data, nor brings back a removed entity. Whatever
//! an event was not applied to (another user's entity, a terminal past the
//! licence, an older state, an unusable payload) is kept as a raw event and
//! reported as a data issue.

use crate::Ctx;
use crate::config::Settings;
use crate::domain::catalog;
use crate::domain::inventory::{self, EntityChange, EntityOutcome, Source};
use crate::domain::transact;
use crate::errors::ApiError;
use crate::input::{self, Fields, Object};
use crate::storage::{self, Issue, OwnerIndex, Txn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Most events one delivery may carry.
pub const MAX_EVENTS: usize = 1000;

/// Largest delivery the webhook reads, in bytes: its events are each read
/// whole into the instance's memory, one at a time.
pub const MAX_DELIVERY_BYTES: usize = 16 << 20;

/// Data issues one delivery notes one by one; past them, each user's
/// further problems in that delivery are counted in one issue.
pub const MAX_ISSUES_PER_DELIVERY: usize = storage::MAX_ISSUES_PER_COMMIT;

/// What an event is about, whichever spelling named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `StoreEvent`, `Store`, `store`.
    Store,
    /// `DeviceEvent`, `Device`.
    Device,
    /// `EmployeeEvent`, `Employee`.
    Employee,
    /// `DocumentEvent`, `Document`.
    Document,
    /// `ProductEvent`, `Product`.
    Product,
    /// `ProductGroupEvent`, `ProductGroup`, `product_group`.
    ProductGroup,
    /// `ProductImageEvent`, `ProductImage`: kept as a raw event.
    ProductImage,
    /// `SystemEvent`, `system`: kept as a raw event.
    System,
    /// Any other type (`Order`, `Settings`, `Token`, …): kept as a raw event.
    Other,
}

/// A type name compared as Evotor's spellings differ: case and `_`/`-`
/// ignored, a trailing `Event` dropped (`ProductGroupEvent` = `product_group`).
pub fn normalized(name: &str) -> String {
    let plain: String = name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
    match plain.strip_suffix("event") {
        Some(stem) if !stem.is_empty() => stem.to_owned(),
        _ => plain,
    }
}

impl Kind {
    /// The kind of an event `type`, in any spelling.
    pub fn of(name: &str) -> Self {
        match normalized(name).as_str() {
            "store" => Kind::Store,
            "device" => Kind::Device,
            "employee" => Kind::Employee,
            "document" => Kind::Document,
            "product" => Kind::Product,
            "productgroup" => Kind::ProductGroup,
            "productimage" => Kind::ProductImage,
            "system" => Kind::System,
            _ => Kind::Other,
        }
    }

    fn entity(self) -> Option<inventory::Kind> {
        match self {
            Kind::Store => Some(inventory::Kind::Store),
            Kind::Device => Some(inventory::Kind::Device),
            Kind::Employee => Some(inventory::Kind::Employee),
            _ => None,
        }
    }
}

/// One event of a delivery, read as far as it can be.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `id`, as sent.
    pub id: String,
    /// `type`, as sent (empty when absent).
    pub r#type: String,
    /// What the type names.
    pub kind: Kind,
    /// `action`, lower case (empty when absent).
    pub action: String,
    /// `timestamp`, Unix milliseconds, when usable.
    pub timestamp: Option<i64>,
    /// `payload.user_id`, when usable.
    pub user_id: Option<String>,
    /// The payload object (empty when absent).
    pub payload: Object,
    /// The event as received.
    pub raw: Object,
    /// What looks wrong in it.
    pub problems: Vec<String>,
}

/// Reads event `at` (`[3].` in an array, empty alone): refused only without a usable `id`.
pub fn parse(value: Value, at: &str) -> Result<Event, ApiError> {
    let Value::Object(raw) = value else {
        return Err(ApiError::wrong_type(if at.is_empty() { "event" } else { at.trim_end_matches('.') }, "an object"));
    };
    let fields = Fields::at(&raw, at);
    let id = fields.required_id("id")?;
    let mut problems = Vec::new();
    let r#type = match fields.get("type") {
        Some(Value::String(name)) => name.chars().take(128).collect(),
        None => {
            problems.push("no type".to_owned());
            String::new()
        }
        Some(other) => {
            problems.push(format!("type {other} is not a string"));
            String::new()
        }
    };
    let action = match fields.get("action") {
        Some(Value::String(action)) => action.chars().take(64).collect::<String>().to_ascii_lowercase(),
        None => String::new(),
        Some(other) => {
            problems.push(format!("action {other} is not a string"));
            String::new()
        }
    };
    let timestamp = fields.get("timestamp").and_then(|value| {
        let at = crate::time::timestamp(value);
        if at.is_none() {
            problems.push(format!("timestamp {value} is not a time"));
        }
        at
    });
    let payload = match fields.get("payload") {
        Some(Value::Object(payload)) => payload.clone(),
        None => Object::new(),
        Some(other) => {
            problems.push(format!("payload is not an object: {}", truncate(&other.to_string())));
            Object::new()
        }
    };
    let user_id = match payload.get("user_id").or_else(|| payload.get("userId")) {
        None => None,
        Some(value) => {
            let user = input::id_text(value).filter(|user| input::is_user_id(user));
            if user.is_none() {
                problems.push(format!("payload.user_id {} is not NN-NNNNNNNNNNNNNNN", truncate(&value.to_string())));
            }
            user
        }
    };
    let kind = Kind::of(&r#type);
    Ok(Event { id, r#type, kind, action, timestamp, user_id, payload, raw, problems })
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Reads a delivery: one event or an array of at most [`MAX_EVENTS`], none
/// over [`input::MAX_ITEM_BYTES`] (413: it could never be kept as received
/// in one record of the event log).
pub fn parse_delivery(json: &[u8]) -> Result<Vec<Event>, ApiError> {
    if json.len() > MAX_DELIVERY_BYTES {
        return Err(ApiError::too_large("a delivery", MAX_DELIVERY_BYTES));
    }
    let (raws, array) = input::raw_items(json, MAX_EVENTS)?;
    input::within_item_limit(&raws)?;
    raws.into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let value = serde_json::from_str(raw.get()).map_err(|_| ApiError::syntax("malformed JSON"))?;
            parse(value, &if array { format!("[{index}].") } else { String::new() })
        })
        .collect()
}

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Its effect is in the store.
    Applied,
    /// Older than what is stored: nothing changed.
    Stale,
    /// Kept as a raw event: its type has no effect of its own.
    Kept,
    /// Kept as a raw event, not applied (another user's entity, a terminal
    /// past the licence, an unusable payload): a data issue says why.
    NotApplied,
    /// Taken before: nothing changed.
    Duplicate,
}

/// The idempotency marker of an event: it was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Seen {
    v: u32,
    received_at: u64,
    outcome: Outcome,
}

/// One event as listed by `GET /partner/v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// Storage format version.
    pub v: u32,
    /// The event's id.
    pub id: String,
    /// Its type, as sent (absent when empty, as are the two below).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub r#type: String,
    /// Its type, normalized (`store`, `productgroup`, `order`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Its action.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// Its timestamp, Unix milliseconds (absent when none, as are the others that may be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// Its user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// When it arrived, Unix seconds.
    pub received_at: u64,
    /// The delivery that brought it (`X-Evotor-Delivery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// What became of it.
    pub outcome: Outcome,
    /// The event as received (a document event's payload is the stored document's: its ids only here).
    pub event: Value,
}

/// Key of an event's idempotency marker: its type (in any spelling, so a
/// webhook delivery and the events API's copy of it are one) and its id.
fn seen_key(event: &Event) -> String {
    seen_key_of(&normalized(&event.r#type), &event.id)
}

/// The idempotency marker's key of an event of normalized type `kind`
/// (as its log record keeps it) and id `id`.
pub(crate) fn seen_key_of(kind: &str, id: &str) -> String {
    let identity = format!("{kind}\n{id}");
    format!("events/seen/{}", &storage::sha256_hex(identity.as_bytes())[..32])
}

/// Prefix of the event log, in commit order (stamped keys).
pub const LOG_PREFIX: &str = "events/log/";

/// Key of the order record of a product or group (`{store}/{uuid}`, lower case).
fn product_order_key(store: &str, uuid: &str) -> String {
    format!("events/order/product/{store}/{uuid}")
}

/// The newest state of a catalog item an event brought: what older events
/// must not overwrite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProductOrder {
    v: u32,
    order_ms: i64,
    removed: bool,
}

/// How far past the gateway's clock a state's own time may be and still
/// order it: clocks differ by seconds, not by more.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// The time that orders a state among those of its entity: the time it
/// claims (`claimed`, when usable), else its arrival `now_ms`. A claim
/// further ahead than [`MAX_CLOCK_SKEW_MS`] would make every later genuine
/// state look older and freeze the entity, so it counts as its arrival;
/// the second value says so, for a data issue.
pub(crate) fn ordering_time(claimed: Option<i64>, now_ms: i64) -> (i64, Option<String>) {
    match claimed {
        Some(at) if at > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) => {
            let problem = format!(
                "updated_at/timestamp {at} ms is more than {} s ahead of the gateway's clock: ordered by its arrival ({now_ms} ms)",
                MAX_CLOCK_SKEW_MS / 1000
            );
            (now_ms, Some(problem))
        }
        Some(at) => (at, None),
        None => (now_ms, None),
    }
}

/// The time that orders an event among those of its entity: the payload's
/// `updated_at`, else the envelope's `timestamp`, else its arrival (see
/// [`ordering_time`] for a time in the future).
fn order_of(event: &Event, now_ms: i64) -> (i64, Option<String>) {
    let claimed = event.payload.get("updated_at").and_then(crate::time::timestamp).or(event.timestamp);
    ordering_time(claimed, now_ms)
}

/// Takes the events of one delivery (`delivery`: its `X-Evotor-Delivery`):
/// each is applied and marked taken, or found taken before. Answers how
/// many were new and how many repeated.
pub fn take(
    ctx: &Ctx<'_>,
    settings: &Settings,
    events: Vec<Event>,
    delivery: Option<&str>,
) -> Result<(usize, usize), ApiError> {
    let (mut new, mut repeated) = (0, 0);
    let mut noted = 0;
    for event in events {
        let (outcome, problems) = take_one(ctx, settings, event, delivery, noted)?;
        noted += problems;
        match outcome {
            Outcome::Duplicate => repeated += 1,
            _ => new += 1,
        }
    }
    // What outlived `retention_days` in the feed and the event log goes with each delivery,
    // and data issues with a delivery that noted some.
    crate::domain::documents::expire_logs(ctx, settings, new, noted)?;
    Ok((new, repeated))
}

/// Takes one event once, after `noted` data issues of its delivery;
/// answers what became of it and how many problems it had.
fn take_one(
    ctx: &Ctx<'_>,
    settings: &Settings,
    event: Event,
    delivery: Option<&str>,
    noted: usize,
) -> Result<(Outcome, usize), ApiError> {
    let (event, key) = (&event, &seen_key(&event));
    if storage::read::<Seen>(ctx.kv, key)?.is_some() {
        return Ok((Outcome::Duplicate, 0));
    }
    // Its last commit: the marker, the log entry and the problems, counted for the delivery.
    let record = |txn: &mut Txn<'_>, outcome: Outcome, problems: &[String], now: u64| {
        record(txn, event, delivery, outcome, problems, now, noted);
        (outcome, problems.len())
    };
    let now = ctx.clock.now_unix();
    let now_ms = crate::time::millis(now);
    let mut problems = event.problems.clone();
    let (order, future) = order_of(event, now_ms);
    problems.extend(future);
    // Store, device and employee events change the mirror in the marker's own commit.
    if let (Some(entity), Some(user_id)) = (event.kind.entity(), event.user_id.as_deref()) {
        let change = match event.action.as_str() {
            "created" | "updated" => Some(EntityChange::Upsert),
            "removed" | "deleted" => Some(EntityChange::Remove),
            _ => None,
        };
        let id = match event.payload.get("id").or_else(|| event.payload.get("uuid")) {
            Some(Value::String(id)) => input::id_as_sent(id),
            Some(other) => input::id_text(other),
            None => None,
        };
        if let (Some(change), Some(id)) = (change, id) {
            let limit = match (entity, change) {
                (inventory::Kind::Device, EntityChange::Upsert) => {
                    crate::domain::billing::device_limit(ctx, user_id, settings)?
                }
                _ => None,
            };
            return transact(ctx, |txn| -> Result<(Outcome, usize), ApiError> {
                if txn.get::<Seen>(key)?.is_some() {
                    return Ok((Outcome::Duplicate, 0));
                }
                let mut problems = problems.clone();
                let applied = inventory::apply_event(
                    txn,
                    user_id,
                    entity,
                    &id,
                    &event.payload,
                    order,
                    change,
                    limit,
                    now,
                    Source::Event,
                )?;
                let outcome = match applied {
                    EntityOutcome::Changed | EntityOutcome::Unchanged => Outcome::Applied,
                    EntityOutcome::Stale => Outcome::Stale,
                    EntityOutcome::Foreign(owner) => {
                        problems.push(format!("{} {id} belongs to user {owner}: not changed", entity.name()));
                        Outcome::NotApplied
                    }
                    EntityOutcome::OverLicence => {
                        problems.push(format!("terminal {id} is past the licensed number: not registered"));
                        Outcome::NotApplied
                    }
                };
                Ok(record(txn, outcome, &problems, now))
            });
        }
        if change.is_none() {
            problems.push(format!("action {:?} has no effect on a {}: kept", event.action, entity.name()));
        } else {
            problems.push("payload has no usable id: kept, not applied".to_owned());
        }
    }
    if let (Kind::Product | Kind::ProductGroup, Some(user_id)) = (event.kind, event.user_id.as_deref()) {
        // Which state is newer is decided in the commit that writes it, with the event's marker.
        return transact(ctx, |txn| -> Result<(Outcome, usize), ApiError> {
            if txn.get::<Seen>(key)?.is_some() {
                return Ok((Outcome::Duplicate, 0));
            }
            let mut problems = problems.clone();
            let outcome = product(txn, event, user_id, order, now, &mut problems)?;
            Ok(record(txn, outcome, &problems, now))
        });
    }
    let outcome = match (event.kind, event.user_id.as_deref()) {
        (Kind::Document, Some(user_id)) => document(ctx, settings, event, user_id, &mut problems)?,
        (Kind::Product | Kind::ProductGroup, Some(_)) => unreachable!("taken above"),
        // Its problem is noted above.
        (Kind::Store | Kind::Device | Kind::Employee, Some(_)) => Outcome::NotApplied,
        (Kind::Store | Kind::Device | Kind::Employee | Kind::Document | Kind::Product | Kind::ProductGroup, None) => {
            problems.push("no payload.user_id: kept, not applied".to_owned());
            Outcome::NotApplied
        }
        (Kind::ProductImage | Kind::System | Kind::Other, _) => Outcome::Kept,
    };
    // An event without a usable type has that problem noted already: one issue, not two.
    if event.kind == Kind::Other && !event.r#type.is_empty() {
        problems.push(format!("unknown event type {:?}: kept", event.r#type));
    }
    transact(ctx, |txn| -> Result<(Outcome, usize), ApiError> {
        if txn.get::<Seen>(key)?.is_some() {
            return Ok((Outcome::Duplicate, 0));
        }
        Ok(record(txn, outcome, &problems, now))
    })
}

/// Within the event's last commit: its marker, its log entry, its feed
/// entry and data issues.
///
/// `noted`: the data issues the event's delivery noted before it; past
/// [`MAX_ISSUES_PER_DELIVERY`] its problems are counted in one issue of the
/// user's for the delivery (its log entry still lists them).
fn record(
    txn: &mut Txn<'_>,
    event: &Event,
    delivery: Option<&str>,
    outcome: Outcome,
    problems: &[String],
    now: u64,
    noted: usize,
) {
    txn.put(&seen_key(event), &Seen { v: storage::FORMAT, received_at: now, outcome });
    let mut raw = Value::Object(event.raw.clone());
    if event.kind == Kind::Document && outcome == Outcome::Applied {
        // The document itself is the stored document; the log names it.
        let ids: Object = ["id", "store_id", "device_id", "type", "user_id"]
            .iter()
            .filter_map(|field| event.payload.get(*field).map(|value| ((*field).to_owned(), value.clone())))
            .collect();
        raw["payload"] = Value::Object(ids);
    }
    let entry = EventRecord {
        v: storage::FORMAT,
        id: event.id.clone(),
        r#type: event.r#type.clone(),
        kind: normalized(&event.r#type),
        action: event.action.clone(),
        timestamp: event.timestamp,
        user_id: event.user_id.clone(),
        received_at: now,
        delivery: delivery.map(|delivery| delivery.chars().take(128).collect()),
        outcome,
        event: raw,
    };
    txn.append(LOG_PREFIX, &entry);
    if matches!(outcome, Outcome::Kept | Outcome::NotApplied) {
        let data = json!({ "id": event.id, "type": event.r#type, "action": event.action, "outcome": outcome });
        txn.emit("event.received", now, event.user_id.as_deref(), data);
    }
    for (index, problem) in problems.iter().enumerate() {
        let issue = if noted + index < MAX_ISSUES_PER_DELIVERY {
            Issue::new(event.user_id.as_deref(), "event", &event.id, problem.as_str())
        } else {
            let more = format!(
                "more than {MAX_ISSUES_PER_DELIVERY} event problems in one delivery: the rest counted here \
                 (GET /partner/v1/events lists each event's outcome)"
            );
            Issue::new(event.user_id.as_deref(), "event", "*", more)
        };
        txn.issue(now, issue);
    }
}

/// A document event: what a `PUT` of that V2 document does.
fn document(
    ctx: &Ctx<'_>,
    settings: &Settings,
    event: &Event,
    user_id: &str,
    problems: &mut Vec<String>,
) -> Result<Outcome, ApiError> {
    if !matches!(event.action.as_str(), "created" | "") {
        problems.push(format!("document action {:?}: kept, not applied", event.action));
        return Ok(Outcome::NotApplied);
    }
    let body = serde_json::to_vec(&event.payload).map_err(|_| ApiError::internal("payload not serializable"))?;
    let past_licence = inventory::PastLicence::Report;
    match crate::domain::documents::ingest_documents(ctx, settings, user_id, &body, None, past_licence) {
        Ok(_) => Ok(Outcome::Applied),
        // The store failing is for Evotor to retry; anything else about the document is ours to keep.
        Err(err) if err.status >= 500 => Err(err),
        Err(err) => {
            let subject = err.subject.as_deref().map(|subject| format!(" ({subject})")).unwrap_or_default();
            problems.push(format!("document not stored: {}{subject}; kept as a raw event", err.reason));
            Ok(Outcome::NotApplied)
        }
    }
}

/// The v1 catalog item (as terminals read it) of a v2 product or group
/// payload: `id`→`uuid`, `parent_id`→`parentUuid`, `barcodes`→`barCodes`,
/// `cost_price`→`costPrice`, `measure_name`→`measureName`,
/// `allow_to_sell`→`allowToSell`, `article_number`→`articleNumber`,
/// `alcocodes`→`alcoCodes`, `alcohol_by_volume`→`alcoholByVolume`,
/// `alcohol_product_kind_code`→`alcoholProductKindCode`,
/// `tare_volume`→`tareVolume`, `group` from the event type; the names that
/// are the same in both (`name`, `code`, `price`, `quantity`, `tax`,
/// `type`, `description`, `attributes`, …) as they are. The ids, user and
/// times of the v2 resource are not part of a v1 item.
pub fn v1_item(payload: &Object, group: bool) -> Value {
    let mut item = Object::new();
    for (field, value) in payload {
        let name = match field.as_str() {
            "id" => "uuid",
            "parent_id" => "parentUuid",
            "barcodes" => "barCodes",
            "cost_price" => "costPrice",
            "measure_name" => "measureName",
            "allow_to_sell" => "allowToSell",
            "article_number" => "articleNumber",
            "alcocodes" | "alco_codes" => "alcoCodes",
            "alcohol_by_volume" => "alcoholByVolume",
            "alcohol_product_kind_code" => "alcoholProductKindCode",
            "tare_volume" => "tareVolume",
            "store_id" | "user_id" | "created_at" | "updated_at" | "modified_at" => continue,
            "type" if group => continue,
            other => other,
        };
        item.insert(name.to_owned(), value.clone());
    }
    item.insert("group".to_owned(), Value::Bool(group));
    Value::Object(item)
}

/// Whether a catalog item's stored order makes a state at `order`
/// (`removed`: a removal) stale: older, or as old as a removal and not one.
fn stale(known: Option<&ProductOrder>, order: i64, removed: bool) -> bool {
    known.is_some_and(|known| order < known.order_ms || (order == known.order_ms && known.removed && !removed))
}

/// Within `txn`: a product or group event into the store's catalog, source
/// `evotor`, unless an event already brought a newer state. The order is
/// read and written in the commit that changes the catalog, so of two
/// events of one item delivered at once the newer one's state stays.
fn product(
    txn: &mut Txn<'_>,
    event: &Event,
    user_id: &str,
    order: i64,
    now: u64,
    problems: &mut Vec<String>,
) -> Result<Outcome, ApiError> {
    let fields = Fields::of(&event.payload);
    let ids = (
        fields.get("store_id").and_then(input::id_text),
        fields.get("id").or_else(|| fields.get("uuid")).and_then(input::id_text),
    );
    let (Some(store), Some(uuid)) = ids else {
        problems.push("payload has no usable store_id or id: kept, not applied".to_owned());
        return Ok(Outcome::NotApplied);
    };
    let (store, uuid) = (store.to_ascii_lowercase(), uuid.to_ascii_lowercase());
    let removed = match event.action.as_str() {
        "created" | "updated" => false,
        "removed" | "deleted" => true,
        other => {
            problems.push(format!("product action {other:?}: kept, not applied"));
            return Ok(Outcome::NotApplied);
        }
    };
    let item = if removed {
        None
    } else {
        let group = event.kind == Kind::ProductGroup;
        let mut unknown = Vec::new();
        match catalog::validate::lenient_item(v1_item(&event.payload, group), 0, &mut unknown) {
            Ok(item) => Some(item),
            Err(err) => {
                problems.push(format!("product not usable: {}: kept, not applied", err.reason));
                return Ok(Outcome::NotApplied);
            }
        }
    };
    if let Some(owner) = txn.get::<OwnerIndex>(&storage::owner_key("store", &store))?
        && owner.user_id != user_id
    {
        problems.push(format!("store {store} belongs to user {}: its catalog not changed", owner.user_id));
        return Ok(Outcome::NotApplied);
    }
    let order_key = product_order_key(&store, &uuid);
    if stale(txn.get::<ProductOrder>(&order_key)?.as_ref(), order, removed) {
        return Ok(Outcome::Stale);
    }
    catalog::claim_in(txn, user_id, &store, now)?;
    match item {
        None => {
            let at = u64::try_from(order / 1000).ok();
            catalog::delete_in(txn, &store, Some(user_id), std::slice::from_ref(&uuid), "evotor", now, at)?
        }
        Some(mut item) => {
            item.changed_ms = Some(order);
            let batch = std::collections::HashSet::from([item.uuid.clone()]);
            catalog::upsert_in(txn, &store, Some(user_id), &[item], &batch, "evotor", now)?.0
        }
    };
    txn.put(&order_key, &ProductOrder { v: storage::FORMAT, order_ms: order, removed });
    Ok(Outcome::Applied)
}

/// A page of a store's products or product groups as the cloud lists
/// them (`GET /stores/{id}/products`, `…/product-groups`) of user
/// `user_id`: each into the store's catalog (source `evotor`) as its event
/// would, unless an event brought a newer state; decided and written in
/// one commit. Answers how many items changed the catalog; what could not
/// be used is noted in `problems`.
pub(crate) fn apply_catalog_page(
    ctx: &Ctx<'_>,
    user_id: &str,
    store: &str,
    group: bool,
    items: &[Object],
    problems: &mut Vec<String>,
) -> Result<usize, ApiError> {
    let store = store.to_ascii_lowercase();
    let now = ctx.clock.now_unix();
    let now_ms = crate::time::millis(now);
    let mut fresh = Vec::with_capacity(items.len());
    for payload in items {
        let Some(uuid) = payload.get("id").or_else(|| payload.get("uuid")).and_then(input::id_text) else {
            problems.push("an item without a usable id: skipped".to_owned());
            continue;
        };
        let uuid = uuid.to_ascii_lowercase();
        let (order, future) = ordering_time(payload.get("updated_at").and_then(crate::time::timestamp), now_ms);
        problems.extend(future.map(|problem| format!("{} {uuid}: {problem}", if group { "group" } else { "product" })));
        let mut unknown = Vec::new();
        match catalog::validate::lenient_item(v1_item(payload, group), 0, &mut unknown) {
            Ok(mut item) => {
                item.changed_ms = Some(order);
                fresh.push((product_order_key(&store, &uuid), order, item));
            }
            Err(err) => problems.push(format!(
                "{} not usable: {}: skipped",
                if group { "group" } else { "product" },
                err.reason
            )),
        }
    }
    if fresh.is_empty() {
        return Ok(0);
    }
    let keys: Vec<String> = fresh.iter().map(|(key, _, _)| key.clone()).collect();
    ctx.kv.prefetch(&keys);
    let batch: std::collections::HashSet<String> = fresh.iter().map(|(_, _, item)| item.uuid.clone()).collect();
    let mut changed = 0;
    // In as few commits as the store's limits on one allow; each decides and writes its items' order.
    for run in catalog::commits_of(&fresh, |(_, _, item)| catalog::writes_of(item)) {
        let (count, foreign) = transact(ctx, |txn| -> Result<(usize, Option<String>), ApiError> {
            if let Some(owner) = catalog::claim_in(txn, user_id, &store, now)? {
                return Ok((0, Some(owner)));
            }
            let mut usable = Vec::with_capacity(run.len());
            for (key, order, item) in run {
                if !stale(txn.get::<ProductOrder>(key)?.as_ref(), *order, false) {
                    usable.push(item.clone());
                    txn.put(key, &ProductOrder { v: storage::FORMAT, order_ms: *order, removed: false });
                }
            }
            if usable.is_empty() {
                return Ok((0, None));
            }
            Ok((catalog::upsert_in(txn, &store, Some(user_id), &usable, &batch, "evotor", now)?.0, None))
        })?;
        if let Some(owner) = foreign {
            problems.push(format!("store {store} belongs to user {owner}: its catalog not changed"));
            break;
        }
        changed += count;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests;
