//! The only code that builds keys: every record layout and index lives here.
//!
//! Keys (all ids are validated before they reach this module, so they hold
//! no `/`):
//!
//! | key | value |
//! |---|---|
//! | `user/{userId}/cloud-token` | [`CloudToken`] |
//!
//! Every value is JSON with `"v"`: the storage format version (see the
//! crate docs for the migration rule).

use crate::kv::{Kv, KvError, Write};
use serde::{Deserialize, Serialize};

/// The storage format this build writes.
pub const FORMAT: u32 = 1;

/// The Evotor cloud token of one user: the partner calls Evotor's REST API with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudToken {
    /// Storage format version.
    pub v: u32,
    /// The token as Evotor sent it.
    pub token: String,
    /// When it arrived, Unix seconds.
    pub received_at: u64,
}

fn cloud_token_key(user_id: &str) -> String {
    format!("user/{user_id}/cloud-token")
}

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
                eprintln!("unreadable record at {key}");
                crate::errors::ApiError::internal("unreadable record")
            }
        }
    }
}

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

fn read<T: for<'de> Deserialize<'de>>(kv: &dyn Kv, key: &str) -> Result<Option<T>, StorageError> {
    match kv.get(key)? {
        None => Ok(None),
        Some(entry) => serde_json::from_slice(&entry.value)
            .map(Some)
            .map_err(|_| StorageError::Corrupt(key.to_owned())),
    }
}

/// Records the latest Evotor cloud token of a user (latest wins).
pub fn put_cloud_token(
    kv: &dyn Kv,
    user_id: &str,
    token: &str,
    now: u64,
) -> Result<(), StorageError> {
    let record = CloudToken {
        v: FORMAT,
        token: token.to_owned(),
        received_at: now,
    };
    kv.commit(
        &[],
        &[Write::Set(cloud_token_key(user_id), encode(&record))],
    )?;
    Ok(())
}

/// The Evotor cloud token of a user, if Evotor sent one.
pub fn cloud_token(kv: &dyn Kv, user_id: &str) -> Result<Option<CloudToken>, StorageError> {
    read(kv, &cloud_token_key(user_id))
}
