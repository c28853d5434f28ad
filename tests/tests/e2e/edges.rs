//! The gateway's production edges, end to end: HTTPS with HTTP/2 and
//! HTTP/1.1, certificate reload on SIGHUP, graceful shutdown, slow clients,
//! connection and concurrency limits, oversized heads.

use evogate_e2e::{Gateway, get, request, toml_str};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the gateway refuses a request no slot is free for.
const BUSY: &str = "too many requests in progress";

/// A fresh self-signed certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM, certificate DER).
fn certificate() -> (String, String, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
    let cert = params.self_signed(&key).expect("a certificate");
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    std::fs::write(dir.join("cert.pem"), cert).expect("cert");
    std::fs::write(dir.join("key.pem"), key).expect("key");
}

/// The TOML table `section` (`tls`, `admin.tls`) naming the pair in `dir`.
fn tls_table(section: &str, dir: &Path) -> String {
    format!(
        "[{section}]\ncert = {}\nkey = {}\n",
        toml_str(&dir.join("cert.pem").to_string_lossy()),
        toml_str(&dir.join("key.pem").to_string_lossy())
    )
}

fn tls_gateway(dir: &Path) -> Gateway {
    Gateway::guest(&tls_table("tls", dir), "")
}

fn addr(gateway: &Gateway) -> String {
    gateway.base.rsplit('/').next().expect("host:port").to_owned()
}

/// A TLS client that trusts exactly `trusted` and offers `alpn`.
fn client_config(trusted: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).expect("a trust anchor");
    // ring: see `evogate::crypto::tls_provider`.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect_tls(gateway: &Gateway, trusted: &CertificateDer<'static>) -> TlsStream {
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(client_config(trusted, &[b"http/1.1"]), name).expect("client");
    let tcp = TcpStream::connect(addr(gateway)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    stream.flush().expect("handshake");
    stream
}

/// One keep-alive HTTP/1.1 request on `stream`; the status and body.
fn exchange<S: std::io::Read + std::io::Write>(stream: &mut S, path: &str) -> (u16, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").expect("send");
    stream.flush().expect("flush");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("a response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0usize);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("the body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn https_serves_http2_and_http1_by_alpn() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key, der) = certificate();
    write_pair(dir.path(), &cert, &key);
    let gateway = tls_gateway(dir.path());
    assert!(gateway.base.starts_with("https://"), "{}", gateway.base);

    let mut http1 = connect_tls(&gateway, &der);
    assert_eq!(http1.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(exchange(&mut http1, "/g/version").0, 200);
    assert_eq!(exchange(&mut http1, "/g/version").0, 200, "keep-alive over TLS");
    let version = http1.conn.protocol_version();
    assert!(matches!(version, Some(rustls::ProtocolVersion::TLSv1_3 | rustls::ProtocolVersion::TLSv1_2)));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let status = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr(&gateway)).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(client_config(&der, &[b"h2", b"http/1.1"]));
        let tls = connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await.expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "HTTP/2 when the client offers it");
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        let request = hyper::Request::get("https://localhost/g/version")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("h2 response");
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        response.status().as_u16()
    });
    assert_eq!(status, 200);

    // A client that does not trust the certificate is refused.
    let (_, _, stranger) = certificate();
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(client_config(&stranger, &[]), name).expect("client");
    let mut untrusting = rustls::StreamOwned::new(conn, TcpStream::connect(addr(&gateway)).expect("connect"));
    assert!(untrusting.flush().is_err() || untrusting.write_all(b"GET / HTTP/1.1\r\n\r\n").is_err());
}

/// An HTTP/2 connection over TLS to `gateway`, in `runtime`: the sender and the connection task.
async fn h2_connect(
    gateway: &Gateway,
    trusted: &CertificateDer<'static>,
) -> (hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr(gateway)).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(client_config(trusted, &[b"h2"]));
    let tls = connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await.expect("handshake");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    (sender, tokio::spawn(async move { drop(conn.await) }))
}

