//! The public listener's own rules, before any route: header size (431), the connection cap
//! (503), the header read timeout, the HTTP/2 stream bound, response compression and the health
//! endpoints, against the real gateway and the mirror backend.

use std::time::{Duration, Instant};

use bytes::Bytes;
use protogate::config::Config;
use protogate::descriptors::RegistryBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::support::{test_registry, Gateway};

const WAIT: Duration = Duration::from_secs(10);

fn addr(gw: &Gateway) -> String {
    gw.base.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes or `within` passes; returns what came and whether it closed.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// The JSON body after the blank line of a raw HTTP/1.1 response.
fn raw_body(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

// Header size.

#[tokio::test]
async fn headers_over_the_bound_get_431_in_the_error_format() {
    let gw = Gateway::mirror("[server]\nmax_header_bytes = 1024\n").await;
    let small = gw
        .exchange("GET", "/v1/messages/1", &[("x-pad", &"a".repeat(900))], "")
        .await;
    assert_eq!(small.status, 200, "{}", small.text());

    let big = gw
        .exchange("GET", "/v1/messages/1", &[("x-pad", &"a".repeat(1100))], "")
        .await;
    assert_eq!(big.status, 431);
    assert_eq!(big.content_type(), "application/json");
    let body = big.json();
    assert_eq!(body["code"], 8, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("headers"), "{message}");
    // Many small headers add up the same way.
    let many: Vec<(String, String)> = (0..40)
        .map(|i| (format!("x-h{i}"), "b".repeat(30)))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(n, v)| (&**n, &**v)).collect();
    let summed = gw.exchange("GET", "/v1/messages/1", &refs, "").await;
    assert_eq!(summed.status, 431);
    assert_eq!(
        gw.mirror
            .as_ref()
            .map(|m| m.calls.load(std::sync::atomic::Ordering::SeqCst)),
        Some(1)
    );
}

// Connection cap.

#[tokio::test]
async fn a_connection_beyond_the_cap_gets_503_and_the_slot_comes_back() {
    let gw = Gateway::mirror("[server]\nmax_connections = 1\n").await;
    // The first connection holds the only slot: it has sent half a request.
    let mut holder = TcpStream::connect(addr(&gw)).await.unwrap();
    holder
        .write_all(b"GET /v1/messages/1 HTTP/1.1\r\n")
        .await
        .unwrap();

    let mut refused = TcpStream::connect(addr(&gw)).await.unwrap();
    refused
        .write_all(b"GET /v1/messages/1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut refused, WAIT).await;
    assert!(closed, "the refused connection stayed open");
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("application/json"), "{text}");
    assert_eq!(raw_body(&text)["code"], 14, "{text}");

    // Once the holder goes, a new connection is served.
    drop(holder);
    let deadline = Instant::now() + WAIT;
    loop {
        let fresh = reqwest::Client::new();
        let status = fresh
            .get(gw.url("/v1/messages/1"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if status.as_ref().ok() == Some(&200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot never came back: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Header read timeout.

#[tokio::test]
async fn half_a_request_line_is_cut_off_after_the_header_read_timeout() {
    let gw = Gateway::mirror("[server]\nheader_read_timeout = \"300ms\"\n").await;
    let mut slow = TcpStream::connect(addr(&gw)).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /v1/mess").await.unwrap();
    let (_, closed) = read_until_closed(&mut slow, WAIT).await;
    assert!(closed, "the connection was still open after {WAIT:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_too() {
    let gw = Gateway::mirror("[server]\nheader_read_timeout = \"300ms\"\n").await;
    let mut idle = TcpStream::connect(addr(&gw)).await.unwrap();
    let (_, closed) = read_until_closed(&mut idle, WAIT).await;
    assert!(closed, "a silent connection was still open after {WAIT:?}");
}

// HTTP/2 stream bound.

/// One HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK literal without indexing: `index` names a static-table entry, 0 a new name.
fn literal(out: &mut Vec<u8>, index: u8, name: &str, value: &str) {
    out.push(index);
    if index == 0 {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// A GET the mirror answers after `sleep_ms`, encoded for stream `stream`.
fn slow_get(stream: u32, authority: &str, sleep_ms: u64) -> Vec<u8> {
    // :method GET and :scheme http are static-table entries 2 and 6.
    let mut block = vec![0x82, 0x86];
    literal(&mut block, 4, "", "/v1/messages/1"); // :path
    literal(&mut block, 1, "", authority); // :authority
    literal(
        &mut block,
        0,
        "grpc-metadata-x-mirror-sleep-ms",
        &sleep_ms.to_string(),
    );
    // END_STREAM | END_HEADERS.
    frame(0x1, 0x5, stream, &block)
}

#[tokio::test]
async fn streams_beyond_the_http2_bound_are_refused_at_once() {
    let gw = Gateway::mirror("[server]\nhttp2_max_concurrent_streams = 2\n").await;
    let mut tcp = TcpStream::connect(addr(&gw)).await.unwrap();
    // Written in one go, before the server's SETTINGS can be read: a client that ignores the
    // advertised bound, which is exactly what the bound is for.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    for stream in [1u32, 3, 5, 7] {
        out.extend(slow_get(stream, &addr(&gw), 5_000));
    }
    tcp.write_all(&out).await.unwrap();

    let started = Instant::now();
    let mut refused = Vec::new();
    let mut answered = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while refused.len() < 2 {
        let mut head = [0u8; 9];
        tokio::time::timeout_at(deadline, tcp.read_exact(&mut head))
            .await
            .expect("the extra streams were not refused in time")
            .expect("frame header");
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.expect("frame payload");
        match head[3] {
            // RST_STREAM: the error code is the payload.
            0x3 => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                assert_eq!(
                    code, 0x7,
                    "stream {stream} reset with {code:#x}, not REFUSED_STREAM"
                );
                refused.push(stream);
            }
            0x1 => answered.push(stream),
            0x7 => panic!("GOAWAY instead of refusing streams: {payload:?}"),
            _ => {}
        }
    }
    refused.sort_unstable();
    assert_eq!(refused, [5, 7]);
    assert!(
        answered.is_empty(),
        "slow streams answered early: {answered:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_http2_client_within_the_bound_is_served() {
    let gw = Gateway::mirror("[server]\nhttp2_max_concurrent_streams = 2\n").await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let calls = (0..6).map(|_| {
        let request = client.get(gw.url("/v1/messages/1")).send();
        async move { request.await.map(|r| (r.version(), r.status().as_u16())) }
    });
    for result in futures_util::future::join_all(calls).await {
        let (version, status) = result.expect("served");
        assert_eq!(version, reqwest::Version::HTTP_2);
        assert_eq!(status, 200);
    }
}

// Compression.

/// A client that decodes nothing and asks for what the test says.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .build()
        .unwrap()
}

/// A client that asks for and decodes one encoding only.
fn decoding_client(encoding: &str) -> reqwest::Client {
    let builder = reqwest::Client::builder().no_gzip().no_brotli().no_zstd();
    match encoding {
        "gzip" => builder.gzip(true),
        "br" => builder.brotli(true),
        "zstd" => builder.zstd(true),
        other => panic!("no decoder for {other}"),
    }
    .build()
    .unwrap()
}

#[tokio::test]
async fn gzip_br_and_zstd_are_each_negotiated_and_decode_to_the_same_body() {
    let gw = Gateway::mirror("").await;
    let path = format!("/v1/messages/{}", "a".repeat(3000));
    let plain = raw_client().get(gw.url(&path)).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    assert!(plain.len() > 3000);

    for encoding in ["gzip", "br", "zstd"] {
        let raw = raw_client()
            .get(gw.url(&path))
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 200);
        assert_eq!(raw.headers()["content-encoding"], encoding);
        let squeezed = raw.bytes().await.unwrap();
        assert!(
            squeezed.len() < plain.len() / 4,
            "{encoding}: {} bytes of {}",
            squeezed.len(),
            plain.len()
        );

        let decoded = decoding_client(encoding)
            .get(gw.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(decoded.status(), 200);
        assert_eq!(decoded.bytes().await.unwrap(), plain, "{encoding}");
    }
}

#[tokio::test]
async fn small_bodies_and_disabled_compression_stay_identity() {
    let gw = Gateway::mirror("").await;
    let small = raw_client()
        .get(gw.url("/v1/messages/1"))
        .header("accept-encoding", "gzip, br, zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    assert!(small.headers().get("content-encoding").is_none());

    let off = Gateway::mirror("[server]\ncompression = false\n").await;
    let big = raw_client()
        .get(off.url(&format!("/v1/messages/{}", "a".repeat(3000))))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 200);
    assert!(big.headers().get("content-encoding").is_none());
    assert!(big.bytes().await.unwrap().len() > 3000);
}

#[tokio::test]
async fn a_stream_is_not_compressed_and_still_flushes_each_message() {
    let gw = Gateway::mirror("").await;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let id = "x".repeat(2000);
    tx.send(Ok(Bytes::from(format!("{{\"messageId\":\"{id}\"}}\n"))))
        .await
        .unwrap();
    let mut resp = tokio::time::timeout(
        WAIT,
        raw_client()
            .post(gw.url("/v1/chat"))
            .header("accept-encoding", "gzip")
            .header("grpc-metadata-x-mirror-repeat", "1")
            .body(body)
            .send(),
    )
    .await
    .expect("headers in time")
    .expect("chat");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-encoding").is_none());
    // The first answer arrives, whole and readable, while the request is still open.
    let mut buf = Vec::new();
    while !buf.contains(&b'\n') {
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .expect("first message flushed")
            .expect("chunk")
            .expect("not the end");
        buf.extend_from_slice(&chunk);
    }
    let line = String::from_utf8_lossy(&buf).into_owned();
    assert!(line.starts_with("{\"result\":"), "{line}");
    assert!(line.contains(&id), "{line}");
    drop(tx);

    // A server stream of large messages is left alone too.
    let stream = raw_client()
        .get(gw.url(&format!("/v1/stream/{id}")))
        .header("accept-encoding", "gzip, br, zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers().get("content-encoding").is_none());
    let text = stream.text().await.unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
}

// Health.

#[tokio::test]
async fn healthz_answers_while_the_process_runs() {
    let gw = Gateway::mirror("").await;
    let live = gw.exchange("GET", "/healthz", &[], "").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.content_type(), "application/json");
    assert_eq!(live.json(), serde_json::json!({"status": "ok"}));
    let post = gw.exchange("POST", "/healthz", &[], "").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
}

#[tokio::test]
async fn readyz_with_a_live_backend() {
    let gw = Gateway::mirror("").await;
    let ready = gw.exchange("GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json(), serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_with_a_stopped_backend() {
    // A port that was just free: nothing accepts there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut config = Config::default();
    config
        .set_upstream(&format!("http://127.0.0.1:{port}"))
        .unwrap();
    let gw = Gateway::with(config, test_registry()).await;
    let not_ready = gw.exchange("GET", "/readyz", &[], "").await;
    assert_eq!(not_ready.status, 503);
    let body = not_ready.json();
    assert_eq!(body["code"], 14, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("\"default\""), "{message}");
    assert!(message.contains(&port.to_string()), "{message}");
    // Liveness does not depend on backends.
    assert_eq!(gw.exchange("GET", "/healthz", &[], "").await.status, 200);
}

#[tokio::test]
async fn readyz_without_routes() {
    let registry = RegistryBuilder::new().build().unwrap();
    let gw = Gateway::with(Config::default(), registry).await;
    let not_ready = gw.exchange("GET", "/readyz", &[], "").await;
    assert_eq!(not_ready.status, 503);
    let message = not_ready.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("no routes"), "{message}");
}

#[tokio::test]
async fn health_paths_can_be_moved_or_turned_off() {
    let config = "[server]\nhealth_path = \"/live\"\nready_path = \"\"\n";
    let gw = Gateway::mirror(config).await;
    assert_eq!(gw.exchange("GET", "/live", &[], "").await.status, 200);
    // Turned off or moved: the paths go to routing like any other, and no route has them.
    assert_eq!(gw.exchange("GET", "/healthz", &[], "").await.status, 404);
    assert_eq!(gw.exchange("GET", "/readyz", &[], "").await.status, 404);
}
