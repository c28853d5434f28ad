//! The only code that builds keys: every record layout and index lives here.
//! The storage layer: imports only the base modules (`kv`, `errors`,
//! `context`); the domain builds on it, the endpoints read through it.
//!
//! Keys (ids are validated before they reach this module, so they hold no
//! `/`; logins and tokens appear only as SHA-256 hex digests):
//!
//! | key | value |
//! |---|---|
//! | `users/{userId}` | [`UserRecord`]: linked account, issued tokens, tariff |
//! | `user/{userId}/cloud-token` | [`CloudToken`] |
//! | `accounts/{accountId}` | [`Account`] |
//! | `logins/{sha256(lowercase login)}` | [`LoginIndex`] → account id |
//! | `tokens/{sha256(token)}` | [`TokenIndex`] → userId |
//! | `owners/{kind}/{uuid}` | [`OwnerIndex`]: which user an Evotor store, employee or device belongs to |
//! | `user/{userId}/{kind}/{uuid}` | [`EntityRecord`]: the entity as Evotor last sent it |
//! | `subs/{subscriptionId}/state` | [`crate::domain::billing::Subscription`] |
//! | `subs/{subscriptionId}/event/{seq:010}` | a subscription event as received |
//! | `user/{userId}/sub/{subscriptionId}` | marker: the user's subscriptions |
//! | `user/{userId}/device-order` | [`DeviceOrder`]: the user's devices in first-registration order |
//! | `user/{userId}/installation` | [`crate::domain::billing::Installation`] |
//! | `installs/{sha256(id)}` | an installation event as received |
//! | `legacy-events/{sha256(body)}` | a legacy `/user/event` as received |
//! | `cat/{store}/p/{uuid}` | [`crate::domain::catalog::ProductRecord`]: a product or group of a store |
//! | `cat/{store}/dir` | [`crate::domain::catalog::Directory`]: product counts per key range, for offset paging |
//! | `cat/{store}/bc/{sha256(barcode)[..32]}/{uuid}` | barcode index entry |
//! | `cat/{store}/kids/{parentUuid}/{uuid}` | child index: items under a group |
//! | `cat/{store}/orphan/{uuid}` | an item whose `parentUuid` names nothing in the store |
//! | `docs/{store}/doc/{id}` | [`crate::domain::documents::DocumentRecord`]: a terminal document as received |
//! | `docs/{store}/by-date/{closeDate ms:013}.{id}` | document index by close date |
//! | `docs/{store}/by-type/{type}/{closeDate ms:013}.{id}` | document index by type and close date |
//! | `receipts/{sha256(event id)[..32]}/{userId}` | [`crate::domain::documents::ReceiptRecord`]: a receipt event as received (older ones without `/{userId}`) |
//! | `rcpts/{store}/by-date/{dateTime ms:013}.{sha256(event id)[..32]}.{userId}` | receipt index by date (older ones without `.{userId}`) |
//! | `feed/{stamp}` | [`FeedEntry`]: one accepted change; the host's commit stamp orders them |
//! | `issues/{sha256(user, store, entity, problem)[..32]}` | [`IssueRecord`]: doubtful input that was accepted |
//! | `sync/users/{userId}` | [`crate::domain::sync::UserSync`]: what the cloud sync read for a user, and where it goes on |
//! | `sync/feed` | [`crate::domain::sync::FeedSync`]: the position in the application's event feed |
//! | `sync/next-user` | where the next run of the sync job starts among the users |
//! | `meta/{name}` | small service records |
//!
//! Every value is JSON with `"v"`: the storage format version (see the
//! crate docs for the migration rule). Read-modify-write goes through
//! [`transact`], which turns every read into a commit check and retries on
//! conflict, so concurrent requests never lose each other's writes.

use crate::kv::{Check, Kv, KvError, Write};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// The storage format this build writes.
pub const FORMAT: u32 = 1;

/// How often [`transact`] tries before giving up on a contended record.
const MAX_ATTEMPTS: u32 = 24;

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

