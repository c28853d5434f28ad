//! Evotor error answers: `{"errors":[{"code":N,"reason":"…","subject":"…","value":…}]}`.
//!
//! [`ApiError`] is Evotor's error model, which the domain speaks: a code
//! and a reason, with the field and value concerned. Evotor's definitions
//! tie each code to an HTTP status (1001 to 401, 1004 to 402, 2005 to 409,
//! …) and to the few headers that go with it (`WWW-Authenticate`, `Allow`,
//! `Retry-After`), so the error carries them; it is not an HTTP type, and
//! only the endpoints make it an answer ([`ApiError::into_response`]). A
//! base module: it imports only [`crate::http`] (for that answer) and
//! [`crate::kv`] (for mapping the store's errors).

use crate::http::Response;
use serde_json::{Value, json};

/// One Evotor error item, with the HTTP status Evotor's definitions give it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status that goes with the code.
    pub status: u16,
    /// Evotor error code (1xxx auth, 2xxx request), or the HTTP status for
    /// errors the protocol does not number (404, 405, 500).
    pub code: u32,
    /// Short machine-readable reason, e.g. `missing`.
    pub reason: String,
    /// The field or header concerned.
    pub subject: Option<String>,
    /// The offending value.
    pub value: Option<Value>,
    /// Extra headers (e.g. `Allow` on 405).
    pub headers: Vec<(String, String)>,
}

impl ApiError {
    fn new(status: u16, code: u32, reason: &str) -> Self {
        Self { status, code, reason: reason.into(), subject: None, value: None, headers: Vec::new() }
    }

    /// 413, the gateway's own code for it: the body is over `limit` bytes.
    pub fn too_large(what: &str, limit: usize) -> Self {
        Self::new(413, 413, &format!("{what} over {limit} bytes"))
    }

    /// 400 code 2001: the body is not JSON or has the wrong shape.
    pub fn syntax(detail: &str) -> Self {
        Self::new(400, 2001, detail)
    }

    /// 400 code 2001 about one field of the wrong JSON type.
    pub fn wrong_type(field: &str, expected: &str) -> Self {
        Self { subject: Some(field.into()), ..Self::new(400, 2001, &format!("expected {expected}")) }
    }

    /// 400 code 2002: a required field is missing.
    pub fn missing(field: &str) -> Self {
        Self { subject: Some(field.into()), ..Self::new(400, 2002, "missing") }
    }

    /// 400 code 2003: a field has an invalid value.
    pub fn incorrect(field: &str, value: impl Into<Value>) -> Self {
        Self { subject: Some(field.into()), value: Some(value.into()), ..Self::new(400, 2003, "incorrect") }
    }

    /// 401 code 1001: wrong or missing server credential.
    pub fn server_unauthorized() -> Self {
        Self {
            headers: vec![("www-authenticate".into(), "Bearer, Basic realm=\"evotor\"".into())],
            ..Self::new(401, 1001, "unauthorized")
        }
    }

    /// 401 code 1001: an events webhook delivery whose `X-Hub-Signature` is
    /// missing or does not match.
    pub fn bad_signature() -> Self {
        Self { subject: Some("X-Hub-Signature".into()), ..Self::new(401, 1001, "signature mismatch") }
    }

    /// 401 code 1002: the user token is unknown (never issued, revoked, or replaced).
    pub fn unknown_token() -> Self {
        Self { headers: vec![("www-authenticate".into(), "Bearer".into())], ..Self::new(401, 1002, "unknown token") }
    }

    /// 401 code 1003: the user token outlived its lifetime.
    pub fn expired_token() -> Self {
        Self { headers: vec![("www-authenticate".into(), "Bearer".into())], ..Self::new(401, 1003, "token expired") }
    }

    /// 401 code 1006: wrong login or password in `/user/verify`.
    pub fn wrong_credentials() -> Self {
        Self::new(401, 1006, "wrong username or password")
    }

    /// 402 code 1004: the user's tariff is inactive.
    pub fn payment_required(user_id: &str) -> Self {
        Self {
            subject: Some("userUuid".into()),
            value: Some(user_id.into()),
            ..Self::new(402, 1004, "payment required")
        }
    }

    /// 402 code 1004: the user has stored as many documents and receipts
    /// as `user_quota_records` allows.
    pub fn quota_exceeded(user_id: &str, quota: u64) -> Self {
        Self {
            subject: Some("userUuid".into()),
            value: Some(user_id.into()),
            ..Self::new(402, 1004, &format!("quota exceeded: {quota} documents and receipts stored"))
        }
    }

