//! Starting a gateway: the store, the sandbox, the plugins, then the public
//! and admin listeners — the one way the binary, the benchmarks and any
//! embedding process start one ([`run`]).

use crate::app::App;
use crate::control::deploy;
use crate::http::server::{self, Gateway, ServeOptions};
use crate::http::{admin, tls::Tls};
use crate::runtime::sandbox;
use crate::settings::Settings;
use crate::{config, data_dir, kv};
use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// A gateway serving on its listeners (see [`run`]).
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    app: Arc<App>,
    serving: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The public listener's address (the port chosen when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The build plugin `name` serves new requests with now, to call it
    /// without HTTP ([`sandbox::PluginVersion::handle`]); `None` for a name
    /// not configured.
    pub fn live_plugin(&self, name: &str) -> Option<impl std::ops::Deref<Target = sandbox::PluginVersion> + use<>> {
        let routing = self.app.gateway.routing();
        Some(LivePlugin(routing.registry().by_name(name)?.current()))
    }

    /// The store's size on disk: the redb file, or evogate's PostgreSQL
    /// relations with their indexes; `None` for the in-memory store. It
    /// blocks on the store: call it off the async runtime's threads.
    pub fn store_bytes(&self) -> anyhow::Result<Option<u64>> {
        Ok(self.app.backend.bytes_on_disk()?)
    }

    /// Every record in the store as of one commit, in (namespace, key)
    /// order: `each` sees its namespace, key and value. For measuring what
    /// the store holds; it blocks on the store like [`Running::store_bytes`].
    pub fn store_records(&self, mut each: impl FnMut(&str, &str, &[u8])) -> anyhow::Result<()> {
        let mut snapshot = self.app.backend.snapshot()?;
        loop {
            let chunk = snapshot.next(kv::backup::CHUNK_BYTES)?;
            if chunk.is_empty() {
                return Ok(());
            }
            for record in &chunk {
                each(&record.ns, &record.key, &record.entry.value);
            }
        }
    }

    /// Waits until the gateway has stopped: `shutdown` resolved, in-flight
    /// requests drained, both listeners closed.
    pub async fn stopped(self) -> anyhow::Result<()> {
        let Running { app, serving, .. } = self;
        serving.await.context("the serving task failed")?;
        // Every acknowledged commit is already on disk; dropping the last handle closes the store.
        match Arc::try_unwrap(app) {
            Ok(app) => {
                drop(app);
                tracing::info!("store closed");
            }
            Err(_) => tracing::debug!("the store closes with the process"),
        }
        tracing::info!("evogate stopped");
        Ok(())
    }
}

/// A deployment's plugin build, kept alive while it is used.
struct LivePlugin(Arc<crate::control::registry::Deployment>);

impl std::ops::Deref for LivePlugin {
    type Target = sandbox::PluginVersion;

    fn deref(&self) -> &sandbox::PluginVersion {
        &self.0.plugin
    }
}

