//! Who may call: the Evotor cloud's server credential.

use crate::config::Settings;
use crate::domain::billing::{self, Entitlement, Installation, Subscription};
use crate::domain::tokens;
use crate::errors::ApiError;
use crate::http::Request;
use crate::{Ctx, storage};
use base64::Engine as _;
use serde::Deserialize as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Config key of the bearer token the Evotor cloud sends.
pub const SERVER_BEARER_TOKEN: &str = "server_bearer_token";
/// Config key of the Basic user the Evotor cloud sends.
pub const SERVER_BASIC_USER: &str = "server_basic_user";
/// Config key of the Basic password the Evotor cloud sends.
pub const SERVER_BASIC_PASSWORD: &str = "server_basic_password";
/// Config key of the whole `Authorization` value the Evotor cloud sends
/// for Basic (`Basic dXNlcjpwYXNz`), as the developer portal shows it.
pub const SERVER_BASIC_CREDENTIAL: &str = "server_basic_credential";

/// Compares two secrets in time independent of their contents (and,
/// by comparing digests, of where they differ or how long they are).
pub fn secrets_equal(given: &[u8], expected: &[u8]) -> bool {
    Sha256::digest(given).ct_eq(&Sha256::digest(expected)).into()
}

/// Credentials presented in an `Authorization` header.
enum Presented {
    /// `Bearer <token>`, or a bare `<token>` without a scheme (the
    /// protocol page's own example sends user tokens that way).
    Bearer(String),
    /// `Basic <base64(user:password)>`, decoded.
    Basic(Vec<u8>),
}

/// Decodes base64 in either alphabet (standard or URL-safe), padded or not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(text)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, config).decode(text))
        .ok()
}

fn presented(request: &Request) -> Option<Presented> {
    let value = request.header_value("authorization")?.trim();
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
            Some(Presented::Bearer(rest.trim().to_owned()))
        }
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
            decode_base64(rest.trim()).map(Presented::Basic)
        }
        Some(_) => None,
        None if value.is_empty() => None,
        None => Some(Presented::Bearer(value.to_owned())),
    }
}

/// Succeeds only for a request carrying one of the configured server
/// credentials; otherwise 401 code 1001. With no credential configured
/// every request is refused: the server endpoints are never open.
pub fn require_server(ctx: &Ctx<'_>, request: &Request) -> Result<(), ApiError> {
    let (bearer, basic) = server_credentials(ctx);
    if bearer.is_none() && basic.is_none() {
        storage::log_once_a_day(
            ctx,
            "no-server-credential",
            &format!(
                "refusing every server endpoint: no server credential configured (set {SERVER_BEARER_TOKEN}, \
                 {SERVER_BASIC_CREDENTIAL}, or {SERVER_BASIC_USER} and {SERVER_BASIC_PASSWORD})"
            ),
        );
        return Err(ApiError::server_unauthorized());
    }
    if presents(request, bearer, basic) { Ok(()) } else { Err(ApiError::server_unauthorized()) }
}

/// The configured server bearer token and the accepted `user:password`
/// Basic pairs (from `server_basic_user`/`_password` and from
/// `server_basic_credential`).
fn server_credentials(ctx: &Ctx<'_>) -> (Option<String>, Option<Vec<Vec<u8>>>) {
    let bearer = ctx.config.non_empty(SERVER_BEARER_TOKEN);
    let mut basic = Vec::new();
    if let Some((user, password)) =
        ctx.config.non_empty(SERVER_BASIC_USER).zip(ctx.config.non_empty(SERVER_BASIC_PASSWORD))
    {
        basic.push(format!("{user}:{password}").into_bytes());
    }
    if let Some(credential) = ctx.config.non_empty(SERVER_BASIC_CREDENTIAL) {
        let credential = credential.trim();
        let encoded = match credential.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => rest.trim(),
            _ => credential,
        };
        match decode_base64(encoded) {
            Some(pair) => basic.push(pair),
            None => storage::log_once_a_day(
                ctx,
                "bad-basic-credential",
                &format!("{SERVER_BASIC_CREDENTIAL} is not `Basic <base64>`: ignoring it"),
            ),
        }
    }
    (bearer, (!basic.is_empty()).then_some(basic))
}

/// Whether the request presents one of the given credentials (constant time).
fn presents(request: &Request, bearer: Option<String>, basic: Option<Vec<Vec<u8>>>) -> bool {
    match presented(request) {
        Some(Presented::Bearer(token)) => bearer.is_some_and(|want| secrets_equal(token.as_bytes(), want.as_bytes())),
        Some(Presented::Basic(pair)) => {
            // Every configured pair is compared, so the time does not say which one matched.
            basic.is_some_and(|pairs| pairs.iter().fold(false, |found, want| secrets_equal(&pair, want) | found))
        }
        None => false,
    }
}

