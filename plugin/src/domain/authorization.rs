//! Authorization of user-token requests: the decision ([`authorize`]) and
//! the grants it is made from.
//!
//! Grants: what authorizing a user-token request needs, kept in the
//! token's own record (`tokens/{sha256}`), so that one read — in the same
//! store call as the other keys the request reads first — decides it.
//!
//! A [`Grant`](crate::storage::Grant) copies the *inputs* of the decision:
//! the issued token's dates, the linked account's state, the legacy tariff,
//! the installation state and the user's subscription states. The decision
//! itself depends on the time and the settings, so it is made when the
//! request arrives, by the same code that decides from the records.
//!
//! **Written in the same commit as every change of its inputs.** Every
//! transaction runs with the commit hook [`grants::Grants`] (through
//! [`crate::domain::transact`]): the transaction notes the users whose
//! inputs it writes, by key (`users/{id}`, `user/{id}/installation`,
//! `user/{id}/sub/…`) or, for `accounts/…` and `subs/{id}/state`, by the
//! user the record names before and after; then it rebuilds those users'
//! grants before it commits, from its own writes over the store. Each token
//! record is read as a check and rewritten, so two commits changing one
//! user's inputs conflict (and the later one runs again) instead of the
//! later one writing a copy without the other's change.
//!
//! **Trusted only when current.** A grant is used when its `format` is this
//! build's [`GRANT_FORMAT`](grants::GRANT_FORMAT) and it was built less than
//! [`GRANT_MAX_AGE_SECS`](grants::GRANT_MAX_AGE_SECS) ago; otherwise the request reads the records and
//! the grant is built again. The age bound covers plugin versions from
//! before grants (live again after a rollback): they change the inputs
//! without rebuilding grants, and such a copy is never used once older than
//! the bound. Token records without a grant (written before grants) are
//! migrated the same way, on their first use.
//!
//! | module | what it holds |
//! |---|---|
//! | `grants` | the grant rules, the commit hook, the domain's [`crate::domain::transact`]; below every other domain module |
//! | `decision` | [`authorize`]: the decision from a grant or from the records; over billing and tokens |

mod decision;
pub mod grants;

pub use decision::authorize;
#[cfg(test)]
pub(crate) use decision::both_decisions;
