//! The shared backend for several gateway nodes: one PostgreSQL database
//! (or anything speaking its wire protocol), reached through a pool.
//!
//! Layout (in the configured schema): `evogate_kv (ns, key bytea, value
//! bytea, version bigint)` with primary key `(ns, key)`, so a prefix scan is
//! a range query on the key's index, in bytewise order; `evogate_version`, a
//! sequence that gives every commit a new version; `evogate_meta`, which
//! records the schema version. A commit is one transaction: a check of a
//! key it writes is the condition of that write (insert if absent, update
//! or delete at a version, with the rows touched counted); the other
//! checked keys are read and locked (`FOR SHARE`) until it ends. That makes
//! `REPEATABLE READ` enough; a check that an unwritten key stays absent
//! (nothing to lock) runs `SERIALIZABLE`. When another node's commit
//! interleaves, PostgreSQL aborts one of them (serialization failure,
//! deadlock), which the plugin sees as `conflict` and retries. Nothing is
//! ever lost to a race.
//!
//! Reads are futures the request's own task awaits
//! ([`Backend::get_many_async`], [`Backend::scan_async`]): no thread waits
//! for the database's answer. Commits go through the synchronous
//! [`Backend`] trait from tokio's blocking pool and run, like the
//! connections, on the runtime that serves the requests (a small one of
//! the backend's own when it is opened outside such a runtime). A commit is
//! pipelined: its statements go out together and their answers come back
//! in one round trip (three in all: `BEGIN`, the statements, `COMMIT`).

