//! Whether every index agrees with the records it indexes: a checker over
//! the whole store, for the tests and the fuzz target (it reads every key,
//! so it never runs on a request).
//!
//! Checked: each catalog item has exactly its barcode, child and orphan
//! entries and the directory counts it; each document has exactly one entry
//! by date and one by type; every index entry (tokens, logins, owners,
//! document and receipt indexes) names a record that exists; every token's
//! grant is what the records make.

use crate::domain::catalog::{Directory, ProductRecord};
use crate::kv::MemKv;
use crate::storage::{self, LoginIndex, OwnerIndex, TokenIndex};
use std::collections::{BTreeMap, BTreeSet};

/// Every disagreement between records and indexes in `kv`, described; empty
/// when the store is consistent.
pub fn problems(kv: &MemKv) -> Vec<String> {
    let keys = kv.keys();
    let mut problems = Vec::new();
    let stores = |head: &str| -> BTreeSet<String> {
        keys.iter()
            .filter_map(|key| key.strip_prefix(head)?.split_once('/').map(|(store, _)| store.to_owned()))
            .collect()
    };
    for store in stores("cat/") {
        if let Err(problem) = catalog(kv, &keys, &store) {
            problems.push(problem);
        }
    }
    for store in stores("docs/") {
        documents(&keys, &store, &mut problems);
    }
    match crate::domain::authorization::grants::stale(kv) {
        Ok(stale) => problems.extend(stale),
        Err(err) => problems.push(format!("grants not read: {err:?}")),
    }
    let exists = |key: &str| keys.binary_search_by(|probe| probe.as_str().cmp(key)).is_ok();
    for key in &keys {
        if key.starts_with("tokens/") {
            match storage::read::<TokenIndex>(kv, key) {
                Ok(Some(index)) if exists(&storage::user_key(&index.user_id)) => {}
                other => problems.push(format!("{key}: names no user ({other:?})")),
            }
        } else if let Some(rest) = key.strip_prefix("owners/") {
            let Some((kind, uuid)) = rest.split_once('/') else {
                problems.push(format!("{key}: not an owner key"));
                continue;
            };
            match storage::read::<OwnerIndex>(kv, key) {
                Ok(Some(owner)) if exists(&storage::entity_key(&owner.user_id, kind, uuid)) => {}
                other => problems.push(format!("{key}: the owner has no such {kind} ({other:?})")),
            }
        } else if key.starts_with("logins/") {
            match storage::read::<LoginIndex>(kv, key) {
                Ok(Some(login)) if exists(&storage::account_key(&login.account_id)) => {}
                other => problems.push(format!("{key}: names no account ({other:?})")),
            }
        } else if let Some(rest) = key.strip_prefix("rcpts/") {
            // `{store}/by-date/{ms}.{hash}[.{userId}]`
            let entry = rest.split_once("/by-date/").map(|(_, entry)| entry.split('.').collect::<Vec<_>>());
            let receipt = match entry.as_deref() {
                Some([_, hash, user]) => storage::receipt_key(hash, user),
                Some([_, hash]) => storage::receipt_key_by_hash(hash),
                _ => {
                    problems.push(format!("{key}: not a receipt index key"));
                    continue;
                }
            };
            if !exists(&receipt) {
                problems.push(format!("{key}: names no receipt ({receipt})"));
            }
        }
    }
    problems
}