/// A partner account: what `/user/verify` checks and `/user/create` makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// Storage format version.
    pub v: u32,
    /// Our id of the account (32 hex digits).
    pub id: String,
    /// Login, if the account has one.
    pub login: Option<String>,
    /// Argon2id PHC string of the password, if any.
    pub password_hash: Option<String>,
    /// Whether the partner bills this user itself.
    pub has_billing: bool,
    /// Name shown to the partner's people.
    pub display_name: Option<String>,
    /// A disabled account cannot log in and its user's tokens stop working.
    pub disabled: bool,
    /// The Evotor user linked to the account.
    pub user_id: Option<String>,
    /// Custom registration fields as Evotor sent them (never the password).
    pub fields: Map<String, Value>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Last change, Unix seconds.
    pub updated_at: u64,
}

/// One user token we issued (only its hash is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    /// SHA-256 hex of the token.
    pub hash: String,
    /// Issue time, Unix seconds.
    pub issued_at: u64,
    /// When a newer token replaced it; it works for the grace period after.
    pub superseded_at: Option<u64>,
}

/// The legacy tariff state Evotor reports with `/user/tariff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tariff {
    /// Evotor's tariff code.
    pub tariff_id: String,
    /// `true` for `ACTIVE`.
    pub active: bool,
    /// When it was reported, Unix seconds.
    pub updated_at: u64,
}

/// Everything about one Evotor user that authentication needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRecord {
    /// Storage format version.
    pub v: u32,
    /// The Evotor user id.
    pub user_id: String,
    /// The linked partner account.
    pub account_id: Option<String>,
    /// Tokens issued to the user that may still work, newest last.
    pub tokens: Vec<IssuedToken>,
    /// Legacy tariff state, if Evotor sent one.
    pub tariff: Option<Tariff>,
    /// First seen, Unix seconds.
    pub created_at: u64,
}

impl UserRecord {
    /// A record for a user seen for the first time.
    pub fn new(user_id: &str, now: u64) -> Self {
        Self { v: FORMAT, user_id: user_id.into(), account_id: None, tokens: Vec::new(), tariff: None, created_at: now }
    }
}

/// `logins/…` → the account with that login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginIndex {
    /// Storage format version.
    pub v: u32,
    /// The account.
    pub account_id: String,
}

/// `tokens/…` → the user a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenIndex {
    /// Storage format version.
    pub v: u32,
    /// The user.
    pub user_id: String,
}

/// `owners/…`: the one user an Evotor entity belongs to, and our id of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerIndex {
    /// Storage format version.
    pub v: u32,
    /// The owning Evotor user.
    pub user_id: String,
    /// Our stable id of the entity.
    pub partner_id: String,
}

/// A store, employee or device as Evotor last sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityRecord {
    /// Storage format version.
    pub v: u32,
    /// Evotor's uuid, lower case.
    pub uuid: String,
    /// Our stable id.
    pub partner_id: String,
    /// The JSON object as received, unknown fields included.
    pub data: Value,
    /// Last update, Unix seconds.
    pub updated_at: u64,
    /// When Evotor removed it (a removal event), Unix seconds: kept, listed only when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<u64>,
    /// The time of the state held (an event's `updated_at` or timestamp, a
    /// mirror call's arrival), Unix ms: older events do not overwrite it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_ms: Option<i64>,
    /// What brought the state held: `inventory` (a `PUT` of the 2017
    /// protocol), `event` (an event webhook) or `cloud` (read from the
    /// Evotor cloud); none in records of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Prefix of the cloud sync's state of each user.
pub const SYNC_USERS_PREFIX: &str = "sync/users/";

/// Key of the cloud sync's state of a user.
pub fn sync_user_key(user_id: &str) -> String {
    format!("{SYNC_USERS_PREFIX}{user_id}")
}

/// Key of the position in the application's event feed.
pub const SYNC_FEED_KEY: &str = "sync/feed";

/// Key of the user the next sync run starts after.
pub const SYNC_NEXT_USER_KEY: &str = "sync/next-user";

/// Key of the owner index of an entity.
pub fn owner_key(kind: &str, uuid: &str) -> String {
    format!("owners/{kind}/{uuid}")
}

/// Key of a user's copy of an entity.
pub fn entity_key(user_id: &str, kind: &str, uuid: &str) -> String {
    format!("user/{user_id}/{kind}/{uuid}")
}

/// SHA-256 of `data` as lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(data).iter().fold(String::with_capacity(64), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// Key of a user's record.
pub fn user_key(user_id: &str) -> String {
    format!("users/{user_id}")
}

/// Prefix of every user record, for listing.
pub const USERS_PREFIX: &str = "users/";

