//! The HTTP face of the plugin: the Evotor protocol's endpoints, the
//! partner API and the extension API (other plugins of the gateway only), each handler given its path's parameters by name; here the
//! routing, in `request` what the partner API's handlers share. Unknown path → 404; known path, other method → 405 with
//! `Allow`; both in the Evotor error format.
//!
//! May import `domain`, `storage` and the base modules; nothing imports it
//! but the crate root (`handle`).

mod accounts;
pub(crate) mod auth;
mod billing;
mod catalog;
pub(crate) mod documents;
pub(crate) mod events;
mod extension;
mod inventory;
mod partner;
mod push;
pub(crate) mod request;
mod sync;

use crate::Ctx;
use crate::domain::transact;
use crate::errors::ApiError;
use crate::http::{Request, Response};

/// Values of the `{name}` segments of a matched route.
#[derive(Debug, Default)]
struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The value of segment `{name}` (every name of the matched pattern has one).
    fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(key, _)| *key == name).map_or("", |(_, value)| value.as_str())
    }
}

/// How a route calls its handler: with the values of its path's `{name}`
/// segments as the handler's own arguments.
type Handler = fn(&Ctx<'_>, &Request, &Params) -> Result<Response, ApiError>;

/// One path pattern and the methods it serves.
struct Route {
    pattern: &'static str,
    /// The pattern's bytes before its first `{name}` segment: a path that
    /// does not start with them cannot match (one comparison rules most
    /// routes out; splitting every pattern was most of a 404's time).
    literal: usize,
    methods: &'static [(&'static str, Handler)],
}

