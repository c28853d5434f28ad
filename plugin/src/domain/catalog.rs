//! The product catalog of each store, in both directions, and barcode lookup.
//!
//! | method, path | who | what |
//! |---|---|---|
//! | `GET /api/v1/inventories/stores/{storeUuid}/products[?page=&size=]` | user | the store's products and groups in uuid order |
//! | `POST /api/v1/inventories/stores/{storeUuid}/products` | user | products created on a terminal → `[{uuid}]` |
//! | `GET /api/v1/commodities?scanCode=&alcCode=` | user | the user's product with that barcode, as a `commodity` |
//! | `PUT /partner/v1/stores/{storeUuid}/products` | partner | bulk upsert, atomic, up to 10,000 |
//! | `POST /partner/v1/stores/{storeUuid}/products/delete` | partner | delete by uuid list |
//! | `GET /partner/v1/stores/{storeUuid}/products?after=&limit=` | partner | cursor-paged listing |
//! | `GET /partner/v1/stores/{storeUuid}/catalog-issues?after=&limit=` | partner | items whose parent is missing |
//!
//! ## Layout
//! Each item is one record under `cat/{store}/p/{uuid}`, so the stable
//! order is uuid order. Evotor pages by offset (`page` × `size`), which a
//! key-ordered store cannot seek to; a small per-store [`Directory`] keeps
//! how many items lie in each key range (ranges of 512–1024 items), so page
//! 99 costs one directory read and a scan of at most one range more than
//! page 0. The barcode index, the child index and the missing-parent index
//! change in the same commit as the items, and so does the directory, which
//! every insert or delete rewrites: its version check serializes changes of
//! a store's key set, so concurrent writers never miscount.

pub mod publication;
pub mod validate;

use crate::Ctx;
use crate::domain::transact;
use crate::errors::ApiError;
use crate::input;
use crate::storage::{self, Issue, OwnerIndex, StorageError, Txn};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use validate::{Item, Unknown};

/// The source of what Evotor brought (events, the cloud sync, a terminal).
pub const EVOTOR: &str = "evotor";
/// The source of the partner's own changes.
pub const PARTNER: &str = "partner";

/// Most items one upsert may carry (Evotor or partner side).
pub const MAX_BATCH: usize = 10_000;
/// Largest `size` of an Evotor page.
pub const MAX_PAGE_SIZE: u64 = 10_000;
/// A directory range is split once it holds more than this many items…
pub(crate) const SPLIT_ABOVE: u64 = 1024;
/// …into ranges of this many; neighbours that fit in one are merged.
const RANGE_TARGET: usize = 512;

/// One product or group as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductRecord {
    /// Storage format version.
    pub v: u32,
    /// Who wrote it last: `evotor` (a terminal) or `partner`.
    pub source: String,
    /// Last change, Unix seconds.
    pub updated_at: u64,
    /// The object as given, ids in lower case.
    pub product: Value,
    /// What of it the Evotor cloud holds from the partner ([`publication`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<publication::Published>,
}

/// The product of a stored record, unparsed: pages are assembled from it as is.
#[derive(Deserialize)]
struct RawProduct<'a> {
    #[serde(borrow)]
    product: &'a RawValue,
}

/// How many items each key range of a store's catalog holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    /// Storage format version.
    pub v: u32,
    /// Ranges in key order; the first starts at the beginning.
    pub ranges: Vec<Range>,
    /// Items whose parent is missing.
    pub orphans: u64,
}

/// Items with uuids after `after` up to the next range's `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// Exclusive lower bound; `None` for the first range.
    pub after: Option<String>,
    /// Items in the range.
    pub count: u64,
}

impl Default for Directory {
    fn default() -> Self {
        Self { v: storage::FORMAT, ranges: vec![Range { after: None, count: 0 }], orphans: 0 }
    }
}

