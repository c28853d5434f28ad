//! Data issues: doubtful input that was accepted all the same. A
//! transaction notes them ([`Txn::issue`]) and counts them up in
//! [`IssueRecord`]s in the same commit as the change that carried them.

use super::codec::{FORMAT, StorageError};
use super::keys::issue_key;
use super::records::IssueRecord;
use super::txn::Txn;

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

impl Txn<'_> {
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
    pub(super) fn write_issues(&mut self) -> Result<(), StorageError> {
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
}
