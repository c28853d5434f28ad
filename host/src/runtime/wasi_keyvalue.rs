//! The host side of the standard `wasi:keyvalue` interfaces, both drafts
//! components use today: `0.2.0-draft` (what `wasmtime serve` provides) and
//! `0.2.0-draft2` (compare-and-swap; Spin's). Both are backed by the
//! plugin's namespace of the gateway's store, through the same calls, limits,
//! metrics and blocking hand-off as the evogate `kv` interface.
//!
//! Layout in the namespace: bucket `b`'s key `k` is the key `wasi-kv/b/k`.
//! Bucket names are 1–64 of `[A-Za-z0-9_.-]`; the empty name (`wasmtime
//! serve`'s only bucket) and `default` (Spin's) are the same bucket,
//! `default`. Every write is one durable commit; `set-many` and
//! `delete-many` are one commit each, so they land whole or not at all.
//! Counters (`increment`) are decimal text, as `wasmtime serve` keeps them.

use crate::runtime::bindings::wit_kv;
use crate::runtime::evogate_kv::KvCtx;
use std::collections::VecDeque;
use wasmtime::component::Resource;

/// `wasi:keyvalue@0.2.0-draft`.
pub(crate) mod draft {
    wasmtime::component::bindgen!({
        path: "../wit/keyvalue/0.2.0-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: async },
        with: { "wasi:keyvalue/store.bucket": super::Bucket },
    });
}

/// `wasi:keyvalue@0.2.0-draft2`.
pub(crate) mod draft2 {
    wasmtime::component::bindgen!({
        path: "../wit/keyvalue/0.2.0-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
            "wasi:keyvalue/atomics.cas": super::Cas,
        },
    });
}

use draft::wasi::keyvalue as d1;
use draft2::wasi::keyvalue as d2;

/// Prefix of every key the standard interface writes.
const PREFIX: &str = "wasi-kv/";
/// The bucket the empty name and `default` open.
const DEFAULT_BUCKET: &str = "default";
/// Longest bucket name.
const MAX_BUCKET_NAME: usize = 64;
/// Keys per `list-keys` page.
const KEYS_PER_PAGE: u32 = 256;
/// `0.2.0-draft` cursors (numbers) a request keeps: the newest pages'.
const MAX_CURSORS: usize = 64;
/// Times `increment` rereads and retries when another writer got in between.
const INCREMENT_ATTEMPTS: usize = 32;

/// An open bucket: the prefix of its keys in the namespace.
#[derive(Debug)]
pub struct Bucket {
    prefix: String,
}

/// A `0.2.0-draft2` compare-and-swap handle: one key and what it held when read.
#[derive(Debug)]
pub struct Cas {
    key: String,
    seen: Option<wit_kv::Entry>,
}

/// What a request keeps for the standard interface: the `0.2.0-draft`
/// cursors handed out (a number stands for the last key of a page).
#[derive(Debug, Default)]
pub(crate) struct KeyValueState {
    cursors: VecDeque<(u64, String)>,
    next_cursor: u64,
}

/// Failures of the standard interface, before they become either draft's `error`.
#[derive(Debug)]
enum Failure {
    NoSuchStore,
    Other(String),
}

impl From<wit_kv::Error> for Failure {
    fn from(err: wit_kv::Error) -> Self {
        Failure::Other(match err {
            wit_kv::Error::Conflict => "conflict".into(),
            wit_kv::Error::TooLarge => format!(
                "too large: keys (with the bucket's prefix) up to {} bytes, values up to {} bytes",
                crate::kv::MAX_KEY_BYTES,
                crate::kv::MAX_VALUE_BYTES
            ),
            wit_kv::Error::Unavailable(why) => format!("store unavailable: {why}"),
            wit_kv::Error::OutcomeUnknown(why) => format!("outcome unknown (the write may have landed): {why}"),
        })
    }
}

impl From<wasmtime::component::ResourceTableError> for Failure {
    fn from(err: wasmtime::component::ResourceTableError) -> Self {
        Failure::Other(err.to_string())
    }
}

