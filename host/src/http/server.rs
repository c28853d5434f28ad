//! The public HTTP listener: read and limit the request, route it to a
//! plugin, run the plugin within the deadline, answer. Plain HTTP/1.1, or
//! HTTPS with HTTP/2 and HTTP/1.1 by ALPN; connection and concurrency limits;
//! graceful drain on shutdown.

use crate::control::registry::Registry;
use crate::edge::{ErrorFormat, REQUEST_ID, error, error_with, into_http, plugin_request, request_id};
use crate::http::body_budget::{BodyBudget, BodyError, BodyRoom};
use crate::http::tls::Tls;
use crate::runtime::calls::Chain;
use crate::runtime::sandbox::{Failure, Laps, Response as PluginResponse};
use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderValue, RETRY_AFTER};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use opentelemetry::Context;
use opentelemetry::trace::SpanKind;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long the gateway waits past the deadline for a plugin stuck in a
/// host call (which epoch interruption cannot stop) before answering 503.
const HOST_CALL_GRACE: Duration = Duration::from_millis(500);

/// Requests running per (plugin, SHA-256 of the `Authorization` value).
type CredentialCounts = Arc<std::sync::Mutex<HashMap<(String, [u8; 32]), usize>>>;
/// HTTP/2 pings an idle connection this often, and drops it when a ping goes unanswered.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Streams one HTTP/2 connection may run at once.
const H2_MAX_STREAMS: u32 = 128;

/// The routing table plus the limits every request obeys.
#[derive(Debug)]
pub struct Gateway {
    /// Routes to plugins and the per-plugin caps; a reload swaps it whole.
    routing: arc_swap::ArcSwap<Routing>,
    /// Largest accepted request body.
    pub(super) max_body_bytes: usize,
    /// Largest accepted request head (request line and headers).
    max_header_bytes: usize,
    /// Request body bytes held at once, across requests.
    body_budget: BodyBudget,
    /// Time budget of one request, queueing included.
    request_timeout: Duration,
    /// Most requests running at once (the instance pool's capacity).
    max_instances: usize,
    /// Permits for requests running at once.
    pub(super) permits: Arc<Semaphore>,
    /// Requests running now per (plugin, digest of an `Authorization` value).
    per_credential: CredentialCounts,
    /// Set when shutdown begins: `/readyz` answers 503 so load balancers stop sending.
    draining: AtomicBool,
    /// What requests no route serves record.
    unrouted: crate::telemetry::RouteMetrics,
    /// [`crate::telemetry::INSTANCES_IN_USE`], registered once.
    in_use: metrics::Gauge,
    /// Keeps the engine (and its epoch ticker) alive as long as the gateway.
    _sandbox: Arc<crate::runtime::sandbox::Sandbox>,
}

/// What a reload changes on the request path: the routes, and the caps of
/// each plugin. A request takes the one there is when it arrives.
#[derive(Debug)]
pub(crate) struct Routing {
    /// Routes to plugins.
    registry: Registry,
    /// Per plugin: its cap, and permits for its requests running at once; none left → 503 at once.
    plugin_permits: HashMap<String, (usize, Arc<Semaphore>)>,
    /// Per plugin: requests running at once with one `Authorization` value, at most.
    credential_caps: HashMap<String, usize>,
}

impl Routing {
    /// The plugins served and their routes.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// What one request came to, for the access log.
struct Served {
    response: hyper::Response<Full<Bytes>>,
    /// The route that answered and the `name@version` of its deployment.
    plugin: Option<(Arc<crate::control::registry::Mount>, String)>,
}

/// How the public listener treats connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// HTTPS; plain HTTP/1.1 without it.
    pub tls: Option<Arc<Tls>>,
    /// Open connections at most.
    pub max_connections: usize,
    /// Time to send a request head (and the TLS handshake), and longest keep-alive idle time.
    pub header_read_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish once shutdown begins.
    pub drain: Duration,
    /// How long new connections are still accepted once shutdown begins
    /// (readiness already says no), before the listener closes.
    pub drain_grace: Duration,
    /// Readiness on this listener (`health_path`), answered before any route.
    pub health: Option<Arc<crate::http::admin::Health>>,
}

