//! The Evotor plugin behind a real gateway, and a client for its API.
#![allow(dead_code, reason = "each bench uses a subset")]

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The bench user, its store and its licensed terminal.
pub const USER: &str = "01-000000000000001";
pub const STORE: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
pub const DEVICE: &str = "5a188de4-49b8-4cb4-800e-eb6b5202437e";

/// A keep-alive HTTP/1.1 connection sending bodies.
pub type Client = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One call with a bearer token; any answer but 2xx is an error.
pub async fn call(client: &mut Client, method: &str, path: &str, token: &str, body: Bytes) -> anyhow::Result<Bytes> {
    client.ready().await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let response = client.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{method} {path}: {status} {}", String::from_utf8_lossy(&body));
    Ok(body)
}

pub fn json_body(value: &Value) -> Bytes {
    Bytes::from(value.to_string())
}

/// The Evotor plugin as `cargo xtask build` leaves it, from the repository root.
pub const PLUGIN_WASM: &str = "target/wasm32-wasip2/release/evotor_partner.wasm";

/// The release build of the Evotor plugin.
pub fn plugin_wasm() -> anyhow::Result<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(PLUGIN_WASM);
    anyhow::ensure!(path.is_file(), "{} is missing: run `cargo xtask bench`", path.display());
    Ok(path)
}

/// A configuration serving the Evotor plugin (server token `srv`, partner token `partner`) from `data`.
pub fn config(data: &std::path::Path) -> anyhow::Result<evogate::config::Config> {
    let mut config = evogate::config::Config {
        data_dir: figment::value::magic::RelativePathBuf::from(data.to_owned()),
        plugins: vec![plugin(plugin_wasm()?)],
        ..Default::default()
    };
    for (key, value) in [("server_bearer_token", "srv"), ("partner_api_token", "partner")] {
        config.plugins[0].config.insert(key.into(), value.into());
    }
    Ok(config)
}

/// The Evotor plugin on `/` from `wasm`, its errors in Evotor's body, no settings.
pub fn plugin(wasm: std::path::PathBuf) -> evogate::config::PluginConfig {
    evogate::config::PluginConfig {
        name: "evotor".into(),
        route: "/".into(),
        wasm: figment::value::magic::RelativePathBuf::from(wasm),
        config: Default::default(),
        max_concurrent_requests: None,
        max_concurrent_per_credential: None,
        allowed_outbound_hosts: Vec::new(),
        calls: Vec::new(),
        outbound_ca: None,
        error_format: evogate::edge::ErrorFormat::Evotor,
        jobs: Vec::new(),
    }
}

/// Starts a gateway with `config` on a free port.
pub async fn serve(config: &evogate::config::Config) -> anyhow::Result<(evogate::Running, SocketAddr)> {
    let mut config = config.clone();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let running = evogate::run(&config, std::future::pending()).await?;
    let addr = running.addr();
    Ok((running, addr))
}

/// One gateway on redb in `data` with the bench user registered: the gateway, its address, a client, the user's token.
pub async fn single_node(data: &std::path::Path) -> anyhow::Result<(evogate::Running, SocketAddr, Client, String)> {
    let (running, addr) = serve(&config(data)?).await?;
    let mut client = connect(addr).await?;
    let token = entitled_user(&mut client).await?;
    Ok((running, addr, client, token))
}

/// Registers the bench user with a long trial and one licensed terminal; returns its token.
pub async fn entitled_user(client: &mut Client) -> anyhow::Result<String> {
    entitled(client, USER, "bench", DEVICE, 1).await
}

/// Registers `user` (login `login`) with a long trial (subscription number
/// `n`) and terminal `device`; returns its token.
pub async fn entitled(client: &mut Client, user: &str, login: &str, device: &str, n: u32) -> anyhow::Result<String> {
    let registration = json!({"userId": user, "username": login, "password": "bench-password"});
    let created = call(client, "POST", "/api/v1/user/create", "srv", json_body(&registration)).await?;
    let token = serde_json::from_slice::<Value>(&created)?["token"].as_str().unwrap_or_default().to_owned();
    let trial = json!({"subscriptionId": format!("6e3f7a52-0000-4000-8000-{n:012}"), "productId": "bench",
        "userId": user, "timestamp": "2026-01-01T00:00:00.000+0000", "sequenceNumber": 1,
        "type": "SubscriptionCreated", "planId": "basic", "trialPeriodDuration": "P3650DT", "deviceNumber": 1});
    call(client, "POST", "/api/v1/subscription/event", "srv", json_body(&trial)).await?;
    let terminal = json!([{"uuid": device, "name": "Till"}]);
    call(client, "PUT", "/api/v1/inventories/devices", &token, json_body(&terminal)).await?;
    Ok(token)
}

/// A product of the benchmarks, number `n`, with one barcode.
pub fn product(n: u32) -> Value {
    let uuid = format!("{:08x}-0000-4000-8000-{n:012x}", n.wrapping_mul(2_654_435_761));
    json!({"uuid": uuid, "group": false, "name": format!("Product number {n}"), "type": "NORMAL",
           "allowToSell": true, "measureName": "шт", "price": 99.9, "costPrice": 50, "quantity": 12.5,
           "tax": "VAT_20", "code": format!("{}", n % 1_000_000), "articleNumber": format!("A-{n}"),
           "barCodes": [barcode(n)], "parentUuid": null, "description": "A product of the benchmark"})
}

pub fn barcode(n: u32) -> String {
    format!("46{n:011}")
}

/// A batch of `size` SELL documents shaped like `sell`, unique per (terminal, n).
pub fn sell_batch(sell: &Value, terminal: usize, n: usize, size: usize) -> Bytes {
    let docs: Vec<Value> = (0..size)
        .map(|i| {
            let mut doc = sell.clone();
            doc["uuid"] = json!(format!("{terminal:08x}-{:04x}-4000-8000-{:012x}", n % 0xffff, n * size + i));
            doc
        })
        .collect();
    json_body(&Value::from(docs))
}

/// p50 and p99 of `samples`.
pub fn quantiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

/// `record` padded with a field of pseudo-random hex (seeded by the record's
/// text, so every run sends the same bytes) to about `size` bytes.
pub fn padded(mut record: Value, size: usize) -> Value {
    let text = record.to_string();
    let mut state =
        text.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let note = (0..size.saturating_sub(text.len() + 10))
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b"0123456789abcdef"[(state & 15) as usize])
        })
        .collect();
    record["note"] = Value::String(note);
    record
}

/// `config` on PostgreSQL at `url`, in a schema of its own ([`drop_schema`] removes it).
pub fn on_postgres(config: &mut evogate::config::Config, url: &str) -> anyhow::Result<()> {
    config.store.backend = evogate::kv::BackendKind::Postgres;
    config.store.url = Some(url.to_owned());
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    config.store.schema = format!("evogate_bench_{unique:x}");
    Ok(())
}

/// A connection to the PostgreSQL database at `url`.
pub async fn postgres_client(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Drops a bench's schema (its tables go with it).
pub async fn drop_schema(url: &str, schema: &str) {
    if let Ok(client) = postgres_client(url).await {
        let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
    }
}

/// A key's family: each segment holding a digit (an id, a stamp, a digest) as `*`.
pub fn family(key: &str) -> String {
    key.split('/')
        .map(|segment| if segment.bytes().any(|b| b.is_ascii_digit()) { "*" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}
