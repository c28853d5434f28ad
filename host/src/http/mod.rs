//! The HTTP side: the public listener and each request's admission and
//! limits (`server`), calls between plugins as the gateway serves them
//! (`calls`), the admin API (`admin`), and accepting connections with TLS
//! for both (`tls`).

pub(crate) mod admin;
mod calls;
pub(crate) mod server;
pub(crate) mod tls;
