//! Deploy-to-first-served latency of the real `evotor_partner.wasm`, cold
//! (never compiled: a fresh variant of the component) and warm (compiled
//! before: wasmtime's cache in the data directory), and the gateway's
//! throughput during a deploy storm against steady state, in one run.
//!
//! Run with `cargo xtask bench` or `cargo bench -p evogate --bench deploy`.

mod common;
#[path = "common/evotor.rs"]
mod evotor;

use common::{CONNECTIONS, admin_deploy, fetch_once, median, throughput};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SAMPLES: usize = 5;

/// `wasm` plus a custom section: the same plugin, another artifact (sha256).
fn variant(wasm: &[u8], n: usize) -> Vec<u8> {
    let name = b"evogate-bench";
    let payload = format!("variant {n}");
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(payload.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    out.push(section.len() as u8); // LEB128, < 128
    out.extend_from_slice(&section);
    out
}

async fn deploy_to_first_served(admin: SocketAddr, addr: SocketAddr, bytes: Vec<u8>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let changed = admin_deploy(admin, "evotor", bytes).await?;
    anyhow::ensure!(changed, "the deploy changed nothing");
    fetch_once(addr).await?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm_path = root.join(evotor::PLUGIN_WASM);
    anyhow::ensure!(wasm_path.is_file(), "{} is missing: run `cargo xtask bench`", wasm_path.display());
    let wasm = std::fs::read(&wasm_path)?;
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let data = tempfile::tempdir()?;
        let mut config = evogate::config::Config::default();
        config.store.backend = evogate::kv::BackendKind::Memory;
        config.data_dir = figment::value::magic::RelativePathBuf::from(data.path().to_owned());
        config.plugins.push(evotor::plugin(wasm_path.clone()));
        let running = common::run(config).await?;
        let (addr, admin) = (running.addr(), running.admin_addr());

        println!("evotor_partner.wasm: {} bytes; deploy through the admin API, then one HTTP request", wasm.len());
        let mut cold = Vec::new();
        for n in 0..SAMPLES {
            cold.push(deploy_to_first_served(admin, addr, variant(&wasm, n)).await?);
        }
        let mut warm = Vec::new();
        for n in 0..SAMPLES {
            // Each of these was compiled above: the cache serves it.
            warm.push(deploy_to_first_served(admin, addr, variant(&wasm, n)).await?);
        }
        println!("deploy to first served, cold (compile):      median {:6.1} ms  (n={SAMPLES})", median(&cold));
        println!("deploy to first served, warm (cached build): median {:6.1} ms  (n={SAMPLES})", median(&warm));

        let steady = throughput(addr, Duration::from_secs(seconds)).await?;
        let storming = Arc::new(AtomicBool::new(true));
        let deploys = {
            let storming = storming.clone();
            let variants: Vec<Vec<u8>> = (0..2).map(|n| variant(&wasm, n)).collect();
            tokio::spawn(async move {
                let mut count = 0usize;
                while storming.load(Ordering::Relaxed) {
                    let _ = admin_deploy(admin, "evotor", variants[count % 2].clone()).await;
                    count += 1;
                }
                count
            })
        };
        let during = throughput(addr, Duration::from_secs(seconds)).await?;
        storming.store(false, Ordering::Relaxed);
        let count = deploys.await?;
        println!("throughput, {CONNECTIONS} connections, {seconds} s:");
        println!("  steady state        {steady:9.0} req/s");
        println!(
            "  during deploy storm {during:9.0} req/s  ({count} deploys, {:.1} per second)",
            count as f64 / seconds as f64
        );
        println!("  storm / steady: {:.2}", during / steady);
        Ok(())
    })
}