impl Directory {
    /// Items in the catalog.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|range| range.count).sum()
    }

    /// The range that holds (or would hold) `uuid`.
    fn range_of(&self, uuid: &str) -> usize {
        self.ranges.partition_point(|range| range.after.as_deref().is_none_or(|after| after < uuid)).saturating_sub(1)
    }

    /// The range holding item number `offset` and how many of its items come before it.
    fn locate(&self, offset: u64) -> Option<(usize, u64)> {
        let mut before = 0;
        for (index, range) in self.ranges.iter().enumerate() {
            if offset < before + range.count {
                return Some((index, offset - before));
            }
            before += range.count;
        }
        None
    }
}

/// A marker value of an index entry.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    v: u32,
}

/// An item whose parent is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Orphan {
    pub(crate) v: u32,
    pub(crate) uuid: String,
    pub(crate) parent_uuid: String,
}

pub(crate) fn barcodes_of(product: &Value) -> Vec<String> {
    let mut codes: Vec<String> = product
        .get("barCodes")
        .and_then(Value::as_array)
        .map(|codes| {
            codes.iter().filter_map(Value::as_str).filter(|code| validate::is_code(code)).map(str::to_owned).collect()
        })
        .unwrap_or_default();
    codes.sort_unstable();
    codes.dedup();
    codes
}

pub(crate) fn parent_of(product: &Value) -> Option<String> {
    product.get("parentUuid").and_then(Value::as_str).map(str::to_owned)
}

/// One change of a store's catalog inside a transaction.
struct Change<'t, 'k> {
    txn: &'t mut Txn<'k>,
    store: &'t str,
    /// Who the store belongs to.
    owner: Option<&'t str>,
    /// Who makes the change: `partner` or `evotor`.
    source: &'t str,
    now: u64,
    /// Whether the store has publication work (its mark read once, as a
    /// check: a partner change committed meanwhile makes this change retry).
    publishing: Option<bool>,
    directory: Directory,
    /// Items known to exist (`true`) or not (`false`) as of this change.
    exists: HashMap<String, bool>,
    /// Missing-parent state as of this change.
    orphaned: HashMap<String, bool>,
    /// The parent of each item this change wrote or deleted (`None`), which
    /// the committed child index does not show yet.
    parents: HashMap<String, Option<String>>,
    added: Vec<String>,
    removed: Vec<String>,
}

impl<'t, 'k> Change<'t, 'k> {
    fn begin(
        txn: &'t mut Txn<'k>,
        store: &'t str,
        owner: Option<&'t str>,
        source: &'t str,
        now: u64,
    ) -> Result<Self, StorageError> {
        let directory = txn.get::<Directory>(&storage::catalog_directory_key(store))?.unwrap_or_default();
        Ok(Self {
            txn,
            store,
            owner,
            source,
            now,
            publishing: None,
            directory,
            exists: HashMap::new(),
            orphaned: HashMap::new(),
            parents: HashMap::new(),
            added: Vec::new(),
            removed: Vec::new(),
        })
    }

    /// Whether any item of the store may have a pending partner version.
    fn publishing(&mut self) -> Result<bool, StorageError> {
        if let Some(known) = self.publishing {
            return Ok(known);
        }
        let due = self.txn.get::<IgnoredAny>(&publication::due_key(self.store))?.is_some();
        self.publishing = Some(due);
        Ok(due)
    }

    fn exists(&mut self, uuid: &str) -> Result<bool, StorageError> {
        if let Some(known) = self.exists.get(uuid) {
            return Ok(*known);
        }
        let found = self.txn.get::<IgnoredAny>(&storage::product_key(self.store, uuid))?.is_some();
        self.exists.insert(uuid.to_owned(), found);
        Ok(found)
    }

    fn is_orphan(&mut self, uuid: &str) -> Result<bool, StorageError> {
        if let Some(known) = self.orphaned.get(uuid) {
            return Ok(*known);
        }
        let found = self.txn.get::<IgnoredAny>(&storage::orphan_key(self.store, uuid))?.is_some();
        self.orphaned.insert(uuid.to_owned(), found);
        Ok(found)
    }