/// Key of an account.
pub fn account_key(account_id: &str) -> String {
    format!("accounts/{account_id}")
}

/// Prefix of every account, for listing.
pub const ACCOUNTS_PREFIX: &str = "accounts/";

/// Key of the login index entry for `login` (case-insensitive).
pub fn login_key(login: &str) -> String {
    format!("logins/{}", sha256_hex(login.to_lowercase().as_bytes()))
}

/// Key of the index entry of a token with this hash.
pub fn token_key(token_hash: &str) -> String {
    format!("tokens/{token_hash}")
}

pub fn cloud_token_key(user_id: &str) -> String {
    format!("user/{user_id}/cloud-token")
}

/// Key of a subscription's state.
pub fn subscription_key(subscription_id: &str) -> String {
    format!("subs/{subscription_id}/state")
}

/// Key of one subscription event (zero-padded so keys sort by sequence).
pub fn subscription_event_key(subscription_id: &str, sequence: u64) -> String {
    format!("subs/{subscription_id}/event/{sequence:010}")
}

/// Prefix of a subscription's events.
pub fn subscription_events_prefix(subscription_id: &str) -> String {
    format!("subs/{subscription_id}/event/")
}

/// Key of a subscription event that names another user than the
/// subscription's owner (kept, never applied).
pub fn foreign_subscription_event_key(subscription_id: &str, user_id: &str, sequence: u64) -> String {
    format!("subs/{subscription_id}/foreign/{user_id}/{sequence:010}")
}

/// Key of the marker linking a user to a subscription.
pub fn user_subscription_key(user_id: &str, subscription_id: &str) -> String {
    format!("{}{subscription_id}", user_subscriptions_prefix(user_id))
}

/// Prefix of a user's subscription markers.
pub fn user_subscriptions_prefix(user_id: &str) -> String {
    format!("user/{user_id}/sub/")
}

/// The devices of a user in the order they were first registered: the
/// first N of them are the licensed ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceOrder {
    /// Storage format version.
    pub v: u32,
    /// Device uuids, lower case.
    pub devices: Vec<String>,
}

/// Key of a user's device registration order.
pub fn device_order_key(user_id: &str) -> String {
    format!("user/{user_id}/device-order")
}

/// Key of a user's installation state.
pub fn installation_key(user_id: &str) -> String {
    format!("user/{user_id}/installation")
}

/// Key of a user's installation event by the digest of its id: whose
/// event it is is part of its identity, so one user's delivery can never
/// make another's a duplicate.
pub fn installation_event_key(user_id: &str, id_hash: &str) -> String {
    format!("user/{user_id}/installs/{id_hash}")
}

/// Key of an installation event as earlier formats kept it, by the digest
/// of its id alone; read, never written.
pub fn legacy_installation_event_key(id_hash: &str) -> String {
    format!("installs/{id_hash}")
}

/// Key of a legacy billing event by the digest of its body.
pub fn legacy_event_key(body_hash: &str) -> String {
    format!("legacy-events/{body_hash}")
}

/// Prefix of every product and group of a store.
pub fn products_prefix(store: &str) -> String {
    format!("cat/{store}/p/")
}

/// Key of a product or group.
pub fn product_key(store: &str, uuid: &str) -> String {
    format!("cat/{store}/p/{uuid}")
}

/// Key of a store's catalog directory.
pub fn catalog_directory_key(store: &str) -> String {
    format!("cat/{store}/dir")
}

/// Prefix of the barcode index entries of `barcode` in a store.
pub fn barcode_prefix(store: &str, barcode: &str) -> String {
    format!("cat/{store}/bc/{}/", &sha256_hex(barcode.as_bytes())[..32])
}

/// Key of the barcode index entry of `barcode` for product `uuid`.
pub fn barcode_key(store: &str, barcode: &str, uuid: &str) -> String {
    format!("{}{uuid}", barcode_prefix(store, barcode))
}

/// Prefix of the child index of `parent`.
pub fn children_prefix(store: &str, parent: &str) -> String {
    format!("cat/{store}/kids/{parent}/")
}

/// Key of the child index entry of `uuid` under `parent`.
pub fn child_key(store: &str, parent: &str, uuid: &str) -> String {
    format!("cat/{store}/kids/{parent}/{uuid}")
}

