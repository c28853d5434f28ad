//! What of a store's catalog waits to be published to the Evotor cloud,
//! and the rule between the partner's changes and Evotor's.
//!
//! Only the partner's own changes (`PUT …/products`, `POST …/products/delete`
//! of the partner API) are published; what came from Evotor (events, the
//! cloud sync, a terminal's `POST`) is not sent back. Each partner change of
//! an item gives it a new *version* and a pending entry
//! (`cat/{store}/pub/pending/{uuid}`), written in the commit of the change;
//! the sync job sends what is pending ([`crate::domain::sync`]) and, once
//! the cloud says a version is done, records it in the item's
//! [`Published`], so a version is sent once.
//!
//! **The conflict rule.** An Evotor change of an item whose partner version
//! is not published yet: the later change wins, by when each was made (the
//! event's `timestamp` or the cloud's `updated_at`; the arrival when Evotor
//! gave no time). A partner version already sent always wins: the cloud
//! applies it after the terminal's change. The losing version is kept
//! (`cat/{store}/pub/conflict/{uuid}`, listed by the publication status) and
//! a data issue names the item. An Evotor change that is the partner's own
//! publication coming back (same content, same quantity) changes nothing.

use crate::storage::{self, Issue, StorageError, Txn};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Key of the pending publication of an item.
pub fn pending_key(store: &str, uuid: &str) -> String {
    format!("cat/{store}/pub/pending/{uuid}")
}

/// Prefix of a store's pending publications.
pub fn pending_prefix(store: &str) -> String {
    format!("cat/{store}/pub/pending/")
}

/// Key of a store's publication state.
pub fn state_key(store: &str) -> String {
    format!("cat/{store}/pub/state")
}

/// Key of the items of a bulk task under way.
pub fn task_key(store: &str, task: &str) -> String {
    format!("cat/{store}/pub/task/{task}")
}

/// Key of the version that lost a conflict.
pub fn conflict_key(store: &str, uuid: &str) -> String {
    format!("cat/{store}/pub/conflict/{uuid}")
}

/// Prefix of a store's conflicts.
pub fn conflicts_prefix(store: &str) -> String {
    format!("cat/{store}/pub/conflict/")
}

/// Prefix of the stores with publication work.
pub const DUE_PREFIX: &str = "pub/due/";

/// Key of the mark that a store has publication work.
pub fn due_key(store: &str) -> String {
    format!("{DUE_PREFIX}{store}")
}

/// A partner version of an item not yet published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    /// Storage format version.
    pub v: u32,
    /// The partner's latest version of the item.
    pub version: u64,
    /// When the partner made it, Unix seconds.
    pub at: u64,
    /// The latest version is a deletion.
    pub deleted: bool,
    /// The item is a group (`/product-groups` in the cloud).
    pub group: bool,
    /// A version under way to the cloud: nothing else of the item is sent
    /// until it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending: Option<Sending>,
}

/// A version on its way to the cloud: marked before its request is sent,
/// so an Evotor change meanwhile cannot take its place unseen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sending {
    /// The cloud's task id, once it answered with one (`None`: the request
    /// is under way, or answered at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The version sent.
    pub version: u64,
    /// [`content_digest`] of what was sent (`None`: a deletion or a quantity alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The quantity sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<Value>,
}

/// What of an item the cloud holds from the partner: kept in its
/// [`super::ProductRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// The version.
    pub version: u64,
    /// [`content_digest`] of what was sent.
    pub digest: String,
    /// The quantity, as last sent (in a bulk or with `PATCH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<Value>,
}

/// The version that lost a conflict, kept for the partner to look at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    /// Storage format version.
    pub v: u32,
    /// The item.
    pub uuid: String,
    /// When it was decided, Unix seconds.
    pub at: u64,
    /// Whose version the catalog kept: `partner` or `evotor`.
    pub kept: String,
    /// When the partner's change was made, Unix seconds.
    pub partner_at: u64,
    /// When Evotor's change was made, Unix seconds.
    pub evotor_at: u64,
    /// The version that lost (`null`: a deletion).
    pub other: Value,
}

/// The v2 fields of a product the cloud takes (`PUT /stores/{id}/products`),
/// by their v1 names.
const PRODUCT_FIELDS: &[(&str, &str)] = &[
    ("uuid", "id"),
    ("parentUuid", "parent_id"),
    ("name", "name"),
    ("measureName", "measure_name"),
    ("tax", "tax"),
    ("allowToSell", "allow_to_sell"),
    ("price", "price"),
    ("costPrice", "cost_price"),
    ("description", "description"),
    ("articleNumber", "article_number"),
    ("code", "code"),
    ("barCodes", "barcodes"),
    ("type", "type"),
    ("alcoCodes", "alcocodes"),
    ("alcoholByVolume", "alcohol_by_volume"),
    ("alcoholProductKindCode", "alcohol_product_kind_code"),
    ("tareVolume", "tare_volume"),
    ("quantity", "quantity"),
    ("attributesChoices", "attributes_choices"),
    ("attributes_choices", "attributes_choices"),
];

