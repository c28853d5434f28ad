//! The change feed as stored: the changes of one commit in one record
//! under `feed/{stamp}`, and what a reader makes of it — each entry with
//! its cursor.
//!
//! A commit's entries share one record (or a few, when they are many), so
//! a delivery of a hundred documents writes one key and one value, which
//! compresses as a whole, instead of a hundred. A cursor stays what it
//! always was, the commit's stamp with an index (`{stamp:020}.{n:06}`): the
//! index of an entry among its commit's entries. Records of earlier
//! formats, one entry a record, keep their cursor, their key's stamp, and
//! are read as they are: nothing is rewritten.

use super::codec::{FORMAT, StorageError, decode, encode};
use super::keys::FEED_PREFIX;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One accepted change as the partner's change feed shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedEntry {
    /// What happened, e.g. `document.received`.
    pub kind: String,
    /// When, Unix seconds.
    pub at: u64,
    /// The Evotor user concerned, if any (absent when none is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The ids that say what changed.
    pub data: Value,
}

/// The entries of one commit, or of a part of them, at `feed/{stamp}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedRecord {
    /// Storage format version.
    pub v: u32,
    /// The latest of its entries' times: retention reads only this.
    pub at: u64,
    /// The index of its first entry among the commit's entries (absent
    /// when 0): the cursor of entry `i` is the commit's stamp with `first + i`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first: u32,
    /// The changes, in the order they were made.
    pub entries: Vec<FeedEntry>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A record at `feed/{stamp}` in any format this build reads.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Record(FeedRecord),
    /// An earlier format: one entry (with a `"v"` of its own, ignored).
    Entry(FeedEntry),
}

/// JSON bytes of entries above which a commit's entries go on in another
/// record: a record stays small to read for a page of one entry, and many
/// records fit one scan.
pub const FEED_RECORD_BYTES: usize = 32 * 1024;

/// Entries one commit may announce: the index of a cursor has six digits.
pub const MAX_FEED_ENTRIES_PER_COMMIT: usize = 1_000_000;

