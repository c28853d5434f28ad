//! The application's publisher token: what the application's event feed
//! and push notifications are asked with.
//!
//! A personal developer token (`evotor_publisher_token`) is used as it is
//! configured. An OAuth client (`evotor_oauth_client_id`,
//! `evotor_oauth_client_secret`, `evotor_oauth_refresh_token`) gets access
//! tokens that live about 30 minutes: the access token, the refresh token
//! and the expiry are kept in the store ([`KEY`]), and a token that expires
//! within [`RENEW_MARGIN_SECS`] (or none yet) is renewed first with
//! `POST {evotor_oauth_url}/oauth/token` (the refresh token in the form body). The
//! configured refresh token is only the first one: the OAuth server hands
//! out the next with each renewal, and the configured one is used again
//! only when it changes (the record keeps a SHA-256 of the configuration
//! it is for).
//!
//! Two instances may renew at once: the commit of a renewal holds only
//! while the record is as the renewal found it, and the one that loses
//! uses the winner's token (a refresh token the winner already spent may
//! then be refused: that refusal is not recorded either).
//!
//! A refused token is never silent: a renewal answered 400 or 401, or an
//! answer 401 or 403 of the cloud's API to the token ([`refused`]), marks it
//! refused in the record, notes a data issue (`publisher-token`) and adds
//! the feed entry `publisher-token.refused` `{status, path}`. While it is
//! refused nothing is asked with it; a changed configuration starts afresh,
//! and with OAuth a renewal is tried again [`RETRY_REFUSED_AFTER_SECS`]
//! after the API refused an access token (a renewal that succeeds clears
//! the refusal). Token values are never logged nor shown.

use crate::Ctx;
use crate::config::{CloudSettings, OAuthClient, Publisher, PublisherCredential};
use crate::domain::evotor_api::{clip, reset_secs, transport_failure};
use crate::domain::transact;
use crate::errors::ApiError;
use crate::outgoing;
use crate::storage::{self, Issue, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Key of the publisher token's state ([`PublisherState`]).
pub const KEY: &str = "publisher/token";
/// An access token expiring within this many seconds is renewed before use.
pub const RENEW_MARGIN_SECS: u64 = 60;
/// The lifetime of an access token whose answer gave none, seconds (Evotor's).
const DEFAULT_EXPIRES_IN: u64 = 1799;
/// How long after the API refused an OAuth access token one renewal is
/// tried again, seconds.
pub const RETRY_REFUSED_AFTER_SECS: u64 = 3600;
/// The path of the OAuth server's token endpoint.
pub const TOKEN_PATH: &str = "/oauth/token";

/// How the publisher token is had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A personal developer token, as configured.
    Personal,
    /// An OAuth access token, renewed.
    OAuth,
}

/// A publisher token to ask the cloud with now.
#[derive(Clone, PartialEq, Eq)]
pub struct PublisherToken {
    /// The application's id.
    pub app_id: String,
    /// How it was had.
    pub mode: Mode,
    token: String,
}

impl PublisherToken {
    /// The token, for `Authorization: Bearer`.
    pub fn bearer(&self) -> &str {
        &self.token
    }
}

impl std::fmt::Debug for PublisherToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherToken").field("app_id", &self.app_id).field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// Why there is no publisher token to ask with.
#[derive(Debug, Clone, PartialEq)]
pub enum Unusable {
    /// The publisher settings are not configured.
    Missing,
    /// The token was refused: nothing is asked with it.
    Refused(Refusal),
    /// The renewal failed in a way worth trying again later (5xx, no
    /// answer in time, 429, an answer that is not a token).
    Retry {
        /// The OAuth server's status, when it answered.
        status: Option<u16>,
        /// What went wrong.
        message: String,
        /// After a 429: how long to wait, seconds.
        reset_secs: Option<u64>,
    },
    /// The store failed.
    Store(ApiError),
}

impl From<StorageError> for Unusable {
    fn from(err: StorageError) -> Self {
        Unusable::Store(err.into())
    }
}

impl From<ApiError> for Unusable {
    fn from(err: ApiError) -> Self {
        Unusable::Store(err)
    }
}

