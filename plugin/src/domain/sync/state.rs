//! What the sync keeps between runs: a user's sync state ([`UserSync`]:
//! the backfill still to read, the stores' document positions, waits and
//! counts), the feed's ([`FeedSync`]), and how a run ended; the commits
//! that change them, and the partner's view of them.

use super::cloud::Failure;
use crate::Ctx;
use crate::config::CloudSettings;
use crate::domain::{tokens, transact};
use crate::errors::ApiError;
use crate::storage::{self, CloudToken, Txn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// What the cloud lists, in the order the backfill reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Resource {
    /// `GET /stores`.
    Stores,
    /// `GET /devices`.
    Devices,
    /// `GET /employees`.
    Employees,
    /// `GET /stores/{store}/products`.
    Products {
        /// The store, as the cloud named it.
        store: String,
    },
    /// `GET /stores/{store}/product-groups`.
    ProductGroups {
        /// The store, as the cloud named it.
        store: String,
    },
}

impl Resource {
    pub(super) fn path(&self) -> String {
        match self {
            Resource::Stores => "/stores".into(),
            Resource::Devices => "/devices".into(),
            Resource::Employees => "/employees".into(),
            Resource::Products { store } => format!("/stores/{store}/products"),
            Resource::ProductGroups { store } => format!("/stores/{store}/product-groups"),
        }
    }
}

/// One listing of the backfill still to read, and where in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// What it lists.
    pub resource: Resource,
    /// The page to read next; none: the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// A span of time being read: `since` inclusive, `until` exclusive, Unix ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// Its start.
    pub since_ms: i64,
    /// Its end.
    pub until_ms: i64,
    /// The page to read next; none: the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Where a store's documents, or the feed, have been read to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    /// Everything before it was read whole and stored, Unix ms.
    pub through_ms: i64,
    /// The window being read, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

/// How a run of the sync ended, for a user or the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Nothing left to read for now.
    Complete,
    /// The run's requests or time ran out: the next run goes on.
    Budget,
    /// A 429: waiting for the rate limit's reset.
    RateLimited,
    /// The token was refused: waiting for a new one.
    TokenRefused,
    /// A request failed: tried again after a wait.
    Failed,
    /// Still waiting after an earlier 429 or failure: nothing asked.
    Waiting,
    /// No cloud token: nothing to read with.
    NoToken,
}

/// One run, as the partner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// When it started, Unix seconds.
    pub started_at: u64,
    /// When it ended, Unix seconds.
    pub finished_at: u64,
    /// Requests made.
    pub requests: u32,
    /// Items read.
    pub read: u64,
    /// Items that were new or changed something.
    pub new: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// A request that went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReport {
    /// When, Unix seconds.
    pub at: u64,
    /// The cloud's status, when it answered.
    pub status: Option<u16>,
    /// What went wrong.
    pub message: String,
    /// The path asked for (without its query).
    pub path: String,
}

/// What a reader of the cloud (a user's sync, the feed) keeps between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Progress {
    /// Nothing is asked before this time, Unix seconds.
    pub wait_until: Option<u64>,
    /// Why: `rate-limited` or `backoff`.
    pub wait_reason: Option<String>,
    /// Failed requests in a row.
    pub failures: u32,
    /// The last run that asked for something.
    pub last_run: Option<RunReport>,
    /// The last request that went wrong.
    pub last_error: Option<ErrorReport>,
    /// Items read in all.
    pub read: u64,
    /// Items that were new or changed something, in all.
    pub new: u64,
}

impl Progress {
    pub(super) fn waiting(&self, now: u64) -> bool {
        self.wait_until.is_some_and(|until| until > now)
    }

    pub(super) fn succeeded(&mut self, applied: &Applied) {
        self.failures = 0;
        self.wait_until = None;
        self.wait_reason = None;
        self.read += applied.read;
        self.new += applied.new;
    }

    /// Records a failed request to `path` (a refusal is the caller's to record).
    pub(super) fn failed(&mut self, failure: &Failure, path: &str, now: u64) {
        match failure {
            Failure::RateLimited { reset_secs } => {
                self.wait_until = Some(now.saturating_add(*reset_secs));
                self.wait_reason = Some("rate-limited".into());
            }
            Failure::Retry { .. } | Failure::Gone { .. } => {
                self.failures = self.failures.saturating_add(1);
                self.wait_until = Some(now.saturating_add(crate::domain::evotor_api::backoff_secs(self.failures)));
                self.wait_reason = Some("backoff".into());
            }
            Failure::Refused { .. } => {}
        }
        self.last_error = Some(report(failure, path, now));
    }
}

