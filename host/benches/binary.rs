//! The `evogate` binary against another build of itself: both serve the
//! Evotor plugin as their own processes, their log read from a pipe as a
//! service manager reads it, driven by the same load generator in
//! alternating rounds. What it measures is the whole process as deployed
//! (logging, metrics, the runtime's threads), which the in-process
//! `gateway` bench leaves out.
//!
//! Run with `BENCH_BASE_EVOGATE=/path/to/other/evogate cargo bench -p evogate --bench binary`
//! after `cargo xtask build`; the build under test is `target/release/evogate`, or the one
//! `BENCH_CANDIDATE_EVOGATE` names (two builds of other versions against each other).
//! `BENCH_SECONDS` (default 3) sets the length of each throughput round;
//! `BENCH_SHOW_LOG=1` shows both processes' logs; `BENCH_WASM=FILE` the Evotor
//! plugin both serve (one the base can load, when it predates the plugin's world).

mod common;

use common::{CONNECTIONS, LATENCY_REQUESTS, PATH, Rounds, Server, free_port, median};
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROUNDS: usize = 5;

/// Starts `evogate serve` on `port` with the Evotor plugin; its stderr is read and dropped by a thread.
fn serve(evogate: &Path, wasm: &Path, port: u16, data: &Path) -> anyhow::Result<Server> {
    let config = common::serve_config(data, port, "evotor", wasm, "error_format = \"evotor\"\n")?;
    let mut child = Command::new(evogate)
        .args(["serve", "--config"])
        .arg(&config)
        .env("EVOGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut log = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        let mut buffer = [0; 64 * 1024];
        while let Ok(read @ 1..) = log.read(&mut buffer) {
            if std::env::var_os("BENCH_SHOW_LOG").is_some() {
                eprint!("{}", String::from_utf8_lossy(&buffer[..read]));
            }
        }
    });
    Ok(Server(child))
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(base) = std::env::var_os("BENCH_BASE_EVOGATE").map(PathBuf::from) else {
        // `cargo xtask bench` runs every bench; this one compares against a build the caller names.
        println!("binary: skipped, BENCH_BASE_EVOGATE is not set (point it at the evogate binary to compare against)");
        return Ok(());
    };
    // An Evotor plugin both builds can run (a base older than the plugin's world needs an older plugin).
    let wasm = std::env::var_os("BENCH_WASM")
        .map_or_else(|| root.join("target/wasm32-wasip2/release/evotor_partner.wasm"), PathBuf::from);
    // The build under test: this workspace's, or another named (two builds of other versions compared).
    let candidate =
        std::env::var_os("BENCH_CANDIDATE_EVOGATE").map_or_else(|| root.join("target/release/evogate"), PathBuf::from);
    for path in [&base, &wasm, &candidate] {
        anyhow::ensure!(path.is_file(), "{} is missing: run `cargo xtask build`", path.display());
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let data = tempfile::tempdir()?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (base_port, candidate_port) = (free_port()?, free_port()?);
        let _base = serve(&base, &wasm, base_port, &data.path().join("base"))?;
        let _candidate = serve(&candidate, &wasm, candidate_port, &data.path().join("candidate"))?;
        let base_addr = SocketAddr::from(([127, 0, 0, 1], base_port));
        let candidate_addr = SocketAddr::from(([127, 0, 0, 1], candidate_port));
        let expected = common::wait_until_serving(base_addr).await?;
        anyhow::ensure!(common::wait_until_serving(candidate_addr).await? == expected, "the two answers differ");

        println!("base:      {}", base.display());
        println!("candidate: {}", candidate.display());
        println!("GET {PATH} (the Evotor plugin's 404), access log on, read from a pipe; HTTP/1.1 keep-alive");
        println!("{ROUNDS} alternating rounds; medians reported\n");
        let rounds = Rounds::measure([base_addr, candidate_addr], ROUNDS, Duration::from_secs(seconds)).await?;
        let ((b50, b99), (c50, c99)) = (rounds.latency(0), rounds.latency(1));
        let ratios: Vec<f64> = rounds.throughput[1].iter().zip(&rounds.throughput[0]).map(|(c, b)| c / b).collect();
        println!("sequential, 1 connection ({LATENCY_REQUESTS} requests per round):");
        println!("  base       p50 {b50:7.1} µs   p99 {b99:7.1} µs");
        println!("  candidate  p50 {c50:7.1} µs   p99 {c99:7.1} µs   p50 candidate / base: {:.2}", c50 / b50);
        println!("throughput, {CONNECTIONS} connections ({seconds} s per round):");
        println!("  base       {:9.0} req/s", rounds.throughput(0));
        println!("  candidate  {:9.0} req/s", rounds.throughput(1));
        let shown: Vec<String> = ratios.iter().map(|ratio| format!("{ratio:.2}")).collect();
        println!("  candidate / base, per round: {}; median {:.2}", shown.join(" "), median(&ratios));
        Ok(())
    })
}
