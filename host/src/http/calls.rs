//! The gateway's side of calls between plugins ([`crate::runtime::calls`]):
//! a call is admitted and answered as a request from outside is — the
//! callee's cap, an instance of the shared pool, the deadline, the same
//! errors in the callee's error format — without the network, and without
//! waiting for a free instance (callers hold one each: waiting could have
//! them wait on each other until every deadline passes).

use crate::control::registry::{Deployment, Mount};
use crate::edge::{Request, Response};
use crate::http::server::{BUSY, Gateway, answer_of, run_plugin, unavailable};
use crate::runtime::calls::{Chain, Router};
use http_body_util::BodyExt as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

impl Router for Gateway {
    fn call(
        self: Arc<Self>,
        chain: Chain,
        callee: String,
        request: Request,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<Response, String>> + Send>> {
        Box::pin(async move { self.serve_call(&chain, &callee, request, deadline).await })
    }

    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

impl Gateway {
    /// Serves a call from the plugin at the end of `chain` to `callee`, on
    /// the version this request's calls are pinned to, and writes its
    /// access-log line (with the caller); `Err` when no plugin is `callee`.
    async fn serve_call(
        &self,
        chain: &Chain,
        callee: &str,
        request: Request,
        deadline: Instant,
    ) -> Result<Response, String> {
        let started = Instant::now();
        let routing = self.routing();
        let Some(mount) = routing.registry().by_name(callee) else {
            return Err(format!("no plugin is named {callee:?}"));
        };
        let deployment: Arc<Deployment> = chain.pin(callee, || mount.current());
        let (method, path) = (request.method.clone(), request.path.clone());
        let request_id = request
            .headers
            .iter()
            .find(|(name, _)| name == "x-request-id")
            .map(|(_, id)| id.clone())
            .unwrap_or_default();
        let answered = self.admitted_call(mount, &deployment, chain.then(callee), request, deadline).await;
        let response = match answered {
            Ok(response) => response,
            Err(refused) => {
                let (parts, body) = refused.into_parts();
                let body = body.collect().await.map(|body| body.to_bytes().to_vec()).unwrap_or_default();
                let headers = parts
                    .headers
                    .iter()
                    .map(|(name, value)| {
                        (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned())
                    })
                    .collect();
                Response { status: parts.status.as_u16(), headers, body }
            }
        };
        tracing::info!(
            target: "evogate::access",
            %method,
            path,
            status = response.status,
            latency_us = started.elapsed().as_micros() as u64,
            plugin = deployment.label(),
            caller = chain.caller(),
            request_id,
        );
        Ok(response)
    }

    /// The callee's cap, a free instance at once, then its run by the deadline.
    async fn admitted_call(
        &self,
        mount: &Mount,
        deployment: &Deployment,
        chain: Chain,
        request: Request,
        deadline: Instant,
    ) -> Result<Response, hyper::Response<http_body_util::Full<bytes::Bytes>>> {
        let (callee, format) = (mount.name.as_str(), mount.error_format);
        let plugin_permit = self.admit_to_plugin(callee, format)?;
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!(crate::telemetry::REQUESTS_REFUSED, "plugin" => callee.to_owned(), "reason" => "call")
                .increment(1);
            unavailable(format, BUSY)
        })?;
        self.instances_in_use();
        let outcome = run_plugin(deployment, request, deadline, chain).await;
        drop(permit);
        drop(plugin_permit);
        self.instances_in_use();
        answer_of(outcome, callee, deployment.label(), format)
    }
}