/// The bucket `identifier` names, if it can be one.
fn bucket_prefix(identifier: &str) -> Result<String, Failure> {
    let name = if identifier.is_empty() { DEFAULT_BUCKET } else { identifier };
    let valid = name.len() <= MAX_BUCKET_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid {
        return Err(Failure::NoSuchStore);
    }
    Ok(format!("{PREFIX}{name}/"))
}

/// A counter's value as stored (decimal text), `None` for a key not holding one.
fn counter<T: std::str::FromStr>(value: &[u8]) -> Result<T, Failure> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| Failure::Other("the key holds a value that is not a number; increment needs one".into()))
}

/// The check that `seen` is still what the store holds at `key`.
fn unchanged(key: String, seen: Option<&wit_kv::Entry>) -> wit_kv::Check {
    match seen {
        Some(entry) => wit_kv::Check::VersionIs((key, entry.version)),
        None => wit_kv::Check::Absent(key),
    }
}

/// The operations both drafts share, on the store calls of the `kv` interface.
impl KeyValueView<'_> {
    fn bucket(&self, bucket: &Resource<Bucket>) -> Result<String, Failure> {
        Ok(self.table.get(bucket)?.prefix.clone())
    }

    async fn kv_get(&mut self, bucket: &Resource<Bucket>, key: &str) -> Result<Option<Vec<u8>>, Failure> {
        let key = self.bucket(bucket)? + key;
        Ok(wit_kv::Host::get(&mut self.kv, key).await?.map(|entry| entry.value))
    }

    async fn kv_write(
        &mut self,
        bucket: &Resource<Bucket>,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), Failure> {
        let prefix = self.bucket(bucket)?;
        let writes = writes
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => wit_kv::Write::Set((format!("{prefix}{key}"), value)),
                None => wit_kv::Write::Delete(format!("{prefix}{key}")),
            })
            .collect();
        Ok(wit_kv::Host::commit(&mut self.kv, Vec::new(), writes).await?)
    }

    /// One page of keys after `after`, and the last key when more may follow.
    async fn kv_keys(
        &mut self,
        bucket: &Resource<Bucket>,
        after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), Failure> {
        let prefix = self.bucket(bucket)?;
        let after = after.map(|key| format!("{prefix}{key}"));
        let page = wit_kv::Host::scan(&mut self.kv, prefix.clone(), after, KEYS_PER_PAGE).await?;
        // A page can be short (the scan's byte cap): only an empty one ends the listing.
        let keys: Vec<String> =
            page.into_iter().filter_map(|(key, _)| key.strip_prefix(&prefix).map(str::to_owned)).collect();
        let next = keys.last().cloned();
        Ok((keys, next))
    }

    /// Adds `delta` (through `add`, which refuses overflow) to the counter at `key`.
    async fn kv_increment<T>(
        &mut self,
        bucket: &Resource<Bucket>,
        key: &str,
        add: impl Fn(T) -> Option<T>,
    ) -> Result<T, Failure>
    where
        T: std::str::FromStr + std::fmt::Display + Default + Copy,
    {
        let key = self.bucket(bucket)? + key;
        for _ in 0..INCREMENT_ATTEMPTS {
            let seen = wit_kv::Host::get(&mut self.kv, key.clone()).await?;
            let current = match &seen {
                Some(entry) => counter::<T>(&entry.value)?,
                None => T::default(),
            };
            let sum = add(current).ok_or_else(|| Failure::Other("the counter would overflow".into()))?;
            let check = unchanged(key.clone(), seen.as_ref());
            let write = wit_kv::Write::Set((key.clone(), sum.to_string().into_bytes()));
            match wit_kv::Host::commit(&mut self.kv, vec![check], vec![write]).await {
                Ok(()) => return Ok(sum),
                Err(wit_kv::Error::Conflict) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(Failure::Other(format!("the counter changed under {INCREMENT_ATTEMPTS} attempts in a row; try again")))
    }

    async fn kv_get_many(
        &mut self,
        bucket: &Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Failure> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            let value = self.kv_get(bucket, &key).await?;
            found.push(value.map(|value| (key, value)));
        }
        Ok(found)
    }
}

