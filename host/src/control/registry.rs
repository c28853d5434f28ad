//! The plugins being served: route → the deployment serving it now.
//!
//! Each plugin is mounted on its route; the mount's current deployment can be replaced
//! atomically; a request takes an `Arc` of the deployment when it starts
//! and finishes on it whatever happens to the mount meanwhile.

use crate::config::normalize_route;
use crate::edge::ErrorFormat;
use crate::runtime::sandbox::PluginVersion;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// One compiled plugin build and where it came from.
#[derive(Debug)]
pub struct Deployment {
    /// The loaded build.
    pub plugin: PluginVersion,
    /// SHA-256 of the component bytes, hex.
    pub sha256: String,
    /// When it went live, Unix seconds.
    pub deployed_at: u64,
}

impl Deployment {
    /// `plugin@version` for logs ([`PluginVersion::label`]).
    pub fn label(&self) -> &str {
        self.plugin.label()
    }
}

/// One configured plugin and the deployment it serves now.
#[derive(Debug)]
pub struct Mount {
    /// The configured plugin name (its kv namespace).
    pub name: String,
    /// The route prefix, normalized (no trailing slash except `/`).
    pub route: String,
    /// How the gateway writes its own errors on this route.
    pub error_format: ErrorFormat,
    /// What each answered request records, registered once.
    pub(crate) metrics: crate::telemetry::RouteMetrics,
    current: ArcSwap<Deployment>,
}

impl Mount {
    /// Plugin `name` on `route`, its gateway errors written in `error_format`, serving `deployment`.
    pub fn new(name: &str, route: &str, error_format: ErrorFormat, deployment: Arc<Deployment>) -> Arc<Self> {
        let route = normalize_route(route).to_owned();
        let metrics = crate::telemetry::RouteMetrics::new(name, &route);
        Arc::new(Mount { name: name.into(), route, error_format, metrics, current: ArcSwap::new(deployment) })
    }

    /// The deployment serving new requests.
    pub fn current(&self) -> Arc<Deployment> {
        self.current.load_full()
    }

    /// Makes `deployment` serve every request that starts from now on;
    /// requests in flight finish on the one they started with.
    pub fn swap(&self, deployment: Arc<Deployment>) -> Arc<Deployment> {
        self.current.swap(deployment)
    }
}

/// All mounts, matched by longest route prefix. A reload builds a new one;
/// a request routes on the one it found when it arrived.
#[derive(Debug, Default)]
pub struct Registry {
    // Sorted by route length, longest first, so the first match is the longest.
    mounts: Vec<Arc<Mount>>,
}

impl Registry {
    /// The routing table of `mounts`.
    pub fn from_mounts(mut mounts: Vec<Arc<Mount>>) -> Self {
        mounts.sort_by_key(|mount| std::cmp::Reverse(mount.route.len()));
        Self { mounts }
    }

    /// The mount of plugin `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Mount>> {
        self.mounts.iter().find(|mount| mount.name == name)
    }

    /// The mount serving `path`: the longest route that is `path` itself or a
    /// whole-segment prefix of it (`/a` serves `/a` and `/a/b`, not `/ab`).
    pub fn route(&self, path: &str) -> Option<&Arc<Mount>> {
        self.mounts.iter().find(|mount| crate::edge::route_matches(&mount.route, path))
    }

    /// Every mount, longest route first.
    pub fn mounts(&self) -> &[Arc<Mount>] {
        &self.mounts
    }
}

#[cfg(test)]
mod tests {
    use crate::edge::route_matches;

    #[test]
    fn routes_match_whole_segments_only() {
        assert!(route_matches("/", "/anything"));
        assert!(route_matches("/alpha", "/alpha"));
        assert!(route_matches("/alpha", "/alpha/kv"));
        assert!(!route_matches("/alpha", "/alphabet"));
        assert!(!route_matches("/alpha", "/"));
    }
}
