use super::*;

fn load_str(toml: &str) -> anyhow::Result<Config> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("evogate.toml");
    std::fs::write(&file, toml)?;
    Config::load(Some(&file))
}

#[test]
fn store_faults_exist_only_in_the_fault_injection_build() {
    let parsed = load_str("[store.faults]\ncommit_before = 5\nnamespaces = [\"evotor\"]");
    #[cfg(feature = "fault-injection")]
    assert_eq!(parsed.expect("the test build reads it").store.faults.map(|faults| faults.commit_before), Some(5));
    #[cfg(not(feature = "fault-injection"))]
    assert!(format!("{:#}", parsed.expect_err("a user's build refuses it")).contains("faults"));
    #[cfg(feature = "fault-injection")]
    assert!(Config::load(None).expect("defaults").store.faults.is_none(), "never on by default");
}

#[test]
fn defaults_alone_are_valid() {
    let config = Config::load(None).expect("defaults");
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.store.backend, BackendKind::Redb);
    assert!(config.plugins.is_empty(), "no plugin is built in");
    assert_eq!(config.plugins().expect_err("nothing to serve").to_string(), NO_PLUGINS);
}

#[test]
fn store_compression_is_zstd_unless_turned_off_and_names_what_it_takes() {
    assert_eq!(Config::load(None).expect("defaults").store.compression, crate::kv::Compression::Zstd);
    let set = |value: &str| load_str(&format!("[store]\ncompression = {value:?}\n"));
    assert_eq!(set("none").expect("valid").store.compression, crate::kv::Compression::None);
    assert_eq!(set("zstd").expect("valid").store.compression, crate::kv::Compression::Zstd);
    let err = format!("{:#}", set("lz4").expect_err("not a compression"));
    assert!(err.contains("lz4") && err.contains("zstd") && err.contains("none"), "{err}");
}

#[test]
fn a_health_path_is_a_plain_path_that_no_plugin_has_as_its_route() {
    let with = |path: &str| {
        load_str(&format!("health_path = {path:?}\n[[plugins]]\nname = 'a'\nroute = '/a/'\nwasm = 'a.wasm'\n"))
    };
    assert_eq!(with("/.well-known/ready").expect("valid").health_path.as_deref(), Some("/.well-known/ready"));
    assert!(with("/a/ready").is_ok(), "below a route: answered first, documented");
    for (path, says) in [("/a", "route"), ("ready", "a path like"), ("/", "a path like"), ("/r?x", "a path like")] {
        let err = format!("{:#}", with(path).expect_err(path));
        assert!(err.contains(says), "{path}: {err}");
    }
    assert!(Config::load(None).expect("defaults").health_path.is_none(), "off unless asked");
}

#[test]
fn cargo_xtask_run_serves_the_evotor_plugin_from_the_build_on_the_embedded_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository");
    let config = Config::load(Some(&root.join("xtask/run.toml"))).expect("valid");
    let [plugin] = config.plugins().expect("one plugin") else { panic!("one plugin") };
    assert_eq!((plugin.name.as_str(), plugin.route.as_str()), ("evotor", "/"));
    assert_eq!(plugin.error_format, crate::edge::ErrorFormat::Evotor, "the Evotor cloud reads the gateway's errors");
    assert!(plugin.config.is_empty(), "no credential in a file anyone may run");
    // Where `cargo xtask build` leaves it, and ./data, both of the repository.
    assert_eq!(plugin.wasm.relative(), root.join("xtask/../target/wasm32-wasip2/release/evotor_partner.wasm"));
    assert_eq!(config.data_dir.relative(), root.join("xtask/../data"));
    assert_eq!(config.store.backend, BackendKind::Redb);
}

#[test]
fn file_values_override_defaults_and_paths_are_relative_to_the_file() {
    let config = load_str(
        r#"
        listen = "127.0.0.1:9999"
        data_dir = "state"
        [store]
        backend = "memory"
        [limits]
        max_body_bytes = 10
        request_timeout_ms = 100
        instance_memory_bytes = 2097152
        max_concurrent_requests = 4
        [[plugins]]
        name = "evotor"
        route = "/"
        wasm = "p.wasm"
        [plugins.config]
        server_bearer_token = "s3cret"
        retries = 3
        "#,
    )
    .expect("config");
    assert_eq!(config.listen.port(), 9999);
    assert_eq!(config.store.backend, BackendKind::Memory);
    assert!(config.data_dir().ends_with("state"));
    assert!(config.data_dir().is_absolute());
    let settings = config.plugins[0].plugin_settings();
    assert_eq!(settings.config["server_bearer_token"], "s3cret");
    assert_eq!(settings.config["retries"], "3");
    assert!(settings.outbound.is_empty(), "no outgoing requests unless listed");
}

#[test]
fn allowed_outbound_hosts_are_parsed_at_load_and_a_bad_entry_names_its_plugin() {
    let plugin =
        |hosts: &str| format!("[[plugins]]\nname='std'\nroute='/std'\nwasm='a.wasm'\nallowed_outbound_hosts={hosts}");
    let config = load_str(&plugin("['https://api.evotor.ru', 'http://127.0.0.1:8080']")).expect("valid rules");
    let outbound = config.plugins[0].plugin_settings().outbound;
    assert!(outbound.allows(&"https://api.evotor.ru/api/v1".parse().expect("uri")));
    assert!(!outbound.allows(&"https://example.com/".parse().expect("uri")));
    let err = load_str(&plugin("['api.evotor.ru']")).expect_err("no scheme");
    assert!(format!("{err:#}").contains("\"std\"") && format!("{err:#}").contains("no scheme"), "{err:#}");
}

