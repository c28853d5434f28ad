//! Outgoing HTTP of plugins (`wasi:http/outgoing-handler`), for evogate
//! plugins (0.2.2 on) and standard components alike.
//!
//! `wasmtime-wasi-http` turns the plugin's calls into a `hyper` request;
//! [`Hooks`] decides whether it may leave and sends it:
//!
//! - only to the hosts of the plugin's `allowed_outbound_hosts`
//!   ([`crate::outbound`]); anything else is refused with
//!   `HTTP-request-denied` before a connection is made;
//! - never past the deadline of the request (or job run) that makes it:
//!   connecting, waiting for the answer and reading its body all end there
//!   (`connection-timeout` / `connection-read-timeout`), and sooner where
//!   the plugin's `request-options` ask: `connect-timeout` for the
//!   connection (and TLS), `first-byte-timeout` for the answer's head,
//!   `between-bytes-timeout` for each wait on its body;
//! - TLS verified against the public roots (webpki) and the plugin's
//!   `outbound_ca`, when it has one;
//! - redirects are not followed: the plugin gets the 3xx and follows it
//!   itself, each hop checked against the allow-list again;
//! - a response body over `limits.max_outbound_response_bytes` fails the
//!   plugin's read with `HTTP-response-body-size`.
//!
//! A request to `http://NAME.evogate.internal/…` is a call to plugin
//! `NAME` of this gateway, served in process (`calls.rs`).
//!
//! Each request counts in `evogate_outbound_requests_total{plugin,outcome}`
//! (`refused`, `ok`, `error`) and `evogate_outbound_request_seconds{plugin}`.

use crate::config::PluginSettings;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use opentelemetry::trace::SpanKind;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// How one plugin version's outgoing requests are sent.
pub(crate) struct Client {
    tls: tokio_rustls::TlsConnector,
    max_response_bytes: usize,
}

impl Client {
    /// TLS roots: the public ones plus the certificates of `extra_ca` (a PEM file).
    pub(crate) fn new(extra_ca: Option<&Path>, max_response_bytes: usize) -> anyhow::Result<Self> {
        let tls = crate::crypto::client_tls(extra_ca)?;
        Ok(Self { tls: tokio_rustls::TlsConnector::from(Arc::new(tls)), max_response_bytes })
    }

