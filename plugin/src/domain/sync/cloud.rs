//! One page of the Evotor cloud's REST API: the request (headers, cursor),
//! and the answer read as `{"items": […], "paging": {"next_cursor": …}}` or
//! as the reason there is none.

use crate::config::{CloudAuth, CloudSettings};
use crate::outgoing::{self, Http};
use serde_json::Value;

pub use crate::domain::evotor_api::{ACCEPT, clip, reset_secs};

/// Who a request is made as.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A user's cloud token, sent as `evotor_api_auth` says.
    User(&'a str),
    /// The application's publisher token (always `Authorization: Bearer`).
    Publisher(&'a str),
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// `items`, as sent.
    pub items: Vec<Value>,
    /// `paging.next_cursor`: the next page, if any.
    pub next: Option<String>,
    /// How many items a page held when they were more than
    /// [`MAX_PAGE_ITEMS`]: then `items` is empty, none of them read (their
    /// values could outgrow the instance's memory), and the page is to be
    /// asked for again with a smaller `limit`.
    pub oversize: Option<usize>,
    /// The answer's `Warning` header, as sent (clipped): how the cloud
    /// announces that a URL will stop working.
    pub warning: Option<String>,
}

/// Most items a page may hold to be read: the cloud's own page size.
pub const MAX_PAGE_ITEMS: usize = 1000;

/// The smallest `limit` a page is asked for again with.
pub const MIN_PAGE_LIMIT: usize = 10;

/// The `limit` to ask a page again with, after one held `items` items under
/// `limit` (`None`: the cloud's default); `None` when it cannot be smaller.
pub fn smaller_limit(limit: Option<usize>, items: usize) -> Option<usize> {
    let asked = limit.unwrap_or(MAX_PAGE_ITEMS);
    if asked <= MIN_PAGE_LIMIT {
        return None;
    }
    Some((asked.min(items) / 4).max(MIN_PAGE_LIMIT))
}

/// `url` asking for at most `limit` items.
pub fn with_limit(url: String, limit: Option<usize>) -> String {
    match limit {
        None => url,
        Some(limit) if url.contains('?') => format!("{url}&limit={limit}"),
        Some(limit) => format!("{url}?limit={limit}"),
    }
}

/// A count of a sequence's elements, read without keeping any.
struct Count(usize);

impl<'de> serde::Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Counting;
        impl<'de> serde::de::Visitor<'de> for Counting {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut count = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    count += 1;
                }
                Ok(Count(count))
            }
        }
        deserializer.deserialize_seq(Counting)
    }
}

/// A listing's shape, its items counted, not read.
#[derive(serde::Deserialize)]
struct Shape {
    #[serde(default)]
    items: Option<Count>,
    #[serde(default)]
    paging: Option<Value>,
}

/// Why a request brought no page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 401 or 403: the token is no longer usable (or the app lacks the
    /// permission, or the user removed it) until a new token arrives.
    Refused {
        /// The status.
        status: u16,
        /// The cloud's message.
        message: String,
    },
    /// 429: wait this many seconds (`X-RateLimit-Reset`).
    RateLimited {
        /// Seconds until the window resets.
        reset_secs: u64,
    },
    /// 404: the resource is gone (a store removed meanwhile).
    Gone {
        /// The cloud's message.
        message: String,
    },
    /// Anything else (5xx, a time-out, a refused connection, the gateway's
    /// allow-list, an answer over the cap or not a listing): tried again on
    /// a later run.
    Retry {
        /// The status, when there was an answer.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
}

impl Failure {
    /// The status, when the cloud answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Failure::Refused { status, .. } => Some(*status),
            Failure::RateLimited { .. } => Some(429),
            Failure::Gone { .. } => Some(404),
            Failure::Retry { status, .. } => *status,
        }
    }

    /// What went wrong, for the partner to read.
    pub fn message(&self) -> String {
        match self {
            Failure::Refused { message, .. } | Failure::Gone { message } | Failure::Retry { message, .. } => {
                message.clone()
            }
            Failure::RateLimited { reset_secs } => format!("rate limited for {reset_secs} s (X-RateLimit-Reset)"),
        }
    }
}

