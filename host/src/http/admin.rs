//! The admin listener: deploy, roll back and observe plugins.
//!
//! | method, path | what |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs (no token needed) |
//! | `GET /readyz` | 200 when every plugin is loaded and the store answers, else 503 (no token needed) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /plugins` | every plugin: route, identity, live version, sha256, deployed at, kept versions, jobs |
//! | `PUT /plugins/{name}[?force=true]` | body: a component; deploys it → 200 with the outcome, 400/409/422 with the reason (409: another program than the live one, unless forced) |
//! | `POST /plugins/{name}/rollback[?to=VERSION]` | back to the previous version, or to any kept one (back or forward) |
//! | `POST /reload` | reads the configuration again and puts it in force, whole or not at all → 200, or 422 with each problem |
//! | `POST /plugins/{name}/jobs/{job}/run` | runs a scheduled job now → 200 with its outcome, 404, 409 while it runs |
//! | `GET /backup` | a backup of the whole store as of now, streamed (`crate::kv::backup`'s format) while the gateway serves |
//!
//! Everything but the health checks needs `Authorization: Bearer <token>`:
//! `admin.token`, or the one made at the first start in `data_dir/admin.token`.

use crate::app::App;
use crate::control::deploy::DeployError;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;

/// Longest `/readyz` waits for the store to answer before saying not ready.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin listener serves.
#[derive(Debug)]
pub struct Admin {
    /// The running gateway.
    pub app: Arc<App>,
    /// Renders the metrics; none when no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// The bearer token required, if any.
    pub token: Option<String>,
    /// The store's health as the last ping found it.
    pub probe: Arc<StoreProbe>,
}

/// Pings the store off the async threads, one ping at a time: probes that
/// arrive while one runs wait for its answer (at most
/// [`READY_PROBE_TIMEOUT`]) instead of starting another, so a store that
/// never answers holds one blocking thread, not one per probe.
#[derive(Debug)]
pub struct StoreProbe {
    running: std::sync::atomic::AtomicBool,
    /// When the last ping ended, and how.
    last: tokio::sync::watch::Sender<Option<(Instant, Result<(), String>)>>,
}

impl Default for StoreProbe {
    fn default() -> Self {
        Self { running: std::sync::atomic::AtomicBool::new(false), last: tokio::sync::watch::Sender::new(None) }
    }
}

impl StoreProbe {
    /// The outcome of a ping that ended after now, or why there is none within the timeout.
    async fn check(self: &Arc<Self>, backend: &Arc<dyn crate::kv::Backend>) -> Result<(), String> {
        let asked = Instant::now();
        let mut outcomes = self.last.subscribe();
        if !self.running.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let (probe, backend) = (self.clone(), backend.clone());
            tokio::task::spawn_blocking(move || {
                let outcome = backend.ping().map_err(|err| err.to_string());
                probe.running.store(false, std::sync::atomic::Ordering::SeqCst);
                probe.last.send_replace(Some((Instant::now(), outcome)));
            });
        }
        let fresh = outcomes.wait_for(|last| last.as_ref().is_some_and(|(at, _)| *at >= asked));
        match tokio::time::timeout(READY_PROBE_TIMEOUT, fresh).await {
            Ok(Ok(last)) => last.as_ref().map_or(Ok(()), |(_, outcome)| outcome.clone()),
            Ok(Err(_)) => Err("the store probe stopped".into()),
            Err(_) => Err(format!("no answer within {} ms", READY_PROBE_TIMEOUT.as_millis())),
        }
    }
}

type Reply = hyper::Response<Full<Bytes>>;

