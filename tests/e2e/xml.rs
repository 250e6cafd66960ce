//! The XML mapping through the gateway and the mirror backend: every field type and well-known
//! type in both directions, binding on top of XML bodies, and hostile XML, which is refused with a
//! 400 while the gateway keeps serving.

use serde_json::{json, Value};

use crate::support::{Exchange, Gateway};

const XML_IN: (&str, &str) = ("content-type", "application/xml");
const XML_OUT: (&str, &str) = ("accept", "application/xml");
const JSON_IN: (&str, &str) = ("content-type", "application/json");

/// Every field of test.v1.AllTypes, in JSON.
fn every_field_json() -> Value {
    json!({
        "s": "héllo <&> \"q\" 'a'",
        "i32": -7, "i64": "-9223372036854775808", "u32": 4294967295u32,
        "u64": "18446744073709551615", "si32": -5, "si64": "-5", "f32": 4294967295u32,
        "f64": "7", "sf32": -1, "sf64": "-1", "fl": 1.5, "db": 2.5e300, "b": true,
        "by": "AQID", "color": "GREEN",
        "repString": ["a", "", "b"], "repI64": ["1", "-2"],
        "mapSi": {"b": 2, "a": 1}, "mapIs": {"7": "y", "-5": "x"},
        "sub": {"subfield": "x", "count": 3}, "subs": [{"count": 1}, {}],
        "ts": "2024-01-02T03:04:05.123Z", "dur": "-1.5s", "mask": "fooBar,sub.count",
        "st": {"name": "tea", "n": 1.5, "ok": true, "none": null, "list": [1, "two"], "obj": {"k": "v"}},
        "val": "text", "list": [1, false, null],
        "any": {"@type": "type.googleapis.com/test.v1.SubMessage", "subfield": "packed", "count": 2},
        "empty": {},
        "wI32": 0, "wI64": "5", "wU32": 7, "wU64": "9", "wFl": -0.5, "wDb": 0.25, "wB": false,
        "wS": "", "wBy": "AQ==",
        "choiceS": "picked", "renamed": "custom"
    })
}

/// The same message as the gateway writes it in XML.
fn every_field_xml() -> String {
    let value = |inner: &str| format!("<value>{inner}</value>");
    let entry =
        |key: &str, inner: &str| format!("<fields><key>{key}</key>{}</fields>", value(inner));
    [
        r#"<?xml version="1.0" encoding="UTF-8"?><AllTypes>"#,
        r#"<s>héllo &lt;&amp;&gt; "q" 'a'</s>"#,
        "<i32>-7</i32><i64>-9223372036854775808</i64><u32>4294967295</u32>",
        "<u64>18446744073709551615</u64><si32>-5</si32><si64>-5</si64><f32>4294967295</f32>",
        "<f64>7</f64><sf32>-1</sf32><sf64>-1</sf64><fl>1.5</fl><db>2.5e300</db><b>true</b>",
        "<by>AQID</by><color>GREEN</color>",
        "<repString>a</repString><repString/><repString>b</repString>",
        "<repI64>1</repI64><repI64>-2</repI64>",
        "<mapSi><key>a</key><value>1</value></mapSi><mapSi><key>b</key><value>2</value></mapSi>",
        "<mapIs><key>-5</key><value>x</value></mapIs><mapIs><key>7</key><value>y</value></mapIs>",
        "<sub><subfield>x</subfield><count>3</count></sub><subs><count>1</count></subs><subs/>",
        "<ts>2024-01-02T03:04:05.123Z</ts><dur>-1.500s</dur><mask>fooBar,sub.count</mask>",
        "<st>",
        &entry(
            "list",
            "<listValue><values><numberValue>1.0</numberValue></values>\
             <values><stringValue>two</stringValue></values></listValue>",
        ),
        &entry("n", "<numberValue>1.5</numberValue>"),
        &entry("name", "<stringValue>tea</stringValue>"),
        &entry("none", "<nullValue>NULL_VALUE</nullValue>"),
        &entry(
            "obj",
            &format!(
                "<structValue>{}</structValue>",
                entry("k", "<stringValue>v</stringValue>")
            ),
        ),
        &entry("ok", "<boolValue>true</boolValue>"),
        "</st>",
        "<val><stringValue>text</stringValue></val>",
        "<list><values><numberValue>1.0</numberValue></values><values><boolValue>false</boolValue>\
         </values><values><nullValue>NULL_VALUE</nullValue></values></list>",
        r#"<any type="type.googleapis.com/test.v1.SubMessage"><subfield>packed</subfield><count>2</count></any>"#,
        "<empty/>",
        "<wI32>0</wI32><wI64>5</wI64><wU32>7</wU32><wU64>9</wU64><wFl>-0.5</wFl><wDb>0.25</wDb>",
        "<wB>false</wB><wS/><wBy>AQ==</wBy>",
        "<choiceS>picked</choiceS><renamed>custom</renamed>",
        "</AllTypes>",
    ]
    .concat()
}