/// Why and when the token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// The status of the refusal.
    pub status: u16,
    /// The answer's message.
    pub message: String,
    /// When, Unix seconds.
    pub at: u64,
    /// The path that refused it (`/oauth/token`, or the API's).
    pub path: String,
    /// Whether the renewal was refused (the refresh token is spent), not an
    /// access token by the API.
    #[serde(default)]
    pub by_renewal: bool,
}

/// A renewal that went wrong without a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failed {
    /// The OAuth server's status, when it answered.
    pub status: Option<u16>,
    /// What went wrong.
    pub message: String,
    /// When, Unix seconds.
    pub at: u64,
}

/// The publisher token's state ([`KEY`]).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublisherState {
    /// Storage format version.
    pub v: u32,
    /// SHA-256 of the configuration this state is for (the personal token,
    /// or the OAuth client and its first refresh token): another one starts afresh.
    pub configured: String,
    /// The OAuth access token.
    #[serde(default)]
    pub access_token: Option<String>,
    /// The refresh token the next renewal uses.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// When the access token expires, Unix seconds.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// When the access token was last renewed, Unix seconds.
    #[serde(default)]
    pub refreshed_at: Option<u64>,
    /// Why the token is refused, if it is.
    #[serde(default)]
    pub refused: Option<Refusal>,
    /// The last renewal that failed, until one succeeds.
    #[serde(default)]
    pub last_error: Option<Failed>,
}

impl std::fmt::Debug for PublisherState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherState")
            .field("has_access_token", &self.access_token.is_some())
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("expires_at", &self.expires_at)
            .field("refreshed_at", &self.refreshed_at)
            .field("refused", &self.refused)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

impl PublisherState {
    fn new(configured: &str) -> Self {
        Self { v: storage::FORMAT, configured: configured.to_owned(), ..Self::default() }
    }

    /// The access token, when it is not refused and lives past the margin at `now`.
    fn usable_access(&self, now: u64) -> Option<&str> {
        let lives = self.expires_at.is_some_and(|at| at > now.saturating_add(RENEW_MARGIN_SECS));
        self.access_token.as_deref().filter(|_| lives && self.refused.is_none())
    }

    /// What a renewal's commit holds on: the tokens and the refusal, as found.
    fn generation(state: Option<&Self>) -> Option<(Option<&str>, Option<&str>, Option<u64>)> {
        state.map(|state| {
            (state.access_token.as_deref(), state.refresh_token.as_deref(), state.refused.as_ref().map(|r| r.at))
        })
    }
}

/// SHA-256 of the configured credential: a change of it starts afresh.
fn configured(publisher: &Publisher) -> String {
    match &publisher.credential {
        PublisherCredential::Personal(token) => storage::sha256_hex(format!("personal\n{token}").as_bytes()),
        PublisherCredential::OAuth(client) => storage::sha256_hex(
            format!("oauth\n{}\n{}\n{}", client.client_id, client.client_secret, client.seed).as_bytes(),
        ),
    }
}

fn mode(publisher: &Publisher) -> Mode {
    match publisher.credential {
        PublisherCredential::Personal(_) => Mode::Personal,
        PublisherCredential::OAuth(_) => Mode::OAuth,
    }
}

/// The stored state when it is of the configuration `configured`.
fn current(stored: Option<PublisherState>, configured: &str) -> Option<PublisherState> {
    stored.filter(|state| state.configured == configured)
}

