//! Binds URL path variables and query parameters into a request message, following
//! `google/api/http.proto` and grpc-gateway v2.
//!
//! Field paths are resolved once, when routes are built ([`resolve`], [`resolve_variable`]);
//! per request, [`set_path_value`] binds each path variable and [`bind_query`] binds the query
//! string. Every malformed input becomes a [`BindError`]; nothing here panics.

use std::collections::HashSet;
use std::fmt;
use std::num::{IntErrorKind, ParseIntError};
use std::str::FromStr;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage as _, Syntax, Value,
};

/// How request values are bound; the default matches grpc-gateway v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOptions {
    /// What to do with a query parameter that names no field.
    pub unknown_query: UnknownQuery,
    /// Whether `+` in the query string means a space (as in HTML forms and grpc-gateway).
    pub plus_as_space: bool,
    /// Whether enum value names also match ASCII case-insensitively (exact matches win).
    pub case_insensitive_enums: bool,
}

impl Default for BindOptions {
    fn default() -> Self {
        Self {
            unknown_query: UnknownQuery::Ignore,
            plus_as_space: true,
            case_insensitive_enums: false,
        }
    }
}

/// Policy for query parameters that name no field of the request message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UnknownQuery {
    /// Skip them silently, as grpc-gateway does.
    #[default]
    Ignore,
    /// Fail the request, except for the parameter names listed (for example `access_token`).
    Reject {
        /// Whole parameter names (after percent-decoding) that are skipped even when unknown.
        always_ignored: Vec<String>,
    },
}

/// A dotted field path (`a.b.c`) resolved against a message type; every intermediate field is a
/// singular message field, so walking it from a message of the root type cannot fail.
#[derive(Clone, PartialEq, Eq)]
pub struct FieldPath {
    root: MessageDescriptor,
    // Invariant: not empty; `fields[i + 1]` belongs to the message type of `fields[i]`.
    fields: Vec<FieldDescriptor>,
}

impl FieldPath {
    /// The message type the path starts from.
    pub fn root(&self) -> &MessageDescriptor {
        &self.root
    }

    /// The fields from the root to the leaf; never empty.
    pub fn fields(&self) -> &[FieldDescriptor] {
        &self.fields
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&join_names(&self.fields))
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldPath({}: {self})", self.root.full_name())
    }
}

/// A field path from configuration or an `http` annotation that does not fit the message; raised
/// while routes are built, so it is a configuration error, never a client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty or has an empty segment (`a..b`).
    #[error("field path {path:?} is empty or has an empty segment")]
    Empty {
        /// The path as written.
        path: String,
    },
    /// A segment matches neither a proto name nor a JSON name.
    #[error("field path {path:?}: message {message} has no field {segment:?}")]
    NoSuchField {
        /// The path as written.
        path: String,
        /// The segment that did not match.
        segment: String,
        /// The message type searched.
        message: String,
    },
    /// A segment other than the last is not a singular message field.
    #[error("field path {path:?}: cannot continue through {field:?}, {what}")]
    NotTraversable {
        /// The path as written.
        path: String,
        /// The field that blocks the walk.
        field: String,
        /// What the field is, for example "a repeated field".
        what: String,
    },
    /// The leaf cannot take a single string value (used as a path variable).
    #[error("field path {path:?} cannot be a path variable: the leaf is {what}")]
    NotBindable {
        /// The path as written.
        path: String,
        /// What the leaf is, for example "a map field".
        what: String,
    },
}

/// Why a path variable or query parameter could not be bound. Every variant except
/// [`BindError::Internal`] is the client's fault (HTTP 400, gRPC `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The text does not parse as the field's type.
    #[error("invalid value for field {field:?}: {reason}")]
    InvalidValue {
        /// Field path in proto names; map entries read `field[key]`.
        field: String,
        /// What was expected and what was received.
        reason: String,
    },
    /// A singular field (or one map key) was given more than once.
    #[error("too many values for field {field:?}")]
    TooManyValues {
        /// Field path in proto names.
        field: String,
    },
    /// The leaf is a message type that has no string form.
    #[error("cannot bind a value to message field {field:?} of type {message}")]
    MessageField {
        /// Field path in proto names.
        field: String,
        /// Full name of the message type.
        message: String,
    },
    /// Setting the field would clear another member of its oneof.
    #[error("field {field:?} cannot be set: {other:?} of oneof {oneof:?} is already set")]
    OneofConflict {
        /// Field path in proto names.
        field: String,
        /// Name of the oneof.
        oneof: String,
        /// The member already set.
        other: String,
    },
    /// With [`UnknownQuery::Reject`], a parameter that names no field.
    #[error("unknown query parameter {name:?}")]
    UnknownParameter {
        /// The parameter name, percent-decoded.
        name: String,
    },
    /// The parameter name has a shape the field does not allow (through a scalar or repeated
    /// field, `[key]` on a non-map, a map without `[key]`).
    #[error("invalid query parameter {name:?}: {reason}")]
    InvalidParameter {
        /// The parameter name, percent-decoded.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Bad percent-encoding, or bytes that are not UTF-8 once decoded.
    #[error("malformed query parameter {name:?}: {reason}")]
    MalformedQuery {
        /// The parameter name as received (still encoded).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A gateway bug, not the client's: a [`FieldPath`] used with a message of another type.
    #[error("internal error binding field {field:?}: {detail}")]
    Internal {
        /// Field path in proto names.
        field: String,
        /// What went wrong.
        detail: String,
    },
}

impl BindError {
    /// The field path or parameter name the error is about.
    pub fn field(&self) -> &str {
        match self {
            Self::InvalidValue { field, .. }
            | Self::TooManyValues { field }
            | Self::MessageField { field, .. }
            | Self::OneofConflict { field, .. }
            | Self::Internal { field, .. } => field,
            Self::UnknownParameter { name }
            | Self::InvalidParameter { name, .. }
            | Self::MalformedQuery { name, .. } => name,
        }
    }

    /// Whether the request was at fault (everything but [`BindError::Internal`]).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Internal { .. })
    }
}

/// Resolves `dotted` against `desc`, matching each segment by proto name or JSON name. Use it
/// for body fields and excluded paths; the leaf may be of any kind.
pub fn resolve(desc: &MessageDescriptor, dotted: &str) -> Result<FieldPath, PathError> {
    let mut message = desc.clone();
    let mut fields: Vec<FieldDescriptor> = Vec::new();
    for segment in dotted.split('.') {
        if segment.is_empty() {
            return Err(PathError::Empty {
                path: dotted.to_owned(),
            });
        }
        if let Some(parent) = fields.last() {
            message = match parent.kind() {
                Kind::Message(inner) if !parent.is_list() && !parent.is_map() => inner,
                _ => {
                    return Err(PathError::NotTraversable {
                        path: dotted.to_owned(),
                        field: parent.name().to_owned(),
                        what: describe(parent),
                    })
                }
            };
        }
        let field = lookup(&message, segment).ok_or_else(|| PathError::NoSuchField {
            path: dotted.to_owned(),
            segment: segment.to_owned(),
            message: message.full_name().to_owned(),
        })?;
        fields.push(field);
    }
    Ok(FieldPath {
        root: desc.clone(),
        fields,
    })
}

/// Resolves a path variable's field path: like [`resolve`], and the leaf must take one string
/// value (a singular scalar, enum or well-known type with a string form), so a route whose
/// variable could never bind is refused when the table is built.
pub fn resolve_variable(desc: &MessageDescriptor, dotted: &str) -> Result<FieldPath, PathError> {
    let path = resolve(desc, dotted)?;
    if let Some(leaf) = path.fields.last() {
        let bindable = !leaf.is_list()
            && !leaf.is_map()
            && match leaf.kind() {
                Kind::Message(message) => well_known(message.full_name()).is_some(),
                _ => true,
            };
        if !bindable {
            return Err(PathError::NotBindable {
                path: dotted.to_owned(),
                what: describe(leaf),
            });
        }
    }
    Ok(path)
}

/// Binds one path variable (already percent-decoded) to `path`, creating intermediate messages.
/// A repeated leaf gets the value appended; a map leaf is refused.
pub fn set_path_value(
    msg: &mut DynamicMessage,
    path: &FieldPath,
    value: &str,
    opts: &BindOptions,
) -> Result<(), BindError> {
    let field = path.to_string();
    check_root(msg, path)?;
    let Some((leaf, parents)) = path.fields.split_last() else {
        return Err(internal(field, "empty field path"));
    };
    if leaf.is_map() {
        return Err(BindError::InvalidValue {
            field,
            reason: "a map field cannot take a single value".to_owned(),
        });
    }
    let parsed = parse_value(&leaf.kind(), value, opts).map_err(|r| r.into_error(&field))?;
    let target = descend(msg, parents, &field)?;
    check_oneof(target, leaf, &field)?;
    store(target, leaf, parsed, &field)
}

