//! What every request to Evotor's servers shares, whoever makes it (the
//! cloud sync, publishing, push notifications, the publisher token): the
//! version asked for, how long a message kept from an answer may be, the
//! wait a 429 asks for, why a request got no answer, and how long to wait
//! after failures in a row.

use crate::outgoing;

/// What `Accept` asks for: version 2 of the REST API.
pub const ACCEPT: &str = "application/vnd.evotor.v2+json";
/// Longest error message kept from an answer, in characters.
pub const MAX_MESSAGE_CHARS: usize = 300;
/// Wait after a 429 without a usable `X-RateLimit-Reset`, seconds.
pub const DEFAULT_RESET_SECS: u64 = 60;
/// Longest wait a `X-RateLimit-Reset` may ask for, seconds.
pub const MAX_RESET_SECS: u64 = 3600;
/// Longest wait after failures in a row, seconds.
pub const MAX_BACKOFF_SECS: u64 = 3600;

/// `text`, at most [`MAX_MESSAGE_CHARS`] of it.
pub fn clip(text: &str) -> String {
    text.chars().take(MAX_MESSAGE_CHARS).collect()
}

/// The wait an answer's `X-RateLimit-Reset` asks for, seconds
/// ([`DEFAULT_RESET_SECS`] without a usable one, at most [`MAX_RESET_SECS`]).
pub fn reset_secs(response: &outgoing::Response) -> u64 {
    let reset = response.header("x-ratelimit-reset").and_then(|text| text.trim().parse::<u64>().ok());
    reset.unwrap_or(DEFAULT_RESET_SECS).clamp(1, MAX_RESET_SECS)
}

/// Why a request got no answer, for the partner to read (a time-out as
/// `no answer within {timeout_secs} s`).
pub fn transport_failure(err: &outgoing::Error, timeout_secs: u64) -> String {
    match err {
        outgoing::Error::Denied => "the gateway refused the request: the host is not in allowed_outbound_hosts".into(),
        outgoing::Error::Timeout => format!("no answer within {timeout_secs} s"),
        outgoing::Error::TooLarge => "the answer is over the gateway's max_outbound_response_bytes".into(),
        outgoing::Error::Failed(why) => format!("the request failed: {}", clip(why)),
    }
}

/// The wait after `failures` failed requests in a row: 1, 2, 4, … minutes,
/// at most [`MAX_BACKOFF_SECS`].
pub fn backoff_secs(failures: u32) -> u64 {
    (60u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF_SECS)
}
