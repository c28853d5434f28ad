//! The operator's settings for this plugin (`[plugins.config]`), read
//! through the SDK's [`Config`] into typed settings with their defaults.

pub use evogate_plugin::config::*;

/// Default argon2id memory cost, KiB (OWASP's minimum for argon2id).
pub const DEFAULT_ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Default argon2id passes.
pub const DEFAULT_ARGON2_ITERATIONS: u32 = 2;
/// Default time a subscription may stay unpaid (`PENDING`) and still be used.
pub const DEFAULT_PENDING_GRACE_SECS: u64 = 3 * 86_400;
/// Default longest wait for a missing event: just over Evotor's three days of retries.
pub const DEFAULT_GAP_TIMEOUT_SECS: u64 = 3 * 86_400 + 3600;

/// The plugin's typed settings, read from [`Config`] with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Custom field of `/user/create` and `/user/verify` holding the login (`login_field`).
    pub login_field: String,
    /// Custom field holding the password (`password_field`).
    pub password_field: String,
    /// Lifetime of a user token, if limited (`user_token_ttl_secs`).
    pub user_token_ttl_secs: Option<u64>,
    /// How long a replaced user token keeps working (`user_token_grace_secs`).
    pub user_token_grace_secs: u64,
    /// Argon2id memory in KiB (`password_argon2_memory_kib`).
    pub argon2_memory_kib: u32,
    /// Argon2id passes (`password_argon2_iterations`).
    pub argon2_iterations: u32,
    /// Argon2id lanes (`password_argon2_parallelism`).
    pub argon2_parallelism: u32,
    /// Whether Evotor's subscriptions gate user calls (`billing_enforcement`: `evotor` | `off`).
    pub billing_enforced: bool,
    /// How long an unpaid new subscription stays usable (`billing_pending_grace_secs`).
    pub pending_grace_secs: u64,
    /// How long events wait for a missing earlier one (`billing_gap_timeout_secs`).
    pub gap_timeout_secs: u64,
    /// Whether billing events are taken with the server credential only
    /// (`billing_events_auth`: `any` | `server`).
    pub billing_events_server_only: bool,
    /// How long documents and receipts are kept, by their own date
    /// (`retention_days`; none: for good).
    pub retention_days: Option<u64>,
    /// Most documents and receipts one user may have stored
    /// (`user_quota_records`; none: no quota).
    pub user_quota_records: Option<u64>,
}

/// The plugin-wide settings of the request or job at hand, or 500 when the
/// operator configured something unreadable (logged as an error).
pub fn settings(ctx: &crate::Ctx<'_>) -> Result<Settings, crate::errors::ApiError> {
    Settings::read(ctx.config).map_err(|why| {
        evogate_plugin::log::error(&why);
        crate::errors::ApiError::internal("plugin misconfigured")
    })
}

