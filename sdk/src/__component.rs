//! The component glue behind [`crate::export_plugin!`]: the world's
//! bindings, the host's store, settings and outgoing HTTP behind the SDK's
//! traits, and the calls from the exports into a [`Plugin`]. Not for
//! direct use.

/// The bindings of `evogate:plugin/plugin-with-jobs@0.2.4`.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "evogate:plugin/plugin-with-jobs@0.2.4",
        generate_all,
        pub_export_macro: true,
        default_bindings_module: "::evogate_plugin::__component::bindings",
    });
}

use crate::kv::{Check, Entry, Kv, KvError, Write};
use crate::{Ctx, JobOutcome, JobRun, Plugin};
pub use bindings::evogate::plugin0_2_4::types;
use bindings::evogate::plugin0_2_4::{config as wit_config, job_outcome, kv as wit_kv};
pub use bindings::exports::evogate::plugin0_2_4::{handler, identity, scheduled, settings};

fn host_ctx<R>(run: impl FnOnce(&Ctx<'_>) -> R) -> R {
    run(&Ctx { kv: &HostKv, config: &HostConfig, clock: &crate::clock::SystemClock, http: &HostHttp })
}

/// `handler.handle`: the request to `P`, its answer back.
pub fn handle<P: Plugin>(request: types::Request) -> types::Response {
    let request = crate::http::Request {
        method: request.method,
        path: request.path,
        query: request.query,
        headers: request.headers,
        body: request.body,
    };
    let response = host_ctx(|ctx| P::handle(ctx, &request));
    types::Response { status: response.status, headers: response.headers, body: response.body }
}

/// `identity.info`: `P`'s name and version.
pub fn info<P: Plugin>() -> identity::PluginInfo {
    identity::PluginInfo { name: P::NAME.into(), version: P::VERSION.into() }
}

/// `settings.check`: `P`'s check of `settings` ([`crate::config::check`]).
pub fn check<P: Plugin>(settings: Vec<(String, String)>) -> Vec<settings::Problem> {
    let settings = crate::config::MapConfig(settings.into_iter().collect());
    crate::config::check::<P>(&settings)
        .into_iter()
        .map(|problem| settings::Problem { setting: problem.setting, message: problem.message })
        .collect()
}

/// `scheduled.run`: the job run to `P`.
pub fn run<P: Plugin>(run: scheduled::JobRun) -> Result<(), String> {
    let run =
        JobRun { job: run.job, scheduled_at_ms: run.scheduled_at_ms, timeout_ms: run.timeout_ms, manual: run.manual };
    match host_ctx(|ctx| P::run_job_outcome(ctx, &run))? {
        JobOutcome::Done => Ok(()),
        JobOutcome::Partial(summary) => {
            job_outcome::partial(&summary);
            Ok(())
        }
    }
}

struct HostKv;

fn from_wit(err: wit_kv::Error) -> KvError {
    match err {
        wit_kv::Error::Conflict => KvError::Conflict,
        wit_kv::Error::TooLarge => KvError::TooLarge("over a kv limit"),
        wit_kv::Error::Unavailable(why) => KvError::Unavailable(why),
        wit_kv::Error::OutcomeUnknown(why) => KvError::OutcomeUnknown(why),
    }
}

fn entry(entry: wit_kv::Entry) -> Entry {
    Entry { value: entry.value, version: entry.version }
}

impl Kv for HostKv {
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        wit_kv::get(key).map(|found| found.map(entry)).map_err(from_wit)
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
        wit_kv::get_many(keys).map(|found| found.into_iter().map(|e| e.map(entry)).collect()).map_err(from_wit)
    }

    fn scan(&self, prefix: &str, start_after: Option<&str>, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
        wit_kv::scan(prefix, start_after, limit)
            .map(|page| page.into_iter().map(|(key, found)| (key, entry(found))).collect())
            .map_err(from_wit)
    }

    fn commit(&self, checks: Vec<Check>, writes: Vec<Write>) -> Result<(), KvError> {
        let checks: Vec<_> = checks
            .into_iter()
            .map(|check| match check {
                Check::VersionIs(key, version) => wit_kv::Check::VersionIs((key, version)),
                Check::Absent(key) => wit_kv::Check::Absent(key),
            })
            .collect();
        // Moved, not copied: a 32 MiB delivery must not need twice the memory.
        let mut plain = Vec::with_capacity(writes.len());
        let mut stamped = Vec::new();
        for write in writes {
            match write {
                Write::Set(key, value) => plain.push(wit_kv::Write::Set((key, value))),
                Write::Delete(key) => plain.push(wit_kv::Write::Delete(key)),
                Write::SetStamped(prefix, value) => stamped.push((prefix, value)),
            }
        }
        // Plain commits keep to the original import, so they run on any host.
        if stamped.is_empty() {
            wit_kv::commit(&checks, &plain).map_err(from_wit)
        } else {
            wit_kv::commit_stamped(&checks, &plain, &stamped).map_err(from_wit)
        }
    }
}

