//! Billing events from Evotor — subscriptions (`/api/v1/subscription/event`),
//! installations (`/api/v2/installation/event`), legacy (`/api/v1/user/event`) —
//! and the partner's gap resolution.

use crate::domain::billing::{
    Caller, parse_event, record_event, record_installation_event, record_legacy_event, resolve_gap_now,
};
use crate::endpoints::auth;
use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::input;
use crate::{Ctx, time};
use serde_json::json;

/// The server credential, or any user token we issued: events are taken
/// whatever the state of the account (disabled, lapsed, expired token), as
/// the one that revives it must get through. With `billing_events_auth =
/// "server"`, the server credential only (401 1001 otherwise).
fn caller(ctx: &Ctx<'_>, request: &Request) -> Result<Caller, ApiError> {
    if auth::is_server(ctx, request) {
        return Ok(Caller::Server);
    }
    if crate::config::settings(ctx)?.billing_events_server_only {
        return Err(ApiError::server_unauthorized());
    }
    auth::token_owner(ctx, request).map(Caller::User)
}

/// `POST /api/v1/subscription/event` (server authorization or the user's token).
pub fn subscription_event(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    let caller = caller(ctx, request)?;
    let settings = crate::config::settings(ctx)?;
    let body = input::object(&request.body)?;
    let event = parse_event(&body, time::millis(ctx.clock.now_unix()))?;
    if let Caller::User(user_id) = &caller
        && *user_id != event.user_id
    {
        // A user's token speaks for that user only.
        return Err(ApiError::incorrect("userId", event.user_id.as_str()));
    }
    record_event(ctx, &caller, &event, &body, settings.gap_timeout_secs)?;
    Ok(Response::empty(200))
}

/// `POST /partner/v1/users/{userId}/subscriptions/{subscriptionId}/resolve-gap`:
/// applies the events waiting behind a gap now; answers the state.
pub fn resolve_gap(
    ctx: &Ctx<'_>,
    request: &Request,
    user_id: &str,
    subscription_id: &str,
) -> Result<Response, ApiError> {
    crate::endpoints::request::require_partner(ctx, request)?;
    let subscription_id = subscription_id.to_ascii_lowercase();
    let state = resolve_gap_now(ctx, user_id, &subscription_id)?;
    Ok(Response::json(200, &json!({ "state": state })))
}

/// `POST /api/v2/installation/event` (server authorization or the user's
/// token): `ApplicationInstalled` / `ApplicationUninstalled`, once per `id`.
/// Refused only without an `id` or a user (`data.userId`).
pub fn installation_event(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    let caller = caller(ctx, request)?;
    record_installation_event(ctx, &caller, input::object(&request.body)?)?;
    Ok(Response::empty(200))
}

/// `POST /api/v1/user/event` (legacy billing events; the server credential
/// or a user token): each distinct event is recorded once.
pub fn legacy_event(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    let caller = caller(ctx, request)?;
    record_legacy_event(ctx, &caller, input::object(&request.body)?, &request.body)?;
    Ok(Response::empty(200))
}