impl Settings {
    /// Reads every setting; a malformed number is an error naming the key.
    pub fn read(config: &dyn Config) -> Result<Self, String> {
        fn number<T: std::str::FromStr>(config: &dyn Config, key: &str, default: T) -> Result<T, String> {
            match config.non_empty(key) {
                None => Ok(default),
                Some(text) => {
                    text.trim().parse().map_err(|_| format!("setting {key} = {text:?} is not a valid number"))
                }
            }
        }
        let ttl: u64 = number(config, "user_token_ttl_secs", 0)?;
        Ok(Self {
            login_field: config.non_empty("login_field").unwrap_or_else(|| "username".into()),
            password_field: config.non_empty("password_field").unwrap_or_else(|| "password".into()),
            user_token_ttl_secs: (ttl > 0).then_some(ttl),
            user_token_grace_secs: number(config, "user_token_grace_secs", 86_400)?,
            argon2_memory_kib: number(config, "password_argon2_memory_kib", DEFAULT_ARGON2_MEMORY_KIB)?,
            argon2_iterations: number(config, "password_argon2_iterations", DEFAULT_ARGON2_ITERATIONS)?,
            argon2_parallelism: number(config, "password_argon2_parallelism", 1)?,
            billing_enforced: match config.non_empty("billing_enforcement").as_deref() {
                None | Some("evotor") => true,
                Some("off") => false,
                Some(other) => {
                    return Err(format!("setting billing_enforcement = {other:?} must be \"evotor\" or \"off\""));
                }
            },
            pending_grace_secs: number(config, "billing_pending_grace_secs", DEFAULT_PENDING_GRACE_SECS)?,
            gap_timeout_secs: number(config, "billing_gap_timeout_secs", DEFAULT_GAP_TIMEOUT_SECS)?,
            user_quota_records: match number::<u64>(config, "user_quota_records", 0)? {
                0 => None,
                records => Some(records),
            },
            retention_days: match number::<u64>(config, "retention_days", 0)? {
                0 => None,
                days => Some(days),
            },
            billing_events_server_only: match config.non_empty("billing_events_auth").as_deref() {
                None | Some("any") => false,
                Some("server") => true,
                Some(other) => {
                    return Err(format!("setting billing_events_auth = {other:?} must be \"any\" or \"server\""));
                }
            },
        })
    }
}

/// Every setting the plugin reads (`[plugins.config]` keys): the gateway
/// refuses any other key, naming the nearest of these.
pub const SETTINGS: &[&str] = &[
    crate::endpoints::auth::SERVER_BEARER_TOKEN,
    crate::endpoints::auth::SERVER_BASIC_USER,
    crate::endpoints::auth::SERVER_BASIC_PASSWORD,
    crate::endpoints::auth::SERVER_BASIC_CREDENTIAL,
    crate::endpoints::request::PARTNER_API_TOKEN,
    "login_field",
    "password_field",
    "user_token_ttl_secs",
    "user_token_grace_secs",
    "password_argon2_memory_kib",
    "password_argon2_iterations",
    "password_argon2_parallelism",
    "billing_enforcement",
    "billing_pending_grace_secs",
    "billing_gap_timeout_secs",
    "billing_events_auth",
    "user_quota_records",
    "retention_days",
    crate::endpoints::events::EVENTS_WEBHOOK_PATH,
    crate::endpoints::events::EVENTS_WEBHOOK_SECRET,
    crate::endpoints::events::EVENTS_WEBHOOK_PREVIOUS_SECRET,
    crate::endpoints::events::EVENTS_WEBHOOK_ALLOW_UNSIGNED,
    crate::domain::documents::DOCUMENTS_WEBHOOK_PATH,
    "evotor_api_url",
    "evotor_api_auth",
    "evotor_app_id",
    "evotor_publisher_token",
    "evotor_oauth_client_id",
    "evotor_oauth_client_secret",
    "evotor_oauth_refresh_token",
    "evotor_oauth_url",
    "sync_max_requests_per_user",
    "sync_max_requests_per_run",
    "sync_overlap_secs",
    "sync_settle_secs",
    "sync_lookback_days",
    "sync_now_budget_secs",
    "sync_request_timeout_secs",
];

/// One reader of the settings: what it cannot read, as a sentence.
type Reader = fn(&dyn Config) -> Result<(), String>;

/// What is wrong with the values of `config`: every setting the plugin
/// could not work with, each on its own (a value read alone, over the
/// defaults; what that says of another setting is left for the next step),
/// then, when each is fine alone, what is wrong with them together (a
/// setting that needs another).
pub fn problems(config: &MapConfig) -> Vec<Problem> {
    let readers: [Reader; 3] =
        [|config| Settings::read(config).map(drop), |config| CloudSettings::read(config).map(drop), check_rest];
    let mut problems = Vec::new();
    for (key, value) in &config.0 {
        let alone = MapConfig([(key.clone(), value.clone())].into());
        let about_another = |why: &String| SETTINGS.iter().any(|other| *other != key && why.contains(*other));
        problems.extend(
            readers
                .iter()
                .filter_map(|read| read(&alone).err())
                .filter(|why| !about_another(why))
                .map(|why| Problem::new(key.clone(), why)),
        );
    }
    if problems.is_empty() {
        problems.extend(readers.iter().filter_map(|read| read(config).err()).map(|why| Problem::new("", why)));
    }
    problems
}

