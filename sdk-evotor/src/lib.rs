//! The Evotor plugin's extension API, typed, for an evogate plugin that
//! runs beside it: an Evotor app's backend (`docs/evotor-apps.md`).
//!
//! The gateway lets a plugin call the Evotor plugin in process when its
//! configuration says so (`calls = ["evotor"]`); [`Evotor`] makes those
//! calls over the plugin's own outgoing HTTP (`ctx.http`), to
//! `http://evotor.evogate.internal/extension/v1/…`. No credential is
//! needed: the gateway tells the Evotor plugin which plugin calls.
//!
//! ```
//! use evogate_evotor::Evotor;
//! use evogate_plugin::http::{Request, Response};
//! use evogate_plugin::Ctx;
//!
//! /// A terminal app's call: whose is it?
//! fn whoami(ctx: &Ctx<'_>, request: &Request) -> Response {
//!     match Evotor::new(ctx.http).session(request) {
//!         Ok(session) => Response::json(200, &serde_json::json!({ "userId": session.user_id })),
//!         // 401, 402 or 403 in Evotor's error format, as the terminal app expects it.
//!         Err(refused) => refused.response(),
//!     }
//! }
//! # let fake = evogate_evotor::testing::FakeEvotor::new().user("01-000000000000001", "token-1");
//! # let fakes = evogate_plugin::testing::Fakes::default();
//! # let ctx = Ctx { http: &fake, ..fakes.ctx() };
//! # let request = Request::new("GET", "/").header("authorization", "Bearer token-1");
//! # assert_eq!(whoami(&ctx, &request).body_json()["userId"], "01-000000000000001");
//! ```
//!
//! The API is versioned in its path (`/extension/v1`): a version only
//! grows (new paths, new fields), and this client ignores what it does not
//! know, so an extension built on it keeps working when the Evotor plugin
//! is upgraded under it. With the `testing` feature, [`testing::FakeEvotor`]
//! serves the same API natively, for an extension's unit tests.

#![deny(missing_docs)]

#[cfg(any(test, feature = "testing"))]
pub mod testing;

use evogate_plugin::{http, outgoing};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The name the Evotor plugin has in the gateway's configuration, unless told otherwise.
pub const DEFAULT_PLUGIN: &str = "evotor";
/// The extension API's version this client speaks, in its paths.
pub const API: &str = "/extension/v1";
/// The headers of a terminal app's call that say who sends it, forwarded by [`Evotor::session`].
pub const TERMINAL_HEADERS: [&str; 4] =
    ["authorization", "x-evotor-store-uuid", "x-evotor-device-uuid", "x-evotor-user-id"];

/// The extension API of the Evotor plugin, over a plugin's outgoing HTTP.
#[derive(Clone, Copy)]
pub struct Evotor<'a> {
    http: &'a dyn outgoing::Http,
    plugin: &'a str,
}

impl std::fmt::Debug for Evotor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evotor").field("plugin", &self.plugin).finish_non_exhaustive()
    }
}

/// Who a terminal app's call is from ([`Evotor::session`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The Evotor user the token was issued to.
    pub user_id: String,
    /// The store `X-Evotor-Store-Uuid` names, if the call named one.
    pub store: Option<Named>,
    /// The terminal `X-Evotor-Device-UUID` names, if the call named one.
    pub device: Option<Named>,
}

/// A store or terminal a terminal app's call names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Named {
    /// Its uuid, lower case.
    pub uuid: String,
    /// Whether the Evotor plugin knows it as the user's (`false`: nobody's
    /// yet; another user's is refused with 403 before this).
    pub known: bool,
}

/// One page of a listing: `next` goes into the next call's `after`; only
/// an empty page with `next` of `None` is the end.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts.
    pub next: Option<String>,
}

/// A store, employee or terminal as Evotor last sent it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entity {
    /// Evotor's uuid.
    pub uuid: String,
    /// The object as Evotor sent it.
    pub data: Value,
    /// When it last changed, Unix seconds.
    pub updated_at: u64,
}

/// A product or group of a store's catalog.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    /// The item as stored (Evotor's v1 product fields).
    pub product: Value,
    /// Who wrote it last: `evotor` or `partner`.
    pub source: String,
    /// When, Unix seconds.
    pub updated_at: u64,
}

/// A terminal document as received.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// The document's id as sent.
    pub id: String,
    /// The store it belongs to.
    pub store_uuid: String,
    /// `SELL`, `PAYBACK`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// `V1` (the terminal's documents) or `V2` (the developer console's).
    pub format: String,
    /// The Evotor user that delivered it.
    pub user_id: String,
    /// The document itself, whole.
    pub document: Value,
}

