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

use crate::accounts::settings;
use crate::config::Settings;
use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::input::{self, Object};
use crate::inventory::is_uuid;
use crate::partner_api::{paging, query, require_partner, store_param};
use crate::router::Params;
use crate::storage::{self, StorageError};
use crate::{Ctx, auth, billing};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};

/// Most documents or receipts one request may carry.
pub const MAX_BATCH: usize = 5000;
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
];

/// A terminal document as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentRecord {
    /// Storage format version.
    pub v: u32,
    /// The document's uuid, lower case.
    pub id: String,
    /// The store, lower case.
    pub store_uuid: String,
    /// The document type as given.
    pub r#type: String,
    /// `closeDate`, Unix milliseconds.
    pub close_date: i64,
    /// Its schema version (`V1` when not given).
    pub version: String,
    /// The user whose token delivered it.
    pub user_id: String,
    /// When it arrived, Unix seconds.
    pub received_at: u64,
    /// The document exactly as received.
    pub document: Value,
}

/// A receipt event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptRecord {
    /// Storage format version.
    pub v: u32,
    /// The event id.
    pub id: String,
    /// The store (`data.storeId`), lower case.
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

/// A validated document of a request.
struct Document {
    id: String,
    store: String,
    kind: String,
    close_date: i64,
    version: String,
    device: String,
    body: Object,
}

fn uuid_field(doc: &Object, at: &str, field: &str) -> Result<String, ApiError> {
    match doc.get(field) {
        None | Some(Value::Null) => Err(ApiError::missing(&format!("{at}{field}"))),
        Some(Value::String(id)) if is_uuid(id) => Ok(id.to_ascii_lowercase()),
        Some(other) => Err(ApiError::incorrect(&format!("{at}{field}"), other.clone())),
    }
}

fn date_field(doc: &Object, at: &str, field: &str) -> Result<i64, ApiError> {
    match doc.get(field) {
        None | Some(Value::Null) => Err(ApiError::missing(&format!("{at}{field}"))),
        Some(Value::String(text)) => {
            crate::time::parse_datetime(text).ok_or_else(|| ApiError::incorrect(&format!("{at}{field}"), text.as_str()))
        }
        Some(Value::Number(millis)) => {
            millis.as_i64().ok_or_else(|| ApiError::incorrect(&format!("{at}{field}"), Value::Number(millis.clone())))
        }
        Some(_) => Err(ApiError::wrong_type(&format!("{at}{field}"), "a date-time")),
    }
}

