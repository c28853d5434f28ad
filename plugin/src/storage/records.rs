//! The records of accounts, users, tokens, owners, entities, the feed and
//! the data issues: what is stored under the keys of [`super::keys`], as
//! JSON with the storage format version in `"v"`.

use super::codec::FORMAT;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// `tokens/…` → the user a token belongs to, and what authorizing a
/// request with it needs ([`Grant`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenIndex {
    /// Storage format version.
    pub v: u32,
    /// The user.
    pub user_id: String,
    /// A copy of the records that decide whether the token authorizes a
    /// request, rebuilt in every commit that changes one of them (records
    /// of earlier versions have none: the request reads the records and
    /// the grant is built then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
}

/// What authorizing a user-token request needs, copied from the records
/// that hold it: the decision is made when the request arrives, by the
/// same code as from the records, since it depends on the time and the
/// settings. See [`crate::domain::authorization`] for when it is written and
/// trusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// [`GRANT_FORMAT`](crate::domain::authorization::grants::GRANT_FORMAT) of the build that wrote it: any
    /// other is not trusted.
    pub format: u32,
    /// When it was built, Unix seconds: trusted for
    /// [`GRANT_MAX_AGE_SECS`](crate::domain::authorization::grants::GRANT_MAX_AGE_SECS).
    pub built_at: u64,
    /// Some input could not be copied (too many subscriptions, an
    /// unreadable record): the records decide.
    #[serde(default)]
    pub partial: bool,
    /// The token as the user's record lists it.
    pub token: IssuedToken,
    /// The linked account's state; `None` when the user has no account.
    pub account: Option<AccountGrant>,
    /// The user's legacy tariff.
    pub tariff: Option<Tariff>,
    /// The user's installation state, as stored.
    pub installation: Option<Value>,
    /// The user's subscription states, as stored.
    pub subscriptions: Vec<Value>,
}

/// The state of a user's linked account, as a [`Grant`] holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountGrant {
    /// The account exists and is not disabled.
    pub usable: bool,
    /// The partner bills the user itself.
    pub has_billing: bool,
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

/// A data issue as stored and listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssueRecord {
    /// Storage format version.
    pub v: u32,
    /// The Evotor user whose delivery carried it (absent when none did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The store concerned (absent when none is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
