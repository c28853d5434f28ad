//! `cargo xtask new-plugin [--evotor] NAME [DIR]`: a plugin crate of one's
//! own, made from the SDK's example (`examples/counter`), or with
//! `--evotor` an Evotor app's backend made from the loyalty example
//! (`examples/loyalty`), that builds, tests and deploys as it is.

use anyhow::{Context as _, bail, ensure};
use std::path::Path;

const EXAMPLE_LIB: &str = include_str!("../../examples/counter/src/lib.rs");
const EXAMPLE_TESTS: &str = include_str!("../../examples/counter/src/tests.rs");
const LOYALTY_LIB: &str = include_str!("../../examples/loyalty/src/lib.rs");
const LOYALTY_RELAY: &str = include_str!("../../examples/loyalty/src/relay.rs");
const LOYALTY_TESTS: &str = include_str!("../../examples/loyalty/src/tests.rs");
const LOYALTY_CONFIG: &str = include_str!("../../examples/loyalty/evogate.toml");
const TOOLCHAIN: &str = include_str!("../../rust-toolchain.toml");
const CARGO_CONFIG: &str = include_str!("../../.cargo/config.toml");

/// Makes the crate `name` in `dir/name` (`dir`: where the command was run).
pub fn new_plugin(root: &Path, dir: &Path, args: &[String]) -> anyhow::Result<()> {
    let evotor = args.iter().any(|arg| arg == "--evotor");
    let args: Vec<&String> = args.iter().filter(|arg| *arg != "--evotor").collect();
    let (name, target) = match args.as_slice() {
        [name] => (*name, dir.join(name)),
        [name, into] => (*name, dir.join(into)),
        _ => bail!("usage: cargo xtask new-plugin [--evotor] NAME [DIR]   (NAME: a-z, 0-9, -, starting with a letter)"),
    };
    ensure!(
        (1..=64).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "NAME {name:?}: 1 to 64 of a-z, 0-9 and -, starting with a letter (it names the crate and the .wasm)"
    );
    ensure!(!target.exists(), "{} exists already: choose another NAME or DIR", target.display());
    let ty: String = name.split('-').map(|part| part[..1].to_ascii_uppercase() + &part[1..]).collect();
    let sdk = std::path::absolute(root.join("sdk")).context("locating the SDK")?;
    let mut files: Vec<(&str, String)> = if evotor {
        let evotor_wasm = std::path::absolute(root.join("target/wasm32-wasip2/release/evotor_partner.wasm"))
            .context("locating the Evotor plugin's build")?;
        let data_dir = std::path::absolute(dir.join("data")).context("locating the data directory")?;
        vec![
            ("Cargo.toml", evotor_manifest(name, root)?),
            ("src/lib.rs", LOYALTY_LIB.replace("Loyalty", &ty)),
            ("src/relay.rs", LOYALTY_RELAY.to_owned()),
            ("src/tests.rs", LOYALTY_TESTS.replace("Loyalty", &ty)),
            (
                "evogate.toml",
                LOYALTY_CONFIG
                    .replace("examples/loyalty/evogate.toml", &format!("{name}/evogate.toml"))
                    .replace("\"../../data\"", &format!("{:?}", data_dir.to_string_lossy()))
                    .replace("\"loyalty\"", &format!("{name:?}"))
                    .replace("/loyalty", &format!("/{name}"))
                    .replace(
                        "../../target/wasm32-wasip2/release/evogate_loyalty.wasm",
                        &format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_")),
                    )
                    .replace("../../target/wasm32-wasip2/release/evotor_partner.wasm", &evotor_wasm.to_string_lossy()),
            ),
            ("README.md", evotor_readme(name)),
        ]
    } else {
        vec![
            ("Cargo.toml", manifest(name, &sdk)),
            ("src/lib.rs", EXAMPLE_LIB.replace("Counter", &ty)),
            ("src/tests.rs", EXAMPLE_TESTS.replace("Counter", &ty)),
            ("README.md", readme(name)),
        ]
    };
    files.extend([
        ("rust-toolchain.toml", TOOLCHAIN.to_owned()),
        // The plugins' linker settings, without the repository's own alias.
        (".cargo/config.toml", CARGO_CONFIG[CARGO_CONFIG.find("# Plugins start").unwrap_or(0)..].to_owned()),
        (".gitignore", "/target\n".to_owned()),
    ]);
    for (path, text) in files {
        let path = target.join(path);
        std::fs::create_dir_all(path.parent().unwrap_or(&target))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    // The workspace's lock: the same, already fetched versions of every dependency.
    std::fs::copy(root.join("Cargo.lock"), target.join("Cargo.lock")).context("copying Cargo.lock")?;
    eprintln!("created {} (plugin {ty}); see its README.md", target.display());
    Ok(())
}

fn manifest(name: &str, sdk: &Path) -> String {
    let sdk = path_text(sdk);
    let dependencies = format!("evogate-plugin = {{ path = \"{sdk}\" }}\nserde_json = \"1\"\n");
    let dev = format!("evogate-plugin = {{ path = \"{sdk}\", features = [\"testing\"] }}\n");
    manifest_with(name, &dependencies, &dev)
}

/// An Evotor app's manifest: the plugin SDK, the Evotor plugin's client
/// (`sdk-evotor`, beside it) and what the relay signs with.
fn evotor_manifest(name: &str, root: &Path) -> anyhow::Result<String> {
    let sdk = path_text(&std::path::absolute(root.join("sdk")).context("locating the SDK")?);
    let evotor = path_text(&std::path::absolute(root.join("sdk-evotor")).context("locating the Evotor client")?);
    let dependencies = format!(
        "evogate-plugin = {{ path = \"{sdk}\" }}\nevogate-evotor = {{ path = \"{evotor}\" }}\n\
         serde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\"\nhmac = \"0.12\"\n\
         sha2 = {{ version = \"0.10\", default-features = false }}\nhex = \"0.4\"\n"
    );
    let dev = format!(
        "evogate-plugin = {{ path = \"{sdk}\", features = [\"testing\"] }}\n\
         evogate-evotor = {{ path = \"{evotor}\", features = [\"testing\"] }}\n"
    );
    Ok(manifest_with(name, &dependencies, &dev))
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().replace('\\', "/")
}

/// A crate of its own named `name`, a component and a library, with these dependency lines.
fn manifest_with(name: &str, dependencies: &str, dev_dependencies: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
{dependencies}
[dev-dependencies]
{dev_dependencies}
[profile.release]
opt-level = "s"

# A crate of its own, wherever it is made.
[workspace]
"#
    )
}