/// Checks one store's catalog; returns its item uuids in order.
pub fn catalog(kv: &MemKv, keys: &[String], store: &str) -> Result<Vec<String>, String> {
    let prefix = storage::products_prefix(store);
    let mut products = BTreeMap::new();
    for key in keys {
        if let Some(uuid) = key.strip_prefix(&prefix) {
            match storage::read::<ProductRecord>(kv, key) {
                Ok(Some(record)) => drop(products.insert(uuid.to_owned(), record.product)),
                other => return Err(format!("{key}: unreadable ({other:?})")),
            }
        }
    }
    let mut want = Vec::new();
    for (uuid, product) in &products {
        for code in crate::domain::catalog::barcodes_of(product) {
            want.push(storage::barcode_key(store, &code, uuid));
        }
        if let Some(parent) = crate::domain::catalog::parent_of(product) {
            want.push(storage::child_key(store, &parent, uuid));
            if !products.contains_key(&parent) {
                want.push(storage::orphan_key(store, uuid));
            }
        }
    }
    want.sort();
    let directory_key = storage::catalog_directory_key(store);
    let mut have: Vec<String> = keys
        .iter()
        .filter(|key| key.starts_with(&format!("cat/{store}/")) && !key.starts_with(&prefix) && **key != directory_key)
        // What waits for the cloud is no index of the catalog.
        .filter(|key| !key.starts_with(&format!("cat/{store}/pub/")))
        .cloned()
        .collect();
    have.sort();
    let missing: Vec<_> = want.iter().filter(|key| have.binary_search(key).is_err()).take(5).collect();
    let extra: Vec<_> = have.iter().filter(|key| want.binary_search(key).is_err()).take(5).collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(format!("catalog of {store}: index entries missing {missing:?}, extra {extra:?}"));
    }
    let directory: Directory = storage::read(kv, &directory_key)
        .map_err(|err| format!("{directory_key}: unreadable ({err:?})"))?
        .unwrap_or_default();
    if directory.total() != products.len() as u64 {
        return Err(format!("catalog of {store}: directory counts {} of {} items", directory.total(), products.len()));
    }
    let orphans = want.iter().filter(|key| key.contains("/orphan/")).count() as u64;
    if directory.orphans != orphans {
        return Err(format!("catalog of {store}: directory counts {} of {orphans} orphans", directory.orphans));
    }
    for (index, range) in directory.ranges.iter().enumerate() {
        let upper = directory.ranges.get(index + 1).and_then(|next| next.after.as_deref());
        let inside = products
            .keys()
            .filter(|uuid| range.after.as_deref().is_none_or(|after| uuid.as_str() > after))
            .filter(|uuid| upper.is_none_or(|upper| uuid.as_str() <= upper))
            .count();
        if range.count != inside as u64 {
            return Err(format!("catalog of {store}: range {index} counts {} of {inside} items", range.count));
        }
        if range.count > crate::domain::catalog::SPLIT_ABOVE {
            return Err(format!("catalog of {store}: range {index} holds {} items, past the split", range.count));
        }
    }
    Ok(products.into_keys().collect())
}

/// Checks that each document of `store` has one entry by date and at most
/// one by type (written before entries by date named the type), and that
/// every index entry names a document.
fn documents(keys: &[String], store: &str, problems: &mut Vec<String>) {
    let head = format!("docs/{store}/");
    let mut records = BTreeSet::new();
    let mut by_date: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    let mut parts = BTreeSet::new();
    for key in keys {
        let Some(rest) = key.strip_prefix(&head) else { continue };
        // Index entries end `{closeDate ms:013}.{id}`; ids may hold dots, the time does not.
        if let Some(id) = rest.strip_prefix("doc/") {
            records.insert(id.to_owned());
        } else if let Some(part) = rest.strip_prefix("part/") {
            // Parts of a large document: `{id}/{n:04}`, of a document there is.
            match part.rsplit_once('/') {
                Some((id, _)) => {
                    parts.insert(id.to_owned());
                }
                None => problems.push(format!("{key}: not a part key")),
            }
        } else if let Some(entry) = rest.strip_prefix("by-date/") {
            match entry.split_once('.') {
                Some((_, id)) => *by_date.entry(id).or_default() += 1,
                None => problems.push(format!("{key}: not a date index key")),
            }
        } else if let Some(entry) = rest.strip_prefix("by-type/") {
            match entry.split_once('/').and_then(|(_, entry)| entry.split_once('.')) {
                Some((_, id)) => *by_type.entry(id).or_default() += 1,
                None => problems.push(format!("{key}: not a type index key")),
            }
        } else {
            problems.push(format!("{key}: unknown document key"));
        }
    }
    for id in &records {
        for (index, entries, allowed) in [("date", &by_date, 1..=1), ("type", &by_type, 0..=1)] {
            let count = entries.get(id.as_str()).copied().unwrap_or(0);
            if !allowed.contains(&count) {
                problems.push(format!("document {id} of {store}: {count} entries by {index}"));
            }
        }
    }
    for id in by_date.keys().chain(by_type.keys()) {
        if !records.contains(*id) {
            problems.push(format!("documents of {store}: an index entry names no document {id}"));
        }
    }
    for id in &parts {
        if !records.contains(id) {
            problems.push(format!("documents of {store}: parts of no document {id}"));
        }
    }
}
