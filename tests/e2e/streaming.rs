//! Streaming over plain HTTP: bidi and client streaming bodies, grpc-gateway/SSE/array framing,
//! mid-stream failures, cancellation and backpressure, against the mirror backend.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::support::Gateway;

const WAIT: Duration = Duration::from_secs(10);

/// The mirror's rendering of a Message with this id (as the unary route renders it).
async fn rendered(gw: &Gateway, id: &str) -> String {
    let resp = gw
        .client
        .get(gw.url(&format!("/v1/messages/{id}")))
        .send()
        .await
        .expect("unary");
    resp.text().await.expect("text")
}

/// Waits (bounded) until `check` holds, polling at a fixed pace.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Reads one `\n`-terminated line from a streamed response, keeping the rest in `buf`.
async fn line(resp: &mut reqwest::Response, buf: &mut Vec<u8>) -> Option<String> {
    for _ in 0..10_000 {
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            return Some(String::from_utf8_lossy(&line[..i]).into_owned());
        }
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .expect("chunk in time")
            .expect("chunk");
        buf.extend_from_slice(&chunk?);
    }
    panic!("no line after many chunks");
}

fn active(gw: &Gateway) -> usize {
    gw.store.streams().stats().active.load(Ordering::SeqCst)
}

#[tokio::test]
async fn bidi_ndjson_matches_grpc_gateway_byte_for_byte() {
    let gw = Gateway::mirror("").await;
    let (a, b) = (rendered(&gw, "a").await, rendered(&gw, "b").await);
    let resp = gw
        .client
        .post(gw.url("/v1/chat"))
        .header("grpc-metadata-x-mirror-repeat", "1")
        .header("grpc-metadata-x-test", "yes")
        .body("{\"messageId\":\"a\"}\n{\"messageId\":\"b\"}")
        .send()
        .await
        .expect("chat");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["grpc-metadata-echo-x-test"], "yes");
    let body = resp.text().await.expect("body");
    assert_eq!(body, format!("{{\"result\":{a}}}\n{{\"result\":{b}}}\n"));
    eventually("streams closed", || active(&gw) == 0).await;
}

#[tokio::test]
async fn concatenated_messages_and_client_streaming() {
    let gw = Gateway::mirror("").await;
    let c = rendered(&gw, "c").await;
    let (status, body) = gw
        .send(
            "POST",
            "/v1/collect",
            "{\"messageId\":\"a\"}{\"messageId\":\"b\"}  {\"messageId\":\"c\"}",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::from_str::<serde_json::Value>(&c).unwrap());
    assert_eq!(
        gw.store.streams().stats().to_backend.load(Ordering::SeqCst),
        3
    );
}

#[tokio::test]
async fn each_message_goes_to_the_backend_as_it_arrives() {
    let gw = Gateway::mirror("").await;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    tx.send(Ok(Bytes::from_static(b"{\"messageId\":\"one\"}\n")))
        .await
        .unwrap();
    let mut resp = tokio::time::timeout(
        WAIT,
        gw.client
            .post(gw.url("/v1/chat"))
            .header("grpc-metadata-x-mirror-repeat", "1")
            .body(body)
            .send(),
    )
    .await
    .expect("headers in time")
    .expect("chat");
    let mut buf = Vec::new();
    let first = line(&mut resp, &mut buf).await.expect("first line");
    assert!(first.contains("\"one\""), "{first}");
    // The first answer came while the request body is still open; now the second.
    tx.send(Ok(Bytes::from_static(b"{\"messageId\":\"two\"}")))
        .await
        .unwrap();
    let second = line(&mut resp, &mut buf).await.expect("second line");
    assert!(second.contains("\"two\""), "{second}");
    // Half-close: the response ends cleanly.
    drop(tx);
    assert_eq!(line(&mut resp, &mut buf).await, None);
    eventually("streams closed", || active(&gw) == 0).await;
}