/// How a run that met `failure` ends.
pub(super) fn outcome_of(failure: &Failure) -> Outcome {
    match failure {
        Failure::Refused { .. } => Outcome::TokenRefused,
        Failure::RateLimited { .. } => Outcome::RateLimited,
        Failure::Gone { .. } | Failure::Retry { .. } => Outcome::Failed,
    }
}

pub(super) fn report(failure: &Failure, path: &str, now: u64) -> ErrorReport {
    ErrorReport { at: now, status: failure.status(), message: failure.message(), path: path.to_owned() }
}

/// What the sync knows of one user (`sync/users/{userId}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserSync {
    /// Storage format version.
    pub v: u32,
    /// The user.
    pub user_id: String,
    /// SHA-256 of the cloud token this state is for.
    pub token_hash: String,
    /// When that token arrived, Unix seconds.
    pub token_received_at: u64,
    /// Why the cloud refused that token: nothing is asked with it again.
    #[serde(default)]
    pub refused: Option<ErrorReport>,
    /// The listings of the backfill still to read, in order.
    #[serde(default)]
    pub backfill: Vec<Step>,
    /// When the backfill of the current token was read whole, Unix seconds.
    #[serde(default)]
    pub backfill_done_at: Option<u64>,
    /// Documents read per store (lower-case id), without the publisher feed.
    #[serde(default)]
    pub stores: BTreeMap<String, Position>,
    /// Runs, waits and counts.
    #[serde(flatten)]
    pub progress: Progress,
}

impl UserSync {
    fn new(user_id: &str) -> Self {
        Self {
            v: storage::FORMAT,
            user_id: user_id.to_owned(),
            token_hash: String::new(),
            token_received_at: 0,
            refused: None,
            backfill: Vec::new(),
            backfill_done_at: None,
            stores: BTreeMap::new(),
            progress: Progress::default(),
        }
    }

    /// A new token: everything is read again with it.
    fn start(&mut self, token: &str, now: u64) {
        self.token_hash = tokens::hash(token);
        self.token_received_at = now;
        self.refused = None;
        self.backfill = [Resource::Stores, Resource::Devices, Resource::Employees]
            .into_iter()
            .map(|resource| Step { resource, cursor: None })
            .collect();
        self.backfill_done_at = None;
        self.progress.wait_until = None;
        self.progress.wait_reason = None;
        self.progress.failures = 0;
    }
}

/// The position in the application's event feed (`sync/feed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedSync {
    /// Storage format version.
    pub v: u32,
    /// Where the feed has been read to.
    #[serde(default)]
    pub position: Option<Position>,
    /// Runs, waits and counts.
    #[serde(flatten)]
    pub progress: Progress,
}

/// What one page did.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// Items read.
    pub(super) read: u64,
    /// Items that were new or changed something.
    pub(super) new: u64,
    /// The stores a page of `/stores` named, as sent.
    pub(super) stores: Vec<String>,
}

/// Where the next run goes on (`sync/next-user`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RunState {
    pub(super) v: u32,
    /// The user the next run starts after.
    #[serde(default)]
    pub(super) user_after: Option<String>,
    /// The subscription the time-based rules go on after.
    #[serde(default)]
    pub(super) subscriptions_after: Option<String>,
    /// Users of earlier versions with a token and no sync state: adopted
    /// up to this user (`done` once all are).
    #[serde(default)]
    pub(super) adopted_after: Option<String>,
    #[serde(default)]
    pub(super) adopted: bool,
    /// The user a run is syncing now: found set by the next run, the run
    /// before ended inside that user (a trap, the instance's memory, the
    /// job's time limit), which is that user's failure, not everyone's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) current: Option<String>,
}

/// Within the commit that stores a cloud token: a changed token (or one
/// whose user the sync does not know yet) starts the user's backfill.
pub(crate) fn token_received(txn: &mut Txn<'_>, user_id: &str, token: &str, now: u64) -> Result<(), ApiError> {
    let key = storage::sync_user_key(user_id);
    let known = txn.get::<UserSync>(&key)?;
    if known.as_ref().is_some_and(|known| known.token_hash == tokens::hash(token)) {
        return Ok(());
    }
    let mut state = known.unwrap_or_else(|| UserSync::new(user_id));
    state.start(token, now);
    txn.put(&key, &state);
    Ok(())
}

