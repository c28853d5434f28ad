//! What the store keeps per byte delivered: the Evotor plugin behind the
//! real gateway takes deliveries of each kind — 1 KB documents, receipts,
//! products and events, and records of a few bytes — into a fresh store,
//! and the store's size on disk grows by so much: the redb file, and on
//! PostgreSQL (when `EVOGATE_TEST_POSTGRES_URL` names a database) evogate's
//! relations with their indexes. The baseline of each row is the bytes
//! delivered in the same run (the request bodies, as sent). The 1 KB records are
//! well-formed (uuids where Evotor sends uuids, products with their fields; the doubtful
//! ones are the tiny rows), filled up with pseudo-random hex (as ids, codes and sums are
//! in real ones), not a repeated letter that any compression would take away. Their
//! uuids come in no order, as the random uuids terminals make (keys in ascending order
//! would fill the store's pages better than real ones do); dates and stamps ascend, as
//! they do.
//!
//! Each row is measured twice in the same run, into a fresh store each time, the two
//! taking turns at going first: with values written as given (`store.compression =
//! "none"`) and zstd-compressed (the default). What compression costs in time is the
//! documents bench's to measure (`cargo bench -p evogate-e2e --bench documents`).
//!
//! On redb, each compressed row is then measured again after `evogate store compact`
//! (on a copy of the file taken while the gateway is idle), which rewrites every table
//! with its leaves packed full.
//!
//! Under each row, where the bytes went: the store's records grouped by key family (ids
//! replaced by `*`), with their count and the bytes of their keys and values, so a cut
//! can be aimed at what takes the most.
//!
//! Run with `cargo bench -p evogate-e2e --bench storage` after `cargo xtask build`;
//! `BENCH_RECORDS=N` sets the records of each 1 KB row (default 10,000: redb grows its
//! file by whole regions, so a row needs megabytes to be read to a tenth), the small
//! ones 5× as many when they go in batches.
//! `BENCH_SAMPLES=1` shows one record of each family, its key and the start of its value.

#[path = "../../host/benches/common/evotor.rs"]
mod evotor;

use bytes::Bytes;
use evogate::kv::Compression;
use evotor::{DEVICE, STORE, USER, call, family, json_body, padded};
use serde_json::{Value, json};

