//! A mock Evotor cloud over plain HTTP, serving the REST API's shapes to
//! the plugin's sync: `GET /stores`, `/devices`, `/employees`,
//! `/stores/{id}/products`, `/stores/{id}/product-groups`,
//! `/stores/{id}/documents?since=&until=` and the publisher's
//! `/api/apps/{app}/events?since=&until=`, each as `{"items": […],
//! "paging": {"next_cursor": …}}` in pages of `page_size` (the cursor
//! carries the first page's filter, as the real one does). Data is per
//! token (`Authorization: Bearer` or `X-Authorization`); an unknown token
//! gets 401. Trouble can be queued per token: a status with headers (429
//! with `X-RateLimit-Reset`, 503), a body that is not JSON, a slow answer.
//! The publisher API beside it: an OAuth server renewing tokens with a
//! rotating refresh token (`POST /oauth/token`), and push notifications
//! (`POST /api/apps/{app}/push-notifications`, `GET …/{id}`) whose bodies
//! it keeps and whose statuses a test sets. Catalog writes too: bulk
//! `PUT`s become tasks that run when first asked about (`GET /bulks/{id}`),
//! failing the items a test refuses; deletions and quantities apply at once.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An answer: status, headers, body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// What the cloud holds for one token.
#[derive(Debug, Default, Clone)]
pub struct Account {
    /// `GET /stores`.
    pub stores: Vec<Value>,
    /// `GET /devices`.
    pub devices: Vec<Value>,
    /// `GET /employees`.
    pub employees: Vec<Value>,
    /// `GET /stores/{id}/products`, by store id as in the path.
    pub products: BTreeMap<String, Vec<Value>>,
    /// `GET /stores/{id}/product-groups`, by store id.
    pub groups: BTreeMap<String, Vec<Value>>,
    /// `GET /stores/{id}/documents`, by store id; `close_date` in Unix ms.
    pub documents: BTreeMap<String, Vec<Value>>,
}

/// An answer given instead of the data, once.
#[derive(Debug, Clone)]
pub enum Trouble {
    /// This status, these headers, an Evotor error body.
    Status(u16, Vec<(String, String)>),
    /// 200 with a body that is not JSON.
    Broken,
    /// The answer, after this long.
    Slow(Duration),
}

#[derive(Debug, Default)]
struct State {
    accounts: BTreeMap<String, Account>,
    /// The application's feed: (publisher token, events with `timestamp` in ms).
    feed: Option<(String, Vec<Value>)>,
    trouble: BTreeMap<String, Vec<Trouble>>,
    requests: Vec<(String, String)>,
    traceparents: Vec<String>,
}

/// A running mock cloud.
#[derive(Debug, Clone)]
pub struct MockCloud {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    page_size: usize,
    state: Arc<Mutex<State>>,
    publisher: Arc<Mutex<PublisherApi>>,
    catalog: Arc<Mutex<CatalogApi>>,
}

impl MockCloud {
    /// Starts one answering pages of `page_size` items.
    pub fn start(page_size: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the mock cloud");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let cloud = Self { url, page_size, state: Arc::default(), publisher: Arc::default(), catalog: Arc::default() };
        crate::upstream::serve_each(listener, cloud.clone(), Self::serve);
        cloud
    }

    /// What `token` reads.
    pub fn account(&self, token: &str, account: Account) {
        self.state.lock().expect("state").accounts.insert(token.into(), account);
    }

    /// The application's event feed, read with `publisher`.
    pub fn feed(&self, publisher: &str, events: Vec<Value>) {
        self.state.lock().expect("state").feed = Some((publisher.into(), events));
    }

    /// The next request with `token` gets `trouble` instead of its answer.
    pub fn trouble(&self, token: &str, trouble: Trouble) {
        self.state.lock().expect("state").trouble.entry(token.into()).or_default().push(trouble);
    }

