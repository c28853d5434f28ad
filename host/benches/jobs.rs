//! Scheduled jobs and outgoing HTTP, against baselines measured in the same run:
//!
//! - a job run with nothing to do (`noop`: the plugin returns at once),
//!   started through the admin API as `evogate run-job` does — the lease
//!   taken and released in the store around a fresh instance — against a
//!   trivial request of the same plugin (`/g/version`: a fresh instance, no
//!   store), on the default store (redb) and on the memory store;
//! - an outgoing request through the plugin (`/g/fetch`, a local upstream):
//!   its overhead (the fetch request less the trivial request) against the
//!   same GET sent natively by hyper on a new connection, as the gateway does.
//!
//! p50 of sequential calls, reported as ratios. Run with
//! `cargo bench -p evogate --bench jobs` (after `cargo xtask build`).

mod common;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

const SAMPLES: usize = 400;

fn guest() -> anyhow::Result<std::path::PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-guest-world-0.2.2.wasm");
    anyhow::ensure!(path.is_file(), "{} is missing: run `cargo xtask build` first", path.display());
    Ok(path)
}

fn config(
    data: &Path,
    store: evogate::kv::BackendKind,
    upstream: SocketAddr,
) -> anyhow::Result<evogate::config::Config> {
    let toml = format!(
        "data_dir = {data:?}\n[store]\nbackend = \"{}\"\n[[plugins]]\nname = \"g\"\nroute = \"/g\"\nwasm = {:?}\n\
         allowed_outbound_hosts = [\"http://{upstream}\"]\n[plugins.config]\nfetch_url = \"http://{upstream}\"\n\
         [[plugins.jobs]]\nname = \"noop\"\nevery = \"7d\"\n",
        match store {
            evogate::kv::BackendKind::Memory => "memory",
            _ => "redb",
        },
        guest()?
    );
    let file = data.join("evogate.toml");
    std::fs::write(&file, toml)?;
    evogate::config::Config::load(Some(&file))
}

async fn call(addr: SocketAddr, method: &str, path: &str, auth: bool) -> anyhow::Result<Bytes> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut request = hyper::Request::builder().method(method).uri(path).header("host", "bench");
    if auth {
        request = request.header("authorization", format!("Bearer {}", common::ADMIN_TOKEN));
    }
    let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{method} {path}: {status} {}", String::from_utf8_lossy(&body));
    Ok(body)
}

/// p50 in µs of `SAMPLES` sequential calls of `one`, after a warm-up.
async fn p50<F, Fut>(mut one: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Bytes>>,
{
    for _ in 0..50 {
        one().await?;
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        one().await?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(common::median(&samples))
}

/// A local upstream answering `hello` to everything, one connection at a time per client.
async fn upstream() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"hello"),
                    )))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(addr)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let upstream = upstream().await?;
    println!("jobs and outgoing HTTP, p50 of {SAMPLES} sequential calls each (µs)");
    for store in [evogate::kv::BackendKind::Redb, evogate::kv::BackendKind::Memory] {
        let data = tempfile::tempdir()?;
        let running = common::run(config(data.path(), store, upstream)?).await?;
        let (addr, admin) = (running.addr(), running.admin_addr());
        let request = p50(|| call(addr, "GET", "/g/version", false)).await?;
        let tick = p50(|| call(admin, "POST", "/plugins/g/jobs/noop/run", true)).await?;
        println!(
            "{store:?}: trivial request {request:.1}, job run with nothing to do {tick:.1} — job / request {:.2}",
            tick / request
        );
        if store == evogate::kv::BackendKind::Memory {
            let fetch = p50(|| call(addr, "GET", "/g/fetch?path=/hello", false)).await?;
            let native = p50(|| call(upstream, "GET", "/hello", false)).await?;
            let overhead = fetch - request;
            println!(
                "outgoing GET: through the plugin {fetch:.1} (request {request:.1} + {overhead:.1}), natively {native:.1} — \
                 overhead / native {:.2}",
                overhead / native
            );
        }
    }
    Ok(())
}
