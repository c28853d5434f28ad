//! Following the Evotor feed and relaying sales to the ERP.
//!
//! Keys of the plugin's store:
//!
//! | key | value |
//! |---|---|
//! | `fold/cursor` | the feed cursor everything before which is counted and queued |
//! | `sales/{storeId}` | [`Sales`]: the store's sales so far |
//! | `seen/{storeId}/{documentId}` | a sale counted (a document is never counted twice) |
//! | `relay/queue/{cursor}` | [`Delivery`]: a sale to post, in feed order |
//! | `dead/{documentId}` | [`Delivery`]: a sale whose last attempt failed |
//!
//! The cursor moves in the same commit as the counts and the queue, so a
//! crash, a redeploy or a restart between two pages loses nothing and
//! counts nothing twice: the next run reads the feed from where the last
//! commit left it.

use evogate_evotor::{Evotor, FeedEntry};
use evogate_plugin::Ctx;
use evogate_plugin::http::{Request, Response};
use evogate_plugin::kv::{Check, Entry, KvError, Write};
use evogate_plugin::outgoing;
use hmac::Mac as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const CURSOR: &str = "fold/cursor";
const SALES: &str = "sales/";
const SEEN: &str = "seen/";
const QUEUE: &str = "relay/queue/";
const DEAD: &str = "dead/";
/// Feed entries read at once.
const FEED_PAGE: u32 = 200;
/// Queued deliveries looked at in one run.
const QUEUE_SCAN: u32 = 500;

/// A store's sales so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sales {
    /// Sale documents counted.
    pub count: u64,
    /// Their totals summed, in kopecks.
    pub kopecks: i64,
}

/// One sale on its way to the ERP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The document's id: the ERP's `Idempotency-Key`.
    pub document_id: String,
    /// Its store.
    pub store_id: String,
    /// The Evotor user it came from.
    pub user_id: String,
    /// What is posted, exactly (the signature is over these bytes).
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, Unix seconds.
    pub next_at: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// Why a run stopped short.
#[derive(Debug)]
pub enum Error {
    /// The store failed.
    Store(KvError),
    /// The Evotor plugin could not be read.
    Evotor(evogate_evotor::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Store(err) => write!(f, "the store failed: {err}"),
            Error::Evotor(err) => write!(f, "{err}"),
        }
    }
}

impl From<KvError> for Error {
    fn from(err: KvError) -> Self {
        Error::Store(err)
    }
}

impl From<evogate_evotor::Error> for Error {
    fn from(err: evogate_evotor::Error) -> Self {
        Error::Evotor(err)
    }
}

/// What one pass over the feed did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    /// Feed entries read.
    pub entries: usize,
    /// New sales counted and queued.
    pub sales: usize,
}

/// Reads the Evotor feed from the saved cursor until it is done or `until`
/// (Unix seconds) has passed: each new sale document is counted in its
/// store and queued for the ERP, a page at a time, the cursor moving with it.
pub fn follow_feed(ctx: &Ctx<'_>, evotor: &Evotor<'_>, until: u64) -> Result<Folded, Error> {
    let mut folded = Folded::default();
    loop {
        let cursor = ctx.kv.get(CURSOR)?;
        let after = cursor.as_ref().map(|entry| String::from_utf8_lossy(&entry.value).into_owned());
        let page = evotor.feed(after.as_deref(), FEED_PAGE, None)?;
        let Some(next) = page.next.clone().filter(|next| Some(next) != after.as_ref()) else { break };
        let mut sales = Vec::new();
        for entry in &page.items {
            if let Some(sale) = sale_of(evotor, entry)? {
                sales.push(sale);
            }
        }
        let counted = commit_page(ctx, cursor.as_ref(), &next, &sales)?;
        folded.entries += page.items.len();
        folded.sales += counted;
        if ctx.clock.now_unix() >= until {
            break;
        }
    }
    Ok(folded)
}