/// The v2 fields of a group (`PUT /stores/{id}/product-groups`).
const GROUP_FIELDS: &[(&str, &str)] = &[
    ("uuid", "id"),
    ("parentUuid", "parent_id"),
    ("name", "name"),
    ("barCodes", "barcodes"),
    ("attributes", "attributes"),
];

/// The v2 object of a stored v1 item (the reverse of the events' mapping,
/// [`crate::domain::events::v1_item`]): the fields the cloud takes, by their
/// v2 names, `null`s left out (the cloud refuses `null`).
pub fn v2_item(product: &Value) -> Value {
    let group = is_group(product);
    let fields = if group { GROUP_FIELDS } else { PRODUCT_FIELDS };
    let mut out = Map::new();
    for (v1, v2) in fields {
        match product.get(*v1) {
            None | Some(Value::Null) => {}
            Some(value) => {
                out.insert((*v2).to_owned(), value.clone());
            }
        }
    }
    Value::Object(out)
}

/// Whether a stored item is a group.
pub fn is_group(product: &Value) -> bool {
    product.get("group").and_then(Value::as_bool).unwrap_or(false)
}

/// The item's quantity, when it has one.
pub fn quantity_of(product: &Value) -> Option<Value> {
    product.get("quantity").filter(|quantity| quantity.is_number()).cloned()
}

/// A digest of what a v1 item puts into the cloud but its quantity (which
/// changes apart, with sales): its v2 object with numbers as `f64` (the
/// cloud may send `100.0` for `100`) and keys sorted.
pub fn content_digest(product: &Value) -> String {
    fn canonical(value: &Value) -> Value {
        match value {
            Value::Number(number) => number.as_f64().map_or_else(|| value.clone(), |float| json!(float)),
            Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
            Value::Object(map) => {
                let sorted: std::collections::BTreeMap<_, _> = map.iter().map(|(k, v)| (k, canonical(v))).collect();
                json!(sorted)
            }
            other => other.clone(),
        }
    }
    let mut v2 = v2_item(product);
    if let Value::Object(fields) = &mut v2 {
        fields.remove("quantity");
    }
    storage::sha256_hex(canonical(&v2).to_string().as_bytes())[..32].to_owned()
}

/// Whether an Evotor `product` is what the partner published (`published`)
/// or is publishing (`sending`): its own change coming back.
fn is_echo(published: Option<&Published>, sending: Option<&Sending>, product: &Value) -> bool {
    let digest = content_digest(product);
    let quantity = quantity_of(product);
    let same = |sent: &str, sent_quantity: Option<&Value>| {
        sent == digest && quantities_equal(sent_quantity, quantity.as_ref())
    };
    published.is_some_and(|published| same(&published.digest, published.quantity.as_ref()))
        || sending
            .is_some_and(|sending| sending.digest.as_deref().is_some_and(|sent| same(sent, sending.quantity.as_ref())))
}

fn quantities_equal(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-9,
        (None, None) => true,
        _ => false,
    }
}

/// Within `txn`: a partner change of `uuid` in `store` (`deleted`: a
/// deletion; `group`: a group) makes a new version pending; `published`:
/// the version the cloud holds, if any.
pub(crate) fn partner_changed_from(
    txn: &mut Txn<'_>,
    store: &str,
    uuid: &str,
    deleted: bool,
    group: bool,
    now: u64,
    published: Option<&Published>,
) {
    let key = pending_key(store, uuid);
    let earlier = txn.get::<Pending>(&key).ok().flatten();
    let version =
        earlier.as_ref().map(|pending| pending.version).or(published.map(|published| published.version)).unwrap_or(0)
            + 1;
    let sending = earlier.and_then(|pending| pending.sending);
    txn.put(&key, &Pending { v: storage::FORMAT, version, at: now, deleted, group, sending });
    txn.put(&due_key(store), &json!({ "v": storage::FORMAT, "at": now }));
    // A new partner version settles any earlier conflict of the item.
    txn.delete(&conflict_key(store, uuid));
}

/// What the catalog does with an Evotor change of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Store it.
    Apply,
    /// Keep what the catalog holds.
    Keep,
}

