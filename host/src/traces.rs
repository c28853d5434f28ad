//! Traces: OpenTelemetry spans of each request, its instance, its outgoing
//! requests and calls, each job run and each deploy, exported over
//! OTLP/HTTP (`http/protobuf` or `http/json`). A request's trace continues
//! the one it arrives with — W3C `traceparent`, else B3 (the Evotor cloud's
//! `X-B3-*` headers, or one `b3` header) — and goes on in both forms on
//! every outgoing request.
//!
//! Off unless an endpoint is configured (`[telemetry] otlp_endpoint`, or
//! the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); off, no span is made and a
//! request's only cost is reading the trace id it arrives with, for the
//! access log.

use crate::config::TelemetryConfig;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// How long one export may take, connection included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer an OTLP receiver may give.
const MAX_EXPORT_ANSWER_BYTES: usize = 1 << 20;

/// Where and how traces go, resolved from `[telemetry]` and the standard
/// `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TraceSettings {
    /// The traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// `http/protobuf` or `http/json`.
    pub protocol: &'static str,
    /// The share of new traces sampled (a continued trace keeps its caller's decision).
    pub ratio: f64,
    pub service_name: String,
}

impl TraceSettings {
    /// The settings from `config` and the environment (`env` reads a
    /// variable): `None` when no endpoint is set, or `OTEL_SDK_DISABLED` is
    /// `true`, or `OTEL_TRACES_EXPORTER` is `none`. The file's values come
    /// first, as code's do in every OpenTelemetry SDK; a base endpoint gets
    /// `/v1/traces` appended, a traces endpoint is taken as it is.
    pub(crate) fn resolve(
        config: &TelemetryConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<Self>> {
        let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|value| value.trim().eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let endpoint = match (&config.otlp_endpoint, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
            (Some(base), _) => traces_url(base),
            (None, Some(traces)) => traces,
            (None, None) => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => traces_url(&base),
                None => return Ok(None),
            },
        };
        let uri: hyper::Uri = endpoint.parse().map_err(|err| {
            anyhow::anyhow!("OTLP endpoint {endpoint:?}: {err} (an http:// or https:// URL is needed)")
        })?;
        anyhow::ensure!(
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some(),
            "OTLP endpoint {endpoint:?}: an http:// or https:// URL is needed"
        );
        let protocol = config
            .otlp_protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        let protocol = protocol_named(protocol.trim())?;
        let ratio = match (config.sampling_ratio, env("OTEL_TRACES_SAMPLER_ARG")) {
            (Some(ratio), _) => ratio,
            (None, Some(arg)) => arg
                .trim()
                .parse::<f64>()
                .map_err(|_| anyhow::anyhow!("OTEL_TRACES_SAMPLER_ARG={arg:?} is not a ratio from 0 to 1"))?,
            (None, None) => 1.0,
        };
        anyhow::ensure!((0.0..=1.0).contains(&ratio), "the trace sampling ratio {ratio} is not within 0..=1");
        let service_name =
            config.service_name.clone().or_else(|| env("OTEL_SERVICE_NAME")).unwrap_or_else(|| "evogate".into());
        Ok(Some(Self { endpoint, protocol, ratio, service_name }))
    }
}

/// The OTLP protocols spoken: `http/protobuf` and `http/json` (not `grpc`).
pub(crate) fn protocol_named(name: &str) -> anyhow::Result<&'static str> {
    match name {
        "http/protobuf" => Ok("http/protobuf"),
        "http/json" => Ok("http/json"),
        other => anyhow::bail!("OTLP protocol {other:?} is not supported: use \"http/protobuf\" or \"http/json\""),
    }
}

/// A base endpoint's traces URL, as the OTLP exporter specification builds it.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim().trim_end_matches('/'))
}

struct Installed {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Starts exporting traces as `settings` say, for the whole process; the
/// exports run on `runtime`. A second call changes nothing (one process,
/// one exporter).
pub(crate) fn install(settings: &TraceSettings, runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let protocol = if settings.protocol == "http/json" { Protocol::HttpJson } else { Protocol::HttpBinary };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient { runtime })
        .with_endpoint(settings.endpoint.clone())
        .with_protocol(protocol)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.ratio))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("evogate");
    let _ = RATIO.set(settings.ratio);
    let _ = INSTALLED.set(Installed { provider, tracer });
    tracing::info!(endpoint = %settings.endpoint, protocol = settings.protocol, ratio = settings.ratio, "exporting traces");
    Ok(())
}

