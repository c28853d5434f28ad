//! A standard `wasi:http/proxy` component that keeps counters with
//! `wasi:keyvalue@0.2.0-draft` — the draft `wasmtime serve -S keyvalue`
//! provides, so it runs there unchanged (with `wasmtime serve`'s in-memory
//! store, which forgets between requests). Standard interfaces only: the
//! `wasi` crate for HTTP, bindings of the keyvalue WIT for the store.
//!
//! | path | answer |
//! |---|---|
//! | `…/count/NAME` | `atomics.increment` by 1 in the default bucket: 200 `NAME=VALUE` |
//! | `…/fill/BUCKET/N` | `batch.set-many` of keys `k00000`… with values `v…`: 200 `N` |
//! | `…/keys/BUCKET` | every key by `list-keys` and its cursor: 200 `keys=K pages=P first=… last=…` |
//! | `…/get/BUCKET/KEY` | `store.get`: 200 with the value, 404 if absent |
//! | `…/drop/BUCKET` | deletes every key listed (`batch.delete-many`, one call per page): 200 `N` |
#![cfg(target_arch = "wasm32")]
#![allow(unsafe_code, reason = "the export glue the bindings generate")]

#[path = "../../common.rs"]
mod common;

/// Bindings of the standard keyvalue WIT (a module of their own: the
/// generated `wasi` module would clash with the `wasi` crate).
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/keyvalue/0.2.0-draft",
        world: "wasi:keyvalue/imports",
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Counter;

wasi::http::proxy::export!(Counter);

impl wasi::exports::http::incoming_handler::Guest for Counter {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match answer(&request) {
            Ok((status, body)) => common::text(out, status, &body),
            Err(err) => common::text(out, 500, &format!("{err:?}")),
        }
    }
}

fn answer(request: &IncomingRequest) -> Result<(u16, String), store::Error> {
    let arg = |after: &str| common::segments_after(request, after).map(|(rest, _)| rest);
    if let Some([name]) = arg("count").as_deref() {
        let bucket = store::open("")?;
        let value = atomics::increment(&bucket, name, 1)?;
        return Ok((200, format!("{name}={value}")));
    }
    if let Some([bucket, n]) = arg("fill").as_deref() {
        let n: usize = n.parse().map_err(|_| store::Error::Other("N must be a number".into()))?;
        let pairs: Vec<(String, Vec<u8>)> =
            (0..n).map(|i| (format!("k{i:05}"), format!("v{i}").into_bytes())).collect();
        batch::set_many(&store::open(bucket)?, &pairs)?;
        return Ok((200, n.to_string()));
    }
    if let Some([bucket]) = arg("keys").as_deref() {
        let keys = list(&store::open(bucket)?)?;
        let (count, pages) = (keys.iter().map(Vec::len).sum::<usize>(), keys.len());
        let first = keys.first().and_then(|page| page.first()).cloned().unwrap_or_default();
        let last = keys.last().and_then(|page| page.last()).cloned().unwrap_or_default();
        return Ok((200, format!("keys={count} pages={pages} first={first} last={last}")));
    }
    if let Some([bucket, key]) = arg("get").as_deref() {
        return Ok(match store::open(bucket)?.get(key)? {
            Some(value) => (200, String::from_utf8_lossy(&value).into_owned()),
            None => (404, "absent".into()),
        });
    }
    if let Some([bucket]) = arg("drop").as_deref() {
        let bucket = store::open(bucket)?;
        let mut dropped = 0;
        for page in list(&bucket)? {
            dropped += page.len();
            batch::delete_many(&bucket, &page)?;
        }
        return Ok((200, dropped.to_string()));
    }
    Ok((404, "no such path".into()))
}

/// Every key of `bucket`, page by page, following the cursor.
fn list(bucket: &store::Bucket) -> Result<Vec<Vec<String>>, store::Error> {
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = bucket.list_keys(cursor)?;
        if !page.keys.is_empty() {
            pages.push(page.keys);
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(pages),
        }
    }
}
