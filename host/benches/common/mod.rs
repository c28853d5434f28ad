//! Load-generation helpers shared by the benchmarks.
#![allow(dead_code, reason = "each bench uses a subset")]

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Concurrent clients of a throughput round.
pub const CONNECTIONS: usize = 8;
/// The trivial request: the Evotor plugin's 404 for an unknown path.
pub const PATH: &str = "/api/v1/no-such-endpoint";
/// Requests per latency round.
pub const LATENCY_REQUESTS: usize = 4000;

pub type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

pub async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

pub async fn send(sender: &mut Sender) -> anyhow::Result<Bytes> {
    sender.ready().await?;
    let request = Request::get(PATH).header("host", "bench").body(Empty::new())?;
    let response = sender.send_request(request).await?;
    Ok(response.into_body().collect().await?.to_bytes())
}

/// The admin token of the benches' gateways.
pub const ADMIN_TOKEN: &str = "bench-admin-token";

/// `config` with the public and admin listeners on free loopback ports, the admin API behind [`ADMIN_TOKEN`].
pub fn on_free_ports(mut config: evogate::config::Config) -> evogate::config::Config {
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin.token = Some(ADMIN_TOKEN.to_owned());
    config
}

/// Starts a gateway as the binary does ([`evogate::run`]), serving until the process ends.
pub async fn run(config: evogate::config::Config) -> anyhow::Result<evogate::Running> {
    evogate::run(&on_free_ports(config), std::future::pending()).await
}

/// Deploys `bytes` as plugin `name` through the admin API (`PUT /plugins/{name}`,
/// what `evogate deploy` sends); whether it changed the live version.
pub async fn admin_deploy(admin: SocketAddr, name: &str, bytes: Vec<u8>) -> anyhow::Result<bool> {
    let stream = TcpStream::connect(admin).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = Request::put(format!("/plugins/{name}"))
        .header("host", "bench")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(http_body_util::Full::new(Bytes::from(bytes)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "deploy: {status} {}", String::from_utf8_lossy(&body));
    let outcome: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(outcome["changed"] == serde_json::Value::Bool(true))
}

pub async fn fetch_once(addr: SocketAddr) -> anyhow::Result<Bytes> {
    send(&mut connect(addr).await?).await
}

/// p50 and p99 in µs of sequential requests on one connection.
pub async fn latency(addr: SocketAddr) -> anyhow::Result<(f64, f64)> {
    let mut sender = connect(addr).await?;
    for _ in 0..200 {
        send(&mut sender).await?;
    }
    let mut samples = Vec::with_capacity(LATENCY_REQUESTS);
    for _ in 0..LATENCY_REQUESTS {
        let started = Instant::now();
        send(&mut sender).await?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok((at(0.50), at(0.99)))
}

/// Requests per second from `CONNECTIONS` concurrent keep-alive clients.
pub async fn throughput(addr: SocketAddr, length: Duration) -> anyhow::Result<f64> {
    let deadline = Instant::now() + length;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut sender = connect(addr).await?;
        clients.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                if send(&mut sender).await.is_err() {
                    break;
                }
                done += 1;
            }
            done
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for client in clients {
        total += client.await?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Two servers measured in alternating rounds, so both see the same
/// machine: each round measures the first's latency, the second's, then
/// the first's throughput and the second's, for `seconds` each.
pub struct Rounds {
    /// Per server, each round's (p50, p99) in µs.
    pub latency: [Vec<(f64, f64)>; 2],
    /// Per server, each round's requests per second.
    pub throughput: [Vec<f64>; 2],
}

impl Rounds {
    /// `rounds` alternating rounds against `servers`, each round in the
    /// other order than the one before (A B, B A, A B, …): the side measured
    /// second in a round runs faster on these machines (by 10 % and more in
    /// throughput, with the same binary on both sides), so a fixed order
    /// would favour one side.
    pub async fn measure(servers: [SocketAddr; 2], rounds: usize, seconds: Duration) -> anyhow::Result<Self> {
        let mut measured = Self { latency: [Vec::new(), Vec::new()], throughput: [Vec::new(), Vec::new()] };
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                measured.latency[side].push(latency(servers[side]).await?);
            }
            for side in order {
                measured.throughput[side].push(throughput(servers[side], seconds).await?);
            }
        }
        Ok(measured)
    }

    /// The median (p50, p99) of `side`.
    pub fn latency(&self, side: usize) -> (f64, f64) {
        median_pair(&self.latency[side])
    }

    /// The median throughput of `side`.
    pub fn throughput(&self, side: usize) -> f64 {
        median(&self.throughput[side])
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

pub fn median_pair(values: &[(f64, f64)]) -> (f64, f64) {
    let p50: Vec<f64> = values.iter().map(|v| v.0).collect();
    let p99: Vec<f64> = values.iter().map(|v| v.1).collect();
    (median(&p50), median(&p99))
}

/// A server process, killed when dropped.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits up to a minute for `addr` to answer the trivial request; its answer.
pub async fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<Bytes> {
    let started = Instant::now();
    loop {
        match fetch_once(addr).await {
            Ok(body) => return Ok(body),
            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(err) => return Err(err.context(format!("nothing answers on {addr}"))),
        }
    }
}

/// `evogate serve --config CONFIG` as a process of its own, logging at
/// `log` (`EVOGATE_LOG`) to nowhere; killed when dropped.
pub fn spawn_serve(evogate: &std::path::Path, config: &std::path::Path, log: &str) -> anyhow::Result<Server> {
    use std::process::{Command, Stdio};
    let child = Command::new(evogate)
        .args(["serve", "--config"])
        .arg(config)
        .env("EVOGATE_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Server(child))
}

/// Writes `DIR/evogate.toml` for `evogate serve` on `port` with one plugin on `/`,
/// its data in `DIR/data`; `extra` is appended to the plugin's table. The file's path.
pub fn serve_config(
    dir: &std::path::Path,
    port: u16,
    plugin: &str,
    wasm: &std::path::Path,
    extra: &str,
) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("evogate.toml");
    let wasm = serde_json::to_string(&wasm.to_string_lossy())?;
    let data_dir = serde_json::to_string(&dir.join("data").to_string_lossy())?;
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {data_dir}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[plugins]]\nname = \"{plugin}\"\nroute = \"/\"\nwasm = {wasm}\n{extra}"
        ),
    )?;
    Ok(config)
}
