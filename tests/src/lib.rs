//! Helpers for the end-to-end tests: start the real `evogate` binary on an
//! ephemeral port with a temporary data directory, talk HTTP to it, read its log.
//!
//! The tests need built artifacts; `cargo xtask test` builds them first.
//! Paths can be overridden with `EVOGATE_BIN`, `EVOTOR_PLUGIN_WASM`,
//! `TEST_GUEST_WASM` and `STANDARD_{HELLO,COUNTER,CAS}_WASM`.

pub mod cloud;
pub mod erp;
pub mod otlp;
pub mod stream;
pub mod upstream;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

fn artifact(env: &str, relative: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| workspace_root().join(relative), PathBuf::from);
    assert!(
        path.is_file(),
        "{} is missing: build everything first with `cargo xtask test` (or set {env})",
        path.display()
    );
    path
}

/// The `evogate` binary under test.
pub fn evogate_bin() -> PathBuf {
    artifact("EVOGATE_BIN", "target/release/evogate")
}

/// The Evotor plugin component.
pub fn evotor_wasm() -> PathBuf {
    artifact("EVOTOR_PLUGIN_WASM", "target/wasm32-wasip2/release/evotor_partner.wasm")
}

/// The misbehaving test plugin component.
pub fn guest_wasm() -> PathBuf {
    artifact("TEST_GUEST_WASM", "target/wasm32-wasip2/release/test_guest.wasm")
}

/// The `xtask` binary (`cargo xtask`), built with the workspace.
pub fn xtask_bin() -> PathBuf {
    artifact("XTASK_BIN", "target/release/xtask")
}

/// The Evotor app example (`examples/loyalty`).
pub fn loyalty_wasm() -> PathBuf {
    artifact("LOYALTY_WASM", "target/wasm32-wasip2/release/evogate_loyalty.wasm")
}

/// The SDK's example plugin (`examples/counter`).
pub fn counter_wasm() -> PathBuf {
    artifact("COUNTER_WASM", "target/wasm32-wasip2/release/evogate_counter.wasm")
}

/// The test plugin built as `version` (`1.0.0` is [`guest_wasm`]).
pub fn guest_wasm_version(version: &str) -> PathBuf {
    let path = workspace_root().join(format!("target/test-guest-{version}.wasm"));
    assert!(path.is_file(), "{} is missing: build everything first with `cargo xtask test`", path.display());
    path
}

/// A standard `wasi:http/proxy` test component (`tests/standard/NAME`):
/// `hello`, `counter` or `cas`.
pub fn standard_wasm(name: &str) -> PathBuf {
    let env = format!("STANDARD_{}_WASM", name.to_uppercase());
    artifact(&env, &format!("target/wasm32-wasip2/release/standard_{name}.wasm"))
}

/// The standard hello component built as version 2 (`HELLO_VERSION=2`).
pub fn standard_hello_v2() -> PathBuf {
    artifact("STANDARD_HELLO_V2_WASM", "target/standard-hello-2.wasm")
}

/// A `[[plugins]]` table serving `wasm` as `name` on `/name`; `extra` goes inside it.
pub fn plugin_table(name: &str, wasm: &Path, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\nroute = \"/{name}\"\nwasm = {}\n{extra}\n",
        toml_str(&wasm.to_string_lossy())
    )
}

/// The Evotor plugin's `[[plugins]]` table on `route` as an operator writes
/// it: the gateway's errors in Evotor's body, server credential
/// `server-secret`, partner API token `partner-secret`; `table` goes inside
/// the table (e.g. `allowed_outbound_hosts`, `[[plugins.jobs]]`), `settings`
/// into its `[plugins.config]`.
pub fn evotor_table(route: &str, table: &str, settings: &str) -> String {
    format!(
        "[[plugins]]\nname = \"evotor\"\nroute = {route}\nwasm = {wasm}\nerror_format = \"evotor\"\n{table}\n\
         [plugins.config]\nserver_bearer_token = \"server-secret\"\npartner_api_token = \"partner-secret\"\n{settings}\n",
        route = toml_str(route),
        wasm = toml_str(&evotor_wasm().to_string_lossy())
    )
}

/// The config of a gateway serving the Evotor plugin on `/` as
/// [`evotor_table`] writes it; `top` goes before the plugin table (e.g. a
/// `[limits]` table).
pub fn evotor_config(top: &str) -> String {
    format!("{top}\n{}", evotor_table("/", "", ""))
}

