//! The partner's own API under `/partner/v1`, guarded by `partner_api_token`.
//!
//! Off (every path 404) unless `partner_api_token` is configured, so a
//! deployment never exposes it by accident. Errors use the Evotor format.
//!
//! | method, path | what |
//! |---|---|
//! | `POST /partner/v1/accounts` | create an account (`login`, `password`, `hasBilling`, `displayName`, `disabled`, `fields`) → 201 |
//! | `GET /partner/v1/accounts?after=&limit=` | accounts in id order, `next` = cursor of the next page |
//! | `GET /partner/v1/accounts/{id}` | one account |
//! | `PATCH /partner/v1/accounts/{id}` | change `password`, `hasBilling`, `displayName`, `disabled` |
//! | `DELETE /partner/v1/accounts/{id}` | delete; unlinks its Evotor user and revokes the user's tokens → 204 |
//! | `GET /partner/v1/users?after=&limit=` | Evotor users in id order |
//! | `GET /partner/v1/users/{userId}` | a user: linked account, Evotor cloud token, tariff, token status |
//! | `GET`, `POST /partner/v1/users/{userId}/sync` | the cloud sync of a user: where it stands; run it now |

use crate::Ctx;
use crate::config::settings;
use crate::domain::accounts::{self, AccountChange, NewAccount, credential, hash_password};
use crate::domain::tokens;
use crate::endpoints::request::{paging, query, require_partner, user_param};
use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::input::{self, Fields, Object};
use crate::storage::{self, Account, StorageError, UserRecord};
use serde_json::{Value, json};

fn account_view(account: &Account) -> Value {
    json!({
        "id": account.id,
        "login": account.login,
        "hasPassword": account.password_hash.is_some(),
        "hasBilling": account.has_billing,
        "displayName": account.display_name,
        "disabled": account.disabled,
        "userId": account.user_id,
        "fields": account.fields,
        "createdAt": account.created_at,
        "updatedAt": account.updated_at,
    })
}

fn valid_account_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn load_account(ctx: &Ctx<'_>, id: &str) -> Result<Account, ApiError> {
    if !valid_account_id(id) {
        return Err(ApiError::not_found());
    }
    storage::read::<Account>(ctx.kv, &storage::account_key(id))?.ok_or_else(ApiError::not_found)
}

fn optional_name(body: &Object) -> Result<Option<Option<String>>, ApiError> {
    match body.get("displayName") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(name)) if name.chars().count() <= 256 => Ok(Some(Some(name.clone()))),
        Some(Value::String(name)) => {
            Err(ApiError::incorrect("displayName", format!("<{} characters>", name.chars().count())))
        }
        Some(_) => Err(ApiError::wrong_type("displayName", "a string")),
    }
}

/// `POST /partner/v1/accounts`.
pub fn create_account(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let body = input::object(&request.body)?;
    let given = Fields::of(&body);
    let login = given.get("login").map(|value| credential(value, "login")).transpose()?.map(str::to_owned);
    let password_hash = match given.get("password") {
        None => None,
        Some(value) => Some(hash_password(credential(value, "password")?, &settings(ctx)?)?),
    };
    let fields = given.optional_object("fields")?.cloned().unwrap_or_default();
    if fields.len() > accounts::MAX_FIELDS {
        return Err(ApiError::incorrect("fields", format!("{} fields", fields.len())));
    }
    let new = NewAccount {
        login,
        password_hash,
        has_billing: Fields::of(&body).optional_bool("hasBilling")?.unwrap_or(false),
        display_name: optional_name(&body)?.flatten(),
        disabled: Fields::of(&body).optional_bool("disabled")?.unwrap_or(false),
        fields,
    };
    let account = accounts::create(ctx, new)?;
    Ok(Response::json(201, &account_view(&account)))
}

/// `GET /partner/v1/accounts`.
pub fn list_accounts(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let (after, limit) = paging(request)?;
    let (accounts, next) = storage::page::<Account>(ctx.kv, storage::ACCOUNTS_PREFIX, after, limit)?;
    let items: Vec<Value> = accounts.iter().map(account_view).collect();
    Ok(Response::json(200, &json!({ "items": items, "next": next })))
}

/// `GET /partner/v1/accounts/{accountId}`.
pub fn get_account(ctx: &Ctx<'_>, request: &Request, account_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    Ok(Response::json(200, &account_view(&load_account(ctx, account_id)?)))
}

