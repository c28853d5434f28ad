//! Scheduled jobs end to end: a job runs at every tick in a fresh instance
//! with the plugin's store; the admin API lists it with its last and next
//! run and runs it now (the CLI too); failures, runaways and versions
//! without the export are outcomes, never crashes or error loops; a deploy
//! storm lets every run finish on the version it started on; and on three
//! nodes of one PostgreSQL database each tick runs once, never two at once,
//! even after the node running it is killed.

use evogate_e2e::{
    ADMIN_TOKEN, Gateway, Load, TestSchema, evogate_bin, get, guest_wasm, guest_wasm_version, postgres_url, request,
    toml_str,
};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AUTH: (&str, &str) = ("authorization", "Bearer admin-secret");

/// The 0.2.2 test plugin as `g` on `/g` with `jobs` (`[[plugins.jobs]]` tables) and `settings`.
fn with_jobs(top: &str, wasm: &std::path::Path, jobs: &str, settings: &str) -> String {
    format!(
        "{top}\n[[plugins]]\nname = \"g\"\nroute = \"/g\"\nwasm = {}\n[plugins.config]\n{settings}\n{jobs}\n",
        toml_str(&wasm.to_string_lossy())
    )
}

fn job(name: &str, every: &str, extra: &str) -> String {
    format!("[[plugins.jobs]]\nname = \"{name}\"\nevery = \"{every}\"\n{extra}\n")
}

fn current() -> std::path::PathBuf {
    guest_wasm_version("world-0.2.2")
}

/// The run records of `job`: (scheduled, started, ended, manual, version) per run, in commit order.
fn runs(gateway: &Gateway, job: &str) -> Vec<(u64, u64, u64, bool, String)> {
    let listed = get(&gateway.url(&format!("/g/kv/list?prefix=job/{job}/runs/")));
    assert_eq!(listed.status, 200, "{}", listed.text());
    listed
        .text()
        .lines()
        .map(|line| {
            let record = line.split_once('=').map(|(_, record)| record).unwrap_or_default();
            let field = |name: &str| {
                record.split(';').find_map(|pair| pair.strip_prefix(&format!("{name}="))).unwrap_or_default().to_owned()
            };
            let number = |name: &str| field(name).parse::<u64>().expect("a number");
            (number("scheduled"), number("started"), number("ended"), field("manual") == "true", field("version"))
        })
        .collect()
}

fn count(gateway: &Gateway, job: &str) -> u64 {
    get(&gateway.url(&format!("/g/kv/get?key=job/{job}/count"))).text().parse().unwrap_or(0)
}

fn jobs_of(gateway: &Gateway) -> Vec<Value> {
    let plugins = request("GET", &gateway.admin_url("/plugins"), &[AUTH], None).json();
    plugins[0]["jobs"].as_array().cloned().unwrap_or_default()
}

