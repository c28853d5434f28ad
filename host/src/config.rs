//! The gateway configuration: defaults, then the TOML file, then `EVOGATE_*`
//! environment variables (nested keys joined by `__`, e.g.
//! `EVOGATE_LIMITS__REQUEST_TIMEOUT_MS=5000`).

use crate::allowed_hosts::OutboundRules;
use crate::kv::BackendKind;
pub use crate::kv::StoreConfig;
use anyhow::Context as _;
use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::value::magic::RelativePathBuf;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything `evogate serve` needs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the public listener.
    pub listen: SocketAddr,
    /// A path on the public listener that answers readiness (the admin's
    /// `/readyz`) for load balancers that reach no other listener; none by
    /// default. It comes before every plugin's route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// Directory for the store and deployed artifacts; created if missing.
    pub data_dir: RelativePathBuf,
    /// The key-value store.
    pub store: StoreConfig,
    /// Request and sandbox limits.
    pub limits: LimitsConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// HTTPS for the public listener; without it the listener speaks plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// The plugins to serve, each on its own route.
    pub plugins: Vec<PluginConfig>,
    /// Traces (OpenTelemetry, exported over OTLP); off by default.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// How log lines are written.
    #[serde(default)]
    pub log: LogConfig,
    /// The file this configuration was read from (a reload reads it again); not a key.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[telemetry]`: traces exported over OTLP/HTTP. Each key left out is
/// read from the standard `OTEL_*` variable, as every OpenTelemetry SDK
/// reads it; tracing is on when an endpoint is set here or there.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The OTLP receiver's base URL (`/v1/traces` is appended), as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `"http/protobuf"` (the default) or `"http/json"`, as `OTEL_EXPORTER_OTLP_PROTOCOL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_protocol: Option<String>,
    /// The share of new traces kept, 0 to 1 (default 1), as
    /// `OTEL_TRACES_SAMPLER_ARG`; a continued trace keeps its caller's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_ratio: Option<f64>,
    /// The service's name in traces (default `evogate`), as `OTEL_SERVICE_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// `[log]`: how log lines are written (to stderr).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` (the default) or `"json"`: one object a line.
    #[serde(default)]
    pub format: LogFormat,
}

/// A log line's form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text for people.
    #[default]
    Text,
    /// One JSON object a line, for machines.
    Json,
}

/// `[admin]`: the operators' listener (deploy, rollback, health, metrics).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener.
    pub listen: SocketAddr,
    /// Bearer token the admin API requires; required off loopback.
    pub token: Option<String>,
    /// Largest component a deploy accepts.
    pub max_plugin_bytes: usize,
    /// HTTPS for the admin listener (re-read on `SIGHUP`); required off
    /// loopback unless `allow_plain_http` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Serve the admin API in plain HTTP on a non-loopback address (the
    /// token then travels in clear: only on a network you trust).
    #[serde(default)]
    pub allow_plain_http: bool,
}

/// `[tls]`: PEM files, re-read on `SIGHUP`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: RelativePathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: RelativePathBuf,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body; larger requests get 413.
    pub max_body_bytes: usize,
    /// Request body bytes held in memory at once across all requests; a
    /// request waits (within its deadline) for room before its body is read.
    /// Default: 256 MiB or 4 × `max_body_bytes`, whichever is larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes_in_flight: Option<usize>,
    /// Time one request may spend in the plugin; past it, 503.
    pub request_timeout_ms: u64,
    /// Linear memory one plugin instance may use.
    pub instance_memory_bytes: usize,
    /// Requests served at once across all plugins; more wait for a slot
    /// until their deadline.
    pub max_concurrent_requests: u32,
    /// Store calls (commits, scans, PostgreSQL reads) running at once across
    /// all plugins; a call that finds none free by its request's deadline
    /// fails as unavailable without touching the store.
    #[serde(default = "default_kv_calls")]
    pub max_kv_calls_in_flight: u32,
    /// Open client connections at most; past it a new connection gets 503 and is closed.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and longest idle time
    /// of a keep-alive connection between requests (slow clients are cut off).
    pub header_read_timeout_ms: u64,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// On SIGTERM or SIGINT, how long requests in flight may take to finish.
    pub drain_timeout_ms: u64,
    /// On SIGTERM or SIGINT, how long the gateway keeps accepting new
    /// requests after `/readyz` turned 503 (so load balancers deregister it
    /// before its listener closes); 0 closes the listener at once.
    #[serde(default)]
    pub drain_grace_ms: u64,
    /// Slowest a request body may arrive once its first bytes are in and
    /// room is held for it, after a second's grace; a slower one gets 408
    /// and its room back. 0: no minimum (the request deadline still holds).
    #[serde(default = "default_min_body_rate")]
    pub min_body_bytes_per_sec: u64,
    /// Largest response body a plugin's outgoing request may receive; past
    /// it the plugin's read fails (`HTTP-response-body-size`).
    #[serde(default = "default_outbound_response_bytes")]
    pub max_outbound_response_bytes: usize,
}