    /// Sends `request` on a new connection; everything ends at `deadline`,
    /// and sooner where the plugin's `options` say so.
    async fn send(
        &self,
        mut request: hyper::Request<WasiBody>,
        deadline: tokio::time::Instant,
        options: RequestOptions,
    ) -> Result<(hyper::Response<WasiBody>, OutgoingIo), Error> {
        let within = |timeout: Option<Duration>| match timeout {
            Some(timeout) => deadline.min(tokio::time::Instant::now() + timeout),
            None => deadline,
        };
        let uri = request.uri();
        let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_owned();
        let tls = uri.scheme() == Some(&hyper::http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        // `[v6]` in a URI, a bare address to connect to.
        let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((bare.as_str(), port)).await.map_err(Error::Connect)?;
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn Stream> = if tls {
                let name = match bare.parse::<std::net::IpAddr>() {
                    Ok(ip) => rustls::pki_types::ServerName::from(ip),
                    Err(_) => rustls::pki_types::ServerName::try_from(bare.clone())
                        .map_err(|_| Error::HttpRequestUriInvalid)?,
                };
                Box::new(self.tls.connect(name, tcp).await.map_err(Error::Tls)?)
            } else {
                Box::new(tcp)
            };
            Ok::<_, Error>(stream)
        };
        let stream = tokio::time::timeout_at(within(options.connect_timeout), connect)
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The request line carries the path only (not the authority: that is for proxies).
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() =
            hyper::Uri::builder().path_and_query(path).build().map_err(|_| Error::HttpRequestUriInvalid)?;

        // Wait for the answer while driving the connection.
        let mut connection = Some(connection);
        let mut answer = std::pin::pin!(sender.send_request(request));
        let first_byte_by = within(options.first_byte_timeout);
        let head = std::future::poll_fn(|cx| {
            if let Poll::Ready(answer) = answer.as_mut().poll(cx) {
                return Poll::Ready(answer.map_err(Error::from));
            }
            let Some(driving) = connection.as_mut() else { return Poll::Pending };
            let ended = ready!(Pin::new(driving).poll(cx));
            connection = None;
            match ended {
                Ok(()) => answer.as_mut().poll(cx).map_err(Error::from),
                Err(err) => Poll::Ready(Err(Error::from(err))),
            }
        });
        let response =
            tokio::time::timeout_at(first_byte_by, head).await.map_err(|_| Error::ConnectionReadTimeout)??;
        let io: OutgoingIo = Box::new(async move {
            match connection {
                Some(connection) => match tokio::time::timeout_at(deadline, connection).await {
                    Ok(ended) => ended.map_err(Error::from),
                    Err(_) => Err(Error::ConnectionReadTimeout),
                },
                None => Ok(()),
            }
        });
        let max = self.max_response_bytes;
        let between = options.between_bytes_timeout;
        let response = response.map(|body| {
            let deadline = Box::pin(tokio::time::sleep_until(deadline));
            Capped { inner: body, left: max, max, deadline, between, gap: None }.boxed_unsync()
        });
        Ok((response, io))
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

type OutgoingIo = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// A response body that ends at the deadline, past `max` bytes, and when
/// nothing came for `between` (the plugin's `between-bytes-timeout`).
struct Capped {
    inner: hyper::body::Incoming,
    left: usize,
    max: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
    between: Option<Duration>,
    /// Since the last frame, when `between` is set.
    gap: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.gap = None;
                let size = frame.data_ref().map_or(0, Bytes::len);
                match self.left.checked_sub(size) {
                    Some(left) => {
                        self.left = left;
                        Poll::Ready(Some(Ok(frame)))
                    }
                    None => Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(self.max as u64))))),
                }
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(Error::from(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Error::ConnectionReadTimeout)));
                }
                let Some(between) = self.between else { return Poll::Pending };
                let gap = self.gap.get_or_insert_with(|| Box::pin(tokio::time::sleep(between)));
                ready!(gap.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The outgoing-request hook of one instance.
pub(crate) struct Hooks {
    client: Arc<Client>,
    settings: Arc<PluginSettings>,
    /// The plugin's name, for the metrics.
    plugin: Arc<str>,
    /// `plugin@version`, for the log.
    label: Arc<str>,
    /// The instance's deadline: no request outlives it.
    deadline: Instant,
    /// Calls to other plugins (`http://NAME.evogate.internal/…`).
    calls: crate::runtime::calls::Calls,
}

impl Hooks {
    /// The hook of an instance of `label` (`plugin@version`) that must be done by `deadline`.
    pub(crate) fn new(
        client: Arc<Client>,
        settings: Arc<PluginSettings>,
        plugin: Arc<str>,
        label: Arc<str>,
        deadline: Instant,
        calls: crate::runtime::calls::Calls,
    ) -> Self {
        Self { client, settings, plugin, label, deadline, calls }
    }
}

/// The connection of an answer that had none (an in-process call).
fn no_connection() -> OutgoingIo {
    Box::new(async { Ok(()) })
}

type Sent = Box<dyn Future<Output = Result<(hyper::Response<WasiBody>, OutgoingIo), Error>> + Send>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        mut request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
        _: OutgoingIo,
    ) -> Sent {
        if let Some(callee) = crate::runtime::calls::callee_of(request.uri()) {
            // Another plugin of this gateway: served in process, never over the network.
            let callee = callee.to_owned();
            let sent = self.calls.send(&callee, request, self.deadline);
            return Box::new(async move { sent.await.map(|response| (response, no_connection())) });
        }
        let plugin = self.plugin.to_string();
        let uri = crate::runtime::plugin_log::escape_controls(&request.uri().to_string()).into_owned();
        if !self.settings.outbound.allows(request.uri()) {
            tracing::warn!(plugin = %self.label, %uri, "outgoing request refused: not in allowed_outbound_hosts");
            metrics::counter!(crate::telemetry::OUTBOUND_REQUESTS, "plugin" => plugin, "outcome" => "refused")
                .increment(1);
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let (client, label, deadline) = (self.client.clone(), self.label.clone(), self.deadline);
        // A span of its own below the request's or job's, and the trace sent on (traceparent and B3).
        let trace =
            crate::traces::start(self.calls.chain.trace(), request.method().as_str().to_owned(), SpanKind::Client);
        crate::traces::inject(&trace, request.headers_mut());
        Box::new(async move {
            let started = Instant::now();
            let method = request.method().clone();
            let deadline = tokio::time::Instant::from_std(deadline);
            let options = options.unwrap_or_default();
            let sent = match tokio::time::timeout_at(deadline, client.send(request, deadline, options)).await {
                Ok(sent) => sent,
                Err(_) => Err(Error::ConnectionTimeout),
            };
            let elapsed = started.elapsed();
            metrics::histogram!(crate::telemetry::OUTBOUND_DURATION, "plugin" => plugin.clone())
                .record(elapsed.as_secs_f64());
            let outcome = if sent.is_ok() { "ok" } else { "error" };
            if crate::traces::recording(&trace) {
                let status = sent.as_ref().map(|(response, _)| response.status().as_u16()).map_err(ToString::to_string);
                crate::traces::outgoing_ends(&trace, method.as_str(), &uri, status);
            }
            metrics::counter!(crate::telemetry::OUTBOUND_REQUESTS, "plugin" => plugin, "outcome" => outcome)
                .increment(1);
            match &sent {
                Ok((response, _)) => tracing::debug!(
                    plugin = %label, %method, %uri, status = response.status().as_u16(),
                    latency_us = elapsed.as_micros() as u64, "outgoing request"
                ),
                Err(err) => tracing::info!(
                    plugin = %label, %method, %uri, error = %err,
                    latency_us = elapsed.as_micros() as u64, "outgoing request failed"
                ),
            }
            sent
        })
    }
}
