//! The proto3 JSON mapping in both directions, straight between bytes and dynamic messages.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value,
};
use serde::Serialize;

use crate::error::{ErrorKind, GatewayError};

/// How messages are written to and read from JSON; grpc-gateway v2's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonOptions {
    /// Write fields that hold their default value (grpc-gateway: yes; Envoy: no).
    pub emit_unpopulated: bool,
    /// Write proto field names instead of lowerCamelCase (both: no).
    pub use_proto_names: bool,
    /// Write enums as numbers (both: no).
    pub enums_as_numbers: bool,
    /// Refuse unknown fields in request bodies (grpc-gateway: no; Envoy: yes).
    pub reject_unknown_fields: bool,
    /// Indent the output.
    pub pretty: bool,
    /// Read a body whose Content-Type names no supported format as JSON, as grpc-gateway does,
    /// instead of refusing it with 415.
    pub other_content_types_as_json: bool,
}

impl Default for JsonOptions {
    fn default() -> Self {
        JsonOptions {
            emit_unpopulated: true,
            use_proto_names: false,
            enums_as_numbers: false,
            reject_unknown_fields: false,
            pretty: false,
            other_content_types_as_json: false,
        }
    }
}

impl JsonOptions {
    pub(super) fn serialize_options(&self) -> SerializeOptions {
        SerializeOptions::new()
            .skip_default_fields(!self.emit_unpopulated)
            .use_proto_field_name(self.use_proto_names)
            .use_enum_numbers(self.enums_as_numbers)
    }

    pub(super) fn deserialize_options(&self) -> DeserializeOptions {
        DeserializeOptions::new().deny_unknown_fields(self.reject_unknown_fields)
    }
}

/// Reads a JSON body into a message of type `desc`; an empty body is the empty message.
pub fn decode_message(
    desc: MessageDescriptor,
    body: &[u8],
    opts: &JsonOptions,
    prefix: &str,
) -> Result<DynamicMessage, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(desc));
    }
    // Path tracking costs on every value, so it runs only to explain a failure.
    let mut de = serde_json::Deserializer::from_slice(body);
    match DynamicMessage::deserialize_with_options(
        desc.clone(),
        &mut de,
        &opts.deserialize_options(),
    )
    .and_then(|msg| de.end().map(|()| msg))
    {
        Ok(msg) => Ok(msg),
        Err(_) => Err(explain(desc, body, opts, prefix)),
    }
}

/// Parses a body known to be bad again, tracking the path, to name the field at fault.
fn explain(desc: MessageDescriptor, body: &[u8], opts: &JsonOptions, prefix: &str) -> GatewayError {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
    match DynamicMessage::deserialize_with_options(desc, tracked, &opts.deserialize_options()) {
        Err(err) => body_error(serde_path_to_error::Error::new(track.path(), err), prefix),
        Ok(_) => match de.end() {
            Err(err) => GatewayError::invalid(format!("malformed JSON: {err}")),
            Ok(()) => GatewayError::invalid("invalid request body"),
        },
    }
}

/// Reads a JSON body into one non-message field (scalar, repeated or map) of `parent`.
pub(super) fn decode_field(
    parent: &MessageDescriptor,
    field: &FieldDescriptor,
    body: &[u8],
    opts: &JsonOptions,
) -> Result<Option<Value>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // prost-reflect reads values only as parts of messages, so the body is wrapped as the one
    // field of its parent; this path is for the rare non-message body fields only.
    let mut wrapped = Vec::with_capacity(body.len() + field.name().len() + 8);
    wrapped.extend_from_slice(b"{\"");
    wrapped.extend_from_slice(field.name().as_bytes());
    wrapped.extend_from_slice(b"\":");
    wrapped.extend_from_slice(body);
    wrapped.push(b'}');
    let msg = decode_message(parent.clone(), &wrapped, opts, "")?;
    Ok(Some(msg.get_field(field).into_owned()))
}

fn body_error(err: serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> GatewayError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return GatewayError::invalid(format!("malformed JSON: {inner}"));
    }
    let mut reason = inner.to_string();
    // The position is noise next to the field path.
    if let Some(at) = reason.rfind(" at line ") {
        reason.truncate(at);
    }
    let field = match (prefix.is_empty(), path.as_str()) {
        (_, ".") | (_, "") => prefix.to_owned(),
        (true, p) => p.to_owned(),
        (false, p) => format!("{prefix}.{p}"),
    };
    if field.is_empty() {
        GatewayError::invalid(format!("invalid request body: {reason}"))
    } else {
        GatewayError::invalid(format!("invalid value for field {field:?}: {reason}"))
    }
}

/// Writes a message as JSON into `out`.
pub fn encode_message(
    msg: &DynamicMessage,
    opts: &JsonOptions,
    out: &mut Vec<u8>,
) -> Result<(), GatewayError> {
    let so = opts.serialize_options();
    let result = if opts.pretty {
        let mut ser = serde_json::Serializer::pretty(&mut *out);
        msg.serialize_with_options(&mut ser, &so)
    } else {
        let mut ser = serde_json::Serializer::new(&mut *out);
        msg.serialize_with_options(&mut ser, &so)
    };
    result.map_err(|err| {
        GatewayError::new(
            ErrorKind::Internal,
            format!("cannot render the response as JSON: {err}"),
        )
    })
}

/// Writes one field of a message (a `response_body`) as JSON into `out`.
pub(super) fn encode_field(
    msg: &DynamicMessage,
    field: &FieldDescriptor,
    opts: &JsonOptions,
    out: &mut Vec<u8>,
) -> Result<(), GatewayError> {
    if let (Kind::Message(_), false) = (field.kind(), field.is_list() || field.is_map()) {
        let value = msg.get_field(field);
        if let Value::Message(inner) = value.as_ref() {
            return encode_message(inner, opts, out);
        }
    }
    // Scalars and lists are rendered as the one field of a copy and cut out of it.
    let mut only = DynamicMessage::new(msg.descriptor());
    only.set_field(field, msg.get_field(field).into_owned());
    let so = opts.serialize_options().skip_default_fields(false);
    let value = only
        .serialize_with_options(serde_json::value::Serializer, &so)
        .map_err(|err| GatewayError::new(ErrorKind::Internal, err.to_string()))?;
    let key = if opts.use_proto_names {
        field.name()
    } else {
        field.json_name()
    };
    let part = value.get(key).cloned().unwrap_or(serde_json::Value::Null);
    let written = if opts.pretty {
        serde_json::to_writer_pretty(&mut *out, &part)
    } else {
        part.serialize(&mut serde_json::Serializer::new(&mut *out))
    };
    written.map_err(|err| GatewayError::new(ErrorKind::Internal, err.to_string()))
}