fn readme(name: &str) -> String {
    let wasm = name.replace('-', "_");
    format!(
        "# {name}\n\nAn evogate plugin (see docs/writing-a-plugin.md in the evogate repository).\n\n\
         ```sh\ncargo test                                   # natively, against the SDK's fakes\n\
         cargo build --release --target wasm32-wasip2 # target/wasm32-wasip2/release/{wasm}.wasm\n\
         evogate deploy NAME target/wasm32-wasip2/release/{wasm}.wasm\n```\n"
    )
}

fn evotor_readme(name: &str) -> String {
    let wasm = name.replace('-', "_");
    format!(
        "# {name}\n\nAn Evotor app's backend on evogate, beside the Evotor plugin (see docs/evotor-apps.md in the \
         evogate repository). It starts as the loyalty example: a summary for the terminal app, and each sale \
         relayed once to the partner's ERP.\n\n\
         ```sh\ncargo test                                   # natively, against the Evotor plugin's fake\n\
         cargo build --release --target wasm32-wasip2 # target/wasm32-wasip2/release/{wasm}.wasm\n\
         ```\n\nAdd the `[[plugins]]` table of `evogate.toml` to the gateway's configuration (it names the \
         Evotor plugin in `calls`), restart the gateway, and from then on deploy new builds with\n\n\
         ```sh\nevogate deploy {name} target/wasm32-wasip2/release/{wasm}.wasm\n```\n"
    )
}
