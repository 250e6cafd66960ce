//! Every failure becomes a google.rpc.Status JSON body with the right HTTP status, and the
//! gateway keeps serving after it: bad input, oversized bodies, backend statuses, broken or
//! missing backends, and deadlines.

use std::path::Path;
use std::time::{Duration, Instant};

use protogate::config::Config;
use serde_json::{json, Value};

use crate::support::{self, Gateway};

/// Long enough for any answer the gateway owes quickly, far below the mirror's 1 s sleeps.
const PROMPT: Duration = Duration::from_millis(900);

/// A normal request still succeeds.
async fn assert_serving(gw: &Gateway) {
    let (status, body) = gw.send("POST", "/v1/types", r#"{"s": "still here"}"#).await;
    assert_eq!(status, 200, "follow-up request failed: {body}");
    assert_eq!(body["s"], "still here");
}

/// POSTs `{}` to /v1/types with extra headers; returns status, headers and body.
async fn post_with(
    gw: &Gateway,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = gw
        .client
        .post(gw.url("/v1/types"))
        .header("content-type", "application/json")
        .body("{}");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let resp = request.send().await.expect("request");
    let headers = resp.headers().clone();
    let (status, body) = support::read(resp).await;
    (status, headers, body)
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

/// A google.rpc.Status body made by the gateway itself: code, message, no details.
fn assert_gateway_status(body: &Value, code: i64) {
    assert_eq!(body["code"], code, "{body}");
    assert!(!message(body).is_empty(), "{body}");
    assert_eq!(body["details"], json!([]), "{body}");
}

#[tokio::test]
async fn malformed_json_is_invalid_argument() {
    let gw = Gateway::mirror("").await;
    let cases = [
        r#"{"s":"#,
        r#"{"s" "x"}"#,
        r#"{"s": "x",}"#,
        r#"{"s": "x"} trailing"#,
        r#"{'s': 'x'}"#,
        "not json",
        "\u{1}",
    ];
    for body in cases {
        let (status, answer) = gw.send("POST", "/v1/types", body).await;
        assert_eq!(status, 400, "{body:?} -> {answer}");
        assert_gateway_status(&answer, 3);
    }
    // Valid JSON that is not an object is refused too.
    for body in ["[1]", "\"s\"", "42", "null"] {
        let (status, answer) = gw.send("POST", "/v1/types", body).await;
        assert_eq!(status, 400, "{body:?} -> {answer}");
        assert_gateway_status(&answer, 3);
    }
    assert_serving(&gw).await;
}

#[tokio::test]
async fn wrong_types_name_the_field_path() {
    let gw = Gateway::mirror("").await;
    let cases = [
        ("/v1/types", r#"{"i32": "abc"}"#, "i32"),
        ("/v1/types", r#"{"i32": 2147483648}"#, "i32"),
        ("/v1/types", r#"{"i32": 1.5}"#, "i32"),
        ("/v1/types", r#"{"b": "yes"}"#, "b"),
        ("/v1/types", r#"{"color": 1.5}"#, "color"),
        ("/v1/types", r#"{"by": "not base64!"}"#, "by"),
        ("/v1/types", r#"{"ts": "yesterday"}"#, "ts"),
        ("/v1/types", r#"{"sub": {"count": "abc"}}"#, "sub.count"),
        (
            "/v1/types",
            r#"{"subs": [{}, {"count": "abc"}]}"#,
            "subs[1].count",
        ),
        ("/v1/types", r#"{"repI64": [1, "x"]}"#, "repI64[1]"),
        ("/v1/types", r#"{"mapSi": {"a": "b"}}"#, "mapSi.a"),
        // With `body: "sub"` the path starts at the body field.
        ("/v1/messages/m1", r#"{"count": "abc"}"#, "sub.count"),
    ];
    for (path, body, field) in cases {
        let method = if path == "/v1/types" { "POST" } else { "PATCH" };
        let (status, answer) = gw.send(method, path, body).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_gateway_status(&answer, 3);
        assert!(
            message(&answer).contains(field),
            "{body}: message should name {field}: {answer}"
        );
    }
    assert_serving(&gw).await;
}

#[tokio::test]
async fn deep_nesting_is_refused_without_a_crash() {
    let gw = Gateway::mirror("").await;
    let depth = 10_000;
    let deep_list = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let deep_struct = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let cases = [
        format!(r#"{{"val": {deep_list}}}"#),
        format!(r#"{{"list": {deep_list}}}"#),
        format!(r#"{{"st": {deep_struct}}}"#),
        format!(
            r#"{{"any": {{"@type": "type.googleapis.com/google.protobuf.ListValue", "value": {deep_list}}}}}"#
        ),
        // Unbalanced: the parser must give up on depth before it sees the missing brackets.
        format!(r#"{{"val": {}"#, "[".repeat(depth * 10)),
    ];
    for body in &cases {
        let (status, answer) = gw.send("POST", "/v1/types", body).await;
        assert_eq!(status, 400, "{}… -> {answer}", &body[..40]);
        assert_gateway_status(&answer, 3);
        assert_serving(&gw).await;
    }
}

#[tokio::test]
async fn deep_unknown_fields_are_skipped_or_refused_without_a_crash() {
    let depth = 10_000;
    // `sub` is a SubMessage, which has no `sub`: everything below the first level is unknown.
    let deep = format!("{}1{}", r#"{"sub":"#.repeat(depth), "}".repeat(depth));
    let ignoring = Gateway::mirror("").await;
    let (status, answer) = ignoring.send("POST", "/v1/types", &deep).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["sub"], json!({"subfield": "", "count": 0}));
    assert_serving(&ignoring).await;

    let rejecting = Gateway::mirror("[json]\nunknown_fields = \"reject\"\n").await;
    let (status, answer) = rejecting.send("POST", "/v1/types", &deep).await;
    assert_eq!(status, 400, "{answer}");
    assert_gateway_status(&answer, 3);
    assert_serving(&rejecting).await;
}

#[tokio::test]
async fn bodies_over_max_body_bytes_are_413() {
    let gw = Gateway::mirror("max_body_bytes = 1024\n").await;
    // A valid body of exactly `len` bytes.
    let body_of = |len: usize| {
        let frame = r#"{"s":""}"#.len();
        format!(r#"{{"s":"{}"}}"#, "x".repeat(len - frame))
    };
    let (status, answer) = gw.send("POST", "/v1/types", &body_of(1024)).await;
    assert_eq!(status, 200, "a body at the limit is read: {answer}");

    let (status, answer) = gw.send("POST", "/v1/types", &body_of(1025)).await;
    assert_eq!(status, 413, "{answer}");
    assert_gateway_status(&answer, 8);

    // Without a Content-Length the limit holds as the chunks arrive.
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok("{\"s\":\"".to_owned()),
        Ok("x".repeat(4096)),
        Ok("\"}".to_owned()),
    ];
    let resp = gw
        .client
        .post(gw.url("/v1/types"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("request");
    let (status, answer) = support::read(resp).await;
    assert_eq!(status, 413, "{answer}");
    assert_gateway_status(&answer, 8);
    assert_serving(&gw).await;
}

#[tokio::test]
async fn every_grpc_code_maps_to_its_http_status_with_details() {
    let gw = Gateway::mirror("").await;
    let table = [
        (1, "CANCELLED", 499),
        (2, "UNKNOWN", 500),
        (3, "INVALID_ARGUMENT", 400),
        (4, "DEADLINE_EXCEEDED", 504),
        (5, "NOT_FOUND", 404),
        (6, "ALREADY_EXISTS", 409),
        (7, "PERMISSION_DENIED", 403),
        (8, "RESOURCE_EXHAUSTED", 429),
        (9, "FAILED_PRECONDITION", 400),
        (10, "ABORTED", 409),
        (11, "OUT_OF_RANGE", 400),
        (12, "UNIMPLEMENTED", 501),
        (13, "INTERNAL", 500),
        (14, "UNAVAILABLE", 503),
        (15, "DATA_LOSS", 500),
        (16, "UNAUTHENTICATED", 401),
    ];
    for (code, name, http) in table {
        let code_text = code.to_string();
        let text = format!("mirror says {name}");
        let (status, headers, body) = post_with(
            &gw,
            &[
                ("grpc-metadata-x-mirror-code", &code_text),
                ("grpc-metadata-x-mirror-message", &text),
            ],
        )
        .await;
        assert_eq!(status, http, "{name}: {body}");
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{name}"
        );
        assert_eq!(body["code"], code, "{name}: {body}");
        assert_eq!(body["message"], text, "{name}: {body}");
        assert_eq!(
            body["details"],
            json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "MIRROR_FAILURE",
                "domain": "mirror.test",
                "metadata": {},
            }]),
            "{name}"
        );
        let challenge = headers.get("www-authenticate");
        assert_eq!(challenge.is_some(), http == 401, "{name}: {headers:?}");
    }
    assert_serving(&gw).await;
}

#[tokio::test]
async fn configured_http_status_overrides_one_code() {
    let gw = Gateway::mirror("[errors.http_status]\nFAILED_PRECONDITION = 412\n").await;
    let cases = [(9, 412), (11, 400), (3, 400)];
    for (code, http) in cases {
        let code_text = code.to_string();
        let (status, _, body) =
            post_with(&gw, &[("grpc-metadata-x-mirror-code", &code_text)]).await;
        assert_eq!(status, http, "code {code}: {body}");
        assert_eq!(body["code"], code, "{body}");
    }
}

#[tokio::test]
async fn undecodable_backend_answer_is_502() {
    let gw = Gateway::mirror("").await;
    let (status, _, body) = post_with(&gw, &[("grpc-metadata-x-mirror-garbage", "1")]).await;
    assert_eq!(status, 502, "{body}");
    assert_gateway_status(&body, 13);
    assert!(
        message(&body).contains("bad response from backend"),
        "{body}"
    );
    assert!(message(&body).contains("test.v1.AllTypes"), "{body}");
    assert_serving(&gw).await;
}

/// A gateway whose only backend is `upstream`.
async fn gateway_to(upstream: &str, extra: &str) -> Gateway {
    let mut config = Config::from_toml(extra, Path::new(".")).expect("config");
    config.set_upstream(upstream).expect("upstream");
    Gateway::with(config, support::test_registry()).await
}

#[tokio::test]
async fn backend_down_is_a_prompt_503() {
    // A port that was just bound and closed, so nothing listens there.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    };
    for upstream in ["http://127.0.0.1:1".to_owned(), format!("http://{closed}")] {
        let gw = gateway_to(&upstream, "").await;
        for _ in 0..2 {
            let started = Instant::now();
            let request = gw.send("POST", "/v1/types", "{}");
            let (status, body) = tokio::time::timeout(PROMPT, request)
                .await
                .unwrap_or_else(|_| panic!("{upstream}: no answer within {PROMPT:?}"));
            assert_eq!(status, 503, "{upstream}: {body}");
            assert_gateway_status(&body, 14);
            assert!(started.elapsed() < PROMPT);
        }
    }
}

#[tokio::test]
async fn backend_that_never_answers_hits_the_deadline() {
    // Accepts connections (the kernel backlog) but never speaks HTTP/2.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let gw = gateway_to(&format!("http://{addr}"), "default_timeout = \"200ms\"\n").await;
    let request = gw.send("POST", "/v1/types", "{}");
    let (status, body) = tokio::time::timeout(PROMPT, request)
        .await
        .expect("the deadline bounds a silent backend");
    assert_eq!(status, 504, "{body}");
    drop(silent);
}

#[tokio::test]
async fn deadlines_are_504_long_before_the_backend_answers() {
    let sleep = ("grpc-metadata-x-mirror-sleep-ms", "1000");
    let cases: [(&str, &[(&str, &str)]); 6] = [
        ("", &[sleep, ("grpc-timeout", "100m")]),
        ("", &[sleep, ("grpc-timeout", "100000u")]),
        ("", &[sleep, ("x-request-timeout", "0.1")]),
        ("default_timeout = \"100ms\"\n", &[sleep]),
        // The client cannot extend the configured deadline.
        (
            "default_timeout = \"100ms\"\n",
            &[sleep, ("grpc-timeout", "5S")],
        ),
        ("[services.\"test.v1\"]\ntimeout = \"100ms\"\n", &[sleep]),
    ];
    for (config, headers) in cases {
        let gw = Gateway::mirror(config).await;
        let started = Instant::now();
        let (status, _, body) = tokio::time::timeout(PROMPT, post_with(&gw, headers))
            .await
            .unwrap_or_else(|_| panic!("{config:?} {headers:?}: no answer within {PROMPT:?}"));
        let took = started.elapsed();
        assert_eq!(status, 504, "{config:?} {headers:?}: {body}");
        assert_gateway_status(&body, 4);
        assert!(
            took >= Duration::from_millis(90) && took < PROMPT,
            "{config:?} {headers:?}: answered after {took:?}"
        );
        assert_serving(&gw).await;
    }
}

#[tokio::test]
async fn a_deadline_longer_than_the_call_does_not_fire() {
    let gw = Gateway::mirror("").await;
    let (status, _, body) = post_with(
        &gw,
        &[
            ("grpc-metadata-x-mirror-sleep-ms", "50"),
            ("grpc-timeout", "5S"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn invalid_timeout_headers_are_400() {
    let gw = Gateway::mirror("").await;
    let cases = [
        ("grpc-timeout", "1x"),
        ("grpc-timeout", "S"),
        ("grpc-timeout", "123456789S"),
        ("grpc-timeout", "-1S"),
        ("x-request-timeout", "soon"),
        ("x-request-timeout", "-1"),
    ];
    for (name, value) in cases {
        let (status, _, body) = post_with(&gw, &[(name, value)]).await;
        assert_eq!(status, 400, "{name}: {value}: {body}");
        assert_gateway_status(&body, 3);
        assert!(
            message(&body).contains(name) || message(&body).to_lowercase().contains(name),
            "{body}"
        );
    }
    assert_eq!(
        gw.mirror
            .as_ref()
            .map(|m| m.calls.load(std::sync::atomic::Ordering::Relaxed)),
        Some(0),
        "refused before the backend"
    );
    assert_serving(&gw).await;
}

#[tokio::test]
async fn a_body_that_never_arrives_ends_with_408_within_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::mirror("").await;
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    // Headers promise 100 bytes; one arrives, then the client stalls.
    stream
        .write_all(
            b"POST /v1/types HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\nX-Request-Timeout: 0.2\r\n\r\n{",
        )
        .await
        .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the gateway must answer a stalled body, not wait for it")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("\"code\":4"), "{head}");
    let (status, _) = gw.get("/v1/messages/1").await;
    assert_eq!(status, 200);
}
