//! Terminal documents and receipts: Evotor's deliveries and the partner's
//! reading API.

use crate::Ctx;
use crate::config::settings;
use crate::domain::documents::{
    DateEntry, DocumentRecord, DocumentType, MAX_BATCH, PART_BYTES, ReceiptRecord, document_view, ingest_documents,
    ingest_receipts, is_type_name, key_id, receipt_view, whole,
};
use crate::domain::inventory::PastLicence;
use crate::endpoints::auth;
use crate::endpoints::request::{paging, query, require_partner, store_param};
use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::input;
use crate::storage::{self, StorageError};
use serde_json::json;

/// The `{storeUuid}` of an Evotor path, lower case; not an id → 404.
fn path_store(store: &str) -> Result<String, ApiError> {
    input::id_str(store).map(|store| store.to_ascii_lowercase()).ok_or_else(ApiError::not_found)
}

/// `PUT /api/v1/inventories/stores/{storeUuid}/documents`: one document or an array.
pub fn put_documents(ctx: &Ctx<'_>, request: &Request, store: &str) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    let store = path_store(store)?;
    let (new, repeated) = ingest_documents(ctx, &settings, &user_id, &request.body, Some(&store), PastLicence::Refuse)?;
    Ok(accepted(new, repeated))
}

/// `PUT {documents_webhook_path}`: each document names its own store.
pub fn put_documents_bare(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    let (new, repeated) = ingest_documents(ctx, &settings, &user_id, &request.body, None, PastLicence::Refuse)?;
    Ok(accepted(new, repeated))
}

/// The answer to a delivery: how many items were new, how many already known.
fn accepted(new: usize, repeated: usize) -> Response {
    Response::json(200, &json!({ "accepted": new, "duplicates": repeated }))
}

/// `POST /api/v1/receipt`, `POST /api/v1/receipts`, `POST /api/v2/receipts`:
/// one receipt event or an array of them.
pub fn post_receipts(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    let (raws, array) = input::raw_items(&request.body, MAX_BATCH)?;
    let (new, repeated) = ingest_receipts(ctx, &settings, &user_id, raws, array)?;
    Ok(accepted(new, repeated))
}

/// A date bound of a listing: ISO 8601 or Unix milliseconds.
fn bound(request: &Request, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(text) = query(request, name).filter(|text| !text.is_empty()) else { return Ok(None) };
    let decoded = input::percent_decode(text).ok_or_else(|| ApiError::incorrect(name, text))?;
    let millis = decoded.parse::<i64>().ok().or_else(|| crate::time::parse_datetime(&decoded));
    millis.map(Some).ok_or_else(|| ApiError::incorrect(name, text))
}

/// Index entries a page of a listing looks at, at most. A listing by type
/// skips the other types' entries: where its type is rare, a page ends
/// short of `limit` with a `next` to go on from, in bounded time.
pub const SCANNED_PER_PAGE: usize = 10_000;

/// Whether a listing takes the index entry at a position, with its value.
type Wanted<'a> = &'a mut dyn FnMut(&str, &[u8]) -> Result<bool, ApiError>;

/// A filtered listing reads the index in steps of at least this many entries.
const SCAN_STEP: usize = 256;

/// Index entries under `prefix` (`{ms:013}.{id}`) within `[from, to)` after
/// the cursor `after`, up to `limit` of those `wanted` takes (it reads each
/// entry's position and value; `None` takes them all), with the cursor of
/// the next page (`None` at the end). A page looks at
/// [`SCANNED_PER_PAGE`] entries at most.
fn window(
    ctx: &Ctx<'_>,
    request: &Request,
    prefix: &str,
    mut wanted: Option<Wanted<'_>>,
) -> Result<(Vec<String>, Option<String>), ApiError> {
    let (after, limit) = paging(request)?;
    let limit = limit as usize;
    let from = bound(request, "from")?;
    let to = bound(request, "to")?;
    let mut start = match (after, from) {
        (Some(after), _) => Some(format!("{prefix}{after}")),
        // `{ms:013}` sorts before every `{ms:013}.{id}`: the scan starts at `from` inclusive.
        (None, Some(from)) => Some(format!("{prefix}{:013}", from.max(0))),
        (None, None) => None,
    };
    let (mut positions, mut scanned, mut last) = (Vec::new(), 0, None);
    loop {
        let missing = limit - positions.len();
        let step = if wanted.is_some() { missing.max(SCAN_STEP) } else { missing };
        let step = step.min(SCANNED_PER_PAGE - scanned);
        if missing == 0 || step == 0 {
            // The page is full, or looked at all it may: the next one goes on after the last entry seen.
            return Ok((positions, last));
        }
        let entries = storage::collect(ctx.kv, prefix, start.take(), step)?;
        let ended = entries.len() < step;
        for (key, entry) in entries {
            let position = key.strip_prefix(prefix).unwrap_or_default().to_owned();
            let millis = position.split('.').next().and_then(|ms| ms.parse::<i64>().ok()).unwrap_or(0);
            if to.is_some_and(|to| millis >= to) {
                return Ok((positions, None));
            }
            scanned += 1;
            if wanted.as_mut().map_or(Ok(true), |wanted| wanted(&position, &entry.value))? {
                positions.push(position.clone());
            }
            last = Some(position);
            start = Some(key);
            if positions.len() == limit {
                break;
            }
        }
        if ended && positions.len() < limit {
            return Ok((positions, None));
        }
    }
}

/// Stored bytes one listing answers at most (at least one item): large
/// documents make shorter pages with a `next`, never an answer past the
/// instance's memory.
const PAGE_BYTES: usize = 4 << 20;