/// Prefix of a store's items with a missing parent.
pub fn orphans_prefix(store: &str) -> String {
    format!("cat/{store}/orphan/")
}

/// Key of an item with a missing parent.
pub fn orphan_key(store: &str, uuid: &str) -> String {
    format!("cat/{store}/orphan/{uuid}")
}

/// Prefix of a user's entities of one kind.
pub fn entities_prefix(user_id: &str, kind: &str) -> String {
    format!("user/{user_id}/{kind}/")
}

/// Key of a document of a store.
pub fn document_key(store: &str, id: &str) -> String {
    format!("docs/{store}/doc/{id}")
}

/// Key of a document a user delivered into a store another user owns:
/// kept apart, so it can never make the owner's own delivery a duplicate.
pub fn foreign_document_key(store: &str, user_id: &str, id: &str) -> String {
    format!("user/{user_id}/foreign-docs/{store}/{id}")
}

/// Prefix of a store's documents by close date.
pub fn documents_by_date_prefix(store: &str) -> String {
    format!("docs/{store}/by-date/")
}

/// Prefix of a store's documents of one type by close date.
pub fn documents_by_type_prefix(store: &str, kind: &str) -> String {
    format!("docs/{store}/by-type/{kind}/")
}

/// Key of the receipt event of `user_id` whose id has the digest `hash`.
pub fn receipt_key(hash: &str, user_id: &str) -> String {
    format!("receipts/{hash}/{user_id}")
}

/// Key of a receipt event by the digest of its id alone (how receipts were
/// kept before they were per user; still read).
pub fn receipt_key_by_hash(hash: &str) -> String {
    format!("receipts/{hash}")
}

/// The digest of a receipt event id used in keys.
pub fn receipt_id_hash(id: &str) -> String {
    sha256_hex(id.as_bytes())[..32].to_owned()
}

/// Prefix of a store's receipts by date.
pub fn receipts_by_date_prefix(store: &str) -> String {
    format!("rcpts/{store}/by-date/")
}

/// Prefix of the change feed.
pub const FEED_PREFIX: &str = "feed/";

/// Prefix of the data issues.
pub const ISSUES_PREFIX: &str = "issues/";

/// Distinct data issues one commit writes one by one; the rest are grouped.
pub const MAX_ISSUES_PER_COMMIT: usize = 32;

/// The issues past [`MAX_ISSUES_PER_COMMIT`] are grouped by user and entity.
type GroupKey = (Option<String>, &'static str);

/// Something doubtful in input that was accepted all the same: what, where,
/// and for whom. The same issue again counts up one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The Evotor user whose delivery carried it.
    pub user_id: Option<String>,
    /// The store concerned.
    pub store: Option<String>,
    /// What kind of entity: `document`, `receipt`, `store`, `subscription`, …
    pub entity: &'static str,
    /// Its id as sent.
    pub entity_id: String,
    /// What looks wrong, in words, e.g. `closeDate missing`.
    pub problem: String,
}

impl Issue {
    /// An issue of `entity` `entity_id` delivered by `user_id`.
    pub fn new(user_id: Option<&str>, entity: &'static str, entity_id: &str, problem: impl Into<String>) -> Self {
        Self {
            user_id: user_id.map(str::to_owned),
            store: None,
            entity,
            entity_id: entity_id.chars().take(128).collect(),
            problem: problem.into(),
        }
    }

    /// The same issue, about a store.
    #[must_use]
    pub fn in_store(mut self, store: &str) -> Self {
        self.store = Some(store.to_owned());
        self
    }

    fn key(&self) -> String {
        let identity = serde_json::json!([self.user_id, self.store, self.entity, self.entity_id, self.problem]);
        format!("{ISSUES_PREFIX}{}", &sha256_hex(identity.to_string().as_bytes())[..32])
    }
}

/// A data issue as stored and listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssueRecord {
    /// Storage format version.
    pub v: u32,
    /// The Evotor user whose delivery carried it.
    pub user_id: Option<String>,
    /// The store concerned.
    pub store_uuid: Option<String>,
    /// The kind of entity.
    pub entity: String,
    /// Its id.
    pub entity_id: String,
    /// What looks wrong.
    pub problem: String,
    /// First seen, Unix seconds.
    pub first_seen: u64,
    /// Last seen, Unix seconds.
    pub last_seen: u64,
    /// How many times it was seen.
    pub count: u64,
}

