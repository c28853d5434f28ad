//! The Evotor cloud, read back: what Evotor pushes is not all there is.
//!
//! With a user's cloud token (`POST /api/v1/user/token`) the sync reads
//! the user's data from the cloud's REST API into the same records the 2017
//! calls and the event webhooks write, so a partner sees what Evotor gave
//! up delivering:
//!
//! 1. **Backfill**, when a token arrives or changes: `GET /stores`,
//!    `/devices`, `/employees` (every page) into the mirror (source
//!    `cloud`), then each store's `/products` and `/product-groups` into
//!    its catalog (source `evotor`). What an event already brought newer
//!    is kept, another user's entity is never changed.
//! 2. **Documents**: with the publisher settings, the application's event
//!    feed (`GET /api/apps/{app}/events`) for all users, every event through
//!    the intake of the event webhooks; without them, each mirrored store's
//!    `GET /stores/{id}/documents?since=&until=`. A window runs from the
//!    last position known complete, minus `sync_overlap_secs`, to now minus
//!    `sync_settle_secs`; the position moves only once the window was read
//!    whole and stored. Documents and events are taken once by their ids,
//!    so reading a window again stores nothing twice.
//!
//! Toward the cloud: at most `sync_max_requests_per_user` requests per user
//! and run; a 429 makes that user wait for `X-RateLimit-Reset`, the others
//! go on; a 401 or 403 marks the token refused (a data issue, the feed's
//! `cloud-token.refused`) until a new token arrives; anything else (5xx,
//! time-outs, the gateway's allow-list, answers that are not listings) is
//! tried again on a later run, waiting 1, 2, 4, … minutes (at most an
//! hour). Every page's effect is stored before the position moves past it,
//! so a run stopped anywhere goes on where it stopped.

mod cloud;

use crate::Ctx;
use crate::clock::Clock;
use crate::config::{CloudSettings, Settings};
use crate::domain::inventory::{self, EntityChange, EntityOutcome, Source};
use crate::domain::{billing, documents, events, tokens};
use crate::errors::ApiError;
use crate::input::{self, Object};
use crate::storage::{self, CloudToken, EntityRecord, Issue, Txn};
use cloud::{Credential, Failure, Page};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The shortest window of documents or events worth a request, ms: a run
/// does not ask again for what the previous one just read.
pub const MIN_WINDOW_MS: i64 = 60_000;
/// The longest wait after failures, seconds.
const MAX_BACKOFF_SECS: u64 = 3600;
/// The name of the job that runs the sync.
pub const JOB: &str = "sync";

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
    fn path(&self) -> String {
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
    fn waiting(&self, now: u64) -> bool {
        self.wait_until.is_some_and(|until| until > now)
    }

    fn succeeded(&mut self, applied: &Applied) {
        self.failures = 0;
        self.wait_until = None;
        self.wait_reason = None;
        self.read += applied.read;
        self.new += applied.new;
    }

    /// Records a failed request to `path` (a refusal is the caller's to record).
    fn failed(&mut self, failure: &Failure, path: &str, now: u64) {
        match failure {
            Failure::RateLimited { reset_secs } => {
                self.wait_until = Some(now.saturating_add(*reset_secs));
                self.wait_reason = Some("rate-limited".into());
            }
            Failure::Retry { .. } | Failure::Gone { .. } => {
                self.failures = self.failures.saturating_add(1);
                let wait = (60u64 << self.failures.saturating_sub(1).min(6)).min(MAX_BACKOFF_SECS);
                self.wait_until = Some(now.saturating_add(wait));
                self.wait_reason = Some("backoff".into());
            }
            Failure::Refused { .. } => {}
        }
        self.last_error = Some(report(failure, path, now));
    }
}

/// How a run that met `failure` ends.
fn outcome_of(failure: &Failure) -> Outcome {
    match failure {
        Failure::Refused { .. } => Outcome::TokenRefused,
        Failure::RateLimited { .. } => Outcome::RateLimited,
        Failure::Gone { .. } | Failure::Retry { .. } => Outcome::Failed,
    }
}

