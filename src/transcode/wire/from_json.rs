//! Proto3 JSON to protobuf wire bytes, streamed: serde_json reads the body once, driven by the
//! plan, and every value is encoded into the output as it is read. The visitors accept what
//! prost-reflect's deserializer accepts, value for value; what they do not know fails, and the
//! caller falls back.

use std::fmt;
use std::str::FromStr;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{DecodeError, DecodeSliceError, Engine as _};
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde::de::{DeserializeSeed, Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{EnumPlan, Fallback, FieldPlan, MessagePlan, Shape, Ty, WirePlan, LEN};
use crate::transcode::json::JsonOptions;

/// Reads `body` as the root message of `plan` and appends its encoding to `out`; on failure
/// `out` is as it was.
pub(super) fn transcode(
    plan: &WirePlan,
    body: &[u8],
    opts: &JsonOptions,
    out: &mut Vec<u8>,
) -> Result<(), Fallback> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let start = out.len();
    let mut cx = Cx {
        plan,
        reject_unknown: opts.reject_unknown_fields,
        deserialize: opts.deserialize_options(),
        out,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = MessageSeed {
        cx: &mut cx,
        index: 0,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if result.is_err() {
        out.truncate(start);
        return Err(Fallback);
    }
    Ok(())
}

struct Cx<'a> {
    plan: &'a WirePlan,
    reject_unknown: bool,
    /// For well-known types, handed to prost-reflect.
    deserialize: DeserializeOptions,
    out: &'a mut Vec<u8>,
}

fn fail<E: Error>(what: &str) -> E {
    E::custom(what)
}

struct MessageSeed<'c, 'a> {
    cx: &'c mut Cx<'a>,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let plan = self.cx.plan;
        let message = plan.messages.get(self.index).ok_or_else(|| fail("plan"))?;
        // Fields met, and fields given a value (for the oneof check), by index.
        let mut seen = 0u128;
        let mut set = 0u128;
        while let Some(found) = map.next_key_seed(KeySeed(message))? {
            let Some(index) = found else {
                if self.cx.reject_unknown {
                    return Err(fail("unknown field"));
                }
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let bit = 1u128 << index;
            // A field given twice replaces, where the wire would merge: left to the slow path.
            if seen & bit != 0 {
                return Err(fail("field given twice"));
            }
            seen |= bit;
            let field = message.fields.get(index).ok_or_else(|| fail("plan"))?;
            let present = map.next_value_seed(FieldSeed {
                cx: &mut *self.cx,
                field,
            })?;
            if present {
                if field.oneof & set != 0 {
                    return Err(fail("two members of a oneof"));
                }
                set |= bit;
            }
        }
        Ok(())
    }
}

/// A key of a message object: the index of the field it names, if any.
struct KeySeed<'p>(&'p MessagePlan);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.field_by_name(v))
    }
}

/// The value of one field of a message; `true` when it sets the field (not `null`, not an
/// unknown enum name).
struct FieldSeed<'c, 'a, 'p> {
    cx: &'c mut Cx<'a>,
    field: &'p FieldPlan,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_, '_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_, '_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field value")
    }

    fn visit_unit<E: Error>(self) -> Result<bool, E> {
        self.visit_none()
    }

    fn visit_none<E: Error>(self) -> Result<bool, E> {
        // `null` leaves a field unset, except a google.protobuf.Value, which it sets to null.
        let Ty::Wkt(index) = self.field.ty else {
            return Ok(false);
        };
        let desc = self.cx.plan.wkts.get(index).ok_or_else(|| fail("plan"))?;
        if desc.full_name() != "google.protobuf.Value" {
            return Ok(false);
        }
        if self.field.shape != Shape::Present {
            return Err(fail("null for a repeated google.protobuf.Value"));
        }
        tag(self.field.number, LEN, self.cx.out);
        // Value { null_value: NULL_VALUE }: field 1, varint 0.
        self.cx.out.extend_from_slice(&[2, 0x08, 0x00]);
        Ok(true)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        let field = self.field;
        match field.shape {
            Shape::List => {
                deserializer.deserialize_seq(ListVisitor { cx: self.cx, field })?;
                Ok(true)
            }
            Shape::Map(value) => {
                deserializer.deserialize_map(MapVisitor {
                    cx: self.cx,
                    number: field.number,
                    key: field.ty,
                    value,
                })?;
                Ok(true)
            }
            Shape::Plain | Shape::Present => ValueSeed {
                cx: self.cx,
                ty: field.ty,
                number: Some(field.number),
                skip_default: field.shape == Shape::Plain,
            }
            .deserialize(deserializer),
        }
    }
}

