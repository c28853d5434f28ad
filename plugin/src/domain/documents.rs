//! Terminal documents and receipts: ingestion (user token) and the
//! partner's read API.
//!
//! | method, path | who | what |
//! |---|---|---|
//! | `PUT /api/v1/inventories/stores/{storeUuid}/documents` | user | documents of any type, kept whole |
//! | `PUT {documents_webhook_path}` (default `/`) | user | the same array, each document naming its `storeUuid` |
//! | `POST /api/v1/receipt` | user | receipt events (v1: an array) |
//! | `POST /api/v2/receipts` | user | receipt events (v2: one or an array) |
//! | `GET /partner/v1/stores/{storeUuid}/documents?type=&from=&to=&after=&limit=` | partner | by close date |
//! | `GET /partner/v1/stores/{storeUuid}/documents/{id}` | partner | one document |
//! | `GET /partner/v1/stores/{storeUuid}/receipts?from=&to=&after=&limit=` | partner | by receipt date |
//! | `GET /partner/v1/receipts/{id}` | partner | one receipt event |
//!
//! Every delivery is idempotent: a document by (store, uuid), a receipt by
//! its event `id`. A re-delivery writes nothing and adds no feed entry. One
//! request commits atomically: all of its new documents, their indexes and
//! their feed entries, or none.

use crate::Ctx;
use crate::config::Settings;
use crate::domain::inventory::PastLicence;
use crate::domain::quota;
use crate::domain::transact;
use crate::errors::ApiError;
use crate::input::{self, Fields, Object, is_uuid};
use crate::storage::{self, Issue, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};

mod retention;
pub(crate) use retention::expire_logs;
use retention::{expire, expire_kept_apart};

/// Most documents or receipts one request may carry.
pub const MAX_BATCH: usize = 10_000;
/// Config key of the bare documents webhook path.
pub const DOCUMENTS_WEBHOOK_PATH: &str = "documents_webhook_path";
/// Its default: the console lets partners point the webhook at a bare URL.
pub const DEFAULT_DOCUMENTS_WEBHOOK_PATH: &str = "/";

/// Document types of the spec; others are kept and logged once.
const KNOWN_TYPES: &[&str] = &[
    "SELL",
    "PAYBACK",
    "BUY",
    "BUYBACK",
    "ACCEPT",
    "INVENTORY",
    "REVALUATION",
    "WRITE_OFF",
    "RETURN",
    "OPEN_SESSION",
    "CLOSE_SESSION",
    "FPRINT",
    "CASH_INCOME",
    "CASH_OUTCOME",
    "OPEN_TARE",
    // The V2 documents of the REST API (`rest_documents.md`).
    "POS_OPEN_SESSION",
    "X_REPORT",
    "Z_REPORT",
];

/// A terminal document as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentRecord {
    /// Storage format version.
    pub v: u32,
    /// The document's id (`uuid` in V1, `id` in V2), as sent.
    pub id: String,
    /// The store, lower case.
    pub store_uuid: String,
    /// The document type, as a key-safe name (`UNKNOWN` when none was sent).
    pub r#type: String,
    /// The close date, Unix milliseconds (the arrival time when none was usable).
    pub close_date: i64,
    /// Its `version` as sent (`V1` or `V2` by its format when not sent).
    pub version: String,
    /// `V1` (camelCase envelope) or `V2` (snake_case envelope with `body`).
    #[serde(default = "v1")]
    pub format: String,
    /// The terminal, when the document names one.
    #[serde(default)]
    pub device_uuid: Option<String>,
    /// The user whose token delivered it.
    pub user_id: String,
    /// When it arrived, Unix seconds.
    pub received_at: u64,
    /// The document exactly as received (`null` while its [`parts`](Self::parts) are apart).
    pub document: Value,
    /// How many [`Part`]s hold the document's text, when it is too large for
    /// one record; 0 when the record holds it. [`whole`] puts it back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parts: u32,
}

fn is_zero(parts: &u32) -> bool {
    *parts == 0
}

/// A document's text larger than this is stored in parts of at most this
/// many bytes: a part's record, its text escaped (at worst twice as long),
/// stays under the store's 4 MiB a value.
pub const PART_BYTES: usize = 1_900_000;

/// One part of a document's text, in order (`docs/{store}/part/{id}/{n:04}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Storage format version.
    pub v: u32,
    /// This part of the JSON text, cut between characters.
    pub text: String,
}