/// The settings [`Settings`] and [`CloudSettings`] do not read: paths,
/// flags, the server's Basic credential, the argon2 cost as a whole.
fn check_rest(config: &dyn Config) -> Result<(), String> {
    use crate::endpoints::auth::{SERVER_BASIC_CREDENTIAL, SERVER_BASIC_PASSWORD, SERVER_BASIC_USER};
    use crate::endpoints::events::{EVENTS_WEBHOOK_ALLOW_UNSIGNED, EVENTS_WEBHOOK_PATH};
    for key in [EVENTS_WEBHOOK_PATH, crate::domain::documents::DOCUMENTS_WEBHOOK_PATH] {
        if let Some(path) = config.non_empty(key).filter(|path| !path.starts_with('/')) {
            return Err(format!("setting {key} = {path:?} must be a path starting with '/' (or empty: off)"));
        }
    }
    if let Some(flag) = config.non_empty(EVENTS_WEBHOOK_ALLOW_UNSIGNED).filter(|flag| flag != "true" && flag != "false")
    {
        return Err(format!("setting {EVENTS_WEBHOOK_ALLOW_UNSIGNED} = {flag:?} must be \"true\" or \"false\""));
    }
    match (config.non_empty(SERVER_BASIC_USER), config.non_empty(SERVER_BASIC_PASSWORD)) {
        (Some(_), None) => return Err(format!("setting {SERVER_BASIC_USER} needs {SERVER_BASIC_PASSWORD} as well")),
        (None, Some(_)) => return Err(format!("setting {SERVER_BASIC_PASSWORD} needs {SERVER_BASIC_USER} as well")),
        _ => {}
    }
    if let Some(credential) = config.non_empty(SERVER_BASIC_CREDENTIAL)
        && crate::endpoints::auth::basic_pair(&credential).is_none_or(|pair| !pair.contains(&b':'))
    {
        return Err(format!(
            "setting {SERVER_BASIC_CREDENTIAL} must be `Basic <base64 of user:password>` (or the base64 alone)"
        ));
    }
    // An unreadable number is [`Settings::read`]'s to report.
    if let Ok(settings) = Settings::read(config) {
        argon2::Params::new(settings.argon2_memory_kib, settings.argon2_iterations, settings.argon2_parallelism, None)
            .map_err(|why| format!("settings password_argon2_*: not an argon2id cost ({why})"))?;
    }
    Ok(())
}

/// Default base URL of the Evotor cloud's REST API.
pub const DEFAULT_EVOTOR_API_URL: &str = "https://api.evotor.ru";

/// How the user's cloud token is sent to the Evotor cloud (`evotor_api_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudAuth {
    /// `Authorization: Bearer <token>` (`bearer`, the default: the 2019 REST API).
    Bearer,
    /// `X-Authorization: <token>` (`x-authorization`: the 2017 definitions and older clients).
    XAuthorization,
}

/// Default of `sync_now_budget_secs`: the request, its cloud calls and the
/// commits after them fit the gateway's default 8 s request deadline
/// (`limits.request_timeout_ms`), so a stalled cloud is answered and
/// recorded, never cut off with a 503.
pub const DEFAULT_NOW_BUDGET_SECS: u64 = 6;

