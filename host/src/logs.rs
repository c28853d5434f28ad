//! The process's log: text for people by default, or one JSON object a line
//! (`[log] format = "json"`) for machines, both on stderr, filtered by
//! `EVOGATE_LOG`.
//!
//! A JSON line holds `time` (RFC 3339, UTC), `level`, `target` and
//! `message`, then the event's fields: `request_id`, `trace_id`, `plugin`
//! and `version` where the event has them (a `plugin` field written
//! `name@version`, as the text lines show it, is given as the two).

use crate::config::LogFormat;
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The filter when `EVOGATE_LOG` does not say.
const DEFAULT_FILTER: &str = "info,tokio_postgres=warn";

/// Installs the process's logger, writing to `writer` in `format`.
pub fn init<W>(format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_env("EVOGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_writer(writer).with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLines).init(),
    }
}

/// One JSON object a line.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        writer.write_str(&line(event, std::time::SystemTime::now()))?;
        writer.write_char('\n')
    }
}

/// The JSON object of `event` at `time`.
fn line(event: &tracing::Event<'_>, time: std::time::SystemTime) -> String {
    let metadata = event.metadata();
    let mut fields = Fields::default();
    event.record(&mut fields);
    let mut head = vec![
        ("time", serde_json::Value::from(humantime::format_rfc3339_millis(time).to_string())),
        ("level", metadata.level().as_str().into()),
        ("target", metadata.target().into()),
        ("message", fields.message.take().unwrap_or_default().into()),
    ];
    let mut rest = Vec::with_capacity(fields.values.len() + 1);
    for (name, value) in fields.values {
        match (name, &value) {
            ("plugin", serde_json::Value::String(label)) if label.contains('@') => {
                let (plugin, version) = label.split_once('@').unwrap_or_default();
                head.push(("plugin", plugin.into()));
                head.push(("version", version.into()));
            }
            ("plugin" | "version" | "request_id" | "trace_id", _) => head.push((name, value)),
            _ => rest.push((name, value)),
        }
    }
    let mut out = String::with_capacity(256);
    out.push('{');
    for (i, (name, value)) in head.into_iter().chain(rest).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(name).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// An event's message and fields, in the order it gave them.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    values: Vec<(&'static str, serde_json::Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            });
        } else {
            self.values.push((field.name(), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Every line written, for the test's subscriber.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_line_has_the_time_level_target_message_and_the_plugin_apart_from_its_version() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).event_format(JsonLines).finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "evogate::access",
                method = "POST", status = 200_u16, latency_us = 812_u64, plugin = "evotor@2.3.0",
                request_id = "r-1", trace_id = "0af7651916cd43dd8448eb211c80319c",
            );
            tracing::warn!(target: "plugin", plugin = "loyalty@0.1.0", stream = "stderr", "a \"quoted\"\nline");
        });
        let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
        let parsed: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).expect("each line one JSON object")).collect();
        assert_eq!(parsed.len(), 2, "{text}");
        let access = &parsed[0];
        assert!(text.lines().next().expect("a line").starts_with("{\"time\":"), "{text}");
        assert!(access["time"].as_str().is_some_and(|time| time.ends_with('Z') && time.len() == 24), "{access}");
        assert_eq!(access["level"], "INFO");
        assert_eq!(access["target"], "evogate::access");
        assert_eq!((access["plugin"].as_str(), access["version"].as_str()), (Some("evotor"), Some("2.3.0")));
        assert_eq!(access["request_id"], "r-1");
        assert_eq!(access["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!((access["status"].as_u64(), access["latency_us"].as_u64()), (Some(200), Some(812)));
        assert_eq!(access["message"], "");
        let plugin = &parsed[1];
        assert_eq!((plugin["level"].as_str(), plugin["message"].as_str()), (Some("WARN"), Some("a \"quoted\"\nline")));
        assert_eq!(plugin["plugin"], "loyalty");
    }
}