/// `text` cut into parts of at most [`PART_BYTES`], between characters.
fn cut(text: &str) -> Vec<&str> {
    let mut parts = Vec::with_capacity(text.len() / PART_BYTES + 1);
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(PART_BYTES);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (part, tail) = rest.split_at(end);
        parts.push(part);
        rest = tail;
    }
    parts
}

/// `record` (read at `key`) with its document whole: its parts read back
/// and joined when it has them.
pub(crate) fn whole(kv: &dyn crate::kv::Kv, key: &str, mut record: DocumentRecord) -> Result<DocumentRecord, ApiError> {
    if record.parts == 0 {
        return Ok(record);
    }
    let prefix = parts_prefix_of(key).ok_or_else(|| StorageError::Corrupt(key.to_owned()))?;
    let mut text = String::with_capacity(record.parts as usize * PART_BYTES);
    let mut read = 0;
    for (part_key, entry) in storage::collect(kv, &prefix, None, record.parts as usize)? {
        text.push_str(&storage::decode::<Part>(&part_key, &entry.value)?.text);
        read += 1;
    }
    if read != record.parts {
        return Err(StorageError::Corrupt(key.to_owned()).into());
    }
    record.document = serde_json::from_str(&text).map_err(|_| StorageError::Corrupt(key.to_owned()))?;
    record.parts = 0;
    Ok(record)
}

/// The parts prefix of the document stored at `key` (its own store's, or kept apart).
pub(crate) fn parts_prefix_of(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["docs", store, "doc", id] => Some(storage::document_parts_prefix(store, id)),
        ["user", user_id, "foreign-docs", store, id] => {
            Some(storage::foreign_document_parts_prefix(store, user_id, id))
        }
        _ => None,
    }
}

fn v1() -> String {
    "V1".into()
}

/// A [`DocumentRecord`] to write, the document byte for byte as received.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NewDocument<'a> {
    v: u32,
    id: &'a str,
    store_uuid: &'a str,
    r#type: &'a str,
    close_date: i64,
    version: &'a str,
    format: &'a str,
    device_uuid: Option<&'a str>,
    user_id: &'a str,
    received_at: u64,
    /// `None` (`null`) while the document is in `parts`.
    document: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "is_zero")]
    parts: u32,
}

/// A receipt event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptRecord {
    /// Storage format version.
    pub v: u32,
    /// The event id, as sent.
    pub id: String,
    /// The store (`data.storeId`), lower case; empty when the event names none.
    pub store_uuid: String,
    /// `data.dateTime`, Unix milliseconds.
    pub date_time: i64,
    /// The user.
    pub user_id: String,
    /// When it arrived, Unix seconds.
    pub received_at: u64,
    /// The event exactly as received.
    pub event: Value,
}

/// The type and deliverer of a stored document, read without keeping the document.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DocumentType {
    pub(crate) r#type: String,
    pub(crate) user_id: String,
    #[serde(default)]
    pub(crate) parts: u32,
}

/// A document's entry in its store's index by close date
/// (`docs/{store}/by-date/{closeDate ms:013}.{id}`).
///
/// It names the document's type, so a listing by type reads this one index
/// and needs no second one. Entries written before it named the type (`type`
/// absent) had an entry by type besides (`docs/{store}/by-type/{type}/…`),
/// kept until the document goes; a listing by type reads such a document's
/// type from the document itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateEntry {
    /// Storage format version.
    pub v: u32,
    /// The document's type, as its record keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
}

/// A [`ReceiptRecord`] to write, the event byte for byte as received.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NewReceipt<'a> {
    v: u32,
    id: &'a str,
    store_uuid: &'a str,
    date_time: i64,
    user_id: &'a str,
    received_at: u64,
    event: &'a RawValue,
}

/// The key segment of a document or receipt id: the id itself, or its
/// digest when it could not stand in a key (a `.` would break the indexes).
pub fn key_id(id: &str) -> String {
    if id.contains('.') { format!("~{}", &storage::sha256_hex(id.as_bytes())[..32]) } else { id.to_owned() }
}

/// The first of `fields` present and not `null`, with its name.
fn first_of<'v>(object: &'v Object, fields: &[&'static str]) -> Option<(&'static str, &'v Value)> {
    let given = Fields::of(object);
    fields.iter().find_map(|field| given.get(field).map(|value| (*field, value)))
}

