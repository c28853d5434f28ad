//! The shared backend for several gateway nodes: one PostgreSQL database
//! (or anything speaking its wire protocol), reached through a pool.
//!
//! Layout (in the configured schema): `evogate_kv (ns, key bytea, value
//! bytea, version bigint)` with primary key `(ns, key)`, so a prefix scan is
//! a range query on the key's index, in bytewise order; `evogate_version`, a
//! sequence that gives every commit a new version; `evogate_meta`, which
//! records the schema version. A commit is one `SERIALIZABLE` transaction:
//! it reads the versions of the checked keys, writes, and commits; when
//! another node's commit interleaves, PostgreSQL aborts one of them
//! (serialization failure), which the plugin sees as `conflict` and retries.
//! Nothing is ever lost to a race.
//!
//! The [`Backend`] trait is synchronous (the sandbox calls it from tokio's
//! blocking pool); this backend runs its async client on a small runtime of
//! its own and waits for each call.

use super::{Backend, Check, Entry, KvError, Write};
use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// The newest schema this build knows; each step below upgrades to the next.
const SCHEMA_VERSION: i64 = 1;
/// Orders the commits that carry stamped writes.
const STAMP_LOCK: i64 = 0x0065_766f_6773_7461;
/// Serializes schema creation and migrations across nodes starting together.
const MIGRATION_LOCK: i64 = 0x0065_766f_6761_7465;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database?sslmode=…`.
    pub url: String,
    /// The schema holding evogate's tables (`[a-z_][a-z0-9_]*`), created if missing.
    pub schema: String,
    /// Connections at most.
    pub pool_size: usize,
    /// Time to connect, or to wait for a free connection.
    pub connect_timeout: Duration,
    /// Longest a statement may run (`statement_timeout`).
    pub statement_timeout: Duration,
    /// Extra trusted CA certificates (PEM) for `sslmode=require`, besides the public roots.
    /// With `sslmode=require` the server certificate is always verified; without it, plain TCP.
    pub tls_ca: Option<PathBuf>,
}

/// A PostgreSQL database shared by every plugin and every node.
pub struct PostgresBackend {
    /// Owned here; shut down without waiting when the backend goes.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    sql: Sql,
    schema: String,
    describe: String,
    call_timeout: Duration,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend").field("at", &self.describe).finish_non_exhaustive()
    }
}

/// The statements, qualified with the schema.
#[derive(Debug, Clone)]
struct Sql {
    get: String,
    /// Scans by bounds: `[lower inclusive | lower exclusive] × [upper | none]`.
    scan: [String; 4],
    versions: String,
    next_version: String,
    upsert: String,
    delete: String,
    insert_new: String,
    update_if: String,
    delete_if: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let kv = format!("{schema}.evogate_kv");
        // The answer budget is applied by the server: the page's running
        // size is summed over value lengths (`length` reads a TOASTed
        // value's size without fetching it), and only rows that start within
        // the budget are sent.
        let scan = |lower: &str, upper: bool| {
            let (upper, limit, budget) = if upper { (" AND key < $3", "$4", "$5") } else { ("", "$3", "$4") };
            format!(
                "SELECT key, value, version FROM (SELECT key, value, version, \
                 sum(length(value)) OVER (ORDER BY key ROWS UNBOUNDED PRECEDING) - length(value) AS before \
                 FROM {kv} WHERE ns = $1 AND key {lower} $2{upper} ORDER BY key LIMIT {limit}) AS page \
                 WHERE before < {budget} ORDER BY key"
            )
        };
        Self {
            get: format!("SELECT value, version FROM {kv} WHERE ns = $1 AND key = $2"),
            scan: [scan(">=", true), scan(">=", false), scan(">", true), scan(">", false)],
            versions: format!("SELECT key, version FROM {kv} WHERE ns = $1 AND key = ANY($2)"),
            next_version: format!("SELECT nextval('{schema}.evogate_version')"),
            upsert: format!(
                "INSERT INTO {kv} (ns, key, value, version) SELECT $1, k, v, $4 FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v) \
                 ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version"
            ),
            delete: format!("DELETE FROM {kv} WHERE ns = $1 AND key = ANY($2)"),
            insert_new: format!(
                "INSERT INTO {kv} (ns, key, value, version) SELECT $1, k, v, $4 FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v) \
                 ON CONFLICT (ns, key) DO NOTHING"
            ),
            update_if: format!(
                "UPDATE {kv} AS t SET value = u.v, version = $5 FROM unnest($2::bytea[], $3::bytea[], $4::bigint[]) AS u(k, v, old) \
                 WHERE t.ns = $1 AND t.key = u.k AND t.version = u.old"
            ),
            delete_if: format!(
                "DELETE FROM {kv} AS t USING unnest($2::bytea[], $3::bigint[]) AS u(k, old) \
                 WHERE t.ns = $1 AND t.key = u.k AND t.version = u.old"
            ),
        }
    }
}

/// The schema steps: step `n` brings the schema from version `n` to `n + 1`.
fn migrations(schema: &str) -> Vec<String> {
    vec![format!(
        "CREATE TABLE {schema}.evogate_kv (
            ns text NOT NULL,
            key bytea NOT NULL,
            value bytea NOT NULL,
            version bigint NOT NULL,
            PRIMARY KEY (ns, key)
        );
        CREATE SEQUENCE {schema}.evogate_version;"
    )]
}

fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.len() <= 63
}

fn tls_config(extra_ca: Option<&PathBuf>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))? {
            roots.add(cert.with_context(|| format!("parsing {}", path.display()))?)?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The store's view of a database error: contention is a conflict, anything else unavailability.
fn classify(err: &tokio_postgres::Error) -> KvError {
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

fn pool_error(err: deadpool_postgres::PoolError) -> KvError {
    match err {
        deadpool_postgres::PoolError::Backend(err) => classify(&err),
        other => KvError::Unavailable(format!("postgres pool: {other}")),
    }
}

/// The smallest key greater than every key starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

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
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(options.tls_ca.as_ref())?);
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("evogate-postgres")
            .enable_all()
            .build()
            .context("starting the database runtime")?;
        let pool = {
            let _guard = runtime.enter();
            Pool::builder(manager)
                .max_size(options.pool_size)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(options.connect_timeout))
                .create_timeout(Some(options.connect_timeout))
                .recycle_timeout(Some(options.connect_timeout))
                .build()
                .context("building the connection pool")?
        };
        let handle = runtime.handle().clone();
        let backend = Self {
            runtime: Some(runtime),
            handle,
            pool,
            sql: Sql::new(&options.schema),
            schema: options.schema.clone(),
            describe,
            call_timeout: options.connect_timeout + options.statement_timeout,
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

    /// Runs `work` on the backend's runtime and waits for it, within the call timeout.
    fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, KvError>> + Send + 'static,
    ) -> Result<T, KvError> {
        self.run_until(None, work)
    }

    /// [`Self::run`]; when the call is lost after `sent` was set (a COMMIT
    /// went out), its outcome is unknown rather than "nothing written".
    fn run_until<T: Send + 'static>(
        &self,
        sent: Option<Arc<AtomicBool>>,
        work: impl std::future::Future<Output = Result<T, KvError>> + Send + 'static,
    ) -> Result<T, KvError> {
        let lost = move |why: &str| match sent.as_ref().is_some_and(|sent| sent.load(Ordering::SeqCst)) {
            true => KvError::OutcomeUnknown(format!("postgres: {why} after the commit was sent")),
            false => KvError::Unavailable(format!("postgres: {why}")),
        };
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let timeout = self.call_timeout;
        let lost_in_time = lost.clone();
        self.handle.spawn(async move {
            let outcome =
                tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| Err(lost_in_time("no answer in time")));
            let _ = done.send(outcome);
        });
        result.recv().unwrap_or_else(|_| Err(lost("the call was dropped")))
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

/// The checks as conditions of this commit's own writes (key → expected
/// version, `None` for absent), when every checked key is written (set, or
/// deleted while expected to exist) and checked once; else `None`.
fn guard_plan(checks: &[(Vec<u8>, Option<u64>)], writes: &[Write]) -> Option<HashMap<Vec<u8>, Option<u64>>> {
    let mut last: HashMap<&[u8], bool> = HashMap::new();
    for write in writes {
        match write {
            Write::Set(key, _) => last.insert(key.as_bytes(), true),
            Write::Delete(key) => last.insert(key.as_bytes(), false),
            Write::SetStamped(..) => None,
        };
    }
    let mut conditions = HashMap::with_capacity(checks.len());
    for (key, expected) in checks {
        let written = last.get(key.as_slice())?;
        if !written && expected.is_none() {
            return None;
        }
        if conditions.insert(key.clone(), *expected).is_some() {
            return None;
        }
    }
    Some(conditions)
}

/// Creates the schema on first start and applies the missing steps, one
/// node at a time; refuses a database whose schema is newer than this build.
async fn migrate(pool: &Pool, schema: &str) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("connecting")?;
    let txn = client.transaction().await?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    txn.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.evogate_meta (name text PRIMARY KEY, value bigint NOT NULL);"
    ))
    .await?;
    let current: i64 = txn
        .query_opt(&format!("SELECT value FROM {schema}.evogate_meta WHERE name = 'schema_version'"), &[])
        .await?
        .map_or(0, |row| row.get(0));
    anyhow::ensure!(
        current <= SCHEMA_VERSION,
        "the database schema is version {current}, newer than this build knows ({SCHEMA_VERSION}): upgrade evogate"
    );
    for (step, sql) in migrations(schema).iter().enumerate().skip(current as usize) {
        txn.batch_execute(sql).await.with_context(|| format!("schema step {} → {}", step, step + 1))?;
        tracing::info!(schema, from = step, to = step + 1, "database schema upgraded");
    }
    txn.execute(
        &format!(
            "INSERT INTO {schema}.evogate_meta (name, value) VALUES ('schema_version', $1)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
        ),
        &[&SCHEMA_VERSION],
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

fn version(raw: i64) -> u64 {
    u64::try_from(raw).unwrap_or_default()
}

impl Backend for PostgresBackend {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, KvError> {
        let (pool, sql, ns, key) = (self.pool.clone(), self.sql.get.clone(), ns.to_owned(), key.as_bytes().to_vec());
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let statement = client.prepare_cached(&sql).await.map_err(|err| classify(&err))?;
            let row = client.query_opt(&statement, &[&ns, &key]).await.map_err(|err| classify(&err))?;
            Ok(row.map(|row| Entry { value: row.get(0), version: version(row.get(1)) }))
        })
    }

    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, Entry)>, KvError> {
        let upper = prefix_end(prefix.as_bytes());
        // The lower bound: the prefix itself, or the cursor when it lies past it.
        let (lower, exclusive) = match start_after {
            Some(after) if after.as_bytes() >= prefix.as_bytes() => (after.as_bytes().to_vec(), true),
            _ => (prefix.as_bytes().to_vec(), false),
        };
        let sql = self.sql.scan[usize::from(exclusive) * 2 + usize::from(upper.is_none())].clone();
        let (pool, ns) = (self.pool.clone(), ns.to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let budget = i64::try_from(max_bytes.max(1)).unwrap_or(i64::MAX);
        let rows = self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let statement = client.prepare_cached(&sql).await.map_err(|err| classify(&err))?;
            let rows = match &upper {
                Some(upper) => client.query(&statement, &[&ns, &lower, upper, &limit, &budget]).await,
                None => client.query(&statement, &[&ns, &lower, &limit, &budget]).await,
            };
            rows.map_err(|err| classify(&err))
        })?;
        let mut page = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        for row in rows {
            let key: Vec<u8> = row.get(0);
            let value: Vec<u8> = row.get(1);
            bytes += value.len();
            let key =
                String::from_utf8(key).map_err(|_| KvError::Unavailable("postgres: a key is not UTF-8".into()))?;
            page.push((key, Entry { value, version: version(row.get(2)) }));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(page)
    }

    fn commit(&self, ns: &str, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        let checks: Vec<(Vec<u8>, Option<u64>)> = checks
            .iter()
            .map(|check| match check {
                Check::VersionIs(key, version) => (key.as_bytes().to_vec(), Some(*version)),
                Check::Absent(key) => (key.as_bytes().to_vec(), None),
            })
            .collect();
        let stamped = writes.iter().any(|write| matches!(write, Write::SetStamped(..)));
        let writes = writes.to_vec();
        let (pool, sql, ns) = (self.pool.clone(), self.sql.clone(), ns.to_owned());
        let sent = Arc::new(AtomicBool::new(false));
        let committing = sent.clone();
        self.run_until(Some(sent), async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            // When every checked key is written by this commit (insert if
            // absent, replace if unchanged: what the plugins mostly do), each
            // check becomes the condition of its own write instead of a
            // separate read. Still SERIALIZABLE, so keys other commits only
            // read stay guarded; but an insert reads no index range, so
            // batches writing neighbouring keys no longer abort each other.
            let guarded = guard_plan(&checks, &writes);
            let txn = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::Serializable)
                .start()
                .await
                .map_err(|err| classify(&err))?;
            if guarded.is_none() && !checks.is_empty() {
                let keys: Vec<&Vec<u8>> = checks.iter().map(|(key, _)| key).collect();
                let rows = txn.query(&sql.versions, &[&ns, &keys]).await.map_err(|err| classify(&err))?;
                let found: HashMap<Vec<u8>, u64> =
                    rows.into_iter().map(|row| (row.get::<_, Vec<u8>>(0), version(row.get(1)))).collect();
                if checks.iter().any(|(key, want)| found.get(key).copied() != *want) {
                    return Err(KvError::Conflict);
                }
            }
            if stamped {
                // Held to the end of the transaction: commits with stamped
                // writes take their stamps one after another, so stamps
                // follow commit order.
                txn.execute("SELECT pg_advisory_xact_lock($1)", &[&STAMP_LOCK]).await.map_err(|err| classify(&err))?;
            }
            let version: i64 = txn.query_one(&sql.next_version, &[]).await.map_err(|err| classify(&err))?.get(0);
            // The last write of a key wins, as in the other backends.
            let mut last: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
            for (key, value) in super::resolve(&writes, u64::try_from(version).unwrap_or_default()) {
                last.insert(key.into_owned(), value.map(<[u8]>::to_vec));
            }
            let conditions = guarded.unwrap_or_default();
            let (mut set_keys, mut set_values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
            let (mut new_keys, mut new_values) = (Vec::new(), Vec::new());
            let (mut update_keys, mut update_values, mut update_old) = (Vec::new(), Vec::new(), Vec::new());
            let (mut delete_keys, mut delete_old) = (Vec::new(), Vec::new());
            for (key, value) in last {
                let key = key.into_bytes();
                match (conditions.get(&key), value) {
                    (None, Some(value)) => {
                        set_keys.push(key);
                        set_values.push(value);
                    }
                    (None, None) => deletes.push(key),
                    (Some(None), Some(value)) => {
                        new_keys.push(key);
                        new_values.push(value);
                    }
                    (Some(Some(old)), Some(value)) => {
                        update_keys.push(key);
                        update_values.push(value);
                        update_old.push(i64::try_from(*old).unwrap_or(-1));
                    }
                    (Some(Some(old)), None) => {
                        delete_keys.push(key);
                        delete_old.push(i64::try_from(*old).unwrap_or(-1));
                    }
                    // `guard_plan` leaves "delete if absent" to the serializable path.
                    (Some(None), None) => return Err(KvError::Conflict),
                }
            }
            let expect = |done: u64, wanted: usize| if done == wanted as u64 { Ok(()) } else { Err(KvError::Conflict) };
            if !new_keys.is_empty() {
                let done = txn
                    .execute(&sql.insert_new, &[&ns, &new_keys, &new_values, &version])
                    .await
                    .map_err(|err| classify(&err))?;
                expect(done, new_keys.len())?;
            }
            if !update_keys.is_empty() {
                let done = txn
                    .execute(&sql.update_if, &[&ns, &update_keys, &update_values, &update_old, &version])
                    .await
                    .map_err(|err| classify(&err))?;
                expect(done, update_keys.len())?;
            }
            if !delete_keys.is_empty() {
                let done = txn
                    .execute(&sql.delete_if, &[&ns, &delete_keys, &delete_old])
                    .await
                    .map_err(|err| classify(&err))?;
                expect(done, delete_keys.len())?;
            }
            if !set_keys.is_empty() {
                txn.execute(&sql.upsert, &[&ns, &set_keys, &set_values, &version])
                    .await
                    .map_err(|err| classify(&err))?;
            }
            if !deletes.is_empty() {
                txn.execute(&sql.delete, &[&ns, &deletes]).await.map_err(|err| classify(&err))?;
            }
            committing.store(true, Ordering::SeqCst);
            txn.commit().await.map_err(|err| match err.as_db_error() {
                // The server answered: the commit definitely failed.
                Some(_) => classify(&err),
                // The connection broke with the COMMIT on its way: applied or not, nobody knows.
                None => KvError::OutcomeUnknown(format!("postgres: {err}")),
            })
        })
    }

    fn ping(&self) -> Result<(), KvError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client.simple_query("SELECT 1").await.map(drop).map_err(|err| classify(&err))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_bound_exactly_the_keys_with_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    /// A TCP proxy to `upstream` counting the bytes the server sends.
    fn counting_proxy(upstream: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = received.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
                let (mut up_from, mut up_to) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                std::thread::spawn(move || std::io::copy(&mut up_from, &mut up_to));
                let (mut down_from, mut down_to, counter) = (server, client, counter.clone());
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 64 * 1024];
                    while let Ok(n) = down_from.read(&mut buffer) {
                        counter.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                        if n == 0 || down_to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (port, received)
    }

    #[test]
    fn a_scan_fetches_no_rows_past_its_answer_budget() {
        let Ok(url) = std::env::var(crate::kv::conformance::POSTGRES_URL_VAR) else { return };
        let config: tokio_postgres::Config = url.parse().expect("a postgres URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".into(),
        };
        let (port, received) = counting_proxy(format!("{host}:{}", config.get_ports().first().unwrap_or(&5432)));
        let user = config.get_user().unwrap_or("postgres");
        let proxied = format!("postgres://{user}@127.0.0.1:{port}/{}", config.get_dbname().unwrap_or("postgres"));
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).expect("randomness");
        let backend = PostgresBackend::open(&PostgresOptions {
            url: proxied,
            schema: format!("evogate_test_{}", hex::encode(random)),
            pool_size: 2,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            tls_ca: None,
        })
        .expect("open");
        // 48 values of 1 MiB each, incompressible enough that TOAST cannot shrink them.
        let value =
            |n: usize| (0..1 << 20).map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ n as u8).collect();
        for chunk in (0..48).collect::<Vec<_>>().chunks(8) {
            let writes: Vec<Write> = chunk.iter().map(|n| Write::Set(format!("big/{n:02}"), value(*n))).collect();
            backend.commit("ns", &[], &writes).expect("commit");
        }
        let before = received.load(std::sync::atomic::Ordering::SeqCst);
        let page = backend.scan("ns", "big/", None, 1000, 4 << 20).expect("scan");
        let fetched = received.load(std::sync::atomic::Ordering::SeqCst) - before;
        let _ = backend.destroy();
        assert_eq!(page.len(), 4, "entries until the budget is reached");
        assert_eq!(page[3].0, "big/03");
        assert!(fetched < 6 << 20, "{fetched} bytes came from the server for a 4 MiB page of a 48 MiB prefix");
    }

    #[test]
    fn a_call_lost_after_its_commit_was_sent_has_an_unknown_outcome() {
        let Ok(url) = std::env::var(crate::kv::conformance::POSTGRES_URL_VAR) else { return };
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).expect("randomness");
        let backend = PostgresBackend::open(&PostgresOptions {
            url,
            schema: format!("evogate_test_{}", hex::encode(random)),
            pool_size: 1,
            connect_timeout: Duration::from_millis(100),
            statement_timeout: Duration::from_millis(200),
            tls_ca: None,
        })
        .expect("open");
        let forever = || async {
            std::future::pending::<()>().await;
            Ok(())
        };
        let before = backend.run_until(Some(Arc::new(AtomicBool::new(false))), forever());
        assert!(matches!(before, Err(KvError::Unavailable(_))), "{before:?}");
        let after = backend.run_until(Some(Arc::new(AtomicBool::new(true))), forever());
        assert!(matches!(&after, Err(KvError::OutcomeUnknown(why)) if why.contains("no answer")), "{after:?}");
        let _ = backend.destroy();
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(is_identifier("evogate_test_1"));
        for bad in ["", "1a", "A", "a-b", "a;drop", &"a".repeat(64)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