/// A TOML string literal.
pub fn toml_str(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// The admin token every test gateway requires.
pub const ADMIN_TOKEN: &str = "admin-secret";

/// A running `evogate serve` with its own data directory.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    /// `http://127.0.0.1:PORT` of the public listener.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
    log: Arc<Mutex<String>>,
    config: PathBuf,
    data: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway with `config` (TOML without `listen` and `data_dir`,
    /// which the harness sets).
    pub fn start(config: &str) -> Self {
        Self::start_under(&[], config)
    }

    /// [`Gateway::start`], the process started through `wrapper` (a program
    /// and its arguments that execs the rest, e.g. `prlimit --nofile=…`).
    pub fn start_under(wrapper: &[&str], config: &str) -> Self {
        Self::start_prepared(wrapper, |_| {}, config)
    }

    /// [`Gateway::start_under`], `prepare` run first with the data
    /// directory the gateway will use (created, empty), e.g. to mount a
    /// small file system there.
    pub fn start_prepared(wrapper: &[&str], prepare: impl FnOnce(&Path), config: &str) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(data.path().join("data")).expect("data dir");
        prepare(&data.path().join("data"));
        let path = data.path().join("evogate.toml");
        let full = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {}\n{config}",
            toml_str(&data.path().join("data").to_string_lossy())
        );
        std::fs::write(&path, full).expect("writing the config");
        let (child, base, admin, log) = spawn(wrapper, &path);
        Self { child, base, admin, log, config: path, data }
    }

    /// A gateway serving the Evotor plugin as [`evotor_config`] sets it up.
    pub fn evotor(top: &str) -> Self {
        Self::start(&evotor_config(top))
    }

    /// A gateway serving the test plugin as `g` on `/g`; `top` goes before
    /// the plugin table, `plugin` inside it (e.g. `max_concurrent_requests = 2`).
    pub fn guest(top: &str, plugin: &str) -> Self {
        let wasm = toml_str(&guest_wasm().to_string_lossy());
        Self::start(&format!("{top}\n[[plugins]]\nname = \"g\"\nroute = \"/g\"\nwasm = {wasm}\n{plugin}\n"))
    }

    /// Stops the gateway (SIGTERM, like an operator) and starts it again on
    /// the same data directory and config.
    pub fn restart(&mut self) {
        self.stop();
        let (child, base, admin, log) = spawn(&[], &self.config);
        self.child = child;
        self.base = base;
        self.admin = admin;
        self.log = log;
    }

    /// [`Gateway::restart`], the new process started through `wrapper`.
    pub fn restart_under(&mut self, wrapper: &[&str]) {
        self.stop();
        let (child, base, admin, log) = spawn(wrapper, &self.config);
        self.child = child;
        self.base = base;
        self.admin = admin;
        self.log = log;
    }

    /// Starts a second `evogate serve` on the same configuration while this
    /// one runs: it takes the listeners over (the handover), this one drains
    /// and exits, and from then on this handle is the new process.
    pub fn hand_over(&mut self) {
        let (child, base, admin, log) = spawn(&[], &self.config);
        let mut old = std::mem::replace(&mut self.child, child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while old.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "the gateway handing over did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.base = base;
        self.admin = admin;
        self.log = log;
    }

    /// Stops the gateway gracefully and waits for it to exit.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the gateway process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Waits up to 5 s for the log to contain `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The configuration file the gateway was started with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// An absolute admin URL for `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// An absolute URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(wrapper: &[&str], config: &Path) -> (Child, String, String, Arc<Mutex<String>>) {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(evogate_bin());
            command
        }
        None => Command::new(evogate_bin()),
    };
    let mut child = command
        .args(["serve", "--config"])
        .arg(config)
        .env("EVOGATE_LOG", "info")
        .env("NO_COLOR", "1")
        .env("EVOGATE_ADMIN__LISTEN", "127.0.0.1:0")
        .env("EVOGATE_ADMIN__TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting evogate");
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut admin_addr = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // A text line ends with the address; a JSON one (`[log] format = "json"`) with `"` and more.
            let address = |rest: &str| rest.split(['"', ' ']).next().unwrap_or_default().trim().to_owned();
            if let Some(addr) = line.split("evogate admin listening on ").nth(1) {
                admin_addr = Some(address(addr));
            } else if let Some(addr) = line.split("evogate listening on ").nth(1)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send((address(addr), admin_addr.clone().unwrap_or_default()));
            }
            if let Ok(mut log) = sink.lock() {
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok((base, admin)) => (child, base, admin, log),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("evogate did not start; its log:\n{}", log.lock().map(|l| l.clone()).unwrap_or_default());
        }
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The first header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The code of the first Evotor error item.
    pub fn error_code(&self) -> Option<u64> {
        self.json()["errors"][0]["code"].as_u64()
    }

    /// The status and detail of an RFC 9457 problem answer
    /// (`application/problem+json` with `type`, `title`, `status`,
    /// `detail`); `None` for any other answer.
    pub fn problem(&self) -> Option<(u64, String)> {
        if self.header("content-type") != Some("application/problem+json") {
            return None;
        }
        let body = self.json();
        (body["type"] == "about:blank" && body["title"].is_string()).then_some(())?;
        Some((body["status"].as_u64()?, body["detail"].as_str()?.to_owned()))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    )
}

fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    try_reply(result).expect("HTTP request failed")
}

fn try_reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Option<Reply> {
    let mut response = result.ok()?;
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let status = response.status().as_u16();
    let body = response.body_mut().with_config().limit(64 << 20).read_to_vec().ok()?;
    Some(Reply { status, headers, body })
}

/// Sends `method url` with headers and a body; `None` when the connection
/// fails (a gateway that was killed, say).
pub fn try_request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<Reply> {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    try_reply(agent().run(builder.body(body.to_vec()).expect("a valid request")))
}

/// Sends `method url` with headers and an optional body.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    match body {
        Some(body) => reply(agent().run(builder.body(body.to_vec()).expect("a valid request"))),
        None => reply(agent().run(builder.body(()).expect("a valid request"))),
    }
}

/// `GET url`.
pub fn get(url: &str) -> Reply {
    request("GET", url, &[], None)
}

/// `POST url` with a JSON body and optional bearer token.
pub fn post_json(url: &str, bearer: Option<&str>, body: &serde_json::Value) -> Reply {
    let auth = bearer.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    request("POST", url, &headers, Some(body.to_string().as_bytes()))
}

/// `POST url` with a body streamed in chunks (no `Content-Length`).
pub fn post_chunked(url: &str, body: &[u8]) -> Reply {
    let mut reader = body;
    reply(agent().post(url).send(ureq::SendBody::from_reader(&mut reader)))
}

/// Clients sending `GET` in a loop, one thread per URL, each request on a
/// connection of its own, until stopped: how many got 200, and every other
/// answer (status 0: the connection was refused or broke).
#[derive(Debug)]
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    served: Arc<std::sync::atomic::AtomicUsize>,
    failures: Arc<Mutex<Vec<(u16, String)>>>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts one client per URL.
    pub fn start(urls: impl IntoIterator<Item = String>) -> Self {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let clients = urls
            .into_iter()
            .map(|url| {
                let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let (status, text) = match try_request("GET", &url, &[], &[]) {
                            Some(reply) => (reply.status, reply.text()),
                            None => (0, "no answer: the connection was refused or broke".to_owned()),
                        };
                        if status == 200 {
                            served.fetch_add(1, Ordering::Relaxed);
                        } else if let Ok(mut failures) = failures.lock() {
                            failures.push((status, text));
                        }
                    }
                })
            })
            .collect();
        Self { stop, served, failures, clients }
    }

    /// Stops every client: the requests answered 200, and the other answers.
    pub fn stop(self) -> (usize, Vec<(u16, String)>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for client in self.clients {
            client.join().expect("a load client");
        }
        let failures = self.failures.lock().map(|failures| failures.clone()).unwrap_or_default();
        (self.served.load(std::sync::atomic::Ordering::Relaxed), failures)
    }
}

/// The environment variable naming the PostgreSQL database of the multi-node tests.
pub const POSTGRES_URL_VAR: &str = "EVOGATE_TEST_POSTGRES_URL";

/// The test database's URL, or `None` after saying clearly that the test is skipped.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "NOTE: {test} skipped: it needs PostgreSQL; set {POSTGRES_URL_VAR}=postgres://user@host:port/db to run it"
            );
            None
        }
    }
}

/// A schema of its own in the test database, dropped when this goes.
#[derive(Debug)]
pub struct TestSchema {
    url: String,
    /// The schema's name.
    pub name: String,
}

impl TestSchema {
    /// A fresh, unique schema name in the database at `url` (evogate creates it).
    pub fn new(url: &str) -> Self {
        let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Self { url: url.to_owned(), name: format!("evogate_e2e_{:x}_{}", unique, std::process::id()) }
    }

    /// The `[store]` table of a gateway on this schema, reaching the database at `url`.
    pub fn store_table(&self, url: &str) -> String {
        format!("[store]\nbackend = \"postgres\"\nurl = {}\nschema = {}\n", toml_str(url), toml_str(&self.name))
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async move {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await;
            }
        });
    }
}