/// A type name safe in keys: `^[A-Z0-9_]{1,64}$`.
fn is_type_name(kind: &str) -> bool {
    (1..=64).contains(&kind.len()) && kind.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks document `index`. `path_store` is the store of the URL, if any.
fn document(value: Value, index: usize, path_store: Option<&str>) -> Result<Document, ApiError> {
    let at = format!("[{index}].");
    let Value::Object(body) = value else {
        return Err(ApiError::wrong_type(&format!("[{index}]"), "an object"));
    };
    let id = uuid_field(&body, &at, "uuid")?;
    let kind = match body.get("type") {
        None | Some(Value::Null) => return Err(ApiError::missing(&format!("{at}type"))),
        Some(Value::String(kind)) if is_type_name(kind) => kind.clone(),
        Some(other) => return Err(ApiError::incorrect(&format!("{at}type"), other.clone())),
    };
    let device = uuid_field(&body, &at, "deviceUuid")?;
    let close_date = date_field(&body, &at, "closeDate")?;
    date_field(&body, &at, "openDate")?;
    uuid_field(&body, &at, "sessionUUID")?;
    // Required by the spec and present in every real document; `null` where the spec allows it.
    for field in ["openUserUuid", "closeUserUuid", "sessionNumber"] {
        match body.get(field) {
            None | Some(Value::Null) => return Err(ApiError::missing(&format!("{at}{field}"))),
            Some(Value::String(_) | Value::Number(_)) => {}
            Some(_) => return Err(ApiError::wrong_type(&format!("{at}{field}"), "a string")),
        }
    }
    for field in ["openUserCode", "closeUserCode", "closeResultSum", "closeSum"] {
        match body.get(field) {
            None => return Err(ApiError::missing(&format!("{at}{field}"))),
            Some(Value::Null | Value::String(_) | Value::Number(_)) => {}
            Some(_) => return Err(ApiError::wrong_type(&format!("{at}{field}"), "a number or a string")),
        }
    }
    match body.get("number") {
        None | Some(Value::Null) => return Err(ApiError::missing(&format!("{at}number"))),
        Some(Value::Number(_)) => {}
        Some(_) => return Err(ApiError::wrong_type(&format!("{at}number"), "a number")),
    }
    // Real BUY and BUYBACK documents come without `extras`.
    match body.get("extras") {
        None if !matches!(kind.as_str(), "BUY" | "BUYBACK") => return Err(ApiError::missing(&format!("{at}extras"))),
        None | Some(Value::Null | Value::Object(_)) => {}
        Some(_) => return Err(ApiError::wrong_type(&format!("{at}extras"), "an object")),
    }
    if let Some(transactions) = body.get("transactions")
        && !matches!(transactions, Value::Array(_) | Value::Null)
    {
        return Err(ApiError::wrong_type(&format!("{at}transactions"), "an array"));
    }
    let version = match body.get("version") {
        None | Some(Value::Null) => "V1".to_owned(),
        Some(Value::String(version)) if (1..=16).contains(&version.len()) => version.clone(),
        Some(other) => return Err(ApiError::incorrect(&format!("{at}version"), other.clone())),
    };
    let store = match (body.get("storeUuid"), path_store) {
        (None | Some(Value::Null), Some(store)) => store.to_owned(),
        (None | Some(Value::Null), None) => return Err(ApiError::missing(&format!("{at}storeUuid"))),
        (Some(_), _) => {
            let named = uuid_field(&body, &at, "storeUuid")?;
            if path_store.is_some_and(|store| store != named) {
                return Err(ApiError::incorrect(&format!("{at}storeUuid"), named));
            }
            named
        }
    };
    Ok(Document { id, store, kind, close_date, version, device, body })
}

/// Each distinct store must be the user's (or unowned: then it becomes
/// theirs); each distinct device must be licensed.
fn admit<'a>(
    ctx: &Ctx<'_>,
    settings: &Settings,
    user_id: &str,
    stores: impl Iterator<Item = &'a str>,
    devices: impl Iterator<Item = &'a str>,
) -> Result<(), ApiError> {
    for store in stores.collect::<BTreeSet<_>>() {
        crate::catalog::claim_store(ctx, user_id, store)?;
    }
    for device in devices.collect::<BTreeSet<_>>() {
        billing::require_device(ctx, user_id, device, settings)?;
    }
    Ok(())
}

/// `PUT /api/v1/inventories/stores/{storeUuid}/documents`.
pub fn put_documents(ctx: &Ctx<'_>, request: &Request, params: &Params) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    let store = params.get("storeUuid").unwrap_or_default();
    if !is_uuid(store) {
        return Err(ApiError::not_found());
    }
    ingest_documents(ctx, &settings, &user_id, &request.body, Some(&store.to_ascii_lowercase()))
}

/// `PUT {documents_webhook_path}`: each document names its own store.
pub fn put_documents_bare(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    ingest_documents(ctx, &settings, &user_id, &request.body, None)
}

