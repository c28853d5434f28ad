//! `evogate deploy / plugins / rollback / run-job / backup`: a small client of the admin API.

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
    /// Admin listener address, e.g. `127.0.0.1:9090` or `https://admin.example.com:9090`
    /// (overrides the config; a bare address uses HTTPS when the config has `[admin.tls]`).
    #[arg(long, env = "EVOGATE_ADMIN_ADDR")]
    admin: Option<String>,
    /// PEM file of certificates to trust for an HTTPS admin listener, besides the public
    /// roots and the config's `admin.tls.cert`.
    #[arg(long, env = "EVOGATE_ADMIN_CA")]
    admin_ca: Option<PathBuf>,
    /// Admin bearer token (overrides the config).
    #[arg(long, env = "EVOGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long)]
    json: bool,
}

/// The admin listener as the client reaches it.
struct Target {
    /// `host:port` to connect to.
    addr: String,
    /// The host the certificate must name.
    host: String,
    /// Certificates to trust beyond the public roots; `None`: plain HTTP.
    tls: Option<Vec<PathBuf>>,
    token: Option<String>,
}

impl AdminArgs {
    fn target(&self) -> anyhow::Result<Target> {
        let config = evogate::config::Config::load(self.config.as_deref())?;
        let configured_cert = config.admin.tls.as_ref().map(|tls| tls.cert.relative());
        let (https, addr) = match self.admin.as_deref() {
            Some(given) => match (given.strip_prefix("https://"), given.strip_prefix("http://")) {
                (Some(addr), _) => (true, addr.trim_end_matches('/').to_owned()),
                (_, Some(addr)) => (false, addr.trim_end_matches('/').to_owned()),
                _ => (configured_cert.is_some(), given.to_owned()),
            },
            None => {
                let mut listen = config.admin.listen;
                // A listener on every address is reached locally, by its loopback name.
                if listen.ip().is_unspecified() {
                    listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                (configured_cert.is_some(), listen.to_string())
            }
        };
        let host = match addr.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            None => addr.clone(),
        };
        let tls = https.then(|| configured_cert.into_iter().chain(self.admin_ca.clone()).collect());
        let token = match self.token.clone() {
            Some(token) => Some(token),
            None => config.admin_token()?,
        };
        Ok(Target { addr, host, tls, token })
    }
}

