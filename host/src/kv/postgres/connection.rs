//! Reaching the database: opening the pool (TLS, timeouts, the runtime that drives the
//! connections), and what its errors mean to the `kv` contract.

use super::*;

impl PostgresBackend {
    /// Connects, creates or upgrades the schema, and fails with the reason
    /// when the database cannot be used.
    pub fn open(options: &PostgresOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(
            is_identifier(&options.schema),
            "store.schema {:?} must match [a-z_][a-z0-9_]*",
            options.schema
        );
        let mut config: tokio_postgres::Config = options.url.parse().context("parsing store.url")?;
        config.connect_timeout(options.connect_timeout);
        config.application_name("evogate");
        config.options(format!("-c statement_timeout={}", options.statement_timeout.as_millis()));
        // `sslmode=require` means TLS with the server's certificate verified
        // (public roots plus `tls_ca`); anything else means plain TCP, never
        // an unverified "maybe TLS".
        if config.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        let describe = format!(
            "postgres at {}/{} (schema {})",
            config
                .get_hosts()
                .iter()
                .map(|host| match host {
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            config.get_dbname().unwrap_or("postgres"),
            options.schema
        );
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(crate::crypto::client_tls(options.tls_ca.as_deref())?);
        // The connections and the commits run on the runtime that serves the
        // requests when the backend is opened on one with threads to spare:
        // a read's answer then wakes the request's task from the same
        // threads instead of crossing from another runtime's, which on a
        // small machine cost a third of a catalog page's time
        // (docs/benchmarks.md). Opened elsewhere (a tool, a single-threaded
        // test), the backend starts a small runtime of its own for them.
        let serving = tokio::runtime::Handle::try_current().ok().filter(|current| {
            current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                && current.metrics().num_workers() >= 2
        });
        let (runtime, handle) = match serving {
            Some(serving) => (None, serving),
            None => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("evogate-postgres")
                    .enable_all()
                    .build()
                    .context("starting the database runtime")?;
                let handle = runtime.handle().clone();
                (Some(runtime), handle)
            }
        };
        let connect = ConnectOn { tls, runtime: handle.clone() };
        let manager = Manager::from_connect(config, connect, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = {
            let _guard = handle.enter();
            Pool::builder(manager)
                .max_size(options.pool_size)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(options.connect_timeout))
                .create_timeout(Some(options.connect_timeout))
                .recycle_timeout(Some(options.connect_timeout))
                .build()
                .context("building the connection pool")?
        };
        let backend = Self {
            runtime,
            handle,
            pool,
            sql: Arc::new(Sql::new(&options.schema)),
            schema: options.schema.clone(),
            describe,
            call_timeout: options.connect_timeout + options.statement_timeout,
            compression: options.compression,
        };
        let (pool, schema) = (backend.pool.clone(), options.schema.clone());
        backend
            .run(async move { migrate(&pool, &schema).await.map_err(|err| KvError::Unavailable(format!("{err:#}"))) })
            .with_context(|| format!("preparing {}", backend.describe))?;
        Ok(backend)
    }

    /// Drops the schema and everything in it (for throwaway test schemas).
    pub fn destroy(&self) -> Result<(), KvError> {
        let (pool, schema) = (self.pool.clone(), self.schema.clone());
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.map_err(|err| classify(&err))
        })
    }

    /// `work` as a read for the request's own task, within the call timeout.
    pub(super) fn on_task<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, KvError>> + Send + 'static,
    ) -> Read<T> {
        let timeout = self.call_timeout;
        Box::pin(async move {
            tokio::time::timeout(timeout, work)
                .await
                .unwrap_or_else(|_| Err(KvError::Unavailable("postgres: no answer in time".into())))
        })
    }

    /// Runs `work` on the backend's runtime and waits for it, within the call timeout.
    pub(super) fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, KvError>> + Send + 'static,
    ) -> Result<T, KvError> {
        self.run_until(None, work)
    }

    /// [`Self::run`]; when the call is lost after `sent` was set (a COMMIT
    /// went out), its outcome is unknown rather than "nothing written".
    pub(super) fn run_until<T: Send + 'static>(
        &self,
        sent: Option<Arc<AtomicBool>>,
        work: impl std::future::Future<Output = Result<T, KvError>> + Send + 'static,
    ) -> Result<T, KvError> {
        let lost = move |why: &str| match sent.as_ref().is_some_and(|sent| sent.load(Ordering::SeqCst)) {
            true => KvError::OutcomeUnknown(format!("postgres: {why} after the commit was sent")),
            false => KvError::Unavailable(format!("postgres: {why}")),
        };
        wait_for(&self.handle, self.call_timeout, work, lost)
    }
}

/// Runs `work` on `handle`'s runtime and waits for it, within `timeout`:
/// from a thread that is not one of an async runtime's.
pub(super) fn block_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, KvError>> + Send + 'static,
) -> Result<T, KvError> {
    wait_for(handle, timeout, work, |why| KvError::Unavailable(format!("postgres: {why}")))
}

/// [`block_on`], `lost` saying what a call without an answer came to.
fn wait_for<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, KvError>> + Send + 'static,
    lost: impl Fn(&str) -> KvError + Clone + Send + 'static,
) -> Result<T, KvError> {
    let (done, result) = std::sync::mpsc::sync_channel(1);
    let lost_in_time = lost.clone();
    handle.spawn(async move {
        let outcome =
            tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| Err(lost_in_time("no answer in time")));
        let _ = done.send(outcome);
    });
    result.recv().unwrap_or_else(|_| Err(lost("the call was dropped")))
}

/// Opens connections on the backend's runtime, which then drives them,
/// wherever the pool is asked for one (a request's task, for reads).
pub(super) struct ConnectOn {
    pub(super) tls: tokio_postgres_rustls::MakeRustlsConnect,
    pub(super) runtime: tokio::runtime::Handle,
}

impl deadpool_postgres::Connect for ConnectOn {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
                > + Send
                + '_,
        >,
    > {
        let (config, tls, runtime) = (config.clone(), self.tls.clone(), self.runtime.clone());
        Box::pin(async move {
            let spawner = runtime.clone();
            let opened = runtime.spawn(async move {
                let (client, connection) = config.connect(tls).await?;
                let driver = spawner.spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::warn!(error = %err, "postgres connection closed");
                    }
                });
                Ok((client, driver))
            });
            match opened.await {
                Ok(opened) => opened,
                // Only when the runtime shuts down, i.e. the backend is being
                // dropped: the pool's create timeout then ends the wait.
                Err(_) => std::future::pending().await,
            }
        })
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        // The last handle may go on an async thread (a start that failed): never block there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The store's view of a database error: contention is a conflict, anything else unavailability.
pub(super) fn classify(err: &tokio_postgres::Error) -> KvError {
    match err.code() {
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED => {
            KvError::Conflict
        }
        _ => KvError::Unavailable(match err.as_db_error() {
            Some(db) => format!("postgres: {}: {}", db.code().code(), db.message()),
            None => format!("postgres: {err}"),
        }),
    }
}

pub(super) fn pool_error(err: deadpool_postgres::PoolError) -> KvError {
    match err {
        deadpool_postgres::PoolError::Backend(err) => classify(&err),
        other => KvError::Unavailable(format!("postgres pool: {other}")),
    }
}
