//! The operator's settings for a plugin: its `[plugins.config]` table.

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
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Default)]
pub struct MapConfig(pub std::collections::BTreeMap<String, String>);

#[cfg(any(test, feature = "testing"))]
impl<const N: usize> From<[(&str, &str); N]> for MapConfig {
    fn from(pairs: [(&str, &str); N]) -> Self {
        Self(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }
}

#[cfg(any(test, feature = "testing"))]
impl Config for MapConfig {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}
