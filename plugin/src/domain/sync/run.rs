//! The run loop: one run of the sync job ([`run`]) or of one user's sync
//! ([`run_user`]) within a budget of requests and time, the feed, each
//! user in turn, and where the next run goes on.

use super::apply::{apply, note_problems};
use super::cloud::{self, Credential, Failure, Page};
use super::plan::{Task, advance, advance_feed, next_task, next_window, window_url};
use super::state::{
    Applied, FeedSync, Outcome, Resource, RunReport, RunState, Step, feed_state, outcome_of, report, token_received,
    update_user, user_state,
};
use crate::Ctx;
use crate::clock::Clock;
use crate::config::{CloudSettings, Settings};
use crate::domain::publisher::{self, Unusable};
use crate::domain::{billing, events, tokens, transact};
use crate::errors::ApiError;
use crate::storage::{self, Issue};
use serde_json::json;
use std::collections::BTreeMap;

/// The name of the job that runs the sync.
pub const JOB: &str = "sync";

/// How much a run may do.
pub(super) struct Budget<'c> {
    clock: &'c dyn Clock,
    /// No request starts at or after it, Unix seconds.
    deadline: u64,
    /// Requests left.
    pub(super) requests: u32,
}

impl<'c> Budget<'c> {
    /// `requests` at most, none starting at or after `deadline` (Unix seconds).
    #[cfg(test)]
    pub(super) fn new(clock: &'c dyn Clock, deadline: u64, requests: u32) -> Self {
        Self { clock, deadline, requests }
    }

    /// A part of the run (a user's, the feed's) starting at `now`: its
    /// report, and its share of this budget (`sync_max_requests_per_user` at most).
    fn part(&self, now: u64, cloud: &CloudSettings) -> (RunReport, Budget<'c>) {
        let run =
            RunReport { started_at: now, finished_at: now, requests: 0, read: 0, new: 0, outcome: Outcome::Complete };
        let mine = Budget {
            clock: self.clock,
            deadline: self.deadline,
            requests: self.requests.min(cloud.max_requests_per_user),
        };
        (run, mine)
    }