async fn post_types(gw: &Gateway, headers: &[(&str, &str)], body: String) -> Exchange {
    let reply = gw.exchange("POST", "/v1/types", headers, body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply
}

#[tokio::test]
async fn every_field_and_well_known_type_both_ways() {
    let gw = Gateway::mirror("").await;
    let json_body = every_field_json().to_string();
    let xml_body = every_field_xml();

    // JSON in, JSON out: the reference.
    let reference = post_types(&gw, &[JSON_IN], json_body.clone()).await.json();
    assert_eq!(reference["wDb"], 0.25, "{reference}");

    // XML in: the backend got the same message.
    let from_xml = post_types(&gw, &[XML_IN], xml_body.clone()).await;
    assert_eq!(from_xml.content_type(), "application/json");
    assert_eq!(from_xml.json(), reference);

    // XML out: exactly the canonical document, from a JSON or an XML request.
    let to_xml = post_types(&gw, &[JSON_IN, XML_OUT], json_body).await;
    assert_eq!(to_xml.content_type(), "application/xml");
    assert_eq!(to_xml.text(), xml_body);
    let both = post_types(&gw, &[XML_IN, XML_OUT], xml_body.clone()).await;
    assert_eq!(both.text(), xml_body);
}

#[tokio::test]
async fn text_forms_and_variations_read_as_documented() {
    let gw = Gateway::mirror("").await;
    let cases: &[(&str, Value)] = &[
        // Any root name, proto names, whitespace around non-string values.
        (
            "<Anything><rep_string>a</rep_string><i32> 42 </i32><s> kept </s></Anything>",
            json!({"repString": ["a"], "i32": 42, "s": " kept "}),
        ),
        // Booleans, enums by number, URL-safe base64, CDATA, references.
        (
            "<x><b>1</b><color>1</color><by>-_8</by><s><![CDATA[<raw>]]>&#x41;&amp;</s></x>",
            json!({"b": true, "color": "RED", "by": "+/8=", "s": "<raw>A&"}),
        ),
        // Well-known types in field form; empty elements are empty messages.
        (
            "<x><ts><seconds>1</seconds><nanos>5000000</nanos></ts><dur/><wI32/></x>",
            json!({"ts": "1970-01-01T00:00:01.005Z", "dur": "0s", "wI32": 0}),
        ),
        // An Any by its fields, and a map entry without a key.
        (
            "<x><any><typeUrl>type.googleapis.com/google.protobuf.Duration</typeUrl>\
             <value>CAI=</value></any><mapSi><value>3</value></mapSi></x>",
            json!({"any": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "2s"},
                   "mapSi": {"": 3}}),
        ),
        // An empty body is the empty message.
        ("", json!({"s": ""})),
    ];
    for (xml, want) in cases {
        let got = post_types(&gw, &[XML_IN], (*xml).to_owned()).await.json();
        for (key, value) in want.as_object().expect("object") {
            assert_eq!(&got[key], value, "{xml} -> {got}");
        }
    }
}