/// Starts a gateway as `config` describes it — store, plugins (their last
/// deployed versions), the public listener (TLS when configured) and the
/// admin listener — and serves until `shutdown` resolves; then drains
/// in-flight requests and stops ([`Running::stopped`]).
///
/// Also, for the process: installs the Prometheus metrics recorder the
/// admin `/metrics` renders (once per process; later gateways share it),
/// raises the open-file limit toward `limits.max_connections`, and on
/// `SIGHUP` reloads the TLS certificates.
pub async fn run(
    config: &config::Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    // Before anything slow (plugins compile for seconds): a certificate
    // renewal's SIGHUP during start must not kill the process.
    let hangup = hangup_signal();
    config.plugins()?;
    let metrics = metrics_handle();
    if let Some(traces) = crate::traces::TraceSettings::resolve(&config.telemetry, |name| std::env::var(name).ok())? {
        crate::traces::install(&traces, tokio::runtime::Handle::current()).context("[telemetry]")?;
    }
    raise_open_file_limit(config.limits.max_connections);
    let tls = match &config.tls {
        Some(tls) => Some(Arc::new(Tls::new(&tls.cert.relative(), &tls.key.relative())?)),
        None => None,
    };
    let admin_tls = match &config.admin.tls {
        Some(tls) => Some(Arc::new(Tls::http1(&tls.cert.relative(), &tls.key.relative()).context("[admin.tls]")?)),
        None => None,
    };
    let settings = Settings::from_config(config);
    // Sockets passed by systemd, or handed over by the gateway running on
    // this data directory (which stops, and closes the store, first).
    let data_dir = std::path::absolute(config.data_dir()).context("resolving data_dir")?;
    let mut taken = take_listeners(config, &data_dir)?;
    let app = Arc::new(start(config, &settings).await?);
    let listener = taken.public(config.listen).await?;
    let admin_listener = taken.admin(config.admin.listen).await?;
    let (handed_over, on_handover) = tokio::sync::oneshot::channel::<()>();
    offer_handover(&data_dir, &listener, &admin_listener, handed_over);
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            _ = on_handover => {}
        }
    };
    let addr = listener.local_addr().context("reading the bound address")?;
    let admin_addr = admin_listener.local_addr().context("reading the admin address")?;
    let probe = Arc::new(admin::StoreProbe::default());
    let admin =
        Arc::new(admin::Admin { app: app.clone(), metrics, token: Some(admin_token(config)?), probe: probe.clone() });
    let health = config.health_path.clone().map(|path| Arc::new(admin::Health { path, app: app.clone(), probe }));
    let reloadable = [("public", tls.clone()), ("admin", admin_tls.clone())]
        .into_iter()
        .filter_map(|(which, tls)| Some((which, tls?)))
        .collect();
    tokio::spawn(hangups(hangup, reloadable, app.clone()));
    let admin_scheme = if admin_tls.is_some() { "https" } else { "http" };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let options = ServeOptions { tls, health, ..settings.serve };
    let gateway = app.gateway.clone();
    let scheduler = app.scheduler.clone();
    let drain_timeout = options.drain;
    let serving = tokio::spawn(async move {
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = tokio::spawn(admin::serve(admin_listener, admin, admin_tls, async {
            let _ = admin_stopped.await;
        }));
        server::serve(listener, gateway, shutdown, options).await;
        scheduler.drain(drain_timeout).await;
        let _ = stop_admin.send(());
        let _ = admin_task.await;
        // The drained requests' spans leave before the process does.
        let _ = tokio::task::spawn_blocking(crate::traces::flush).await;
    });
    tracing::info!("evogate admin listening on {admin_scheme}://{admin_addr}");
    tracing::info!("evogate listening on {scheme}://{addr}");
    Ok(Running { addr, admin_addr, app, serving })
}

/// The listening sockets systemd passed, else those of the gateway running
/// on `data_dir` (it hands them over and stops), else none.
fn take_listeners(config: &config::Config, data_dir: &std::path::Path) -> anyhow::Result<crate::listeners::Taken> {
    let systemd = crate::listeners::from_systemd()?;
    if systemd.public.is_some() || systemd.admin.is_some() {
        tracing::info!("serving the sockets systemd passed (socket activation)");
        return Ok(systemd);
    }
    // The one before drains (grace, then requests in flight) and closes its store.
    let wait = std::time::Duration::from_millis(config.limits.drain_grace_ms + config.limits.drain_timeout_ms)
        + std::time::Duration::from_secs(60);
    Ok(crate::listeners::take_over(data_dir, wait)?.unwrap_or_default())
}

/// Lets the next `evogate serve` on `data_dir` take the two listeners
/// over ([`crate::listeners::serve_handover`]); when one does,
/// `handed_over` starts this gateway's shutdown.
fn offer_handover(
    data_dir: &std::path::Path,
    public: &tokio::net::TcpListener,
    admin: &tokio::net::TcpListener,
    handed_over: tokio::sync::oneshot::Sender<()>,
) {
    #[cfg(not(unix))]
    let _ = (data_dir, public, admin, handed_over);
    #[cfg(unix)]
    let offered = (|| -> anyhow::Result<()> {
        use std::os::fd::AsFd as _;
        let (public, admin) = (public.as_fd().try_clone_to_owned()?, admin.as_fd().try_clone_to_owned()?);
        crate::listeners::serve_handover(data_dir, public, admin, move || {
            let _ = handed_over.send(());
        })
    })();
    #[cfg(unix)]
    if let Err(err) = offered {
        tracing::warn!(error = %format!("{err:#}"), "no handover socket: a restart without systemd refuses connections while it lasts");
    }
}

