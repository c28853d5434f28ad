//! Document ingestion and the change feed behind the real gateway on redb:
//! SELL documents shaped like `pos-docs/02-SELL.json` in batches of 100
//! from 8 concurrent terminals (every `200` is fsynced), then the whole
//! feed read back 1000 entries a page. The baseline of the same run is the
//! floor set by storage alone: the same commits (each document and its
//! index entry, 100 documents and one feed record a commit) straight into
//! a redb store from 8 threads, no HTTP, no plugin. Then commits shaped like
//! an event's, one a request as Evotor sends them (its log and feed records
//! appended, its product and idempotency marker under keys in no order),
//! from 8 threads into a store of their own.
//!
//! Run with `cargo xtask bench` or `cargo bench -p evogate-e2e --bench documents`.

// The Evotor plugin behind a gateway in process, shared with the gateway's own benches.
#[path = "../../host/benches/common/evotor.rs"]
mod evotor;

use evotor::{STORE, call, sell_batch};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const BATCH: usize = 100;
const TERMINALS: usize = 8;

/// Commits a second that a fresh redb store takes from [`TERMINALS`] threads
/// for `seconds`, each thread committing what `commit(thread, n)` makes for
/// its `n`-th commit.
fn commits_a_second(
    seconds: u64,
    commit: impl Fn(usize, usize) -> Vec<evogate::kv::Write> + Sync,
) -> anyhow::Result<f64> {
    use evogate::kv::{Namespace, RedbBackend};
    let dir = tempfile::tempdir()?;
    let store = Namespace::new(std::sync::Arc::new(RedbBackend::open(&dir.path().join("floor.redb"))?), "bench");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let total: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..TERMINALS)
            .map(|thread| {
                let (store, commit) = (&store, &commit);
                scope.spawn(move || {
                    let mut sent = 0usize;
                    while Instant::now() < deadline {
                        if store.commit(&[], &commit(thread, sent)).is_err() {
                            break;
                        }
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap_or(0)).sum()
    });
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Documents per second that redb itself takes in commits shaped like the plugin's.
fn storage_floor(sell: &Value, seconds: u64) -> anyhow::Result<f64> {
    use evogate::kv::Write;
    let document = sell.to_string().into_bytes();
    let commits = commits_a_second(seconds, |terminal, sent| {
        let mut writes = Vec::with_capacity(BATCH * 2 + 1);
        let mut feed = Vec::with_capacity(BATCH);
        for i in 0..BATCH {
            let id = format!("{terminal:08x}-{sent:08x}-{i:04x}");
            writes.push(Write::Set(format!("docs/s/doc/{id}"), document.clone()));
            let entry = b"{\"v\":1,\"type\":\"SELL\"}".to_vec();
            writes.push(Write::Set(format!("docs/s/by-date/1473777129000.{id}"), entry));
            feed.push(json!({"kind": "document.received", "data": {"id": id}}));
        }
        let record = json!({"v": 1, "entries": feed}).to_string().into_bytes();
        writes.push(Write::SetStamped("feed/".into(), record));
        writes
    })?;
    Ok(commits * BATCH as f64)
}

/// Commits a second that redb takes in commits shaped like an event's.
fn event_commits(seconds: u64) -> anyhow::Result<f64> {
    use evogate::kv::Write;
    commits_a_second(seconds, |source, sent| {
        // A uuid's worth of scattered hex, as event and product ids come.
        let id = format!(
            "{:032x}",
            ((source as u128) << 64 | sent as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        );
        let product = json!({"id": id, "name": format!("product {id}"), "price": sent, "code": &id[..12]});
        let event = json!({"id": id, "type": "ProductUpdated", "data": product, "padding": id.repeat(16)});
        let feed = json!({"v": 1, "entries": [{"kind": "product.updated", "data": {"id": id}}]});
        vec![
            Write::Set(format!("events/seen/{id}"), b"{}".to_vec()),
            Write::SetStamped("events/log/".into(), event.to_string().into_bytes()),
            Write::Set(format!("cat/s/p/{id}"), product.to_string().into_bytes()),
            Write::SetStamped("feed/".into(), feed.to_string().into_bytes()),
        ]
    })
}

/// Batches the 8 terminals delivered in `seconds`, and documents a second.
async fn ingest(addr: SocketAddr, token: &str, sell: &Value, seconds: u64) -> anyhow::Result<(usize, f64)> {
    let path = format!("/api/v1/inventories/stores/{STORE}/documents");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut terminals = Vec::new();
    for terminal in 0..TERMINALS {
        let (mut sender, token, path, sell) =
            (evotor::connect(addr).await?, token.to_owned(), path.clone(), sell.clone());
        terminals.push(tokio::spawn(async move {
            let mut sent = 0usize;
            while Instant::now() < deadline {
                let reply = call(&mut sender, "PUT", &path, &token, sell_batch(&sell, terminal, sent, BATCH)).await?;
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
    Ok((batches, (batches * BATCH) as f64 / started.elapsed().as_secs_f64()))
}

/// Documents a second the partner's listing reads back, 100 a page; how many it read.
async fn read_back(addr: SocketAddr) -> anyhow::Result<(usize, f64)> {
    let mut sender = evotor::connect(addr).await?;
    let (mut read, mut after) = (0usize, None::<String>);
    let started = Instant::now();
    loop {
        let cursor = after.as_ref().map(|after| format!("&after={after}")).unwrap_or_default();
        let path = format!("/partner/v1/stores/{STORE}/documents?limit=100{cursor}");
        let page: Value =
            serde_json::from_slice(&call(&mut sender, "GET", &path, "partner", bytes::Bytes::new()).await?)?;
        read += page["items"].as_array().map(Vec::len).unwrap_or(0);
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok((read, read as f64 / started.elapsed().as_secs_f64())),
        }
    }
}

/// What compressing values costs: the same deliveries and reads with
/// `store.compression = "none"` and `"zstd"`, each into a fresh gateway,
/// three rounds taking turns at going first; the medians' ratios.
async fn compression_rounds(sell: &Value, seconds: u64) -> anyhow::Result<()> {
    use evogate::kv::Compression;
    let mut rates: [(Vec<f64>, Vec<f64>); 2] = Default::default();
    for round in 0..3 {
        let mut order = [Compression::None, Compression::Zstd];
        if round % 2 == 1 {
            order.reverse();
        }
        for compression in order {
            let data = tempfile::tempdir()?;
            let mut config = evotor::config(data.path())?;
            config.store.compression = compression;
            let (_running, addr) = evotor::serve(&config).await?;
            let token = evotor::entitled_user(&mut evotor::connect(addr).await?).await?;
            let (batches, write) = ingest(addr, &token, sell, seconds).await?;
            let (read, rate) = read_back(addr).await?;
            anyhow::ensure!(read == batches * BATCH, "read back {read} of {} documents", batches * BATCH);
            let side = &mut rates[usize::from(compression == Compression::Zstd)];
            side.0.push(write);
            side.1.push(rate);
        }
    }
    let median = |rates: &[f64]| evotor::quantiles(rates.to_vec()).0;
    let [(plain_write, plain_read), (zstd_write, zstd_read)] = &rates;
    println!("values written as given against zstd-compressed (store.compression), 3 rounds taking turns, medians");
    println!(
        "  delivered                 {:9.0} documents/s as given, {:9.0} compressed ({:.2})",
        median(plain_write),
        median(zstd_write),
        median(zstd_write) / median(plain_write)
    );
    println!(
        "  listed, 100 a page        {:9.0} documents/s as given, {:9.0} compressed ({:.2})",
        median(plain_read),
        median(zstd_read),
        median(zstd_read) / median(plain_read)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let sell: Value = serde_json::from_str(include_str!("sell.json"))?;
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let data = tempfile::tempdir()?;
        let (_app, addr, _sender, token) = evotor::single_node(data.path()).await?;

        let baseline = storage_floor(&sell, seconds)?;
        let events = event_commits(seconds)?;

        let path = format!("/api/v1/inventories/stores/{STORE}/documents");
        let (batches, rate) = ingest(addr, &token, &sell, seconds).await?;
        let documents = batches * BATCH;

        let mut entries = 0usize;
        let mut after: Option<String> = None;
        // The first connection sat idle past the keep-alive limit meanwhile: a fresh one reads.
        let mut sender = evotor::connect(addr).await?;
        let read_started = Instant::now();
        loop {
            let cursor = after.as_ref().map(|after| format!("&after={after}")).unwrap_or_default();
            let page = call(
                &mut sender,
                "GET",
                &format!("/partner/v1/feed?limit=1000{cursor}"),
                "partner",
                bytes::Bytes::new(),
            )
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
        println!("  redb alone, one event a commit {events:9.0} commits/s");
        println!(
            "  through the gateway       {rate:9.0} documents/s  ({batches} batches; {:.2} of the baseline)",
            rate / baseline
        );
        println!("  feed read, 1000 a page   {feed_rate:9.0} entries/s  ({entries} entries)");
        println!(
            "  peak plugin memory        {:9.1} MiB  (batches of {BATCH})",
            evogate::sandbox::peak_instance_memory() as f64 / 1048576.0
        );

        // The largest batch the limits allow: 32 MiB of documents in one request.
        let mut docs = Vec::new();
        let mut size = 2;
        for n in 0usize.. {
            let mut doc = sell.clone();
            doc["uuid"] = Value::from(format!("175d8ae9-79db-4588-a65a-{n:012x}"));
            doc["extras"] = serde_json::json!({"padding": "x".repeat(6000)});
            let len = doc.to_string().len() + 1;
            if size + len > 32 * 1024 * 1024 {
                break;
            }
            size += len;
            docs.push(doc);
        }
        let count = docs.len();
        let body = bytes::Bytes::from(Value::from(docs).to_string());
        let started = Instant::now();
        let reply = call(&mut sender, "PUT", &path, &token, body).await?;
        let accepted = serde_json::from_slice::<Value>(&reply)?["accepted"].as_u64().unwrap_or(0);
        anyhow::ensure!(accepted == count as u64, "the 32 MiB batch was not stored whole: {accepted} of {count}");
        println!(
            "  one 32 MiB batch          {:9.0} ms  ({count} documents; peak plugin memory {:.1} MiB)",
            started.elapsed().as_secs_f64() * 1e3,
            evogate::sandbox::peak_instance_memory() as f64 / 1048576.0
        );
        compression_rounds(&sell, seconds).await
    })
}
