//! Named counters as an evogate plugin: `POST /counters/{name}` adds one,
//! atomically however many requests race; `GET /counters/{name}` reads one;
//! `GET /counters?after={name}` lists them in name order, a page at a time.

use evogate_plugin::http::{Request, Response};
use evogate_plugin::kv::{Check, Entry, KvError, Write};
use evogate_plugin::{Ctx, Plugin};
use serde_json::json;

/// The plugin.
#[derive(Debug)]
pub struct Counter;

impl Plugin for Counter {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn handle(ctx: &Ctx<'_>, request: &Request) -> Response {
        // The path below the route the operator mounted the plugin at.
        let base = request.header_value("x-evogate-base-path").unwrap_or("/").trim_end_matches('/');
        let path = request.path.strip_prefix(base).unwrap_or(&request.path).trim_matches('/');
        let answer = match (request.method.as_str(), path.split_once('/')) {
            ("GET", None) if path == "counters" => list(ctx, request),
            (_, Some(("counters", name))) if !valid(name) => Ok(error(400, &format!("bad name {name:?}"))),
            ("GET", Some(("counters", name))) => read(ctx, name),
            ("POST", Some(("counters", name))) => add_one(ctx, name),
            _ => Ok(error(404, "no such endpoint")),
        };
        // The store could not answer: the client may try again.
        answer.unwrap_or_else(|err| error(503, &err.to_string()))
    }
}

evogate_plugin::export_plugin!(Counter);

/// Counter names: 1 to 64 of `a-z`, `0-9`, `-`, `_`.
fn valid(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'))
}

const PREFIX: &str = "counters/";

fn value(entry: &Entry) -> u64 {
    std::str::from_utf8(&entry.value).ok().and_then(|text| text.parse().ok()).unwrap_or(0)
}

fn error(status: u16, message: &str) -> Response {
    Response::json(status, &json!({ "error": message }))
}

fn read(ctx: &Ctx<'_>, name: &str) -> Result<Response, KvError> {
    Ok(match ctx.kv.get(&format!("{PREFIX}{name}"))? {
        Some(entry) => Response::json(200, &json!({ "name": name, "value": value(&entry) })),
        None => error(404, "no such counter"),
    })
}

/// Reads the counter and writes it back one higher on the condition that
/// nobody wrote it in between; on a conflict, reads again.
fn add_one(ctx: &Ctx<'_>, name: &str) -> Result<Response, KvError> {
    let key = format!("{PREFIX}{name}");
    loop {
        let (next, check) = match ctx.kv.get(&key)? {
            Some(entry) => (value(&entry) + 1, Check::VersionIs(key.clone(), entry.version)),
            None => (1, Check::Absent(key.clone())),
        };
        match ctx.kv.commit(vec![check], vec![Write::Set(key.clone(), next.to_string().into_bytes())]) {
            Ok(()) => return Ok(Response::json(200, &json!({ "name": name, "value": next }))),
            Err(KvError::Conflict) => continue,
            Err(err) => return Err(err),
        }
    }
}

/// One page in name order; `next` goes in `?after=` for the page after it.
/// A page may hold fewer than 100 with more to come: only an empty page,
/// with `next` null, is the end.
fn list(ctx: &Ctx<'_>, request: &Request) -> Result<Response, KvError> {
    let after = request.query.split('&').find_map(|pair| pair.strip_prefix("after=")).filter(|name| valid(name));
    let page = ctx.kv.scan(PREFIX, after.map(|name| format!("{PREFIX}{name}")).as_deref(), 100)?;
    let items: Vec<_> =
        page.iter().map(|(key, entry)| json!({ "name": &key[PREFIX.len()..], "value": value(entry) })).collect();
    let next = page.last().map(|(key, _)| &key[PREFIX.len()..]);
    Ok(Response::json(200, &json!({ "items": items, "next": next })))
}

#[cfg(test)]
mod tests;