/// A usable publisher token, renewed first when it must be (the renewal
/// waiting at most `timeout_secs`), or why there is none.
pub fn token(ctx: &Ctx<'_>, cloud: &CloudSettings, timeout_secs: u64) -> Result<PublisherToken, Unusable> {
    let Some(publisher) = &cloud.publisher else { return Err(Unusable::Missing) };
    let configured = configured(publisher);
    let stored: Option<PublisherState> = storage::read(ctx.kv, KEY)?;
    let state = current(stored, &configured);
    let now = ctx.clock.now_unix();
    let client = match &publisher.credential {
        PublisherCredential::Personal(token) => {
            return match state.and_then(|state| state.refused) {
                Some(refusal) => Err(Unusable::Refused(refusal)),
                None => {
                    Ok(PublisherToken { app_id: publisher.app_id.clone(), mode: Mode::Personal, token: token.clone() })
                }
            };
        }
        PublisherCredential::OAuth(client) => client,
    };
    if let Some(state) = &state {
        match &state.refused {
            Some(refusal) if refusal.by_renewal || now < refusal.at.saturating_add(RETRY_REFUSED_AFTER_SECS) => {
                return Err(Unusable::Refused(refusal.clone()));
            }
            Some(_) => {}
            None => {
                if let Some(token) = state.usable_access(now) {
                    let token = token.to_owned();
                    return Ok(PublisherToken { app_id: publisher.app_id.clone(), mode: Mode::OAuth, token });
                }
            }
        }
    }
    renew(ctx, publisher, client, &configured, state, timeout_secs)
}

/// What the OAuth server answered a renewal.
enum Renewal {
    Granted { access_token: String, refresh_token: Option<String>, expires_in: u64 },
    Refused { status: u16, message: String },
    Retry { status: Option<u16>, message: String, reset_secs: Option<u64> },
}

/// What a renewal's commit found.
enum Decided {
    /// The state was as the renewal found it: this is the state written.
    Written(PublisherState),
    /// Another renewal (or refusal) changed it meanwhile: the state now.
    Lost(Option<PublisherState>),
}

/// Renews the access token with the stored refresh token (or the
/// configured one), and stores the outcome in one commit that holds only
/// while the state is still `found`.
fn renew(
    ctx: &Ctx<'_>,
    publisher: &Publisher,
    client: &OAuthClient,
    configured: &str,
    found: Option<PublisherState>,
    timeout_secs: u64,
) -> Result<PublisherToken, Unusable> {
    let refresh_token =
        found.as_ref().and_then(|state| state.refresh_token.clone()).unwrap_or_else(|| client.seed.clone());
    let renewal = ask_renewal(ctx, client, &refresh_token, timeout_secs);
    let now = ctx.clock.now_unix();
    let app = publisher.app_id.as_str();
    let decided = transact(ctx, |txn| -> Result<Decided, ApiError> {
        let now_state = current(txn.get::<PublisherState>(KEY)?, configured);
        // A grant stands over whatever came meanwhile as long as nobody spent the refresh token it
        // used: a renewal refused meanwhile with that same token lost a race to this one.
        let unspent = now_state.as_ref().and_then(|state| state.refresh_token.as_deref()).unwrap_or(&client.seed)
            == refresh_token.as_str();
        let granted = matches!(renewal, Renewal::Granted { .. });
        if PublisherState::generation(now_state.as_ref()) != PublisherState::generation(found.as_ref())
            && !(granted && unspent)
        {
            return Ok(Decided::Lost(now_state));
        }
        let mut next = now_state.unwrap_or_else(|| PublisherState::new(configured));
        next.v = storage::FORMAT;
        match &renewal {
            Renewal::Granted { access_token, refresh_token: rotated, expires_in } => {
                next.access_token = Some(access_token.clone());
                next.refresh_token = Some(rotated.clone().unwrap_or_else(|| refresh_token.clone()));
                next.expires_at = Some(now.saturating_add(*expires_in));
                next.refreshed_at = Some(now);
                next.refused = None;
                next.last_error = None;
            }
            Renewal::Refused { status, message } => {
                next.access_token = None;
                next.expires_at = None;
                next.refused = Some(note_refusal(txn, app, *status, message, TOKEN_PATH, true, now));
            }
            Renewal::Retry { status, message, .. } => {
                next.last_error = Some(Failed { status: *status, message: message.clone(), at: now });
            }
        }
        txn.put(KEY, &next);
        Ok(Decided::Written(next))
    })?;
    let lost = match decided {
        Decided::Written(state) => match (renewal, state.access_token) {
            (Renewal::Granted { .. }, Some(token)) => {
                return Ok(PublisherToken { app_id: publisher.app_id.clone(), mode: Mode::OAuth, token });
            }
            (Renewal::Retry { status, message, reset_secs }, _) => {
                storage::log_once_a_day(
                    ctx,
                    "publisher-token-renewal",
                    &format!(
                        "the publisher token of application {app} could not be renewed: {message}; tried again at its next use"
                    ),
                );
                return Err(Unusable::Retry { status, message, reset_secs });
            }
            _ => match state.refused {
                Some(refusal) => {
                    evogate_plugin::log::warn(&format!(
                        "the OAuth server refused to renew the publisher token of application {app} ({})",
                        refusal.message
                    ));
                    return Err(Unusable::Refused(refusal));
                }
                None => None,
            },
        },
        Decided::Lost(state) => state,
    };
    // Another renewal won: its token, when it has a usable one.
    match lost {
        Some(PublisherState { refused: Some(refusal), .. }) => Err(Unusable::Refused(refusal)),
        Some(state) if state.usable_access(now).is_some() => {
            let token = state.usable_access(now).unwrap_or_default().to_owned();
            Ok(PublisherToken { app_id: publisher.app_id.clone(), mode: Mode::OAuth, token })
        }
        _ => Err(Unusable::Retry {
            status: None,
            message: "the publisher token was renewed elsewhere at the same time; asked again later".into(),
            reset_secs: None,
        }),
    }
}

