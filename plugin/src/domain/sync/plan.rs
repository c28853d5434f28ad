//! Planning the next request: the backfill's next listing or a store's
//! next window of documents ([`Task`]), the windows of time read, and how a
//! page moves the positions on.

use super::cloud;
use super::state::{FeedSync, Position, Resource, Step, UserSync, Window};
use crate::Ctx;
use crate::config::CloudSettings;
use crate::errors::ApiError;
use crate::storage::{self, EntityRecord};

/// The shortest window of documents or events worth a request, ms: a run
/// does not ask again for what the previous one just read.
pub const MIN_WINDOW_MS: i64 = 60_000;

/// The next request of a user's sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Task {
    Backfill(Step),
    Documents { store: String, key: String, window: Window },
}

impl Task {
    pub(super) fn path(&self) -> String {
        match self {
            Task::Backfill(step) => step.resource.path(),
            Task::Documents { store, .. } => format!("/stores/{store}/documents"),
        }
    }

    pub(super) fn url(&self, cloud: &CloudSettings) -> String {
        match self {
            Task::Backfill(step) => cloud::url(cloud, &step.resource.path(), "", step.cursor.as_deref()),
            Task::Documents { window, .. } => window_url(cloud, &self.path(), window),
        }
    }
}

pub(super) fn window_url(cloud: &CloudSettings, path: &str, window: &Window) -> String {
    let query = format!("since={}&until={}", window.since_ms, window.until_ms);
    cloud::url(cloud, path, &query, window.cursor.as_deref())
}

/// The window to read after `position` at `now_ms`, if one is due.
pub(super) fn next_window(cloud: &CloudSettings, position: Option<&Position>, now_ms: i64) -> Option<Window> {
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

pub(super) fn next_task(ctx: &Ctx<'_>, cloud: &CloudSettings, state: &UserSync) -> Result<Option<Task>, ApiError> {
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

/// Moves `state` past a page of `task` that ended at `next`.
pub(super) fn advance(state: &mut UserSync, task: &Task, next: Option<String>, stores: &[String], now: u64) {
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

/// Moves the feed's position past a page of `window` that ended at `next`
/// (unless another window is under way).
pub(super) fn advance_feed(state: &mut FeedSync, window: &Window, next: Option<String>) {
    let position = state.position.get_or_insert(Position { through_ms: window.since_ms, window: None });
    if position.window.as_ref().is_none_or(|current| current == window) {
        advance_position(position, window, next);
    }
}