    fn set_orphan(&mut self, uuid: &str, parent: Option<&str>) -> Result<(), StorageError> {
        let was = self.is_orphan(uuid)?;
        let key = storage::orphan_key(self.store, uuid);
        match parent {
            Some(parent) => {
                self.txn
                    .put(&key, &Orphan { v: storage::FORMAT, uuid: uuid.to_owned(), parent_uuid: parent.to_owned() });
                self.directory.orphans += u64::from(!was);
            }
            None if was => {
                self.txn.delete(&key);
                self.directory.orphans = self.directory.orphans.saturating_sub(1);
            }
            None => {}
        }
        self.orphaned.insert(uuid.to_owned(), parent.is_some());
        Ok(())
    }

    fn children(&self, parent: &str) -> Result<Vec<String>, StorageError> {
        let prefix = storage::children_prefix(self.store, parent);
        let keys = self.txn.scan_keys(&prefix, None, usize::MAX)?;
        Ok(keys
            .into_iter()
            .filter_map(|key| key.strip_prefix(&prefix).map(str::to_owned))
            .filter(|child| self.parents.get(child).is_none_or(|now| now.as_deref() == Some(parent)))
            .collect())
    }

    /// Inserts or replaces `item`; `batch` holds every uuid of the same
    /// request. Returns whether anything changed.
    fn upsert(&mut self, item: Item, batch: &HashSet<String>, mut record: ProductRecord) -> Result<bool, StorageError> {
        let key = storage::product_key(self.store, &item.uuid);
        let old = self.txn.get::<ProductRecord>(&key)?;
        if self.source == EVOTOR {
            let evotor_at = item.changed_ms.map_or(self.now, |ms| u64::try_from(ms / 1000).unwrap_or(0));
            let held = old.as_ref().map(|old| (&old.product, old.published.as_ref()));
            let publishing = self.publishing()?;
            let verdict = publication::evotor_changed(
                self.txn,
                self.store,
                self.owner,
                &item.uuid,
                Some(&record.product),
                held,
                evotor_at,
                self.now,
                publishing,
            )?;
            if verdict == publication::Verdict::Keep {
                self.exists.insert(item.uuid.clone(), old.is_some());
                self.parents.insert(item.uuid.clone(), old.as_ref().and_then(|old| parent_of(&old.product)));
                return Ok(false);
            }
        }
        record.published = old.as_ref().and_then(|old| old.published.clone());
        if self.source == EVOTOR
            && let Some(published) = record.published.as_mut()
        {
            // Applied from Evotor, it is what the cloud holds now: what the partner sends next is measured against it.
            published.digest = publication::content_digest(&record.product);
            published.quantity = publication::quantity_of(&record.product);
        }
        if old.as_ref().is_some_and(|old| old.product == record.product && old.source == record.source) {
            self.exists.insert(item.uuid.clone(), true);
            self.parents.insert(item.uuid.clone(), item.parent.clone());
            return Ok(false);
        }
        if self.source == PARTNER {
            let group = publication::is_group(&record.product);
            let published = record.published.as_ref();
            publication::partner_changed_from(self.txn, self.store, &item.uuid, false, group, self.now, published);
        }
        let (old_barcodes, old_parent) =
            old.as_ref().map(|old| (barcodes_of(&old.product), parent_of(&old.product))).unwrap_or_default();
        let was_new = old.is_none();
        if was_new {
            let range = self.directory.range_of(&item.uuid);
            self.directory.ranges[range].count += 1;
            self.added.push(item.uuid.clone());
        }
        self.exists.insert(item.uuid.clone(), true);
        self.parents.insert(item.uuid.clone(), item.parent.clone());
        for code in old_barcodes.iter().filter(|code| !item.barcodes.contains(code)) {
            self.txn.delete(&storage::barcode_key(self.store, code, &item.uuid));
        }
        for code in item.barcodes.iter().filter(|code| !old_barcodes.contains(code)) {
            self.txn.put(&storage::barcode_key(self.store, code, &item.uuid), &Marker { v: storage::FORMAT });
        }
        if old_parent != item.parent {
            if let Some(parent) = &old_parent {
                self.txn.delete(&storage::child_key(self.store, parent, &item.uuid));
            }
            if let Some(parent) = &item.parent {
                self.txn.put(&storage::child_key(self.store, parent, &item.uuid), &Marker { v: storage::FORMAT });
            }
        }
        let missing_parent = match &item.parent {
            Some(parent) => !batch.contains(parent) && !self.exists(parent)?,
            None => false,
        };
        if missing_parent || (old_parent.is_some() && !was_new) {
            self.set_orphan(&item.uuid, item.parent.as_deref().filter(|_| missing_parent))?;
        } else {
            self.orphaned.insert(item.uuid.clone(), false);
        }
        // A new item may be the parent that others were missing.
        if was_new && self.directory.orphans > 0 {
            for child in self.children(&item.uuid)? {
                if self.is_orphan(&child)? {
                    self.set_orphan(&child, None)?;
                }
            }
        }
        self.txn.put(&key, &record);
        Ok(true)
    }

