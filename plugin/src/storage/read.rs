//! Reading outside a transaction: one record, a page of records, every
//! entry under a prefix.

use super::codec::{StorageError, decode};
use super::keys::cloud_token_key;
use super::records::CloudToken;
use crate::kv::Kv;
use serde::de::DeserializeOwned;

/// Reads one record outside any transaction.
pub fn read<T: DeserializeOwned>(kv: &dyn Kv, key: &str) -> Result<Option<T>, StorageError> {
    match kv.get(key)? {
        None => Ok(None),
        Some(entry) => decode(key, &entry.value).map(Some),
    }
}

/// One page of records under `prefix` after `after` (a key suffix), with
/// the cursor of the next page.
pub fn page<T: DeserializeOwned>(
    kv: &dyn Kv,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<T>, Option<String>), StorageError> {
    let limit = limit.clamp(1, crate::kv::MAX_SCAN_LIMIT);
    let entries = collect(kv, prefix, after.map(|after| format!("{prefix}{after}")), limit as usize)?;
    let next = if entries.len() == limit as usize {
        entries.last().and_then(|(key, _)| key.strip_prefix(prefix)).map(str::to_owned)
    } else {
        None
    };
    let items = entries.iter().map(|(key, entry)| decode(key, &entry.value)).collect::<Result<_, _>>()?;
    Ok((items, next))
}

/// Every entry under `prefix`, in key order (for small sets: a user's
/// subscriptions, a subscription's events).
pub fn scan_all(kv: &dyn Kv, prefix: &str) -> Result<Vec<(String, crate::kv::Entry)>, StorageError> {
    collect(kv, prefix, None, usize::MAX)
}

/// Entries under `prefix` read in scans that grow: `first` entries, then
/// twice as many each time up to `most`, so a reader that stops early (at
/// the first record not due, at a full page) has read little more than it
/// used, and one that goes on needs few scans.
pub(crate) struct GrowingScan<'a> {
    kv: &'a dyn Kv,
    prefix: &'a str,
    /// The last key read (or where to start after).
    start: Option<String>,
    size: usize,
    most: usize,
}

impl<'a> GrowingScan<'a> {
    /// A scan of `prefix` after the key `start`.
    pub(crate) fn new(kv: &'a dyn Kv, prefix: &'a str, start: Option<String>, first: usize, most: usize) -> Self {
        Self { kv, prefix, start, size: first, most }
    }

    /// The next entries, at most `want` (none at the end).
    pub(crate) fn next(&mut self, want: usize) -> Result<Vec<(String, crate::kv::Entry)>, StorageError> {
        let entries = collect(self.kv, self.prefix, self.start.clone(), want.min(self.size))?;
        self.size = self.size.saturating_mul(2).min(self.most);
        if let Some((last, _)) = entries.last() {
            self.start = Some(last.clone());
        }
        Ok(entries)
    }
}

/// Up to `limit` entries under `prefix` after the key `cursor`, scanning as
/// often as needed: the host may end a scan early to bound its size, so
/// only an empty scan means the end.
pub(crate) fn collect(
    kv: &dyn Kv,
    prefix: &str,
    mut cursor: Option<String>,
    limit: usize,
) -> Result<Vec<(String, crate::kv::Entry)>, StorageError> {
    let mut entries = Vec::new();
    while entries.len() < limit {
        let want = (limit - entries.len()).min(crate::kv::MAX_SCAN_LIMIT as usize) as u32;
        let batch = kv.scan(prefix, cursor.as_deref(), want)?;
        let Some((last, _)) = batch.last() else { break };
        cursor = Some(last.clone());
        entries.extend(batch);
    }
    Ok(entries)
}

/// The Evotor cloud token of a user, if Evotor sent one.
pub fn cloud_token(kv: &dyn Kv, user_id: &str) -> Result<Option<CloudToken>, StorageError> {
    read(kv, &cloud_token_key(user_id))
}
