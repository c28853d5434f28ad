//! Logging once: each request runs in a fresh instance, so the memory of
//! what was logged is a service record (`meta/logged/{topic}`).

use super::codec::StorageError;
use super::keys::meta_key;
use super::read::read;
use super::txn::{NoHook, transact};

/// Logs `message` unless the same `topic` was logged earlier the same UTC
/// day: each request runs in a fresh instance, so "once" is kept in the store.
pub(crate) fn log_once_a_day(ctx: &crate::Ctx<'_>, topic: &str, message: &str) {
    log_once_in(ctx, topic, ctx.clock.now_unix() / 86_400 + 1, message);
}

/// Logs `message` the first time `topic` comes up, ever: each request is a
/// fresh instance, so the memory of it is kept in the store.
pub(crate) fn log_once(ctx: &crate::Ctx<'_>, topic: &str, message: &str) {
    log_once_in(ctx, topic, 0, message);
}

/// Logs `message` unless `topic` was already logged in `period`.
fn log_once_in(ctx: &crate::Ctx<'_>, topic: &str, period: u64, message: &str) {
    let key = meta_key(&format!("logged/{topic}"));
    let logged: Result<Option<u64>, _> = read(ctx.kv, &key);
    if matches!(logged, Ok(Some(logged)) if logged == period) {
        return;
    }
    evogate_plugin::log::warn(message);
    // Losing this write only means logging again; the request's answer does not depend on it.
    // A service record: it feeds no derived record.
    let _ = transact(ctx, &NoHook, |txn| -> Result<(), StorageError> {
        let _: Option<u64> = txn.get(&key)?;
        txn.put(&key, &period);
        Ok(())
    });
}
