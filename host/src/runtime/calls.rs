//! Calls from one plugin to another, in process.
//!
//! A plugin calls another with an ordinary outgoing request
//! (`wasi:http/outgoing-handler`) to `http://NAME.evogate.internal/PATH`:
//! the gateway never opens a connection for it but hands it to the plugin
//! configured as `NAME`, as Spin's local service chaining does. The caller
//! needs no credential and no network: the gateway allows the call only
//! when the caller's configuration lists `NAME` in `calls`, and tells the
//! callee who calls in the `x-evogate-caller` header — a header the
//! gateway removes from every request that comes from outside, so no
//! client can pass for a plugin.
//!
//! A call is refused before any instance runs (`HTTP-request-denied`)
//! when `NAME` is not in the caller's `calls`, or when it would go back to
//! a plugin already on the call's way (A → B → A) or deeper than
//! [`MAX_DEPTH`] plugins. Otherwise it is admitted like a request from
//! outside — the callee's own `max_concurrent_requests`, a free instance
//! (never waited for: a full pool answers 503 at once, so callers holding
//! instances cannot wait on each other) — and runs by the caller's deadline.
//! The callee's answer, or the gateway's error an outside client would get
//! (503, 500), is the caller's response.
//!
//! Within one request (or job run), every call to a plugin goes to the
//! version that plugin had at the request's first call to it: a hot swap
//! in between does not give one request two versions of the callee.

use super::sandbox::{Request, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use std::any::Any;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;
use wasmtime_wasi_http::{Error, WasiBody};

/// The domain of in-process calls: `NAME.evogate.internal` is plugin `NAME`.
pub const INTERNAL_DOMAIN: &str = ".evogate.internal";
/// Most plugins one request may pass through, the first included.
pub const MAX_DEPTH: usize = 4;
/// The header naming the calling plugin; the gateway's alone.
pub const CALLER_HEADER: &str = "x-evogate-caller";

/// The plugins a request has passed through (outermost first) and the
/// versions its calls are pinned to.
#[derive(Clone, Default)]
pub struct Chain {
    plugins: Vec<Arc<str>>,
    pins: Arc<Mutex<Vec<Pinned>>>,
    /// The trace the request is part of: its outgoing requests and calls continue it.
    trace: opentelemetry::Context,
}

/// A callee and the deployment a request's first call to it found (the router's type).
type Pinned = (Arc<str>, Arc<dyn Any + Send + Sync>);

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").field("plugins", &self.plugins).finish_non_exhaustive()
    }
}

impl Chain {
    /// A request (or job run) that starts at `plugin`.
    pub fn start(plugin: &str) -> Self {
        Self { plugins: vec![plugin.into()], pins: Arc::default(), trace: opentelemetry::Context::new() }
    }

    /// The same request, in the trace `trace` (its span the parent of what follows).
    pub fn traced(mut self, trace: opentelemetry::Context) -> Self {
        self.trace = trace;
        self
    }

    /// The trace the request is part of.
    pub fn trace(&self) -> &opentelemetry::Context {
        &self.trace
    }

    /// The same request, gone on to `plugin`.
    pub fn then(&self, plugin: &str) -> Self {
        let mut plugins = self.plugins.clone();
        plugins.push(plugin.into());
        Self { plugins, pins: self.pins.clone(), trace: self.trace.clone() }
    }

    /// The plugin making calls now (the last one reached).
    pub fn caller(&self) -> &str {
        self.plugins.last().map_or("", |plugin| plugin)
    }

    /// Why a call from here to `callee` may not be made, if it may not.
    pub fn refusal(&self, callee: &str) -> Option<String> {
        if self.plugins.iter().any(|plugin| &**plugin == callee) {
            let way: Vec<&str> = self.plugins.iter().map(|plugin| &**plugin).collect();
            return Some(format!("a call back to {callee:?} (the way so far: {})", way.join(" → ")));
        }
        (self.plugins.len() >= MAX_DEPTH)
            .then(|| format!("a call deeper than {MAX_DEPTH} plugins (from {:?} to {callee:?})", self.caller()))
    }

    /// The version this request's calls to `callee` go to: the one pinned
    /// by its first call, else `current`, pinned from now on.
    pub fn pin<T: Any + Send + Sync>(&self, callee: &str, current: impl FnOnce() -> Arc<T>) -> Arc<T> {
        let mut pins = self.pins.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(pinned) = pins.iter().find(|(name, _)| &**name == callee).map(|(_, pinned)| pinned.clone())
            && let Ok(pinned) = pinned.downcast::<T>()
        {
            return pinned;
        }
        let current = current();
        pins.push((callee.into(), current.clone()));
        current
    }
}