/// Key of a service record.
pub fn meta_key(name: &str) -> String {
    format!("meta/{name}")
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

pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Records are plain structs of strings, numbers and JSON values: serializing cannot fail.
    let mut bytes = serde_json::to_vec(record).unwrap_or_default();
    // The buffer grew by doubling: a commit holds thousands of records, give the slack back.
    bytes.shrink_to_fit();
    bytes
}

pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|_| StorageError::Corrupt(key.to_owned()))
}

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

/// One accepted change as the partner's change feed shows it; its key's
/// stamp (after [`FEED_PREFIX`]) is its cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedEntry {
    /// Storage format version.
    pub v: u32,
    /// What happened, e.g. `document.received`.
    pub kind: String,
    /// When, Unix seconds.
    pub at: u64,
    /// The Evotor user concerned, if any.
    pub user_id: Option<String>,
    /// The ids that say what changed.
    pub data: Value,
}

/// A change to announce in the feed, in the same commit as the change.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: &'static str,
    /// When, Unix seconds.
    pub at: u64,
    /// The Evotor user concerned, if any.
    pub user_id: Option<String>,
    /// The ids that say what changed.
    pub data: Value,
}

/// A read-modify-write unit: every read becomes a check of the commit, so
/// the writes apply only if nothing read has changed meanwhile.
pub struct Txn<'a> {
    kv: &'a dyn Kv,
    checks: Vec<Check>,
    writes: Vec<Write>,
    events: Vec<Event>,
    /// Data issues noted, by key, with how often and when.
    issues: std::collections::BTreeMap<String, (Issue, u64, u64)>,
    /// Lines to log once the commit holds.
    logs: Vec<String>,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn").field("checks", &self.checks.len()).field("writes", &self.writes.len()).finish()
    }
}

