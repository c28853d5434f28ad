//! The end-to-end tests: the real `evogate` binary (built by `cargo xtask
//! test`), the real plugins, real HTTP. One test binary, so the helpers in
//! `tests/src` are built and linked once; each module is one subject.
//!
//! Run one subject with its module path as the filter, e.g.
//! `cargo xtask test --test e2e -- faults::`.

/// Evotor apps: a plugin beside the Evotor plugin, calling it in process; calls between plugins.
mod apps;
/// Backups of a serving gateway, restores, moving between redb and PostgreSQL, `store verify`.
mod backup;
/// The documentation: every relative link resolves, every configuration key is documented.
mod docs;
/// What a `200 OK` promises when the process is killed mid-stream.
mod durability;
/// HTTPS, HTTP/2, certificate reload, drain, slow clients, connection limits.
mod edges;
/// Evotor's signed event webhooks: signed deliveries taken once, forged ones never.
mod events;
/// The Evotor protocol as the Evotor cloud and the partner's systems use it.
mod evotor;
/// Store faults, a full disk, PostgreSQL stopped, SIGKILL during deploys.
mod faults;
/// Several nodes on one PostgreSQL database (skipped without one).
mod fleet;
/// Sandboxing, limits, isolation, plugin answers the gateway must correct.
mod gateway;
/// Hot swap under load, rollback, restart, the admin API and the CLI.
mod hotswap;
/// What the Evotor cloud really sends, taken whole.
mod intake;
/// Scheduled jobs: ticks, the admin API and CLI, outcomes, hot swap, one run per tick across nodes.
mod jobs;
/// Running as a service: `evogate check`, settings checks, reload, deploy guardrails, restarts that refuse nothing.
mod operations;
/// Outgoing HTTP of evogate plugins: allow-list, caps, deadline, TLS.
mod outgoing;
/// Push notifications to the partner's app and the renewed publisher token, against a mock publisher API.
mod push;
/// The plugin SDK: its example deployed on a running gateway, `cargo xtask new-plugin`.
mod sdk;
/// Standard wasi:http components: served, limited, deployed, on wasi:keyvalue.
mod standard;
/// The Evotor plugin's cloud sync against a mock Evotor cloud.
mod sync;
/// Traces at an OTLP receiver, JSON logs, job outcomes, the operator's metrics.
mod telemetry;
