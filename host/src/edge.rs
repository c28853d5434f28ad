//! The HTTP edge of the request path, without the sandbox: what a plugin
//! sees of a request, what a client gets of a plugin's answer, request ids,
//! route matching, and the gateway's own error answers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};

/// A request as a plugin gets it (the WIT `request` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path, from the first `/`.
    pub path: String,
    /// The query, without `?`.
    pub query: String,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// A plugin's answer (the WIT `response` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// Whether `route` serves `path`: `path` itself or below it by whole
/// segments (`/a` serves `/a` and `/a/b`, not `/ab`).
pub fn route_matches(route: &str, path: &str) -> bool {
    route == "/" || path.strip_prefix(route).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The request id header, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The route prefix a plugin is mounted at, as the gateway tells the plugin.
pub const BASE_PATH: HeaderName = HeaderName::from_static("x-evogate-base-path");

/// The client's `X-Request-Id` when it is sane (1–128 of `[A-Za-z0-9._:-]`),
/// else a new random one.
pub fn request_id(headers: &hyper::HeaderMap) -> HeaderValue {
    let sane = |id: &&HeaderValue| {
        let bytes = id.as_bytes();
        (1..=128).contains(&bytes.len())
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    };
    if let Some(id) = headers.get(REQUEST_ID).filter(sane) {
        return id.clone();
    }
    // The thread's CSPRNG (seeded from the OS, reseeded by itself): no system call per request.
    let random: [u8; 12] = rand::random();
    HeaderValue::from_str(&hex::encode(random)).unwrap_or(HeaderValue::from_static("-"))
}

/// The plugin's view of a request served on `route`: method, path, query,
/// headers (values not UTF-8 made lossy) and the gateway's base-path header.
/// Every `x-evogate-*` header is the gateway's: a client's is dropped, so
/// none can pass for the base path or for a calling plugin
/// (`x-evogate-caller`).
pub fn plugin_request(parts: &hyper::http::request::Parts, route: &str, body: Vec<u8>) -> Request {
    Request {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .filter(|(name, _)| !name.as_str().starts_with("x-evogate-"))
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .chain(std::iter::once((BASE_PATH.as_str().to_owned(), route.to_owned())))
            .collect(),
        body,
    }
}

/// Most headers a plugin's answer may carry; past it the answer is 500.
/// (`HeaderMap` cannot hold more than about 24,000 names, and no client
/// reads anywhere near this many.)
pub const MAX_RESPONSE_HEADERS: usize = 1000;

/// Headers the gateway owns; a plugin's values for them are ignored.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "content-length"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

/// Converts a plugin's answer, dropping headers that are not valid HTTP.
/// A status outside 200–599 (an informational status cannot end a request)
/// or more than [`MAX_RESPONSE_HEADERS`] headers make it a 500, logged.
pub fn into_http(response: Response, label: &str, format: ErrorFormat) -> hyper::Response<Full<Bytes>> {
    let status = match StatusCode::from_u16(response.status) {
        Ok(status) if (200..=599).contains(&response.status) => status,
        _ => {
            tracing::error!(plugin = %label, status = response.status, "plugin answered a status outside 200-599");
            return error(format, StatusCode::INTERNAL_SERVER_ERROR, "plugin answered an invalid status");
        }
    };
    if response.headers.len() > MAX_RESPONSE_HEADERS {
        tracing::error!(
            plugin = %label,
            headers = response.headers.len(),
            limit = MAX_RESPONSE_HEADERS,
            "plugin answered too many headers"
        );
        return error(format, StatusCode::INTERNAL_SERVER_ERROR, "plugin answered too many headers");
    }
    let mut out = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() = status;
    out.headers_mut().reserve(response.headers.len());
    for (name, value) in response.headers {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            (Ok(name), Ok(value)) if !is_hop_by_hop(&name) => {
                out.headers_mut().append(name, value);
            }
            (Ok(name), Ok(_)) => {
                tracing::debug!(%name, "ignoring a hop-by-hop header from the plugin")
            }
            _ => {
                tracing::warn!(plugin = %label, header = ?name, "ignoring an invalid header from the plugin")
            }
        }
    }
    out
}

/// How the gateway writes its own error answers (a body too large, a
/// deadline, no route) for one plugin's route: `[[plugins]] error_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorFormat {
    /// RFC 9457 problem details, `application/problem+json`:
    /// `{"type":"about:blank","title":"Payload Too Large","status":413,"detail":"payload too large"}`.
    /// The default, and the format of answers no route serves.
    #[default]
    Problem,
    /// Evotor's error body, which the Evotor cloud reads:
    /// `{"errors":[{"code":413,"reason":"payload too large"}]}`.
    Evotor,
}

/// The gateway's error answer `status` in `format`; `detail` says what
/// happened (Evotor's `reason`, the problem's `detail`).
pub fn error(format: ErrorFormat, status: StatusCode, detail: &str) -> hyper::Response<Full<Bytes>> {
    error_with(format, status, detail, |_| {})
}

