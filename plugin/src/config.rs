//! The operator's settings for this plugin (`[plugins.config]`).

use std::collections::BTreeMap;

/// Default argon2id memory cost, KiB (OWASP's minimum for argon2id).
pub const DEFAULT_ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Default argon2id passes.
pub const DEFAULT_ARGON2_ITERATIONS: u32 = 2;
/// Default time a subscription may stay unpaid (`PENDING`) and still be used.
pub const DEFAULT_PENDING_GRACE_SECS: u64 = 3 * 86_400;
/// Default longest wait for a missing event: just over Evotor's three days of retries.
pub const DEFAULT_GAP_TIMEOUT_SECS: u64 = 3 * 86_400 + 3600;

/// Read-only settings by name.
pub trait Config {
    /// The setting `name`, if configured.
    fn get(&self, name: &str) -> Option<String>;

    /// The setting `name` when configured and not empty.
    fn non_empty(&self, name: &str) -> Option<String> {
        self.get(name).filter(|value| !value.is_empty())
    }
}

/// Settings from a map, for tests and native use.
#[derive(Debug, Clone, Default)]
pub struct MapConfig(pub BTreeMap<String, String>);

impl<const N: usize> From<[(&str, &str); N]> for MapConfig {
    fn from(pairs: [(&str, &str); N]) -> Self {
        Self(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }
}

impl Config for MapConfig {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