fn ingest_documents(
    ctx: &Ctx<'_>,
    settings: &Settings,
    user_id: &str,
    body: &[u8],
    path_store: Option<&str>,
) -> Result<Response, ApiError> {
    let mut documents: Vec<Document> = Vec::new();
    let mut positions: HashMap<(String, String), usize> = HashMap::new();
    for (index, value) in input::array(body, MAX_BATCH)?.into_iter().enumerate() {
        let document = document(value, index, path_store)?;
        match positions.get(&(document.store.clone(), document.id.clone())) {
            // The same document twice in one delivery: once is enough, two versions are an error.
            Some(first) if documents[*first].body == document.body => continue,
            Some(_) => return Err(ApiError::incorrect(&format!("[{index}].uuid"), document.id)),
            None => {
                positions.insert((document.store.clone(), document.id.clone()), documents.len());
                documents.push(document);
            }
        }
    }
    admit(
        ctx,
        settings,
        user_id,
        documents.iter().map(|doc| doc.store.as_str()),
        documents.iter().map(|doc| doc.device.as_str()),
    )?;
    for kind in documents.iter().map(|doc| doc.kind.as_str()).collect::<BTreeSet<_>>() {
        if !KNOWN_TYPES.contains(&kind) {
            auth::log_once(
                ctx,
                &format!("unknown/document-type/{kind}"),
                &format!("kept documents of unknown type {kind}"),
            );
        }
    }
    let now = ctx.clock.now_unix();
    let (new, repeated) = storage::transact(ctx.kv, |txn| -> Result<(usize, usize), ApiError> {
        let (mut new, mut repeated) = (0, 0);
        for doc in &documents {
            let key = storage::document_key(&doc.store, &doc.id);
            if txn.get::<serde::de::IgnoredAny>(&key)?.is_some() {
                repeated += 1;
                continue;
            }
            let record = DocumentRecord {
                v: storage::FORMAT,
                id: doc.id.clone(),
                store_uuid: doc.store.clone(),
                r#type: doc.kind.clone(),
                close_date: doc.close_date,
                version: doc.version.clone(),
                user_id: user_id.to_owned(),
                received_at: now,
                document: Value::Object(doc.body.clone()),
            };
            txn.put(&key, &record);
            let position = format!("{:013}.{}", doc.close_date.max(0), doc.id);
            let marker = json!({ "v": storage::FORMAT });
            txn.put(&format!("{}{position}", storage::documents_by_date_prefix(&doc.store)), &marker);
            txn.put(&format!("{}{position}", storage::documents_by_type_prefix(&doc.store, &doc.kind)), &marker);
            let data = json!({ "storeUuid": doc.store, "id": doc.id, "type": doc.kind });
            txn.emit("document.received", now, Some(user_id), data);
            new += 1;
        }
        Ok((new, repeated))
    })?;
    Ok(Response::json(200, &json!({ "accepted": new, "duplicates": repeated })))
}

/// A validated receipt event.
struct Receipt {
    id: String,
    store: String,
    device: String,
    date_time: i64,
    body: Object,
}

fn receipt(value: Value, index: Option<usize>, user_id: &str) -> Result<Receipt, ApiError> {
    let at = index.map(|index| format!("[{index}].")).unwrap_or_default();
    let Value::Object(body) = value else {
        return Err(ApiError::wrong_type(at.trim_end_matches('.'), "an object"));
    };
    let id = match body.get("id") {
        None | Some(Value::Null) => return Err(ApiError::missing(&format!("{at}id"))),
        Some(Value::String(id)) if (1..=128).contains(&id.len()) => id.clone(),
        Some(other) => return Err(ApiError::incorrect(&format!("{at}id"), other.clone())),
    };
    match input::required_str(&body, "userId") {
        Ok(owner) if owner == user_id => {}
        Ok(owner) => return Err(ApiError::incorrect(&format!("{at}userId"), owner)),
        Err(mut err) => {
            err.subject = Some(format!("{at}userId"));
            return Err(err);
        }
    }
    let Some(Value::Object(data)) = body.get("data") else {
        return Err(ApiError::missing(&format!("{at}data")));
    };
    let inner = format!("{at}data.");
    let store = uuid_field(data, &inner, "storeId")?;
    let device = uuid_field(data, &inner, "deviceId")?;
    let date_time = date_field(data, &inner, "dateTime")?;
    if data.get("id").is_none_or(Value::is_null) {
        return Err(ApiError::missing(&format!("{inner}id")));
    }
    if let Some(items) = data.get("items")
        && !matches!(items, Value::Array(_) | Value::Null)
    {
        return Err(ApiError::wrong_type(&format!("{inner}items"), "an array"));
    }
    Ok(Receipt { id, store, device, date_time, body })
}

