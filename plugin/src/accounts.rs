//! Partner accounts and the tokens around them.

use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::router::Params;
use crate::{Ctx, auth, input, storage};

/// Longest Evotor cloud token accepted, in bytes.
pub const MAX_CLOUD_TOKEN_BYTES: usize = 4096;

/// `POST /api/v1/user/token`: Evotor hands over its cloud token for a user.
/// Server authorization; latest wins; the token is never logged or echoed.
pub fn store_cloud_token(
    ctx: &Ctx<'_>,
    request: &Request,
    _: &Params,
) -> Result<Response, ApiError> {
    auth::require_server(ctx, request)?;
    let body = input::object(&request.body)?;
    let (user_id, _) = input::user_id(&body)?;
    let token = input::required_str(&body, "token")?;
    if token.is_empty()
        || token.len() > MAX_CLOUD_TOKEN_BYTES
        || token.chars().any(char::is_control)
    {
        // The value is a secret: say how long it was, never what it was.
        return Err(ApiError::incorrect(
            "token",
            format!("<{} bytes>", token.len()),
        ));
    }
    storage::put_cloud_token(ctx.kv, &user_id, token, ctx.clock.now_unix())?;
    Ok(Response::empty(200))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::FixedClock, config::MapConfig, kv::MemKv};
    use serde_json::json;

    const USER: &str = "01-000000000000001";

    struct World {
        kv: MemKv,
        config: MapConfig,
        clock: FixedClock,
    }

    impl World {
        fn new() -> Self {
            Self {
                kv: MemKv::default(),
                config: MapConfig::from([("server_bearer_token", "srv")]),
                clock: FixedClock(1000),
            }
        }

        fn post(&self, body: &[u8], authorization: Option<&str>) -> Response {
            let ctx = Ctx {
                kv: &self.kv,
                config: &self.config,
                clock: &self.clock,
            };
            let mut request = Request::new("POST", "/api/v1/user/token");
            request.body = body.to_vec();
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            crate::handle(&ctx, &request)
        }

        fn post_json(&self, body: serde_json::Value) -> Response {
            self.post(body.to_string().as_bytes(), Some("Bearer srv"))
        }

        fn error(response: &Response) -> (u16, u64, Option<String>) {
            let item = &response.body_json()["errors"][0];
            (
                response.status,
                item["code"].as_u64().unwrap_or(0),
                item["subject"].as_str().map(str::to_owned),
            )
        }
    }

    #[test]
    fn token_is_stored_for_the_user_and_latest_wins() {
        let world = World::new();
        assert_eq!(
            world
                .post_json(json!({"userId": USER, "token": "t1"}))
                .status,
            200
        );
        assert_eq!(
            world
                .post_json(json!({"userUuid": USER, "token": "t2", "extra": 1}))
                .status,
            200
        );
        let stored = storage::cloud_token(&world.kv, USER)
            .expect("read")
            .expect("stored");
        assert_eq!(
            (stored.token.as_str(), stored.received_at, stored.v),
            ("t2", 1000, storage::FORMAT)
        );
    }

    #[test]
    fn wrong_or_missing_server_credential_is_1001_and_stores_nothing() {
        let world = World::new();
        let body = json!({"userId": USER, "token": "t"}).to_string();
        for auth in [None, Some("Bearer nope"), Some("Basic c3J2")] {
            let response = world.post(body.as_bytes(), auth);
            assert_eq!(World::error(&response), (401, 1001, None));
        }
        assert!(world.kv.keys().is_empty());
    }

    #[test]
    fn bad_bodies_get_the_evotor_codes() {
        let world = World::new();
        let malformed = world.post(b"{not json", Some("Bearer srv"));
        assert_eq!(World::error(&malformed), (400, 2001, None));
        let cases = [
            (json!({"token": "t"}), (400, 2002, Some("userId".into()))),
            (json!({"userId": USER}), (400, 2002, Some("token".into()))),
            (
                json!({"userId": "1-2", "token": "t"}),
                (400, 2003, Some("userId".into())),
            ),
            (
                json!({"userUuid": "x", "token": "t"}),
                (400, 2003, Some("userUuid".into())),
            ),
            (
                json!({"userId": USER, "token": ""}),
                (400, 2003, Some("token".into())),
            ),
            (
                json!({"userId": USER, "token": "a".repeat(MAX_CLOUD_TOKEN_BYTES + 1)}),
                (400, 2003, Some("token".into())),
            ),
            (
                json!({"userId": USER, "token": 7}),
                (400, 2001, Some("token".into())),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(World::error(&world.post_json(body.clone())), want, "{body}");
        }
        assert!(world.kv.keys().is_empty(), "nothing stored on any error");
    }

    #[test]
    fn the_token_is_never_echoed_in_errors() {
        let world = World::new();
        let secret = format!("secret\u{1}{}", "x".repeat(10));
        let response = world.post_json(json!({"userId": USER, "token": secret}));
        assert_eq!(response.status, 400);
        assert!(!String::from_utf8_lossy(&response.body).contains("secret"));
    }
}
