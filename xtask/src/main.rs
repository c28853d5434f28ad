//! Build orchestration: the two commands of the README and a few helpers.
//!
//! ```text
//! cargo xtask run [-- ARGS]   build the plugin and the gateway, then `evogate serve ARGS`
//! cargo xtask test            build everything once, then run every test
//! cargo xtask build           build the plugins (wasm32-wasip2) and the gateway, release
//! cargo xtask bench           build, then run the gateway benchmark
//! cargo xtask bench-serve     evogate against `wasmtime serve` on the same standard component
//! cargo xtask fuzz [SECONDS]  run every fuzz target SECONDS each (default 60; nightly + cargo-fuzz)
//! cargo xtask new-plugin [--evotor] NAME [DIR]  a plugin crate of one's own, from the SDK's
//!                             example (`--evotor`: an Evotor app's backend, from the loyalty example)
//! ```

mod new_plugin;

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.skip_while(|arg| arg == "--").collect();
    let root = workspace_root();
    let invoked_in = std::env::current_dir().context("reading the working directory")?;
    std::env::set_current_dir(&root).with_context(|| format!("entering {}", root.display()))?;
    match task.as_str() {
        "build" => build(),
        "new-plugin" => new_plugin::new_plugin(&root, &invoked_in, &rest),
        "run" => {
            build()?;
            run(&rest)
        }
        "test" => {
            build_for_tests()?;
            test(&rest)
        }
        "fuzz" => {
            let seconds: u64 = match rest.first() {
                Some(seconds) => {
                    seconds.parse().with_context(|| format!("SECONDS must be a number, not {seconds:?}"))?
                }
                None => 60,
            };
            fuzz(seconds)
        }
        "bench" => {
            build()?;
            // Every bench of the gateway and of the Evotor plugin: their manifests are the one list.
            cargo(&["bench", "-p", "evogate", "-p", "evogate-e2e", "--bench", "*"])
        }
        "bench-serve" => {
            let wasmtime = install_wasmtime_cli()?;
            build()?;
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["bench", "-p", "evogate", "--bench", "serve"])
                .env("WASMTIME_BIN", &wasmtime)
                .status()?;
            if !status.success() {
                bail!("the serve bench failed ({status})");
            }
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 run [-- ARGS]  build, then run the gateway with the Evotor plugin (evogate serve ARGS)\n  \
                 test           build everything, then run every test\n  \
                 build          build the plugins and the gateway (release)\n  \
                 bench          build, then run the benchmarks (PostgreSQL rows with EVOGATE_TEST_POSTGRES_URL)\n  \
                 bench-serve    evogate against `wasmtime serve` on the same standard component (installs wasmtime-cli)\n  \
                 fuzz [SECONDS] run every fuzz target for SECONDS each (installs nightly and cargo-fuzz if missing)\n  \
                 new-plugin [--evotor] NAME [DIR]  make a plugin crate of one's own (docs/writing-a-plugin.md); \
                 --evotor: an Evotor app's backend (docs/evotor-apps.md)"
            );
            if task.is_empty() { Ok(()) } else { bail!("unknown command {task:?}") }
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// Runs `cargo ARGS`, failing on a non-zero exit.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .env_remove("TEST_GUEST_VERSION")
        .env_remove("TEST_GUEST_WORLD")
        .env_remove("HELLO_VERSION")
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Makes sure the wasm target is installed (a fresh machine lacks it).
fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(output) if String::from_utf8_lossy(&output.stdout).lines().any(|l| l.trim() == WASM_TARGET) => Ok(()),
        Ok(_) => {
            eprintln!("+ rustup target add {WASM_TARGET}");
            let status = Command::new("rustup").args(["target", "add", WASM_TARGET]).status()?;
            if !status.success() {
                bail!("rustup target add {WASM_TARGET} failed");
            }
            Ok(())
        }
        // Without rustup the toolchain must already carry the target; cargo will say if not.
        Err(_) => Ok(()),
    }
}

/// The wasmtime version evogate embeds: `wasmtime serve` of the same one is the anchor.
const WASMTIME_VERSION: &str = "48.0.8";

/// `wasmtime` of [`WASMTIME_VERSION`] in `target/wasmtime-cli`, installed
/// with `cargo install` the first time (several minutes), reused after.
fn install_wasmtime_cli() -> anyhow::Result<PathBuf> {
    let root = Path::new("target/wasmtime-cli");
    let bin = root.join("bin/wasmtime");
    let installed = Command::new(&bin).arg("--version").output();
    if installed.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(WASMTIME_VERSION)) {
        return Ok(std::fs::canonicalize(bin)?);
    }
    run_checked(Command::new("cargo").args([
        "install",
        "wasmtime-cli",
        "--version",
        WASMTIME_VERSION,
        "--locked",
        "--root",
        &root.to_string_lossy(),
    ]))?;
    Ok(std::fs::canonicalize(bin)?)
}

/// Versions of the test plugin the hot-swap tests deploy, besides the default 1.0.0.
const GUEST_VERSIONS: &[&str] = &["2.0.0"];

fn build() -> anyhow::Result<()> {
    build_plugins()?;
    cargo(&["build", "--release", "-p", "evogate"])
}

