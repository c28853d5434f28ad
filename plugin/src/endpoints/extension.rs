//! The extension API: what the Evotor plugin offers the partner's own
//! plugins — an Evotor app's backend beside it — under `/extension/v1`.
//!
//! Only a plugin the gateway lets call this one (`calls = ["evotor"]` in
//! its configuration) reaches it, with an in-process request to
//! `http://evotor.evogate.internal/extension/v1/…`: the gateway names the
//! caller in `x-evogate-caller`, a header it removes from every request
//! that comes from outside. Without it every path here is 404, whatever
//! the credentials. Errors are Evotor's, so an extension can pass an
//! authentication failure on to the terminal app as it is.
//!
//! | method, path | what |
//! |---|---|
//! | `GET /extension/v1/session` | the terminal app's call, by its forwarded `Authorization` and `X-Evotor-*` headers → the user, the store and the device |
//! | `GET /extension/v1/partner` | 204 when the forwarded `Authorization` is the partner API token, else 401 (404 when none is configured) |
//! | `GET /extension/v1/users/{userId}` | the user, as the partner API shows it |
//! | `GET /extension/v1/users/{userId}/entitlement` | usable?, licensed devices, why not |
//! | `GET /extension/v1/users/{userId}/{stores,employees,devices}` | what Evotor mirrored for the user |
//! | `GET /extension/v1/users/{userId}/stores/{storeUuid}/products?after=&limit=` or `?barcode=` | the store's catalog, paged, or the items with a barcode |
//! | `GET /extension/v1/users/{userId}/stores/{storeUuid}/documents?…` and `/documents/{id}` | the store's documents, with the partner API's filters |
//! | `GET /extension/v1/users/{userId}/stores/{storeUuid}/receipts?…` | the store's receipts |
//! | `GET /extension/v1/feed?after=&limit=&userId=` | the change feed: the partner API's entries, order and cursors |
//!
//! A store path names the user: a store that is not that user's is 404,
//! as a missing one, so an extension acting for one terminal's user cannot
//! read another user's store by mistake. The Evotor plugin's own records
//! (token digests, credentials, the cloud token) are never answered here.

use crate::Ctx;
use crate::config::settings;
use crate::endpoints::auth;
use crate::endpoints::request::{query, store_param, user_param};
use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::storage::{self, OwnerIndex};
use serde_json::{Value, json};

/// The header in which the gateway names the plugin that calls.
pub(crate) const CALLER_HEADER: &str = "x-evogate-caller";
/// Where the extension API's paths start.
pub(crate) const PREFIX: &str = "/extension/";

/// Whether `request`, at `path` below the mount point, is a call of the
/// extension API by a plugin the gateway let through.
pub(crate) fn is_extension_call(request: &Request, path: &str) -> bool {
    path.starts_with(PREFIX) && request.header_value(CALLER_HEADER).is_some_and(|caller| !caller.is_empty())
}

/// `GET /extension/v1/session`: who a terminal app's call is from. The
/// user token resolves as on every user endpoint of the protocol (401
/// 1002, 401 1003, 402 1004 alike); then `X-Evotor-User-Id`,
/// `X-Evotor-Store-Uuid` and `X-Evotor-Device-UUID`, when sent, must not
/// name another user or another user's store or device (403). A store or
/// device nobody owns yet here is answered with `known: false`.
pub fn session(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    if let Some(claimed) = header(request, "x-evotor-user-id")
        && claimed != user_id
    {
        return Err(ApiError::forbidden("X-Evotor-User-Id", claimed));
    }
    let store = named(ctx, request, "X-Evotor-Store-Uuid", "store", &user_id)?;
    let device = named(ctx, request, "X-Evotor-Device-UUID", "device", &user_id)?;
    Ok(Response::json(200, &json!({ "userId": user_id, "store": store, "device": device })))
}

/// A header's trimmed value, when it has one.
fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.header_value(&name.to_ascii_lowercase()).map(str::trim).filter(|value| !value.is_empty())
}

/// The store or device a header names, checked against its owner.
fn named(ctx: &Ctx<'_>, request: &Request, name: &str, kind: &str, user_id: &str) -> Result<Value, ApiError> {
    let Some(sent) = header(request, name) else { return Ok(Value::Null) };
    let uuid = crate::input::id_str(sent).ok_or_else(|| ApiError::incorrect(name, sent))?;
    match storage::read::<OwnerIndex>(ctx.kv, &storage::owner_key(kind, &uuid))? {
        Some(owner) if owner.user_id != user_id => Err(ApiError::forbidden(name, uuid)),
        owner => Ok(json!({ "uuid": uuid, "known": owner.is_some() })),
    }
}

/// `GET /extension/v1/partner`: whether the forwarded `Authorization`
/// carries the partner API token (204), so an extension guards its own
/// administrative endpoints with the one partner secret.
pub fn partner(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    crate::endpoints::request::partner_token_presented(ctx, request)?;
    Ok(Response::empty(204))
}

/// The `{userId}` and `{storeUuid}` of a store path, when the store is
/// that user's; 404 otherwise, as for a store that does not exist.
pub(crate) fn own_store(ctx: &Ctx<'_>, user_id: &str, store: &str) -> Result<String, ApiError> {
    let user_id = user_param(user_id)?;
    let store = store_param(store)?;
    match storage::read::<OwnerIndex>(ctx.kv, &storage::owner_key("store", &store))? {
        Some(owner) if owner.user_id == user_id => Ok(store),
        _ => Err(ApiError::not_found()),
    }
}

/// `GET /extension/v1/users/{userId}/stores/{storeUuid}/products`: the
/// partner API's page, or with `barcode` the items that carry it.
pub fn products(ctx: &Ctx<'_>, request: &Request, user_id: &str, store: &str) -> Result<Response, ApiError> {
    let store = own_store(ctx, user_id, store)?;
    let Some(barcode) = query(request, "barcode") else {
        return crate::endpoints::catalog::partner_list_products(ctx, request, &store);
    };
    let barcode = match crate::input::percent_decode(barcode) {
        Some(code) if !code.is_empty() && code.len() <= 128 => code,
        _ => return Err(ApiError::incorrect("barcode", barcode)),
    };
    let items = crate::domain::catalog::with_barcode(ctx, &store, &barcode)?;
    let items: Vec<Value> = items
        .into_iter()
        .map(|record| json!({ "product": record.product, "source": record.source, "updatedAt": record.updated_at }))
        .collect();
    Ok(Response::json(200, &json!({ "items": items, "next": Value::Null })))
}

#[cfg(test)]
mod tests;