impl Document {
    /// The sale's total in kopecks: V1 `closeSum`, V2 `body.result_sum`
    /// (rubles, a number or a decimal string); `None` when it has none.
    pub fn total_kopecks(&self) -> Option<i64> {
        let sum = match self.format.as_str() {
            "V2" => self.document.get("body").and_then(|body| body.get("result_sum")),
            _ => self.document.get("closeSum"),
        }?;
        let text = match sum {
            Value::Number(number) => number.to_string(),
            Value::String(text) => text.trim().replace(',', "."),
            _ => return None,
        };
        kopecks(&text)
    }
}

/// `"217.82"` → 21782, `"3548"` → 354800; rounded half away from zero past two decimals.
fn kopecks(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit())
        || whole.len() > 15
    {
        return None;
    }
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut cents: i64 =
        fraction.bytes().chain(std::iter::repeat(b'0')).take(2).fold(0, |n, b| n * 10 + i64::from(b - b'0'));
    if fraction.as_bytes().get(2).is_some_and(|third| *third >= b'5') {
        cents += 1;
    }
    let total = whole.checked_mul(100)?.checked_add(cents)?;
    Some(if negative { -total } else { total })
}

/// One entry of the change feed, as the partner API's feed has it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedEntry {
    /// Where the feed goes on after this entry.
    pub cursor: String,
    /// What happened: `document.received`, `products.upserted`, …
    pub kind: String,
    /// When, Unix seconds.
    pub at: u64,
    /// The Evotor user concerned, if any.
    pub user_id: Option<String>,
    /// The ids that say what changed.
    pub data: Value,
}

/// Why a call of the extension API has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The Evotor plugin answered with an error (Evotor's error format):
    /// an authentication failure a terminal app should get as it is, a
    /// store that is not the user's, a bad parameter.
    Refused {
        /// The HTTP status.
        status: u16,
        /// Evotor's error code (`errors[0].code`), when there is one.
        code: Option<u64>,
        /// The answer's body, as sent.
        body: Vec<u8>,
    },
    /// The call did not get through: the gateway refused it (this plugin's
    /// `calls` does not name the Evotor plugin, or no plugin has that
    /// name), or it ran out of time.
    Unreachable(outgoing::Error),
    /// The answer is not what the API promises.
    Malformed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Refused { status, code, body } => {
                write!(f, "the Evotor plugin answered {status}")?;
                if let Some(code) = code {
                    write!(f, " (code {code})")?;
                }
                write!(f, ": {}", String::from_utf8_lossy(body))
            }
            Error::Unreachable(err) => write!(f, "the Evotor plugin could not be called: {err:?}"),
            Error::Malformed(why) => write!(f, "the Evotor plugin's answer is not understood: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// What to answer the terminal app that made the call: the Evotor
    /// plugin's error as it is, else 502 (unreachable, not understood) or
    /// 504 (out of time) in Evotor's error format.
    pub fn response(&self) -> http::Response {
        let (status, reason) = match self {
            Error::Refused { status, body, .. } => {
                return http::Response {
                    status: *status,
                    headers: vec![("content-type".into(), "application/json; charset=utf-8".into())],
                    body: body.clone(),
                };
            }
            Error::Unreachable(outgoing::Error::Timeout) => (504, "the Evotor plugin did not answer in time"),
            Error::Unreachable(_) => (502, "the Evotor plugin cannot be reached"),
            Error::Malformed(_) => (502, "the Evotor plugin's answer is not understood"),
        };
        http::Response::json(status, &serde_json::json!({ "errors": [{ "code": status, "reason": reason }] }))
    }

    /// The Evotor error code, when the plugin answered one.
    pub fn code(&self) -> Option<u64> {
        match self {
            Error::Refused { code, .. } => *code,
            _ => None,
        }
    }
}

impl<'a> Evotor<'a> {
    /// The Evotor plugin named [`DEFAULT_PLUGIN`], called over `http`.
    pub fn new(http: &'a dyn outgoing::Http) -> Self {
        Self::named(http, DEFAULT_PLUGIN)
    }

    /// The Evotor plugin configured under `plugin`.
    pub fn named(http: &'a dyn outgoing::Http, plugin: &'a str) -> Self {
        Self { http, plugin }
    }

    /// Who a terminal app's call (proxied by the Evotor cloud) is from:
    /// its `Authorization` and `X-Evotor-*` headers are forwarded and
    /// resolved as the Evotor protocol resolves a user token. An unknown,
    /// replaced or expired token, a user without a usable tariff or
    /// subscription, or headers naming another user's store or terminal
    /// are [`Error::Refused`] with the answer to give the terminal app.
    pub fn session(&self, request: &http::Request) -> Result<Session, Error> {
        let headers = TERMINAL_HEADERS
            .iter()
            .filter_map(|name| request.header_value(name).map(|value| ((*name).to_owned(), value.to_owned())))
            .collect();
        self.get_json("/session", headers)
    }

    /// Whether `request` carries the partner API token (its
    /// `Authorization`): `Ok` when it does; 401 (or 404 when the Evotor
    /// plugin has no partner API) refused otherwise.
    pub fn check_partner(&self, request: &http::Request) -> Result<(), Error> {
        let headers = request
            .header_value("authorization")
            .map(|value| vec![("authorization".to_owned(), value.to_owned())])
            .unwrap_or_default();
        self.call(&format!("{API}/partner"), headers).map(drop)
    }