/// `path?query` of the first page (`query` without `?`, may be empty), or
/// of the page at `cursor` (the filters go with the first page only).
pub fn url(settings: &CloudSettings, path: &str, query: &str, cursor: Option<&str>) -> String {
    match cursor {
        Some(cursor) => {
            let cursor: String = form_urlencoded::byte_serialize(cursor.as_bytes()).collect();
            format!("{}{path}?cursor={cursor}", settings.api_url)
        }
        None if query.is_empty() => format!("{}{path}", settings.api_url),
        None => format!("{}{path}?{query}", settings.api_url),
    }
}

/// What `Content-Type` a bulk request carries.
pub const BULK: &str = "application/vnd.evotor.v2+bulk+json";
/// What `Content-Type` a single request carries.
pub const SINGLE: &str = "application/vnd.evotor.v2+json";

/// Sends `method` `url` as `credential` with `body` (its content type and
/// bytes), waiting at most `timeout_secs`. Answers the cloud's answer when
/// it came and is not one to try again later or a refusal: 401 and 403 are
/// [`Failure::Refused`], 429 [`Failure::RateLimited`], 5xx and every
/// transport failure [`Failure::Retry`]; any other status is the caller's.
pub fn call(
    http: &dyn Http,
    settings: &CloudSettings,
    (method, url): (&str, &str),
    credential: Credential<'_>,
    body: Option<(&str, Vec<u8>)>,
    timeout_secs: u64,
) -> Result<outgoing::Response, Failure> {
    let auth = match (credential, settings.auth) {
        (Credential::User(token), CloudAuth::Bearer) | (Credential::Publisher(token), _) => {
            ("authorization", format!("Bearer {token}"))
        }
        (Credential::User(token), CloudAuth::XAuthorization) => ("x-authorization", token.to_owned()),
    };
    let mut headers = vec![("accept".to_owned(), ACCEPT.to_owned()), (auth.0.to_owned(), auth.1)];
    let body = match body {
        Some((content_type, bytes)) => {
            headers.push(("content-type".to_owned(), content_type.to_owned()));
            bytes
        }
        None => Vec::new(),
    };
    let request = outgoing::Request {
        method: method.into(),
        url: url.to_owned(),
        headers,
        body,
        timeout: Some(std::time::Duration::from_secs(timeout_secs)),
    };
    let response = http.send(&request).map_err(|err| Failure::Retry {
        status: None,
        message: match err {
            outgoing::Error::Timeout if timeout_secs < settings.request_timeout_secs => {
                format!("no answer within the {timeout_secs} s left of the run's time")
            }
            outgoing::Error::Timeout => {
                format!("no answer within sync_request_timeout_secs ({} s)", settings.request_timeout_secs)
            }
            other => crate::domain::evotor_api::transport_failure(&other, timeout_secs),
        },
    })?;
    match response.status {
        401 | 403 => Err(Failure::Refused { status: response.status, message: message(&response) }),
        429 => Err(Failure::RateLimited { reset_secs: reset_secs(&response) }),
        500.. => Err(Failure::Retry { status: Some(response.status), message: message(&response) }),
        _ => Ok(response),
    }
}

/// GETs one page at `url` as `credential`, waiting at most `timeout_secs`.
pub fn get_page(
    http: &dyn Http,
    settings: &CloudSettings,
    url: &str,
    credential: Credential<'_>,
    timeout_secs: u64,
) -> Result<Page, Failure> {
    let response = call(http, settings, ("GET", url), credential, None, timeout_secs)?;
    match response.status {
        200 => page(&response.body).map(|page| Page { warning: response.header("warning").map(clip), ..page }),
        404 => Err(Failure::Gone { message: message(&response) }),
        status => Err(Failure::Retry { status: Some(status), message: message(&response) }),
    }
}

/// Reads a listing: its items are counted first, and read only when there
/// are at most [`MAX_PAGE_ITEMS`] of them.
fn page(body: &[u8]) -> Result<Page, Failure> {
    let bad = |why: &str| Failure::Retry { status: Some(200), message: format!("the answer is not a listing: {why}") };
    let cursor = |paging: Option<&Value>| match paging.and_then(|paging| paging.get("next_cursor")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(cursor)) if cursor.is_empty() => Ok(None),
        Some(Value::String(cursor)) if cursor.len() <= 4096 => Ok(Some(cursor.clone())),
        Some(_) => Err(bad("paging.next_cursor is not a usable string")),
    };
    if let Ok(Shape { items: Some(Count(count)), paging }) = serde_json::from_slice::<Shape>(body)
        && count > MAX_PAGE_ITEMS
    {
        return Ok(Page { items: Vec::new(), next: cursor(paging.as_ref())?, oversize: Some(count), warning: None });
    }
    let Ok(Value::Object(mut listing)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad("not a JSON object"));
    };
    let items = match listing.remove("items") {
        Some(Value::Array(items)) => items,
        None => Vec::new(),
        Some(_) => return Err(bad("items is not an array")),
    };
    let next = cursor(listing.get("paging"))?;
    Ok(Page { items, next, oversize: None, warning: None })
}

