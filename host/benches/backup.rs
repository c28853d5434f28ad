//! Requests while a backup is taken: the latency of sequential requests to
//! the Evotor plugin on one keep-alive connection while `GET /backup`
//! streams the whole store to a client, against the same requests just
//! before, in one run; and how long the backup of that store takes.
//!
//! The store: 100,000 records of 4 KiB (~400 MB) in a namespace of their
//! own, restored into redb before the gateway starts. Run with
//! `cargo bench -p evogate --bench backup` (after `cargo xtask build`).

mod common;
#[path = "common/evotor.rs"]
mod evotor;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use std::time::{Duration, Instant};

const RECORDS: u64 = 100_000;
const ROUNDS: usize = 3;
const VALUE_BYTES: usize = 4096;

/// `GET /backup` read whole by a client that keeps nothing: its bytes and its time.
async fn backup(admin: std::net::SocketAddr) -> anyhow::Result<(usize, Duration)> {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(admin).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/backup")
        .header("host", "bench")
        .header("authorization", format!("Bearer {}", common::ADMIN_TOKEN))
        .body(http_body_util::Empty::<Bytes>::new())?;
    let mut body = sender.send_request(request).await?.into_body();
    let mut bytes = 0usize;
    while let Some(frame) = body.frame().await {
        bytes += frame?.into_data().map_or(0, |data| data.len());
    }
    Ok((bytes, started.elapsed()))
}

/// p50 and p99 in µs of the requests sent until `done` says so (at least 50).
async fn latencies(addr: std::net::SocketAddr, done: impl Fn() -> bool) -> anyhow::Result<(f64, f64)> {
    let mut sender = common::connect(addr).await?;
    let mut samples = Vec::new();
    while samples.len() < 50 || !done() {
        let started = Instant::now();
        common::send(&mut sender).await?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(evotor::quantiles(samples))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let config = evotor::config(data.path())?;
    {
        // The store, filled through a backup file: the fastest way in.
        let file = data.path().join("fill.backup");
        let mut writer = evogate::kv::backup::Writer::new(std::io::BufWriter::new(std::fs::File::create(&file)?))?;
        let value = vec![7u8; VALUE_BYTES];
        for n in 0..RECORDS {
            let entry = evogate::kv::Entry { value: value.clone(), version: n + 1 };
            writer.record(&evogate::kv::backup::Record { ns: "filler".into(), key: format!("k/{n:08}"), entry })?;
        }
        writer.finish(RECORDS)?;
        let store = evogate::kv::RedbBackend::open(&config.data_dir().join("evogate.redb"))?;
        evogate::kv::backup::restore_file(&store, &file, false, |_| {})?;
        std::fs::remove_file(&file)?;
    }
    let running = common::run(config).await?;
    let (addr, admin) = (running.addr(), running.admin_addr());
    let (mut idle, mut busy, mut took, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..ROUNDS {
        let warm = Instant::now();
        idle.push(latencies(addr, || warm.elapsed() >= Duration::from_secs(1)).await?);
        let backup = tokio::spawn(backup(admin));
        busy.push(latencies(addr, || backup.is_finished()).await?);
        let (sent, time) = backup.await??;
        bytes = sent;
        took.push(time.as_secs_f64());
    }
    let median = |values: Vec<f64>| common::median(&values);
    let took = median(took);
    let (idle_p50, idle_p99) = (median(idle.iter().map(|l| l.0).collect()), median(idle.iter().map(|l| l.1).collect()));
    let (busy_p50, busy_p99) = (median(busy.iter().map(|l| l.0).collect()), median(busy.iter().map(|l| l.1).collect()));
    println!("median of {ROUNDS} alternated rounds: 1 s of requests with nothing else, then requests during a backup");
    println!(
        "backup of {RECORDS} records of {VALUE_BYTES} bytes: {:.1} MB in {took:.2} s ({:.0} MB/s), redb",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / took
    );
    println!("requests with nothing else:  p50 {idle_p50:>6.1} µs, p99 {idle_p99:>6.1} µs (baseline)");
    println!(
        "requests during the backup:  p50 {busy_p50:>6.1} µs ({:.2} ×), p99 {busy_p99:>6.1} µs ({:.2} ×)",
        busy_p50 / idle_p50,
        busy_p99 / idle_p99
    );
    Ok(())
}
