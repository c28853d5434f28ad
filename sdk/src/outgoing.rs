//! Outgoing HTTP as protocol code sees it: one request out, its whole
//! answer (or why there is none) back. The component sends it through
//! `wasi:http/outgoing-handler` (the gateway allows only the hosts the
//! operator lists, caps the answer and ends it at the request's deadline);
//! native tests give the code a `Scripted` client instead (the `testing`
//! feature).

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The absolute URL, e.g. `https://api.evotor.ru/stores`.
    pub url: String,
    /// Header names (lower-case) and values.
    pub headers: Vec<(String, String)>,
    /// The body; empty for none.
    pub body: Vec<u8>,
    /// Each wait (for the connection, the answer's head, each part of its
    /// body) at most this long, else [`Error::Timeout`]; none: only the
    /// gateway's deadline (of the request or job run) applies.
    pub timeout: Option<std::time::Duration>,
}

/// An answer, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code; redirects are answers too (nothing is followed).
    pub status: u16,
    /// Header names (lower-case) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The gateway refused it: the host is not in `allowed_outbound_hosts`.
    Denied,
    /// It did not end before the deadline.
    Timeout,
    /// The answer's body is over the gateway's cap.
    TooLarge,
    /// Anything else (connection refused, TLS, DNS, a bad URL): the reason.
    Failed(String),
}

/// Sends requests.
pub trait Http {
    /// Sends `request` and waits for its whole answer.
    fn send(&self, request: &Request) -> Result<Response, Error>;
}

/// A client that answers from a script, in order, and keeps what was sent:
/// for native tests. Past the script, every request fails.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct Scripted {
    answers: std::cell::RefCell<std::collections::VecDeque<Result<Response, Error>>>,
    sent: std::cell::RefCell<Vec<Request>>,
}

#[cfg(any(test, feature = "testing"))]
impl Scripted {
    /// A client answering `answers`, one per request.
    pub fn new(answers: impl IntoIterator<Item = Result<Response, Error>>) -> Self {
        Self { answers: std::cell::RefCell::new(answers.into_iter().collect()), sent: Default::default() }
    }

    /// Every request sent so far.
    pub fn sent(&self) -> Vec<Request> {
        self.sent.borrow().clone()
    }
}

#[cfg(any(test, feature = "testing"))]
impl Http for Scripted {
    fn send(&self, request: &Request) -> Result<Response, Error> {
        self.sent.borrow_mut().push(request.clone());
        self.answers.borrow_mut().pop_front().unwrap_or_else(|| Err(Error::Failed("no answer scripted".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scripted_client_answers_in_order_keeps_what_was_sent_and_fails_past_its_script() {
        let answer =
            Response { status: 200, headers: vec![("x-ratelimit-reset".into(), "5".into())], body: b"{}".to_vec() };
        let client = Scripted::new([Ok(answer.clone()), Err(Error::Timeout)]);
        let request = Request {
            method: "GET".into(),
            url: "https://api.evotor.ru/stores".into(),
            headers: vec![],
            body: vec![],
            timeout: None,
        };
        assert_eq!(client.send(&request), Ok(answer));
        assert_eq!(client.send(&request).map(|r| r.status), Err(Error::Timeout));
        assert!(matches!(client.send(&request), Err(Error::Failed(_))));
        assert_eq!(client.sent().len(), 3);
        let reset = Response { status: 429, headers: vec![("x-ratelimit-reset".into(), "5".into())], body: vec![] };
        assert_eq!(reset.header("x-ratelimit-reset"), Some("5"));
        assert_eq!(reset.header("retry-after"), None);
    }
}
