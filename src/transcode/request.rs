//! Building the request message of a route from its path variables, query string and body.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, Value,
};

use super::bind::{self, BindOptions, FieldPath};
use super::json::{self, JsonOptions};
use super::negotiate::{self, Format};
use super::wire::WirePlan;
use super::xml;
use crate::error::{ErrorKind, GatewayError};

const HTTP_BODY: &str = "google.api.HttpBody";
const FIELD_MASK: &str = "google.protobuf.FieldMask";

/// What the HTTP body is bound to.
#[derive(Debug, Clone)]
pub enum BodyRule {
    /// No body; every field not in the path can come from the query.
    None,
    /// `body: "*"`: the body is the whole request message and the query is not read.
    Whole,
    /// `body: "field"`: the body is one top-level field.
    Field(FieldDescriptor),
}

/// The request message a plan built, ready to send.
#[derive(Debug, Clone)]
pub enum Bound {
    /// A message bound by the gateway.
    Message(DynamicMessage),
    /// A protobuf body that decodes as the request type, sent as the client encoded it.
    Encoded(Bytes),
}

/// How one route builds its request message; computed once when the route table is built.
#[derive(Debug, Clone)]
pub struct RequestPlan {
    input: MessageDescriptor,
    body: BodyRule,
    /// One per template variable, in template order.
    vars: Vec<FieldPath>,
    /// Fields the query must not touch: path variables and the body field.
    excluded: Vec<FieldPath>,
    /// The body target is google.api.HttpBody: take the raw bytes and their Content-Type.
    raw_body: bool,
    /// PATCH with a body field: the FieldMask field to fill from the JSON keys present.
    patch_mask: Option<FieldDescriptor>,
    json: JsonOptions,
    bind: BindOptions,
    /// The body field's name, prefixed to field paths in error messages.
    body_name: String,
    /// The direct JSON → wire plan for a JSON body bound whole, when the type allows it.
    wire: Option<Arc<WirePlan>>,
    /// The path variables can be appended to the direct encoding as a second message: no
    /// variable is in a oneof (the old path refuses a conflict) or is a message (a merge would
    /// not replace it).
    wire_vars: bool,
}

/// A route whose field references do not fit its request message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(String);