/// The sale a feed entry announces, read from the Evotor plugin: a
/// `document.received` of type `SELL` (not one kept apart, delivered into
/// another user's store); `None` for anything else, and for a document
/// gone since (retention).
fn sale_of(evotor: &Evotor<'_>, entry: &FeedEntry) -> Result<Option<(String, Delivery, i64)>, Error> {
    let data = &entry.data;
    if entry.kind != "document.received" || data["type"] != "SELL" || data["keptApart"] == true {
        return Ok(None);
    }
    let (Some(user), Some(store), Some(id)) =
        (entry.user_id.as_deref(), data["storeUuid"].as_str(), data["id"].as_str())
    else {
        return Ok(None);
    };
    let Some(document) = evotor.document(user, store, id)? else { return Ok(None) };
    let kopecks = document.total_kopecks().unwrap_or(0);
    let body = json!({
        "documentId": document.id, "storeId": document.store_uuid, "userId": document.user_id,
        "type": document.kind, "format": document.format, "total": crate::rubles(kopecks),
        "document": document.document,
    });
    let delivery = Delivery {
        document_id: document.id.clone(),
        store_id: document.store_uuid.clone(),
        user_id: document.user_id.clone(),
        body: body.to_string(),
        attempts: 0,
        next_at: 0,
        last_error: None,
    };
    Ok(Some((entry.cursor.clone(), delivery, kopecks)))
}

/// Counts and queues `sales` and moves the cursor to `next`, all in one
/// commit on the condition that the cursor is still `cursor`; a sale seen
/// before is skipped. How many were new.
fn commit_page(
    ctx: &Ctx<'_>,
    cursor: Option<&Entry>,
    next: &str,
    sales: &[(String, Delivery, i64)],
) -> Result<usize, Error> {
    let seen_keys: Vec<String> =
        sales.iter().map(|(_, sale, _)| format!("{SEEN}{}/{}", sale.store_id, sale.document_id)).collect();
    let mut stores: Vec<String> = sales.iter().map(|(_, sale, _)| sale.store_id.clone()).collect();
    stores.sort();
    stores.dedup();
    let sales_keys: Vec<String> = stores.iter().map(|store| format!("{SALES}{store}")).collect();
    let keys: Vec<String> = seen_keys.iter().chain(&sales_keys).cloned().collect();
    let found = evogate_plugin::kv::read_many(ctx.kv, &keys)?;
    let (seen, totals) = found.split_at(seen_keys.len());
    let mut checks = vec![match cursor {
        Some(entry) => Check::VersionIs(CURSOR.into(), entry.version),
        None => Check::Absent(CURSOR.into()),
    }];
    let mut writes = vec![Write::Set(CURSOR.into(), next.as_bytes().to_vec())];
    let mut per_store: Vec<Sales> =
        totals.iter().map(|entry| entry.as_ref().map(sales_of).unwrap_or_default()).collect();
    let mut new = 0;
    let mut counted = std::collections::BTreeSet::new();
    for (((queued_at, sale, kopecks), seen_key), seen) in sales.iter().zip(&seen_keys).zip(seen) {
        if seen.is_some() || !counted.insert(seen_key) {
            continue;
        }
        checks.push(Check::Absent(seen_key.clone()));
        writes.push(Write::Set(seen_key.clone(), b"1".to_vec()));
        let Ok(at) = stores.binary_search(&sale.store_id) else { continue };
        per_store[at].count += 1;
        per_store[at].kopecks = per_store[at].kopecks.saturating_add(*kopecks);
        writes.push(Write::Set(format!("{QUEUE}{queued_at}"), encode(sale)));
        new += 1;
    }
    for ((key, entry), sales) in sales_keys.iter().zip(totals).zip(&per_store) {
        checks.push(match entry {
            Some(entry) => Check::VersionIs(key.clone(), entry.version),
            None => Check::Absent(key.clone()),
        });
        writes.push(Write::Set(key.clone(), encode(sales)));
    }
    ctx.kv.commit(checks, writes)?;
    Ok(new)
}

fn sales_of(entry: &Entry) -> Sales {
    serde_json::from_slice(&entry.value).unwrap_or_default()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// The sales of `store` counted so far.
pub fn sales(ctx: &Ctx<'_>, store: &str) -> Result<Sales, KvError> {
    Ok(ctx.kv.get(&format!("{SALES}{store}"))?.as_ref().map(sales_of).unwrap_or_default())
}

/// What one run of deliveries did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Deliveries attempted.
    pub attempted: usize,
    /// Accepted by the ERP.
    pub delivered: usize,
    /// Failed, to be tried again later.
    pub retrying: usize,
    /// Failed for the last time: dead-lettered.
    pub dead: usize,
}