async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    path: &str,
) -> Option<u16> {
    let request = hyper::Request::get(format!("https://localhost{path}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    sender.send_request(request).await.ok().map(|response| response.status().as_u16())
}

#[test]
fn idle_and_silent_http2_connections_are_closed_and_busy_ones_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key, der) = certificate();
    write_pair(dir.path(), &cert, &key);
    let gateway =
        Gateway::guest(&format!("[limits]\nheader_read_timeout_ms = 600\n{}", tls_table("tls", dir.path())), "");

    // A client that negotiates h2 and never sends the preface.
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(client_config(&der, &[b"h2"]), name).expect("client");
    let tcp = TcpStream::connect(addr(&gateway)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut silent = rustls::StreamOwned::new(conn, tcp);
    silent.flush().expect("handshake");
    let started = Instant::now();
    let mut sink = Vec::new();
    let closed = silent.read_to_end(&mut sink);
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}: {closed:?}", started.elapsed());

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        // Busy: a request every 200 ms keeps the connection past the timeout.
        let (mut busy, busy_conn) = h2_connect(&gateway, &der).await;
        let mut idle_since = Instant::now();
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(h2_get(&mut busy, "/g/version").await, Some(200));
            idle_since = Instant::now();
        }
        assert!(!busy_conn.is_finished(), "a busy connection stays open");
        // Idle: closed (GOAWAY) once it has had no request for the timeout.
        tokio::time::timeout(Duration::from_secs(3), busy_conn).await.expect("closed when idle").expect("task");
        assert!(idle_since.elapsed() >= Duration::from_millis(500), "{:?}", idle_since.elapsed());
        // A request in progress longer than the idle timeout is not cut off.
        let (mut slow, slow_conn) = h2_connect(&gateway, &der).await;
        assert_eq!(h2_get(&mut slow, "/g/sleep?ms=1200").await, Some(200));
        tokio::time::timeout(Duration::from_secs(3), slow_conn).await.expect("then closed").expect("task");
    });
}

#[test]
fn http2_stream_floods_and_rapid_resets_leave_the_gateway_serving() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key, der) = certificate();
    write_pair(dir.path(), &cert, &key);
    let gateway = tls_gateway(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        // A flood: far more concurrent streams than one connection may run; they queue and all finish.
        let (sender, _conn) = h2_connect(&gateway, &der).await;
        let flood: Vec<_> = (0..400)
            .map(|_| {
                let mut sender = sender.clone();
                tokio::spawn(async move { h2_get(&mut sender, "/g/version").await })
            })
            .collect();
        for stream in flood {
            assert_eq!(stream.await.expect("stream"), Some(200));
        }

        // Rapid reset: open streams and cancel them at once, thousands of times.
        let tcp = tokio::net::TcpStream::connect(addr(&gateway)).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(client_config(&der, &[b"h2"]));
        let tls = connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await.expect("tls");
        let (mut client, conn) = h2::client::handshake(tls).await.expect("h2");
        let conn = tokio::spawn(conn);
        let started = Instant::now();
        let mut sent = 0;
        for _ in 0..10_000 {
            let request = hyper::Request::get("https://localhost/g/sleep?ms=50").body(()).expect("request");
            let Ok(ready) = client.clone().ready().await else { break };
            client = ready;
            let Ok((_response, mut stream)) = client.send_request(request, true) else { break };
            stream.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
        // hyper's h2 defaults end such a connection; it must not take the gateway down with it.
        let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
        assert!(ended.is_ok(), "the resetting connection was closed after {sent} resets");
        assert!(started.elapsed() < Duration::from_secs(10));
        let (mut fresh, _fresh_conn) = h2_connect(&gateway, &der).await;
        assert_eq!(h2_get(&mut fresh, "/g/version").await, Some(200), "others are served");
    });
}

#[test]
fn the_admin_listener_speaks_https_with_admin_tls_and_the_cli_reaches_it() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key, der) = certificate();
    write_pair(dir.path(), &cert, &key);
    let gateway = Gateway::guest(&tls_table("admin.tls", dir.path()), "");
    assert!(gateway.admin.starts_with("https://"), "{}", gateway.admin);
    let admin_addr = gateway.admin.trim_start_matches("https://").to_owned();

    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(client_config(&der, &[b"h2", b"http/1.1"]), name).expect("client");
    let tcp = TcpStream::connect(&admin_addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    assert_eq!(exchange(&mut tls, "/readyz"), (200, "ready".into()));
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "the admin API speaks HTTP/1.1");

    // Plain HTTP gets no answer: the token is never sent in clear to a TLS listener.
    let mut plain = TcpStream::connect(&admin_addr).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = write!(plain, "GET /plugins HTTP/1.1\r\nhost: x\r\nauthorization: Bearer admin-secret\r\n\r\n");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));

    let cli = |extra: &[&str]| {
        std::process::Command::new(evogate_e2e::evogate_bin())
            .args(["plugins", "--admin", &format!("https://{admin_addr}"), "--token", evogate_e2e::ADMIN_TOKEN])
            .args(extra)
            .current_dir(dir.path())
            .env_remove("EVOGATE_CONFIG")
            .output()
            .expect("evogate plugins")
    };
    let trusted = cli(&["--admin-ca", &dir.path().join("cert.pem").to_string_lossy()]);
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("test-guest@1.0.0"));
    let untrusted = cli(&[]);
    assert!(!untrusted.status.success(), "a certificate nobody vouches for is refused");
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );

    gateway.signal("HUP");
    assert!(gateway.wait_for_log("listener=\"admin\""), "SIGHUP reloads the admin certificate too: {}", gateway.log());
}

