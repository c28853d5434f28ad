//! What the sandbox costs: a trivial request through the full gateway
//! (HTTP on loopback → fresh plugin instance → answer) against the same
//! hyper server answering natively, measured in one run, rounds alternated.
//!
//! Then the cost of a fresh instance + call without HTTP, for the Evotor
//! plugin beside the smallest evogate plugin (the test guest's `/version`)
//! and a standard `wasi:http` component, in the same run.
//!
//! Run with `cargo xtask bench` (it builds the plugins first), or
//! `cargo bench -p evogate --bench gateway` after `cargo xtask build`.
//! `BENCH_SECONDS` (default 3) sets the length of each throughput round.

mod common;
#[path = "common/evotor.rs"]
mod evotor;

use bytes::Bytes;
use common::{CONNECTIONS, LATENCY_REQUESTS, PATH, Rounds, fetch_once, median};
use evogate::sandbox::{Laps, Phase};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const ROUNDS: usize = 3;
/// An instance's steps, in the order the breakdown prints them.
const PHASES: [Phase; 4] = [Phase::Store, Phase::Instantiate, Phase::Call, Phase::Reset];
/// The smaller plugins measured beside the Evotor plugin: name (and route), file, and the path called.
const SMALL: &[(&str, &str, &str)] = &[("guest", "test_guest.wasm", "/version"), ("hello", "standard_hello.wasm", "/")];

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = root.join(evotor::PLUGIN_WASM);
    anyhow::ensure!(wasm.is_file(), "{} is missing: run `cargo xtask bench`", wasm.display());
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut config = evogate::config::Config::default();
        config.store.backend = evogate::kv::BackendKind::Memory;
        config.plugins.push(evotor::plugin(wasm));
        for (name, file, _) in SMALL {
            let wasm = root.join("target/wasm32-wasip2/release").join(file);
            anyhow::ensure!(wasm.is_file(), "{} is missing: run `cargo xtask build`", wasm.display());
            let mut plugin = config.plugins[0].clone();
            (plugin.name, plugin.route) = ((*name).into(), format!("/{name}"));
            plugin.wasm = figment::value::magic::RelativePathBuf::from(wasm);
            plugin.config.clear();
            config.plugins.push(plugin);
        }
        let data = tempfile::tempdir()?;
        config.data_dir = figment::value::magic::RelativePathBuf::from(data.path().to_owned());
        let gateway = common::run(config).await?;

        // The answer the plugin gives, served natively.
        let expected = gateway_body(&gateway).await?;
        let native_addr = serve_native(expected.clone()).await?;
        let gateway_addr = gateway.addr();
        anyhow::ensure!(fetch_once(native_addr).await? == expected, "native answer differs");
        anyhow::ensure!(fetch_once(gateway_addr).await? == expected, "gateway answer differs");

        println!("trivial request: GET {PATH} (404 from the Evotor plugin's router), HTTP/1.1 keep-alive on loopback");
        println!("{ROUNDS} alternating rounds; medians reported\n");

        // `BENCH_DIRECT_ONLY=1`: only the calls without HTTP, e.g. to profile an instance.
        let rounds = if std::env::var_os("BENCH_DIRECT_ONLY").is_some_and(|on| on == "1") { 0 } else { ROUNDS };
        let http = Rounds::measure([native_addr, gateway_addr], rounds, Duration::from_secs(seconds)).await?;
        let mut direct = Vec::new();
        let direct_rounds = if rounds == 0 { 10 } else { 1 };
        let measured = SMALL.iter().map(|(name, _, path)| (*name, *path));
        for (name, path) in std::iter::once(("evotor", PATH)).chain(measured) {
            let (mut means, mut steps) = (Vec::new(), [const { Vec::new() }; 4]);
            for _ in 0..direct_rounds {
                let (mean, phases) = direct_calls(&gateway, name, path).await?;
                means.push(mean);
                for (step, micros) in steps.iter_mut().zip(phases) {
                    step.push(micros);
                }
            }
            direct.push((name, median(&means), steps.map(|step| median(&step))));
        }

        if rounds > 0 {
            let ((n50, n99), (g50, g99)) = (http.latency(0), http.latency(1));
            let (nr, gr) = (http.throughput(0), http.throughput(1));
            println!("sequential, 1 connection ({LATENCY_REQUESTS} requests per round):");
            println!("  native   p50 {n50:7.1} µs   p99 {n99:7.1} µs");
            println!("  gateway  p50 {g50:7.1} µs   p99 {g99:7.1} µs");
            println!("  sandbox overhead per request (p50 difference): {:.1} µs", g50 - n50);
            println!("throughput, {CONNECTIONS} connections ({seconds} s per round):");
            println!("  native   {nr:9.0} req/s");
            println!("  gateway  {gr:9.0} req/s");
            println!("  gateway / native: {:.2}", gr / nr);
        }
        println!("fresh instance + call without HTTP (PluginVersion::handle), mean:");
        let evotor = direct[0].1;
        for (name, micros, _) in &direct {
            println!("  {name:<7} {micros:6.1} µs   {:.2} of the Evotor plugin's", micros / evotor);
        }
        println!("where it goes (PluginVersion::answer_timed, µs): store  instantiate  call  reset");
        for (name, _, [store, instantiate, call, reset]) in &direct {
            println!("  {name:<7} {store:12.2} {instantiate:12.2} {call:5.2} {reset:6.2}");
        }
        Ok(())
    })
}

