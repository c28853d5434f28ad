//! The HTTP side: the public listener and each request's admission and
//! limits (`server`), the admin API (`admin`), and accepting connections
//! with TLS for both (`tls`).

pub(crate) mod admin;
pub(crate) mod server;
pub(crate) mod tls;