/// `PATCH /partner/v1/accounts/{accountId}`.
pub fn update_account(ctx: &Ctx<'_>, request: &Request, account_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let id = load_account(ctx, account_id)?.id;
    let body = input::object(&request.body)?;
    if let Some(field) =
        body.keys().find(|k| !["password", "hasBilling", "displayName", "disabled"].contains(&k.as_str()))
    {
        return Err(ApiError::incorrect(field, "not changeable"));
    }
    let password_hash = match body.get("password") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(value) => Some(Some(hash_password(credential(value, "password")?, &settings(ctx)?)?)),
    };
    let change = AccountChange {
        password_hash,
        has_billing: Fields::of(&body).optional_bool("hasBilling")?,
        disabled: Fields::of(&body).optional_bool("disabled")?,
        display_name: optional_name(&body)?,
    };
    let account = accounts::update(ctx, &id, &change)?;
    Ok(Response::json(200, &account_view(&account)))
}

/// `DELETE /partner/v1/accounts/{accountId}`.
pub fn delete_account(ctx: &Ctx<'_>, request: &Request, account_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let id = load_account(ctx, account_id)?.id;
    accounts::delete(ctx, &id)?;
    Ok(Response::empty(204))
}

fn user_view(ctx: &Ctx<'_>, user_id: &str, user: Option<&UserRecord>) -> Result<Value, ApiError> {
    let settings = settings(ctx)?;
    let now = ctx.clock.now_unix();
    let account = match user.and_then(|user| user.account_id.as_deref()) {
        Some(id) => storage::read::<Account>(ctx.kv, &storage::account_key(id))?,
        None => None,
    };
    // Whether there is one and how it ends; the token itself only from its own endpoint.
    let cloud_token = storage::cloud_token(ctx.kv, user_id)?
        .map(|token| json!({ "last4": token_tail(&token.token), "receivedAt": token.received_at }));
    let tokens: Vec<Value> = user
        .map(|user| user.tokens.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|issued| {
            let status = match tokens::usable(issued, now, &settings) {
                tokens::Status::Valid if issued.superseded_at.is_some() => "grace",
                tokens::Status::Valid => "valid",
                tokens::Status::Expired => "expired",
                tokens::Status::Unknown => "revoked",
            };
            json!({ "issuedAt": issued.issued_at, "supersededAt": issued.superseded_at, "status": status })
        })
        .collect();
    let tariff = user.and_then(|user| user.tariff.as_ref()).map(|tariff| {
        json!({
            "tariffId": tariff.tariff_id,
            "status": if tariff.active { "ACTIVE" } else { "INACTIVE" },
            "updatedAt": tariff.updated_at,
        })
    });
    Ok(json!({
        "userId": user_id,
        "account": account.as_ref().map(account_view),
        "cloudToken": cloud_token,
        "tariff": tariff,
        "tokens": tokens,
    }))
}

/// The last four characters of a cloud token, enough to tell two apart;
/// nothing of a token shorter than 16 characters.
fn token_tail(token: &str) -> Option<String> {
    let count = token.chars().count();
    (count >= 16).then(|| token.chars().skip(count - 4).collect())
}

/// `GET /partner/v1/users/{userId}/cloud-token`: the user's Evotor cloud
/// token itself, for the partner's own calls to the cloud; each read is logged.
pub fn user_cloud_token(ctx: &Ctx<'_>, request: &Request, user_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    if !input::is_user_id(user_id) {
        return Err(ApiError::incorrect("userId", user_id));
    }
    let token = storage::cloud_token(ctx.kv, user_id)?.ok_or_else(ApiError::not_found)?;
    evogate_plugin::log::info(&format!("partner API: the Evotor cloud token of user {user_id} was read"));
    Ok(Response::json(200, &json!({ "token": token.token, "receivedAt": token.received_at })))
}

/// `GET /partner/v1/users/{userId}`: what the service knows about a user.
pub fn get_user(ctx: &Ctx<'_>, request: &Request, user_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    if !input::is_user_id(user_id) {
        return Err(ApiError::incorrect("userId", user_id));
    }
    let user = storage::read::<UserRecord>(ctx.kv, &storage::user_key(user_id))?;
    let cloud_token = storage::cloud_token(ctx.kv, user_id)?;
    if user.is_none() && cloud_token.is_none() {
        return Err(ApiError::not_found());
    }
    Ok(Response::json(200, &user_view(ctx, user_id, user.as_ref())?))
}