/// Within `txn`: the verdict on an Evotor change of `uuid` in `store` of
/// `owner` (`incoming`: the item, `None`: a removal; made at `evotor_at`,
/// Unix seconds), given what the catalog holds (`held`: the product and
/// what of it is published) and whether the store has publication work at
/// all (`may_be_pending`: without it, no item of the store is pending and
/// nothing more is read). Records a conflict when there is one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn evotor_changed(
    txn: &mut Txn<'_>,
    store: &str,
    owner: Option<&str>,
    uuid: &str,
    incoming: Option<&Value>,
    held: Option<(&Value, Option<&Published>)>,
    evotor_at: u64,
    now: u64,
    may_be_pending: bool,
) -> Result<Verdict, StorageError> {
    let published = held.and_then(|(_, published)| published);
    let key = pending_key(store, uuid);
    let pending = if may_be_pending { txn.get::<Pending>(&key)? } else { None };
    if let Some(product) = incoming
        && is_echo(published, pending.as_ref().and_then(|pending| pending.sending.as_ref()), product)
    {
        return Ok(Verdict::Keep);
    }
    let Some(pending) = pending else { return Ok(Verdict::Apply) };
    // The same state again (a window read twice, say): nothing to decide.
    let same = match (incoming, held) {
        (Some(product), Some((held, _))) => product == held,
        (None, None) => true,
        _ => false,
    };
    if same {
        return Ok(Verdict::Apply);
    }
    let partner_wins = pending.sending.is_some() || pending.at >= evotor_at;
    let (kept, other) = if partner_wins {
        ("partner", incoming.cloned().unwrap_or(Value::Null))
    } else {
        ("evotor", if pending.deleted { Value::Null } else { held.map_or(Value::Null, |(product, _)| product.clone()) })
    };
    txn.put(
        &conflict_key(store, uuid),
        &Conflict {
            v: storage::FORMAT,
            uuid: uuid.to_owned(),
            at: now,
            kept: kept.to_owned(),
            partner_at: pending.at,
            evotor_at,
            other,
        },
    );
    let problem = format!(
        "changed in Evotor and by the partner before the partner's version was published: the {kept} version kept \
         (the later change; one already on its way always wins), the other kept in the store's publication status"
    );
    txn.issue(now, Issue::new(owner, "product", uuid, problem).in_store(store));
    if partner_wins {
        return Ok(Verdict::Keep);
    }
    // Evotor's change is the later: the partner's version is withdrawn.
    txn.delete(&key);
    Ok(Verdict::Apply)
}

/// The publication of one store, as the sync job left it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StoreState {
    /// Storage format version.
    pub v: u32,
    /// Bulk tasks under way, oldest first.
    pub running: Vec<TaskReport>,
    /// The last tasks done, newest last (at most [`KEPT_TASKS`]).
    pub done: Vec<TaskReport>,
    /// The last items the cloud did not take, newest last (at most [`KEPT_FAILURES`]).
    pub failed: Vec<FailedItem>,
    /// Nothing is sent before this time, Unix seconds.
    pub wait_until: Option<u64>,
    /// Why: `rate-limited` or `backoff`.
    pub wait_reason: Option<String>,
    /// Failed requests in a row.
    pub failures: u32,
    /// The last request that went wrong: `{at, status, message, path}`.
    pub last_error: Option<Value>,
    /// Why nothing can be sent: `no-owner` (nobody owns the store yet),
    /// `no-token` (its owner has no cloud token) or `token-refused`.
    pub blocked: Option<String>,
    /// The digest of the token the cloud refused: nothing is sent with it again.
    pub refused_token: Option<String>,
    /// Items published in all.
    pub published: u64,
    /// The last run that did something: `{at, requests, sent, published, failed}`.
    pub last_run: Option<Value>,
}

/// Tasks done kept in [`StoreState::done`].
pub const KEPT_TASKS: usize = 20;
/// Failed items kept in [`StoreState::failed`].
pub const KEPT_FAILURES: usize = 100;

/// One bulk task (or a synchronous request standing for one), as the partner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskReport {
    /// The cloud's task id (for a deletion or a quantity, which the cloud
    /// answers at once, a name of the request: `delete-…`, `quantity-…`).
    pub id: String,
    /// `products`, `product-groups`, `delete-products`, `delete-product-groups` or `quantities`.
    pub kind: String,
    /// `ACCEPTED`, `RUNNING`, `COMPLETED`, `FAILED`, `DECLINED`, or `ABANDONED`
    /// (no end within a day: its items are sent again).
    pub status: String,
    /// Items in it.
    pub items: u64,
    /// Items the cloud did not take.
    pub failed: u64,
    /// When it was sent, Unix seconds.
    pub sent_at: u64,
    /// When it was last asked about, Unix seconds.
    pub checked_at: u64,
    /// When it ended, Unix seconds.
    pub finished_at: Option<u64>,
}

