//! The XML mapping of protobuf messages (docs/xml.md) in both directions, straight between bytes
//! and dynamic messages: quick-xml events are read into the message as they come (no document
//! tree), and XML is written directly into the output buffer.
//!
//! Reading refuses DTDs outright and resolves only the five XML entities and numeric character
//! references, so there is no external entity and no entity expansion to abuse; depth and element
//! count are bounded by [`MAX_DEPTH`] and [`MAX_ELEMENTS`], size by `max_body_bytes`.

use std::borrow::Cow;
use std::io::Write as _;

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage as _, Value,
};
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::Reader;

use super::bind;
use super::json::JsonOptions;
use crate::error::GatewayError;

/// Deepest element nesting accepted in a request body (the root is depth 1).
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one request body.
pub const MAX_ELEMENTS: usize = 100_000;

const DECLARATION: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>";

/// How a message type is written, beyond one child element per set field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// One child element per set field.
    Fields,
    /// google.protobuf.Timestamp: RFC 3339 text when in range.
    Timestamp,
    /// google.protobuf.Duration: `1.5s` text when in range.
    Duration,
    /// google.protobuf.FieldMask: comma-separated lowerCamelCase paths when they round-trip.
    FieldMask,
    /// A wrapper other than StringValue: the value's text, trimmed on input.
    Wrapper,
    /// google.protobuf.StringValue: the string as it is.
    StringWrapper,
    /// google.protobuf.Any: the packed message with a `type` attribute when it can be decoded.
    Any,
}

fn form(desc: &MessageDescriptor) -> Form {
    let Some(name) = desc.full_name().strip_prefix("google.protobuf.") else {
        return Form::Fields;
    };
    match name {
        "Timestamp" => Form::Timestamp,
        "Duration" => Form::Duration,
        "FieldMask" => Form::FieldMask,
        "StringValue" => Form::StringWrapper,
        "DoubleValue" | "FloatValue" | "Int64Value" | "UInt64Value" | "Int32Value"
        | "UInt32Value" | "BoolValue" | "BytesValue" => Form::Wrapper,
        "Any" => Form::Any,
        _ => Form::Fields,
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes `msg` as an XML document whose root element is named after the message type.
pub fn encode_message(msg: &DynamicMessage, opts: &JsonOptions, out: &mut Vec<u8>) {
    out.extend_from_slice(DECLARATION);
    let desc = msg.descriptor();
    Writer::new(opts, out).message(desc.name(), msg, 0);
}

/// Writes one field of `msg` (a `response_body`): a singular message field as a document of its
/// own; any other field as its parent message holding only that field.
pub(super) fn encode_field(
    msg: &DynamicMessage,
    field: &FieldDescriptor,
    opts: &JsonOptions,
    out: &mut Vec<u8>,
) {
    if !field.is_list() && !field.is_map() {
        if let Value::Message(inner) = msg.get_field(field).as_ref() {
            return encode_message(inner, opts, out);
        }
    }
    let mut only = DynamicMessage::new(msg.descriptor());
    // The value comes from a message of the same type, so it always fits the field.
    let _ = only.try_set_field(field, msg.get_field(field).into_owned());
    encode_message(&only, opts, out);
}

/// Writes a `google.protobuf.Any` as the element `name`, expanded when `pool` knows its type.
pub(super) fn write_any(
    out: &mut Vec<u8>,
    name: &str,
    type_url: &str,
    value: &[u8],
    pool: Option<&DescriptorPool>,
) {
    let opts = JsonOptions::default();
    let mut writer = Writer::new(&opts, out);
    match pool.and_then(|p| p.get_message_by_name("google.protobuf.Any")) {
        Some(desc) => {
            let mut any = DynamicMessage::new(desc);
            // An Any of another shape in the loaded descriptors just loses these fields.
            let _ = any.try_set_field_by_number(1, Value::String(type_url.to_owned()));
            let _ = any.try_set_field_by_number(2, Value::Bytes(value.to_vec().into()));
            writer.message(name, &any, 1);
        }
        None => {
            writer.open(name);
            writer.text_element("typeUrl", type_url);
            writer.text_element(
                "value",
                &base64::engine::general_purpose::STANDARD.encode(value),
            );
            writer.close(name);
        }
    }
}

/// Writes the XML prolog: used by callers that write a root element by hand.
pub(super) fn write_declaration(out: &mut Vec<u8>) {
    out.extend_from_slice(DECLARATION);
}

/// Writes `<name>text</name>` with `text` escaped.
pub(super) fn write_text_element(out: &mut Vec<u8>, name: &str, text: &str) {
    let opts = JsonOptions::default();
    Writer::new(&opts, out).text_element(name, text);
}

struct Writer<'o> {
    out: &'o mut Vec<u8>,
    proto_names: bool,
    pretty: bool,
}

impl<'o> Writer<'o> {
    fn new(opts: &JsonOptions, out: &'o mut Vec<u8>) -> Self {
        Writer {
            out,
            proto_names: opts.use_proto_names,
            pretty: opts.pretty,
        }
    }

    fn indent(&mut self, depth: usize) {
        if self.pretty {
            self.out.push(b'\n');
            for _ in 0..depth {
                self.out.extend_from_slice(b"  ");
            }
        }
    }

    fn open(&mut self, name: &str) {
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'>');
    }

    fn close(&mut self, name: &str) {
        self.out.extend_from_slice(b"</");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'>');
    }

    fn text_element(&mut self, name: &str, text: &str) {
        if text.is_empty() {
            self.empty(name);
            return;
        }
        self.open(name);
        escape(self.out, text, false);
        self.close(name);
    }

    fn empty(&mut self, name: &str) {
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"/>");
    }

    /// A message value as the element `name`, in its type's form.
    fn message(&mut self, name: &str, msg: &DynamicMessage, depth: usize) {
        let desc = msg.descriptor();
        match form(&desc) {
            Form::Fields => {}
            Form::Any => {
                if let Some((type_url, packed)) = expanded_any(msg) {
                    let packed_form = form(&packed.descriptor());
                    if let Some(text) = text_form(packed_form, &packed) {
                        self.out.push(b'<');
                        self.out.extend_from_slice(name.as_bytes());
                        self.type_attribute(type_url);
                        self.out.push(b'>');
                        escape(self.out, &text, false);
                        self.close(name);
                    } else {
                        self.fields(name, &packed, depth, Some(type_url));
                    }
                    return;
                }
            }
            other => {
                if let Some(text) = text_form(other, msg) {
                    self.text_element(name, &text);
                    return;
                }
            }
        }
        self.fields(name, msg, depth, None);
    }

    fn type_attribute(&mut self, type_url: &str) {
        self.out.extend_from_slice(b" type=\"");
        escape(self.out, type_url, true);
        self.out.push(b'"');
    }

    /// `<name>` with one child element per set field, or `<name/>` when none is set.
    fn fields(&mut self, name: &str, msg: &DynamicMessage, depth: usize, type_url: Option<&str>) {
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        if let Some(url) = type_url {
            self.type_attribute(url);
        }
        self.out.push(b'>');
        let mark = self.out.len();
        for (field, value) in msg.fields() {
            self.field(&field, value, depth + 1);
        }
        if self.out.len() == mark {
            self.out.pop();
            self.out.extend_from_slice(b"/>");
        } else {
            self.indent(depth);
            self.close(name);
        }
    }

    fn field(&mut self, field: &FieldDescriptor, value: &Value, depth: usize) {
        let name = if self.proto_names {
            field.name()
        } else {
            field.json_name()
        };
        let kind = field.kind();
        match value {
            Value::List(items) => {
                for item in items {
                    self.value(name, &kind, item, depth);
                }
            }
            Value::Map(map) => {
                let Kind::Message(entry) = &kind else {
                    return;
                };
                let value_kind = entry.map_entry_value_field().kind();
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (key, value) in entries {
                    self.indent(depth);
                    self.open(name);
                    self.indent(depth + 1);
                    self.open("key");
                    write_key(self.out, key);
                    self.close("key");
                    self.value("value", &value_kind, value, depth + 1);
                    self.indent(depth);
                    self.close(name);
                }
            }
            value => self.value(name, &kind, value, depth),
        }
    }

    fn value(&mut self, name: &str, kind: &Kind, value: &Value, depth: usize) {
        self.indent(depth);
        if let Value::Message(msg) = value {
            return self.message(name, msg, depth);
        }
        if matches!(value, Value::String(s) if s.is_empty()) {
            return self.empty(name);
        }
        self.open(name);
        write_scalar(self.out, kind, value);
        self.close(name);
    }
}

