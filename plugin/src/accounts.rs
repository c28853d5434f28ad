//! Partner accounts and the Evotor calls around them: `/user/create`,
//! `/user/verify`, `/user/token`, `/user/tariff` (all server-authorized).

use crate::config::Settings;
use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::input::{self, Fields, Object};
use crate::router::Params;
use crate::storage::{self, Account, LoginIndex, StorageError, Tariff, UserRecord};
use crate::{Ctx, auth, passwords, tokens};
use serde_json::{Value, json};

/// Longest Evotor cloud token accepted, in bytes.
pub const MAX_CLOUD_TOKEN_BYTES: usize = 4096;
/// Longest login or password, in characters.
pub const MAX_CREDENTIAL_CHARS: usize = 256;
/// Largest custom field value (as JSON), in bytes.
pub const MAX_FIELD_BYTES: usize = 4096;
/// Most custom fields one registration may carry.
pub const MAX_FIELDS: usize = 64;

/// The settings, or 500 when the operator configured something unreadable.
pub fn settings(ctx: &Ctx<'_>) -> Result<Settings, ApiError> {
    Settings::read(ctx.config).map_err(|why| {
        eprintln!("{why}");
        ApiError::internal("plugin misconfigured")
    })
}

/// A random account id: 128 bits as 32 hex digits.
pub fn new_account_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::internal("no randomness available"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks a login or password: a string of 1..=256 characters.
pub fn credential<'a>(value: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    let Value::String(text) = value else {
        return Err(ApiError::wrong_type(field, "a string"));
    };
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_CREDENTIAL_CHARS {
        // Never echo a credential: report its length only.
        return Err(ApiError::incorrect(field, format!("<{chars} characters>")));
    }
    Ok(text)
}

/// What `/user/create` asks for, validated.
struct Registration {
    user_id: String,
    id_field: &'static str,
    login: Option<String>,
    password: Option<String>,
    fields: Object,
}

fn registration(body: Object, settings: &Settings) -> Result<Registration, ApiError> {
    let (user_id, id_field) = input::user_id(&body)?;
    let mut fields = body;
    fields.remove("userId");
    fields.remove("userUuid");
    if fields.len() > MAX_FIELDS {
        return Err(ApiError::incorrect("customFields", format!("{} fields, at most {MAX_FIELDS}", fields.len())));
    }
    let text = |fields: &Object, field: &str| -> Result<Option<String>, ApiError> {
        Fields::of(fields).get(field).map(|value| credential(value, field).map(str::to_owned)).transpose()
    };
    let password = text(&fields, &settings.password_field)?;
    fields.remove(&settings.password_field);
    let login = text(&fields, &settings.login_field)?;
    for (name, value) in &fields {
        let size = value.to_string().len();
        if size > MAX_FIELD_BYTES || name.len() > MAX_CREDENTIAL_CHARS {
            return Err(ApiError::incorrect(name, format!("<{size} bytes>")));
        }
    }
    Ok(Registration { user_id, id_field, login, password, fields })
}

/// `POST /api/v1/user/create`: registers a partner account for an Evotor
/// user and returns a user token. The identical request again (Evotor
/// retries after timeouts) answers 200 with a new working token; another
/// account already holding this userId or this login is 409 2005.
pub fn create(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    auth::require_server(ctx, request)?;
    let settings = settings(ctx)?;
    let reg = registration(input::object(&request.body)?, &settings)?;
    let now = ctx.clock.now_unix();
    // Hashing is slow: once, outside the retried transaction.
    let mut password_hash: Option<Option<String>> = None;
    let token = storage::transact(ctx.kv, |txn| {
        let mut user = txn
            .get::<UserRecord>(&storage::user_key(&reg.user_id))?
            .unwrap_or_else(|| UserRecord::new(&reg.user_id, now));
        if let Some(account_id) = user.account_id.clone() {
            let account = txn.get::<Account>(&storage::account_key(&account_id))?;
            let same = account.is_some_and(|account| {
                account.fields == reg.fields
                    && account.login == reg.login
                    && match (&reg.password, &account.password_hash) {
                        (None, None) => true,
                        (Some(password), Some(_)) => {
                            passwords::verify(password, account.password_hash.as_deref(), &settings)
                        }
                        _ => false,
                    }
            });
            if !same {
                return Err(ApiError::already_exists(reg.id_field));
            }
        } else {
            if let Some(login) = &reg.login
                && txn.get::<LoginIndex>(&storage::login_key(login))?.is_some()
            {
                return Err(ApiError::already_exists(&settings.login_field));
            }
            let hash = match &mut password_hash {
                Some(hash) => hash.clone(),
                None => {
                    let hash = reg
                        .password
                        .as_deref()
                        .map(|password| passwords::hash(password, &settings))
                        .transpose()
                        .map_err(|why| {
                            eprintln!("hashing a password failed: {why}");
                            ApiError::internal("password hashing failed")
                        })?;
                    password_hash = Some(hash.clone());
                    hash
                }
            };
            let account = Account {
                v: storage::FORMAT,
                id: new_account_id()?,
                login: reg.login.clone(),
                password_hash: hash,
                has_billing: false,
                display_name: None,
                disabled: false,
                user_id: Some(reg.user_id.clone()),
                fields: reg.fields.clone(),
                created_at: now,
                updated_at: now,
            };
            if txn.get::<Account>(&storage::account_key(&account.id))?.is_some() {
                return Err(ApiError::internal("account id collision"));
            }
            if let Some(login) = &reg.login {
                txn.put(&storage::login_key(login), &LoginIndex { v: storage::FORMAT, account_id: account.id.clone() });
            }
            txn.put(&storage::account_key(&account.id), &account);
            txn.emit("account.created", now, Some(&reg.user_id), json!({ "accountId": account.id }));
            user.account_id = Some(account.id);
        }
        let token = tokens::issue(txn, &mut user, now, &settings)?;
        txn.put(&storage::user_key(&reg.user_id), &user);
        Ok(token)
    })?;
    // The two definitions disagree on the id's name in the answer: carry both.
    Ok(Response::json(200, &json!({ "userId": reg.user_id, "userUuid": reg.user_id, "token": token })))
}