#[test]
fn sighup_swaps_the_certificate_without_dropping_connections_and_keeps_it_on_bad_files() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert1, key1, der1) = certificate();
    write_pair(dir.path(), &cert1, &key1);
    let gateway = tls_gateway(dir.path());
    let mut kept = connect_tls(&gateway, &der1);
    assert_eq!(exchange(&mut kept, "/g/version").0, 200);

    let (cert2, key2, der2) = certificate();
    write_pair(dir.path(), &cert2, &key2);
    gateway.signal("HUP");
    assert!(gateway.wait_for_log("TLS certificate reloaded"), "{}", gateway.log());
    assert_eq!(exchange(&mut kept, "/g/version").0, 200, "the open connection carries on");
    let mut renewed = connect_tls(&gateway, &der2);
    let served = renewed.conn.peer_certificates().and_then(|chain| chain.first().cloned());
    assert_eq!(served.as_ref(), Some(&der2), "new connections get the new certificate");
    assert_eq!(exchange(&mut renewed, "/g/version").0, 200);

    // A broken renewal: the key does not match the certificate.
    let (cert3, _, _) = certificate();
    write_pair(dir.path(), &cert3, &key2);
    gateway.signal("HUP");
    assert!(gateway.wait_for_log("keeping the current TLS certificate"), "{}", gateway.log());
    let mut after = connect_tls(&gateway, &der2);
    assert_eq!(exchange(&mut after, "/g/version").0, 200, "still the last good certificate");
    assert_eq!(exchange(&mut kept, "/g/version").0, 200);
}

#[test]
fn sigterm_drains_accepted_requests_flips_readiness_and_exits_zero() {
    let mut gateway = Gateway::guest("[limits]\ndrain_timeout_ms = 10000", "");
    let url = gateway.url("/g/sleep?ms=700");
    let started = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || request("GET", &url, &[], None).status)
        })
        .collect();
    // Every request is inside the plugin before the signal.
    std::thread::sleep(Duration::from_millis(250));
    gateway.signal("TERM");
    let ready = gateway.admin_url("/readyz");
    let mut saw_not_ready = false;
    while started.elapsed() < Duration::from_millis(650) && !saw_not_ready {
        saw_not_ready = evogate_e2e::try_request("GET", &ready, &[], b"").is_some_and(|reply| reply.status == 503);
    }
    assert!(saw_not_ready, "readiness flips while requests drain");
    for client in clients {
        assert_eq!(client.join().expect("client"), 200, "an accepted request is never cut off");
    }
    let status = gateway.wait_exit(Duration::from_secs(10)).expect("the process exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "it did not wait for the whole drain timeout");
    assert!(gateway.wait_for_log("draining in-flight requests"), "{}", gateway.log());
}

#[test]
fn sigterm_with_a_grace_period_turns_unready_first_and_keeps_serving_new_requests_until_it_ends() {
    let mut gateway = Gateway::guest("[limits]\ndrain_grace_ms = 1500", "");
    let signalled = Instant::now();
    gateway.signal("TERM");
    let ready = gateway.admin_url("/readyz");
    while evogate_e2e::try_request("GET", &ready, &[], b"").is_some_and(|reply| reply.status == 200) {
        assert!(signalled.elapsed() < Duration::from_millis(500), "readiness flips at once");
    }
    // Load balancers still sending during the grace period are served, on new connections too.
    let mut served = 0;
    while signalled.elapsed() < Duration::from_millis(1200) {
        let reply = evogate_e2e::try_request("GET", &gateway.url("/g/version"), &[], b"");
        assert_eq!(reply.map(|reply| reply.status), Some(200), "served {served} so far");
        served += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served > 10);
    let status = gateway.wait_exit(Duration::from_secs(10)).expect("the process exits after the grace period");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() >= Duration::from_millis(1500), "not before the grace period ended");
    assert!(gateway.wait_for_log("still accepting during the grace period"), "{}", gateway.log());
}