impl Txn<'_> {
    /// Reads a record and remembers its version as a check.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, StorageError> {
        let entry = self.kv.get(key)?;
        self.checks.push(match &entry {
            Some(entry) => Check::VersionIs(key.to_owned(), entry.version),
            None => Check::Absent(key.to_owned()),
        });
        entry.map(|entry| decode(key, &entry.value)).transpose()
    }

    /// Reads records in one store call (or a few, for many keys) and
    /// remembers each version as a check; answers in the keys' order.
    pub fn get_many<T: DeserializeOwned>(&mut self, keys: &[String]) -> Result<Vec<Option<T>>, StorageError> {
        let entries = crate::kv::read_many(self.kv, keys)?;
        let mut records = Vec::with_capacity(keys.len());
        for (key, entry) in keys.iter().zip(entries) {
            self.checks.push(match &entry {
                Some(entry) => Check::VersionIs(key.clone(), entry.version),
                None => Check::Absent(key.clone()),
            });
            records.push(entry.map(|entry| decode(key, &entry.value)).transpose()?);
        }
        Ok(records)
    }

    /// Writes a record at commit.
    pub fn put<T: Serialize>(&mut self, key: &str, record: &T) {
        self.writes.push(Write::Set(key.to_owned(), encode(record)));
    }

    /// Deletes a key at commit.
    pub fn delete(&mut self, key: &str) {
        self.writes.push(Write::Delete(key.to_owned()));
    }

    /// Announces a change in the feed; the entry commits with the change or not at all.
    pub fn emit(&mut self, kind: &'static str, at: u64, user_id: Option<&str>, data: Value) {
        self.events.push(Event { kind, at, user_id: user_id.map(str::to_owned), data });
    }

    /// Notes a data issue; it is counted in the same commit as the change
    /// that carried it, and logged when it is first seen.
    pub fn issue(&mut self, now: u64, issue: Issue) {
        let entry = self.issues.entry(issue.key()).or_insert((issue, 0, now));
        entry.1 += 1;
    }

    /// Writes the noted data issues: each read (a check) and counted up.
    /// Past [`MAX_ISSUES_PER_COMMIT`] distinct ones, the rest of each user's
    /// and entity's are counted in one issue naming the first of them: what
    /// one request writes stays bounded by its size, not by its items.
    fn write_issues(&mut self) -> Result<(), StorageError> {
        let mut issues = std::mem::take(&mut self.issues);
        if issues.len() > MAX_ISSUES_PER_COMMIT {
            let rest = issues.split_off(&issues.keys().nth(MAX_ISSUES_PER_COMMIT).cloned().unwrap_or_default());
            // Per (user, entity): the first issue, how often all were seen, how many were distinct, when.
            let mut grouped: std::collections::BTreeMap<GroupKey, (Issue, u64, u64, u64)> =
                std::collections::BTreeMap::new();
            for (_, (issue, count, now)) in rest {
                let group = grouped.entry((issue.user_id.clone(), issue.entity)).or_insert((issue, 0, 0, now));
                group.1 += count;
                group.2 += 1;
            }
            for ((user_id, entity), (first, count, distinct, now)) in grouped {
                let problem = format!(
                    "{distinct} more {entity} issues in one delivery, counted here (the first: {} {})",
                    first.entity_id, first.problem
                );
                let summary = Issue { user_id, store: first.store, entity, entity_id: "*".into(), problem };
                issues.insert(summary.key(), (summary, count, now));
            }
        }
        for (key, (issue, count, now)) in issues {
            let record = match self.get::<IssueRecord>(&key)? {
                Some(mut known) => {
                    known.last_seen = now;
                    known.count = known.count.saturating_add(count);
                    known
                }
                None => {
                    let whose = issue.user_id.as_deref().unwrap_or("-");
                    self.logs.push(format!(
                        "data issue: {} {} of user {whose}: {}",
                        issue.entity, issue.entity_id, issue.problem
                    ));
                    IssueRecord {
                        v: FORMAT,
                        user_id: issue.user_id,
                        store_uuid: issue.store,
                        entity: issue.entity.to_owned(),
                        entity_id: issue.entity_id,
                        problem: issue.problem,
                        first_seen: now,
                        last_seen: now,
                        count,
                    }
                }
            };
            self.put(&key, &record);
        }
        Ok(())
    }

    /// Appends the emitted events to the feed with stamped keys: the host
    /// orders them by commit, so feed writers never contend on a shared
    /// record, and an entry exists exactly when its change does.
    fn append_feed(&mut self) {
        for event in std::mem::take(&mut self.events) {
            let entry = FeedEntry {
                v: FORMAT,
                kind: event.kind.to_owned(),
                at: event.at,
                user_id: event.user_id,
                data: event.data,
            };
            self.append(FEED_PREFIX, &entry);
        }
    }

    /// Appends `record` under `prefix` with a stamped key: the host orders
    /// such entries by commit.
    pub fn append<T: Serialize>(&mut self, prefix: &str, record: &T) {
        self.writes.push(Write::SetStamped(prefix.to_owned(), encode(record)));
    }

    /// Keys under `prefix` after `start_after` as committed, up to `limit`.
    /// A scan is not a check: the caller guards the range by a record it
    /// reads with [`Txn::get`] and that every change of the range rewrites.
    pub fn scan_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        Ok(collect(self.kv, prefix, start_after.map(str::to_owned), limit)?.into_iter().map(|(key, _)| key).collect())
    }
}

/// Runs `body` in a [`Txn`] and commits its writes; on a conflict (someone
/// changed what it read) runs it again, up to a bound. An `Err` from `body`
/// writes nothing.
pub fn transact<R, E>(kv: &dyn Kv, mut body: impl FnMut(&mut Txn<'_>) -> Result<R, E>) -> Result<R, E>
where
    E: From<StorageError>,
{
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt);
        }
        let mut txn = Txn {
            kv,
            checks: Vec::new(),
            writes: Vec::new(),
            events: Vec::new(),
            issues: std::collections::BTreeMap::new(),
            logs: Vec::new(),
        };
        let result = body(&mut txn)?;
        txn.write_issues()?;
        txn.append_feed();
        if txn.writes.is_empty() {
            return Ok(result);
        }
        match kv.commit(txn.checks, txn.writes) {
            Ok(()) => {
                for line in txn.logs {
                    eprintln!("{line}");
                }
                return Ok(result);
            }
            Err(KvError::Conflict) => continue,
            // Applied or not: the next attempt re-reads and finds out. A
            // commit that was applied makes the rerun a re-delivery, which
            // stores nothing twice; one that was not is simply made again.
            Err(KvError::OutcomeUnknown(why)) => {
                eprintln!("kv commit outcome unknown ({why}); re-reading before trying again");
                continue;
            }
            Err(err) => return Err(StorageError::Kv(err).into()),
        }
    }
    Err(StorageError::Kv(KvError::Unavailable("too much contention on the same records".into())).into())
}