/// Binds a raw query string (as in `Uri::query`, without `?`) into `msg`, in order.
///
/// Parameters whose field path equals, lies under, or is a prefix of an `excluded` path (the
/// fields bound by path variables and the body) are skipped. Call it after the body and path
/// variables are bound, and not at all when the body is `*`.
pub fn bind_query(
    msg: &mut DynamicMessage,
    raw_query: &str,
    excluded: &[FieldPath],
    opts: &BindOptions,
) -> Result<(), BindError> {
    for path in excluded {
        check_root(msg, path)?;
    }
    let root = msg.descriptor();
    let mut seen = HashSet::new();
    for pair in raw_query.split('&') {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let malformed = |reason: &str| BindError::MalformedQuery {
            name: echo(raw_name),
            reason: reason.to_owned(),
        };
        let name = decode_component(raw_name, opts.plus_as_space).map_err(malformed)?;
        if name.is_empty() {
            continue;
        }
        let value = decode_component(raw_value, opts.plus_as_space).map_err(malformed)?;
        bind_param(msg, &root, &name, &value, excluded, opts, &mut seen)?;
    }
    Ok(())
}

/// Fields already bound by this query, to refuse a second value for a singular field or map key.
type Seen = HashSet<(String, Option<MapKey>)>;

/// Outcome of walking a parameter name through the message types.
enum Walk {
    /// Every segment names a field.
    Found(Vec<FieldDescriptor>),
    /// A segment names no field; holds the fields resolved before it.
    Unknown(Vec<FieldDescriptor>),
    /// More segments follow a field that is not a singular message; holds the fields up to and
    /// including that one.
    Blocked(Vec<FieldDescriptor>),
}

fn walk(root: &MessageDescriptor, segments: &str) -> Walk {
    let mut message = root.clone();
    let mut fields: Vec<FieldDescriptor> = Vec::new();
    for segment in segments.split('.') {
        if let Some(parent) = fields.last() {
            message = match parent.kind() {
                Kind::Message(inner) if !parent.is_list() && !parent.is_map() => inner,
                _ => return Walk::Blocked(fields),
            };
        }
        match lookup(&message, segment) {
            Some(field) => fields.push(field),
            None => return Walk::Unknown(fields),
        }
    }
    Walk::Found(fields)
}

fn bind_param(
    msg: &mut DynamicMessage,
    root: &MessageDescriptor,
    name: &str,
    value: &str,
    excluded: &[FieldPath],
    opts: &BindOptions,
    seen: &mut Seen,
) -> Result<(), BindError> {
    // `labels[key]` addresses one map entry; field names never contain `[`.
    let (dotted, key) = match name.strip_suffix(']').and_then(|n| n.split_once('[')) {
        Some((dotted, key)) => (dotted, Some(key)),
        None => (name, None),
    };
    let under_excluded =
        |prefix: &[FieldDescriptor]| excluded.iter().any(|ex| prefix.starts_with(&ex.fields));
    let fields = match walk(root, dotted) {
        Walk::Found(fields) => fields,
        Walk::Unknown(prefix) if under_excluded(&prefix) => return Ok(()),
        Walk::Unknown(_) => return unknown_parameter(name, opts),
        Walk::Blocked(prefix) if under_excluded(&prefix) => return Ok(()),
        Walk::Blocked(prefix) => {
            let reason = match prefix.last() {
                Some(last) => format!(
                    "cannot continue through {:?}, {}",
                    join_names(&prefix),
                    describe(last)
                ),
                None => "empty field path".to_owned(),
            };
            return Err(invalid_parameter(name, reason));
        }
    };
    let related = |ex: &FieldPath| fields.starts_with(&ex.fields) || ex.fields.starts_with(&fields);
    if excluded.iter().any(related) {
        return Ok(());
    }
    let Some((leaf, parents)) = fields.split_last() else {
        return Err(invalid_parameter(name, "empty field path".to_owned()));
    };
    let path = join_names(&fields);

    match (leaf.kind(), key) {
        (Kind::Message(entry), Some(key)) if leaf.is_map() => {
            let field = format!("{path}[{}]", echo(key));
            let map_key = parse_value(&entry.map_entry_key_field().kind(), key, opts)
                .map_err(|r| r.into_error(&field))?
                .into_map_key()
                .ok_or_else(|| internal(field.clone(), "map key type is not a valid key"))?;
            let parsed = parse_value(&entry.map_entry_value_field().kind(), value, opts)
                .map_err(|r| r.into_error(&field))?;
            if !seen.insert((path, Some(map_key.clone()))) {
                return Err(BindError::TooManyValues { field });
            }
            let target = descend(msg, parents, &field)?;
            match target.get_field_mut(leaf) {
                Value::Map(map) => {
                    map.insert(map_key, parsed);
                    Ok(())
                }
                _ => Err(internal(field, "map field holds no map")),
            }
        }
        _ if leaf.is_map() => Err(invalid_parameter(
            name,
            format!("map field {path:?} takes one entry per parameter: {path}[key]=value"),
        )),
        (_, Some(_)) => Err(invalid_parameter(
            name,
            format!(
                "{path:?} is {}, not a map, so it takes no [key]",
                describe(leaf)
            ),
        )),
        (kind, None) => {
            let parsed = parse_value(&kind, value, opts).map_err(|r| r.into_error(&path))?;
            if !leaf.is_list() && !seen.insert((path.clone(), None)) {
                return Err(BindError::TooManyValues { field: path });
            }
            let target = descend(msg, parents, &path)?;
            check_oneof(target, leaf, &path)?;
            store(target, leaf, parsed, &path)
        }
    }
}

fn unknown_parameter(name: &str, opts: &BindOptions) -> Result<(), BindError> {
    match &opts.unknown_query {
        UnknownQuery::Ignore => Ok(()),
        UnknownQuery::Reject { always_ignored } if always_ignored.iter().any(|n| n == name) => {
            Ok(())
        }
        UnknownQuery::Reject { .. } => Err(BindError::UnknownParameter { name: echo(name) }),
    }
}

fn invalid_parameter(name: &str, reason: String) -> BindError {
    BindError::InvalidParameter {
        name: echo(name),
        reason,
    }
}

fn internal(field: String, detail: &str) -> BindError {
    BindError::Internal {
        field,
        detail: detail.to_owned(),
    }
}

fn check_root(msg: &DynamicMessage, path: &FieldPath) -> Result<(), BindError> {
    if msg.descriptor() == path.root {
        Ok(())
    } else {
        Err(BindError::Internal {
            field: path.to_string(),
            detail: format!(
                "path resolved against {} used with {}",
                path.root.full_name(),
                msg.descriptor().full_name()
            ),
        })
    }
}

/// Walks `parents` (singular message fields) from `msg`, creating messages as needed.
fn descend<'m>(
    msg: &'m mut DynamicMessage,
    parents: &[FieldDescriptor],
    field: &str,
) -> Result<&'m mut DynamicMessage, BindError> {
    let mut current = msg;
    for parent in parents {
        check_oneof(current, parent, field)?;
        current = match current.get_field_mut(parent) {
            Value::Message(inner) => inner,
            _ => {
                return Err(internal(
                    field.to_owned(),
                    "intermediate field is not a message",
                ))
            }
        };
    }
    Ok(current)
}

/// Refuses to set a oneof member while another member is set (grpc-gateway does the same).
fn check_oneof(msg: &DynamicMessage, field: &FieldDescriptor, path: &str) -> Result<(), BindError> {
    let Some(oneof) = field.containing_oneof() else {
        return Ok(());
    };
    let other = oneof.fields().find(|f| f != field && msg.has_field(f));
    match other {
        Some(other) => Err(BindError::OneofConflict {
            field: path.to_owned(),
            oneof: oneof.name().to_owned(),
            other: other.name().to_owned(),
        }),
        None => Ok(()),
    }
}