/// What both drafts declare alike: the error, `store.open`, the bucket's
/// calls but `list-keys` (given as `$list_keys`), and `batch`.
macro_rules! same_in_both_drafts {
    ($draft:ident, $($list_keys:tt)*) => {
        impl From<Failure> for $draft::store::Error {
            fn from(err: Failure) -> Self {
                match err {
                    Failure::NoSuchStore => Self::NoSuchStore,
                    Failure::Other(why) => Self::Other(why),
                }
            }
        }

        impl $draft::store::Host for KeyValueView<'_> {
            async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, $draft::store::Error> {
                let prefix = bucket_prefix(&identifier)?;
                Ok(self.table.push(Bucket { prefix }).map_err(Failure::from)?)
            }
        }

        impl $draft::store::HostBucket for KeyValueView<'_> {
            async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, $draft::store::Error> {
                Ok(self.kv_get(&bucket, &key).await?)
            }

            async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Result<(), $draft::store::Error> {
                Ok(self.kv_write(&bucket, vec![(key, Some(value))]).await?)
            }

            async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), $draft::store::Error> {
                Ok(self.kv_write(&bucket, vec![(key, None)]).await?)
            }

            async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, $draft::store::Error> {
                Ok(self.kv_get(&bucket, &key).await?.is_some())
            }

            $($list_keys)*

            async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
                self.table.delete(bucket)?;
                Ok(())
            }
        }

        impl $draft::batch::Host for KeyValueView<'_> {
            async fn get_many(
                &mut self,
                bucket: Resource<Bucket>,
                keys: Vec<String>,
            ) -> Result<Vec<Option<(String, Vec<u8>)>>, $draft::store::Error> {
                Ok(self.kv_get_many(&bucket, keys).await?)
            }

            async fn set_many(
                &mut self,
                bucket: Resource<Bucket>,
                key_values: Vec<(String, Vec<u8>)>,
            ) -> Result<(), $draft::store::Error> {
                let writes = key_values.into_iter().map(|(key, value)| (key, Some(value))).collect();
                Ok(self.kv_write(&bucket, writes).await?)
            }

            async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Result<(), $draft::store::Error> {
                Ok(self.kv_write(&bucket, keys.into_iter().map(|key| (key, None)).collect()).await?)
            }
        }
    };
}

same_in_both_drafts!(
    d1,
    /// The cursor is a number standing for the page's last key, valid in
    /// the request that got it (instances live for one request).
    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<d1::store::KeyResponse, d1::store::Error> {
        let after = match cursor {
            None => None,
            Some(cursor) => {
                let found = self.state.cursors.iter().find(|(id, _)| *id == cursor);
                let Some((_, key)) = found else {
                    return Err(d1::store::Error::Other(format!(
                        "unknown list-keys cursor {cursor}: cursors hold within one request, for its {MAX_CURSORS} newest pages"
                    )));
                };
                Some(key.clone())
            }
        };
        let (keys, last) = self.kv_keys(&bucket, after).await?;
        let cursor = last.map(|key| {
            let state = &mut self.state;
            state.next_cursor += 1;
            if state.cursors.len() == MAX_CURSORS {
                state.cursors.pop_front();
            }
            state.cursors.push_back((state.next_cursor, key));
            state.next_cursor
        });
        Ok(d1::store::KeyResponse { keys, cursor })
    }
);

same_in_both_drafts!(
    d2,
    /// The cursor is the page's last key: it holds across requests.
    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> Result<d2::store::KeyResponse, d2::store::Error> {
        let (keys, cursor) = self.kv_keys(&bucket, cursor).await?;
        Ok(d2::store::KeyResponse { keys, cursor })
    }
);