/// Whether the request carries a configured server credential (no log, no error).
pub fn is_server(ctx: &Ctx<'_>, request: &Request) -> bool {
    let (bearer, basic) = server_credentials(ctx);
    presents(request, bearer, basic)
}

/// The user a presented token was issued to, whatever the state of the
/// account or of the token's lifetime: for billing events, which must get
/// through to revive a lapsed or disabled account. Never issued (or
/// revoked) → 401 1002.
pub fn token_owner(ctx: &Ctx<'_>, request: &Request) -> Result<String, ApiError> {
    let token = match presented(request) {
        Some(Presented::Bearer(token)) if !token.is_empty() => token,
        _ => return Err(ApiError::unknown_token()),
    };
    storage::read::<storage::TokenIndex>(ctx.kv, &storage::token_key(&tokens::hash(&token)))?
        .map(|index| index.user_id)
        .ok_or_else(ApiError::unknown_token)
}

/// Reads the presented token's record together with `also` (keys the
/// request reads next), in one store call, ahead of [`require_user`].
pub fn prefetch(ctx: &Ctx<'_>, request: &Request, also: impl IntoIterator<Item = String>) {
    let token = match presented(request) {
        Some(Presented::Bearer(token)) if !token.is_empty() => Some(storage::token_key(&tokens::hash(&token))),
        _ => None,
    };
    let keys: Vec<String> = token.into_iter().chain(also).collect();
    ctx.kv.prefetch(&keys);
}

/// The Evotor user a request acts for: the one door of every user-scoped
/// endpoint. `Authorization: Bearer <user token>` (or the bare token) must
/// name exactly one user: unknown, revoked or replaced-past-grace token, or
/// a disabled account → 401 1002; past its lifetime → 401 1003. Then the
/// billing guard: the legacy tariff INACTIVE, or (with `billing_enforcement
/// = "evotor"`, for users the partner does not bill itself) no usable
/// subscription or the app uninstalled → 402 1004.
///
/// The token's record carries a copy of everything this decides from (its
/// [`storage::Grant`]), so one read, prefetched with the request's other
/// keys ([`prefetch`]), decides; a grant that is missing (records of earlier
/// versions), not trusted now, or incomplete leaves the decision to the
/// records themselves, and a missing or old one is then built again.
pub fn require_user(ctx: &Ctx<'_>, request: &Request, settings: &Settings) -> Result<String, ApiError> {
    let token = match presented(request) {
        Some(Presented::Bearer(token)) if !token.is_empty() => token,
        _ => return Err(ApiError::unknown_token()),
    };
    let hash = tokens::hash(&token);
    let Some(index) = storage::read::<storage::TokenIndex>(ctx.kv, &storage::token_key(&hash))? else {
        return Err(ApiError::unknown_token());
    };
    let now = ctx.clock.now_unix();
    let (grant, decided) = by_grant(&index, now, settings);
    if let Some(decided) = decided {
        return decided.map(|()| index.user_id);
    }
    let decided = decide_by_records(ctx, &index.user_id, &hash, now, settings);
    if grant.is_none() && !matches!(decided, Err(ApiError { code: 1002, .. })) {
        // The next request decides from the grant. Should this commit fail,
        // nothing is lost: the records decided this one, and the next
        // request tries again.
        let _ = storage::grants::refresh(ctx, &hash);
    }
    decided.map(|()| index.user_id)
}

/// The decision for the token `request` presents, made both ways: from its
/// grant (`None` when it is missing, not trusted now, or leaves it to the
/// records) and from the records; Evotor's error codes.
#[cfg(test)]
pub(crate) fn both_decisions(
    ctx: &Ctx<'_>,
    request: &Request,
    settings: &Settings,
) -> (Option<Result<(), u32>>, Result<(), u32>) {
    let Some(Presented::Bearer(token)) = presented(request) else { panic!("no bearer token") };
    let hash = tokens::hash(&token);
    let Some(index) = storage::read::<storage::TokenIndex>(ctx.kv, &storage::token_key(&hash)).expect("read") else {
        return (None, Err(ApiError::unknown_token().code));
    };
    let now = ctx.clock.now_unix();
    let code = |result: Result<(), ApiError>| result.map_err(|err| err.code);
    (by_grant(&index, now, settings).1.map(code), code(decide_by_records(ctx, &index.user_id, &hash, now, settings)))
}