/// A document of a delivery, understood as far as it can be.
struct Document<'a> {
    /// The key form of the id (a uuid in lower case).
    id: String,
    /// The id exactly as sent: what answers show.
    sent_id: String,
    store: String,
    kind: String,
    close_date: i64,
    /// Where its store's date index files it (see [`crate::time::filed_at`]).
    filed_at: i64,
    version: String,
    format: &'static str,
    device: Option<String>,
    raw: &'a RawValue,
    problems: Vec<String>,
}

/// Reads document `at` (`[3].` in an array, empty alone). Refused only
/// without an id, or without a store where the path names none.
fn document<'a>(
    raw: &'a RawValue,
    at: &str,
    path_store: Option<&str>,
    user_id: &str,
    now_ms: i64,
) -> Result<Document<'a>, ApiError> {
    let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(raw.get()) else {
        return Err(ApiError::wrong_type(at.trim_end_matches('.'), "an object"));
    };
    let v2 = ["store_id", "device_id", "close_date", "body", "user_id"].iter().any(|field| doc.contains_key(*field))
        || doc.get("version").and_then(Value::as_str).is_some_and(|version| version.eq_ignore_ascii_case("V2"));
    let format = if v2 { "V2" } else { "V1" };
    let mut problems = Vec::new();
    let id_fields: &[&str] = if v2 { &["id", "uuid"] } else { &["uuid", "id"] };
    let (id, sent_id) = match first_of(&doc, id_fields) {
        None => return Err(ApiError::missing(&format!("{at}{}", id_fields[0]))),
        Some((field, value)) => {
            let id =
                input::id_text(value).ok_or_else(|| ApiError::incorrect(&format!("{at}{field}"), value.clone()))?;
            let sent = value.as_str().and_then(input::id_as_sent).unwrap_or_else(|| id.clone());
            (id, sent)
        }
    };
    if !is_uuid(&id) {
        problems.push(format!("id {id:?} is not a uuid"));
    }
    let named = match first_of(&doc, &["storeUuid", "store_id"]) {
        None => None,
        Some((field, value)) => match input::id_text(value) {
            Some(store) => Some(store),
            None if path_store.is_some() => {
                problems.push(format!("{field} {value} is not an id"));
                None
            }
            None => return Err(ApiError::incorrect(&format!("{at}{field}"), value.clone())),
        },
    };
    let store = match (path_store, named) {
        (Some(path), Some(named)) if !path.eq_ignore_ascii_case(&named) => {
            problems.push(format!("names store {named}, delivered to store {path}: kept under {path}"));
            path.to_owned()
        }
        (Some(path), _) => path.to_owned(),
        (None, Some(named)) => named.to_ascii_lowercase(),
        (None, None) => return Err(ApiError::missing(&format!("{at}{}", if v2 { "store_id" } else { "storeUuid" }))),
    };
    if !is_uuid(&store) {
        problems.push(format!("store {store:?} is not a uuid"));
    }
    let device = match first_of(&doc, &["deviceUuid", "device_id"]) {
        None => {
            problems.push("no device".to_owned());
            None
        }
        Some((field, value)) => {
            let device = input::id_text(value);
            if device.as_deref().is_none_or(|device| !is_uuid(device)) {
                problems.push(format!("{field} {value} is not a uuid"));
            }
            device.map(|device| device.to_ascii_lowercase())
        }
    };
    let kind = match doc.get("type") {
        Some(Value::String(kind)) if is_type_name(kind) => kind.clone(),
        Some(Value::String(kind)) if !kind.trim().is_empty() => {
            let name: String = kind
                .trim()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
                .take(64)
                .collect();
            problems.push(format!("type {kind:?} kept as {name}"));
            name
        }
        other => {
            problems.push(format!("type missing or not a string ({})", other.unwrap_or(&Value::Null)));
            "UNKNOWN".to_owned()
        }
    };
    if !KNOWN_TYPES.contains(&kind.as_str()) && kind != "UNKNOWN" {
        problems.push(format!("unknown document type {kind}"));
    }
    let close_date =
        crate::time::or_arrival(first_of(&doc, &["closeDate", "close_date"]), "close date", now_ms, &mut problems);
    let version = match doc.get("version") {
        Some(Value::String(version)) if !version.is_empty() => version.chars().take(16).collect(),
        Some(Value::Number(version)) => version.to_string(),
        _ => format.to_owned(),
    };
    if let Some(owner) = doc.get("user_id").and_then(Value::as_str)
        && owner != user_id
    {
        problems.push(format!("user_id {owner} is not the delivering user"));
    }
    let filed_at = crate::time::filed_at(close_date, "closeDate", now_ms, &mut problems);
    Ok(Document { id, sent_id, store, kind, close_date, filed_at, version, format, device, raw, problems })
}