fn report(failure: &Failure, path: &str, now: u64) -> ErrorReport {
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

/// Where the next run goes on (`sync/next-user`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunState {
    v: u32,
    /// The user the next run starts after.
    #[serde(default)]
    user_after: Option<String>,
    /// The subscription the time-based rules go on after.
    #[serde(default)]
    subscriptions_after: Option<String>,
    /// Users of earlier versions with a token and no sync state: adopted
    /// up to this user (`done` once all are).
    #[serde(default)]
    adopted_after: Option<String>,
    #[serde(default)]
    adopted: bool,
    /// The user a run is syncing now: found set by the next run, the run
    /// before ended inside that user (a trap, the instance's memory, the
    /// job's time limit), which is that user's failure, not everyone's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current: Option<String>,
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
    storage::transact(ctx, |txn| -> Result<(), ApiError> {
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

/// How much a run may do.
struct Budget<'c> {
    clock: &'c dyn Clock,
    /// No request starts at or after it, Unix seconds.
    deadline: u64,
    requests: u32,
}

impl Budget<'_> {
    /// Whether one more request may start: one is left, and a second at least before the deadline.
    fn more(&self) -> bool {
        self.requests > 0 && self.clock.now_unix() < self.deadline
    }

    /// The longest the next request may take: `configured`
    /// (`sync_request_timeout_secs`), but never past the deadline, so a
    /// stalled cloud ends the run in time to save where it is.
    fn timeout(&self, configured: u64) -> u64 {
        configured.min(self.deadline.saturating_sub(self.clock.now_unix())).max(1)
    }

    fn within(&self) -> bool {
        self.clock.now_unix() < self.deadline
    }
}

/// What one page did.
#[derive(Debug, Default)]
struct Applied {
    read: u64,
    new: u64,
    /// The stores a page of `/stores` named, as sent.
    stores: Vec<String>,
}

/// The next request of a user's sync.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Task {
    Backfill(Step),
    Documents { store: String, key: String, window: Window },
}

impl Task {
    fn path(&self) -> String {
        match self {
            Task::Backfill(step) => step.resource.path(),
            Task::Documents { store, .. } => format!("/stores/{store}/documents"),
        }
    }

    fn url(&self, cloud: &CloudSettings) -> String {
        match self {
            Task::Backfill(step) => cloud::url(cloud, &step.resource.path(), "", step.cursor.as_deref()),
            Task::Documents { window, .. } => window_url(cloud, &self.path(), window),
        }
    }
}

fn window_url(cloud: &CloudSettings, path: &str, window: &Window) -> String {
    let query = format!("since={}&until={}", window.since_ms, window.until_ms);
    cloud::url(cloud, path, &query, window.cursor.as_deref())
}

/// The window to read after `position` at `now_ms`, if one is due.
fn next_window(cloud: &CloudSettings, position: Option<&Position>, now_ms: i64) -> Option<Window> {
    if let Some(window) = position.and_then(|position| position.window.clone()) {
        return Some(window);
    }
    let day_ms = 86_400_000i64;
    let lookback = i64::try_from(cloud.lookback_days).unwrap_or(366).saturating_mul(day_ms);
    let through = position.map_or(now_ms.saturating_sub(lookback), |position| position.through_ms);
    let until = now_ms.saturating_sub(crate::time::millis(cloud.settle_secs));
    (until.saturating_sub(through) >= MIN_WINDOW_MS).then(|| Window {
        since_ms: through.saturating_sub(crate::time::millis(cloud.overlap_secs)).max(0),
        until_ms: until,
        cursor: None,
    })
}

/// Moves `position` past a page of `window` that ended at `next`.
fn advance_position(position: &mut Position, window: &Window, next: Option<String>) {
    match next {
        // The cursor did not move: the rest of the window is lost to us, not looped on.
        Some(cursor) if window.cursor.as_deref() != Some(cursor.as_str()) => {
            position.window = Some(Window { cursor: Some(cursor), ..window.clone() });
        }
        _ => {
            position.through_ms = position.through_ms.max(window.until_ms);
            position.window = None;
        }
    }
}

/// The stores of a user in the mirror (not removed): as sent, and the key form.
fn mirrored_stores(ctx: &Ctx<'_>, user_id: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut stores = Vec::new();
    for (key, entry) in storage::scan_all(ctx.kv, &storage::entities_prefix(user_id, "store"))? {
        let record: EntityRecord = storage::decode(&key, &entry.value)?;
        if record.removed_at.is_none() {
            stores.push((record.uuid.clone(), record.uuid.to_ascii_lowercase()));
        }
    }
    Ok(stores)
}