#[tokio::test]
async fn mid_stream_failure_is_an_error_line_then_the_end() {
    let gw = Gateway::mirror("").await;
    let resp = gw
        .client
        .get(gw.url("/v1/stream/x"))
        .header("grpc-metadata-x-mirror-repeat", "5")
        .header("grpc-metadata-x-mirror-fail-after", "2")
        .header("grpc-metadata-x-mirror-code", "9")
        .header("grpc-metadata-x-mirror-message", "stop")
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.expect("body");
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!(lines[0]["result"]["messageId"], "x");
    assert_eq!(lines[2]["error"]["code"], 9);
    assert_eq!(lines[2]["error"]["message"], "stop");
    assert!(body.ends_with("}\n"));
}

#[tokio::test]
async fn bad_message_in_the_body_is_invalid_argument() {
    let gw = Gateway::mirror("").await;
    let resp = gw
        .client
        .post(gw.url("/v1/chat"))
        .body("{\"messageId\":\"a\"}\n{\"messageId\":}")
        .send()
        .await
        .expect("chat");
    // The failure may come before the response started (a 400) or after (a final line).
    let status = resp.status();
    let body = resp.text().await.expect("body");
    let last: serde_json::Value =
        serde_json::from_str(body.lines().last().expect("a line")).expect("json");
    let error = if status == 400 { &last } else { &last["error"] };
    assert_eq!(error["code"], 3, "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("message 1"), "{message}");
    let mirror = gw.mirror.clone().unwrap();
    eventually("backend call ended", || {
        mirror.active.load(Ordering::SeqCst) == 0
    })
    .await;
    eventually("streams closed", || active(&gw) == 0).await;
    // Wrong shape (a field that does not exist is fine; a wrong type is not).
    let (status, body) = gw
        .send("POST", "/v1/collect", "{\"revision\":\"abc\"}")
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], 3);
}

#[tokio::test]
async fn server_sent_events_and_array_framing() {
    let gw = Gateway::mirror("").await;
    let x = rendered(&gw, "x").await;
    let resp = gw
        .client
        .get(gw.url("/v1/stream/x"))
        .header("accept", "text/event-stream")
        .header("grpc-metadata-x-mirror-repeat", "2")
        .send()
        .await
        .expect("sse");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(
        resp.text().await.unwrap(),
        format!("data: {x}\n\ndata: {x}\n\n")
    );
    let resp = gw
        .client
        .get(gw.url("/v1/stream/x"))
        .header("accept", "text/event-stream")
        .header("grpc-metadata-x-mirror-repeat", "2")
        .header("grpc-metadata-x-mirror-fail-after", "1")
        .header("grpc-metadata-x-mirror-code", "14")
        .send()
        .await
        .expect("sse");
    let text = resp.text().await.unwrap();
    assert!(
        text.starts_with(&format!("data: {x}\n\nevent: error\ndata: {{")),
        "{text}"
    );
    let resp = gw
        .client
        .post(gw.url("/v1/chat"))
        .header("accept", "application/json; stream=array")
        .header("grpc-metadata-x-mirror-repeat", "2")
        .body("{\"messageId\":\"x\"}")
        .send()
        .await
        .expect("array");
    assert_eq!(resp.text().await.unwrap(), format!("[{x},{x}]"));
}

