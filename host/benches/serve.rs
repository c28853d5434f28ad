//! evogate against `wasmtime serve` on the same standard component
//! (tests/standard/hello): both as their own processes on loopback, driven
//! by the same load generator in alternating rounds.
//!
//! Run with `cargo xtask bench-serve`: it installs `wasmtime-cli` of
//! wasmtime's version into `target/wasmtime-cli` (once), builds the
//! component and the gateway, then runs this with `WASMTIME_BIN` set.
//! `BENCH_SECONDS` (default 3) sets the length of each throughput round.

mod common;

use common::{CONNECTIONS, LATENCY_REQUESTS, Rounds, Server, free_port, wait_until_serving};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROUNDS: usize = 3;

fn wasmtime_serve(wasmtime: &Path, wasm: &Path, port: u16) -> anyhow::Result<Server> {
    let child = Command::new(wasmtime)
        .args(["serve", "-S", "cli=y", "--addr", &format!("127.0.0.1:{port}")])
        .arg(wasm)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Server(child))
}

fn evogate_serve(evogate: &Path, wasm: &Path, port: u16, data: &Path) -> anyhow::Result<Server> {
    let config = common::serve_config(data, port, "hello", wasm, "")?;
    // The access log stays on (its formatting is part of the work), written to nowhere.
    common::spawn_serve(evogate, &config, "info")
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(wasmtime) = std::env::var_os("WASMTIME_BIN").map(PathBuf::from) else {
        // `cargo xtask bench` runs every bench; this one needs wasmtime-cli, which bench-serve installs.
        println!("serve: skipped, WASMTIME_BIN is not set (run `cargo xtask bench-serve`)");
        return Ok(());
    };
    let wasm = root.join("target/wasm32-wasip2/release/standard_hello.wasm");
    let evogate = root.join("target/release/evogate");
    for path in [&wasmtime, &wasm, &evogate] {
        anyhow::ensure!(path.is_file(), "{} is missing: run `cargo xtask bench-serve`", path.display());
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let version = Command::new(&wasmtime).arg("--version").output()?;
    let data = tempfile::tempdir()?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (wasmtime_port, evogate_port) = (free_port()?, free_port()?);
        let _wasmtime = wasmtime_serve(&wasmtime, &wasm, wasmtime_port)?;
        let _evogate = evogate_serve(&evogate, &wasm, evogate_port, data.path())?;
        let wasmtime_addr = SocketAddr::from(([127, 0, 0, 1], wasmtime_port));
        let evogate_addr = SocketAddr::from(([127, 0, 0, 1], evogate_port));
        let expected = wait_until_serving(wasmtime_addr).await?;
        anyhow::ensure!(wait_until_serving(evogate_addr).await? == expected, "the two answers differ");

        println!("component: tests/standard/hello ({} bytes)", std::fs::metadata(&wasm)?.len());
        println!("wasmtime serve: {}", String::from_utf8_lossy(&version.stdout).trim());
        println!("both servers their own processes; HTTP/1.1 keep-alive on loopback");
        println!("{ROUNDS} alternating rounds; medians reported\n");

        let rounds = Rounds::measure([wasmtime_addr, evogate_addr], ROUNDS, Duration::from_secs(seconds)).await?;
        let ((w50, w99), (e50, e99)) = (rounds.latency(0), rounds.latency(1));
        let (wr, er) = (rounds.throughput(0), rounds.throughput(1));
        println!("sequential, 1 connection ({LATENCY_REQUESTS} requests per round):");
        println!("  wasmtime serve  p50 {w50:7.1} µs   p99 {w99:7.1} µs");
        println!("  evogate         p50 {e50:7.1} µs   p99 {e99:7.1} µs");
        println!("  evogate / wasmtime serve, p50: {:.2}", e50 / w50);
        println!("throughput, {CONNECTIONS} connections ({seconds} s per round):");
        println!("  wasmtime serve  {wr:9.0} req/s");
        println!("  evogate         {er:9.0} req/s");
        println!("  evogate / wasmtime serve: {:.2}", er / wr);
        Ok(())
    })
}
