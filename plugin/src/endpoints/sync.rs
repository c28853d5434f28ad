//! The cloud sync in the partner API: `GET /partner/v1/users/{userId}/sync`
//! (where it stands) and `POST` (run it for this user now).

use crate::Ctx;
use crate::domain::sync;
use crate::endpoints::request::{require_partner, user_param};
use crate::errors::ApiError;
use crate::http::{Request, Response};
use serde_json::json;

/// `GET /partner/v1/users/{userId}/sync`: the token's state, the backfill
/// still to read, the positions per store (or of the feed), the last run,
/// the last error and the counts; 404 for a user the sync has no token of.
pub fn status(ctx: &Ctx<'_>, request: &Request, user_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let user_id = user_param(user_id)?;
    let state = sync::user_state(ctx, user_id)?.ok_or_else(ApiError::not_found)?;
    Ok(Response::json(200, &sync::user_view(ctx, user_id, &state)?))
}

/// `POST /partner/v1/users/{userId}/sync`: syncs the user now, within
/// `sync_now_budget_secs` and `sync_max_requests_per_user`; answers how
/// the run went and the state after it.
pub fn run_now(ctx: &Ctx<'_>, request: &Request, user_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let user_id = user_param(user_id)?;
    if sync::user_state(ctx, user_id)?.is_none() {
        return Err(ApiError::not_found());
    }
    let (outcome, run) = sync::run_user(ctx, user_id)?;
    let state = sync::user_state(ctx, user_id)?.ok_or_else(ApiError::not_found)?;
    Ok(Response::json(200, &json!({ "outcome": outcome, "run": run, "sync": sync::user_view(ctx, user_id, &state)? })))
}