/// The cloud's error message (`{"message": …}`, else `code`, else the status).
pub fn message(response: &outgoing::Response) -> String {
    let body = serde_json::from_slice::<Value>(&response.body).ok();
    let field = |name: &str| body.as_ref().and_then(|body| body.get(name)).and_then(Value::as_str).map(clip);
    let text = field("message").or_else(|| field("code")).unwrap_or_default();
    if text.is_empty() { format!("HTTP {}", response.status) } else { format!("HTTP {}: {text}", response.status) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapConfig;
    use crate::domain::evotor_api::DEFAULT_RESET_SECS;
    use crate::outgoing::{Response, Scripted};

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Result<Response, outgoing::Error> {
        let headers = headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
        Ok(Response { status, headers, body: body.as_bytes().to_vec() })
    }

    #[test]
    fn a_page_is_asked_with_the_configured_credential_and_read_with_its_cursor() {
        let settings = CloudSettings::read(&MapConfig::from([("evotor_api_auth", "x-authorization")])).expect("ok");
        let http = Scripted::new([
            answer(200, &[], r#"{"items":[{"id":"a"}],"paging":{"next_cursor":"c 2"}}"#),
            answer(200, &[], r#"{"items":[],"paging":{}}"#),
        ]);
        let first = url(&settings, "/stores", "", None);
        let page = get_page(&http, &settings, &first, Credential::User("tok"), 20).expect("page");
        assert_eq!((page.items.len(), page.next.as_deref()), (1, Some("c 2")));
        let next = url(&settings, "/stores", "since=1", page.next.as_deref());
        assert_eq!(next, "https://api.evotor.ru/stores?cursor=c+2", "the filters go with the first page only");
        assert_eq!(get_page(&http, &settings, &next, Credential::Publisher("pub"), 20).expect("last").next, None);
        let sent = http.sent();
        assert!(sent[0].headers.contains(&("x-authorization".into(), "tok".into())));
        assert!(sent[0].headers.contains(&("accept".into(), ACCEPT.into())));
        assert!(sent[1].headers.contains(&("authorization".into(), "Bearer pub".into())), "publisher: always Bearer");
    }

    #[test]
    fn every_failure_says_what_comes_next() {
        let settings = CloudSettings::read(&MapConfig::default()).expect("defaults");
        let http = Scripted::new([
            answer(401, &[], r#"{"code":"unauthorized","message":"token expired"}"#),
            answer(429, &[("x-ratelimit-reset", "17")], ""),
            answer(429, &[("x-ratelimit-reset", "soon")], ""),
            answer(503, &[], "<html>"),
            answer(404, &[], ""),
            answer(200, &[], "not json"),
            answer(200, &[], r#"{"items":{}}"#),
            Err(outgoing::Error::Denied),
            Err(outgoing::Error::Timeout),
        ]);
        let next = || get_page(&http, &settings, "https://api.evotor.ru/stores", Credential::User("t"), 20);
        assert_eq!(next(), Err(Failure::Refused { status: 401, message: "HTTP 401: token expired".into() }));
        assert_eq!(next(), Err(Failure::RateLimited { reset_secs: 17 }));
        assert_eq!(next(), Err(Failure::RateLimited { reset_secs: DEFAULT_RESET_SECS }));
        assert_eq!(next(), Err(Failure::Retry { status: Some(503), message: "HTTP 503".into() }));
        assert_eq!(next(), Err(Failure::Gone { message: "HTTP 404".into() }));
        for _ in 0..2 {
            assert!(
                matches!(next(), Err(Failure::Retry { status: Some(200), message }) if message.contains("listing"))
            );
        }
        assert!(
            matches!(next(), Err(Failure::Retry { status: None, message }) if message.contains("allowed_outbound_hosts"))
        );
        assert!(matches!(next(), Err(Failure::Retry { status: None, .. })));
    }
}