fn write_key(out: &mut Vec<u8>, key: &MapKey) {
    let _ = match key {
        MapKey::Bool(b) => write!(out, "{b}"),
        MapKey::I32(n) => write!(out, "{n}"),
        MapKey::I64(n) => write!(out, "{n}"),
        MapKey::U32(n) => write!(out, "{n}"),
        MapKey::U64(n) => write!(out, "{n}"),
        MapKey::String(s) => {
            escape(out, s, false);
            Ok(())
        }
    };
}

/// Writes the text of a scalar value; writing into a Vec cannot fail.
fn write_scalar(out: &mut Vec<u8>, kind: &Kind, value: &Value) {
    let _ = match value {
        Value::Bool(b) => write!(out, "{b}"),
        Value::I32(n) => write!(out, "{n}"),
        Value::I64(n) => write!(out, "{n}"),
        Value::U32(n) => write!(out, "{n}"),
        Value::U64(n) => write!(out, "{n}"),
        Value::F32(x) if x.is_finite() => write!(out, "{x:?}"),
        Value::F64(x) if x.is_finite() => write!(out, "{x:?}"),
        Value::F32(x) => write_special(out, f64::from(*x)),
        Value::F64(x) => write_special(out, *x),
        Value::String(s) => {
            escape(out, s, false);
            Ok(())
        }
        Value::Bytes(b) => {
            let mut text = String::new();
            base64::engine::general_purpose::STANDARD.encode_string(b, &mut text);
            out.extend_from_slice(text.as_bytes());
            Ok(())
        }
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(v) => {
                    out.extend_from_slice(v.name().as_bytes());
                    Ok(())
                }
                None => write!(out, "{n}"),
            },
            _ => write!(out, "{n}"),
        },
        // Messages, lists and maps are elements, written by the caller.
        Value::Message(_) | Value::List(_) | Value::Map(_) => Ok(()),
    };
}

/// NaN and the infinities as the proto3 JSON mapping spells them. Finite numbers are written with
/// `{:?}`, Rust's shortest form that reads back to the same value in the field's own width, which
/// switches to exponent form for very large and very small magnitudes.
fn write_special(out: &mut Vec<u8>, x: f64) -> std::io::Result<()> {
    let text: &[u8] = if x.is_nan() {
        b"NaN"
    } else if x > 0.0 {
        b"Infinity"
    } else {
        b"-Infinity"
    };
    out.extend_from_slice(text);
    Ok(())
}

/// Escapes text for element content (or, with `attribute`, a double-quoted attribute value).
/// Characters an XML parser would not hand back unchanged are written as character references:
/// CR (parsers normalise line ends), C0 controls, U+FFFE and U+FFFF, and in attributes TAB and
/// LF (attribute values are whitespace-normalised).
fn escape(out: &mut Vec<u8>, text: &str, attribute: bool) {
    let bytes = text.as_bytes();
    let mut done = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (replacement, len): (Cow<'static, [u8]>, usize) = match b {
            b'<' => (Cow::Borrowed(b"&lt;"), 1),
            b'>' => (Cow::Borrowed(b"&gt;"), 1),
            b'&' => (Cow::Borrowed(b"&amp;"), 1),
            b'"' if attribute => (Cow::Borrowed(b"&quot;"), 1),
            b'\t' | b'\n' if !attribute => {
                i += 1;
                continue;
            }
            0..=0x1f => (Cow::Owned(format!("&#{b};").into_bytes()), 1),
            0xef if bytes.get(i + 1) == Some(&0xbf)
                && matches!(bytes.get(i + 2), Some(0xbe | 0xbf)) =>
            {
                let c = if bytes[i + 2] == 0xbe {
                    "&#xFFFE;"
                } else {
                    "&#xFFFF;"
                };
                (Cow::Owned(c.as_bytes().to_vec()), 3)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[done..i]);
        out.extend_from_slice(&replacement);
        i += len;
        done = i;
    }
    out.extend_from_slice(&bytes[done..]);
}

/// The type URL and packed message of an Any written in expanded form: the type is in the pool,
/// is not itself Any, the bytes decode without unknown fields (which the XML form would lose),
/// and the URL has no control characters.
fn expanded_any(any: &DynamicMessage) -> Option<(&str, DynamicMessage)> {
    let type_url = match any.get_field_by_number(1)? {
        Cow::Borrowed(Value::String(url)) => url.as_str(),
        _ => return None,
    };
    let value = any.get_field_by_number(2)?.as_bytes()?.clone();
    let (_, name) = type_url.rsplit_once('/')?;
    if type_url.bytes().any(|b| b < 0x20) {
        return None;
    }
    let desc = any.descriptor().parent_pool().get_message_by_name(name)?;
    if desc.full_name() == "google.protobuf.Any" {
        return None;
    }
    let packed = DynamicMessage::decode(desc, value).ok()?;
    if has_unknown_fields(&packed) {
        return None;
    }
    Some((type_url, packed))
}

fn has_unknown_fields(msg: &DynamicMessage) -> bool {
    if msg.unknown_fields().next().is_some() {
        return true;
    }
    msg.fields().any(|(_, value)| match value {
        Value::Message(m) => has_unknown_fields(m),
        Value::List(items) => items
            .iter()
            .any(|v| matches!(v, Value::Message(m) if has_unknown_fields(m))),
        Value::Map(map) => map
            .values()
            .any(|v| matches!(v, Value::Message(m) if has_unknown_fields(m))),
        _ => false,
    })
}

/// The text form of a well-known type, or `None` when this value has none (it is then written
/// with one element per field, which input always accepts too).
fn text_form(form: Form, msg: &DynamicMessage) -> Option<String> {
    let field = |n: u32| msg.get_field_by_number(n);
    match form {
        Form::Timestamp => {
            let seconds = field(1)?.as_i64()?;
            let nanos = field(2)?.as_i32()?;
            // 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z, as the JSON mapping allows.
            let in_range = (-62_135_596_800..=253_402_300_799).contains(&seconds)
                && (0..1_000_000_000).contains(&nanos);
            in_range.then(|| prost_types::Timestamp { seconds, nanos }.to_string())
        }
        Form::Duration => {
            let seconds = field(1)?.as_i64()?;
            let nanos = field(2)?.as_i32()?;
            let in_range = seconds.unsigned_abs() <= 315_576_000_000
                && nanos.unsigned_abs() < 1_000_000_000
                && (seconds == 0 || nanos == 0 || (seconds < 0) == (nanos < 0));
            in_range.then(|| prost_types::Duration { seconds, nanos }.to_string())
        }
        Form::FieldMask => {
            let paths = field(1)?;
            let mut text = String::new();
            for (i, path) in paths.as_list()?.iter().enumerate() {
                let path = path.as_str()?;
                let camel = lower_camel(path);
                if path.is_empty() || path.contains(',') || bind::mask_path(&camel) != path {
                    return None;
                }
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&camel);
            }
            Some(text)
        }
        Form::Wrapper | Form::StringWrapper => {
            let inner = msg.descriptor().get_field(1)?;
            let value = msg.get_field(&inner);
            if let Value::String(s) = value.as_ref() {
                return Some(s.clone());
            }
            let mut out = Vec::new();
            write_scalar(&mut out, &inner.kind(), &value);
            String::from_utf8(out).ok()
        }
        Form::Fields | Form::Any => None,
    }
}

