//! Query parameters bound into the request message (every scalar, well-known type, map and repeated
//! field, the [query] options, bad values), raw HttpBody bodies, PATCH field masks and non-message
//! body fields, all read back from the mirror.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::support::Gateway;

/// GETs `/v1/types/{s}?{query}` (Types, request AllTypes) and returns the echoed message,
/// failing the test unless the status is 200.
async fn types(gw: &Gateway, query: &str) -> Value {
    let (status, body) = gw.get(&format!("/v1/types/path?{query}")).await;
    assert_eq!(status, 200, "?{query}: {body}");
    body
}

/// (query string, JSON pointer into the echoed AllTypes, expected value there).
type Case = (&'static str, &'static str, Value);

fn check(query: &str, body: &Value, pointer: &str, want: &Value) {
    assert_eq!(
        body.pointer(pointer),
        Some(want),
        "?{query} → {pointer}: {body}"
    );
}

#[tokio::test]
async fn every_field_kind_binds_from_the_query() {
    let gw = Gateway::mirror("").await;
    let cases: Vec<Case> = vec![
        // 32-bit integers are JSON numbers, 64-bit ones strings, at their extremes.
        ("i32=-2147483648", "/i32", json!(-2147483648i64)),
        ("u32=4294967295", "/u32", json!(4294967295u64)),
        ("si32=-7", "/si32", json!(-7)),
        ("f32=9", "/f32", json!(9)),
        ("sf32=-11", "/sf32", json!(-11)),
        (
            "i64=-9223372036854775808",
            "/i64",
            json!("-9223372036854775808"),
        ),
        (
            "u64=18446744073709551615",
            "/u64",
            json!("18446744073709551615"),
        ),
        ("si64=-8", "/si64", json!("-8")),
        ("f64=10", "/f64", json!("10")),
        ("sf64=-12", "/sf64", json!("-12")),
        ("fl=1.5", "/fl", json!(1.5)),
        ("db=-2.25e3", "/db", json!(-2250.0)),
        ("db=NaN", "/db", json!("NaN")),
        ("db=-Infinity", "/db", json!("-Infinity")),
        // Booleans: the spellings Go's strconv.ParseBool takes.
        ("b=true", "/b", json!(true)),
        ("b=1", "/b", json!(true)),
        ("b=T", "/b", json!(true)),
        ("b=TRUE", "/b", json!(true)),
        // Enums by name and by number; proto3 enums are open.
        ("color=RED", "/color", json!("RED")),
        ("color=2", "/color", json!("GREEN")),
        ("color=7", "/color", json!(7)),
        // Bytes: standard and URL-safe base64, padded or not; an unencoded `+` arrives as a
        // space and is read back.
        ("by=aGk=", "/by", json!("aGk=")),
        ("by=aGk", "/by", json!("aGk=")),
        ("by=%2F%2B8%3D", "/by", json!("/+8=")),
        ("by=_-8", "/by", json!("/+8=")),
        ("by=/+8=", "/by", json!("/+8=")),
        // Strings: `+` is a space, `%2B` a plus.
        (
            "sub.subfield=a+b%2Bc%26d",
            "/sub/subfield",
            json!("a b+c&d"),
        ),
        // Nested fields by dotted path.
        (
            "sub.count=3&sub.subfield=x",
            "/sub",
            json!({"subfield": "x", "count": 3}),
        ),
        // Repeated fields: one value per parameter, in order, by proto or JSON name.
        (
            "rep_string=a&rep_string=b&repString=c",
            "/repString",
            json!(["a", "b", "c"]),
        ),
        ("rep_i64=1&repI64=-2", "/repI64", json!(["1", "-2"])),
        // Maps: one entry per `field[key]`, keys parsed as the key type.
        (
            "map_si[k]=1&map_si[j]=-2",
            "/mapSi",
            json!({"k": 1, "j": -2}),
        ),
        ("mapSi%5Bx%20y%5D=3", "/mapSi", json!({"x y": 3})),
        (
            "map_is[5]=five&map_is[-6]=six",
            "/mapIs",
            json!({"5": "five", "-6": "six"}),
        ),
        // A custom json_name and the proto name both work.
        ("renamed=r", "/renamed", json!("r")),
        ("custom_json=r", "/renamed", json!("r")),
        // Well-known types in their JSON string forms.
        (
            "ts=2024-01-02T03:04:05Z",
            "/ts",
            json!("2024-01-02T03:04:05Z"),
        ),
        (
            "ts=2024-01-02T03:04:05.5%2B01:00",
            "/ts",
            json!("2024-01-02T02:04:05.500Z"),
        ),
        ("dur=1.5s", "/dur", json!("1.500s")),
        ("dur=-3s", "/dur", json!("-3s")),
        ("mask=s,sub.count", "/mask", json!("s,sub.count")),
        ("mask=repString,wI32", "/mask", json!("repString,wI32")),
        // Proto field names, as grpc-gateway takes them.
        (
            "mask=rep_string,sub.subfield",
            "/mask",
            json!("repString,sub.subfield"),
        ),
        // Wrappers: the inner scalar; a wrapped default is still set.
        ("w_i32=5", "/wI32", json!(5)),
        (
            "wI64=-9007199254740993",
            "/wI64",
            json!("-9007199254740993"),
        ),
        ("w_u32=7", "/wU32", json!(7)),
        (
            "w_u64=18446744073709551615",
            "/wU64",
            json!("18446744073709551615"),
        ),
        ("w_fl=0.5", "/wFl", json!(0.5)),
        ("w_db=2.5", "/wDb", json!(2.5)),
        ("w_b=false", "/wB", json!(false)),
        ("w_s=", "/wS", json!("")),
        ("w_by=aGk", "/wBy", json!("aGk=")),
        // google.protobuf.Value: JSON if it parses, else a string.
        ("val=true", "/val", json!(true)),
        ("val=hello", "/val", json!("hello")),
        ("val=%5B1%2C%22a%22%5D", "/val", json!([1.0, "a"])),
        // Oneof members.
        ("choice_s=x", "/choiceS", json!("x")),
        ("choiceI=3", "/choiceI", json!(3)),
        // The path variable wins over a query parameter naming it.
        ("s=query", "/s", json!("path")),
    ];
    for (query, pointer, want) in &cases {
        let body = types(&gw, query).await;
        check(query, &body, pointer, want);
    }
}