/// Records the latest Evotor cloud token of a user (latest wins; the same
/// token again changes nothing) and, with a new one, starts its backfill.
pub(crate) fn put_cloud_token(ctx: &Ctx<'_>, user_id: &str, token: &str) -> Result<(), ApiError> {
    let now = ctx.clock.now_unix();
    transact(ctx, |txn| -> Result<(), ApiError> {
        let key = storage::cloud_token_key(user_id);
        if txn.get::<CloudToken>(&key)?.is_none_or(|known| known.token != token) {
            txn.put(&key, &CloudToken { v: storage::FORMAT, token: token.to_owned(), received_at: now });
            txn.emit("cloud-token.received", now, Some(user_id), Value::Null);
        }
        token_received(txn, user_id, token, now)
    })
}

/// The sync state of `user_id`, if it has one.
pub fn user_state(ctx: &Ctx<'_>, user_id: &str) -> Result<Option<UserSync>, ApiError> {
    Ok(storage::read(ctx.kv, &storage::sync_user_key(user_id))?)
}

/// The position in the application's feed, if it was read.
pub fn feed_state(ctx: &Ctx<'_>) -> Result<Option<FeedSync>, ApiError> {
    Ok(storage::read(ctx.kv, storage::SYNC_FEED_KEY)?)
}

/// Changes the stored state of `user_id` with `change` (given the state as
/// stored now, which another run may have moved), unless its token changed
/// from `token_hash` meanwhile; the state after.
pub(super) fn update_user(
    ctx: &Ctx<'_>,
    user_id: &str,
    token_hash: &str,
    change: impl Fn(&mut Txn<'_>, &mut UserSync),
) -> Result<Option<UserSync>, ApiError> {
    let key = storage::sync_user_key(user_id);
    transact(ctx, |txn| -> Result<Option<UserSync>, ApiError> {
        let Some(mut state) = txn.get::<UserSync>(&key)? else { return Ok(None) };
        if state.token_hash != token_hash {
            return Ok(Some(state));
        }
        change(txn, &mut state);
        txn.put(&key, &state);
        Ok(Some(state))
    })
}

/// The partner's view of a user's sync.
pub fn user_view(ctx: &Ctx<'_>, user_id: &str, state: &UserSync) -> Result<Value, ApiError> {
    let cloud = CloudSettings::read(ctx.config).map_err(|why| ApiError::internal(&why))?;
    let token = storage::cloud_token(ctx.kv, user_id)?;
    let token_state = match (&token, &state.refused) {
        (None, _) => "missing",
        (Some(_), Some(_)) => "refused",
        (Some(_), None) => "usable",
    };
    let pending: Vec<Value> = state
        .backfill
        .iter()
        .map(|step| json!({ "path": step.resource.path(), "started": step.cursor.is_some() }))
        .collect();
    let stores: Vec<Value> = state
        .stores
        .iter()
        .map(|(store, position)| {
            json!({ "storeUuid": store, "throughMs": position.through_ms, "window": position.window })
        })
        .collect();
    let feed = match &cloud.publisher {
        Some(_) => Some(feed_state(ctx)?.unwrap_or_default()),
        None => None,
    };
    Ok(json!({
        "userId": user_id,
        "token": {
            "state": token_state,
            "receivedAt": token.as_ref().map(|token| token.received_at),
            "refused": state.refused,
        },
        "backfill": { "complete": state.backfill.is_empty(), "completedAt": state.backfill_done_at, "pending": pending },
        "documents": {
            "source": if cloud.publisher.is_some() { "feed" } else { "stores" },
            "stores": stores,
            "feed": feed.map(|feed| json!({
                "throughMs": feed.position.as_ref().map(|position| position.through_ms),
                "window": feed.position.and_then(|position| position.window),
                "lastRun": feed.progress.last_run,
                "lastError": feed.progress.last_error,
                "waitUntil": feed.progress.wait_until,
                "read": feed.progress.read,
                "new": feed.progress.new,
            })),
        },
        "lastRun": state.progress.last_run,
        "lastError": state.progress.last_error,
        "waitUntil": state.progress.wait_until,
        "waitReason": state.progress.wait_reason,
        "failures": state.progress.failures,
        "read": state.progress.read,
        "new": state.progress.new,
    }))
}
