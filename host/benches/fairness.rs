//! Fairness between users of one plugin: while a heavy user runs eight
//! unpaged reads of its 30,000-product catalog at once, without pause, how
//! long do another user's small calls take? Measured three ways in one run,
//! each on a fresh gateway: alone (the baseline), beside the heavy user
//! with no per-credential cap, and beside it with `max_concurrent_per_credential
//! = 2` (the heavy user's surplus calls answered 503 at once and sent again).
//! Reported as p50/p95 and as ratios to the baseline.
//!
//! Run with `cargo bench -p evogate --bench fairness`.

#[path = "common/evotor.rs"]
mod evotor;

use evotor::{STORE, call, json_body, product, quantiles};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PRODUCTS: u32 = 30_000;
const HEAVY_CLIENTS: usize = 8;
const LIGHT_SAMPLES: usize = 300;
const LIGHT_USER: &str = "02-000000000000002";
const LIGHT_DEVICE: &str = "5a188de4-49b8-4cb4-800e-eb6b52024300";

/// The light user's p50 and p95 in ms, with `heavy` clients of the heavy user running meanwhile.
async fn measure(cap: Option<u32>, heavy: usize) -> anyhow::Result<(f64, f64, usize)> {
    let data = tempfile::tempdir()?;
    let mut config = evotor::config(data.path())?;
    config.plugins[0].max_concurrent_per_credential = cap;
    let (_running, addr) = evotor::serve(&config).await?;
    let mut client = evotor::connect(addr).await?;
    let heavy_token = evotor::entitled_user(&mut client).await?;
    let light_token = evotor::entitled(&mut client, LIGHT_USER, "light", LIGHT_DEVICE, 2).await?;
    for batch in 0..PRODUCTS / 10_000 {
        let items: Vec<Value> = (batch * 10_000..(batch + 1) * 10_000).map(product).collect();
        call(
            &mut client,
            "PUT",
            &format!("/partner/v1/stores/{STORE}/products"),
            "partner",
            json_body(&Value::from(items)),
        )
        .await?;
    }
    let catalog = format!("/api/v1/inventories/stores/{STORE}/products");
    call(&mut client, "GET", &catalog, &heavy_token, bytes::Bytes::new()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..heavy {
        let (stop, reads, token, catalog) = (stop.clone(), reads.clone(), heavy_token.clone(), catalog.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = evotor::connect(addr).await?;
            while !stop.load(Ordering::Relaxed) {
                // A refusal (503 past the cap) is sent again, as Evotor would.
                if call(&mut client, "GET", &catalog, &token, bytes::Bytes::new()).await.is_ok() {
                    reads.fetch_add(1, Ordering::Relaxed);
                } else {
                    client = evotor::connect(addr).await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stores = json_body(&json!([{"uuid": "20170228-f4f1-401b-80fa-9ecca8451f00", "name": "Light"}]));
    let mut light = evotor::connect(addr).await?;
    let mut samples = Vec::with_capacity(LIGHT_SAMPLES);
    for _ in 0..LIGHT_SAMPLES {
        let started = Instant::now();
        call(&mut light, "PUT", "/api/v1/inventories/stores", &light_token, stores.clone()).await?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let (p50, _) = quantiles(samples.clone());
    samples.sort_by(f64::total_cmp);
    let p95 = samples[(samples.len() * 95 / 100).min(samples.len() - 1)];
    Ok((p50, p95, reads.load(Ordering::Relaxed)))
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        println!(
            "a light user's small mirror call ({LIGHT_SAMPLES} in a row) while a heavy user reads its {PRODUCTS}-product catalog unpaged on {HEAVY_CLIENTS} connections"
        );
        let (base50, base95, _) = measure(None, 0).await?;
        println!("alone:                          p50 {base50:.2} ms, p95 {base95:.2} ms");
        let (open50, open95, open_reads) = measure(None, HEAVY_CLIENTS).await?;
        println!(
            "beside it, no cap:              p50 {open50:.2} ms, p95 {open95:.2} ms ({:.1}x / {:.1}x the baseline; {open_reads} heavy reads)",
            open50 / base50,
            open95 / base95
        );
        let (cap50, cap95, cap_reads) = measure(Some(2), HEAVY_CLIENTS).await?;
        println!(
            "beside it, 2 per credential:    p50 {cap50:.2} ms, p95 {cap95:.2} ms ({:.1}x / {:.1}x the baseline; {cap_reads} heavy reads)",
            cap50 / base50,
            cap95 / base95
        );
        anyhow::Ok(())
    })
}
