//! The partner's catalog changes, written into the Evotor cloud: the part
//! of a sync run after the users ([`crate::domain::catalog::publication`]
//! says what is pending and why).
//!
//! For each store with work, with its owner's cloud token:
//! 1. every bulk task under way is asked about (`GET /bulks/{id}`); one
//!    that ended (`COMPLETED`, `FAILED`, `DECLINED`) records each item's
//!    version as published, or the cloud's reason as a data issue (that
//!    version is not sent again; the next change is);
//! 2. deletions go by `DELETE /stores/{id}/products?id=…` (and
//!    `…/product-groups`), at most 100 ids a request;
//! 3. creations and changes go in bulk, `PUT /stores/{id}/products` (and
//!    `…/product-groups`) with `application/vnd.evotor.v2+bulk+json`, at
//!    most 1000 items and 9 MB a request, with the partner's ids and
//!    quantities; each answer's task is kept and asked about on later runs;
//! 4. a quantity changed alone goes by `PATCH /stores/{id}/products/{id}`
//!    `{"quantity": …}`, as the quantities guide says, one request a
//!    product; when more than [`QUANTITY_PATCHES`] wait in a store, they go
//!    in bulk with their products instead (1 request a 1000, not 1000).
//!
//! An item under way is not sent again until its task ends. A 5xx, no
//! answer or a 404 of the store waits 1, 2, 4, … minutes (at most an hour);
//! a 429, or an answer whose `X-RateLimit-Remaining` is 0, waits
//! `X-RateLimit-Reset`; a 401 or 403 stops the store's publication until
//! its owner's token changes. Every answer is stored before the next
//! request, so a run stopped anywhere goes on where it stopped.

use super::cloud::{self, Credential, Failure};
use super::run::Budget;
use crate::Ctx;
use crate::config::CloudSettings;
use crate::domain::catalog::publication::{
    self as publication, FailedItem, KEPT_FAILURES, KEPT_TASKS, Pending, Published, Sending, StoreState, TaskItems,
    TaskReport,
};
use crate::domain::catalog::{ProductRecord, store_owner};
use crate::domain::{tokens, transact};
use crate::errors::ApiError;
use crate::storage::{self, Issue};
use serde_json::{Value, json};

/// Most items of one bulk request (the cloud's limit).
pub const BULK_ITEMS: usize = 1000;
/// Most bytes of one bulk request's body (the cloud takes 10 MB).
pub const BULK_BYTES: usize = 9 << 20;
/// Most ids of one deletion (the cloud's limit).
pub const DELETE_IDS: usize = 100;
/// Quantities changed alone that one store's turn sends by `PATCH`; more go in bulk.
pub const QUANTITY_PATCHES: usize = 20;
/// Pending entries one store's turn reads at most.
const SCAN_PER_TURN: usize = 20_000;
/// A task without an end after this long is given up, its items sent again.
const ABANDON_AFTER_SECS: u64 = 86_400;

/// How a store's turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything that could be sent was.
    Complete,
    /// The run's allowance ended first.
    Budget,
    /// A request failed: tried again after a wait.
    Failed,
    /// The cloud's rate limit: sent again once its window resets.
    RateLimited,
    /// Still waiting after an earlier failure or rate limit.
    Waiting,
    /// Nothing can be sent: no owner, no token, or a refused token.
    Blocked,
}

impl Outcome {
    /// The name in the run's summary.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Complete => "publish-complete",
            Outcome::Budget => "publish-budget",
            Outcome::Failed => "publish-failed",
            Outcome::RateLimited => "publish-rate-limited",
            Outcome::Waiting => "publish-waiting",
            Outcome::Blocked => "publish-blocked",
        }
    }
}

/// What publishing did in one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Done {
    /// Requests made.
    pub requests: u64,
    /// Items sent.
    pub sent: u64,
    /// Items the cloud took.
    pub published: u64,
    /// Items the cloud did not take.
    pub failed: u64,
}

/// Publishes what is pending in every store with work, as far as `budget`
/// allows; each store's outcome goes to `outcome`.
pub(super) fn publish(
    ctx: &Ctx<'_>,
    cloud: &CloudSettings,
    budget: &mut Budget<'_>,
    outcome: &mut dyn FnMut(Outcome),
) -> Result<Done, ApiError> {
    let mut done = Done::default();
    // Every store with work once, starting after the one whose turn came last.
    let mut stores: Vec<String> = storage::scan_all(ctx.kv, publication::DUE_PREFIX)?
        .into_iter()
        .filter_map(|(key, _)| key.strip_prefix(publication::DUE_PREFIX).map(str::to_owned))
        .collect();
    let after: Option<String> = storage::read(ctx.kv, NEXT_STORE_KEY)?;
    let split = after.as_ref().map_or(0, |after| stores.partition_point(|store| store <= after));
    stores.rotate_left(split);
    for store in &stores {
        if !budget.more() {
            break;
        }
        match publish_store(ctx, cloud, store, budget, &mut done) {
            Ok(ended) => outcome(ended),
            // The store being down is the run's; anything else is this store's, and the others go on.
            Err(err) if err.status == 503 => return Err(err),
            Err(err) => {
                evogate_plugin::log::warn(&format!(
                    "publishing: store {store} failed: {} ({})",
                    err.reason, err.status
                ));
                outcome(Outcome::Failed);
            }
        }
        transact(ctx, |txn| -> Result<(), ApiError> {
            txn.put(NEXT_STORE_KEY, store);
            Ok(())
        })?;
    }
    Ok(done)
}

