//! Plugins of the first `evogate:plugin` world (0.1.0): a request to
//! `handler` and the plugin's `identity`; no jobs, no outgoing HTTP.

use super::bindings::{generated_0_1, wit_0_1};
use super::sandbox::{HostState, Laps, Phase, Request, Response};
use wasmtime::Store;

/// A compiled 0.1.0 plugin.
pub(super) type Pre = generated_0_1::PluginPre<HostState>;

/// Answers `request` in a new instance in `store`.
pub(super) async fn handle(
    pre: &Pre,
    store: &mut Store<HostState>,
    request: Request,
    laps: &mut Laps,
) -> wasmtime::Result<Response> {
    let Request { method, path, query, headers, body } = request;
    let request = wit_0_1::types::Request { method, path, query, headers, body };
    let plugin = pre.instantiate_async(&mut *store).await?;
    laps.lap(Phase::Instantiate);
    let answer = plugin.evogate_plugin0_1_0_handler().call_handle(&mut *store, &request).await?;
    Ok(Response { status: answer.status, headers: answer.headers, body: answer.body })
}

/// The plugin's name and version, from a new instance in `store`.
pub(super) async fn identity(pre: &Pre, store: &mut Store<HostState>) -> wasmtime::Result<(String, String)> {
    let plugin = pre.instantiate_async(&mut *store).await?;
    let info = plugin.evogate_plugin0_1_0_identity().call_info(&mut *store).await?;
    Ok((info.name, info.version))
}