struct HostConfig;

impl crate::config::Config for HostConfig {
    fn get(&self, name: &str) -> Option<String> {
        wit_config::get(name)
    }
}

/// Outgoing HTTP through `wasi:http/outgoing-handler`.
struct HostHttp;

impl crate::outgoing::Http for HostHttp {
    fn send(&self, request: &crate::outgoing::Request) -> Result<crate::outgoing::Response, crate::outgoing::Error> {
        use crate::outgoing::Error;
        use bindings::wasi::http::{outgoing_handler, types as http};
        use bindings::wasi::io::streams::StreamError;
        let code = |code: http::ErrorCode| match code {
            http::ErrorCode::HttpRequestDenied => Error::Denied,
            http::ErrorCode::ConnectionTimeout | http::ErrorCode::ConnectionReadTimeout => Error::Timeout,
            http::ErrorCode::HttpResponseBodySize(_) => Error::TooLarge,
            other => Error::Failed(format!("{other:?}")),
        };
        let bad = |what: &str| Error::Failed(format!("bad {what} in {}", request.url));
        let (scheme, rest) = request.url.split_once("://").ok_or_else(|| bad("URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        let headers = http::Fields::new();
        for (name, value) in &request.headers {
            headers.append(name, value.as_bytes()).map_err(|_| bad("header"))?;
        }
        // The body's length up front, not chunked: what servers expect of a body known whole.
        let declared = request.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
        if !declared && (!request.body.is_empty() || !matches!(request.method.as_str(), "GET" | "HEAD")) {
            headers.append("content-length", request.body.len().to_string().as_bytes()).map_err(|_| bad("header"))?;
        }
        let outgoing = http::OutgoingRequest::new(headers);
        let scheme = match scheme {
            "https" => http::Scheme::Https,
            "http" => http::Scheme::Http,
            other => http::Scheme::Other(other.into()),
        };
        let method = match request.method.as_str() {
            "GET" => http::Method::Get,
            "POST" => http::Method::Post,
            "PUT" => http::Method::Put,
            "DELETE" => http::Method::Delete,
            other => http::Method::Other(other.into()),
        };
        outgoing.set_method(&method).map_err(|()| bad("method"))?;
        outgoing.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
        outgoing.set_authority(Some(authority)).map_err(|()| bad("host"))?;
        outgoing.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;
        let body = outgoing.body().map_err(|()| bad("body"))?;
        {
            let stream = body.write().map_err(|()| bad("body"))?;
            for chunk in request.body.chunks(4096) {
                stream.blocking_write_and_flush(chunk).map_err(|err| Error::Failed(format!("{err:?}")))?;
            }
        }
        http::OutgoingBody::finish(body, None).map_err(code)?;
        let options = match request.timeout {
            None => None,
            Some(timeout) => {
                let options = http::RequestOptions::new();
                let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
                // A host that cannot honour an option still applies its own deadline.
                let _ = options.set_connect_timeout(Some(nanos));
                let _ = options.set_first_byte_timeout(Some(nanos));
                let _ = options.set_between_bytes_timeout(Some(nanos));
                Some(options)
            }
        };
        let future = outgoing_handler::handle(outgoing, options).map_err(code)?;
        future.subscribe().block();
        let response = future
            .get()
            .ok_or_else(|| Error::Failed("no answer".into()))?
            .map_err(|()| Error::Failed("the answer was taken twice".into()))?
            .map_err(code)?;
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(&value).into_owned()))
            .collect();
        let body = response.consume().map_err(|()| Error::Failed("no body".into()))?;
        let stream = body.stream().map_err(|()| Error::Failed("no body stream".into()))?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend(chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(err)) => {
                    return Err(http::http_error_code(&err).map_or_else(|| Error::Failed(err.to_debug_string()), code));
                }
            }
        }
        drop(stream);
        let _ = http::IncomingBody::finish(body);
        Ok(crate::outgoing::Response { status, headers, body: bytes })
    }
}