/// Key of the store the next run's publishing starts after.
const NEXT_STORE_KEY: &str = "meta/publish-after";

/// One store's turn.
struct Turn<'a, 'c> {
    ctx: &'a Ctx<'c>,
    cloud: &'a CloudSettings,
    store: &'a str,
    owner: String,
    token: String,
    state: StoreState,
    /// Requests this turn may still make.
    left: u32,
}

/// A creation or change to send in bulk.
struct Upsert {
    uuid: String,
    version: u64,
    /// The v2 object.
    item: Value,
    /// Its [`publication::content_digest`].
    digest: String,
    /// Its quantity.
    quantity: Option<Value>,
}

/// What a request or task took of an item.
enum Sent {
    /// Its content and quantity.
    Content { digest: String, quantity: Option<Value> },
    /// Its quantity alone.
    Quantity(Value),
    /// Its deletion.
    Deletion,
}

/// What the pending entries of a store ask for, read once per turn.
#[derive(Default)]
struct Work {
    /// `(uuid, version)` of deletions, products and groups apart.
    deletes: [Vec<(String, u64)>; 2],
    /// Creations and changes, products and groups apart.
    upserts: [Vec<Upsert>; 2],
    /// `(uuid, version, quantity)` of quantities changed alone.
    quantities: Vec<(String, u64, Value)>,
    /// `(uuid, version)` of entries with nothing left to send.
    settled: Vec<(String, u64)>,
}

fn publish_store(
    ctx: &Ctx<'_>,
    cloud: &CloudSettings,
    store: &str,
    budget: &mut Budget<'_>,
    done: &mut Done,
) -> Result<Outcome, ApiError> {
    let now = ctx.clock.now_unix();
    let mut state: StoreState = storage::read(ctx.kv, &publication::state_key(store))?.unwrap_or_default();
    if state.wait_until.is_some_and(|until| until > now) {
        return Ok(Outcome::Waiting);
    }
    let owner = store_owner(ctx, store)?;
    let token = match &owner {
        Some(owner) => storage::cloud_token(ctx.kv, owner)?.map(|token| token.token),
        None => None,
    };
    let blocked = match (&owner, &token) {
        (None, _) => Some("no-owner"),
        (Some(_), None) => Some("no-token"),
        (Some(_), Some(token)) if state.refused_token.as_deref() == Some(tokens::hash(token).as_str()) => {
            Some("token-refused")
        }
        _ => None,
    };
    if blocked == Some("no-owner") && idle(ctx, store)? {
        // Nothing waits in a store nobody owns (erased, say): its mark of work goes, and nothing is written of it.
        drop_due_when_idle(ctx, store)?;
        return Ok(Outcome::Blocked);
    }
    if let Some(blocked) = blocked {
        if state.blocked.as_deref() != Some(blocked) {
            state.blocked = Some(blocked.to_owned());
            save(ctx, store, owner.as_deref(), &state)?;
        }
        return Ok(Outcome::Blocked);
    }
    let (Some(owner), Some(token)) = (owner, token) else { return Ok(Outcome::Blocked) };
    state.blocked = None;
    state.refused_token = None;
    let left = budget.requests.min(cloud.max_requests_per_user);
    let mut turn = Turn { ctx, cloud, store, owner, token, state, left };
    let before = turn.left;
    let outcome = turn.run(budget, done);
    let spent = before - turn.left;
    budget.requests = budget.requests.saturating_sub(spent);
    done.requests += u64::from(spent);
    let outcome = outcome?;
    if spent > 0 || turn.state != storage::read(ctx.kv, &publication::state_key(store))?.unwrap_or_default() {
        turn.state.last_run = Some(json!({ "at": now, "requests": spent, "outcome": outcome.name() }));
        save(ctx, store, Some(&turn.owner), &turn.state)?;
    }
    if outcome == Outcome::Complete && turn.state.running.is_empty() {
        drop_due_when_idle(ctx, store)?;
    }
    Ok(outcome)
}

/// Whether nothing of `store` is pending.
fn idle(ctx: &Ctx<'_>, store: &str) -> Result<bool, ApiError> {
    Ok(storage::collect(ctx.kv, &publication::pending_prefix(store), None, 1)?.is_empty())
}

/// Drops the store's mark of work when nothing is pending; a partner change
/// committed meanwhile rewrites the mark, so the commit conflicts and the
/// next attempt sees it.
fn drop_due_when_idle(ctx: &Ctx<'_>, store: &str) -> Result<(), ApiError> {
    transact(ctx, |txn| -> Result<(), ApiError> {
        let due = publication::due_key(store);
        if txn.get::<Value>(&due)?.is_none() {
            return Ok(());
        }
        if txn.scan_keys(&publication::pending_prefix(store), None, 1)?.is_empty() {
            txn.delete(&due);
        }
        Ok(())
    })
}

fn save(ctx: &Ctx<'_>, store: &str, owner: Option<&str>, state: &StoreState) -> Result<(), ApiError> {
    transact(ctx, |txn| -> Result<(), ApiError> {
        if let Some(owner) = owner {
            crate::domain::purge::refuse_while_erasing(txn, owner)?;
        }
        let mut state = state.clone();
        state.v = storage::FORMAT;
        txn.put(&publication::state_key(store), &state);
        Ok(())
    })
}

