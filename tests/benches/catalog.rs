//! The catalog at scale behind the real gateway on redb: a store of
//! 100,000 products loaded by ten partner bulk upserts of 10,000, then
//! Evotor's `page=0&size=1000` against `page=99&size=1000` (interleaved, so
//! both see the same machine), the whole catalog unpaged against the 100
//! pages that make it up, and barcode lookups.
//!
//! Run with `cargo xtask bench` or `cargo bench -p evogate-e2e --bench catalog`.

// The Evotor plugin behind a gateway in process, shared with the gateway's own benches.
#[path = "../../host/benches/common/evotor.rs"]
mod evotor;

use evotor::{STORE, barcode, call, json_body, product, quantiles};
use serde_json::Value;
use std::time::Instant;

const PRODUCTS: u32 = 100_000;
const BATCH: u32 = 10_000;
const PAGE_SAMPLES: usize = 200;
const LOOKUP_SAMPLES: usize = 2000;
const WHOLE_SAMPLES: usize = 5;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let data = tempfile::tempdir()?;
        let (_app, _addr, mut sender, token) = evotor::single_node(data.path()).await?;

        println!("catalog of {PRODUCTS} products on redb, through the gateway and evotor_partner.wasm");
        let mut upserts = Vec::new();
        for batch in 0..PRODUCTS / BATCH {
            let items: Vec<Value> = (batch * BATCH..(batch + 1) * BATCH).map(product).collect();
            let body = Value::from(items);
            let started = Instant::now();
            call(&mut sender, "PUT", &format!("/partner/v1/stores/{STORE}/products"), "partner", json_body(&body))
                .await?;
            upserts.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let worst = upserts.iter().copied().fold(0.0, f64::max);
        println!(
            "bulk upsert of {BATCH}: first {:.0} ms, last {:.0} ms, worst {worst:.0} ms",
            upserts[0],
            upserts[upserts.len() - 1]
        );

        let page = |n: u32| format!("/api/v1/inventories/stores/{STORE}/products?page={n}&size=1000");
        let first = call(&mut sender, "GET", &page(0), &token, bytes::Bytes::new()).await?;
        let last = call(&mut sender, "GET", &page(99), &token, bytes::Bytes::new()).await?;
        let count =
            |body: &bytes::Bytes| serde_json::from_slice::<Vec<Value>>(body).map(|items| items.len()).unwrap_or(0);
        anyhow::ensure!(count(&first) == 1000 && count(&last) == 1000, "pages are full");
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        for _ in 0..PAGE_SAMPLES {
            for (n, samples) in [(0, &mut head), (99, &mut tail)] {
                let started = Instant::now();
                call(&mut sender, "GET", &page(n), &token, bytes::Bytes::new()).await?;
                samples.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        let ((head50, head99), (tail50, tail99)) = (quantiles(head), quantiles(tail));
        println!("page=0&size=1000   p50 {head50:6.2} ms  p99 {head99:6.2} ms  (n={PAGE_SAMPLES})");
        println!("page=99&size=1000  p50 {tail50:6.2} ms  p99 {tail99:6.2} ms  (n={PAGE_SAMPLES})");
        println!("page 99 / page 0: p50 {:.2}, p99 {:.2}", tail50 / head50, tail99 / head99);

        // Unpaged: the whole catalog in one answer, against the 100 pages that make it up.
        let whole = format!("/api/v1/inventories/stores/{STORE}/products");
        let (mut unpaged, mut paged) = (Vec::new(), Vec::new());
        for _ in 0..WHOLE_SAMPLES {
            let started = Instant::now();
            let body = call(&mut sender, "GET", &whole, &token, bytes::Bytes::new()).await?;
            unpaged.push(started.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(count(&body) == PRODUCTS as usize, "the whole catalog, unpaged");
            let started = Instant::now();
            for n in 0..PRODUCTS / 1000 {
                call(&mut sender, "GET", &page(n), &token, bytes::Bytes::new()).await?;
            }
            paged.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let ((whole50, _), (pages50, _)) = (quantiles(unpaged), quantiles(paged));
        println!(
            "unpaged, {PRODUCTS} items p50 {whole50:6.0} ms  (100 pages of 1000: p50 {pages50:.0} ms; {:.2} of it; \
             peak plugin memory {:.1} MiB)",
            whole50 / pages50,
            evogate::sandbox::peak_instance_memory() as f64 / 1048576.0
        );

        let mut lookups = Vec::new();
        for i in 0..LOOKUP_SAMPLES as u32 {
            let n = i.wrapping_mul(7919) % PRODUCTS;
            let started = Instant::now();
            let found = call(
                &mut sender,
                "GET",
                &format!("/api/v1/commodities?scanCode={}", barcode(n)),
                &token,
                bytes::Bytes::new(),
            )
            .await?;
            lookups.push(started.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(serde_json::from_slice::<Value>(&found)?["name"] == format!("Product number {n}"));
        }
        let (look50, look99) = quantiles(lookups);
        println!("barcode lookup     p50 {look50:6.2} ms  p99 {look99:6.2} ms  (n={LOOKUP_SAMPLES})");
        Ok(())
    })
}