/// One value, written with its key (`number`) or bare (an element of a packed list); `true`
/// when it is a value (an unknown enum name is none).
struct ValueSeed<'c, 'a> {
    cx: &'c mut Cx<'a>,
    ty: Ty,
    number: Option<u32>,
    /// A field without presence: its default is not written, as prost-reflect does not.
    skip_default: bool,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        let ValueSeed {
            cx,
            ty,
            number,
            skip_default,
        } = self;
        let out = &mut *cx.out;
        let key = |out: &mut Vec<u8>| {
            if let Some(number) = number {
                tag(number, ty.wire_type(), out);
            }
        };
        match ty {
            Ty::Double => {
                let v = deserializer.deserialize_any(DoubleVisitor)?;
                if !(skip_default && v == 0.0) {
                    key(out);
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Ty::Float => {
                let v = deserializer.deserialize_any(FloatVisitor)?;
                if !(skip_default && v == 0.0) {
                    key(out);
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Ty::Int32 | Ty::Sint32 | Ty::Sfixed32 => {
                let v = deserializer.deserialize_any(IntVisitor::<i32>::new())?;
                if !(skip_default && v == 0) {
                    key(out);
                    match ty {
                        Ty::Sint32 => varint(u64::from(((v << 1) ^ (v >> 31)) as u32), out),
                        Ty::Sfixed32 => out.extend_from_slice(&v.to_le_bytes()),
                        _ => varint(i64::from(v) as u64, out),
                    }
                }
            }
            Ty::Int64 | Ty::Sint64 | Ty::Sfixed64 => {
                let v = deserializer.deserialize_any(IntVisitor::<i64>::new())?;
                if !(skip_default && v == 0) {
                    key(out);
                    match ty {
                        Ty::Sint64 => varint(((v << 1) ^ (v >> 63)) as u64, out),
                        Ty::Sfixed64 => out.extend_from_slice(&v.to_le_bytes()),
                        _ => varint(v as u64, out),
                    }
                }
            }
            Ty::Uint32 | Ty::Fixed32 => {
                let v = deserializer.deserialize_any(IntVisitor::<u32>::new())?;
                if !(skip_default && v == 0) {
                    key(out);
                    match ty {
                        Ty::Fixed32 => out.extend_from_slice(&v.to_le_bytes()),
                        _ => varint(u64::from(v), out),
                    }
                }
            }
            Ty::Uint64 | Ty::Fixed64 => {
                let v = deserializer.deserialize_any(IntVisitor::<u64>::new())?;
                if !(skip_default && v == 0) {
                    key(out);
                    match ty {
                        Ty::Fixed64 => out.extend_from_slice(&v.to_le_bytes()),
                        _ => varint(v, out),
                    }
                }
            }
            Ty::Bool => {
                let v = deserializer.deserialize_any(BoolVisitor)?;
                if v || !skip_default {
                    key(out);
                    out.push(u8::from(v));
                }
            }
            Ty::String | Ty::Bytes => {
                let start = out.len();
                key(out);
                let body = begin(out);
                if ty == Ty::String {
                    deserializer.deserialize_string(StringVisitor(out))?;
                } else {
                    deserializer.deserialize_str(BytesVisitor(out))?;
                }
                if skip_default && out.len() == body {
                    out.truncate(start);
                } else {
                    finish(out, body);
                }
            }
            Ty::Enum(index) => {
                let plan = cx.plan.enums.get(index).ok_or_else(|| fail("plan"))?;
                let found = deserializer.deserialize_any(EnumVisitor {
                    plan,
                    reject_unknown: cx.reject_unknown,
                })?;
                let Some(v) = found else {
                    return Ok(false);
                };
                if !(skip_default && v == plan.default) {
                    key(out);
                    varint(i64::from(v) as u64, out);
                }
            }
            Ty::Message(index) => {
                key(out);
                let body = begin(out);
                MessageSeed {
                    cx: &mut *cx,
                    index,
                }
                .deserialize(deserializer)?;
                finish(cx.out, body);
            }
            Ty::Wkt(index) => {
                let desc = cx.plan.wkts.get(index).ok_or_else(|| fail("plan"))?;
                let msg = DynamicMessage::deserialize_with_options(
                    desc.clone(),
                    deserializer,
                    &cx.deserialize,
                )?;
                key(out);
                msg.encode_length_delimited(out)
                    .map_err(|_| fail("encoding a well-known type"))?;
            }
        }
        Ok(true)
    }
}

/// A JSON array for a repeated field: packed when the type allows, else one key per element.
struct ListVisitor<'c, 'a, 'p> {
    cx: &'c mut Cx<'a>,
    field: &'p FieldPlan,
}

impl<'de> Visitor<'de> for ListVisitor<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ty = self.field.ty;
        if ty.packable() {
            let start = self.cx.out.len();
            tag(self.field.number, LEN, self.cx.out);
            let body = begin(self.cx.out);
            while seq
                .next_element_seed(ValueSeed {
                    cx: &mut *self.cx,
                    ty,
                    number: None,
                    skip_default: false,
                })?
                .is_some()
            {}
            if self.cx.out.len() == body {
                self.cx.out.truncate(start);
            } else {
                finish(self.cx.out, body);
            }
        } else {
            while seq
                .next_element_seed(ValueSeed {
                    cx: &mut *self.cx,
                    ty,
                    number: Some(self.field.number),
                    skip_default: false,
                })?
                .is_some()
            {}
        }
        Ok(())
    }
}

