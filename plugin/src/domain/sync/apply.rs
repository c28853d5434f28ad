//! Applying a fetched page: stores, devices and employees into the
//! mirror, products and groups into the catalog, documents into their
//! store; what cannot be taken becomes a data issue.

use super::cloud::Page;
use super::plan::Task;
use super::state::{Applied, Resource};
use crate::Ctx;
use crate::config::Settings;
use crate::domain::inventory::{self, EntityChange, EntityOutcome, Source};
use crate::domain::{billing, documents, events, transact};
use crate::errors::ApiError;
use crate::input::{self, Object};
use crate::storage::{self, EntityRecord, Issue};
use serde_json::Value;

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
    transact(ctx, |txn| -> Result<u64, ApiError> {
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
pub(super) fn apply(
    ctx: &Ctx<'_>,
    settings: &Settings,
    user_id: &str,
    task: &Task,
    page: &Page,
) -> Result<Applied, ApiError> {
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

pub(super) fn note_problems(
    ctx: &Ctx<'_>,
    user_id: Option<&str>,
    path: &str,
    problems: Vec<String>,
) -> Result<(), ApiError> {
    if problems.is_empty() {
        return Ok(());
    }
    let now = ctx.clock.now_unix();
    transact(ctx, |txn| -> Result<(), ApiError> {
        for problem in &problems {
            txn.issue(now, Issue::new(user_id, "sync", path, problem.as_str()));
        }
        Ok(())
    })
}