/// Every endpoint of the protocol this plugin serves.
const ROUTES: &[Route] = &[
    // Evotor → partner, server-authorized.
    route("/api/v1/user/create", &[("POST", |ctx, request, _| accounts::create(ctx, request))]),
    route("/api/v1/user/verify", &[("POST", |ctx, request, _| accounts::verify(ctx, request))]),
    route("/api/v1/user/token", &[("POST", |ctx, request, _| accounts::store_cloud_token(ctx, request))]),
    route("/api/v1/user/tariff", &[("POST", |ctx, request, _| accounts::tariff(ctx, request))]),
    // Evotor → partner, server or user token.
    route("/api/v1/subscription/event", &[("POST", |ctx, request, _| billing::subscription_event(ctx, request))]),
    route("/api/v2/installation/event", &[("POST", |ctx, request, _| billing::installation_event(ctx, request))]),
    route("/api/v1/user/event", &[("POST", |ctx, request, _| billing::legacy_event(ctx, request))]),
    // Evotor → partner, user token.
    route("/api/v1/inventories/stores", &[("PUT", |ctx, request, _| inventory::put_stores(ctx, request))]),
    route("/api/v1/inventories/employees", &[("PUT", |ctx, request, _| inventory::put_employees(ctx, request))]),
    route("/api/v1/inventories/devices", &[("PUT", |ctx, request, _| inventory::put_devices(ctx, request))]),
    route(
        "/api/v1/inventories/stores/{storeUuid}/products",
        &[
            ("GET", |ctx, request, path| catalog::get_products(ctx, request, path.get("storeUuid"))),
            ("POST", |ctx, request, path| catalog::post_products(ctx, request, path.get("storeUuid"))),
        ],
    ),
    route("/api/v1/commodities", &[("GET", |ctx, request, _| catalog::commodity(ctx, request))]),
    route(
        "/api/v1/inventories/stores/{storeUuid}/documents",
        &[("PUT", |ctx, request, path| documents::put_documents(ctx, request, path.get("storeUuid")))],
    ),
    route("/api/v1/receipt", &[("POST", |ctx, request, _| documents::post_receipts(ctx, request))]),
    route("/api/v1/receipts", &[("POST", |ctx, request, _| documents::post_receipts(ctx, request))]),
    route("/api/v2/receipts", &[("POST", |ctx, request, _| documents::post_receipts(ctx, request))]),
    // The partner's own API.
    route(
        "/partner/v1/accounts",
        &[
            ("GET", |ctx, request, _| partner::list_accounts(ctx, request)),
            ("POST", |ctx, request, _| partner::create_account(ctx, request)),
        ],
    ),
    route(
        "/partner/v1/accounts/{accountId}",
        &[
            ("GET", |ctx, request, path| partner::get_account(ctx, request, path.get("accountId"))),
            ("PATCH", |ctx, request, path| partner::update_account(ctx, request, path.get("accountId"))),
            ("DELETE", |ctx, request, path| partner::delete_account(ctx, request, path.get("accountId"))),
        ],
    ),
    route("/partner/v1/users", &[("GET", |ctx, request, _| partner::list_users(ctx, request))]),
    route(
        "/partner/v1/users/{userId}",
        &[("GET", |ctx, request, path| partner::get_user(ctx, request, path.get("userId")))],
    ),
    route(
        "/partner/v1/users/{userId}/cloud-token",
        &[("GET", |ctx, request, path| partner::user_cloud_token(ctx, request, path.get("userId")))],
    ),
    route(
        "/partner/v1/users/{userId}/subscriptions",
        &[("GET", |ctx, request, path| partner::user_subscriptions(ctx, request, path.get("userId")))],
    ),
    route(
        "/partner/v1/users/{userId}/subscriptions/{subscriptionId}/resolve-gap",
        &[("POST", |ctx, request, path| {
            billing::resolve_gap(ctx, request, path.get("userId"), path.get("subscriptionId"))
        })],
    ),
    route(
        "/partner/v1/users/{userId}/data",
        &[("DELETE", |ctx, request, path| partner::purge_user(ctx, request, path.get("userId")))],
    ),
    route(
        "/partner/v1/users/{userId}/entitlement",
        &[("GET", |ctx, request, path| partner::user_entitlement(ctx, request, path.get("userId")))],
    ),
    route(
        "/partner/v1/users/{userId}/sync",
        &[
            ("GET", |ctx, request, path| sync::status(ctx, request, path.get("userId"))),
            ("POST", |ctx, request, path| sync::run_now(ctx, request, path.get("userId"))),
        ],
    ),
    route(
        "/partner/v1/users/{userId}/stores",
        &[("GET", |ctx, request, path| partner::user_entities(ctx, request, path.get("userId")))],
    ),
    route(
        "/partner/v1/users/{userId}/employees",
        &[("GET", |ctx, request, path| partner::user_entities(ctx, request, path.get("userId")))],
    ),
    route(
        "/partner/v1/users/{userId}/devices",
        &[("GET", |ctx, request, path| partner::user_entities(ctx, request, path.get("userId")))],
    ),
    route(
        "/partner/v1/stores/{storeUuid}/documents",
        &[("GET", |ctx, request, path| documents::partner_list_documents(ctx, request, path.get("storeUuid")))],
    ),
    route(
        "/partner/v1/stores/{storeUuid}/documents/{id}",
        &[("GET", |ctx, request, path| {
            documents::partner_get_document(ctx, request, path.get("storeUuid"), path.get("id"))
        })],
    ),
    route(
        "/partner/v1/stores/{storeUuid}/receipts",
        &[("GET", |ctx, request, path| documents::partner_list_receipts(ctx, request, path.get("storeUuid")))],
    ),
    route(
        "/partner/v1/receipts/{id}",
        &[("GET", |ctx, request, path| documents::partner_get_receipt(ctx, request, path.get("id")))],
    ),
    route(
        "/partner/v1/users/{userId}/push-notifications",
        &[("POST", |ctx, request, path| push::send(ctx, request, path.get("userId")))],
    ),
    route(
        "/partner/v1/push-notifications/{id}",
        &[("GET", |ctx, request, path| push::get(ctx, request, path.get("id")))],
    ),
    route("/partner/v1/publisher", &[("GET", |ctx, request, _| push::publisher(ctx, request))]),
    route("/partner/v1/feed", &[("GET", |ctx, request, _| partner::feed(ctx, request))]),
    route("/partner/v1/events", &[("GET", |ctx, request, _| events::list(ctx, request))]),
    route("/partner/v1/data-issues", &[("GET", |ctx, request, _| partner::data_issues(ctx, request))]),
    route(
        "/partner/v1/stores/{storeUuid}/products",
        &[
            ("GET", |ctx, request, path| catalog::partner_list_products(ctx, request, path.get("storeUuid"))),
            ("PUT", |ctx, request, path| catalog::partner_put_products(ctx, request, path.get("storeUuid"))),
        ],
    ),
    route(
        "/partner/v1/stores/{storeUuid}/products/delete",
        &[("POST", |ctx, request, path| catalog::partner_delete_products(ctx, request, path.get("storeUuid")))],
    ),
    route(
        "/partner/v1/stores/{storeUuid}/publication",
        &[("GET", |ctx, request, path| catalog::partner_publication(ctx, request, path.get("storeUuid")))],
    ),
    // The extension API: other plugins of the gateway only (`extension`).
    route("/extension/v1/session", &[("GET", |ctx, request, _| extension::session(ctx, request))]),
    route("/extension/v1/partner", &[("GET", |ctx, request, _| extension::partner(ctx, request))]),
    route("/extension/v1/feed", &[("GET", |ctx, request, _| partner::feed(ctx, request))]),
    route(
        "/extension/v1/users/{userId}",
        &[("GET", |ctx, request, path| partner::get_user(ctx, request, path.get("userId")))],
    ),
    route(
        "/extension/v1/users/{userId}/entitlement",
        &[("GET", |ctx, request, path| partner::user_entitlement(ctx, request, path.get("userId")))],
    ),
    route(
        "/extension/v1/users/{userId}/stores",
        &[("GET", |ctx, request, path| partner::user_entities(ctx, request, path.get("userId")))],
    ),
    route(
        "/extension/v1/users/{userId}/employees",
        &[("GET", |ctx, request, path| partner::user_entities(ctx, request, path.get("userId")))],
    ),
    route(
        "/extension/v1/users/{userId}/devices",
        &[("GET", |ctx, request, path| partner::user_entities(ctx, request, path.get("userId")))],
    ),
    route(
        "/extension/v1/users/{userId}/stores/{storeUuid}/products",
        &[("GET", |ctx, request, path| extension::products(ctx, request, path.get("userId"), path.get("storeUuid")))],
    ),
    route(
        "/extension/v1/users/{userId}/stores/{storeUuid}/documents",
        &[("GET", |ctx, request, path| {
            let store = extension::own_store(ctx, path.get("userId"), path.get("storeUuid"))?;
            documents::partner_list_documents(ctx, request, &store)
        })],
    ),
    route(
        "/extension/v1/users/{userId}/stores/{storeUuid}/documents/{id}",
        &[("GET", |ctx, request, path| {
            let store = extension::own_store(ctx, path.get("userId"), path.get("storeUuid"))?;
            documents::partner_get_document(ctx, request, &store, path.get("id"))
        })],
    ),
    route(
        "/extension/v1/users/{userId}/stores/{storeUuid}/receipts",
        &[("GET", |ctx, request, path| {
            let store = extension::own_store(ctx, path.get("userId"), path.get("storeUuid"))?;
            documents::partner_list_receipts(ctx, request, &store)
        })],
    ),
    route(
        "/partner/v1/stores/{storeUuid}/catalog-issues",
        &[("GET", |ctx, request, path| catalog::partner_catalog_issues(ctx, request, path.get("storeUuid")))],
    ),
];

