//! What the standard test components share, on `wasi:http` 0.2 alone
//! (the `wasi` crate): reading a request, answering.

#![allow(dead_code, reason = "each component uses part of it")]

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};
use wasi::io::streams::StreamError;

/// The request's path segments after the route prefix's, and its query:
/// `/any/prefix/count/a?x` with `after = "count"` gives `["a"]`.
pub fn segments_after(request: &IncomingRequest, after: &str) -> Option<(Vec<String>, String)> {
    let target = request.path_with_query().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut parts = path.split('/').filter(|part| !part.is_empty());
    parts.by_ref().find(|part| *part == after)?;
    Some((parts.map(str::to_owned).collect(), query.to_owned()))
}

/// The request's body, whole.
pub fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut body = Vec::new();
    let Ok(incoming) = request.consume() else { return body };
    if let Ok(stream) = incoming.stream() {
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => break,
            }
        }
    }
    body
}

/// Answers with `status`, `headers` and `body` (written in chunks, then finished).
pub fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let fields: Vec<(String, Vec<u8>)> =
        headers.iter().map(|(name, value)| ((*name).to_owned(), value.as_bytes().to_vec())).collect();
    let fields = Fields::from_list(&fields).expect("valid headers");
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("the body, once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the body's stream, once");
    for chunk in body.chunks(4096) {
        stream.blocking_write_and_flush(chunk).expect("the client reads");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finishing the body");
}

/// Answers 200 with a plain-text body.
pub fn text(out: ResponseOutparam, status: u16, body: &str) {
    respond(out, status, &[("content-type", "text/plain; charset=utf-8")], body.as_bytes());
}