/// A listing's page, cut at [`PAGE_BYTES`] of stored records.
struct BudgetedPage {
    items: Vec<serde_json::Value>,
    next: Option<String>,
    bytes: usize,
    /// The position of the last item taken.
    last: Option<String>,
    cut: bool,
}

impl BudgetedPage {
    fn new(capacity: usize, next: Option<String>) -> Self {
        Self { items: Vec::with_capacity(capacity), next, bytes: 0, last: None, cut: false }
    }

    /// Whether a record of `bytes` at `position` still fits; the page ends before the first that does not.
    fn fits(&mut self, bytes: usize, position: &str) -> bool {
        if !self.items.is_empty() && self.bytes + bytes > PAGE_BYTES {
            self.cut = true;
            return false;
        }
        self.bytes += bytes;
        self.last = Some(position.to_owned());
        true
    }

    fn push(&mut self, item: serde_json::Value) {
        self.items.push(item);
    }

    fn into_response(self) -> Response {
        let next = if self.cut { self.last } else { self.next };
        Response::json(200, &json!({ "items": self.items, "next": next }))
    }
}

/// `GET /partner/v1/stores/{storeUuid}/documents?type=&from=&to=&after=&limit=`.
pub fn partner_list_documents(ctx: &Ctx<'_>, request: &Request, store: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let store = store_param(store)?;
    let kind = match query(request, "type").filter(|kind| !kind.is_empty()) {
        Some(kind) if is_type_name(kind) => Some(kind),
        Some(kind) => return Err(ApiError::incorrect("type", kind)),
        None => None,
    };
    let prefix = storage::documents_by_date_prefix(&store);
    // By type: the date index's entries name their document's type; those
    // written before they did leave it to the document.
    let mut of_kind = |position: &str, value: &[u8]| -> Result<bool, ApiError> {
        let kind = kind.unwrap_or_default();
        let entry: DateEntry = storage::decode(&format!("{prefix}{position}"), value)?;
        if let Some(named) = entry.r#type {
            return Ok(named == kind);
        }
        let id = position.split_once('.').map(|(_, id)| id).unwrap_or_default();
        let document = storage::read::<DocumentType>(ctx.kv, &storage::document_key(&store, id))?;
        Ok(document.is_some_and(|document| document.r#type == kind))
    };
    let wanted = kind.is_some().then_some(&mut of_kind as Wanted<'_>);
    let (positions, next) = window(ctx, request, &prefix, wanted)?;
    let mut page = BudgetedPage::new(positions.len(), next);
    for position in &positions {
        let id = position.split_once('.').map(|(_, id)| id).unwrap_or_default();
        let key = storage::document_key(&store, id);
        let entry = ctx.kv.get(&key)?.ok_or_else(|| StorageError::Corrupt(key.clone()))?;
        let record = storage::decode::<DocumentRecord>(&key, &entry.value)?;
        let size = entry.value.len().saturating_add(record.parts as usize * PART_BYTES);
        if !page.fits(size, position) {
            break;
        }
        page.push(document_view(whole(ctx.kv, &key, record)?));
    }
    Ok(page.into_response())
}

/// `GET /partner/v1/stores/{storeUuid}/documents/{id}`.
pub fn partner_get_document(ctx: &Ctx<'_>, request: &Request, store: &str, id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let store = store_param(store)?;
    let id = input::percent_decode(id).and_then(|id| input::id_str(&id)).ok_or_else(ApiError::not_found)?;
    let key = storage::document_key(&store, &key_id(&id));
    let record = storage::read::<DocumentRecord>(ctx.kv, &key)?.ok_or_else(ApiError::not_found)?;
    Ok(Response::json(200, &document_view(whole(ctx.kv, &key, record)?)))
}

/// `GET /partner/v1/stores/{storeUuid}/receipts?from=&to=&after=&limit=`.
pub fn partner_list_receipts(ctx: &Ctx<'_>, request: &Request, store: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let store = store_param(store)?;
    let (positions, next) = window(ctx, request, &storage::receipts_by_date_prefix(&store), None)?;
    let mut page = BudgetedPage::new(positions.len(), next);
    for position in &positions {
        // `{ms}.{hash}.{userId}`, or `{ms}.{hash}` for receipts kept before they were per user.
        let mut parts = position.split('.').skip(1);
        let hash = parts.next().unwrap_or_default();
        let key = match parts.next() {
            Some(user_id) => storage::receipt_key(hash, user_id),
            None => storage::receipt_key_by_hash(hash),
        };
        let entry = ctx.kv.get(&key)?.ok_or_else(|| StorageError::Corrupt(key.clone()))?;
        if !page.fits(entry.value.len(), position) {
            break;
        }
        page.push(receipt_view(storage::decode::<ReceiptRecord>(&key, &entry.value)?));
    }
    Ok(page.into_response())
}

/// `GET /partner/v1/receipts/{id}[?userId=]`: one receipt event by its id
/// (the first user's when several users sent one with the same id).
pub fn partner_get_receipt(ctx: &Ctx<'_>, request: &Request, id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let id = input::percent_decode(id).and_then(|id| input::id_str(&id)).ok_or_else(ApiError::not_found)?;
    let user = query(request, "userId").filter(|user| !user.is_empty());
    let prefix = storage::receipt_key_by_hash(&storage::receipt_id_hash(&id));
    // The id's own key (kept before receipts were per user), then `{key}/{userId}`.
    for (key, entry) in storage::scan_all(ctx.kv, &prefix)? {
        let record: ReceiptRecord = storage::decode(&key, &entry.value)?;
        // Ids compare case-insensitively; the record keeps it as sent.
        if record.id.eq_ignore_ascii_case(&id) && user.is_none_or(|user| record.user_id == user) {
            return Ok(Response::json(200, &receipt_view(record)));
        }
    }
    Err(ApiError::not_found())
}
