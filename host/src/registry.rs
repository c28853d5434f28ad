//! The plugins being served: route → the plugin's current version.
//!
//! Each plugin sits in a slot whose current version can be replaced
//! atomically; a request takes an `Arc` of the version when it starts and
//! finishes on it whatever happens to the slot meanwhile.

use crate::config::normalize_route;
use crate::sandbox::PluginVersion;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// One configured plugin and the version it serves now.
#[derive(Debug)]
pub struct Slot {
    /// The configured plugin name (its kv namespace).
    pub name: String,
    /// The route prefix, normalized (no trailing slash except `/`).
    pub route: String,
    current: ArcSwap<PluginVersion>,
}

impl Slot {
    /// The version serving new requests.
    pub fn current(&self) -> Arc<PluginVersion> {
        self.current.load_full()
    }

    /// Makes `version` serve every request that starts from now on.
    pub fn swap(&self, version: Arc<PluginVersion>) -> Arc<PluginVersion> {
        self.current.swap(version)
    }
}

/// All slots, matched by longest route prefix.
#[derive(Debug, Default)]
pub struct Registry {
    // Sorted by route length, longest first, so the first match is the longest.
    slots: Vec<Arc<Slot>>,
}

impl Registry {
    /// Adds a plugin on `route`.
    pub fn insert(&mut self, name: &str, route: &str, version: Arc<PluginVersion>) {
        let route = normalize_route(route).to_owned();
        self.slots.push(Arc::new(Slot { name: name.into(), route, current: ArcSwap::new(version) }));
        self.slots.sort_by_key(|slot| std::cmp::Reverse(slot.route.len()));
    }

    /// The slot serving `path`: the longest route that is `path` itself or a
    /// whole-segment prefix of it (`/a` serves `/a` and `/a/b`, not `/ab`).
    pub fn route(&self, path: &str) -> Option<&Arc<Slot>> {
        self.slots.iter().find(|slot| route_matches(&slot.route, path))
    }

    /// Every slot, longest route first.
    pub fn slots(&self) -> &[Arc<Slot>] {
        &self.slots
    }
}

fn route_matches(route: &str, path: &str) -> bool {
    route == "/" || path.strip_prefix(route).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::route_matches;

    #[test]
    fn routes_match_whole_segments_only() {
        assert!(route_matches("/", "/anything"));
        assert!(route_matches("/alpha", "/alpha"));
        assert!(route_matches("/alpha", "/alpha/kv"));
        assert!(!route_matches("/alpha", "/alphabet"));
        assert!(!route_matches("/alpha", "/"));
    }
}