async fn gateway_body(gateway: &evogate::Running) -> anyhow::Result<Bytes> {
    let version = gateway.live_plugin("evotor").ok_or_else(|| anyhow::anyhow!("no plugin evotor"))?;
    let response = version
        .handle(trivial_request(), Duration::from_secs(5))
        .await
        .map_err(|failure| anyhow::anyhow!("{failure}"))?;
    Ok(Bytes::from(response.body))
}

fn trivial_request() -> evogate::sandbox::Request {
    request_for(PATH)
}

fn request_for(path: &str) -> evogate::sandbox::Request {
    evogate::sandbox::Request {
        method: "GET".into(),
        path: path.into(),
        query: String::new(),
        headers: vec![("host".into(), "bench".into())],
        body: Vec::new(),
    }
}

/// Mean time of one fresh instance + `handle` call of plugin `name`, no
/// HTTP, and where it went: the instance's steps timed in a second loop
/// (the clock reads add to each step; the loop above has none).
async fn direct_calls(gateway: &evogate::Running, name: &str, path: &str) -> anyhow::Result<(f64, [f64; 4])> {
    let version = gateway.live_plugin(name).ok_or_else(|| anyhow::anyhow!("no plugin {name}"))?;
    let request = request_for(path);
    let first = version.handle(request.clone(), Duration::from_secs(5)).await;
    anyhow::ensure!(first.is_ok_and(|answer| answer.status < 500), "{name} {path} does not answer");
    let n = 5000;
    for _ in 0..500 {
        let _ = version.handle(request.clone(), Duration::from_secs(5)).await;
    }
    let started = Instant::now();
    for _ in 0..n {
        let _ = version.handle(request.clone(), Duration::from_secs(5)).await;
    }
    let mean = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let mut laps = Laps::new();
    for _ in 0..n {
        let (_, spent) = version.answer_timed(request.clone(), Duration::from_secs(5), &mut laps).await;
        spent.reset(&mut laps);
    }
    let phases = PHASES.map(|phase| laps.total(phase).as_secs_f64() * 1e6 / f64::from(n));
    Ok((mean, phases))
}

async fn serve_native(body: Bytes) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        // Read the body like the gateway does, then answer.
                        let _ = req.into_body().collect().await;
                        let mut response = Response::new(Full::new(body));
                        *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                        response
                            .headers_mut()
                            .insert("content-type", "application/json; charset=utf-8".parse().expect("valid"));
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(addr)
}
