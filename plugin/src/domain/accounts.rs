//! Partner accounts and the Evotor calls around them: `/user/create`,
//! `/user/verify`, `/user/token`, `/user/tariff` (all server-authorized),
//! and the partner API's creating, changing and deleting of accounts.

use crate::Ctx;
use crate::config::Settings;
use crate::domain::passwords;
use crate::domain::tokens;
use crate::domain::transact;
use crate::errors::ApiError;
use crate::input::{self, Fields, Object};
use crate::storage::{self, Account, LoginIndex, StorageError, Tariff, Txn, UserRecord};
use serde_json::{Value, json};

/// Longest Evotor cloud token accepted, in bytes.
pub const MAX_CLOUD_TOKEN_BYTES: usize = 4096;
/// Longest login or password, in characters.
pub const MAX_CREDENTIAL_CHARS: usize = 256;
/// Largest custom field value (as JSON), in bytes.
pub const MAX_FIELD_BYTES: usize = 4096;
/// Most custom fields one registration may carry.
pub const MAX_FIELDS: usize = 64;

/// A random account id: 128 bits as 32 hex digits.
pub fn new_account_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::internal("no randomness available"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Hashes a new password; a failure (unusable argon2 settings, no
/// randomness) is logged and answered 500.
pub fn hash_password(password: &str, settings: &Settings) -> Result<String, ApiError> {
    passwords::hash(password, settings).map_err(|why| {
        evogate_plugin::log::error(&format!("hashing a password failed: {why}"));
        ApiError::internal("password hashing failed")
    })
}

/// Refuses `login` when another account holds it (in any letter case):
/// 409 2005 about `subject`, the field that carried it.
fn login_free(txn: &mut Txn<'_>, login: Option<&str>, subject: &str) -> Result<(), ApiError> {
    if let Some(login) = login
        && txn.get::<LoginIndex>(&storage::login_key(login))?.is_some()
    {
        return Err(ApiError::already_exists(subject));
    }
    Ok(())
}

/// Stores the new `account` with the index of its login, and announces it.
fn insert(txn: &mut Txn<'_>, account: &Account, now: u64) -> Result<(), ApiError> {
    if txn.get::<Account>(&storage::account_key(&account.id))?.is_some() {
        return Err(ApiError::internal("account id collision"));
    }
    if let Some(login) = &account.login {
        txn.put(&storage::login_key(login), &LoginIndex { v: storage::FORMAT, account_id: account.id.clone() });
    }
    txn.put(&storage::account_key(&account.id), account);
    txn.emit("account.created", now, account.user_id.as_deref(), json!({ "accountId": account.id }));
    Ok(())
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
pub(crate) struct Registration {
    pub(crate) user_id: String,
    id_field: &'static str,
    login: Option<String>,
    password: Option<String>,
    fields: Object,
}

pub(crate) fn registration(body: Object, settings: &Settings) -> Result<Registration, ApiError> {
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

/// Whether `id` is an Evotor tariff code: `^[a-zA-Z0-9_-]+$`, at most 128.
pub(crate) fn is_tariff_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Registers `reg` (creating the account, or finding the identical one
/// registered before: Evotor retries) and issues a user token; another
/// account holding the user or the login is 409 2005.
pub(crate) fn register(ctx: &Ctx<'_>, settings: &Settings, reg: &Registration) -> Result<String, ApiError> {
    let now = ctx.clock.now_unix();
    // Hashing is slow: once, outside the retried transaction.
    let mut password_hash: Option<Option<String>> = None;
    transact(ctx, |txn| {
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
                            passwords::verify(password, account.password_hash.as_deref(), settings)
                        }
                        _ => false,
                    }
            });
            if !same {
                return Err(ApiError::already_exists(reg.id_field));
            }
        } else {
            login_free(txn, reg.login.as_deref(), &settings.login_field)?;
            let hash = match &mut password_hash {
                Some(hash) => hash.clone(),
                None => {
                    let hash = reg.password.as_deref().map(|password| hash_password(password, settings)).transpose()?;
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
            insert(txn, &account, now)?;
            user.account_id = Some(account.id);
        }
        let token = tokens::issue(txn, &mut user, now, settings)?;
        txn.put(&storage::user_key(&reg.user_id), &user);
        Ok(token)
    })
}

/// Logs user `user_id` into the account of `login` and `password`, links
/// them, and issues a user token; with the account's `hasBilling`. Unknown
/// login, disabled account, no password or a wrong one: one answer.
pub(crate) fn log_in(
    ctx: &Ctx<'_>,
    settings: &Settings,
    user_id: &str,
    login: &str,
    password: &str,
) -> Result<(String, bool), ApiError> {
    // Unknown login, disabled account, no password or a wrong one: one
    // path, one full hash each, one answer.
    let account = match storage::read::<LoginIndex>(ctx.kv, &storage::login_key(login))? {
        Some(index) => storage::read::<Account>(ctx.kv, &storage::account_key(&index.account_id))?,
        None => None,
    };
    let stored_hash = account.as_ref().and_then(|account| account.password_hash.as_deref());
    let password_ok = passwords::verify(password, stored_hash, settings);
    let Some(account) = account.filter(|account| password_ok && !account.disabled) else {
        return Err(ApiError::wrong_credentials());
    };

    let now = ctx.clock.now_unix();
    transact(ctx, |txn| {
        let mut account =
            txn.get::<Account>(&storage::account_key(&account.id))?.ok_or_else(ApiError::wrong_credentials)?;
        let mut user =
            txn.get::<UserRecord>(&storage::user_key(user_id))?.unwrap_or_else(|| UserRecord::new(user_id, now));
        let account_taken = account.user_id.as_ref().is_some_and(|linked| *linked != user_id);
        let user_taken = user.account_id.as_ref().is_some_and(|linked| *linked != account.id);
        if account_taken || user_taken {
            return Err(ApiError::already_linked());
        }
        if account.user_id.is_none() {
            account.user_id = Some(user_id.to_owned());
            account.updated_at = now;
            txn.put(&storage::account_key(&account.id), &account);
            txn.emit("account.linked", now, Some(user_id), json!({ "accountId": account.id }));
        }
        user.account_id = Some(account.id.clone());
        let token = tokens::issue(txn, &mut user, now, settings)?;
        txn.put(&storage::user_key(user_id), &user);
        Ok((token, account.has_billing))
    })
}

/// Records user `user_id`'s tariff state (legacy `POST /api/v1/user/tariff`).
pub(crate) fn set_tariff(ctx: &Ctx<'_>, user_id: &str, tariff_id: &str, active: bool) -> Result<(), ApiError> {
    let now = ctx.clock.now_unix();
    transact(ctx, |txn| -> Result<(), StorageError> {
        let mut user =
            txn.get::<UserRecord>(&storage::user_key(user_id))?.unwrap_or_else(|| UserRecord::new(user_id, now));
        if user.tariff.as_ref().is_some_and(|known| known.tariff_id == tariff_id && known.active == active) {
            return Ok(());
        }
        user.tariff = Some(Tariff { tariff_id: tariff_id.to_owned(), active, updated_at: now });
        txn.put(&storage::user_key(user_id), &user);
        let status = if active { "ACTIVE" } else { "INACTIVE" };
        txn.emit("tariff.changed", now, Some(user_id), json!({ "tariffId": tariff_id, "status": status }));
        Ok(())
    })?;
    Ok(())
}

/// An account the partner creates (`POST /partner/v1/accounts`), its
/// request read and its password hashed.
pub(crate) struct NewAccount {
    pub(crate) login: Option<String>,
    pub(crate) password_hash: Option<String>,
    pub(crate) has_billing: bool,
    pub(crate) display_name: Option<String>,
    pub(crate) disabled: bool,
    pub(crate) fields: Object,
}

/// Creates the account `new`, linked to no Evotor user yet (`/user/verify`
/// links one); a login another account holds is 409 2005.
pub(crate) fn create(ctx: &Ctx<'_>, new: NewAccount) -> Result<Account, ApiError> {
    let now = ctx.clock.now_unix();
    let account = Account {
        v: storage::FORMAT,
        id: new_account_id()?,
        login: new.login,
        password_hash: new.password_hash,
        has_billing: new.has_billing,
        display_name: new.display_name,
        disabled: new.disabled,
        user_id: None,
        fields: new.fields,
        created_at: now,
        updated_at: now,
    };
    transact(ctx, |txn| {
        login_free(txn, account.login.as_deref(), "login")?;
        insert(txn, &account, now)
    })?;
    Ok(account)
}

/// What the partner changes of an account (`PATCH /partner/v1/accounts/{id}`):
/// each `None` leaves its field as it is; the password comes hashed.
pub(crate) struct AccountChange {
    pub(crate) password_hash: Option<Option<String>>,
    pub(crate) has_billing: Option<bool>,
    pub(crate) disabled: Option<bool>,
    pub(crate) display_name: Option<Option<String>>,
}

/// Applies `change` to account `id`; no such account is 404.
pub(crate) fn update(ctx: &Ctx<'_>, id: &str, change: &AccountChange) -> Result<Account, ApiError> {
    let now = ctx.clock.now_unix();
    transact(ctx, |txn| -> Result<Account, ApiError> {
        let mut account = txn.get::<Account>(&storage::account_key(id))?.ok_or_else(ApiError::not_found)?;
        if let Some(hash) = &change.password_hash {
            account.password_hash.clone_from(hash);
        }
        if let Some(flag) = change.has_billing {
            account.has_billing = flag;
        }
        if let Some(flag) = change.disabled {
            account.disabled = flag;
        }
        if let Some(name) = &change.display_name {
            account.display_name.clone_from(name);
        }
        account.updated_at = now;
        txn.put(&storage::account_key(id), &account);
        Ok(account)
    })
}

/// Deletes account `id`: frees its login, unlinks its Evotor user and
/// revokes the user's tokens; no such account is 404.
pub(crate) fn delete(ctx: &Ctx<'_>, id: &str) -> Result<(), ApiError> {
    transact(ctx, |txn| -> Result<(), ApiError> {
        let account = txn.get::<Account>(&storage::account_key(id))?.ok_or_else(ApiError::not_found)?;
        if let Some(login) = &account.login {
            txn.delete(&storage::login_key(login));
        }
        if let Some(user_id) = &account.user_id
            && let Some(mut user) = txn.get::<UserRecord>(&storage::user_key(user_id))?
        {
            user.account_id = None;
            tokens::revoke_all(txn, &mut user);
            txn.put(&storage::user_key(user_id), &user);
        }
        txn.delete(&storage::account_key(id));
        Ok(())
    })
}

#[cfg(test)]
mod tests;
