//! Edge middleware: the checks a request passes before it is routed to a backend.

pub mod auth;
