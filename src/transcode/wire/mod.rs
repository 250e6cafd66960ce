//! Direct transcoding between proto3 JSON and the protobuf wire format, without building a
//! dynamic message in between: a per-type plan compiled once per route, then a streaming reader
//! of JSON that writes wire bytes (`from_json`) and a reader of wire bytes that writes JSON
//! (`to_json`).
//!
//! The direct path never explains a failure: whenever it fails, for any reason, the caller runs
//! the dynamic-message path on the same input and returns its result. So the direct path only has
//! to be right when it succeeds, and it refuses whatever it is not sure of.

mod from_json;
#[cfg(test)]
mod tests;
mod to_json;

use std::collections::HashMap;

use prost_reflect::{EnumDescriptor, Kind, MessageDescriptor, Syntax};

use super::json::JsonOptions;

/// Fields per message beyond which a type is left to the dynamic path (the readers track fields
/// seen in a 128-bit set).
const MAX_FIELDS: usize = 128;

/// Nesting depth past which a message is left to the dynamic path (prost stops at 100).
const MAX_DEPTH: usize = 64;

/// The direct path gave up; the caller runs the dynamic path instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback;

/// The compiled plan of one message type and every type it reaches, for both directions.
#[derive(Debug)]
pub struct WirePlan {
    /// The root type is the first.
    messages: Vec<MessagePlan>,
    enums: Vec<EnumPlan>,
    wkts: Vec<MessageDescriptor>,
}

#[derive(Debug)]
struct MessagePlan {
    /// In field number order, which is the order prost-reflect writes JSON in.
    fields: Vec<FieldPlan>,
    /// JSON names and proto names, sorted, to the field's index; a JSON name wins over a proto
    /// name that is spelled the same, as in prost-reflect.
    by_name: Vec<(Box<str>, u8)>,
}

#[derive(Debug)]
struct FieldPlan {
    number: u32,
    /// The key as serde_json writes it, quotes included: JSON name, then proto name.
    key_json: Box<[u8]>,
    key_proto: Box<[u8]>,
    ty: Ty,
    shape: Shape,
    /// Fields of the same oneof as this one, this one included (0: not in a oneof).
    oneof: u128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A proto3 field without presence: written unless it holds its default.
    Plain,
    /// A field with presence (message, oneof member, proto3 `optional`).
    Present,
    List,
    /// A map; the field's `ty` is the value's type.
    Map(Ty),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Double,
    Float,
    Int32,
    Sint32,
    Sfixed32,
    Int64,
    Sint64,
    Sfixed64,
    Uint32,
    Fixed32,
    Uint64,
    Fixed64,
    Bool,
    String,
    Bytes,
    /// Index into [`WirePlan::enums`].
    Enum(usize),
    /// Index into [`WirePlan::messages`].
    Message(usize),
    /// A google.protobuf type with a JSON form of its own, handed to prost-reflect; index into
    /// [`WirePlan::wkts`].
    Wkt(usize),
}

#[derive(Debug)]
struct EnumPlan {
    /// Numbers to names, sorted by number; the name as serde_json writes it, quotes included.
    by_number: Vec<(i32, Box<[u8]>)>,
    /// Names to numbers, sorted by name.
    by_name: Vec<(Box<str>, i32)>,
    /// The number of the default value.
    default: i32,
}

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

impl Ty {
    /// The wire type of one value of this type.
    fn wire_type(self) -> u8 {
        match self {
            Ty::Double | Ty::Fixed64 | Ty::Sfixed64 => FIXED64,
            Ty::Float | Ty::Fixed32 | Ty::Sfixed32 => FIXED32,
            Ty::String | Ty::Bytes | Ty::Message(_) | Ty::Wkt(_) => LEN,
            _ => VARINT,
        }
    }

    /// Whether a repeated field of this type may be packed.
    fn packable(self) -> bool {
        self.wire_type() != LEN
    }
}

