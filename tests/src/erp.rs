//! A mock ERP for the Evotor app example: it answers 503 to the first
//! attempts of each delivery (by its `Idempotency-Key`), then 200, and
//! records what it accepted.

use std::io::{BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One delivery the ERP accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Its `Idempotency-Key`.
    pub key: String,
    /// Its `X-Signature`.
    pub signature: String,
    /// Its body.
    pub body: Vec<u8>,
}

#[derive(Debug, Default)]
struct Book {
    /// Attempts per key so far.
    attempts: std::collections::HashMap<String, usize>,
    accepted: Vec<Accepted>,
}

/// A running mock ERP.
#[derive(Debug)]
pub struct Erp {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    book: Arc<Mutex<Book>>,
}

impl Erp {
    /// Fails each delivery's first `failures` attempts with 503.
    pub fn start(failures: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the ERP");
        let url = format!("http://127.0.0.1:{}", listener.local_addr().expect("address").port());
        let book = Arc::new(Mutex::new(Book::default()));
        let kept = book.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let book = kept.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    let Some((_, headers)) = crate::upstream::read_head(&mut reader) else { return };
                    let header = |name: &str| {
                        headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone()).unwrap_or_default()
                    };
                    let length: usize = header("content-length").parse().unwrap_or(0);
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let key = header("idempotency-key");
                    let status = {
                        let mut book = book.lock().expect("book");
                        let attempts = book.attempts.entry(key.clone()).or_default();
                        *attempts += 1;
                        if *attempts <= failures {
                            "503 Service Unavailable"
                        } else {
                            book.accepted.push(Accepted { key, signature: header("x-signature"), body });
                            "200 OK"
                        }
                    };
                    let stream = reader.get_mut();
                    let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = stream.flush();
                });
            }
        });
        Self { url, book }
    }

    /// What it accepted, in order.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.book.lock().expect("book").accepted.clone()
    }

    /// Attempts made for `key`.
    pub fn attempts(&self, key: &str) -> usize {
        self.book.lock().expect("book").attempts.get(key).copied().unwrap_or(0)
    }
}