fn next_task(ctx: &Ctx<'_>, cloud: &CloudSettings, state: &UserSync) -> Result<Option<Task>, ApiError> {
    if let Some(step) = state.backfill.first() {
        return Ok(Some(Task::Backfill(step.clone())));
    }
    if cloud.publisher.is_some() {
        return Ok(None);
    }
    let now_ms = crate::time::millis(ctx.clock.now_unix());
    for (store, key) in mirrored_stores(ctx, &state.user_id)? {
        if let Some(window) = next_window(cloud, state.stores.get(&key), now_ms) {
            return Ok(Some(Task::Documents { store, key, window }));
        }
    }
    Ok(None)
}

/// The objects of a page; anything else is a problem.
fn objects(page: &Page, problems: &mut Vec<String>) -> Vec<Object> {
    let mut objects = Vec::with_capacity(page.items.len());
    for item in &page.items {
        match item {
            Value::Object(object) => objects.push(object.clone()),
            other => problems.push(format!("an item that is not an object: {}", clip(&other.to_string()))),
        }
    }
    objects
}

fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

/// A page of stores, devices or employees into the mirror.
fn mirror(
    ctx: &Ctx<'_>,
    settings: &Settings,
    user_id: &str,
    kind: inventory::Kind,
    items: &[Object],
) -> Result<u64, ApiError> {
    let limit = match kind {
        inventory::Kind::Device => billing::device_limit(ctx, user_id, settings)?,
        _ => None,
    };
    let now = ctx.clock.now_unix();
    let now_ms = crate::time::millis(now);
    storage::transact(ctx, |txn| -> Result<u64, ApiError> {
        let mut new = 0;
        for item in items {
            let id = match item.get("id").or_else(|| item.get("uuid")) {
                Some(Value::String(id)) => input::id_as_sent(id),
                Some(other) => input::id_text(other),
                None => None,
            };
            let Some(id) = id else {
                let problem = format!("a {} from the cloud without a usable id: skipped", kind.name());
                txn.issue(now, Issue::new(Some(user_id), "sync", kind.name(), problem));
                continue;
            };
            let key = storage::entity_key(user_id, kind.name(), &id.to_ascii_lowercase());
            let data = Value::Object(item.clone());
            // The same state again (a cloud answer without `updated_at` included) changes nothing.
            if txn.get::<EntityRecord>(&key)?.is_some_and(|known| known.data == data && known.removed_at.is_none()) {
                continue;
            }
            let (order, future) =
                events::ordering_time(item.get("updated_at").and_then(crate::time::timestamp), now_ms);
            if let Some(problem) = future {
                txn.issue(now, Issue::new(Some(user_id), kind.name(), &id, problem));
            }
            let outcome = inventory::apply_event(
                txn,
                user_id,
                kind,
                &id,
                item,
                order,
                EntityChange::Upsert,
                limit,
                now,
                Source::Cloud,
            )?;
            let problem = match outcome {
                EntityOutcome::Changed => {
                    new += 1;
                    continue;
                }
                EntityOutcome::Unchanged | EntityOutcome::Stale => continue,
                EntityOutcome::Foreign(owner) => format!("belongs to user {owner}: not changed by the sync"),
                EntityOutcome::OverLicence => "past the licensed number of terminals: not registered".to_owned(),
            };
            txn.issue(now, Issue::new(Some(user_id), kind.name(), &id, problem));
        }
        Ok(new)
    })
}

