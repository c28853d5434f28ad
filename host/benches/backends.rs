//! The stores side by side: document ingestion and catalog page reads on
//! redb (one node) and on PostgreSQL (one node, and three nodes sharing one
//! database), in one run. Each setup gets the same load: 8 terminals
//! putting SELL documents in batches of 100, then 8 readers paging a
//! 20,000-product catalog 100 at a time, spread over the setup's nodes.
//! Conflicts (commits retried because another commit changed what they
//! read) are counted from the gateway's own metric.
//!
//! Needs `EVOGATE_TEST_POSTGRES_URL` for the PostgreSQL rows (a schema of
//! its own is created and dropped). Run with
//! `cargo bench -p evogate --bench backends`.

#[path = "common/evotor.rs"]
mod evotor;

use evotor::{STORE, call, json_body, product, sell_batch};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const BATCH: usize = 100;
const CLIENTS: usize = 8;
const PRODUCTS: u32 = 20_000;

struct Row {
    setup: String,
    documents_per_second: f64,
    conflicts_per_batch: f64,
    pages_per_second: f64,
    /// CPU time per catalog page: this process's (gateway and load
    /// generator), and PostgreSQL's processes' on this machine.
    page_cpu: Option<(Duration, Duration)>,
}

/// CPU time used so far by this process and by the processes named
/// `postgres` (the server's backends and its background workers), read
/// from Linux's `/proc`; `None` elsewhere.
fn cpu_times() -> Option<(Duration, Duration)> {
    // Fields 14 and 15 of `/proc/PID/stat` (after the parenthesised name):
    // user and system time in USER_HZ ticks, 100 a second on Linux.
    fn ticks(stat: &str) -> Option<u64> {
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }
    let to_time = |ticks: u64| Duration::from_millis(ticks * 10);
    let own = ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let mut postgres = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let dir = entry.path();
        if std::fs::read_to_string(dir.join("comm")).is_ok_and(|comm| comm.trim_end() == "postgres") {
            postgres += std::fs::read_to_string(dir.join("stat")).ok().as_deref().and_then(ticks).unwrap_or(0);
        }
    }
    Some((to_time(own), to_time(postgres)))
}

