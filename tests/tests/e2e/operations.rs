//! Running evogate as a service: checking a configuration before it goes
//! live, plugins checking their settings, reloading without a restart,
//! deploy guardrails and rolling both ways, and restarts that refuse
//! nothing (a handover, and systemd's socket activation).

use evogate_e2e::{ADMIN_TOKEN, Gateway, Load, counter_wasm, evogate_bin, evotor_table, guest_wasm, request, toml_str};
use std::process::Command;
use std::time::Duration;

const AUTH: (&str, &str) = ("authorization", "Bearer admin-secret");

fn admin(gateway: &Gateway, method: &str, path: &str, body: Option<&[u8]>) -> evogate_e2e::Reply {
    request(method, &gateway.admin_url(path), &[AUTH], body)
}

fn evogate(args: &[&str]) -> std::process::Output {
    Command::new(evogate_bin())
        .args(args)
        .env("EVOGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("EVOGATE_LOG", "warn")
        .output()
        .expect("running evogate")
}

fn partner(gateway: &Gateway, token: &str) -> u16 {
    request("GET", &gateway.url("/partner/v1/users"), &[("authorization", &format!("Bearer {token}"))], None).status
}

/// The Evotor plugin's settings an operator mistyped, as they were reported.
const MISTYPED: &str = "partner_api_tokne = \"t\"\nevents_webhook_secert = \"s\"\nbilling_enforcement = \"of\"\n\
                        user_token_ttl_secs = \"ten\"\n";

#[test]
fn check_names_each_problem_serve_refuses_them_and_check_runs_beside_a_live_gateway() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("evogate.toml");
    let data = toml_str(&dir.path().join("data").to_string_lossy());
    std::fs::write(&file, format!("data_dir = {data}\n{}", evotor_table("/", "", MISTYPED))).expect("write");
    let checked = evogate(&["check", "--config", &file.to_string_lossy()]);
    let problems = String::from_utf8_lossy(&checked.stderr).into_owned();
    assert_eq!(checked.status.code(), Some(1), "{problems}");
    for says in [
        "partner_api_tokne: not a setting of this plugin; did you mean partner_api_token?",
        "events_webhook_secert: not a setting of this plugin; did you mean events_webhook_secret?",
        "setting billing_enforcement = \"of\" must be \"evotor\" or \"off\"",
        "setting user_token_ttl_secs = \"ten\" is not a valid number",
    ] {
        assert_eq!(problems.lines().filter(|line| line.contains(says)).count(), 1, "{says}:\n{problems}");
    }
    assert!(!dir.path().join("data").exists(), "a check opens no store and makes no data directory");

    let served = Command::new(evogate_bin())
        .args(["serve", "--config", &file.to_string_lossy()])
        .env("EVOGATE_ADMIN__LISTEN", "127.0.0.1:0")
        .output()
        .expect("serve");
    let said = String::from_utf8_lossy(&served.stderr);
    assert!(!served.status.success(), "a mistyped setting stops the start");
    assert!(said.contains("did you mean partner_api_token") && said.contains("4 problem(s)"), "{said}");

    let gateway = Gateway::evotor("");
    let beside = evogate(&["check", "--config", &gateway.config_path().to_string_lossy()]);
    let stdout = String::from_utf8_lossy(&beside.stdout);
    assert!(beside.status.success(), "{stdout}{}", String::from_utf8_lossy(&beside.stderr));
    assert!(stdout.contains("evotor-partner@") && stdout.contains("settings checked"), "{stdout}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
}

#[test]
fn a_deploy_is_checked_against_the_settings_and_another_program_needs_force() {
    // The test plugin (evogate:plugin@0.1.0) does not check its settings: it starts with a mistyped one.
    let guest = Gateway::guest("", "[plugins.config]\npartner_api_tokne = \"t\"\n");
    let evotor = std::fs::read(evogate_e2e::evotor_wasm()).expect("the Evotor plugin");
    let refused = request("PUT", &guest.admin_url("/plugins/g?force=true"), &[AUTH], Some(&evotor));
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(refused.text().contains("did you mean partner_api_token"), "{}", refused.text());

    let gateway = Gateway::evotor("");
    let counter = std::fs::read(counter_wasm()).expect("the counter plugin");
    let foreign = admin(&gateway, "PUT", "/plugins/evotor", Some(&counter));
    assert_eq!(foreign.status, 409, "{}", foreign.text());
    assert!(
        foreign.text().contains("evotor-partner@") && foreign.text().contains("evogate-counter@"),
        "{}",
        foreign.text()
    );
    assert_eq!(partner(&gateway, "partner-secret"), 200, "the Evotor plugin still serves");

    let forced = admin(&gateway, "PUT", "/plugins/evotor?force=true", Some(&counter));
    assert_eq!(forced.status, 200, "{}", forced.text());
    assert!(gateway.wait_for_log("to_identity=evogate-counter@"), "the log names both identities");
    let listed = admin(&gateway, "GET", "/plugins", None).json();
    let evotor_version = listed[0]["previous"][0]["version"].as_str().expect("kept").to_owned();

    // Back to the Evotor plugin by its version, then forward to the counter again, and back.
    let addr = gateway.admin.trim_start_matches("http://").to_owned();
    let back = evogate(&["rollback", "evotor", "--to", &evotor_version, "--admin", &addr]);
    assert!(back.status.success(), "{}", String::from_utf8_lossy(&back.stderr));
    assert_eq!(partner(&gateway, "partner-secret"), 200);
    let listed = admin(&gateway, "GET", "/plugins", None).json();
    let counter_sha = listed[0]["later"][0]["sha256"].as_str().expect("rolled back from, kept").to_owned();
    let forward = admin(&gateway, "POST", &format!("/plugins/evotor/rollback?to={}", &counter_sha[..10]), None);
    assert_eq!(forward.status, 200, "{}", forward.text());
    assert_eq!(admin(&gateway, "GET", "/plugins", None).json()[0]["live"]["sha256"], counter_sha.as_str());
    let unknown = admin(&gateway, "POST", "/plugins/evotor/rollback?to=9.9.9", None);
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert!(unknown.text().contains("keeps no version"), "{}", unknown.text());
    let plain = admin(&gateway, "POST", "/plugins/evotor/rollback", None);
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert_eq!(partner(&gateway, "partner-secret"), 200, "a plain rollback goes back to the version before");
}

#[test]
fn a_reload_changes_settings_plugins_and_jobs_live_and_refuses_a_bad_file_whole() {
    let gateway = Gateway::evotor("");
    let path = gateway.config_path().to_owned();
    let original = std::fs::read_to_string(&path).expect("config");
    let rotated = original.replace("partner-secret", "partner-rotated");
    std::fs::write(&path, &rotated).expect("write");
    let reloaded = admin(&gateway, "POST", "/reload", None);
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(reloaded.json()["changes"][0], "plugin evotor: new settings");
    assert_eq!((partner(&gateway, "partner-secret"), partner(&gateway, "partner-rotated")), (401, 200));

    // A typo and a new address: refused whole, the settings in force kept; the address is named.
    let bad = rotated.replace("partner_api_token", "partner_api_tokne").replace("127.0.0.1:0", "127.0.0.1:1");
    std::fs::write(&path, &bad).expect("write");
    let refused = admin(&gateway, "POST", "/reload", None);
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert_eq!(refused.json()["applied"], false);
    assert_eq!(refused.json()["needsRestart"], serde_json::json!(["listen"]));
    assert!(refused.json()["problems"][0].as_str().unwrap_or_default().contains("did you mean partner_api_token"));
    assert_eq!(partner(&gateway, "partner-rotated"), 200, "the configuration in force is kept");

    // SIGHUP: a second plugin on its route, and a job for the Evotor plugin.
    let with_counter = format!(
        "{rotated}\n[[plugins.jobs]]\nname = \"sync\"\nevery = \"1d\"\n\n[[plugins]]\nname = \"counter\"\nroute = \"/counter\"\nwasm = {}\n",
        toml_str(&counter_wasm().to_string_lossy())
    );
    std::fs::write(&path, &with_counter).expect("write");
    gateway.signal("HUP");
    assert!(gateway.wait_for_log("plugin counter added on route /counter"), "{}", gateway.log());
    assert!(gateway.wait_for_log("job evotor/sync scheduled every 86400 s"), "{}", gateway.log());
    let hits = request("POST", &gateway.url("/counter/counters/hits"), &[], Some(b""));
    assert_eq!(hits.status, 200, "the new plugin serves: {}", hits.text());
    let listed = admin(&gateway, "GET", "/plugins", None).json();
    let evotor = listed.as_array().and_then(|all| all.iter().find(|p| p["name"] == "evotor")).expect("evotor").clone();
    assert_eq!(evotor["jobs"][0]["name"], "sync", "{listed}");

    // `evogate reload`: the plugin and the job removed.
    std::fs::write(&path, &rotated).expect("write");
    let addr = gateway.admin.trim_start_matches("http://").to_owned();
    let cli = evogate(&["reload", "--admin", &addr]);
    let said = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{said}{}", String::from_utf8_lossy(&cli.stderr));
    assert!(said.contains("plugin counter removed") && said.contains("job evotor/sync no longer scheduled"), "{said}");
    let gone = request("POST", &gateway.url("/counter/counters/hits"), &[], Some(b""));
    assert_ne!(gone.status, 200, "the Evotor plugin on / answers it now: {}", gone.text());
    assert_eq!(partner(&gateway, "partner-rotated"), 200);
    std::fs::write(&path, &bad).expect("write");
    let refused = evogate(&["reload", "--admin", &addr]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("did you mean partner_api_token"));
}

#[test]
fn a_restart_by_handover_refuses_no_request() {
    let mut gateway = Gateway::guest("[limits]\ndrain_timeout_ms = 5000\n", "");
    let (public, admin_url) = (gateway.base.clone(), gateway.admin.clone());
    let load = Load::start(vec![gateway.url("/g/version"); 4]);
    std::thread::sleep(Duration::from_millis(300));
    gateway.hand_over();
    std::thread::sleep(Duration::from_millis(300));
    let (answered, failed) = load.stop();
    eprintln!("handover under load: {answered} answered, {} refused or failed", failed.len());
    assert_eq!(failed, [], "a restart by handover refuses nothing ({answered} answered)");
    assert!(answered > 50, "{answered}");
    assert_eq!((gateway.base.clone(), gateway.admin.clone()), (public, admin_url), "the same sockets");
    assert!(gateway.wait_for_log("the gateway before has stopped"), "{}", gateway.log());
    assert_eq!(request("GET", &gateway.url("/g/version"), &[], None).status, 200);
}

#[test]
fn socket_activation_serves_the_socket_passed_and_a_restart_refuses_no_request() {
    use std::os::fd::AsRawFd as _;
    // The test holds the socket, as systemd does: it passes it to every process it starts.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = socket.local_addr().expect("addr").port();
    rustix::io::fcntl_setfd(&socket, rustix::io::FdFlags::empty()).expect("inheritable");
    let script =
        format!("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=public exec \"$0\" \"$@\" 3<&{}", socket.as_raw_fd());
    // bash, not sh: dash takes only one-digit descriptors in a redirection.
    let wrapper = ["bash", "-c", script.as_str()];
    let wasm = toml_str(&guest_wasm().to_string_lossy());
    let mut gateway =
        Gateway::start_under(&wrapper, &format!("[[plugins]]\nname = \"g\"\nroute = \"/g\"\nwasm = {wasm}\n"));
    assert_eq!(gateway.base, format!("http://127.0.0.1:{port}"), "the socket passed, not listen = 127.0.0.1:0");
    assert!(gateway.wait_for_log("serving the sockets systemd passed"), "{}", gateway.log());
    let load = Load::start(vec![gateway.url("/g/version"); 4]);
    std::thread::sleep(Duration::from_millis(300));
    gateway.restart_under(&wrapper);
    std::thread::sleep(Duration::from_millis(300));
    let (answered, failed) = load.stop();
    eprintln!("socket-activated restart under load: {answered} answered, {} refused or failed", failed.len());
    assert_eq!(failed, [], "a restart with the socket held refuses nothing ({answered} answered)");
    assert!(answered > 50, "{answered}");
    drop(socket);
}
