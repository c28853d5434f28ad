//! The partner's own API under `/partner/v1`, guarded by `partner_api_token`.
//!
//! Off (every path 404) unless `partner_api_token` is configured, so a
//! deployment never exposes it by accident.

use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::router::Params;
use crate::{Ctx, auth, input, storage};
use serde_json::json;

/// Config key of the partner API's bearer token.
pub const PARTNER_API_TOKEN: &str = "partner_api_token";

/// Succeeds for a request bearing the partner API token. Without the
/// setting the API does not exist (404); a wrong token is 401.
fn require_partner(ctx: &Ctx<'_>, request: &Request) -> Result<(), ApiError> {
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

/// `GET /partner/v1/users/{userId}`: what the service knows about a user.
pub fn get_user(ctx: &Ctx<'_>, request: &Request, params: &Params) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let user_id = params.get("userId").unwrap_or_default();
    if !input::is_user_id(user_id) {
        return Err(ApiError::incorrect("userId", user_id));
    }
    let cloud_token = storage::cloud_token(ctx.kv, user_id)?
        .map(|token| json!({ "token": token.token, "receivedAt": token.received_at }));
    Ok(Response::json(
        200,
        &json!({ "userId": user_id, "cloudToken": cloud_token }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::FixedClock, config::MapConfig, kv::MemKv};

    const USER: &str = "01-000000000000001";

    fn get(config: &MapConfig, kv: &MemKv, path: &str, bearer: Option<&str>) -> Response {
        let clock = FixedClock(5);
        let ctx = Ctx {
            kv,
            config,
            clock: &clock,
        };
        let mut request = Request::new("GET", path);
        if let Some(token) = bearer {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        crate::handle(&ctx, &request)
    }

    #[test]
    fn partner_api_is_absent_without_its_token() {
        let response = get(
            &MapConfig::default(),
            &MemKv::default(),
            &format!("/partner/v1/users/{USER}"),
            Some(""),
        );
        assert_eq!(response.status, 404);
    }

    #[test]
    fn wrong_partner_token_is_401() {
        let config = MapConfig::from([(PARTNER_API_TOKEN, "p")]);
        for bearer in [None, Some("q"), Some("")] {
            let response = get(
                &config,
                &MemKv::default(),
                &format!("/partner/v1/users/{USER}"),
                bearer,
            );
            assert_eq!(response.status, 401, "{bearer:?}");
        }
    }

    #[test]
    fn user_shows_the_stored_cloud_token() {
        let config = MapConfig::from([(PARTNER_API_TOKEN, "p")]);
        let kv = MemKv::default();
        let path = format!("/partner/v1/users/{USER}");
        assert_eq!(
            get(&config, &kv, &path, Some("p")).body_json()["cloudToken"],
            serde_json::Value::Null
        );
        storage::put_cloud_token(&kv, USER, "evotor-token", 42).expect("store");
        let body = get(&config, &kv, &path, Some("p")).body_json();
        assert_eq!(
            body,
            json!({"userId": USER, "cloudToken": {"token": "evotor-token", "receivedAt": 42}})
        );
        assert_eq!(
            get(&config, &kv, "/partner/v1/users/nope", Some("p")).status,
            400
        );
    }
}
