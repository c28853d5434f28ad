//! Who may call: the Evotor cloud's server credential, and users' tokens
//! (read here, decided by [`authorization`]).

use crate::config::Settings;
use crate::domain::{authorization, tokens};
use crate::errors::ApiError;
use crate::http::Request;
use crate::{Ctx, storage};
use base64::Engine as _;
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
/// The `user:password` bytes of `server_basic_credential`, written as the
/// developer portal shows the header (`Basic <base64>`) or the base64 alone.
pub(crate) fn basic_pair(credential: &str) -> Option<Vec<u8>> {
    let credential = credential.trim();
    let encoded = match credential.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => rest.trim(),
        _ => credential,
    };
    decode_base64(encoded)
}

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
        match basic_pair(&credential) {
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
/// name exactly one user, who must be authorized now
/// ([`authorization::authorize`]: 401 1002 or 1003, 402 1004 when not).
///
/// The token's record carries a copy of everything the decision needs (its
/// grant), so one read, prefetched with the request's other keys
/// ([`prefetch`]), decides.
pub fn require_user(ctx: &Ctx<'_>, request: &Request, settings: &Settings) -> Result<String, ApiError> {
    let token = match presented(request) {
        Some(Presented::Bearer(token)) if !token.is_empty() => token,
        _ => return Err(ApiError::unknown_token()),
    };
    authorization::authorize(ctx, &tokens::hash(&token), settings)
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
