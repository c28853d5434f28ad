//! The mirrors of a user's stores, employees and terminals:
//! `PUT /api/v1/inventories/{stores,employees,devices}`.

use crate::Ctx;
use crate::config::settings;
use crate::domain::inventory::{Kind, MAX_BATCH, mirror_items};
use crate::endpoints::auth;
use crate::errors::ApiError;
use crate::http::{Request, Response};
use serde_json::{Value, json};

/// `PUT /api/v1/inventories/stores`.
pub fn put_stores(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    mirror(ctx, request, Kind::Store)
}

/// `PUT /api/v1/inventories/employees`.
pub fn put_employees(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    mirror(ctx, request, Kind::Employee)
}

/// `PUT /api/v1/inventories/devices`.
pub fn put_devices(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    mirror(ctx, request, Kind::Device)
}

/// A mirror delivery: the `uuid` ↔ `partnerId` map answered, or 405 1005
/// naming each device past the licence.
fn mirror(ctx: &Ctx<'_>, request: &Request, kind: Kind) -> Result<Response, ApiError> {
    let settings = settings(ctx)?;
    let user_id = auth::require_user(ctx, request, &settings)?;
    let items = crate::input::array(&request.body, MAX_BATCH)?;
    let (mapped, over) = mirror_items(ctx, &settings, &user_id, kind, items)?;
    if over.is_empty() {
        return Ok(Response::json(200, &Value::Array(mapped)));
    }
    // The definitions' answer for a device past the licence: 405 code 1005, each device named.
    let errors: Vec<Value> = over
        .iter()
        .map(|id| json!({ "code": 1005, "reason": "not allowed", "subject": "deviceUuid", "value": id }))
        .collect();
    Ok(Response::json(405, &json!({ "errors": errors })))
}