#[tokio::test]
async fn path_and_query_bind_on_top_of_an_xml_body_field() {
    let gw = Gateway::mirror("").await;
    // PATCH /v1/messages/{message_id}, body "sub": path and query fill the rest.
    let reply = gw
        .exchange(
            "PATCH",
            "/v1/messages/m1?revision=9&labels=a&labels=b",
            &[XML_IN, XML_OUT],
            "<SubMessage><subfield>x</subfield><count>0</count></SubMessage>",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        r#"<?xml version="1.0" encoding="UTF-8"?><Message><messageId>m1</messageId><revision>9</revision><sub><subfield>x</subfield></sub><labels>a</labels><labels>b</labels></Message>"#
    );
    // body "*": the path wins over the body.
    let reply = gw
        .exchange(
            "PUT",
            "/v1/messages/from-path",
            &[XML_IN],
            "<Message><messageId>from-body</messageId><text>t</text></Message>",
        )
        .await;
    assert_eq!(reply.json()["messageId"], "from-path", "{}", reply.text());
    assert_eq!(reply.json()["text"], "t");
}

#[tokio::test]
async fn patch_masks_the_elements_present_even_at_zero() {
    let gw = Gateway::mirror("").await;
    let reply = gw
        .exchange(
            "PATCH",
            "/v1/patch/p1",
            &[XML_IN],
            "<AllTypes><i32>0</i32><sub><count>0</count></sub><repString/><ts>2024-01-01T00:00:00Z</ts></AllTypes>",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["updateMask"], "i32,sub.count,repString,ts");
}

#[tokio::test]
async fn non_message_body_and_response_fields() {
    let gw = Gateway::mirror("").await;
    // body "rep_string": the parent message holding only that field.
    let reply = gw
        .exchange(
            "POST",
            "/v1/tags/t",
            &[XML_IN, XML_OUT],
            "<AllTypes><repString>a</repString><repString>b</repString></AllTypes>",
        )
        .await;
    assert_eq!(
        reply.text(),
        r#"<?xml version="1.0" encoding="UTF-8"?><AllTypes><s>t</s><repString>a</repString><repString>b</repString></AllTypes>"#
    );
    let reply = gw
        .exchange(
            "POST",
            "/v1/tags/t",
            &[XML_IN],
            "<AllTypes><s>x</s></AllTypes>",
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json()["message"],
        "invalid value at /AllTypes/s: this body holds only the field repString"
    );
    // response_body "sub": the sub-message is the document.
    let reply = gw
        .exchange("GET", "/v1/sub/m?sub.subfield=x", &[XML_OUT], "")
        .await;
    assert_eq!(
        reply.text(),
        r#"<?xml version="1.0" encoding="UTF-8"?><SubMessage><subfield>x</subfield></SubMessage>"#
    );
}

#[tokio::test]
async fn http_body_routes_stay_raw() {
    let gw = Gateway::mirror("").await;
    let reply = gw
        .exchange(
            "POST",
            "/v1/raw",
            &[XML_IN, XML_OUT],
            "<not-parsed>&undefined;</not-parsed>",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.content_type(), "application/xml");
    assert_eq!(reply.text(), "<not-parsed>&undefined;</not-parsed>");
    assert!(reply.headers.get("vary").is_none());
}