/// Sets a singular leaf or appends to a repeated one.
fn store(
    msg: &mut DynamicMessage,
    leaf: &FieldDescriptor,
    value: Value,
    field: &str,
) -> Result<(), BindError> {
    if leaf.is_list() {
        match msg.get_field_mut(leaf) {
            Value::List(list) => {
                list.push(value);
                Ok(())
            }
            _ => Err(internal(field.to_owned(), "repeated field holds no list")),
        }
    } else {
        msg.try_set_field(leaf, value)
            .map_err(|_| internal(field.to_owned(), "value does not fit the field type"))
    }
}

fn lookup(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

fn join_names(fields: &[FieldDescriptor]) -> String {
    let names: Vec<&str> = fields.iter().map(FieldDescriptor::name).collect();
    names.join(".")
}

fn describe(field: &FieldDescriptor) -> String {
    if field.is_map() {
        "a map field".to_owned()
    } else if field.is_list() {
        "a repeated field".to_owned()
    } else {
        let kind = kind_name(&field.kind());
        let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {kind} field")
    }
}

fn kind_name(kind: &Kind) -> String {
    let name = match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(message) => message.full_name(),
        Kind::Enum(enumeration) => enumeration.full_name(),
    };
    name.to_owned()
}

/// Longest piece of client text echoed back in an error, in characters.
const MAX_ECHO: usize = 64;

/// Client text shortened for error messages.
fn echo(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// Client text shortened and quoted for error messages.
fn quoted(text: &str) -> String {
    format!("{:?}", echo(text))
}

/// Percent-decodes one query name or value; invalid escapes and non-UTF-8 results are refused,
/// as Go's `url.ParseQuery` does.
fn decode_component(raw: &str, plus_as_space: bool) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let hex = |at: usize| bytes.get(at).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return Err("invalid percent-encoding");
            }
        }
    }
    // `+` is replaced before decoding, so an encoded `%2B` stays a plus sign.
    let spaced;
    let raw = if plus_as_space && raw.contains('+') {
        spaced = raw.replace('+', " ");
        spaced.as_str()
    } else {
        raw
    };
    percent_decode_str(raw)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "not UTF-8 after percent-decoding")
}

/// Why a value did not parse; turned into a [`BindError`] once the field path is known.
enum Reason {
    Invalid(String),
    Message(String),
}

impl Reason {
    fn into_error(self, field: &str) -> BindError {
        match self {
            Self::Invalid(reason) => BindError::InvalidValue {
                field: field.to_owned(),
                reason,
            },
            Self::Message(message) => BindError::MessageField {
                field: field.to_owned(),
                message,
            },
        }
    }
}

/// Parses `text` as one scalar or enum value of `kind` the way a query parameter is read (enums by
/// exact name or number), so the XML mapping reads values exactly as query binding does.
pub(super) fn parse_scalar(kind: &Kind, text: &str) -> Result<Value, String> {
    match parse_value(kind, text, &BindOptions::default()) {
        Ok(value) => Ok(value),
        Err(Reason::Invalid(reason)) => Err(reason),
        Err(Reason::Message(message)) => Err(format!("{message} has no text form")),
    }
}

