//! Outgoing HTTP of evogate plugins (world 0.2.2): only to allowed hosts,
//! refused before any connection otherwise, no redirects followed, a capped
//! response body, never past the request's deadline, TLS verified against
//! the public roots, the system's roots and `outbound_ca`.

use evogate_e2e::upstream::Upstream;
use evogate_e2e::{ADMIN_TOKEN, Gateway, get, guest_wasm_version, request, toml_str};
use std::time::{Duration, Instant};

/// The 0.2.2 test plugin as `g` on `/g`, calling `fetch_url`, allowed to reach `allowed`.
fn caller(top: &str, fetch_url: &str, allowed: &str, extra: &str) -> Gateway {
    caller_under(&[], top, fetch_url, allowed, extra)
}

/// [`caller`], the gateway started through `wrapper` (e.g. `env VAR=…`).
fn caller_under(wrapper: &[&str], top: &str, fetch_url: &str, allowed: &str, extra: &str) -> Gateway {
    let wasm = toml_str(&guest_wasm_version("world-0.2.2").to_string_lossy());
    Gateway::start_under(
        wrapper,
        &format!(
            "{top}\n[[plugins]]\nname = \"g\"\nroute = \"/g\"\nwasm = {wasm}\nallowed_outbound_hosts = [{}]\n{extra}\n\
         [plugins.config]\nfetch_url = {}\n",
            toml_str(allowed),
            toml_str(fetch_url)
        ),
    )
}

/// An HTTPS upstream whose certificate (for `localhost` and `127.0.0.1`)
/// is signed by itself, and that certificate as a PEM file in `dir`.
fn self_signed_upstream(dir: &std::path::Path) -> (Upstream, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
    let cert = params.self_signed(&key).expect("a certificate");
    let upstream = Upstream::start_tls(&cert.pem(), &key.serialize_pem());
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.pem()).expect("ca");
    (upstream, ca)
}

fn metrics(gateway: &Gateway) -> String {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    request("GET", &gateway.admin_url("/metrics"), &[("authorization", auth.as_str())], None).text()
}

#[test]
fn a_plugin_reaches_an_allowed_host_and_gets_its_answer_as_sent() {
    let upstream = Upstream::start();
    let gateway = caller("", &upstream.url, &upstream.url, "");
    let reply = get(&gateway.url("/g/fetch?path=/hello"));
    assert_eq!((reply.status, reply.text().as_str()), (200, "status=200 location= body=hello"));
    let reply = get(&gateway.url("/g/fetch?path=/missing"));
    assert_eq!((reply.status, reply.text().as_str()), (200, "status=404 location= body=no such path"));
    assert!(metrics(&gateway).contains(r#"evogate_outbound_requests_total{plugin="g",outcome="ok"} 2"#));
}

#[test]
fn a_host_outside_allowed_outbound_hosts_is_refused_before_any_connection() {
    let upstream = Upstream::start();
    // The same address on another port is another host.
    let gateway = caller("", &upstream.url, "http://127.0.0.1:1", "");
    let reply = get(&gateway.url("/g/fetch?path=/hello"));
    assert_eq!((reply.status, reply.text().as_str()), (502, "ErrorCode::HttpRequestDenied"));
    assert_eq!(upstream.connections(), 0, "no connection was made");
    assert!(gateway.wait_for_log("outgoing request refused: not in allowed_outbound_hosts"));
    assert!(metrics(&gateway).contains(r#"evogate_outbound_requests_total{plugin="g",outcome="refused"} 1"#));
    // Without any allowed host, nothing leaves either.
    let closed = Gateway::start(&format!(
        "[[plugins]]\nname = \"g\"\nroute = \"/g\"\nwasm = {}\n[plugins.config]\nfetch_url = {}\n",
        toml_str(&guest_wasm_version("world-0.2.2").to_string_lossy()),
        toml_str(&upstream.url)
    ));
    assert_eq!(get(&closed.url("/g/fetch?path=/hello")).text(), "ErrorCode::HttpRequestDenied");
    assert_eq!(upstream.connections(), 0);
}

#[test]
fn a_redirect_is_handed_to_the_plugin_not_followed() {
    let upstream = Upstream::start();
    let gateway = caller("", &upstream.url, &upstream.url, "");
    let reply = get(&gateway.url("/g/fetch?path=/redirect"));
    assert_eq!(reply.text(), "status=302 location=http://127.0.0.1:9/elsewhere body=");
    assert_eq!(upstream.connections(), 1);
}

#[test]
fn a_response_body_over_the_cap_fails_the_plugins_read_and_one_under_it_arrives_whole() {
    let upstream = Upstream::start();
    let gateway = caller("[limits]\nmax_outbound_response_bytes = 1024", &upstream.url, &upstream.url, "");
    let reply = get(&gateway.url("/g/fetch?path=/big?n=1024"));
    assert_eq!(reply.text(), format!("status=200 location= body={}", "x".repeat(1024)));
    let reply = get(&gateway.url("/g/fetch?path=/big?n=5000"));
    assert_eq!((reply.status, reply.text().as_str()), (502, "HTTP response body size exceeds limit: 1024 bytes"));
}

#[test]
fn an_outgoing_call_never_outlives_its_request() {
    let upstream = Upstream::start();
    let gateway = caller("[limits]\nrequest_timeout_ms = 1000", &upstream.url, &upstream.url, "");
    let started = Instant::now();
    let reply = get(&gateway.url("/g/fetch?path=/slow"));
    let took = started.elapsed();
    assert_eq!(reply.status, 503, "the request's deadline ends it: {}", reply.text());
    assert!(took < Duration::from_millis(2500), "answered after {took:?}");
    assert_eq!(get(&gateway.url("/g/fetch?path=/hello")).status, 200, "the gateway goes on");
}

#[test]
fn https_trusts_a_root_the_system_trusts_besides_the_public_ones() {
    let dir = tempfile::tempdir().expect("dir");
    let (upstream, ca) = self_signed_upstream(dir.path());
    // The system's store as OpenSSL names it (update-ca-certificates writes the bundle it points at).
    let system = format!("SSL_CERT_FILE={}", ca.display());
    let gateway = caller_under(&["env", &system], "", &upstream.url, &upstream.url, "");
    let reply = get(&gateway.url("/g/fetch?path=/hello"));
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "status=200 location= body=hello"),
        "no outbound_ca needed"
    );
}

#[test]
fn https_is_verified_against_the_public_roots_and_outbound_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let (upstream, ca) = self_signed_upstream(dir.path());
    let untrusting = caller("", &upstream.url, &upstream.url, "");
    let reply = get(&untrusting.url("/g/fetch?path=/hello"));
    assert_eq!(reply.status, 502, "a certificate no root vouches for is refused: {}", reply.text());
    assert!(reply.text().contains("Tls") || reply.text().contains("certificate"), "{}", reply.text());

    let trusting =
        caller("", &upstream.url, &upstream.url, &format!("outbound_ca = {}", toml_str(&ca.to_string_lossy())));
    let reply = get(&trusting.url("/g/fetch?path=/hello"));
    assert_eq!((reply.status, reply.text().as_str()), (200, "status=200 location= body=hello"));
}
