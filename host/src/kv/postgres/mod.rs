//! The shared backend for several gateway nodes: one PostgreSQL database
//! (or anything speaking its wire protocol), reached through a pool.
//!
//! Layout (in the configured schema): `evogate_kv (ns, key bytea, value
//! bytea, version bigint)` with primary key `(ns, key)`, so a prefix scan is
//! a range query on the key's index, in bytewise order; each value framed by
//! a byte that says whether it is zstd-compressed (`kv::codec::frame`: a
//! record of a kilobyte takes about half; PostgreSQL's own compression only
//! starts at rows of 2 KB); `evogate_version`, a
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

use super::{Backend, Check, Entry, KvError, Read, Scan, ScanPage, Write};
use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_postgres::error::SqlState;

mod backup;
mod commit;
mod connection;
mod read;
mod sql;

use commit::*;
use connection::*;
use read::*;
use sql::*;

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
    /// How values are written (what was written either way reads back either way).
    pub compression: crate::kv::Compression,
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
    compression: crate::kv::Compression,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend").field("at", &self.describe).finish_non_exhaustive()
    }
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

    fn scan(&self, ns: &str, bounds: &Scan) -> Result<ScanPage, KvError> {
        self.run(scan(self.pool.clone(), self.sql.clone(), ns.to_owned(), bounds.clone()))
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
        let (pool, sql, ns, compression) = (self.pool.clone(), self.sql.clone(), ns.to_owned(), self.compression);
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
            pipelined_commit(&txn, &statements, &ns, &guards, stamped, &writes, compression).await?;
            committing.store(true, Ordering::SeqCst);
            txn.commit().await.map_err(|err| match err.as_db_error() {
                // The server answered: the commit definitely failed.
                Some(_) => classify(&err),
                // The connection broke with the COMMIT on its way: applied or not, nobody knows.
                None => KvError::OutcomeUnknown(format!("postgres: {err}")),
            })
        })
    }

    fn snapshot(&self) -> Result<Box<dyn crate::kv::backup::Snapshot>, KvError> {
        self.open_snapshot()
    }

    fn restore(&self, records: &[crate::kv::backup::Record], last_version: u64) -> Result<(), KvError> {
        self.restore_rows(records, last_version)
    }

    fn clear(&self) -> Result<(), KvError> {
        self.clear_rows()
    }

    fn ping(&self) -> Result<(), KvError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client.simple_query("SELECT 1").await.map(drop).map_err(|err| classify(&err))
        })
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn bytes_on_disk(&self) -> Result<Option<u64>, KvError> {
        let (pool, schema) = (self.pool.clone(), self.schema.clone());
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            // evogate's tables in its schema, each with its indexes and TOAST.
            let row = client
                .query_one(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname LIKE 'evogate\\_%'",
                    &[&schema],
                )
                .await
                .map_err(|err| classify(&err))?;
            Ok(Some(u64::try_from(row.get::<_, i64>(0)).unwrap_or_default()))
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
            compression: crate::kv::Compression::default(),
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
        let page = backend.scan("ns", &Scan::of("big/", None, 1000, 4 << 20)).expect("scan");
        let fetched = received.load(std::sync::atomic::Ordering::SeqCst) - before;
        let _ = backend.destroy();
        assert_eq!(page.len(), 4, "entries until the budget is reached");
        assert_eq!(page[3].0, "big/03");
        assert!(fetched < 6 << 20, "{fetched} bytes came from the server for a 4 MiB page of a 48 MiB prefix");
    }

    /// What the store takes on disk is its own tables' with their indexes:
    /// it grows with what is written, and another schema's tables are not counted.
    #[test]
    fn the_bytes_on_disk_are_the_schemas_evogate_relations_and_grow_with_the_data() {
        let Some((backend, _schema)) = crate::kv::conformance::postgres() else { return };
        assert_eq!(backend.kind(), "postgres");
        let empty = backend.bytes_on_disk().expect("size").expect("on disk");
        assert!(empty > 0, "the tables and their indexes take pages even empty");
        // Random bytes (xorshift): nothing for TOAST's compression to take out.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        let writes: Vec<Write> =
            (0..8).map(|n| Write::Set(format!("size/{n}"), (0..1 << 20).map(|_| random()).collect())).collect();
        backend.commit("ns", &[], &writes).expect("commit");
        let full = backend.bytes_on_disk().expect("size").expect("on disk");
        let _ = backend.destroy();
        assert!(full >= empty + (4 << 20), "8 MiB written: {empty} bytes before, {full} after");
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
            compression: crate::kv::Compression::default(),
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

    /// A store made by a build before values were framed: upgraded on open,
    /// every value reads as it was written, and new ones are kept compressed
    /// (as given once `store.compression` is `none`).
    #[test]
    fn a_store_of_the_first_schema_reads_as_before_after_the_upgrade_and_compresses_from_then_on() {
        let Ok(url) = std::env::var(crate::kv::conformance::POSTGRES_URL_VAR) else { return };
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).expect("randomness");
        let schema = format!("evogate_test_{}", hex::encode(random));
        let record = |n: usize| {
            serde_json::json!({"v": 1, "id": format!("doc-{n:08}"), "type": "SELL", "positions":
                (0..8).map(|p| serde_json::json!({"name": format!("Tea {p}"), "price": 100 + p, "quantity": 1}))
                    .collect::<Vec<_>>()})
            .to_string()
            .into_bytes()
        };
        let first = sql::migrations(&schema).swap_remove(0);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let old_rows: Vec<Vec<u8>> = (0..3).map(record).chain([b"tiny".to_vec(), Vec::new()]).collect();
        let (url_old, schema_old, rows) = (url.clone(), schema.clone(), old_rows.clone());
        runtime
            .block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url_old, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!(
                        "CREATE SCHEMA {schema_old}; {first}
                         CREATE TABLE {schema_old}.evogate_meta (name text PRIMARY KEY, value bigint NOT NULL);
                         INSERT INTO {schema_old}.evogate_meta VALUES ('schema_version', 1);"
                    ))
                    .await?;
                for (n, value) in rows.iter().enumerate() {
                    let key = format!("old/{n}").into_bytes();
                    client
                        .execute(
                            &format!("INSERT INTO {schema_old}.evogate_kv VALUES ('ns', $1, $2, $3)"),
                            &[&key, value, &(n as i64 + 1)],
                        )
                        .await?;
                }
                Ok::<_, tokio_postgres::Error>(())
            })
            .expect("a store of the first schema");
        let options = |compression| PostgresOptions {
            url: url.clone(),
            schema: schema.clone(),
            pool_size: 2,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            tls_ca: None,
            compression,
        };
        let backend = PostgresBackend::open(&options(crate::kv::Compression::Zstd)).expect("open and upgrade");
        let read = backend.scan("ns", &Scan::of("old/", None, 100, usize::MAX)).expect("scan");
        let read: Vec<Vec<u8>> = read.into_iter().map(|(_, entry)| entry.value).collect();
        assert_eq!(read, old_rows, "every value as it was written");
        let new: Vec<Write> = (0..200).map(|n| Write::Set(format!("new/{n:03}"), record(n))).collect();
        backend.commit("ns", &[], &new).expect("commit");
        assert_eq!(backend.get("ns", "new/007").expect("get").expect("present").value, record(7));
        // `store.compression = "none"` on the same store: what it writes is kept
        // as given, and what was written compressed still reads.
        drop(backend);
        let backend = PostgresBackend::open(&options(crate::kv::Compression::None)).expect("open again");
        let plain: Vec<Write> = (0..200).map(|n| Write::Set(format!("plain/{n:03}"), record(n))).collect();
        backend.commit("ns", &[], &plain).expect("commit");
        for key in ["new/007", "plain/007"] {
            assert_eq!(backend.get("ns", key).expect("get").expect("present").value, record(7), "{key}");
        }
        let stored_under = |prefix: &'static str| {
            let (url, schema) = (url.clone(), schema.clone());
            runtime
                .block_on(async move {
                    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                    tokio::spawn(connection);
                    let sql = format!(
                        "SELECT sum(length(value))::bigint FROM {schema}.evogate_kv WHERE position($1::bytea in key) = 1"
                    );
                    Ok::<_, tokio_postgres::Error>(client.query_one(&sql, &[&prefix.as_bytes()]).await?.get::<_, i64>(0))
                })
                .expect("sizes")
        };
        let raw = (0..200).map(|n| record(n).len() as i64).sum::<i64>();
        let (stored, as_given) = (stored_under("new/"), stored_under("plain/"));
        let _ = backend.destroy();
        assert!(stored * 2 < raw, "200 records of {} bytes kept in {stored} bytes", raw / 200);
        assert_eq!(as_given, raw + 200, "each kept as given, behind its frame's byte");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(is_identifier("evogate_test_1"));
        for bad in ["", "1a", "A", "a-b", "a;drop", &"a".repeat(64)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
