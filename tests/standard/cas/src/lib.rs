//! A standard `wasi:http/proxy` component that counts with
//! `wasi:keyvalue@0.2.0-draft2` (Spin's draft): read, add one, and
//! compare-and-swap, again from the value that won when another request
//! got in between — so concurrent requests lose no increment.
//!
//! | path | answer |
//! |---|---|
//! | `…/add/NAME` | `cas` + `swap` by 1 in the default bucket: 200 `NAME=VALUE attempts=A` |
//! | `…/incr/NAME/DELTA` | `atomics.increment` (signed): 200 `NAME=VALUE` |
//! | `…/keys/BUCKET` | every key by `list-keys` and its string cursor: 200 `keys=K pages=P` |
#![cfg(target_arch = "wasm32")]
#![allow(unsafe_code, reason = "the export glue the bindings generate")]

#[path = "../../common.rs"]
mod common;

/// Bindings of the standard keyvalue WIT (a module of their own: the
/// generated `wasi` module would clash with the `wasi` crate).
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/keyvalue/0.2.0-draft2",
        world: "wasi:keyvalue/imports",
    });
}

use bindings::wasi::keyvalue::{atomics, store};
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Cas;

wasi::http::proxy::export!(Cas);

impl wasi::exports::http::incoming_handler::Guest for Cas {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match answer(&request) {
            Ok((status, body)) => common::text(out, status, &body),
            Err(err) => common::text(out, 500, &format!("{err:?}")),
        }
    }
}

fn number(value: Option<&[u8]>) -> Result<i64, store::Error> {
    let Some(value) = value else { return Ok(0) };
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| store::Error::Other("not a number".into()))
}

fn answer(request: &IncomingRequest) -> Result<(u16, String), store::Error> {
    let arg = |after: &str| common::segments_after(request, after).map(|(rest, _)| rest);
    if let Some([name]) = arg("add").as_deref() {
        let bucket = store::open("default")?;
        let mut cas = atomics::Cas::new(&bucket, name)?;
        for attempt in 1..=1000 {
            let next = number(cas.current()?.as_deref())? + 1;
            match atomics::swap(cas, &next.to_string().into_bytes()) {
                Ok(()) => return Ok((200, format!("{name}={next} attempts={attempt}"))),
                Err(atomics::CasError::CasFailed(again)) => cas = again,
                Err(atomics::CasError::StoreError(err)) => return Err(err),
            }
        }
        return Ok((503, "too much contention".into()));
    }
    if let Some([name, delta]) = arg("incr").as_deref() {
        let delta: i64 = delta.parse().map_err(|_| store::Error::Other("DELTA must be a number".into()))?;
        let value = atomics::increment(&store::open("default")?, name, delta)?;
        return Ok((200, format!("{name}={value}")));
    }
    if let Some([bucket]) = arg("keys").as_deref() {
        let bucket = store::open(bucket)?;
        let (mut count, mut pages, mut cursor) = (0, 0, None);
        loop {
            let page = bucket.list_keys(cursor.as_deref())?;
            count += page.keys.len();
            pages += usize::from(!page.keys.is_empty());
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok((200, format!("keys={count} pages={pages}"))),
            }
        }
    }
    Ok((404, "no such path".into()))
}
