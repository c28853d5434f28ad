//! The HTTP side: the public listener and each request's admission and
//! limits (`server`), the bodies held in memory at once (`body_budget`), calls between plugins as the gateway serves them
//! (`calls`), the admin API (`admin`), and accepting connections with TLS
//! for both (`tls`).

pub(crate) mod admin;
mod body_budget;
mod calls;
pub(crate) mod server;
pub(crate) mod tls;