/// The settings of the cloud sync (the `sync` job and `/partner/v1/users/{id}/sync`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSettings {
    /// Base URL of the REST API, without a trailing `/` (`evotor_api_url`).
    pub api_url: String,
    /// How the user's token is sent (`evotor_api_auth`).
    pub auth: CloudAuth,
    /// The application's id and how its publisher token is had
    /// (`evotor_app_id` with `evotor_publisher_token` or the
    /// `evotor_oauth_*` settings): with them documents are recovered from
    /// the application's event feed, without them from each store's
    /// documents; push notifications need them.
    pub publisher: Option<Publisher>,
    /// Most requests one run makes for one user, and for the feed (`sync_max_requests_per_user`).
    pub max_requests_per_user: u32,
    /// Most requests one run makes in all (`sync_max_requests_per_run`).
    pub max_requests_per_run: u32,
    /// How far back a window of documents or feed events starts before the
    /// last position known complete, seconds (`sync_overlap_secs`).
    pub overlap_secs: u64,
    /// How long before now a window ends, seconds: what is newer may still
    /// be arriving in the cloud (`sync_settle_secs`).
    pub settle_secs: u64,
    /// How far back the first window of a store or of the feed starts, days (`sync_lookback_days`).
    pub lookback_days: u64,
    /// How long `POST /partner/v1/users/{id}/sync` may take, seconds (`sync_now_budget_secs`).
    pub now_budget_secs: u64,
    /// Longest wait on one request (connecting, the answer's head, each
    /// part of its body), seconds (`sync_request_timeout_secs`).
    pub request_timeout_secs: u64,
}

impl CloudSettings {
    /// Reads the sync settings; a malformed value is an error naming its key.
    pub fn read(config: &dyn Config) -> Result<Self, String> {
        fn number(
            config: &dyn Config,
            key: &str,
            default: u64,
            range: std::ops::RangeInclusive<u64>,
        ) -> Result<u64, String> {
            let value = match config.non_empty(key) {
                None => default,
                Some(text) => {
                    text.trim().parse().map_err(|_| format!("setting {key} = {text:?} is not a valid number"))?
                }
            };
            if range.contains(&value) {
                Ok(value)
            } else {
                Err(format!("setting {key} = {value} must be within {}..={}", range.start(), range.end()))
            }
        }
        let api_url = config.non_empty("evotor_api_url").unwrap_or_else(|| DEFAULT_EVOTOR_API_URL.into());
        let api_url = api_url.trim().trim_end_matches('/').to_owned();
        let authority = api_url.strip_prefix("https://").or_else(|| api_url.strip_prefix("http://"));
        if authority.is_none_or(|rest| rest.is_empty() || rest.contains(['?', '#'])) {
            return Err(format!("setting evotor_api_url = {api_url:?} must be an http:// or https:// URL"));
        }
        let auth = match config.non_empty("evotor_api_auth").as_deref() {
            None | Some("bearer") => CloudAuth::Bearer,
            Some("x-authorization") => CloudAuth::XAuthorization,
            Some(other) => {
                return Err(format!("setting evotor_api_auth = {other:?} must be \"bearer\" or \"x-authorization\""));
            }
        };
        let publisher = Publisher::read(config)?;
        let max_requests_per_user = number(config, "sync_max_requests_per_user", 100, 1..=100_000)?;
        let max_requests_per_run = number(config, "sync_max_requests_per_run", 2000, 1..=1_000_000)?;
        Ok(Self {
            api_url,
            auth,
            publisher,
            max_requests_per_user: u32::try_from(max_requests_per_user).unwrap_or(u32::MAX),
            max_requests_per_run: u32::try_from(max_requests_per_run).unwrap_or(u32::MAX),
            overlap_secs: number(config, "sync_overlap_secs", 600, 0..=7 * 86_400)?,
            settle_secs: number(config, "sync_settle_secs", 60, 0..=86_400)?,
            lookback_days: number(config, "sync_lookback_days", 7, 0..=366)?,
            now_budget_secs: number(config, "sync_now_budget_secs", DEFAULT_NOW_BUDGET_SECS, 1..=600)?,
            request_timeout_secs: number(config, "sync_request_timeout_secs", 20, 1..=600)?,
        })
    }
}