/// The token's grant if it is trusted at `now`, and what it decides
/// (`None`: the records decide).
fn by_grant<'a>(
    index: &'a storage::TokenIndex,
    now: u64,
    settings: &Settings,
) -> (Option<&'a storage::Grant>, Option<Result<(), ApiError>>) {
    let grant = index.grant.as_ref().filter(|grant| storage::grants::trusted(grant, now));
    (grant, grant.and_then(|grant| decide_by_grant(grant, &index.user_id, now, settings)))
}

/// Decides from a trusted grant; `None` when the records must decide (an
/// incomplete grant, a copy this build cannot read, or a subscription that
/// reading would change: see [`Subscription::due_for_update`]).
fn decide_by_grant(
    grant: &storage::Grant,
    user_id: &str,
    now: u64,
    settings: &Settings,
) -> Option<Result<(), ApiError>> {
    if grant.partial {
        return None;
    }
    let installation: Option<Installation> = match &grant.installation {
        None => None,
        Some(value) => Some(Installation::deserialize(value).ok()?),
    };
    let subscriptions =
        grant.subscriptions.iter().map(Subscription::deserialize).collect::<Result<Vec<Subscription>, _>>().ok()?;
    if subscriptions.iter().any(|subscription| subscription.due_for_update(now, settings.gap_timeout_secs)) {
        return None;
    }
    Some(decide(user_id, Some(&grant.token), grant.account, grant.tariff.as_ref(), now, settings, || {
        Ok(Entitlement::of(installation.as_ref(), &subscriptions, now, settings))
    }))
}

/// Decides from the user's records.
fn decide_by_records(ctx: &Ctx<'_>, user_id: &str, hash: &str, now: u64, settings: &Settings) -> Result<(), ApiError> {
    let Some(user) = storage::read::<storage::UserRecord>(ctx.kv, &storage::user_key(user_id))? else {
        return Err(ApiError::unknown_token());
    };
    let issued = user.tokens.iter().find(|issued| issued.hash == hash);
    let account = match &user.account_id {
        None => None,
        Some(account_id) => {
            if settings.billing_enforced {
                // What the billing guard reads next, unless the account says the partner bills the user.
                ctx.kv.prefetch(&[storage::account_key(account_id), storage::installation_key(user_id)]);
            }
            let account = storage::read::<storage::Account>(ctx.kv, &storage::account_key(account_id))?;
            Some(storage::grants::account_grant(account.as_ref()))
        }
    };
    decide(user_id, issued, account, user.tariff.as_ref(), now, settings, || {
        billing::entitlement(ctx, user_id, settings)
    })
}