/// A type name safe in keys: `^[A-Z0-9_]{1,64}$`.
pub(crate) fn is_type_name(kind: &str) -> bool {
    (1..=64).contains(&kind.len()) && kind.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// A delivery of documents or receipts as its commit takes it: whose it
/// is, the stores and devices it names, the user's licence and what a
/// terminal past it comes to, and when it arrived (Unix seconds).
struct Delivery<'a> {
    user_id: &'a str,
    stores: &'a BTreeSet<&'a str>,
    devices: &'a BTreeSet<&'a str>,
    device_limit: Option<u64>,
    past_licence: PastLicence,
    now: u64,
}

/// The stores and devices a delivery names: each store becomes the user's
/// when nobody owns it yet, each device is registered while the licence
/// allows (past it: 405 1005). Another user's store or device is a data
/// issue, returned to be noted when the delivery stores something (a
/// re-delivery counts nothing).
fn admit<'a>(txn: &mut storage::Txn<'_>, delivery: &Delivery<'a>) -> Result<(Vec<Issue>, BTreeSet<&'a str>), ApiError> {
    let Delivery { user_id, stores, devices, device_limit, past_licence, now } = *delivery;
    let mut issues = Vec::new();
    let mut foreign = BTreeSet::new();
    for store in stores {
        if let Some(owner) = crate::domain::catalog::claim_in(txn, user_id, store, now)? {
            let problem = format!("belongs to user {owner}: the documents kept apart, out of its listings");
            issues.push(Issue::new(Some(user_id), "store", store, problem).in_store(store));
            foreign.insert(*store);
        }
    }
    issues.extend(crate::domain::inventory::register_devices(txn, user_id, devices, device_limit, past_licence, now)?);
    Ok((issues, foreign))
}

