//! Transcoding between HTTP requests and protobuf messages: binding path, query and body into a
//! request message, and rendering response messages, in JSON, XML or protobuf as negotiated.
//! Pure: no sockets, no server types.

pub mod bind;
mod json;
pub mod negotiate;
mod request;
mod response;
pub mod status;
pub mod wire;
pub mod xml;

pub use json::{decode_message, encode_message, JsonOptions};
pub use negotiate::{Format, ResponseFormat};
pub use request::{BodyRule, Bound, PlanError, RequestPlan};
pub use response::{Rendered, ResponsePlan};
pub use wire::WirePlan;
