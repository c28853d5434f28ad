//! A standard `wasi:http/proxy` component, written against the standard
//! interfaces only (the `wasi` crate): it runs under `wasmtime serve` as it
//! runs under evogate. The gateway's tests and `cargo xtask bench-serve` use it.
//!
//! | path | answer |
//! |---|---|
//! | `…/hello` (and any other) | 200 `hello from standard-hello VERSION`, header `x-hello-version` |
//! | `…/echo` | 200, the request's body, and its method, path and `x-request-id` in headers |
//! | `…/env/NAME` | 200 with the environment variable, 404 if unset |
//! | `…/fetch?URL` | sends `GET URL`: 200 with the upstream status and body, or 502 and the error code |
//! | `…/spin` | spins forever |
//! | `…/grow` | allocates until memory runs out |
//!
//! VERSION is `HELLO_VERSION` at build time (default `1`).
#![cfg(target_arch = "wasm32")]
#![allow(unsafe_code, reason = "the export glue the bindings generate")]

#[path = "../../common.rs"]
mod common;

use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, IncomingRequest, Method, OutgoingRequest, ResponseOutparam, Scheme};
use wasi::io::streams::StreamError;

const VERSION: &str = match option_env!("HELLO_VERSION") {
    Some(version) => version,
    None => "1",
};

struct Hello;

wasi::http::proxy::export!(Hello);

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default();
        let last = path.rsplit('/').next().unwrap_or_default();
        if let Some((name, _)) = common::segments_after(&request, "env").filter(|(rest, _)| rest.len() == 1) {
            return match std::env::var(&name[0]) {
                Ok(value) => common::text(out, 200, &value),
                Err(_) => common::text(out, 404, "unset"),
            };
        }
        match last {
            "echo" => {
                let method = match request.method() {
                    Method::Get => "GET".to_owned(),
                    Method::Head => "HEAD".to_owned(),
                    Method::Post => "POST".to_owned(),
                    Method::Put => "PUT".to_owned(),
                    Method::Delete => "DELETE".to_owned(),
                    Method::Connect => "CONNECT".to_owned(),
                    Method::Options => "OPTIONS".to_owned(),
                    Method::Trace => "TRACE".to_owned(),
                    Method::Patch => "PATCH".to_owned(),
                    Method::Other(other) => other,
                };
                let id = request.headers().get("x-request-id").into_iter().next().unwrap_or_default();
                let id = String::from_utf8_lossy(&id).into_owned();
                let body = common::read_body(&request);
                let headers = [("x-method", method.as_str()), ("x-path", path), ("x-seen-request-id", id.as_str())];
                common::respond(out, 200, &headers, &body);
            }
            "fetch" => {
                let url = target.split_once('?').map(|(_, url)| url).unwrap_or_default();
                match fetch(url) {
                    Ok((status, body)) => {
                        let status = status.to_string();
                        common::respond(out, 200, &[("x-upstream-status", &status)], &body)
                    }
                    Err(why) => common::text(out, 502, &why),
                }
            }
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "grow" => {
                let mut held: Vec<Vec<u8>> = Vec::new();
                loop {
                    held.push(vec![1; 16 << 20]);
                    std::hint::black_box(&held);
                }
            }
            _ => {
                let body = format!("hello from standard-hello {VERSION}\n");
                let headers = [("content-type", "text/plain; charset=utf-8"), ("x-hello-version", VERSION)];
                common::respond(out, 200, &headers, body.as_bytes());
            }
        }
    }
}

/// `GET url` through `wasi:http/outgoing-handler`: the status and body, or the error code.
fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    let (scheme, rest) = url.split_once("://").ok_or("the URL has no scheme")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
    request.set_scheme(Some(&scheme)).map_err(|()| "bad scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "bad authority")?;
    request.set_path_with_query(Some(path)).map_err(|()| "bad path")?;
    let pending = outgoing_handler::handle(request, None).map_err(|code| format!("{code:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "the response was taken twice")?
        .map_err(|code| format!("{code:?}"))?;
    let status = response.status();
    let incoming = response.consume().map_err(|()| "the body was taken")?;
    let stream = incoming.stream().map_err(|()| "the body's stream was taken")?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(err)) => return Err(err.to_debug_string()),
        }
    }
    Ok((status, body))
}