/// The test plugin in each of its versions, and the Evotor plugin.
fn build_plugins() -> anyhow::Result<()> {
    ensure_wasm_target()?;
    // Other versions first (only their own crate rebuilds), then the
    // defaults, so `test_guest.wasm` is 1.0.0 and `standard_hello.wasm` 1 at the end.
    for version in GUEST_VERSIONS {
        build_version("test-guest", "TEST_GUEST_VERSION", version, &format!("target/test-guest-{version}.wasm"))?;
    }
    for world in ["0.2.0", "0.2.1", "0.2.2", "0.2.3"] {
        build_version("test-guest", "TEST_GUEST_WORLD", world, &format!("target/test-guest-world-{world}.wasm"))?;
    }
    build_version("standard-hello", "HELLO_VERSION", "2", "target/standard-hello-2.wasm")?;
    cargo(&[
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "-p",
        "evotor-partner",
        "-p",
        "evogate-counter",
        "-p",
        "evogate-loyalty",
        "-p",
        "test-guest",
        "-p",
        "standard-hello",
        "-p",
        "standard-counter",
        "-p",
        "standard-cas",
    ])
}

/// Builds the wasm `package` with `var=version` and keeps the component as `keep`.
fn build_version(package: &str, var: &str, version: &str, keep: &str) -> anyhow::Result<()> {
    let built = format!("target/{WASM_TARGET}/release/{}.wasm", package.replace('-', "_"));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", WASM_TARGET, "-p", package])
        .env_remove("TEST_GUEST_VERSION")
        .env_remove("TEST_GUEST_WORLD")
        .env_remove("HELLO_VERSION")
        .env(var, version)
        .status()?;
    if !status.success() {
        bail!("building {package} {version} failed");
    }
    std::fs::copy(&built, keep).with_context(|| format!("copying {built}"))?;
    Ok(())
}

/// What the tests need, built once: the plugins, then every target of the
/// workspace in one invocation. Building tests resolves the dependencies'
/// features with the dev-dependencies; building the gateway alone would
/// resolve them another way and compile wasmtime a second time.
///
/// The tests' gateway has the `fault-injection` feature (`[store.faults]`,
/// configured by the fault-injection suite only); `build` leaves it out.
fn build_for_tests() -> anyhow::Result<()> {
    build_plugins()?;
    cargo(&["build", "--release", "--workspace", "--all-targets", "--features", TEST_FEATURES])
}

/// Features of the build the tests run.
const TEST_FEATURES: &str = "evogate/fault-injection,evogate-plugin/testing";

fn run(args: &[String]) -> anyhow::Result<()> {
    let mut serve: Vec<String> = vec!["serve".into()];
    let configured = args.iter().any(|arg| arg == "--config" || arg.starts_with("--config="))
        || std::env::var_os("EVOGATE_CONFIG").is_some();
    if !configured {
        // The gateway has no plugin built in: its configuration names them.
        let file = if Path::new("evogate.toml").is_file() { "evogate.toml" } else { "xtask/run.toml" };
        serve.extend(["--config".into(), file.into()]);
    }
    serve.extend(args.iter().cloned());
    eprintln!("+ target/release/evogate {}", serve.join(" "));
    let status = Command::new(Path::new("target/release/evogate")).args(&serve).status()?;
    if !status.success() {
        bail!("evogate exited with {status}");
    }
    Ok(())
}

fn test(args: &[String]) -> anyhow::Result<()> {
    // Release, like the artifacts the end-to-end tests drive: one build serves both.
    let mut test_args = vec!["test", "--release", "--workspace", "--features", TEST_FEATURES];
    test_args.extend(args.iter().map(String::as_str));
    let postgres = std::env::var(POSTGRES_URL_VAR).ok().filter(|url| !url.is_empty());
    let outcome = cargo(&test_args);
    match postgres {
        Some(url) => eprintln!("PostgreSQL suite and multi-node tests ran against {url}"),
        None => eprintln!(
            "NOTE: the PostgreSQL backend suite and the multi-node tests were SKIPPED.\n      \
             To run them, point {POSTGRES_URL_VAR} at a database evogate may create schemas in, e.g.\n      \
             {POSTGRES_URL_VAR}=postgres://postgres@127.0.0.1:5432/test cargo xtask test"
        ),
    }
    outcome
}

/// Runs every target of `fuzz/` for `seconds` each on the corpus kept in
/// the repository; fails on the first crash (libFuzzer leaves the input in
/// `fuzz/artifacts/`). Installs the nightly toolchain and cargo-fuzz first
/// when they are missing.
fn fuzz(seconds: u64) -> anyhow::Result<()> {
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_nightly {
        run_checked(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let has_cargo_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_cargo_fuzz {
        run_checked(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    // cargo-fuzz resolves without --locked: a lock that lags the manifests fails here instead.
    run_checked(
        Command::new("cargo")
            .args(["+nightly", "metadata", "--locked", "--format-version", "1"])
            .stdout(std::process::Stdio::null())
            .current_dir("fuzz"),
    )
    .context(
        "fuzz/Cargo.lock is out of date: run `cargo update --workspace --manifest-path fuzz/Cargo.toml` and commit it",
    )?;
    let listed = Command::new("cargo").args(["+nightly", "fuzz", "list"]).current_dir("fuzz").output()?;
    let targets: Vec<String> = String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect();
    anyhow::ensure!(!targets.is_empty(), "cargo fuzz list found no targets");
    for target in &targets {
        run_checked(
            Command::new("cargo")
                .args(["+nightly", "fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={seconds}"))
                // The plugin logs what it keeps (data issues) on stderr: libFuzzer keeps its own report.
                .arg("-close_fd_mask=3")
                .current_dir("fuzz"),
        )
        .with_context(|| format!("fuzz target {target} found a crash (see fuzz/artifacts/{target}/)"))?;
    }
    eprintln!("fuzzing: {} target(s), {seconds} s each, no crash", targets.len());
    Ok(())
}

fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {command:?}");
    let status = command.env_remove("RUSTUP_TOOLCHAIN").status().with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// The database of the PostgreSQL suite and the multi-node tests.
const POSTGRES_URL_VAR: &str = "EVOGATE_TEST_POSTGRES_URL";