/// Hostile or broken XML bodies: each a 400 with a clear message, in XML when XML is accepted.
fn hostile_bodies() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut laughs = String::from(r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">"#);
    for i in 1..10 {
        let refs = format!("&lol{};", i - 1).repeat(10);
        laughs.push_str(&format!(r#"<!ENTITY lol{i} "{refs}">"#));
    }
    laughs.push_str("]><AllTypes><s>&lol9;</s></AllTypes>");
    let cases: Vec<(&'static str, String, &'static str)> = vec![
        (
            "XXE",
            r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><AllTypes><s>&xxe;</s></AllTypes>"#.to_owned(),
            "refused XML: <!DOCTYPE> is not allowed",
        ),
        ("billion laughs", laughs, "refused XML: <!DOCTYPE> is not allowed"),
        (
            "entity without a DTD",
            "<AllTypes><s>&lol9;</s></AllTypes>".to_owned(),
            "malformed XML at /AllTypes/s: undefined entity &lol9;",
        ),
        (
            "deep nesting",
            format!("<AllTypes>{}{}</AllTypes>", "<n>".repeat(200), "</n>".repeat(200)),
            "XML too deep at /AllTypes/n: more than 64 nested elements",
        ),
        (
            "huge element count",
            format!("<AllTypes>{}</AllTypes>", "<repI64>1</repI64>".repeat(100_001)),
            "XML too large: more than 100000 elements",
        ),
        (
            "malformed",
            "<AllTypes><s>x</AllTypes>".to_owned(),
            "malformed XML at /AllTypes/s: ",
        ),
        (
            "text where a message belongs",
            "<AllTypes><sub>hello</sub></AllTypes>".to_owned(),
            r#"invalid value at /AllTypes/sub: expected elements of test.v1.SubMessage, got text "hello""#,
        ),
        (
            "repeated singular",
            "<AllTypes><sub/><sub/></AllTypes>".to_owned(),
            r#"invalid value at /AllTypes/sub[2]: "sub" is not a repeated field but appears more than once"#,
        ),
        (
            "wrong type",
            "<AllTypes><subs/><subs><count>abc</count></subs></AllTypes>".to_owned(),
            r#"invalid value at /AllTypes/subs[2]/count: expected integer, got "abc""#,
        ),
        (
            "two roots",
            "<AllTypes/><AllTypes/>".to_owned(),
            "malformed XML: a second root element <AllTypes>",
        ),
    ];
    let mut cases: Vec<_> = cases
        .into_iter()
        .map(|(name, body, want)| (name, body.into_bytes(), want))
        .collect();
    cases.push((
        "not UTF-8",
        b"<AllTypes><s>\xff\xfe</s></AllTypes>".to_vec(),
        "malformed XML",
    ));
    cases
}

#[tokio::test]
async fn hostile_xml_is_a_400_and_the_gateway_keeps_serving() {
    let gw = Gateway::mirror("").await;
    for (name, body, want) in hostile_bodies() {
        let reply = gw
            .exchange("POST", "/v1/types", &[XML_IN], body.clone())
            .await;
        assert_eq!(reply.status, 400, "{name}: {}", reply.text());
        let message = reply.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.starts_with(want), "{name}: {message}");

        // The same error in XML for a client that accepts it.
        let reply = gw
            .exchange("POST", "/v1/types", &[XML_IN, XML_OUT], body)
            .await;
        assert_eq!(reply.status, 400, "{name}");
        assert_eq!(reply.content_type(), "application/xml", "{name}");
        let text = reply.text();
        assert!(
            text.starts_with(
                r#"<?xml version="1.0" encoding="UTF-8"?><Status><code>3</code><message>"#
            ),
            "{name}: {text}"
        );

        let ok = post_types(
            &gw,
            &[XML_IN],
            "<AllTypes><s>still here</s></AllTypes>".into(),
        )
        .await;
        assert_eq!(ok.json()["s"], "still here", "{name}");
    }
    assert_eq!(
        gw.mirror
            .as_ref()
            .map(|m| m.calls.load(std::sync::atomic::Ordering::Relaxed)),
        Some(hostile_bodies().len()),
        "only the follow-up requests reached the backend"
    );
}

#[tokio::test]
async fn unknown_elements_follow_json_unknown_fields() {
    let body = "<AllTypes><nope><deep/></nope><s>x</s></AllTypes>";
    let lenient = Gateway::mirror("").await;
    let reply = lenient.exchange("POST", "/v1/types", &[XML_IN], body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["s"], "x");

    let strict = Gateway::mirror("[json]\nunknown_fields = \"reject\"\n").await;
    let reply = strict.exchange("POST", "/v1/types", &[XML_IN], body).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json()["message"],
        r#"unknown element at /AllTypes/nope: test.v1.AllTypes has no field "nope""#
    );
}

#[tokio::test]
async fn json_options_shape_xml_output() {
    let gw = Gateway::mirror("[json]\nuse_proto_names = true\npretty = true\n").await;
    let reply = gw
        .exchange(
            "POST",
            "/v1/types",
            &[JSON_IN, ("accept", "text/xml")],
            r#"{"repString": ["a"], "sub": {"count": 1}}"#,
        )
        .await;
    assert_eq!(reply.content_type(), "text/xml");
    assert_eq!(
        reply.text(),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><AllTypes>\n  <rep_string>a</rep_string>\n  \
         <sub>\n    <count>1</count>\n  </sub>\n</AllTypes>"
    );
}