/// Opens the store and loads every configured plugin (or its last
/// deployed version); fails with the reason when any cannot be loaded.
pub(crate) async fn start(config: &config::Config, settings: &Settings) -> anyhow::Result<App> {
    // Absolute, so that every part (the compilation cache insists) agrees on it.
    let data_dir = std::path::absolute(config.data_dir()).context("resolving data_dir")?;
    data_dir::create(&data_dir).with_context(|| format!("creating data_dir {}", data_dir.display()))?;
    data_dir::make_private(&data_dir).with_context(|| format!("making data_dir {} private", data_dir.display()))?;
    let backend = kv::open(&config.store, &data_dir)?;
    tracing::info!(store = %backend.describe(), "key-value store open");
    // Compiled code is loaded and run as is: only this user may write it.
    let cache_dir = data_dir.join("cache");
    std::fs::create_dir_all(&cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", cache_dir.display()))?;
    }
    let sandbox = Arc::new(sandbox::Sandbox::new(settings.sandbox, Some(&cache_dir))?);
    let (deployer, registry) = deploy::Deployer::start(
        &config.plugins,
        sandbox.clone(),
        backend.clone(),
        &data_dir,
        config.admin.max_plugin_bytes,
    )
    .await?;
    let gateway = Arc::new(Gateway::new(registry, settings.requests.clone(), sandbox.clone()));
    let weak = Arc::downgrade(&gateway);
    let router: std::sync::Weak<dyn crate::runtime::calls::Router> = weak;
    sandbox.serve_calls(router);
    let deployer = Arc::new(deployer);
    // On a shared store: take up deploys made through other nodes.
    tokio::spawn(deployer.clone().follow());
    let scheduler = Arc::new(crate::control::jobs::Scheduler::new(
        &config.plugins,
        gateway.routing().registry().mounts(),
        backend.clone(),
    ));
    scheduler.start();
    let reloader = crate::control::reload::Reloader::new(config.clone());
    Ok(App { gateway, deployer, backend, scheduler, reloader })
}

/// The process's Prometheus recorder, installed by the first gateway;
/// `None` when another recorder was installed before (then `/metrics` is empty).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
            Ok(handle) => {
                crate::telemetry::describe();
                Some(handle)
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot install the metrics recorder: /metrics stays empty");
                None
            }
        })
        .clone()
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

/// Listens for `SIGHUP` from now on (its default action ends the process).
fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    return match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP");
            None
        }
    };
}

/// The admin API's token: `admin.token`, else the one kept in the data
/// directory, made at the first start (256 random bits, in a file only the
/// user running evogate may read): the admin API is never open.
fn admin_token(config: &config::Config) -> anyhow::Result<String> {
    if let Some(token) = config.admin_token()? {
        return Ok(token);
    }
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let token = hex::encode(rand::random::<[u8; 32]>());
    let path = config.admin_token_file();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(file = %path.display(), "no admin.token configured: made one; the evogate commands read it from there");
    Ok(token)
}

/// `SIGHUP` re-reads the TLS certificates and keys (public and admin
/// listeners; a bad new pair keeps the old one), then the configuration
/// ([`crate::control::reload`]; one with a problem keeps the one in force).
async fn hangups(hangup: Hangup, tls: Vec<(&'static str, Arc<Tls>)>, app: Arc<App>) {
    #[cfg(unix)]
    if let Some(mut hup) = hangup {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            for (listener, tls) in &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!(listener, "SIGHUP: TLS certificate reloaded"),
                    Err(err) => tracing::error!(
                        listener,
                        error = %format!("{err:#}"),
                        "SIGHUP: keeping the current TLS certificate"
                    ),
                }
            }
            app.reloader.reload(&app).await;
        }
    }
    #[cfg(not(unix))]
    let _ = (hangup, tls, app);
}

/// Descriptors the gateway needs besides client connections: listeners,
/// the store, the compilation cache, database connections, logs.
const FILE_HEADROOM: u64 = 256;

/// Raises the soft open-file limit to the hard one (a connection is a
/// descriptor; the usual soft limit of 1024 is far below
/// `limits.max_connections`) and warns when even that is too low.
fn raise_open_file_limit(max_connections: usize) {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
        // "Unlimited" is not accepted for open files: Linux's own ceiling then.
        let target = maximum.unwrap_or(1 << 20);
        let mut soft = current.unwrap_or(target);
        if soft < target {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum }) {
                Ok(()) => soft = target,
                Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit"),
            }
        }
        let needed = max_connections as u64 + FILE_HEADROOM;
        if soft < needed {
            tracing::warn!(
                open_files = soft,
                needed,
                "the open-file limit is below limits.max_connections plus {FILE_HEADROOM}: connections past it fail \
                 to be accepted; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower limits.max_connections"
            );
        } else {
            tracing::debug!(open_files = soft, "open-file limit");
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_admin_token_one_is_made_once_readable_by_its_user_only_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = figment::value::magic::RelativePathBuf::from(dir.path().to_path_buf());
        let mut config = config::Config { data_dir, ..Default::default() };
        assert_eq!(config.admin_token().expect("read"), None, "none before the first start");
        let made = admin_token(&config).expect("made");
        assert_eq!(made.len(), 64, "256 bits in hex");
        let mode = std::fs::metadata(config.admin_token_file()).expect("the file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(admin_token(&config).expect("again"), made, "the next start keeps it");
        assert_eq!(config.admin_token().expect("read"), Some(made.clone()), "what the commands read");
        config.admin.token = Some("configured".into());
        assert_eq!(admin_token(&config).expect("configured"), "configured", "admin.token wins");
    }
}
