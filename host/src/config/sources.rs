//! Where a setting's value may come from besides the file: another file or
//! an environment variable named in its place (`{ file = "…" }`,
//! `{ env = "…" }`), so secrets stay out of the configuration; and
//! `EVOGATE_PLUGINS__<plugin>__…` variables for a plugin's keys, the plugin
//! named by its position or its name.

use super::PluginConfig;
use anyhow::Context as _;
use std::path::Path;

/// Largest secret file read: a setting is a line, a key or a certificate, not a data set.
const MAX_SECRET_BYTES: u64 = 1 << 20;

/// The value `{ file = PATH }` or `{ env = NAME }` stands for, when `table`
/// is one of them: the file's contents without one trailing line end
/// (relative paths from `base`), or the variable's value. `None` for any
/// other table.
pub(super) fn indirect(
    table: &toml::Table,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<anyhow::Result<String>> {
    let (kind, target) = match table.iter().collect::<Vec<_>>().as_slice() {
        [(kind, toml::Value::String(target))] if *kind == "file" || *kind == "env" => (kind.as_str(), target.as_str()),
        _ => return None,
    };
    Some(match kind {
        "file" => read_secret(&base.join(target)),
        _ => env(target).with_context(|| format!("the environment variable {target} is not set")),
    })
}

/// Reads a secret file whole, without its trailing line end. Only a
/// regular file (a link to one too): a pipe or a device could block the
/// start, or never end.
fn read_secret(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let kind = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(kind.is_file(), "{} is not a regular file", path.display());
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {} (UTF-8 text expected)", path.display()))?;
    anyhow::ensure!(text.len() as u64 <= MAX_SECRET_BYTES, "{} is over {MAX_SECRET_BYTES} bytes", path.display());
    let text = text.strip_suffix('\n').map(|text| text.strip_suffix('\r').unwrap_or(text)).unwrap_or(&text);
    Ok(text.to_owned())
}

/// Puts the values `{ file }` and `{ env }` stand for in place in every
/// plugin's `[plugins.config]`.
pub(super) fn resolve_plugin_settings(
    plugins: &mut [PluginConfig],
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    for plugin in plugins {
        for (key, value) in &mut plugin.config {
            if let toml::Value::Table(table) = value
                && let Some(resolved) = indirect(table, base, env)
            {
                let text = resolved.with_context(|| format!("plugin {:?}: setting {key}", plugin.name))?;
                *value = toml::Value::String(text);
            }
        }
    }
    Ok(())
}

/// Applies `EVOGATE_PLUGINS__<plugin>__CONFIG__<KEY>=value` (a setting, a
/// string as given) and `EVOGATE_PLUGINS__<plugin>__<KEY>=value` (`route`,
/// `wasm`, `error_format`, `max_concurrent_requests`,
/// `max_concurrent_per_credential`) from `vars`; `<plugin>` is the entry's
/// position (from 0) or its name (`-` written `_`), any case. A variable
/// naming no plugin or another key is an error, never ignored.
pub(super) fn apply_plugin_variables(
    plugins: &mut [PluginConfig],
    vars: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    const PREFIX: &str = "EVOGATE_PLUGINS__";
    let mut vars: Vec<(String, String)> =
        vars.into_iter().filter(|(name, _)| name.to_ascii_uppercase().starts_with(PREFIX)).collect();
    vars.sort();
    for (name, value) in vars {
        let rest = name[PREFIX.len()..].to_ascii_lowercase();
        let mut parts = rest.splitn(3, "__");
        let (which, key, setting) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
        let position = match which.parse::<usize>() {
            Ok(position) => Some(position).filter(|position| *position < plugins.len()),
            Err(_) => plugins.iter().position(|plugin| plugin.name.replace('-', "_") == which.replace('-', "_")),
        };
        let plugin = position
            .and_then(|position| plugins.get_mut(position))
            .with_context(|| format!("{name}: no [[plugins]] entry is {which:?} (a position from 0, or a name)"))?;
        let parse =
            |what: &str| value.trim().parse::<u32>().with_context(|| format!("{name}: {what} must be a number"));
        match (key, setting) {
            (Some("config"), Some(setting)) if !setting.is_empty() => {
                plugin.config.insert(setting.to_owned(), toml::Value::String(value.clone()));
            }
            (Some("route"), None) => plugin.route = value.clone(),
            (Some("wasm"), None) => {
                plugin.wasm = figment::value::magic::RelativePathBuf::from(std::path::PathBuf::from(&value));
            }
            (Some("error_format"), None) => {
                plugin.error_format = serde_json::from_value(serde_json::Value::String(value.clone()))
                    .with_context(|| format!("{name}: error_format must be \"problem\" or \"evotor\""))?;
            }
            (Some("max_concurrent_requests"), None) => plugin.max_concurrent_requests = Some(parse("it")?),
            (Some("max_concurrent_per_credential"), None) => plugin.max_concurrent_per_credential = Some(parse("it")?),
            _ => anyhow::bail!(
                "{name}: only CONFIG__<SETTING>, ROUTE, WASM, ERROR_FORMAT, MAX_CONCURRENT_REQUESTS and \
                 MAX_CONCURRENT_PER_CREDENTIAL can be set for a plugin from the environment; set the rest in the file"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugins(toml: &str) -> Vec<PluginConfig> {
        #[derive(serde::Deserialize)]
        struct Plugins {
            plugins: Vec<PluginConfig>,
        }
        use figment::providers::Format as _;
        figment::Figment::from(figment::providers::Toml::string(toml)).extract::<Plugins>().expect("plugins").plugins
    }

    const TWO: &str = "[[plugins]]\nname = 'evotor'\nroute = '/'\nwasm = 'e.wasm'\n\
                       [[plugins]]\nname = 'loyalty-app'\nroute = '/loyalty'\nwasm = 'l.wasm'\n";

    #[test]
    fn a_setting_can_come_from_a_file_or_a_variable() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("token"), "s3cret\r\n").expect("write");
        std::fs::write(dir.path().join("two-lines"), "a\nb\n\n").expect("write");
        let env = |name: &str| (name == "EVOTOR_TOKEN").then(|| "from-env".to_owned());
        let table = |text: &str| text.parse::<toml::Table>().expect("table");
        let read =
            |text: &str| indirect(&table(text), dir.path(), &env).map(|value| value.map_err(|err| format!("{err:#}")));
        assert_eq!(read("file = 'token'"), Some(Ok("s3cret".into())), "one line end taken off");
        assert_eq!(read("file = 'two-lines'"), Some(Ok("a\nb\n".into())), "only one");
        assert_eq!(read("env = 'EVOTOR_TOKEN'"), Some(Ok("from-env".into())));
        assert!(read("file = 'missing'").expect("a file").expect_err("missing").contains("missing"));
        assert!(read("env = 'UNSET'").expect("a variable").expect_err("unset").contains("UNSET is not set"));
        assert!(read("file = '/dev/zero'").expect("a file").expect_err("a device").contains("not a regular file"));
        assert!(read("file = '.'").expect("a file").expect_err("a directory").contains("not a regular file"));
        assert_eq!(read("file = 'token'\nmode = 1"), None, "another table is a value of its own");
        assert_eq!(read("file = 1"), None);
        let mut entries =
            plugins(&format!("{TWO}[plugins.config]\nserver_bearer_token = {{ file = 'token' }}\nplain = 'x'\n"));
        resolve_plugin_settings(&mut entries, dir.path(), &env).expect("resolved");
        assert_eq!(entries[1].config["server_bearer_token"], toml::Value::String("s3cret".into()));
        assert_eq!(entries[1].config["plain"], toml::Value::String("x".into()));
        let mut missing = plugins(&format!("{TWO}[plugins.config]\nkey = {{ env = 'NOPE' }}\n"));
        let err = format!("{:#}", resolve_plugin_settings(&mut missing, dir.path(), &env).expect_err("unset"));
        assert!(err.contains("loyalty-app") && err.contains("setting key") && err.contains("NOPE"), "{err}");
    }

    #[test]
    fn a_plugin_variable_names_its_plugin_by_position_or_name() {
        let mut entries = plugins(TWO);
        let vars = [
            ("EVOGATE_PLUGINS__0__CONFIG__SERVER_BEARER_TOKEN", "t0"),
            ("EVOGATE_PLUGINS__LOYALTY_APP__CONFIG__ERP_URL", "https://erp"),
            ("EVOGATE_PLUGINS__1__MAX_CONCURRENT_REQUESTS", "7"),
            ("EVOGATE_PLUGINS__evotor__ERROR_FORMAT", "evotor"),
            ("EVOGATE_LISTEN", "not a plugin's"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        apply_plugin_variables(&mut entries, vars).expect("applied");
        assert_eq!(entries[0].config["server_bearer_token"], toml::Value::String("t0".into()));
        assert_eq!(entries[1].config["erp_url"], toml::Value::String("https://erp".into()));
        assert_eq!(entries[1].max_concurrent_requests, Some(7));
        assert_eq!(entries[0].error_format, crate::edge::ErrorFormat::Evotor);
        for (name, says) in [
            ("EVOGATE_PLUGINS__2__CONFIG__X", "no [[plugins]] entry"),
            ("EVOGATE_PLUGINS__nobody__CONFIG__X", "no [[plugins]] entry"),
            ("EVOGATE_PLUGINS__0__JOBS", "set the rest in the file"),
            ("EVOGATE_PLUGINS__0__CONFIG__", "set the rest in the file"),
        ] {
            let err = apply_plugin_variables(&mut plugins(TWO), [(name.to_owned(), "1".to_owned())]).expect_err(name);
            assert!(format!("{err:#}").contains(says), "{name}: {err:#}");
        }
    }
}
