//! Reloading the configuration while serving (`SIGHUP`, the admin API's
//! `POST /reload`, `evogate reload`): the file is read again as at start,
//! every plugin of it loaded and its settings checked beside what serves;
//! with any problem nothing changes, else the new plugins, routes,
//! settings, per-plugin caps and jobs serve every request that starts from
//! then on. Requests in flight finish on the builds (and so the settings)
//! they started with. What a running process cannot change — its
//! listeners, its store, the sandbox's limits — is named, and waits for a
//! restart.

use crate::app::App;
use crate::config::Config;
use crate::control::registry::Registry;
use crate::settings::Settings;
use serde::Serialize;

/// The configuration in force, and where it was read from.
#[derive(Debug)]
pub(crate) struct Reloader {
    /// Held through a reload: reloads happen one at a time.
    current: tokio::sync::Mutex<Config>,
}

/// What a reload did, as the admin API answers it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReloadOutcome {
    /// Whether the new configuration is in force (no problem was found).
    pub applied: bool,
    /// What changed, a line each; empty when nothing did.
    pub changes: Vec<String>,
    /// Keys that differ from what runs but cannot change in a running
    /// process: they take effect at the next restart.
    pub needs_restart: Vec<String>,
    /// Why the configuration was refused, a line each (nothing changed).
    pub problems: Vec<String>,
}

/// The top-level keys a running gateway cannot change, with what each is.
const FIXED: &[&str] = &["listen", "health_path", "data_dir", "store", "limits", "admin", "tls", "telemetry", "log"];

impl Reloader {
    /// Starts from `config`, the one the gateway started with.
    pub(crate) fn new(config: Config) -> Self {
        Self { current: tokio::sync::Mutex::new(config) }
    }

    /// Reads the configuration again (the file it came from, then the
    /// environment) and puts it in force in `app`, whole or not at all.
    pub(crate) async fn reload(&self, app: &App) -> ReloadOutcome {
        let mut current = self.current.lock().await;
        let mut outcome = ReloadOutcome::default();
        let next = match Config::load(current.source.as_deref()).and_then(|next| {
            next.plugins()?;
            Ok(next)
        }) {
            Ok(next) => next,
            Err(err) => {
                outcome.problems.push(format!("{err:#}"));
                return logged(outcome);
            }
        };
        outcome.needs_restart = fixed_changes(&current, &next);
        let plan = match app.deployer.prepare_change(&next.plugins).await {
            Ok(plan) => plan,
            Err(problems) => {
                outcome.problems = problems;
                return logged(outcome);
            }
        };
        let (mounts, changes) = app.deployer.commit(plan).await;
        outcome.changes = changes;
        let (was, requests) = (Settings::from_config(&current).requests, Settings::from_config(&next).requests);
        if (&was.plugin_caps, &was.credential_caps) != (&requests.plugin_caps, &requests.credential_caps) {
            outcome.changes.push("per-plugin caps (max_concurrent_requests, max_concurrent_per_credential)".into());
        }
        app.gateway.reroute(Registry::from_mounts(mounts.clone()), &requests);
        outcome.changes.extend(app.scheduler.reschedule(&next.plugins, &mounts));
        outcome.applied = true;
        *current = next;
        logged(outcome)
    }
}

/// The top-level keys of [`FIXED`] whose values differ between `was` and `next`.
fn fixed_changes(was: &Config, next: &Config) -> Vec<String> {
    let (was, next) = (serde_json::to_value(was).unwrap_or_default(), serde_json::to_value(next).unwrap_or_default());
    FIXED.iter().filter(|key| was.get(**key) != next.get(**key)).map(|key| (*key).to_owned()).collect()
}

/// `outcome`, written to the log line by line.
fn logged(outcome: ReloadOutcome) -> ReloadOutcome {
    for problem in &outcome.problems {
        tracing::error!(problem = %problem, "reload refused: the configuration in force is kept");
    }
    for change in &outcome.changes {
        tracing::info!(change = %change, "reload");
    }
    if !outcome.needs_restart.is_empty() {
        tracing::warn!(keys = %outcome.needs_restart.join(", "), "reload: these keys changed but take effect only at a restart");
    }
    if outcome.applied && outcome.changes.is_empty() {
        tracing::info!("reload: nothing changed");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_keys_that_differ_are_named_for_a_restart() {
        let was = Config::default();
        let mut next = Config::default();
        assert_eq!(fixed_changes(&was, &next), Vec::<String>::new());
        next.listen = "127.0.0.1:1".parse().expect("address");
        next.limits.request_timeout_ms += 1;
        next.plugins.clear();
        assert_eq!(fixed_changes(&was, &next), ["listen", "limits"]);
    }
}