/// Parses `text` as one value of `kind`.
fn parse_value(kind: &Kind, text: &str, opts: &BindOptions) -> Result<Value, Reason> {
    let value = match kind {
        Kind::Double => Value::F64(parse_f64(text)?),
        Kind::Float => Value::F32(parse_f32(text)?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(parse_int(text, kind)?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(parse_int(text, kind)?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(parse_int(text, kind)?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(parse_int(text, kind)?),
        Kind::Bool => Value::Bool(parse_bool(text)?),
        Kind::String => Value::String(text.to_owned()),
        Kind::Bytes => Value::Bytes(parse_bytes(text)?.into()),
        Kind::Enum(enumeration) => {
            Value::EnumNumber(parse_enum(enumeration, text, opts.case_insensitive_enums)?)
        }
        Kind::Message(message) => Value::Message(parse_message(message, text, opts)?),
    };
    Ok(value)
}

fn parse_bool(text: &str) -> Result<bool, Reason> {
    // The set Go's strconv.ParseBool accepts.
    match text {
        "1" | "t" | "T" | "true" | "True" | "TRUE" => Ok(true),
        "0" | "f" | "F" | "false" | "False" | "FALSE" => Ok(false),
        _ => Err(Reason::Invalid(format!(
            "expected boolean (true or false), got {}",
            quoted(text)
        ))),
    }
}

fn parse_int<T: FromStr<Err = ParseIntError>>(text: &str, kind: &Kind) -> Result<T, Reason> {
    text.parse::<T>().map_err(|err| {
        let negative = text
            .strip_prefix('-')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
        match err.kind() {
            IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => Reason::Invalid(format!(
                "{} is out of range for {}",
                quoted(text),
                kind_name(kind)
            )),
            // Only unsigned types refuse a well-formed negative number.
            _ if negative => Reason::Invalid(format!(
                "{} is out of range for {}",
                quoted(text),
                kind_name(kind)
            )),
            _ => Reason::Invalid(format!("expected integer, got {}", quoted(text))),
        }
    })
}

/// Text that may be handed to Rust's float parser: plain decimal with an optional exponent.
/// This keeps out `inf`, `nan` and the other spellings that are not proto3 JSON.
fn is_decimal(text: &str) -> bool {
    text.bytes().any(|b| b.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
}

fn parse_f64(text: &str) -> Result<f64, Reason> {
    match text {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => match text.parse::<f64>() {
            Ok(v) if is_decimal(text) && v.is_finite() => Ok(v),
            Ok(_) if is_decimal(text) => Err(Reason::Invalid(format!(
                "{} is out of range for double",
                quoted(text)
            ))),
            _ => Err(Reason::Invalid(format!(
                "expected number, got {}",
                quoted(text)
            ))),
        },
    }
}

fn parse_f32(text: &str) -> Result<f32, Reason> {
    match text {
        "NaN" => Ok(f32::NAN),
        "Infinity" => Ok(f32::INFINITY),
        "-Infinity" => Ok(f32::NEG_INFINITY),
        _ => match text.parse::<f32>() {
            Ok(v) if is_decimal(text) && v.is_finite() => Ok(v),
            Ok(_) if is_decimal(text) => Err(Reason::Invalid(format!(
                "{} is out of range for float",
                quoted(text)
            ))),
            _ => Err(Reason::Invalid(format!(
                "expected number, got {}",
                quoted(text)
            ))),
        },
    }
}

/// Decoding config shared by both alphabets: padding optional, non-zero trailing bits allowed
/// (as Go's non-strict decoders do).
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

fn parse_bytes(text: &str) -> Result<Vec<u8>, Reason> {
    if let Ok(bytes) = STANDARD_LENIENT.decode(text) {
        return Ok(bytes);
    }
    if let Ok(bytes) = URL_SAFE_LENIENT.decode(text) {
        return Ok(bytes);
    }
    // A standard-alphabet `+` sent unencoded in a query arrives as a space; a space is never
    // base64, so reading it back as `+` is unambiguous.
    if text.contains(' ') {
        if let Ok(bytes) = STANDARD_LENIENT.decode(text.replace(' ', "+")) {
            return Ok(bytes);
        }
    }
    Err(Reason::Invalid(format!(
        "expected base64 (standard or URL-safe alphabet), got {}",
        quoted(text)
    )))
}

fn parse_enum(
    enumeration: &EnumDescriptor,
    text: &str,
    case_insensitive: bool,
) -> Result<i32, Reason> {
    if let Some(value) = enumeration.get_value_by_name(text) {
        return Ok(value.number());
    }
    if case_insensitive {
        let mut matches = enumeration
            .values()
            .filter(|v| v.name().eq_ignore_ascii_case(text));
        match (matches.next(), matches.next()) {
            (Some(value), None) => return Ok(value.number()),
            (Some(_), Some(_)) => {
                return Err(Reason::Invalid(format!(
                    "{} matches several values of {} when case is ignored",
                    quoted(text),
                    enumeration.full_name()
                )))
            }
            _ => {}
        }
    }
    let is_integer = {
        let digits = text.strip_prefix('-').unwrap_or(text);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    if is_integer {
        let Ok(number) = text.parse::<i32>() else {
            return Err(Reason::Invalid(format!(
                "{} is out of range for enum {}",
                quoted(text),
                enumeration.full_name()
            )));
        };
        // proto3 enums are open: any number is kept. proto2 enums are closed.
        let open = enumeration.parent_file().syntax() == Syntax::Proto3;
        if open || enumeration.get_value(number).is_some() {
            return Ok(number);
        }
        return Err(Reason::Invalid(format!(
            "{number} is not a value of closed enum {}",
            enumeration.full_name()
        )));
    }
    Err(Reason::Invalid(format!(
        "expected a value name or number of enum {}, got {}",
        enumeration.full_name(),
        quoted(text)
    )))
}

/// Well-known message types that have a string form in a URL.
#[derive(Clone, Copy)]
enum WellKnown {
    /// Parsed by prost-reflect's proto3 JSON support; the text says what form is expected.
    JsonString(&'static str),
    /// A wrapper: the text is the inner `value` field's scalar.
    Wrapper,
    /// `google.protobuf.Value`: JSON if it parses, else a string.
    Value,
    /// `google.protobuf.FieldMask`: comma-separated paths, see [`mask_path`].
    FieldMask,
}

fn well_known(full_name: &str) -> Option<WellKnown> {
    let known = match full_name {
        "google.protobuf.Timestamp" => WellKnown::JsonString("an RFC 3339 timestamp"),
        "google.protobuf.Duration" => WellKnown::JsonString("a duration such as \"1.5s\""),
        "google.protobuf.FieldMask" => WellKnown::FieldMask,
        "google.protobuf.DoubleValue"
        | "google.protobuf.FloatValue"
        | "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.Int32Value"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.BoolValue"
        | "google.protobuf.StringValue"
        | "google.protobuf.BytesValue" => WellKnown::Wrapper,
        "google.protobuf.Value" => WellKnown::Value,
        _ => return None,
    };
    Some(known)
}

fn parse_message(
    message: &MessageDescriptor,
    text: &str,
    opts: &BindOptions,
) -> Result<DynamicMessage, Reason> {
    match well_known(message.full_name()) {
        Some(WellKnown::JsonString(expected)) => {
            let json = serde_json::Value::String(text.to_owned());
            DynamicMessage::deserialize(message.clone(), json)
                .map_err(|_| Reason::Invalid(format!("expected {expected}, got {}", quoted(text))))
        }
        Some(WellKnown::Wrapper) => {
            let Some(inner) = message.get_field_by_name("value") else {
                return Err(Reason::Message(message.full_name().to_owned()));
            };
            let value = parse_value(&inner.kind(), text, opts)?;
            let mut wrapper = DynamicMessage::new(message.clone());
            wrapper
                .try_set_field(&inner, value)
                .map_err(|_| Reason::Message(message.full_name().to_owned()))?;
            Ok(wrapper)
        }
        Some(WellKnown::Value) => {
            let json = serde_json::from_str::<serde_json::Value>(text)
                .unwrap_or_else(|_| serde_json::Value::String(text.to_owned()));
            DynamicMessage::deserialize(message.clone(), json).map_err(|_| {
                Reason::Invalid(format!("expected a JSON value, got {}", quoted(text)))
            })
        }
        Some(WellKnown::FieldMask) => {
            let not_a_mask = || Reason::Message(message.full_name().to_owned());
            let field = message.get_field_by_name("paths").ok_or_else(not_a_mask)?;
            let paths = text
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(mask_path(p)))
                .collect();
            let mut mask = DynamicMessage::new(message.clone());
            mask.try_set_field(&field, Value::List(paths))
                .map_err(|_| not_a_mask())?;
            Ok(mask)
        }
        None => Err(Reason::Message(message.full_name().to_owned())),
    }
}

/// One field mask path from a query: grpc-gateway takes paths as written, normally in proto names
/// (`sub_field.count`); a segment in the lowerCamelCase JSON form (`subField`) is turned into the
/// proto name, as the JSON mapping of FieldMask does.
pub(super) fn mask_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for (i, segment) in path.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if segment.contains('_') {
            out.push_str(segment);
            continue;
        }
        for c in segment.chars() {
            if c.is_ascii_uppercase() {
                out.push('_');
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use std::sync::OnceLock;

    use prost_reflect::DescriptorPool;
    use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
    use serde_json::json;

    use super::*;

    const TEST_PROTO: &str = r#"
syntax = "proto3";
package bindtest;

import "google/protobuf/duration.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
import "legacy.proto";

enum Color {
  COLOR_UNSPECIFIED = 0;
  RED = 1;
  GREEN = 2;
}

message Inner {
  string note = 1;
  int64 big = 2;
}

message Item {
  int32 quantity = 1;
  string sku = 2;
  Inner inner = 3;
}

message Order {
  repeated Item items = 1;
  Item first = 2;
}

message Everything {
  double f_double = 1;
  float f_float = 2;
  int32 f_int32 = 3;
  int64 f_int64 = 4;
  uint32 f_uint32 = 5;
  uint64 f_uint64 = 6;
  sint32 f_sint32 = 7;
  sint64 f_sint64 = 8;
  fixed32 f_fixed32 = 9;
  fixed64 f_fixed64 = 10;
  sfixed32 f_sfixed32 = 11;
  sfixed64 f_sfixed64 = 12;
  bool f_bool = 13;
  string f_string = 14;
  bytes f_bytes = 15;
  Color f_enum = 16;
  Item f_item = 17;

  repeated double r_double = 21;
  repeated float r_float = 22;
  repeated int32 r_int32 = 23;
  repeated int64 r_int64 = 24;
  repeated uint32 r_uint32 = 25;
  repeated uint64 r_uint64 = 26;
  repeated sint32 r_sint32 = 27;
  repeated sint64 r_sint64 = 28;
  repeated fixed32 r_fixed32 = 29;
  repeated fixed64 r_fixed64 = 30;
  repeated sfixed32 r_sfixed32 = 31;
  repeated sfixed64 r_sfixed64 = 32;
  repeated bool r_bool = 33;
  repeated string r_string = 34;
  repeated bytes r_bytes = 35;
  repeated Color r_enum = 36;
  repeated Item r_item = 37;

  map<string, int32> labels = 40;
  map<int64, string> names = 41;
  map<string, Color> colors = 42;

  google.protobuf.Timestamp ts = 50;
  google.protobuf.Duration dur = 51;
  google.protobuf.FieldMask mask = 52;
  google.protobuf.DoubleValue w_double = 53;
  google.protobuf.FloatValue w_float = 54;
  google.protobuf.Int64Value w_int64 = 55;
  google.protobuf.UInt64Value w_uint64 = 56;
  google.protobuf.Int32Value w_int32 = 57;
  google.protobuf.UInt32Value w_uint32 = 58;
  google.protobuf.BoolValue w_bool = 59;
  google.protobuf.StringValue w_string = 60;
  google.protobuf.BytesValue w_bytes = 61;
  google.protobuf.Value any_value = 62;
  google.protobuf.Struct st = 63;
  repeated google.protobuf.Timestamp r_ts = 64;

  oneof choice {
    string by_name = 70;
    int32 by_id = 71;
    Item by_item = 72;
  }

  string renamed = 80 [json_name = "customName"];
  legacy.Legacy legacy = 81;
  Order order = 82;
  optional int32 opt = 83;
}
"#;

    const LEGACY_PROTO: &str = r#"
syntax = "proto2";
package legacy;

enum Level {
  LOW = 1;
  HIGH = 2;
}

message Legacy {
  optional Level level = 1;
}
"#;

    struct Inline;

    impl FileResolver for Inline {
        fn open_file(&self, name: &str) -> Result<File, protox::Error> {
            match name {
                "test.proto" => File::from_source(name, TEST_PROTO),
                "legacy.proto" => File::from_source(name, LEGACY_PROTO),
                _ => Err(protox::Error::file_not_found(name)),
            }
        }
    }

    fn everything() -> MessageDescriptor {
        static POOL: OnceLock<DescriptorPool> = OnceLock::new();
        let pool = POOL.get_or_init(|| {
            let mut resolver = ChainFileResolver::new();
            resolver.add(Inline);
            resolver.add(GoogleFileResolver::new());
            let mut compiler = protox::Compiler::with_file_resolver(resolver);
            compiler
                .open_file("test.proto")
                .expect("test proto compiles");
            compiler.descriptor_pool()
        });
        pool.get_message_by_name("bindtest.Everything")
            .expect("Everything is defined")
    }

    fn to_json(msg: &DynamicMessage) -> serde_json::Value {
        serde_json::to_value(msg).expect("message serializes")
    }

    fn bind_with(
        query: &str,
        excluded: &[&str],
        opts: &BindOptions,
    ) -> Result<serde_json::Value, BindError> {
        let desc = everything();
        let excluded: Vec<FieldPath> = excluded
            .iter()
            .map(|p| resolve(&desc, p).expect("excluded path resolves"))
            .collect();
        let mut msg = DynamicMessage::new(desc);
        bind_query(&mut msg, query, &excluded, opts)?;
        Ok(to_json(&msg))
    }

    fn bind(query: &str) -> Result<serde_json::Value, BindError> {
        bind_with(query, &[], &BindOptions::default())
    }

    fn reject(always_ignored: &[&str]) -> BindOptions {
        BindOptions {
            unknown_query: UnknownQuery::Reject {
                always_ignored: always_ignored.iter().map(|s| s.to_string()).collect(),
            },
            ..BindOptions::default()
        }
    }

    #[test]
    fn good_values() {
        let cases: &[(&str, serde_json::Value)] = &[
            // Floating point.
            ("f_double=1.5", json!({"fDouble": 1.5})),
            ("fDouble=-2e3", json!({"fDouble": -2000.0})),
            ("f_double=NaN", json!({"fDouble": "NaN"})),
            ("f_double=Infinity", json!({"fDouble": "Infinity"})),
            ("f_double=-Infinity", json!({"fDouble": "-Infinity"})),
            ("f_float=0.25", json!({"fFloat": 0.25})),
            ("f_float=-Infinity", json!({"fFloat": "-Infinity"})),
            // 32-bit integers.
            ("f_int32=-42", json!({"fInt32": -42})),
            ("f_int32=2147483647", json!({"fInt32": 2147483647})),
            ("f_int32=-2147483648", json!({"fInt32": -2147483648i64})),
            ("f_uint32=4294967295", json!({"fUint32": 4294967295u32})),
            ("f_sint32=-7", json!({"fSint32": -7})),
            ("f_fixed32=7", json!({"fFixed32": 7})),
            ("f_sfixed32=-7", json!({"fSfixed32": -7})),
            // 64-bit integers keep full precision (JSON renders them as strings).
            (
                "f_int64=9223372036854775807",
                json!({"fInt64": "9223372036854775807"}),
            ),
            (
                "f_int64=-9223372036854775808",
                json!({"fInt64": "-9223372036854775808"}),
            ),
            (
                "f_uint64=18446744073709551615",
                json!({"fUint64": "18446744073709551615"}),
            ),
            (
                "f_sint64=-9007199254740993",
                json!({"fSint64": "-9007199254740993"}),
            ),
            (
                "f_fixed64=9007199254740993",
                json!({"fFixed64": "9007199254740993"}),
            ),
            ("f_sfixed64=-1", json!({"fSfixed64": "-1"})),
            // Booleans: Go's strconv.ParseBool set.
            ("f_bool=true", json!({"fBool": true})),
            ("f_bool=True", json!({"fBool": true})),
            ("f_bool=TRUE", json!({"fBool": true})),
            ("f_bool=t", json!({"fBool": true})),
            ("f_bool=T", json!({"fBool": true})),
            ("f_bool=1", json!({"fBool": true})),
            ("f_bool=false&f_int32=1", json!({"fInt32": 1})),
            (
                "f_bool=0&r_bool=0&r_bool=f&r_bool=F&r_bool=False&r_bool=FALSE",
                json!({"rBool": [false, false, false, false, false]}),
            ),
            // Strings, percent-decoding and plus-as-space.
            ("f_string=hello+world", json!({"fString": "hello world"})),
            ("f_string=a%2Bb", json!({"fString": "a+b"})),
            ("f_string=%E2%9C%93%20ok", json!({"fString": "\u{2713} ok"})),
            ("f_string=a=b", json!({"fString": "a=b"})),
            ("f%5Fstring=x", json!({"fString": "x"})),
            ("f_string", json!({})),
            ("&&=x&f_int32=1&", json!({"fInt32": 1})),
            // Bytes: both alphabets, padded or not.
            ("f_bytes=aGk%3D", json!({"fBytes": "aGk="})),
            ("f_bytes=aGk", json!({"fBytes": "aGk="})),
            ("f_bytes=%2B%2F8%3D", json!({"fBytes": "+/8="})),
            ("f_bytes=-_8", json!({"fBytes": "+/8="})),
            ("f_bytes=-_8%3D", json!({"fBytes": "+/8="})),
            ("f_bytes=+/8=", json!({"fBytes": "+/8="})),
            ("f_bytes=", json!({})),
            // Enums: by name or number; proto3 enums are open.
            ("f_enum=RED", json!({"fEnum": "RED"})),
            ("f_enum=2", json!({"fEnum": "GREEN"})),
            ("f_enum=7", json!({"fEnum": 7})),
            ("legacy.level=HIGH", json!({"legacy": {"level": "HIGH"}})),
            ("legacy.level=1", json!({"legacy": {"level": "LOW"}})),
            // Nested messages, both naming styles.
            ("f_item.quantity=3", json!({"fItem": {"quantity": 3}})),
            (
                "fItem.inner.note=x&f_item.inner.big=5",
                json!({"fItem": {"inner": {"note": "x", "big": "5"}}}),
            ),
            (
                "order.first.sku=a&order.first.quantity=2",
                json!({"order": {"first": {"sku": "a", "quantity": 2}}}),
            ),
            // Repeated fields append in order.
            ("r_int32=1&r_int32=2&rInt32=3", json!({"rInt32": [1, 2, 3]})),
            (
                "r_double=1.5&r_double=NaN",
                json!({"rDouble": [1.5, "NaN"]}),
            ),
            (
                "r_float=1&r_uint32=2&r_sint32=-3&r_fixed32=4&r_sfixed32=-5",
                json!({"rFloat": [1.0], "rUint32": [2], "rSint32": [-3], "rFixed32": [4],
                       "rSfixed32": [-5]}),
            ),
            (
                "r_int64=1&r_uint64=2&r_sint64=-3&r_fixed64=4&r_sfixed64=-5",
                json!({"rInt64": ["1"], "rUint64": ["2"], "rSint64": ["-3"], "rFixed64": ["4"],
                       "rSfixed64": ["-5"]}),
            ),
            (
                "r_string=b&r_string=a&r_string=",
                json!({"rString": ["b", "a", ""]}),
            ),
            (
                "r_bytes=aGk&r_bytes=-_8",
                json!({"rBytes": ["aGk=", "+/8="]}),
            ),
            ("r_enum=GREEN&r_enum=1", json!({"rEnum": ["GREEN", "RED"]})),
            (
                "r_ts=1970-01-01T00:00:01Z&r_ts=1970-01-01T00:00:02Z",
                json!({"rTs": ["1970-01-01T00:00:01Z", "1970-01-01T00:00:02Z"]}),
            ),
            // Maps.
            (
                "labels[a]=1&labels[b]=-2",
                json!({"labels": {"a": 1, "b": -2}}),
            ),
            (
                "labels[a%20b]=1&labels[]=2",
                json!({"labels": {"a b": 1, "": 2}}),
            ),
            ("labels%5Bx%5D=3", json!({"labels": {"x": 3}})),
            (
                "names[-5]=x&names[9223372036854775807]=y",
                json!({"names": {"-5": "x", "9223372036854775807": "y"}}),
            ),
            (
                "colors[k]=GREEN&colors[j]=1",
                json!({"colors": {"k": "GREEN", "j": "RED"}}),
            ),
            // Well-known types.
            (
                "ts=2024-01-02T03:04:05.5Z",
                json!({"ts": "2024-01-02T03:04:05.500Z"}),
            ),
            (
                "ts=2024-01-02T03:04:05%2B01:00",
                json!({"ts": "2024-01-02T02:04:05Z"}),
            ),
            ("dur=1.5s", json!({"dur": "1.500s"})),
            ("dur=-3s", json!({"dur": "-3s"})),
            (
                "mask=fInt32,fItem.quantity",
                json!({"mask": "fInt32,fItem.quantity"}),
            ),
            ("w_double=-1.5", json!({"wDouble": -1.5})),
            ("w_float=1.5", json!({"wFloat": 1.5})),
            (
                "w_int64=-9223372036854775808",
                json!({"wInt64": "-9223372036854775808"}),
            ),
            (
                "w_uint64=18446744073709551615",
                json!({"wUint64": "18446744073709551615"}),
            ),
            ("w_int32=0", json!({"wInt32": 0})),
            ("w_uint32=4294967295", json!({"wUint32": 4294967295u32})),
            ("w_bool=f", json!({"wBool": false})),
            ("w_string=", json!({"wString": ""})),
            ("w_bytes=-_8", json!({"wBytes": "+/8="})),
            ("any_value=hello", json!({"anyValue": "hello"})),
            ("any_value=123", json!({"anyValue": 123.0})),
            ("any_value=true", json!({"anyValue": true})),
            ("any_value=null", json!({"anyValue": null})),
            ("any_value=%22quoted%22", json!({"anyValue": "quoted"})),
            (
                "any_value=%7B%22a%22:[1,%22b%22]%7D",
                json!({"anyValue": {"a": [1.0, "b"]}}),
            ),
            ("any_value=%7Bbroken", json!({"anyValue": "{broken"})),
            // Oneofs, json_name overrides, explicit presence.
            ("by_name=x", json!({"byName": "x"})),
            (
                "by_item.quantity=1&byItem.sku=s",
                json!({"byItem": {"quantity": 1, "sku": "s"}}),
            ),
            ("renamed=x", json!({"customName": "x"})),
            ("customName=y", json!({"customName": "y"})),
            ("opt=0", json!({"opt": 0})),
        ];
        for (query, want) in cases {
            match bind(query) {
                Ok(got) => assert_eq!(&got, want, "query {query:?}"),
                Err(err) => panic!("query {query:?} failed: {err}"),
            }
        }
    }

    #[test]
    fn field_mask_paths_become_field_names() {
        let cases: &[(&str, &[&str])] = &[
            (
                "mask=fInt32,fItem.quantity",
                &["f_int32", "f_item.quantity"],
            ),
            // Proto names as grpc-gateway takes them, alone or mixed with JSON names.
            (
                "mask=f_int32,f_item.quantity",
                &["f_int32", "f_item.quantity"],
            ),
            (
                "mask=r_string,fItem.inner.note",
                &["r_string", "f_item.inner.note"],
            ),
            ("mask=a,,b", &["a", "b"]),
            ("mask=", &[]),
        ];
        for (query, want) in cases {
            let mut msg = DynamicMessage::new(everything());
            bind_query(&mut msg, query, &[], &BindOptions::default()).unwrap();
            let mask = msg.get_field_by_name("mask").unwrap();
            let paths = mask
                .as_message()
                .unwrap()
                .get_field_by_name("paths")
                .unwrap();
            let paths: Vec<&str> = paths
                .as_list()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            assert_eq!(paths, *want, "{query}");
        }
    }

    #[test]
    fn wrapper_keeps_nan() {
        // prost-reflect renders a NaN wrapper as JSON null, so check the stored value itself.
        let mut msg = DynamicMessage::new(everything());
        bind_query(&mut msg, "w_double=NaN", &[], &BindOptions::default()).unwrap();
        let wrapper = msg.get_field_by_name("w_double").unwrap();
        let inner = wrapper
            .as_message()
            .unwrap()
            .get_field_by_name("value")
            .unwrap();
        assert!(inner.as_f64().unwrap().is_nan());
    }

    #[test]
    fn bad_values() {
        let cases: &[(&str, &str)] = &[
            (
                "f_int32=abc",
                r#"invalid value for field "f_int32": expected integer, got "abc""#,
            ),
            (
                "f_int32=1.5",
                r#"invalid value for field "f_int32": expected integer, got "1.5""#,
            ),
            (
                "f_int32=",
                r#"invalid value for field "f_int32": expected integer, got """#,
            ),
            (
                "f_int32=+1+",
                r#"invalid value for field "f_int32": expected integer, got " 1 ""#,
            ),
            (
                "f_int32=2147483648",
                r#"invalid value for field "f_int32": "2147483648" is out of range for int32"#,
            ),
            (
                "f_int32=-2147483649",
                r#"invalid value for field "f_int32": "-2147483649" is out of range for int32"#,
            ),
            (
                "f_sint32=3000000000",
                r#"invalid value for field "f_sint32": "3000000000" is out of range for sint32"#,
            ),
            (
                "f_sfixed32=-3000000000",
                r#"invalid value for field "f_sfixed32": "-3000000000" is out of range for sfixed32"#,
            ),
            (
                "f_uint32=-1",
                r#"invalid value for field "f_uint32": "-1" is out of range for uint32"#,
            ),
            (
                "f_fixed32=4294967296",
                r#"invalid value for field "f_fixed32": "4294967296" is out of range for fixed32"#,
            ),
            (
                "f_int64=9223372036854775808",
                r#"invalid value for field "f_int64": "9223372036854775808" is out of range for int64"#,
            ),
            (
                "f_sint64=-9223372036854775809",
                r#"invalid value for field "f_sint64": "-9223372036854775809" is out of range for sint64"#,
            ),
            (
                "f_uint64=18446744073709551616",
                r#"invalid value for field "f_uint64": "18446744073709551616" is out of range for uint64"#,
            ),
            (
                "f_fixed64=-5",
                r#"invalid value for field "f_fixed64": "-5" is out of range for fixed64"#,
            ),
            (
                "f_sfixed64=0x10",
                r#"invalid value for field "f_sfixed64": expected integer, got "0x10""#,
            ),
            (
                "f_float=1e39",
                r#"invalid value for field "f_float": "1e39" is out of range for float"#,
            ),
            (
                "f_double=1e400",
                r#"invalid value for field "f_double": "1e400" is out of range for double"#,
            ),
            (
                "f_double=inf",
                r#"invalid value for field "f_double": expected number, got "inf""#,
            ),
            (
                "f_double=nan",
                r#"invalid value for field "f_double": expected number, got "nan""#,
            ),
            (
                "f_double=1,5",
                r#"invalid value for field "f_double": expected number, got "1,5""#,
            ),
            (
                "f_float=",
                r#"invalid value for field "f_float": expected number, got """#,
            ),
            (
                "f_bool=yes",
                r#"invalid value for field "f_bool": expected boolean (true or false), got "yes""#,
            ),
            (
                "f_bool=2",
                r#"invalid value for field "f_bool": expected boolean (true or false), got "2""#,
            ),
            (
                "f_bytes=!!!!",
                r#"invalid value for field "f_bytes": expected base64 (standard or URL-safe alphabet), got "!!!!""#,
            ),
            (
                "f_bytes=a",
                r#"invalid value for field "f_bytes": expected base64 (standard or URL-safe alphabet), got "a""#,
            ),
            (
                "f_bytes=ab-%2B",
                r#"invalid value for field "f_bytes": expected base64 (standard or URL-safe alphabet), got "ab-+""#,
            ),
            (
                "f_enum=PURPLE",
                r#"invalid value for field "f_enum": expected a value name or number of enum bindtest.Color, got "PURPLE""#,
            ),
            (
                "f_enum=red",
                r#"invalid value for field "f_enum": expected a value name or number of enum bindtest.Color, got "red""#,
            ),
            (
                "f_enum=99999999999",
                r#"invalid value for field "f_enum": "99999999999" is out of range for enum bindtest.Color"#,
            ),
            (
                "legacy.level=7",
                r#"invalid value for field "legacy.level": 7 is not a value of closed enum legacy.Level"#,
            ),
            (
                "ts=yesterday",
                r#"invalid value for field "ts": expected an RFC 3339 timestamp, got "yesterday""#,
            ),
            (
                "dur=5m",
                r#"invalid value for field "dur": expected a duration such as "1.5s", got "5m""#,
            ),
            (
                "w_int32=x",
                r#"invalid value for field "w_int32": expected integer, got "x""#,
            ),
            (
                "w_uint32=-1",
                r#"invalid value for field "w_uint32": "-1" is out of range for uint32"#,
            ),
            (
                "w_bool=yes",
                r#"invalid value for field "w_bool": expected boolean (true or false), got "yes""#,
            ),
            (
                "r_int32=1&r_int32=x",
                r#"invalid value for field "r_int32": expected integer, got "x""#,
            ),
            (
                "order.first.quantity=abc",
                r#"invalid value for field "order.first.quantity": expected integer, got "abc""#,
            ),
            (
                "fItem.inner.big=1e3",
                r#"invalid value for field "f_item.inner.big": expected integer, got "1e3""#,
            ),
            // Message leaves without a string form.
            (
                "f_item=x",
                r#"cannot bind a value to message field "f_item" of type bindtest.Item"#,
            ),
            (
                "st=%7B%7D",
                r#"cannot bind a value to message field "st" of type google.protobuf.Struct"#,
            ),
            (
                "r_item=x",
                r#"cannot bind a value to message field "r_item" of type bindtest.Item"#,
            ),
            // Too many values.
            (
                "f_int32=1&f_int32=2",
                r#"too many values for field "f_int32""#,
            ),
            (
                "f_int32=1&fInt32=1",
                r#"too many values for field "f_int32""#,
            ),
            (
                "order.first.sku=a&order.first.sku=b",
                r#"too many values for field "order.first.sku""#,
            ),
            (
                "ts=1970-01-01T00:00:00Z&ts=1970-01-01T00:00:00Z",
                r#"too many values for field "ts""#,
            ),
            (
                "labels[a]=1&labels[a]=2",
                r#"too many values for field "labels[a]""#,
            ),
            (
                "names[1]=a&names[01]=b",
                r#"too many values for field "names[01]""#,
            ),
            // Maps.
            (
                "labels=1",
                r#"invalid query parameter "labels": map field "labels" takes one entry per parameter: labels[key]=value"#,
            ),
            (
                "f_int32[a]=1",
                r#"invalid query parameter "f_int32[a]": "f_int32" is an int32 field, not a map, so it takes no [key]"#,
            ),
            (
                "names[x]=a",
                r#"invalid value for field "names[x]": expected integer, got "x""#,
            ),
            (
                "labels[a]=x",
                r#"invalid value for field "labels[a]": expected integer, got "x""#,
            ),
            (
                "colors[a]=BLUE",
                r#"invalid value for field "colors[a]": expected a value name or number of enum bindtest.Color, got "BLUE""#,
            ),
            // Walking through something that is not a singular message.
            (
                "f_int32.x=1",
                r#"invalid query parameter "f_int32.x": cannot continue through "f_int32", an int32 field"#,
            ),
            (
                "order.items.quantity=1",
                r#"invalid query parameter "order.items.quantity": cannot continue through "order.items", a repeated field"#,
            ),
            (
                "labels.a=1",
                r#"invalid query parameter "labels.a": cannot continue through "labels", a map field"#,
            ),
            // Oneofs.
            (
                "by_name=x&by_id=1",
                r#"field "by_id" cannot be set: "by_name" of oneof "choice" is already set"#,
            ),
            (
                "by_id=1&by_item.quantity=1",
                r#"field "by_item.quantity" cannot be set: "by_id" of oneof "choice" is already set"#,
            ),
            // Malformed encoding.
            (
                "f_string=%zz",
                r#"malformed query parameter "f_string": invalid percent-encoding"#,
            ),
            (
                "f_string=%4",
                r#"malformed query parameter "f_string": invalid percent-encoding"#,
            ),
            (
                "f_string=%FF",
                r#"malformed query parameter "f_string": not UTF-8 after percent-decoding"#,
            ),
            (
                "%E2%9C=1",
                r#"malformed query parameter "%E2%9C": not UTF-8 after percent-decoding"#,
            ),
        ];
        for (query, want) in cases {
            match bind(query) {
                Ok(got) => panic!("query {query:?} bound to {got}, wanted error {want}"),
                Err(err) => {
                    assert_eq!(err.to_string(), *want, "query {query:?}");
                    assert!(err.is_client_error(), "query {query:?}");
                }
            }
        }
    }

    #[test]
    fn errors_name_the_field_path() {
        let err = bind("order.first.inner.big=x").unwrap_err();
        assert_eq!(err.field(), "order.first.inner.big");
        let err = bind("labels[k]=x").unwrap_err();
        assert_eq!(err.field(), "labels[k]");
        let err = bind_with("nope=1", &[], &reject(&[])).unwrap_err();
        assert_eq!(err.field(), "nope");
    }

    #[test]
    fn long_client_text_is_shortened_in_errors() {
        let long = "x".repeat(500);
        let err = bind(&format!("f_int32={long}")).unwrap_err().to_string();
        assert!(err.len() < 150, "{err}");
        assert!(err.ends_with(r#"...""#), "{err}");
    }

    #[test]
    fn plus_as_space_can_be_turned_off() {
        let opts = BindOptions {
            plus_as_space: false,
            ..BindOptions::default()
        };
        let cases: &[(&str, serde_json::Value)] = &[
            ("f_string=a+b", json!({"fString": "a+b"})),
            ("f_string=a%20b%2B", json!({"fString": "a b+"})),
            ("f_bytes=+/8=", json!({"fBytes": "+/8="})),
            ("f_int32=+5", json!({"fInt32": 5})),
        ];
        for (query, want) in cases {
            assert_eq!(
                &bind_with(query, &[], &opts).unwrap(),
                want,
                "query {query:?}"
            );
        }
    }

    #[test]
    fn case_insensitive_enums() {
        let opts = BindOptions {
            case_insensitive_enums: true,
            ..BindOptions::default()
        };
        let cases: &[(&str, serde_json::Value)] = &[
            ("f_enum=red", json!({"fEnum": "RED"})),
            ("f_enum=Green", json!({"fEnum": "GREEN"})),
            (
                "r_enum=red&r_enum=GREEN",
                json!({"rEnum": ["RED", "GREEN"]}),
            ),
            ("legacy.level=high", json!({"legacy": {"level": "HIGH"}})),
        ];
        for (query, want) in cases {
            assert_eq!(
                &bind_with(query, &[], &opts).unwrap(),
                want,
                "query {query:?}"
            );
        }
        let err = bind_with("f_enum=purple", &[], &opts).unwrap_err();
        assert!(matches!(err, BindError::InvalidValue { .. }), "{err}");
    }

    #[test]
    fn unknown_parameters() {
        // (query, options, expected error; None means accepted with nothing bound but f_int32)
        let ignore = BindOptions::default();
        let strict = reject(&[]);
        let token = reject(&["access_token", "$alt"]);
        let cases: &[(&str, &BindOptions, Option<&str>)] = &[
            ("nope=1&f_int32=1", &ignore, None),
            ("f_item.nope=1&f_int32=1", &ignore, None),
            (
                "f_int32=1&nope=1",
                &strict,
                Some(r#"unknown query parameter "nope""#),
            ),
            (
                "f_item.nope=1",
                &strict,
                Some(r#"unknown query parameter "f_item.nope""#),
            ),
            (
                "nope[k]=1",
                &strict,
                Some(r#"unknown query parameter "nope[k]""#),
            ),
            (
                "F_INT32=1",
                &strict,
                Some(r#"unknown query parameter "F_INT32""#),
            ),
            ("access_token=abc&f_int32=1&%24alt=json", &token, None),
            (
                "access_token=abc&other=1",
                &token,
                Some(r#"unknown query parameter "other""#),
            ),
            (
                "f_int32=1&access_token.x=1",
                &token,
                Some(r#"unknown query parameter "access_token.x""#),
            ),
        ];
        for (query, opts, want) in cases {
            match (bind_with(query, &[], opts), want) {
                (Ok(got), None) => assert_eq!(got, json!({"fInt32": 1}), "query {query:?}"),
                (Err(err), Some(want)) => assert_eq!(err.to_string(), *want, "query {query:?}"),
                (got, want) => panic!("query {query:?}: got {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn excluded_paths_are_skipped() {
        let strict = reject(&[]);
        let cases: &[(&str, &[&str], serde_json::Value)] = &[
            // The path itself, by either name.
            (
                "f_int32=1&f_string=s",
                &["f_int32"],
                json!({"fString": "s"}),
            ),
            ("fInt32=1", &["f_int32"], json!({})),
            // Under an excluded path, including names that do not resolve further.
            (
                "f_item.quantity=1&f_item.inner.note=n",
                &["f_item"],
                json!({}),
            ),
            ("f_item.nope=1", &["f_item"], json!({})),
            ("f_int32.x=1", &["f_int32"], json!({})),
            ("order.items.quantity=1", &["order.items"], json!({})),
            // A prefix of an excluded path.
            ("f_item=x", &["f_item.quantity"], json!({})),
            (
                "f_item.quantity=1&f_item.sku=s",
                &["f_item.quantity"],
                json!({"fItem": {"sku": "s"}}),
            ),
            ("labels[a]=1", &["labels"], json!({})),
            // Siblings are still bound, and unknown names still follow the policy.
            (
                "f_item.sku=s",
                &["f_item.quantity"],
                json!({"fItem": {"sku": "s"}}),
            ),
        ];
        for (query, excluded, want) in cases {
            match bind_with(query, excluded, &strict) {
                Ok(got) => assert_eq!(&got, want, "query {query:?}"),
                Err(err) => panic!("query {query:?} failed: {err}"),
            }
        }
        let err = bind_with("f_item.nope=1", &["f_item.quantity"], &strict).unwrap_err();
        assert_eq!(err.to_string(), r#"unknown query parameter "f_item.nope""#);
    }

    #[test]
    fn excluded_path_of_another_message_is_a_gateway_bug() {
        let item = everything()
            .parent_pool()
            .get_message_by_name("bindtest.Item")
            .unwrap();
        let foreign = resolve(&item, "quantity").unwrap();
        let mut msg = DynamicMessage::new(everything());
        let err =
            bind_query(&mut msg, "f_int32=1", &[foreign], &BindOptions::default()).unwrap_err();
        assert!(matches!(err, BindError::Internal { .. }), "{err}");
        assert!(!err.is_client_error());
    }

    #[test]
    fn resolve_paths() {
        let desc = everything();
        let good: &[(&str, &str)] = &[
            ("f_int32", "f_int32"),
            ("fInt32", "f_int32"),
            ("customName", "renamed"),
            ("order.first.inner.note", "order.first.inner.note"),
            ("order.first.inner", "order.first.inner"),
            ("fItem.inner.big", "f_item.inner.big"),
            ("r_int32", "r_int32"),
            ("labels", "labels"),
            ("order.items", "order.items"),
        ];
        for (dotted, want) in good {
            let path = resolve(&desc, dotted).unwrap();
            assert_eq!(path.to_string(), *want);
            assert_eq!(path.root(), &desc);
            assert_eq!(path.fields().len(), want.split('.').count());
        }
        let bad: &[(&str, &str)] = &[
            ("", r#"field path "" is empty or has an empty segment"#),
            (
                "order..first",
                r#"field path "order..first" is empty or has an empty segment"#,
            ),
            (
                "order.",
                r#"field path "order." is empty or has an empty segment"#,
            ),
            (
                "nope",
                r#"field path "nope": message bindtest.Everything has no field "nope""#,
            ),
            (
                "order.first.nope",
                r#"field path "order.first.nope": message bindtest.Item has no field "nope""#,
            ),
            (
                "order.items.quantity",
                r#"field path "order.items.quantity": cannot continue through "items", a repeated field"#,
            ),
            (
                "labels.a",
                r#"field path "labels.a": cannot continue through "labels", a map field"#,
            ),
            (
                "f_int32.x",
                r#"field path "f_int32.x": cannot continue through "f_int32", an int32 field"#,
            ),
        ];
        for (dotted, want) in bad {
            assert_eq!(
                resolve(&desc, dotted).unwrap_err().to_string(),
                *want,
                "{dotted:?}"
            );
        }
    }

    #[test]
    fn resolve_path_variables() {
        let desc = everything();
        for dotted in [
            "f_int32",
            "f_enum",
            "f_bytes",
            "ts",
            "dur",
            "mask",
            "w_int64",
            "any_value",
            "order.first.inner.note",
            "legacy.level",
            "by_name",
        ] {
            assert!(resolve_variable(&desc, dotted).is_ok(), "{dotted:?}");
        }
        let bad: &[(&str, &str)] = &[
            (
                "r_int32",
                r#"field path "r_int32" cannot be a path variable: the leaf is a repeated field"#,
            ),
            (
                "labels",
                r#"field path "labels" cannot be a path variable: the leaf is a map field"#,
            ),
            (
                "f_item",
                r#"field path "f_item" cannot be a path variable: the leaf is a bindtest.Item field"#,
            ),
            (
                "st",
                r#"field path "st" cannot be a path variable: the leaf is a google.protobuf.Struct field"#,
            ),
            (
                "nope",
                r#"field path "nope": message bindtest.Everything has no field "nope""#,
            ),
        ];
        for (dotted, want) in bad {
            assert_eq!(
                resolve_variable(&desc, dotted).unwrap_err().to_string(),
                *want,
                "{dotted:?}"
            );
        }
    }

    #[test]
    fn path_values() {
        let desc = everything();
        let opts = BindOptions::default();
        let cases: &[(&[(&str, &str)], serde_json::Value)] = &[
            (
                &[("order.first.inner.note", "a b/c+d")],
                json!({"order": {"first": {"inner": {"note": "a b/c+d"}}}}),
            ),
            (
                &[("order.first.sku", "s"), ("order.first.quantity", "2")],
                json!({"order": {"first": {"sku": "s", "quantity": 2}}}),
            ),
            (
                &[("f_int64", "-9223372036854775808")],
                json!({"fInt64": "-9223372036854775808"}),
            ),
            (&[("f_bytes", "-_8")], json!({"fBytes": "+/8="})),
            (&[("f_enum", "GREEN")], json!({"fEnum": "GREEN"})),
            (
                &[("ts", "1970-01-01T00:00:10Z")],
                json!({"ts": "1970-01-01T00:00:10Z"}),
            ),
            (&[("w_bool", "true")], json!({"wBool": true})),
            (
                &[("fItem.quantity", "4")],
                json!({"fItem": {"quantity": 4}}),
            ),
        ];
        for (vars, want) in cases {
            let mut msg = DynamicMessage::new(desc.clone());
            for (dotted, value) in *vars {
                let path = resolve_variable(&desc, dotted).unwrap();
                set_path_value(&mut msg, &path, value, &opts).unwrap();
            }
            assert_eq!(&to_json(&msg), want, "{vars:?}");
        }

        let mut msg = DynamicMessage::new(desc.clone());
        let path = resolve_variable(&desc, "order.first.quantity").unwrap();
        let err = set_path_value(&mut msg, &path, "abc", &opts).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid value for field "order.first.quantity": expected integer, got "abc""#
        );
        assert_eq!(to_json(&msg), json!({}), "a failed bind leaves no trace");

        // Paths from `resolve` may end in a repeated field (values append) but not in a map.
        let repeated = resolve(&desc, "r_string").unwrap();
        set_path_value(&mut msg, &repeated, "a", &opts).unwrap();
        set_path_value(&mut msg, &repeated, "b", &opts).unwrap();
        assert_eq!(to_json(&msg), json!({"rString": ["a", "b"]}));
        let map = resolve(&desc, "labels").unwrap();
        let err = set_path_value(&mut msg, &map, "a", &opts).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid value for field "labels": a map field cannot take a single value"#
        );
        let item = resolve(&desc, "f_item").unwrap();
        let err = set_path_value(&mut msg, &item, "a", &opts).unwrap_err();
        assert!(matches!(err, BindError::MessageField { .. }), "{err}");
    }

    #[test]
    fn path_value_refuses_a_second_oneof_member() {
        let desc = everything();
        let opts = BindOptions::default();
        let mut msg = DynamicMessage::new(desc.clone());
        let by_name = resolve_variable(&desc, "by_name").unwrap();
        let by_id = resolve_variable(&desc, "by_id").unwrap();
        set_path_value(&mut msg, &by_name, "x", &opts).unwrap();
        let err = set_path_value(&mut msg, &by_id, "1", &opts).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"field "by_id" cannot be set: "by_name" of oneof "choice" is already set"#
        );
        // The query cannot clear it either.
        let err = bind_query(&mut msg, "by_item.quantity=1", &[], &opts).unwrap_err();
        assert!(matches!(err, BindError::OneofConflict { .. }), "{err}");
        assert_eq!(to_json(&msg), json!({"byName": "x"}));
    }

    #[test]
    fn path_value_with_another_message_is_a_gateway_bug() {
        let desc = everything();
        let item = desc
            .parent_pool()
            .get_message_by_name("bindtest.Item")
            .unwrap();
        let path = resolve_variable(&item, "quantity").unwrap();
        let mut msg = DynamicMessage::new(desc);
        let err = set_path_value(&mut msg, &path, "1", &BindOptions::default()).unwrap_err();
        assert!(matches!(err, BindError::Internal { .. }), "{err}");
    }

    #[test]
    fn path_then_query() {
        let desc = everything();
        let opts = reject(&[]);
        let id = resolve_variable(&desc, "order.first.sku").unwrap();
        let mut msg = DynamicMessage::new(desc);
        set_path_value(&mut msg, &id, "from-path", &opts).unwrap();
        bind_query(
            &mut msg,
            "order.first.sku=from-query&order.first.quantity=3",
            std::slice::from_ref(&id),
            &opts,
        )
        .unwrap();
        assert_eq!(
            to_json(&msg),
            json!({"order": {"first": {"sku": "from-path", "quantity": 3}}})
        );
    }
}