impl d1::atomics::Host for KeyValueView<'_> {
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: u64) -> Result<u64, d1::store::Error> {
        Ok(self.kv_increment(&bucket, &key, |current: u64| current.checked_add(delta)).await?)
    }
}

impl d2::atomics::Host for KeyValueView<'_> {
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: i64) -> Result<i64, d2::store::Error> {
        Ok(self.kv_increment(&bucket, &key, |current: i64| current.checked_add(delta)).await?)
    }

    /// Writes only if the key still has the version the handle read; else
    /// gives the handle back holding what the key holds now, so the caller
    /// can compute again from `current` and retry.
    async fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> Result<(), d2::atomics::CasError> {
        let store_error = |err: Failure| d2::atomics::CasError::StoreError(err.into());
        let Cas { key, seen } = self.table.delete(cas).map_err(|err| store_error(err.into()))?;
        let check = unchanged(key.clone(), seen.as_ref());
        let write = wit_kv::Write::Set((key.clone(), value));
        match wit_kv::Host::commit(&mut self.kv, vec![check], vec![write]).await {
            Ok(()) => Ok(()),
            Err(wit_kv::Error::Conflict) => {
                let seen = wit_kv::Host::get(&mut self.kv, key.clone()).await.map_err(|err| store_error(err.into()))?;
                let cas = self.table.push(Cas { key, seen }).map_err(|err| store_error(err.into()))?;
                Err(d2::atomics::CasError::CasFailed(cas))
            }
            Err(err) => Err(store_error(err.into())),
        }
    }
}

impl d2::atomics::HostCas for KeyValueView<'_> {
    async fn new(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Resource<Cas>, d2::store::Error> {
        let key = self.bucket(&bucket)? + &key;
        let seen = wit_kv::Host::get(&mut self.kv, key.clone()).await.map_err(Failure::from)?;
        Ok(self.table.push(Cas { key, seen }).map_err(Failure::from)?)
    }

    async fn current(&mut self, cas: Resource<Cas>) -> Result<Option<Vec<u8>>, d2::store::Error> {
        let cas = self.table.get(&cas).map_err(Failure::from)?;
        Ok(cas.seen.as_ref().map(|entry| entry.value.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

/// What the `wasi:keyvalue` calls of one instance use, lent by the store's data.
pub(crate) struct KeyValueView<'a> {
    /// The instance's resources (buckets, cas handles).
    pub(crate) table: &'a mut wasmtime::component::ResourceTable,
    /// The evogate `kv` context the calls go through.
    pub(crate) kv: &'a mut KvCtx,
    /// Cursors of key listings.
    pub(crate) state: &'a mut KeyValueState,
}

/// [`wasmtime::component::HasData`] for the linker: the store's data lends a [`KeyValueView`].
struct View;

impl wasmtime::component::HasData for View {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds both drafts' interfaces to `linker`, served by the view `get` lends from the store's data.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    draft::Imports::add_to_linker::<T, View>(linker, get)?;
    draft2::Imports::add_to_linker::<T, View>(linker, get)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_map_to_disjoint_prefixes_and_the_default_has_two_names() {
        assert_eq!(bucket_prefix("").ok(), Some("wasi-kv/default/".into()));
        assert_eq!(bucket_prefix("default").ok(), Some("wasi-kv/default/".into()));
        assert_eq!(bucket_prefix("sessions.v2").ok(), Some("wasi-kv/sessions.v2/".into()));
        for bad in ["a/b", "a b", "ключ", &"x".repeat(65)] {
            assert!(matches!(bucket_prefix(bad), Err(Failure::NoSuchStore)), "{bad:?}");
        }
    }

    #[test]
    fn counters_are_decimal_text() {
        assert_eq!(counter::<u64>(b"42").ok(), Some(42));
        assert_eq!(counter::<i64>(b"-7").ok(), Some(-7));
        assert!(counter::<u64>(b"\x2a\0\0\0\0\0\0\0").is_err());
        assert!(counter::<u64>(b"-1").is_err());
    }
}