/// Event bytes one page of subscriptions answers at most: a subscription
/// whose events do not fit shows those that do (`eventsComplete: false`),
/// the next page starts after it.
const SUBSCRIPTION_PAGE_BYTES: usize = 4 << 20;

/// `GET /partner/v1/users/{userId}/subscriptions?after=&limit=`: each
/// subscription's state and events, paged by subscription id.
pub fn user_subscriptions(ctx: &Ctx<'_>, request: &Request, user_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let user_id = user_param(user_id)?;
    let (after, limit) = paging(request)?;
    let settings = settings(ctx)?;
    let (page, mut next) =
        crate::domain::billing::subscriptions_page(ctx, user_id, settings.gap_timeout_secs, after, limit)?;
    let mut items: Vec<Value> = Vec::with_capacity(page.len());
    let mut bytes = 0;
    for subscription in page {
        let prefix = storage::subscription_events_prefix(&subscription.subscription_id);
        let (mut events, mut complete, mut cursor) = (Vec::new(), true, None::<String>);
        'scan: loop {
            let entries = storage::collect(ctx.kv, &prefix, cursor.clone(), 100)?;
            let Some((last, _)) = entries.last() else { break };
            cursor = Some(last.clone());
            for (key, entry) in entries {
                if bytes + entry.value.len() > SUBSCRIPTION_PAGE_BYTES && !(items.is_empty() && events.is_empty()) {
                    complete = false;
                    break 'scan;
                }
                bytes += entry.value.len();
                events.push(serde_json::from_slice::<Value>(&entry.value).map_err(|_| StorageError::Corrupt(key))?);
            }
        }
        if !complete && !items.is_empty() {
            // It comes first on the next page, with the whole budget.
            next = items.last().and_then(|item| item["state"]["subscriptionId"].as_str().map(str::to_owned));
            break;
        }
        items.push(json!({ "state": subscription, "events": events, "eventsComplete": complete }));
    }
    Ok(Response::json(200, &json!({ "userId": user_id, "subscriptions": items, "next": next })))
}

/// `DELETE /partner/v1/users/{userId}/data`: erases everything stored for
/// the user; 200 when nothing is left, 202 when the user's data outgrew one
/// call (call again: it goes on where it stopped).
pub fn purge_user(ctx: &Ctx<'_>, request: &Request, user_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let user_id = user_param(user_id)?;
    let progress = crate::domain::purge::purge(ctx, user_id)?;
    let status = if progress.complete { 200 } else { 202 };
    Ok(Response::json(
        status,
        &json!({ "userId": user_id, "deleted": progress.deleted, "complete": progress.complete }),
    ))
}

/// `GET /partner/v1/users/{userId}/entitlement`: usable?, licensed devices, why not.
pub fn user_entitlement(ctx: &Ctx<'_>, request: &Request, user_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let user_id = user_param(user_id)?;
    let settings = settings(ctx)?;
    let entitlement = crate::domain::billing::entitlement(ctx, user_id, &settings)?;
    Ok(Response::json(
        200,
        &json!({ "userId": user_id, "enforced": settings.billing_enforced, "entitlement": entitlement }),
    ))
}

/// `GET /partner/v1/users`.
pub fn list_users(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let (after, limit) = paging(request)?;
    let (users, next) = storage::page::<UserRecord>(ctx.kv, storage::USERS_PREFIX, after, limit)?;
    let items = users.iter().map(|user| user_view(ctx, &user.user_id, Some(user))).collect::<Result<Vec<_>, _>>()?;
    Ok(Response::json(200, &json!({ "items": items, "next": next })))
}