/// Sends the spans not yet exported, waiting for them (at a drain's end).
pub(crate) fn flush() {
    if let Some(installed) = INSTALLED.get()
        && let Err(err) = installed.provider.force_flush()
    {
        tracing::warn!(error = %err, "exporting the last traces failed");
    }
}

/// The tracer, when traces are on.
pub(crate) fn tracer() -> Option<&'static SdkTracer> {
    INSTALLED.get().map(|installed| &installed.tracer)
}

fn propagator() -> &'static TextMapCompositePropagator {
    static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(|| {
        // Extracted in this order, each over the one before: W3C's last, so it wins when both came.
        TextMapCompositePropagator::new(vec![
            Box::new(B3),
            Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
        ])
    })
}

/// The propagator outgoing requests carry: `traceparent` and B3's headers
/// (which the Evotor cloud reads).
fn outgoing_propagator() -> &'static TextMapCompositePropagator {
    static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(|| {
        TextMapCompositePropagator::new(vec![
            Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
            Box::new(B3),
        ])
    })
}

/// B3, Zipkin's propagation (openzipkin/b3-propagation): read from one
/// `b3` header or the `X-B3-*` headers, written as the `X-B3-*` headers.
/// A trace without a sampling decision ("defer") is sampled by the
/// configured ratio, as a new trace would be.
#[derive(Debug)]
struct B3;

static B3_FIELDS: std::sync::LazyLock<[String; 5]> =
    std::sync::LazyLock::new(|| ["b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"].map(String::from));

impl B3 {
    fn read(extractor: &dyn opentelemetry::propagation::Extractor) -> Option<opentelemetry::trace::SpanContext> {
        let get = |name: &str| extractor.get(name).map(str::trim).filter(|value| !value.is_empty());
        let (trace_id, span_id, sampled) = match get("b3") {
            // `{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`; a sampling state alone carries no trace.
            Some(single) => {
                let mut parts = single.split('-');
                let (trace_id, span_id) = (parts.next()?, parts.next()?);
                (trace_id, span_id, parts.next())
            }
            None => {
                let debug = get("x-b3-flags") == Some("1");
                let sampled = if debug { Some("d") } else { get("x-b3-sampled") };
                (get("x-b3-traceid")?, get("x-b3-spanid")?, sampled)
            }
        };
        let hex = |text: &str, lengths: &[usize]| {
            (lengths.contains(&text.len()) && text.bytes().all(|byte| byte.is_ascii_hexdigit())).then_some(())
        };
        hex(trace_id, &[16, 32])?;
        hex(span_id, &[16])?;
        let trace_id = opentelemetry::trace::TraceId::from_hex(trace_id).ok()?;
        let span_id = opentelemetry::trace::SpanId::from_hex(span_id).ok()?;
        let sampled = match sampled {
            Some("1" | "d" | "true") => true,
            Some("0" | "false") => false,
            Some(_) => return None,
            None => sampled_by_ratio(trace_id),
        };
        let flags = if sampled {
            opentelemetry::trace::TraceFlags::SAMPLED
        } else {
            opentelemetry::trace::TraceFlags::default()
        };
        let context = opentelemetry::trace::SpanContext::new(trace_id, span_id, flags, true, Default::default());
        context.is_valid().then_some(context)
    }
}