/// What serves in-process calls: the gateway's request path.
pub trait Router: Send + Sync {
    /// Serves `request` with plugin `callee` for the plugin at the end of
    /// `chain`, by `deadline`; `Err` when no plugin `callee` exists.
    fn call(
        self: Arc<Self>,
        chain: Chain,
        callee: String,
        request: Request,
        deadline: Instant,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Response, String>> + Send>>;

    /// Largest request body a call may carry (the public listener's limit).
    fn max_body_bytes(&self) -> usize;
}

/// Where the router is, once the gateway exists (plugins load before it).
pub(crate) type RouterCell = Arc<OnceLock<Weak<dyn Router>>>;

/// One instance's way to other plugins: its chain and whom it may call.
pub(crate) struct Calls {
    pub(crate) router: RouterCell,
    /// The caller's `calls`.
    pub(crate) allowed: Arc<[String]>,
    pub(crate) chain: Chain,
    /// The request id of the request that made the instance, passed on.
    pub(crate) request_id: Arc<str>,
}

/// The plugin an outgoing request to `NAME.evogate.internal` is for.
pub(crate) fn callee_of(uri: &hyper::Uri) -> Option<&str> {
    let host = uri.host()?;
    let name = host.strip_suffix(INTERNAL_DOMAIN).or_else(|| {
        // Host names are case-insensitive.
        let at = host.len().checked_sub(INTERNAL_DOMAIN.len())?;
        host.get(at..)?.eq_ignore_ascii_case(INTERNAL_DOMAIN).then(|| &host[..at])
    })?;
    Some(name)
}

type Sent = std::pin::Pin<Box<dyn Future<Output = Result<hyper::Response<WasiBody>, Error>> + Send>>;

impl Calls {
    /// Sends `request` to `callee` in process, or refuses it before any
    /// instance runs: not in `calls`, a call back or too deep, no such plugin.
    pub(crate) fn send(&self, callee: &str, request: hyper::Request<WasiBody>, deadline: Instant) -> Sent {
        let caller = self.chain.caller().to_owned();
        let refused = |why: String| -> Sent {
            tracing::warn!(%caller, callee = %crate::runtime::plugin_log::escape_controls(callee), "call refused: {why}");
            metrics::counter!(
                crate::telemetry::PLUGIN_CALLS, "caller" => caller.clone(), "callee" => callee.to_owned(), "outcome" => "refused"
            )
            .increment(1);
            Box::pin(async { Err(Error::HttpRequestDenied) })
        };
        if !self.allowed.iter().any(|allowed| allowed == callee) {
            return refused(format!("{callee:?} is not in the calls of plugin {caller:?}"));
        }
        if let Some(why) = self.chain.refusal(callee) {
            return refused(why);
        }
        let Some(router) = self.router.get().and_then(Weak::upgrade) else {
            return refused("the gateway is not serving".into());
        };
        let (chain, callee, request_id) = (self.chain.clone(), callee.to_owned(), self.request_id.clone());
        Box::pin(async move {
            use opentelemetry::trace::{SpanKind, TraceContextExt as _};
            let started = Instant::now();
            let request = read_request(request, router.max_body_bytes(), &caller, &request_id).await?;
            // The callee's spans go below this call's.
            let trace = crate::traces::start(chain.trace(), format!("call {callee}"), SpanKind::Client);
            let answer = router.call(chain.traced(trace.clone()), callee.clone(), request, deadline).await;
            if crate::traces::recording(&trace) {
                let status = answer.as_ref().map_or(0, |response| i64::from(response.status));
                trace.span().set_attributes([
                    opentelemetry::KeyValue::new("evogate.callee", callee.clone()),
                    opentelemetry::KeyValue::new("http.response.status_code", status),
                ]);
                if status == 0 || status >= 500 {
                    trace.span().set_status(opentelemetry::trace::Status::error("call failed"));
                }
                trace.span().end();
            }
            let outcome = match &answer {
                Ok(response) if response.status < 500 => "ok",
                Ok(_) => "error",
                Err(_) => "refused",
            };
            let labels = [("caller", caller.clone()), ("callee", callee.clone())];
            metrics::histogram!(crate::telemetry::PLUGIN_CALL_DURATION, &labels)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(crate::telemetry::PLUGIN_CALLS, "caller" => caller.clone(), "callee" => callee.clone(), "outcome" => outcome)
                .increment(1);
            match answer {
                Ok(response) => Ok(into_wasi(response)),
                Err(why) => {
                    tracing::warn!(%caller, %callee, "call refused: {why}");
                    Err(Error::HttpRequestDenied)
                }
            }
        })
    }
}

/// The callee's view of a call: path and query as the caller wrote them
/// (below the callee's route: `/` is its root), the caller's headers but the
/// gateway's own, which it sets: who calls, the base path `/`, the request id.
async fn read_request(
    request: hyper::Request<WasiBody>,
    max_body: usize,
    caller: &str,
    request_id: &str,
) -> Result<Request, Error> {
    let (parts, body) = request.into_parts();
    let body = http_body_util::Limited::new(body, max_body).collect().await.map_err(|err| {
        match err.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => Error::HttpRequestBodySize(Some(max_body as u64)),
            Err(err) => Error::InternalError(Some(format!("reading the call's body: {err}"))),
        }
    })?;
    let gateways = |name: &str| name.starts_with("x-evogate-") || name == "x-request-id";
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| {
            !gateways(name.as_str()) && !crate::edge::is_hop_by_hop(name) && *name != hyper::header::HOST
        })
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .chain([
            (CALLER_HEADER.to_owned(), caller.to_owned()),
            (crate::edge::BASE_PATH.as_str().to_owned(), "/".to_owned()),
            (crate::edge::REQUEST_ID.as_str().to_owned(), request_id.to_owned()),
        ])
        .collect();
    Ok(Request {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers,
        body: body.to_bytes().to_vec(),
    })
}

