//! Standard `wasi:http/proxy` 0.2 components, served through
//! `wasmtime-wasi-http`: a request to their `incoming-handler`, the answer
//! read back whole. They have no identity of their own and no jobs.

use super::sandbox::{HostState, Laps, Phase, Request, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use wasmtime::Store;
use wasmtime::error::Context as _;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// A compiled standard component.
pub(super) type Pre = ProxyPre<HostState>;

/// Serves `request` with a standard component: its `incoming-handler`
/// gets the request, and the answer it sets — the body read whole, at
/// most `max_body` bytes, while the handler runs — becomes the response.
pub(super) async fn handle(
    pre: &ProxyPre<HostState>,
    store: &mut Store<HostState>,
    request: Request,
    max_body: usize,
    laps: &mut Laps,
) -> wasmtime::Result<Response> {
    use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
    let Request { method, path, query, headers, body } = request;
    let target = if query.is_empty() { path } else { format!("{path}?{query}") };
    let mut incoming = hyper::Request::builder().method(method.as_str()).uri(target);
    // The handler reads the authority from `Host` (an HTTP/2 client's is in the URI the edge has dropped).
    if !headers.iter().any(|(name, _)| name == "host") {
        incoming = incoming.header("host", "localhost");
    }
    for (name, value) in headers {
        incoming = incoming.header(name, value);
    }
    let body =
        http_body_util::Full::new(Bytes::from(body)).map_err(|never| -> wasmtime_wasi_http::Error { match never {} });
    let incoming = incoming.body(body).context("the request as wasi:http sees it")?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let incoming = store.data_mut().http().new_incoming_request(Scheme::Http, incoming)?;
    let outparam = store.data_mut().http().new_response_outparam(sender)?;
    let proxy = pre.instantiate_async(&mut *store).await?;
    laps.lap(Phase::Instantiate);

    // The handler streams the body after setting the answer: read both at once.
    let answer = async move {
        let response = match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => wasmtime::bail!("the component answered with the error {code:?}"),
            Err(_) => wasmtime::bail!("the component never set a response"),
        };
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, max_body).collect().await.map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                wasmtime::format_err!("the component's answer is over {max_body} bytes")
            } else {
                wasmtime::format_err!("reading the component's answer: {err}")
            }
        })?;
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
                .collect(),
            body: body.to_bytes().to_vec(),
        })
    };
    let call = proxy.wasi_http_incoming_handler().call_handle(&mut *store, incoming, outparam);
    let (mut call, mut answer) = (std::pin::pin!(call), std::pin::pin!(answer));
    tokio::select! {
        // A handler that failed (or returned without answering) ends the request.
        called = &mut call => {
            called?;
            answer.await
        }
        // Answered: the handler may still be working (it may write after
        // answering); the request ends when it returns.
        answered = &mut answer => {
            call.await?;
            answered
        }
    }
}

/// Instantiates the component once in `store`: its smoke test, as it has
/// no identity to read.
pub(super) async fn instantiate(pre: &Pre, store: &mut Store<HostState>) -> wasmtime::Result<()> {
    pre.instantiate_async(&mut *store).await.map(drop)
}
