//! A plugin's check of its settings (`evogate:plugin/settings`, 0.2.4 on):
//! what it answers, bounded and escaped, and the error that refuses them.

use super::{Chain, PluginVersion, Pre};
use std::collections::BTreeMap;

/// Most problems one check reports, and longest text of one: a plugin's
/// answer goes to logs and admin answers.
const MAX_PROBLEMS: usize = 100;
const MAX_PROBLEM_CHARS: usize = 500;

/// A plugin's settings that its own check refused: each problem on a line of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsRefused {
    /// The configured plugin name.
    pub plugin: String,
    /// Each problem, `setting: message`.
    pub problems: Vec<String>,
}

impl std::fmt::Display for SettingsRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin {:?}: its [plugins.config] settings have {} problem(s):", self.plugin, self.problems.len())?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SettingsRefused {}

impl SettingsRefused {
    /// Each problem on a line of its own naming the plugin, as `evogate
    /// check` and a refused reload list them.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.problems.iter().map(|problem| format!("plugin {:?}: {problem}", self.plugin))
    }
}

impl PluginVersion {
    /// Whether the plugin checks its settings (it exports `settings`, built
    /// against 0.2.4 on); settings of plugins built before are not checked.
    pub fn checks_settings(&self) -> bool {
        matches!(&self.pre, Pre::Current(current) if current.checks_settings())
    }

    /// The plugin's check of `config` (settings it would be given): each
    /// problem it finds as `setting: message`; none when it does not check
    /// its settings. An instance that traps is an error.
    pub async fn check_settings(&self, config: &BTreeMap<String, String>) -> wasmtime::Result<Vec<String>> {
        let Pre::Current(current) = &self.pre else { return Ok(Vec::new()) };
        if !current.checks_settings() {
            return Ok(Vec::new());
        }
        let pairs: Vec<(String, String)> = config.iter().map(|(key, value)| (key.clone(), value.clone())).collect();
        let mut store = self.new_store(self.limits.timeout, "-", Chain::start(&self.plugin));
        let result = current.check_settings(&mut store, &pairs).await;
        let problems = self.finish(&store, result).map_err(|failure| {
            wasmtime::format_err!("plugin {:?}: checking its settings failed: {failure}", self.plugin)
        })?;
        Ok(problems
            .into_iter()
            .map(|(setting, message)| {
                let text = if setting.is_empty() || message.contains(&setting) {
                    message
                } else {
                    format!("{setting}: {message}")
                };
                crate::runtime::plugin_log::escape_controls(&text.chars().take(MAX_PROBLEM_CHARS).collect::<String>())
                    .into_owned()
            })
            .take(MAX_PROBLEMS)
            .collect())
    }
}