/// What every request on its way to a plugin obeys.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest accepted request head (request line and headers).
    pub max_header_bytes: usize,
    /// Request body bytes held at once, across requests.
    pub body_bytes_in_flight: usize,
    /// The least rate a body that holds room must keep up.
    pub min_body_bytes_per_sec: u64,
    /// Time budget of one request, queueing included.
    pub timeout: Duration,
    /// Most requests running at once (the instance pool's capacity).
    pub max_instances: usize,
    /// Per plugin: requests running at once, at most.
    pub plugin_caps: HashMap<String, usize>,
    /// Per plugin: requests running at once with one `Authorization` value, at most.
    pub credential_caps: HashMap<String, usize>,
}

/// Serves connections from `listener` until `shutdown` resolves; then marks
/// the gateway draining (`/readyz` answers 503), keeps accepting for
/// `options.drain_grace`, stops accepting and waits for in-flight requests
/// to finish (at most `options.drain`).
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()>,
    options: ServeOptions,
) {
    // Connections watch `stop` to close gracefully; each holds a permit, so
    // holding every permit again means every connection has ended.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let options = Arc::new(options);
    tokio::pin!(shutdown);
    // Set once shutdown begins: when the listener closes.
    let mut closing: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = crate::http::tls::accept(&listener, "public") => accepted,
            () = &mut shutdown, if closing.is_none() => {
                gateway.draining.store(true, Ordering::SeqCst);
                if !options.drain_grace.is_zero() {
                    tracing::info!(
                        drain_grace_ms = options.drain_grace.as_millis() as u64,
                        "shutting down: not ready; still accepting during the grace period"
                    );
                }
                closing = Some(Box::pin(tokio::time::sleep(options.drain_grace)));
                continue;
            }
            () = async { if let Some(closing) = closing.as_mut() { closing.await } }, if closing.is_some() => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!(crate::telemetry::CONNECTIONS_REFUSED).increment(1);
            tracing::warn!(%peer, limit = options.max_connections, "connection limit reached; refusing a connection");
            tokio::spawn(refuse(stream, options.tls.is_some()));
            continue;
        };
        let (gateway, options, stopped) = (gateway.clone(), options.clone(), stopped.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let streams = Arc::new(Streams::default());
            let tracked = streams.clone();
            let health = options.health.clone();
            let service = hyper::service::service_fn(move |req| {
                let (gateway, open, health) = (gateway.clone(), Streams::begin(&tracked), health.clone());
                async move {
                    let response = match health.filter(|health| health.path == req.uri().path()) {
                        Some(health) => health.answer(req.method()).await,
                        None => gateway.handle(req).await,
                    };
                    drop(open);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let result = match &options.tls {
                None => {
                    let conn = http1(&options).serve_connection(TokioIo::new(stream), service);
                    let graceful = hyper::server::conn::http1::Connection::graceful_shutdown;
                    Box::pin(drive(conn, graceful, stopped, None, Some(streams))).await
                }
                Some(tls) => {
                    let Some(stream) = tls.handshake(stream, peer, options.header_read_timeout).await else { return };
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        // HTTP/2 has no head timeout of its own: a connection without open
                        // streams (or that never sent its preface) closes after the same time.
                        let idle = Some((streams, options.header_read_timeout));
                        let conn = http2(&options).serve_connection(TokioIo::new(stream), service);
                        let graceful = hyper::server::conn::http2::Connection::graceful_shutdown;
                        Box::pin(drive(conn, graceful, stopped, idle, None)).await
                    } else {
                        let conn = http1(&options).serve_connection(TokioIo::new(stream), service);
                        let fresh = Some(streams);
                        let graceful = hyper::server::conn::http1::Connection::graceful_shutdown;
                        Box::pin(drive(conn, graceful, stopped, None, fresh)).await
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    gateway.draining.store(true, Ordering::SeqCst);
    tracing::info!(drain_timeout_ms = options.drain.as_millis() as u64, "shutting down: draining in-flight requests");
    let _ = stop.send(true);
    let all = u32::try_from(options.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(options.drain, connections.acquire_many(all)).await.is_err() {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

/// Requests of one connection in progress, since when it has had none,
/// and whether it has begun one at all.
#[derive(Debug)]
struct Streams {
    open: std::sync::atomic::AtomicUsize,
    idle_since: std::sync::Mutex<Instant>,
    begun: std::sync::atomic::AtomicBool,
    /// Woken when the first request begins.
    first: tokio::sync::Notify,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            open: Default::default(),
            idle_since: std::sync::Mutex::new(Instant::now()),
            begun: std::sync::atomic::AtomicBool::new(false),
            first: tokio::sync::Notify::new(),
        }
    }
}

/// At shutdown, how long a connection that has not begun a request yet
/// (accepted just before) is given for its first one: a client that
/// connected sends it at once, and closing the connection before reading
/// it would fail a request the gateway accepted.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// One request in progress on a connection; the connection is idle again once the last one goes.
struct OpenStream(Arc<Streams>);

impl Streams {
    fn begin(streams: &Arc<Self>) -> OpenStream {
        if !streams.begun.swap(true, Ordering::SeqCst) {
            streams.first.notify_waiters();
        }
        streams.open.fetch_add(1, Ordering::SeqCst);
        OpenStream(streams.clone())
    }

    /// Resolves once the connection has begun a request (at once if it has).
    async fn first_request(&self) {
        let woken = self.first.notified();
        tokio::pin!(woken);
        // Registered before the flag is read, so a request that begins in between still wakes it.
        woken.as_mut().enable();
        if !self.begun.load(Ordering::SeqCst) {
            woken.await;
        }
    }

    /// Resolves once the connection has had no request in progress for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let wait = if self.open.load(Ordering::SeqCst) == 0 {
                let since = *self.idle_since.lock().unwrap_or_else(|poison| poison.into_inner());
                match (since + timeout).checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ if self.open.load(Ordering::SeqCst) == 0 => return,
                    _ => timeout,
                }
            } else {
                timeout
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|poison| poison.into_inner()) = Instant::now();
        }
    }
}

/// Serves `conn` to its end. When the gateway stops, or (with `idle`) when
/// the connection has had no request in progress for the given time, it is
/// shut down gracefully: requests in progress finish, then it closes; one
/// that does not close within that time (a peer that never completed its
/// preface) is dropped. With `fresh` (HTTP/1), a connection the stop finds
/// before its first request is given [`FIRST_REQUEST_GRACE`] for it first.
async fn drive<C, E>(
    conn: C,
    graceful: impl Fn(std::pin::Pin<&mut C>),
    mut stopped: tokio::sync::watch::Receiver<bool>,
    idle: Option<(Arc<Streams>, Duration)>,
    fresh: Option<Arc<Streams>>,
) -> Result<(), E>
where
    C: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    let bound = idle.as_ref().map_or(Duration::ZERO, |(_, timeout)| *timeout);
    let idle_out = async {
        match &idle {
            Some((streams, timeout)) => streams.idle_for(*timeout).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(idle_out);
    tokio::select! {
        result = conn.as_mut() => return result,
        () = async { drop(stopped.wait_for(|stop| *stop).await) } => {
            if let Some(streams) = &fresh {
                tokio::select! {
                    result = conn.as_mut() => return result,
                    () = streams.first_request() => {}
                    () = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
                }
            }
            graceful(conn.as_mut());
            return conn.await;
        }
        () = &mut idle_out => graceful(conn.as_mut()),
    }
    tokio::time::timeout(bound, conn).await.unwrap_or(Ok(()))
}

fn http1(options: &ServeOptions) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // hyper's smallest read buffer is 8 KiB; a head that does not fit gets 431.
        .max_buf_size(options.max_header_bytes.max(8192));
    builder
}

fn http2(options: &ServeOptions) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(options.header_read_timeout);
    builder
}

/// Answers a connection past the limit: plain HTTP gets a 503 problem
/// (no route is known yet) with `Retry-After`; a TLS connection is closed
/// (no handshake is spent on it).
async fn refuse(mut stream: tokio::net::TcpStream, tls: bool) {
    use tokio::io::AsyncWriteExt as _;
    if tls {
        return;
    }
    let (body, content_type) =
        crate::edge::error_body(ErrorFormat::Problem, StatusCode::SERVICE_UNAVAILABLE, "too many connections");
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {content_type}\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
    let _ = stream.shutdown().await;
}

impl Gateway {
    /// The request path over `registry`, every request held to `limits`.
    pub(crate) fn new(
        registry: Registry,
        limits: RequestLimits,
        sandbox: Arc<crate::runtime::sandbox::Sandbox>,
    ) -> Self {
        let routing = Routing {
            registry,
            plugin_permits: limits
                .plugin_caps
                .iter()
                .map(|(name, &cap)| (name.clone(), (cap, Arc::new(Semaphore::new(cap)))))
                .collect(),
            credential_caps: limits.credential_caps.clone(),
        };
        Self {
            routing: arc_swap::ArcSwap::from_pointee(routing),
            max_body_bytes: limits.max_body_bytes,
            max_header_bytes: limits.max_header_bytes,
            body_budget: BodyBudget::new(limits.body_bytes_in_flight, limits.min_body_bytes_per_sec),
            request_timeout: limits.timeout,
            max_instances: limits.max_instances,
            permits: Arc::new(Semaphore::new(limits.max_instances)),
            per_credential: Arc::default(),
            draining: AtomicBool::new(false),
            unrouted: crate::telemetry::RouteMetrics::new("", ""),
            in_use: {
                metrics::gauge!(crate::telemetry::INSTANCES_MAX).set(limits.max_instances as f64);
                metrics::gauge!(crate::telemetry::INSTANCES_IN_USE)
            },
            _sandbox: sandbox,
        }
    }

    /// The routes and caps new requests get.
    pub(crate) fn routing(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    /// Serves `registry` from now on, with the per-plugin caps of `caps`
    /// (a reload): requests in flight finish as they started. A plugin
    /// whose cap is unchanged keeps its permits, so what it runs now counts.
    pub(crate) fn reroute(&self, registry: Registry, caps: &RequestLimits) {
        let old = self.routing.load();
        let plugin_permits = caps
            .plugin_caps
            .iter()
            .map(|(name, &cap)| {
                let permits = match old.plugin_permits.get(name) {
                    Some((was, permits)) if *was == cap => permits.clone(),
                    _ => Arc::new(Semaphore::new(cap)),
                };
                (name.clone(), (cap, permits))
            })
            .collect();
        let routing = Routing { registry, plugin_permits, credential_caps: caps.credential_caps.clone() };
        self.routing.store(Arc::new(routing));
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Answers one HTTP request and writes its access-log line.
    pub async fn handle(&self, mut req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        // The plugin sees the id as a request header; the client gets it back.
        let request_id = request_id(req.headers());
        req.headers_mut().insert(REQUEST_ID, request_id.clone());
        // The trace the request arrives in, continued by its span (when traces are on).
        let arrived = crate::traces::extract(req.headers());
        let trace = crate::traces::start(&arrived, method.as_str().to_owned(), SpanKind::Server);
        let mut served = self.dispatch(req, started, &trace).await;
        served.response.headers_mut().insert(REQUEST_ID, request_id.clone());
        let status = served.response.status().as_u16();
        let elapsed = started.elapsed();
        let (metrics, label) = match &served.plugin {
            Some((mount, label)) => (&mount.metrics, label.as_str()),
            None => (&self.unrouted, ""),
        };
        let trace_id = crate::traces::trace_id(&trace);
        tracing::info!(
            target: "evogate::access",
            %method,
            path,
            status,
            latency_us = elapsed.as_micros() as u64,
            plugin = if label.is_empty() { "-" } else { label },
            request_id = request_id.to_str().unwrap_or("-"),
            trace_id = trace_id.as_deref().unwrap_or("-"),
        );
        metrics.answered(status, elapsed);
        if crate::traces::recording(&trace) {
            let plugin = served
                .plugin
                .as_ref()
                .map(|(mount, label)| (mount.route.as_str(), mount.name.as_str(), label.as_str()));
            crate::traces::request_ends(
                &trace,
                method.as_str(),
                &path,
                plugin,
                status,
                request_id.to_str().unwrap_or("-"),
            );
        }
        served.response
    }

    async fn dispatch(&self, req: hyper::Request<Incoming>, started: Instant, trace: &Context) -> Served {
        let routing = self.routing.load_full();
        let mount = routing.registry.route(req.uri().path());
        // The route's plugin picks how the gateway's errors read; no route: a problem.
        let format = mount.map_or(ErrorFormat::Problem, |mount| mount.error_format);
        if head_bytes(&req) > self.max_header_bytes {
            // hyper bounds its read buffer, not the head: a head may pass it by up to its read size.
            let response = error(format, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large");
            return Served { response, plugin: None };
        }
        if req.headers().get_all(hyper::header::AUTHORIZATION).iter().nth(1).is_some() {
            // One proxy would pick the first, another the last: which credential is meant cannot be known.
            let response = error(format, StatusCode::BAD_REQUEST, "several Authorization headers");
            return Served { response, plugin: None };
        }
        let Some(mount) = mount else {
            return Served { response: error(format, StatusCode::NOT_FOUND, "not found"), plugin: None };
        };
        let deployment = mount.current();
        let label = deployment.label().to_owned();
        let response = match self.call(req, started, mount, deployment, trace).await {
            Ok(response) => into_http(response, &label, format),
            Err(response) => response,
        };
        Served { response, plugin: Some((mount.clone(), label)) }
    }

    /// Admits a request step by step, runs the plugin and answers: each
    /// step below is named for what it checks, and an `Err` is the finished
    /// error response of the step that refused.
    async fn call(
        &self,
        req: hyper::Request<Incoming>,
        started: Instant,
        mount: &crate::control::registry::Mount,
        deployment: Arc<crate::control::registry::Deployment>,
        trace: &Context,
    ) -> Result<PluginResponse, hyper::Response<Full<Bytes>>> {
        let (plugin, route, format) = (mount.name.as_str(), mount.route.as_str(), mount.error_format);
        let deadline = started + self.request_timeout;
        declared_length_within(req.headers(), self.max_body_bytes).map_err(|()| self.too_large(format))?;
        let (parts, body) = req.into_parts();
        let (body, _body_held) = self.read_body(body, deadline, format).await?;
        let _credential_permit = self.admit_credential(plugin, &parts.headers, format)?;
        let request = plugin_request(&parts, route, body);
        let plugin_permit = self.admit_to_plugin(plugin, format)?;
        let permit = self.admit_to_pool(deadline, format).await?;
        self.instances_in_use();
        let label = deployment.label().to_owned();
        let outcome = run_plugin(&deployment, request, deadline, Chain::start(plugin).traced(trace.clone())).await;
        drop(permit);
        drop(plugin_permit);
        self.instances_in_use();
        answer_of(outcome, plugin, &label, format)
    }

    /// The 413 of a body over `max_body_bytes`.
    fn too_large(&self, format: ErrorFormat) -> hyper::Response<Full<Bytes>> {
        error_with(format, StatusCode::PAYLOAD_TOO_LARGE, "payload too large", |e| {
            e["subject"] = "body".into();
            e["value"] = self.max_body_bytes.into();
        })
    }

    /// Step: the body, read whole within the in-flight budget, at its
    /// minimum rate and by the deadline (the budget's hold with it).
    async fn read_body(
        &self,
        body: Incoming,
        deadline: Instant,
        format: ErrorFormat,
    ) -> Result<(Vec<u8>, BodyRoom), hyper::Response<Full<Bytes>>> {
        let read = self.body_budget.read(body, self.max_body_bytes);
        match tokio::time::timeout_at(deadline.into(), read).await {
            Ok(Ok(read)) => Ok(read),
            Ok(Err(BodyError::TooLarge)) => Err(self.too_large(format)),
            Ok(Err(BodyError::Unreadable)) => {
                Err(error(format, StatusCode::BAD_REQUEST, "request body could not be read"))
            }
            Ok(Err(BodyError::TooSlow)) => {
                metrics::counter!(crate::telemetry::SLOW_BODIES).increment(1);
                Err(error(format, StatusCode::REQUEST_TIMEOUT, "request body arriving too slowly"))
            }
            Err(_) => Err(error(format, StatusCode::REQUEST_TIMEOUT, "request body not received in time")),
        }
    }

    /// Step: one credential (one user's token) may not take more than its
    /// share of the plugin.
    fn admit_credential(
        &self,
        plugin: &str,
        headers: &hyper::HeaderMap,
        format: ErrorFormat,
    ) -> Result<Option<CredentialPermit>, hyper::Response<Full<Bytes>>> {
        self.credential_permit(plugin, headers).map_err(|()| {
            metrics::counter!(crate::telemetry::REQUESTS_REFUSED, "plugin" => plugin.to_owned(), "reason" => "credential")
                .increment(1);
            unavailable(format, BUSY)
        })
    }

    /// Step: the plugin's own cap (`max_concurrent_requests`) answers at once.
    pub(super) fn admit_to_plugin(
        &self,
        plugin: &str,
        format: ErrorFormat,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, hyper::Response<Full<Bytes>>> {
        let routing = self.routing.load();
        match routing.plugin_permits.get(plugin).map(|(_, permits)| permits.clone().try_acquire_owned()) {
            Some(Err(_)) => {
                metrics::counter!(crate::telemetry::REQUESTS_REFUSED, "plugin" => plugin.to_owned()).increment(1);
                Err(unavailable(format, BUSY))
            }
            Some(Ok(permit)) => Ok(Some(permit)),
            None => Ok(None),
        }
    }

    /// Step: a permit of the shared instance pool, waited for until the deadline.
    async fn admit_to_pool(
        &self,
        deadline: Instant,
        format: ErrorFormat,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, hyper::Response<Full<Bytes>>> {
        match tokio::time::timeout_at(deadline.into(), self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(unavailable(format, BUSY)),
        }
    }
}

/// A request counted against its credential's cap until it ends.
struct CredentialPermit {
    counts: CredentialCounts,
    key: (String, [u8; 32]),
}

impl Drop for CredentialPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Gateway {
    /// A permit for a request of `plugin` with these headers under the
    /// plugin's per-credential cap (`None`: no cap, or no credential);
    /// `Err` when the credential has its share running already.
    fn credential_permit(&self, plugin: &str, headers: &hyper::HeaderMap) -> Result<Option<CredentialPermit>, ()> {
        use sha2::Digest as _;
        let Some(&cap) = self.routing.load().credential_caps.get(plugin) else { return Ok(None) };
        let Some(credential) = headers.get(hyper::header::AUTHORIZATION) else { return Ok(None) };
        let key = (plugin.to_owned(), <[u8; 32]>::from(sha2::Sha256::digest(credential.as_bytes())));
        let mut counts = self.per_credential.lock().unwrap_or_else(|poison| poison.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= cap {
            return Err(());
        }
        *count += 1;
        Ok(Some(CredentialPermit { counts: self.per_credential.clone(), key }))
    }

    pub(super) fn instances_in_use(&self) {
        let in_use = self.max_instances.saturating_sub(self.permits.available_permits());
        self.in_use.set(in_use as f64);
    }
}

/// The size of a request's head as sent over HTTP/1.1: the request line
/// and each header line with their line ends.
fn head_bytes<B>(req: &hyper::Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |target| target.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize = req.headers().iter().map(|(name, value)| name.as_str().len() + 2 + value.len() + 2).sum();
    line + headers + 2
}

/// Step: a declared `Content-Length` over `max` is refused before a byte of the body is read.
fn declared_length_within(headers: &hyper::HeaderMap, max: usize) -> Result<(), ()> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared.is_some_and(|len| len > max as u64) {
        true => Err(()),
        false => Ok(()),
    }
}

/// Step: the plugin's call, by the deadline. Epoch interruption stops
/// plugin code at the deadline; the outer timeout covers a host call (kv)
/// that hangs past it. `Err(())`: that outer timeout.
pub(super) async fn run_plugin(
    deployment: &crate::control::registry::Deployment,
    request: crate::edge::Request,
    deadline: Instant,
    chain: Chain,
) -> Result<Result<PluginResponse, Failure>, ()> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let mut laps = Laps::off();
    let call = deployment.plugin.answer_in(request, remaining, chain, &mut laps);
    tokio::time::timeout_at((deadline + HOST_CALL_GRACE).into(), call)
        .await
        .map(|(outcome, spent)| {
            // The instance's memory is reset once the answer is written (the
            // task runs when this one yields); its pool permit is held until then.
            tokio::spawn(async move { drop(spent) });
            outcome
        })
        .map_err(drop)
}

/// Step: the plugin's outcome as the client gets it: its answer, or the
/// gateway's error for a deadline (503), a memory limit or a trap (500),
/// each counted and logged.
pub(super) fn answer_of(
    outcome: Result<Result<PluginResponse, Failure>, ()>,
    plugin: &str,
    label: &str,
    format: ErrorFormat,
) -> Result<PluginResponse, hyper::Response<Full<Bytes>>> {
    let failure = |kind: &'static str| {
        metrics::counter!(crate::telemetry::PLUGIN_FAILURES, "plugin" => plugin.to_owned(), "kind" => kind)
            .increment(1);
    };
    match outcome {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(Failure::Deadline)) | Err(()) => {
            failure("deadline");
            tracing::warn!(plugin = %label, "request deadline exceeded");
            Err(unavailable(format, "deadline exceeded"))
        }
        Ok(Err(Failure::MemoryLimit)) => {
            failure("memory_limit");
            tracing::warn!(plugin = %label, "plugin hit its memory limit");
            Err(error(format, StatusCode::INTERNAL_SERVER_ERROR, "memory limit exceeded"))
        }
        Ok(Err(Failure::Trap(err))) => {
            failure("trap");
            // The trap's backtrace names the plugin's own functions: escaped.
            let trap = format!("{err:?}");
            tracing::error!(plugin = %label, error = %crate::runtime::plugin_log::escape_controls(&trap), "plugin trapped");
            Err(error(format, StatusCode::INTERNAL_SERVER_ERROR, "plugin failed"))
        }
    }
}

/// Why a request found no room to run.
pub(super) const BUSY: &str = "too many requests in progress";

/// A 503 the client should retry in a second.
pub(super) fn unavailable(format: ErrorFormat, detail: &str) -> hyper::Response<Full<Bytes>> {
    let mut response = error(format, StatusCode::SERVICE_UNAVAILABLE, detail);
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests;