/// Default base URL of the Evotor OAuth server (`evotor_oauth_url`).
pub const DEFAULT_EVOTOR_OAUTH_URL: &str = "https://oauth.evotor.ru";

/// The settings of the OAuth publisher token, all three or none.
const OAUTH_SETTINGS: [&str; 3] =
    ["evotor_oauth_client_id", "evotor_oauth_client_secret", "evotor_oauth_refresh_token"];

/// The application and its publisher token, as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct Publisher {
    /// The application's id (`evotor_app_id`).
    pub app_id: String,
    /// How its publisher token is had.
    pub credential: PublisherCredential,
}

/// How the publisher token is had: configured as it is, or renewed by OAuth.
#[derive(Clone, PartialEq, Eq)]
pub enum PublisherCredential {
    /// A personal developer token, used as it is (`evotor_publisher_token`).
    Personal(String),
    /// An OAuth client whose access token is renewed with a refresh token.
    OAuth(OAuthClient),
}

/// The OAuth client that renews the publisher token.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthClient {
    /// `evotor_oauth_client_id`.
    pub client_id: String,
    /// `evotor_oauth_client_secret`.
    pub client_secret: String,
    /// The first refresh token (`evotor_oauth_refresh_token`): used until
    /// the OAuth server hands out the next one, and again when it changes.
    pub seed: String,
    /// Base URL of the OAuth server, without a trailing `/` (`evotor_oauth_url`).
    pub url: String,
}

// Secrets never reach a log line through `{:?}`.
impl std::fmt::Debug for PublisherCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublisherCredential::Personal(_) => f.write_str("Personal(..)"),
            PublisherCredential::OAuth(client) => f.debug_tuple("OAuth").field(client).finish(),
        }
    }
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.credential {
            PublisherCredential::Personal(_) => "personal",
            PublisherCredential::OAuth(_) => "oauth",
        };
        f.debug_struct("Publisher").field("app_id", &self.app_id).field("mode", &mode).finish_non_exhaustive()
    }
}

impl Publisher {
    /// Reads `evotor_app_id` with exactly one of `evotor_publisher_token`
    /// and the three `evotor_oauth_*` settings; none of them: no publisher.
    fn read(config: &dyn Config) -> Result<Option<Self>, String> {
        let oauth_url = config.non_empty("evotor_oauth_url").unwrap_or_else(|| DEFAULT_EVOTOR_OAUTH_URL.into());
        let oauth_url = base_url("evotor_oauth_url", &oauth_url)?;
        let personal = config.non_empty("evotor_publisher_token");
        let [client_id, client_secret, seed] = OAUTH_SETTINGS.map(|key| config.non_empty(key));
        let oauth_given: Vec<&str> = OAUTH_SETTINGS
            .iter()
            .zip([&client_id, &client_secret, &seed])
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        let Some(app_id) = config.non_empty("evotor_app_id") else {
            return match (personal.is_some(), oauth_given.first()) {
                (false, None) => Ok(None),
                (true, _) => Err("setting evotor_publisher_token needs evotor_app_id as well".into()),
                (false, Some(key)) => Err(format!("setting {key} needs evotor_app_id as well")),
            };
        };
        if !app_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') || app_id.len() > 128 {
            return Err(format!("setting evotor_app_id = {app_id:?} is not an application id"));
        }
        let credential = match (personal, client_id, client_secret, seed) {
            (Some(_), ..) if !oauth_given.is_empty() => {
                return Err(format!(
                    "settings evotor_publisher_token and {} exclude each other: set either the personal token or the three OAuth settings",
                    oauth_given.join(", ")
                ));
            }
            (Some(token), ..) => PublisherCredential::Personal(token),
            (None, Some(client_id), Some(client_secret), Some(seed)) => {
                PublisherCredential::OAuth(OAuthClient { client_id, client_secret, seed, url: oauth_url })
            }
            (None, None, None, None) => {
                return Err(format!(
                    "setting evotor_app_id needs evotor_publisher_token, or {} together",
                    OAUTH_SETTINGS.join(", ")
                ));
            }
            _ => {
                let missing: Vec<&str> =
                    OAUTH_SETTINGS.iter().filter(|key| !oauth_given.contains(key)).copied().collect();
                return Err(format!(
                    "settings {} go together: {} missing",
                    OAUTH_SETTINGS.join(", "),
                    missing.join(" and ")
                ));
            }
        };
        Ok(Some(Self { app_id, credential }))
    }
}