#[tokio::test]
async fn proto_and_json_names_address_the_same_field() {
    let gw = Gateway::mirror("").await;
    for (query, want) in [("message_id=a", "a"), ("messageId=b", "b")] {
        let (status, body) = gw.get(&format!("/v1/messages?{query}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["messageId"], want, "?{query}");
    }
    let (status, body) = gw.get("/v1/messages?labels=a&labels=b").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["labels"], json!(["a", "b"]));
    // Two names, one singular field: a second value.
    let (status, body) = gw.get("/v1/messages?user_id=u&userId=v").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["message"], r#"too many values for field "user_id""#);
}

/// (query string, text the error message must contain: the field or parameter, quoted).
type Bad = (&'static str, &'static str);

#[tokio::test]
async fn bad_values_are_400_naming_the_field() {
    let gw = Gateway::mirror("").await;
    let calls = &gw.mirror.as_ref().expect("mirror stats").calls;
    let cases: &[Bad] = &[
        ("i32=abc", r#"field "i32""#),
        ("i32=2147483648", r#"field "i32""#),
        ("u32=-1", r#"field "u32""#),
        ("u64=18446744073709551616", r#"field "u64""#),
        ("i64=1.5", r#"field "i64""#),
        ("fl=1.5x", r#"field "fl""#),
        ("db=inf", r#"field "db""#),
        ("b=yes", r#"field "b""#),
        ("color=PURPLE", r#"field "color""#),
        ("color=red", r#"field "color""#),
        ("by=%21%21", r#"field "by""#),
        ("ts=yesterday", r#"field "ts""#),
        ("dur=5x", r#"field "dur""#),
        ("w_i32=x", r#"field "w_i32""#),
        ("wB=maybe", r#"field "w_b""#),
        ("map_si[k]=x", r#"field "map_si[k]""#),
        ("map_is[x]=y", r#"field "map_is[x]""#),
        ("map_si[k]=1&map_si[k]=2", r#"field "map_si[k]""#),
        ("map_si=1", r#"parameter "map_si""#),
        ("i32[k]=1", r#"parameter "i32[k]""#),
        ("i32.x=1", r#"parameter "i32.x""#),
        ("i32=1&i32=2", r#"field "i32""#),
        ("sub=x", r#"field "sub""#),
        ("choice_s=a&choice_i=1", r#"field "choice_i""#),
        ("%zz=1", r#"parameter "%zz""#),
        ("s2=%FF", r#"parameter "s2""#),
    ];
    for (query, named) in cases {
        let (status, body) = gw.get(&format!("/v1/types/path?{query}")).await;
        assert_eq!(status, 400, "?{query}: {body}");
        assert_eq!(body["code"], 3, "?{query}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(named),
            "?{query}: {message:?} lacks {named}"
        );
    }
    let (_, body) = gw.get("/v1/types/path?i32=abc").await;
    assert_eq!(
        body["message"],
        r#"invalid value for field "i32": expected integer, got "abc""#
    );
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no bad request reached the backend"
    );
}

#[tokio::test]
async fn unknown_parameters_are_ignored_by_default() {
    let gw = Gateway::mirror("").await;
    let body = types(&gw, "nope=1&sub.nope=2&i32=4&api_key=k").await;
    check("…", &body, "/i32", &json!(4));
}

#[tokio::test]
async fn unknown_parameters_rejected_when_configured() {
    let gw = Gateway::mirror(
        r#"
        [query]
        unknown = "reject"
        always_ignored = ["api_key"]
        "#,
    )
    .await;
    for (query, name) in [
        ("nope=1", "nope"),
        ("i32=1&sub.nope=2", "sub.nope"),
        ("api_key=k&apiKey=k", "apiKey"),
        ("map_x[k]=1", "map_x[k]"),
    ] {
        let (status, body) = gw.get(&format!("/v1/types/path?{query}")).await;
        assert_eq!(status, 400, "?{query}: {body}");
        assert_eq!(
            body["message"],
            format!("unknown query parameter {name:?}"),
            "?{query}"
        );
    }
    // Listed names, known fields, the path variable's own name and the body field pass.
    let body = types(&gw, "api_key=k&i32=2&s=q").await;
    check("api_key=k&i32=2&s=q", &body, "/i32", &json!(2));
    check("api_key=k&i32=2&s=q", &body, "/s", &json!("path"));
    let (status, body) = gw
        .send("POST", "/v1/tags/t?rep_string=q&api_key=k", r#"["a"]"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["repString"], json!(["a"]));
}

#[tokio::test]
async fn plus_is_a_space_unless_configured() {
    let cases = [
        ("", "a b+c d"),
        ("[query]\nplus_as_space = false", "a+b+c d"),
    ];
    for (config, want) in cases {
        let gw = Gateway::mirror(config).await;
        let (status, body) = gw.get("/v1/messages?text=a+b%2Bc%20d").await;
        assert_eq!(status, 200, "[{config}] {body}");
        assert_eq!(body["text"], want, "[{config}]");
    }
}

#[tokio::test]
async fn enums_case_insensitively_when_configured() {
    let gw = Gateway::mirror("[query]\ncase_insensitive_enums = true").await;
    for (query, want) in [
        ("color=red", json!("RED")),
        ("color=Green", json!("GREEN")),
        ("color=RED", json!("RED")),
        ("color=1", json!("RED")),
    ] {
        let body = types(&gw, query).await;
        check(query, &body, "/color", &want);
    }
    let (status, body) = gw.get("/v1/types/path?color=purple").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn http_body_upload_returns_the_raw_file() {
    let gw = Gateway::mirror("").await;
    let resp = gw
        .client
        .post(gw.url("/v1/uploads/report.txt"))
        .header("content-type", "text/plain; charset=utf-8")
        .body("hello,\nworld {not json}")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        b"hello,\nworld {not json}"
    );
}

#[tokio::test]
async fn http_body_raw_echoes_bytes_and_content_type() {
    let gw = Gateway::mirror("").await;
    let bytes: &[u8] = &[0x89, b'P', b'N', b'G', 0, 0xff, b'\n'];
    for (content_type, want_type) in [
        (Some("image/png"), "image/png"),
        (None, "application/octet-stream"),
    ] {
        let mut request = gw.client.post(gw.url("/v1/raw")).body(bytes.to_vec());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let resp = request.send().await.expect("request");
        assert_eq!(resp.status().as_u16(), 200, "{content_type:?}");
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some(want_type)
        );
        assert_eq!(resp.bytes().await.expect("body").as_ref(), bytes);
    }
}

/// The comma-separated paths of an echoed FieldMask, as a set.
fn mask(value: &Value) -> BTreeSet<String> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a FieldMask string: {value}"))
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn paths(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|p| (*p).to_owned()).collect()
}

#[tokio::test]
async fn patch_fills_update_mask_from_body_keys() {
    let gw = Gateway::mirror("").await;
    // (body, mask paths in JSON form as echoed)
    let cases = [
        (
            r#"{"s": "x", "sub": {"count": 1}}"#,
            paths(&["s", "sub.count"]),
        ),
        (
            r#"{"sub": {"subfield": "a", "count": 2}, "b": false}"#,
            paths(&["sub.subfield", "sub.count", "b"]),
        ),
        // Proto and JSON names; lists, maps and well-known types are leaves.
        (
            r#"{"rep_string": ["a"], "wI32": 3, "mapSi": {"k": 1}, "ts": "2024-01-01T00:00:00Z"}"#,
            paths(&["repString", "wI32", "mapSi", "ts"]),
        ),
        // An empty object names the field itself (grpc-gateway: clear it).
        (r#"{"sub": {}, "s": ""}"#, paths(&["sub", "s"])),
        (r#"{}"#, paths(&[])),
    ];
    for (body, want) in cases {
        let (status, echoed) = gw.send("PATCH", "/v1/patch/42", body).await;
        assert_eq!(status, 200, "{body}: {echoed}");
        assert_eq!(echoed["id"], "42", "{body}");
        assert_eq!(mask(&echoed["updateMask"]), want, "{body}: {echoed}");
    }
    let (_, echoed) = gw
        .send("PATCH", "/v1/patch/1", r#"{"s": "x", "sub": {"count": 1}}"#)
        .await;
    assert_eq!(echoed["message"]["s"], "x");
    assert_eq!(
        echoed["message"]["sub"],
        json!({"subfield": "", "count": 1})
    );
}

#[tokio::test]
async fn patch_keeps_an_explicit_update_mask() {
    let gw = Gateway::mirror("").await;
    for (query, want) in [
        ("update_mask=s", paths(&["s"])),
        ("updateMask=i32,sub.count", paths(&["i32", "sub.count"])),
        ("update_mask=rep_string", paths(&["repString"])),
    ] {
        let (status, echoed) = gw
            .send(
                "PATCH",
                &format!("/v1/patch/1?{query}"),
                r#"{"s": "x", "i32": 2, "b": true}"#,
            )
            .await;
        assert_eq!(status, 200, "?{query}: {echoed}");
        assert_eq!(mask(&echoed["updateMask"]), want, "?{query}");
        assert_eq!(echoed["message"]["i32"], 2, "?{query}");
    }
}

#[tokio::test]
async fn non_message_body_field_takes_a_json_array() {
    let gw = Gateway::mirror("").await;
    let (status, body) = gw
        .send("POST", "/v1/tags/hello?i32=3&rep_string=q", r#"["a", "b"]"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["s"], "hello");
    assert_eq!(body["repString"], json!(["a", "b"]));
    assert_eq!(body["i32"], 3);
    let (status, body) = gw.send("POST", "/v1/tags/hello", r#"{"a": 1}"#).await;
    assert_eq!(status, 400, "{body}");
}