/// [`error`] with more fields: `extra` edits the object that carries
/// `detail` (Evotor's first error, or the problem itself).
pub fn error_with(
    format: ErrorFormat,
    status: StatusCode,
    detail: &str,
    extra: impl FnOnce(&mut serde_json::Value),
) -> hyper::Response<Full<Bytes>> {
    let (body, content_type) = error_body_with(format, status, detail, extra);
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The body and content type of [`error`]'s answer, for a reply written
/// without hyper (a connection refused before any request is read).
pub fn error_body(format: ErrorFormat, status: StatusCode, detail: &str) -> (String, &'static str) {
    error_body_with(format, status, detail, |_| {})
}

fn error_body_with(
    format: ErrorFormat,
    status: StatusCode,
    detail: &str,
    extra: impl FnOnce(&mut serde_json::Value),
) -> (String, &'static str) {
    let (body, content_type) = match format {
        ErrorFormat::Evotor => {
            let mut item = serde_json::json!({ "code": status.as_u16(), "reason": detail });
            extra(&mut item);
            (serde_json::json!({ "errors": [item] }), "application/json")
        }
        ErrorFormat::Problem => {
            let mut problem = serde_json::json!({
                "type": "about:blank",
                "title": status.canonical_reason().unwrap_or("Error"),
                "status": status.as_u16(),
                "detail": detail,
            });
            extra(&mut problem);
            (problem, "application/problem+json")
        }
    };
    (body.to_string(), content_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: Vec<(String, String)>) -> Response {
        Response { status, headers, body: b"body".to_vec() }
    }

    async fn parts(response: hyper::Response<Full<Bytes>>) -> (u16, String, serde_json::Value) {
        use http_body_util::BodyExt as _;
        let status = response.status().as_u16();
        let content_type = response.headers()[CONTENT_TYPE].to_str().expect("ASCII").to_owned();
        let body = response.into_body().collect().await.expect("a full body").to_bytes();
        (status, content_type, serde_json::from_slice(&body).expect("JSON"))
    }

    #[tokio::test]
    async fn gateway_errors_take_the_format_of_their_route() {
        let extra = |e: &mut serde_json::Value| e["value"] = 10.into();
        let evotor = parts(error_with(ErrorFormat::Evotor, StatusCode::PAYLOAD_TOO_LARGE, "too big", extra)).await;
        assert_eq!(
            evotor,
            (
                413,
                "application/json".to_owned(),
                serde_json::json!({ "errors": [{ "code": 413, "reason": "too big", "value": 10 }] })
            )
        );
        let problem = parts(error_with(ErrorFormat::Problem, StatusCode::PAYLOAD_TOO_LARGE, "too big", extra)).await;
        let expected = serde_json::json!({
            "type": "about:blank", "title": "Payload Too Large", "status": 413, "detail": "too big", "value": 10
        });
        assert_eq!(problem, (413, "application/problem+json".to_owned(), expected));
        let bad = into_http(answer(99, vec![]), "p@1", ErrorFormat::Problem);
        assert_eq!(parts(bad).await.2["detail"], "plugin answered an invalid status");
    }

    #[test]
    fn a_client_cannot_pass_for_the_gateway_or_for_a_calling_plugin() {
        let (parts, ()) = hyper::Request::builder()
            .uri("/evotor/extension/v1/session")
            .header("x-evogate-caller", "loyalty")
            .header("X-Evogate-Base-Path", "/")
            .header("x-evogate-anything", "x")
            .header("x-evotor-store-uuid", "s")
            .body(())
            .expect("request")
            .into_parts();
        let request = plugin_request(&parts, "/evotor", Vec::new());
        let names: Vec<(&str, &str)> =
            request.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        assert_eq!(names, [("x-evotor-store-uuid", "s"), ("x-evogate-base-path", "/evotor")]);
    }

    #[test]
    fn statuses_outside_200_to_599_become_500() {
        for status in [0, 100, 101, 103, 199, 600, 999, 1000, u16::MAX] {
            assert_eq!(into_http(answer(status, vec![]), "p@1", ErrorFormat::Evotor).status(), 500, "status {status}");
        }
        for status in [200, 204, 302, 404, 503, 599] {
            assert_eq!(into_http(answer(status, vec![]), "p@1", ErrorFormat::Evotor).status().as_u16(), status);
        }
    }

    #[test]
    fn header_count_is_capped_and_a_flood_of_one_name_does_not_panic() {
        let same = |n: usize| (0..n).map(|_| ("x-same".to_owned(), "v".to_owned())).collect();
        let distinct = |n: usize| (0..n).map(|i| (format!("x-h{i}"), "v".to_owned())).collect();
        let ok = into_http(answer(200, distinct(MAX_RESPONSE_HEADERS)), "p@1", ErrorFormat::Evotor);
        assert_eq!((ok.status().as_u16(), ok.headers().len()), (200, MAX_RESPONSE_HEADERS));
        assert_eq!(
            into_http(answer(200, same(MAX_RESPONSE_HEADERS)), "p@1", ErrorFormat::Evotor).headers().len(),
            MAX_RESPONSE_HEADERS
        );
        for flood in [distinct(MAX_RESPONSE_HEADERS + 1), distinct(30_000), same(40_000)] {
            assert_eq!(into_http(answer(200, flood), "p@1", ErrorFormat::Evotor).status(), 500);
        }
    }

    #[test]
    fn hop_by_hop_and_invalid_headers_are_dropped() {
        let headers = [
            ("proxy-connection", "keep-alive"),
            ("connection", "close"),
            ("content-length", "1"),
            ("transfer-encoding", "chunked"),
            ("bad name", "v"),
            ("x-bad-value", "a\nb"),
            ("x-kept", "yes"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        let out = into_http(answer(200, headers.to_vec()), "p@1", ErrorFormat::Evotor);
        let names: Vec<&str> = out.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
    }
}
