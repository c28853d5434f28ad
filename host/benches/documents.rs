//! Document ingestion and the change feed behind the real gateway on redb:
//! SELL documents shaped like `pos-docs/02-SELL.json` in batches of 100
//! from 8 concurrent terminals (every `200` is fsynced), then the whole
//! feed read back 1000 entries a page. The baseline of the same run is the
//! floor set by storage alone: the same commits (each document, its two
//! index entries and its feed entry, 100 documents a commit) straight into
//! a redb store from 8 threads, no HTTP, no plugin.
//!
//! Run with `cargo xtask bench` or `cargo bench -p evogate --bench documents`.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
const DEVICE: &str = "5a188de4-49b8-4cb4-800e-eb6b5202437e";
const USER: &str = "01-000000000000001";
const BATCH: usize = 100;
const TERMINALS: usize = 8;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn call(sender: &mut Sender, method: &str, path: &str, token: &str, body: Bytes) -> anyhow::Result<Bytes> {
    sender.ready().await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{method} {path}: {status} {}", String::from_utf8_lossy(&body));
    Ok(body)
}

fn json_body(value: &Value) -> Bytes {
    Bytes::from(value.to_string())
}

/// Batch `n` of terminal `terminal`: fresh document uuids, the rest as the real SELL.
fn batch(sell: &Value, terminal: usize, n: usize) -> Bytes {
    let docs: Vec<Value> = (0..BATCH)
        .map(|i| {
            let mut doc = sell.clone();
            doc["uuid"] = json!(format!("{terminal:08x}-{:04x}-4000-8000-{:012x}", n % 0xffff, n * BATCH + i));
            doc
        })
        .collect();
    json_body(&Value::from(docs))
}

/// Documents per second that redb itself takes in commits shaped like the plugin's.
fn storage_floor(sell: &Value, seconds: u64) -> anyhow::Result<f64> {
    use evogate::kv::{Namespace, RedbBackend, Write};
    let dir = tempfile::tempdir()?;
    let store = Namespace::new(std::sync::Arc::new(RedbBackend::open(&dir.path().join("floor.redb"))?), "bench");
    let document = sell.to_string().into_bytes();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let total: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..TERMINALS)
            .map(|terminal| {
                let (store, document) = (&store, &document);
                scope.spawn(move || {
                    let mut sent = 0usize;
                    while Instant::now() < deadline {
                        let mut writes = Vec::with_capacity(BATCH * 4);
                        for i in 0..BATCH {
                            let id = format!("{terminal:08x}-{sent:08x}-{i:04x}");
                            writes.push(Write::Set(format!("docs/s/doc/{id}"), document.clone()));
                            writes.push(Write::Set(format!("docs/s/by-date/1473777129000.{id}"), b"{}".to_vec()));
                            writes.push(Write::Set(format!("docs/s/by-type/SELL/1473777129000.{id}"), b"{}".to_vec()));
                            writes.push(Write::Set(format!("feed/{id}"), b"{\"kind\":\"document.received\"}".to_vec()));
                        }
                        if store.commit(&[], &writes).is_err() {
                            break;
                        }
                        sent += 1;
                    }
                    sent * BATCH
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap_or(0)).sum()
    });
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm_path = root.join(evogate::config::DEFAULT_PLUGIN_WASM);
    anyhow::ensure!(wasm_path.is_file(), "{} is missing: run `cargo xtask bench`", wasm_path.display());
    let sell: Value = serde_json::from_str(include_str!("sell.json"))?;
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
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
            json_body(&json!({"userId": USER, "username": "bench", "password": "bench-password"})),
        )
        .await?;
        let token = serde_json::from_slice::<Value>(&created)?["token"].as_str().unwrap_or_default().to_owned();
        // A long trial and a licensed terminal: every batch passes the billing and device guards.
        let trial = json!({"subscriptionId": "6e3f7a52-0000-4000-8000-000000000001", "productId": "bench",
            "userId": USER, "timestamp": "2026-01-01T00:00:00.000+0000", "sequenceNumber": 1,
            "type": "SubscriptionCreated", "planId": "basic", "trialPeriodDuration": "P3650DT", "deviceNumber": 1});
        call(&mut sender, "POST", "/api/v1/subscription/event", "srv", json_body(&trial)).await?;
        let device = json!([{"uuid": DEVICE, "name": "Till"}]);
        call(&mut sender, "PUT", "/api/v1/inventories/devices", &token, json_body(&device)).await?;

        let baseline = storage_floor(&sell, seconds)?;

        let path = format!("/api/v1/inventories/stores/{STORE}/documents");
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let mut terminals = Vec::new();
        for terminal in 0..TERMINALS {
            let (mut sender, token, path, sell) = (connect(addr).await?, token.clone(), path.clone(), sell.clone());
            terminals.push(tokio::spawn(async move {
                let mut sent = 0usize;
                while Instant::now() < deadline {
                    let reply = call(&mut sender, "PUT", &path, &token, batch(&sell, terminal, sent)).await?;
                    let accepted = serde_json::from_slice::<Value>(&reply)?["accepted"].as_u64().unwrap_or(0);
                    anyhow::ensure!(accepted == BATCH as u64, "a batch was not stored whole: {accepted}");
                    sent += 1;
                }
                Ok::<usize, anyhow::Error>(sent)
            }));
        }
        let mut batches = 0;
        for terminal in terminals {
            batches += terminal.await??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let documents = batches * BATCH;
        let rate = documents as f64 / elapsed;

        let mut entries = 0usize;
        let mut after: Option<String> = None;
        let read_started = Instant::now();
        loop {
            let cursor = after.as_ref().map(|after| format!("&after={after}")).unwrap_or_default();
            let page =
                call(&mut sender, "GET", &format!("/partner/v1/feed?limit=1000{cursor}"), "partner", Bytes::new())
                    .await?;
            let page: Value = serde_json::from_slice(&page)?;
            let items = page["items"].as_array().map(Vec::len).unwrap_or(0);
            if items == 0 {
                break;
            }
            entries += items;
            after = page["next"].as_str().map(str::to_owned);
        }
        let feed_rate = entries as f64 / read_started.elapsed().as_secs_f64();
        anyhow::ensure!(entries >= documents, "every document is in the feed");

        println!("documents into redb through the gateway, {TERMINALS} terminals, batches of {BATCH}, {seconds} s");
        println!("  redb alone (baseline)     {baseline:9.0} documents/s");
        println!(
            "  through the gateway       {rate:9.0} documents/s  ({batches} batches; {:.2} of the baseline)",
            rate / baseline
        );
        println!("  feed read, 1000 a page   {feed_rate:9.0} entries/s  ({entries} entries)");
        Ok(())
    })
}