#[tokio::test]
async fn client_that_goes_away_cancels_the_backend_call() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::mirror("").await;
    let mirror = gw.mirror.clone().unwrap();
    // A raw connection, so the client vanishes mid-request for sure: a chunked request body
    // that is never finished, then the socket closed. (An HTTP client library may finish the
    // body before it closes, which is a clean half-close, not a cancellation.)
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let first = "{\"messageId\":\"one\"}\n";
    let head = format!(
        "POST /v1/chat HTTP/1.1\r\nhost: {addr}\r\ngrpc-metadata-x-mirror-repeat: 1\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
        first.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Read until the first streamed line has arrived.
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("\"one\"") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .expect("first line in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(active(&gw), 1);
    assert_eq!(mirror.active.load(Ordering::SeqCst), 1);
    drop(tcp);
    eventually("backend saw the cancel", || {
        mirror.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("gateway stream closed", || active(&gw) == 0).await;
    assert_eq!(mirror.active.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_paused_reader_holds_back_the_backend() {
    let gw = Gateway::mirror("").await;
    let mirror = gw.mirror.clone().unwrap();
    let total = 2_000;
    let text = "x".repeat(64 * 1024);
    let mut resp = gw
        .client
        .post(gw.url("/v1/chat"))
        .header("grpc-metadata-x-mirror-repeat", total.to_string())
        .body(format!("{{\"text\":\"{text}\"}}"))
        .send()
        .await
        .expect("chat");
    let mut buf = Vec::new();
    assert!(line(&mut resp, &mut buf).await.is_some());
    // Reading stopped. Whatever the backend manages to send fills flow-control windows and
    // socket buffers, then stops: wait until the gateway's count stops moving.
    let stats = gw.store.streams().stats().clone();
    let mut last = u64::MAX;
    for _ in 0..100 {
        let now = stats.from_backend.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken = stats.from_backend.load(Ordering::SeqCst);
    // 64 KiB messages: a few MiB of buffers at most, nowhere near the 125 MiB stream.
    assert!(
        taken < 200,
        "gateway took {taken} messages from the backend"
    );
    assert!(mirror.sent.load(Ordering::SeqCst) < 400);
    // Reading resumes and everything arrives, in order.
    let mut lines = 1;
    while let Some(l) = line(&mut resp, &mut buf).await {
        assert!(l.starts_with("{\"result\":"), "line {lines}");
        lines += 1;
    }
    assert_eq!(lines, total);
}

#[tokio::test]
async fn many_concurrent_streams_stay_apart() {
    let gw = Gateway::mirror("").await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let client = gw.client.clone();
        let url = gw.url("/v1/chat");
        tasks.push(tokio::spawn(async move {
            let body: String = (0..10)
                .map(|n| format!("{{\"messageId\":\"s{i}-{n}\"}}\n"))
                .collect();
            let resp = client
                .post(url)
                .header("grpc-metadata-x-mirror-repeat", "1")
                .body(body)
                .send()
                .await
                .expect("chat");
            let text = resp.text().await.expect("body");
            let ids: Vec<String> = text
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("json");
                    v["result"]["messageId"].as_str().unwrap_or("").to_owned()
                })
                .collect();
            let want: Vec<String> = (0..10).map(|n| format!("s{i}-{n}")).collect();
            assert_eq!(ids, want);
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("in time")
            .expect("task");
    }
    eventually("streams closed", || active(&gw) == 0).await;
}

#[tokio::test]
async fn a_service_can_default_to_envoy_array_framing() {
    let gw = Gateway::mirror("[services.\"test.v1\"]\nstream_framing = \"array\"\n").await;
    let x = rendered(&gw, "x").await;
    let resp = gw
        .client
        .get(gw.url("/v1/stream/x"))
        .header("grpc-metadata-x-mirror-repeat", "2")
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.text().await.unwrap(), format!("[{x},{x}]"));
    // Accept still wins.
    let resp = gw
        .client
        .get(gw.url("/v1/stream/x"))
        .header("accept", "application/x-ndjson")
        .header("grpc-metadata-x-mirror-repeat", "1")
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.text().await.unwrap(), format!("{{\"result\":{x}}}\n"));
    assert!(protogate::config::Config::from_toml(
        "[services.\"a\"]\nstream_framing = \"xml\"\n",
        std::path::Path::new(".")
    )
    .is_err());
}

#[tokio::test]
async fn shutdown_ends_http_streams_with_unavailable() {
    let gw = Gateway::mirror("").await;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    tx.send(Ok(Bytes::from_static(b"{\"messageId\":\"one\"}\n")))
        .await
        .unwrap();
    let mut resp = gw
        .client
        .post(gw.url("/v1/chat"))
        .header("grpc-metadata-x-mirror-repeat", "1")
        .body(body)
        .send()
        .await
        .expect("chat");
    let mut buf = Vec::new();
    assert!(line(&mut resp, &mut buf).await.is_some());
    gw.store.streams().go_away();
    let last = line(&mut resp, &mut buf).await.expect("status line");
    let last: serde_json::Value = serde_json::from_str(&last).expect("json");
    assert_eq!(last["error"]["code"], 14);
    assert_eq!(line(&mut resp, &mut buf).await, None);
    drop(tx);
}

/// Opens a bidi chat over HTTP with one message sent and the body left open.
async fn open_chat(
    gw: &Gateway,
    headers: &[(&str, &str)],
) -> (
    mpsc::Sender<Result<Bytes, std::io::Error>>,
    reqwest::Response,
) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    tx.send(Ok(Bytes::from_static(b"{\"messageId\":\"one\"}\n")))
        .await
        .expect("send");
    let mut request = gw
        .client
        .post(gw.url("/v1/chat"))
        .header("grpc-metadata-x-mirror-repeat", "1");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let resp = tokio::time::timeout(WAIT, request.body(body).send())
        .await
        .expect("headers in time")
        .expect("chat");
    (tx, resp)
}

#[tokio::test]
async fn a_stream_outlives_the_route_timeout_but_not_the_clients_deadline() {
    let gw = Gateway::mirror("default_timeout = \"300ms\"").await;
    // The route's timeout bounds the wait for the backend's headers only.
    let (tx, mut resp) = open_chat(&gw, &[]).await;
    let mut buf = Vec::new();
    assert!(line(&mut resp, &mut buf)
        .await
        .expect("first")
        .contains("one"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    tx.send(Ok(Bytes::from_static(b"{\"messageId\":\"two\"}")))
        .await
        .expect("send");
    let second = line(&mut resp, &mut buf).await.expect("second line");
    assert!(second.contains("\"two\""), "{second}");
    drop(tx);
    assert_eq!(line(&mut resp, &mut buf).await, None);

    // A deadline the client sets ends the whole stream with DEADLINE_EXCEEDED, and cancels the
    // backend's call.
    let (_tx, mut resp) = open_chat(&gw, &[("grpc-timeout", "400m")]).await;
    let mut buf = Vec::new();
    assert!(line(&mut resp, &mut buf)
        .await
        .expect("first")
        .contains("one"));
    let last = line(&mut resp, &mut buf).await.expect("an error line");
    let error: serde_json::Value = serde_json::from_str(&last).expect("json");
    assert_eq!(error["error"]["code"], 4, "{last}");
    assert_eq!(line(&mut resp, &mut buf).await, None);
    eventually("streams closed", || active(&gw) == 0).await;
}

#[tokio::test]
async fn a_server_stream_of_http_bodies_is_written_raw() {
    let gw = Gateway::mirror("").await;
    let resp = gw
        .client
        .post(gw.url("/v1/download"))
        .header("content-type", "text/csv")
        .header("grpc-metadata-x-mirror-repeat", "3")
        .body("a,b\n")
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv");
    assert_eq!(resp.text().await.expect("body"), "a,b\na,b\na,b\n");

    // A failure after the first chunk cuts the body short instead of ending it cleanly.
    let resp = gw
        .client
        .post(gw.url("/v1/download"))
        .header("content-type", "text/csv")
        .header("grpc-metadata-x-mirror-repeat", "3")
        .header("grpc-metadata-x-mirror-fail-after", "1")
        .body("a,b\n")
        .send()
        .await;
    // Cut before or after the head was flushed: the client sees a failure either way.
    let cut = match resp {
        Err(_) => true,
        Ok(resp) => {
            assert_eq!(resp.status(), 200);
            resp.bytes().await.is_err()
        }
    };
    assert!(cut, "a failed download must not look complete");
    // A failure before the first chunk is an ordinary error response.
    let failed = gw
        .client
        .post(gw.url("/v1/download"))
        .header("content-type", "text/csv")
        .header("grpc-metadata-x-mirror-code", "5")
        .body("a,b\n")
        .send()
        .await
        .expect("download");
    assert_eq!(failed.status(), 404);
    eventually("streams closed", || active(&gw) == 0).await;
}