/// Commits a delivery of documents or receipts, in one transaction:
/// admits the stores and devices it names ([`admit`]), stores its items
/// with `store_items` (given the stores another user owns; it answers how
/// many items were new and how many known) and, when any was new, notes
/// the issues admitting found and counts the new records against the
/// user's quota. Then what outlived `retention_days` in those stores goes,
/// and in the feed and the event log.
/// Answers how many were new and how many known.
fn commit_delivery(
    ctx: &Ctx<'_>,
    settings: &Settings,
    delivery: &Delivery<'_>,
    mut store_items: impl FnMut(&mut storage::Txn<'_>, &BTreeSet<&str>) -> Result<(usize, usize), ApiError>,
) -> Result<(usize, usize), ApiError> {
    let (user_id, now) = (delivery.user_id, delivery.now);
    let (new, repeated, noted) = transact(ctx, |txn| -> Result<(usize, usize, usize), ApiError> {
        let (issues, foreign) = admit(txn, delivery)?;
        let (new, repeated) = store_items(txn, &foreign)?;
        if new > 0 {
            for issue in issues {
                txn.issue(now, issue);
            }
            quota::count_usage(txn, settings, user_id, new)?;
        }
        Ok((new, repeated, txn.noted_issues()))
    })?;
    for store in delivery.stores {
        expire(ctx, settings, store, new)?;
    }
    expire_logs(ctx, settings, new, noted)?;
    Ok((new, repeated))
}

/// Stores the documents of a delivery (`body`: one or an array) of user
/// `user_id`, into `path_store` or each into the store it names; a terminal
/// past the licence is refused or reported as `past_licence` says. Answers
/// how many were new and how many known.
pub(crate) fn ingest_documents(
    ctx: &Ctx<'_>,
    settings: &Settings,
    user_id: &str,
    body: &[u8],
    path_store: Option<&str>,
    past_licence: PastLicence,
) -> Result<(usize, usize), ApiError> {
    let now = ctx.clock.now_unix();
    let now_ms = crate::time::millis(now);
    let (raws, array) = input::raw_items(body, MAX_BATCH)?;
    let mut documents: Vec<Document<'_>> = Vec::with_capacity(raws.len());
    let mut positions: HashMap<(String, String), usize> = HashMap::with_capacity(raws.len());
    for (index, raw) in raws.into_iter().enumerate() {
        let at = if array { format!("[{index}].") } else { String::new() };
        let document = document(raw, &at, path_store, user_id, now_ms)?;
        match positions.get(&(document.store.clone(), document.id.clone())) {
            // The same document twice in one delivery: the first is kept.
            Some(first) => {
                let first = &mut documents[*first];
                if first.raw.get() != raw.get() && !same_json(first.raw, raw) {
                    first.problems.push("delivered twice in one batch with different content: the first kept".into());
                }
            }
            None => {
                positions.insert((document.store.clone(), document.id.clone()), documents.len());
                documents.push(document);
            }
        }
    }
    let device_limit = crate::domain::billing::device_limit(ctx, user_id, settings)?;
    let stores: BTreeSet<&str> = documents.iter().map(|doc| doc.store.as_str()).collect();
    let devices: BTreeSet<&str> = documents.iter().filter_map(|doc| doc.device.as_deref()).collect();
    let ids: Vec<String> = documents.iter().map(|doc| key_id(&doc.id)).collect();
    let owned_keys: Vec<String> =
        documents.iter().zip(&ids).map(|(doc, id)| storage::document_key(&doc.store, id)).collect();
    // What the transaction reads first, in one store call: the owners of
    // the stores and devices, the user's devices, and the documents.
    let owners = stores.iter().map(|store| storage::owner_key("store", store));
    let device_keys = devices.iter().map(|device| storage::owner_key("device", device));
    let order = (!devices.is_empty()).then(|| storage::device_order_key(user_id));
    ctx.kv.prefetch(&owners.chain(order).chain(device_keys).chain(owned_keys.iter().cloned()).collect::<Vec<_>>());
    let delivery = Delivery { user_id, stores: &stores, devices: &devices, device_limit, past_licence, now };
    let (new, repeated) = commit_delivery(ctx, settings, &delivery, |txn, foreign| {
        // Documents into another user's store are the deliverer's, apart from the owner's.
        let keys: Vec<String> = documents
            .iter()
            .zip(&ids)
            .zip(&owned_keys)
            .map(|((doc, id), key)| match foreign.contains(doc.store.as_str()) {
                true => storage::foreign_document_key(&doc.store, user_id, id),
                false => key.clone(),
            })
            .collect();
        let (mut new, mut repeated) = (0, 0);
        // Every document's key in one store call, not one call each.
        let stored = txn.get_many::<serde::de::IgnoredAny>(&keys)?;
        for (((doc, id), key), stored) in documents.iter().zip(&ids).zip(&keys).zip(stored) {
            if stored.is_some() {
                repeated += 1;
                continue;
            }
            // A document too large for one record is kept whole, in parts beside its record.
            let text = doc.raw.get();
            let parts = if text.len() > PART_BYTES { cut(text) } else { Vec::new() };
            let record = NewDocument {
                v: storage::FORMAT,
                id: &doc.sent_id,
                store_uuid: &doc.store,
                r#type: &doc.kind,
                close_date: doc.close_date,
                version: &doc.version,
                format: doc.format,
                device_uuid: doc.device.as_deref(),
                user_id,
                received_at: now,
                document: parts.is_empty().then_some(doc.raw),
                parts: u32::try_from(parts.len()).unwrap_or(u32::MAX),
            };
            txn.put(key, &record);
            if let Some(prefix) = parts_prefix_of(key) {
                for (n, text) in parts.iter().enumerate() {
                    txn.put(&part_key(&prefix, n), &Part { v: storage::FORMAT, text: (*text).to_owned() });
                }
            }
            let kept_apart = foreign.contains(doc.store.as_str());
            if kept_apart {
                // Apart from the store's indexes, but where retention finds it.
                let prefix = storage::foreign_documents_by_date_prefix(user_id);
                let marker = json!({ "v": storage::FORMAT });
                txn.put(&format!("{prefix}{:013}/{}/{id}", doc.filed_at.max(0), doc.store), &marker);
            } else {
                // One index entry, naming the type: a listing by type reads this
                // index and skips the others' (see [`DateEntry`]).
                let position = format!("{:013}.{id}", doc.filed_at.max(0));
                let entry = DateEntry { v: storage::FORMAT, r#type: Some(doc.kind.clone()) };
                txn.put(&format!("{}{position}", storage::documents_by_date_prefix(&doc.store)), &entry);
            }
            let mut data = json!({ "storeUuid": doc.store, "id": doc.sent_id, "type": doc.kind, "format": doc.format });
            if kept_apart {
                data["keptApart"] = json!(true);
            }
            txn.emit("document.received", now, Some(user_id), data);
            for problem in &doc.problems {
                let issue = Issue::new(Some(user_id), "document", &doc.sent_id, problem.as_str());
                txn.issue(now, issue.in_store(&doc.store));
            }
            new += 1;
        }
        Ok((new, repeated))
    })?;
    expire_kept_apart(ctx, settings, user_id, new)?;
    Ok((new, repeated))
}

/// Key of part `n` of the document whose parts are under `prefix`.
fn part_key(prefix: &str, n: usize) -> String {
    format!("{prefix}{n:04}")
}

/// Within `txn`: deletes the `parts` parts under `prefix`.
pub(super) fn delete_parts(txn: &mut storage::Txn<'_>, prefix: &str, parts: u32) {
    for n in 0..parts as usize {
        txn.delete(&part_key(prefix, n));
    }
}

/// Whether two JSON texts hold the same value.
fn same_json(a: &RawValue, b: &RawValue) -> bool {
    serde_json::from_str::<Value>(a.get()).ok() == serde_json::from_str::<Value>(b.get()).ok()
}

/// A receipt event of a delivery, understood as far as it can be.
struct Receipt<'a> {
    /// The key form of the id (a uuid in lower case).
    pub(crate) id: String,
    /// The id exactly as sent: what answers show.
    pub(crate) sent_id: String,
    pub(crate) store: Option<String>,
    pub(crate) device: Option<String>,
    pub(crate) date_time: i64,
    /// Where its store's date index files it (see [`crate::time::filed_at`]).
    pub(crate) filed_at: i64,
    pub(crate) raw: &'a RawValue,
    pub(crate) problems: Vec<String>,
}

/// Reads receipt event `at`; refused only without an id (`id`, or `data.id`).
fn receipt<'a>(raw: &'a RawValue, at: &str, user_id: &str, now_ms: i64) -> Result<Receipt<'a>, ApiError> {
    let Ok(Value::Object(event)) = serde_json::from_str::<Value>(raw.get()) else {
        return Err(ApiError::wrong_type(at.trim_end_matches('.'), "an object"));
    };
    let data = match event.get("data") {
        Some(Value::Object(data)) => Some(data),
        _ => None,
    };
    let mut problems = Vec::new();
    let (id, sent_id) = match first_of(&event, &["id"]).or_else(|| data.and_then(|data| first_of(data, &["id"]))) {
        None => return Err(ApiError::missing(&format!("{at}id"))),
        Some((field, value)) => {
            let id =
                input::id_text(value).ok_or_else(|| ApiError::incorrect(&format!("{at}{field}"), value.clone()))?;
            let sent = value.as_str().and_then(input::id_as_sent).unwrap_or_else(|| id.clone());
            (id, sent)
        }
    };
    match event.get("userId").and_then(Value::as_str) {
        Some(owner) if owner != user_id => problems.push(format!("userId {owner} is not the delivering user")),
        _ => {}
    }
    let Some(data) = data else {
        problems.push("no data object".into());
        return Ok(Receipt {
            id,
            sent_id,
            store: None,
            device: None,
            date_time: now_ms,
            filed_at: now_ms,
            raw,
            problems,
        });
    };
    let store = first_of(data, &["storeId", "storeUuid"]).and_then(|(_, value)| input::id_text(value));
    if store.is_none() {
        problems.push("no usable data.storeId".into());
    }
    let device = first_of(data, &["deviceId", "deviceUuid"]).and_then(|(_, value)| input::id_text(value));
    if device.is_none() {
        problems.push("no usable data.deviceId".into());
    }
    let found = first_of(data, &["dateTime"]).or_else(|| first_of(&event, &["timestamp"]));
    let date_time = crate::time::or_arrival(found, "data.dateTime", now_ms, &mut problems);
    let filed_at = crate::time::filed_at(date_time, "data.dateTime", now_ms, &mut problems);
    Ok(Receipt {
        id,
        sent_id,
        store: store.map(|store| store.to_ascii_lowercase()),
        device: device.map(|device| device.to_ascii_lowercase()),
        date_time,
        filed_at,
        raw,
        problems,
    })
}

