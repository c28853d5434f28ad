//! Every metric the gateway records, named and described once: the code
//! records through these constants, `/metrics` carries their help text,
//! and the table in `docs/operations.md` is checked against [`ALL`].

// Without the runtime only the store's metrics are recorded.
#![cfg_attr(not(feature = "runtime"), allow(dead_code))]

/// What a metric is in Prometheus' terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: its name, kind, label names and what it counts.
#[derive(Debug)]
pub(crate) struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    /// The label names (Prometheus takes them from each recording; the docs table lists them).
    #[cfg_attr(not(test), allow(dead_code))]
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! metrics_table {
    ($($(#[$attr:meta])* $id:ident: $kind:ident $name:literal [$($label:literal),*] $help:literal;)*) => {
        $($(#[$attr])* pub(crate) const $id: &str = $name;)*
        /// Every metric, in the order the docs list them.
        pub(crate) const ALL: &[Metric] =
            &[$(Metric { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help }),*];
    };
}

metrics_table! {
    BUILD_INFO: Gauge "evogate_build_info" ["version"]
        "always 1, labelled with the running gateway's version";
    STORE_UP: Gauge "evogate_store_up" ["backend"]
        "1 when the store answered at the last scrape, 0 when it did not (in time)";
    STORE_BYTES: Gauge "evogate_store_bytes" ["backend"]
        "what the store takes on disk, read at each scrape: the redb file's blocks (as du counts them: redb lengthens the file ahead of its needs, and the part not written yet takes no disk), or PostgreSQL's evogate tables with their indexes and TOAST";
    REQUESTS: Counter "evogate_requests_total" ["plugin", "route", "status"]
        "requests answered; plugin and route are empty for a request no route serves";
    REQUEST_DURATION: Histogram "evogate_request_duration_seconds" ["plugin"]
        "time from a request's head to its answer";
    PLUGIN_FAILURES: Counter "evogate_plugin_failures_total" ["plugin", "kind"]
        "requests a plugin failed: kind trap, deadline or memory_limit";
    PLUGIN_MEMORY: Histogram "evogate_plugin_memory_bytes" ["plugin"]
        "the linear memory each request's instance grew to (what limits.instance_memory_bytes has to hold)";
    INSTANCES_IN_USE: Gauge "evogate_instances_in_use" []
        "plugin instances serving a request now";
    INSTANCES_MAX: Gauge "evogate_instances_max" []
        "plugin instances that may serve requests at once (limits.max_concurrent_requests)";
    REQUESTS_REFUSED: Counter "evogate_requests_refused_total" ["plugin", "reason"]
        "requests answered 503 at once by a plugin's max_concurrent_requests, or, with reason=credential, by its max_concurrent_per_credential";
    CONNECTIONS_REFUSED: Counter "evogate_connections_refused_total" []
        "connections past limits.max_connections";
    ADMIN_CONNECTIONS_REFUSED: Counter "evogate_admin_connections_refused_total" []
        "admin connections closed past the admin listener's 64, every one of those busy for a second";
    SLOW_BODIES: Counter "evogate_slow_bodies_total" []
        "request bodies cut off by limits.min_body_bytes_per_sec";
    STORE_CALLS: Counter "evogate_store_calls_total" ["plugin", "op"]
        "store calls of each plugin's requests and jobs: op get (get and get-many), scan or commit";
    KV_COMMIT_DURATION: Histogram "evogate_kv_commit_duration_seconds" []
        "time of one store commit";
    KV_CONFLICTS: Counter "evogate_kv_conflicts_total" []
        "commits refused because a checked key had changed";
    KV_OUTCOME_UNKNOWN: Counter "evogate_kv_outcome_unknown_total" []
        "commits whose outcome the store could not tell";
    KV_CALLS_REFUSED: Counter "evogate_kv_calls_refused_total" []
        "store calls refused as unavailable: no room under limits.max_kv_calls_in_flight by the request's deadline";
    DEPLOYS: Counter "evogate_deploys_total" ["plugin"]
        "plugin versions deployed";
    DEPLOYS_REFUSED: Counter "evogate_deploys_refused_total" ["plugin"]
        "deploys refused because the component did not load";
    ROLLBACKS: Counter "evogate_rollbacks_total" ["plugin"]
        "rollbacks to the previous version";
    OUTBOUND_REQUESTS: Counter "evogate_outbound_requests_total" ["plugin", "outcome"]
        "the plugins' outgoing HTTP requests: outcome ok, error, or refused by allowed_outbound_hosts";
    OUTBOUND_DURATION: Histogram "evogate_outbound_request_seconds" ["plugin"]
        "time of one outgoing request up to its response head";
    PLUGIN_CALLS: Counter "evogate_plugin_calls_total" ["caller", "callee", "outcome"]
        "calls between plugins in process: outcome ok (an answer below 500), error (500 and up), or refused (not in calls, a call back, too deep, no such plugin)";
    PLUGIN_CALL_DURATION: Histogram "evogate_plugin_call_seconds" ["caller", "callee"]
        "time of one call between plugins, up to the callee's answer";
    JOB_RUNS: Counter "evogate_job_runs_total" ["plugin", "job", "outcome"]
        "scheduled job runs: outcome ok, partial (the plugin said part of its work failed), error, timeout, memory, trap or skipped";
    JOB_DURATION: Histogram "evogate_job_duration_seconds" ["plugin", "job"]
        "time of one job run";
    JOB_TICKS_MISSED: Counter "evogate_job_ticks_missed_total" ["plugin", "job", "reason"]
        "job ticks not run: reason still_running or store_unavailable";
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    STORE_FAULTS_INJECTED: Counter "evogate_store_faults_injected_total" ["kind"]
        "store faults injected (the test build only)";
}

/// The metrics every answered request of one route records, each handle
/// registered once (the duration when the route is made, a status's count
/// at its first answer) rather than looked up, with its labels allocated,
/// per request. Handles keep the recorder they were registered with, so
/// routes are made after the process's recorder is installed
/// ([`crate::run`] installs it first).
pub(crate) struct RouteMetrics {
    duration: metrics::Histogram,
    /// [`REQUESTS`] by status, 100–599, each registered at its first use.
    by_status: Box<[std::sync::OnceLock<metrics::Counter>]>,
    plugin: String,
    route: String,
}

impl RouteMetrics {
    const FIRST_STATUS: u16 = 100;
    const STATUSES: usize = 500;

    /// The handles of plugin `plugin` on `route` (both empty: requests no route serves).
    pub(crate) fn new(plugin: &str, route: &str) -> Self {
        Self {
            duration: metrics::histogram!(REQUEST_DURATION, "plugin" => plugin.to_owned()),
            by_status: (0..Self::STATUSES).map(|_| std::sync::OnceLock::new()).collect(),
            plugin: plugin.to_owned(),
            route: route.to_owned(),
        }
    }

    /// Counts one answer with `status` that took `elapsed`.
    pub(crate) fn answered(&self, status: u16, elapsed: std::time::Duration) {
        self.duration.record(elapsed.as_secs_f64());
        let register = || {
            let labels =
                [("plugin", self.plugin.clone()), ("route", self.route.clone()), ("status", status.to_string())];
            metrics::counter!(REQUESTS, &labels)
        };
        match self.by_status.get(usize::from(status.wrapping_sub(Self::FIRST_STATUS))) {
            Some(counter) => counter.get_or_init(register).increment(1),
            // hyper allows up to 999; such a status is rare enough to look up.
            None => register().increment(1),
        }
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics").field("plugin", &self.plugin).field("route", &self.route).finish_non_exhaustive()
    }
}

/// Gives the process's recorder each metric's help text (Prometheus `# HELP`).
pub(crate) fn describe() {
    for metric in ALL {
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    #[cfg(feature = "runtime")]
    process().describe();
}

/// The process's own metrics, Prometheus' standard `process_*` (CPU,
/// resident and virtual memory, open and most file descriptors, threads,
/// start time), read at each scrape.
#[cfg(feature = "runtime")]
pub(crate) fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// The `process_*` metrics [`process`] records, as alert rules and dashboards may name them.
#[cfg(test)]
pub(crate) const PROCESS_METRICS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// The metrics table of `docs/operations.md`, as [`ALL`] writes it.
#[cfg(test)]
fn docs_table() -> String {
    let mut table = String::from("| metric | type | labels | what it counts |\n|---|---|---|---|\n");
    for metric in ALL {
        let kind = match metric.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let labels = metric.labels.iter().map(|label| format!("`{label}`")).collect::<Vec<_>>().join(", ");
        table.push_str(&format!("| `{}` | {kind} | {labels} | {} |\n", metric.name, metric.help));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric names a PromQL text mentions (`evogate_…`, `process_…`),
    /// a histogram's series (`_bucket`, `_sum`, `_count`) named by the histogram.
    fn metrics_named(text: &str) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        let bytes = text.as_bytes();
        for prefix in ["evogate_", "process_"] {
            let mut from = 0;
            while let Some(at) = text[from..].find(prefix).map(|at| at + from) {
                let before = at.checked_sub(1).map(|i| bytes[i]);
                let end = text[at..]
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .map_or(text.len(), |len| at + len);
                if !before.is_some_and(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
                    let name = &text[at..end];
                    let histogram = ALL.iter().any(|metric| {
                        metric.kind == Kind::Histogram
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|series| name == format!("{}{series}", metric.name))
                    });
                    let name = if histogram { name.rsplit_once('_').map_or(name, |(base, _)| base) } else { name };
                    names.insert(name.to_owned());
                }
                from = end;
            }
        }
        names
    }

    #[test]
    fn the_dashboard_and_the_alert_rules_name_only_metrics_the_gateway_exports() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
        let exported: Vec<&str> = ALL.iter().map(|metric| metric.name).chain(PROCESS_METRICS.iter().copied()).collect();
        for file in ["grafana/evogate-dashboard.json", "prometheus/evogate-alerts.yml"] {
            let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|err| panic!("{file}: {err}"));
            let named = metrics_named(&text);
            assert!(named.len() >= 5, "{file} names the metrics it uses: {named:?}");
            let unknown: Vec<&String> = named.iter().filter(|name| !exported.contains(&name.as_str())).collect();
            assert!(unknown.is_empty(), "{file} names metrics evogate does not export: {unknown:?}");
        }
        let alerts = std::fs::read_to_string(root.join("prometheus/evogate-alerts.yml")).expect("the rules");
        for alert in
            ["EvogateSyncFailing", "EvogateDeliveriesRefused", "EvogateStoreUnavailable", "EvogateInstancesExhausted"]
        {
            assert!(alerts.contains(&format!("alert: {alert}")), "{alert}");
        }
        assert_eq!(
            metrics_named("rate(evogate_request_duration_seconds_bucket[5m]) + evogate_no_such_total + xevogate_not"),
            ["evogate_no_such_total", "evogate_request_duration_seconds"].map(String::from).into_iter().collect()
        );
    }

    #[cfg(feature = "runtime")]
    #[test]
    fn the_process_metrics_are_recorded_under_the_names_the_rules_use() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            process().describe();
            process().collect();
        });
        let text = handle.render();
        for name in PROCESS_METRICS {
            assert!(
                text.contains(&format!("\n{name} ")) || text.starts_with(&format!("{name} ")),
                "{name} missing:\n{text}"
            );
        }
    }

    #[test]
    fn the_operations_guide_lists_every_metric_as_the_code_names_it() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md"))
            .expect("docs/operations.md");
        let table = docs_table();
        assert!(docs.contains(&table), "docs/operations.md must hold this metrics table:\n{table}");
    }

    #[test]
    fn route_metrics_count_each_status_apart_under_the_routes_labels() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Each status registers at its first answer: with the recorder in scope, as the
        // process's global recorder always is.
        metrics::with_local_recorder(&recorder, || {
            let (served, unrouted) = (RouteMetrics::new("shop", "/shop"), RouteMetrics::new("", ""));
            for status in [200, 200, 404, 999] {
                served.answered(status, std::time::Duration::from_millis(3));
            }
            unrouted.answered(404, std::time::Duration::from_millis(1));
        });
        let rendered = handle.render();
        for line in [
            r#"evogate_requests_total{plugin="shop",route="/shop",status="200"} 2"#,
            r#"evogate_requests_total{plugin="shop",route="/shop",status="404"} 1"#,
            r#"evogate_requests_total{plugin="shop",route="/shop",status="999"} 1"#,
            r#"evogate_requests_total{plugin="",route="",status="404"} 1"#,
            r#"evogate_request_duration_seconds_count{plugin="shop"} 4"#,
            r#"evogate_request_duration_seconds_count{plugin=""} 1"#,
        ] {
            assert!(rendered.contains(line), "{line} in:\n{rendered}");
        }
    }

    #[test]
    fn metric_names_are_unique_and_prometheus_names() {
        let mut names: Vec<&str> = ALL.iter().map(|metric| metric.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        for metric in ALL {
            assert!(metric.name.starts_with("evogate_"), "{}", metric.name);
            assert!(metric.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", metric.name);
            assert_eq!(metric.kind == Kind::Counter, metric.name.ends_with("_total"), "{}", metric.name);
        }
    }

    /// A metric recorded under a literal name would bypass the table.
    #[test]
    fn the_code_records_metrics_only_by_the_names_above() {
        let mut files = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
        let mut literal = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(
                    std::fs::read_dir(&path).expect("a source directory").map(|entry| entry.expect("an entry").path()),
                );
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                for macro_call in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
                    if text.contains(macro_call) {
                        literal.push(format!("{}: {macro_call}", path.display()));
                    }
                }
            }
        }
        assert!(literal.is_empty(), "metrics recorded under a literal name: {literal:?}");
    }
}
