//! A commit's planning and its pipelined transaction: which checks become conditions of the
//! writes (`guard_plan`), the statements a commit runs (`Plan`, `Statements`), and the stamp
//! lock that orders commits with stamped writes.

use super::*;

/// Orders the commits that carry stamped writes.
pub(super) const STAMP_LOCK: i64 = 0x0065_766f_6773_7461;

/// A commit's checks, split: a check of a key the commit writes becomes the
/// condition of that write (key → expected version, `None` for absent:
/// insert if absent, update or delete if unchanged), which reads no index
/// range; the rest — keys only read, a key checked twice, a delete of a key
/// expected absent — are read back in the transaction.
pub(super) type Guards = (HashMap<Vec<u8>, Option<u64>>, Vec<(Vec<u8>, Option<u64>)>);

pub(super) fn guard_plan(checks: &[(Vec<u8>, Option<u64>)], writes: &[Write]) -> Guards {
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

/// A commit's writes, sorted into the statements that apply them.
#[derive(Default)]
pub(super) struct Plan {
    /// Stamped keys: new by construction (the commit's own version names them).
    pub(super) fresh: (Vec<Vec<u8>>, Vec<Vec<u8>>),
    /// Unconditional sets and deletes.
    pub(super) set: (Vec<Vec<u8>>, Vec<Vec<u8>>),
    pub(super) delete: Vec<Vec<u8>>,
    /// Inserts that must find the key absent.
    pub(super) insert_new: (Vec<Vec<u8>>, Vec<Vec<u8>>),
    /// Updates and deletes that must find the key at a version.
    pub(super) update_if: (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<i64>),
    pub(super) delete_if: (Vec<Vec<u8>>, Vec<i64>),
}

impl Plan {
    /// The last write of each key (as in the other backends), each under
    /// its condition from `conditions` when it has one; `Err(Conflict)` when
    /// a key must be absent and is deleted (the checks cannot all hold).
    /// Stamped writes are named after `stamp`, or left out without one (the
    /// database names them: [`Stamped`]).
    pub(super) fn new(
        writes: &[Write],
        stamp: Option<u64>,
        conditions: &HashMap<Vec<u8>, Option<u64>>,
        compression: crate::kv::Compression,
    ) -> Result<Self, KvError> {
        let mut last: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        let mut stamped = std::collections::HashSet::new();
        for (write, (key, value)) in writes.iter().zip(crate::kv::resolve(writes, stamp.unwrap_or_default())) {
            if stamp.is_none() && matches!(write, Write::SetStamped(..)) {
                continue;
            }
            match write {
                Write::SetStamped(..) => stamped.insert(key.to_string()),
                Write::Set(..) | Write::Delete(_) => stamped.remove(key.as_ref()),
            };
            last.insert(key.into_owned(), value.map(|value| crate::kv::codec::frame(value, compression)));
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
pub(super) struct Stamped {
    pub(super) prefixes: Vec<Vec<u8>>,
    pub(super) positions: Vec<i32>,
    pub(super) values: Vec<Vec<u8>>,
}

impl Stamped {
    pub(super) fn of(writes: &[Write], compression: crate::kv::Compression) -> Self {
        let mut stamped = Self::default();
        for write in writes {
            if let Write::SetStamped(prefix, value) = write {
                stamped.positions.push(i32::try_from(stamped.prefixes.len()).unwrap_or(i32::MAX));
                stamped.prefixes.push(prefix.as_bytes().to_vec());
                stamped.values.push(crate::kv::codec::frame(value, compression));
            }
        }
        stamped
    }
}

/// Whether a key the commit writes plainly or checks has the shape of one
/// of its stamped keys (a stamped write's prefix and a stamp): then which
/// write of that key is the last depends on the stamp, which must be known first.
pub(super) fn names_a_stamped_key(writes: &[Write], checks: &[(Vec<u8>, Option<u64>)]) -> bool {
    let prefixes: Vec<&[u8]> = writes
        .iter()
        .filter_map(|write| match write {
            Write::SetStamped(prefix, _) => Some(prefix.as_bytes()),
            _ => None,
        })
        .collect();
    let shaped = |key: &[u8]| {
        prefixes.iter().any(|prefix| key.len() == prefix.len() + crate::kv::STAMP_BYTES && key.starts_with(prefix))
    };
    let plain = writes.iter().filter_map(|write| match write {
        Write::Set(key, _) | Write::Delete(key) => Some(key.as_bytes()),
        Write::SetStamped(..) => None,
    });
    plain.chain(checks.iter().map(|(key, _)| key.as_slice())).any(shaped)
}

/// One statement of a pipeline, with the check of its answer.
pub(super) type Pending<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), KvError>> + Send + 'a>>;

/// Sends `statements` together (tokio-postgres pipelines the statements
/// polled at once) and awaits every answer; the first failure in statement
/// order is the result (the ones after it only say the transaction is aborted).
pub(super) async fn pipelined(statements: Vec<Pending<'_>>) -> Result<(), KvError> {
    futures_util::future::join_all(statements).await.into_iter().collect()
}

/// A conditional statement's answer: it must have touched every row it was given.
pub(super) fn touched(done: Result<u64, tokio_postgres::Error>, wanted: usize) -> Result<(), KvError> {
    match done.map_err(|err| classify(&err))? == wanted as u64 {
        true => Ok(()),
        false => Err(KvError::Conflict),
    }
}

/// The prepared statements of a commit.
pub(super) struct Statements {
    pub(super) versions: tokio_postgres::Statement,
    pub(super) next_version: tokio_postgres::Statement,
    pub(super) stamp_lock: tokio_postgres::Statement,
    pub(super) insert_stamped: tokio_postgres::Statement,
    pub(super) insert_new: tokio_postgres::Statement,
    pub(super) update_if: tokio_postgres::Statement,
    pub(super) delete_if: tokio_postgres::Statement,
    pub(super) upsert: tokio_postgres::Statement,
    pub(super) update: tokio_postgres::Statement,
    pub(super) insert: tokio_postgres::Statement,
    pub(super) delete: tokio_postgres::Statement,
}

impl Statements {
    /// The statements on `client`: prepared once per connection, all in
    /// one round trip, then taken from its cache.
    pub(super) async fn prepare(client: &deadpool_postgres::Client, sql: &Sql) -> Result<Self, tokio_postgres::Error> {
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
pub(super) async fn pipelined_commit(
    txn: &deadpool_postgres::Transaction<'_>,
    sql: &Statements,
    ns: &String,
    guards: &Guards,
    stamped: bool,
    writes: &[Write],
    compression: crate::kv::Compression,
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
        plan = Plan::new(writes, Some(stamp), conditions, compression)?;
    } else {
        statements.extend(read_checks.then(check_versions));
        if stamped {
            statements.push(lock());
        }
        statements.push(Box::pin(async move { txn.query_one(&sql.next_version, &[]).await.map(drop).map_err(failed) }));
        in_sql = Stamped::of(writes, compression);
        plan = Plan::new(writes, None, conditions, compression)?;
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