impl TextMapPropagator for B3 {
    fn inject_context(&self, cx: &Context, injector: &mut dyn opentelemetry::propagation::Injector) {
        let span = cx.span();
        let context = span.span_context();
        if context.is_valid() {
            injector.set("x-b3-traceid", context.trace_id().to_string());
            injector.set("x-b3-spanid", context.span_id().to_string());
            injector.set("x-b3-sampled", if context.is_sampled() { "1" } else { "0" }.into());
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn opentelemetry::propagation::Extractor) -> Context {
        match Self::read(extractor) {
            Some(remote) => cx.with_remote_span_context(remote),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        opentelemetry::propagation::text_map_propagator::FieldIter::new(&*B3_FIELDS)
    }
}

/// The ratio new traces are sampled by, once traces are on (as the SDK's
/// `TraceIdRatioBased` decides: by the trace id's low 63 bits).
fn sampled_by_ratio(trace_id: opentelemetry::trace::TraceId) -> bool {
    let ratio = RATIO.get().copied().unwrap_or(1.0);
    let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or_default()) >> 1;
    (low as f64) < ratio * (1u64 << 63) as f64
}

static RATIO: OnceLock<f64> = OnceLock::new();

/// The trace context a request arrives with (none: an empty context).
pub(crate) fn extract(headers: &hyper::HeaderMap) -> Context {
    propagator().extract(&opentelemetry_http::HeaderExtractor(headers))
}

/// Writes `cx`'s trace context into `headers`, replacing what the plugin
/// wrote there: a request's trace is the gateway's to tell.
pub(crate) fn inject(cx: &Context, headers: &mut hyper::HeaderMap) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    for name in [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    ] {
        headers.remove(name);
    }
    outgoing_propagator().inject_context(cx, &mut opentelemetry_http::HeaderInjector(headers));
}

/// The trace id of `cx`, when it has one (32 hex digits).
pub(crate) fn trace_id(cx: &Context) -> Option<String> {
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.trace_id().to_string())
}

/// Starts a span named `name` below `parent` (a recorded one only when
/// traces are on and the trace is sampled), and the context holding it.
pub(crate) fn start(parent: &Context, name: impl Into<std::borrow::Cow<'static, str>>, kind: SpanKind) -> Context {
    start_at(parent, name, kind, None)
}

/// [`start`] with the span's start time given.
pub(crate) fn start_at(
    parent: &Context,
    name: impl Into<std::borrow::Cow<'static, str>>,
    kind: SpanKind,
    at: Option<SystemTime>,
) -> Context {
    let Some(tracer) = tracer() else { return parent.clone() };
    let mut builder = tracer.span_builder(name).with_kind(kind);
    if let Some(at) = at {
        builder = builder.with_start_time(at);
    }
    parent.with_span(builder.start_with_context(tracer, parent))
}

/// Ends a request's span with what HTTP's semantic conventions name: its
/// method, path and status, and — when a plugin answered — its route, the
/// plugin and its version (`plugin` is (route, name, `name@version`)).
pub(crate) fn request_ends(
    trace: &Context,
    method: &str,
    path: &str,
    plugin: Option<(&str, &str, &str)>,
    status: u16,
    request_id: &str,
) {
    let span = trace.span();
    span.set_attributes([
        KeyValue::new("http.request.method", method.to_owned()),
        KeyValue::new("url.path", path.to_owned()),
        KeyValue::new("http.response.status_code", i64::from(status)),
        KeyValue::new("evogate.request_id", request_id.to_owned()),
    ]);
    if let Some((route, name, label)) = plugin {
        span.update_name(format!("{method} {route}"));
        span.set_attributes([
            KeyValue::new("http.route", route.to_owned()),
            KeyValue::new("evogate.plugin", name.to_owned()),
            KeyValue::new(
                "evogate.plugin.version",
                label.split_once('@').map_or("", |(_, version)| version).to_owned(),
            ),
        ]);
    }
    if status >= 500 {
        span.set_status(Status::error(format!("status {status}")));
    }
    span.end();
}

/// The spans of one traced instance, below `trace`'s: its instantiation,
/// then the call into it with what its store calls came to (a count and a
/// time, not a span per key) and the memory it grew to. `steps` are the
/// times of making its store, instantiating it and the call, from `started`.
pub(crate) fn instance_ends(
    trace: &Context,
    started: SystemTime,
    steps: [Duration; 3],
    kv: crate::runtime::evogate_kv::KvSpent,
    peak_memory: usize,
    failure: Option<&str>,
) {
    let [store, instantiate, call] = steps;
    let (instantiated, called) = (started + store, started + store + instantiate);
    start_at(trace, "instantiate", SpanKind::Internal, Some(instantiated)).span().end_with_timestamp(called);
    let cx = start_at(trace, "call", SpanKind::Internal, Some(called));
    let span = cx.span();
    span.set_attributes([
        KeyValue::new("evogate.kv.calls", i64::from(kv.calls)),
        KeyValue::new("evogate.kv.time_us", i64::try_from(kv.time.as_micros()).unwrap_or(i64::MAX)),
        KeyValue::new("evogate.memory_bytes", i64::try_from(peak_memory).unwrap_or(i64::MAX)),
    ]);
    if let Some(failure) = failure {
        span.set_status(Status::error(failure.to_owned()));
    }
    span.end_with_timestamp(called + call);
}

