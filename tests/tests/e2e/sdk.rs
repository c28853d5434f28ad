//! The plugin SDK as its users meet it: the example plugin deployed on a
//! running gateway and serving from the shared store; a crate made by
//! `cargo xtask new-plugin` builds, tests and deploys as it is.

use evogate_e2e::{Gateway, counter_wasm, guest_wasm, plugin_table, request, workspace_root, xtask_bin};
use std::path::Path;
use std::process::Command;

const AUTH: (&str, &str) = ("authorization", "Bearer admin-secret");

/// Deploys `wasm` as plugin `name` through the admin API, as `evogate
/// deploy --force` does: the route starts with another program, which it replaces.
fn deploy(gateway: &Gateway, name: &str, wasm: &Path) {
    let bytes = std::fs::read(wasm).expect("the plugin's build");
    let reply = request("PUT", &gateway.admin_url(&format!("/plugins/{name}?force=true")), &[AUTH], Some(&bytes));
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[test]
fn the_example_plugin_deploys_on_a_running_gateway_counts_and_keeps_its_counts_across_a_rollback() {
    // The route starts with another plugin, as a route an operator replaces.
    let gateway = Gateway::start(&plugin_table("counter", &guest_wasm(), ""));
    deploy(&gateway, "counter", &counter_wasm());
    for expected in 1..=3 {
        let added = request("POST", &gateway.url("/counter/counters/visits"), &[], None);
        assert_eq!((added.status, added.json()["value"].as_u64()), (200, Some(expected)), "{}", added.text());
    }
    request("POST", &gateway.url("/counter/counters/errors"), &[], None);
    let listed = request("GET", &gateway.url("/counter/counters"), &[], None).json();
    assert_eq!(listed["items"], serde_json::json!([{"name": "errors", "value": 1}, {"name": "visits", "value": 3}]));
    let plugins = request("GET", &gateway.admin_url("/plugins"), &[AUTH], None).json();
    let live = &plugins.as_array().expect("plugins")[0];
    assert_eq!((&live["identity"], &live["live"]["version"]), (&"evogate-counter".into(), &"1.0.0".into()), "{live}");
    assert_eq!(live["world"], "evogate:plugin@0.2.4");
    // Data lives in the plugin's namespace, not in its build: back and forth, the counts stay.
    let rollback = request("POST", &gateway.admin_url("/plugins/counter/rollback"), &[AUTH], None);
    assert_eq!(rollback.status, 200, "{}", rollback.text());
    deploy(&gateway, "counter", &counter_wasm());
    let read = request("GET", &gateway.url("/counter/counters/visits"), &[], None);
    assert_eq!(read.json()["value"], 3, "{}", read.text());
}

/// Runs `program` with `args` in `dir`; its output when it succeeds.
fn run(program: &Path, args: &[&str], dir: &Path, target: &Path) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        // Cached between runs, and apart from the workspace's build (locked while the tests run).
        .env("CARGO_TARGET_DIR", target)
        // One compiler at a time: the other end-to-end tests run beside it, some of them timed.
        .env("CARGO_BUILD_JOBS", "1")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .expect("running a command");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() { Ok(text) } else { Err(text) }
}

#[test]
fn a_crate_made_by_new_plugin_tests_builds_and_deploys_as_it_is() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = workspace_root().join("target/new-plugin");
    let xtask = xtask_bin();
    let made = run(&xtask, &["new-plugin", "my-notes"], dir.path(), &target);
    assert!(made.as_ref().is_ok_and(|out| out.contains("MyNotes")), "{made:?}");
    let refused = run(&xtask, &["new-plugin", "my-notes"], dir.path(), &target).expect_err("exists already");
    assert!(refused.contains("exists already"), "{refused}");
    let bad = run(&xtask, &["new-plugin", "My Notes"], dir.path(), &target).expect_err("a bad name");
    assert!(bad.contains("a-z, 0-9 and -"), "{bad}");

    let crate_dir = dir.path().join("my-notes");
    let cargo = Path::new(env!("CARGO"));
    let tested = run(cargo, &["test", "--release"], &crate_dir, &target).expect("its tests pass as made");
    assert!(tested.contains("4 passed"), "{tested}");
    run(cargo, &["build", "--release", "--target", "wasm32-wasip2"], &crate_dir, &target).expect("it builds");
    let wasm = target.join("wasm32-wasip2/release/my_notes.wasm");
    let gateway = Gateway::start(&plugin_table("notes", &guest_wasm(), ""));
    deploy(&gateway, "notes", &wasm);
    let added = request("POST", &gateway.url("/notes/counters/first"), &[], None);
    assert_eq!((added.status, added.json()["value"].as_u64()), (200, Some(1)), "{}", added.text());
}

#[test]
fn an_evotor_app_made_by_new_plugin_tests_builds_and_calls_the_evotor_plugin_once_deployed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = workspace_root().join("target/new-plugin");
    let made = run(&xtask_bin(), &["new-plugin", "--evotor", "my-app"], dir.path(), &target);
    assert!(made.as_ref().is_ok_and(|out| out.contains("MyApp")), "{made:?}");
    let crate_dir = dir.path().join("my-app");
    let config = std::fs::read_to_string(crate_dir.join("evogate.toml")).expect("its configuration");
    assert!(config.contains("name = \"my-app\"") && config.contains("calls = [\"evotor\"]"), "{config}");

    let cargo = Path::new(env!("CARGO"));
    let tested = run(cargo, &["test", "--release"], &crate_dir, &target).expect("its tests pass as made");
    assert!(tested.contains("8 passed"), "{tested}");
    run(cargo, &["build", "--release", "--target", "wasm32-wasip2"], &crate_dir, &target).expect("it builds");
    let wasm = target.join("wasm32-wasip2/release/my_app.wasm");
    // Deployed over a placeholder beside the Evotor plugin, as a new extension is.
    let gateway = Gateway::start(&format!(
        "{}\n{}",
        evogate_e2e::evotor_table("/", "", ""),
        plugin_table("my-app", &guest_wasm(), "calls = [\"evotor\"]")
    ));
    deploy(&gateway, "my-app", &wasm);
    let headers =
        [("authorization", "Bearer not-a-token"), ("x-evotor-store-uuid", "20170228-f4f1-401b-80fa-9ecca8451ffb")];
    let refused = request("GET", &gateway.url("/my-app/v1/summary"), &headers, None);
    assert_eq!(
        (refused.status, refused.error_code()),
        (401, Some(1002)),
        "the Evotor plugin's answer: {}",
        refused.text()
    );
}
