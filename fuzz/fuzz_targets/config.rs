//! Configuration: the TOML file and `EVOGATE_*` environment variables.
//!
//! Checked: nothing panics; a valid configuration with values replaced or
//! keys added is either accepted or refused with a message naming one of
//! the keys that were changed. An `allowed_outbound_hosts` entry that
//! parses prints back as itself, and matching any URI against it is safe.
#![no_main]

use arbitrary::Arbitrary;
use evogate::config::Config;
use libfuzzer_sys::fuzz_target;
use toml::{Table, Value};

/// Keys of a configuration, as paths from the top.
const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "store.backend",
    "store.url",
    "store.schema",
    "store.pool_size",
    "store.connect_timeout_ms",
    "store.statement_timeout_ms",
    "store.tls_ca",
    "limits.max_body_bytes",
    "limits.max_body_bytes_in_flight",
    "limits.request_timeout_ms",
    "limits.instance_memory_bytes",
    "limits.max_concurrent_requests",
    "limits.max_kv_calls_in_flight",
    "limits.max_connections",
    "limits.header_read_timeout_ms",
    "limits.max_header_bytes",
    "limits.drain_timeout_ms",
    "limits.drain_grace_ms",
    "admin.listen",
    "admin.token",
    "admin.max_plugin_bytes",
    "admin.allow_plain_http",
    "admin.tls",
    "admin.tls.cert",
    "tls",
    "tls.key",
    "plugins",
    "plugins.0.name",
    "plugins.0.route",
    "plugins.0.wasm",
    "plugins.0.max_concurrent_requests",
    "plugins.0.config",
    "plugins.0.allowed_outbound_hosts",
    "plugins.1.name",
    "plugins.1.route",
];

#[derive(Arbitrary, Debug)]
enum Leaf {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    Address(u8, u16),
    Empty,
    Array(Vec<i64>),
    Strings(Vec<String>),
}

impl Leaf {
    fn value(&self) -> Value {
        match self {
            Leaf::Int(n) => Value::Integer(*n),
            Leaf::Float(f) => Value::Float(*f),
            Leaf::Bool(b) => Value::Boolean(*b),
            Leaf::Text(text) => Value::String(text.clone()),
            Leaf::Address(host, port) => Value::String(format!("{}.0.0.1:{port}", host % 3 * 127)),
            Leaf::Empty => Value::Table(Table::new()),
            Leaf::Array(items) => Value::Array(items.iter().map(|n| Value::Integer(*n)).collect()),
            Leaf::Strings(items) => Value::Array(items.iter().map(|text| Value::String(text.clone())).collect()),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Change {
    /// Sets a known key (index into `KEYS`) in the file.
    File(u8, Leaf),
    /// Adds a key of any name under a known table.
    Unknown(u8, String),
    /// Sets a known key through the environment.
    Env(u8, String),
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text as the file.
    Raw(String),
    Changes(Vec<Change>),
    /// An `allowed_outbound_hosts` entry and a URI to match against it.
    Rule(String, String),
}

const BASE: &str = r#"
listen = "127.0.0.1:8080"
[store]
backend = "memory"
[limits]
max_body_bytes = 1048576
[[plugins]]
name = "evotor"
route = "/"
wasm = "evotor.wasm"
[[plugins]]
name = "other"
route = "/other"
wasm = "other.wasm"
"#;

/// Sets `path` in `table`, making tables (and array entries, for numeric
/// parts) on the way.
fn set(table: &mut Table, path: &str, value: Value) {
    let mut parts = path.split('.').peekable();
    let mut node = table;
    while let Some(part) = parts.next() {
        let Some(next) = parts.peek() else {
            node.insert(part.to_owned(), value);
            return;
        };
        if let Ok(index) = next.parse::<usize>() {
            parts.next();
            let entry = node.entry(part).or_insert_with(|| Value::Array(Vec::new()));
            if !entry.is_array() {
                *entry = Value::Array(Vec::new());
            }
            let Value::Array(items) = entry else { return };
            while items.len() <= index {
                items.push(Value::Table(Table::new()));
            }
            if !items[index].is_table() {
                items[index] = Value::Table(Table::new());
            }
            let Value::Table(item) = &mut items[index] else { return };
            node = item;
        } else {
            let entry = node.entry(part).or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            let Value::Table(inner) = entry else { return };
            node = inner;
        }
    }
}

/// What an error about `key` may name: the key, its last part, or a table
/// holding it (a field missing there).
fn names(key: &str) -> Vec<String> {
    let mut names = vec![key.rsplit('.').next().unwrap_or(key).to_owned()];
    let parts: Vec<&str> = key.split('.').collect();
    names.extend((1..=parts.len()).map(|n| parts[..n].join(".")));
    names
}

fuzz_target!(|input: Input| {
    // SAFETY: the fuzz target runs on one thread; nothing else reads the environment meanwhile.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("EVOGATE_") {
            unsafe { std::env::remove_var(name) };
        }
    }
    match input {
        Input::Raw(text) => drop(Config::load_toml(&text)),
        Input::Rule(entry, uri) => {
            if let Ok(rule) = evogate::allowed_hosts::OutboundRule::parse(&entry) {
                let printed = rule.to_string();
                let again = evogate::allowed_hosts::OutboundRule::parse(&printed).expect("a printed rule parses");
                assert_eq!(again, rule, "{entry:?} printed as {printed:?}");
                if let Ok(uri) = uri.parse::<hyper::Uri>() {
                    let _ = rule.allows(&uri);
                }
            }
        }
        Input::Changes(changes) => {
            let mut table: Table = BASE.parse().expect("the base configuration");
            let mut named = Vec::new();
            for change in changes.into_iter().take(4) {
                match change {
                    Change::File(key, leaf) => {
                        let key = KEYS[usize::from(key) % KEYS.len()];
                        set(&mut table, key, leaf.value());
                        named.extend(names(key));
                    }
                    Change::Unknown(key, name) => {
                        let key = KEYS[usize::from(key) % KEYS.len()];
                        let (parent, _) = key.rsplit_once('.').unwrap_or(("", key));
                        let path = if parent.is_empty() { name.clone() } else { format!("{parent}.{name}") };
                        if name.is_empty()
                            || name.contains('.')
                            || name.parse::<usize>().is_ok()
                            || key.starts_with("plugins.0.config")
                        {
                            continue;
                        }
                        set(&mut table, &path, Value::Integer(1));
                        named.extend(names(&path));
                    }
                    Change::Env(key, value) => {
                        let key = KEYS[usize::from(key) % KEYS.len()];
                        if key.contains(".0") || key.contains(".1") || value.contains('\0') || value.contains('=') {
                            continue;
                        }
                        let var = format!("EVOGATE_{}", key.to_uppercase().replace('.', "__"));
                        // SAFETY: as above.
                        unsafe { std::env::set_var(&var, &value) };
                        named.extend(names(key));
                        named.push(var);
                    }
                }
            }
            if let Err(err) = Config::load_toml(&table.to_string()) {
                // Keys from the environment are named as written there (upper case).
                let message = format!("{err:#}").to_lowercase();
                assert!(
                    named.iter().any(|key| message.contains(&key.to_lowercase())),
                    "the error names none of the changed keys {named:?}: {message}"
                );
            }
        }
    }
});