    /// Deletes `uuid` if present (made by Evotor at `evotor_at`, Unix
    /// seconds, when Evotor said); its children become orphans.
    fn delete(&mut self, uuid: &str, evotor_at: Option<u64>) -> Result<bool, StorageError> {
        let key = storage::product_key(self.store, uuid);
        if self.exists.get(uuid) == Some(&false) {
            return Ok(false);
        }
        let old = self.txn.get::<ProductRecord>(&key)?;
        if self.source == EVOTOR {
            let held = old.as_ref().map(|old| (&old.product, old.published.as_ref()));
            let at = evotor_at.unwrap_or(self.now);
            let publishing = self.publishing()?;
            let verdict = publication::evotor_changed(
                self.txn, self.store, self.owner, uuid, None, held, at, self.now, publishing,
            )?;
            if verdict == publication::Verdict::Keep {
                return Ok(false);
            }
        }
        self.exists.insert(uuid.to_owned(), false);
        let Some(old) = old else { return Ok(false) };
        if self.source == PARTNER {
            self.partner_deleted(uuid, &old);
        }
        self.parents.insert(uuid.to_owned(), None);
        let range = self.directory.range_of(uuid);
        self.directory.ranges[range].count = self.directory.ranges[range].count.saturating_sub(1);
        self.removed.push(uuid.to_owned());
        self.txn.delete(&key);
        for code in barcodes_of(&old.product) {
            self.txn.delete(&storage::barcode_key(self.store, &code, uuid));
        }
        if let Some(parent) = parent_of(&old.product) {
            self.txn.delete(&storage::child_key(self.store, &parent, uuid));
            self.set_orphan(uuid, None)?;
        }
        for child in self.children(uuid)? {
            if self.exists(&child)? && !self.is_orphan(&child)? {
                self.set_orphan(&child, Some(uuid))?;
            }
        }
        Ok(true)
    }

    /// A partner deletion of `old`: pending for the cloud. Always: whether
    /// the cloud has the item cannot be told for sure (a request whose
    /// answer was lost may have made it), and a deletion of an item the
    /// cloud lacks costs a share of one request.
    fn partner_deleted(&mut self, uuid: &str, old: &ProductRecord) {
        let group = publication::is_group(&old.product);
        let published = old.published.as_ref();
        publication::partner_changed_from(self.txn, self.store, uuid, true, group, self.now, published);
    }

    /// Re-balances the directory and writes it.
    fn finish(mut self) -> Result<(), StorageError> {
        let mut index = 0;
        while index < self.directory.ranges.len() {
            if self.directory.ranges[index].count > SPLIT_ABOVE {
                let pieces = self.split(index)?;
                let count = pieces.len();
                self.directory.ranges.splice(index..=index, pieces);
                index += count;
            } else {
                index += 1;
            }
        }
        let ranges = std::mem::take(&mut self.directory.ranges);
        for range in ranges {
            match self.directory.ranges.last_mut() {
                Some(last) if range.count == 0 || last.count + range.count <= RANGE_TARGET as u64 => {
                    last.count += range.count;
                }
                _ => self.directory.ranges.push(range),
            }
        }
        self.txn.put(&storage::catalog_directory_key(self.store), &self.directory);
        Ok(())
    }

