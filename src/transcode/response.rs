//! Rendering a backend's response message for the client.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use prost::Message as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value,
};

use super::json::{self, JsonOptions};
use super::negotiate::{Format, ResponseFormat};
use super::wire::WirePlan;
use super::xml;
use crate::error::{ErrorKind, GatewayError};

const HTTP_BODY: &str = "google.api.HttpBody";

/// A rendered response body with its content type.
#[derive(Debug)]
pub struct Rendered {
    /// The Content-Type header value: one of ours, or a raw body's own.
    pub content_type: Cow<'static, str>,
    /// The body.
    pub body: Bytes,
}

impl Rendered {
    /// The Content-Type as a header value; ours are used without a copy.
    pub fn content_type_header(&self) -> Option<HeaderValue> {
        match &self.content_type {
            // Only the literals of `ResponseFormat::content_type` and `raw_body` are borrowed.
            Cow::Borrowed(ours) => Some(HeaderValue::from_static(ours)),
            Cow::Owned(theirs) => HeaderValue::from_str(theirs).ok(),
        }
    }
}

/// How one route renders its response; computed once when the route table is built.
#[derive(Debug, Clone)]
pub struct ResponsePlan {
    output: MessageDescriptor,
    field: Option<FieldDescriptor>,
    /// The rendered part is google.api.HttpBody: written raw with its own content type.
    raw: bool,
    json: JsonOptions,
    /// The direct wire → JSON plan for the whole message, when the type allows it.
    wire: Option<Arc<WirePlan>>,
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
        let wire = match (&field, raw, json.pretty) {
            (None, false, false) => WirePlan::new(&output).map(Arc::new),
            _ => None,
        };
        Ok(ResponsePlan {
            output,
            field,
            raw,
            json,
            wire,
        })
    }

    /// The response message type.
    pub fn output(&self) -> &MessageDescriptor {
        &self.output
    }

    /// Whether the response is a google.api.HttpBody, written raw whatever the client accepts.
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// Decodes the backend's bytes and renders them as JSON; undecodable bytes are the backend's
    /// fault.
    pub fn render(&self, bytes: Bytes) -> Result<Rendered, GatewayError> {
        self.render_as(bytes, ResponseFormat::Json)
    }

    /// Renders the backend's bytes in `format`. Protobuf without `response_body` is the backend's
    /// bytes as they are, not decoded; every other case decodes them first (502 if they do not).
    pub fn render_as(
        &self,
        bytes: Bytes,
        format: ResponseFormat,
    ) -> Result<Rendered, GatewayError> {
        if format.format() == Format::Protobuf && self.field.is_none() && !self.raw {
            return Ok(Rendered {
                content_type: Cow::Borrowed(format.content_type()),
                body: bytes,
            });
        }
        if let (Format::Json, Some(wire)) = (format.format(), &self.wire) {
            // Field names make small messages' JSON about three times their wire size.
            let mut out = Vec::with_capacity(bytes.len() * 3 + 64);
            // Any failure, bad bytes included, is explained by the dynamic path below.
            if wire.wire_to_json(&bytes, &self.json, &mut out).is_ok() {
                return Ok(Rendered {
                    content_type: Cow::Borrowed(format.content_type()),
                    body: out.into(),
                });
            }
        }
        let msg = DynamicMessage::decode(self.output.clone(), bytes).map_err(|err| {
            GatewayError::new(
                ErrorKind::BadGateway,
                format!(
                    "bad response from backend: not a valid {}: {err}",
                    self.output.full_name()
                ),
            )
        })?;
        self.render_message_as(&msg, format)
    }

    /// Renders a decoded response message as JSON.
    pub fn render_message(&self, msg: &DynamicMessage) -> Result<Rendered, GatewayError> {
        self.render_message_as(msg, ResponseFormat::Json)
    }

    /// Renders a decoded response message in `format`.
    pub fn render_message_as(
        &self,
        msg: &DynamicMessage,
        format: ResponseFormat,
    ) -> Result<Rendered, GatewayError> {
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
        match (format.format(), &self.field) {
            (Format::Json, None) => json::encode_message(msg, &self.json, &mut out)?,
            (Format::Json, Some(field)) => json::encode_field(msg, field, &self.json, &mut out)?,
            (Format::Xml, None) => xml::encode_message(msg, &self.json, &mut out),
            (Format::Xml, Some(field)) => xml::encode_field(msg, field, &self.json, &mut out),
            (Format::Protobuf, None) => msg.encode(&mut out).map_err(|err| {
                GatewayError::new(ErrorKind::Internal, format!("encoding the response: {err}"))
            })?,
            (Format::Protobuf, Some(field)) => protobuf_field(msg, field, &mut out)?,
        }
        Ok(Rendered {
            content_type: Cow::Borrowed(format.content_type()),
            body: out.into(),
        })
    }
}

/// One field of a response in binary: a singular message field is that message; any other field
/// is its parent message holding only that field (a bare repeated field has no encoding).
fn protobuf_field(
    msg: &DynamicMessage,
    field: &FieldDescriptor,
    out: &mut Vec<u8>,
) -> Result<(), GatewayError> {
    let internal =
        |err: prost::EncodeError| GatewayError::new(ErrorKind::Internal, err.to_string());
    if !field.is_list() && !field.is_map() {
        if let Value::Message(inner) = msg.get_field(field).as_ref() {
            return inner.encode(out).map_err(internal);
        }
    }
    let mut only = DynamicMessage::new(msg.descriptor());
    // The value comes from a message of the same type, so it always fits the field.
    let _ = only.try_set_field(field, msg.get_field(field).into_owned());
    only.encode(out).map_err(internal)
}

fn raw_body(http_body: &DynamicMessage) -> Rendered {
    let content_type = http_body
        .get_field_by_name("content_type")
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|ct| !ct.is_empty())
        .map_or(Cow::Borrowed("application/octet-stream"), Cow::Owned);
    let body = http_body
        .get_field_by_name("data")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    Rendered { content_type, body }
}