/// The relay's settings.
struct Settings {
    url: String,
    secret: String,
    backoff: u64,
    max_attempts: u32,
    timeout: std::time::Duration,
}

/// Every setting the loyalty plugin reads.
pub const SETTINGS: &[&str] =
    &["erp_url", "erp_secret", "relay_max_attempts", "relay_backoff_secs", "relay_timeout_secs", "evotor_plugin"];

/// What is wrong with the relay's settings as configured (those set; the
/// ERP's address and secret may come later: the relay waits for them).
pub fn problems(config: &dyn evogate_plugin::config::Config) -> Vec<evogate_plugin::config::Problem> {
    use evogate_plugin::config::Config as _;
    let mut given = evogate_plugin::config::MapConfig::default();
    for key in SETTINGS {
        if let Some(value) = config.get(key) {
            given.0.insert((*key).to_owned(), value);
        }
    }
    for (key, placeholder) in [("erp_url", "https://erp.invalid"), ("erp_secret", "-")] {
        given.0.entry(key.to_owned()).or_insert_with(|| placeholder.to_owned());
    }
    if let Some(url) =
        given.non_empty("erp_url").filter(|url| !url.starts_with("http://") && !url.starts_with("https://"))
    {
        return vec![evogate_plugin::config::Problem::new(
            "erp_url",
            format!("erp_url = {url:?} must be an http:// or https:// URL"),
        )];
    }
    match settings(&given) {
        Ok(_) => Vec::new(),
        Err(why) => vec![evogate_plugin::config::Problem::new("", why)],
    }
}

fn settings(config: &dyn evogate_plugin::config::Config) -> Result<Settings, String> {
    let number = |name: &str, default: u64| -> Result<u64, String> {
        match config.non_empty(name) {
            None => Ok(default),
            Some(text) => text.trim().parse().map_err(|_| format!("{name} = {text:?} is not a whole number")),
        }
    };
    let url = config.non_empty("erp_url").ok_or("erp_url is not set")?;
    let secret = config.non_empty("erp_secret").ok_or("erp_secret is not set")?;
    let max_attempts =
        u32::try_from(number("relay_max_attempts", 5)?).map_err(|_| "relay_max_attempts is too large")?;
    if max_attempts == 0 {
        return Err("relay_max_attempts must be at least 1".into());
    }
    Ok(Settings {
        url,
        secret,
        backoff: number("relay_backoff_secs", 30)?.max(1),
        max_attempts,
        timeout: std::time::Duration::from_secs(number("relay_timeout_secs", 10)?.max(1)),
    })
}

/// Posts the queued sales that are due, oldest first, until `until`
/// (Unix seconds): accepted ones leave the queue; a 5xx, 408, 429, a
/// time-out or no connection is tried again after `relay_backoff_secs`,
/// doubling each time; the last of `relay_max_attempts`, or an answer that
/// no retry changes (another 4xx), moves the sale to the dead letters.
pub fn relay(ctx: &Ctx<'_>, until: u64) -> Result<Relayed, String> {
    let settings = settings(ctx.config)?;
    let mut done = Relayed::default();
    let queued = ctx.kv.scan(QUEUE, None, QUEUE_SCAN).map_err(|err| err.to_string())?;
    for (key, entry) in queued {
        let now = ctx.clock.now_unix();
        if now >= until {
            break;
        }
        let Ok(mut delivery) = serde_json::from_slice::<Delivery>(&entry.value) else { continue };
        if delivery.next_at > now {
            continue;
        }
        done.attempted += 1;
        let outcome = post(ctx, &settings, &delivery);
        delivery.attempts += 1;
        let check = vec![Check::VersionIs(key.clone(), entry.version)];
        let writes = match outcome {
            Ok(()) => {
                done.delivered += 1;
                vec![Write::Delete(key)]
            }
            Err((why, retry)) if retry && delivery.attempts < settings.max_attempts => {
                done.retrying += 1;
                let doubling = 1u64 << (delivery.attempts - 1).min(30);
                delivery.next_at = now.saturating_add(settings.backoff.saturating_mul(doubling));
                delivery.last_error = Some(why);
                vec![Write::Set(key, encode(&delivery))]
            }
            Err((why, _)) => {
                done.dead += 1;
                evogate_plugin::log::warn(&format!(
                    "loyalty: sale {} dead-lettered after {} attempts: {why}",
                    delivery.document_id, delivery.attempts
                ));
                delivery.last_error = Some(why);
                delivery.next_at = now;
                vec![Write::Delete(key), Write::Set(format!("{DEAD}{}", delivery.document_id), encode(&delivery))]
            }
        };
        // A conflict: a replay changed the entry meanwhile; it is looked at again next run.
        match ctx.kv.commit(check, writes) {
            Ok(()) | Err(KvError::Conflict) => {}
            Err(err) => return Err(err.to_string()),
        }
    }
    Ok(done)
}

