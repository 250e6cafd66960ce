//! Protobuf wire bytes to proto3 JSON, written straight into the output as prost-reflect's
//! serializer would write the decoded message.

use std::hash::{DefaultHasher, Hash, Hasher};

use base64::prelude::{Engine as _, BASE64_STANDARD};
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde::Serializer as _;

use super::{Fallback, FieldPlan, Shape, Ty, WirePlan, FIXED32, FIXED64, LEN, MAX_DEPTH, VARINT};
use crate::transcode::json::JsonOptions;

/// One field met on the wire: its value, or the bounds of its bytes.
#[derive(Debug, Clone, Copy)]
struct Occurrence {
    field: u8,
    wire: u8,
    /// Where its key starts, to order members of a oneof.
    at: u32,
    /// The value (varint and fixed), or where the bytes start (length-delimited).
    value: u64,
    /// Where the bytes end (length-delimited).
    end: u32,
}

struct Writer<'p> {
    plan: &'p WirePlan,
    opts: &'p JsonOptions,
    /// For well-known types, handed to prost-reflect.
    serialize: SerializeOptions,
    /// A stack shared by the nested messages being written: each pushes its fields' occurrences
    /// and pops them when done, so a whole response reuses one allocation.
    occurrences: Vec<Occurrence>,
    /// Hashes of the map keys written, per map on the same stack, to detect a key met twice.
    keys: Vec<u64>,
}

/// Writes the root message of `plan`, encoded in `bytes`, as JSON.
pub(super) fn transcode(
    plan: &WirePlan,
    bytes: &[u8],
    opts: &JsonOptions,
    out: &mut Vec<u8>,
) -> Result<(), Fallback> {
    let mut writer = Writer {
        plan,
        opts,
        serialize: opts.serialize_options(),
        occurrences: Vec::with_capacity(32),
        keys: Vec::new(),
    };
    writer.message(0, bytes, 0, out)
}

