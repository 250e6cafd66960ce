//! Transcoding between HTTP requests and protobuf messages: binding path, query and body into a
//! request message, and rendering response messages. Pure: no sockets, no server types.

pub mod bind;
mod json;
mod request;
mod response;
pub mod status;

pub use json::{decode_message, encode_message, JsonOptions};
pub use request::{BodyRule, PlanError, RequestPlan};
pub use response::{Rendered, ResponsePlan};
