//! The one place a [`Config`] becomes the settings the running parts take:
//! the sandbox's [`Limits`], the listener's [`ServeOptions`] and the request
//! path's [`RequestLimits`]. Units change here (milliseconds become
//! [`Duration`]s) and derived values are worked out here, nowhere else.

use crate::config::Config;
use crate::http::server::{RequestLimits, ServeOptions};
use crate::runtime::sandbox::Limits;
use std::time::Duration;

/// What [`crate::run`] hands to each part it starts.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Each request's instance.
    pub sandbox: Limits,
    /// The public listener (without TLS, which [`crate::run`] loads from its files).
    pub serve: ServeOptions,
    /// Each request on its way to a plugin.
    pub requests: RequestLimits,
}

impl Settings {
    /// The settings `config` asks for.
    pub(crate) fn from_config(config: &Config) -> Self {
        let limits = &config.limits;
        let per_plugin = |cap: fn(&crate::config::PluginConfig) -> Option<u32>| {
            config.plugins.iter().filter_map(|plugin| Some((plugin.name.clone(), cap(plugin)? as usize))).collect()
        };
        Self {
            sandbox: Limits {
                timeout: Duration::from_millis(limits.request_timeout_ms),
                memory_bytes: limits.instance_memory_bytes,
                max_instances: limits.max_concurrent_requests,
                max_kv_calls: limits.max_kv_calls_in_flight,
                max_outbound_response_bytes: limits.max_outbound_response_bytes,
            },
            serve: ServeOptions {
                tls: None,
                max_connections: limits.max_connections,
                header_read_timeout: Duration::from_millis(limits.header_read_timeout_ms),
                max_header_bytes: limits.max_header_bytes,
                drain: Duration::from_millis(limits.drain_timeout_ms),
                drain_grace: Duration::from_millis(limits.drain_grace_ms),
                health: None,
            },
            requests: RequestLimits {
                max_body_bytes: limits.max_body_bytes,
                max_header_bytes: limits.max_header_bytes,
                body_bytes_in_flight: limits.body_bytes_in_flight(),
                min_body_bytes_per_sec: limits.min_body_bytes_per_sec,
                timeout: Duration::from_millis(limits.request_timeout_ms),
                max_instances: limits.max_concurrent_requests as usize,
                plugin_caps: per_plugin(|plugin| plugin.max_concurrent_requests),
                credential_caps: per_plugin(|plugin| plugin.max_concurrent_per_credential),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_reaches_the_part_that_enforces_it() {
        let mut config = Config::default();
        config.limits.request_timeout_ms = 1234;
        config.limits.drain_timeout_ms = 55;
        config.limits.max_body_bytes = 10;
        config.plugins.push(crate::config::PluginConfig {
            name: "evotor".into(),
            route: "/".into(),
            wasm: figment::value::magic::RelativePathBuf::from(std::path::PathBuf::from("e.wasm")),
            config: Default::default(),
            max_concurrent_requests: None,
            max_concurrent_per_credential: Some(3),
            allowed_outbound_hosts: Vec::new(),
            outbound_ca: None,
            error_format: Default::default(),
            calls: Vec::new(),
            jobs: Vec::new(),
        });
        let settings = Settings::from_config(&config);
        assert_eq!(settings.sandbox.timeout, Duration::from_millis(1234));
        assert_eq!(settings.requests.timeout, settings.sandbox.timeout);
        assert_eq!(settings.serve.drain, Duration::from_millis(55));
        assert_eq!(settings.requests.body_bytes_in_flight, 256 << 20, "the default budget: 256 MiB or 4 bodies");
        assert_eq!(settings.requests.credential_caps.get("evotor"), Some(&3));
        assert!(settings.requests.plugin_caps.is_empty(), "no plugin cap unless one is set");
        assert_eq!(settings.requests.max_instances, config.limits.max_concurrent_requests as usize);
    }
}