/// Message types handed to prost-reflect whole, because their JSON form is their own.
fn is_well_known(desc: &MessageDescriptor) -> bool {
    desc.full_name().starts_with("google.protobuf.")
}

impl WirePlan {
    /// Compiles the plan of `root`, or `None` when some type it reaches is not supported: not
    /// proto3, a well-known type at the root, extensions, groups, more than 128 fields, the
    /// google.protobuf.NullValue enum.
    pub fn new(root: &MessageDescriptor) -> Option<WirePlan> {
        if is_well_known(root) {
            return None;
        }
        let mut builder = Builder::default();
        builder.message(root)?;
        Some(WirePlan {
            messages: builder.messages.into_iter().collect::<Option<Vec<_>>>()?,
            enums: builder.enums,
            wkts: builder.wkts,
        })
    }

    /// Reads a JSON body into the wire encoding of the root type, appended to `out`.
    pub fn json_to_wire(
        &self,
        body: &[u8],
        opts: &JsonOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), Fallback> {
        from_json::transcode(self, body, opts, out)
    }

    /// Writes the root type's wire encoding `bytes` as JSON, appended to `out`.
    pub fn wire_to_json(
        &self,
        bytes: &[u8],
        opts: &JsonOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), Fallback> {
        let start = out.len();
        let result = to_json::transcode(self, bytes, opts, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

#[derive(Default)]
struct Builder {
    /// `None` while a type is being compiled (it may reach itself).
    messages: Vec<Option<MessagePlan>>,
    message_index: HashMap<String, usize>,
    enums: Vec<EnumPlan>,
    enum_index: HashMap<String, usize>,
    wkts: Vec<MessageDescriptor>,
    wkt_index: HashMap<String, usize>,
}

impl Builder {
    fn message(&mut self, desc: &MessageDescriptor) -> Option<usize> {
        if let Some(&index) = self.message_index.get(desc.full_name()) {
            return Some(index);
        }
        if desc.parent_file().syntax() != Syntax::Proto3
            || desc.extensions().len() > 0
            || desc.fields().len() > MAX_FIELDS
        {
            return None;
        }
        let index = self.messages.len();
        self.messages.push(None);
        self.message_index
            .insert(desc.full_name().to_owned(), index);
        let mut fields = Vec::with_capacity(desc.fields().len());
        let mut by_name: Vec<(Box<str>, u8)> = Vec::new();
        // prost-reflect's `fields()` is in field number order, the order it writes JSON in.
        let all: Vec<_> = desc.fields().collect();
        for (i, field) in all.iter().enumerate() {
            if field.is_group() {
                return None;
            }
            let at = u8::try_from(i).ok()?;
            let kind = field.kind();
            let (ty, shape) = if field.is_map() {
                let Kind::Message(entry) = &kind else {
                    return None;
                };
                let key = self.ty(&entry.map_entry_key_field().kind())?;
                let value = self.ty(&entry.map_entry_value_field().kind())?;
                (key, Shape::Map(value))
            } else if field.is_list() {
                (self.ty(&kind)?, Shape::List)
            } else if field.supports_presence() {
                (self.ty(&kind)?, Shape::Present)
            } else {
                (self.ty(&kind)?, Shape::Plain)
            };
            let mut oneof = 0u128;
            if let Some(group) = field.containing_oneof() {
                for member in group.fields() {
                    let pos = all.iter().position(|f| f == &member)?;
                    oneof |= 1u128 << pos;
                }
            }
            fields.push(FieldPlan {
                number: field.number(),
                key_json: quoted(field.json_name())?,
                key_proto: quoted(field.name())?,
                ty,
                shape,
                oneof,
            });
            by_name.push((field.name().into(), at));
        }
        // JSON names go in after proto names and replace them, so a JSON name wins.
        let mut names: HashMap<Box<str>, u8> = by_name.into_iter().collect();
        for (i, field) in all.iter().enumerate() {
            names.insert(field.json_name().into(), u8::try_from(i).ok()?);
        }
        let mut by_name: Vec<(Box<str>, u8)> = names.into_iter().collect();
        by_name.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.messages[index] = Some(MessagePlan { fields, by_name });
        Some(index)
    }

    /// The type of one value (a map key or value, a list element or a singular field).
    fn ty(&mut self, kind: &Kind) -> Option<Ty> {
        Some(match kind {
            Kind::Double => Ty::Double,
            Kind::Float => Ty::Float,
            Kind::Int32 => Ty::Int32,
            Kind::Sint32 => Ty::Sint32,
            Kind::Sfixed32 => Ty::Sfixed32,
            Kind::Int64 => Ty::Int64,
            Kind::Sint64 => Ty::Sint64,
            Kind::Sfixed64 => Ty::Sfixed64,
            Kind::Uint32 => Ty::Uint32,
            Kind::Fixed32 => Ty::Fixed32,
            Kind::Uint64 => Ty::Uint64,
            Kind::Fixed64 => Ty::Fixed64,
            Kind::Bool => Ty::Bool,
            Kind::String => Ty::String,
            Kind::Bytes => Ty::Bytes,
            Kind::Enum(desc) => Ty::Enum(self.enumeration(desc)?),
            Kind::Message(desc) if is_well_known(desc) => {
                if let Some(&index) = self.wkt_index.get(desc.full_name()) {
                    Ty::Wkt(index)
                } else {
                    self.wkts.push(desc.clone());
                    self.wkt_index
                        .insert(desc.full_name().to_owned(), self.wkts.len() - 1);
                    Ty::Wkt(self.wkts.len() - 1)
                }
            }
            Kind::Message(desc) => Ty::Message(self.message(desc)?),
        })
    }

    fn enumeration(&mut self, desc: &EnumDescriptor) -> Option<usize> {
        if let Some(&index) = self.enum_index.get(desc.full_name()) {
            return Some(index);
        }
        // prost-reflect writes NullValue as `null`; rare enough to leave to it.
        if desc.full_name() == "google.protobuf.NullValue" {
            return None;
        }
        let mut by_number = Vec::new();
        let mut by_name = Vec::new();
        for value in desc.values() {
            by_name.push((Box::<str>::from(value.name()), value.number()));
            // With aliases, the name written is the one prost-reflect finds for the number.
            if let Some(named) = desc.get_value(value.number()) {
                if !by_number.iter().any(|(n, _)| *n == value.number()) {
                    by_number.push((value.number(), quoted(named.name())?));
                }
            }
        }
        by_number.sort_unstable_by_key(|(n, _)| *n);
        by_name.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.enums.push(EnumPlan {
            by_number,
            by_name,
            default: desc.default_value().number(),
        });
        let index = self.enums.len() - 1;
        self.enum_index.insert(desc.full_name().to_owned(), index);
        Some(index)
    }
}

/// A string as serde_json writes it, quotes and escapes included.
fn quoted(text: &str) -> Option<Box<[u8]>> {
    serde_json::to_vec(text).ok().map(Vec::into_boxed_slice)
}

impl MessagePlan {
    /// The field with wire number `number`.
    fn field_by_number(&self, number: u32) -> Option<usize> {
        self.fields.binary_search_by_key(&number, |f| f.number).ok()
    }

    /// The field a JSON key names, by JSON name or proto name.
    fn field_by_name(&self, name: &str) -> Option<usize> {
        self.by_name
            .binary_search_by(|(n, _)| n.as_ref().cmp(name))
            .ok()
            .map(|at| usize::from(self.by_name[at].1))
    }
}

impl EnumPlan {
    fn name(&self, number: i32) -> Option<&[u8]> {
        self.by_number
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .map(|at| &*self.by_number[at].1)
    }

    fn number(&self, name: &str) -> Option<i32> {
        self.by_name
            .binary_search_by(|(n, _)| n.as_ref().cmp(name))
            .ok()
            .map(|at| self.by_name[at].1)
    }
}