/// Posts one sale: `Err((why, whether a retry may help))`.
fn post(ctx: &Ctx<'_>, settings: &Settings, delivery: &Delivery) -> Result<(), (String, bool)> {
    let signature = {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(settings.secret.as_bytes())
            .map_err(|err| (format!("erp_secret: {err}"), false))?;
        mac.update(delivery.body.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    let request = outgoing::Request {
        method: "POST".into(),
        url: settings.url.clone(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("idempotency-key".into(), delivery.document_id.clone()),
            ("x-signature".into(), signature),
        ],
        body: delivery.body.clone().into_bytes(),
        timeout: Some(settings.timeout),
    };
    match ctx.http.send(&request) {
        Ok(answer) if (200..300).contains(&answer.status) => Ok(()),
        Ok(answer) => {
            let retry = answer.status >= 500 || matches!(answer.status, 408 | 429);
            Err((format!("the ERP answered {}", answer.status), retry))
        }
        Err(outgoing::Error::Timeout) => Err(("the ERP did not answer in time".into(), true)),
        Err(err) => Err((format!("the ERP could not be reached: {err:?}"), true)),
    }
}

/// `GET /v1/dead-letters?after=`: the sales whose last attempt failed, in document id order.
pub fn dead_letters(ctx: &Ctx<'_>, request: &Request) -> Response {
    let after = request.query.split('&').find_map(|pair| pair.strip_prefix("after=")).filter(|after| !after.is_empty());
    let start = after.map(|after| format!("{DEAD}{after}"));
    match ctx.kv.scan(DEAD, start.as_deref(), 100) {
        Ok(page) => {
            let items: Vec<Value> = page
                .iter()
                .filter_map(|(_, entry)| serde_json::from_slice::<Delivery>(&entry.value).ok())
                .map(|dead| {
                    json!({
                        "documentId": dead.document_id, "storeId": dead.store_id, "userId": dead.user_id,
                        "attempts": dead.attempts, "lastError": dead.last_error, "failedAt": dead.next_at,
                    })
                })
                .collect();
            let next = page.last().map(|(key, _)| &key[DEAD.len()..]);
            Response::json(200, &json!({ "items": items, "next": next }))
        }
        Err(err) => crate::error(503, 503, &format!("store unavailable: {err}"), None),
    }
}

/// `POST /v1/dead-letters/{documentId}/replay`: the sale goes back into
/// the queue, due now, with its attempts counted afresh (202); 404 when
/// it is not a dead letter.
pub fn replay(ctx: &Ctx<'_>, document_id: &str) -> Response {
    let key = format!("{DEAD}{document_id}");
    loop {
        let entry = match ctx.kv.get(&key) {
            Ok(Some(entry)) => entry,
            Ok(None) => return crate::error(404, 404, "not found", None),
            Err(err) => return crate::error(503, 503, &format!("store unavailable: {err}"), None),
        };
        let Ok(mut delivery) = serde_json::from_slice::<Delivery>(&entry.value) else {
            return crate::error(500, 500, "a dead letter that cannot be read", None);
        };
        delivery.attempts = 0;
        delivery.next_at = 0;
        // Behind everything queued from the feed so far, by the replay's own position.
        let queued = format!("{QUEUE}~replay/{}", delivery.document_id);
        let writes = vec![Write::Delete(key.clone()), Write::Set(queued, encode(&delivery))];
        match ctx.kv.commit(vec![Check::VersionIs(key.clone(), entry.version)], writes) {
            Ok(()) => return Response::json(202, &json!({ "documentId": delivery.document_id, "queued": true })),
            Err(KvError::Conflict) => continue,
            Err(err) => return crate::error(503, 503, &format!("store unavailable: {err}"), None),
        }
    }
}