/// Every (pattern, method) served, for the checks of the API description.
#[cfg(test)]
pub(crate) fn endpoints() -> impl Iterator<Item = (&'static str, &'static str)> {
    ROUTES.iter().flat_map(|route| route.methods.iter().map(|(method, _)| (route.pattern, *method)))
}

const fn route(pattern: &'static str, methods: &'static [(&'static str, Handler)]) -> Route {
    let bytes = pattern.as_bytes();
    let mut literal = 0;
    while literal < bytes.len() && bytes[literal] != b'{' {
        literal += 1;
    }
    Route { pattern, literal, methods }
}

/// Header in which the gateway names the route prefix the plugin is
/// mounted at (`/evotor` for `route = "/evotor"`); absent or `/` at the root.
pub(crate) const BASE_PATH_HEADER: &str = "x-evogate-base-path";

/// The request's path below the plugin's mount point: the protocol's paths
/// are the same whatever route the operator mounts the plugin at.
pub(crate) fn local_path(request: &Request) -> &str {
    let base = request.header_value(BASE_PATH_HEADER).map(|base| base.trim_end_matches('/')).unwrap_or_default();
    match request.path.strip_prefix(base) {
        Some("") => "/",
        Some(rest) if base.is_empty() || rest.starts_with('/') => rest,
        _ => &request.path,
    }
}

/// Routes `request` and renders any error.
pub(crate) fn dispatch(ctx: &Ctx<'_>, request: &Request) -> Response {
    let path = local_path(request);
    let result = match find(path) {
        // Never reachable from outside the gateway, whatever the credentials.
        Some(_) if path.starts_with(extension::PREFIX) && !extension::is_extension_call(request, path) => {
            Err(ApiError::not_found())
        }
        _ if request.method == "POST" && events::is_events_webhook(ctx, path) => events::receive(ctx, request),
        None if request.method == "PUT" && is_documents_webhook(ctx, path) => {
            documents::put_documents_bare(ctx, request)
        }
        None => Err(ApiError::not_found()),
        Some((route, params)) => match route.methods.iter().find(|(method, _)| *method == request.method) {
            Some((_, handler)) => handler(ctx, request, &params).inspect_err(|err| {
                if err.status == 413 {
                    note_too_large(ctx, "request", route.pattern, &err.reason);
                }
            }),
            None => {
                let allow: Vec<&str> = route.methods.iter().map(|(method, _)| *method).collect();
                Err(ApiError::method_not_allowed(&allow))
            }
        },
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// Logs a delivery refused with 413 by the plugin's own limits and notes
/// it as a data issue of `entity` `id` (a route, a webhook delivery):
/// Evotor counts the answer as delivered and does not send it again.
pub(crate) fn note_too_large(ctx: &Ctx<'_>, entity: &'static str, id: &str, why: &str) {
    evogate_plugin::log::warn(&format!("{entity} {}: a delivery was refused: {why} (413)", id.escape_debug()));
    let now = ctx.clock.now_unix();
    let problem = format!("a delivery was refused with 413 ({why}); it is not sent again");
    let noted = transact(ctx, |txn| -> Result<(), ApiError> {
        txn.issue(now, crate::storage::Issue::new(None, entity, id, problem.as_str()));
        Ok(())
    });
    if let Err(err) = noted {
        evogate_plugin::log::warn(&format!(
            "{entity} {}: the refusal was not noted ({})",
            id.escape_debug(),
            err.reason
        ));
    }
}

/// Whether `path` is the configured bare documents webhook (`documents_webhook_path`, default `/`).
fn is_documents_webhook(ctx: &Ctx<'_>, path: &str) -> bool {
    let configured = ctx.config.get(crate::domain::documents::DOCUMENTS_WEBHOOK_PATH);
    let webhook = configured.as_deref().unwrap_or(crate::domain::documents::DEFAULT_DOCUMENTS_WEBHOOK_PATH);
    !webhook.is_empty() && (path == webhook || path.strip_suffix('/') == Some(webhook))
}

fn find(path: &str) -> Option<(&'static Route, Params)> {
    // One trailing slash is tolerated: `/api/v1/user/token/` is the same endpoint.
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    ROUTES
        .iter()
        .filter(|route| path.as_bytes().starts_with(&route.pattern.as_bytes()[..route.literal]))
        .find_map(|route| matches(route.pattern, path).map(|params| (route, params)))
}

fn matches(pattern: &'static str, path: &str) -> Option<Params> {
    let mut params = Params::default();
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(params),
            (Some(want), Some(got)) => {
                if let Some(name) = want.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                    if got.is_empty() {
                        return None;
                    }
                    params.0.push((name, got.to_owned()));
                } else if want != got {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::FixedClock, config::MapConfig, kv::MemKv};

    fn call(request: Request) -> Response {
        let (kv, config, clock) = (MemKv::default(), MapConfig::default(), FixedClock(0));
        dispatch(
            &Ctx { kv: &kv, config: &config, clock: &clock, http: &crate::outgoing::Scripted::default() },
            &request,
        )
    }

    #[test]
    fn unknown_path_is_404_in_evotor_format() {
        let response = call(Request::new("POST", "/api/v1/nothing"));
        assert_eq!(response.status, 404);
        assert_eq!(response.body_json()["errors"][0]["code"], 404);
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let response = call(Request::new("GET", "/api/v1/user/token"));
        assert_eq!(response.status, 405);
        assert!(response.headers.iter().any(|(k, v)| k == "allow" && v == "POST"));
        assert_eq!(response.body_json()["errors"][0]["code"], 405);
    }

    #[test]
    fn patterns_capture_segments_and_need_the_same_length() {
        let params = matches("/stores/{store}/products", "/stores/abc/products").expect("match");
        assert_eq!(params.get("store"), "abc");
        assert!(matches("/stores/{store}/products", "/stores//products").is_none());
        assert!(matches("/stores/{store}", "/stores/a/b").is_none());
        assert!(matches("/stores/{store}/x", "/stores/a").is_none());
    }

    #[test]
    fn paths_are_read_below_the_mount_point() {
        let mounted = |path: &str, base: &str| {
            let request = Request::new("GET", path).header(BASE_PATH_HEADER, base);
            local_path(&request).to_owned()
        };
        assert_eq!(mounted("/evotor/api/v1/user/token", "/evotor"), "/api/v1/user/token");
        assert_eq!(mounted("/evotor", "/evotor"), "/");
        assert_eq!(mounted("/evotor/", "/evotor/"), "/");
        assert_eq!(mounted("/api/v1/user/token", "/"), "/api/v1/user/token");
        assert_eq!(mounted("/evotorx/api", "/evotor"), "/evotorx/api", "whole segments only");
        assert_eq!(local_path(&Request::new("GET", "/api/v1/x")), "/api/v1/x");
        let response = call(Request::new("POST", "/evotor/api/v1/user/token").header(BASE_PATH_HEADER, "/evotor"));
        assert_eq!(response.status, 401, "found, and refused for want of a credential");
    }

    #[test]
    fn one_trailing_slash_is_the_same_endpoint() {
        assert!(find("/api/v1/user/token/").is_some());
        assert!(find("/api/v1/user/token//").is_none());
    }
}