/// `POST /api/v1/receipt`: an array of receipt events.
pub fn post_receipts_v1(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    let receipts = input::array(&request.body, MAX_BATCH)?
        .into_iter()
        .enumerate()
        .map(|(index, value)| receipt(value, Some(index), &user_id))
        .collect::<Result<Vec<_>, _>>()?;
    ingest_receipts(ctx, &settings, &user_id, receipts)
}

/// `POST /api/v2/receipts`: one receipt event or an array of them.
pub fn post_receipts_v2(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    let receipts = match serde_json::from_slice::<Value>(&request.body) {
        Ok(Value::Array(values)) => input::bounded(values, MAX_BATCH)?
            .into_iter()
            .enumerate()
            .map(|(index, value)| receipt(value, Some(index), &user_id))
            .collect::<Result<Vec<_>, _>>()?,
        Ok(value @ Value::Object(_)) => vec![receipt(value, None, &user_id)?],
        Ok(_) => return Err(ApiError::syntax("expected a receipt event or an array of them")),
        Err(_) => return Err(ApiError::syntax("malformed JSON")),
    };
    ingest_receipts(ctx, &settings, &user_id, receipts)
}

fn ingest_receipts(
    ctx: &Ctx<'_>,
    settings: &Settings,
    user_id: &str,
    mut receipts: Vec<Receipt>,
) -> Result<Response, ApiError> {
    let mut seen = BTreeSet::new();
    receipts.retain(|receipt| seen.insert(receipt.id.clone()));
    admit(
        ctx,
        settings,
        user_id,
        receipts.iter().map(|receipt| receipt.store.as_str()),
        receipts.iter().map(|receipt| receipt.device.as_str()),
    )?;
    let now = ctx.clock.now_unix();
    let (new, repeated) = storage::transact(ctx.kv, |txn| -> Result<(usize, usize), ApiError> {
        let (mut new, mut repeated) = (0, 0);
        for receipt in &receipts {
            let key = storage::receipt_key(&receipt.id);
            if txn.get::<serde::de::IgnoredAny>(&key)?.is_some() {
                repeated += 1;
                continue;
            }
            let record = ReceiptRecord {
                v: storage::FORMAT,
                id: receipt.id.clone(),
                store_uuid: receipt.store.clone(),
                date_time: receipt.date_time,
                user_id: user_id.to_owned(),
                received_at: now,
                event: Value::Object(receipt.body.clone()),
            };
            txn.put(&key, &record);
            let index = format!(
                "{}{:013}.{}",
                storage::receipts_by_date_prefix(&receipt.store),
                receipt.date_time.max(0),
                storage::receipt_id_hash(&receipt.id)
            );
            txn.put(&index, &json!({ "v": storage::FORMAT }));
            txn.emit("receipt.received", now, Some(user_id), json!({ "storeUuid": receipt.store, "id": receipt.id }));
            new += 1;
        }
        Ok((new, repeated))
    })?;
    Ok(Response::json(200, &json!({ "accepted": new, "duplicates": repeated })))
}

/// A date bound of a listing: ISO 8601 or Unix milliseconds.
fn bound(request: &Request, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(text) = query(request, name).filter(|text| !text.is_empty()) else { return Ok(None) };
    let decoded = input::percent_decode(text).ok_or_else(|| ApiError::incorrect(name, text))?;
    let millis = decoded.parse::<i64>().ok().or_else(|| crate::time::parse_datetime(&decoded));
    millis.map(Some).ok_or_else(|| ApiError::incorrect(name, text))
}

/// Index entries under `prefix` (`{ms:013}.{id}`) within `[from, to)` after the cursor `after`.
fn window(ctx: &Ctx<'_>, request: &Request, prefix: &str) -> Result<(Vec<String>, Option<String>), ApiError> {
    let (after, limit) = paging(request)?;
    let from = bound(request, "from")?;
    let to = bound(request, "to")?;
    let start = match (after, from) {
        (Some(after), _) => Some(format!("{prefix}{after}")),
        // `{ms:013}` sorts before every `{ms:013}.{id}`: the scan starts at `from` inclusive.
        (None, Some(from)) => Some(format!("{prefix}{:013}", from.max(0))),
        (None, None) => None,
    };
    let entries = storage::collect(ctx.kv, prefix, start, limit as usize)?;
    let mut positions = Vec::new();
    let mut ended = entries.len() < limit as usize;
    for (key, _) in entries {
        let position = key.strip_prefix(prefix).unwrap_or_default().to_owned();
        let millis = position.split('.').next().and_then(|ms| ms.parse::<i64>().ok()).unwrap_or(0);
        if to.is_some_and(|to| millis >= to) {
            ended = true;
            break;
        }
        positions.push(position);
    }
    let next = if ended { None } else { positions.last().cloned() };
    Ok((positions, next))
}