/// Ends an outgoing request's span: method, URL, and the status or the error.
pub(crate) fn outgoing_ends(trace: &Context, method: &str, url: &str, status: Result<u16, String>) {
    let span = trace.span();
    span.set_attributes([
        KeyValue::new("http.request.method", method.to_owned()),
        KeyValue::new("url.full", url.to_owned()),
    ]);
    match status {
        Ok(status) => {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
            if status >= 500 {
                span.set_status(Status::error(format!("status {status}")));
            }
        }
        Err(err) => span.set_status(Status::error(err)),
    }
    span.end();
}

/// Whether `cx` holds a span this process records (sampled, traces on).
pub(crate) fn recording(cx: &Context) -> bool {
    tracer().is_some() && cx.span().is_recording()
}

/// The OTLP exporter's HTTP client: one HTTP/1.1 connection per export
/// (a batch every few seconds), TLS by the gateway's provider and the
/// public roots, run on the gateway's runtime whatever thread asks.
#[derive(Debug)]
struct ExportClient {
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: hyper::Request<Bytes>,
    ) -> Result<hyper::Response<Bytes>, opentelemetry_http::HttpError> {
        let task = self.runtime.spawn(async move {
            tokio::time::timeout(EXPORT_TIMEOUT, send(request))
                .await
                .map_err(|_| opentelemetry_http::HttpError::from("OTLP export timed out"))?
        });
        task.await.map_err(|err| opentelemetry_http::HttpError::from(err.to_string()))?
    }
}

async fn send(mut request: hyper::Request<Bytes>) -> Result<hyper::Response<Bytes>, opentelemetry_http::HttpError> {
    let uri = request.uri().clone();
    let host = uri.host().ok_or("OTLP endpoint without a host")?.trim_start_matches('[').trim_end_matches(']');
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    if !request.headers().contains_key(hyper::header::HOST) {
        let authority = uri.authority().map(|authority| authority.as_str()).unwrap_or(host);
        request.headers_mut().insert(hyper::header::HOST, hyper::header::HeaderValue::from_str(authority)?);
    }
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    *request.uri_mut() = hyper::Uri::builder().path_and_query(path).build()?;
    let request = request.map(Full::new);
    let response = if tls {
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::from(ip),
            Err(_) => rustls::pki_types::ServerName::try_from(host.to_owned())?,
        };
        let config = std::sync::Arc::new(crate::crypto::client_tls(None)?);
        let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
        exchange(TokioIo::new(stream), request).await?
    } else {
        exchange(TokioIo::new(tcp), request).await?
    };
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_EXPORT_ANSWER_BYTES).collect().await?.to_bytes();
    Ok(hyper::Response::from_parts(parts, body))
}