/// Within a transaction: the data issue and the feed entry of a refused
/// token; the refusal to record.
fn note_refusal(
    txn: &mut storage::Txn<'_>,
    app: &str,
    status: u16,
    message: &str,
    path: &str,
    by_renewal: bool,
    now: u64,
) -> Refusal {
    let what = if by_renewal { "the OAuth server refused to renew" } else { "the Evotor cloud refused" };
    let problem = format!(
        "{what} the publisher token of application {app} ({message}, at {path}); nothing is asked with it until the publisher settings change"
    );
    txn.issue(now, Issue::new(None, "publisher-token", app, problem));
    txn.emit("publisher-token.refused", now, None, json!({ "status": status, "path": path }));
    Refusal { status, message: message.to_owned(), at: now, path: path.to_owned(), by_renewal }
}

/// `POST {evotor_oauth_url}/oauth/token` with the form
/// `grant_type=refresh_token&refresh_token=…` as its body (never in the
/// URL, which the gateway logs and traces), as the client (`Authorization:
/// Basic`), read as a token or why not.
fn ask_renewal(ctx: &Ctx<'_>, client: &OAuthClient, refresh_token: &str, timeout_secs: u64) -> Renewal {
    use base64::Engine as _;
    let encoded: String = form_urlencoded::byte_serialize(refresh_token.as_bytes()).collect();
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", client.client_id, client.client_secret));
    let request = outgoing::Request {
        method: "POST".into(),
        url: format!("{}{TOKEN_PATH}", client.url),
        headers: vec![
            ("authorization".into(), format!("Basic {basic}")),
            ("accept".into(), "application/json".into()),
            ("content-type".into(), "application/x-www-form-urlencoded".into()),
        ],
        body: format!("grant_type=refresh_token&refresh_token={encoded}").into_bytes(),
        timeout: Some(std::time::Duration::from_secs(timeout_secs)),
    };
    let response = match ctx.http.send(&request) {
        Ok(response) => response,
        Err(err) => {
            // A transport error may quote the URL: the refresh token in it never leaves this function.
            let message = transport_failure(&err, timeout_secs).replace(&encoded, "…").replace(refresh_token, "…");
            return Renewal::Retry { status: None, message, reset_secs: None };
        }
    };
    match response.status {
        200 => {
            #[derive(Deserialize)]
            struct Grant {
                access_token: String,
                #[serde(default)]
                refresh_token: Option<String>,
                #[serde(default)]
                expires_in: Option<Value>,
            }
            match serde_json::from_slice::<Grant>(&response.body) {
                Ok(grant) if !grant.access_token.is_empty() => Renewal::Granted {
                    access_token: grant.access_token,
                    refresh_token: grant.refresh_token.filter(|token| !token.is_empty()),
                    expires_in: grant
                        .expires_in
                        .and_then(|value| value.as_u64().or_else(|| value.as_str()?.trim().parse().ok()))
                        .unwrap_or(DEFAULT_EXPIRES_IN),
                },
                _ => Renewal::Retry {
                    status: Some(200),
                    message: "the OAuth server's answer holds no access_token".into(),
                    reset_secs: None,
                },
            }
        }
        400 | 401 => Renewal::Refused { status: response.status, message: message(&response) },
        429 => {
            Renewal::Retry { status: Some(429), message: message(&response), reset_secs: Some(reset_secs(&response)) }
        }
        status => Renewal::Retry { status: Some(status), message: message(&response), reset_secs: None },
    }
}

