//! The operator's settings for a plugin: its `[plugins.config]` table, and
//! the plugin's check of them ([`check`]).

/// Read-only settings by name.
pub trait Config {
    /// The setting `name`, if configured.
    fn get(&self, name: &str) -> Option<String>;

    /// The setting `name` when configured and not empty.
    fn non_empty(&self, name: &str) -> Option<String> {
        self.get(name).filter(|value| !value.is_empty())
    }
}

/// Settings from a map: the settings a check is given, and native tests' settings.
#[derive(Debug, Clone, Default)]
pub struct MapConfig(pub std::collections::BTreeMap<String, String>);

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

/// One thing wrong with a plugin's settings, as the gateway shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The setting it is about; empty when it is about several together.
    pub setting: String,
    /// What is wrong: the value expected, or the nearest known key.
    pub message: String,
}

impl Problem {
    /// A problem with `setting`.
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self { setting: setting.into(), message: message.into() }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A message that names its setting already reads whole.
        if self.setting.is_empty() || self.message.contains(&self.setting) {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.setting, self.message)
        }
    }
}

/// What the gateway's check of `P`'s settings answers: every key `P` does
/// not declare in [`crate::Plugin::SETTINGS`] (when it declares any), with
/// the nearest declared key, then what [`crate::Plugin::check_settings`]
/// finds in the values.
pub fn check<P: crate::Plugin + ?Sized>(settings: &MapConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !P::SETTINGS.is_empty() {
        for key in settings.0.keys().filter(|key| !P::SETTINGS.contains(&key.as_str())) {
            let message = match nearest(key, P::SETTINGS) {
                Some(known) => format!("not a setting of this plugin; did you mean {known}?"),
                None => "not a setting of this plugin".to_owned(),
            };
            problems.push(Problem::new(key.clone(), message));
        }
    }
    problems.extend(P::check_settings(settings));
    problems
}

/// The known key closest to `key` by edit distance, if close enough to be
/// a slip of the keyboard (a third of its length, at least 2 edits).
fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let tolerance = (key.chars().count() / 3).max(2);
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, _)| *distance <= tolerance)
        .min()
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, transpositions counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Three rows: two back (for transpositions), one back, and this one.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut current = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            current[j] = (previous[j] + 1).min(current[j - 1] + 1).min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                current[j] = current[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut previous, current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Declares;

    impl crate::Plugin for Declares {
        const NAME: &'static str = "declares";
        const VERSION: &'static str = "1";
        const SETTINGS: &'static [&'static str] = &["partner_api_token", "events_webhook_secret", "retention_days"];

        fn handle(_: &crate::Ctx<'_>, _: &crate::http::Request) -> crate::http::Response {
            crate::http::Response::empty(200)
        }

        fn check_settings(config: &dyn Config) -> Vec<Problem> {
            match config.non_empty("retention_days") {
                Some(days) if days.parse::<u64>().is_err() => vec![Problem::new("retention_days", "a number of days")],
                _ => Vec::new(),
            }
        }
    }

    struct Silent;

    impl crate::Plugin for Silent {
        const NAME: &'static str = "silent";
        const VERSION: &'static str = "1";

        fn handle(_: &crate::Ctx<'_>, _: &crate::http::Request) -> crate::http::Response {
            crate::http::Response::empty(200)
        }
    }

    #[test]
    fn unknown_keys_name_the_nearest_declared_one_and_values_are_checked() {
        let settings = MapConfig::from([
            ("partner_api_tokne", "x"),
            ("events_webhook_secert", "y"),
            ("retention_days", "ten"),
            ("something_else_entirely", "z"),
        ]);
        let problems: Vec<String> = check::<Declares>(&settings).iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "events_webhook_secert: not a setting of this plugin; did you mean events_webhook_secret?",
                "partner_api_tokne: not a setting of this plugin; did you mean partner_api_token?",
                "something_else_entirely: not a setting of this plugin",
                "retention_days: a number of days",
            ]
        );
        let fine = MapConfig::from([("partner_api_token", "x"), ("retention_days", "30")]);
        assert!(check::<Declares>(&fine).is_empty());
    }

    #[test]
    fn a_plugin_that_declares_nothing_takes_every_key() {
        assert!(check::<Silent>(&MapConfig::from([("anything", "at all")])).is_empty());
    }

    #[test]
    fn edit_distance_counts_slips() {
        assert_eq!(edit_distance("tokne", "token"), 1, "a transposition is one edit");
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(nearest("of", &["off", "on"]), Some("off"));
        assert_eq!(nearest("zzzzzzzz", &["retention_days"]), None);
    }
}