    /// The user as the partner API shows it (linked account, tariff, token statuses).
    pub fn user(&self, user_id: &str) -> Result<Value, Error> {
        self.get_json(&format!("/users/{}", segment(user_id)), Vec::new())
    }

    /// Whether the user may use the app now, and on which terminals.
    pub fn entitlement(&self, user_id: &str) -> Result<Value, Error> {
        self.get_json(&format!("/users/{}/entitlement", segment(user_id)), Vec::new())
    }

    /// The user's stores, a page at a time (`limit` 1 to 1000).
    pub fn stores(&self, user_id: &str, after: Option<&str>, limit: u32) -> Result<Page<Entity>, Error> {
        self.get_json(&format!("/users/{}/stores?{}", segment(user_id), paging(after, limit)), Vec::new())
    }

    /// The user's employees, a page at a time.
    pub fn employees(&self, user_id: &str, after: Option<&str>, limit: u32) -> Result<Page<Entity>, Error> {
        self.get_json(&format!("/users/{}/employees?{}", segment(user_id), paging(after, limit)), Vec::new())
    }

    /// The user's terminals, a page at a time.
    pub fn devices(&self, user_id: &str, after: Option<&str>, limit: u32) -> Result<Page<Entity>, Error> {
        self.get_json(&format!("/users/{}/devices?{}", segment(user_id), paging(after, limit)), Vec::new())
    }

    /// A page of the catalog of the user's store.
    pub fn products(
        &self,
        user_id: &str,
        store: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Product>, Error> {
        let path = format!("/users/{}/stores/{}/products?{}", segment(user_id), segment(store), paging(after, limit));
        self.get_json(&path, Vec::new())
    }

    /// The items of the user's store with `barcode`.
    pub fn products_with_barcode(&self, user_id: &str, store: &str, barcode: &str) -> Result<Vec<Product>, Error> {
        let path =
            format!("/users/{}/stores/{}/products?barcode={}", segment(user_id), segment(store), segment(barcode));
        self.get_json::<Page<Product>>(&path, Vec::new()).map(|page| page.items)
    }

    /// A page of the documents of the user's store; `query` holds the
    /// partner API's filters (`type=SELL`, `since=`, `until=`), `&`-joined.
    pub fn documents(&self, user_id: &str, store: &str, query: &str) -> Result<Page<Document>, Error> {
        let path = format!("/users/{}/stores/{}/documents?{query}", segment(user_id), segment(store));
        self.get_json(&path, Vec::new())
    }

    /// One document of the user's store; `None` when there is none.
    pub fn document(&self, user_id: &str, store: &str, id: &str) -> Result<Option<Document>, Error> {
        let path = format!("/users/{}/stores/{}/documents/{}", segment(user_id), segment(store), segment(id));
        match self.get_json(&path, Vec::new()) {
            Err(Error::Refused { status: 404, .. }) => Ok(None),
            found => found.map(Some),
        }
    }

    /// A page of the change feed after `after` (`None`: from the start),
    /// every user's or `user_id`'s only: the partner API's entries, order
    /// and cursors. `next` is where to go on; it is `after` again when
    /// nothing new has happened. With `user_id` a page may be empty and
    /// still move `next` on.
    pub fn feed(&self, after: Option<&str>, limit: u32, user_id: Option<&str>) -> Result<Page<FeedEntry>, Error> {
        let mut path = format!("/feed?{}", paging(after, limit));
        if let Some(user) = user_id {
            path.push_str(&format!("&userId={}", segment(user)));
        }
        self.get_json(&path, Vec::new())
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str, headers: Vec<(String, String)>) -> Result<T, Error> {
        let answer = self.call(&format!("{API}{path}"), headers)?;
        serde_json::from_slice(&answer.body).map_err(|err| Error::Malformed(format!("{path}: {err}")))
    }

    fn call(&self, path: &str, headers: Vec<(String, String)>) -> Result<outgoing::Response, Error> {
        let request = outgoing::Request {
            method: "GET".into(),
            url: format!("http://{}.evogate.internal{path}", self.plugin),
            headers,
            body: Vec::new(),
            timeout: None,
        };
        let answer = self.http.send(&request).map_err(Error::Unreachable)?;
        if (200..300).contains(&answer.status) {
            return Ok(answer);
        }
        let code = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|body| body.get("errors")?.get(0)?.get("code")?.as_u64());
        Err(Error::Refused { status: answer.status, code, body: answer.body })
    }
}

/// `after=…&limit=…` of a listing.
fn paging(after: Option<&str>, limit: u32) -> String {
    match after {
        Some(after) => format!("limit={limit}&after={}", segment(after)),
        None => format!("limit={limit}"),
    }
}

/// `text` percent-encoded for a path segment or a query value.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
