//! A small HTTP/1.1 server the plugins' outgoing requests go to, over
//! plain TCP or TLS, counting the connections it accepted.
//!
//! | path | answer |
//! |---|---|
//! | `/hello` | 200 `hello` |
//! | `/big?n=N` | 200 with `N` bytes |
//! | `/redirect` | 302 to `http://127.0.0.1:9/elsewhere` |
//! | `/slow` | nothing for 30 s |
//! | anything else | 404 |

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running upstream server.
#[derive(Debug)]
pub struct Upstream {
    /// `http://127.0.0.1:PORT` or `https://…`.
    pub url: String,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    /// Plain HTTP.
    pub fn start() -> Self {
        Self::serve(None)
    }

    /// HTTPS with the certificate chain and key in PEM.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).map(|cert| cert.expect("a certificate")).collect();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("a key");
        // ring: see `evogate::crypto::tls_provider`.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a server config");
        Self::serve(Some(Arc::new(config)))
    }

    fn serve(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the upstream");
        let port = listener.local_addr().expect("address").port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => answer(stream),
                    Some(config) => {
                        let Ok(connection) = rustls::ServerConnection::new(config) else { return };
                        answer(rustls::StreamOwned::new(connection, stream));
                    }
                });
            }
        });
        Self { url: format!("{scheme}://127.0.0.1:{port}"), connections }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serves each connection `listener` accepts on a thread of its own with
/// `server`'s `serve`, for as long as the process runs.
pub(crate) fn serve_each<S: Clone + Send + 'static>(
    listener: std::net::TcpListener,
    server: S,
    serve: fn(&S, std::net::TcpStream),
) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let server = server.clone();
            std::thread::spawn(move || serve(&server, stream));
        }
    });
}

/// Reads a request's head: its target and its headers (names in lower
/// case); none when the client went away first.
pub(crate) fn read_head(reader: &mut impl std::io::BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    // The method, as a pseudo-header first: readers that do not ask for it never see it.
    let method = line.split_whitespace().next().unwrap_or("GET").to_owned();
    let mut headers = vec![(":method".to_owned(), method)];
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return None,
            Ok(_) if header == "\r\n" => return Some((target, headers)),
            Ok(_) => {}
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
}

fn answer(stream: impl Read + Write) {
    let mut reader = BufReader::new(stream);
    let Some((target, _)) = read_head(&mut reader) else { return };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let (status, extra, body): (&str, &str, Vec<u8>) = match path {
        "/hello" => ("200 OK", "", b"hello".to_vec()),
        "/big" => {
            let n = query.strip_prefix("n=").and_then(|n| n.parse().ok()).unwrap_or(0);
            ("200 OK", "", vec![b'x'; n])
        }
        "/redirect" => ("302 Found", "location: http://127.0.0.1:9/elsewhere\r\n", Vec::new()),
        "/slow" => {
            std::thread::sleep(std::time::Duration::from_secs(30));
            return;
        }
        _ => ("404 Not Found", "", b"no such path".to_vec()),
    };
    let stream = reader.get_mut();
    let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n", body.len());
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}