/// `foo_bar.baz` → `fooBar.baz`, as the JSON mapping writes FieldMask paths.
fn lower_camel(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('_', Some(next)) if next.is_ascii_lowercase() => {
                out.push(next.to_ascii_uppercase());
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Reads an XML body into a message of type `desc`; an empty body is the empty message. The
/// root element's name is not checked. Unknown elements are skipped or refused as
/// `opts.reject_unknown_fields` says.
pub fn decode_message(
    desc: MessageDescriptor,
    body: &[u8],
    opts: &JsonOptions,
) -> Result<DynamicMessage, GatewayError> {
    Decoder::new(body, opts, false).document(desc)
}

/// [`decode_message`], also returning the field mask paths (proto names) of the elements present:
/// nested singular messages with child elements are descended into; scalars, lists, maps,
/// well-known types and empty elements are leaves. PATCH uses them to fill `update_mask`.
pub(super) fn decode_message_with_paths(
    desc: MessageDescriptor,
    body: &[u8],
    opts: &JsonOptions,
) -> Result<(DynamicMessage, Vec<String>), GatewayError> {
    let mut decoder = Decoder::new(body, opts, true);
    let msg = decoder.document(desc)?;
    Ok((msg, decoder.paths.unwrap_or_default()))
}

/// Reads an XML body holding one non-message field (scalar, repeated or map) of `parent`: the
/// document is the parent message with only that field.
pub(super) fn decode_field(
    parent: &MessageDescriptor,
    field: &FieldDescriptor,
    body: &[u8],
    opts: &JsonOptions,
) -> Result<Option<Value>, GatewayError> {
    let msg = decode_message(parent.clone(), body, opts)?;
    if let Some((other, _)) = msg.fields().find(|(f, _)| f != field) {
        return Err(GatewayError::invalid(format!(
            "invalid value at /{}/{}: this body holds only the field {}",
            parent.name(),
            other.json_name(),
            field.json_name()
        )));
    }
    Ok(msg
        .has_field(field)
        .then(|| msg.get_field(field).into_owned()))
}

/// What kind of problem a request body has; decides the message's opening words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    Malformed,
    Forbidden,
    Unknown,
    Invalid,
    TooDeep,
    TooMany,
}

/// A problem found while reading, with the element path collected as the error unwinds.
#[derive(Debug)]
struct XmlError {
    problem: Problem,
    detail: String,
    /// Path segments, innermost first.
    path: Vec<String>,
}

impl XmlError {
    fn new(problem: Problem, detail: impl Into<String>) -> Self {
        XmlError {
            problem,
            detail: detail.into(),
            path: Vec::new(),
        }
    }

    fn malformed(detail: impl Into<String>) -> Self {
        Self::new(Problem::Malformed, detail)
    }

    fn invalid(detail: impl Into<String>) -> Self {
        Self::new(Problem::Invalid, detail)
    }

    fn at(mut self, segment: impl Into<String>) -> Self {
        self.path.push(segment.into());
        self
    }

    fn into_gateway(self) -> GatewayError {
        let path = if self.path.is_empty() {
            String::new()
        } else {
            let mut path = String::new();
            for segment in self.path.iter().rev() {
                path.push('/');
                path.push_str(segment);
            }
            path
        };
        let at = if path.is_empty() {
            String::new()
        } else {
            format!(" at {path}")
        };
        let detail = &self.detail;
        GatewayError::invalid(match self.problem {
            Problem::Malformed => format!("malformed XML{at}: {detail}"),
            Problem::Forbidden => format!("refused XML: {detail}"),
            Problem::Unknown => format!("unknown element{at}: {detail}"),
            Problem::Invalid => format!("invalid value{at}: {detail}"),
            Problem::TooDeep => format!("XML too deep{at}: {detail}"),
            Problem::TooMany => format!("XML too large: {detail}"),
        })
    }
}

/// Client text shortened and quoted for error messages.
fn quoted(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

fn is_blank(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

fn trim(text: &str) -> &str {
    text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

fn element_name<'s>(start: &'s BytesStart<'_>) -> &'s str {
    start.local_name().into_inner()
}

/// Counts of the fields seen in one message element, for singular and oneof checks and for
/// element indexes in error paths.
#[derive(Default)]
struct Seen(Vec<(u32, u32)>);

impl Seen {
    /// Counts one more element of `field`; returns how many have been seen, this one included.
    fn bump(&mut self, field: &FieldDescriptor) -> u32 {
        let number = field.number();
        if let Some(entry) = self.0.iter_mut().find(|(n, _)| *n == number) {
            entry.1 += 1;
            return entry.1;
        }
        self.0.push((number, 1));
        1
    }

    fn has(&self, field: &FieldDescriptor) -> bool {
        self.0.iter().any(|(n, _)| *n == field.number())
    }
}

struct Decoder<'a> {
    reader: Reader<&'a [u8]>,
    reject_unknown: bool,
    elements: usize,
    depth: usize,
    /// Field mask paths of the elements present, when asked for.
    paths: Option<Vec<String>>,
    /// The proto-name path of the field being read, while `paths` is collected.
    prefix: String,
}

impl<'a> Decoder<'a> {
    fn new(body: &'a [u8], opts: &JsonOptions, paths: bool) -> Self {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let mut reader = Reader::from_reader(body);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
        Decoder {
            reader,
            reject_unknown: opts.reject_unknown_fields,
            elements: 0,
            depth: 0,
            paths: paths.then(Vec::new),
            prefix: String::new(),
        }
    }

    fn document(&mut self, desc: MessageDescriptor) -> Result<DynamicMessage, GatewayError> {
        if is_blank_bytes(self.reader.get_ref()) {
            return Ok(DynamicMessage::new(desc));
        }
        self.root(desc).map_err(XmlError::into_gateway)
    }

    fn root(&mut self, desc: MessageDescriptor) -> Result<DynamicMessage, XmlError> {
        let mut root = None;
        loop {
            match self.next()? {
                Event::Start(start) | Event::Empty(start) if root.is_some() => {
                    return Err(XmlError::malformed(format!(
                        "a second root element <{}> after the first",
                        element_name(&start)
                    )));
                }
                Event::Start(start) => {
                    let mut msg = DynamicMessage::new(desc.clone());
                    self.message(&mut msg, &start, false, false)
                        .map_err(|e| e.at(element_name(&start)))?;
                    root = Some(msg);
                }
                Event::Empty(start) => {
                    let mut msg = DynamicMessage::new(desc.clone());
                    self.message(&mut msg, &start, true, false)
                        .map_err(|e| e.at(element_name(&start)))?;
                    root = Some(msg);
                }
                Event::Text(text) if is_blank(&text) => {}
                Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => {
                    return Err(XmlError::malformed("text outside the root element"));
                }
                Event::Eof => return root.ok_or_else(|| XmlError::malformed("no root element")),
                _ => {}
            }
        }
    }

    /// The next event that matters: comments and processing instructions are skipped, a DTD is
    /// refused, the declaration is checked, and element depth and count are enforced.
    fn next(&mut self) -> Result<Event<'a>, XmlError> {
        loop {
            let event = self
                .reader
                .read_event()
                .map_err(|err| XmlError::malformed(err.to_string()))?;
            match event {
                Event::Comment(_) | Event::PI(_) => continue,
                Event::DocType(_) => {
                    return Err(XmlError::new(
                        Problem::Forbidden,
                        "<!DOCTYPE> is not allowed: DTDs and entity declarations are refused",
                    ))
                }
                Event::Decl(decl) => {
                    if self.elements > 0 {
                        return Err(XmlError::malformed(
                            "an XML declaration inside the document",
                        ));
                    }
                    if let Some(encoding) = decl.encoding() {
                        let encoding = encoding.map_err(|e| XmlError::malformed(e.to_string()))?;
                        if !encoding.eq_ignore_ascii_case("utf-8")
                            && !encoding.eq_ignore_ascii_case("utf8")
                        {
                            return Err(XmlError::malformed(format!(
                                "the document declares encoding {:?}; only UTF-8 is read",
                                encoding.as_ref()
                            )));
                        }
                    }
                    continue;
                }
                Event::Start(ref start) | Event::Empty(ref start) => {
                    self.elements += 1;
                    if self.elements > MAX_ELEMENTS {
                        return Err(XmlError::new(
                            Problem::TooMany,
                            format!("more than {MAX_ELEMENTS} elements"),
                        ));
                    }
                    if self.depth + 1 > MAX_DEPTH {
                        return Err(XmlError::new(
                            Problem::TooDeep,
                            format!("more than {MAX_DEPTH} nested elements"),
                        ));
                    }
                    if !is_blank(start.attributes_raw()) {
                        for attribute in start.attributes() {
                            attribute.map_err(|e| {
                                XmlError::malformed(format!(
                                    "bad attribute in <{}>: {e}",
                                    element_name(start)
                                ))
                            })?;
                        }
                    }
                    if matches!(event, Event::Start(_)) {
                        self.depth += 1;
                    }
                }
                Event::End(_) => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
            return Ok(event);
        }
    }

    /// Reads the content of an element holding `msg`, through its end tag. `typed` is set when
    /// the element's `type` attribute was already used to pick the message type.
    fn message(
        &mut self,
        msg: &mut DynamicMessage,
        start: &BytesStart<'a>,
        empty: bool,
        typed: bool,
    ) -> Result<(), XmlError> {
        let form = form(&msg.descriptor());
        if form == Form::Any && !typed {
            if let Some(type_url) = type_attribute(start)? {
                return self.any(msg, &type_url, start, empty);
            }
        }
        if empty {
            return Ok(());
        }
        match form {
            Form::Fields | Form::Any => self.fields(msg, None),
            text => self.text_or_fields(msg, text),
        }
    }

    /// An Any in expanded form: the element holds the packed message of type `type_url`.
    fn any(
        &mut self,
        any: &mut DynamicMessage,
        type_url: &str,
        start: &BytesStart<'a>,
        empty: bool,
    ) -> Result<(), XmlError> {
        let Some((_, name)) = type_url.rsplit_once('/') else {
            return Err(XmlError::invalid(format!(
                "Any type {} is not a type URL (expected type.googleapis.com/package.Message)",
                quoted(type_url)
            )));
        };
        let pool = any.descriptor().parent_pool().clone();
        let Some(desc) = pool.get_message_by_name(name) else {
            return Err(XmlError::invalid(format!(
                "Any type {} names a message type the gateway does not know",
                quoted(type_url)
            )));
        };
        let mut packed = DynamicMessage::new(desc);
        let paths = self.paths.take();
        let read = self.message(&mut packed, start, empty, true);
        self.paths = paths;
        read?;
        set_number(any, 1, Value::String(type_url.to_owned()))?;
        set_number(any, 2, Value::Bytes(packed.encode_to_vec().into()))
    }

    /// A well-known type with a text form: text, or child elements for the fields.
    fn text_or_fields(&mut self, msg: &mut DynamicMessage, form: Form) -> Result<(), XmlError> {
        let mut text: Cow<'a, str> = Cow::Borrowed("");
        loop {
            let pending = match self.next()? {
                Event::Text(chunk) => {
                    append(&mut text, chunk.xml10_content());
                    continue;
                }
                Event::CData(chunk) => {
                    append(&mut text, chunk.xml10_content());
                    continue;
                }
                Event::GeneralRef(reference) => {
                    text.to_mut().push(resolve(&reference)?);
                    continue;
                }
                Event::Start(start) => (start, false),
                Event::Empty(start) => (start, true),
                Event::End(_) => return set_text_form(msg, form, &text),
                Event::Eof => return Err(XmlError::malformed("unexpected end of document")),
                _ => continue,
            };
            if !is_blank(&text) {
                return Err(text_in_message(&msg.descriptor(), &text));
            }
            return self.fields(msg, Some(pending));
        }
    }

    /// Child elements, one per field value, through the end tag of the message's element.
    fn fields(
        &mut self,
        msg: &mut DynamicMessage,
        mut pending: Option<(BytesStart<'a>, bool)>,
    ) -> Result<(), XmlError> {
        let desc = msg.descriptor();
        let mut seen = Seen::default();
        loop {
            let (start, empty) = match pending.take() {
                Some(next) => next,
                None => match self.next()? {
                    Event::Start(start) => (start, false),
                    Event::Empty(start) => (start, true),
                    Event::Text(text) if is_blank(&text) => continue,
                    Event::Text(text) => {
                        return Err(text_in_message(&desc, &text.xml10_content()));
                    }
                    Event::CData(text) => {
                        return Err(text_in_message(&desc, &text.xml10_content()));
                    }
                    Event::GeneralRef(reference) => {
                        return Err(text_in_message(&desc, &format!("&{};", &*reference)));
                    }
                    Event::End(_) => return Ok(()),
                    Event::Eof => return Err(XmlError::malformed("unexpected end of document")),
                    _ => continue,
                },
            };
            let name = element_name(&start);
            let field = desc
                .get_field_by_json_name(name)
                .or_else(|| desc.get_field_by_name(name));
            let Some(field) = field else {
                if self.reject_unknown {
                    return Err(XmlError::new(
                        Problem::Unknown,
                        format!("{} has no field {name:?}", desc.full_name()),
                    )
                    .at(name));
                }
                if !empty {
                    self.skip().map_err(|e| e.at(name))?;
                }
                continue;
            };
            self.field(msg, &field, &start, empty, &mut seen, name)?;
        }
    }

    /// One child element for `field`; errors carry the element's path segment.
    fn field(
        &mut self,
        msg: &mut DynamicMessage,
        field: &FieldDescriptor,
        start: &BytesStart<'a>,
        empty: bool,
        seen: &mut Seen,
        name: &str,
    ) -> Result<(), XmlError> {
        let kind = field.kind();
        if field.is_map() {
            let index = seen.bump(field);
            let Kind::Message(entry_desc) = kind else {
                return Err(XmlError::invalid("map field without an entry type").at(name));
            };
            let mark = self.enter(field);
            let paths = self.paths.take();
            let mut entry = DynamicMessage::new(entry_desc.clone());
            let read = self.message(&mut entry, start, empty, false);
            self.paths = paths;
            read.map_err(|e| e.at(format!("{name}[{index}]")))?;
            self.leave(mark, true);
            let key_field = entry_desc.map_entry_key_field();
            let value_field = entry_desc.map_entry_value_field();
            let Some(key) = entry.get_field(&key_field).into_owned().into_map_key() else {
                return Err(XmlError::invalid("map key of a type maps cannot have").at(name));
            };
            let value = entry
                .take_field(&value_field)
                .unwrap_or_else(|| Value::default_value_for_field(&value_field));
            if let Value::Map(map) = msg.get_field_mut(field) {
                map.insert(key, value);
            }
            return Ok(());
        }
        if field.is_list() {
            let index = match msg.get_field(field).as_ref() {
                Value::List(items) => items.len() + 1,
                _ => 1,
            };
            let mark = self.enter(field);
            let paths = self.paths.take();
            let read = self.value(&kind, start, empty);
            self.paths = paths;
            let value = read.map_err(|e| e.at(format!("{name}[{index}]")))?;
            self.leave(mark, true);
            if let Value::List(items) = msg.get_field_mut(field) {
                items.push(value);
            }
            return Ok(());
        }
        let count = seen.bump(field);
        if count > 1 {
            return Err(XmlError::invalid(format!(
                "{name:?} is not a repeated field but appears more than once"
            ))
            .at(format!("{name}[{count}]")));
        }
        if let Some(oneof) = field.containing_oneof() {
            if let Some(other) = oneof.fields().find(|f| f != field && seen.has(f)) {
                return Err(XmlError::invalid(format!(
                    "{name:?} and {:?} are both members of oneof {:?}; set one",
                    other.json_name(),
                    oneof.name()
                ))
                .at(name));
            }
        }
        let mark = self.enter(field);
        let leaf = !matches!(&kind, Kind::Message(m) if form(m) == Form::Fields);
        let value = self.value(&kind, start, empty).map_err(|e| e.at(name))?;
        self.leave(mark, leaf);
        msg.try_set_field(field, value)
            .map_err(|_| XmlError::invalid("value does not fit the field").at(name))
    }

    /// Reads one value of `kind` from the element `start`, through its end tag.
    fn value(
        &mut self,
        kind: &Kind,
        start: &BytesStart<'a>,
        empty: bool,
    ) -> Result<Value, XmlError> {
        if let Kind::Message(desc) = kind {
            let mut msg = DynamicMessage::new(desc.clone());
            self.message(&mut msg, start, empty, false)?;
            return Ok(Value::Message(msg));
        }
        let text = if empty {
            Cow::Borrowed("")
        } else {
            self.text()?
        };
        parse_scalar(kind, text)
    }

    /// The text content of a scalar element, through its end tag.
    fn text(&mut self) -> Result<Cow<'a, str>, XmlError> {
        let mut text: Cow<'a, str> = Cow::Borrowed("");
        loop {
            match self.next()? {
                Event::Text(chunk) => append(&mut text, chunk.xml10_content()),
                Event::CData(chunk) => append(&mut text, chunk.xml10_content()),
                Event::GeneralRef(reference) => text.to_mut().push(resolve(&reference)?),
                Event::Start(start) | Event::Empty(start) => {
                    return Err(XmlError::invalid(format!(
                        "expected text, got element <{}>",
                        element_name(&start)
                    )));
                }
                Event::End(_) => return Ok(text),
                Event::Eof => return Err(XmlError::malformed("unexpected end of document")),
                _ => {}
            }
        }
    }

    /// Skips an unknown element's content, still checking it is well-formed and within limits.
    fn skip(&mut self) -> Result<(), XmlError> {
        let mut open = 1usize;
        loop {
            match self.next()? {
                Event::Start(_) => open += 1,
                Event::End(_) => {
                    open -= 1;
                    if open == 0 {
                        return Ok(());
                    }
                }
                Event::GeneralRef(reference) => {
                    resolve(&reference)?;
                }
                Event::Eof => return Err(XmlError::malformed("unexpected end of document")),
                _ => {}
            }
        }
    }

    /// Starts collecting the mask path of `field`, when paths are collected.
    fn enter(&mut self, field: &FieldDescriptor) -> Option<(usize, usize)> {
        let paths = self.paths.as_ref()?;
        let mark = (self.prefix.len(), paths.len());
        if !self.prefix.is_empty() {
            self.prefix.push('.');
        }
        self.prefix.push_str(field.name());
        Some(mark)
    }

    /// Records the path of the field entered at `mark`: always for a leaf, and for a message
    /// when none of its fields recorded one.
    fn leave(&mut self, mark: Option<(usize, usize)>, leaf: bool) {
        let (Some((prefix_len, count)), Some(paths)) = (mark, self.paths.as_mut()) else {
            return;
        };
        if (leaf || paths.len() == count) && !paths.contains(&self.prefix) {
            paths.push(self.prefix.clone());
        }
        self.prefix.truncate(prefix_len);
    }
}

fn is_blank_bytes(body: &[u8]) -> bool {
    body.iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

fn append<'a>(text: &mut Cow<'a, str>, chunk: Cow<'a, str>) {
    if text.is_empty() {
        *text = chunk;
    } else {
        text.to_mut().push_str(&chunk);
    }
}

/// The value of `&name;`: the five XML entities and character references only. Any other name
/// could only be declared in a DTD, which is refused, so it is an error rather than expanded.
fn resolve(reference: &BytesRef<'_>) -> Result<char, XmlError> {
    let name: &str = reference;
    let c = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let number = if let Some(hex) = name.strip_prefix("#x") {
                u32::from_str_radix(hex, 16).ok()
            } else if let Some(decimal) = name.strip_prefix('#') {
                decimal.parse::<u32>().ok()
            } else {
                return Err(XmlError::malformed(format!(
                    "undefined entity &{name}; (only &lt; &gt; &amp; &apos; &quot; and character \
                     references are read)"
                )));
            };
            // U+0000 is accepted because the writer uses &#0; for NUL in strings (docs/xml.md).
            return number.and_then(char::from_u32).ok_or_else(|| {
                XmlError::malformed(format!("invalid character reference &{name};"))
            });
        }
    };
    Ok(c)
}

/// The type URL of an Any's expanded form, from its `type` attribute.
fn type_attribute(start: &BytesStart<'_>) -> Result<Option<String>, XmlError> {
    if is_blank(start.attributes_raw()) {
        return Ok(None);
    }
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| XmlError::malformed(e.to_string()))?;
        if attribute.key.into_inner() == "type" {
            let value = attribute
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| XmlError::malformed(format!("bad type attribute: {e}")))?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

fn text_in_message(desc: &MessageDescriptor, text: &str) -> XmlError {
    XmlError::invalid(format!(
        "expected elements of {}, got text {}",
        desc.full_name(),
        quoted(trim(text))
    ))
}

fn parse_scalar(kind: &Kind, text: Cow<'_, str>) -> Result<Value, XmlError> {
    if let Kind::String = kind {
        return Ok(Value::String(text.into_owned()));
    }
    bind::parse_scalar(kind, trim(&text)).map_err(XmlError::invalid)
}

/// Sets field `number` of a well-known type. The descriptors are the operator's, so a
/// google.protobuf type of another shape is an error, never a panic.
fn set_number(msg: &mut DynamicMessage, number: u32, value: Value) -> Result<(), XmlError> {
    msg.try_set_field_by_number(number, value).map_err(|_| {
        XmlError::invalid(format!(
            "{} in the loaded descriptors does not have its standard fields",
            msg.descriptor().full_name()
        ))
    })
}

/// Sets a well-known type from its text form; blank text is the empty message.
fn set_text_form(msg: &mut DynamicMessage, form: Form, text: &str) -> Result<(), XmlError> {
    let desc = msg.descriptor();
    if form == Form::StringWrapper {
        return set_number(msg, 1, Value::String(text.to_owned()));
    }
    let text = trim(text);
    if text.is_empty() {
        return Ok(());
    }
    match form {
        Form::Timestamp | Form::Duration => {
            let expected = if form == Form::Timestamp {
                "an RFC 3339 timestamp such as 2024-01-02T03:04:05Z"
            } else {
                "a duration such as 1.5s"
            };
            let parsed =
                DynamicMessage::deserialize(desc, serde_json::Value::String(text.to_owned()))
                    .map_err(|_| {
                        XmlError::invalid(format!("expected {expected}, got {}", quoted(text)))
                    })?;
            *msg = parsed;
            Ok(())
        }
        Form::FieldMask => {
            let paths = text
                .split(',')
                .map(trim)
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(bind::mask_path(p)))
                .collect();
            set_number(msg, 1, Value::List(paths))
        }
        Form::Wrapper => {
            let Some(inner) = desc.get_field(1) else {
                return Ok(());
            };
            let value = parse_scalar(&inner.kind(), Cow::Borrowed(text))?;
            msg.try_set_field(&inner, value)
                .map_err(|_| XmlError::invalid("value does not fit the wrapper"))
        }
        Form::Fields | Form::Any | Form::StringWrapper => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use prost_reflect::{DescriptorPool, ReflectMessage};

    use super::*;

    fn pool() -> &'static DescriptorPool {
        static POOL: OnceLock<DescriptorPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let mut builder = crate::descriptors::RegistryBuilder::new();
            builder
                .add_protos(
                    &[root.join("protos/test/v1/echo.proto")],
                    &[root.join("protos")],
                )
                .unwrap();
            builder.build().unwrap().pool().clone()
        })
    }

    fn desc(name: &str) -> MessageDescriptor {
        pool().get_message_by_name(name).unwrap()
    }

    fn all_types() -> MessageDescriptor {
        desc("test.v1.AllTypes")
    }

    fn to_xml(msg: &DynamicMessage) -> String {
        let mut out = Vec::new();
        encode_message(msg, &JsonOptions::default(), &mut out);
        String::from_utf8(out).unwrap()
    }

    fn from_xml(text: &str) -> Result<DynamicMessage, String> {
        decode_message(all_types(), text.as_bytes(), &JsonOptions::default())
            .map_err(|e| e.message().to_owned())
    }

    fn from_json(json: &str) -> DynamicMessage {
        let mut de = serde_json::Deserializer::from_str(json);
        DynamicMessage::deserialize(all_types(), &mut de).unwrap()
    }

    const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

    #[test]
    fn writes_set_fields_in_their_forms() {
        let msg = from_json(
            r#"{"s": "a<b & \"c\"\r", "i32": -7, "i64": "-9223372036854775808", "u64": "18446744073709551615",
                "fl": 1.5, "db": "-Infinity", "b": true, "by": "AQID", "color": "GREEN",
                "repString": ["x", ""], "mapSi": {"b": 2, "a": 0}, "mapIs": {"-5": "neg"},
                "sub": {}, "subs": [{"count": 3}, {}],
                "ts": "2024-01-02T03:04:05.120Z", "dur": "-1.5s", "mask": "fooBar,sub.count",
                "wB": false, "wS": "", "empty": {},
                "any": {"@type": "type.googleapis.com/test.v1.SubMessage", "subfield": "x"},
                "choiceI": 0, "renamed": "r"}"#,
        );
        let want = format!(
            "{HEAD}<AllTypes><s>a&lt;b &amp; \"c\"&#13;</s><i32>-7</i32><i64>-9223372036854775808</i64>\
             <u64>18446744073709551615</u64><fl>1.5</fl><db>-Infinity</db><b>true</b><by>AQID</by>\
             <color>GREEN</color><repString>x</repString><repString/>\
             <mapSi><key>a</key><value>0</value></mapSi><mapSi><key>b</key><value>2</value></mapSi>\
             <mapIs><key>-5</key><value>neg</value></mapIs><sub/><subs><count>3</count></subs><subs/>\
             <ts>2024-01-02T03:04:05.120Z</ts><dur>-1.500s</dur><mask>fooBar,sub.count</mask>\
             <any type=\"type.googleapis.com/test.v1.SubMessage\"><subfield>x</subfield></any>\
             <empty/><wB>false</wB><wS/><choiceI>0</choiceI><renamed>r</renamed></AllTypes>"
        );
        assert_eq!(to_xml(&msg), want);
        assert!(same_message(&from_xml(&want).unwrap(), &msg));
    }

    #[test]
    fn proto_names_and_pretty_output() {
        let msg = from_json(r#"{"repString": ["a"], "sub": {"subfield": "x"}, "wI32": 0}"#);
        let opts = JsonOptions {
            use_proto_names: true,
            pretty: true,
            ..JsonOptions::default()
        };
        let mut out = Vec::new();
        encode_message(&msg, &opts, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            format!(
                "{HEAD}<AllTypes>\n  <rep_string>a</rep_string>\n  <sub>\n    <subfield>x</subfield>\n  \
                 </sub>\n  <w_i32>0</w_i32>\n</AllTypes>"
            )
        );
        assert!(same_message(&from_xml(&text).unwrap(), &msg));
    }

    #[test]
    fn reads_the_accepted_variations() {
        let cases: &[(&str, &str)] = &[
            // Any root name, no declaration, proto names, comments, PIs, CDATA, references.
            (
                "<x><rep_string>a</rep_string><!-- c --><?pi x?><repString><![CDATA[<b>]]></repString></x>",
                r#"{"repString": ["a", "<b>"]}"#,
            ),
            ("<x><s>&lt;&#65;&#x42;&amp;&apos;&quot;&gt;</s></x>", r#"{"s": "<AB&'\">"}"#),
            // Namespace prefixes are ignored; attributes other than Any's type too.
            (
                r#"<p:AllTypes xmlns:p="urn:x"><p:s a="1">v</p:s></p:AllTypes>"#,
                r#"{"s": "v"}"#,
            ),
            // Whitespace around values other than strings is trimmed; strings keep it.
            (
                "<x>\n <i32> 42 </i32>\n <s> sp </s> <b>1</b> <color>2</color> <by>-_8</by></x>",
                r#"{"i32": 42, "s": " sp ", "b": true, "color": "GREEN", "by": "+/8="}"#,
            ),
            // CRLF in text becomes LF; &#13; is kept.
            ("<x><s>a\r\nb&#13;</s></x>", "{\"s\": \"a\\nb\\r\"}"),
            // Well-known types: text or fields; empty is the empty message.
            (
                "<x><ts><seconds>5</seconds></ts><dur> 2s </dur><wI64/><mask>a,fooBar, b_c</mask></x>",
                r#"{"ts": "1970-01-01T00:00:05Z", "dur": "2s", "wI64": "0", "mask": "a,fooBar,bC"}"#,
            ),
            (
                "<x><wS> </wS><wBy/><val><numberValue>1</numberValue></val></x>",
                r#"{"wS": " ", "wBy": "", "val": 1}"#,
            ),
            // Maps: missing key or value is the default; the last of a repeated key wins.
            (
                "<x><mapSi><value>4</value></mapSi><mapSi><key>k</key></mapSi><mapSi><key>k</key><value>9</value></mapSi></x>",
                r#"{"mapSi": {"": 4, "k": 9}}"#,
            ),
            // Interleaved repeated elements and an Any in field form.
            (
                "<x><repI64>1</repI64><s>s</s><repI64>-2</repI64><any><typeUrl>type.googleapis.com/test.v1.SubMessage</typeUrl><value>CgF4</value></any></x>",
                r#"{"repI64": ["1", "-2"], "s": "s", "any": {"@type": "type.googleapis.com/test.v1.SubMessage", "subfield": "x"}}"#,
            ),
            // A BOM, and an empty root.
            ("\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><x/>", "{}"),
            ("  \n ", "{}"),
        ];
        for (xml, json) in cases {
            let got = from_xml(xml).unwrap_or_else(|e| panic!("{xml}: {e}"));
            assert!(same_message(&got, &from_json(json)), "{xml}: {got:?}");
        }
    }

    #[test]
    fn refuses_bad_input_with_the_element_path() {
        let deep = format!(
            "{}{}",
            "<a>".repeat(MAX_DEPTH + 1),
            "</a>".repeat(MAX_DEPTH + 1)
        );
        let many = format!("<x>{}</x>", "<u/>".repeat(MAX_ELEMENTS));
        let cases: Vec<(String, &str)> = vec![
            (
                "<AllTypes><subs/><subs><count>abc</count></subs></AllTypes>".into(),
                r#"invalid value at /AllTypes/subs[2]/count: expected integer, got "abc""#,
            ),
            (
                "<AllTypes><s>a</s><s>b</s></AllTypes>".into(),
                r#"invalid value at /AllTypes/s[2]: "s" is not a repeated field but appears more than once"#,
            ),
            (
                "<AllTypes><sub>hello</sub></AllTypes>".into(),
                r#"invalid value at /AllTypes/sub: expected elements of test.v1.SubMessage, got text "hello""#,
            ),
            (
                "<AllTypes><sub><count>1</count>tail</sub></AllTypes>".into(),
                r#"invalid value at /AllTypes/sub: expected elements of test.v1.SubMessage, got text "tail""#,
            ),
            (
                "<AllTypes><ts>soon<seconds>1</seconds></ts></AllTypes>".into(),
                r#"invalid value at /AllTypes/ts: expected elements of google.protobuf.Timestamp, got text "soon""#,
            ),
            (
                "<AllTypes><s><b/></s></AllTypes>".into(),
                "invalid value at /AllTypes/s: expected text, got element <b>",
            ),
            (
                "<AllTypes><mapSi><key>k</key><value>x</value></mapSi></AllTypes>".into(),
                r#"invalid value at /AllTypes/mapSi[1]/value: expected integer, got "x""#,
            ),
            (
                "<AllTypes><repI64>1</repI64><repI64>1.5</repI64></AllTypes>".into(),
                r#"invalid value at /AllTypes/repI64[2]: expected integer, got "1.5""#,
            ),
            (
                "<AllTypes><i32>4294967296</i32></AllTypes>".into(),
                r#"invalid value at /AllTypes/i32: "4294967296" is out of range for int32"#,
            ),
            (
                "<AllTypes><color>PURPLE</color></AllTypes>".into(),
                r#"invalid value at /AllTypes/color: expected a value name or number of enum test.v1.Color, got "PURPLE""#,
            ),
            (
                "<AllTypes><ts>yesterday</ts></AllTypes>".into(),
                r#"invalid value at /AllTypes/ts: expected an RFC 3339 timestamp such as 2024-01-02T03:04:05Z, got "yesterday""#,
            ),
            (
                "<AllTypes><choiceS>a</choiceS><choiceI>1</choiceI></AllTypes>".into(),
                r#"invalid value at /AllTypes/choiceI: "choiceI" and "choiceS" are both members of oneof "choice"; set one"#,
            ),
            (
                "<AllTypes><any type=\"type.googleapis.com/no.Such\"/></AllTypes>".into(),
                r#"invalid value at /AllTypes/any: Any type "type.googleapis.com/no.Such" names a message type the gateway does not know"#,
            ),
            (
                "<AllTypes><s>x</AllTypes>".into(),
                "malformed XML at /AllTypes/s: ",
            ),
            (
                "<AllTypes><s>a &lol; b</s></AllTypes>".into(),
                "malformed XML at /AllTypes/s: undefined entity &lol;",
            ),
            (
                "<AllTypes><s>&#xD800;</s></AllTypes>".into(),
                "malformed XML at /AllTypes/s: invalid character reference &#xD800;",
            ),
            (
                "<AllTypes/><AllTypes/>".into(),
                "malformed XML: a second root element <AllTypes>",
            ),
            (
                "hello".into(),
                "malformed XML: text outside the root element",
            ),
            (
                "<a/>junk".into(),
                "malformed XML: text outside the root element",
            ),
            ("<AllTypes>".into(), "malformed XML"),
            (
                "<?xml version=\"1.0\"?><!-- only -->".into(),
                "malformed XML: no root element",
            ),
            (
                "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>".into(),
                "malformed XML: the document declares encoding \"ISO-8859-1\"; only UTF-8 is read",
            ),
            (
                "<AllTypes><s a=></s></AllTypes>".into(),
                "malformed XML at /AllTypes: bad attribute in <s>",
            ),
            (
                "<!DOCTYPE x [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><x><s>&xxe;</s></x>"
                    .into(),
                "refused XML: <!DOCTYPE> is not allowed",
            ),
            (
                "<x><s>a</s><!DOCTYPE x></x>".into(),
                "refused XML: <!DOCTYPE> is not allowed",
            ),
            (deep, "XML too deep at /a/a: more than 64 nested elements"),
            (many, "XML too large: more than 100000 elements"),
        ];
        for (xml, want) in &cases {
            let err = from_xml(xml).expect_err(xml);
            assert!(err.starts_with(want), "{xml}\n got: {err}\nwant: {want}");
        }
        // The element that goes too deep is the 65th.
        let deep = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert!(from_xml(&deep).is_ok());
    }

    #[test]
    fn non_utf8_is_malformed() {
        let err = decode_message(all_types(), b"<x><s>\xff</s></x>", &JsonOptions::default())
            .unwrap_err();
        assert!(
            err.message().starts_with("malformed XML"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn unknown_elements_follow_the_json_option() {
        let body = "<x><nope><deep><er>1</er></deep></nope><s>kept</s></x>";
        assert_eq!(from_xml(body), Ok(from_json(r#"{"s": "kept"}"#)));
        let strict = JsonOptions {
            reject_unknown_fields: true,
            ..JsonOptions::default()
        };
        let err = decode_message(all_types(), body.as_bytes(), &strict).unwrap_err();
        assert_eq!(
            err.message(),
            r#"unknown element at /x/nope: test.v1.AllTypes has no field "nope""#
        );
        // Skipped content is still checked.
        let err = from_xml("<x><nope>&lol;</nope></x>").unwrap_err();
        assert!(err.contains("undefined entity"), "{err}");
    }

    #[test]
    fn billion_laughs_is_refused_before_anything_expands() {
        let mut doc = String::from("<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">");
        for i in 1..10 {
            doc.push_str(&format!(
                "<!ENTITY lol{i} \"{}\">",
                format!("&lol{};", i - 1).repeat(10)
            ));
        }
        doc.push_str("]><AllTypes><s>&lol9;</s></AllTypes>");
        let err = from_xml(&doc).unwrap_err();
        assert!(err.starts_with("refused XML"), "{err}");
        // Without the DTD the entity is simply undefined.
        let err = from_xml("<AllTypes><s>&lol9;</s></AllTypes>").unwrap_err();
        assert!(err.contains("undefined entity &lol9;"), "{err}");
    }

    #[test]
    fn characters_xml_cannot_carry_come_back() {
        let text = "nul\0 bell\x07 cr\r tab\t lf\n nonchar\u{fffe}\u{ffff} ]]> é 🦀";
        let mut msg = DynamicMessage::new(all_types());
        msg.set_field_by_name("s", Value::String(text.into()));
        let xml = to_xml(&msg);
        assert!(
            xml.contains("nul&#0; bell&#7; cr&#13; tab\t lf\n nonchar&#xFFFE;&#xFFFF; ]]&gt;"),
            "{xml}"
        );
        assert!(same_message(&from_xml(&xml).unwrap(), &msg));
    }

    #[test]
    fn well_known_values_without_a_text_form_use_fields() {
        let mut msg = DynamicMessage::new(all_types());
        let ts = |seconds: i64, nanos: i32| {
            let mut m = DynamicMessage::new(desc("google.protobuf.Timestamp"));
            m.set_field_by_name("seconds", Value::I64(seconds));
            m.set_field_by_name("nanos", Value::I32(nanos));
            Value::Message(m)
        };
        msg.set_field_by_name("ts", ts(-62_135_596_801, 0));
        let mut dur = DynamicMessage::new(desc("google.protobuf.Duration"));
        dur.set_field_by_name("seconds", Value::I64(1));
        dur.set_field_by_name("nanos", Value::I32(-1));
        msg.set_field_by_name("dur", Value::Message(dur));
        let mut mask = DynamicMessage::new(desc("google.protobuf.FieldMask"));
        mask.set_field_by_name(
            "paths",
            Value::List(vec![
                Value::String("ok_path".into()),
                Value::String("fooBar".into()),
            ]),
        );
        msg.set_field_by_name("mask", Value::Message(mask));
        let mut any = DynamicMessage::new(desc("google.protobuf.Any"));
        any.set_field_by_name(
            "type_url",
            Value::String("type.googleapis.com/test.v1.SubMessage".into()),
        );
        any.set_field_by_name("value", Value::Bytes(vec![0xff].into()));
        msg.set_field_by_name("any", Value::Message(any));
        let xml = to_xml(&msg);
        assert_eq!(
            xml,
            format!(
                "{HEAD}<AllTypes><ts><seconds>-62135596801</seconds></ts>\
                 <dur><seconds>1</seconds><nanos>-1</nanos></dur>\
                 <mask><paths>ok_path</paths><paths>fooBar</paths></mask>\
                 <any><typeUrl>type.googleapis.com/test.v1.SubMessage</typeUrl><value>/w==</value></any>\
                 </AllTypes>"
            )
        );
        assert!(same_message(&from_xml(&xml).unwrap(), &msg));
    }

    #[test]
    fn mask_paths_name_the_elements_present() {
        let body = "<m><sub><count>0</count></sub><subs/><subs/><mapSi><key>a</key></mapSi>\
                    <ts>2024-01-01T00:00:00Z</ts><i32>0</i32><empty/><nope/></m>";
        let (msg, paths) =
            decode_message_with_paths(all_types(), body.as_bytes(), &JsonOptions::default())
                .unwrap();
        assert_eq!(paths, ["sub.count", "subs", "map_si", "ts", "i32", "empty"]);
        assert!(msg.has_field_by_name("sub"));
        let (_, paths) =
            decode_message_with_paths(all_types(), b"<m><sub/></m>", &JsonOptions::default())
                .unwrap();
        assert_eq!(paths, ["sub"]);
    }

    #[test]
    fn non_message_fields_stand_in_their_parent() {
        let field = all_types().get_field_by_name("rep_string").unwrap();
        let value = decode_field(
            &all_types(),
            &field,
            b"<AllTypes><repString>a</repString><repString>b</repString></AllTypes>",
            &JsonOptions::default(),
        )
        .unwrap();
        assert_eq!(
            value,
            Some(Value::List(vec![
                Value::String("a".into()),
                Value::String("b".into())
            ]))
        );
        let err = decode_field(
            &all_types(),
            &field,
            b"<AllTypes><s>x</s></AllTypes>",
            &JsonOptions::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.message(),
            "invalid value at /AllTypes/s: this body holds only the field repString"
        );
        let mut msg = from_json(r#"{"repString": ["a"], "s": "dropped"}"#);
        let mut out = Vec::new();
        encode_field(&msg, &field, &JsonOptions::default(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{HEAD}<AllTypes><repString>a</repString></AllTypes>")
        );
        msg.set_field_by_name(
            "sub",
            Value::Message(DynamicMessage::new(desc("test.v1.SubMessage"))),
        );
        let mut out = Vec::new();
        encode_field(
            &msg,
            &all_types().get_field_by_name("sub").unwrap(),
            &JsonOptions::default(),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{HEAD}<SubMessage/>")
        );
    }

    // -- Round trip of generated messages ------------------------------------------------------

    /// splitmix64: a small deterministic generator, so failures reproduce from the case number.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        fn pick<'t, T>(&mut self, items: &'t [T]) -> &'t T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    const CHARS: &[char] = &[
        'a', 'Z', '0', ' ', '<', '>', '&', '"', '\'', ';', '#', ']', '\t', '\n', '\r', '\0',
        '\u{1}', '\u{1f}', '\u{7f}', '\u{85}', 'é', '\u{2028}', '\u{fffe}', '\u{ffff}', '🦀',
    ];

    fn string(rng: &mut Rng) -> String {
        (0..rng.below(8)).map(|_| *rng.pick(CHARS)).collect()
    }

    fn int64(rng: &mut Rng) -> i64 {
        match rng.below(4) {
            0 => *rng.pick(&[0, -1, 1, i64::MIN, i64::MAX]),
            1 => rng.next() as i64,
            _ => (rng.next() % 2000) as i64 - 1000,
        }
    }

    fn float64(rng: &mut Rng) -> f64 {
        match rng.below(4) {
            0 => *rng.pick(&[
                0.0,
                -0.0,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MIN_POSITIVE,
                5e-324,
                f64::MAX,
                0.1,
            ]),
            1 => f64::from_bits(rng.next()),
            _ => (rng.next() % 100_000) as f64 / 64.0 - 500.0,
        }
    }

    fn scalar(rng: &mut Rng, kind: &Kind, depth: usize) -> Value {
        match kind {
            Kind::Double => Value::F64(float64(rng)),
            Kind::Float => Value::F32(match rng.below(3) {
                0 => f32::from_bits(rng.next() as u32),
                _ => float64(rng) as f32,
            }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(int64(rng) as i32),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(int64(rng)),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(int64(rng) as u32),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(int64(rng) as u64),
            Kind::Bool => Value::Bool(rng.chance(50)),
            Kind::String => Value::String(string(rng)),
            Kind::Bytes => Value::Bytes(
                (0..rng.below(6))
                    .map(|_| rng.next() as u8)
                    .collect::<Vec<_>>()
                    .into(),
            ),
            Kind::Enum(e) => {
                // Closed (proto2) enums cannot hold numbers they do not name.
                let closed = e.parent_file().syntax() == prost_reflect::Syntax::Proto2;
                if closed || rng.chance(80) {
                    let values: Vec<_> = e.values().collect();
                    Value::EnumNumber(rng.pick(&values).number())
                } else {
                    Value::EnumNumber(int64(rng) as i32)
                }
            }
            Kind::Message(m) => Value::Message(message(rng, m, depth + 1)),
        }
    }

    fn key(rng: &mut Rng, kind: &Kind) -> MapKey {
        match scalar(rng, kind, 0) {
            Value::Bool(b) => MapKey::Bool(b),
            Value::I32(n) => MapKey::I32(n),
            Value::I64(n) => MapKey::I64(n),
            Value::U32(n) => MapKey::U32(n),
            Value::U64(n) => MapKey::U64(n),
            Value::String(s) => MapKey::String(s),
            other => panic!("not a map key: {other:?}"),
        }
    }

    /// A message with random fields set; well-known types get values in and out of their text
    /// forms' ranges, Anys pack generated messages, or bytes of types that do not decode.
    fn message(rng: &mut Rng, desc: &MessageDescriptor, depth: usize) -> DynamicMessage {
        let mut msg = DynamicMessage::new(desc.clone());
        match desc.full_name() {
            "google.protobuf.Timestamp" | "google.protobuf.Duration" => {
                let seconds = match rng.below(3) {
                    0 => int64(rng),
                    _ => (rng.next() % 400_000_000_000) as i64 - 100_000_000_000,
                };
                let nanos = match rng.below(4) {
                    0 => int64(rng) as i32,
                    1 => 0,
                    _ => {
                        (rng.next() % 1_000_000_000) as i32
                            * if seconds < 0 && rng.chance(50) { -1 } else { 1 }
                    }
                };
                msg.set_field_by_number(1, Value::I64(seconds));
                msg.set_field_by_number(2, Value::I32(nanos));
                return msg;
            }
            "google.protobuf.FieldMask" => {
                let paths = (0..rng.below(4))
                    .map(|_| {
                        Value::String(
                            rng.pick(&[
                                "a", "foo_bar", "a.b_c.d", "fooBar", "", "x,y", "a__b", "_x", "x_",
                                "a1_b",
                            ])
                            .to_string(),
                        )
                    })
                    .collect();
                msg.set_field_by_number(1, Value::List(paths));
                return msg;
            }
            "google.protobuf.Any" => {
                if depth < 4 && rng.chance(70) {
                    let types = [
                        "test.v1.SubMessage",
                        "test.v1.Message",
                        "google.protobuf.Timestamp",
                        "google.protobuf.StringValue",
                        "google.protobuf.Any",
                        "google.protobuf.Value",
                        "test.v1.AllTypes",
                    ];
                    let packed_desc = desc
                        .parent_pool()
                        .get_message_by_name(rng.pick::<&str>(&types))
                        .unwrap();
                    let packed = message(rng, &packed_desc, depth + 1);
                    msg.set_field_by_number(
                        1,
                        Value::String(format!("type.googleapis.com/{}", packed_desc.full_name())),
                    );
                    msg.set_field_by_number(2, Value::Bytes(packed.encode_to_vec().into()));
                } else if rng.chance(50) {
                    msg.set_field_by_number(
                        1,
                        Value::String(
                            rng.pick(&[
                                "type.googleapis.com/no.Such",
                                "type.googleapis.com/test.v1.SubMessage",
                                "",
                                "x",
                            ])
                            .to_string(),
                        ),
                    );
                    msg.set_field_by_number(2, Value::Bytes(vec![0xff, 0x01].into()));
                }
                return msg;
            }
            _ => {}
        }
        let mut oneofs_done = Vec::new();
        for field in desc.fields() {
            if !rng.chance(if depth > 2 { 25 } else { 55 }) {
                continue;
            }
            if let Some(oneof) = field.containing_oneof() {
                if oneofs_done.contains(&oneof.name().to_owned()) {
                    continue;
                }
                oneofs_done.push(oneof.name().to_owned());
            }
            let kind = field.kind();
            if depth > 4 && matches!(kind, Kind::Message(_)) {
                continue;
            }
            let value = if field.is_map() {
                let Kind::Message(entry) = &kind else {
                    unreachable!()
                };
                let key_kind = entry.map_entry_key_field().kind();
                let value_kind = entry.map_entry_value_field().kind();
                Value::Map(
                    (0..rng.below(4))
                        .map(|_| (key(rng, &key_kind), scalar(rng, &value_kind, depth)))
                        .collect(),
                )
            } else if field.is_list() {
                Value::List(
                    (0..rng.below(4))
                        .map(|_| scalar(rng, &kind, depth))
                        .collect(),
                )
            } else {
                scalar(rng, &kind, depth)
            };
            msg.set_field(&field, value);
        }
        msg
    }

    /// Equal as messages: presence and values field by field, NaN equal to NaN, Anys compared by
    /// their packed messages when those decode.
    fn same_message(a: &DynamicMessage, b: &DynamicMessage) -> bool {
        let desc = a.descriptor();
        if desc != b.descriptor() {
            return false;
        }
        let fields_equal = desc.fields().all(|f| {
            a.has_field(&f) == b.has_field(&f)
                && (!a.has_field(&f) || same_value(&a.get_field(&f), &b.get_field(&f)))
        });
        if fields_equal {
            return true;
        }
        if desc.full_name() == "google.protobuf.Any" {
            let url = |m: &DynamicMessage| {
                m.get_field_by_number(1)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            let bytes = |m: &DynamicMessage| {
                m.get_field_by_number(2)
                    .unwrap()
                    .as_bytes()
                    .unwrap()
                    .clone()
            };
            let Some(packed) = url(a)
                .rsplit_once('/')
                .and_then(|(_, n)| desc.parent_pool().get_message_by_name(n))
            else {
                return false;
            };
            return url(a) == url(b)
                && match (
                    DynamicMessage::decode(packed.clone(), bytes(a)),
                    DynamicMessage::decode(packed, bytes(b)),
                ) {
                    (Ok(x), Ok(y)) => same_message(&x, &y),
                    _ => false,
                };
        }
        false
    }

    fn same_value(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::F64(x), Value::F64(y)) => {
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
            }
            (Value::F32(x), Value::F32(y)) => {
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
            }
            (Value::Message(x), Value::Message(y)) => same_message(x, y),
            (Value::List(x), Value::List(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
            }
            (Value::Map(x), Value::Map(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
            }
            _ => a == b,
        }
    }

    #[test]
    fn round_trip_of_generated_messages() {
        let types: Vec<MessageDescriptor> = pool()
            .all_messages()
            .filter(|m| !m.is_map_entry())
            .filter(|m| {
                m.package_name() == "test.v1"
                    || m.package_name() == "google.protobuf"
                    || m.package_name() == "google.api"
            })
            .collect();
        let all = all_types();
        let mut rng = Rng(0x5eed);
        for case in 0..3000 {
            let desc = if case % 3 == 0 {
                rng.pick(&types).clone()
            } else {
                all.clone()
            };
            let msg = message(&mut rng, &desc, 0);
            let opts = JsonOptions {
                use_proto_names: case % 4 == 1,
                pretty: case % 5 == 2,
                ..JsonOptions::default()
            };
            let mut out = Vec::new();
            encode_message(&msg, &opts, &mut out);
            let back = decode_message(desc.clone(), &out, &opts).unwrap_or_else(|err| {
                panic!(
                    "case {case}: {} does not read back: {err}\n{}",
                    desc.full_name(),
                    String::from_utf8_lossy(&out)
                )
            });
            assert!(
                same_message(&msg, &back),
                "case {case}: {} changed\n{}\nwas:  {msg:?}\nnow:  {back:?}",
                desc.full_name(),
                String::from_utf8_lossy(&out)
            );
        }
    }
}