/// Waits a random time before retry `attempt`, growing to at most 32 ms, so
/// writers racing for one record spread out instead of colliding again.
fn backoff(attempt: u32) {
    let ceiling_ms = 1u64 << attempt.min(5);
    let mut random = [0u8; 2];
    let jitter = if getrandom::fill(&mut random).is_ok() { u64::from(u16::from_le_bytes(random)) } else { 0 };
    std::thread::sleep(std::time::Duration::from_micros(jitter % (ceiling_ms * 1000)));
}

/// Logs `message` unless the same `topic` was logged earlier the same UTC
/// day: each request runs in a fresh instance, so "once" is kept in the store.
pub(crate) fn log_once_a_day(ctx: &crate::Ctx<'_>, topic: &str, message: &str) {
    log_once_in(ctx, topic, ctx.clock.now_unix() / 86_400 + 1, message);
}

/// Logs `message` the first time `topic` comes up, ever: each request is a
/// fresh instance, so the memory of it is kept in the store.
pub(crate) fn log_once(ctx: &crate::Ctx<'_>, topic: &str, message: &str) {
    log_once_in(ctx, topic, 0, message);
}

/// Logs `message` unless `topic` was already logged in `period`.
fn log_once_in(ctx: &crate::Ctx<'_>, topic: &str, period: u64, message: &str) {
    let key = meta_key(&format!("logged/{topic}"));
    let logged: Result<Option<u64>, _> = read(ctx.kv, &key);
    if matches!(logged, Ok(Some(logged)) if logged == period) {
        return;
    }
    eprintln!("{message}");
    // Losing this write only means logging again; the request's answer does not depend on it.
    let _ = transact(ctx.kv, |txn| -> Result<(), StorageError> {
        let _: Option<u64> = txn.get(&key)?;
        txn.put(&key, &period);
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemKv;

    #[test]
    fn transact_applies_writes_only_when_reads_still_hold() {
        let kv = MemKv::default();
        let mut runs = 0;
        let result: Result<(), StorageError> = transact(&kv, |txn| {
            runs += 1;
            let current: Option<u32> = txn.get("counter")?;
            if runs == 1 {
                // Someone else writes between our read and our commit.
                kv.commit(Vec::new(), vec![Write::Set("counter".into(), b"10".to_vec())]).expect("side write");
            }
            txn.put("counter", &(current.unwrap_or(0) + 1));
            Ok(())
        });
        assert!(result.is_ok());
        assert_eq!(runs, 2, "the conflict made it run again");
        assert_eq!(read::<u32>(&kv, "counter").expect("read"), Some(11), "no lost update");
    }

    #[test]
    fn an_error_in_the_body_writes_nothing() {
        let kv = MemKv::default();
        let result: Result<(), crate::errors::ApiError> = transact(&kv, |txn| {
            txn.put("a", &1);
            Err(crate::errors::ApiError::not_found())
        });
        assert!(result.is_err());
        assert!(kv.keys().is_empty());
    }

    #[test]
    fn logins_are_indexed_case_insensitively_and_hashed() {
        assert_eq!(login_key("Ivan"), login_key("iVAN"));
        assert!(!login_key("ivan").contains("ivan"));
        assert_eq!(login_key(&"ж".repeat(256)).len(), "logins/".len() + 64);
    }

    #[test]
    fn pages_carry_a_cursor_until_the_end() {
        let kv = MemKv::default();
        for i in 0..5 {
            kv.commit(Vec::new(), vec![Write::Set(format!("accounts/{i}"), encode(&i))]).expect("put");
        }
        let (first, next) = page::<u32>(&kv, ACCOUNTS_PREFIX, None, 2).expect("page");
        assert_eq!((first, next.as_deref()), (vec![0, 1], Some("1")));
        let (second, next) = page::<u32>(&kv, ACCOUNTS_PREFIX, Some("1"), 2).expect("page");
        assert_eq!((second, next.as_deref()), (vec![2, 3], Some("3")));
        let (last, next) = page::<u32>(&kv, ACCOUNTS_PREFIX, Some("3"), 2).expect("page");
        assert_eq!((last, next), (vec![4], None));
    }
}