fn default_outbound_response_bytes() -> usize {
    8 * 1024 * 1024
}

fn default_kv_calls() -> u32 {
    64
}

fn default_min_body_rate() -> u64 {
    64 * 1024
}

impl LimitsConfig {
    /// `max_body_bytes_in_flight`, or its default.
    pub fn body_bytes_in_flight(&self) -> usize {
        self.max_body_bytes_in_flight.unwrap_or_else(|| (256 << 20).max(self.max_body_bytes.saturating_mul(4)))
    }
}

/// One `[[plugins]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Plugin name: `[a-z0-9_-]{1,64}`; also names its kv namespace.
    pub name: String,
    /// Path prefix served by this plugin; the longest matching prefix wins.
    pub route: String,
    /// The component file; relative paths are taken from the config file's directory.
    pub wasm: RelativePathBuf,
    /// Settings handed to the plugin through the `config` interface.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// Requests of this plugin running at once, at most (default: `limits.max_concurrent_requests`);
    /// past it, 503 with `Retry-After` at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
    /// Requests of this plugin running at once with one and the same
    /// `Authorization` value (one user's token, say), at most; past it, 503
    /// with `Retry-After` at once. None, the default: no such cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_per_credential: Option<u32>,
    /// Where the plugin may send HTTP requests (`wasi:http/outgoing-handler`):
    /// `SCHEME://HOST[:PORT]` entries, Spin's notation (see [`crate::outbound`]).
    /// Empty, the default: every outgoing request is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// PEM file of CA certificates trusted for the plugin's outgoing HTTPS
    /// requests besides the public roots (a private endpoint, a test server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_ca: Option<RelativePathBuf>,
    /// How the gateway's own errors on this route are written: `"problem"`
    /// (RFC 9457, the default) or `"evotor"` (Evotor's `{"errors":[…]}`).
    #[serde(default)]
    pub error_format: crate::edge::ErrorFormat,
    /// The plugins this one may call in process, by name, with requests to
    /// `http://NAME.evogate.internal/…` (see `docs/evotor-apps.md`); none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<String>,
    /// Scheduled jobs: `[[plugins.jobs]]` entries, run through the plugin's
    /// `scheduled` export (world `plugin-with-jobs`, 0.2.2 on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobConfig>,
}

/// One `[[plugins.jobs]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Job name, `[a-z0-9_-]{1,64}`, unique in its plugin; the plugin's `run` gets it.
    pub name: String,
    /// How often it runs: a duration such as `"2s"`, `"15m"`, `"1h 30m"`,
    /// `"1d"`, from 1 s to 7 days. Ticks fall on whole multiples of it since
    /// the Unix epoch, so every node agrees on them (`"1d"` runs at 00:00 UTC).
    pub every: String,
    /// Longest one run may take (default 60 s, at most 1 h); past it the
    /// instance traps and the run counts as `timeout`.
    #[serde(default = "default_job_timeout")]
    pub timeout_ms: u64,
    /// A random delay of up to this (a duration, less than `every`) before
    /// each run, so jobs of many gateways do not all call out at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
}

