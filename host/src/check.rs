//! `evogate check`: a configuration checked as `serve` would take it —
//! parsed and validated, its TLS files and admin token read, every plugin
//! compiled, instantiated once and given its settings to check — without
//! opening the store or binding a port, so it runs beside a live gateway.

use crate::config::{Config, PluginConfig};
use crate::control::deploy;
use crate::kv::{MemoryBackend, Namespace};
use crate::runtime::sandbox::Sandbox;
use crate::settings::Settings;
use std::sync::Arc;

/// What a check found: a line per plugin build it loaded, and each problem.
#[derive(Debug, Default)]
pub struct Report {
    /// What was checked and found fine, a line each.
    pub checked: Vec<String>,
    /// What would stop `serve` (or a reload), a line each.
    pub problems: Vec<String>,
}

/// Checks `config` (already parsed and validated by [`Config::load`]).
///
/// Each plugin is checked in the build `serve` would start it with: the
/// version last deployed into `data_dir` when there is one, else the
/// configured file; when both exist and differ, the configured file is
/// checked too, and the report says which one a restart serves.
pub async fn check(config: &Config) -> Report {
    let mut report = Report::default();
    if let Err(err) = config.plugins() {
        report.problems.push(format!("{err:#}"));
        return report;
    }
    for (what, tls) in [("[tls]", &config.tls), ("[admin.tls]", &config.admin.tls)] {
        if let Some(tls) = tls
            && let Err(err) = crate::http::tls::Tls::new(&tls.cert.relative(), &tls.key.relative())
        {
            report.problems.push(format!("{what}: {err:#}"));
        }
    }
    if let Err(err) = config.admin_token() {
        report.problems.push(format!("admin token: {err:#}"));
    }
    let settings = Settings::from_config(config);
    // No compilation cache: nothing is written into a live gateway's data directory.
    let sandbox = match Sandbox::new(settings.sandbox, None) {
        Ok(sandbox) => Arc::new(sandbox),
        Err(err) => {
            report.problems.push(format!("starting the sandbox: {err:#}"));
            return report;
        }
    };
    let data_dir = config.data_dir();
    for plugin in &config.plugins {
        check_plugin(&sandbox, &data_dir, plugin, &mut report).await;
    }
    report
}

/// Checks the builds of one plugin `serve` could start.
async fn check_plugin(sandbox: &Sandbox, data_dir: &std::path::Path, plugin: &PluginConfig, report: &mut Report) {
    let configured = plugin.wasm.relative();
    let recorded = match deploy::recorded_build(data_dir, &plugin.name) {
        Ok(recorded) => recorded,
        // The data directory is the gateway's own (0700): another user may not read it.
        Err(err) => {
            report.checked.push(format!(
                "plugin {:?}: the versions deployed into data_dir cannot be read ({err:#}): checking the configured file only",
                plugin.name
            ));
            None
        }
    };
    let file = std::fs::read(&configured);
    let mut builds = Vec::new();
    match (&recorded, &file) {
        (Some((record, bytes)), Ok(file)) if deploy::sha256_hex(file) != record.sha256 => {
            report.checked.push(format!(
                "plugin {:?}: a restart serves the deployed version {} (sha256 {}), not {}: deploy it to serve it",
                plugin.name,
                record.version,
                &record.sha256[..12],
                configured.display()
            ));
            builds.push((format!("deployed version {}", record.version), bytes.clone()));
            builds.push((configured.display().to_string(), file.clone()));
        }
        (Some((record, bytes)), _) => builds.push((format!("deployed version {}", record.version), bytes.clone())),
        (None, Ok(file)) => builds.push((configured.display().to_string(), file.clone())),
        (None, Err(err)) => {
            report.problems.push(format!("plugin {:?}: reading {}: {err}", plugin.name, configured.display()));
        }
    }
    for (source, bytes) in builds {
        if let Err(err) = deploy::validate(&bytes, usize::MAX) {
            report.problems.push(format!("plugin {:?} ({source}): {err}", plugin.name));
            continue;
        }
        let sha256 = deploy::sha256_hex(&bytes);
        let namespace = Namespace::new(Arc::new(MemoryBackend::default()), &plugin.name);
        let settings = Arc::new(plugin.plugin_settings());
        match sandbox.load(&plugin.name, bytes, &sha256, settings, namespace).await {
            Ok(version) => {
                let checked = if version.checks_settings() {
                    "settings checked"
                } else {
                    "settings not checked: built before evogate:plugin@0.2.4"
                };
                report.checked.push(format!(
                    "plugin {:?} ({source}): {} ({}), {checked}",
                    plugin.name,
                    version.identity(),
                    version.world().as_str()
                ));
            }
            Err(err) => match err.downcast_ref::<crate::runtime::sandbox::SettingsRefused>() {
                Some(refused) => report.problems.extend(refused.lines()),
                None => report.problems.push(format!("plugin {:?} ({source}): {err:#}", plugin.name)),
            },
        }
    }
}