use super::{Backend, Check, Entry, KvError, Read, Scan, Write};
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
    /// The runtime the backend started for itself, when it was opened
    /// outside a serving one; shut down without waiting when the backend goes.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    sql: Arc<Sql>,
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
    get_many: String,
    /// Scans by bounds: `[lower inclusive | lower exclusive] × [upper | none]`.
    scan: [String; 4],
    versions: String,
    next_version: String,
    /// Taken by commits with stamped writes before they draw their version.
    stamp_lock: String,
    /// Stamped writes, their keys named by the database after the version drawn.
    insert_stamped: String,
    upsert: String,
    update: String,
    insert: String,
    delete: String,
    insert_new: String,
    update_if: String,
    delete_if: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let kv = format!("{schema}.evogate_kv");
        let current = format!("currval('{schema}.evogate_version')");
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
            // In the keys' order, with the same answer budget as a scan. Each
            // key is its own index lookup (the `LIMIT` keeps the subquery
            // from being flattened into a join), whatever the table's
            // statistics: a join planned while a new table looked empty
            // hashed the whole namespace for every read.
            get_many: format!(
                "SELECT n, value, version FROM (SELECT k.n, t.value, t.version, \
                 coalesce(sum(length(t.value)) OVER (ORDER BY k.n ROWS UNBOUNDED PRECEDING) - coalesce(length(t.value), 0), 0) AS before \
                 FROM unnest($2::bytea[]) WITH ORDINALITY AS k(key, n) \
                 LEFT JOIN LATERAL (SELECT value, version FROM {kv} WHERE ns = $1 AND key = k.key LIMIT 1) AS t ON true) AS answer \
                 WHERE before < $3 ORDER BY n"
            ),
            scan: [scan(">=", true), scan(">=", false), scan(">", true), scan(">", false)],
            // Locked: until the commit ends nobody changes what it checked.
            versions: format!("SELECT key, version FROM {kv} WHERE ns = $1 AND key = ANY($2) FOR SHARE"),
            next_version: format!("SELECT nextval('{schema}.evogate_version')"),
            stamp_lock: "SELECT pg_advisory_xact_lock($1)".into(),
            // `{prefix}{version:020}.{position:06}`, as `kv_contract::stamped_key` names them.
            insert_stamped: format!(
                "INSERT INTO {kv} (ns, key, value, version) \
                 SELECT $1, t.p || convert_to(lpad({current}::text, 20, '0') || '.' || lpad(t.i::text, 6, '0'), 'UTF8'), t.v, {current} \
                 FROM unnest($2::bytea[], $3::int4[], $4::bytea[]) AS t(p, i, v)"
            ),
            // Writes take the version `next_version` drew in the same
            // session, so they can go out in one pipeline behind it.
            // A set inserts the keys that are new (most are: index entries,
            // feed entries) and then updates the ones that were not. One
            // `ON CONFLICT DO UPDATE` would read every key's index range and
            // make concurrent batches abort each other (measured: 5 retries
            // per batch of documents against 0.01).
            upsert: format!(
                "INSERT INTO {kv} (ns, key, value, version) SELECT $1, k, v, {current} FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v) \
                 ON CONFLICT (ns, key) DO NOTHING RETURNING key"
            ),
            // Stamped keys are new: a plain insert, which reads nothing. (An
            // `ON CONFLICT` insert first looks where the key would go, and
            // every stamped key of every commit goes to the same place, the
            // end of its log.)
            insert: format!(
                "INSERT INTO {kv} (ns, key, value, version) SELECT $1, k, v, {current} FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v)"
            ),
            update: format!(
                "UPDATE {kv} AS t SET value = u.v, version = {current} FROM unnest($2::bytea[], $3::bytea[]) AS u(k, v) \
                 WHERE t.ns = $1 AND t.key = u.k"
            ),
            delete: format!("DELETE FROM {kv} WHERE ns = $1 AND key = ANY($2)"),
            insert_new: format!(
                "INSERT INTO {kv} (ns, key, value, version) SELECT $1, k, v, {current} FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v) \
                 ON CONFLICT (ns, key) DO NOTHING"
            ),
            update_if: format!(
                "UPDATE {kv} AS t SET value = u.v, version = {current} FROM unnest($2::bytea[], $3::bytea[], $4::bigint[]) AS u(k, v, old) \
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
        let tls =
            tokio_postgres_rustls::MakeRustlsConnect::new(crate::outbound::client_tls(options.tls_ca.as_deref())?);
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
    fn on_task<T: Send + 'static>(
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

/// Opens connections on the backend's runtime, which then drives them,
/// wherever the pool is asked for one (a request's task, for reads).
struct ConnectOn {
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    runtime: tokio::runtime::Handle,
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

/// A commit's checks, split: a check of a key the commit writes becomes the
/// condition of that write (key → expected version, `None` for absent:
/// insert if absent, update or delete if unchanged), which reads no index
/// range; the rest — keys only read, a key checked twice, a delete of a key
/// expected absent — are read back in the transaction.
type Guards = (HashMap<Vec<u8>, Option<u64>>, Vec<(Vec<u8>, Option<u64>)>);

fn guard_plan(checks: &[(Vec<u8>, Option<u64>)], writes: &[Write]) -> Guards {
    let mut last: HashMap<&[u8], bool> = HashMap::new();
    for write in writes {
        match write {
            Write::Set(key, _) => last.insert(key.as_bytes(), true),
            Write::Delete(key) => last.insert(key.as_bytes(), false),
            Write::SetStamped(..) => None,
        };
    }
    let mut times: HashMap<&[u8], usize> = HashMap::new();
    for (key, _) in checks {
        *times.entry(key.as_slice()).or_default() += 1;
    }
    let (mut conditions, mut read) = (HashMap::new(), Vec::new());
    for (key, expected) in checks {
        let guards_its_write = match last.get(key.as_slice()) {
            Some(set) => *set || expected.is_some(),
            None => false,
        };
        if guards_its_write && times[key.as_slice()] == 1 {
            conditions.insert(key.clone(), *expected);
        } else {
            read.push((key.clone(), *expected));
        }
    }
    (conditions, read)
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

/// Reads `keys` in one statement (see [`Backend::get_many`]).
async fn get_many(
    pool: Pool,
    sql: Arc<Sql>,
    ns: String,
    keys: Vec<String>,
    max_bytes: usize,
) -> Result<Vec<Option<Entry>>, KvError> {
    let client = pool.get().await.map_err(pool_error)?;
    if let [key] = keys.as_slice() {
        let statement = client.prepare_cached(&sql.get).await.map_err(|err| classify(&err))?;
        let row = client.query_opt(&statement, &[&ns, &key.as_bytes()]).await.map_err(|err| classify(&err))?;
        return Ok(vec![row.map(|row| Entry { value: row.get(0), version: version(row.get(1)) })]);
    }
    let statement = client.prepare_cached(&sql.get_many).await.map_err(|err| classify(&err))?;
    let raw: Vec<&[u8]> = keys.iter().map(|key| key.as_bytes()).collect();
    let budget = i64::try_from(max_bytes.max(1)).unwrap_or(i64::MAX);
    let rows = client.query(&statement, &[&ns, &raw, &budget]).await.map_err(|err| classify(&err))?;
    // One row per key answered, in the keys' order; the server's budget
    // stops where `get_many_answer`'s does, so rows never run out before it does.
    let mut rows = rows.into_iter().zip(1i64..);
    super::get_many_answer(&keys, max_bytes, |_| {
        let (row, n) =
            rows.next().ok_or_else(|| KvError::Unavailable("postgres: get-many answered too few keys".into()))?;
        if row.get::<_, i64>(0) != n {
            return Err(KvError::Unavailable("postgres: get-many answered out of order".into()));
        }
        let value: Option<Vec<u8>> = row.get(1);
        Ok(value.map(|value| Entry { value, version: version(row.get::<_, Option<i64>>(2).unwrap_or_default()) }))
    })
}

/// One scan page in one statement (see [`Backend::scan`]).
async fn scan(pool: Pool, sql: Arc<Sql>, ns: String, scan: Scan) -> Result<Vec<(String, Entry)>, KvError> {
    let Scan { prefix, start_after, limit, max_bytes } = scan;
    let upper = prefix_end(prefix.as_bytes());
    // The lower bound: the prefix itself, or the cursor when it lies past it.
    let (lower, exclusive) = match start_after {
        Some(after) if after.as_bytes() >= prefix.as_bytes() => (after.into_bytes(), true),
        _ => (prefix.into_bytes(), false),
    };
    let text = &sql.scan[usize::from(exclusive) * 2 + usize::from(upper.is_none())];
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let budget = i64::try_from(max_bytes.max(1)).unwrap_or(i64::MAX);
    let client = pool.get().await.map_err(pool_error)?;
    let statement = client.prepare_cached(text).await.map_err(|err| classify(&err))?;
    let rows = match &upper {
        Some(upper) => client.query(&statement, &[&ns, &lower, upper, &limit, &budget]).await,
        None => client.query(&statement, &[&ns, &lower, &limit, &budget]).await,
    }
    .map_err(|err| classify(&err))?;
    let mut page = Vec::with_capacity(rows.len());
    let mut bytes = 0;
    for row in rows {
        let key: Vec<u8> = row.get(0);
        let value: Vec<u8> = row.get(1);
        bytes += value.len();
        let key = String::from_utf8(key).map_err(|_| KvError::Unavailable("postgres: a key is not UTF-8".into()))?;
        page.push((key, Entry { value, version: version(row.get(2)) }));
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(page)
}

/// A commit's writes, sorted into the statements that apply them.
#[derive(Default)]
struct Plan {
    /// Stamped keys: new by construction (the commit's own version names them).
    fresh: (Vec<Vec<u8>>, Vec<Vec<u8>>),
    /// Unconditional sets and deletes.
    set: (Vec<Vec<u8>>, Vec<Vec<u8>>),
    delete: Vec<Vec<u8>>,
    /// Inserts that must find the key absent.
    insert_new: (Vec<Vec<u8>>, Vec<Vec<u8>>),
    /// Updates and deletes that must find the key at a version.
    update_if: (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<i64>),
    delete_if: (Vec<Vec<u8>>, Vec<i64>),
}

impl Plan {
    /// The last write of each key (as in the other backends), each under
    /// its condition from `conditions` when it has one; `Err(Conflict)` when
    /// a key must be absent and is deleted (the checks cannot all hold).
    /// Stamped writes are named after `stamp`, or left out without one (the
    /// database names them: [`Stamped`]).
    fn new(writes: &[Write], stamp: Option<u64>, conditions: &HashMap<Vec<u8>, Option<u64>>) -> Result<Self, KvError> {
        let mut last: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        let mut stamped = std::collections::HashSet::new();
        for (write, (key, value)) in writes.iter().zip(super::resolve(writes, stamp.unwrap_or_default())) {
            if stamp.is_none() && matches!(write, Write::SetStamped(..)) {
                continue;
            }
            match write {
                Write::SetStamped(..) => stamped.insert(key.to_string()),
                Write::Set(..) | Write::Delete(_) => stamped.remove(key.as_ref()),
            };
            last.insert(key.into_owned(), value.map(<[u8]>::to_vec));
        }
        let mut plan = Self::default();
        for (key, value) in last {
            let fresh = stamped.contains(&key);
            let key = key.into_bytes();
            let old = |version: u64| i64::try_from(version).unwrap_or(-1);
            match (conditions.get(&key), value) {
                (None, Some(value)) if fresh => {
                    plan.fresh.0.push(key);
                    plan.fresh.1.push(value);
                }
                (None, Some(value)) => {
                    plan.set.0.push(key);
                    plan.set.1.push(value);
                }
                (None, None) => plan.delete.push(key),
                (Some(None), Some(value)) => {
                    plan.insert_new.0.push(key);
                    plan.insert_new.1.push(value);
                }
                (Some(Some(version)), Some(value)) => {
                    plan.update_if.0.push(key);
                    plan.update_if.1.push(value);
                    plan.update_if.2.push(old(*version));
                }
                (Some(Some(version)), None) => {
                    plan.delete_if.0.push(key);
                    plan.delete_if.1.push(old(*version));
                }
                // Never: `guard_plan` reads the check of a key deleted while expected absent.
                (Some(None), None) => return Err(KvError::Conflict),
            }
        }
        Ok(plan)
    }
}

/// A commit's stamped writes, for `insert_stamped`: each one's prefix, its
/// position among them (the key's last part) and its value.
#[derive(Default)]
struct Stamped {
    prefixes: Vec<Vec<u8>>,
    positions: Vec<i32>,
    values: Vec<Vec<u8>>,
}

impl Stamped {
    fn of(writes: &[Write]) -> Self {
        let mut stamped = Self::default();
        for write in writes {
            if let Write::SetStamped(prefix, value) = write {
                stamped.positions.push(i32::try_from(stamped.prefixes.len()).unwrap_or(i32::MAX));
                stamped.prefixes.push(prefix.as_bytes().to_vec());
                stamped.values.push(value.clone());
            }
        }
        stamped
    }
}

/// Whether a key the commit writes plainly or checks has the shape of one
/// of its stamped keys (a stamped write's prefix and a stamp): then which
/// write of that key is the last depends on the stamp, which must be known first.
fn names_a_stamped_key(writes: &[Write], checks: &[(Vec<u8>, Option<u64>)]) -> bool {
    let prefixes: Vec<&[u8]> = writes
        .iter()
        .filter_map(|write| match write {
            Write::SetStamped(prefix, _) => Some(prefix.as_bytes()),
            _ => None,
        })
        .collect();
    let shaped = |key: &[u8]| {
        prefixes.iter().any(|prefix| key.len() == prefix.len() + super::STAMP_BYTES && key.starts_with(prefix))
    };
    let plain = writes.iter().filter_map(|write| match write {
        Write::Set(key, _) | Write::Delete(key) => Some(key.as_bytes()),
        Write::SetStamped(..) => None,
    });
    plain.chain(checks.iter().map(|(key, _)| key.as_slice())).any(shaped)
}

/// One statement of a pipeline, with the check of its answer.
type Pending<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), KvError>> + Send + 'a>>;

/// Sends `statements` together (tokio-postgres pipelines the statements
/// polled at once) and awaits every answer; the first failure in statement
/// order is the result (the ones after it only say the transaction is aborted).
async fn pipelined(statements: Vec<Pending<'_>>) -> Result<(), KvError> {
    futures_util::future::join_all(statements).await.into_iter().collect()
}

/// A conditional statement's answer: it must have touched every row it was given.
fn touched(done: Result<u64, tokio_postgres::Error>, wanted: usize) -> Result<(), KvError> {
    match done.map_err(|err| classify(&err))? == wanted as u64 {
        true => Ok(()),
        false => Err(KvError::Conflict),
    }
}

/// The prepared statements of a commit.
struct Statements {
    versions: tokio_postgres::Statement,
    next_version: tokio_postgres::Statement,
    stamp_lock: tokio_postgres::Statement,
    insert_stamped: tokio_postgres::Statement,
    insert_new: tokio_postgres::Statement,
    update_if: tokio_postgres::Statement,
    delete_if: tokio_postgres::Statement,
    upsert: tokio_postgres::Statement,
    update: tokio_postgres::Statement,
    insert: tokio_postgres::Statement,
    delete: tokio_postgres::Statement,
}

impl Statements {
    /// The statements on `client`: prepared once per connection, all in
    /// one round trip, then taken from its cache.
    async fn prepare(client: &deadpool_postgres::Client, sql: &Sql) -> Result<Self, tokio_postgres::Error> {
        let (
            versions,
            next_version,
            stamp_lock,
            insert_stamped,
            insert_new,
            update_if,
            delete_if,
            upsert,
            update,
            insert,
            delete,
        ) = tokio::try_join!(
            client.prepare_cached(&sql.versions),
            client.prepare_cached(&sql.next_version),
            client.prepare_cached(&sql.stamp_lock),
            client.prepare_cached(&sql.insert_stamped),
            client.prepare_cached(&sql.insert_new),
            client.prepare_cached(&sql.update_if),
            client.prepare_cached(&sql.delete_if),
            client.prepare_cached(&sql.upsert),
            client.prepare_cached(&sql.update),
            client.prepare_cached(&sql.insert),
            client.prepare_cached(&sql.delete),
        )?;
        Ok(Self {
            versions,
            next_version,
            stamp_lock,
            insert_stamped,
            insert_new,
            update_if,
            delete_if,
            upsert,
            update,
            insert,
            delete,
        })
    }
}

/// A commit's statements inside its transaction, in as few round trips as
/// they allow: one; one more when stamped keys must be named before the
/// writes (see [`names_a_stamped_key`]), and one more when a set overwrites
/// keys that exist.
/// `guards`: the checks as [`guard_plan`] split them; those to read are
/// read in the same pipeline as the writes (a failed check rolls the
/// writes back with the transaction).
async fn pipelined_commit(
    txn: &deadpool_postgres::Transaction<'_>,
    sql: &Statements,
    ns: &String,
    guards: &Guards,
    stamped: bool,
    writes: &[Write],
) -> Result<(), KvError> {
    let failed = |err: tokio_postgres::Error| classify(&err);
    let (conditions, checks) = guards;
    let keys: Vec<&Vec<u8>> = checks.iter().map(|(key, _)| key).collect();
    let read_checks = !checks.is_empty();
    let check_versions = || -> Pending<'_> {
        let keys = &keys;
        Box::pin(async move {
            let rows = txn.query(&sql.versions, &[ns, keys]).await.map_err(failed)?;
            let found: HashMap<Vec<u8>, u64> =
                rows.into_iter().map(|row| (row.get::<_, Vec<u8>>(0), version(row.get(1)))).collect();
            match checks.iter().all(|(key, want)| found.get(key).copied() == *want) {
                true => Ok(()),
                false => Err(KvError::Conflict),
            }
        })
    };
    // The lock is held to the end of the transaction: commits with stamped
    // writes take their versions one after another, so stamps follow commit
    // order. Prepared, it goes out ahead of `nextval` in the pipeline and the
    // server runs them in that order (a statement sent as text would be
    // parsed first, in a round trip of its own, while `nextval` ran ahead).
    let lock = || -> Pending<'_> {
        Box::pin(async move { txn.execute(&sql.stamp_lock, &[&STAMP_LOCK]).await.map(drop).map_err(failed) })
    };
    // Stamped keys are named after the commit's version. The database names
    // them from the version the pipeline draws (`insert_stamped`), unless
    // another key of the commit could be one of them: then the version is
    // drawn first and every key is known before the writes.
    let stamps_first = stamped && names_a_stamped_key(writes, checks);
    let mut stamp = 0;
    // Declared before the statements that borrow them, so dropped after them.
    let plan: Plan;
    let in_sql: Stamped;
    let mut inserted: Option<std::collections::HashSet<Vec<u8>>> = None;
    let mut statements: Vec<Pending<'_>> = Vec::new();
    if stamps_first {
        let mut head = Vec::from_iter(read_checks.then(check_versions));
        head.push(lock());
        let drawn = &mut stamp;
        head.push(Box::pin(async move {
            let row = txn.query_one(&sql.next_version, &[]).await.map_err(failed)?;
            *drawn = u64::try_from(row.get::<_, i64>(0)).unwrap_or_default();
            Ok(())
        }));
        pipelined(head).await?;
        in_sql = Stamped::default();
        plan = Plan::new(writes, Some(stamp), conditions)?;
    } else {
        statements.extend(read_checks.then(check_versions));
        if stamped {
            statements.push(lock());
        }
        statements.push(Box::pin(async move { txn.query_one(&sql.next_version, &[]).await.map(drop).map_err(failed) }));
        in_sql = Stamped::of(writes);
        plan = Plan::new(writes, None, conditions)?;
    }
    if !in_sql.prefixes.is_empty() {
        let Stamped { prefixes, positions, values } = &in_sql;
        statements.push(Box::pin(async move {
            txn.execute(&sql.insert_stamped, &[ns, prefixes, positions, values]).await.map(drop).map_err(failed)
        }));
    }

    if !plan.insert_new.0.is_empty() {
        let (keys, values) = &plan.insert_new;
        statements.push(Box::pin(async move {
            touched(txn.execute(&sql.insert_new, &[ns, keys, values]).await, keys.len())
        }));
    }
    if !plan.update_if.0.is_empty() {
        let (keys, values, old) = &plan.update_if;
        statements.push(Box::pin(async move {
            touched(txn.execute(&sql.update_if, &[ns, keys, values, old]).await, keys.len())
        }));
    }
    if !plan.delete_if.0.is_empty() {
        let (keys, old) = &plan.delete_if;
        statements
            .push(Box::pin(async move { touched(txn.execute(&sql.delete_if, &[ns, keys, old]).await, keys.len()) }));
    }
    if !plan.fresh.0.is_empty() {
        let (keys, values) = &plan.fresh;
        statements.push(Box::pin(async move {
            txn.execute(&sql.insert, &[ns, keys, values]).await.map(drop).map_err(failed)
        }));
    }
    if !plan.set.0.is_empty() {
        let (keys, values) = &plan.set;
        let inserted = &mut inserted;
        statements.push(Box::pin(async move {
            let rows = txn.query(&sql.upsert, &[ns, keys, values]).await.map_err(failed)?;
            *inserted = Some(rows.into_iter().map(|row| row.get::<_, Vec<u8>>(0)).collect());
            Ok(())
        }));
    }
    if !plan.delete.is_empty() {
        let keys = &plan.delete;
        statements.push(Box::pin(async move { txn.execute(&sql.delete, &[ns, keys]).await.map(drop).map_err(failed) }));
    }
    pipelined(statements).await?;
    // The keys of the set that already existed: updated, in one more round trip.
    let Some(inserted) = inserted else { return Ok(()) };
    let (keys, values): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) =
        plan.set.0.iter().zip(&plan.set.1).filter(|(key, _)| !inserted.contains(*key)).unzip();
    if keys.is_empty() {
        return Ok(());
    }
    // A row deleted meanwhile by a concurrent commit fails to serialize here: a conflict.
    touched(txn.execute(&sql.update, &[ns, &keys, &values]).await, keys.len())
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
        let read = get_many(self.pool.clone(), self.sql.clone(), ns.to_owned(), vec![key.to_owned()], usize::MAX);
        Ok(self.run(read)?.pop().flatten())
    }

    fn get_many(&self, ns: &str, keys: &[String], max_bytes: usize) -> Result<Vec<Option<Entry>>, KvError> {
        self.run(get_many(self.pool.clone(), self.sql.clone(), ns.to_owned(), keys.to_vec(), max_bytes))
    }

    fn get_many_async(&self, ns: &str, keys: Vec<String>, max_bytes: usize) -> Option<Read<Vec<Option<Entry>>>> {
        Some(self.on_task(get_many(self.pool.clone(), self.sql.clone(), ns.to_owned(), keys, max_bytes)))
    }

    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, Entry)>, KvError> {
        let bounds = Scan { prefix: prefix.to_owned(), start_after: start_after.map(str::to_owned), limit, max_bytes };
        self.run(scan(self.pool.clone(), self.sql.clone(), ns.to_owned(), bounds))
    }

    fn scan_async(&self, ns: &str, bounds: Scan) -> Option<Read<Vec<(String, Entry)>>> {
        Some(self.on_task(scan(self.pool.clone(), self.sql.clone(), ns.to_owned(), bounds)))
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
            // A check of a key this commit writes (insert if absent, replace
            // if unchanged: what the plugins mostly do) becomes the condition
            // of its own write instead of a separate read; only the others
            // are read.
            let guards = guard_plan(&checks, &writes);
            let statements = Statements::prepare(&client, &sql).await.map_err(|err| classify(&err))?;
            // Every check holds at the commit when each is either the
            // condition of a write or a key that exists, read and locked
            // (`FOR SHARE`): repeatable read is enough, and takes no
            // predicate locks — which, on index pages, made commits that
            // read one key abort commits inserting next to it. A check that
            // a key it does not write stays absent needs serializable.
            let isolation = match guards.1.iter().all(|(_, expected)| expected.is_some()) {
                true => tokio_postgres::IsolationLevel::RepeatableRead,
                false => tokio_postgres::IsolationLevel::Serializable,
            };
            let txn =
                client.build_transaction().isolation_level(isolation).start().await.map_err(|err| classify(&err))?;
            pipelined_commit(&txn, &statements, &ns, &guards, stamped, &writes).await?;
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

    /// A get-many reads each key by its index even with a plan made while
    /// the table looked empty and kept for every execution (as PostgreSQL
    /// may keep a prepared statement's generic plan): a join planned then
    /// hashed the whole namespace for every read.
    #[test]
    fn a_get_many_looks_up_each_key_whatever_the_statistics() {
        let Some((backend, _schema)) = crate::kv::conformance::postgres() else { return };
        let url = std::env::var(crate::kv::conformance::POSTGRES_URL_VAR).expect("set when a backend opened");
        let get_many = backend.sql.get_many.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let plan = runtime
            .block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                // The plan made once for every execution, on the new (empty) table.
                client.batch_execute("SET plan_cache_mode = force_generic_plan").await?;
                client.batch_execute(&format!("PREPARE g(text, bytea[], bigint) AS {get_many}")).await?;
                let keys = "ARRAY['\\x61'::bytea, '\\x62'::bytea, '\\x63'::bytea]";
                let rows = client.query(&format!("EXPLAIN EXECUTE g('ns', {keys}, 1000000)"), &[]).await?;
                Ok::<_, tokio_postgres::Error>(rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>())
            })
            .expect("explain")
            .join("\n");
        assert!(plan.contains("Index Scan using evogate_kv_pkey"), "{plan}");
        for whole in ["Hash", "Bitmap Heap Scan", "Seq Scan"] {
            assert!(!plan.contains(whole), "{whole} in the plan:\n{plan}");
        }
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
