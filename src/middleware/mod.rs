//! Edge middleware that decides, before routing to a backend, whether a request may pass.

pub mod ratelimit;