/// A page of a store's documents into the store; what cannot be stored is a problem.
fn store_documents(
    ctx: &Ctx<'_>,
    settings: &Settings,
    user_id: &str,
    store: &str,
    items: &[Value],
    problems: &mut Vec<String>,
) -> Result<u64, ApiError> {
    let ingest = |items: &[Value]| -> Result<(usize, usize), ApiError> {
        let body = serde_json::to_vec(items).map_err(|_| ApiError::internal("documents not serializable"))?;
        documents::ingest_documents(ctx, settings, user_id, &body, Some(store), inventory::PastLicence::Report)
    };
    if items.is_empty() {
        return Ok(0);
    }
    match ingest(items) {
        Ok((new, _)) => return Ok(new as u64),
        Err(err) if err.status >= 500 => return Err(err),
        Err(_) => {}
    }
    // One unusable document must not keep the others (and the window) back.
    let mut new = 0;
    for item in items {
        match ingest(std::slice::from_ref(item)) {
            Ok((stored, _)) => new += stored as u64,
            Err(err) if err.status >= 500 => return Err(err),
            Err(err) => {
                let subject = err.subject.map(|subject| format!(" ({subject})")).unwrap_or_default();
                problems.push(format!("a document from the cloud not stored: {}{subject}", err.reason));
            }
        }
    }
    Ok(new)
}

/// Stores what a page of `task` brought.
fn apply(ctx: &Ctx<'_>, settings: &Settings, user_id: &str, task: &Task, page: &Page) -> Result<Applied, ApiError> {
    let mut problems = Vec::new();
    let mut applied = Applied { read: page.items.len() as u64, ..Applied::default() };
    match task {
        Task::Backfill(step) => {
            let items = objects(page, &mut problems);
            applied.new = match &step.resource {
                Resource::Stores => {
                    applied.stores = items
                        .iter()
                        .filter_map(|item| item.get("id").or_else(|| item.get("uuid")))
                        .filter_map(Value::as_str)
                        .filter_map(input::id_as_sent)
                        .collect();
                    mirror(ctx, settings, user_id, inventory::Kind::Store, &items)?
                }
                Resource::Devices => mirror(ctx, settings, user_id, inventory::Kind::Device, &items)?,
                Resource::Employees => mirror(ctx, settings, user_id, inventory::Kind::Employee, &items)?,
                Resource::Products { store } => {
                    events::apply_catalog_page(ctx, user_id, store, false, &items, &mut problems)? as u64
                }
                Resource::ProductGroups { store } => {
                    events::apply_catalog_page(ctx, user_id, store, true, &items, &mut problems)? as u64
                }
            };
        }
        Task::Documents { key, .. } => {
            applied.new = store_documents(ctx, settings, user_id, key, &page.items, &mut problems)?;
        }
    }
    note_problems(ctx, Some(user_id), &task.path(), problems)?;
    Ok(applied)
}

fn note_problems(ctx: &Ctx<'_>, user_id: Option<&str>, path: &str, problems: Vec<String>) -> Result<(), ApiError> {
    if problems.is_empty() {
        return Ok(());
    }
    let now = ctx.clock.now_unix();
    storage::transact(ctx, |txn| -> Result<(), ApiError> {
        for problem in &problems {
            txn.issue(now, Issue::new(user_id, "sync", path, problem.as_str()));
        }
        Ok(())
    })
}

