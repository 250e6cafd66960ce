//! Edge middleware: the policies a request meets before it is routed to a backend.
//!
//! Each module here is a pure building block over `http` types, built once from config and shared
//! by every request; the request path wires them in order.

pub mod client_ip;
pub mod cors;
pub mod header_rules;
pub mod normalize;
pub mod request_id;