impl RequestPlan {
    /// Resolves a rule's body and variables against the request type.
    pub fn new(
        input: MessageDescriptor,
        http_method: &http::Method,
        body: &str,
        variables: &[&str],
        json: JsonOptions,
        bind: BindOptions,
    ) -> Result<RequestPlan, PlanError> {
        let vars = variables
            .iter()
            .map(|v| bind::resolve_variable(&input, v).map_err(|e| PlanError(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let body_rule = match body {
            "" => BodyRule::None,
            "*" => BodyRule::Whole,
            name => {
                let field = input.get_field_by_name(name).ok_or_else(|| {
                    PlanError(format!(
                        "body field {name:?} is not a top-level field of {}",
                        input.full_name()
                    ))
                })?;
                BodyRule::Field(field)
            }
        };
        let mut excluded = vars.clone();
        if let BodyRule::Field(field) = &body_rule {
            excluded
                .push(bind::resolve(&input, field.name()).map_err(|e| PlanError(e.to_string()))?);
        }
        let raw_body = match &body_rule {
            BodyRule::Whole => input.full_name() == HTTP_BODY,
            BodyRule::Field(f) => is_message(f, HTTP_BODY),
            BodyRule::None => false,
        };
        // grpc-gateway fills `update_mask` from the body's keys on PATCH when the client sent none.
        let patch_mask = match &body_rule {
            BodyRule::Field(f) if http_method == http::Method::PATCH && !raw_body => {
                let _ = f;
                input
                    .get_field_by_name("update_mask")
                    .filter(|m| is_message(m, FIELD_MASK))
            }
            _ => None,
        };
        let body_name = match &body_rule {
            BodyRule::Field(f) => f.name().to_owned(),
            _ => String::new(),
        };
        let wire = match &body_rule {
            BodyRule::Whole if !raw_body => WirePlan::new(&input).map(Arc::new),
            _ => None,
        };
        let wire_vars = vars.iter().all(|path| {
            path.fields().iter().all(|f| f.containing_oneof().is_none())
                && path
                    .fields()
                    .last()
                    .is_some_and(|leaf| !matches!(leaf.kind(), Kind::Message(_)) && !leaf.is_list())
        });
        Ok(RequestPlan {
            input,
            body: body_rule,
            vars,
            excluded,
            raw_body,
            patch_mask,
            json,
            bind,
            body_name,
            wire,
            wire_vars,
        })
    }

    /// The request message type.
    pub fn input(&self) -> &MessageDescriptor {
        &self.input
    }

    /// Binds body, then path variables (which win), then the query, as grpc-gateway orders them.
    /// `vars` holds one decoded value per template variable. The body's format comes from
    /// `content_type` (415 if unsupported), read only when the route has a body and the body is
    /// not empty; HttpBody routes take any type raw.
    pub fn build(
        &self,
        vars: &[String],
        query: Option<&str>,
        content_type: Option<&str>,
        body: &Bytes,
    ) -> Result<Bound, GatewayError> {
        let format = if self.raw_body || matches!(self.body, BodyRule::None) || body.is_empty() {
            Format::Json
        } else {
            match negotiate::request_format(content_type) {
                Err(err)
                    if err.kind() == &ErrorKind::UnsupportedMediaType
                        && self.json.other_content_types_as_json =>
                {
                    Format::Json
                }
                other => other?,
            }
        };
        // Nothing to bind on top: the client's encoding is sent as it came, once checked.
        if format == Format::Protobuf
            && matches!(self.body, BodyRule::Whole)
            && self.vars.is_empty()
        {
            decode_protobuf(self.input.clone(), body)?;
            return Ok(Bound::Encoded(body.clone()));
        }
        if format == Format::Json {
            if let Some(bytes) = self.direct(vars, body) {
                return Ok(Bound::Encoded(bytes));
            }
        }
        // Mask paths found while decoding an XML or protobuf body field, for PATCH.
        let mut body_paths = Vec::new();
        let mut msg = match &self.body {
            BodyRule::None => DynamicMessage::new(self.input.clone()),
            BodyRule::Whole if self.raw_body => http_body(&self.input, content_type, body),
            BodyRule::Whole => self.decode(self.input.clone(), format, body, None)?,
            BodyRule::Field(field) => {
                let mut msg = DynamicMessage::new(self.input.clone());
                let paths = self.patch_mask.is_some().then_some(&mut body_paths);
                if let Some(value) = self.body_value(field, format, content_type, body, paths)? {
                    msg.set_field(field, value);
                }
                msg
            }
        };
        for (path, value) in self.vars.iter().zip(vars) {
            bind::set_path_value(&mut msg, path, value, &self.bind).map_err(bind_error)?;
        }
        if !matches!(self.body, BodyRule::Whole) {
            if let Some(query) = query.filter(|q| !q.is_empty()) {
                bind::bind_query(&mut msg, query, &self.excluded, &self.bind)
                    .map_err(bind_error)?;
            }
        }
        if let Some(mask_field) = &self.patch_mask {
            let unset = match msg.get_field(mask_field).as_ref() {
                Value::Message(mask) => mask
                    .get_field_by_name("paths")
                    .is_none_or(|p| p.as_list().is_none_or(|l| l.is_empty())),
                _ => true,
            };
            if unset {
                if let BodyRule::Field(field) = &self.body {
                    let paths = match format {
                        Format::Json => mask_paths(field, body)?,
                        Format::Xml | Format::Protobuf => body_paths,
                    };
                    if let Some(mask) = field_mask(mask_field, paths) {
                        msg.set_field(mask_field, mask);
                    }
                }
            }
        }
        Ok(Bound::Message(msg))
    }

    /// The direct path for a JSON body bound whole: the body transcoded straight to the wire,
    /// then the path variables as a second message, which the backend merges on top (a later
    /// singular field wins). `None` whenever the dynamic path must run instead; it then gives
    /// the same answer, or the error to return.
    fn direct(&self, vars: &[String], body: &Bytes) -> Option<Bytes> {
        let wire = self.wire.as_ref()?;
        if !self.vars.is_empty() && !self.wire_vars {
            return None;
        }
        let mut out = Vec::with_capacity(body.len() / 2 + 16);
        wire.json_to_wire(body, &self.json, &mut out).ok()?;
        if !self.vars.is_empty() {
            let mut msg = DynamicMessage::new(self.input.clone());
            for (path, value) in self.vars.iter().zip(vars) {
                bind::set_path_value(&mut msg, path, value, &self.bind).ok()?;
                // A default value is not encoded, so it would not replace the body's value.
                if holds_default(&msg, path) {
                    return None;
                }
            }
            msg.encode(&mut out).ok()?;
        }
        Some(out.into())
    }

    /// Reads a body holding a message of type `desc` in `format`; with `paths`, also collects the
    /// field mask paths of what the body sets.
    fn decode(
        &self,
        desc: MessageDescriptor,
        format: Format,
        body: &Bytes,
        paths: Option<&mut Vec<String>>,
    ) -> Result<DynamicMessage, GatewayError> {
        match (format, paths) {
            (Format::Json, _) => json::decode_message(desc, body, &self.json, &self.body_name),
            (Format::Xml, None) => xml::decode_message(desc, body, &self.json),
            (Format::Xml, Some(paths)) => {
                let (msg, found) = xml::decode_message_with_paths(desc, body, &self.json)?;
                *paths = found;
                Ok(msg)
            }
            (Format::Protobuf, paths) => {
                let msg = decode_protobuf(desc, body)?;
                if let Some(paths) = paths {
                    set_paths(&msg, "", paths);
                }
                Ok(msg)
            }
        }
    }

    fn body_value(
        &self,
        field: &FieldDescriptor,
        format: Format,
        content_type: Option<&str>,
        body: &Bytes,
        paths: Option<&mut Vec<String>>,
    ) -> Result<Option<Value>, GatewayError> {
        match field.kind() {
            Kind::Message(desc) if !field.is_list() && !field.is_map() => {
                let msg = if self.raw_body {
                    http_body(&desc, content_type, body)
                } else {
                    self.decode(desc, format, body, paths)?
                };
                Ok(Some(Value::Message(msg)))
            }
            _ => match format {
                Format::Json => json::decode_field(&self.input, field, body, &self.json),
                Format::Xml => xml::decode_field(&self.input, field, body, &self.json),
                Format::Protobuf => protobuf_field(&self.input, field, body),
            },
        }
    }
}

/// Whether the leaf of `path` in `msg` holds its default value (or cannot be reached).
fn holds_default(msg: &DynamicMessage, path: &FieldPath) -> bool {
    let Some((leaf, parents)) = path.fields().split_last() else {
        return true;
    };
    let mut current = msg;
    for parent in parents {
        match current.get_field(parent) {
            std::borrow::Cow::Borrowed(Value::Message(inner)) => current = inner,
            _ => return true,
        }
    }
    current.get_field(leaf).is_default_for_field(leaf)
}

/// Decodes a binary body; bytes that are not a message of the type are the client's fault.
fn decode_protobuf(desc: MessageDescriptor, body: &Bytes) -> Result<DynamicMessage, GatewayError> {
    DynamicMessage::decode(desc.clone(), body.clone()).map_err(|err| {
        GatewayError::invalid(format!(
            "invalid protobuf body: not a valid {}: {err}",
            desc.full_name()
        ))
    })
}

/// A non-message body field in binary: the body is the parent message holding only that field.
fn protobuf_field(
    parent: &MessageDescriptor,
    field: &FieldDescriptor,
    body: &Bytes,
) -> Result<Option<Value>, GatewayError> {
    let msg = decode_protobuf(parent.clone(), body)?;
    if let Some((other, _)) = msg.fields().find(|(f, _)| f != field) {
        return Err(GatewayError::invalid(format!(
            "invalid protobuf body: it sets field {:?}, but this body holds only the field {:?}",
            other.name(),
            field.name()
        )));
    }
    Ok(msg
        .has_field(field)
        .then(|| msg.get_field(field).into_owned()))
}

/// Field mask paths (proto names) of the fields set in a decoded message, descending into nested
/// messages with fields set, as [`mask_paths`] does for JSON keys.
fn set_paths(msg: &DynamicMessage, prefix: &str, out: &mut Vec<String>) {
    for (field, value) in msg.fields() {
        let path = if prefix.is_empty() {
            field.name().to_owned()
        } else {
            format!("{prefix}.{}", field.name())
        };
        match value {
            Value::Message(inner)
                if !inner
                    .descriptor()
                    .full_name()
                    .starts_with("google.protobuf.")
                    && inner.fields().next().is_some() =>
            {
                set_paths(inner, &path, out)
            }
            _ => out.push(path),
        }
    }
}

/// A binding failure is the client's, unless the plan itself was inconsistent.
fn bind_error(err: bind::BindError) -> GatewayError {
    if err.is_client_error() {
        GatewayError::invalid(err.to_string())
    } else {
        GatewayError::new(crate::error::ErrorKind::Internal, err.to_string())
    }
}

fn is_message(field: &FieldDescriptor, name: &str) -> bool {
    matches!(field.kind(), Kind::Message(m) if m.full_name() == name)
        && !field.is_list()
        && !field.is_map()
}

fn http_body(desc: &MessageDescriptor, content_type: Option<&str>, body: &Bytes) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    if let Some(ct) = content_type {
        msg.set_field_by_name("content_type", Value::String(ct.to_owned()));
    }
    msg.set_field_by_name("data", Value::Bytes(body.clone()));
    msg
}

/// Field mask paths (proto names) for every key present in a JSON object body, descending into
/// nested messages; maps, lists, well-known types and empty objects are leaves (an empty object
/// names the field itself, as in grpc-gateway, so `{"sub": {}}` masks `sub`).
fn mask_paths(field: &FieldDescriptor, body: &Bytes) -> Result<Vec<String>, GatewayError> {
    let Kind::Message(desc) = field.kind() else {
        return Ok(Vec::new());
    };
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // The body was parsed already; an empty one just has no keys.
        Err(_) => return Ok(Vec::new()),
    };
    let mut out = Vec::new();
    collect_paths(&desc, &value, "", &mut out);
    Ok(out)
}

fn collect_paths(
    desc: &MessageDescriptor,
    value: &serde_json::Value,
    prefix: &str,
    out: &mut Vec<String>,
) {
    let Some(object) = value.as_object() else {
        return;
    };
    for (key, child) in object {
        let field = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key));
        let Some(field) = field else {
            continue;
        };
        let path = if prefix.is_empty() {
            field.name().to_owned()
        } else {
            format!("{prefix}.{}", field.name())
        };
        match field.kind() {
            Kind::Message(inner)
                if !field.is_list()
                    && !field.is_map()
                    && !inner.full_name().starts_with("google.protobuf.")
                    && child.as_object().is_some_and(|o| !o.is_empty()) =>
            {
                collect_paths(&inner, child, &path, out);
            }
            _ => out.push(path),
        }
    }
}

fn field_mask(mask_field: &FieldDescriptor, paths: Vec<String>) -> Option<Value> {
    let Kind::Message(desc) = mask_field.kind() else {
        return None;
    };
    let mut mask = DynamicMessage::new(desc);
    mask.set_field_by_name(
        "paths",
        Value::List(paths.into_iter().map(Value::String).collect()),
    );
    Some(Value::Message(mask))
}
