//! User tokens: what the Evotor cloud sends as `Authorization: Bearer …`
//! on a user's behalf after `/user/create` or `/user/verify`.
//!
//! A token is 256 bits from the CSPRNG, base64url without padding (43
//! characters of `[A-Za-z0-9_-]`). It is returned once; only its SHA-256 is
//! stored: in the user's record (with its state) and as an index to the user.

use crate::config::Settings;
use crate::errors::ApiError;
use crate::storage::{self, IssuedToken, TokenIndex, Txn, UserRecord};
use base64::Engine as _;

/// A new random token (plain text; hand it out once, store its hash).
pub fn generate() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::internal("no randomness available"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    storage::sha256_hex(token.as_bytes())
}

/// Issues a new token to `user` inside `txn`: the previous current token
/// starts its grace period, tokens whose grace is over are dropped.
pub fn issue(txn: &mut Txn<'_>, user: &mut UserRecord, now: u64, settings: &Settings) -> Result<String, ApiError> {
    let token = generate()?;
    for old in &mut user.tokens {
        old.superseded_at.get_or_insert(now);
    }
    user.tokens.retain(|old| {
        let keep = usable(old, now, settings) != Status::Unknown;
        if !keep {
            txn.delete(&storage::token_key(&old.hash));
        }
        keep
    });
    let hash = hash(&token);
    txn.put(&storage::token_key(&hash), &TokenIndex { v: storage::FORMAT, user_id: user.user_id.clone(), grant: None });
    user.tokens.push(IssuedToken { hash, issued_at: now, superseded_at: None });
    Ok(token)
}

/// Revokes every token of `user` inside `txn`.
pub fn revoke_all(txn: &mut Txn<'_>, user: &mut UserRecord) {
    for old in user.tokens.drain(..) {
        txn.delete(&storage::token_key(&old.hash));
    }
}

/// What a presented token is worth now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It works.
    Valid,
    /// It outlived `user_token_ttl_secs`.
    Expired,
    /// Never issued, revoked, or replaced longer ago than the grace period.
    Unknown,
}

/// The status of an issued token at `now`.
pub fn usable(token: &IssuedToken, now: u64, settings: &Settings) -> Status {
    if token.superseded_at.is_some_and(|at| now > at.saturating_add(settings.user_token_grace_secs)) {
        return Status::Unknown;
    }
    if settings.user_token_ttl_secs.is_some_and(|ttl| now > token.issued_at.saturating_add(ttl)) {
        return Status::Expired;
    }
    Status::Valid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bits_in_the_evotor_alphabet() {
        let token = generate().expect("token");
        assert_eq!(token.len(), 43);
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'='));
        assert_ne!(token, generate().expect("token"));
        assert_eq!(hash(&token).len(), 64);
    }

    #[test]
    fn grace_and_lifetime_are_inclusive_bounds() {
        let mut settings = Settings::read(&crate::config::MapConfig::default()).expect("defaults");
        settings.user_token_grace_secs = 100;
        let replaced = IssuedToken { hash: String::new(), issued_at: 0, superseded_at: Some(1000) };
        assert_eq!(usable(&replaced, 1100, &settings), Status::Valid);
        assert_eq!(usable(&replaced, 1101, &settings), Status::Unknown);
        settings.user_token_ttl_secs = Some(50);
        let current = IssuedToken { hash: String::new(), issued_at: 1000, superseded_at: None };
        assert_eq!(usable(&current, 1050, &settings), Status::Valid);
        assert_eq!(usable(&current, 1051, &settings), Status::Expired);
    }
}