/// `GET /partner/v1/users/{userId}/{stores,employees,devices}`: what Evotor mirrored for a user.
pub fn user_entities(ctx: &Ctx<'_>, request: &Request, user_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let user_id = user_param(user_id)?;
    let kind = match request.path.trim_end_matches('/').rsplit('/').next() {
        Some("stores") => "store",
        Some("employees") => "employee",
        Some("devices") => "device",
        _ => return Err(ApiError::not_found()),
    };
    let (after, limit) = paging(request)?;
    let removed = match query(request, "removed") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::incorrect("removed", other)),
    };
    let (records, next) =
        storage::page::<storage::EntityRecord>(ctx.kv, &storage::entities_prefix(user_id, kind), after, limit)?;
    // Removed entities (a removal event) are kept, and listed only when asked for.
    let items: Vec<Value> = records
        .into_iter()
        .filter(|record| removed || record.removed_at.is_none())
        .map(|record| {
            json!({
                "uuid": record.uuid, "partnerId": record.partner_id, "data": record.data,
                "updatedAt": record.updated_at, "removedAt": record.removed_at, "source": record.source,
            })
        })
        .collect();
    Ok(Response::json(200, &json!({ "items": items, "next": next })))
}

/// `GET /partner/v1/data-issues?after=&limit=`: what was accepted although
/// it looked wrong, one item per distinct issue with how often it was seen.
pub fn data_issues(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let (after, limit) = paging(request)?;
    let (issues, next) = storage::page::<storage::IssueRecord>(ctx.kv, storage::ISSUES_PREFIX, after, limit)?;
    let items: Vec<Value> = issues
        .into_iter()
        .map(|issue| {
            json!({
                "userId": issue.user_id, "storeUuid": issue.store_uuid, "entity": issue.entity,
                "entityId": issue.entity_id, "problem": issue.problem, "firstSeen": issue.first_seen,
                "lastSeen": issue.last_seen, "count": issue.count,
            })
        })
        .collect();
    Ok(Response::json(200, &json!({ "items": items, "next": next })))
}

/// Feed entries read at most for one page of one user's entries.
const USER_FEED_SCAN: usize = 5000;

/// Feed records one scan reads at most: each holds one commit's entries,
/// 32 KiB of them at most. A page's first scan reads 4, each next one twice
/// as many, so a page that one record fills reads little more than it.
const FEED_RECORDS_PER_SCAN: usize = 100;

/// `GET /partner/v1/feed?after=&limit=&userId=`: every accepted change in
/// commit order. `next` is where to resume: the last entry's cursor, or
/// `after` again when nothing new has happened. With `userId`, that user's
/// entries only, with the same cursors; a page reads at most
/// [`USER_FEED_SCAN`] entries, so it may hold none and still move `next` on.
pub fn feed(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let (after, limit) = paging(request)?;
    let user = query(request, "userId").map(user_param).transpose()?;
    // A cursor is a commit stamp: 20 digits, `.`, 6 digits.
    let well_formed = |cursor: &str| {
        cursor.len() == 27
            && cursor.bytes().enumerate().all(|(i, b)| if i == 20 { b == b'.' } else { b.is_ascii_digit() })
    };
    if let Some(after) = after
        && !well_formed(after)
    {
        return Err(ApiError::incorrect("after", after));
    }
    // A record holds a commit's entries: the scan starts at the cursor's
    // commit and skips its entries up to the cursor.
    let start = after.map(storage::feed_scan_start);
    let mut scan = storage::GrowingScan::new(ctx.kv, storage::FEED_PREFIX, start, 4, FEED_RECORDS_PER_SCAN);
    let (mut items, mut scanned) = (Vec::new(), 0);
    let mut last: Option<String> = None;
    'scan: while items.len() < limit as usize && scanned < USER_FEED_SCAN {
        let want = match user {
            None => limit as usize - items.len(),
            Some(_) => USER_FEED_SCAN - scanned,
        };
        let records = scan.next(want)?;
        if records.is_empty() {
            break;
        }
        for (key, record) in &records {
            for (cursor, feed) in storage::feed_entries(key, &record.value)? {
                if after.is_some_and(|after| cursor.as_str() <= after) {
                    continue;
                }
                scanned += 1;
                let wanted = user.is_none_or(|user| feed.user_id.as_deref() == Some(user));
                if wanted {
                    items.push(json!({ "cursor": cursor, "kind": feed.kind, "at": feed.at, "userId": feed.user_id, "data": feed.data }));
                }
                last = Some(cursor);
                if items.len() == limit as usize || scanned == USER_FEED_SCAN {
                    break 'scan;
                }
            }
        }
    }
    let next = last.or_else(|| after.map(str::to_owned));
    Ok(Response::json(200, &json!({ "items": items, "next": next })))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod openapi;