/// A kind of delivery: its name, and a batch of records `from..from + count` as bodies.
struct Kind {
    name: &'static str,
    /// Records one request carries.
    per_request: usize,
    /// The request: method, path, body of records `from..from + count`.
    request: fn(usize, usize) -> (&'static str, String, Bytes),
    /// Whether the records are the small ones (`count` × 5).
    small: bool,
}

/// A uuid of its own for record `n`, in no order of `n`, as the random
/// uuids terminals make: consecutive records land all over the key space.
fn scattered_uuid(n: usize) -> String {
    format!("{:08x}-0000-4000-8000-{n:012x}", (n as u32).wrapping_mul(2_654_435_761))
}

fn document(n: usize) -> Value {
    padded(
        json!({"id": scattered_uuid(n), "store_id": STORE, "device_id": DEVICE, "type": "SELL",
            "close_date": 1_700_000_000_000i64 + n as i64, "user_id": USER, "version": "V2",
            "body": {"result_sum": 100, "positions": [{"name": "Tea", "price": 100, "quantity": 1}]}}),
        1024,
    )
}

fn receipt(n: usize) -> Value {
    padded(
        json!({"id": format!("rcpt-{n:08}"), "timestamp": 1_700_000_000_000i64 + n as i64, "userId": USER,
            "type": "ReceiptCreated", "data": {"id": format!("r-{n}"), "deviceId": DEVICE, "storeId": STORE,
            "dateTime": 1_700_000_000_000i64 + n as i64, "totalAmount": 100, "items": [{"name": "Tea", "price": 100}]}}),
        1024,
    )
}

fn product(n: usize) -> Value {
    padded(evotor::product(n as u32), 1024)
}

fn event(n: usize) -> Value {
    // The product of the catalog rows, in the v2 names an event carries.
    let n = n as u32;
    let payload = json!({"id": format!("{:08x}-0000-4000-8000-{n:012x}", n.wrapping_mul(2_654_435_761)),
        "store_id": STORE, "user_id": USER, "name": format!("Product number {n}"), "type": "NORMAL",
        "allow_to_sell": true, "measure_name": "шт", "price": 99.9, "cost_price": 50, "quantity": 12.5,
        "tax": "VAT_20", "code": format!("{}", n % 1_000_000), "article_number": format!("A-{n}"),
        "barcodes": [evotor::barcode(n)], "parent_id": null, "description": "A product of the benchmark"});
    padded(json!({"id": format!("ev-{n:08}"), "type": "ProductEvent", "action": "created", "payload": payload}), 1024)
}

fn array(values: impl Iterator<Item = Value>) -> Bytes {
    json_body(&Value::Array(values.collect()))
}

const KINDS: &[Kind] = &[
    Kind {
        name: "1 KB documents",
        per_request: 100,
        request: |from, count| {
            let path = format!("/api/v1/inventories/stores/{STORE}/documents");
            ("PUT", path, array((from..from + count).map(document)))
        },
        small: false,
    },
    Kind {
        name: "1 KB receipts",
        per_request: 100,
        request: |from, count| ("POST", "/api/v2/receipts".into(), array((from..from + count).map(receipt))),
        small: false,
    },
    Kind {
        name: "1 KB products",
        per_request: 100,
        request: |from, count| {
            let path = format!("/api/v1/inventories/stores/{STORE}/products");
            ("POST", path, array((from..from + count).map(product)))
        },
        small: false,
    },
    Kind {
        name: "1 KB events",
        per_request: 1,
        request: |from, _| ("POST", "/events".into(), json_body(&event(from))),
        small: false,
    },
    Kind {
        name: "{\"id\"} receipts",
        per_request: 1000,
        request: |from, count| {
            ("POST", "/api/v2/receipts".into(), array((from..from + count).map(|n| json!({"id": format!("r{n}")}))))
        },
        small: true,
    },
    Kind {
        name: "tiny products",
        per_request: 1000,
        request: |from, count| {
            let path = format!("/api/v1/inventories/stores/{STORE}/products");
            ("POST", path, array((from..from + count).map(|n| json!({"uuid": scattered_uuid(n), "name": "p"}))))
        },
        small: true,
    },
    Kind {
        name: "tiny events",
        per_request: 1,
        request: |from, _| ("POST", "/events".into(), json_body(&json!({"id": format!("e{from}")}))),
        small: true,
    },
];

/// What the store holds of one key family: records, bytes of keys, bytes of values.
#[derive(Default)]
struct Family {
    records: u64,
    keys: u64,
    values: u64,
    /// The first record's key and value, shown with `BENCH_SAMPLES=1`.
    sample: String,
}

/// The store's records by key family, largest first.
fn census(running: &evogate::Running) -> anyhow::Result<Vec<(String, Family)>> {
    let mut families = std::collections::BTreeMap::<String, Family>::new();
    running.store_records(|ns, key, value| {
        let family = families.entry(format!("{ns}:{}", family(key))).or_default();
        if family.records == 0 {
            family.sample = format!("{key} = {}", String::from_utf8_lossy(value).chars().take(400).collect::<String>());
        }
        family.records += 1;
        family.keys += key.len() as u64;
        family.values += value.len() as u64;
    })?;
    let mut families: Vec<_> = families.into_iter().collect();
    families.sort_by_key(|(_, family)| std::cmp::Reverse(family.keys + family.values));
    Ok(families)
}

/// What one row measured.
struct Measured {
    /// How much the store's size on disk grew.
    stored: u64,
    /// The bytes delivered.
    delivered: u64,
    /// The records in the store after the writes, by key family.
    families: Vec<(String, Family)>,
    /// On redb, how much bigger the file is than before the writes once
    /// `evogate store compact` rewrote it (the gateway stopped).
    compacted: Option<u64>,
}

/// A fresh gateway on `store`, the bench user registered: what delivering
/// `records` of `kind` made the store keep.
async fn measure(
    kind: &Kind,
    records: usize,
    postgres: Option<&str>,
    compression: Compression,
) -> anyhow::Result<Measured> {
    let data = tempfile::tempdir()?;
    let mut config = evotor::config(data.path())?;
    config.store.compression = compression;
    config.plugins[0].config.insert("events_webhook_allow_unsigned".into(), "true".into());
    if let Some(url) = postgres {
        evotor::on_postgres(&mut config, url)?;
    }
    let (running, addr) = evotor::serve(&config).await?;
    let running = std::sync::Arc::new(running);
    let size = |running: std::sync::Arc<evogate::Running>| async move {
        tokio::task::spawn_blocking(move || running.store_bytes()).await?.map(|bytes| bytes.unwrap_or(0))
    };
    let mut client = evotor::connect(addr).await?;
    let token = evotor::entitled_user(&mut client).await?;
    let before = size(running.clone()).await?;
    let mut delivered = 0u64;
    let mut from = 0;
    while from < records {
        let count = kind.per_request.min(records - from);
        let (method, path, body) = (kind.request)(from, count);
        delivered += body.len() as u64;
        call(&mut client, method, &path, &token, body).await?;
        from += count;
    }
    let after = size(running.clone()).await?;
    let families = {
        let running = running.clone();
        tokio::task::spawn_blocking(move || census(&running)).await??
    };
    let compacted = match postgres {
        Some(url) => {
            evotor::drop_schema(url, &config.store.schema).await;
            None
        }
        None => {
            // The gateway is idle, every commit on disk: a copy of the file is the
            // store as `evogate store compact` finds it once the gateway stopped.
            let (file, copy) = (config.data_dir().join("evogate.redb"), data.path().join("copy.redb"));
            let compacted = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                use evogate::kv::Backend as _;
                std::fs::copy(&file, &copy)?;
                let store = evogate::kv::RedbBackend::open(&copy)?;
                store.compact()?;
                Ok(store.bytes_on_disk()?.unwrap_or(0))
            })
            .await??;
            Some(compacted.saturating_sub(before))
        }
    };
    Ok(Measured { stored: after.saturating_sub(before), delivered, families, compacted })
}

