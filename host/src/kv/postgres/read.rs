//! Reads: `get-many` in one statement, and prefix scans, each a future the request's own task awaits.

use super::*;
use crate::kv::codec::unframe;

pub(super) fn version(raw: i64) -> u64 {
    u64::try_from(raw).unwrap_or_default()
}

/// Reads `keys` in one statement (see [`Backend::get_many`]).
pub(super) async fn get_many(
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
        return row
            .map(|row| Ok(Entry { value: unframe(row.get(0))?, version: version(row.get(1)) }))
            .transpose()
            .map(|entry| vec![entry]);
    }
    let statement = client.prepare_cached(&sql.get_many).await.map_err(|err| classify(&err))?;
    let raw: Vec<&[u8]> = keys.iter().map(|key| key.as_bytes()).collect();
    let budget = i64::try_from(max_bytes.max(1)).unwrap_or(i64::MAX);
    let rows = client.query(&statement, &[&ns, &raw, &budget]).await.map_err(|err| classify(&err))?;
    // One row per key answered, in the keys' order; the server's budget
    // stops where `get_many_answer`'s does, so rows never run out before it does.
    let mut rows = rows.into_iter().zip(1i64..);
    crate::kv::get_many_answer(&keys, max_bytes, |_| {
        let (row, n) =
            rows.next().ok_or_else(|| KvError::Unavailable("postgres: get-many answered too few keys".into()))?;
        if row.get::<_, i64>(0) != n {
            return Err(KvError::Unavailable("postgres: get-many answered out of order".into()));
        }
        let value: Option<Vec<u8>> = row.get(1);
        value
            .map(|value| {
                Ok(Entry { value: unframe(value)?, version: version(row.get::<_, Option<i64>>(2).unwrap_or_default()) })
            })
            .transpose()
    })
}

/// One scan page in one statement (see [`Backend::scan`]).
pub(super) async fn scan(pool: Pool, sql: Arc<Sql>, ns: String, scan: Scan) -> Result<Vec<(String, Entry)>, KvError> {
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
        let value = unframe(row.get(1))?;
        bytes += value.len();
        let key = String::from_utf8(key).map_err(|_| KvError::Unavailable("postgres: a key is not UTF-8".into()))?;
        page.push((key, Entry { value, version: version(row.get(2)) }));
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(page)
}
