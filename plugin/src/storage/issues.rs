//! Data issues: doubtful input that was accepted all the same. A
//! transaction notes them ([`Noted`]) and counts them up in
//! [`IssueRecord`]s in the same commit as the change that carried them.

use super::codec::FORMAT;
use super::keys::issue_key;
use super::records::IssueRecord;
use std::collections::BTreeMap;

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
        issue_key(self.user_id.as_deref(), self.store.as_deref(), self.entity, &self.entity_id, &self.problem)
    }
}

/// The data issues one transaction noted, by key: each with how often it
/// was seen and when first.
#[derive(Debug, Default)]
pub(super) struct Noted(BTreeMap<String, (Issue, u64, u64)>);

impl Noted {
    /// How many distinct issues were noted.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Notes `issue`, seen at `now`: the same issue again counts up.
    pub(super) fn note(&mut self, now: u64, issue: Issue) {
        let entry = self.0.entry(issue.key()).or_insert((issue, 0, now));
        entry.1 += 1;
    }

    /// The issues to count, by key, with how often and when: past
    /// [`MAX_ISSUES_PER_COMMIT`] distinct ones, the rest of each user's and
    /// entity's are counted in one issue naming the first of them, so what
    /// one request writes stays bounded by its size, not by its items.
    pub(super) fn grouped(self) -> BTreeMap<String, (Issue, u64, u64)> {
        let mut issues = self.0;
        if issues.len() > MAX_ISSUES_PER_COMMIT {
            let rest = issues.split_off(&issues.keys().nth(MAX_ISSUES_PER_COMMIT).cloned().unwrap_or_default());
            // Per (user, entity): the first issue, how often all were seen, how many were distinct, when.
            let mut grouped: BTreeMap<GroupKey, (Issue, u64, u64, u64)> = BTreeMap::new();
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
        issues
    }
}

/// The record of `issue` counted up by `count`, seen last at `now`, from
/// the one stored (`known`); with the line to log when it is new.
pub(super) fn counted(known: Option<IssueRecord>, issue: Issue, count: u64, now: u64) -> (IssueRecord, Option<String>) {
    match known {
        Some(mut known) => {
            known.last_seen = now;
            known.count = known.count.saturating_add(count);
            (known, None)
        }
        None => {
            let whose = issue.user_id.as_deref().unwrap_or("-");
            let line = format!("data issue: {} {} of user {whose}: {}", issue.entity, issue.entity_id, issue.problem);
            let record = IssueRecord {
                v: FORMAT,
                user_id: issue.user_id,
                store_uuid: issue.store,
                entity: issue.entity.to_owned(),
                entity_id: issue.entity_id,
                problem: issue.problem,
                first_seen: now,
                last_seen: now,
                count,
            };
            (record, Some(line))
        }
    }
}
