//! The Evotor cloud, read back: what Evotor pushes is not all there is.
//!
//! With a user's cloud token (`POST /api/v1/user/token`) the sync reads
//! the user's data from the cloud's REST API into the same records the 2017
//! calls and the event webhooks write, so a partner sees what Evotor gave
//! up delivering:
//!
//! 1. **Backfill**, when a token arrives or changes: `GET /stores`,
//!    `/devices`, `/employees` (every page) into the mirror (source
//!    `cloud`), then each store's `/products` and `/product-groups` into
//!    its catalog (source `evotor`). What an event already brought newer
//!    is kept, another user's entity is never changed.
//! 2. **Documents**: with the publisher settings, the application's event
//!    feed (`GET /api/apps/{app}/events`) for all users, every event through
//!    the intake of the event webhooks; without them, each mirrored store's
//!    `GET /stores/{id}/documents?since=&until=`. A window runs from the
//!    last position known complete, minus `sync_overlap_secs`, to now minus
//!    `sync_settle_secs`; the position moves only once the window was read
//!    whole and stored. Documents and events are taken once by their ids,
//!    so reading a window again stores nothing twice.
//!
//! 3. **Publishing**: what the partner changed in a store's catalog is
//!    written into the cloud with the store owner's token (`publish`).
//!
//! Toward the cloud: at most `sync_max_requests_per_user` requests per user
//! and run; a 429 makes that user wait for `X-RateLimit-Reset`, the others
//! go on; a 401 or 403 marks the token refused (a data issue, the feed's
//! `cloud-token.refused`) until a new token arrives; anything else (5xx,
//! time-outs, the gateway's allow-list, answers that are not listings) is
//! tried again on a later run, waiting 1, 2, 4, … minutes (at most an
//! hour). Every page's effect is stored before the position moves past it,
//! so a run stopped anywhere goes on where it stopped.
//!
//! | module | what it holds |
//! |---|---|
//! | `cloud` | the Evotor cloud's REST API: requests, pages, failures |
//! | `state` | what the sync keeps between runs (`UserSync`, `FeedSync`, `RunState`) and the commits that change it |
//! | `plan` | the next request of a user's sync, the windows of time, how a page moves the positions |
//! | `apply` | a fetched page into the mirror, the catalog or the documents |
//! | `run` | the run loop: [`run`], [`run_user`], the feed, the users in turn |
//! | `publish` | the partner's catalog changes, written into the cloud after the users |

mod apply;
mod cloud;
mod plan;
mod publish;
mod run;
mod state;

pub use run::{JOB, run, run_user};
pub(crate) use state::put_cloud_token;
pub use state::{user_state, user_view};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod cost_tests;