    /// The uuids of range `index` as of this change, cut into ranges of [`RANGE_TARGET`].
    fn split(&self, index: usize) -> Result<Vec<Range>, StorageError> {
        let range = &self.directory.ranges[index];
        let upper = self.directory.ranges.get(index + 1).and_then(|next| next.after.clone());
        let within = |uuid: &str| {
            range.after.as_deref().is_none_or(|after| uuid > after)
                && upper.as_deref().is_none_or(|upper| uuid <= upper)
        };
        let prefix = storage::products_prefix(self.store);
        let start = range.after.as_ref().map(|after| format!("{prefix}{after}"));
        let committed = range.count + self.removed.len() as u64;
        let mut uuids: Vec<String> = self
            .txn
            .scan_keys(&prefix, start.as_deref(), usize::try_from(committed).unwrap_or(usize::MAX))?
            .into_iter()
            .filter_map(|key| key.strip_prefix(&prefix).map(str::to_owned))
            .filter(|uuid| within(uuid) && !self.removed.contains(uuid))
            .chain(self.added.iter().filter(|uuid| within(uuid)).cloned())
            .collect();
        uuids.sort_unstable();
        uuids.dedup();
        let mut pieces = Vec::new();
        let mut after = range.after.clone();
        for chunk in uuids.chunks(RANGE_TARGET) {
            pieces.push(Range { after: after.clone(), count: chunk.len() as u64 });
            after = chunk.last().cloned();
        }
        if pieces.is_empty() {
            pieces.push(Range { after: range.after.clone(), count: 0 });
        }
        Ok(pieces)
    }
}

/// Validates a request body of items: a JSON array of at most [`MAX_BATCH`], each uuid once.
pub(crate) fn items(ctx: &Ctx<'_>, body: &[u8]) -> Result<Vec<Item>, ApiError> {
    let values = input::array(body, MAX_BATCH)?;
    let mut unknown = Vec::new();
    let mut seen = HashSet::with_capacity(values.len());
    let mut items = Vec::with_capacity(values.len());
    for (index, value) in values.into_iter().enumerate() {
        let item = validate::item(value, index, &mut unknown)?;
        if !seen.insert(item.uuid.clone()) {
            return Err(ApiError::incorrect(&format!("[{index}].uuid"), item.uuid));
        }
        items.push(item);
    }
    log_unknown(ctx, unknown);
    Ok(items)
}

/// Reads the items a terminal sends: refused only without an id; an item
/// sent twice keeps its last version, and both that and whatever else looks
/// wrong are named in each item's problems.
pub(crate) fn terminal_items(ctx: &Ctx<'_>, body: &[u8]) -> Result<Vec<Item>, ApiError> {
    let values = input::array(body, MAX_BATCH)?;
    let mut unknown = Vec::new();
    let mut positions: HashMap<String, usize> = HashMap::with_capacity(values.len());
    let mut items: Vec<Item> = Vec::with_capacity(values.len());
    for (index, value) in values.into_iter().enumerate() {
        let mut item = validate::lenient_item(value, index, &mut unknown)?;
        match positions.get(&item.uuid) {
            Some(&earlier) => {
                if items[earlier].data != item.data {
                    item.problems.push("sent twice in one call with different content: the last kept".into());
                }
                items[earlier] = item;
            }
            None => {
                positions.insert(item.uuid.clone(), items.len());
                items.push(item);
            }
        }
    }
    log_unknown(ctx, unknown);
    Ok(items)
}

/// Logs each value of an extensible enumeration this build does not know, once.
fn log_unknown(ctx: &Ctx<'_>, mut unknown: Vec<Unknown>) {
    unknown.sort_unstable_by(|a, b| (a.field, &a.value).cmp(&(b.field, &b.value)));
    unknown.dedup();
    for Unknown { field, value } in unknown {
        let topic = format!("unknown/{field}/{}", &storage::sha256_hex(value.as_bytes())[..32]);
        storage::log_once(ctx, &topic, &format!("catalog: kept an unknown {field} value {value:?}"));
    }
}

/// Writes one commit of a catalog change plans for at most: under the
/// store's 100,000 a commit with room for what an item's change may add
/// beyond its estimate (children found again, the directory).
const WRITES_PER_COMMIT: usize = 40_000;

