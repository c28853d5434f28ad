//! A native fake of the Evotor plugin's extension API (the `testing`
//! feature), so an extension is unit-tested without WebAssembly and without
//! a gateway: [`FakeEvotor`] is an [`outgoing::Http`] that answers the
//! calls [`crate::Evotor`] makes as the Evotor plugin would, and passes
//! every other request (to the partner's ERP, say) to a scripted client.

use evogate_plugin::outgoing::{self, Scripted};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Users, their tokens, stores, terminals, documents and the feed, held in memory.
#[derive(Debug, Default)]
pub struct FakeEvotor {
    state: RefCell<State>,
    plugin: String,
    other: Scripted,
}

#[derive(Debug, Default)]
struct State {
    /// Token → its user, or the refusal (status, Evotor code) it gets.
    tokens: BTreeMap<String, Result<String, (u16, u64)>>,
    /// (kind, uuid) → the owning user.
    owners: BTreeMap<(String, String), String>,
    /// (store, id) → the document as the API shows it.
    documents: BTreeMap<(String, String), Value>,
    /// The feed, in order; each entry with its cursor.
    feed: Vec<Value>,
    partner_token: Option<String>,
}

impl FakeEvotor {
    /// An Evotor plugin named [`crate::DEFAULT_PLUGIN`] knowing nobody;
    /// other requests fail (nothing scripted).
    pub fn new() -> Self {
        Self { plugin: crate::DEFAULT_PLUGIN.into(), ..Self::default() }
    }

    /// Every request not for the Evotor plugin goes to `other`.
    #[must_use]
    pub fn with_http(mut self, other: Scripted) -> Self {
        self.other = other;
        self
    }

    /// The client requests to other hosts went to.
    pub fn http(&self) -> &Scripted {
        &self.other
    }

    /// A user whose terminal app sends `token`.
    #[must_use]
    pub fn user(self, user_id: &str, token: &str) -> Self {
        self.state.borrow_mut().tokens.insert(token.into(), Ok(user_id.into()));
        self
    }

    /// A token the Evotor plugin refuses with `status` and Evotor `code`
    /// (401 1003: expired; 402 1004: no usable subscription).
    #[must_use]
    pub fn refusing(self, token: &str, status: u16, code: u64) -> Self {
        self.state.borrow_mut().tokens.insert(token.into(), Err((status, code)));
        self
    }

    /// A store of the user.
    #[must_use]
    pub fn store(self, user_id: &str, store: &str) -> Self {
        self.state.borrow_mut().owners.insert(("store".into(), store.to_ascii_lowercase()), user_id.into());
        self
    }

    /// A terminal of the user.
    #[must_use]
    pub fn device(self, user_id: &str, device: &str) -> Self {
        self.state.borrow_mut().owners.insert(("device".into(), device.to_ascii_lowercase()), user_id.into());
        self
    }

    /// The partner API token.
    #[must_use]
    pub fn partner_token(self, token: &str) -> Self {
        self.state.borrow_mut().partner_token = Some(token.into());
        self
    }

    /// A terminal document `document` (V1, or V2 when its `version` is
    /// `V2`) received from the user into `store`: kept, and announced in
    /// the feed as `document.received`, as the Evotor plugin does.
    /// Returns the entry's cursor.
    pub fn receive_document(&self, user_id: &str, store: &str, document: Value) -> String {
        let store = store.to_ascii_lowercase();
        let id = document["id"].as_str().or_else(|| document["uuid"].as_str()).unwrap_or_default().to_owned();
        let format = if document["version"] == "V2" { "V2" } else { "V1" };
        let kind = document["type"].as_str().unwrap_or_default().to_owned();
        let view = json!({
            "id": id, "storeUuid": store, "type": kind, "format": format, "userId": user_id,
            "closeDate": Value::Null, "version": document["version"], "deviceUuid": Value::Null,
            "receivedAt": 0, "document": document,
        });
        self.state.borrow_mut().documents.insert((store.clone(), id.clone()), view);
        self.announce(
            "document.received",
            Some(user_id),
            json!({ "storeUuid": store, "id": id, "type": kind, "format": format }),
        )
    }

    /// A feed entry of `kind`; returns its cursor.
    pub fn announce(&self, kind: &str, user_id: Option<&str>, data: Value) -> String {
        let mut state = self.state.borrow_mut();
        let cursor = format!("{:020}.000000", state.feed.len() + 1);
        state.feed.push(json!({ "cursor": cursor, "kind": kind, "at": 0, "userId": user_id, "data": data }));
        cursor
    }

