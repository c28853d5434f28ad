//! `evogate deploy / plugins / rollback`: a small client of the admin API.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};

/// Where the admin listener is and how to authenticate.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Configuration file to take `admin.listen` and `admin.token` from.
    #[arg(long, short, env = "EVOGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Admin listener address, e.g. `127.0.0.1:9090` (overrides the config).
    #[arg(long, env = "EVOGATE_ADMIN_ADDR")]
    admin: Option<String>,
    /// Admin bearer token (overrides the config).
    #[arg(long, env = "EVOGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long)]
    json: bool,
}

impl AdminArgs {
    fn target(&self) -> anyhow::Result<(String, Option<String>)> {
        let config = evogate::config::Config::load(self.config.as_deref())?;
        let addr = self.admin.clone().unwrap_or_else(|| config.admin.listen.to_string());
        Ok((addr, self.token.clone().or(config.admin.token)))
    }
}

fn call(args: &AdminArgs, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<serde_json::Value> {
    let (addr, token) = args.target()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, bytes) = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connecting to the admin listener at {addr}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut request = hyper::Request::builder().method(method).uri(path).header("host", addr.as_str());
        if let Some(token) = &token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = sender.send_request(request.body(Full::new(Bytes::from(body)))?).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, bytes))
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    if !status.is_success() {
        let reason =
            value["error"].as_str().map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_owned);
        bail!("{status}: {reason}");
    }
    Ok(value)
}

fn short(sha: &serde_json::Value) -> String {
    sha.as_str().unwrap_or_default().chars().take(12).collect()
}

fn when(value: &serde_json::Value) -> String {
    let secs = value.as_u64().unwrap_or(0);
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn print_outcome(verb: &str, value: &serde_json::Value) {
    let deployed = &value["deployed"];
    if value["changed"] == false {
        println!(
            "{} is already live: version {} ({})",
            value["name"].as_str().unwrap_or("?"),
            deployed["version"].as_str().unwrap_or("?"),
            short(&deployed["sha256"])
        );
        return;
    }
    println!(
        "{verb} {}: version {} ({}) is live",
        value["name"].as_str().unwrap_or("?"),
        deployed["version"].as_str().unwrap_or("?"),
        short(&deployed["sha256"])
    );
    if value["live"]["sha256"] != deployed["sha256"] {
        println!(
            "note: a later deploy won; live now: {} ({})",
            value["live"]["version"].as_str().unwrap_or("?"),
            short(&value["live"]["sha256"])
        );
    }
}

/// `evogate deploy NAME FILE`.
pub fn deploy(args: &AdminArgs, name: &str, file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let value = call(args, "PUT", &format!("/plugins/{name}"), bytes)?;
    if !args.json {
        print_outcome("deployed", &value);
    }
    Ok(())
}

/// `evogate rollback NAME`.
pub fn rollback(args: &AdminArgs, name: &str) -> anyhow::Result<()> {
    let value = call(args, "POST", &format!("/plugins/{name}/rollback"), Vec::new())?;
    if !args.json {
        print_outcome("rolled back", &value);
    }
    Ok(())
}

/// `evogate plugins`.
pub fn plugins(args: &AdminArgs) -> anyhow::Result<()> {
    let value = call(args, "GET", "/plugins", Vec::new())?;
    if args.json {
        return Ok(());
    }
    for plugin in value.as_array().map(Vec::as_slice).unwrap_or_default() {
        let live = &plugin["live"];
        println!(
            "{}  route {}  {}@{}  sha256 {}  deployed {}",
            plugin["name"].as_str().unwrap_or("?"),
            plugin["route"].as_str().unwrap_or("?"),
            plugin["identity"].as_str().unwrap_or("?"),
            live["version"].as_str().unwrap_or("?"),
            short(&live["sha256"]),
            when(&live["deployedAt"]),
        );
        for old in plugin["previous"].as_array().map(Vec::as_slice).unwrap_or_default() {
            println!(
                "    kept: {} ({}) deployed {}",
                old["version"].as_str().unwrap_or("?"),
                short(&old["sha256"]),
                when(&old["deployedAt"])
            );
        }
    }
    Ok(())
}