/// Item uuids one commit of a deletion takes: each may delete 100 barcode
/// entries and orphan its children.
const DELETES_PER_COMMIT: usize = 200;

/// The writes an item's upsert may make: its record, its barcodes (the old
/// ones deleted, the new ones written), its child and orphan entries.
pub(crate) fn writes_of(item: &Item) -> usize {
    4 + 2 * item.barcodes.len()
}

/// `items` cut into runs of consecutive items that each fit one commit
/// (one run when they all do).
pub(crate) fn commits_of<T>(items: &[T], writes: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let (mut start, mut planned) = (0, 0);
    for (index, item) in items.iter().enumerate() {
        let more = writes(item);
        if index > start && planned + more > WRITES_PER_COMMIT {
            runs.push(&items[start..index]);
            (start, planned) = (index, 0);
        }
        planned += more;
    }
    if start < items.len() {
        runs.push(&items[start..]);
    }
    runs
}

/// Upserts `items` into `store`: in one commit when they fit the store's
/// limits on a commit, else in as few as they need (each idempotent, so a
/// request answered with an error and sent again completes); answers how
/// many changed.
pub(crate) fn upsert_all(ctx: &Ctx<'_>, store: &str, items: &[Item], source: &str) -> Result<usize, ApiError> {
    upsert_counted(ctx, store, items, source, None)
}

/// [`upsert_all`] of a user's delivery (`counted`: the settings and the
/// user): the items it adds count against the user's `user_quota_records`,
/// in the commits that add them; a delivery that would pass the quota is
/// refused whole (402 1004) before anything is written.
pub(crate) fn upsert_counted(
    ctx: &Ctx<'_>,
    store: &str,
    items: &[Item],
    source: &str,
    counted: Option<(&crate::config::Settings, &str)>,
) -> Result<usize, ApiError> {
    let now = ctx.clock.now_unix();
    let owner = store_owner(ctx, store)?;
    let batch: HashSet<String> = items.iter().map(|item| item.uuid.clone()).collect();
    let counted = counted.filter(|(settings, _)| settings.user_quota_records.is_some());
    if let Some((settings, user_id)) = counted {
        // The whole delivery, checked before any of its commits.
        let keys: Vec<String> = items.iter().map(|item| storage::product_key(store, &item.uuid)).collect();
        let mut new = 0;
        for chunk in keys.chunks(crate::kv::MAX_GET_MANY_KEYS) {
            new += crate::kv::read_many(ctx.kv, chunk)?.iter().filter(|entry| entry.is_none()).count();
        }
        crate::domain::quota::check_quota(ctx.kv, settings, user_id, new)?;
    }
    let mut changed = 0;
    for run in commits_of(items, writes_of) {
        changed += transact(ctx, |txn| -> Result<usize, ApiError> {
            let (changed, added) = upsert_in(txn, store, owner.as_deref(), run, &batch, source, now)?;
            if let Some((settings, user_id)) = counted {
                crate::domain::quota::count_usage(txn, settings, user_id, added)?;
            }
            Ok(changed)
        })?;
    }
    Ok(changed)
}

/// Within `txn`: upserts `items` into `store` of `owner`; `batch` holds the
/// uuids of the whole request (`items` may be a run of it); answers how
/// many changed and how many of those are new.
pub(crate) fn upsert_in(
    txn: &mut Txn<'_>,
    store: &str,
    owner: Option<&str>,
    items: &[Item],
    batch: &HashSet<String>,
    source: &str,
    now: u64,
) -> Result<(usize, usize), ApiError> {
    for item in items {
        for problem in &item.problems {
            let issue = Issue::new(owner, "product", &item.uuid, problem.as_str());
            txn.issue(now, issue.in_store(store));
        }
    }
    let mut change = Change::begin(txn, store, owner, source, now)?;
    let mut changed = Vec::new();
    for item in items {
        let record = ProductRecord {
            v: storage::FORMAT,
            source: source.to_owned(),
            updated_at: now,
            product: Value::Object(item.data.clone()),
            published: None,
        };
        if change.upsert(item.clone(), batch, record)? {
            changed.push(item.uuid.as_str());
        }
    }
    if changed.is_empty() {
        return Ok((0, 0));
    }
    let added = change.added.len();
    change.finish()?;
    let count = changed.len();
    let data = json!({ "storeUuid": store, "source": source, "uuids": changed });
    txn.emit("products.upserted", now, owner, data);
    Ok((count, added))
}

