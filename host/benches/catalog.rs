//! The catalog at scale behind the real gateway on redb: a store of
//! 100,000 products loaded by ten partner bulk upserts of 10,000, then
//! Evotor's `page=0&size=1000` against `page=99&size=1000` (interleaved, so
//! both see the same machine), and barcode lookups.
//!
//! Run with `cargo xtask bench` or `cargo bench -p evogate --bench catalog`.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::net::TcpStream;

const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const USER: &str = "01-000000000000001";
const PRODUCTS: u32 = 100_000;
const BATCH: u32 = 10_000;
const PAGE_SAMPLES: usize = 200;
const LOOKUP_SAMPLES: usize = 2000;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn call(
    sender: &mut Sender,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> anyhow::Result<Bytes> {
    sender.ready().await?;
    let bytes = body.map(|body| Bytes::from(body.to_string())).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(bytes))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{method} {path}: {status} {}", String::from_utf8_lossy(&body));
    Ok(body)
}

fn uuid(n: u32) -> String {
    let mixed = n.wrapping_mul(2_654_435_761);
    format!("{mixed:08x}-0000-4000-8000-{n:012x}")
}

fn barcode(n: u32) -> String {
    format!("46{n:011}")
}

fn product(n: u32) -> Value {
    json!({"uuid": uuid(n), "group": false, "name": format!("Product number {n}"), "type": "NORMAL",
           "allowToSell": true, "measureName": "шт", "price": 99.9, "costPrice": 50, "quantity": 12.5,
           "tax": "VAT_20", "code": format!("{}", n % 1_000_000), "articleNumber": format!("A-{n}"),
           "barCodes": [barcode(n)], "parentUuid": null, "description": "A product of the benchmark"})
}

fn quantiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm_path = root.join(evogate::config::DEFAULT_PLUGIN_WASM);
    anyhow::ensure!(wasm_path.is_file(), "{} is missing: run `cargo xtask bench`", wasm_path.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let data = tempfile::tempdir()?;
        let mut config = evogate::config::Config::default();
        config.store.backend = evogate::kv::BackendKind::Redb;
        config.data_dir = figment::value::magic::RelativePathBuf::from(data.path().to_owned());
        config.plugins[0].wasm = figment::value::magic::RelativePathBuf::from(wasm_path.clone());
        for (key, value) in [("server_bearer_token", "srv"), ("partner_api_token", "partner")] {
            config.plugins[0].config.insert(key.into(), value.into());
        }
        let app = evogate::start(&config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(evogate::server::serve(
            listener,
            app.gateway.clone(),
            std::future::pending(),
            evogate::server::ServeOptions::default(),
        ));
        let mut sender = connect(addr).await?;

        let created = call(
            &mut sender,
            "POST",
            "/api/v1/user/create",
            "srv",
            Some(&json!({"userId": USER, "username": "bench", "password": "bench-password"})),
        )
        .await?;
        let token = serde_json::from_slice::<Value>(&created)?["token"].as_str().unwrap_or_default().to_owned();
        // A long trial: every call below passes the billing guard as a paying user's would.
        let trial = json!({"subscriptionId": "6e3f7a52-0000-4000-8000-000000000001", "productId": "bench",
            "userId": USER, "timestamp": "2026-01-01T00:00:00.000+0000", "sequenceNumber": 1,
            "type": "SubscriptionCreated", "planId": "basic", "trialPeriodDuration": "P3650DT", "deviceNumber": 1});
        call(&mut sender, "POST", "/api/v1/subscription/event", "srv", Some(&trial)).await?;

        println!("catalog of {PRODUCTS} products on redb, through the gateway and evotor_partner.wasm");
        let mut upserts = Vec::new();
        for batch in 0..PRODUCTS / BATCH {
            let items: Vec<Value> = (batch * BATCH..(batch + 1) * BATCH).map(product).collect();
            let body = Value::from(items);
            let started = Instant::now();
            call(&mut sender, "PUT", &format!("/partner/v1/stores/{STORE}/products"), "partner", Some(&body)).await?;
            upserts.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let worst = upserts.iter().copied().fold(0.0, f64::max);
        println!(
            "bulk upsert of {BATCH}: first {:.0} ms, last {:.0} ms, worst {worst:.0} ms",
            upserts[0],
            upserts[upserts.len() - 1]
        );

        let page = |n: u32| format!("/api/v1/inventories/stores/{STORE}/products?page={n}&size=1000");
        let first = call(&mut sender, "GET", &page(0), &token, None).await?;
        let last = call(&mut sender, "GET", &page(99), &token, None).await?;
        let count = |body: &Bytes| serde_json::from_slice::<Vec<Value>>(body).map(|items| items.len()).unwrap_or(0);
        anyhow::ensure!(count(&first) == 1000 && count(&last) == 1000, "pages are full");
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        for _ in 0..PAGE_SAMPLES {
            for (n, samples) in [(0, &mut head), (99, &mut tail)] {
                let started = Instant::now();
                call(&mut sender, "GET", &page(n), &token, None).await?;
                samples.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        let ((head50, head99), (tail50, tail99)) = (quantiles(head), quantiles(tail));
        println!("page=0&size=1000   p50 {head50:6.2} ms  p99 {head99:6.2} ms  (n={PAGE_SAMPLES})");
        println!("page=99&size=1000  p50 {tail50:6.2} ms  p99 {tail99:6.2} ms  (n={PAGE_SAMPLES})");
        println!("page 99 / page 0: p50 {:.2}, p99 {:.2}", tail50 / head50, tail99 / head99);

        let mut lookups = Vec::new();
        for i in 0..LOOKUP_SAMPLES as u32 {
            let n = i.wrapping_mul(7919) % PRODUCTS;
            let started = Instant::now();
            let found =
                call(&mut sender, "GET", &format!("/api/v1/commodities?scanCode={}", barcode(n)), &token, None).await?;
            lookups.push(started.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(serde_json::from_slice::<Value>(&found)?["name"] == format!("Product number {n}"));
        }
        let (look50, look99) = quantiles(lookups);
        println!("barcode lookup     p50 {look50:6.2} ms  p99 {look99:6.2} ms  (n={LOOKUP_SAMPLES})");
        Ok(())
    })
}
