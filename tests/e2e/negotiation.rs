//! Content negotiation through the gateway and the mirror backend: `Accept` with q-values and
//! wildcards, request `Content-Type` (415), nothing acceptable (406), errors in the negotiated
//! format, and protobuf bodies both ways with no JSON step.

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use protogate::proto::google::rpc;
use serde_json::{json, Value};

use crate::support::{test_registry, Exchange, Gateway};

const JSON_IN: (&str, &str) = ("content-type", "application/json");
const PB_IN: (&str, &str) = ("content-type", "application/x-protobuf");
const PB_OUT: (&str, &str) = ("accept", "application/x-protobuf");

fn message_type(name: &str) -> MessageDescriptor {
    test_registry()
        .pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} in the test protos"))
}

/// A message of `name` from its JSON form.
fn message(name: &str, json: Value) -> DynamicMessage {
    DynamicMessage::deserialize(message_type(name), json).expect("valid JSON for the message")
}

fn encoded(name: &str, json: Value) -> Vec<u8> {
    message(name, json).encode_to_vec()
}

fn decoded(name: &str, bytes: &[u8]) -> Value {
    let msg = DynamicMessage::decode(message_type(name), bytes).expect("a valid message");
    serde_json::to_value(&msg).expect("JSON")
}

/// The body's `s` field, read in whatever format the response is in.
fn s_field(reply: &Exchange) -> String {
    match reply.content_type() {
        "application/json" => reply.json()["s"].as_str().unwrap_or_default().to_owned(),
        "application/xml" | "text/xml" => {
            let text = reply.text();
            let start = text.find("<s>").expect("an <s> element") + 3;
            let end = text.find("</s>").expect("an </s>");
            text[start..end].to_owned()
        }
        "application/x-protobuf" | "application/protobuf" => {
            decoded("test.v1.AllTypes", &reply.body)["s"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
        other => panic!("unexpected content type {other:?}: {}", reply.text()),
    }
}

#[tokio::test]
async fn accept_picks_the_response_format() {
    let gw = Gateway::mirror("").await;
    let cases: &[(&[&str], Option<&str>)] = &[
        (&["*/*"], Some("application/json")),
        (&["application/json"], Some("application/json")),
        (&["application/*"], Some("application/json")),
        (&["application/xml"], Some("application/xml")),
        (&["text/xml"], Some("text/xml")),
        (&["text/*"], Some("text/xml")),
        (&["application/x-protobuf"], Some("application/x-protobuf")),
        (&["application/protobuf"], Some("application/protobuf")),
        (
            &["application/json;q=0.5, application/xml"],
            Some("application/xml"),
        ),
        (&["application/xml;q=0.2, text/xml;q=0.3"], Some("text/xml")),
        (
            &["*/*;q=0.1, application/json;q=0"],
            Some("application/xml"),
        ),
        (
            &["application/protobuf;q=0.9, application/json;q=0.1"],
            Some("application/protobuf"),
        ),
        (
            &["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
            Some("application/xml"),
        ),
        (&["application/json;q=0.1", "text/xml"], Some("text/xml")),
        (&["image/png"], None),
        (&["application/json;q=0"], None),
        (&["text/html, image/*"], None),
    ];
    for (accept, want) in cases {
        let mut headers = vec![JSON_IN];
        headers.extend(accept.iter().map(|a| ("accept", *a)));
        let reply = gw
            .exchange("POST", "/v1/types", &headers, r#"{"s": "v"}"#)
            .await;
        assert_eq!(
            reply.headers.get("vary").and_then(|v| v.to_str().ok()),
            Some("accept"),
            "{accept:?}"
        );
        match want {
            Some(content_type) => {
                assert_eq!(reply.status, 200, "{accept:?}: {}", reply.text());
                assert_eq!(reply.content_type(), *content_type, "{accept:?}");
                assert_eq!(s_field(&reply), "v", "{accept:?}");
            }
            None => {
                assert_eq!(reply.status, 406, "{accept:?}: {}", reply.text());
                // The client accepts nothing the gateway writes, so the error is JSON.
                assert_eq!(reply.content_type(), "application/json");
                let body = reply.json();
                assert_eq!(body["code"], 3, "{body}");
                assert!(
                    body["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(accept[0]),
                    "{body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn content_type_picks_the_request_format() {
    let gw = Gateway::mirror("").await;
    let pb = encoded("test.v1.AllTypes", json!({"s": "v"}));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "application/json; charset=utf-8",
            br#"{"s": "v"}"#.to_vec(),
            200,
        ),
        (
            "application/merge-patch+json",
            br#"{"s": "v"}"#.to_vec(),
            200,
        ),
        (
            "application/xml",
            b"<AllTypes><s>v</s></AllTypes>".to_vec(),
            200,
        ),
        (
            "text/xml; charset=UTF-8",
            b"<AllTypes><s>v</s></AllTypes>".to_vec(),
            200,
        ),
        (
            "application/vnd.acme+xml",
            b"<AllTypes><s>v</s></AllTypes>".to_vec(),
            200,
        ),
        ("application/x-protobuf", pb.clone(), 200),
        ("application/protobuf", pb, 200),
        ("text/plain", br#"{"s": "v"}"#.to_vec(), 415),
        ("application/x-www-form-urlencoded", b"s=v".to_vec(), 415),
        ("application/octet-stream", b"\x0a\x01v".to_vec(), 415),
    ];
    for (content_type, body, status) in cases {
        let reply = gw
            .exchange("POST", "/v1/types", &[("content-type", content_type)], body)
            .await;
        assert_eq!(reply.status, status, "{content_type}: {}", reply.text());
        if status == 200 {
            assert_eq!(reply.json()["s"], "v", "{content_type}");
        } else {
            let body = reply.json();
            assert_eq!(body["code"], 3, "{body}");
            assert!(
                body["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("unsupported Content-Type"),
                "{body}"
            );
        }
    }
    // No body to read, no format to know: an empty body, or a route without a body.
    let reply = gw
        .exchange("POST", "/v1/types", &[("content-type", "text/plain")], "")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = gw
        .exchange(
            "GET",
            "/v1/types/x",
            &[("content-type", "text/plain")],
            "ignored",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["s"], "x");
    // The 415 in XML for a client that accepts XML.
    let reply = gw
        .exchange(
            "POST",
            "/v1/types",
            &[("content-type", "text/plain"), ("accept", "text/xml")],
            "x",
        )
        .await;
    assert_eq!(reply.status, 415);
    assert_eq!(reply.content_type(), "text/xml");
    assert!(
        reply
            .text()
            .contains("<code>3</code><message>unsupported Content-Type &quot;text/plain&quot;")
            || reply
                .text()
                .contains("<code>3</code><message>unsupported Content-Type \"text/plain\""),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn errors_come_back_in_the_negotiated_format() {
    let gw = Gateway::mirror("").await;
    let failing = [
        JSON_IN,
        ("grpc-metadata-x-mirror-code", "5"),
        ("grpc-metadata-x-mirror-message", "gone <now>"),
    ];
    let with = |accept: &'static str| {
        let mut headers = failing.to_vec();
        headers.push(("accept", accept));
        headers
    };

    let json = gw.exchange("POST", "/v1/types", &failing, "{}").await;
    assert_eq!(json.status, 404);
    assert_eq!(json.json()["message"], "gone <now>");
    assert_eq!(json.json()["details"][0]["reason"], "MIRROR_FAILURE");

    for accept in ["application/xml", "text/xml"] {
        let xml = gw.exchange("POST", "/v1/types", &with(accept), "{}").await;
        assert_eq!(xml.status, 404);
        assert_eq!(xml.content_type(), accept);
        assert_eq!(
            xml.text(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Status><code>5</code>\
             <message>gone &lt;now&gt;</message>\
             <details type=\"type.googleapis.com/google.rpc.ErrorInfo\">\
             <reason>MIRROR_FAILURE</reason><domain>mirror.test</domain></details></Status>"
        );
    }

    let pb = gw
        .exchange("POST", "/v1/types", &with("application/x-protobuf"), "{}")
        .await;
    assert_eq!(pb.status, 404);
    assert_eq!(pb.content_type(), "application/x-protobuf");
    let status = rpc::Status::decode(pb.body.as_ref()).expect("an encoded google.rpc.Status");
    assert_eq!((status.code, status.message.as_str()), (5, "gone <now>"));
    assert_eq!(
        status.details[0].type_url,
        "type.googleapis.com/google.rpc.ErrorInfo"
    );
    let info = rpc::ErrorInfo::decode(status.details[0].value.as_slice()).expect("ErrorInfo");
    assert_eq!(info.reason, "MIRROR_FAILURE");

    // Errors the gateway makes before any backend call, in XML too.
    let xml = [("accept", "application/xml")];
    let reply = gw.exchange("GET", "/nowhere", &xml, "").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.text(),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Status><code>5</code><message>Not Found</message></Status>"
    );
    let reply = gw.exchange("DELETE", "/v1/types", &xml, "").await;
    assert_eq!(reply.status, 405);
    assert!(reply.headers.get("allow").is_some());
    assert!(reply.text().contains("<code>12</code>"), "{}", reply.text());
}

#[tokio::test]
async fn streams_are_json_only() {
    let gw = Gateway::mirror("").await;
    let reply = gw
        .exchange("GET", "/v1/stream/m", &[("accept", "application/xml")], "")
        .await;
    assert_eq!(reply.status, 406);
    assert_eq!(reply.content_type(), "application/xml");
    let reply = gw
        .exchange(
            "GET",
            "/v1/stream/m",
            &[("accept", "application/xml, application/json;q=0.5")],
            "",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.text().starts_with(r#"{"result":"#),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn protobuf_bodies_pass_through_both_ways() {
    let gw = Gateway::mirror("").await;
    let every = json!({
        "s": "é", "i64": "-9223372036854775808", "u64": "18446744073709551615", "db": 1e300,
        "fl": "NaN", "by": "AQID", "color": "GREEN", "repI64": ["1", "-2"], "mapIs": {"-5": "x"},
        "sub": {"subfield": "x"}, "subs": [{}, {"count": 2}], "ts": "2024-01-02T03:04:05Z",
        "dur": "1.5s", "mask": "a,b.c", "st": {"k": [1, null]}, "val": true,
        "any": {"@type": "type.googleapis.com/test.v1.SubMessage", "count": 1}, "empty": {},
        "wU64": "1", "wS": "", "choiceI": 0, "renamed": "r"
    });
    let request = encoded("test.v1.AllTypes", every.clone());
    let reply = gw
        .exchange("POST", "/v1/types", &[PB_IN, PB_OUT], request.clone())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.content_type(), "application/x-protobuf");
    // Sent as it came, echoed by the mirror, returned as it came: the same bytes.
    assert_eq!(reply.body.as_ref(), request.as_slice());

    // The same message as JSON, by either route.
    let from_pb = gw.exchange("POST", "/v1/types", &[PB_IN], request).await;
    let from_json = gw
        .exchange("POST", "/v1/types", &[JSON_IN], every.to_string())
        .await;
    assert_eq!(from_pb.json(), from_json.json());
    assert_eq!(from_pb.json()["fl"], "NaN");

    let reply = gw
        .exchange("POST", "/v1/types", &[PB_IN], vec![0xffu8, 0xff, 0xff])
        .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("invalid protobuf body: not a valid test.v1.AllTypes"),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn path_query_and_masks_bind_over_protobuf_bodies() {
    let gw = Gateway::mirror(
        "[[http_rules]]\nselector = \"test.v1.Echo.Plain\"\npost = \"/v1/plain/{revision}\"\nbody = \"*\"\n",
    )
    .await;
    // body "*": the path wins, the rest of the body stays.
    let body = encoded(
        "test.v1.Message",
        json!({"messageId": "from-body", "text": "t"}),
    );
    let reply = gw
        .exchange("PUT", "/v1/messages/from-path", &[PB_IN, PB_OUT], body)
        .await;
    assert_eq!(
        decoded("test.v1.Message", &reply.body),
        json!({"messageId": "from-path", "text": "t"})
    );
    // A path value equal to the field's default still wins over the body.
    let body = encoded("test.v1.Message", json!({"revision": "7", "text": "t"}));
    let reply = gw.exchange("POST", "/v1/plain/0", &[PB_IN], body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["revision"], "0");
    assert_eq!(reply.json()["text"], "t");

    // body "sub": the body is a SubMessage; path and query fill the rest.
    let body = encoded("test.v1.SubMessage", json!({"subfield": "x", "count": 2}));
    let reply = gw
        .exchange("PATCH", "/v1/messages/m1?revision=9", &[PB_IN], body)
        .await;
    let got = reply.json();
    assert_eq!(
        (&got["messageId"], &got["revision"], &got["sub"]),
        (
            &json!("m1"),
            &json!("9"),
            &json!({"subfield": "x", "count": 2})
        ),
        "{got}"
    );

    // PATCH fills update_mask from the fields the binary body sets.
    let body = encoded(
        "test.v1.AllTypes",
        json!({"i32": 5, "sub": {"count": 2}, "repString": ["a"], "ts": "2024-01-01T00:00:00Z"}),
    );
    let reply = gw.exchange("PATCH", "/v1/patch/p1", &[PB_IN], body).await;
    assert_eq!(reply.json()["updateMask"], "i32,repString,sub.count,ts");

    // A non-message body field: the parent message holding only that field.
    let body = encoded("test.v1.AllTypes", json!({"repString": ["a", "b"]}));
    let reply = gw.exchange("POST", "/v1/tags/t", &[PB_IN], body).await;
    assert_eq!(reply.json()["repString"], json!(["a", "b"]));
    assert_eq!(reply.json()["s"], "t");
    let body = encoded("test.v1.AllTypes", json!({"repString": ["a"], "i32": 1}));
    let reply = gw.exchange("POST", "/v1/tags/t", &[PB_IN], body).await;
    assert_eq!(reply.status, 400, "{}", reply.text());

    // response_body "sub": the SubMessage alone, in binary.
    let reply = gw
        .exchange("GET", "/v1/sub/m?sub.subfield=x&sub.count=3", &[PB_OUT], "")
        .await;
    assert_eq!(
        decoded("test.v1.SubMessage", &reply.body),
        json!({"subfield": "x", "count": 3})
    );
}

#[tokio::test]
async fn other_content_types_can_be_read_as_json_as_grpc_gateway_does() {
    let gw = Gateway::mirror(
        r#"
        [json]
        other_content_types = "json"
        "#,
    )
    .await;
    // curl -d sends a form type; grpc-gateway reads the body as JSON whatever it says.
    for content_type in ["application/x-www-form-urlencoded", "text/plain"] {
        let reply = gw
            .exchange(
                "POST",
                "/v1/types",
                &[("content-type", content_type)],
                r#"{"s": "v"}"#,
            )
            .await;
        assert_eq!(reply.status, 200, "{content_type}: {}", reply.text());
        assert_eq!(reply.json()["s"], "v");
    }
    // The formats the gateway knows keep their meaning.
    let xml = gw
        .exchange(
            "POST",
            "/v1/types",
            &[("content-type", "application/xml")],
            "<AllTypes><s>x</s></AllTypes>",
        )
        .await;
    assert_eq!(xml.json()["s"], "x", "{}", xml.text());
    // Not JSON after all: a 400 for the body, not a 415.
    let bad = gw
        .exchange(
            "POST",
            "/v1/types",
            &[("content-type", "text/plain")],
            "s=v",
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
}