/// Whether `id` can name a task in a key and a URL.
fn usable_task_id(id: &str) -> bool {
    (1..=100).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The per-item failures an ended task reports: `(id, reason)`. A detail
/// is each item's own answer: a product for one that went through (whose
/// `code` is its article code), an error — `product_id` (or
/// `product_group_id`) with `message` or `violations` — for one that did not.
fn item_failures(details: Option<&Value>) -> Vec<(String, String)> {
    let Some(Value::Array(details)) = details else { return Vec::new() };
    let mut failures = Vec::new();
    for detail in details {
        let id = ["product_id", "product_group_id"]
            .iter()
            .find_map(|field| detail.get(*field).and_then(Value::as_str))
            .map(str::to_ascii_lowercase);
        let failed = detail.get("message").is_some_and(Value::is_string) || detail.get("violations").is_some();
        let (Some(id), true) = (id, failed) else { continue };
        failures.push((id, reason_of(detail)));
    }
    failures
}

/// A task's status as the cloud wrote it, kept short and plain.
fn status_of(reply: &Value) -> Option<String> {
    let status = reply.get("status")?.as_str()?;
    let plain = status.len() <= 32 && status.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    plain.then(|| status.to_ascii_uppercase())
}

/// A detail's reason in words: `code: message (subject: reason; …)`.
fn reason_of(detail: &Value) -> String {
    let text = |field: &str| detail.get(field).and_then(Value::as_str).unwrap_or_default();
    let mut reason = match (text("code"), text("message")) {
        ("", "") => "refused".to_owned(),
        (code, "") => code.to_owned(),
        ("", message) => message.to_owned(),
        (code, message) => format!("{code}: {message}"),
    };
    if let Some(Value::Array(violations)) = detail.get("violations") {
        let listed: Vec<String> = violations
            .iter()
            .take(10)
            .map(|violation| {
                let field = |name: &str| violation.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
                format!("{}: {}", field("subject"), field("reason"))
            })
            .collect();
        if !listed.is_empty() {
            reason.push_str(&format!(" ({})", listed.join("; ")));
        }
    }
    cloud::clip(&reason)
}

impl Turn<'_, '_> {
    fn run(&mut self, budget: &Budget<'_>, done: &mut Done) -> Result<Outcome, ApiError> {
        // 1. The tasks under way.
        for task in self.state.running.clone() {
            if !self.more(budget) {
                return Ok(Outcome::Budget);
            }
            if let Err(failure) = self.poll(&task, done)? {
                return self.failed(&failure, &format!("/bulks/{}", task.id));
            }
            if self.rate_limited() {
                return Ok(Outcome::RateLimited);
            }
        }
        let work = self.work()?;
        self.settle(&work.settled)?;
        // 2. Deletions, items before their groups; 3. creations and changes,
        // groups before their items; 4. quantities.
        for (group, deletes) in work.deletes.iter().enumerate() {
            for chunk in deletes.chunks(DELETE_IDS) {
                if !self.more(budget) {
                    return Ok(Outcome::Budget);
                }
                let marked: Vec<(String, u64, Sent)> =
                    chunk.iter().map(|(uuid, version)| (uuid.clone(), *version, Sent::Deletion)).collect();
                let marked = self.prepare(marked)?;
                if marked.is_empty() {
                    continue;
                }
                if let Err((failure, path)) = self.delete(group == 1, &marked, done)? {
                    self.unprepare(&marked)?;
                    return self.failed(&failure, &path);
                }
                if self.rate_limited() {
                    return Ok(Outcome::RateLimited);
                }
            }
        }
        for (group, upserts) in work.upserts.iter().enumerate().rev() {
            let mut rest = upserts.as_slice();
            while !rest.is_empty() {
                if !self.more(budget) {
                    return Ok(Outcome::Budget);
                }
                let chunk = bulk_of(rest);
                rest = &rest[chunk.len()..];
                let marked: Vec<(String, u64, Sent)> = chunk
                    .iter()
                    .map(|upsert| {
                        let sent = Sent::Content { digest: upsert.digest.clone(), quantity: upsert.quantity.clone() };
                        (upsert.uuid.clone(), upsert.version, sent)
                    })
                    .collect();
                let marked = self.prepare(marked)?;
                if marked.is_empty() {
                    continue;
                }
                let kept: std::collections::HashSet<&str> = marked.iter().map(|(uuid, ..)| uuid.as_str()).collect();
                let items: Vec<&Value> = chunk
                    .iter()
                    .filter(|upsert| kept.contains(upsert.uuid.as_str()))
                    .map(|upsert| &upsert.item)
                    .collect();
                let body = serde_json::to_vec(&items).unwrap_or_default();
                if let Err((failure, path)) = self.bulk(group == 1, &marked, body, done)? {
                    self.unprepare(&marked)?;
                    return self.failed(&failure, &path);
                }
                if self.rate_limited() {
                    return Ok(Outcome::RateLimited);
                }
            }
        }
        for (uuid, version, quantity) in &work.quantities {
            if !self.more(budget) {
                return Ok(Outcome::Budget);
            }
            let marked = self.prepare(vec![(uuid.clone(), *version, Sent::Quantity(quantity.clone()))])?;
            if marked.is_empty() {
                continue;
            }
            if let Err((failure, path)) = self.quantity(uuid, *version, quantity, done)? {
                self.unprepare(&marked)?;
                return self.failed(&failure, &path);
            }
            if self.rate_limited() {
                return Ok(Outcome::RateLimited);
            }
        }
        self.state.failures = 0;
        Ok(Outcome::Complete)
    }

    fn more(&self, budget: &Budget<'_>) -> bool {
        self.left > 0 && budget.more()
    }

    /// Sends one request as the store's owner.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<crate::outgoing::Response, Failure> {
        self.left -= 1;
        let url = format!("{}{path}", self.cloud.api_url);
        let timeout = self.cloud.request_timeout_secs;
        let answer =
            cloud::call(self.ctx.http, self.cloud, (method, &url), Credential::User(&self.token), body, timeout)?;
        // The cloud's own count of what is left: none left, wait for the window to reset.
        let remaining = answer.header("x-ratelimit-remaining").and_then(|text| text.trim().parse::<u64>().ok());
        if remaining == Some(0) {
            let now = self.ctx.clock.now_unix();
            self.state.wait_until = Some(now + cloud::reset_secs(&answer));
            self.state.wait_reason = Some("rate-limited".into());
        }
        Ok(answer)
    }

    fn rate_limited(&self) -> bool {
        self.state.wait_until.is_some_and(|until| until > self.ctx.clock.now_unix())
    }

    /// Records a failed request: a wait, or a refused token.
    fn failed(&mut self, failure: &Failure, path: &str) -> Result<Outcome, ApiError> {
        let now = self.ctx.clock.now_unix();
        let state = &mut self.state;
        state.last_error =
            Some(json!({ "at": now, "status": failure.status(), "message": failure.message(), "path": path }));
        match failure {
            Failure::RateLimited { reset_secs } => {
                state.wait_until = Some(now + reset_secs);
                state.wait_reason = Some("rate-limited".into());
                return Ok(Outcome::RateLimited);
            }
            Failure::Retry { .. } | Failure::Gone { .. } => {
                state.failures = state.failures.saturating_add(1);
                state.wait_until = Some(now + crate::domain::evotor_api::backoff_secs(state.failures));
                state.wait_reason = Some("backoff".into());
            }
            Failure::Refused { status, message } => {
                state.refused_token = Some(tokens::hash(&self.token));
                state.blocked = Some("token-refused".into());
                let problem = format!(
                    "the Evotor cloud refused the owner's token while publishing the catalog (HTTP {status}: \
                     {message}); publishing waits for a new token"
                );
                let (store, owner, state) = (self.store, self.owner.clone(), self.state.clone());
                transact(self.ctx, |txn| -> Result<(), ApiError> {
                    txn.issue(now, Issue::new(Some(&owner), "publication", store, problem.as_str()).in_store(store));
                    let data = json!({ "storeUuid": store, "reason": "token-refused", "status": status, "path": path });
                    txn.emit("catalog.publication_failed", now, Some(&owner), data);
                    txn.put(&publication::state_key(store), &state);
                    Ok(())
                })?;
                return Ok(Outcome::Blocked);
            }
        }
        Ok(Outcome::Failed)
    }

    /// Asks the cloud about a task under way and records its end.
    fn poll(&mut self, task: &TaskReport, done: &mut Done) -> Result<Result<(), Failure>, ApiError> {
        let answer = match self.send("GET", &format!("/bulks/{}", task.id), None) {
            Ok(answer) => answer,
            Err(failure) => return Ok(Err(failure)),
        };
        let now = self.ctx.clock.now_unix();
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let status = status_of(&body).unwrap_or_default();
        match (answer.status, status.as_str()) {
            (200, "COMPLETED" | "FAILED" | "DECLINED") => {
                self.finish(task, &status, body.get("details"), done)?;
            }
            (404, _) => self.abandon(task, "the cloud does not know the task (404)")?,
            _ if now.saturating_sub(task.sent_at) > ABANDON_AFTER_SECS => {
                self.abandon(task, "no end within a day")?;
            }
            (200, _) => {
                if let Some(running) = self.state.running.iter_mut().find(|running| running.id == task.id) {
                    running.checked_at = now;
                    if !status.is_empty() {
                        running.status = status;
                    }
                }
            }
            (other, _) => {
                let message = cloud::message(&answer);
                return Ok(Err(Failure::Retry { status: Some(other), message }));
            }
        }
        Ok(Ok(()))
    }

    /// Reads what the store's pending entries ask for. An entry marked as
    /// on its way but of no task followed (a run that ended between marking
    /// it and recording the cloud's answer) is sent again: `PUT` and
    /// `DELETE` by the partner's ids make a repeat harmless.
    fn work(&self) -> Result<Work, ApiError> {
        let mut work = Work::default();
        let running: std::collections::HashSet<&str> = self.state.running.iter().map(|task| task.id.as_str()).collect();
        let prefix = publication::pending_prefix(self.store);
        let entries = storage::collect(self.ctx.kv, &prefix, None, SCAN_PER_TURN)?;
        let mut upserts = Vec::new();
        for (key, entry) in &entries {
            let pending: Pending = storage::decode(key, &entry.value)?;
            let Some(uuid) = key.strip_prefix(&prefix) else { continue };
            let followed = pending.sending.as_ref().and_then(|sending| sending.task.as_deref());
            if followed.is_some_and(|task| running.contains(task)) {
                continue;
            }
            if pending.deleted {
                work.deletes[usize::from(pending.group)].push((uuid.to_owned(), pending.version));
            } else {
                upserts.push((uuid.to_owned(), pending.version));
            }
        }
        let keys: Vec<String> = upserts.iter().map(|(uuid, _)| storage::product_key(self.store, uuid)).collect();
        let records = crate::kv::read_many(self.ctx.kv, &keys)?;
        for ((uuid, version), (key, entry)) in upserts.into_iter().zip(keys.iter().zip(records)) {
            let Some(entry) = entry else {
                work.settled.push((uuid, version));
                continue;
            };
            let record: ProductRecord = storage::decode(key, &entry.value)?;
            let digest = publication::content_digest(&record.product);
            let published = record.published.as_ref();
            let group = publication::is_group(&record.product);
            let quantity = publication::quantity_of(&record.product).filter(|_| !group);
            let upsert = Upsert {
                uuid,
                version,
                item: publication::v2_item(&record.product),
                digest: digest.clone(),
                quantity: quantity.clone(),
            };
            if published.is_none_or(|published| published.digest != digest) {
                work.upserts[usize::from(group)].push(upsert);
                continue;
            }
            let same = published.and_then(|published| published.quantity.as_ref()).and_then(Value::as_f64)
                == quantity.as_ref().and_then(Value::as_f64);
            match quantity {
                Some(quantity) if !same => {
                    work.quantities.push((upsert.uuid.clone(), version, quantity));
                    work.upserts[0].push(upsert);
                }
                _ => work.settled.push((upsert.uuid, version)),
            }
        }
        // A few quantities changed alone go by `PATCH`, many in bulk with their products.
        if work.quantities.len() <= QUANTITY_PATCHES {
            let alone: std::collections::HashSet<&str> =
                work.quantities.iter().map(|(uuid, ..)| uuid.as_str()).collect();
            work.upserts[0].retain(|upsert| !alone.contains(upsert.uuid.as_str()));
        } else {
            work.quantities.clear();
        }
        Ok(work)
    }

    /// Drops the pending entries with nothing left to send, unless changed meanwhile.
    fn settle(&self, settled: &[(String, u64)]) -> Result<(), ApiError> {
        for chunk in settled.chunks(1000) {
            transact(self.ctx, |txn| -> Result<(), ApiError> {
                for (uuid, version) in chunk {
                    let key = publication::pending_key(self.store, uuid);
                    if txn.get::<Pending>(&key)?.is_some_and(|pending| pending.version == *version) {
                        txn.delete(&key);
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Marks `items` as on their way, in one commit, before their request
    /// is sent; answers those still pending at their version (an Evotor
    /// change may have withdrawn one, the partner changed another since).
    fn prepare(&self, items: Vec<(String, u64, Sent)>) -> Result<Vec<(String, u64, Sent)>, ApiError> {
        let (store, owner) = (self.store, self.owner.as_str());
        let kept = transact(self.ctx, |txn| -> Result<Vec<bool>, ApiError> {
            // Nothing is sent, nor written under the store, while its owner's data is being erased.
            crate::domain::purge::refuse_while_erasing(txn, owner)?;
            let mut kept = Vec::with_capacity(items.len());
            for (uuid, version, sent) in &items {
                let key = publication::pending_key(store, uuid);
                let Some(mut pending) = txn.get::<Pending>(&key)?.filter(|pending| pending.version == *version) else {
                    kept.push(false);
                    continue;
                };
                let (digest, quantity) = match sent {
                    Sent::Content { digest, quantity } => (Some(digest.clone()), quantity.clone()),
                    Sent::Quantity(quantity) => (None, Some(quantity.clone())),
                    Sent::Deletion => (None, None),
                };
                pending.sending = Some(Sending { task: None, version: *version, digest, quantity });
                txn.put(&key, &pending);
                kept.push(true);
            }
            Ok(kept)
        })?;
        Ok(items.into_iter().zip(kept).filter_map(|(item, kept)| kept.then_some(item)).collect())
    }

    /// Takes back the marks of [`Turn::prepare`] when the request brought no answer to record.
    fn unprepare(&self, items: &[(String, u64, Sent)]) -> Result<(), ApiError> {
        let store = self.store;
        transact(self.ctx, |txn| -> Result<(), ApiError> {
            for (uuid, version, _) in items {
                let key = publication::pending_key(store, uuid);
                if let Some(mut pending) = txn.get::<Pending>(&key)?
                    && pending
                        .sending
                        .as_ref()
                        .is_some_and(|sending| sending.version == *version && sending.task.is_none())
                {
                    pending.sending = None;
                    txn.put(&key, &pending);
                }
            }
            Ok(())
        })
    }

    /// One deletion request.
    fn delete(
        &mut self,
        group: bool,
        items: &[(String, u64, Sent)],
        done: &mut Done,
    ) -> Result<Result<(), (Failure, String)>, ApiError> {
        let resource = if group { "product-groups" } else { "products" };
        let ids: Vec<&str> = items.iter().map(|(uuid, ..)| uuid.as_str()).collect();
        let path = format!("/stores/{}/{resource}", self.store);
        let answer = match self.send("DELETE", &format!("{path}?id={}", ids.join(",")), None) {
            Ok(answer) => answer,
            Err(failure) => return Ok(Err((failure, path))),
        };
        let now = self.ctx.clock.now_unix();
        let failed: Vec<(String, String)> = match answer.status {
            // Gone already is what a deletion wants.
            200..=299 | 404 => Vec::new(),
            400 | 413 | 422 => {
                let reason = cloud::message(&answer);
                items.iter().map(|(uuid, ..)| (uuid.clone(), reason.clone())).collect()
            }
            other => {
                let message = cloud::message(&answer);
                return Ok(Err((Failure::Retry { status: Some(other), message }, path)));
            }
        };
        done.sent += items.len() as u64;
        let report =
            answered(format!("delete-{now}-{}", ids[0]), format!("delete-{resource}"), items.len(), &failed, now);
        self.record_end(report, items, &failed, done)?;
        Ok(Ok(()))
    }

    /// One bulk request of creations and changes.
    fn bulk(
        &mut self,
        group: bool,
        items: &[(String, u64, Sent)],
        body: Vec<u8>,
        done: &mut Done,
    ) -> Result<Result<(), (Failure, String)>, ApiError> {
        let resource = if group { "product-groups" } else { "products" };
        let path = format!("/stores/{}/{resource}", self.store);
        let answer = match self.send("PUT", &path, Some((cloud::BULK, body))) {
            Ok(answer) => answer,
            Err(failure) => return Ok(Err((failure, path))),
        };
        let now = self.ctx.clock.now_unix();
        let reply: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let id = reply.get("id").and_then(Value::as_str).filter(|id| usable_task_id(id)).map(str::to_owned);
        let status = status_of(&reply);
        let report = |id: String, status: &str| TaskReport {
            id,
            kind: resource.to_owned(),
            status: status.to_owned(),
            items: items.len() as u64,
            failed: 0,
            sent_at: now,
            checked_at: now,
            finished_at: None,
        };
        let ended = |status: &Option<String>| matches!(status.as_deref(), Some("COMPLETED" | "FAILED" | "DECLINED"));
        match answer.status {
            200..=299 => {
                let followed = id.as_ref().is_some_and(|id| self.state.running.iter().any(|task| &task.id == id));
                match id {
                    Some(id) if !followed => {
                        done.sent += items.len() as u64;
                        let task = report(id, status.as_deref().unwrap_or("ACCEPTED"));
                        self.start(&task, items)?;
                        if ended(&status) {
                            let status = status.unwrap_or_default();
                            self.finish(&task, &status, reply.get("details"), done)?;
                        }
                        Ok(Ok(()))
                    }
                    // Done at once, and said so: recorded as the cloud says.
                    None if ended(&status) => {
                        done.sent += items.len() as u64;
                        let status = status.unwrap_or_default();
                        let mut task = report(format!("bulk-{now}-{}", items[0].0), &status);
                        task.finished_at = Some(now);
                        let failed = task_failures(&status, reply.get("details"), items);
                        self.record_end(task, items, &failed, done)?;
                        Ok(Ok(()))
                    }
                    // No task to follow, or one already followed: whether it took them cannot be known.
                    _ => {
                        let message = format!(
                            "the cloud took the bulk without a task to follow ({})",
                            cloud::clip(&String::from_utf8_lossy(&answer.body),)
                        );
                        Ok(Err((Failure::Retry { status: Some(answer.status), message }, path)))
                    }
                }
            }
            404 => {
                let message = format!("{} (is the store in the Evotor cloud?)", cloud::message(&answer));
                Ok(Err((Failure::Gone { message }, path)))
            }
            // Refused as a whole: each item's version fails, with the cloud's reason.
            400 | 413 | 422 => {
                done.sent += items.len() as u64;
                let reason = cloud::message(&answer);
                let failed: Vec<(String, String)> =
                    items.iter().map(|(uuid, ..)| (uuid.clone(), reason.clone())).collect();
                let mut task = report(id.unwrap_or_else(|| format!("bulk-{now}-{}", items[0].0)), "DECLINED");
                task.finished_at = Some(now);
                self.record_end(task, items, &failed, done)?;
                Ok(Ok(()))
            }
            other => {
                let message = cloud::message(&answer);
                Ok(Err((Failure::Retry { status: Some(other), message }, path)))
            }
        }
    }

    /// One quantity.
    fn quantity(
        &mut self,
        uuid: &str,
        version: u64,
        quantity: &Value,
        done: &mut Done,
    ) -> Result<Result<(), (Failure, String)>, ApiError> {
        let path = format!("/stores/{}/products/{uuid}", self.store);
        let body = serde_json::to_vec(&json!({ "quantity": quantity })).unwrap_or_default();
        let answer = match self.send("PATCH", &path, Some((cloud::SINGLE, body))) {
            Ok(answer) => answer,
            Err(failure) => return Ok(Err((failure, path))),
        };
        let now = self.ctx.clock.now_unix();
        let failed = match answer.status {
            200..=299 => Vec::new(),
            400 | 404 | 413 | 422 => vec![(uuid.to_owned(), cloud::message(&answer))],
            other => {
                let message = cloud::message(&answer);
                return Ok(Err((Failure::Retry { status: Some(other), message }, path)));
            }
        };
        done.sent += 1;
        let report = answered(format!("quantity-{now}-{uuid}"), "quantities".into(), 1, &failed, now);
        self.record_end(report, &[(uuid.to_owned(), version, Sent::Quantity(quantity.clone()))], &failed, done)?;
        Ok(Ok(()))
    }

    /// Records a task the cloud accepted: its items are under way.
    fn start(&mut self, task: &TaskReport, versions: &[(String, u64, Sent)]) -> Result<(), ApiError> {
        self.state.running.push(task.clone());
        let (store, owner, state) = (self.store, self.owner.as_str(), self.state.clone());
        transact(self.ctx, |txn| -> Result<(), ApiError> {
            crate::domain::purge::refuse_while_erasing(txn, owner)?;
            let items = versions
                .iter()
                .filter_map(|(uuid, version, sent)| match sent {
                    Sent::Content { digest, quantity } => {
                        Some((uuid.clone(), *version, digest.clone(), quantity.clone()))
                    }
                    Sent::Quantity(_) | Sent::Deletion => None,
                })
                .collect();
            txn.put(&publication::task_key(store, &task.id), &TaskItems { v: storage::FORMAT, items });
            for (uuid, version, _) in versions {
                let key = publication::pending_key(store, uuid);
                if let Some(mut pending) = txn.get::<Pending>(&key)?
                    && let Some(sending) = pending.sending.as_mut().filter(|sending| sending.version == *version)
                {
                    sending.task = Some(task.id.clone());
                    txn.put(&key, &pending);
                }
            }
            txn.put(&publication::state_key(store), &state);
            Ok(())
        })
    }

    /// Records the end of a task under way, from the cloud's `details`.
    fn finish(
        &mut self,
        task: &TaskReport,
        status: &str,
        details: Option<&Value>,
        done: &mut Done,
    ) -> Result<(), ApiError> {
        let items: TaskItems = storage::read(self.ctx.kv, &publication::task_key(self.store, &task.id))?
            .unwrap_or(TaskItems { v: storage::FORMAT, items: Vec::new() });
        let versions: Vec<(String, u64, Sent)> = items
            .items
            .into_iter()
            .map(|(uuid, version, digest, quantity)| (uuid, version, Sent::Content { digest, quantity }))
            .collect();
        let failed = task_failures(status, details, &versions);
        let now = self.ctx.clock.now_unix();
        let mut report = task.clone();
        report.status = status.to_owned();
        report.checked_at = now;
        report.finished_at = Some(now);
        self.record_end(report, &versions, &failed, done)
    }

    /// Gives up on a task without an end: its items are sent again.
    fn abandon(&mut self, task: &TaskReport, why: &str) -> Result<(), ApiError> {
        let now = self.ctx.clock.now_unix();
        self.state.running.retain(|running| running.id != task.id);
        let mut report = task.clone();
        report.status = "ABANDONED".into();
        report.finished_at = Some(now);
        push_done(&mut self.state, report);
        let (store, owner, state) = (self.store, self.owner.clone(), self.state.clone());
        let items: TaskItems = storage::read(self.ctx.kv, &publication::task_key(store, &task.id))?
            .unwrap_or(TaskItems { v: storage::FORMAT, items: Vec::new() });
        for chunk in items.items.chunks(1000) {
            transact(self.ctx, |txn| -> Result<(), ApiError> {
                for (uuid, ..) in chunk {
                    let key = publication::pending_key(store, uuid);
                    if let Some(mut pending) = txn.get::<Pending>(&key)?
                        && pending.sending.as_ref().is_some_and(|sending| sending.task.as_deref() == Some(&task.id))
                    {
                        pending.sending = None;
                        txn.put(&key, &pending);
                    }
                }
                Ok(())
            })?;
        }
        transact(self.ctx, |txn| -> Result<(), ApiError> {
            txn.delete(&publication::task_key(store, &task.id));
            txn.put(&publication::state_key(store), &state);
            let problem = format!("bulk task {} given up: {why}; its items are sent again", task.id);
            txn.issue(now, Issue::new(Some(&owner), "publication", store, problem).in_store(store));
            Ok(())
        })
    }

    /// Records how a request or task ended, in one commit per 1000 items:
    /// each item's version published (with what was sent of it) or failed,
    /// the pending entries, the report, the data issues and the feed.
    fn record_end(
        &mut self,
        report: TaskReport,
        versions: &[(String, u64, Sent)],
        failed: &[(String, String)],
        done: &mut Done,
    ) -> Result<(), ApiError> {
        let now = self.ctx.clock.now_unix();
        let failures: std::collections::HashMap<&str, &str> =
            failed.iter().map(|(uuid, reason)| (uuid.as_str(), reason.as_str())).collect();
        let (store, owner) = (self.store, self.owner.clone());
        let mut published = 0u64;
        let mut failed_items = Vec::new();
        let chunks: Vec<_> = versions.chunks(1000).collect();
        for (index, chunk) in chunks.iter().enumerate() {
            let last = index + 1 == chunks.len();
            let (mut ok, mut bad) = (0u64, Vec::new());
            transact(self.ctx, |txn| -> Result<(), ApiError> {
                crate::domain::purge::refuse_while_erasing(txn, &owner)?;
                (ok, bad) = (0, Vec::new());
                for (uuid, version, sent) in *chunk {
                    let key = publication::pending_key(store, uuid);
                    let mut pending = txn.get::<Pending>(&key)?;
                    let record_key = storage::product_key(store, uuid);
                    if let Some(reason) = failures.get(uuid.as_str()) {
                        bad.push(FailedItem {
                            uuid: uuid.clone(),
                            version: *version,
                            task: report.id.clone(),
                            reason: (*reason).to_owned(),
                            at: now,
                        });
                        let problem = format!("not published to the Evotor cloud: {reason}");
                        txn.issue(now, Issue::new(Some(&owner), "product", uuid, problem).in_store(store));
                    } else {
                        ok += 1;
                        let record = match sent {
                            Sent::Deletion => None,
                            Sent::Content { .. } | Sent::Quantity(_) => txn.get::<ProductRecord>(&record_key)?,
                        };
                        if let Some(mut record) = record {
                            record.published = match (sent, record.published.take()) {
                                (Sent::Content { digest, quantity }, _) => Some(Published {
                                    version: *version,
                                    digest: digest.clone(),
                                    quantity: quantity.clone(),
                                }),
                                (Sent::Quantity(quantity), Some(published)) => {
                                    Some(Published { quantity: Some(quantity.clone()), ..published })
                                }
                                (_, published) => published,
                            };
                            txn.put(&record_key, &record);
                        }
                    }
                    if let Some(pending) = pending.as_mut() {
                        let ours = pending.sending.as_ref().is_none_or(|sending| sending.version == *version);
                        if pending.version == *version {
                            txn.delete(&key);
                        } else if ours {
                            pending.sending = None;
                            txn.put(&key, pending);
                        }
                    }
                }
                if last {
                    txn.delete(&publication::task_key(store, &report.id));
                }
                Ok(())
            })?;
            published += ok;
            failed_items.extend(bad);
        }
        done.published += published;
        done.failed += failed_items.len() as u64;
        let mut report = report;
        report.failed = failed_items.len() as u64;
        self.state.running.retain(|running| running.id != report.id);
        self.state.published += published;
        let uuids: Vec<&str> = failed_items.iter().take(100).map(|item| item.uuid.as_str()).collect();
        let published_data = json!({
            "storeUuid": store, "task": report.id, "kind": report.kind, "status": report.status,
            "published": published, "failed": failed_items.len(),
        });
        let failed_data = (!failed_items.is_empty()).then(|| {
            json!({
                "storeUuid": store, "task": report.id, "kind": report.kind, "status": report.status,
                "failed": failed_items.len(), "uuids": uuids,
            })
        });
        self.state.failed.extend(failed_items);
        let excess = self.state.failed.len().saturating_sub(KEPT_FAILURES);
        self.state.failed.drain(..excess);
        push_done(&mut self.state, report);
        let state = self.state.clone();
        transact(self.ctx, |txn| -> Result<(), ApiError> {
            crate::domain::purge::refuse_while_erasing(txn, &owner)?;
            if published > 0 {
                txn.emit("catalog.published", now, Some(&owner), published_data.clone());
            }
            if let Some(data) = &failed_data {
                txn.emit("catalog.publication_failed", now, Some(&owner), data.clone());
            }
            txn.put(&publication::state_key(store), &state);
            Ok(())
        })
    }
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;

/// The report of a request the cloud answered at once (a deletion, a
/// quantity): `COMPLETED`, or `DECLINED` when it refused the items.
fn answered(id: String, kind: String, items: usize, failed: &[(String, String)], now: u64) -> TaskReport {
    TaskReport {
        id,
        kind,
        status: if failed.is_empty() { "COMPLETED" } else { "DECLINED" }.to_owned(),
        items: items as u64,
        failed: failed.len() as u64,
        sent_at: now,
        checked_at: now,
        finished_at: Some(now),
    }
}

fn push_done(state: &mut StoreState, report: TaskReport) {
    state.done.push(report);
    let excess = state.done.len().saturating_sub(KEPT_TASKS);
    state.done.drain(..excess);
}

/// The longest run of `items` one bulk request takes (≤ [`BULK_ITEMS`] and
/// ≤ [`BULK_BYTES`], at least one), and its body.
fn bulk_of(items: &[Upsert]) -> &[Upsert] {
    let (mut bytes, mut count) = (2, 0);
    for Upsert { item, .. } in items.iter().take(BULK_ITEMS) {
        let size = serde_json::to_vec(item).map_or(0, |encoded| encoded.len()) + 1;
        if count > 0 && bytes + size > BULK_BYTES {
            break;
        }
        bytes += size;
        count += 1;
    }
    &items[..count]
}

/// The items of an ended task (`items`) the cloud did not take, with its
/// reasons: none of a `COMPLETED` task; of another, those its `details`
/// name, or, when it names none of them, every item with the task's reason.
fn task_failures(status: &str, details: Option<&Value>, items: &[(String, u64, Sent)]) -> Vec<(String, String)> {
    if status == "COMPLETED" {
        return Vec::new();
    }
    let ours: std::collections::HashSet<&str> = items.iter().map(|(uuid, ..)| uuid.as_str()).collect();
    let named: Vec<(String, String)> =
        item_failures(details).into_iter().filter(|(uuid, _)| ours.contains(uuid.as_str())).collect();
    if !named.is_empty() {
        return named;
    }
    let why = details
        .and_then(Value::as_array)
        .and_then(|details| details.iter().find(|detail| detail.get("message").is_some()))
        .map(reason_of)
        .unwrap_or_else(|| format!("the task ended {status}"));
    items.iter().map(|(uuid, ..)| (uuid.clone(), why.clone())).collect()
}
