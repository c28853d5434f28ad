//! The product catalog both ways: Evotor's pages and uploads, the commodity
//! lookup, and the partner's catalog API.

use crate::Ctx;
use crate::config::settings;
use crate::domain::catalog::{
    DEFAULT_PAGE_SIZE, Directory, MAX_BATCH, MAX_PAGE_SIZE, Orphan, ProductRecord, claim_store, delete_products,
    find_commodity, items, products_page, terminal_items, upsert_all, upsert_counted,
};
use crate::endpoints::auth;
use crate::endpoints::request::{paging, query, require_partner, store_param};
use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::input;
use crate::storage;
use serde_json::{Value, json};

/// The store of an Evotor-side call, from the path: see [`claim_store`].
fn user_store(ctx: &Ctx<'_>, user_id: &str, store: &str) -> Result<String, ApiError> {
    if !crate::input::is_uuid(store) {
        return Err(ApiError::not_found());
    }
    let store = store.to_ascii_lowercase();
    claim_store(ctx, user_id, &store)?;
    Ok(store)
}

/// `page` and `size` of an Evotor listing: neither (the whole catalog),
/// both, `page` alone (of [`DEFAULT_PAGE_SIZE`]) or `size` alone (page 0).
fn evotor_paging(request: &Request) -> Result<Option<(u64, u64)>, ApiError> {
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        match query(request, name).map(str::trim) {
            None | Some("") => Ok(None),
            Some(text) => text.parse::<u64>().map(Some).map_err(|_| ApiError::incorrect(name, text)),
        }
    };
    let (page, size) = (number("page")?, number("size")?);
    if page.is_none() && size.is_none() {
        return Ok(None);
    }
    let size = match size {
        None => DEFAULT_PAGE_SIZE,
        Some(size @ 1..=MAX_PAGE_SIZE) => size,
        Some(size) => return Err(ApiError::incorrect("size", size)),
    };
    Ok(Some((page.unwrap_or(0), size)))
}

/// A JSON answer whose body is already encoded.
fn json_bytes(status: u16, body: Vec<u8>) -> Response {
    Response { status, headers: vec![("content-type".into(), "application/json; charset=utf-8".into())], body }
}

/// `GET /api/v1/inventories/stores/{storeUuid}/products[?page=&size=]`.
///
/// Without `page` and `size`: every product and group of the store, no
/// paging headers. With them: that page, with `X-Total-Items-Count`,
/// `X-Pagination-Page-Size` (the items on this page),
/// `X-Pagination-Total-Page-Count` (at least 1) and, when there is a next
/// page, `X-Pagination-Next-Page`.
pub fn get_products(ctx: &Ctx<'_>, request: &Request, store: &str) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    if crate::input::is_uuid(store) {
        let store = store.to_ascii_lowercase();
        auth::prefetch(ctx, request, [storage::owner_key("store", &store), storage::catalog_directory_key(&store)]);
    }
    let user_id = auth::require_user(ctx, request, &settings)?;
    let paging = evotor_paging(request)?;
    let store = user_store(ctx, &user_id, store)?;
    let Some((page, size)) = paging else {
        let (body, _, _) = products_page(ctx, &store, 0, u64::MAX)?;
        return Ok(json_bytes(200, body));
    };
    let (body, count, total) = products_page(ctx, &store, page.saturating_mul(size), size)?;
    let mut response = json_bytes(200, body);
    response.headers.push(("x-total-items-count".into(), total.to_string()));
    response.headers.push(("x-pagination-page-size".into(), count.to_string()));
    response.headers.push(("x-pagination-total-page-count".into(), total.div_ceil(size).max(1).to_string()));
    if page.saturating_add(1).saturating_mul(size) < total {
        response.headers.push(("x-pagination-next-page".into(), (page + 1).to_string()));
    }
    Ok(response)
}

/// `POST /api/v1/inventories/stores/{storeUuid}/products`.
pub fn post_products(ctx: &Ctx<'_>, request: &Request, store: &str) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    let items = terminal_items(ctx, &request.body)?;
    let store = user_store(ctx, &user_id, store)?;
    upsert_counted(ctx, &store, &items, "evotor", Some((&settings, &user_id)))?;
    let answer: Vec<Value> = items.iter().map(|item| json!({ "uuid": item.uuid })).collect();
    Ok(Response::json(200, &Value::Array(answer)))
}

