//! Calls between plugins: an Evotor app's request that authenticates its
//! terminal through the Evotor plugin and reads its own store — two
//! instances, the extension's and the Evotor plugin's — against a plain
//! request of the same extension (one instance, no call), measured in
//! alternated rounds in one run.
//!
//! The loyalty example (`examples/loyalty`) beside the Evotor plugin, on
//! redb: `GET /loyalty/v1/summary` with the user's token and store against
//! `GET /loyalty/v1/none` (the extension's own 404). Run with
//! `cargo bench -p evogate --bench calls` (after `cargo xtask build`).

mod common;
#[path = "common/evotor.rs"]
mod evotor;

use bytes::Bytes;
use evotor::STORE;
use http_body_util::{BodyExt as _, Full};
use serde_json::json;
use std::time::Instant;

const ROUNDS: usize = 6;
const PER_ROUND: usize = 200;

fn loyalty_wasm() -> anyhow::Result<std::path::PathBuf> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release/evogate_loyalty.wasm");
    anyhow::ensure!(path.is_file(), "{} is missing: run `cargo xtask build` first", path.display());
    Ok(path)
}

/// One GET on `client`; its status must be `expect`.
async fn get(client: &mut evotor::Client, path: &str, token: &str, expect: u16) -> anyhow::Result<()> {
    client.ready().await?;
    let request = hyper::Request::builder()
        .uri(path)
        .header("host", "bench")
        .header("authorization", format!("Bearer {token}"))
        .header("x-evotor-store-uuid", STORE)
        .body(Full::new(Bytes::new()))?;
    let response = client.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status == expect, "{path}: {status} {}", String::from_utf8_lossy(&body));
    Ok(())
}

/// p50 in µs of `PER_ROUND` sequential GETs of `path`.
async fn round(client: &mut evotor::Client, path: &str, token: &str, expect: u16) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(PER_ROUND);
    for _ in 0..PER_ROUND {
        let started = Instant::now();
        get(client, path, token, expect).await?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(evotor::quantiles(samples).0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let mut config = evotor::config(data.path())?;
    let mut loyalty = config.plugins[0].clone();
    loyalty.name = "loyalty".into();
    loyalty.route = "/loyalty".into();
    loyalty.wasm = figment::value::magic::RelativePathBuf::from(loyalty_wasm()?);
    loyalty.calls = vec!["evotor".into()];
    loyalty.jobs = Vec::new();
    loyalty.allowed_outbound_hosts = Vec::new();
    loyalty.config = [("erp_url", "http://127.0.0.1:9/sales"), ("erp_secret", "bench")]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), toml::Value::from(value)))
        .collect();
    config.plugins.push(loyalty);
    let (_running, addr) = evotor::serve(&config).await?;
    let mut client = evotor::connect(addr).await?;
    let token = evotor::entitled_user(&mut client).await?;
    let store = json!([{"uuid": STORE, "name": "Bench"}]);
    evotor::call(&mut client, "PUT", "/api/v1/inventories/stores", &token, evotor::json_body(&store)).await?;
    for _ in 0..100 {
        get(&mut client, "/loyalty/v1/summary", &token, 200).await?;
        get(&mut client, "/loyalty/v1/none", &token, 404).await?;
    }
    // The extension alone; the Evotor plugin alone, idle and resolving the same token over HTTP; both.
    let paths = [
        ("/loyalty/v1/none", 404),
        ("/api/v1/no-such-endpoint", 404),
        ("/api/v1/commodities?scanCode=1", 404),
        ("/loyalty/v1/summary", 200),
    ];
    let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..ROUNDS {
        for ((path, status), p50s) in paths.iter().zip(&mut p50s) {
            p50s.push(round(&mut client, path, &token, *status).await?);
        }
    }
    let [plain, evotor_idle, evotor_user, called] = [0, 1, 2, 3].map(|n| common::median(&p50s[n]));
    println!(
        "calls between plugins, redb, median of {ROUNDS} alternated rounds of {PER_ROUND} sequential requests (p50, µs)"
    );
    println!("extension request, no call (its own 404)                  {plain:>7.1}   baseline");
    println!("Evotor plugin request, no work (its 404)                  {evotor_idle:>7.1}");
    println!("Evotor plugin request resolving the user token over HTTP  {evotor_user:>7.1}");
    println!(
        "extension request, authenticated by the Evotor plugin     {called:>7.1}   {:.2} × the baseline",
        called / plain
    );
    println!(
        "  the call in process: +{:.1} µs, against {:.1} µs for the Evotor plugin's own token request over HTTP ({:.2} ×)",
        called - plain,
        evotor_user,
        (called - plain) / evotor_user
    );
    Ok(())
}
