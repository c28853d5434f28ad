//! Push notifications and the publisher token in the partner API:
//! `POST /partner/v1/users/{userId}/push-notifications` (send one),
//! `GET /partner/v1/push-notifications/{id}` (its delivery status) and
//! `GET /partner/v1/publisher` (the publisher token's state, never its value).

use crate::Ctx;
use crate::config::CloudSettings;
use crate::domain::{publisher, push};
use crate::endpoints::request::{require_partner, user_param};
use crate::errors::ApiError;
use crate::http::{Request, Response};
use crate::input;
use serde_json::Value;

/// Longest `Idempotency-Key`, bytes.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// `POST /partner/v1/users/{userId}/push-notifications`: `{devices?,
/// payload, activeTill?}` with an optional `Idempotency-Key` → 201 with the
/// notification (200 with the stored one for a repeated key).
pub fn send(ctx: &Ctx<'_>, request: &Request, user_id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let user_id = user_param(user_id)?;
    let idempotency_key = match request.header_value("idempotency-key") {
        None => None,
        Some(key)
            if !key.is_empty()
                && key.len() <= MAX_IDEMPOTENCY_KEY
                && key.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
        {
            Some(key.to_owned())
        }
        Some(_) => {
            return Err(ApiError::incorrect("Idempotency-Key", "1 to 255 printable ASCII characters"));
        }
    };
    let body = input::object(&request.body)?;
    if let Some(field) = body.keys().find(|key| !["devices", "payload", "activeTill"].contains(&key.as_str())) {
        return Err(ApiError::incorrect(field, "unknown field"));
    }
    let payload = match body.get("payload") {
        None => return Err(ApiError::missing("payload")),
        Some(Value::Object(payload)) => payload.clone(),
        Some(_) => return Err(ApiError::wrong_type("payload", "a JSON object")),
    };
    let devices = match body.get("devices") {
        None | Some(Value::Null) => None,
        Some(Value::Array(devices)) => {
            let mut ids: Vec<String> = Vec::with_capacity(devices.len());
            for device in devices {
                let Some(id) = device.as_str().and_then(input::id_str) else {
                    return Err(ApiError::incorrect("devices", device.clone()));
                };
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Some(ids)
        }
        Some(_) => return Err(ApiError::wrong_type("devices", "an array of device uuids")),
    };
    let active_till = match body.get("activeTill") {
        None | Some(Value::Null) => None,
        Some(value) => match crate::time::timestamp(value) {
            Some(at) if at > crate::time::millis(ctx.clock.now_unix()) => Some(at),
            Some(_) => return Err(ApiError::unprocessable("activeTill", value.clone(), "activeTill is in the past")),
            None => return Err(ApiError::incorrect("activeTill", value.clone())),
        },
    };
    let draft = push::Draft { devices, payload, active_till, idempotency_key };
    Ok(match push::send(ctx, user_id, &draft)? {
        push::Sent::Created(notification) => Response::json(201, &notification.view()),
        push::Sent::Repeated(notification) => Response::json(200, &notification.view()),
    })
}

/// `GET /partner/v1/push-notifications/{id}`: the notification, its status
/// asked from the cloud first while it is not final (`stale: true` when the
/// cloud could not be asked).
pub fn get(ctx: &Ctx<'_>, request: &Request, id: &str) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let id = input::percent_decode(id).as_deref().and_then(input::id_str).ok_or_else(ApiError::not_found)?;
    let (notification, stale) = push::get(ctx, &id)?.ok_or_else(ApiError::not_found)?;
    let mut view = notification.view();
    if stale {
        view["stale"] = true.into();
    }
    Ok(Response::json(200, &view))
}

/// `GET /partner/v1/publisher`: the publisher token's mode and state
/// (`usable`, `refused`, `missing`), when it expires and was renewed, why it
/// was refused; never the token.
pub fn publisher(ctx: &Ctx<'_>, request: &Request) -> Result<Response, ApiError> {
    require_partner(ctx, request)?;
    let cloud = CloudSettings::read(ctx.config).map_err(|why| ApiError::internal(&why))?;
    Ok(Response::json(200, &publisher::view(ctx, &cloud)?))
}
