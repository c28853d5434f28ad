//! What a connection and a request cost in memory: the `evogate` binary
//! serving the test plugin, its resident memory (`VmRSS`) read from
//! `/proc` before and after 10,000 idle keep-alive connections (each has
//! had one request answered), and with 32 requests of 1 MiB in flight (the
//! plugin spins until the request's deadline, its body held meanwhile).
//! The baseline is the same process just before, in the same run.
//!
//! Run with `cargo bench -p evogate --bench memory` after `cargo xtask build`.
//! `BENCH_CONNECTIONS=N` and `BENCH_IN_FLIGHT=N` change the counts.

mod common;

use common::{free_port, serve_config, spawn_serve};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Idle connections opened by default.
const CONNECTIONS: usize = 10_000;
/// Requests of [`BODY_BYTES`] in flight at once by default.
const IN_FLIGHT: usize = 32;
/// The body of each request in flight.
const BODY_BYTES: usize = 1 << 20;

fn count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// The process's resident memory, bytes, from `/proc/PID/status`.
fn resident(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    let kib: u64 = line.split_whitespace().nth(1).unwrap_or_default().parse()?;
    Ok(kib * 1024)
}

/// Resident memory once it has settled: the smallest of a few readings a moment apart.
fn settled(pid: u32) -> anyhow::Result<u64> {
    let mut least = u64::MAX;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        least = least.min(resident(pid)?);
    }
    Ok(least)
}

/// Sends one `GET` on `stream` and reads its whole answer (by `Content-Length`); the connection stays open.
fn exchange(stream: &mut TcpStream, path: &str) -> anyhow::Result<()> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n").as_bytes())?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer)?;
        anyhow::ensure!(read > 0, "the connection closed");
        received.extend_from_slice(&buffer[..read]);
        if let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                anyhow::ensure!(head.starts_with("http/1.1 200"), "answered {head}");
                return Ok(());
            }
        }
    }
}

/// Raises this process's open-file limit to its hard limit (a connection is a descriptor).
fn raise_open_files() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit { maximum, .. } = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: maximum, maximum });
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let evogate = root.join("target/release/evogate");
    let wasm = root.join("target/wasm32-wasip2/release/test_guest.wasm");
    for path in [&evogate, &wasm] {
        anyhow::ensure!(path.is_file(), "{} is missing: run `cargo xtask build`", path.display());
    }
    let (connections, in_flight) = (count("BENCH_CONNECTIONS", CONNECTIONS), count("BENCH_IN_FLIGHT", IN_FLIGHT));
    let open_files = raise_open_files();
    anyhow::ensure!(
        open_files > connections as u64 + 64,
        "the open-file limit ({open_files}) is below {connections} connections: raise it (ulimit -Hn) or set BENCH_CONNECTIONS"
    );
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    // Idle connections live as long as the head timeout: long enough to count them all.
    let limits = format!(
        "\n[limits]\nmax_connections = {}\nheader_read_timeout_ms = 600000\nrequest_timeout_ms = 5000\nmax_body_bytes = {}\n",
        connections + 1000,
        2 * BODY_BYTES
    );
    let config = serve_config(dir.path(), port, "g", &wasm, &limits)?;
    let server = spawn_serve(&evogate, &config, "warn")?;
    let pid = server.0.id();
    let started = Instant::now();
    let mut warm = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(_) if started.elapsed() < Duration::from_secs(60) => std::thread::sleep(Duration::from_millis(50)),
            Err(err) => return Err(err.into()),
        }
    };
    // Warm up: the first instances, the runtime's threads, the allocator's arenas.
    for _ in 0..2000 {
        exchange(&mut warm, "/version")?;
    }
    let base = settled(pid)?;

    let opened = Instant::now();
    let mut idle = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        exchange(&mut stream, "/version")?;
        idle.push(stream);
    }
    let took = opened.elapsed();
    let with_idle = settled(pid)?;
    let per_connection = with_idle.saturating_sub(base) as f64 / connections as f64;
    println!("memory: evogate serving the test plugin, resident memory (VmRSS)");
    println!("  before: {:.1} MiB", base as f64 / 1048576.0);
    println!(
        "  {connections} idle keep-alive connections (each one request answered, opened in {:.1} s): {:.1} MiB, \
         {:.1} KiB a connection",
        took.as_secs_f64(),
        with_idle as f64 / 1048576.0,
        per_connection / 1024.0
    );
    drop(idle);
    let after_idle = settled(pid)?;
    println!("  connections closed: {:.1} MiB", after_idle as f64 / 1048576.0);

    // Requests held in flight: the plugin spins until the deadline, the body held meanwhile.
    let body = vec![b'x'; BODY_BYTES];
    let mut senders = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        let head = format!("POST /loop HTTP/1.1\r\nhost: bench\r\ncontent-length: {BODY_BYTES}\r\n\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        senders.push(stream);
    }
    // Every body is read by now (the writes returned), and the calls spin until their deadline (5 s).
    std::thread::sleep(Duration::from_millis(500));
    let mut peak = 0;
    for _ in 0..5 {
        peak = peak.max(resident(pid)?);
        std::thread::sleep(Duration::from_millis(200));
    }
    let per_request = peak.saturating_sub(after_idle) as f64 / in_flight as f64;
    println!(
        "  {in_flight} requests of 1 MiB in flight: {:.1} MiB, {:.2} MiB a request",
        peak as f64 / 1048576.0,
        per_request / 1048576.0
    );
    drop(senders);
    Ok(())
}
