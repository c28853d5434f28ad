//! `cargo xtask new-plugin NAME [DIR]`: a plugin crate of one's own, made
//! from the SDK's example (`examples/counter`), that builds, tests and
//! deploys as it is.

use anyhow::{Context as _, bail, ensure};
use std::path::Path;

const EXAMPLE_LIB: &str = include_str!("../../examples/counter/src/lib.rs");
const EXAMPLE_TESTS: &str = include_str!("../../examples/counter/src/tests.rs");
const TOOLCHAIN: &str = include_str!("../../rust-toolchain.toml");
const CARGO_CONFIG: &str = include_str!("../../.cargo/config.toml");

/// Makes the crate `name` in `dir/name` (`dir`: where the command was run).
pub fn new_plugin(root: &Path, dir: &Path, args: &[String]) -> anyhow::Result<()> {
    let (name, target) = match args {
        [name] => (name, dir.join(name)),
        [name, into] => (name, dir.join(into)),
        _ => bail!("usage: cargo xtask new-plugin NAME [DIR]   (NAME: a-z, 0-9, -, starting with a letter)"),
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
    let files: [(&str, String); 7] = [
        ("Cargo.toml", manifest(name, &sdk)),
        ("src/lib.rs", EXAMPLE_LIB.replace("Counter", &ty)),
        ("src/tests.rs", EXAMPLE_TESTS.replace("Counter", &ty)),
        ("rust-toolchain.toml", TOOLCHAIN.to_owned()),
        // The plugins' linker settings, without the repository's own alias.
        (".cargo/config.toml", CARGO_CONFIG[CARGO_CONFIG.find("# Plugins start").unwrap_or(0)..].to_owned()),
        (".gitignore", "/target\n".to_owned()),
        ("README.md", readme(name)),
    ];
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
    let sdk = sdk.to_string_lossy().replace('\\', "/");
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
evogate-plugin = {{ path = "{sdk}" }}
serde_json = "1"

[dev-dependencies]
evogate-plugin = {{ path = "{sdk}", features = ["testing"] }}

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