/// Longest `timeout_ms` of a job.
pub const MAX_JOB_TIMEOUT_MS: u64 = 3_600_000;
/// Shortest and longest `every` of a job.
const JOB_EVERY_RANGE: std::ops::RangeInclusive<std::time::Duration> =
    std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(7 * 24 * 3600);

fn default_job_timeout() -> u64 {
    60_000
}

/// A job's schedule, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSchedule {
    /// The interval between ticks.
    pub every: std::time::Duration,
    /// Random delay of up to this before a run.
    pub jitter: std::time::Duration,
    /// Longest one run may take.
    pub timeout: std::time::Duration,
}

impl JobConfig {
    /// The schedule, or why the entry is not one.
    pub fn schedule(&self) -> anyhow::Result<JobSchedule> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
        anyhow::ensure!(name_ok, "job name {:?} must match [a-z0-9_-]{{1,64}}", self.name);
        let every = humantime::parse_duration(&self.every)
            .with_context(|| format!("job {:?}: every = {:?} is not a duration like \"15m\"", self.name, self.every))?;
        anyhow::ensure!(
            JOB_EVERY_RANGE.contains(&every) && every.subsec_nanos() == 0,
            "job {:?}: every = {:?} must be whole seconds from 1s to 7d",
            self.name,
            self.every
        );
        let jitter = match &self.jitter {
            Some(jitter) => humantime::parse_duration(jitter)
                .with_context(|| format!("job {:?}: jitter = {jitter:?} is not a duration like \"5s\"", self.name))?,
            None => std::time::Duration::ZERO,
        };
        anyhow::ensure!(jitter < every, "job {:?}: jitter must be less than every", self.name);
        anyhow::ensure!(
            (1..=MAX_JOB_TIMEOUT_MS).contains(&self.timeout_ms),
            "job {:?}: timeout_ms must be within 1..={MAX_JOB_TIMEOUT_MS}",
            self.name
        );
        Ok(JobSchedule { every, jitter, timeout: std::time::Duration::from_millis(self.timeout_ms) })
    }
}

/// What a plugin's instances are given besides the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginSettings {
    /// The `config` interface's values (for standard components, their environment too).
    pub config: BTreeMap<String, String>,
    /// Where outgoing HTTP requests may go.
    pub outbound: OutboundRules,
    /// Extra CA certificates (PEM) for outgoing HTTPS.
    pub outbound_ca: Option<PathBuf>,
    /// The plugins it may call in process (`calls`).
    pub calls: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            health_path: None,
            data_dir: RelativePathBuf::from(PathBuf::from("./data")),
            store: StoreConfig {
                backend: BackendKind::Redb,
                url: None,
                schema: "public".into(),
                pool_size: 16,
                connect_timeout_ms: 5000,
                statement_timeout_ms: 10_000,
                tls_ca: None,
                compression: crate::kv::Compression::Zstd,
                #[cfg(feature = "fault-injection")]
                faults: None,
            },
            limits: LimitsConfig {
                max_body_bytes: 32 * 1024 * 1024,
                max_body_bytes_in_flight: None,
                request_timeout_ms: 8000,
                // A 32 MiB delivery is held once as received and once as the records it becomes.
                instance_memory_bytes: 128 * 1024 * 1024,
                max_concurrent_requests: 256,
                max_kv_calls_in_flight: default_kv_calls(),
                max_connections: 4096,
                header_read_timeout_ms: 10_000,
                max_header_bytes: 64 * 1024,
                drain_timeout_ms: 10_000,
                drain_grace_ms: 0,
                min_body_bytes_per_sec: default_min_body_rate(),
                max_outbound_response_bytes: default_outbound_response_bytes(),
            },
            tls: None,
            admin: AdminConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
                token: None,
                max_plugin_bytes: 64 * 1024 * 1024,
                tls: None,
                allow_plain_http: false,
            },
            // None: what to serve is the configuration file's to say.
            plugins: Vec::new(),
            telemetry: TelemetryConfig::default(),
            log: LogConfig::default(),
            source: None,
        }
    }
}