#[test]
fn a_sighup_while_plugins_compile_does_not_kill_the_gateway() {
    use std::io::BufRead as _;
    let data = tempfile::tempdir().expect("temp dir");
    let config = data.path().join("evogate.toml");
    // The Evotor plugin compiles for a while on a fresh data directory (no cached code).
    let wasm = evogate_e2e::toml_str(&evogate_e2e::evotor_wasm().to_string_lossy());
    let dir = evogate_e2e::toml_str(&data.path().join("data").to_string_lossy());
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {dir}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[plugins]]\nname = \"evotor\"\nroute = \"/\"\nwasm = {wasm}\n"
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(evogate_e2e::evogate_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("EVOGATE_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut log = String::new();
    let mut listening = false;
    for line in stderr.lines().map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("key-value store open") {
            // The store is open and the plugin is about to compile.
            let status = std::process::Command::new("kill").arg("-HUP").arg(child.id().to_string()).status();
            assert!(status.is_ok_and(|s| s.success()));
        }
        if line.contains("evogate listening on") {
            listening = true;
            break;
        }
    }
    let alive = child.try_wait().expect("wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening && alive, "the gateway started despite the SIGHUP:\n{log}");
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit_and_a_low_one_is_reported() {
    let gateway = Gateway::start_under(&["prlimit", "--nofile=256:8192"], &guest_table());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gateway.pid())).expect("limits");
    let open_files = limits.lines().find(|line| line.starts_with("Max open files")).expect("the limit");
    assert_eq!(open_files.split_whitespace().collect::<Vec<_>>()[3..5], ["8192", "8192"], "{open_files}");
    assert!(!gateway.log().contains("open-file limit is below"), "{}", gateway.log());

    let low = Gateway::start_under(&["prlimit", "--nofile=256:1024"], &guest_table());
    assert!(low.wait_for_log("open-file limit is below"), "{}", low.log());
    assert_eq!(get(&low.url("/g/version")).status, 200, "it serves all the same");
}

#[test]
fn a_slow_loris_client_is_cut_off_while_others_are_served() {
    let gateway = Gateway::guest("[limits]\nheader_read_timeout_ms = 600", "");
    let mut slow = TcpStream::connect(addr(&gateway)).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let started = Instant::now();
    let mut cut_off = false;
    for byte in b"GET /g/version HTTP/1.1\r\nhost: x\r\nx-padding: ".iter().chain([b'a'; 200].iter()) {
        if slow.write_all(&[*byte]).is_err() {
            cut_off = true;
            break;
        }
        assert_eq!(get(&gateway.url("/g/version")).status, 200, "other clients are served meanwhile");
        std::thread::sleep(Duration::from_millis(40));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !cut_off {
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest);
        let text = String::from_utf8_lossy(&rest);
        assert!(rest.is_empty() || text.starts_with("HTTP/1.1 408"), "closed, not served: {text}");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "cut off near the header timeout");

    // An idle keep-alive connection is closed after the same time.
    let mut idle = TcpStream::connect(addr(&gateway)).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert_eq!(exchange(&mut idle, "/g/version").0, 200);
    let waited = Instant::now();
    let mut buffer = [0u8; 64];
    assert_eq!(idle.read(&mut buffer).unwrap_or(0), 0, "the server closed the idle connection");
    assert!(waited.elapsed() < Duration::from_secs(3));
}

#[test]
fn the_plugin_concurrency_cap_answers_503_with_retry_after_and_recovers() {
    let gateway = Gateway::guest("", "max_concurrent_requests = 2");
    let url = gateway.url("/g/sleep?ms=600");
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let reply = request("GET", &url, &[], None);
                (reply.status, reply.header("retry-after").map(str::to_owned), reply.json())
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|client| client.join().expect("client")).collect();
    let served = results.iter().filter(|(status, ..)| *status == 200).count();
    let refused: Vec<_> = results.iter().filter(|(status, ..)| *status == 503).collect();
    assert_eq!((served, refused.len()), (2, 4), "{results:?}");
    for (_, retry_after, body) in refused {
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!((body["status"].as_u64(), body["detail"].as_str()), (Some(503), Some(BUSY)), "a problem: {body}");
    }
    assert_eq!(get(&gateway.url("/g/version")).status, 200, "capacity comes back");
}