/// The user who owns `store`, if anyone does yet.
pub(crate) fn store_owner(ctx: &Ctx<'_>, store: &str) -> Result<Option<String>, ApiError> {
    Ok(storage::read::<OwnerIndex>(ctx.kv, &storage::owner_key("store", store))?.map(|owner| owner.user_id))
}

/// Succeeds when `store` (lower case) is the user's, or nobody's yet and
/// now becomes the user's. Another user's store is 404, as a missing one.
pub fn claim_store(ctx: &Ctx<'_>, user_id: &str, store: &str) -> Result<(), ApiError> {
    let owner_key = storage::owner_key("store", store);
    match storage::read::<OwnerIndex>(ctx.kv, &owner_key)? {
        Some(owner) if owner.user_id == user_id => return Ok(()),
        Some(_) => return Err(ApiError::not_found()),
        None => {}
    }
    let now = ctx.clock.now_unix();
    transact(ctx, |txn| -> Result<(), ApiError> {
        match claim_in(txn, user_id, store, now)? {
            None => Ok(()),
            Some(_) => Err(ApiError::not_found()),
        }
    })
}

/// Within `txn`: makes `store` the user's when nobody owns it yet. Returns
/// the other user who owns it, if one does.
pub fn claim_in(txn: &mut Txn<'_>, user_id: &str, store: &str, now: u64) -> Result<Option<String>, ApiError> {
    crate::domain::purge::refuse_while_erasing(txn, user_id)?;
    let owner_key = storage::owner_key("store", store);
    match txn.get::<OwnerIndex>(&owner_key)? {
        Some(owner) if owner.user_id == user_id => Ok(None),
        Some(owner) => Ok(Some(owner.user_id)),
        None => {
            let partner_id =
                crate::domain::inventory::adopt(txn, user_id, crate::domain::inventory::Kind::Store, store, now)?;
            txn.emit("store.claimed", now, Some(user_id), json!({ "uuid": store, "partnerId": partner_id }));
            Ok(None)
        }
    }
}

/// Page size when Evotor sends `page` without `size`.
pub const DEFAULT_PAGE_SIZE: u64 = 1000;

/// Up to `size` items of a store from item number `offset` on, as a JSON
/// array (the whole catalog with `size` = `u64::MAX`), their count and the
/// catalog's total. The array is built from the stored products as they
/// are, a scan page at a time, into one buffer sized from the first page,
/// so a large catalog fits the instance's memory.
pub(crate) fn products_page(
    ctx: &Ctx<'_>,
    store: &str,
    offset: u64,
    size: u64,
) -> Result<(Vec<u8>, u64, u64), ApiError> {
    let directory: Directory = storage::read(ctx.kv, &storage::catalog_directory_key(store))?.unwrap_or_default();
    let total = directory.total();
    let mut body = Vec::from(*b"[");
    let mut count = 0u64;
    if let Some((index, mut skip)) = directory.locate(offset) {
        let prefix = storage::products_prefix(store);
        let mut cursor = directory.ranges[index].after.as_ref().map(|after| format!("{prefix}{after}"));
        let wanted = size.min(total.saturating_sub(offset));
        while count < wanted {
            let limit = (wanted - count).saturating_add(skip).min(u64::from(crate::kv::MAX_SCAN_LIMIT)) as u32;
            let batch = ctx.kv.scan(&prefix, cursor.as_deref(), limit)?;
            let Some((last, _)) = batch.last() else { break };
            cursor = Some(last.clone());
            for (key, entry) in &batch {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                if count == wanted {
                    break;
                }
                let raw: RawProduct<'_> =
                    serde_json::from_slice(&entry.value).map_err(|_| StorageError::Corrupt(key.clone()))?;
                let item = raw.product.get().as_bytes();
                if count == 0 {
                    // Size the buffer once from the first item, with a quarter to spare.
                    let estimate = (item.len() as u64 + 1).saturating_mul(wanted).saturating_mul(5) / 4;
                    body.reserve_exact(usize::try_from(estimate).unwrap_or(usize::MAX).min(64 << 20));
                } else {
                    body.push(b',');
                }
                if body.capacity() - body.len() < item.len() + 1 {
                    // Grow by an eighth of what is left, not by doubling.
                    let left = usize::try_from(wanted - count).unwrap_or(usize::MAX);
                    body.reserve_exact((item.len() + 1).saturating_mul(left / 8 + 1));
                }
                body.extend_from_slice(item);
                count += 1;
            }
        }
    }
    body.push(b']');
    Ok((body, count, total))
}