/// Changes the stored state of `user_id` with `change` (given the state as
/// stored now, which another run may have moved), unless its token changed
/// from `token_hash` meanwhile; the state after.
fn update_user(
    ctx: &Ctx<'_>,
    user_id: &str,
    token_hash: &str,
    change: impl Fn(&mut Txn<'_>, &mut UserSync),
) -> Result<Option<UserSync>, ApiError> {
    let key = storage::sync_user_key(user_id);
    storage::transact(ctx, |txn| -> Result<Option<UserSync>, ApiError> {
        let Some(mut state) = txn.get::<UserSync>(&key)? else { return Ok(None) };
        if state.token_hash != token_hash {
            return Ok(Some(state));
        }
        change(txn, &mut state);
        txn.put(&key, &state);
        Ok(Some(state))
    })
}

/// Moves `state` past a page of `task` that ended at `next`.
fn advance(state: &mut UserSync, task: &Task, next: Option<String>, stores: &[String], now: u64) {
    match task {
        Task::Backfill(step) => {
            if state.backfill.first() != Some(step) {
                return;
            }
            for store in stores {
                for resource in
                    [Resource::Products { store: store.clone() }, Resource::ProductGroups { store: store.clone() }]
                {
                    if !state.backfill.iter().any(|queued| queued.resource == resource) {
                        state.backfill.push(Step { resource, cursor: None });
                    }
                }
            }
            match next {
                Some(cursor) if step.cursor.as_deref() != Some(cursor.as_str()) => {
                    state.backfill[0].cursor = Some(cursor)
                }
                _ => {
                    state.backfill.remove(0);
                    if state.backfill.is_empty() {
                        state.backfill_done_at = Some(now);
                    }
                }
            }
        }
        Task::Documents { key, window, .. } => {
            let position = state
                .stores
                .entry(key.clone())
                .or_insert_with(|| Position { through_ms: window.since_ms, window: None });
            if position.window.as_ref().is_some_and(|current| current != window) {
                return;
            }
            advance_position(position, window, next);
        }
    }
}

/// Syncs one user as far as `budget` allows; the requests it made come off `budget`.
fn sync_user(
    ctx: &Ctx<'_>,
    settings: &Settings,
    cloud: &CloudSettings,
    user_id: &str,
    budget: &mut Budget<'_>,
) -> Result<(Outcome, Option<RunReport>), ApiError> {
    let Some(mut state) = user_state(ctx, user_id)? else { return Ok((Outcome::NoToken, None)) };
    let Some(token) = storage::cloud_token(ctx.kv, user_id)? else { return Ok((Outcome::NoToken, None)) };
    if state.token_hash != tokens::hash(&token.token) {
        // A token of an earlier version, stored without its sync state's update.
        storage::transact(ctx, |txn| token_received(txn, user_id, &token.token, ctx.clock.now_unix()))?;
        let Some(fresh) = user_state(ctx, user_id)? else { return Ok((Outcome::NoToken, None)) };
        state = fresh;
    }
    let now = ctx.clock.now_unix();
    if state.refused.is_some() {
        return Ok((Outcome::TokenRefused, None));
    }
    if state.progress.waiting(now) {
        return Ok((Outcome::Waiting, None));
    }
    let hash = state.token_hash.clone();
    let mut run =
        RunReport { started_at: now, finished_at: now, requests: 0, read: 0, new: 0, outcome: Outcome::Complete };
    let mut mine = Budget {
        clock: budget.clock,
        deadline: budget.deadline,
        requests: budget.requests.min(cloud.max_requests_per_user),
    };
    // After a page too large to read, this user's pages are asked for with a smaller `limit`.
    let mut limit: Option<usize> = None;
    let outcome = loop {
        if !mine.more() {
            break Outcome::Budget;
        }
        let Some(task) = next_task(ctx, cloud, &state)? else { break Outcome::Complete };
        mine.requests -= 1;
        run.requests += 1;
        let now = ctx.clock.now_unix();
        let timeout = mine.timeout(cloud.request_timeout_secs);
        let url = cloud::with_limit(task.url(cloud), limit);
        let answer = cloud::get_page(ctx.http, cloud, &url, Credential::User(&token.token), timeout);
        let changed = match answer {
            Ok(Page { oversize: Some(count), next, .. }) => match cloud::smaller_limit(limit, count) {
                Some(smaller) => {
                    limit = Some(smaller);
                    continue;
                }
                None => {
                    let problem = format!(
                        "a page of {} held {count} items even when asked for {} at most: skipped, its items not read",
                        task.path(),
                        cloud::MIN_PAGE_LIMIT
                    );
                    update_user(ctx, user_id, &hash, |txn, state| {
                        advance(state, &task, next.clone(), &[], now);
                        txn.issue(now, Issue::new(Some(user_id), "sync", &task.path(), problem.as_str()));
                    })?
                }
            },
            Ok(page) => {
                let applied = apply(ctx, settings, user_id, &task, &page)?;
                run.read += applied.read;
                run.new += applied.new;
                update_user(ctx, user_id, &hash, |_, state| {
                    advance(state, &task, page.next.clone(), &applied.stores, now);
                    state.progress.succeeded(&applied);
                })?
            }
            // A store gone from the cloud: its listing is over, the others go on.
            Err(Failure::Gone { message })
                if !matches!(
                    &task,
                    Task::Backfill(Step { resource: Resource::Stores | Resource::Devices | Resource::Employees, .. })
                ) =>
            {
                let problem = format!("{} answered {message}: skipped", task.path());
                update_user(ctx, user_id, &hash, |txn, state| {
                    advance(state, &task, None, &[], now);
                    txn.issue(now, Issue::new(Some(user_id), "sync", &task.path(), problem.as_str()));
                })?
            }
            Err(failure) => {
                let path = task.path();
                let outcome = outcome_of(&failure);
                update_user(ctx, user_id, &hash, |txn, state| {
                    state.progress.failed(&failure, &path, now);
                    if let Failure::Refused { status, message } = &failure {
                        state.refused = Some(report(&failure, &path, now));
                        let problem = format!(
                            "the Evotor cloud refused the user's token (HTTP {status}: {message}); the sync waits for a new token"
                        );
                        txn.issue(now, Issue::new(Some(user_id), "sync", "cloud-token", problem));
                        txn.emit("cloud-token.refused", now, Some(user_id), json!({ "status": status, "path": path }));
                    }
                })?;
                break outcome;
            }
        };
        match changed {
            Some(changed) if changed.token_hash == hash => state = changed,
            // Purged, or a new token meanwhile: the next run starts over with it.
            _ => break Outcome::Budget,
        }
    };
    budget.requests = budget.requests.saturating_sub(run.requests);
    run.finished_at = ctx.clock.now_unix();
    run.outcome = outcome;
    if run.requests > 0 {
        update_user(ctx, user_id, &hash, |_, state| state.progress.last_run = Some(run.clone()))?;
    }
    Ok((outcome, Some(run)))
}

/// Reads the application's event feed as far as `budget` allows.
fn sync_feed(
    ctx: &Ctx<'_>,
    settings: &Settings,
    cloud: &CloudSettings,
    (app, token): (&str, &str),
    budget: &mut Budget<'_>,
) -> Result<Outcome, ApiError> {
    let path = format!("/api/apps/{app}/events");
    let update = |change: &dyn Fn(&mut FeedSync)| -> Result<FeedSync, ApiError> {
        storage::transact(ctx, |txn| -> Result<FeedSync, ApiError> {
            let mut state = txn.get::<FeedSync>(storage::SYNC_FEED_KEY)?.unwrap_or_default();
            state.v = storage::FORMAT;
            change(&mut state);
            txn.put(storage::SYNC_FEED_KEY, &state);
            Ok(state)
        })
    };
    let mut state = feed_state(ctx)?.unwrap_or_default();
    let now = ctx.clock.now_unix();
    if state.progress.waiting(now) {
        return Ok(Outcome::Waiting);
    }
    let mut run =
        RunReport { started_at: now, finished_at: now, requests: 0, read: 0, new: 0, outcome: Outcome::Complete };
    let mut mine = Budget {
        clock: budget.clock,
        deadline: budget.deadline,
        requests: budget.requests.min(cloud.max_requests_per_user),
    };
    // After a page too large to read, the feed's pages are asked for with a smaller `limit`.
    let mut limit: Option<usize> = None;
    let outcome = loop {
        if !mine.more() {
            break Outcome::Budget;
        }
        let now = ctx.clock.now_unix();
        let Some(window) = next_window(cloud, state.position.as_ref(), crate::time::millis(now)) else {
            break Outcome::Complete;
        };
        mine.requests -= 1;
        run.requests += 1;
        let timeout = mine.timeout(cloud.request_timeout_secs);
        let url = cloud::with_limit(window_url(cloud, &path, &window), limit);
        match cloud::get_page(ctx.http, cloud, &url, Credential::Publisher(token), timeout) {
            Ok(Page { oversize: Some(count), next, .. }) => match cloud::smaller_limit(limit, count) {
                Some(smaller) => limit = Some(smaller),
                None => {
                    let problem = format!(
                        "a page of the feed held {count} items even when asked for {} at most: skipped, its events not read",
                        cloud::MIN_PAGE_LIMIT
                    );
                    note_problems(ctx, None, &path, vec![problem])?;
                    state = update(&|state| advance_feed(state, &window, next.clone()))?;
                }
            },
            Ok(page) => {
                let mut problems = Vec::new();
                let mut taken = Vec::with_capacity(page.items.len());
                for item in &page.items {
                    match events::parse(item.clone(), "") {
                        Ok(event) => taken.push(event),
                        Err(err) => problems.push(format!("an event of the feed not usable: {}", err.reason)),
                    }
                }
                let (new, _) = events::take(ctx, settings, taken, Some("events-api"))?;
                note_problems(ctx, None, &path, problems)?;
                let applied = Applied { read: page.items.len() as u64, new: new as u64, stores: Vec::new() };
                run.read += applied.read;
                run.new += applied.new;
                state = update(&|state| {
                    advance_feed(state, &window, page.next.clone());
                    state.progress.succeeded(&applied);
                })?;
            }
            Err(failure) => {
                update(&|state| state.progress.failed(&failure, &path, now))?;
                break outcome_of(&failure);
            }
        }
    };
    budget.requests = budget.requests.saturating_sub(run.requests);
    run.finished_at = ctx.clock.now_unix();
    run.outcome = outcome;
    if run.requests > 0 {
        update(&|state| state.progress.last_run = Some(run.clone()))?;
    }
    Ok(outcome)
}

/// Moves the feed's position past a page of `window` that ended at `next`
/// (unless another window is under way).
fn advance_feed(state: &mut FeedSync, window: &Window, next: Option<String>) {
    let position = state.position.get_or_insert(Position { through_ms: window.since_ms, window: None });
    if position.window.as_ref().is_none_or(|current| current == window) {
        advance_position(position, window, next);
    }
}

/// What one run of the sync job did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Users looked at.
    pub users: u64,
    /// Requests made.
    pub requests: u64,
    /// Items read.
    pub read: u64,
    /// Items new or changed.
    pub new: u64,
    /// How each user's part ended, by outcome, and the feed's.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// The time-based rules of billing.
    pub time_rules: billing::TimeRules,
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Complete => "complete",
        Outcome::Budget => "budget",
        Outcome::RateLimited => "rate-limited",
        Outcome::TokenRefused => "token-refused",
        Outcome::Failed => "failed",
        Outcome::Waiting => "waiting",
        Outcome::NoToken => "no-token",
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} users, {} requests, {} read, {} new", self.users, self.requests, self.read, self.new)?;
        for (outcome, count) in &self.outcomes {
            write!(f, ", {outcome} {count}")?;
        }
        let rules = &self.time_rules;
        write!(f, "; billing: {} checked, {} gaps skipped, {} lapsed", rules.checked, rules.gaps_skipped, rules.lapsed)
    }
}