#[test]
fn a_plugin_calls_only_other_configured_plugins_each_named_once() {
    let two = |calls: &str| {
        format!(
            "[[plugins]]\nname='evotor'\nroute='/'\nwasm='e.wasm'\n\
             [[plugins]]\nname='loyalty'\nroute='/loyalty'\nwasm='l.wasm'\ncalls={calls}"
        )
    };
    let config = load_str(&two("['evotor']")).expect("valid");
    assert_eq!(config.plugins[1].plugin_settings().calls, ["evotor"]);
    assert!(config.plugins[0].plugin_settings().calls.is_empty(), "none by default");
    for (calls, says) in [
        ("['evotr']", "no plugin is named \"evotr\""),
        ("['loyalty']", "cannot call itself"),
        ("['evotor', 'evotor']", "twice"),
    ] {
        let err = load_str(&two(calls)).expect_err(calls);
        assert!(format!("{err:#}").contains(says), "{calls}: {err:#}");
    }
}

#[test]
fn unknown_keys_and_bad_values_are_refused_with_a_reason() {
    let err = load_str("lisen = \"127.0.0.1:1\"").expect_err("typo");
    assert!(format!("{err:#}").contains("lisen"), "{err:#}");
    let err = load_str("[limits]\nrequest_timeout_ms = 0").expect_err("zero timeout");
    assert!(format!("{err:#}").contains("request_timeout_ms"), "{err:#}");
    let err = load_str("[[plugins]]\nname='a'\nroute='/x'\nwasm='a'\n[[plugins]]\nname='b'\nroute='/x/'\nwasm='b'")
        .expect_err("same route");
    assert!(format!("{err:#}").contains("two plugins"), "{err:#}");
    let err = load_str("[admin]\nlisten = \"0.0.0.0:9090\"").expect_err("open admin");
    assert!(format!("{err:#}").contains("admin.token"), "{err:#}");
    let err = load_str("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"t\"").expect_err("admin token in clear");
    assert!(format!("{err:#}").contains("admin.allow_plain_http"), "{err:#}");
    let tls = load_str("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"t\"\n[admin.tls]\ncert = 'c.pem'\nkey = 'k.pem'")
        .expect("admin over TLS");
    assert!(tls.admin.tls.is_some_and(|tls| tls.key.relative().ends_with("k.pem")));
    let plain = load_str("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"t\"\nallow_plain_http = true")
        .expect("plain HTTP written out");
    assert!(plain.admin.allow_plain_http && plain.admin.tls.is_none());
    assert!(!Config::load(None).expect("defaults").admin.allow_plain_http);
    let err = load_str("[[plugins]]\nname='A b'\nroute='/'\nwasm='a'").expect_err("bad name");
    assert!(format!("{err:#}").contains("must match"), "{err:#}");
}

#[test]
fn connection_limits_tls_and_plugin_caps_are_read_and_checked() {
    let config = load_str(
        "[limits]\nmax_connections = 10\nheader_read_timeout_ms = 500\n[tls]\ncert = 'c.pem'\nkey = 'k.pem'\n\
         [[plugins]]\nname='a'\nroute='/'\nwasm='a'\nmax_concurrent_requests = 3",
    )
    .expect("valid");
    assert_eq!((config.limits.max_connections, config.limits.header_read_timeout_ms), (10, 500));
    assert!(config.tls.as_ref().is_some_and(|tls| tls.cert.relative().ends_with("c.pem")));
    assert_eq!(config.plugins[0].max_concurrent_requests, Some(3));
    assert!(Config::load(None).expect("defaults").tls.is_none(), "plain HTTP unless asked");
    for (bad, key) in [
        ("[limits]\nmax_connections = 0", "max_connections"),
        ("[limits]\nmax_header_bytes = 10", "max_header_bytes"),
        ("[limits]\nmax_body_bytes = 1000\nmax_body_bytes_in_flight = 999", "max_body_bytes_in_flight"),
        ("[tls]\ncert = 'c.pem'", "key"),
        ("[[plugins]]\nname='a'\nroute='/'\nwasm='a'\nmax_concurrent_requests = 100000", "max_concurrent_requests"),
        (
            "[[plugins]]\nname='a'\nroute='/'\nwasm='a'\nmax_concurrent_per_credential = 0",
            "max_concurrent_per_credential",
        ),
    ] {
        let err = load_str(bad).expect_err(bad);
        assert!(format!("{err:#}").contains(key), "{bad}: {err:#}");
    }
}

#[test]
fn a_missing_config_file_is_an_error() {
    let err = Config::load(Some(Path::new("/nonexistent/evogate.toml"))).expect_err("missing");
    assert!(format!("{err:#}").contains("does not exist"));
}

#[test]
fn secrets_can_live_in_files_beside_the_configuration() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("admin.secret"), "admin-token\n").expect("write");
    std::fs::write(dir.path().join("bearer.secret"), "bearer-token\n").expect("write");
    let file = dir.path().join("evogate.toml");
    std::fs::write(
        &file,
        "[admin]\ntoken = { file = 'admin.secret' }\n[[plugins]]\nname = 'evotor'\nroute = '/'\nwasm = 'e.wasm'\n\
         [plugins.config]\nserver_bearer_token = { file = 'bearer.secret' }\n",
    )
    .expect("write");
    let config = Config::load(Some(&file)).expect("loaded");
    assert_eq!(config.admin.token.as_deref(), Some("admin-token"));
    assert_eq!(config.plugins[0].plugin_settings().config["server_bearer_token"], "bearer-token");
    assert_eq!(config.source.as_deref(), Some(file.as_path()), "what a reload reads again");
    std::fs::remove_file(dir.path().join("bearer.secret")).expect("remove");
    let err = format!("{:#}", Config::load(Some(&file)).expect_err("the secret is gone"));
    assert!(err.contains("server_bearer_token") && err.contains("bearer.secret"), "{err}");
}