    /// Whether one more request may start: one is left, and a second at least before the deadline.
    pub(super) fn more(&self) -> bool {
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
        transact(ctx, |txn| token_received(txn, user_id, &token.token, ctx.clock.now_unix()))?;
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
    let (mut run, mut mine) = budget.part(now, cloud);
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
                let warned = page.warning.as_deref().map(|warning| warned(ctx, &task.path(), warning));
                update_user(ctx, user_id, &hash, |txn, state| {
                    advance(state, &task, page.next.clone(), &applied.stores, now);
                    state.progress.succeeded(&applied);
                    if let Some(problem) = &warned {
                        txn.issue(now, Issue::new(None, "cloud-endpoint", &task.path(), problem.as_str()));
                    }
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

/// Reads the application's event feed as far as `budget` allows, with
/// the publisher token ([`publisher::token`]): nothing while it is refused.
fn sync_feed(
    ctx: &Ctx<'_>,
    settings: &Settings,
    cloud: &CloudSettings,
    app: &str,
    budget: &mut Budget<'_>,
) -> Result<Outcome, ApiError> {
    let path = format!("/api/apps/{app}/events");
    let update = |change: &dyn Fn(&mut FeedSync)| -> Result<FeedSync, ApiError> {
        transact(ctx, |txn| -> Result<FeedSync, ApiError> {
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
    if !budget.more() {
        return Ok(Outcome::Budget);
    }
    let token = match publisher::token(ctx, cloud, budget.timeout(cloud.request_timeout_secs)) {
        Ok(token) => token,
        Err(Unusable::Store(err)) => return Err(err),
        Err(Unusable::Missing) => return Ok(Outcome::NoToken),
        Err(Unusable::Refused(_)) => return Ok(Outcome::TokenRefused),
        Err(Unusable::Retry { status, message, reset_secs }) => {
            let failure = match reset_secs {
                Some(reset_secs) => Failure::RateLimited { reset_secs },
                None => Failure::Retry { status, message },
            };
            update(&|state| state.progress.failed(&failure, publisher::TOKEN_PATH, now))?;
            return Ok(outcome_of(&failure));
        }
    };
    let (mut run, mut mine) = budget.part(now, cloud);
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
        match cloud::get_page(ctx.http, cloud, &url, Credential::Publisher(token.bearer()), timeout) {
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
                problems.extend(page.warning.as_deref().map(|warning| warned(ctx, &path, warning)));
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
                if let Failure::Refused { status, message } = &failure {
                    publisher::refused(ctx, cloud, &token, (*status, message), &path)?;
                }
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
    /// What publishing the partner's catalog changes did.
    pub published: super::publish::Done,
}

impl Summary {
    /// Parts (a user's, the feed's) that failed: an error, or a token the cloud refused.
    pub fn failed(&self) -> u64 {
        ["failed", "token-refused", "publish-failed"].iter().filter_map(|name| self.outcomes.get(name)).sum()
    }

    /// Parts the run tried: every outcome but waiting for a later turn and having no token.
    pub fn tried(&self) -> u64 {
        let idle = |name: &str| matches!(name, "waiting" | "no-token" | "publish-waiting" | "publish-blocked");
        self.outcomes.iter().filter(|(name, _)| !idle(name)).map(|(_, n)| n).sum()
    }
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
        write!(
            f,
            "; billing: {} checked, {} gaps skipped, {} lapsed",
            rules.checked, rules.gaps_skipped, rules.lapsed
        )?;
        let published = &self.published;
        if published.requests > 0 {
            write!(
                f,
                "; publishing: {} requests, {} sent, {} published, {} failed",
                published.requests, published.sent, published.published, published.failed
            )?;
        }
        Ok(())
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
                transact(ctx, |txn| token_received(txn, user_id, &token.token, now))?;
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
    let settings = crate::config::settings(ctx)?;
    let cloud = CloudSettings::read(ctx.config).map_err(|why| ApiError::internal(&why))?;
    let mut run: RunState = storage::read(ctx.kv, storage::SYNC_NEXT_USER_KEY)?.unwrap_or_default();
    let mut budget = Budget { clock: ctx.clock, deadline, requests: cloud.max_requests_per_run };
    let mut summary = Summary::default();
    let (rules, after) =
        billing::apply_time_rules(ctx, &settings, run.subscriptions_after.as_deref(), &|| budget.within())?;
    summary.time_rules = rules;
    run.subscriptions_after = after;
    adopt(ctx, &mut run, &budget)?;
    // The status of push notifications still open, before the users take the rest.
    let polled = crate::domain::push::poll_open(ctx, &cloud, budget.requests, budget.deadline)?;
    budget.requests = budget.requests.saturating_sub(polled);
    summary.requests += u64::from(polled);
    if let Some(publisher) = &cloud.publisher {
        let before = budget.requests;
        let outcome = sync_feed(ctx, &settings, &cloud, &publisher.app_id, &mut budget)?;
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
    // The partner's catalog changes, with what the run has left.
    let mut outcomes = BTreeMap::<&'static str, u64>::new();
    let published = super::publish::publish(ctx, &cloud, &mut budget, &mut |outcome| {
        *outcomes.entry(outcome.name()).or_default() += 1;
    })?;
    summary.requests += published.requests;
    summary.published = published;
    for (name, count) in outcomes {
        *summary.outcomes.entry(name).or_default() += count;
    }
    Ok(summary)
}

fn save_run(ctx: &Ctx<'_>, run: &mut RunState) -> Result<(), ApiError> {
    run.v = storage::FORMAT;
    transact(ctx, |txn| -> Result<(), ApiError> {
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
    evogate_plugin::log::warn(&format!("sync: user {user_id} failed: {why}"));
    Ok(())
}

/// Syncs one user now (`POST /partner/v1/users/{id}/sync`), within
/// `sync_now_budget_secs`; how it ended.
pub fn run_user(ctx: &Ctx<'_>, user_id: &str) -> Result<(Outcome, Option<RunReport>), ApiError> {
    let settings = crate::config::settings(ctx)?;
    let cloud = CloudSettings::read(ctx.config).map_err(|why| ApiError::internal(&why))?;
    let deadline = ctx.clock.now_unix().saturating_add(cloud.now_budget_secs);
    let mut budget = Budget { clock: ctx.clock, deadline, requests: cloud.max_requests_per_user };
    sync_user(ctx, &settings, &cloud, user_id, &mut budget)
}

/// What the cloud's `Warning` on `path` is for the partner (a URL's coming
/// shutdown, say): logged once a day per path, and the problem a data issue
/// keeps, one per path, counted each time it comes again.
fn warned(ctx: &Ctx<'_>, path: &str, warning: &str) -> String {
    let problem = format!("the Evotor cloud warns about {path}: {warning}");
    storage::log_once_a_day(ctx, &format!("cloud-warning:{path}"), &problem);
    problem
}