/// A JSON object for a map field: one entry (key field 1, value field 2) per key.
struct MapVisitor<'c, 'a> {
    cx: &'c mut Cx<'a>,
    number: u32,
    key: Ty,
    value: Ty,
}

impl<'de> Visitor<'de> for MapVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        loop {
            let start = self.cx.out.len();
            tag(self.number, LEN, self.cx.out);
            let body = begin(self.cx.out);
            let found = map.next_key_seed(MapKeySeed {
                out: &mut *self.cx.out,
                ty: self.key,
            })?;
            if found.is_none() {
                self.cx.out.truncate(start);
                return Ok(());
            }
            let value = map.next_value_seed(ValueSeed {
                cx: &mut *self.cx,
                ty: self.value,
                number: Some(2),
                skip_default: false,
            })?;
            // An entry whose value is an unknown enum name is not inserted (prost-reflect).
            if value {
                finish(self.cx.out, body);
            } else {
                self.cx.out.truncate(start);
            }
        }
    }
}

/// A map key, parsed as prost-reflect parses it and written as the entry's field 1.
struct MapKeySeed<'o> {
    out: &'o mut Vec<u8>,
    ty: Ty,
}

impl<'de> DeserializeSeed<'de> for MapKeySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for MapKeySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<(), E> {
        let out = self.out;
        let ty = self.ty;
        tag(1, ty.wire_type(), out);
        match ty {
            Ty::String => {
                varint(v.len() as u64, out);
                out.extend_from_slice(v.as_bytes());
            }
            Ty::Bool => out.push(u8::from(bool::from_str(v).map_err(E::custom)?)),
            Ty::Int32 | Ty::Sint32 | Ty::Sfixed32 => {
                let n = i32::from_str(v).map_err(E::custom)?;
                match ty {
                    Ty::Sint32 => varint(u64::from(((n << 1) ^ (n >> 31)) as u32), out),
                    Ty::Sfixed32 => out.extend_from_slice(&n.to_le_bytes()),
                    _ => varint(i64::from(n) as u64, out),
                }
            }
            Ty::Int64 | Ty::Sint64 | Ty::Sfixed64 => {
                let n = i64::from_str(v).map_err(E::custom)?;
                match ty {
                    Ty::Sint64 => varint(((n << 1) ^ (n >> 63)) as u64, out),
                    Ty::Sfixed64 => out.extend_from_slice(&n.to_le_bytes()),
                    _ => varint(n as u64, out),
                }
            }
            Ty::Uint32 | Ty::Fixed32 => {
                let n = u32::from_str(v).map_err(E::custom)?;
                match ty {
                    Ty::Fixed32 => out.extend_from_slice(&n.to_le_bytes()),
                    _ => varint(u64::from(n), out),
                }
            }
            Ty::Uint64 | Ty::Fixed64 => {
                let n = u64::from_str(v).map_err(E::custom)?;
                match ty {
                    Ty::Fixed64 => out.extend_from_slice(&n.to_le_bytes()),
                    _ => varint(n, out),
                }
            }
            _ => return Err(fail("map key type")),
        }
        Ok(())
    }
}

struct DoubleVisitor;