/// The records that hold `entries`, one commit's, in order: as few as
/// keep each under [`FEED_RECORD_BYTES`] (an entry larger than that has a
/// record of its own). `None` when there are more than
/// [`MAX_FEED_ENTRIES_PER_COMMIT`].
pub(super) fn records(entries: Vec<FeedEntry>) -> Option<Vec<Vec<u8>>> {
    if entries.len() > MAX_FEED_ENTRIES_PER_COMMIT {
        return None;
    }
    let (mut parts, mut bytes) = (Vec::<Vec<FeedEntry>>::new(), 0);
    for entry in entries {
        let size = encode(&entry).len() + 1;
        match parts.last_mut() {
            Some(part) if bytes + size <= FEED_RECORD_BYTES => part.push(entry),
            _ => {
                parts.push(vec![entry]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    let mut first = 0;
    let records = parts.into_iter().map(|entries| {
        let at = entries.iter().map(|entry| entry.at).max().unwrap_or_default();
        // At most a million entries: the index fits.
        let record = FeedRecord { v: FORMAT, at, first: first as u32, entries };
        first += record.entries.len();
        encode(&record)
    });
    Some(records.collect())
}

/// The entries of the record at `key` (under [`FEED_PREFIX`]), each with
/// its cursor, in order.
pub fn feed_entries(key: &str, bytes: &[u8]) -> Result<Vec<(String, FeedEntry)>, StorageError> {
    let corrupt = || StorageError::Corrupt(key.to_owned());
    // `{stamp:020}.{index:06}`
    let (stamp, index) = key.strip_prefix(FEED_PREFIX).and_then(|cursor| cursor.split_once('.')).ok_or_else(corrupt)?;
    let cursor = |n: u64| format!("{stamp}.{n:06}");
    Ok(match decode::<Stored>(key, bytes)? {
        Stored::Entry(entry) => vec![(cursor(index.parse().map_err(|_| corrupt())?), entry)],
        Stored::Record(record) => {
            let first = u64::from(record.first);
            record.entries.into_iter().zip(first..).map(|(entry, n)| (cursor(n), entry)).collect()
        }
    })
}

/// Where a scan of the feed starts to find the entries after `cursor`
/// (`{stamp}.{index}`): before the first record of the cursor's commit,
/// whose entries up to the cursor the reader skips.
pub fn feed_scan_start(cursor: &str) -> String {
    let stamp = cursor.split_once('.').map_or(cursor, |(stamp, _)| stamp);
    format!("{FEED_PREFIX}{stamp}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(n: u64, data: Value) -> FeedEntry {
        FeedEntry { kind: "document.received".into(), at: 1_700_000_000 + n, user_id: Some("u1".into()), data }
    }

    fn cursors(key_index: u64, record: &[u8]) -> Vec<String> {
        let key = format!("{FEED_PREFIX}{:020}.{key_index:06}", 42);
        feed_entries(&key, record).expect("entries").into_iter().map(|(cursor, _)| cursor).collect()
    }

    #[test]
    fn a_commits_entries_share_a_record_and_number_on_from_record_to_record() {
        let small: Vec<FeedEntry> = (0..100).map(|n| entry(n, json!({ "id": n }))).collect();
        let one = records(small.clone()).expect("records");
        assert_eq!(one.len(), 1);
        let read = feed_entries(&format!("{FEED_PREFIX}{:020}.000003", 42), &one[0]).expect("entries");
        assert_eq!(read.iter().map(|(_, entry)| entry.clone()).collect::<Vec<_>>(), small);
        // The index is the entry's among the commit's, not the record's key's.
        assert_eq!(read[0].0, format!("{:020}.000000", 42));
        assert_eq!(read[99].0, format!("{:020}.000099", 42));
        let stored: FeedRecord = serde_json::from_slice(&one[0]).expect("record");
        assert_eq!(stored.at, 1_700_000_099);

        // Large entries go on in further records, whose cursors go on.
        let large: Vec<FeedEntry> = (0..10).map(|n| entry(n, json!({ "pad": "x".repeat(10_000) }))).collect();
        let parts = records(large).expect("records");
        assert_eq!(parts.len(), 4, "three entries of 10 KB fit 32 KiB");
        let all: Vec<String> = parts.iter().enumerate().flat_map(|(i, part)| cursors(i as u64, part)).collect();
        let expected: Vec<String> = (0..10).map(|n| format!("{:020}.{n:06}", 42)).collect();
        assert_eq!(all, expected);
        assert!(parts.iter().all(|part| part.len() <= FEED_RECORD_BYTES + 100));

        let huge = vec![entry(0, json!({ "pad": "x".repeat(100_000) }))];
        assert_eq!(records(huge).expect("records").len(), 1, "an entry larger than a record has its own");
        assert_eq!(records(Vec::new()).expect("records"), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn an_entry_of_the_earlier_format_keeps_its_keys_cursor() {
        let old = json!({ "v": 1, "kind": "receipt.received", "at": 5, "userId": "u1", "data": { "id": "r" } });
        let bytes = serde_json::to_vec(&old).expect("json");
        let read = feed_entries(&format!("{FEED_PREFIX}{:020}.000007", 9), &bytes).expect("entries");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0, format!("{:020}.000007", 9));
        assert_eq!(read[0].1.kind, "receipt.received");
        assert_eq!(read[0].1.data, json!({ "id": "r" }));
    }

    #[test]
    fn unreadable_records_and_keys_name_their_key() {
        let key = format!("{FEED_PREFIX}{:020}.000000", 1);
        assert!(matches!(feed_entries(&key, b"{}"), Err(StorageError::Corrupt(k)) if k == key));
        assert!(matches!(feed_entries("feed/x", b"{}"), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn a_scan_after_a_cursor_starts_before_its_commits_records() {
        let cursor = format!("{:020}.000005", 42);
        let start = feed_scan_start(&cursor);
        assert!(start.as_str() < format!("{FEED_PREFIX}{:020}.000000", 42).as_str());
        assert!(start.as_str() > format!("{FEED_PREFIX}{:020}.999999", 41).as_str());
    }
}