fn document_view(record: DocumentRecord) -> Value {
    json!({
        "id": record.id, "storeUuid": record.store_uuid, "type": record.r#type, "closeDate": record.close_date,
        "version": record.version, "userId": record.user_id, "receivedAt": record.received_at,
        "document": record.document,
    })
}

fn receipt_view(record: ReceiptRecord) -> Value {
    json!({
        "id": record.id, "storeUuid": record.store_uuid, "dateTime": record.date_time, "userId": record.user_id,
        "receivedAt": record.received_at, "event": record.event,
    })
}

/// `GET /partner/v1/stores/{storeUuid}/documents?type=&from=&to=&after=&limit=`.
pub fn partner_list_documents(ctx: &Ctx<'_>, request: &Request, params: &Params) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let store = store_param(params)?;
    let prefix = match query(request, "type").filter(|kind| !kind.is_empty()) {
        Some(kind) if is_type_name(kind) => storage::documents_by_type_prefix(&store, kind),
        Some(kind) => return Err(ApiError::incorrect("type", kind)),
        None => storage::documents_by_date_prefix(&store),
    };
    let (positions, next) = window(ctx, request, &prefix)?;
    let mut items = Vec::with_capacity(positions.len());
    for position in &positions {
        let id = position.split('.').nth(1).unwrap_or_default();
        let key = storage::document_key(&store, id);
        let record = storage::read::<DocumentRecord>(ctx.kv, &key)?.ok_or(StorageError::Corrupt(key))?;
        items.push(document_view(record));
    }
    Ok(Response::json(200, &json!({ "items": items, "next": next })))
}

/// `GET /partner/v1/stores/{storeUuid}/documents/{id}`.
pub fn partner_get_document(ctx: &Ctx<'_>, request: &Request, params: &Params) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let store = store_param(params)?;
    let id = params.get("id").unwrap_or_default();
    if !is_uuid(id) {
        return Err(ApiError::not_found());
    }
    let record = storage::read::<DocumentRecord>(ctx.kv, &storage::document_key(&store, &id.to_ascii_lowercase()))?;
    Ok(Response::json(200, &document_view(record.ok_or_else(ApiError::not_found)?)))
}

/// `GET /partner/v1/stores/{storeUuid}/receipts?from=&to=&after=&limit=`.
pub fn partner_list_receipts(ctx: &Ctx<'_>, request: &Request, params: &Params) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let store = store_param(params)?;
    let (positions, next) = window(ctx, request, &storage::receipts_by_date_prefix(&store))?;
    let mut items = Vec::with_capacity(positions.len());
    for position in &positions {
        let hash = position.split('.').nth(1).unwrap_or_default();
        let key = storage::receipt_key_by_hash(hash);
        let record = storage::read::<ReceiptRecord>(ctx.kv, &key)?.ok_or(StorageError::Corrupt(key))?;
        items.push(receipt_view(record));
    }
    Ok(Response::json(200, &json!({ "items": items, "next": next })))
}

/// `GET /partner/v1/receipts/{id}`: one receipt event by its id.
pub fn partner_get_receipt(ctx: &Ctx<'_>, request: &Request, params: &Params) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let id = params.get("id").unwrap_or_default();
    let record = storage::read::<ReceiptRecord>(ctx.kv, &storage::receipt_key(id))?;
    Ok(Response::json(200, &receipt_view(record.ok_or_else(ApiError::not_found)?)))
}

#[cfg(test)]
pub(crate) mod tests;