/// The callee's answer as the caller's outgoing response.
fn into_wasi(response: Response) -> hyper::Response<WasiBody> {
    let mut answer = hyper::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        if let (Ok(name), Ok(value)) =
            (hyper::header::HeaderName::try_from(name.as_str()), hyper::header::HeaderValue::try_from(value.as_str()))
            && !crate::edge::is_hop_by_hop(&name)
        {
            answer = answer.header(name, value);
        }
    }
    let body = http_body_util::Full::new(Bytes::from(response.body)).map_err(|never| match never {}).boxed_unsync();
    answer.body(body).unwrap_or_else(|_| {
        let body = http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync();
        let mut broken = hyper::Response::new(body);
        *broken.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        broken
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_back_along_the_way_or_past_the_depth_is_refused() {
        let chain = Chain::start("loyalty");
        assert_eq!(chain.refusal("evotor"), None);
        let deeper = chain.then("evotor");
        assert_eq!(deeper.caller(), "evotor");
        let back = deeper.refusal("loyalty").expect("A → B → A");
        assert!(back.contains("loyalty → evotor"), "{back}");
        assert!(deeper.refusal("evotor").is_some(), "a plugin calling itself");
        let deepest = deeper.then("c").then("d");
        assert!(deepest.refusal("e").expect("too deep").contains("deeper than 4"));
    }

    #[test]
    fn a_request_keeps_the_version_its_first_call_found() {
        let chain = Chain::start("a");
        let first = chain.pin("b", || Arc::new(1_u32));
        let again = chain.then("b").pin("b", || Arc::new(2_u32));
        assert_eq!((*first, *again), (1, 1), "pinned across the request's calls");
        assert_eq!(*Chain::start("a").pin("b", || Arc::new(2_u32)), 2, "another request finds the new one");
    }

    #[test]
    fn only_hosts_under_the_internal_domain_name_a_plugin() {
        let callee = |uri: &str| callee_of(&uri.parse().expect("uri")).map(str::to_owned);
        assert_eq!(callee("http://evotor.evogate.internal/extension/v1/session"), Some("evotor".into()));
        assert_eq!(callee("http://Evotor.EVOGATE.Internal/"), Some("Evotor".into()));
        assert_eq!(callee("https://evotor.evogate.internal.example.com/"), None);
        assert_eq!(callee("https://api.evotor.ru/"), None);
    }

    #[tokio::test]
    async fn the_callee_gets_the_callers_headers_but_never_the_gateways_own() {
        let body = http_body_util::Full::new(Bytes::from_static(b"{}")).map_err(|never| match never {}).boxed_unsync();
        let request = hyper::Request::builder()
            .method("POST")
            .uri("http://evotor.evogate.internal/extension/v1/session?x=1")
            .header("authorization", "Bearer t")
            .header("x-evogate-caller", "evotor")
            .header("x-evogate-base-path", "/elsewhere")
            .header("x-request-id", "forged")
            .header("host", "evotor.evogate.internal")
            .body(body)
            .expect("request");
        let seen = read_request(request, 1024, "loyalty", "r-1").await.expect("read");
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str(), seen.query.as_str()),
            ("POST", "/extension/v1/session", "x=1")
        );
        let values = |name: &str| -> Vec<&str> {
            seen.headers.iter().filter(|(key, _)| key == name).map(|(_, value)| value.as_str()).collect()
        };
        assert_eq!(values("x-evogate-caller"), ["loyalty"]);
        assert_eq!(values("x-evogate-base-path"), ["/"]);
        assert_eq!(values("x-request-id"), ["r-1"]);
        assert_eq!(values("authorization"), ["Bearer t"]);
        assert!(values("host").is_empty());
        assert_eq!(seen.body, b"{}");
    }
}