/// The product of one of user `user_id`'s stores with barcode `scan_code`
/// (and excise code `alc_code`, when given), if any.
pub(crate) fn find_commodity(
    ctx: &Ctx<'_>,
    user_id: &str,
    scan_code: &str,
    alc_code: Option<&str>,
) -> Result<Option<Value>, ApiError> {
    let stores_prefix = storage::entities_prefix(user_id, "store");
    for (key, _) in storage::scan_all(ctx.kv, &stores_prefix)? {
        let Some(store) = key.strip_prefix(&stores_prefix) else { continue };
        for record in with_barcode(ctx, store, scan_code)? {
            let has_alc = |alc: &str| {
                record
                    .product
                    .get("alcoCodes")
                    .and_then(Value::as_array)
                    .is_some_and(|codes| codes.iter().any(|c| c == alc))
            };
            if alc_code.is_none_or(has_alc) {
                return Ok(Some(record.product));
            }
        }
    }
    Ok(None)
}

/// The items of `store` (lower case) whose `barCodes` hold `barcode`, by the barcode index.
pub(crate) fn with_barcode(ctx: &Ctx<'_>, store: &str, barcode: &str) -> Result<Vec<ProductRecord>, ApiError> {
    let prefix = storage::barcode_prefix(store, barcode);
    let mut found = Vec::new();
    for (key, _) in storage::scan_all(ctx.kv, &prefix)? {
        let Some(uuid) = key.strip_prefix(&prefix) else { continue };
        let Some(record) = storage::read::<ProductRecord>(ctx.kv, &storage::product_key(store, uuid))? else {
            continue;
        };
        let codes = record.product.get("barCodes").and_then(Value::as_array);
        if codes.is_some_and(|codes| codes.iter().any(|code| code == barcode)) {
            found.push(record);
        }
    }
    Ok(found)
}

/// Deletes the items `uuids` of `store` (`source`: who asked, for the
/// feed), in commits of [`DELETES_PER_COMMIT`]; how many there were.
pub(crate) fn delete_products(ctx: &Ctx<'_>, store: &str, uuids: &[String], source: &str) -> Result<usize, ApiError> {
    let owner = store_owner(ctx, store)?;
    let now = ctx.clock.now_unix();
    let mut deleted = 0;
    for run in uuids.chunks(DELETES_PER_COMMIT) {
        deleted += transact(ctx, |txn| delete_in(txn, store, owner.as_deref(), run, source, now, None))?;
    }
    Ok(deleted)
}

/// Within `txn`: deletes the items `uuids` of `store` of `owner`
/// (`evotor_at`: when Evotor made the deletion, Unix seconds, when it said);
/// how many there were.
pub(crate) fn delete_in(
    txn: &mut Txn<'_>,
    store: &str,
    owner: Option<&str>,
    uuids: &[String],
    source: &str,
    now: u64,
    evotor_at: Option<u64>,
) -> Result<usize, ApiError> {
    let mut change = Change::begin(txn, store, owner, source, now)?;
    let mut deleted = Vec::new();
    for uuid in uuids {
        if change.delete(uuid, evotor_at)? {
            deleted.push(uuid.as_str());
        }
    }
    if !deleted.is_empty() {
        change.finish()?;
        let data = json!({ "storeUuid": store, "source": source, "uuids": deleted });
        txn.emit("products.deleted", now, owner, data);
    }
    Ok(deleted.len())
}

#[cfg(test)]
mod tests;