    /// 405 code 1005: the device is not among the licensed ones.
    pub fn device_not_allowed(device_uuid: &str) -> Self {
        Self {
            subject: Some("deviceUuid".into()),
            value: Some(device_uuid.into()),
            ..Self::new(405, 1005, "not allowed")
        }
    }

    /// 409 code 2004: the user or the account is already linked elsewhere.
    pub fn already_linked() -> Self {
        Self::new(409, 2004, "already linked to another account")
    }

    /// 409 code 2005: an account with this data already exists.
    pub fn already_exists(subject: &str) -> Self {
        Self { subject: Some(subject.into()), ..Self::new(409, 2005, "already exists") }
    }

    /// 401 for the partner API: wrong or missing `partner_api_token`.
    pub fn partner_unauthorized() -> Self {
        Self { headers: vec![("www-authenticate".into(), "Bearer".into())], ..Self::new(401, 401, "unauthorized") }
    }

    /// 403: `subject` names something of another user (`value`).
    pub fn forbidden(subject: &str, value: impl Into<Value>) -> Self {
        Self { subject: Some(subject.into()), value: Some(value.into()), ..Self::new(403, 403, "forbidden") }
    }

    /// 409: the user's data is being erased (`DELETE /partner/v1/users/{id}/data`):
    /// nothing is stored for it until that is done.
    pub fn being_erased(user_id: &str) -> Self {
        Self {
            subject: Some("userId".into()),
            value: Some(user_id.into()),
            ..Self::new(409, 409, "the user's data is being erased")
        }
    }

    /// 422: `subject` (`value`) cannot be done as asked; `reason` says why.
    pub fn unprocessable(subject: &str, value: impl Into<Value>, reason: &str) -> Self {
        Self { subject: Some(subject.into()), value: Some(value.into()), ..Self::new(422, 422, reason) }
    }

    /// 409: the request conflicts with the service's state now; `reason` says how.
    pub fn conflict(reason: &str) -> Self {
        Self::new(409, 409, reason)
    }

    /// 502: the Evotor cloud failed the request; `reason` says how.
    pub fn bad_gateway(reason: &str) -> Self {
        Self::new(502, 502, reason)
    }

    /// 503 for `reason`, with `Retry-After` when a wait is known.
    pub fn unavailable_now(reason: &str, retry_after_secs: Option<u64>) -> Self {
        let headers = retry_after_secs.map(|secs| ("retry-after".to_owned(), secs.to_string())).into_iter().collect();
        Self { headers, ..Self::new(503, 503, reason) }
    }

    /// 404: no such resource.
    pub fn not_found() -> Self {
        Self::new(404, 404, "not found")
    }

    /// 405 with the `Allow` header listing what the path accepts.
    pub fn method_not_allowed(allow: &[&str]) -> Self {
        Self { headers: vec![("allow".into(), allow.join(", "))], ..Self::new(405, 405, "method not allowed") }
    }

    /// 500: the store failed; the caller should retry.
    pub fn internal(reason: &str) -> Self {
        Self::new(500, 500, reason)
    }

    /// 503: the store is unavailable now; retry later.
    pub fn unavailable() -> Self {
        Self { headers: vec![("retry-after".into(), "1".into())], ..Self::new(503, 503, "storage unavailable") }
    }

    /// The error as an HTTP answer.
    pub fn into_response(self) -> Response {
        let mut item = json!({ "code": self.code, "reason": self.reason });
        if let Some(subject) = self.subject {
            item["subject"] = subject.into();
        }
        if let Some(value) = self.value {
            item["value"] = value;
        }
        let mut response = Response::json(self.status, &json!({ "errors": [item] }));
        response.headers.extend(self.headers);
        response
    }
}

impl From<crate::kv::KvError> for ApiError {
    fn from(err: crate::kv::KvError) -> Self {
        match err {
            crate::kv::KvError::Unavailable(why) => {
                evogate_plugin::log::error(&format!("kv unavailable: {why}"));
                ApiError::unavailable()
            }
            crate::kv::KvError::OutcomeUnknown(why) => {
                evogate_plugin::log::warn(&format!("kv commit outcome unknown: {why}"));
                ApiError::unavailable()
            }
            crate::kv::KvError::Conflict => ApiError::unavailable(),
            crate::kv::KvError::TooLarge(_) => ApiError::internal("record too large"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_evotor_shape() {
        let response = ApiError::incorrect("userId", "x").into_response();
        assert_eq!(response.status, 400);
        assert_eq!(
            response.body_json(),
            json!({"errors":[{"code":2003,"reason":"incorrect","subject":"userId","value":"x"}]})
        );
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let response = ApiError::method_not_allowed(&["GET", "POST"]).into_response();
        assert_eq!(response.status, 405);
        assert!(response.headers.contains(&("allow".into(), "GET, POST".into())));
    }
}
