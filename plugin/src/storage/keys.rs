//! Key layouts: the functions that build keys and the prefixes that list
//! them, for the records of storage and every layout more than one module
//! uses (a domain module builds the keys of the records only it uses next
//! to them; the table in the module docs lists all). Ids are validated
//! before they get here, so they hold no `/`; logins and tokens appear only
//! as SHA-256 hex digests.

use sha2::{Digest as _, Sha256};

/// Prefix of the cloud sync's state of each user.
pub const SYNC_USERS_PREFIX: &str = "sync/users/";

/// Key of the cloud sync's state of a user.
pub fn sync_user_key(user_id: &str) -> String {
    format!("{SYNC_USERS_PREFIX}{user_id}")
}

/// Key of the position in the application's event feed.
pub const SYNC_FEED_KEY: &str = "sync/feed";

/// Key of the user the next sync run starts after.
pub const SYNC_NEXT_USER_KEY: &str = "sync/next-user";

/// Key of the owner index of an entity.
pub fn owner_key(kind: &str, uuid: &str) -> String {
    format!("owners/{kind}/{uuid}")
}

/// Key of a user's copy of an entity.
pub fn entity_key(user_id: &str, kind: &str, uuid: &str) -> String {
    format!("user/{user_id}/{kind}/{uuid}")
}

/// SHA-256 of `data` as lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(data).iter().fold(String::with_capacity(64), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// Key of a user's record.
pub fn user_key(user_id: &str) -> String {
    format!("users/{user_id}")
}

/// The mark of an erasure of `user_id` under way.
pub fn erasing_key(user_id: &str) -> String {
    format!("erasing/{user_id}")
}

/// Prefix of every user record, for listing.
pub const USERS_PREFIX: &str = "users/";

/// Key of an account.
pub fn account_key(account_id: &str) -> String {
    format!("accounts/{account_id}")
}

/// Prefix of every account, for listing.
pub const ACCOUNTS_PREFIX: &str = "accounts/";

/// Key of the login index entry for `login` (case-insensitive).
pub fn login_key(login: &str) -> String {
    format!("logins/{}", sha256_hex(login.to_lowercase().as_bytes()))
}

/// Key of the index entry of a token with this hash.
pub fn token_key(token_hash: &str) -> String {
    format!("tokens/{token_hash}")
}

/// Key of a user's Evotor cloud token.
pub fn cloud_token_key(user_id: &str) -> String {
    format!("user/{user_id}/cloud-token")
}

/// Key of a subscription's state.
pub fn subscription_key(subscription_id: &str) -> String {
    format!("subs/{subscription_id}/state")
}

/// Key of one subscription event (zero-padded so keys sort by sequence).
pub fn subscription_event_key(subscription_id: &str, sequence: u64) -> String {
    format!("subs/{subscription_id}/event/{sequence:010}")
}

/// Prefix of a subscription's events.
pub fn subscription_events_prefix(subscription_id: &str) -> String {
    format!("subs/{subscription_id}/event/")
}

/// Key of a subscription event that names another user than the
/// subscription's owner (kept, never applied).
pub fn foreign_subscription_event_key(subscription_id: &str, user_id: &str, sequence: u64) -> String {
    format!("subs/{subscription_id}/foreign/{user_id}/{sequence:010}")
}

/// Key of the marker linking a user to a subscription.
pub fn user_subscription_key(user_id: &str, subscription_id: &str) -> String {
    format!("{}{subscription_id}", user_subscriptions_prefix(user_id))
}

/// Prefix of a user's subscription markers.
pub fn user_subscriptions_prefix(user_id: &str) -> String {
    format!("user/{user_id}/sub/")
}

/// Key of a user's device registration order.
pub fn device_order_key(user_id: &str) -> String {
    format!("user/{user_id}/device-order")
}

/// Key of a user's installation state.
pub fn installation_key(user_id: &str) -> String {
    format!("user/{user_id}/installation")
}

/// Key of a user's installation event by the digest of its id: whose
/// event it is is part of its identity, so one user's delivery can never
/// make another's a duplicate.
pub fn installation_event_key(user_id: &str, id_hash: &str) -> String {
    format!("user/{user_id}/installs/{id_hash}")
}

/// Key of an installation event as earlier formats kept it, by the digest
/// of its id alone; read, never written.
pub fn legacy_installation_event_key(id_hash: &str) -> String {
    format!("installs/{id_hash}")
}

/// Key of a legacy billing event by the digest of its body.
pub fn legacy_event_key(body_hash: &str) -> String {
    format!("legacy-events/{body_hash}")
}

