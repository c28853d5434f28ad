//! The schema and every statement the backend prepares: `Sql`, built once for the configured
//! schema; creating and upgrading the schema across nodes (`migrate`).

use super::*;

/// The newest schema this build knows; each step below upgrades to the next.
pub(super) const SCHEMA_VERSION: i64 = 2;

/// Serializes schema creation and migrations across nodes starting together.
pub(super) const MIGRATION_LOCK: i64 = 0x0065_766f_6761_7465;

/// The statements, qualified with the schema.
#[derive(Debug, Clone)]
pub(super) struct Sql {
    pub(super) get: String,
    pub(super) get_many: String,
    /// Scans by bounds: `[lower inclusive | lower exclusive] × [upper | none]`.
    pub(super) scan: [String; 4],
    pub(super) versions: String,
    pub(super) next_version: String,
    /// Taken by commits with stamped writes before they draw their version.
    pub(super) stamp_lock: String,
    /// Stamped writes, their keys named by the database after the version drawn.
    pub(super) insert_stamped: String,
    pub(super) upsert: String,
    pub(super) update: String,
    pub(super) insert: String,
    pub(super) delete: String,
    pub(super) insert_new: String,
    pub(super) update_if: String,
    pub(super) delete_if: String,
}

impl Sql {
    pub(super) fn new(schema: &str) -> Self {
        let kv = format!("{schema}.evogate_kv");
        let current = format!("currval('{schema}.evogate_version')");
        // The answer budget is applied by the server: the page's running
        // size is summed over value lengths (`length` reads a TOASTed
        // value's size without fetching it), and only rows that start within
        // the budget are sent. A value is stored framed (one byte more, see
        // `kv::codec::frame`) and maybe compressed: the server's sizes are at
        // most the values' own, so it sends at least what fits, and the
        // reader cuts the page where the values read reach the budget.
        let scan = |lower: &str, upper: bool| {
            let (upper, limit, budget) = if upper { (" AND key < $3", "$4", "$5") } else { ("", "$3", "$4") };
            format!(
                "SELECT key, value, version FROM (SELECT key, value, version, \
                 sum(length(value) - 1) OVER (ORDER BY key ROWS UNBOUNDED PRECEDING) - (length(value) - 1) AS before \
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
                 coalesce(sum(length(t.value) - 1) OVER (ORDER BY k.n ROWS UNBOUNDED PRECEDING) - coalesce(length(t.value) - 1, 0), 0) AS before \
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
pub(super) fn migrations(schema: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE {schema}.evogate_kv (
            ns text NOT NULL,
            key bytea NOT NULL,
            value bytea NOT NULL,
            version bigint NOT NULL,
            PRIMARY KEY (ns, key)
        );
        CREATE SEQUENCE {schema}.evogate_version;"
        ),
        // Values framed: a first byte says how the rest is kept (`kv::codec::frame`),
        // so values can be stored compressed. Every row is rewritten once.
        format!("UPDATE {schema}.evogate_kv SET value = '\\x00'::bytea || value;"),
    ]
}

pub(super) fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.len() <= 63
}

/// Creates the schema on first start and applies the missing steps, one
/// node at a time; refuses a database whose schema is newer than this build.
pub(super) async fn migrate(pool: &Pool, schema: &str) -> anyhow::Result<()> {
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

/// The smallest key greater than every key starting with `prefix`, if any.
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
