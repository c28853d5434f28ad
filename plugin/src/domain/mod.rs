//! The rules of the service, over [`crate::storage`]: accounts and their
//! tokens and passwords, billing (subscriptions, installations,
//! entitlement), the inventory mirrors (stores, employees, terminals), the
//! product catalog, documents and receipts, and Evotor's event webhooks,
//! which feed all of these; the sync, which reads the same from the Evotor
//! cloud.
//!
//! May import `storage` and the base modules (`kv`, `input`, `errors`,
//! `time`, `clock`, `config`, `outgoing`, `context`); never `endpoints`,
//! nor `http`: requests and answers are the endpoints' business. Errors are
//! `errors::ApiError`, Evotor's error codes (see the crate docs), not HTTP.
//! Within the layer imports point down, never in a cycle: the grant rules
//! (`authorization::grants`, with [`transact`]) and `passwords` and
//! `tokens` and `quota` and `evotor_api` at the bottom, `billing`, the decision
//! (`authorization`), `inventory`, `accounts`, `catalog`, then `documents`
//! and `audit`, `events`, the publisher token (`publisher`) and push
//! notifications (`push`), and `purge`, and `sync` on top.
//!
//! Every transaction runs through [`transact`]: storage's transaction with
//! the grant rules as its commit hook, so a commit that changes what
//! authorizes a user rebuilds that user's grants.

pub mod accounts;
#[cfg(any(test, feature = "testing"))]
pub mod audit;
pub mod authorization;
pub mod billing;
pub mod catalog;
pub mod documents;
pub mod events;
pub mod evotor_api;
pub mod inventory;
pub mod passwords;
pub mod publisher;
pub mod purge;
pub mod push;
pub mod quota;
pub mod sync;
pub mod tokens;

pub use authorization::grants::transact;
