//! Every `bindgen!` of the host: the evogate worlds' generated types and
//! traits, under the short names the rest of the host uses.

/// The current world, `evogate:plugin@0.2.4`, with the optional
/// `scheduled` export (`plugin-with-jobs`). Plugins built against 0.2.0,
/// 0.2.1, 0.2.2 and 0.2.4 link to it too: wasmtime matches 0.2.x imports and exports to it by
/// semver, and each 0.2.x only added to the one before. Exports are looked
/// up one interface at a time, so a plugin without `scheduled` (or, built
/// before 0.2.4, without `settings`) loads as well.
pub(crate) mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "evogate:plugin/plugin-with-jobs@0.2.4",
        imports: { "evogate:plugin/kv@0.2.4": async },
        exports: { default: async },
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

/// The first world, `evogate:plugin@0.1.0`: plugins built against it keep running.
pub(crate) mod generated_0_1 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "evogate:plugin/plugin@0.1.0",
        imports: { "evogate:plugin/kv@0.1.0": async },
        exports: { default: async },
    });
}

/// The current world's interfaces.
pub(crate) use generated::evogate::plugin0_2_4::{
    config as wit_config, job_outcome as wit_job_outcome, kv as wit_kv, types as wit_types,
};
pub(crate) use generated::exports::evogate::plugin0_2_4::{
    handler as wit_handler, identity as wit_identity, scheduled as wit_scheduled, settings as wit_settings,
};
/// The first world's interfaces.
pub(crate) use generated_0_1::evogate::plugin0_1_0 as wit_0_1;
