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
        let text = text.trim_end_matches('\r');
        if self.stream == "stderr" {
            tracing::warn!(target: "plugin", plugin = %self.tag, request_id = %self.request_id, stream = self.stream, "{text}");
        } else {
            tracing::info!(target: "plugin", plugin = %self.tag, request_id = %self.request_id, stream = self.stream, "{text}");
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // A plugin that trapped mid-line (a panic message, say) still gets logged.
        self.flush();
    }
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
        self.lock().flush();
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