#[test]
fn connections_past_the_cap_get_503_and_oversized_heads_get_431() {
    let gateway = Gateway::guest("[limits]\nmax_connections = 2\nmax_header_bytes = 16384", "");
    let mut first = TcpStream::connect(addr(&gateway)).expect("connect");
    let mut second = TcpStream::connect(addr(&gateway)).expect("connect");
    assert_eq!(exchange(&mut first, "/g/version").0, 200);
    assert_eq!(exchange(&mut second, "/g/version").0, 200);
    let mut third = TcpStream::connect(addr(&gateway)).expect("connect");
    third.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut reply = String::new();
    let _ = third.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.to_ascii_lowercase().contains("retry-after: 1"));
    assert!(reply.to_ascii_lowercase().contains("content-type: application/problem+json"), "{reply}");
    assert!(reply.contains(r#""status":503"#) && reply.contains("too many connections"), "{reply}");
    drop((first, second));
    std::thread::sleep(Duration::from_millis(100));
    let big = "a".repeat(40_000);
    let reply = request("GET", &gateway.url("/g/version"), &[("x-big", big.as_str())], None);
    assert_eq!(reply.status, 431, "a head over max_header_bytes");
    assert_eq!(get(&gateway.url("/g/version")).status, 200, "room again once connections close");
}

/// The `[[plugins]]` table of the test plugin as `g` on `/g`.
fn guest_table() -> String {
    evogate_e2e::plugin_table("g", &evogate_e2e::guest_wasm(), "")
}

#[test]
fn a_head_over_max_header_bytes_is_431_however_it_is_split_and_two_credentials_are_400() {
    let gateway = Gateway::guest("[limits]\nmax_header_bytes = 16384", "");
    // Heads past the limit by anything from one header to twice the limit, in headers of 1,000 bytes:
    // every one is 431, whichever of hyper's buffer or the gateway's count sees it first.
    let value = "v".repeat(1000);
    let names: Vec<String> = (0..33).map(|n| format!("x-part-{n:02}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), value.as_str())).collect();
    for count in 17..=33 {
        let reply = request("GET", &gateway.url("/g/version"), &headers[..count], None);
        assert_eq!(reply.status, 431, "{count} headers of 1,000 bytes");
    }
    let within = request("GET", &gateway.url("/g/version"), &headers[..15], None);
    assert_eq!(within.status, 200, "15 KB of headers fit 16 KiB");
    let two = request(
        "GET",
        &gateway.url("/g/version"),
        &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
        None,
    );
    assert_eq!((two.status, two.text().contains("several Authorization headers")), (400, true), "{}", two.text());
    let one = request("GET", &gateway.url("/g/version"), &[("authorization", "Bearer a")], None);
    assert_eq!(one.status, 200);
}

#[test]
fn the_public_health_path_answers_readiness_without_a_token_before_any_route_and_not_while_draining() {
    const HEALTH: &str = "/.well-known/evogate/ready";
    let gateway = Gateway::evotor(&format!("health_path = {}\n[limits]\ndrain_grace_ms = 3000", toml_str(HEALTH)));
    let ready = get(&gateway.url(HEALTH));
    assert_eq!((ready.status, ready.text().as_str()), (200, "ready"), "no token needed");
    assert_eq!(ready.header("cache-control"), Some("no-store"));
    assert_eq!(request("HEAD", &gateway.url(HEALTH), &[], None).status, 200);
    let post = request("POST", &gateway.url(HEALTH), &[], Some(b"{}"));
    assert_eq!((post.status, post.header("allow")), (405, Some("GET, HEAD")));
    // Below it, and beside it, the plugin on `/` answers as ever.
    let below = get(&gateway.url(&format!("{HEALTH}/more")));
    assert_eq!((below.status, below.error_code()), (404, Some(404)), "{}", below.text());
    assert!(!gateway.log().contains(&format!("path=\"{HEALTH}\"")), "health checks are not in the access log");

    // Draining: still accepting for the grace time, but no longer ready.
    gateway.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(2);
    let draining = loop {
        let answer = get(&gateway.url(HEALTH));
        if answer.status != 200 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(draining.status, 503, "{}", draining.text());
    assert!(draining.text().contains("shutting down"), "{}", draining.text());
}

#[test]
fn a_health_path_that_is_a_plugins_route_or_not_a_path_stops_the_start() {
    for (path, says) in [("/evotor", "route"), ("ready", "a path like"), ("/ready?x=1", "a path like")] {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("evogate.toml");
        let table = evogate_e2e::evotor_table("/evotor", "", "");
        std::fs::write(&config, format!("health_path = {}\ndata_dir = \"data\"\n{table}", toml_str(path)))
            .expect("write");
        let output = std::process::Command::new(evogate_e2e::evogate_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .output()
            .expect("running evogate");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{path}: {stderr}");
        assert!(stderr.contains("health_path") && stderr.contains(says), "{path}: {stderr}");
    }
}