fn main() -> anyhow::Result<()> {
    let records: usize = std::env::var("BENCH_RECORDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let postgres = std::env::var("EVOGATE_TEST_POSTGRES_URL").ok().filter(|url| !url.is_empty());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        println!("storage: bytes on disk per byte delivered (records of each row into a fresh store)");
        let mut backends = vec![("redb", None)];
        match &postgres {
            Some(url) => backends.push(("PostgreSQL", Some(url.as_str()))),
            None => println!("  (PostgreSQL: skipped, EVOGATE_TEST_POSTGRES_URL is not set)"),
        }
        for (backend, url) in backends {
            println!("  {backend}:");
            println!(
                "    {:<18} {:>8} {:>12} {:>20} {:>20}",
                "delivery", "records", "delivered", "stored as given", "stored compressed"
            );
            for (row, kind) in KINDS.iter().enumerate() {
                let count = if kind.small && kind.per_request > 1 { records * 5 } else { records };
                // The two settings take turns at going first.
                let mut order = [Compression::None, Compression::Zstd];
                if row % 2 == 1 {
                    order.reverse();
                }
                let (mut plain, mut packed) = (None, None);
                for compression in order {
                    let measured = measure(kind, count, url, compression).await?;
                    match compression {
                        Compression::None => plain = Some(measured),
                        Compression::Zstd => packed = Some(measured),
                    }
                }
                let (Some(plain), Some(Measured { stored, delivered, families, compacted })) = (plain, packed) else {
                    anyhow::bail!("a row measured without one of its settings");
                };
                let ratio = |stored: u64| stored as f64 / delivered as f64;
                println!(
                    "    {:<18} {:>8} {:>9.2} MB {:>8.2} MB {:>8.1}× {:>8.2} MB {:>8.1}×",
                    kind.name,
                    count,
                    delivered as f64 / 1e6,
                    plain.stored as f64 / 1e6,
                    ratio(plain.stored),
                    stored as f64 / 1e6,
                    ratio(stored)
                );
                if let Some(compacted) = compacted {
                    println!(
                        "      compressed, after `evogate store compact`: {:.2} MB, {:.1}× the bytes delivered",
                        compacted as f64 / 1e6,
                        ratio(compacted)
                    );
                }
                {
                    let total: u64 = families.iter().map(|(_, family)| family.keys + family.values).sum();
                    println!(
                        "      records' keys and values: {:.2} MB, {:.1}× the bytes delivered",
                        total as f64 / 1e6,
                        total as f64 / delivered as f64
                    );
                    for (name, family) in families.iter().take(8) {
                        println!(
                            "        {:<44} {:>7} records {:>9.2} MB keys {:>9.2} MB values",
                            name,
                            family.records,
                            family.keys as f64 / 1e6,
                            family.values as f64 / 1e6
                        );
                        if std::env::var_os("BENCH_SAMPLES").is_some() {
                            println!("          {}", family.sample);
                        }
                    }
                }
            }
        }
        anyhow::Ok(())
    })
}
