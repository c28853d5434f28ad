//! The component glue: the only code that touches the generated bindings.

wit_bindgen::generate!({
    path: "../wit",
    world: "evogate:plugin/plugin@0.2.1",
});

use crate::kv::{Check, Entry, Kv, KvError, Write};
use evogate::plugin0_2_1::{config as wit_config, kv as wit_kv, types};
use exports::evogate::plugin0_2_1::{handler, identity};

struct Component;

impl handler::Guest for Component {
    fn handle(request: types::Request) -> types::Response {
        let request = crate::http::Request {
            method: request.method,
            path: request.path,
            query: request.query,
            headers: request.headers,
            body: request.body,
        };
        let ctx = crate::Ctx { kv: &HostKv, config: &HostConfig, clock: &crate::clock::SystemClock };
        let response = crate::handle(&ctx, &request);
        types::Response { status: response.status, headers: response.headers, body: response.body }
    }
}

impl identity::Guest for Component {
    fn info() -> identity::PluginInfo {
        identity::PluginInfo { name: crate::NAME.into(), version: crate::VERSION.into() }
    }
}

export!(Component);

struct HostKv;

fn from_wit(err: wit_kv::Error) -> KvError {
    match err {
        wit_kv::Error::Conflict => KvError::Conflict,
        wit_kv::Error::TooLarge => KvError::TooLarge("over a kv limit"),
        wit_kv::Error::Unavailable(why) => KvError::Unavailable(why),
        wit_kv::Error::OutcomeUnknown(why) => KvError::OutcomeUnknown(why),
    }
}

fn entry(entry: wit_kv::Entry) -> Entry {
    Entry { value: entry.value, version: entry.version }
}

impl Kv for HostKv {
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        wit_kv::get(key).map(|found| found.map(entry)).map_err(from_wit)
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
        wit_kv::get_many(keys).map(|found| found.into_iter().map(|e| e.map(entry)).collect()).map_err(from_wit)
    }

    fn scan(&self, prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
        wit_kv::scan(prefix, start_after, limit)
            .map(|page| page.into_iter().map(|(key, found)| (key, entry(found))).collect())
            .map_err(from_wit)
    }

    fn commit(&self, checks: Vec<Check>, writes: Vec<Write>) -> Result<(), KvError> {
        let checks: Vec<_> = checks
            .into_iter()
            .map(|check| match check {
                Check::VersionIs(key, version) => wit_kv::Check::VersionIs((key, version)),
                Check::Absent(key) => wit_kv::Check::Absent(key),
            })
            .collect();
        // Moved, not copied: a 32 MiB delivery must not need twice the memory.
        let mut plain = Vec::with_capacity(writes.len());
        let mut stamped = Vec::new();
        for write in writes {
            match write {
                Write::Set(key, value) => plain.push(wit_kv::Write::Set((key, value))),
                Write::Delete(key) => plain.push(wit_kv::Write::Delete(key)),
                Write::SetStamped(prefix, value) => stamped.push((prefix, value)),
            }
        }
        // Plain commits keep to the original import, so they run on any host.
        if stamped.is_empty() {
            wit_kv::commit(&checks, &plain).map_err(from_wit)
        } else {
            wit_kv::commit_stamped(&checks, &plain, &stamped).map_err(from_wit)
        }
    }
}

struct HostConfig;

impl crate::config::Config for HostConfig {
    fn get(&self, name: &str) -> Option<String> {
        wit_config::get(name)
    }
}