impl Visitor<'_> for DoubleVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<f64, E> {
        match f64::from_str(v) {
            Ok(value) => Ok(value),
            Err(_) if v == "Infinity" => Ok(f64::INFINITY),
            Err(_) if v == "-Infinity" => Ok(f64::NEG_INFINITY),
            Err(_) if v == "NaN" => Ok(f64::NAN),
            Err(err) => Err(E::custom(err)),
        }
    }
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<f32, E> {
        if v < f64::from(f32::MIN) || v > f64::from(f32::MAX) {
            Err(fail("float value out of range"))
        } else {
            Ok(v as f32)
        }
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<f32, E> {
        Ok(v as f32)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<f32, E> {
        Ok(v as f32)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<f32, E> {
        match f32::from_str(v) {
            Ok(value) => Ok(value),
            Err(_) if v == "Infinity" => Ok(f32::INFINITY),
            Err(_) if v == "-Infinity" => Ok(f32::NEG_INFINITY),
            Err(_) if v == "NaN" => Ok(f32::NAN),
            Err(err) => Err(E::custom(err)),
        }
    }
}

/// An integer type read from a JSON number or a decimal string.
trait Integer: Sized + FromStr + TryFrom<i64> + TryFrom<u64> {
    /// The value of an integral float in range, as prost-reflect converts it.
    fn from_f64(v: f64) -> Option<Self>;
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl Integer for $t {
            fn from_f64(v: f64) -> Option<Self> {
                if v.fract() != 0.0 || v < (<$t>::MIN as f64) || v > (<$t>::MAX as f64) {
                    None
                } else {
                    Some(v as $t)
                }
            }
        }
    )*};
}

integer!(i32, i64, u32, u64);

struct IntVisitor<T>(std::marker::PhantomData<T>);

impl<T> IntVisitor<T> {
    fn new() -> Self {
        IntVisitor(std::marker::PhantomData)
    }
}

impl<T: Integer> Visitor<'_> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(|_| fail("not an integer"))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| fail("out of range"))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| fail("out of range"))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
        T::from_f64(v).ok_or_else(|| fail("not an integer"))
    }
}

struct BoolVisitor;

impl Visitor<'_> for BoolVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a boolean")
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
}

/// A string's bytes, appended to the output as they are read.
struct StringVisitor<'o>(&'o mut Vec<u8>);

impl Visitor<'_> for StringVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<(), E> {
        self.0.extend_from_slice(v.as_bytes());
        Ok(())
    }
}

/// Base64 (standard, or URL-safe when the text has `-` or `_`; padding optional), decoded
/// straight into the output.
struct BytesVisitor<'o>(&'o mut Vec<u8>);

const BASE64_CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_allow_trailing_bits(true)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, BASE64_CONFIG);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, BASE64_CONFIG);

impl Visitor<'_> for BytesVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("base64")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<(), E> {
        let out = self.0;
        let start = out.len();
        out.resize(start + base64::decoded_len_estimate(v.len()), 0);
        let decoded = match STANDARD.decode_slice(v, &mut out[start..]) {
            Err(DecodeSliceError::DecodeError(DecodeError::InvalidByte(_, b'-' | b'_'))) => {
                URL_SAFE.decode_slice(v, &mut out[start..])
            }
            other => other,
        };
        match decoded {
            Ok(n) => {
                out.truncate(start + n);
                Ok(())
            }
            Err(_) => Err(fail("invalid base64")),
        }
    }
}

struct EnumVisitor<'p> {
    plan: &'p EnumPlan,
    reject_unknown: bool,
}

impl Visitor<'_> for EnumVisitor<'_> {
    type Value = Option<i32>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an enum name or number")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Option<i32>, E> {
        match self.plan.number(v) {
            Some(n) => Ok(Some(n)),
            None if self.reject_unknown => Err(fail("unknown enum name")),
            None => Ok(None),
        }
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Option<i32>, E> {
        i32::try_from(v).map(Some).map_err(|_| fail("out of range"))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Option<i32>, E> {
        i32::try_from(v).map(Some).map_err(|_| fail("out of range"))
    }
}

fn tag(number: u32, wire: u8, out: &mut Vec<u8>) {
    varint(u64::from(number << 3 | u32::from(wire)), out);
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reserves one byte for a length and returns where the bytes it measures start.
fn begin(out: &mut Vec<u8>) -> usize {
    out.push(0);
    out.len()
}

/// Writes the length of what follows `body` before it, moving the bytes when the length takes
/// more than the one byte reserved (128 bytes or more).
fn finish(out: &mut Vec<u8>, body: usize) {
    let len = out.len() - body;
    if len < 0x80 {
        out[body - 1] = len as u8;
        return;
    }
    let mut head = [0u8; 10];
    let mut n = 0;
    let mut value = len as u64;
    while value >= 0x80 {
        head[n] = (value as u8) | 0x80;
        value >>= 7;
        n += 1;
    }
    head[n] = value as u8;
    n += 1;
    let end = out.len();
    out.resize(end + n - 1, 0);
    out.copy_within(body..end, body + n - 1);
    out[body - 1..body - 1 + n].copy_from_slice(&head[..n]);
}
