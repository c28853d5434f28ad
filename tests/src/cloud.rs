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

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

impl MockCloud {
    /// Starts one answering pages of `page_size` items.
    pub fn start(page_size: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the mock cloud");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let cloud = Self { url, page_size, state: Arc::default() };
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
        for (name, value) in &headers {
            let value = value.as_str();
            match name.as_str() {
                "authorization" => token = value.strip_prefix("Bearer ").unwrap_or(value).to_owned(),
                "x-authorization" => token = value.to_owned(),
                "content-length" => length = value.parse().unwrap_or(0),
                "traceparent" => self.state.lock().expect("state").traceparents.push(value.to_owned()),
                _ => {}
            }
        }
        let _ = std::io::copy(&mut reader.by_ref().take(length as u64), &mut std::io::sink());
        let (status, headers, body) = self.answer(&token, &target);
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

    fn answer(&self, token: &str, target: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
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
