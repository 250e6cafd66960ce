//! Differential tests: the direct path against the dynamic-message path on seeded random
//! messages of every field kind, their JSON variants, and broken inputs.

// Unwraps here are assertions on test data: a failure fails the test.

use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, Value};

use super::WirePlan;
use crate::transcode::bind::BindOptions;
use crate::transcode::json::{self, JsonOptions};
use crate::transcode::{Bound, RequestPlan, ResponseFormat, ResponsePlan};

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        // Shapes the repository's protos do not have, compiled from a scratch directory.
        let scratch = std::env::temp_dir().join(format!("protogate-wire-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::write(scratch.join("wiretest.proto"), WIRETEST_PROTO).unwrap();
        std::fs::write(scratch.join("wiretest2.proto"), WIRETEST2_PROTO).unwrap();
        let mut builder = crate::descriptors::RegistryBuilder::new();
        builder
            .add_protos(
                &[
                    root.join("protos/test/v1/echo.proto"),
                    root.join("protos/bench/v1/bench.proto"),
                    scratch.join("wiretest.proto"),
                    scratch.join("wiretest2.proto"),
                ],
                &[root.join("protos"), scratch.clone()],
            )
            .unwrap();
        builder.build().unwrap().pool().clone()
    })
}

const WIRETEST_PROTO: &str = r#"
syntax = "proto3";
package wiretest;
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
message Opt {
  enum E { ZERO = 0; ONE = 1; }
  optional int32 a = 1;
  optional string b = 2;
  optional Opt next = 3;
  repeated double d = 4;
  map<bool, bytes> m = 5;
  map<uint32, Opt> n = 6;
  sint32 s = 7;
  oneof pick { Opt x = 8; bytes y = 9; sfixed32 z = 17; }
  E e = 10;
  repeated E es = 11;
  optional E oe = 12;
  map<sfixed64, E> me = 13;
  fixed64 f = 14;
  repeated google.protobuf.Value vals = 15;
  map<string, google.protobuf.Timestamp> tm = 16;
  repeated float fl = 18;
  map<sint64, string> ms = 19;
}
message WithNull { google.protobuf.NullValue n = 1; }
"#;

const WIRETEST2_PROTO: &str = r#"
syntax = "proto2";
package wiretest;
message Old { optional int32 a = 1 [default = 5]; }
"#;

fn desc(name: &str) -> MessageDescriptor {
    pool().get_message_by_name(name).unwrap()
}

const TYPES: [&str; 8] = [
    "wiretest.Opt",
    "test.v1.AllTypes",
    "test.v1.Message",
    "test.v1.PatchRequest",
    "test.v1.UploadRequest",
    "bench.v1.Small",
    "bench.v1.Large",
    "bench.v1.Item",
];

/// xorshift64*: small, seeded, good enough to pick shapes and values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn all_options() -> Vec<JsonOptions> {
    let mut all = Vec::new();
    for bits in 0..8 {
        all.push(JsonOptions {
            emit_unpopulated: bits & 1 != 0,
            use_proto_names: bits & 2 != 0,
            enums_as_numbers: bits & 4 != 0,
            ..JsonOptions::default()
        });
    }
    all
}

fn random_string(rng: &mut Rng) -> String {
    let pool = [
        "",
        "a",
        "widget",
        "héllo wörld",
        "quote \" and \\ backslash",
        "control \u{1} \n \t \u{7f}",
        "emoji 🦀",
        "</script>",
        "日本語",
    ];
    let mut s = rng.pick(&pool).to_owned();
    if rng.chance(30) {
        s.push_str(&rng.next().to_string());
    }
    s
}

fn random_int(rng: &mut Rng) -> i64 {
    match rng.below(6) {
        0 => 0,
        1 => -1,
        2 => i64::MAX,
        3 => i64::MIN,
        4 => rng.below(1000) as i64,
        _ => rng.next() as i64,
    }
}