async fn exchange<S>(
    io: TokioIo<S>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, opentelemetry_http::HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(config: TelemetryConfig, vars: &[(&str, &str)]) -> anyhow::Result<Option<TraceSettings>> {
        TraceSettings::resolve(&config, |name| {
            vars.iter().find(|(var, _)| *var == name).map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_set_and_the_standard_variables_turn_them_on() {
        assert_eq!(resolve(TelemetryConfig::default(), &[]).expect("valid"), None);
        let on = resolve(TelemetryConfig::default(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .expect("valid")
            .expect("on");
        assert_eq!(on.endpoint, "http://collector:4318/v1/traces");
        assert_eq!((on.protocol, on.ratio, on.service_name.as_str()), ("http/protobuf", 1.0, "evogate"));
        let traces = resolve(
            TelemetryConfig::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces.example/custom"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_SERVICE_NAME", "evotor-gateway"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ],
        )
        .expect("valid")
        .expect("on");
        assert_eq!(traces.endpoint, "https://traces.example/custom", "a traces endpoint is taken as it is");
        assert_eq!(
            (traces.protocol, traces.ratio, traces.service_name.as_str()),
            ("http/json", 0.25, "evotor-gateway")
        );
        for off in [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")] {
            let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"), off];
            assert_eq!(resolve(TelemetryConfig::default(), &vars).expect("valid"), None, "{off:?}");
        }
    }

    #[test]
    fn the_files_values_come_before_the_environments_and_bad_values_are_named() {
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://file:4318".into()),
            otlp_protocol: Some("http/json".into()),
            sampling_ratio: Some(0.5),
            service_name: Some("from-file".into()),
        };
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"), ("OTEL_SERVICE_NAME", "from-env")];
        let settings = resolve(config, &vars).expect("valid").expect("on");
        assert_eq!(settings.endpoint, "http://file:4318/v1/traces");
        assert_eq!(
            (settings.protocol, settings.ratio, settings.service_name.as_str()),
            ("http/json", 0.5, "from-file")
        );

        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")];
        for (var, value, named) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "grpc"),
            ("OTEL_TRACES_SAMPLER_ARG", "half", "OTEL_TRACES_SAMPLER_ARG"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5", "1.5"),
        ] {
            let err = resolve(TelemetryConfig::default(), &[base[0], (var, value)]).expect_err(value);
            assert!(err.to_string().contains(named), "{err}");
        }
        let err = resolve(TelemetryConfig::default(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")])
            .expect_err("no scheme");
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn a_b3_delivery_and_a_traceparent_are_continued_and_traceparent_wins_when_both_came() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124".parse().expect("value"));
        headers.insert("x-b3-spanid", "a2fb4a1d1a96d312".parse().expect("value"));
        headers.insert("x-b3-parentspanid", "0020000000000001".parse().expect("value"));
        headers.insert("x-b3-sampled", "1".parse().expect("value"));
        let cx = extract(&headers);
        assert_eq!(trace_id(&cx).as_deref(), Some("463ac35c9f6413ad48485a3953bb6124"));
        assert!(cx.span().span_context().is_sampled() && cx.span().span_context().is_remote());

        let mut single = hyper::HeaderMap::new();
        single.insert("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".parse().expect("value"));
        assert_eq!(trace_id(&extract(&single)).as_deref(), Some("80f198ee56343ba864fe8b2a57d3eff7"));

        headers
            .insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().expect("value"));
        assert_eq!(trace_id(&extract(&headers)).as_deref(), Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(trace_id(&extract(&hyper::HeaderMap::new())), None);

        // A 64-bit trace id is widened; malformed or sampling-only headers carry no trace.
        let mut short = hyper::HeaderMap::new();
        short.insert("x-b3-traceid", "48485a3953bb6124".parse().expect("value"));
        short.insert("x-b3-spanid", "a2fb4a1d1a96d312".parse().expect("value"));
        short.insert("x-b3-sampled", "0".parse().expect("value"));
        let cx = extract(&short);
        assert_eq!(trace_id(&cx).as_deref(), Some("000000000000000048485a3953bb6124"));
        assert!(!cx.span().span_context().is_sampled());
        for bad in [
            "0",
            "d",
            "xyz-a2fb4a1d1a96d312-1",
            "463ac35c9f6413ad48485a3953bb6124-a2fb-1",
            "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-7",
        ] {
            let mut headers = hyper::HeaderMap::new();
            headers.insert("b3", bad.parse().expect("value"));
            assert_eq!(trace_id(&extract(&headers)), None, "{bad}");
        }
    }

    #[test]
    fn outgoing_requests_carry_the_trace_in_both_forms_and_replace_the_plugins_own() {
        let mut incoming = hyper::HeaderMap::new();
        incoming
            .insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().expect("value"));
        let cx = extract(&incoming);
        let mut outgoing = hyper::HeaderMap::new();
        outgoing
            .insert("traceparent", "00-11111111111111111111111111111111-2222222222222222-01".parse().expect("value"));
        inject(&cx, &mut outgoing);
        let header = |name: &str| outgoing.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
        assert_eq!(header("traceparent").as_deref(), Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        assert_eq!(header("x-b3-traceid").as_deref(), Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(header("x-b3-spanid").as_deref(), Some("b7ad6b7169203331"));
        assert_eq!(outgoing.get_all("traceparent").iter().count(), 1);

        let mut untouched = hyper::HeaderMap::new();
        untouched
            .insert("traceparent", "00-11111111111111111111111111111111-2222222222222222-01".parse().expect("value"));
        inject(&Context::new(), &mut untouched);
        assert_eq!(untouched.len(), 1, "no trace: the headers stay as they are");
    }
}
