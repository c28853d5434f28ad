//! The operator's settings for this plugin (`[plugins.config]`).

use std::collections::BTreeMap;

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
        Self(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }
}

impl Config for MapConfig {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}
