//! Backends: connections (h2 directly for unary calls, tonic channels for streams), the dynamic
//! codec, metadata mapping and calls.

mod backends;
mod call;
mod codec;
mod connection;
mod metadata;

pub use backends::{BackendChannel, Backends};
pub use call::{server_stream, streaming, unary, CallParts, ServerStream, UnaryReply};
pub use codec::{DynamicCodec, Outgoing};
pub(crate) use connection::Connection;
pub use metadata::{request_metadata, response_headers};