/// A TLS connector trusting the public roots and the certificates in `files`.
fn connector(files: &[PathBuf]) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for file in files {
        for cert in CertificateDer::pem_file_iter(file).with_context(|| format!("reading {}", file.display()))? {
            let cert = cert.with_context(|| format!("parsing {}", file.display()))?;
            roots.add(cert).with_context(|| format!("trusting the certificate in {}", file.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(evogate::crypto::tls_provider())
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

/// An HTTP/1.1 connection to the admin listener, over TLS when `target` says so.
async fn connect(target: &Target) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let addr = &target.addr;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the admin listener at {addr}"))?;
    let Some(trusted) = &target.tls else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        return Ok(sender);
    };
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .with_context(|| format!("{:?} is not a host name", target.host))?;
    let stream = connector(trusted)?
        .connect(name, stream)
        .await
        .with_context(|| format!("TLS with the admin listener at {addr} (trusted: public roots and {trusted:?})"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A request to the admin listener of `target`, with its token.
fn admin_request(target: &Target, method: &str, path: &str) -> hyper::http::request::Builder {
    let request = hyper::Request::builder().method(method).uri(path).header("host", target.addr.as_str());
    match &target.token {
        Some(token) => request.header("authorization", format!("Bearer {token}")),
        None => request,
    }
}

fn call(args: &AdminArgs, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<serde_json::Value> {
    call_expecting(args, method, path, body, |status, _| status.is_success())
}

/// [`call`], a 422 with a JSON answer taken as an answer too (a refused reload lists its problems).
fn call_any(args: &AdminArgs, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<serde_json::Value> {
    call_expecting(args, method, path, body, |status, value| {
        status.is_success() || status == hyper::StatusCode::UNPROCESSABLE_ENTITY && !value.is_null()
    })
}

/// Sends the call; its JSON answer when `answered` takes the status and
/// the answer, else an error with the server's reason.
fn call_expecting(
    args: &AdminArgs,
    method: &str,
    path: &str,
    body: Vec<u8>,
    answered: impl Fn(hyper::StatusCode, &serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let target = args.target()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, bytes) = runtime.block_on(async {
        let mut sender = connect(&target).await?;
        let request = admin_request(&target, method, path);
        let response = sender.send_request(request.body(Full::new(Bytes::from(body)))?).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, bytes))
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    if !answered(status, &value) {
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

fn when_ms(value: &serde_json::Value) -> String {
    match value.as_u64() {
        Some(ms) => httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
        None => "-".into(),
    }
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

/// `evogate deploy NAME FILE [--force]`.
pub fn deploy(args: &AdminArgs, name: &str, file: &Path, force: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let path = if force { format!("/plugins/{name}?force=true") } else { format!("/plugins/{name}") };
    let value = call(args, "PUT", &path, bytes)?;
    if !args.json {
        print_outcome("deployed", &value);
    }
    Ok(())
}

/// `evogate rollback NAME [--to VERSION]`.
pub fn rollback(args: &AdminArgs, name: &str, to: Option<&str>) -> anyhow::Result<()> {
    let path = match to {
        Some(to) => {
            let to: String = form_urlencoded::byte_serialize(to.as_bytes()).collect();
            format!("/plugins/{name}/rollback?to={to}")
        }
        None => format!("/plugins/{name}/rollback"),
    };
    let value = call(args, "POST", &path, Vec::new())?;
    if !args.json {
        print_outcome("rolled back", &value);
    }
    Ok(())
}

/// `evogate reload`: fails unless the new configuration is in force.
pub fn reload(args: &AdminArgs) -> anyhow::Result<()> {
    let value = call_any(args, "POST", "/reload", Vec::new())?;
    let lines = |key: &str| -> Vec<String> {
        value[key]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|v| Some(v.as_str()?.to_owned()))
            .collect()
    };
    if !args.json {
        for change in lines("changes") {
            println!("changed: {change}");
        }
        for key in lines("needsRestart") {
            println!("needs a restart: {key}");
        }
        for problem in lines("problems") {
            eprintln!("{problem}");
        }
    }
    anyhow::ensure!(value["applied"] == true, "the configuration was refused; the one in force is kept");
    if !args.json {
        println!("reloaded");
    }
    Ok(())
}

/// `evogate run-job NAME JOB`: fails unless the run's outcome is `ok`.
pub fn run_job(args: &AdminArgs, name: &str, job: &str) -> anyhow::Result<()> {
    let value = call(args, "POST", &format!("/plugins/{name}/jobs/{job}/run"), Vec::new())?;
    let outcome = value["outcome"].as_str().unwrap_or("?");
    let took =
        value["finishedMs"].as_u64().zip(value["startedMs"].as_u64()).map(|(end, start)| end.saturating_sub(start));
    if !args.json {
        println!(
            "{name}/{job}: {outcome} in {} ms on {} ({}){}",
            took.map_or_else(|| "?".into(), |ms| ms.to_string()),
            value["node"].as_str().unwrap_or("?"),
            value["version"].as_str().unwrap_or("?"),
            value["error"].as_str().map(|error| format!(": {error}")).unwrap_or_default()
        );
    }
    anyhow::ensure!(outcome == "ok", "job {name}/{job} ended with outcome {outcome}");
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
            "{}  route {}  {}@{} ({})  sha256 {}  deployed {}",
            plugin["name"].as_str().unwrap_or("?"),
            plugin["route"].as_str().unwrap_or("?"),
            plugin["identity"].as_str().unwrap_or("?"),
            live["version"].as_str().unwrap_or("?"),
            plugin["world"].as_str().unwrap_or("?"),
            short(&live["sha256"]),
            when(&live["deployedAt"]),
        );
        for job in plugin["jobs"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let last = &job["lastRun"];
            println!(
                "    job {}: every {} s, last {} {}, next {}",
                job["name"].as_str().unwrap_or("?"),
                job["everySeconds"],
                last["outcome"].as_str().unwrap_or(if last["running"] == true { "running" } else { "never" }),
                when_ms(&last["startedMs"]),
                when_ms(&job["nextRunMs"]),
            );
        }
        for (list, what) in [("later", "rolled back from"), ("previous", "before")] {
            for kept in plugin[list].as_array().map(Vec::as_slice).unwrap_or_default() {
                println!(
                    "    kept ({what}): {} ({}) deployed {}",
                    kept["version"].as_str().unwrap_or("?"),
                    short(&kept["sha256"]),
                    when(&kept["deployedAt"])
                );
            }
        }
    }
    Ok(())
}

/// `evogate backup --to FILE`: the store as of now, streamed from the
/// running gateway into `FILE.partial` (this user's only), synced, checked
/// whole, then renamed to `FILE`; a progress line on a terminal.
pub fn backup(args: &AdminArgs, to: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let target = args.target()?;
    let partial = PathBuf::from(format!("{}.partial", to.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let received = runtime.block_on(async {
        let mut sender = connect(&target).await?;
        let request = admin_request(&target, "GET", "/backup");
        let response = sender.send_request(request.body(Full::new(Bytes::new()))?).await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let text = body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
            bail!("{status}: {}", String::from_utf8_lossy(&text));
        }
        let (mut received, mut shown) = (0u64, std::time::Instant::now());
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the backup stopped before its end")?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).with_context(|| format!("writing {}", partial.display()))?;
                received += data.len() as u64;
                if show && shown.elapsed() >= std::time::Duration::from_millis(250) {
                    eprint!("\rbackup: {:.1} MiB received", received as f64 / 1048576.0);
                    shown = std::time::Instant::now();
                }
            }
        }
        anyhow::Ok(received)
    });
    if show {
        eprintln!();
    }
    let finished = received.and_then(|received| {
        let file = out.into_inner().map_err(|err| err.into_error())?;
        file.sync_all().with_context(|| format!("syncing {}", partial.display()))?;
        let summary = evogate::kv::backup::verify(std::io::BufReader::new(std::fs::File::open(&partial)?))
            .context("the backup received is not whole")?;
        Ok((received, summary))
    });
    let (received, summary) = match finished {
        Ok(done) => done,
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            return Err(err);
        }
    };
    std::fs::rename(&partial, to).with_context(|| format!("renaming {} to {}", partial.display(), to.display()))?;
    if let Some(dir) = to.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|dir| dir.sync_all()).ok();
    }
    println!(
        "backup of {} records in {} namespaces ({} bytes) written to {}",
        summary.records,
        summary.namespaces.len(),
        received,
        to.display()
    );
    Ok(())
}
