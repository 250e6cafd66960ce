//! End-to-end tests: real tonic backends, the real gateway, real HTTP clients, all on loopback.

mod support;

mod smoke;

mod errors;
mod json;
mod metadata;

mod http_rules;
mod query;

mod negotiation;
mod xml;

mod admin;
mod cli;
mod descriptors;
mod edge;
mod metrics;
mod raw_backend;
mod server_limits;
mod shutdown;
mod streaming;
mod upstream;
mod websocket;
