//! Plugins of the current `evogate:plugin` world (0.2.x): a request to
//! `handler`, the plugin's `identity`, for plugins built against
//! `plugin-with-jobs` (0.2.2 on) a job to `scheduled`, and for plugins
//! built against 0.2.4 on the check of their `settings`.

use super::bindings::{wit_handler, wit_identity, wit_scheduled, wit_settings, wit_types};
use super::sandbox::{HostState, Laps, Phase, Request, Response};
use wasmtime::Store;
use wasmtime::component::InstancePre;

/// A 0.2.x plugin: its component, and where its exports are.
pub(super) struct Current {
    pub(super) pre: InstancePre<HostState>,
    handler: wit_handler::GuestIndices,
    identity: wit_identity::GuestIndices,
    /// Only in plugins built against `plugin-with-jobs` (0.2.2 on).
    scheduled: Option<wit_scheduled::GuestIndices>,
    /// Only in plugins built against 0.2.4 on.
    settings: Option<wit_settings::GuestIndices>,
}

impl Current {
    /// The component's exports of the current world; an error when it lacks `handler` or `identity`.
    pub(super) fn new(pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        let handler = wit_handler::GuestIndices::new(&pre)?;
        let identity = wit_identity::GuestIndices::new(&pre)?;
        let scheduled = wit_scheduled::GuestIndices::new(&pre).ok();
        let settings = wit_settings::GuestIndices::new(&pre).ok();
        Ok(Self { pre, handler, identity, scheduled, settings })
    }

    /// Whether it exports `scheduled`.
    pub(super) fn runs_jobs(&self) -> bool {
        self.scheduled.is_some()
    }

    /// Answers `request` in a new instance in `store`.
    pub(super) async fn handle(
        &self,
        store: &mut Store<HostState>,
        request: Request,
        laps: &mut Laps,
    ) -> wasmtime::Result<Response> {
        let Request { method, path, query, headers, body } = request;
        let request = wit_types::Request { method, path, query, headers, body };
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let handler = self.handler.load(&mut *store, &instance)?;
        laps.lap(Phase::Instantiate);
        Ok(Response::from(handler.call_handle(&mut *store, &request).await?))
    }

    /// The plugin's name and version, from a new instance in `store`.
    pub(super) async fn identity(&self, store: &mut Store<HostState>) -> wasmtime::Result<(String, String)> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let identity = self.identity.load(&mut *store, &instance)?;
        let info = identity.call_info(&mut *store).await?;
        Ok((info.name, info.version))
    }

    /// Whether it exports `settings` (built against 0.2.4 on).
    pub(super) fn checks_settings(&self) -> bool {
        self.settings.is_some()
    }

    /// The plugin's check of `settings` in a new instance in `store`: its
    /// problems as `(setting, message)`; none from a plugin that does not
    /// export `settings`.
    pub(super) async fn check_settings(
        &self,
        store: &mut Store<HostState>,
        settings: &[(String, String)],
    ) -> wasmtime::Result<Vec<(String, String)>> {
        let Some(check) = &self.settings else { return Ok(Vec::new()) };
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let guest = check.load(&mut *store, &instance)?;
        let problems = guest.call_check(&mut *store, settings).await?;
        Ok(problems.into_iter().map(|problem| (problem.setting, problem.message)).collect())
    }

    /// Runs job `run` in a new instance in `store`; a plugin without `scheduled` traps, saying so.
    pub(super) async fn run_job(
        &self,
        store: &mut Store<HostState>,
        run: &wit_scheduled::JobRun,
    ) -> wasmtime::Result<Result<(), String>> {
        let Some(scheduled) = &self.scheduled else {
            wasmtime::bail!("the plugin does not export evogate:plugin/scheduled");
        };
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let guest = scheduled.load(&mut *store, &instance)?;
        guest.call_run(&mut *store, run).await
    }
}