/// 200 `ready`, or 503 with why not: shutting down, or the store not answering.
async fn readiness(app: &App, probe: &Arc<StoreProbe>) -> Reply {
    if app.gateway.is_draining() {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match probe.check(&app.backend).await {
        Ok(()) => problem_free("ready"),
        Err(err) => problem(StatusCode::SERVICE_UNAVAILABLE, &format!("store not ready: {err}")),
    }
}

/// Readiness on the public listener (`health_path`): what the admin
/// listener's `/readyz` answers, with the same store probe, for a load
/// balancer that reaches no other listener. No token; not logged, not
/// counted as a plugin's request.
#[derive(Debug)]
pub struct Health {
    /// The path it answers on, exactly.
    pub path: String,
    pub(crate) app: Arc<App>,
    pub(crate) probe: Arc<StoreProbe>,
}

impl Health {
    /// The answer to `GET` or `HEAD` on the path; 405 to anything else.
    pub(crate) async fn answer(&self, method: &Method) -> Reply {
        if method != Method::GET && method != Method::HEAD {
            let mut reply = problem(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD");
            reply.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return reply;
        }
        let mut reply = readiness(&self.app, &self.probe).await;
        reply.headers_mut().insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        reply
    }
}

/// Any admin answer's body: whole, or streamed (a backup).
type Streamed = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// Bytes a backup's body sends at once.
const BACKUP_FRAME_BYTES: usize = 256 << 10;
/// Frames of a backup waiting for the client, at most.
const BACKUP_FRAMES_QUEUED: usize = 8;

/// Writes into a channel a frame at a time; fails once the receiver is gone.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let frame = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(BACKUP_FRAME_BYTES)));
        self.sender
            .blocking_send(Ok(frame))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= BACKUP_FRAME_BYTES {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A body whose frames come from a channel.
struct ChannelBody {
    frames: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.frames.poll_recv(cx).map(|frame| frame.map(|frame| frame.map(hyper::body::Frame::data)))
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Reply {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn problem(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

/// Time a client of the admin API has for its TLS handshake and request head.
const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Admin connections open at once. A connection past them closes the
/// oldest idle one (no request in flight) to take its place, so idle
/// connections can never lock out a health check; when every one is busy,
/// the new one waits [`ADMIN_ADMISSION_WAIT`] for a place, then is closed.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// How long a connection past [`MAX_ADMIN_CONNECTIONS`] waits for a place.
const ADMIN_ADMISSION_WAIT: Duration = Duration::from_secs(1);

/// One open admin connection, as the listener sees it.
#[derive(Debug, Default)]
struct AdminConnection {
    /// Requests in flight on it.
    busy: std::sync::atomic::AtomicUsize,
    /// Told when a newer connection needs its place (it closes once idle).
    evict: tokio::sync::Notify,
}

/// The open admin connections, oldest first.
#[derive(Debug, Default)]
struct AdminConnections {
    open: std::sync::Mutex<std::collections::VecDeque<Arc<AdminConnection>>>,
}

impl AdminConnections {
    fn add(&self) -> Arc<AdminConnection> {
        let connection = Arc::new(AdminConnection::default());
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_back(connection.clone());
        connection
    }

    fn remove(&self, connection: &Arc<AdminConnection>) {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.retain(|other| !Arc::ptr_eq(other, connection));
    }

    /// Tells the oldest idle connection to close; whether there was one.
    fn evict_oldest_idle(&self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let idle = open.iter().position(|c| c.busy.load(std::sync::atomic::Ordering::Acquire) == 0);
        match idle.and_then(|index| open.remove(index)) {
            Some(connection) => {
                connection.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Counts a request in flight on its connection while alive.
struct Busy(Arc<AdminConnection>);

impl Busy {
    fn new(connection: &Arc<AdminConnection>) -> Self {
        connection.busy.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(connection.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Serves the admin API on `listener` (over HTTPS with `tls`) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    tls: Option<Arc<crate::http::tls::Tls>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Admin connections have their own bound: idle ones can never take the public listener's descriptors.
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let open = Arc::new(AdminConnections::default());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = crate::http::tls::accept(&listener, "admin") => accepted,
            () = &mut shutdown => return,
        };
        let permit = match places.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Full: the oldest idle connection makes room; the wait is the new one's, not the listener's.
                let evicted = open.evict_oldest_idle();
                let (admin, tls, open, places) = (admin.clone(), tls.clone(), open.clone(), places.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(ADMIN_ADMISSION_WAIT, places.acquire_owned()).await {
                        Ok(Ok(permit)) => serve_admin_connection(stream, peer, admin, tls, open, permit).await,
                        _ => {
                            metrics::counter!(crate::telemetry::ADMIN_CONNECTIONS_REFUSED).increment(1);
                            tracing::warn!(
                                limit = MAX_ADMIN_CONNECTIONS,
                                evicted,
                                "admin connection limit reached with every connection busy; closing a connection"
                            );
                        }
                    }
                });
                continue;
            }
        };
        tokio::spawn(serve_admin_connection(stream, peer, admin.clone(), tls.clone(), open.clone(), permit));
    }
}

/// Serves one admin connection holding `permit`, until it ends or a newer
/// connection needs its place while it is idle.
async fn serve_admin_connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    admin: Arc<Admin>,
    tls: Option<Arc<crate::http::tls::Tls>>,
    open: Arc<AdminConnections>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _permit = permit;
    let connection = open.add();
    let service = {
        let connection = connection.clone();
        hyper::service::service_fn(move |req| {
            let (admin, busy) = (admin.clone(), Busy::new(&connection));
            async move {
                let backup = req.method() == Method::GET && req.uri().path().trim_end_matches('/') == "/backup";
                let reply = match backup && admin.authorized(&req) {
                    true => admin.backup(),
                    false => admin.handle(req).await.map(|body| body.map_err(|never| match never {}).boxed_unsync()),
                };
                drop(busy);
                Ok::<_, std::convert::Infallible>(reply)
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(ADMIN_HEAD_TIMEOUT);
    let served = match tls {
        None => until_evicted(http.serve_connection(TokioIo::new(stream), service), &connection).await,
        Some(tls) => {
            let handshake = tokio::select! {
                stream = tls.handshake(stream, peer, ADMIN_HEAD_TIMEOUT) => stream,
                () = connection.evict.notified() => None,
            };
            match handshake {
                Some(stream) => until_evicted(http.serve_connection(TokioIo::new(stream), service), &connection).await,
                None => Ok(()),
            }
        }
    };
    open.remove(&connection);
    if let Err(err) = served {
        tracing::debug!(error = %err, "admin connection ended with an error");
    }
}

/// Drives `served` to its end; told to make room, it shuts down gracefully
/// (at once when idle, after the request in flight otherwise).
async fn until_evicted<I, S>(
    served: hyper::server::conn::http1::Connection<I, S>,
    connection: &AdminConnection,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(served);
    tokio::select! {
        result = served.as_mut() => return result,
        () = connection.evict.notified() => served.as_mut().graceful_shutdown(),
    }
    served.await
}

impl Admin {
    fn authorized(&self, req: &hyper::Request<Incoming>) -> bool {
        token_matches(self.token.as_deref(), req.headers())
    }

    async fn handle(&self, req: hyper::Request<Incoming>) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let reply = match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => problem_free("ok"),
            (&Method::GET, ["readyz"]) => self.ready().await,
            _ if !self.authorized(&req) => {
                let mut reply = problem(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
                reply.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                reply
            }
            (&Method::GET, ["metrics"]) => self.metrics().await,
            (&Method::GET, ["plugins"]) => self.plugins().await,
            (&Method::POST, ["plugins", name, "jobs", job, "run"]) => self.run_job(name, job).await,
            (&Method::PUT, ["plugins", name]) => {
                let name = (*name).to_owned();
                match query_param(req.uri(), "force").as_deref() {
                    None | Some("false") => self.deploy(&name, req, false).await,
                    Some("true") => self.deploy(&name, req, true).await,
                    Some(_) => problem(StatusCode::BAD_REQUEST, "force must be true or false"),
                }
            }
            (&Method::POST, ["reload"]) => {
                let outcome = self.app.reloader.reload(&self.app).await;
                let status = if outcome.applied { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
                json(status, &serde_json::json!(outcome))
            }
            (&Method::POST, ["plugins", name, "rollback"]) => {
                let to = query_param(req.uri(), "to");
                outcome(self.app.deployer.rollback(name, to.as_deref()).await)
            }
            (
                _,
                ["healthz" | "readyz" | "metrics" | "plugins" | "reload"]
                | ["plugins", _]
                | ["plugins", _, "rollback"]
                | ["plugins", _, "jobs", _, "run"]
                | ["backup"],
            ) => problem(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => problem(StatusCode::NOT_FOUND, "not found"),
        };
        tracing::info!(target: "evogate::admin", %method, path, status = reply.status().as_u16());
        reply
    }

    /// `GET /backup`: the store as of now, streamed as it is read. The
    /// snapshot is read on a blocking thread into a channel of a few
    /// chunks, so memory stays bounded whatever the store's size and a
    /// client that stops reading stops the snapshot. A failure mid-way
    /// ends the body with an error: the client holds a file without its
    /// end, which every reader refuses.
    fn backup(&self) -> hyper::Response<Streamed> {
        let backend = self.app.backend.clone();
        let (sender, frames) = tokio::sync::mpsc::channel(BACKUP_FRAMES_QUEUED);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let sink = ChannelWriter { sender: sender.clone(), buffer: Vec::with_capacity(BACKUP_FRAME_BYTES) };
            let written = backend
                .snapshot()
                .map_err(crate::kv::backup::FileError::from)
                .and_then(|mut snapshot| crate::kv::backup::write_snapshot(snapshot.as_mut(), sink, |_| {}));
            match written {
                Ok((_, summary)) => tracing::info!(
                    target: "evogate::admin",
                    records = summary.records,
                    bytes = summary.bytes,
                    last_version = summary.last_version,
                    took_ms = started.elapsed().as_millis() as u64,
                    "backup taken"
                ),
                Err(err) => {
                    tracing::error!(target: "evogate::admin", error = %err, "backup failed");
                    let _ = sender.blocking_send(Err(std::io::Error::other(err.to_string())));
                }
            }
        });
        let mut reply = hyper::Response::new(ChannelBody { frames }.boxed_unsync());
        let headers = reply.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/vnd.evogate.backup"));
        headers.insert(
            hyper::header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"evogate.backup\""),
        );
        tracing::info!(target: "evogate::admin", method = "GET", path = "/backup", status = 200);
        reply
    }

    /// Every plugin, each with its jobs (schedule, next tick here, last run in the fleet).
    async fn plugins(&self) -> Reply {
        let mut list = serde_json::json!(self.app.deployer.list().await);
        for plugin in list.as_array_mut().into_iter().flatten() {
            let name = plugin["name"].as_str().unwrap_or_default().to_owned();
            plugin["jobs"] = serde_json::json!(self.app.scheduler.status(&name).await);
        }
        json(StatusCode::OK, &list)
    }

    /// Runs a job now and answers its outcome (`outcome`: `ok`, `error`, …).
    async fn run_job(&self, plugin: &str, job: &str) -> Reply {
        use crate::control::jobs::RunNowError;
        match self.app.scheduler.run_now(plugin, job).await {
            Ok(run) => json(StatusCode::OK, &serde_json::json!(run)),
            Err(err @ RunNowError::Unknown(..)) => problem(StatusCode::NOT_FOUND, &err.to_string()),
            Err(err @ RunNowError::Running(..)) => problem(StatusCode::CONFLICT, &err.to_string()),
            Err(err @ RunNowError::Store(_)) => problem(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
        }
    }

    async fn ready(&self) -> Reply {
        readiness(&self.app, &self.probe).await
    }

    async fn metrics(&self) -> Reply {
        crate::telemetry::process().collect();
        self.store_size().await;
        let text = self.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default();
        let mut reply = hyper::Response::new(Full::new(Bytes::from(text)));
        reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        reply
    }

    /// Sets [`crate::telemetry::STORE_BYTES`] and [`crate::telemetry::STORE_UP`]
    /// from the store, waiting at most [`READY_PROBE_TIMEOUT`].
    async fn store_size(&self) {
        let backend = self.app.backend.clone();
        let kind = backend.kind();
        let read = tokio::task::spawn_blocking(move || backend.bytes_on_disk());
        let up = match tokio::time::timeout(READY_PROBE_TIMEOUT, read).await {
            Ok(Ok(Ok(bytes))) => {
                if let Some(bytes) = bytes {
                    metrics::gauge!(crate::telemetry::STORE_BYTES, "backend" => kind).set(bytes as f64);
                }
                true
            }
            Ok(Ok(Err(err))) => {
                tracing::warn!(error = %err, "the store did not answer the metrics' size query");
                false
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("the store did not answer the metrics' size query in time");
                false
            }
        };
        metrics::gauge!(crate::telemetry::STORE_UP, "backend" => kind).set(if up { 1.0 } else { 0.0 });
    }

    async fn deploy(&self, name: &str, req: hyper::Request<Incoming>, force: bool) -> Reply {
        let max = self.app.deployer.max_bytes();
        let too_large = || problem(StatusCode::PAYLOAD_TOO_LARGE, &format!("the component is over {max} bytes"));
        // A declared length over the limit is answered before any of the body is read.
        let declared =
            req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max as u64) {
            return too_large();
        }
        let body = match Limited::new(req.into_body(), max).collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return too_large(),
            Err(_) => return problem(StatusCode::BAD_REQUEST, "the upload could not be read"),
        };
        outcome(self.app.deployer.deploy(name, body.to_vec(), force).await)
    }
}

/// The query parameter `name`, percent-decoded; none when absent.
fn query_param(uri: &hyper::Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

fn problem_free(text: &'static str) -> Reply {
    hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())))
}

fn outcome(result: Result<crate::control::deploy::Outcome, DeployError>) -> Reply {
    match result {
        Ok(outcome) => json(StatusCode::OK, &serde_json::json!(outcome)),
        Err(err) => {
            let status = match &err {
                DeployError::UnknownPlugin(_) => StatusCode::NOT_FOUND,
                DeployError::Invalid(_) => StatusCode::BAD_REQUEST,
                DeployError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
                DeployError::NothingToRollBack(_) | DeployError::IdentityChanged(_) => StatusCode::CONFLICT,
                DeployError::NoSuchVersion(_) => StatusCode::NOT_FOUND,
                DeployError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!(error = %err, "deploy refused");
            problem(status, &err.to_string())
        }
    }
}

/// Whether `headers` carry exactly one `Authorization: Bearer <want>` (the
/// scheme in any case, as everywhere in evogate), compared in constant
/// time; anything goes when no token is configured.
fn token_matches(want: Option<&str>, headers: &hyper::HeaderMap) -> bool {
    let Some(want) = want.filter(|t| !t.is_empty()) else { return true };
    let mut given = headers.get_all(hyper::header::AUTHORIZATION).iter();
    let (Some(value), None) = (given.next(), given.next()) else { return false };
    let token = value
        .to_str()
        .ok()
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or_default();
    Sha256::digest(token.as_bytes()).ct_eq(&Sha256::digest(want.as_bytes())).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Backend, Hooked, KvError, MemoryBackend};

    #[test]
    fn the_admin_token_is_taken_with_the_scheme_in_any_case_and_only_once() {
        let headers = |values: &[&str]| {
            let mut headers = hyper::HeaderMap::new();
            for value in values {
                headers.append(hyper::header::AUTHORIZATION, HeaderValue::from_str(value).expect("a header value"));
            }
            headers
        };
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert!(token_matches(Some("s3cret"), &headers(&[&format!("{scheme} s3cret")])), "{scheme}");
        }
        assert!(!token_matches(Some("s3cret"), &headers(&["Bearer s3cret", "Bearer s3cret"])), "two headers");
        assert!(!token_matches(Some("s3cret"), &headers(&["Basic s3cret"])));
        assert!(!token_matches(Some("s3cret"), &headers(&["s3cret"])));
        assert!(!token_matches(Some("s3cret"), &headers(&[])));
        assert!(token_matches(None, &headers(&[])));
    }
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A ping that hangs until released (a database that accepts TCP and never answers).
    #[derive(Default)]
    struct Hanging {
        pings: AtomicUsize,
        released: std::sync::Mutex<bool>,
        wake: std::sync::Condvar,
    }

    impl Hanging {
        fn release(&self) {
            *self.released.lock().expect("lock") = true;
            self.wake.notify_all();
        }

        fn ping(&self) -> Result<(), KvError> {
            self.pings.fetch_add(1, Ordering::SeqCst);
            let mut released = self.released.lock().expect("lock");
            while !*released {
                released = self.wake.wait(released).expect("wait");
            }
            Err(KvError::Unavailable("was hanging".into()))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_never_answers_is_not_ready_within_the_timeout_and_holds_one_thread() {
        let hanging = Arc::new(Hanging::default());
        let pinged = hanging.clone();
        let backend: Arc<dyn Backend> =
            Arc::new(Hooked { ping: Some(Box::new(move || pinged.ping())), ..Default::default() });
        let probe = Arc::new(StoreProbe::default());
        let started = Instant::now();
        // More probes than worker threads: a blocking ping on the async threads would stall them all.
        let probes: Vec<_> = (0..8)
            .map(|_| {
                let (probe, backend) = (probe.clone(), backend.clone());
                tokio::spawn(async move { probe.check(&backend).await })
            })
            .collect();
        let ticker = tokio::spawn(async { tokio::time::sleep(Duration::from_millis(100)).await });
        ticker.await.expect("the async threads keep running other tasks");
        assert!(started.elapsed() < Duration::from_secs(1));
        for probe in probes {
            let outcome = probe.await.expect("probe task");
            assert!(outcome.as_ref().is_err_and(|why| why.contains("no answer")), "{outcome:?}");
        }
        let waited = started.elapsed();
        assert!(waited >= READY_PROBE_TIMEOUT && waited < READY_PROBE_TIMEOUT + Duration::from_secs(1), "{waited:?}");
        assert_eq!(hanging.pings.load(Ordering::SeqCst), 1, "one ping at a time");
        hanging.release();
        while probe.running.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The hung ping's late answer is not taken for a later probe's: a new ping runs.
        let after = probe.check(&backend).await;
        assert!(after.is_err_and(|why| why.contains("was hanging")));
        assert_eq!(hanging.pings.load(Ordering::SeqCst), 2);
        let healthy: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        assert_eq!(Arc::new(StoreProbe::default()).check(&healthy).await, Ok(()));
    }
}