/// `POST /api/v1/user/verify`: logs an Evotor user into an existing partner
/// account by login and password, links them, and returns a user token.
pub fn verify(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    auth::require_server(ctx, request)?;
    let settings = settings(ctx)?;
    let body = input::object(&request.body)?;
    let (user_id, _) = input::user_id(&body)?;
    let given = Fields::of(&body);
    let login = credential(given.required(&settings.login_field)?, &settings.login_field)?;
    let password = credential(given.required(&settings.password_field)?, &settings.password_field)?;

    // Unknown login, disabled account, no password or a wrong one: one
    // path, one full hash each, one answer.
    let account = match storage::read::<LoginIndex>(ctx.kv, &storage::login_key(login))? {
        Some(index) => storage::read::<Account>(ctx.kv, &storage::account_key(&index.account_id))?,
        None => None,
    };
    let stored_hash = account.as_ref().and_then(|account| account.password_hash.as_deref());
    let password_ok = passwords::verify(password, stored_hash, &settings);
    let Some(account) = account.filter(|account| password_ok && !account.disabled) else {
        return Err(ApiError::wrong_credentials());
    };

    let now = ctx.clock.now_unix();
    let (token, has_billing) = storage::transact(ctx.kv, |txn| {
        let mut account =
            txn.get::<Account>(&storage::account_key(&account.id))?.ok_or_else(ApiError::wrong_credentials)?;
        let mut user =
            txn.get::<UserRecord>(&storage::user_key(&user_id))?.unwrap_or_else(|| UserRecord::new(&user_id, now));
        let account_taken = account.user_id.as_ref().is_some_and(|linked| *linked != user_id);
        let user_taken = user.account_id.as_ref().is_some_and(|linked| *linked != account.id);
        if account_taken || user_taken {
            return Err(ApiError::already_linked());
        }
        if account.user_id.is_none() {
            account.user_id = Some(user_id.clone());
            account.updated_at = now;
            txn.put(&storage::account_key(&account.id), &account);
            txn.emit("account.linked", now, Some(&user_id), json!({ "accountId": account.id }));
        }
        user.account_id = Some(account.id.clone());
        let token = tokens::issue(txn, &mut user, now, &settings)?;
        txn.put(&storage::user_key(&user_id), &user);
        Ok((token, account.has_billing))
    })?;
    Ok(Response::json(
        200,
        &json!({ "userId": user_id, "userUuid": user_id, "hasBilling": has_billing, "token": token }),
    ))
}

/// `POST /api/v1/user/token`: Evotor hands over its cloud token for a user.
/// Latest wins; the token is never logged or echoed.
pub fn store_cloud_token(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    auth::require_server(ctx, request)?;
    let body = input::object(&request.body)?;
    let (user_id, _) = input::user_id(&body)?;
    let token = input::required_str(&body, "token")?;
    if token.is_empty() || token.len() > MAX_CLOUD_TOKEN_BYTES || token.chars().any(char::is_control) {
        // The value is a secret: say how long it was, never what it was.
        return Err(ApiError::incorrect("token", format!("<{} bytes>", token.len())));
    }
    storage::put_cloud_token(ctx.kv, &user_id, token, ctx.clock.now_unix())?;
    Ok(Response::empty(200))
}

/// Whether `id` is an Evotor tariff code: `^[a-zA-Z0-9_-]+$`, at most 128.
fn is_tariff_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `POST /api/v1/user/tariff` (legacy): records the user's tariff state;
/// while INACTIVE every user-authenticated call of the user answers 402.
pub fn tariff(ctx: &Ctx<'_>, request: &Request, _: &Params) -> Result<Response, ApiError> {
    auth::require_server(ctx, request)?;
    let body = input::object(&request.body)?;
    let (user_id, _) = input::user_id(&body)?;
    let tariff_id = input::required_str(&body, "tariffId")?;
    if !is_tariff_id(tariff_id) {
        return Err(ApiError::incorrect("tariffId", tariff_id));
    }
    let active = match input::required_str(&body, "status")? {
        "ACTIVE" => true,
        "INACTIVE" => false,
        other => return Err(ApiError::incorrect("status", other)),
    };
    let now = ctx.clock.now_unix();
    storage::transact(ctx.kv, |txn| -> Result<(), StorageError> {
        let mut user =
            txn.get::<UserRecord>(&storage::user_key(&user_id))?.unwrap_or_else(|| UserRecord::new(&user_id, now));
        if user.tariff.as_ref().is_some_and(|known| known.tariff_id == tariff_id && known.active == active) {
            return Ok(());
        }
        user.tariff = Some(Tariff { tariff_id: tariff_id.to_owned(), active, updated_at: now });
        txn.put(&storage::user_key(&user_id), &user);
        let status = if active { "ACTIVE" } else { "INACTIVE" };
        txn.emit("tariff.changed", now, Some(&user_id), json!({ "tariffId": tariff_id, "status": status }));
        Ok(())
    })?;
    Ok(Response::empty(200))
}

#[cfg(test)]
pub(crate) mod tests;
