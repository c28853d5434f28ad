//! A reload's part in the deployer: the plugins of a new configuration
//! loaded beside the live ones ([`Deployer::prepare`]), then put in place
//! at once ([`Deployer::commit`]), or dropped, changing nothing.

use super::{Deployer, Managed, prepare};
use crate::config::{PluginConfig, PluginSettings, normalize_route};
use crate::control::registry::{Deployment, Mount};
use crate::runtime::sandbox::SettingsRefused;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A new configuration's plugins, loaded and checked, not yet serving.
/// Holding it holds off every deploy, rollback and fleet catch-up.
pub(crate) struct Plan<'a> {
    _changes: tokio::sync::RwLockWriteGuard<'a, ()>,
    /// The plugins after the change, by name.
    plugins: BTreeMap<String, Arc<Managed>>,
    /// Live plugins that stay on their mount with new settings: the new
    /// build of their live version, and the settings.
    resettled: Vec<(Arc<Managed>, Deployment, Arc<PluginSettings>)>,
    /// What the change does, a line each.
    changes: Vec<String>,
}

impl Deployer {
    /// Loads what `plugins` (a new configuration's) asks for beside what
    /// serves now, changing nothing: a plugin whose settings changed gets a
    /// new build of its live version with them (its own check runs on
    /// them), a new plugin or one on a new route or error format is loaded
    /// as a start would. Every problem found, a line each, refuses the whole.
    pub(crate) async fn prepare_change(&self, plugins: &[PluginConfig]) -> Result<Plan<'_>, Vec<String>> {
        let changes_lock = self.changes.write().await;
        let live = self.snapshot();
        let mut plan =
            Plan { _changes: changes_lock, plugins: BTreeMap::new(), resettled: Vec::new(), changes: Vec::new() };
        let mut problems = Vec::new();
        for plugin in plugins {
            let settings = Arc::new(plugin.plugin_settings());
            let found = live.get(&plugin.name).filter(|managed| {
                managed.mount.route == normalize_route(&plugin.route)
                    && managed.mount.error_format == plugin.error_format
            });
            let outcome = match found {
                Some(managed) => self.resettle(managed, &plugin.name, settings, &mut plan).await,
                None => {
                    let what = if live.contains_key(&plugin.name) { "moved to" } else { "added on" };
                    match prepare(plugin, &self.sandbox, &self.backend, &self.data_dir).await {
                        Ok(managed) => {
                            plan.changes.push(format!(
                                "plugin {} {what} route {} ({})",
                                plugin.name,
                                managed.mount.route,
                                managed.mount.current().plugin.identity()
                            ));
                            plan.plugins.insert(plugin.name.clone(), Arc::new(managed));
                            Ok(())
                        }
                        Err(err) => Err(err),
                    }
                }
            };
            if let Err(err) = outcome {
                match err.chain().find_map(|cause| cause.downcast_ref::<SettingsRefused>()) {
                    Some(refused) => problems.extend(refused.lines()),
                    None => problems.push(format!("plugin {:?}: {err:#}", plugin.name)),
                }
            }
        }
        for name in live.keys().filter(|name| !plan.plugins.contains_key(*name)) {
            plan.changes.push(format!("plugin {name} removed"));
        }
        if problems.is_empty() { Ok(plan) } else { Err(problems) }
    }

    /// Keeps `managed` on its mount; with settings other than its own, a
    /// new build of its live version with them goes into `plan`.
    async fn resettle(
        &self,
        managed: &Arc<Managed>,
        name: &str,
        settings: Arc<PluginSettings>,
        plan: &mut Plan<'_>,
    ) -> anyhow::Result<()> {
        plan.plugins.insert(name.to_owned(), managed.clone());
        if *managed.state.lock().await.settings == *settings {
            return Ok(());
        }
        let live = managed.mount.current();
        let path = managed.files.artifact(&live.sha256);
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(&path)).await??;
        let mut deployment = self.load(name, &live.sha256, bytes, settings.clone()).await?;
        deployment.deployed_at = live.deployed_at;
        plan.changes.push(format!("plugin {name}: new settings"));
        plan.resettled.push((managed.clone(), deployment, settings));
        Ok(())
    }

    /// Puts `plan` in place: the new builds on their mounts, the plugins
    /// added and removed. Answers every mount and what changed.
    pub(crate) async fn commit(&self, plan: Plan<'_>) -> (Vec<Arc<Mount>>, Vec<String>) {
        let Plan { _changes, plugins, resettled, changes } = plan;
        for (managed, deployment, settings) in resettled {
            let mut guard = managed.state.lock().await;
            guard.settings = settings;
            let label = deployment.label().to_owned();
            managed.mount.swap(Arc::new(deployment));
            tracing::info!(plugin = %managed.mount.name, to = %label, "new settings live");
        }
        let mounts = plugins.values().map(|managed| managed.mount.clone()).collect();
        *self.plugins.write().unwrap_or_else(|poison| poison.into_inner()) = plugins;
        (mounts, changes)
    }
}