/// Records that the cloud's API answered `status` (401 or 403) with
/// `message` at `path` to `used`: the token is refused, unless it is no
/// longer the one in use (the configuration changed, or a renewal replaced
/// it meanwhile). Whether this call recorded the refusal.
pub fn refused(
    ctx: &Ctx<'_>,
    cloud: &CloudSettings,
    used: &PublisherToken,
    (status, message): (u16, &str),
    path: &str,
) -> Result<bool, ApiError> {
    let Some(publisher) = &cloud.publisher else { return Ok(false) };
    let configured = configured(publisher);
    let now = ctx.clock.now_unix();
    let recorded = transact(ctx, |txn| -> Result<bool, ApiError> {
        let mut state =
            current(txn.get::<PublisherState>(KEY)?, &configured).unwrap_or_else(|| PublisherState::new(&configured));
        let in_use = match &publisher.credential {
            PublisherCredential::Personal(token) => *token == used.token,
            PublisherCredential::OAuth(_) => state.access_token.as_deref() == Some(used.bearer()),
        };
        if !in_use || state.refused.is_some() {
            return Ok(false);
        }
        state.v = storage::FORMAT;
        state.access_token = None;
        state.expires_at = None;
        state.refused = Some(note_refusal(txn, &publisher.app_id, status, message, path, false, now));
        txn.put(KEY, &state);
        Ok(true)
    })?;
    if recorded {
        evogate_plugin::log::warn(&format!(
            "the Evotor cloud refused the publisher token of application {} (HTTP {status} at {path})",
            publisher.app_id
        ));
    }
    Ok(recorded)
}

/// The partner's view of the publisher token: never its value.
pub fn view(ctx: &Ctx<'_>, cloud: &CloudSettings) -> Result<Value, ApiError> {
    let Some(publisher) = &cloud.publisher else {
        return Ok(json!({
            "appId": null, "mode": null, "state": "missing", "expiresAt": null, "refreshedAt": null,
            "refused": null, "lastError": null,
        }));
    };
    let state = current(storage::read(ctx.kv, KEY)?, &configured(publisher)).unwrap_or_default();
    let refused = state.refused.as_ref().map(|r| json!({ "status": r.status, "message": r.message, "at": r.at }));
    Ok(json!({
        "appId": publisher.app_id,
        "mode": mode(publisher),
        "state": if refused.is_some() { "refused" } else { "usable" },
        "expiresAt": state.expires_at,
        "refreshedAt": state.refreshed_at,
        "refused": refused,
        "lastError": state.last_error,
    }))
}

/// An answer's error message: the cloud's `message` (else `code`), or
/// OAuth's `error` with its `error_description`, else the status alone.
pub fn message(response: &outgoing::Response) -> String {
    let body = serde_json::from_slice::<Value>(&response.body).ok();
    let field = |name: &str| body.as_ref().and_then(|body| body.get(name)).and_then(Value::as_str).map(clip);
    let oauth = field("error").map(|error| match field("error_description") {
        Some(description) => format!("{error}: {description}"),
        None => error,
    });
    let text = field("message").or(oauth).or_else(|| field("code")).unwrap_or_default();
    if text.is_empty() { format!("HTTP {}", response.status) } else { format!("HTTP {}: {text}", response.status) }
}

#[cfg(test)]
mod tests;
