//! Evotor account registration, login check, cloud token and tariff:
//! `/api/v1/user/*`.

use crate::Ctx;
use crate::config::settings;
use crate::domain::accounts::{
    MAX_CLOUD_TOKEN_BYTES, credential, is_tariff_id, log_in, register, registration, set_tariff,
};
use crate::endpoints::auth;
use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::input::{self, Fields};
use serde_json::json;

/// `POST /api/v1/user/create`: registers a partner account for an Evotor
/// user and returns a user token. The identical request again (Evotor
/// retries after timeouts) answers 200 with a new working token; another
/// account already holding this userId or this login is 409 2005.
pub fn create(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    auth::require_server(ctx, request)?;
    let settings = settings(ctx)?;
    let reg = registration(input::object(&request.body)?, &settings)?;
    let token = register(ctx, &settings, &reg)?;
    // The two definitions disagree on the id's name in the answer: carry both.
    Ok(Response::json(200, &json!({ "userId": reg.user_id, "userUuid": reg.user_id, "token": token })))
}

/// `POST /api/v1/user/verify`: logs an Evotor user into an existing partner
/// account by login and password, links them, and returns a user token.
pub fn verify(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    auth::require_server(ctx, request)?;
    let settings = settings(ctx)?;
    let body = input::object(&request.body)?;
    let (user_id, _) = input::user_id(&body)?;
    let given = Fields::of(&body);
    let login = credential(given.required(&settings.login_field)?, &settings.login_field)?;
    let password = credential(given.required(&settings.password_field)?, &settings.password_field)?;

    let (token, has_billing) = log_in(ctx, &settings, &user_id, login, password)?;
    Ok(Response::json(
        200,
        &json!({ "userId": user_id, "userUuid": user_id, "hasBilling": has_billing, "token": token }),
    ))
}

/// `POST /api/v1/user/token`: Evotor hands over its cloud token for a user.
/// Latest wins; the token is never logged or echoed.
pub fn store_cloud_token(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    auth::require_server(ctx, request)?;
    let body = input::object(&request.body)?;
    let (user_id, _) = input::user_id(&body)?;
    let token = input::required_str(&body, "token")?;
    if token.is_empty() || token.len() > MAX_CLOUD_TOKEN_BYTES || token.chars().any(char::is_control) {
        // The value is a secret: say how long it was, never what it was.
        return Err(ApiError::incorrect("token", format!("<{} bytes>", token.len())));
    }
    crate::domain::sync::put_cloud_token(ctx, &user_id, token)?;
    Ok(Response::empty(200))
}

/// `POST /api/v1/user/tariff` (legacy): records the user's tariff state;
/// while INACTIVE every user-authenticated call of the user answers 402.
pub fn tariff(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    auth::require_server(ctx, request)?;
    let body = input::object(&request.body)?;
    let (user_id, _) = input::user_id(&body)?;
    let tariff_id = input::required_str(&body, "tariffId")?;
    if !is_tariff_id(tariff_id) {
        return Err(ApiError::incorrect("tariffId", tariff_id));
    }
    let active = match input::required_str(&body, "status")? {
        "ACTIVE" => true,
        "INACTIVE" => false,
        other => return Err(ApiError::incorrect("status", other)),
    };
    set_tariff(ctx, &user_id, tariff_id, active)?;
    Ok(Response::empty(200))
}