    /// Every request so far: (token, path with query).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().expect("state").requests.clone()
    }

    /// The `traceparent` header of every request that had one, in order.
    pub fn traceparents(&self) -> Vec<String> {
        self.state.lock().expect("state").traceparents.clone()
    }

    /// How many requests carried `token`.
    pub fn requests_with(&self, token: &str) -> usize {
        self.requests().iter().filter(|(sent, _)| sent == token).count()
    }

    fn serve(&self, stream: std::net::TcpStream) {
        let mut reader = BufReader::new(stream);
        let Some((target, headers)) = crate::upstream::read_head(&mut reader) else { return };
        let mut token = String::new();
        let mut length = 0usize;
        let mut method = "GET";
        for (name, value) in &headers {
            let value = value.as_str();
            match name.as_str() {
                ":method" => method = value,
                "authorization" => token = value.strip_prefix("Bearer ").unwrap_or(value).to_owned(),
                "x-authorization" => token = value.to_owned(),
                "content-length" => length = value.parse().unwrap_or(0),
                "traceparent" => self.state.lock().expect("state").traceparents.push(value.to_owned()),
                _ => {}
            }
        }
        let mut body = Vec::new();
        let _ = reader.by_ref().take(length as u64).read_to_end(&mut body);
        let answer = self.catalog_answer(method, &token, &target, &body);
        let (status, headers, body) = match answer.or_else(|| self.publisher_answer(&token, &target, &body)) {
            Some(answer) => answer,
            None => self.answer(&token, &target),
        };
        let stream = reader.get_mut();
        let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("content-type: application/vnd.evotor.v2+json\r\n\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body);
        let _ = stream.flush();
    }

    fn answer(&self, token: &str, target: &str) -> Answer {
        let trouble = {
            let mut state = self.state.lock().expect("state");
            state.requests.push((token.to_owned(), target.to_owned()));
            state.trouble.get_mut(token).filter(|queued| !queued.is_empty()).map(|queued| queued.remove(0))
        };
        match trouble {
            Some(Trouble::Status(status, headers)) => {
                let body = json!({"code": "trouble", "message": format!("mock trouble {status}")});
                return (status, headers, body.to_string().into_bytes());
            }
            Some(Trouble::Broken) => return (200, Vec::new(), b"<html>maintenance</html>".to_vec()),
            Some(Trouble::Slow(wait)) => std::thread::sleep(wait),
            None => {}
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let (offset, filter) = match params.get("cursor") {
            Some(cursor) => match cursor.split_once('|').and_then(|(at, filter)| Some((at.parse().ok()?, filter))) {
                Some((offset, filter)) => (offset, filter.to_owned()),
                None => return (400, Vec::new(), br#"{"code":"bad-cursor"}"#.to_vec()),
            },
            None => (0usize, query.to_owned()),
        };
        let window: BTreeMap<String, i64> = form_urlencoded::parse(filter.as_bytes())
            .filter_map(|(name, value)| Some((name.into_owned(), value.parse().ok()?)))
            .collect();
        let within = |item: &Value, field: &str| {
            let at = item[field].as_i64().unwrap_or(0);
            window.get("since").is_none_or(|since| at >= *since) && window.get("until").is_none_or(|until| at < *until)
        };
        let state = self.state.lock().expect("state");
        let segments: Vec<&str> = path.split('/').collect();
        let items: Vec<Value> = if let ["", "api", "apps", _, "events"] = segments.as_slice() {
            match &state.feed {
                Some((publisher, events)) if publisher == token => {
                    events.iter().filter(|event| within(event, "timestamp")).cloned().collect()
                }
                _ => return (401, Vec::new(), br#"{"code":"unauthorized","message":"not the publisher"}"#.to_vec()),
            }
        } else {
            let Some(account) = state.accounts.get(token) else {
                return (401, Vec::new(), br#"{"code":"unauthorized","message":"token is not valid"}"#.to_vec());
            };
            let of = |map: &BTreeMap<String, Vec<Value>>, store: &str| map.get(store).cloned().unwrap_or_default();
            match segments.as_slice() {
                ["", "stores"] => account.stores.clone(),
                ["", "devices"] => account.devices.clone(),
                ["", "employees"] => account.employees.clone(),
                ["", "stores", store, "products"] => of(&account.products, store),
                ["", "stores", store, "product-groups"] => of(&account.groups, store),
                ["", "stores", store, "documents"] => {
                    of(&account.documents, store).into_iter().filter(|doc| within(doc, "close_date")).collect()
                }
                _ => return (404, Vec::new(), br#"{"code":"not-found"}"#.to_vec()),
            }
        };
        let page: Vec<Value> = items.iter().skip(offset).take(self.page_size).cloned().collect();
        let next = offset + self.page_size;
        let paging = if next < items.len() { json!({"next_cursor": format!("{next}|{filter}")}) } else { json!({}) };
        let headers = vec![("x-ratelimit-limit".to_owned(), "100".to_owned())];
        (200, headers, json!({"items": page, "paging": paging}).to_string().into_bytes())
    }
}

// The publisher API: OAuth renewals (`POST /oauth/token`) and push
// notifications (`POST /api/apps/{app}/push-notifications`, `GET …/{id}`).

/// What the mock's publisher API holds.
#[derive(Debug, Default)]
struct PublisherApi {
    /// `Basic` credential of the OAuth client, base64 of `id:secret`.
    client: Option<String>,
    /// The refresh token the OAuth server takes now; each renewal hands out the next.
    refresh_token: Option<String>,
    /// Lifetime of the access tokens handed out, seconds.
    expires_in: u64,
    /// Renewals answered with a token.
    renewals: u32,
    /// Tokens the push API takes: personal ones, and the access tokens handed out.
    tokens: Vec<String>,
    /// Every body `POST …/push-notifications` took, in order.
    pushed: Vec<Value>,
    /// The notifications made, by id: `{id, status, details}`.
    notifications: BTreeMap<String, Value>,
}

impl MockCloud {
    /// The OAuth server takes the client `id`:`secret` and, first, `refresh_token`;
    /// each renewal hands out an access token living `expires_in` seconds and the next refresh token.
    pub fn oauth(&self, id: &str, secret: &str, refresh_token: &str, expires_in: u64) {
        use base64::Engine as _;
        let mut api = self.publisher.lock().expect("publisher");
        api.client = Some(base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")));
        api.refresh_token = Some(refresh_token.to_owned());
        api.expires_in = expires_in;
    }

    /// The push API takes `token` (a personal publisher token).
    pub fn publisher_token(&self, token: &str) {
        self.publisher.lock().expect("publisher").tokens.push(token.to_owned());
    }

    /// How many renewals the OAuth server granted.
    pub fn renewals(&self) -> u32 {
        self.publisher.lock().expect("publisher").renewals
    }

    /// Every body the push API took, in order.
    pub fn pushed(&self) -> Vec<Value> {
        self.publisher.lock().expect("publisher").pushed.clone()
    }

    /// Sets the status of notification `id` and of its devices, as `GET …/{id}` reports it.
    pub fn push_status(&self, id: &str, status: &str, devices: &[(&str, &str)]) {
        let details: Vec<Value> =
            devices.iter().map(|(device, status)| json!({"device_id": device, "status": status})).collect();
        let mut api = self.publisher.lock().expect("publisher");
        api.notifications.insert(id.to_owned(), json!({"id": id, "status": status, "details": details}));
    }

    /// The publisher API's answer to `target`, when it is one of its paths.
    fn publisher_answer(&self, credential: &str, target: &str, body: &[u8]) -> Option<Answer> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let segments: Vec<&str> = path.split('/').collect();
        let json_answer = |status: u16, body: Value| Some((status, Vec::new(), body.to_string().into_bytes()));
        let mut api = self.publisher.lock().expect("publisher");
        match segments.as_slice() {
            ["", "oauth", "token"] => {
                self.state.lock().expect("state").requests.push(("oauth".into(), path.to_owned()));
                // The form in the body, as OAuth has it (the query too, as Evotor's example sends it).
                let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .chain(form_urlencoded::parse(body).into_owned())
                    .collect();
                if api.client.as_ref().is_none_or(|client| credential != format!("Basic {client}")) {
                    return json_answer(401, json!({"error": "invalid_client"}));
                }
                if params.get("grant_type").map(String::as_str) != Some("refresh_token")
                    || params.get("refresh_token") != api.refresh_token.as_ref()
                {
                    return json_answer(
                        400,
                        json!({"error": "invalid_grant", "error_description": "refresh token not valid"}),
                    );
                }
                api.renewals += 1;
                let n = api.renewals;
                let (access, refresh) = (format!("access-{n}"), format!("refresh-{n}"));
                api.tokens.push(access.clone());
                api.refresh_token = Some(refresh.clone());
                json_answer(
                    200,
                    json!({"access_token": access, "token_type": "bearer", "refresh_token": refresh,
                    "expires_in": api.expires_in, "scope": "push-notification:write event:read app:read"}),
                )
            }
            ["", "api", "apps", _, "push-notifications", rest @ ..] if rest.len() <= 1 => {
                self.state.lock().expect("state").requests.push((credential.to_owned(), target.to_owned()));
                if !api.tokens.iter().any(|token| token == credential) {
                    return json_answer(401, json!({"code": "unauthorized", "message": "not the publisher"}));
                }
                match rest {
                    [] => {
                        let Ok(request) = serde_json::from_slice::<Value>(body) else {
                            return json_answer(400, json!({"code": "bad-request"}));
                        };
                        let id = format!("00000000-0000-4000-8000-{:012}", api.pushed.len() + 1);
                        let details: Vec<Value> = request["devices"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|device| json!({"device_id": device, "status": "ACCEPTED"}))
                            .collect();
                        let notification = json!({"id": id, "status": "ACCEPTED", "details": details});
                        api.pushed.push(request);
                        api.notifications.insert(id, notification.clone());
                        json_answer(200, notification)
                    }
                    [id] => match api.notifications.get(*id) {
                        Some(notification) => json_answer(200, notification.clone()),
                        None => json_answer(404, json!({"code": "not-found"})),
                    },
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

// Writing the catalog: bulk tasks (`PUT /stores/{id}/products`,
// `…/product-groups` with the `+bulk` type, `GET /bulks/{id}`), deletions
// (`DELETE …?id=`) and quantities (`PATCH /stores/{id}/products/{id}`).

/// What the mock's catalog side holds.
#[derive(Debug, Default)]
struct CatalogApi {
    /// Every write, in order: (method, path with query, body).
    writes: Vec<(String, String, Value)>,
    /// Bulk tasks by id: (status, the items' ids).
    tasks: BTreeMap<String, (String, Vec<String>)>,
    /// Items refused when their task runs, with the reason.
    refused: BTreeMap<String, String>,
    /// What each store holds after the writes, by item id (v2 objects).
    stores: BTreeMap<String, BTreeMap<String, Value>>,
}

impl MockCloud {
    /// Refuses item `id` with `reason` when the bulk task carrying it runs.
    pub fn refuse_item(&self, id: &str, reason: &str) {
        self.catalog.lock().expect("catalog").refused.insert(id.to_ascii_lowercase(), reason.to_owned());
    }

    /// Every catalog write so far: (method, path with query, body).
    pub fn catalog_writes(&self) -> Vec<(String, String, Value)> {
        self.catalog.lock().expect("catalog").writes.clone()
    }

    /// What `store` holds in the cloud after the writes, by item id.
    pub fn store_catalog(&self, store: &str) -> BTreeMap<String, Value> {
        self.catalog.lock().expect("catalog").stores.get(store).cloned().unwrap_or_default()
    }

    /// The answer to a catalog write or a task's state, when `target` is one.
    fn catalog_answer(&self, method: &str, token: &str, target: &str, body: &[u8]) -> Option<Answer> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let segments: Vec<&str> = path.split('/').collect();
        let is_write = matches!(
            (method, segments.as_slice()),
            ("GET", ["", "bulks", _])
                | ("PUT" | "DELETE", ["", "stores", _, "products" | "product-groups"])
                | ("PATCH", ["", "stores", _, "products", _])
        );
        if !is_write {
            return None;
        }
        let json_answer = |status: u16, body: Value| Some((status, Vec::new(), body.to_string().into_bytes()));
        self.state.lock().expect("state").requests.push((token.to_owned(), target.to_owned()));
        if !self.state.lock().expect("state").accounts.contains_key(token) {
            return json_answer(401, json!({"code": "unauthorized", "message": "token is not valid"}));
        }
        let trouble = {
            let mut state = self.state.lock().expect("state");
            state.trouble.get_mut(token).filter(|queued| !queued.is_empty()).map(|queued| queued.remove(0))
        };
        if let Some(Trouble::Status(status, headers)) = trouble {
            let body = json!({"code": "trouble", "message": format!("mock trouble {status}")});
            return Some((status, headers, body.to_string().into_bytes()));
        }
        let mut api = self.catalog.lock().expect("catalog");
        let api = &mut *api;
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if method != "GET" {
            api.writes.push((method.to_owned(), target.to_owned(), parsed.clone()));
        }
        match (method, segments.as_slice()) {
            ("GET", ["", "bulks", id]) => {
                let Some((status, ids)) = api.tasks.get(*id).cloned() else {
                    return json_answer(404, json!({"code": "not-found"}));
                };
                // A task runs when it is first asked about.
                let details: Vec<Value> = ids
                    .iter()
                    .filter_map(|item| api.refused.get(item).map(|reason| (item, reason)))
                    .map(|(item, reason)| {
                        json!({"code": "validation_failed", "message": reason, "product_id": item,
                            "violations": [{"subject": "name", "reason": reason}]})
                    })
                    .collect();
                let ended = if details.is_empty() { "COMPLETED" } else { "FAILED" };
                api.tasks.insert((*id).to_owned(), (ended.to_owned(), ids));
                json_answer(
                    200,
                    json!({"id": id, "type": "product", "status": ended, "details": details,
                    "previous": status, "modified_at": "2026-12-07T10:00:00.000+0000"}),
                )
            }
            ("PUT", ["", "stores", store, _]) => {
                let Value::Array(items) = parsed else { return json_answer(400, json!({"code": "bad-request"})) };
                let id = format!("bulk-{:04}", api.tasks.len() + 1);
                let ids: Vec<String> =
                    items.iter().filter_map(|item| item["id"].as_str()).map(str::to_ascii_lowercase).collect();
                let catalog = api.stores.entry((*store).to_owned()).or_default();
                for item in items {
                    if let Some(item_id) = item["id"].as_str().map(str::to_ascii_lowercase)
                        && !api.refused.contains_key(&item_id)
                    {
                        catalog.insert(item_id, item);
                    }
                }
                api.tasks.insert(id.clone(), ("ACCEPTED".into(), ids));
                json_answer(202, json!({"id": id, "status": "ACCEPTED", "type": "product"}))
            }
            ("DELETE", ["", "stores", store, _]) => {
                let ids = form_urlencoded::parse(query.as_bytes())
                    .find(|(name, _)| name == "id")
                    .map(|(_, ids)| ids.into_owned())
                    .unwrap_or_default();
                let catalog = api.stores.entry((*store).to_owned()).or_default();
                for id in ids.split(',') {
                    catalog.remove(&id.to_ascii_lowercase());
                }
                Some((204, Vec::new(), Vec::new()))
            }
            ("PATCH", ["", "stores", store, "products", item]) => {
                let catalog = api.stores.entry((*store).to_owned()).or_default();
                match catalog.get_mut(&item.to_ascii_lowercase()) {
                    Some(held) => {
                        held["quantity"] = parsed["quantity"].clone();
                        json_answer(200, held.clone())
                    }
                    None => json_answer(404, json!({"code": "not-found"})),
                }
            }
            _ => None,
        }
    }
}