pub(crate) fn document_view(record: DocumentRecord) -> Value {
    json!({
        "id": record.id, "storeUuid": record.store_uuid, "type": record.r#type, "closeDate": record.close_date,
        "version": record.version, "format": record.format, "deviceUuid": record.device_uuid,
        "userId": record.user_id, "receivedAt": record.received_at,
        "document": record.document,
    })
}

pub(crate) fn receipt_view(record: ReceiptRecord) -> Value {
    json!({
        "id": record.id, "storeUuid": record.store_uuid, "dateTime": record.date_time, "userId": record.user_id,
        "receivedAt": record.received_at, "event": record.event,
    })
}

/// Records receipt events `raws` of user `user_id` (`array`: the delivery
/// was an array, so errors name items by index), each once: the number
/// new and the number already recorded.
pub(crate) fn ingest_receipts(
    ctx: &Ctx<'_>,
    settings: &Settings,
    user_id: &str,
    raws: Vec<&RawValue>,
    array: bool,
) -> Result<(usize, usize), ApiError> {
    input::within_item_limit(&raws)?;
    let now = ctx.clock.now_unix();
    let now_ms = crate::time::millis(now);
    let mut receipts = Vec::with_capacity(raws.len());
    let mut seen = BTreeSet::new();
    for (index, raw) in raws.into_iter().enumerate() {
        let at = if array { format!("[{index}].") } else { String::new() };
        let receipt = receipt(raw, &at, user_id, now_ms)?;
        if seen.insert(receipt.id.clone()) {
            receipts.push(receipt);
        }
    }
    let device_limit = crate::domain::billing::device_limit(ctx, user_id, settings)?;
    let stores: BTreeSet<&str> = receipts.iter().filter_map(|receipt| receipt.store.as_deref()).collect();
    let devices: BTreeSet<&str> = receipts.iter().filter_map(|receipt| receipt.device.as_deref()).collect();
    let past_licence = PastLicence::Refuse;
    let delivery = Delivery { user_id, stores: &stores, devices: &devices, device_limit, past_licence, now };
    commit_delivery(ctx, settings, &delivery, |txn, foreign| {
        let (mut new, mut repeated) = (0, 0);
        for receipt in &receipts {
            let hash = storage::receipt_id_hash(&receipt.id);
            let key = storage::receipt_key(&hash, user_id);
            // Receipts of this version are kept per user; older ones under the id alone.
            let legacy = txn.get::<ReceiptRecord>(&storage::receipt_key_by_hash(&hash))?;
            if legacy.is_some_and(|legacy| legacy.user_id == user_id)
                || txn.get::<serde::de::IgnoredAny>(&key)?.is_some()
            {
                repeated += 1;
                continue;
            }
            let store = receipt.store.as_deref().unwrap_or_default();
            let record = NewReceipt {
                v: storage::FORMAT,
                id: &receipt.sent_id,
                store_uuid: store,
                date_time: receipt.date_time,
                user_id,
                received_at: now,
                event: receipt.raw,
            };
            txn.put(&key, &record);
            // A receipt into another user's store stays out of that store's listing.
            if !store.is_empty() && !foreign.contains(store) {
                let index = format!(
                    "{}{:013}.{hash}.{user_id}",
                    storage::receipts_by_date_prefix(store),
                    receipt.filed_at.max(0)
                );
                txn.put(&index, &json!({ "v": storage::FORMAT }));
            }
            let data = json!({ "storeUuid": receipt.store, "id": receipt.sent_id });
            txn.emit("receipt.received", now, Some(user_id), data);
            for problem in &receipt.problems {
                let mut issue = Issue::new(Some(user_id), "receipt", &receipt.sent_id, problem.as_str());
                issue.store = receipt.store.clone();
                txn.issue(now, issue);
            }
            new += 1;
        }
        Ok((new, repeated))
    })
}

#[cfg(test)]
pub(crate) mod tests;