fn conflicts(metrics: &metrics_exporter_prometheus::PrometheusHandle) -> f64 {
    metrics
        .render()
        .lines()
        .find(|line| line.starts_with("evogate_kv_conflicts_total"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

async fn measure(
    setup: &str,
    nodes: &[SocketAddr],
    seconds: u64,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<Row> {
    let sell: Value = serde_json::from_str(include_str!("../../tests/benches/sell.json"))?;
    let mut first = evotor::connect(nodes[0]).await?;
    let token = evotor::entitled_user(&mut first).await?;
    let path = format!("/api/v1/inventories/stores/{STORE}/documents");

    let conflicts_before = conflicts(metrics);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut terminals = Vec::new();
    for terminal in 0..CLIENTS {
        let mut client = evotor::connect(nodes[terminal % nodes.len()]).await?;
        let (token, path, sell) = (token.clone(), path.clone(), sell.clone());
        terminals.push(tokio::spawn(async move {
            let mut sent = 0usize;
            while Instant::now() < deadline {
                call(&mut client, "PUT", &path, &token, sell_batch(&sell, terminal, sent, BATCH)).await?;
                sent += 1;
            }
            Ok::<usize, anyhow::Error>(sent)
        }));
    }
    let mut batches = 0;
    for terminal in terminals {
        batches += terminal.await??;
    }
    let documents_per_second = (batches * BATCH) as f64 / started.elapsed().as_secs_f64();
    let conflicts_per_batch = (conflicts(metrics) - conflicts_before) / batches.max(1) as f64;

    for batch in 0..PRODUCTS / 10_000 {
        let items: Vec<Value> = (batch * 10_000..(batch + 1) * 10_000).map(product).collect();
        call(
            &mut first,
            "PUT",
            &format!("/partner/v1/stores/{STORE}/products"),
            "partner",
            json_body(&Value::from(items)),
        )
        .await?;
    }
    let cpu_before = cpu_times();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut readers = Vec::new();
    for reader in 0..CLIENTS {
        let mut client = evotor::connect(nodes[reader % nodes.len()]).await?;
        let token = token.clone();
        readers.push(tokio::spawn(async move {
            let mut read = 0usize;
            while Instant::now() < deadline {
                let page = (read * 37 + reader * 11) % (PRODUCTS as usize / 100);
                let path = format!("/api/v1/inventories/stores/{STORE}/products?page={page}&size=100");
                call(&mut client, "GET", &path, &token, bytes::Bytes::new()).await?;
                read += 1;
            }
            Ok::<usize, anyhow::Error>(read)
        }));
    }
    let mut pages = 0;
    for reader in readers {
        pages += reader.await??;
    }
    let pages_per_second = pages as f64 / started.elapsed().as_secs_f64();
    let page_cpu = cpu_before.zip(cpu_times()).map(|((own, postgres), (own_after, postgres_after))| {
        let per_page = |time: Duration| time / u32::try_from(pages.max(1)).unwrap_or(u32::MAX);
        (per_page(own_after.saturating_sub(own)), per_page(postgres_after.saturating_sub(postgres)))
    });
    Ok(Row { setup: setup.into(), documents_per_second, conflicts_per_batch, pages_per_second, page_cpu })
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut rows = Vec::new();
        let redb_dir = tempfile::tempdir()?;
        let (redb, addr) = evotor::serve(&evotor::config(redb_dir.path())?).await?;
        rows.push(measure("redb, 1 node", &[addr], seconds, &metrics).await?);
        drop(redb);

        match std::env::var("EVOGATE_TEST_POSTGRES_URL").ok().filter(|url| !url.is_empty()) {
            None => println!("(PostgreSQL rows skipped: set EVOGATE_TEST_POSTGRES_URL=postgres://… to include them)"),
            Some(url) => {
                for nodes in [1usize, 3] {
                    let schema = format!("evogate_bench_{}_{nodes}", std::process::id());
                    let mut apps = Vec::new();
                    let mut addrs = Vec::new();
                    let dirs: Vec<_> = (0..nodes).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
                    for dir in &dirs {
                        let mut config = evotor::config(dir.path())?;
                        config.store.backend = evogate::kv::BackendKind::Postgres;
                        config.store.url = Some(url.clone());
                        config.store.schema = schema.clone();
                        let (app, addr) = evotor::serve(&config).await?;
                        apps.push(app);
                        addrs.push(addr);
                    }
                    let setup = format!("postgres, {nodes} node{}", if nodes > 1 { "s" } else { "" });
                    let row = measure(&setup, &addrs, seconds, &metrics).await;
                    let options = evotor::config(dirs[0].path())
                        .map(|mut config| {
                            config.store.url = Some(url.clone());
                            config.store.schema = schema.clone();
                            config.store
                        })?
                        .postgres_options()?;
                    let cleanup = tokio::task::spawn_blocking(move || {
                        evogate::kv::PostgresBackend::open(&options).map(|backend| backend.destroy())
                    });
                    drop(apps);
                    let _ = cleanup.await;
                    rows.push(row?);
                }
            }
        }

        println!("{CLIENTS} clients per phase, {seconds} s each; documents in batches of {BATCH}, pages of 100");
        println!("{:<20} {:>14} {:>18} {:>12} {:>14}", "setup", "documents/s", "conflicts/batch", "pages/s", "vs redb");
        let base = (rows[0].documents_per_second, rows[0].pages_per_second);
        for row in &rows {
            println!(
                "{:<20} {:>14.0} {:>18.2} {:>12.0} {:>6.2} / {:.2}",
                row.setup,
                row.documents_per_second,
                row.conflicts_per_batch,
                row.pages_per_second,
                row.documents_per_second / base.0,
                row.pages_per_second / base.1
            );
        }
        if rows.iter().all(|row| row.page_cpu.is_some()) {
            println!("CPU time per catalog page (from /proc; the machine has {} cores):", num_cpus());
            println!("{:<20} {:>22} {:>14} {:>10}", "setup", "gateway + load (µs)", "postgres (µs)", "total");
            for row in &rows {
                let (own, postgres) = row.page_cpu.unwrap_or_default();
                let micros = |time: Duration| time.as_secs_f64() * 1e6;
                println!(
                    "{:<20} {:>22.0} {:>14.0} {:>10.0}",
                    row.setup,
                    micros(own),
                    micros(postgres),
                    micros(own + postgres)
                );
            }
        }
        Ok(())
    })
}