/// Prefix of every product and group of a store.
pub fn products_prefix(store: &str) -> String {
    format!("cat/{store}/p/")
}

/// Key of a product or group.
pub fn product_key(store: &str, uuid: &str) -> String {
    format!("cat/{store}/p/{uuid}")
}

/// Key of a store's catalog directory.
pub fn catalog_directory_key(store: &str) -> String {
    format!("cat/{store}/dir")
}

/// Prefix of the barcode index entries of `barcode` in a store.
pub fn barcode_prefix(store: &str, barcode: &str) -> String {
    format!("cat/{store}/bc/{}/", &sha256_hex(barcode.as_bytes())[..32])
}

/// Key of the barcode index entry of `barcode` for product `uuid`.
pub fn barcode_key(store: &str, barcode: &str, uuid: &str) -> String {
    format!("{}{uuid}", barcode_prefix(store, barcode))
}

/// Prefix of the child index of `parent`.
pub fn children_prefix(store: &str, parent: &str) -> String {
    format!("cat/{store}/kids/{parent}/")
}

/// Key of the child index entry of `uuid` under `parent`.
pub fn child_key(store: &str, parent: &str, uuid: &str) -> String {
    format!("cat/{store}/kids/{parent}/{uuid}")
}

/// Prefix of a store's items with a missing parent.
pub fn orphans_prefix(store: &str) -> String {
    format!("cat/{store}/orphan/")
}

/// Key of an item with a missing parent.
pub fn orphan_key(store: &str, uuid: &str) -> String {
    format!("cat/{store}/orphan/{uuid}")
}

/// Prefix of a user's entities of one kind.
pub fn entities_prefix(user_id: &str, kind: &str) -> String {
    format!("user/{user_id}/{kind}/")
}

/// Key of a document of a store.
pub fn document_key(store: &str, id: &str) -> String {
    format!("docs/{store}/doc/{id}")
}

/// Prefix of the parts of a document too large for one record (see
/// [`crate::domain::documents::PART_BYTES`]), in order.
pub fn document_parts_prefix(store: &str, id: &str) -> String {
    format!("docs/{store}/part/{id}/")
}

/// Prefix of a user's documents kept apart, by date (where retention finds them).
pub fn foreign_documents_by_date_prefix(user_id: &str) -> String {
    format!("user/{user_id}/foreign-by-date/")
}

/// Prefix of the parts of a large document kept apart.
pub fn foreign_document_parts_prefix(store: &str, user_id: &str, id: &str) -> String {
    format!("user/{user_id}/foreign-parts/{store}/{id}/")
}

/// Key of a document a user delivered into a store another user owns:
/// kept apart, so it can never make the owner's own delivery a duplicate.
pub fn foreign_document_key(store: &str, user_id: &str, id: &str) -> String {
    format!("user/{user_id}/foreign-docs/{store}/{id}")
}

/// Prefix of a store's documents by close date.
pub fn documents_by_date_prefix(store: &str) -> String {
    format!("docs/{store}/by-date/")
}

/// Prefix of a store's documents of one type by close date.
pub fn documents_by_type_prefix(store: &str, kind: &str) -> String {
    format!("docs/{store}/by-type/{kind}/")
}

/// Key of the receipt event of `user_id` whose id has the digest `hash`.
pub fn receipt_key(hash: &str, user_id: &str) -> String {
    format!("receipts/{hash}/{user_id}")
}

/// Key of a receipt event by the digest of its id alone (how receipts were
/// kept before they were per user; still read).
pub fn receipt_key_by_hash(hash: &str) -> String {
    format!("receipts/{hash}")
}

/// The digest of a receipt event id used in keys.
pub fn receipt_id_hash(id: &str) -> String {
    sha256_hex(id.as_bytes())[..32].to_owned()
}

/// Prefix of a store's receipts by date.
pub fn receipts_by_date_prefix(store: &str) -> String {
    format!("rcpts/{store}/by-date/")
}

/// Prefix of the change feed.
pub const FEED_PREFIX: &str = "feed/";

/// Prefix of the data issues.
pub const ISSUES_PREFIX: &str = "issues/";

/// Key of a data issue: the digest of its identity (user, store, entity,
/// id, problem), so the same issue again finds its record.
pub fn issue_key(user_id: Option<&str>, store: Option<&str>, entity: &str, entity_id: &str, problem: &str) -> String {
    let identity = serde_json::json!([user_id, store, entity, entity_id, problem]);
    format!("{ISSUES_PREFIX}{}", &sha256_hex(identity.to_string().as_bytes())[..32])
}

/// Key of a service record.
pub fn meta_key(name: &str) -> String {
    format!("meta/{name}")
}