/// Users of earlier versions with a cloud token and no sync state get one,
/// as far as `budget` allows; whether every user was looked at.
fn adopt(ctx: &Ctx<'_>, run: &mut RunState, budget: &Budget<'_>) -> Result<(), ApiError> {
    while !run.adopted && budget.within() {
        let start = run.adopted_after.as_deref().map(storage::user_key);
        let page = storage::collect(ctx.kv, storage::USERS_PREFIX, start, 100)?;
        let Some((last, _)) = page.last() else {
            run.adopted = true;
            break;
        };
        run.adopted_after = last.strip_prefix(storage::USERS_PREFIX).map(str::to_owned);
        for (key, _) in &page {
            let Some(user_id) = key.strip_prefix(storage::USERS_PREFIX) else { continue };
            if let Some(token) = storage::cloud_token(ctx.kv, user_id)?
                && user_state(ctx, user_id)?.is_none()
            {
                let now = ctx.clock.now_unix();
                storage::transact(ctx, |txn| token_received(txn, user_id, &token.token, now))?;
            }
        }
    }
    Ok(())
}

/// One run of the sync job, ending by `deadline` (Unix seconds): the
/// time-based rules of billing, then the feed (with the publisher
/// settings), then each user in turn, starting after the one the last run
/// stopped at.
pub fn run(ctx: &Ctx<'_>, deadline: u64) -> Result<Summary, ApiError> {
    let settings = crate::domain::accounts::settings(ctx)?;
    let cloud = CloudSettings::read(ctx.config).map_err(|why| ApiError::internal(&why))?;
    let mut run: RunState = storage::read(ctx.kv, storage::SYNC_NEXT_USER_KEY)?.unwrap_or_default();
    let mut budget = Budget { clock: ctx.clock, deadline, requests: cloud.max_requests_per_run };
    let mut summary = Summary::default();
    let (rules, after) =
        billing::apply_time_rules(ctx, &settings, run.subscriptions_after.as_deref(), &|| budget.within())?;
    summary.time_rules = rules;
    run.subscriptions_after = after;
    adopt(ctx, &mut run, &budget)?;
    if let Some((app, token)) = &cloud.publisher {
        let before = budget.requests;
        let outcome = sync_feed(ctx, &settings, &cloud, (app, token), &mut budget)?;
        summary.requests += u64::from(before - budget.requests);
        *summary
            .outcomes
            .entry(if outcome == Outcome::Complete { "feed-complete" } else { "feed-other" })
            .or_default() += 1;
    }
    if let Some(culprit) = run.current.take() {
        // The last run ended inside this user: its failure, backed off; the others go on after it.
        user_failed(
            ctx,
            &culprit,
            "the last run ended while syncing this user (a trap, the instance's memory or the job's time limit)",
        )?;
        run.user_after = Some(culprit);
    }
    // Every user once, from where the last run stopped.
    let mut users: Vec<String> = Vec::new();
    for (key, _) in storage::scan_all(ctx.kv, storage::SYNC_USERS_PREFIX)? {
        if let Some(user) = key.strip_prefix(storage::SYNC_USERS_PREFIX) {
            users.push(user.to_owned());
        }
    }
    let split = run.user_after.as_ref().map_or(0, |after| users.partition_point(|user| user <= after));
    users.rotate_left(split);
    for user_id in &users {
        if !budget.more() {
            break;
        }
        // Where the run is, saved before each user: a run that dies inside one goes on after it next time.
        run.current = Some(user_id.clone());
        save_run(ctx, &mut run)?;
        let (outcome, report) = match sync_user(ctx, &settings, &cloud, user_id, &mut budget) {
            Ok(done) => done,
            // One user's data failing is that user's: recorded, backed off, the run goes on.
            Err(err) if err.status != 503 => {
                user_failed(ctx, user_id, &format!("{} ({})", err.reason, err.status))?;
                (Outcome::Failed, None)
            }
            Err(err) => return Err(err),
        };
        summary.users += 1;
        *summary.outcomes.entry(outcome_name(outcome)).or_default() += 1;
        if let Some(report) = report {
            summary.requests += u64::from(report.requests);
            summary.read += report.read;
            summary.new += report.new;
        }
        // Its turn is over, whatever it still has to read: a long backfill goes on at its next
        // turn, after every other user has had one.
        run.user_after = Some(user_id.clone());
    }
    run.current = None;
    save_run(ctx, &mut run)?;
    Ok(summary)
}