/// `GET /api/v1/commodities?scanCode=&alcCode=`.
pub fn commodity(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    let scan_code = match query(request, "scanCode").map(input::percent_decode) {
        None => return Err(ApiError::missing("scanCode")),
        Some(None) => return Err(ApiError::incorrect("scanCode", "not UTF-8")),
        Some(Some(code)) if code.is_empty() => return Err(ApiError::missing("scanCode")),
        Some(Some(code)) if code.len() > 128 => return Err(ApiError::incorrect("scanCode", "over 128 bytes")),
        Some(Some(code)) => code,
    };
    let alc_code = match query(request, "alcCode").map(input::percent_decode) {
        Some(None) => return Err(ApiError::incorrect("alcCode", "not UTF-8")),
        Some(Some(code)) if !code.is_empty() => Some(code),
        _ => None,
    };
    let product = find_commodity(ctx, &user_id, &scan_code, alc_code.as_deref())?.ok_or_else(ApiError::not_found)?;
    Ok(Response::json(
        200,
        &json!({
            "name": product["name"],
            "alcCodes": product.get("alcoCodes").cloned().unwrap_or(json!([])),
            "scanCodes": product.get("barCodes").cloned().unwrap_or(json!([])),
            "alcoholByVolume": product.get("alcoholByVolume"),
            "alcoholProductKindCode": product.get("alcoholProductKindCode"),
            "tareVolume": product.get("tareVolume"),
            "measure": product.get("measureName"),
        }),
    ))
}

/// `PUT /partner/v1/stores/{storeUuid}/products`: bulk upsert, all or nothing.
pub fn partner_put_products(ctx: &Ctx<'_>, request: &Request, store: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let store = store_param(store)?;
    let items = items(ctx, &request.body)?;
    upsert_all(ctx, &store, &items, "partner")?;
    Ok(Response::json(200, &json!({ "upserted": items.len() })))
}

/// `POST /partner/v1/stores/{storeUuid}/products/delete`: a JSON array of uuids.
pub fn partner_delete_products(ctx: &Ctx<'_>, request: &Request, store: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let store = store_param(store)?;
    let values = input::array(&request.body, MAX_BATCH)?;
    let mut uuids = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        match value.as_str() {
            Some(uuid) if crate::input::is_uuid(uuid) => uuids.push(uuid.to_ascii_lowercase()),
            _ => return Err(ApiError::incorrect(&format!("[{index}]"), value.clone())),
        }
    }
    uuids.sort_unstable();
    uuids.dedup();
    if uuids.is_empty() {
        return Ok(Response::json(200, &json!({ "deleted": 0 })));
    }
    let deleted = delete_products(ctx, &store, &uuids, "partner")?;
    Ok(Response::json(200, &json!({ "deleted": deleted })))
}

/// `GET /partner/v1/stores/{storeUuid}/products?after=&limit=`.
pub fn partner_list_products(ctx: &Ctx<'_>, request: &Request, store: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let store = store_param(store)?;
    let (after, limit) = paging(request)?;
    let (records, next) = storage::page::<ProductRecord>(ctx.kv, &storage::products_prefix(&store), after, limit)?;
    let total =
        storage::read::<Directory>(ctx.kv, &storage::catalog_directory_key(&store))?.unwrap_or_default().total();
    let items: Vec<Value> = records
        .into_iter()
        .map(|record| json!({ "product": record.product, "source": record.source, "updatedAt": record.updated_at }))
        .collect();
    Ok(Response::json(200, &json!({ "items": items, "next": next, "total": total })))
}

/// `GET /partner/v1/stores/{storeUuid}/publication`: what of the store's
/// catalog waits for the Evotor cloud, the tasks, what failed, the conflicts.
pub fn partner_publication(ctx: &Ctx<'_>, request: &Request, store: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let store = store_param(store)?;
    let status = crate::domain::catalog::publication::status(ctx, &store)?;
    Ok(Response::json(200, &status))
}

/// `GET /partner/v1/stores/{storeUuid}/catalog-issues?after=&limit=`: items whose parent is missing.
pub fn partner_catalog_issues(ctx: &Ctx<'_>, request: &Request, store: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let store = store_param(store)?;
    let (after, limit) = paging(request)?;
    let (orphans, next) = storage::page::<Orphan>(ctx.kv, &storage::orphans_prefix(&store), after, limit)?;
    let items: Vec<Value> = orphans
        .into_iter()
        .map(|orphan| json!({ "uuid": orphan.uuid, "problem": "missing parent", "parentUuid": orphan.parent_uuid }))
        .collect();
    Ok(Response::json(200, &json!({ "items": items, "next": next })))
}
