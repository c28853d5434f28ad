//! The gateway's HTTP edge, outside the sandbox: a client's request as the
//! plugin sees it, a plugin's answer as the client gets it, the request id,
//! and which route serves a path.
//!
//! Checked: the plugin gets the method, path, query, body and every header
//! as sent (values that are not UTF-8 made lossy), and the base-path header
//! once, from the gateway, never the client's; an answer keeps its status
//! (200–599), its valid non-hop-by-hop headers in order and its body, or is
//! a 500 in the Evotor error shape; a request id is the client's when sane,
//! else 24 hex digits; a route serves a path exactly when its segments begin
//! the path's.
#![no_main]

use arbitrary::Arbitrary;
use evogate::config::normalize_route;
use evogate::edge::{
    BASE_PATH, ErrorFormat, MAX_RESPONSE_HEADERS, REQUEST_ID, Response, into_http, is_hop_by_hop, plugin_request,
    request_id, route_matches,
};
use http_body_util::BodyExt as _;
use hyper::header::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    method: Vec<u8>,
    uri: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The client's `x-request-id`, if any.
    request_id: Option<Vec<u8>>,
    body: Vec<u8>,
    route: String,
    path: String,
    answer: Answer,
}

#[derive(Arbitrary, Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    /// Headers added past the limit.
    padding: u16,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    request(&input);
    answer(input.answer);
    routes(&input.route, &input.path);
});

fn request(input: &Input) {
    let mut builder = hyper::Request::builder().method(input.method.as_slice()).uri(input.uri.as_slice());
    let mut sent = Vec::new();
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            builder = builder.header(name.clone(), value.clone());
            sent.push((name, value));
        }
    }
    let Ok(request) = builder.body(()) else { return };
    let (mut parts, ()) = request.into_parts();
    let id = request_id(&parts.headers);
    let sane = |bytes: &[u8]| {
        (1..=128).contains(&bytes.len())
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    };
    match parts.headers.get(REQUEST_ID) {
        Some(theirs) if sane(theirs.as_bytes()) => assert_eq!(&id, theirs, "a sane request id is kept"),
        _ => assert!(
            id.len() == 24 && id.as_bytes().iter().all(|b| b.is_ascii_hexdigit()),
            "a new request id is 24 hex digits: {id:?}"
        ),
    }
    if let Some(theirs) = input.request_id.as_deref().and_then(|raw| HeaderValue::from_bytes(raw).ok()) {
        parts.headers.insert(REQUEST_ID, theirs.clone());
        let id = request_id(&parts.headers);
        assert!(!sane(theirs.as_bytes()) || id == theirs);
        sent.retain(|(name, _)| *name != REQUEST_ID);
        sent.push((REQUEST_ID, theirs));
    }

    let route = normalize_route(&input.route);
    let seen = plugin_request(&parts, route, input.body.clone());
    assert_eq!(seen.method, parts.method.as_str());
    assert_eq!(seen.path, parts.uri.path());
    assert_eq!(seen.query, parts.uri.query().unwrap_or_default());
    assert_eq!(seen.body, input.body);
    let base: Vec<&(String, String)> = seen.headers.iter().filter(|(name, _)| name == BASE_PATH.as_str()).collect();
    assert_eq!(base, [&(BASE_PATH.as_str().to_owned(), route.to_owned())], "the gateway's base path, once");
    // The client's headers in the map's order (names grouped), its base path dropped.
    let expected: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(name, _)| **name != BASE_PATH)
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let client: Vec<(String, String)> =
        seen.headers.iter().filter(|(name, _)| name != BASE_PATH.as_str()).cloned().collect();
    assert_eq!(client, expected);
    let mut sent_names: Vec<&str> =
        sent.iter().map(|(name, _)| name.as_str()).filter(|name| *name != BASE_PATH.as_str()).collect();
    let mut seen_names: Vec<&str> = client.iter().map(|(name, _)| name.as_str()).collect();
    sent_names.sort_unstable();
    seen_names.sort_unstable();
    assert_eq!(sent_names, seen_names, "every header the client sent reaches the plugin");
}

fn answer(answer: Answer) {
    let mut headers = answer.headers;
    if answer.padding % 8 == 0 {
        let extra = usize::from(answer.padding / 8) % (2 * MAX_RESPONSE_HEADERS);
        headers.extend((0..extra).map(|n| (format!("x-pad-{n}"), "1".to_owned())));
    }
    let kept: Vec<(HeaderName, HeaderValue)> = headers
        .iter()
        .filter_map(|(name, value)| {
            Some((HeaderName::from_bytes(name.as_bytes()).ok()?, HeaderValue::from_str(value).ok()?))
        })
        .filter(|(name, _)| !is_hop_by_hop(name))
        .collect();
    let valid = (200..=599).contains(&answer.status) && headers.len() <= MAX_RESPONSE_HEADERS;
    let format = if answer.padding % 2 == 0 { ErrorFormat::Evotor } else { ErrorFormat::Problem };
    let response = into_http(Response { status: answer.status, headers, body: answer.body.clone() }, "fuzz@0", format);
    let status = response.status().as_u16();
    let out: Vec<(HeaderName, HeaderValue)> =
        response.headers().iter().map(|(name, value)| (name.clone(), value.clone())).collect();
    let body = futures_body(response);
    if valid {
        assert_eq!(status, answer.status);
        assert_eq!(body, answer.body);
        // `HeaderMap` groups the values of one name, in the order given.
        let mut want = kept;
        let order: Vec<HeaderName> = want.iter().map(|(name, _)| name.clone()).fold(Vec::new(), |mut names, name| {
            if !names.contains(&name) {
                names.push(name);
            }
            names
        });
        want.sort_by_key(|(name, _)| order.iter().position(|n| n == name));
        let mut got = out;
        got.sort_by_key(|(name, _)| order.iter().position(|n| n == name));
        assert_eq!(got, want);
    } else {
        assert_eq!(status, 500, "an invalid answer is a 500");
        let error: serde_json::Value = serde_json::from_slice(&body).expect("an error answer is JSON");
        match format {
            ErrorFormat::Evotor => {
                assert!(error["errors"][0]["code"] == 500 && error["errors"][0]["reason"].is_string(), "{error}")
            }
            ErrorFormat::Problem => assert!(error["status"] == 500 && error["detail"].is_string(), "{error}"),
        }
    }
}

/// The bytes of a finished body.
fn futures_body(response: hyper::Response<http_body_util::Full<bytes::Bytes>>) -> Vec<u8> {
    let mut collect = std::pin::pin!(response.into_body().collect());
    let waker = std::task::Waker::noop();
    match collect.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(Ok(collected)) => collected.to_bytes().to_vec(),
        std::task::Poll::Ready(Err(never)) => match never {},
        std::task::Poll::Pending => panic!("a full body is ready at once"),
    }
}

fn routes(route: &str, path: &str) {
    let route = normalize_route(route);
    assert_eq!(normalize_route(route), route, "normalizing twice changes nothing");
    if !route.starts_with('/') || !path.starts_with('/') {
        return;
    }
    // The model: the route's segments begin the path's.
    let segments = |text: &str| text.split('/').map(str::to_owned).collect::<Vec<_>>();
    let model = route == "/" || segments(path).starts_with(&segments(route));
    assert_eq!(route_matches(route, path), model, "route {route:?} on path {path:?}");
    assert!(route_matches(route, route));
}