fn save_run(ctx: &Ctx<'_>, run: &mut RunState) -> Result<(), ApiError> {
    run.v = storage::FORMAT;
    storage::transact(ctx, |txn| -> Result<(), ApiError> {
        txn.put(storage::SYNC_NEXT_USER_KEY, &*run);
        Ok(())
    })
}

/// Records that syncing `user_id` failed with `why` outside a cloud
/// request (its data, the store, the instance): backed off like a failed
/// request, and a data issue.
fn user_failed(ctx: &Ctx<'_>, user_id: &str, why: &str) -> Result<(), ApiError> {
    let now = ctx.clock.now_unix();
    let failure = Failure::Retry { status: None, message: why.to_owned() };
    let Some(state) = user_state(ctx, user_id)? else { return Ok(()) };
    update_user(ctx, user_id, &state.token_hash, |txn, state| {
        state.progress.failed(&failure, "sync", now);
        let problem = format!("syncing the user failed: {why}; it is tried again after a backoff");
        txn.issue(now, Issue::new(Some(user_id), "sync", "run", problem));
    })?;
    eprintln!("sync: user {user_id} failed: {why}");
    Ok(())
}

/// Syncs one user now (`POST /partner/v1/users/{id}/sync`), within
/// `sync_now_budget_secs`; how it ended.
pub fn run_user(ctx: &Ctx<'_>, user_id: &str) -> Result<(Outcome, Option<RunReport>), ApiError> {
    let settings = crate::domain::accounts::settings(ctx)?;
    let cloud = CloudSettings::read(ctx.config).map_err(|why| ApiError::internal(&why))?;
    let deadline = ctx.clock.now_unix().saturating_add(cloud.now_budget_secs);
    let mut budget = Budget { clock: ctx.clock, deadline, requests: cloud.max_requests_per_user };
    sync_user(ctx, &settings, &cloud, user_id, &mut budget)
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

#[cfg(test)]
mod tests;