fn last_run(gateway: &Gateway, job: &str) -> Value {
    jobs_of(gateway).into_iter().find(|j| j["name"] == job).map(|j| j["lastRun"].clone()).unwrap_or(Value::Null)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Every one-second tick between the first run and the last either ran or
/// was left out because the run before was still going (on a loaded machine
/// a run may outlast its second), and then some node said so in its log.
fn assert_every_tick_ran_or_was_left_out_in_the_open(runs: &[(u64, u64, u64, bool, String)], nodes: &[&Gateway]) {
    let ran: Vec<u64> = runs.iter().filter(|run| !run.3).map(|run| run.0).collect();
    let (Some(first), Some(last)) = (ran.iter().min(), ran.iter().max()) else { return };
    let logs: Vec<String> = nodes.iter().map(|node| node.log()).collect();
    for tick in (*first..=*last).step_by(1000) {
        let reported = || {
            logs.iter()
                .any(|log| log.lines().any(|l| l.contains("tick left out") && l.contains(&format!("tick={tick}"))))
        };
        assert!(ran.contains(&tick) || reported(), "tick {tick} neither ran nor was reported left out: {ran:?}");
    }
    assert!(ran.len() * 2 > ((last - first) / 1000 + 1) as usize, "most ticks ran: {ran:?}");
}

#[test]
fn a_job_runs_at_every_tick_and_the_admin_api_shows_its_last_and_next_run() {
    let gateway = Gateway::start(&with_jobs("", &current(), &job("tick", "1s", ""), ""));
    assert!(wait_until(Duration::from_secs(6), || count(&gateway, "tick") >= 3), "three ticks in 6 s");
    let runs = runs(&gateway, "tick");
    assert_eq!(runs.len() as u64, count(&gateway, "tick"), "one record per run");
    assert_every_tick_ran_or_was_left_out_in_the_open(&runs, &[&gateway]);
    for (scheduled, started, ended, manual, version) in &runs {
        assert_eq!(scheduled % 1000, 0, "ticks fall on whole seconds");
        assert!(started >= scheduled && ended >= started && !manual && version == "1.0.0", "{runs:?}");
    }
    let jobs = jobs_of(&gateway);
    assert_eq!(jobs.len(), 1);
    let tick = &jobs[0];
    assert_eq!(
        (tick["name"].as_str(), tick["everySeconds"].as_u64(), tick["exported"].as_bool()),
        (Some("tick"), Some(1), Some(true))
    );
    assert_eq!(tick["timeoutMs"], 60_000, "the default timeout");
    assert!(tick["nextRunMs"].as_u64().is_some_and(|next| next % 1000 == 0 && next + 1000 >= now_ms()), "{tick}");
    // The last run as the API shows it once it has ended: asked while a tick runs, it has no
    // outcome and no version yet.
    let mut last = tick["lastRun"].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while last["outcome"].is_null() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        last = jobs_of(&gateway)[0]["lastRun"].clone();
    }
    assert_eq!(last["outcome"], "ok", "{last}");
    assert_eq!(last["version"], "g@1.0.0", "the configured name and the reported version");
    for needle in ["job run started", "job run ended", "outcome=\"ok\""] {
        assert!(gateway.wait_for_log(needle), "{needle}: {}", gateway.log());
    }
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let metrics = request("GET", &gateway.admin_url("/metrics"), &[("authorization", auth.as_str())], None).text();
    assert!(metrics.contains(r#"evogate_job_runs_total{plugin="g",job="tick",outcome="ok"}"#), "{metrics}");
    assert!(metrics.contains("evogate_job_duration_seconds"), "{metrics}");
}

#[test]
fn an_operator_runs_a_job_now_through_the_admin_api_and_the_cli() {
    let jobs = format!("{}{}", job("tick", "1h", ""), job("fail", "1h", ""));
    let gateway = Gateway::start(&with_jobs("", &current(), &jobs, ""));
    let run = request("POST", &gateway.admin_url("/plugins/g/jobs/tick/run"), &[AUTH], None);
    assert_eq!(run.status, 200, "{}", run.text());
    let run = run.json();
    assert_eq!((run["outcome"].as_str(), run["manual"].as_bool()), (Some("ok"), Some(true)), "{run}");
    assert_eq!(count(&gateway, "tick"), 1, "the run happened before the answer");
    assert!(runs(&gateway, "tick")[0].3, "the plugin was told it was a manual run");

    let admin = gateway.admin.trim_start_matches("http://").to_owned();
    let cli = |job: &str| {
        std::process::Command::new(evogate_bin())
            .args(["run-job", "g", job, "--admin", &admin])
            .env("EVOGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("running evogate run-job")
    };
    let ok = cli("tick");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("g/tick: ok"), "{}", String::from_utf8_lossy(&ok.stdout));
    assert_eq!(count(&gateway, "tick"), 2);
    let failed = cli("fail");
    assert!(!failed.status.success(), "a failed run fails the command");
    assert!(
        String::from_utf8_lossy(&failed.stdout).contains("error in"),
        "{}",
        String::from_utf8_lossy(&failed.stdout)
    );
    assert!(String::from_utf8_lossy(&failed.stdout).contains("failing on purpose"));

    assert_eq!(request("POST", &gateway.admin_url("/plugins/g/jobs/nope/run"), &[AUTH], None).status, 404);
    assert_eq!(request("POST", &gateway.admin_url("/plugins/x/jobs/tick/run"), &[AUTH], None).status, 404);
    assert_eq!(request("POST", &gateway.admin_url("/plugins/g/jobs/tick/run"), &[], None).status, 401);
}

#[test]
fn failing_and_runaway_jobs_are_outcomes_and_requests_go_on() {
    let jobs = format!("{}{}", job("fail", "1s", ""), job("loop", "1s", "timeout_ms = 300"));
    let gateway = Gateway::start(&with_jobs("", &current(), &jobs, ""));
    assert!(
        wait_until(Duration::from_secs(6), || {
            last_run(&gateway, "fail")["outcome"] == "error" && last_run(&gateway, "loop")["outcome"] == "timeout"
        }),
        "fail: {}, loop: {}",
        last_run(&gateway, "fail"),
        last_run(&gateway, "loop")
    );
    assert_eq!(last_run(&gateway, "fail")["error"], "failing on purpose");
    assert!(last_run(&gateway, "loop")["error"].as_str().is_some_and(|e| e.contains("300 ms")));
    assert_eq!(get(&gateway.url("/g/version")).status, 200, "requests are served meanwhile");
    // The next ticks run as planned: a failure does not stop the schedule.
    let before = gateway.log().matches("job=fail tick=").count();
    assert!(wait_until(Duration::from_secs(4), || gateway.log().matches("job=fail tick=").count() > before));
}

#[test]
fn jobs_of_a_version_without_the_export_are_skipped_with_one_log_line() {
    let gateway = Gateway::start(&with_jobs("", &guest_wasm(), &job("tick", "1s", ""), ""));
    assert!(wait_until(Duration::from_secs(5), || last_run(&gateway, "tick")["outcome"] == "skipped"));
    std::thread::sleep(Duration::from_millis(2100));
    let log = gateway.log();
    assert_eq!(log.matches("does not export evogate:plugin/scheduled").count(), 1, "one line per version:\n{log}");
    assert_eq!(jobs_of(&gateway)[0]["exported"], false);
    assert_eq!(get(&gateway.url("/g/version")).status, 200);
}

#[test]
fn a_bad_job_declaration_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().expect("dir");
    for (jobs, reason) in [
        (job("tick", "500ms", ""), "whole seconds"),
        (job("tick", "soon", ""), "not a duration"),
        (job("Tick", "1s", ""), "must match"),
        (job("tick", "1s", "timeout_ms = 3600001"), "timeout_ms"),
        (job("tick", "10s", "jitter = \"10s\""), "jitter"),
        (format!("{}{}", job("tick", "1s", ""), job("tick", "2s", "")), "declared twice"),
    ] {
        let config = dir.path().join("evogate.toml");
        std::fs::write(&config, with_jobs("", &current(), &jobs, "")).expect("config");
        let out =
            std::process::Command::new(evogate_bin()).args(["serve", "--config"]).arg(&config).output().expect("run");
        assert!(!out.status.success(), "{jobs}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(reason),
            "{jobs}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_run_finishes_on_the_version_it_started_on_through_a_deploy_storm() {
    let gateway = Gateway::start(&with_jobs("", &current(), &job("tick", "1s", ""), "job_sleep_ms = \"400\""));
    let with = std::fs::read(current()).expect("0.2.2 build");
    let without = std::fs::read(guest_wasm()).expect("0.1.0 build");
    let load = Load::start([gateway.url("/g/version")]);
    let until = Instant::now() + Duration::from_secs(6);
    let mut deploys = 0;
    while Instant::now() < until {
        let bytes = if deploys % 2 == 0 { &without } else { &with };
        let deployed = request("PUT", &gateway.admin_url("/plugins/g"), &[AUTH], Some(bytes));
        assert_eq!(deployed.status, 200, "{}", deployed.text());
        deploys += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    let (served, failures) = load.stop();
    assert!(failures.is_empty() && served > 0, "{failures:?}");
    // Back on the version with the job: it keeps running.
    request("PUT", &gateway.admin_url("/plugins/g"), &[AUTH], Some(&with));
    let before = count(&gateway, "tick");
    assert!(wait_until(Duration::from_secs(4), || count(&gateway, "tick") > before), "ticks go on after the storm");
    let log = gateway.log();
    for outcome in ["outcome=\"trap\"", "outcome=\"timeout\"", "outcome=\"error\"", "lease lost"] {
        assert!(!log.contains(outcome), "{outcome} during the storm:\n{log}");
    }
    assert!(
        log.matches("does not export evogate:plugin/scheduled").count() <= 1,
        "one line for the version without it"
    );
    let runs = runs(&gateway, "tick");
    assert!(runs.iter().all(|(_, started, ended, _, _)| ended - started >= 400), "every run ran to its end: {runs:?}");
}

/// Three nodes on one database, the job spinning 300 ms every second.
#[test]
fn three_nodes_run_each_tick_once_never_two_at_once_and_survive_the_runner_killed() {
    let Some(url) = postgres_url("three_nodes_run_each_tick_once_never_two_at_once_and_survive_the_runner_killed")
    else {
        return;
    };
    let schema = TestSchema::new(&url);
    let config = with_jobs(&schema.store_table(&url), &current(), &job("tick", "1s", ""), "job_sleep_ms = \"300\"");
    let mut nodes: Vec<Gateway> = (0..3).map(|_| Gateway::start(&config)).collect();
    std::thread::sleep(Duration::from_secs(6));
    let records = runs(&nodes[0], "tick");
    assert!(records.len() >= 4, "{records:?}");
    assert_eq!(records.len() as u64, count(&nodes[1], "tick"), "one record per run");
    let mut ticks: Vec<u64> = records.iter().map(|r| r.0).collect();
    ticks.sort_unstable();
    ticks.dedup();
    assert_eq!(ticks.len(), records.len(), "no tick ran twice: {records:?}");
    assert_every_tick_ran_or_was_left_out_in_the_open(&records, &nodes.iter().collect::<Vec<_>>());
    let mut spans: Vec<(u64, u64)> = records.iter().map(|r| (r.1, r.2)).collect();
    spans.sort_unstable();
    assert!(spans.windows(2).all(|pair| pair[1].0 >= pair[0].1), "runs never overlapped: {spans:?}");

    // Kill the node running the job, mid-run.
    let mut killed = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while killed.is_none() && Instant::now() < deadline {
        let last = last_run(&nodes[0], "tick");
        if last["running"] == true {
            let pid =
                last["node"].as_str().and_then(|node| node.split('-').next()).and_then(|pid| pid.parse::<u32>().ok());
            if let Some(index) = nodes.iter().position(|node| Some(node.pid()) == pid) {
                nodes[index].signal("KILL");
                killed = Some((nodes.remove(index), now_ms()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (dead, killed_at) = killed.expect("caught a run in progress");
    let dead_node = format!("{}-", dead.pid());
    // Its lease expires (10 s at most); the next ticks run on the others.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let last = last_run(&nodes[0], "tick");
            last["startedMs"].as_u64().is_some_and(|at| at > killed_at)
                && last["node"].as_str().is_some_and(|node| !node.starts_with(&dead_node))
        }),
        "a tick ran after the kill: {}",
        last_run(&nodes[0], "tick")
    );
    assert!(wait_until(Duration::from_secs(5), || last_run(&nodes[1], "tick")["outcome"] == "ok"));
}
