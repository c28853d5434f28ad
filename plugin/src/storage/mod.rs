//! The storage layer: key layouts, records, transactions over the store.
//! It imports only the base modules (`kv`, `errors`, `context`); the
//! domain builds on it, the endpoints read through it.
//!
//! | module | what it holds |
//! |---|---|
//! | `keys` | every key of the table below that storage or more than one module uses: the functions that build them and the prefixes that list them |
//! | `records` | the records of accounts, users, tokens, owners, entities and the data issues |
//! | `feed` | the change feed as stored: [`feed::FeedRecord`], a commit's [`feed::FeedEntry`]s in one record, and their cursors ([`feed_entries`]) |
//! | `codec` | [`FORMAT`], encoding and decoding, [`StorageError`] and its mapping to the error answer |
//! | `read` | reads outside a transaction: [`read`], [`page`], [`scan_all`], [`collect`] |
//! | `txn` | [`Txn`] and [`transact`]: read-modify-write with retry on conflict, the feed, the [`CommitHook`] that rebuilds derived records in the commit |
//! | `issues` | data issues ([`Issue`]), noted in a transaction and counted in its commit |
//! | `log` | [`log_once`] and [`log_once_a_day`], remembered in `meta/logged/…` |
//!
//! Everything is re-exported here: callers write `storage::X`.
//!
//! Keys (ids are validated before they reach this module, so they hold no
//! `/`; logins and tokens appear only as SHA-256 hex digests):
//!
//! | key | value |
//! |---|---|
//! | `users/{userId}` | [`UserRecord`]: linked account, issued tokens, tariff |
//! | `erasing/{userId}` | the mark of an erasure under way (its start, Unix seconds): writes for the user are refused until it is done |
//! | `user/{userId}/cloud-token` | [`CloudToken`] |
//! | `accounts/{accountId}` | [`Account`] |
//! | `logins/{sha256(lowercase login)}` | [`LoginIndex`] → account id |
//! | `tokens/{sha256(token)}` | [`TokenIndex`] → userId, with the token's [`Grant`] (see [`crate::domain::authorization`]) |
//! | `owners/{kind}/{uuid}` | [`OwnerIndex`]: which user an Evotor store, employee or device belongs to |
//! | `user/{userId}/{kind}/{uuid}` | [`EntityRecord`]: the entity as Evotor last sent it |
//! | `subs/{subscriptionId}/state` | [`crate::domain::billing::Subscription`] |
//! | `subs/{subscriptionId}/event/{seq:010}` | a subscription event as received |
//! | `subs/{subscriptionId}/foreign/{userId}/{seq:010}` | a subscription event naming another user than the subscription's owner: kept, never applied |
//! | `user/{userId}/sub/{subscriptionId}` | marker: the user's subscriptions |
//! | `user/{userId}/device-order` | [`DeviceOrder`]: the user's devices in first-registration order |
//! | `user/{userId}/installation` | [`crate::domain::billing::Installation`] |
//! | `user/{userId}/installs/{sha256(id)}` | an installation event as received (earlier formats: `installs/{sha256(id)}`, read, never written) |
//! | `installs/{sha256(id)}` | an installation event as earlier formats kept it: read, never written |
//! | `legacy-events/{sha256(body)}` | a legacy `/user/event` as received |
//! | `cat/{store}/p/{uuid}` | [`crate::domain::catalog::ProductRecord`]: a product or group of a store |
//! | `cat/{store}/dir` | [`crate::domain::catalog::Directory`]: product counts per key range, for offset paging |
//! | `cat/{store}/bc/{sha256(barcode)[..32]}/{uuid}` | barcode index entry |
//! | `cat/{store}/kids/{parentUuid}/{uuid}` | child index: items under a group |
//! | `cat/{store}/orphan/{uuid}` | [`crate::domain::catalog::Orphan`]: an item whose `parentUuid` names nothing in the store |
//! | `cat/{store}/pub/pending/{uuid}` | [`crate::domain::catalog::publication::Pending`]: a partner version of an item not yet published to the Evotor cloud |
//! | `cat/{store}/pub/task/{taskId}` | [`crate::domain::catalog::publication::TaskItems`]: what a bulk task under way carries |
//! | `cat/{store}/pub/state` | [`crate::domain::catalog::publication::StoreState`]: the store's publication: tasks, failures, waits |
//! | `cat/{store}/pub/conflict/{uuid}` | [`crate::domain::catalog::publication::Conflict`]: the version that lost a conflict between Evotor and the partner |
//! | `pub/due/{store}` | marker: the store has publication work |
//! | `docs/{store}/doc/{id}` | [`crate::domain::documents::DocumentRecord`]: a terminal document as received |
//! | `docs/{store}/part/{id}/{n:04}` | [`crate::domain::documents::Part`]: part `n` of a document too large for one record |
//! | `docs/{store}/by-date/{closeDate ms:013}.{id}` | [`crate::domain::documents::DateEntry`]: document index by close date, naming the type |
//! | `docs/{store}/by-type/{type}/{closeDate ms:013}.{id}` | document index by type and close date, of documents indexed before the entries by date named the type; no longer written, erased with its document |
//! | `user/{userId}/foreign-docs/{store}/{id}` | [`crate::domain::documents::DocumentRecord`]: a document delivered into a store another user owns, kept apart |
//! | `user/{userId}/foreign-by-date/{closeDate ms:013}/{store}/{id}` | index of the user's documents kept apart by close date, where `retention_days` finds them |
//! | `user/{userId}/foreign-parts/{store}/{id}/{n:04}` | [`crate::domain::documents::Part`]: part `n` of a large document kept apart |
//! | `user/{userId}/usage` | [`crate::domain::quota::Usage`]: how many records the user's own deliveries stored, under `user_quota_records` |
//! | `receipts/{sha256(event id)[..32]}/{userId}` | [`crate::domain::documents::ReceiptRecord`]: a receipt event as received (older ones without `/{userId}`) |
//! | `rcpts/{store}/by-date/{dateTime ms:013}.{sha256(event id)[..32]}.{userId}` | receipt index by date (older ones without `.{userId}`) |
//! | `events/seen/{sha256(type, id)[..32]}` | [`crate::domain::events::Seen`]: an event's idempotency marker |
//! | `events/log/{stamp}` | [`crate::domain::events::EventRecord`]: every event taken, in commit order |
//! | `events/order/product/{store}/{uuid}` | [`crate::domain::events::ProductOrder`]: the newest state of a catalog item that events brought |
//! | `feed/{stamp}` | [`feed::FeedRecord`]: the changes one commit accepted, each a [`feed::FeedEntry`] whose cursor is the commit's stamp with the entry's index (earlier formats: one [`feed::FeedEntry`] a record); the host's commit stamp orders them |
//! | `issues/{sha256(user, store, entity, id, problem)[..32]}` | [`IssueRecord`]: doubtful input that was accepted |
//! | `sync/users/{userId}` | [`crate::domain::sync::state::UserSync`]: what the cloud sync read for a user, and where it goes on |
//! | `sync/feed` | [`crate::domain::sync::state::FeedSync`]: the position in the application's event feed |
//! | `sync/next-user` | [`crate::domain::sync::state::RunState`]: where the next run of the sync job starts among the users |
//! | `publisher/token` | [`crate::domain::publisher::PublisherState`]: the publisher token's renewal and refusal (OAuth tokens in it) |
//! | `user/{userId}/push/{id}` | [`crate::domain::push::Notification`]: a push notification sent to the user's terminals |
//! | `user/{userId}/push-keys/{sha256(key)}` | an `Idempotency-Key` of a push notification: the request's digest and the notification it made |
//! | `push/id/{id}` | which user a push notification belongs to |
//! | `push/open/{id}` | a push notification whose status is not final, which the sync job polls |
//! | `meta/{name}` | small service records: `meta/logged/{topic}` (see [`log_once`]), `meta/purge/{userId}` ([`crate::domain::purge::Cursor`]), `meta/push-poll` (where the poll of open push notifications goes on) |
//!
//! Storage holds the records of accounts, users, tokens, owners and the
//! feed; each domain module holds the records only it reads and writes,
//! and the table above links them all. Such a module may build the keys of
//! its own records next to them (`events/…`, `user/{userId}/usage`).
//!
//! Every value is JSON with `"v"`: the storage format version (see the
//! crate docs for the migration rule). Read-modify-write goes through
//! [`transact`], which turns every read into a commit check and retries on
//! conflict, so concurrent requests never lose each other's writes.
//!
//! Some records are derived from others and must change in the same commit
//! as their inputs (a token's [`Grant`]). Which writes make whose derived
//! records due, and how they are rebuilt, is the domain's rule, not
//! storage's: [`transact`] takes it as a [`CommitHook`] and calls it
//! before it commits.

mod codec;
mod feed;
mod issues;
mod keys;
mod log;
mod read;
mod records;
mod txn;

pub use codec::{FORMAT, StorageError, decode};
pub use feed::{feed_entries, feed_scan_start};
pub use issues::{Issue, MAX_ISSUES_PER_COMMIT};
pub use keys::*;
pub(crate) use log::{log_once, log_once_a_day};
pub(crate) use read::{GrowingScan, collect};
pub use read::{cloud_token, page, read, scan_all};
pub use records::*;
pub use txn::{CommitHook, Due, Txn, transact};

// Only tests elsewhere use it directly: they write raw records.
#[cfg(test)]
pub(crate) use codec::encode;
#[cfg(test)]
pub(crate) use feed::FeedEntry;

#[cfg(test)]
mod tests;
