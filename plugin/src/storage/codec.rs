//! How records are stored: JSON in the storage format [`FORMAT`], and
//! [`StorageError`], what goes wrong reading them, with its mapping to the
//! Evotor error answer.

use crate::kv::KvError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The storage format this build writes.
pub const FORMAT: u32 = 1;

/// Why a stored record could not be used.
#[derive(Debug)]
pub enum StorageError {
    /// The store failed.
    Kv(KvError),
    /// A record is not in any format this build can read.
    Corrupt(String),
}

impl From<KvError> for StorageError {
    fn from(err: KvError) -> Self {
        StorageError::Kv(err)
    }
}

impl From<StorageError> for crate::errors::ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Kv(err) => err.into(),
            StorageError::Corrupt(key) => {
                evogate_plugin::log::error(&format!("unreadable record at {key}"));
                crate::errors::ApiError::internal("unreadable record")
            }
        }
    }
}

/// A record as stored: its JSON.
pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Records are plain structs of strings, numbers and JSON values: serializing cannot fail.
    let mut bytes = serde_json::to_vec(record).unwrap_or_default();
    // The buffer grew by doubling: a commit holds thousands of records, give the slack back.
    bytes.shrink_to_fit();
    bytes
}

/// The record stored at `key`, or [`StorageError::Corrupt`] naming the key.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|_| StorageError::Corrupt(key.to_owned()))
}