/// Why a configuration without plugins cannot be served.
pub const NO_PLUGINS: &str = "no [[plugins]] configured: evogate serves the plugins its configuration file names \
     (pass --config FILE; evogate.example.toml shows one)";

impl Config {
    /// The plugins to serve; an error when there is none (the built-in
    /// defaults name none: the other commands read the configuration for
    /// its store and admin listener alone).
    pub fn plugins(&self) -> anyhow::Result<&[PluginConfig]> {
        anyhow::ensure!(!self.plugins.is_empty(), NO_PLUGINS);
        Ok(&self.plugins)
    }

    /// Loads defaults, then `file` (if given), then the environment, and checks the result.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        // Absolute, so that a reload (which reads it again) reads the same file whatever the working directory.
        let file = match file {
            Some(file) => Some(std::path::absolute(file).context("resolving the configuration file's path")?),
            None => None,
        };
        if let Some(file) = &file {
            anyhow::ensure!(file.is_file(), "config file {} does not exist", file.display());
            figment = figment.merge(Toml::file_exact(file));
        }
        let base = file.as_deref().and_then(Path::parent).unwrap_or(Path::new(".")).to_owned();
        let mut config = Self::extract(figment, &base)?;
        config.source = file;
        Ok(config)
    }

    /// [`Config::load`] with the file's contents given as text (paths are
    /// then relative to the working directory).
    #[cfg(fuzzing)]
    pub fn load_toml(text: &str) -> anyhow::Result<Self> {
        Self::extract(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)), Path::new("."))
    }

    /// Merges the environment over `figment`, puts in place the values
    /// `{ file }` and `{ env }` stand for (files relative to `base`), then
    /// reads and checks the result.
    fn extract(figment: Figment, base: &Path) -> anyhow::Result<Self> {
        let env = |name: &str| std::env::var(name).ok();
        let mut figment = figment
            // LOG, CONFIG and ADMIN_* are the CLI's, PERFMAP the profiler switch; TEST_POSTGRES_URL is the test suites'.
            .merge(
                Env::prefixed("EVOGATE_")
                    .ignore(&[
                        "LOG",
                        "CONFIG",
                        "ADMIN_ADDR",
                        "ADMIN_TOKEN",
                        "ADMIN_CA",
                        "PERFMAP",
                        "STORE_URL",
                        "TEST_POSTGRES_URL",
                    ])
                    // A plugin's variables name it by position or name: read below, not as a map.
                    .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("plugins"))
                    .split("__"),
            )
            // The database URL under its conventional single name too.
            .merge(Env::raw().only(&["EVOGATE_STORE_URL"]).map(|_| "store.url".into()));
        // The gateway's own secrets may be given as `{ file }` or `{ env }` too.
        for key in ["admin.token", "store.url"] {
            let Ok(table) = figment.extract_inner::<toml::Table>(key) else { continue };
            if let Some(resolved) = sources::indirect(&table, base, &env) {
                let text = resolved.context(key)?;
                figment = figment.merge(Serialized::default(key, text));
            }
        }
        let mut config: Config = figment.extract().context("reading the configuration")?;
        let vars =
            std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
        sources::apply_plugin_variables(&mut config.plugins, vars)?;
        sources::resolve_plugin_settings(&mut config.plugins, base, &env)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(path) = &self.health_path {
            let plain = path.starts_with('/')
                && path.len() > 1
                && path.len() <= 256
                && path.bytes().all(|byte| byte.is_ascii_graphic() && !b"?#%".contains(&byte));
            anyhow::ensure!(plain, "health_path = {path:?}: a path like \"/.well-known/ready\" is needed (no query)");
            if let Some(plugin) = self.plugins.iter().find(|plugin| normalize_route(&plugin.route) == path.as_str()) {
                anyhow::bail!(
                    "health_path = {path:?} is plugin {:?}'s route: it would never reach the plugin",
                    plugin.name
                );
            }
        }
        let telemetry = &self.telemetry;
        if let Some(endpoint) = &telemetry.otlp_endpoint {
            anyhow::ensure!(
                endpoint.starts_with("http://") || endpoint.starts_with("https://"),
                "telemetry.otlp_endpoint = {endpoint:?}: an http:// or https:// URL is needed"
            );
        }
        if let Some(protocol) = &telemetry.otlp_protocol {
            anyhow::ensure!(
                protocol == "http/protobuf" || protocol == "http/json",
                "telemetry.otlp_protocol = {protocol:?}: \"http/protobuf\" or \"http/json\""
            );
        }
        if let Some(ratio) = telemetry.sampling_ratio {
            anyhow::ensure!((0.0..=1.0).contains(&ratio), "telemetry.sampling_ratio must be within 0..=1");
        }
        let limits = &self.limits;
        anyhow::ensure!(limits.max_body_bytes > 0, "limits.max_body_bytes must be positive");
        anyhow::ensure!(
            limits.body_bytes_in_flight() >= limits.max_body_bytes,
            "limits.max_body_bytes_in_flight must be at least limits.max_body_bytes"
        );
        anyhow::ensure!(
            (1..=600_000).contains(&limits.request_timeout_ms),
            "limits.request_timeout_ms must be within 1..=600000"
        );
        anyhow::ensure!(
            limits.instance_memory_bytes >= 1024 * 1024,
            "limits.instance_memory_bytes must be at least 1 MiB"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&limits.max_concurrent_requests),
            "limits.max_concurrent_requests must be within 1..=10000"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&limits.max_kv_calls_in_flight),
            "limits.max_kv_calls_in_flight must be within 1..=10000"
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&limits.max_connections),
            "limits.max_connections must be within 1..=1000000"
        );
        anyhow::ensure!(
            (1..=600_000).contains(&limits.header_read_timeout_ms),
            "limits.header_read_timeout_ms must be within 1..=600000"
        );
        anyhow::ensure!(
            (1024..=1024 * 1024).contains(&limits.max_header_bytes),
            "limits.max_header_bytes must be within 1024..=1048576"
        );
        anyhow::ensure!(limits.drain_timeout_ms <= 3_600_000, "limits.drain_timeout_ms must be at most 3600000");
        anyhow::ensure!(limits.drain_grace_ms <= 600_000, "limits.drain_grace_ms must be at most 600000");
        anyhow::ensure!(limits.max_outbound_response_bytes > 0, "limits.max_outbound_response_bytes must be positive");
        if self.store.backend == BackendKind::Postgres {
            self.store.postgres_options()?;
            anyhow::ensure!((1..=1000).contains(&self.store.pool_size), "store.pool_size must be within 1..=1000");
        }
        let open_admin = self.admin.token.as_deref().is_none_or(str::is_empty);
        anyhow::ensure!(
            !open_admin || self.admin.listen.ip().is_loopback(),
            "admin.listen = {} is not a loopback address: set admin.token (or EVOGATE_ADMIN__TOKEN) to protect it",
            self.admin.listen
        );
        anyhow::ensure!(
            self.admin.listen.ip().is_loopback() || self.admin.tls.is_some() || self.admin.allow_plain_http,
            "admin.listen = {} is not a loopback address: set [admin.tls] so the admin token does not travel in \
             clear, or admin.allow_plain_http = true to accept that",
            self.admin.listen
        );
        anyhow::ensure!(self.admin.max_plugin_bytes > 0, "admin.max_plugin_bytes must be positive");
        let mut names = std::collections::HashSet::new();
        let mut routes = std::collections::HashSet::new();
        for plugin in &self.plugins {
            let name_ok = !plugin.name.is_empty()
                && plugin.name.len() <= 64
                && plugin.name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
            anyhow::ensure!(name_ok, "plugin name {:?} must match [a-z0-9_-]{{1,64}}", plugin.name);
            anyhow::ensure!(
                plugin.route.starts_with('/'),
                "route {:?} of plugin {:?} must start with '/'",
                plugin.route,
                plugin.name
            );
            anyhow::ensure!(names.insert(&plugin.name), "plugin name {:?} is used twice", plugin.name);
            anyhow::ensure!(
                plugin.max_concurrent_requests.is_none_or(|cap| (1..=limits.max_concurrent_requests).contains(&cap)),
                "max_concurrent_requests of plugin {:?} must be within 1..=limits.max_concurrent_requests",
                plugin.name
            );
            anyhow::ensure!(
                plugin
                    .max_concurrent_per_credential
                    .is_none_or(|cap| (1..=limits.max_concurrent_requests).contains(&cap)),
                "max_concurrent_per_credential of plugin {:?} must be within 1..=limits.max_concurrent_requests",
                plugin.name
            );
            OutboundRules::parse(&plugin.allowed_outbound_hosts)
                .with_context(|| format!("plugin {:?}", plugin.name))?;
            let mut jobs = std::collections::HashSet::new();
            for job in &plugin.jobs {
                job.schedule().with_context(|| format!("plugin {:?}", plugin.name))?;
                anyhow::ensure!(
                    jobs.insert(&job.name),
                    "plugin {:?}: job {:?} is declared twice",
                    plugin.name,
                    job.name
                );
            }
            let mut callees = std::collections::HashSet::new();
            for callee in &plugin.calls {
                anyhow::ensure!(
                    self.plugins.iter().any(|other| other.name == *callee),
                    "plugin {:?}: calls = [{callee:?}], but no plugin is named {callee:?}",
                    plugin.name
                );
                anyhow::ensure!(callee != &plugin.name, "plugin {:?}: a plugin cannot call itself", plugin.name);
                anyhow::ensure!(callees.insert(callee), "plugin {:?}: {callee:?} is in calls twice", plugin.name);
            }
            anyhow::ensure!(
                routes.insert(normalize_route(&plugin.route)),
                "route {:?} is served by two plugins",
                plugin.route
            );
        }
        Ok(())
    }

    /// The data directory, resolved.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.relative()
    }

    /// Where the admin token lives when `admin.token` is not set: generated
    /// at the first start, readable by the user running evogate only.
    pub fn admin_token_file(&self) -> PathBuf {
        self.data_dir().join(ADMIN_TOKEN_FILE)
    }

    /// The admin token the API requires: `admin.token`, else the contents
    /// of [`Config::admin_token_file`], if it exists.
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = self.admin.token.as_deref().filter(|token| !token.is_empty()) {
            return Ok(Some(token.to_owned()));
        }
        let path = self.admin_token_file();
        match std::fs::read_to_string(&path) {
            Ok(token) if !token.trim().is_empty() => Ok(Some(token.trim().to_owned())),
            Ok(_) => anyhow::bail!("{} is empty: delete it to have a new token made", path.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(anyhow::Error::new(err).context(format!("reading {}", path.display()))),
        }
    }
}

/// The admin token's file in `data_dir`.
const ADMIN_TOKEN_FILE: &str = "admin.token";

impl PluginConfig {
    /// What the plugin's instances get: the `config` values, every one
    /// as a string (TOML strings as they are, other values in TOML syntax),
    /// and the outbound rules ([`Config::load`] refused bad ones).
    pub fn plugin_settings(&self) -> PluginSettings {
        PluginSettings {
            config: self.config_strings(),
            outbound: OutboundRules::parse(&self.allowed_outbound_hosts).unwrap_or_default(),
            outbound_ca: self.outbound_ca.as_ref().map(RelativePathBuf::relative),
            calls: self.calls.clone(),
        }
    }

    fn config_strings(&self) -> BTreeMap<String, String> {
        self.config
            .iter()
            .map(|(key, value)| {
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (key.clone(), text)
            })
            .collect()
    }
}

/// A route without its trailing slash (except the root), so `/a` and `/a/` are one route.
pub fn normalize_route(route: &str) -> &str {
    match route.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    }
}

mod sources;
#[cfg(test)]
mod tests;