/// An item the cloud did not take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedItem {
    /// The item.
    pub uuid: String,
    /// The version that failed (it is not sent again; the next change is).
    pub version: u64,
    /// The task.
    pub task: String,
    /// The cloud's reason.
    pub reason: String,
    /// When, Unix seconds.
    pub at: u64,
}

/// The items of a bulk task under way: what was sent of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskItems {
    /// Storage format version.
    pub v: u32,
    /// `(uuid, version, content digest, quantity)` of each item sent.
    pub items: Vec<(String, u64, String, Option<Value>)>,
}

/// Items a status page counts pending at most.
const STATUS_SCAN: usize = 100_000;

/// `GET /partner/v1/stores/{storeUuid}/publication`: what is pending, the
/// tasks under way and the last ones, the items the cloud did not take, the
/// conflicts, and why nothing is sent when nothing can be.
pub fn status(ctx: &crate::Ctx<'_>, store: &str) -> Result<Value, StorageError> {
    let state: StoreState = storage::read(ctx.kv, &state_key(store))?.unwrap_or_default();
    let owner =
        storage::read::<storage::OwnerIndex>(ctx.kv, &storage::owner_key("store", store))?.map(|owner| owner.user_id);
    let (mut upserts, mut deletes, mut sending, mut counted) = (0u64, 0u64, 0u64, 0usize);
    let prefix = pending_prefix(store);
    let mut cursor = None;
    while counted < STATUS_SCAN {
        let page = storage::collect(ctx.kv, &prefix, cursor.clone(), 1000)?;
        let Some((last, _)) = page.last() else { break };
        cursor = Some(last.clone());
        for (key, entry) in &page {
            let pending: Pending = storage::decode(key, &entry.value)?;
            counted += 1;
            match (&pending.sending, pending.deleted) {
                (Some(_), _) => sending += 1,
                (None, true) => deletes += 1,
                (None, false) => upserts += 1,
            }
        }
    }
    let conflicts: Vec<Conflict> = storage::collect(ctx.kv, &conflicts_prefix(store), None, 100)?
        .iter()
        .map(|(key, entry)| storage::decode(key, &entry.value))
        .collect::<Result<_, _>>()?;
    let now = ctx.clock.now_unix();
    let waiting = state.wait_until.filter(|until| *until > now);
    let phase = if state.blocked.is_some() {
        "blocked"
    } else if waiting.is_some() {
        "waiting"
    } else if upserts + deletes + sending > 0 || !state.running.is_empty() {
        "pending"
    } else {
        "idle"
    };
    let mut failed = state.failed.clone();
    failed.reverse();
    let mut done = state.done.clone();
    done.reverse();
    Ok(json!({
        "storeUuid": store,
        "ownerUserId": owner,
        "state": phase,
        "blocked": state.blocked,
        "pending": { "upserts": upserts, "deletes": deletes, "sending": sending, "complete": counted < STATUS_SCAN },
        "running": state.running,
        "tasks": done,
        "failedItems": failed,
        "conflicts": conflicts,
        "published": state.published,
        "waitUntil": waiting,
        "waitReason": waiting.and(state.wait_reason.clone()),
        "lastError": state.last_error,
        "lastRun": state.last_run,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_object_renames_and_drops_nulls_and_a_group_takes_only_its_fields() {
        let product = json!({"uuid": "a", "group": false, "name": "Cider", "parentUuid": null, "barCodes": ["1"],
            "measureName": "шт", "allowToSell": true, "price": 10, "quantity": 5, "costPrice": 7.5,
            "articleNumber": "C-1", "alcoCodes": ["x"], "tareVolume": 0.5, "type": "NORMAL", "tax": "VAT_18"});
        assert_eq!(
            v2_item(&product),
            json!({"id": "a", "name": "Cider", "barcodes": ["1"], "measure_name": "шт", "allow_to_sell": true,
                "price": 10, "quantity": 5, "cost_price": 7.5, "article_number": "C-1", "alcocodes": ["x"], "tare_volume": 0.5,
                "type": "NORMAL", "tax": "VAT_18"})
        );
        let group = json!({"uuid": "g", "group": true, "name": "Drinks", "parentUuid": "p", "price": 1});
        assert_eq!(v2_item(&group), json!({"id": "g", "name": "Drinks", "parent_id": "p"}));
    }

    #[test]
    fn the_digest_does_not_see_how_a_number_is_written_nor_the_quantity() {
        let a = json!({"uuid": "a", "group": false, "name": "N", "price": 100, "quantity": 1});
        let b = json!({"uuid": "a", "group": false, "name": "N", "price": 100.0, "quantity": 2, "group2": 1});
        assert_eq!(content_digest(&a), content_digest(&b));
        let c = json!({"uuid": "a", "group": false, "name": "N", "price": 101});
        assert_ne!(content_digest(&a), content_digest(&c));
    }
}