fn random_double(rng: &mut Rng) -> f64 {
    match rng.below(9) {
        0 => 0.0,
        1 => -0.0,
        2 => f64::NAN,
        3 => f64::INFINITY,
        4 => f64::NEG_INFINITY,
        5 => 1e300,
        6 => 98.5,
        7 => f64::MIN_POSITIVE,
        _ => (rng.next() as i64) as f64 / 7.0,
    }
}

fn random_scalar(rng: &mut Rng, kind: &Kind) -> Value {
    match kind {
        Kind::Double => Value::F64(random_double(rng)),
        Kind::Float => Value::F32(random_double(rng) as f32),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(random_int(rng) as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(random_int(rng)),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(random_int(rng) as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(random_int(rng) as u64),
        Kind::Bool => Value::Bool(rng.chance(50)),
        Kind::String => Value::String(random_string(rng)),
        Kind::Bytes => {
            let len = rng.below(12) as usize;
            Value::Bytes(
                (0..len)
                    .map(|_| rng.next() as u8)
                    .collect::<Vec<_>>()
                    .into(),
            )
        }
        // Unknown numbers too: they are written as numbers.
        Kind::Enum(_) => Value::EnumNumber(rng.pick(&[0, 1, 2, 7, -3])),
        Kind::Message(m) => Value::Message(random_message(rng, m, 0)),
    }
}

fn random_key(rng: &mut Rng, kind: &Kind) -> MapKey {
    match kind {
        Kind::String => MapKey::String(random_string(rng)),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(random_int(rng)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(random_int(rng) as i32),
        Kind::Uint32 | Kind::Fixed32 => MapKey::U32(random_int(rng) as u32),
        Kind::Uint64 | Kind::Fixed64 => MapKey::U64(random_int(rng) as u64),
        _ => MapKey::Bool(rng.chance(50)),
    }
}

/// A valid value of a well-known type, built through its JSON form.
fn random_well_known(rng: &mut Rng, m: &MessageDescriptor) -> DynamicMessage {
    let json = match m.full_name() {
        "google.protobuf.Timestamp" => {
            rng.pick(&["\"1970-01-01T00:00:00Z\"", "\"2024-02-29T12:34:56.789Z\""]).to_owned()
        }
        "google.protobuf.Duration" => rng.pick(&["\"0s\"", "\"1.5s\"", "\"-3s\""]).to_owned(),
        "google.protobuf.FieldMask" => rng.pick(&["\"\"", "\"a,bC.d\""]).to_owned(),
        "google.protobuf.Struct" => rng
            .pick(&["{}", "{\"a\":1,\"b\":[true,null,\"x\"],\"c\":{\"d\":2.5}}"])
            .to_owned(),
        "google.protobuf.Value" => rng.pick(&["null", "1.5", "\"s\"", "[1,{}]", "{\"k\":false}"]).to_owned(),
        "google.protobuf.ListValue" => rng.pick(&["[]", "[1,\"a\",null]"]).to_owned(),
        "google.protobuf.Any" => rng
            .pick(&[
                "{\"@type\":\"type.googleapis.com/test.v1.SubMessage\",\"subfield\":\"x\",\"count\":3}",
                "{\"@type\":\"type.googleapis.com/google.protobuf.Duration\",\"value\":\"2s\"}",
            ])
            .to_owned(),
        "google.protobuf.Empty" => "{}".to_owned(),
        "google.protobuf.BoolValue" => rng.pick(&["true", "false"]).to_owned(),
        "google.protobuf.StringValue" => serde_json::to_string(&random_string(rng)).unwrap(),
        "google.protobuf.BytesValue" => "\"AAEC\"".to_owned(),
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => {
            rng.pick(&["0", "1.25", "\"NaN\""]).to_owned()
        }
        _ => rng.pick(&["0", "7", "\"12\""]).to_owned(),
    };
    let mut de = serde_json::Deserializer::from_str(&json);
    DynamicMessage::deserialize(m.clone(), &mut de).unwrap()
}

fn random_message(rng: &mut Rng, m: &MessageDescriptor, depth: usize) -> DynamicMessage {
    if m.full_name().starts_with("google.protobuf.") {
        return random_well_known(rng, m);
    }
    let mut msg = DynamicMessage::new(m.clone());
    for field in m.fields() {
        if !rng.chance(60) {
            continue;
        }
        if let Some(oneof) = field.containing_oneof() {
            if oneof.fields().any(|f| msg.has_field(&f)) {
                continue;
            }
        }
        let kind = field.kind();
        if depth > 3 && matches!(kind, Kind::Message(_)) {
            continue;
        }
        let value = if field.is_map() {
            let Kind::Message(entry) = &kind else {
                unreachable!()
            };
            let key_kind = entry.map_entry_key_field().kind();
            let value_kind = entry.map_entry_value_field().kind();
            let n = rng.below(4);
            Value::Map(
                (0..n)
                    .map(|_| {
                        (
                            random_key(rng, &key_kind),
                            random_value(rng, &value_kind, depth),
                        )
                    })
                    .collect(),
            )
        } else if field.is_list() {
            let n = rng.below(4);
            Value::List((0..n).map(|_| random_value(rng, &kind, depth)).collect())
        } else {
            random_value(rng, &kind, depth)
        };
        msg.set_field(&field, value);
    }
    msg
}

fn random_value(rng: &mut Rng, kind: &Kind, depth: usize) -> Value {
    match kind {
        Kind::Message(m) => Value::Message(random_message(rng, m, depth + 1)),
        other => random_scalar(rng, other),
    }
}

/// Whether some map (or Struct) in `msg` has more than one entry: prost-reflect writes those in
/// hash order, so the JSON is compared as values rather than bytes.
fn has_unordered(msg: &DynamicMessage) -> bool {
    msg.fields().any(|(_, value)| unordered_value(value))
}

fn unordered_value(value: &Value) -> bool {
    match value {
        Value::Map(map) => {
            map.len() > 1
                || map
                    .values()
                    .any(|v| matches!(v, Value::Message(m) if has_unordered(m)))
        }
        Value::List(list) => list.iter().any(unordered_value),
        Value::Message(m) => has_unordered(m),
        _ => false,
    }
}

/// The dynamic path's JSON for `bytes`, or `None` if they do not decode.
fn old_json(desc: &MessageDescriptor, bytes: &[u8], opts: &JsonOptions) -> Option<Vec<u8>> {
    let msg = DynamicMessage::decode(desc.clone(), bytes).ok()?;
    let mut out = Vec::new();
    json::encode_message(&msg, opts, &mut out).unwrap();
    Some(out)
}

fn same_json(old: &[u8], new: &[u8], unordered: bool) -> bool {
    if old == new {
        return true;
    }
    unordered
        && serde_json::from_slice::<serde_json::Value>(old).unwrap()
            == serde_json::from_slice::<serde_json::Value>(new).unwrap()
}

/// Checks wire → JSON for `bytes`: when the direct path succeeds, the dynamic path succeeds with
/// the same JSON. Returns whether the direct path succeeded.
fn check_to_json(
    plan: &WirePlan,
    desc: &MessageDescriptor,
    bytes: &[u8],
    opts: &JsonOptions,
) -> bool {
    let mut new = b"prefix".to_vec();
    let ok = plan.wire_to_json(bytes, opts, &mut new).is_ok();
    if !ok {
        assert_eq!(new, b"prefix", "a failure leaves the output as it was");
        return false;
    }
    let new = &new[6..];
    let old = old_json(desc, bytes, opts).unwrap_or_else(|| {
        panic!(
            "direct succeeded on bytes the dynamic path refuses: {bytes:?} -> {}",
            String::from_utf8_lossy(new)
        )
    });
    let unordered = DynamicMessage::decode(desc.clone(), bytes)
        .map(|m| has_unordered(&m))
        .unwrap_or(true);
    assert!(
        same_json(&old, new, unordered),
        "{}:\nold {}\nnew {}",
        desc.full_name(),
        String::from_utf8_lossy(&old),
        String::from_utf8_lossy(new)
    );
    true
}

/// A message as a JSON value, to compare two messages: NaN equals NaN there, and map order is
/// not part of it.
fn comparable(msg: &DynamicMessage) -> serde_json::Value {
    let opts = JsonOptions {
        emit_unpopulated: false,
        enums_as_numbers: true,
        ..JsonOptions::default()
    };
    let mut out = Vec::new();
    json::encode_message(msg, &opts, &mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

/// The dynamic path's reading of a JSON body, normalised through the wire.
fn old_message(
    desc: &MessageDescriptor,
    body: &[u8],
    opts: &JsonOptions,
) -> Result<DynamicMessage, String> {
    json::decode_message(desc.clone(), body, opts, "")
        .map(|m| DynamicMessage::decode(desc.clone(), m.encode_to_vec().as_slice()).unwrap())
        .map_err(|e| e.to_string())
}

/// Checks JSON → wire for `body`: when the direct path succeeds, the dynamic path reads the
/// same message. Returns whether the direct path succeeded.
fn check_to_wire(
    plan: &WirePlan,
    desc: &MessageDescriptor,
    body: &[u8],
    opts: &JsonOptions,
) -> bool {
    let mut wire = vec![];
    if plan.json_to_wire(body, opts, &mut wire).is_err() {
        assert!(wire.is_empty(), "a failure leaves the output as it was");
        return false;
    }
    let new = DynamicMessage::decode(desc.clone(), wire.as_slice()).unwrap_or_else(|e| {
        panic!(
            "direct wrote bytes that do not decode: {e} for {}",
            String::from_utf8_lossy(body)
        )
    });
    match old_message(desc, body, opts) {
        Ok(old) => assert_eq!(
            comparable(&old),
            comparable(&new),
            "{} from {}",
            desc.full_name(),
            String::from_utf8_lossy(body)
        ),
        Err(e) => panic!(
            "direct accepted what the dynamic path refuses ({e}): {}",
            String::from_utf8_lossy(body)
        ),
    }
    true
}

#[test]
fn every_test_and_bench_type_compiles_to_a_plan() {
    for name in TYPES {
        assert!(WirePlan::new(&desc(name)).is_some(), "{name}");
    }
    // Well-known types at the root stay with prost-reflect.
    assert!(WirePlan::new(&desc("google.protobuf.Empty")).is_none());
    // So do proto2 types and the NullValue enum.
    assert!(WirePlan::new(&desc("wiretest.Old")).is_none());
    assert!(WirePlan::new(&desc("wiretest.WithNull")).is_none());
}

#[test]
fn random_messages_to_json_match_the_dynamic_path_byte_for_byte() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let options = all_options();
    let mut direct = 0;
    for case in 0..2000 {
        let name = TYPES[case % TYPES.len()];
        let d = desc(name);
        let plan = WirePlan::new(&d).unwrap();
        let msg = random_message(&mut rng, &d, 0);
        let bytes = msg.encode_to_vec();
        for opts in &options {
            assert!(
                check_to_json(&plan, &d, &bytes, opts),
                "the direct path fell back on a canonical encoding of {name}: {msg:?}"
            );
            direct += 1;
        }
        // The same message twice: repeated fields doubled, messages merged, the last scalar
        // wins; a map then has every key twice, which may fall back.
        let mut twice = bytes.clone();
        twice.extend_from_slice(&bytes);
        // And another message merged on top, and an unknown field.
        let other = random_message(&mut rng, &d, 0).encode_to_vec();
        let mut merged = bytes.clone();
        merged.extend_from_slice(&other);
        merged.extend_from_slice(&[0xb8, 0x3e, 0x05]); // field 999, varint 5
        merged.extend_from_slice(&[0xc2, 0x3e, 0x02, 0x01, 0x02]); // field 1000, two bytes
        for opts in &options {
            check_to_json(&plan, &d, &twice, opts);
            check_to_json(&plan, &d, &merged, opts);
        }
    }
    assert!(direct >= 16_000);
}

#[test]
fn json_from_the_dynamic_serializer_reads_back_the_same_message() {
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let options = all_options();
    for case in 0..2000 {
        let name = TYPES[case % TYPES.len()];
        let d = desc(name);
        let plan = WirePlan::new(&d).unwrap();
        let msg = random_message(&mut rng, &d, 0);
        for opts in &options {
            let mut body = Vec::new();
            json::encode_message(&msg, opts, &mut body).unwrap();
            assert!(
                check_to_wire(&plan, &d, &body, opts),
                "fell back on {}",
                String::from_utf8_lossy(&body)
            );
            let strict = JsonOptions {
                reject_unknown_fields: true,
                ..opts.clone()
            };
            assert!(check_to_wire(&plan, &d, &body, &strict));
        }
    }
}

/// Rewrites a JSON value the ways clients do: numbers as strings, keys sorted (serde_json's map
/// is ordered), nulls for fields, unknown fields.
fn vary(rng: &mut Rng, value: &mut serde_json::Value, known: &[String]) {
    match value {
        serde_json::Value::Number(n) if rng.chance(40) => {
            *value = serde_json::Value::String(n.to_string());
        }
        serde_json::Value::Object(map) => {
            for v in map.values_mut() {
                vary(rng, v, known);
            }
            if rng.chance(30) {
                map.insert(
                    "zzUnknown".into(),
                    serde_json::json!({"a": [1, {"b": null}]}),
                );
            }
            if rng.chance(30) && !known.is_empty() {
                let key = &known[rng.below(known.len() as u64) as usize];
                map.entry(key.clone()).or_insert(serde_json::Value::Null);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                vary(rng, v, known);
            }
        }
        _ => {}
    }
}

#[test]
fn json_variants_read_back_the_same_message_or_fall_back() {
    let mut rng = Rng(0x5eed_1234_abcd_0003);
    let opts = JsonOptions::default();
    let strict = JsonOptions {
        reject_unknown_fields: true,
        ..JsonOptions::default()
    };
    let mut direct = 0;
    for case in 0..3000 {
        let name = TYPES[case % TYPES.len()];
        let d = desc(name);
        let plan = WirePlan::new(&d).unwrap();
        let msg = random_message(&mut rng, &d, 0);
        let mut body = Vec::new();
        json::encode_message(&msg, &opts, &mut body).unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let known: Vec<String> = d
            .fields()
            .flat_map(|f| [f.json_name().to_owned(), f.name().to_owned()])
            .collect();
        vary(&mut rng, &mut value, &known);
        let varied = serde_json::to_vec(&value).unwrap();
        if check_to_wire(&plan, &d, &varied, &opts) {
            direct += 1;
        }
        check_to_wire(&plan, &d, &varied, &strict);
        // A key given twice: the dynamic path keeps the last; the direct path falls back.
        let key = &known[rng.below(known.len() as u64) as usize];
        let mut twice = format!("{{\"{key}\":null,").into_bytes();
        twice.extend_from_slice(&body[1..]);
        if body.len() > 2 {
            check_to_wire(&plan, &d, &twice, &opts);
        }
    }
    // Most variants stay on the direct path (a null added under the other spelling of a key
    // already there is a field given twice, which falls back).
    assert!(direct > 1500, "{direct}");
}

#[test]
fn accepted_spellings_match_the_dynamic_path() {
    let d = desc("test.v1.AllTypes");
    let plan = WirePlan::new(&d).unwrap();
    let opts = JsonOptions::default();
    let bodies = [
        r#"{"i32": "12", "i64": 12, "u64": "18446744073709551615", "si64": "-9223372036854775808"}"#,
        r#"{"i32": 1e2, "u32": 3.0, "db": "NaN", "fl": "-Infinity", "f64": "7"}"#,
        r#"{"db": "1e5", "fl": 3.4e38, "b": true, "color": "GREEN", "sf32": -5}"#,
        r#"{"color": 2, "by": "-_8=", "s": "\u00e9\n"}"#,
        r#"{"by": "AAEC", "w_by": "AAEC", "mapSi": {"a": 1, "a": 2}, "map_is": {"-5": "x"}}"#,
        r#"{"renamed": "r", "choiceS": null, "choiceI": 4}"#,
        r#"{"color": "NOT_A_COLOR", "sub": {"subfield": "x", "count": "3"}, "subs": [{}, {"count": 1}]}"#,
        r#"{"val": null, "st": {"a": null}, "list": [null], "ts": "2020-01-01T00:00:00Z", "empty": {}}"#,
        r#"{"repI64": ["1", 2, -3], "repString": [], "mapSi": {}, "mask": "a.b,c"}"#,
        "  ",
        r#"{"sub": null, "subs": null, "map_si": null, "rep_i64": null}"#,
    ];
    for body in bodies {
        assert!(
            check_to_wire(&plan, &d, body.as_bytes(), &opts),
            "fell back on {body}"
        );
    }
}

#[test]
fn refused_inputs_fall_back_and_the_dynamic_path_explains() {
    let d = desc("test.v1.AllTypes");
    let plan = WirePlan::new(&d).unwrap();
    let opts = JsonOptions::default();
    let strict = JsonOptions {
        reject_unknown_fields: true,
        ..JsonOptions::default()
    };
    let deep = format!("{}{}", "{\"sub\":".repeat(200), "}".repeat(200));
    let deep_value = format!("{{\"val\":{}1{}}}", "[".repeat(200), "]".repeat(200));
    let bodies: Vec<(String, &JsonOptions)> = vec![
        (r#"{"i32": "abc"}"#.into(), &opts),
        (r#"{"i32": 1.5}"#.into(), &opts),
        (r#"{"i32": 3000000000}"#.into(), &opts),
        (r#"{"u32": -1}"#.into(), &opts),
        (r#"{"fl": 1e39}"#.into(), &opts),
        (r#"{"s": 5}"#.into(), &opts),
        (r#"{"b": "true"}"#.into(), &opts),
        (r#"{"by": "***"}"#.into(), &opts),
        (r#"{"choiceS": "a", "choiceI": 1}"#.into(), &opts),
        (r#"{"choiceI": 1, "choiceI": 2}"#.into(), &opts),
        (r#"{"ts": "yesterday"}"#.into(), &opts),
        (r#"{"mapIs": {"x": "y"}}"#.into(), &opts),
        (r#"{"mapSi": {"a": null}}"#.into(), &opts),
        (r#"{"subs": [null]}"#.into(), &opts),
        (r#"{"nope": 1}"#.into(), &strict),
        (r#"{"color": "NOT_A_COLOR"}"#.into(), &strict),
        (r#"{"s": "a"} trailing"#.into(), &opts),
        (r#"{"s": "a""#.into(), &opts),
        ("[]".into(), &opts),
        ("null".into(), &opts),
        (deep, &opts),
        (deep_value, &opts),
    ];
    for (body, o) in &bodies {
        let mut wire = Vec::new();
        let direct = plan.json_to_wire(body.as_bytes(), o, &mut wire);
        assert!(direct.is_err(), "direct accepted {body}");
        assert!(wire.is_empty());
        assert!(old_message(&d, body.as_bytes(), o).is_err(), "{body}");
    }
}

#[test]
fn broken_wire_bytes_fall_back_or_match() {
    let mut rng = Rng(0x5eed_1234_abcd_0004);
    let opts = JsonOptions::default();
    let mut refused = 0;
    for case in 0..3000 {
        let name = TYPES[case % TYPES.len()];
        let d = desc(name);
        let plan = WirePlan::new(&d).unwrap();
        let mut bytes = random_message(&mut rng, &d, 0).encode_to_vec();
        if bytes.is_empty() {
            continue;
        }
        match rng.below(3) {
            0 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
            1 => {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = rng.next() as u8;
            }
            _ => bytes.push(rng.next() as u8),
        }
        if !check_to_json(&plan, &d, &bytes, &opts) {
            refused += 1;
            // What the direct path refuses, the dynamic path mostly refuses too.
        }
    }
    assert!(refused > 0);
    // Invalid UTF-8 in a string, a wrong wire type, a bad varint, an end-group tag.
    let d = desc("test.v1.AllTypes");
    let plan = WirePlan::new(&d).unwrap();
    for bytes in [
        &[0x0a, 0x01, 0xff][..],
        &[0x08, 0x01][..],
        &[
            0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ][..],
        &[0x0c][..],
        &[0x00, 0x00][..],
        &[0xaa, 0x01, 0x03, 0x08, 0x01][..],
    ] {
        let mut out = Vec::new();
        assert!(
            plan.wire_to_json(bytes, &opts, &mut out).is_err(),
            "{bytes:?}"
        );
        assert!(old_json(&d, bytes, &opts).is_none(), "{bytes:?}");
    }
}

#[test]
fn spread_and_unpacked_repeated_fields_and_oneof_switches() {
    let d = desc("test.v1.AllTypes");
    let plan = WirePlan::new(&d).unwrap();
    let mut bytes = Vec::new();
    // rep_i64 (18): packed [1, 2], then unpacked 3, then packed [4].
    bytes.extend_from_slice(&[0x92, 0x01, 0x02, 0x01, 0x02]);
    bytes.extend_from_slice(&[0x90, 0x01, 0x03]);
    bytes.extend_from_slice(&[0x92, 0x01, 0x01, 0x04]);
    // sub (21) twice: subfield "a", then count 5: merged.
    bytes.extend_from_slice(&[0xaa, 0x01, 0x03, 0x0a, 0x01, b'a']);
    bytes.extend_from_slice(&[0xaa, 0x01, 0x02, 0x10, 0x05]);
    // i32 (2) twice: the last wins.
    bytes.extend_from_slice(&[0x10, 0x07, 0x10, 0x09]);
    // choice_s (50), then choice_i (51), then choice_s again: the last member wins.
    bytes.extend_from_slice(&[
        0x92, 0x03, 0x01, b'x', 0x98, 0x03, 0x04, 0x92, 0x03, 0x01, b'y',
    ]);
    // rep_string (17) empty; rep_i64 (18) as an empty packed run.
    bytes.extend_from_slice(&[0x8a, 0x01, 0x00, 0x92, 0x01, 0x00]);
    // map_si (19): an entry without key, one without value.
    bytes.extend_from_slice(&[0x9a, 0x01, 0x02, 0x10, 0x03]);
    bytes.extend_from_slice(&[0x9a, 0x01, 0x03, 0x0a, 0x01, b'k']);
    for opts in all_options() {
        assert!(check_to_json(&plan, &d, &bytes, &opts));
    }
    for opts in all_options() {
        assert!(check_to_json(&plan, &d, &[0x92, 0x01, 0x00], &opts));
    }
    let mut out = Vec::new();
    plan.wire_to_json(
        &bytes,
        &JsonOptions {
            emit_unpopulated: false,
            ..JsonOptions::default()
        },
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(r#""repI64":["1","2","3","4"]"#), "{text}");
    assert!(
        text.contains(r#""sub":{"subfield":"a","count":5}"#),
        "{text}"
    );
    assert!(
        text.contains(r#""choiceS":"y""#) && !text.contains("choiceI"),
        "{text}"
    );
}

fn old_bound(plan: &RequestPlan, vars: &[String], body: &[u8]) -> Result<DynamicMessage, String> {
    // The dynamic path: the body, then the variables on top.
    let desc = plan.input().clone();
    let mut msg = json::decode_message(desc.clone(), body, &JsonOptions::default(), "")
        .map_err(|e| e.to_string())?;
    for (name, value) in ["message_id"].iter().zip(vars) {
        let path = crate::transcode::bind::resolve_variable(&desc, name).unwrap();
        crate::transcode::bind::set_path_value(&mut msg, &path, value, &BindOptions::default())
            .map_err(|e| e.to_string())?;
    }
    Ok(DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()).unwrap())
}

#[test]
fn request_plan_appends_path_variables_after_the_body() {
    let d = desc("test.v1.Message");
    let plan = RequestPlan::new(
        d.clone(),
        &http::Method::PUT,
        "*",
        &["message_id"],
        JsonOptions::default(),
        BindOptions::default(),
    )
    .unwrap();
    let cases = [
        (
            r#"{"messageId": "body", "text": "t", "sub": {"count": 2}}"#,
            "path",
        ),
        (r#"{"text": "t", "labels": ["a", "b"]}"#, "p2"),
        ("", "only"),
    ];
    for (body, var) in cases {
        let vars = vec![var.to_owned()];
        let bound = plan
            .build(&vars, None, Some("application/json"), &Bytes::from(body))
            .unwrap();
        let Bound::Encoded(bytes) = bound else {
            panic!("the direct path was not taken for {body}");
        };
        let new = DynamicMessage::decode(d.clone(), bytes).unwrap();
        let old = old_bound(&plan, &vars, body.as_bytes()).unwrap();
        assert_eq!(comparable(&new), comparable(&old), "{body}");
    }
    // An empty variable is a default: the body's value must not survive, so the dynamic path
    // runs and its message is the answer.
    let vars = vec![String::new()];
    let bound = plan
        .build(
            &vars,
            None,
            Some("application/json"),
            &Bytes::from(r#"{"messageId":"b"}"#),
        )
        .unwrap();
    let Bound::Message(msg) = bound else {
        panic!("an empty variable must take the dynamic path");
    };
    assert_eq!(
        msg.get_field_by_name("message_id").unwrap().as_str(),
        Some("")
    );
    // A bad body: the dynamic path's error, word for word.
    let err = plan
        .build(
            &vars,
            None,
            Some("application/json"),
            &Bytes::from(r#"{"revision":"x"}"#),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        old_bound(&plan, &vars, br#"{"revision":"x"}"#).unwrap_err()
    );
}

#[test]
fn response_plan_renders_directly_and_explains_bad_bytes_as_before() {
    let d = desc("test.v1.AllTypes");
    let plan = ResponsePlan::new(d.clone(), "", JsonOptions::default()).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0005);
    for _ in 0..200 {
        let msg = random_message(&mut rng, &d, 0);
        let bytes = Bytes::from(msg.encode_to_vec());
        let new = plan.render_as(bytes.clone(), ResponseFormat::Json).unwrap();
        // The dynamic path decodes first (a -0.0 set in `msg` is not on the wire).
        let decoded = DynamicMessage::decode(d.clone(), bytes.clone()).unwrap();
        let old = plan.render_message(&decoded).unwrap();
        assert_eq!(new.content_type, old.content_type);
        assert!(
            same_json(&old.body, &new.body, has_unordered(&msg)),
            "old {}\nnew {}",
            String::from_utf8_lossy(&old.body),
            String::from_utf8_lossy(&new.body)
        );
    }
    let bad = plan
        .render_as(Bytes::from_static(&[0x0a, 0x05]), ResponseFormat::Json)
        .unwrap_err();
    assert!(
        bad.to_string().contains("bad response from backend"),
        "{bad}"
    );
}
