//! Rendering a backend's response message for the client.

use bytes::Bytes;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use super::json::{self, JsonOptions};
use crate::error::{ErrorKind, GatewayError};

const HTTP_BODY: &str = "google.api.HttpBody";

/// A rendered response body with its content type.
#[derive(Debug)]
pub struct Rendered {
    /// The Content-Type header value.
    pub content_type: String,
    /// The body.
    pub body: Bytes,
}

/// How one route renders its response; computed once when the route table is built.
#[derive(Debug, Clone)]
pub struct ResponsePlan {
    output: MessageDescriptor,
    field: Option<FieldDescriptor>,
    /// The rendered part is google.api.HttpBody: written raw with its own content type.
    raw: bool,
    json: JsonOptions,
}

impl ResponsePlan {
    /// Resolves `response_body` (empty for the whole message) against the response type.
    pub fn new(
        output: MessageDescriptor,
        response_body: &str,
        json: JsonOptions,
    ) -> Result<ResponsePlan, String> {
        let field = match response_body {
            "" => None,
            name => Some(output.get_field_by_name(name).ok_or_else(|| {
                format!(
                    "response_body {name:?} is not a top-level field of {}",
                    output.full_name()
                )
            })?),
        };
        let raw = match &field {
            None => output.full_name() == HTTP_BODY,
            Some(f) => {
                matches!(f.kind(), Kind::Message(m) if m.full_name() == HTTP_BODY) && !f.is_list()
            }
        };
        Ok(ResponsePlan {
            output,
            field,
            raw,
            json,
        })
    }

    /// The response message type.
    pub fn output(&self) -> &MessageDescriptor {
        &self.output
    }

    /// Decodes the backend's bytes and renders them; undecodable bytes are the backend's fault.
    pub fn render(&self, bytes: Bytes) -> Result<Rendered, GatewayError> {
        let msg = DynamicMessage::decode(self.output.clone(), bytes).map_err(|err| {
            GatewayError::new(
                ErrorKind::BadGateway,
                format!(
                    "bad response from backend: not a valid {}: {err}",
                    self.output.full_name()
                ),
            )
        })?;
        self.render_message(&msg)
    }

    /// Renders a decoded response message.
    pub fn render_message(&self, msg: &DynamicMessage) -> Result<Rendered, GatewayError> {
        if self.raw {
            let body = match &self.field {
                None => msg.clone(),
                Some(f) => match msg.get_field(f).as_ref() {
                    Value::Message(m) => m.clone(),
                    _ => DynamicMessage::new(self.output.clone()),
                },
            };
            return Ok(raw_body(&body));
        }
        let mut out = Vec::with_capacity(128);
        match &self.field {
            None => json::encode_message(msg, &self.json, &mut out)?,
            Some(field) => json::encode_field(msg, field, &self.json, &mut out)?,
        }
        Ok(Rendered {
            content_type: "application/json".to_owned(),
            body: out.into(),
        })
    }
}

fn raw_body(http_body: &DynamicMessage) -> Rendered {
    let content_type = http_body
        .get_field_by_name("content_type")
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|ct| !ct.is_empty())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let body = http_body
        .get_field_by_name("data")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    Rendered { content_type, body }
}
