//! A store that stops growing: the Evotor plugin behind the real gateway,
//! `retention_days = 2`, receives the same every day — 1 KB documents, 100 a
//! request, one in ten without its terminal (a data issue each), and events one
//! a request — while plugins' clock is moved a day
//! (and a minute) ahead after each, so days pass in seconds. The store's size on disk after
//! each day (the redb file's blocks; evogate's PostgreSQL relations with
//! their indexes, after a `VACUUM` such as autovacuum runs over a day) grows
//! while the first days are within retention, then holds: what a day brings,
//! the erasure of the day past retention frees, and later writes reuse.
//!
//! Run with `cargo bench -p evogate-e2e --features fault-injection --bench plateau`
//! after `cargo xtask build` (the test build of the gateway: only it lets the clock
//! move). `BENCH_DAYS` (default 12), `BENCH_DOCUMENTS` a day (default 2,000) and
//! `BENCH_EVENTS` a day (default 200) change the load; `EVOGATE_TEST_POSTGRES_URL`
//! adds the PostgreSQL half; `BENCH_FAMILIES=1` shows each day's records by key family.

#[path = "../../host/benches/common/evotor.rs"]
mod evotor;

use evotor::{DEVICE, STORE, USER, call, json_body, padded};
use serde_json::{Value, json};

/// How far plugins' clock moves after each day: a day, and a minute more.
/// A bench day lasts a second or two, and `retention_days` counts whole
/// seconds: without the minute, the documents of the day just past their
/// time may still be a second short of it when the first delivery comes.
const DAY: u64 = 86_400 + 60;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

/// A 1 KB document of day `day`, number `n`, closed at `at_ms`; one in ten
/// names no terminal, a doubtful record the plugin keeps with a data issue.
fn document(day: usize, n: usize, at_ms: i64) -> Value {
    let mut record = json!({"id": format!("0d0c0000-{day:04x}-4000-8000-{n:012x}"), "store_id": STORE,
        "device_id": DEVICE, "type": "SELL", "close_date": at_ms, "user_id": USER, "version": "V2",
        "body": {"result_sum": 100, "positions": [{"name": "Tea", "price": 100, "quantity": 1}]}});
    if n % 10 == 9
        && let Some(fields) = record.as_object_mut()
    {
        fields.remove("device_id");
    }
    padded(record, 1024)
}

/// What the store holds after each day: bytes on disk and records.
async fn run(
    days: usize,
    documents: usize,
    events: usize,
    retention: bool,
    postgres: Option<&str>,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let data = tempfile::tempdir()?;
    let mut config = evotor::config(data.path())?;
    let settings = &mut config.plugins[0].config;
    settings.insert("events_webhook_allow_unsigned".into(), "true".into());
    if retention {
        settings.insert("retention_days".into(), "2".into());
    }
    if let Some(url) = postgres {
        evotor::on_postgres(&mut config, url)?;
    }
    let (running, addr) = evotor::serve(&config).await?;
    let running = std::sync::Arc::new(running);
    let mut client = evotor::connect(addr).await?;
    let token = evotor::entitled_user(&mut client).await?;
    let mut sizes = Vec::new();
    for day in 0..days {
        let now_ms = i64::try_from(evogate::plugin_now().as_millis())?;
        let path = format!("/api/v1/inventories/stores/{STORE}/documents");
        for from in (0..documents).step_by(100) {
            let batch: Vec<Value> = (from..(from + 100).min(documents)).map(|n| document(day, n, now_ms)).collect();
            call(&mut client, "PUT", &path, &token, json_body(&Value::Array(batch))).await?;
        }
        for n in 0..events {
            let event = json!({"id": format!("ev-{day}-{n}"), "type": "StoreEvent", "action": "updated",
                "timestamp": now_ms, "payload": {"id": STORE, "user_id": USER, "name": format!("Shop {day}")}});
            call(&mut client, "POST", "/events", &token, json_body(&event)).await?;
        }
        if let Some(url) = postgres {
            vacuum(url, &config.store.schema).await?;
        }
        let measured = running.clone();
        sizes.push(
            tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64)> {
                let mut records = 0;
                let mut families = std::collections::BTreeMap::<String, u64>::new();
                measured.store_records(|_, key, _| {
                    records += 1;
                    *families.entry(evotor::family(key)).or_default() += 1;
                })?;
                if std::env::var_os("BENCH_FAMILIES").is_some() {
                    eprintln!("      {families:?}");
                }
                Ok((measured.store_bytes()?.unwrap_or(0), records))
            })
            .await??,
        );
        evogate::advance_plugin_clock(DAY);
    }
    if let Some(url) = postgres {
        evotor::drop_schema(url, &config.store.schema).await;
    }
    Ok(sizes)
}

/// What autovacuum does to evogate's table over a day: its dead rows' space made reusable.
async fn vacuum(url: &str, schema: &str) -> anyhow::Result<()> {
    evotor::postgres_client(url).await?.batch_execute(&format!("VACUUM \"{schema}\".evogate_kv")).await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let (days, documents, events) = (env("BENCH_DAYS", 12), env("BENCH_DOCUMENTS", 2_000), env("BENCH_EVENTS", 200));
    let postgres = std::env::var("EVOGATE_TEST_POSTGRES_URL").ok().filter(|url| !url.is_empty());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        println!(
            "plateau: retention_days = 2, each day {documents} documents of 1 KB and {events} events, {days} days"
        );
        // The baseline: the same days on redb without retention_days.
        let mut backends = vec![("redb", true, None), ("redb without retention_days (the baseline)", false, None)];
        match &postgres {
            Some(url) => backends.push(("PostgreSQL", true, Some(url.as_str()))),
            None => println!("  (PostgreSQL: skipped, EVOGATE_TEST_POSTGRES_URL is not set)"),
        }
        for (backend, retention, url) in backends {
            let sizes = run(days, documents, events, retention, url).await?;
            println!("  {backend}:");
            println!("    {:>4} {:>10} {:>12}", "day", "records", "on disk");
            for (day, (bytes, records)) in sizes.iter().enumerate() {
                println!("    {:>4} {:>10} {:>9.2} MB", day + 1, records, *bytes as f64 / 1e6);
            }
            // The last third of the days against the third before it.
            let third = days / 3;
            if third > 0 {
                let mean =
                    |days: &[(u64, u64)]| days.iter().map(|(bytes, _)| *bytes as f64).sum::<f64>() / days.len() as f64;
                let last = mean(&sizes[days - third..]);
                let before = mean(&sizes[days - 2 * third..days - third]);
                println!("    the last {third} days / the {third} before: {:.2}", last / before);
            }
        }
        anyhow::Ok(())
    })
}