impl Writer<'_> {
    fn message(
        &mut self,
        index: usize,
        buf: &[u8],
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Fallback> {
        if depth > MAX_DEPTH || u32::try_from(buf.len()).is_err() {
            return Err(Fallback);
        }
        let base = self.occurrences.len();
        let result = self.message_at(index, buf, depth, base, out);
        self.occurrences.truncate(base);
        result
    }

    fn message_at(
        &mut self,
        index: usize,
        buf: &[u8],
        depth: usize,
        base: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Fallback> {
        let plan = self.plan;
        let message = plan.messages.get(index).ok_or(Fallback)?;
        let mut pos = 0;
        while pos < buf.len() {
            let at = pos as u32;
            let (number, wire) = key(buf, &mut pos)?;
            let (value, end) = value(buf, &mut pos, wire)?;
            let Some(field) = message.field_by_number(number) else {
                continue;
            };
            let plan_field = &message.fields[field];
            let expected = plan_field.ty.wire_type();
            let fits = match plan_field.shape {
                Shape::List => wire == expected || (wire == LEN && plan_field.ty.packable()),
                Shape::Map(_) => wire == LEN,
                Shape::Plain | Shape::Present => wire == expected,
            };
            if !fits {
                return Err(Fallback);
            }
            self.occurrences.push(Occurrence {
                field: field as u8,
                wire,
                at,
                value,
                end,
            });
        }
        let end = self.occurrences.len();
        let found = &mut self.occurrences[base..end];
        if !found.windows(2).all(|w| w[0].field <= w[1].field) {
            // Stable: occurrences of one field keep their wire order.
            found.sort_by_key(|o| o.field);
        }

        out.push(b'{');
        let mut first = true;
        let mut next = base;
        for (i, field) in message.fields.iter().enumerate() {
            let start = next;
            while next < end && usize::from(self.occurrences[next].field) == i {
                next += 1;
            }
            let mut from = start;
            if field.oneof != 0 {
                // Setting another member of the oneof cleared what came before it.
                let other = self.occurrences[base..end]
                    .iter()
                    .filter(|o| usize::from(o.field) != i && field.oneof & (1u128 << o.field) != 0)
                    .map(|o| o.at)
                    .max();
                if let Some(other) = other {
                    while from < next && self.occurrences[from].at < other {
                        from += 1;
                    }
                }
            }
            self.field(field, buf, from, next, depth, &mut first, out)?;
        }
        out.push(b'}');
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn field(
        &mut self,
        field: &FieldPlan,
        buf: &[u8],
        from: usize,
        to: usize,
        depth: usize,
        first: &mut bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Fallback> {
        let emit = self.opts.emit_unpopulated;
        match field.shape {
            Shape::Plain => {
                let (value, bytes) = match to.checked_sub(1).filter(|&last| last >= from) {
                    Some(last) => {
                        let o = self.occurrences[last];
                        (o.value, bytes_of(buf, o))
                    }
                    None => (0, &[][..]),
                };
                if !emit && self.is_default(field.ty, value, bytes) {
                    return Ok(());
                }
                self.key(field, first, out);
                self.scalar(field.ty, value, bytes, out)
            }
            Shape::Present => {
                if from == to {
                    return Ok(());
                }
                self.key(field, first, out);
                match field.ty {
                    Ty::Message(_) | Ty::Wkt(_) if to - from > 1 => {
                        // A message met more than once is the merge of all: their bytes joined.
                        let mut joined = Vec::new();
                        for k in from..to {
                            joined.extend_from_slice(bytes_of(buf, self.occurrences[k]));
                        }
                        self.nested(field.ty, &joined, depth, out)
                    }
                    Ty::Message(_) | Ty::Wkt(_) => {
                        self.nested(field.ty, bytes_of(buf, self.occurrences[from]), depth, out)
                    }
                    ty => {
                        let o = self.occurrences[to - 1];
                        self.scalar(ty, o.value, bytes_of(buf, o), out)
                    }
                }
            }
            Shape::List => {
                // A packed run may be empty: the list is empty then, and so left out.
                let any = (from..to).any(|k| {
                    let o = self.occurrences[k];
                    o.wire != LEN || !field.ty.packable() || u64::from(o.end) > o.value
                });
                if !any && !emit {
                    return Ok(());
                }
                self.key(field, first, out);
                out.push(b'[');
                let mut first_element = true;
                for k in from..to {
                    let o = self.occurrences[k];
                    if o.wire == LEN && field.ty.packable() {
                        let packed = bytes_of(buf, o);
                        let wire = field.ty.wire_type();
                        let mut pos = 0;
                        while pos < packed.len() {
                            let (value, _) = value(packed, &mut pos, wire)?;
                            comma(&mut first_element, out);
                            self.scalar(field.ty, value, &[], out)?;
                        }
                    } else {
                        comma(&mut first_element, out);
                        match field.ty {
                            Ty::Message(_) | Ty::Wkt(_) => {
                                self.nested(field.ty, bytes_of(buf, o), depth, out)?
                            }
                            ty => self.scalar(ty, o.value, bytes_of(buf, o), out)?,
                        }
                    }
                }
                out.push(b']');
                Ok(())
            }
            Shape::Map(value_ty) => {
                if from == to && !emit {
                    return Ok(());
                }
                self.key(field, first, out);
                out.push(b'{');
                let keys = self.keys.len();
                let mut first_entry = true;
                let mut result = Ok(());
                for k in from..to {
                    let entry = bytes_of(buf, self.occurrences[k]);
                    comma(&mut first_entry, out);
                    result = self.entry(field.ty, value_ty, entry, depth, out);
                    if result.is_err() {
                        break;
                    }
                }
                // A key met twice keeps its last value; rare, so left to the dynamic path.
                let seen = &mut self.keys[keys..];
                seen.sort_unstable();
                if seen.windows(2).any(|w| w[0] == w[1]) {
                    result = Err(Fallback);
                }
                self.keys.truncate(keys);
                out.push(b'}');
                result
            }
        }
    }

    /// One map entry: a key (field 1) and a value (field 2), either missing meaning the default.
    fn entry(
        &mut self,
        key_ty: Ty,
        value_ty: Ty,
        buf: &[u8],
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Fallback> {
        let mut key_found = (0, &[][..]);
        let mut value_found: Option<(u64, &[u8])> = None;
        let mut pos = 0;
        while pos < buf.len() {
            let (number, wire) = key(buf, &mut pos)?;
            let (value, end) = value(buf, &mut pos, wire)?;
            let bytes = if wire == LEN {
                buf.get(value as usize..end as usize).ok_or(Fallback)?
            } else {
                &[][..]
            };
            match number {
                1 if wire == key_ty.wire_type() => key_found = (value, bytes),
                2 if wire == value_ty.wire_type() => {
                    if value_found.is_some() && matches!(value_ty, Ty::Message(_) | Ty::Wkt(_)) {
                        // Would merge; rare, left to the dynamic path.
                        return Err(Fallback);
                    }
                    value_found = Some((value, bytes));
                }
                1 | 2 => return Err(Fallback),
                _ => {}
            }
        }
        let (key_value, key_bytes) = key_found;
        let mut hasher = DefaultHasher::new();
        match key_ty {
            Ty::String => {
                let text = std::str::from_utf8(key_bytes).map_err(|_| Fallback)?;
                text.hash(&mut hasher);
                serde_json::Serializer::new(&mut *out)
                    .serialize_str(text)
                    .map_err(|_| Fallback)?;
            }
            Ty::Bool => {
                (key_value != 0).hash(&mut hasher);
                out.extend_from_slice(if key_value != 0 {
                    b"\"true\""
                } else {
                    b"\"false\""
                });
            }
            ty => {
                let number = integer(ty, key_value).ok_or(Fallback)?;
                number.hash(&mut hasher);
                out.push(b'"');
                write_i128(number, out);
                out.push(b'"');
            }
        }
        self.keys.push(hasher.finish());
        out.push(b':');
        match (value_ty, value_found) {
            (Ty::Message(_) | Ty::Wkt(_), Some((_, bytes))) => {
                self.nested(value_ty, bytes, depth, out)
            }
            (Ty::Message(_) | Ty::Wkt(_), None) => self.nested(value_ty, &[], depth, out),
            (ty, Some((value, bytes))) => self.scalar(ty, value, bytes, out),
            (ty, None) => self.scalar(ty, 0, &[], out),
        }
    }

    fn nested(
        &mut self,
        ty: Ty,
        bytes: &[u8],
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Fallback> {
        match ty {
            Ty::Message(index) => self.message(index, bytes, depth + 1, out),
            Ty::Wkt(index) => {
                let desc = self.plan.wkts.get(index).ok_or(Fallback)?.clone();
                let msg = DynamicMessage::decode(desc, bytes).map_err(|_| Fallback)?;
                let mut ser = serde_json::Serializer::new(&mut *out);
                msg.serialize_with_options(&mut ser, &self.serialize)
                    .map_err(|_| Fallback)
            }
            _ => Err(Fallback),
        }
    }

    fn key(&self, field: &FieldPlan, first: &mut bool, out: &mut Vec<u8>) {
        comma(first, out);
        out.extend_from_slice(if self.opts.use_proto_names {
            &field.key_proto
        } else {
            &field.key_json
        });
        out.push(b':');
    }

    /// Whether a field without presence holds its default, so is left out without
    /// emit_unpopulated (floats compare with `==`, as prost-reflect does: -0.0 is a default).
    fn is_default(&self, ty: Ty, value: u64, bytes: &[u8]) -> bool {
        match ty {
            Ty::Double => f64::from_bits(value) == 0.0,
            Ty::Float => f32::from_bits(value as u32) == 0.0,
            Ty::Bool => value == 0,
            Ty::String | Ty::Bytes => bytes.is_empty(),
            Ty::Enum(index) => self
                .plan
                .enums
                .get(index)
                .is_some_and(|e| value as i32 == e.default),
            Ty::Message(_) | Ty::Wkt(_) => false,
            ty => integer(ty, value) == Some(0),
        }
    }

    /// Writes one scalar value as prost-reflect does: 64-bit integers as strings, non-finite
    /// floats as strings, bytes in standard base64, enums by name when the number has one.
    fn scalar(&self, ty: Ty, value: u64, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Fallback> {
        let mut ser = serde_json::Serializer::new(&mut *out);
        let written = match ty {
            Ty::Double => {
                let v = f64::from_bits(value);
                if v.is_finite() {
                    ser.serialize_f64(v)
                } else {
                    out.extend_from_slice(non_finite(v.is_nan(), v > 0.0));
                    Ok(())
                }
            }
            Ty::Float => {
                let v = f32::from_bits(value as u32);
                if v.is_finite() {
                    ser.serialize_f32(v)
                } else {
                    out.extend_from_slice(non_finite(v.is_nan(), v > 0.0));
                    Ok(())
                }
            }
            Ty::Bool => ser.serialize_bool(value != 0),
            Ty::String => {
                let text = std::str::from_utf8(bytes).map_err(|_| Fallback)?;
                ser.serialize_str(text)
            }
            Ty::Bytes => {
                out.push(b'"');
                let start = out.len();
                let len = base64::encoded_len(bytes.len(), true).ok_or(Fallback)?;
                out.resize(start + len, 0);
                let n = BASE64_STANDARD
                    .encode_slice(bytes, &mut out[start..])
                    .map_err(|_| Fallback)?;
                out.truncate(start + n);
                out.push(b'"');
                Ok(())
            }
            Ty::Enum(index) => {
                let number = value as i32;
                let name = if self.opts.enums_as_numbers {
                    None
                } else {
                    self.plan.enums.get(index).ok_or(Fallback)?.name(number)
                };
                match name {
                    Some(name) => {
                        out.extend_from_slice(name);
                        Ok(())
                    }
                    None => ser.serialize_i32(number),
                }
            }
            Ty::Int64 | Ty::Sint64 | Ty::Sfixed64 | Ty::Uint64 | Ty::Fixed64 => {
                out.push(b'"');
                write_i128(integer(ty, value).ok_or(Fallback)?, out);
                out.push(b'"');
                Ok(())
            }
            Ty::Message(_) | Ty::Wkt(_) => return Err(Fallback),
            ty => {
                write_i128(integer(ty, value).ok_or(Fallback)?, out);
                Ok(())
            }
        };
        written.map_err(|_| Fallback)
    }
}

fn non_finite(nan: bool, positive: bool) -> &'static [u8] {
    match (nan, positive) {
        (true, _) => b"\"NaN\"",
        (false, true) => b"\"Infinity\"",
        (false, false) => b"\"-Infinity\"",
    }
}

/// The value of an integer type as prost decodes it from its varint or fixed bits.
fn integer(ty: Ty, value: u64) -> Option<i128> {
    Some(match ty {
        Ty::Int32 | Ty::Sfixed32 => i128::from(value as i32),
        Ty::Sint32 => {
            let n = value as u32;
            i128::from(((n >> 1) as i32) ^ -((n & 1) as i32))
        }
        Ty::Uint32 | Ty::Fixed32 => i128::from(value as u32),
        Ty::Int64 | Ty::Sfixed64 => i128::from(value as i64),
        Ty::Sint64 => i128::from(((value >> 1) as i64) ^ -((value & 1) as i64)),
        Ty::Uint64 | Ty::Fixed64 => i128::from(value),
        _ => return None,
    })
}

fn write_i128(number: i128, out: &mut Vec<u8>) {
    // Every integer type fits an i64 or a u64; serde_json's itoa writes both.
    let mut ser = serde_json::Serializer::new(&mut *out);
    let _ = match i64::try_from(number) {
        Ok(n) => ser.serialize_i64(n),
        Err(_) => ser.serialize_u64(number as u64),
    };
}

fn comma(first: &mut bool, out: &mut Vec<u8>) {
    if !*first {
        out.push(b',');
    }
    *first = false;
}

fn bytes_of(buf: &[u8], o: Occurrence) -> &[u8] {
    if o.wire == LEN {
        buf.get(o.value as usize..o.end as usize).unwrap_or(&[])
    } else {
        &[]
    }
}

/// Reads a field key: its number (1 to 2^29 - 1) and wire type.
pub(super) fn key(buf: &[u8], pos: &mut usize) -> Result<(u32, u8), Fallback> {
    let key = varint(buf, pos)?;
    let key = u32::try_from(key).map_err(|_| Fallback)?;
    let number = key >> 3;
    if number == 0 {
        return Err(Fallback);
    }
    Ok((number, (key & 7) as u8))
}

/// Reads one value of wire type `wire`: the value, or the start and end of its bytes. Groups
/// and unknown wire types fail.
fn value(buf: &[u8], pos: &mut usize, wire: u8) -> Result<(u64, u32), Fallback> {
    match wire {
        VARINT => Ok((varint(buf, pos)?, 0)),
        FIXED64 => {
            let bytes = buf.get(*pos..*pos + 8).ok_or(Fallback)?;
            *pos += 8;
            let bytes: [u8; 8] = bytes.try_into().map_err(|_| Fallback)?;
            Ok((u64::from_le_bytes(bytes), 0))
        }
        FIXED32 => {
            let bytes = buf.get(*pos..*pos + 4).ok_or(Fallback)?;
            *pos += 4;
            let bytes: [u8; 4] = bytes.try_into().map_err(|_| Fallback)?;
            Ok((u64::from(u32::from_le_bytes(bytes)), 0))
        }
        LEN => {
            let len = usize::try_from(varint(buf, pos)?).map_err(|_| Fallback)?;
            let start = *pos;
            let end = start.checked_add(len).ok_or(Fallback)?;
            if end > buf.len() {
                return Err(Fallback);
            }
            *pos = end;
            let end = u32::try_from(end).map_err(|_| Fallback)?;
            Ok((start as u64, end))
        }
        _ => Err(Fallback),
    }
}

/// Reads a varint of at most 10 bytes, as prost does.
fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, Fallback> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *buf.get(*pos).ok_or(Fallback)?;
        *pos += 1;
        if i == 9 && byte > 1 {
            return Err(Fallback);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Fallback)
}
