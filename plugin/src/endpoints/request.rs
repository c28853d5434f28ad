//! What the partner API's handlers share: its credential, and reading a
//! request's query (cursors, page sizes, ids in the path).

use crate::Ctx;
use crate::endpoints::auth;
use crate::errors::ApiError;
use crate::http::Request;
use crate::input;

/// Config key of the partner API's bearer token.
pub const PARTNER_API_TOKEN: &str = "partner_api_token";
/// Page size when `limit` is not given.
const DEFAULT_LIMIT: u32 = 100;

/// Succeeds for a request bearing the partner API token, and for a call
/// of the extension API ([`crate::endpoints::extension`]), whose reads are
/// the partner API's. Without the setting the partner API does not exist
/// (404); a wrong token is 401.
pub(crate) fn require_partner(ctx: &Ctx<'_>, request: &Request) -> Result<(), ApiError> {
    if crate::endpoints::extension::is_extension_call(request, crate::endpoints::local_path(request)) {
        return Ok(());
    }
    partner_token_presented(ctx, request)
}

/// Succeeds when the request's `Authorization` is `Bearer` and the partner
/// API token: 404 without the setting, 401 for another credential.
pub(crate) fn partner_token_presented(ctx: &Ctx<'_>, request: &Request) -> Result<(), ApiError> {
    let Some(want) = ctx.config.non_empty(PARTNER_API_TOKEN) else {
        return Err(ApiError::not_found());
    };
    let given = request
        .header_value("authorization")
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(token) if auth::secrets_equal(token.as_bytes(), want.as_bytes()) => Ok(()),
        _ => Err(ApiError::partner_unauthorized()),
    }
}

/// The value of query parameter `name` (no percent-decoding: cursors and
/// numbers are plain ASCII).
pub(crate) fn query<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// `after` and `limit` of a listing: limit 1..=1000, cursor without `/`.
pub(crate) fn paging(request: &Request) -> Result<(Option<&str>, u32), ApiError> {
    let limit = match query(request, "limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<u32>() {
            Ok(limit @ 1..=1000) => limit,
            _ => return Err(ApiError::incorrect("limit", text)),
        },
    };
    let after = query(request, "after").filter(|after| !after.is_empty());
    if let Some(after) = after
        && (after.len() > 128 || after.contains('/'))
    {
        return Err(ApiError::incorrect("after", after));
    }
    Ok((after, limit))
}

/// The `{storeUuid}` of a partner path, lower case; not a uuid → 400 2003.
pub(crate) fn store_param(store: &str) -> Result<String, ApiError> {
    // Every id the intake takes can be read back (`00000000-0000-…` included).
    match crate::input::percent_decode(store).as_deref().and_then(crate::input::id_str) {
        Some(store) => Ok(store.to_ascii_lowercase()),
        None => Err(ApiError::incorrect("storeUuid", store)),
    }
}

/// The `{userId}` of a partner path; not `NN-NNNNNNNNNNNNNNN` → 400 2003.
pub(crate) fn user_param(user_id: &str) -> Result<&str, ApiError> {
    if input::is_user_id(user_id) { Ok(user_id) } else { Err(ApiError::incorrect("userId", user_id)) }
}
