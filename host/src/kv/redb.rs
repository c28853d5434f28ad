//! The embedded default backend: one redb file, one table per namespace.
//!
//! A value is stored as its 8-byte version followed by the bytes. Versions
//! come from one counter in the `evogate:meta` table, bumped by every commit,
//! so a version is never reused even after a key is deleted and re-created.

use super::{Backend, Check, Entry, KvError, Page, Write, decode_entry, encode_entry, scan_start};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use std::path::{Path, PathBuf};

const META: TableDefinition<'static, &str, u64> = TableDefinition::new("evogate:meta");
const LAST_VERSION: &str = "last_version";

/// A redb database file shared by every plugin.
pub struct RedbBackend {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbBackend").field("path", &self.path).finish_non_exhaustive()
    }
}

impl RedbBackend {
    /// Opens (or creates) the database file, creating its directory too.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
        }
        let db = Database::create(path).with_context(|| format!("opening redb store {}", path.display()))?;
        Ok(Self { db, path: path.to_owned() })
    }
}

/// The table holding namespace `ns`.
fn table(ns: &str) -> String {
    format!("kv:{ns}")
}

fn unavailable(err: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(err.to_string())
}

impl Backend for RedbBackend {
    fn describe(&self) -> String {
        format!("redb at {}", self.path.display())
    }

    fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, KvError> {
        let name = table(ns);
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(unavailable(err)),
        };
        match table.get(key).map_err(unavailable)? {
            Some(raw) => decode_entry(raw.value()).map(Some),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        ns: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, Entry)>, KvError> {
        let name = table(ns);
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(err) => return Err(unavailable(err)),
        };
        let range =
            table.range::<&str>((scan_start(prefix, start_after), std::ops::Bound::Unbounded)).map_err(unavailable)?;
        let mut page = Page::new(prefix, start_after, limit, max_bytes);
        for item in range {
            let (key, raw) = item.map_err(unavailable)?;
            if !page.offer(key.value(), || decode_entry(raw.value()))? {
                break;
            }
        }
        Ok(page.entries)
    }

    fn commit(&self, ns: &str, checks: &[Check], writes: &[Write]) -> Result<(), KvError> {
        let name = table(ns);
        // The default durability of a redb write transaction is `Immediate`:
        // `commit` returns only once the data is fsynced.
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let mut table = txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(unavailable)?;
            for check in checks {
                let current = match table.get(check.key()).map_err(unavailable)? {
                    Some(raw) => Some(decode_entry(raw.value())?.version),
                    None => None,
                };
                if !check.holds(current) {
                    // Dropping `txn` without commit aborts it: nothing is written.
                    return Err(KvError::Conflict);
                }
            }
            let mut meta = txn.open_table(META).map_err(unavailable)?;
            let version = meta.get(LAST_VERSION).map_err(unavailable)?.map_or(0, |v| v.value()) + 1;
            meta.insert(LAST_VERSION, version).map_err(unavailable)?;
            // One writer at a time: versions, and so stamps, follow commit order.
            for (key, value) in super::resolve(writes, version) {
                match value {
                    Some(value) => {
                        table.insert(key.as_ref(), encode_entry(version, value).as_slice()).map_err(unavailable)?;
                    }
                    None => {
                        table.remove(key.as_ref()).map_err(unavailable)?;
                    }
                }
            }
        }
        txn.commit().map_err(unavailable)
    }

    fn ping(&self) -> Result<(), KvError> {
        self.db.begin_read().map(drop).map_err(unavailable)
    }
}