    fn answer(&self, request: &outgoing::Request, path: &str, query: &str) -> outgoing::Response {
        let state = self.state.borrow();
        let header = |name: &str| {
            request.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.trim())
        };
        let param = |name: &str| {
            query.split('&').filter_map(|pair| pair.split_once('=')).find(|(key, _)| *key == name).map(|(_, v)| v)
        };
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let owner = |kind: &str, uuid: &str| state.owners.get(&(kind.to_owned(), uuid.to_ascii_lowercase())).cloned();
        match segments.as_slice() {
            ["session"] => {
                let token = header("authorization").and_then(|value| value.strip_prefix("Bearer ")).unwrap_or("");
                let user = match state.tokens.get(token.trim()) {
                    Some(Ok(user)) => user.clone(),
                    Some(Err((status, code))) => return error(*status, *code, "refused"),
                    None => return error(401, 1002, "unknown token"),
                };
                if header("x-evotor-user-id").is_some_and(|claimed| !claimed.is_empty() && claimed != user) {
                    return error(403, 403, "forbidden");
                }
                let named = |header_name: &str, kind: &str| -> Result<Value, outgoing::Response> {
                    let Some(uuid) = header(header_name).filter(|uuid| !uuid.is_empty()) else {
                        return Ok(Value::Null);
                    };
                    match owner(kind, uuid) {
                        Some(other) if other != user => Err(error(403, 403, "forbidden")),
                        known => Ok(json!({ "uuid": uuid.to_ascii_lowercase(), "known": known.is_some() })),
                    }
                };
                let store = match named("x-evotor-store-uuid", "store") {
                    Ok(store) => store,
                    Err(refused) => return refused,
                };
                let device = match named("x-evotor-device-uuid", "device") {
                    Ok(device) => device,
                    Err(refused) => return refused,
                };
                ok(json!({ "userId": user, "store": store, "device": device }))
            }
            ["partner"] => {
                let Some(want) = &state.partner_token else { return error(404, 404, "not found") };
                match header("authorization").and_then(|value| value.strip_prefix("Bearer ")) {
                    Some(token) if token.trim() == want => {
                        outgoing::Response { status: 204, headers: Vec::new(), body: Vec::new() }
                    }
                    _ => error(401, 401, "unauthorized"),
                }
            }
            ["users", user, "stores"] => {
                let items: Vec<Value> = state
                    .owners
                    .iter()
                    .filter(|((kind, _), owner)| kind == "store" && owner.as_str() == *user)
                    .map(|((_, uuid), _)| json!({ "uuid": uuid, "data": { "uuid": uuid }, "updatedAt": 0 }))
                    .collect();
                ok(json!({ "items": items, "next": Value::Null }))
            }
            ["users", user, "stores", store, "documents", id] => {
                if owner("store", store).as_deref() != Some(*user) {
                    return error(404, 404, "not found");
                }
                match state.documents.get(&(store.to_ascii_lowercase(), (*id).to_owned())) {
                    Some(document) => ok(document.clone()),
                    None => error(404, 404, "not found"),
                }
            }
            ["feed"] => {
                let limit = param("limit").and_then(|limit| limit.parse::<usize>().ok()).unwrap_or(100);
                let after = param("after");
                let user = param("userId");
                let rest =
                    state.feed.iter().filter(|entry| after.is_none_or(|after| entry["cursor"].as_str() > Some(after)));
                let items: Vec<Value> =
                    rest.filter(|entry| user.is_none_or(|user| entry["userId"] == user)).take(limit).cloned().collect();
                let next = items
                    .last()
                    .map_or_else(|| after.map_or(Value::Null, Value::from), |entry| entry["cursor"].clone());
                ok(json!({ "items": items, "next": next }))
            }
            _ => error(404, 404, "not found"),
        }
    }
}

impl outgoing::Http for FakeEvotor {
    fn send(&self, request: &outgoing::Request) -> Result<outgoing::Response, outgoing::Error> {
        let prefix = format!("http://{}.evogate.internal{}/", self.plugin, crate::API);
        let Some(target) = request.url.strip_prefix(&prefix) else { return self.other.send(request) };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if request.method != "GET" {
            return Ok(error(405, 405, "method not allowed"));
        }
        Ok(self.answer(request, path, query))
    }
}

fn ok(body: Value) -> outgoing::Response {
    outgoing::Response {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn error(status: u16, code: u64, reason: &str) -> outgoing::Response {
    outgoing::Response {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: json!({ "errors": [{ "code": code, "reason": reason }] }).to_string().into_bytes(),
    }
}
