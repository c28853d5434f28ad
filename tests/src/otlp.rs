//! An OTLP/HTTP trace receiver in process: what a collector would get from
//! a gateway's exporter (`POST /v1/traces`, protobuf or JSON), kept as
//! plain spans for the tests to look at.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    /// Attribute values as text.
    pub attributes: BTreeMap<String, String>,
    /// The resource's `service.name`.
    pub service: String,
}

/// A running receiver.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:PORT`: the base endpoint (`/v1/traces` is appended by exporters).
    pub url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    /// The content types of the exports received.
    formats: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    /// Starts one on a free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the OTLP receiver");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let receiver = Self { url, spans: Arc::default(), formats: Arc::default() };
        crate::upstream::serve_each(listener, receiver.clone(), Self::serve);
        receiver
    }

    /// Every span so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("spans").clone()
    }

    /// The content types of the exports so far.
    pub fn formats(&self) -> Vec<String> {
        self.formats.lock().expect("formats").clone()
    }

    /// Waits up to 10 s for a span `found` accepts.
    pub fn wait_for(&self, found: impl Fn(&Span) -> bool) -> Option<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(span) = self.spans().into_iter().find(&found) {
                return Some(span);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn serve(&self, stream: std::net::TcpStream) {
        let mut reader = BufReader::new(stream);
        while let Some((target, headers)) = crate::upstream::read_head(&mut reader) {
            let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            let length: usize = header("content-length").and_then(|n| n.parse().ok()).unwrap_or(0);
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let format = header("content-type").unwrap_or_default();
            let json = format.starts_with("application/json");
            let spans = match (target.as_str(), json) {
                ("/v1/traces", false) => ExportTraceServiceRequest::decode(body.as_slice()).ok().map(from_proto),
                ("/v1/traces", true) => serde_json::from_slice::<Value>(&body).ok().map(|value| from_json(&value)),
                _ => None,
            };
            let (status, answer): (&str, &[u8]) = match spans {
                Some(spans) => {
                    self.spans.lock().expect("spans").extend(spans);
                    self.formats.lock().expect("formats").push(format.clone());
                    ("200 OK", if json { b"{}" } else { b"" })
                }
                None => ("400 Bad Request", b""),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
                if json { "application/json" } else { "application/x-protobuf" },
                answer.len()
            );
            let stream = reader.get_mut();
            if stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(answer)).is_err() {
                return;
            }
        }
    }
}

fn from_proto(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|attribute| attribute.key == "service.name")
            .and_then(|attribute| attribute.value.as_ref())
            .map(|value| text_of(value.value.as_ref()))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Span {
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|attribute| {
                            (attribute.key.clone(), text_of(attribute.value.as_ref().and_then(|v| v.value.as_ref())))
                        })
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    spans
}

fn text_of(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(text)) => text.clone(),
        Some(AnyValue::IntValue(n)) => n.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(x)) => x.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// OTLP/JSON: ids in hex, attribute values as `{"stringValue": …}` and the like.
fn from_json(request: &Value) -> Vec<Span> {
    let text = |value: &Value| -> String {
        let value = &value["value"];
        ["stringValue", "intValue", "boolValue", "doubleValue"]
            .iter()
            .find_map(|kind| value.get(kind))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    let mut spans = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let attributes = resource["resource"]["attributes"].as_array().cloned().unwrap_or_default();
        let service = attributes.iter().find(|a| a["key"] == "service.name").map(text).unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let id = |name: &str| span[name].as_str().unwrap_or_default().to_ascii_lowercase();
                spans.push(Span {
                    name: span["name"].as_str().unwrap_or_default().to_owned(),
                    trace_id: id("traceId"),
                    span_id: id("spanId"),
                    parent_span_id: id("parentSpanId"),
                    attributes: span["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| (a["key"].as_str().unwrap_or_default().to_owned(), text(a)))
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    spans
}