/// `url` without a trailing `/`, when it is an `http://` or `https://` URL
/// without a query; else an error naming `key`.
fn base_url(key: &str, url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/').to_owned();
    let authority = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    if authority.is_none_or(|rest| rest.is_empty() || rest.contains(['?', '#'])) {
        return Err(format!("setting {key} = {url:?} must be an http:// or https:// URL"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_names_each_bad_value_and_each_unknown_key() {
        let config = MapConfig::from([
            ("partner_api_tokne", "t"),
            ("events_webhook_secert", "s"),
            ("billing_enforcement", "of"),
            ("user_token_ttl_secs", "ten"),
            ("events_webhook_path", "events"),
        ]);
        let found: Vec<String> =
            evogate_plugin::config::check::<crate::EvotorPartner>(&config).iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(found[0].contains("events_webhook_secert") && found[0].contains("did you mean events_webhook_secret"));
        assert!(found[1].contains("did you mean partner_api_token"), "{found:#?}");
        assert!(found[2].contains("billing_enforcement") && found[2].contains("\"evotor\" or \"off\""));
        assert!(found[3].contains("events_webhook_path"), "{found:#?}");
        assert!(found[4].contains("user_token_ttl_secs") && found[4].contains("not a valid number"));
    }

    #[test]
    fn settings_that_need_each_other_are_a_problem_together_and_the_defaults_are_none() {
        assert!(problems(&MapConfig::default()).is_empty());
        let lonely = problems(&MapConfig::from([("evotor_app_id", "app-1")]));
        assert_eq!(lonely.len(), 1, "{lonely:?}");
        assert!(lonely[0].message.contains("evotor_publisher_token"));
        let basic = problems(&MapConfig::from([("server_basic_user", "u")]));
        assert!(basic[0].message.contains("server_basic_password"), "{basic:?}");
        let argon = problems(&MapConfig::from([("password_argon2_memory_kib", "1")]));
        assert!(argon[0].message.contains("argon2"), "{argon:?}");
        let fine = MapConfig::from([
            ("server_basic_credential", "Basic dXNlcjpwYXNz"),
            ("events_webhook_allow_unsigned", "false"),
            ("documents_webhook_path", ""),
            ("evotor_app_id", "app-1"),
            ("evotor_publisher_token", "pub"),
        ]);
        assert_eq!(problems(&fine), []);
        for key in SETTINGS {
            assert!(SETTINGS.iter().filter(|other| *other == key).count() == 1, "{key} is declared twice");
        }
    }

    #[test]
    fn settings_have_defaults_and_refuse_garbage() {
        let settings = Settings::read(&MapConfig::default()).expect("defaults");
        assert_eq!((settings.login_field.as_str(), settings.password_field.as_str()), ("username", "password"));
        assert_eq!((settings.user_token_ttl_secs, settings.user_token_grace_secs), (None, 86_400));
        let custom = MapConfig::from([("login_field", "email"), ("user_token_ttl_secs", "3600")]);
        let settings = Settings::read(&custom).expect("custom");
        assert_eq!((settings.login_field.as_str(), settings.user_token_ttl_secs), ("email", Some(3600)));
        let bad = MapConfig::from([("user_token_grace_secs", "a day")]);
        assert!(Settings::read(&bad).expect_err("garbage").contains("user_token_grace_secs"));
    }

    #[test]
    fn cloud_settings_have_defaults_and_refuse_what_cannot_work() {
        let cloud = CloudSettings::read(&MapConfig::default()).expect("defaults");
        assert_eq!(
            (cloud.api_url.as_str(), cloud.auth, cloud.publisher),
            (DEFAULT_EVOTOR_API_URL, CloudAuth::Bearer, None)
        );
        let custom = MapConfig::from([
            ("evotor_api_url", "http://127.0.0.1:9/"),
            ("evotor_api_auth", "x-authorization"),
            ("evotor_app_id", "app-1"),
            ("evotor_publisher_token", "pub"),
        ]);
        let cloud = CloudSettings::read(&custom).expect("custom");
        assert_eq!(cloud.api_url, "http://127.0.0.1:9");
        let publisher = Publisher { app_id: "app-1".into(), credential: PublisherCredential::Personal("pub".into()) };
        assert_eq!((cloud.auth, cloud.publisher), (CloudAuth::XAuthorization, Some(publisher)));
        for (key, value, named) in [
            ("evotor_api_url", "ftp://api.evotor.ru", "evotor_api_url"),
            ("evotor_api_url", "https://", "evotor_api_url"),
            ("evotor_api_auth", "basic", "evotor_api_auth"),
            ("evotor_app_id", "app", "evotor_publisher_token"),
            ("evotor_publisher_token", "pub", "evotor_app_id"),
            ("sync_max_requests_per_user", "0", "sync_max_requests_per_user"),
            ("sync_settle_secs", "soon", "sync_settle_secs"),
        ] {
            let why = CloudSettings::read(&MapConfig::from([(key, value)])).expect_err(value);
            assert!(why.contains(named), "{key} = {value}: {why}");
        }
    }

    #[test]
    fn the_publisher_token_is_personal_or_oauth_never_both_and_oauth_needs_all_three() {
        let oauth = [
            ("evotor_app_id", "app-1"),
            ("evotor_oauth_client_id", "client"),
            ("evotor_oauth_client_secret", "secret"),
            ("evotor_oauth_refresh_token", "seed"),
        ];
        let cloud = CloudSettings::read(&MapConfig::from(oauth)).expect("oauth");
        let Some(Publisher { app_id, credential: PublisherCredential::OAuth(client) }) = &cloud.publisher else {
            panic!("oauth: {:?}", cloud.publisher)
        };
        assert_eq!(
            (app_id.as_str(), client.url.as_str(), client.seed.as_str()),
            ("app-1", DEFAULT_EVOTOR_OAUTH_URL, "seed")
        );
        assert!(!format!("{:?}", cloud.publisher).contains("secret"), "no secret in a debug line");
        assert_eq!(problems(&MapConfig::from(oauth)), []);
        let mut both = MapConfig::from(oauth);
        both.0.insert("evotor_publisher_token".into(), "pub".into());
        let why = &problems(&both)[0].message;
        assert!(why.contains("evotor_publisher_token") && why.contains("exclude each other"), "{why}");
        for missing in ["evotor_oauth_client_id", "evotor_oauth_client_secret", "evotor_oauth_refresh_token"] {
            let mut partial = MapConfig::from(oauth);
            partial.0.remove(missing);
            let found = problems(&partial);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].message.contains(&format!("{missing} missing")), "{found:?}");
        }
        let lonely = problems(&MapConfig::from([("evotor_oauth_client_secret", "secret")]));
        assert!(lonely[0].message.contains("evotor_app_id"), "{lonely:?}");
        let url = problems(&MapConfig::from([("evotor_oauth_url", "oauth.evotor.ru")]));
        assert_eq!(url[0].setting, "evotor_oauth_url", "{url:?}");
        let mut custom = MapConfig::from(oauth);
        custom.0.insert("evotor_oauth_url".into(), "http://127.0.0.1:9/".into());
        let cloud = CloudSettings::read(&custom).expect("custom");
        assert!(
            matches!(&cloud.publisher, Some(Publisher { credential: PublisherCredential::OAuth(client), .. }) if client.url == "http://127.0.0.1:9")
        );
    }
}
