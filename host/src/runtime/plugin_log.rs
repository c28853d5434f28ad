//! Plugin stdout and stderr, forwarded line by line to the host log.

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Most bytes one instance may log; the rest is dropped with a note.
const MAX_LOG_BYTES: usize = 64 * 1024;
/// A line longer than this is logged in pieces.
const MAX_LINE_BYTES: usize = 4096;

/// A WASI output stream that turns what a plugin writes into log events
/// tagged with the plugin (`name@version`) and the stream.
#[derive(Clone)]
pub struct LogPipe {
    inner: Arc<Mutex<Buffer>>,
}

struct Buffer {
    tag: Arc<str>,
    request_id: Arc<str>,
    stream: &'static str,
    pending: Vec<u8>,
    total: usize,
}

impl LogPipe {
    /// A pipe for `stream` ("stdout" or "stderr") of plugin `tag` serving request `request_id`.
    pub fn new(tag: Arc<str>, request_id: Arc<str>, stream: &'static str) -> Self {
        let buffer = Buffer { tag, request_id, stream, pending: Vec::new(), total: 0 };
        Self { inner: Arc::new(Mutex::new(buffer)) }
    }
}

impl Buffer {
    fn write(&mut self, bytes: &[u8]) {
        let room = MAX_LOG_BYTES.saturating_sub(self.total);
        if room == 0 {
            return;
        }
        let take = &bytes[..bytes.len().min(room)];
        self.total += take.len();
        self.pending.extend_from_slice(take);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if self.pending.len() >= MAX_LINE_BYTES {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        if self.total >= MAX_LOG_BYTES {
            self.flush();
            tracing::warn!(plugin = %self.tag, stream = self.stream, "plugin output over 64 KiB; the rest of this request's output is dropped");
        }
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let (level, text) = level_of(text.trim_end_matches('\r'), self.stream);
        let text = escape_controls(text);
        let (plugin, request_id, stream) = (&*self.tag, &*self.request_id, self.stream);
        match level {
            tracing::Level::ERROR => tracing::error!(target: "plugin", plugin, request_id, stream, "{text}"),
            tracing::Level::WARN => tracing::warn!(target: "plugin", plugin, request_id, stream, "{text}"),
            tracing::Level::INFO => tracing::info!(target: "plugin", plugin, request_id, stream, "{text}"),
            _ => tracing::debug!(target: "plugin", plugin, request_id, stream, "{text}"),
        }
    }
}

/// A line's level and text: the level the plugin chose with a syslog
/// priority prefix, as systemd reads a service's lines (`<3>` error, `<4>`
/// warning, `<5>` and `<6>` info, `<7>` debug; `<0>`–`<2>` error too; the
/// SDK's `log` functions write them), else warning on stderr and info on
/// stdout.
fn level_of<'a>(line: &'a str, stream: &str) -> (tracing::Level, &'a str) {
    let prefixed = line.strip_prefix('<').and_then(|rest| {
        let (digit, text) = (rest.as_bytes().first()?, rest.get(2..)?);
        (rest.as_bytes().get(1) == Some(&b'>')).then_some((*digit, text))
    });
    match prefixed {
        Some((b'0'..=b'3', text)) => (tracing::Level::ERROR, text),
        Some((b'4', text)) => (tracing::Level::WARN, text),
        Some((b'5' | b'6', text)) => (tracing::Level::INFO, text),
        Some((b'7', text)) => (tracing::Level::DEBUG, text),
        _ if stream == "stderr" => (tracing::Level::WARN, line),
        _ => (tracing::Level::INFO, line),
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // A plugin that trapped mid-line (a panic message, say) still gets logged.
        self.flush();
    }
}

/// `text` with control characters (and the Unicode line and paragraph
/// separators) written as escapes (`\n`, `\u{1b}`), so that text a plugin
/// or a client controls can neither forge log lines nor drive a terminal.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

impl LogPipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.lock().write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        // A partial line stays pending: Rust's `eprintln!` writes (and
        // flushes) each piece of its format apart, and one line must stay
        // one log event. It is logged at its newline, at 4 KiB, or when the
        // instance ends.
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(MAX_LINE_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 guests use this; evogate plugins are WASIp2.
        Box::new(tokio::io::sink())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_chooses_its_lines_level_with_a_syslog_prefix_and_unprefixed_lines_keep_their_streams() {
        use tracing::Level;
        for (line, stream, level, text) in [
            ("<3>store unavailable", "stderr", Level::ERROR, "store unavailable"),
            ("<0>x", "stdout", Level::ERROR, "x"),
            ("<4>retrying", "stdout", Level::WARN, "retrying"),
            ("<6>sync: 3 users", "stderr", Level::INFO, "sync: 3 users"),
            ("<5>notice", "stderr", Level::INFO, "notice"),
            ("<7>detail", "stderr", Level::DEBUG, "detail"),
            ("plain", "stderr", Level::WARN, "plain"),
            ("plain", "stdout", Level::INFO, "plain"),
            ("<8>not a priority", "stderr", Level::WARN, "<8>not a priority"),
            ("<6", "stderr", Level::WARN, "<6"),
            ("<6>", "stdout", Level::INFO, ""),
        ] {
            assert_eq!(level_of(line, stream), (level, text), "{line:?} on {stream}");
        }
    }

    /// Everything logged while `f` runs, as the gateway's formatter writes it.
    fn captured(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("sink").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = sink.0.lock().expect("sink").clone();
        String::from_utf8(bytes).expect("utf-8 log")
    }

    #[test]
    fn control_characters_in_plugin_output_cannot_forge_lines_or_drive_a_terminal() {
        let log = captured(|| {
            let mut pipe = LogPipe::new("p@1".into(), "id".into(), "stdout");
            let written = "one\r fake INFO line\u{1b}[31m\u{7}\u{2028}two\u{85}\nsecond\n";
            OutputStream::write(&mut pipe, Bytes::from(written)).expect("write");
        });
        assert_eq!(log.lines().count(), 2, "{log}");
        assert!(!log.chars().any(|c| c.is_control() && c != '\n'), "{log:?}");
        assert!(log.contains(r"one\r fake INFO line\u{1b}[31m\u{7}\u{2028}two\u{85}"), "{log}");
    }

    #[test]
    fn a_line_written_and_flushed_in_pieces_is_one_log_line() {
        let log = captured(|| {
            let mut pipe = LogPipe::new("p@1".into(), "id".into(), "stderr");
            for piece in ["refused delivery ", "ed9eb563", ": no signature (401)\n", "unterminated"] {
                OutputStream::write(&mut pipe, Bytes::from(piece)).expect("write");
                OutputStream::flush(&mut pipe).expect("flush");
            }
            drop(pipe);
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(lines[0].contains("refused delivery ed9eb563: no signature (401)"), "{log}");
        assert!(lines[1].contains("unterminated"), "the rest is logged when the instance ends: {log}");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(escape_controls("ключ: value \\n"), std::borrow::Cow::Borrowed("ключ: value \\n")));
    }
}