/// The decision, from its inputs however they were read: the token as the
/// user's record lists it (`None`: not listed), the linked account's state,
/// the legacy tariff, and the user's entitlement, asked for only when the
/// billing guard needs it.
fn decide(
    user_id: &str,
    issued: Option<&storage::IssuedToken>,
    account: Option<storage::AccountGrant>,
    tariff: Option<&storage::Tariff>,
    now: u64,
    settings: &Settings,
    entitlement: impl FnOnce() -> Result<Entitlement, ApiError>,
) -> Result<(), ApiError> {
    let issued = issued.ok_or_else(ApiError::unknown_token)?;
    match tokens::usable(issued, now, settings) {
        tokens::Status::Valid => {}
        tokens::Status::Expired => return Err(ApiError::expired_token()),
        tokens::Status::Unknown => return Err(ApiError::unknown_token()),
    }
    let has_billing = match account {
        None => false,
        Some(account) if account.usable => account.has_billing,
        Some(_) => return Err(ApiError::unknown_token()),
    };
    if tariff.is_some_and(|tariff| !tariff.active) {
        return Err(ApiError::payment_required(user_id));
    }
    if settings.billing_enforced && !has_billing && !entitlement()?.usable {
        return Err(ApiError::payment_required(user_id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Kv as _;
    use crate::{clock::FixedClock, config::MapConfig, kv::MemKv};
    use proptest::prelude::*;

    fn check(config: &MapConfig, authorization: Option<&str>) -> Result<(), ApiError> {
        let (kv, clock) = (MemKv::default(), FixedClock(0));
        let ctx = Ctx { kv: &kv, config, clock: &clock, http: &crate::outgoing::Scripted::default() };
        let mut request = Request::new("POST", "/api/v1/user/token");
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        require_server(&ctx, &request)
    }

    fn basic(pair: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    #[test]
    fn nothing_configured_refuses_everything() {
        let config = MapConfig::default();
        assert_eq!(check(&config, Some("Bearer ")).map_err(|e| e.code), Err(1001));
        assert_eq!(check(&config, Some(&basic(":"))).map_err(|e| e.code), Err(1001));
        let empty = MapConfig::from([(SERVER_BEARER_TOKEN, "")]);
        assert_eq!(check(&empty, Some("Bearer ")).map_err(|e| e.code), Err(1001));
    }

    #[test]
    fn a_missing_server_credential_is_logged_once_a_day() {
        let kv = MemKv::default();
        let config = MapConfig::default();
        let request = Request::new("POST", "/api/v1/user/token");
        let at = |clock: &FixedClock| {
            let ctx = Ctx { kv: &kv, config: &config, clock, http: &crate::outgoing::Scripted::default() };
            assert!(require_server(&ctx, &request).is_err());
            kv.get(&storage::meta_key("logged/no-server-credential")).expect("get").map(|e| e.version)
        };
        let first = at(&FixedClock(86_400 * 10 + 5));
        assert!(first.is_some(), "logged and remembered");
        assert_eq!(at(&FixedClock(86_400 * 10 + 500)), first, "not again the same day");
        assert_ne!(at(&FixedClock(86_400 * 11)), first, "again the next day");
    }

    #[test]
    fn bearer_token_is_accepted_only_exactly() {
        let config = MapConfig::from([(SERVER_BEARER_TOKEN, "s3cret")]);
        assert!(check(&config, Some("Bearer s3cret")).is_ok());
        assert!(check(&config, Some("bearer s3cret")).is_ok(), "scheme is case-insensitive");
        assert!(check(&config, Some("s3cret")).is_ok(), "a bare token without the scheme");
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "Bearer S3CRET", "s3cret2", "Basic s3cret", "Token s3cret"] {
            assert_eq!(check(&config, Some(wrong)).map_err(|e| e.code), Err(1001), "{wrong}");
        }
        assert_eq!(check(&config, None).map_err(|e| e.code), Err(1001));
    }

    #[test]
    fn basic_credentials_need_both_parts() {
        let config = MapConfig::from([(SERVER_BASIC_USER, "evotor"), (SERVER_BASIC_PASSWORD, "pw")]);
        assert!(check(&config, Some(&basic("evotor:pw"))).is_ok());
        assert!(check(&config, Some(&basic("evotor:pw2"))).is_err());
        assert!(check(&config, Some(&basic("other:pw"))).is_err());
        assert!(check(&config, Some("Basic !!!notbase64")).is_err());
        assert!(check(&config, Some("Bearer evotor:pw")).is_err(), "a Basic secret is not a bearer token");
        let user_only = MapConfig::from([(SERVER_BASIC_USER, "evotor")]);
        assert!(check(&user_only, Some(&basic("evotor:"))).is_err());
    }

    #[test]
    fn the_basic_credential_may_be_configured_as_the_header_value() {
        let header = basic("evotor:p@ss");
        for configured in [header.as_str(), header.trim_start_matches("Basic ")] {
            let config = MapConfig::from([(SERVER_BASIC_CREDENTIAL, configured)]);
            assert!(check(&config, Some(&header)).is_ok(), "{configured}");
            assert!(check(&config, Some(&basic("evotor:p@sS"))).is_err());
        }
        // `user:pa?>` encodes with `/` and `+` in one alphabet and `_`, `-` in the other.
        let pair = "user:pa?>>~~";
        let standard = base64::engine::general_purpose::STANDARD.encode(pair);
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair);
        assert_ne!(standard.trim_end_matches('='), url_safe);
        let config = MapConfig::from([(SERVER_BASIC_CREDENTIAL, standard.as_str())]);
        assert!(check(&config, Some(&format!("Basic {url_safe}"))).is_ok(), "either alphabet decodes");
        let config = MapConfig::from([(SERVER_BASIC_CREDENTIAL, url_safe.as_str())]);
        assert!(check(&config, Some(&format!("Basic {standard}"))).is_ok());
    }

    #[test]
    fn both_kinds_may_be_configured_at_once() {
        let config =
            MapConfig::from([(SERVER_BEARER_TOKEN, "tok"), (SERVER_BASIC_USER, "u"), (SERVER_BASIC_PASSWORD, "p")]);
        assert!(check(&config, Some("Bearer tok")).is_ok());
        assert!(check(&config, Some(&basic("u:p"))).is_ok());
    }

    proptest! {
        #[test]
        fn only_the_configured_token_passes(secret in "[!-~]{1,64}", guess in "[!-~]{0,64}") {
            let config = MapConfig::from([(SERVER_BEARER_TOKEN, secret.as_str())]);
            let result = check(&config, Some(&format!("Bearer {guess}")));
            prop_assert_eq!(result.is_ok(), guess == secret);
        }
    }
}
