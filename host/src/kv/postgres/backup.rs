//! Backups and restores on PostgreSQL: a snapshot is one `REPEATABLE READ
//! READ ONLY` transaction on a connection of its own, read in key order a
//! chunk at a time; a restore writes rows as given and moves the version
//! sequence on past them.

use super::*;
use crate::kv::backup::{Record, Snapshot};

/// Rows whose sizes a chunk looks at, at most.
const CHUNK_ROWS: i64 = 1000;

impl PostgresBackend {
    pub(super) fn open_snapshot(&self) -> Result<Box<dyn Snapshot>, KvError> {
        let (pool, schema) = (self.pool.clone(), self.schema.clone());
        let (client, last_version) = self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|err| classify(&err))?;
            // The transaction's snapshot is taken by its first statement: this one.
            let row = client
                .query_one(&format!("SELECT last_value, is_called FROM {schema}.evogate_version"), &[])
                .await
                .map_err(|err| classify(&err))?;
            let last: i64 = row.get(0);
            let called: bool = row.get(1);
            Ok((client, if called { u64::try_from(last).unwrap_or(0) } else { 0 }))
        })?;
        Ok(Box::new(PgSnapshot {
            client: Arc::new(tokio::sync::Mutex::new(Some(client))),
            handle: self.handle.clone(),
            timeout: self.call_timeout,
            kv: format!("{}.evogate_kv", self.schema),
            after: None,
            last_version,
        }))
    }

    pub(super) fn restore_rows(&self, records: &[Record], last_version: u64) -> Result<(), KvError> {
        let (pool, schema) = (self.pool.clone(), self.schema.clone());
        let ns: Vec<String> = records.iter().map(|r| r.ns.clone()).collect();
        let keys: Vec<Vec<u8>> = records.iter().map(|r| r.key.as_bytes().to_vec()).collect();
        let values: Vec<Vec<u8>> =
            records.iter().map(|r| crate::kv::codec::frame(&r.entry.value, self.compression)).collect();
        let versions: Vec<i64> = records.iter().map(|r| i64::try_from(r.entry.version).unwrap_or(i64::MAX)).collect();
        let highest = records.iter().map(|r| r.entry.version).fold(last_version, u64::max);
        let highest = i64::try_from(highest).unwrap_or(i64::MAX);
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let txn = client.transaction().await.map_err(|err| classify(&err))?;
            if !ns.is_empty() {
                txn.execute(
                    &format!(
                        "INSERT INTO {schema}.evogate_kv (ns, key, value, version) \
                         SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bigint[]) \
                         ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version"
                    ),
                    &[&ns, &keys, &values, &versions],
                )
                .await
                .map_err(|err| classify(&err))?;
            }
            if highest > 0 {
                // The sequence only moves on: the next commit's version is above every one restored.
                txn.execute(
                    &format!(
                        "SELECT setval('{schema}.evogate_version', GREATEST($1, \
                         (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {schema}.evogate_version)))"
                    ),
                    &[&highest],
                )
                .await
                .map_err(|err| classify(&err))?;
            }
            txn.commit().await.map_err(|err| classify(&err))
        })
    }

    pub(super) fn clear_rows(&self) -> Result<(), KvError> {
        let (pool, schema) = (self.pool.clone(), self.schema.clone());
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client.batch_execute(&format!("TRUNCATE {schema}.evogate_kv")).await.map_err(|err| classify(&err))
        })
    }
}

/// A read-only transaction held open on a connection of its own.
struct PgSnapshot {
    /// `None` once the end is read (the transaction then ended).
    client: Arc<tokio::sync::Mutex<Option<deadpool_postgres::Object>>>,
    handle: tokio::runtime::Handle,
    timeout: Duration,
    kv: String,
    /// The last (namespace, key) read.
    after: Option<(String, Vec<u8>)>,
    last_version: u64,
}

impl Snapshot for PgSnapshot {
    fn last_version(&self) -> u64 {
        self.last_version
    }

    fn next(&mut self, max_bytes: usize) -> Result<Vec<Record>, KvError> {
        let (client, kv, after) = (self.client.clone(), self.kv.clone(), self.after.clone());
        let budget = i64::try_from(max_bytes.max(1)).unwrap_or(i64::MAX);
        let chunk = block_on(&self.handle, self.timeout, async move {
            let mut held = client.lock().await;
            let Some(connection) = held.as_ref() else { return Ok(Vec::new()) };
            // Namespaces and keys in bytewise order (`COLLATE "C"`), the rows
            // that start within the byte budget (at least one), the sizes
            // summed by the server without reading the values.
            let (after_ns, after_key) = after.unwrap_or_default();
            let first = after_ns.is_empty() && after_key.is_empty();
            let rows = connection
                .query(
                    &format!(
                        "SELECT ns, key, value, version FROM (SELECT ns, key, value, version, \
                         sum(length(key) + length(value)) OVER (ORDER BY ns COLLATE \"C\", key) AS running \
                         FROM (SELECT ns, key, value, version FROM {kv} \
                         WHERE $1 OR (ns COLLATE \"C\", key) > ($2 COLLATE \"C\", $3) \
                         ORDER BY ns COLLATE \"C\", key LIMIT $4) AS page) AS sized \
                         WHERE running - length(key) - length(value) < $5 ORDER BY ns COLLATE \"C\", key"
                    ),
                    &[&first, &after_ns, &after_key, &CHUNK_ROWS, &budget],
                )
                .await
                .map_err(|err| classify(&err))?;
            if rows.is_empty() {
                // The end: the read-only transaction ends, the connection goes back clean.
                if let Some(connection) = held.take() {
                    connection.batch_execute("COMMIT").await.map_err(|err| classify(&err))?;
                }
            }
            rows.iter()
                .map(|row| {
                    let key: Vec<u8> = row.get(1);
                    let version: i64 = row.get(3);
                    Ok(Record {
                        ns: row.get(0),
                        key: String::from_utf8(key)
                            .map_err(|_| KvError::Unavailable("postgres: a key that is not UTF-8".into()))?,
                        entry: Entry {
                            value: crate::kv::codec::unframe(row.get(2))?,
                            version: u64::try_from(version).unwrap_or(0),
                        },
                    })
                })
                .collect::<Result<Vec<_>, KvError>>()
        })?;
        self.after = chunk.last().map(|record| (record.ns.clone(), record.key.as_bytes().to_vec()));
        Ok(chunk)
    }
}

impl Drop for PgSnapshot {
    fn drop(&mut self) {
        // A snapshot left before its end: its connection, mid-transaction, is closed rather than reused.
        if let Ok(mut held) = self.client.try_lock()
            && let Some(connection) = held.take()
        {
            drop(deadpool_postgres::Object::take(connection));
        }
    }
}
