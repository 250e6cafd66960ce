//! WebSockets: grpc-websocket-proxy framing by default, the protogate.v1 subprotocol's fixes,
//! limits and cancellation, through a real tokio-tungstenite client.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::Gateway;

const WAIT: Duration = Duration::from_secs(10);

pub(crate) type Socket = WebSocketStream<TcpStream>;

/// Opens a socket at `path` with extra handshake headers; Err carries the refusal's status.
pub(crate) async fn open(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Socket, u16> {
    let url = gw.url(path).replacen("http://", "ws://", 1);
    let mut request = url.as_str().into_client_request().expect("request");
    for (k, v) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(err) => panic!("handshake failed: {err}"),
    }
}

/// The next non-control frame, or the close frame's code.
async fn next(socket: &mut Socket) -> Frame {
    for _ in 0..100 {
        let msg = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("frame in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                return Frame::Text(serde_json::from_str(t.as_str()).expect("json frame"))
            }
            Some(Ok(Message::Binary(b))) => return Frame::Binary(b.to_vec()),
            Some(Ok(Message::Close(c))) => {
                return Frame::Close(c.map(|c| u16::from(c.code)).unwrap_or(1005))
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Frame::Gone,
        }
    }
    panic!("only control frames");
}

#[derive(Debug, PartialEq)]
enum Frame {
    Text(serde_json::Value),
    Binary(Vec<u8>),
    Close(u16),
    Gone,
}

fn text(frame: Frame) -> serde_json::Value {
    match frame {
        Frame::Text(v) => v,
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

const ONE: (&str, &str) = ("grpc-metadata-x-mirror-repeat", "1");
const PG: (&str, &str) = ("sec-websocket-protocol", "protogate.v1");

#[tokio::test]
async fn bidi_in_grpc_websocket_proxy_framing() {
    let gw = Gateway::mirror("").await;
    let mut ws = open(&gw, "/v1/chat?method=POST", &[ONE])
        .await
        .expect("open");
    for id in ["a", "b", "c"] {
        ws.send(Message::text(format!("{{\"messageId\":\"{id}\"}}")))
            .await
            .unwrap();
    }
    for id in ["a", "b", "c"] {
        assert_eq!(text(next(&mut ws).await)["result"]["messageId"], id);
    }
    // Half-close: the call ends; without the subprotocol no status frame, a normal close.
    ws.send(Message::text("EOF")).await.unwrap();
    assert_eq!(next(&mut ws).await, Frame::Close(1000));
    eventually("streams closed", || {
        gw.store.streams().stats().active.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn protogate_subprotocol_ends_with_a_status_and_an_outcome_close_code() {
    let gw = Gateway::mirror("").await;
    // The websocket HttpRule form.
    let mut ws = open(&gw, "/v1/ws/chat", &[ONE, PG]).await.expect("open");
    ws.send(Message::text("{\"messageId\":\"a\"}"))
        .await
        .unwrap();
    assert_eq!(text(next(&mut ws).await)["result"]["messageId"], "a");
    ws.send(Message::text("EOF")).await.unwrap();
    assert_eq!(text(next(&mut ws).await)["status"]["code"], 0);
    assert_eq!(next(&mut ws).await, Frame::Close(1000));

    // A mid-stream failure: a status frame, then close 4000 + code.
    let mut ws = open(
        &gw,
        "/v1/stream/x",
        &[
            PG,
            ("grpc-metadata-x-mirror-fail-after", "1"),
            ("grpc-metadata-x-mirror-code", "9"),
        ],
    )
    .await
    .expect("open");
    ws.send(Message::text("{}")).await.unwrap();
    assert_eq!(text(next(&mut ws).await)["result"]["messageId"], "x");
    assert_eq!(text(next(&mut ws).await)["status"]["code"], 9);
    assert_eq!(next(&mut ws).await, Frame::Close(4009));
}

#[tokio::test]
async fn unary_and_the_grpc_path() {
    let gw = Gateway::mirror("").await;
    let mut ws = open(&gw, "/test.v1.Echo/GetMessage", &[])
        .await
        .expect("open");
    ws.send(Message::text("{\"messageId\":\"u\"}"))
        .await
        .unwrap();
    assert_eq!(text(next(&mut ws).await)["result"]["messageId"], "u");
    assert_eq!(next(&mut ws).await, Frame::Close(1000));
    assert_eq!(open(&gw, "/nowhere", &[]).await.err(), Some(404));
}

#[tokio::test]
async fn binary_frames_through_the_subprotocol() {
    let gw = Gateway::mirror("").await;
    let registry = crate::support::test_registry();
    let desc = registry
        .pool()
        .get_message_by_name("test.v1.Message")
        .expect("Message");
    let mut msg = prost_reflect::DynamicMessage::new(desc.clone());
    msg.set_field_by_name("message_id", prost_reflect::Value::String("bin".into()));
    let mut ws = open(&gw, "/v1/ws/chat", &[ONE, PG]).await.expect("open");
    ws.send(Message::binary(msg.encode_to_vec())).await.unwrap();
    let Frame::Binary(bytes) = next(&mut ws).await else {
        panic!("expected a binary frame")
    };
    let back = prost_reflect::DynamicMessage::decode(desc, bytes.as_slice()).expect("decode");
    assert_eq!(back, msg);

    // Without the subprotocol a binary frame is refused with INVALID_ARGUMENT.
    let mut ws = open(&gw, "/v1/chat?method=POST", &[ONE])
        .await
        .expect("open");
    ws.send(Message::binary(msg.encode_to_vec())).await.unwrap();
    let error = text(next(&mut ws).await);
    assert_eq!(error["error"]["code"], 3);
    assert!(error["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("binary frames"));
}

#[tokio::test]
async fn bad_frames_end_the_stream_with_invalid_argument() {
    let gw = Gateway::mirror("").await;
    for bad in ["{not json", "{\"revision\":\"many\"}", "[1,2]"] {
        let mut ws = open(&gw, "/v1/ws/chat", &[ONE, PG]).await.expect("open");
        ws.send(Message::text(bad)).await.unwrap();
        let status = text(next(&mut ws).await);
        assert_eq!(status["status"]["code"], 3, "{bad}: {status}");
        assert_eq!(next(&mut ws).await, Frame::Close(4003), "{bad}");
    }
    // Everyone else is still served.
    let (status, _) = gw.get("/v1/messages/ok").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let gw = Gateway::mirror("[websocket]\nmax_message_bytes = 1024\n").await;
    let mut ws = open(&gw, "/v1/chat?method=POST", &[ONE])
        .await
        .expect("open");
    let big = format!("{{\"text\":\"{}\"}}", "x".repeat(2048));
    ws.send(Message::text(big)).await.unwrap();
    assert_eq!(text(next(&mut ws).await)["error"]["code"], 8);
    assert_eq!(next(&mut ws).await, Frame::Close(1009));
}

#[tokio::test]
async fn origin_allow_list_and_stream_limit_refuse_clearly() {
    let gw = Gateway::mirror(
        "[websocket]\nallowed_origins = [\"https://ok.example\"]\nmax_streams = 1\n",
    )
    .await;
    let bad = ("origin", "https://evil.example");
    assert_eq!(
        open(&gw, "/v1/chat?method=POST", &[bad]).await.err(),
        Some(403)
    );
    assert_eq!(
        open(&gw, "/v1/chat?method=POST", &[]).await.err(),
        Some(403)
    );
    let good = ("origin", "https://ok.example");
    let mut first = open(&gw, "/v1/chat?method=POST", &[good, ONE])
        .await
        .expect("open");
    assert_eq!(
        open(&gw, "/v1/chat?method=POST", &[good]).await.err(),
        Some(429)
    );
    first.send(Message::text("EOF")).await.unwrap();
    assert_eq!(next(&mut first).await, Frame::Close(1000));
    drop(first);
    eventually("socket released", || {
        gw.store.streams().stats().sockets.load(Ordering::SeqCst) == 0
    })
    .await;
    assert!(open(&gw, "/v1/chat?method=POST", &[good]).await.is_ok());
}

#[tokio::test]
async fn a_socket_that_goes_away_cancels_the_backend_call() {
    let gw = Gateway::mirror("").await;
    let mirror = gw.mirror.clone().unwrap();
    let mut ws = open(&gw, "/v1/chat?method=POST", &[ONE])
        .await
        .expect("open");
    ws.send(Message::text("{\"messageId\":\"a\"}"))
        .await
        .unwrap();
    assert_eq!(text(next(&mut ws).await)["result"]["messageId"], "a");
    assert_eq!(mirror.active.load(Ordering::SeqCst), 1);
    drop(ws);
    eventually("backend saw the cancel", || {
        mirror.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    let stats = gw.store.streams().stats().clone();
    eventually("gateway stream closed", || {
        stats.active.load(Ordering::SeqCst) == 0 && stats.sockets.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn many_concurrent_sockets() {
    let gw = Gateway::mirror("").await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut ws = open(&gw, "/v1/chat?method=POST", &[ONE])
            .await
            .expect("open");
        tasks.push(tokio::spawn(async move {
            for n in 0..5 {
                ws.send(Message::text(format!("{{\"messageId\":\"{i}-{n}\"}}")))
                    .await
                    .unwrap();
                let got = text(next(&mut ws).await);
                assert_eq!(got["result"]["messageId"], format!("{i}-{n}"));
            }
            ws.send(Message::text("EOF")).await.unwrap();
            assert_eq!(next(&mut ws).await, Frame::Close(1000));
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("in time")
            .expect("task");
    }
}

#[tokio::test]
async fn shutdown_closes_sockets_going_away() {
    let gw = Gateway::mirror("").await;
    let mut ws = open(&gw, "/v1/chat?method=POST", &[ONE, PG])
        .await
        .expect("open");
    ws.send(Message::text("{\"messageId\":\"a\"}"))
        .await
        .unwrap();
    assert_eq!(text(next(&mut ws).await)["result"]["messageId"], "a");
    gw.store.streams().go_away();
    assert_eq!(text(next(&mut ws).await)["status"]["code"], 14);
    assert_eq!(next(&mut ws).await, Frame::Close(1001));
    let _ = CloseCode::Away;
}

#[tokio::test]
async fn the_demo_shop_quotes_baskets_over_a_websocket_and_over_http() {
    let gw = Gateway::shop().await;
    let mut ws = open(&gw, "/v1/quotes:live", &[PG]).await.expect("open");
    ws.send(Message::text("{\"productId\":\"p1\",\"quantity\":2}"))
        .await
        .unwrap();
    let first = text(next(&mut ws).await);
    assert_eq!(first["result"]["productId"], "p1");
    ws.send(Message::text("{\"productId\":\"p2\",\"quantity\":1}"))
        .await
        .unwrap();
    let second = text(next(&mut ws).await);
    let line = |v: &serde_json::Value, k: &str| {
        v["result"][k]
            .as_str()
            .unwrap_or("0")
            .parse::<i64>()
            .unwrap_or(-1)
    };
    assert_eq!(
        line(&second, "basketCents"),
        line(&first, "lineCents") + line(&second, "lineCents")
    );
    ws.send(Message::text("{\"productId\":\"nope\",\"quantity\":1}"))
        .await
        .unwrap();
    assert_eq!(text(next(&mut ws).await)["status"]["code"], 5);
    assert_eq!(next(&mut ws).await, Frame::Close(4005));

    let resp = gw
        .client
        .post(gw.url("/v1/quotes"))
        .body("{\"productId\":\"p1\",\"quantity\":1}\n{\"productId\":\"p3\",\"quantity\":1}\n")
        .send()
        .await
        .expect("quotes");
    let body = resp.text().await.expect("body");
    assert_eq!(body.lines().count(), 2, "{body}");
    assert!(
        body.lines().all(|l| l.starts_with("{\"result\":")),
        "{body}"
    );
}

#[tokio::test]
async fn an_idle_socket_times_out() {
    let gw =
        Gateway::mirror("[websocket]\nidle_timeout = \"300ms\"\nping_interval = \"1h\"\n").await;
    let mut ws = open(&gw, "/v1/chat?method=POST", &[PG])
        .await
        .expect("open");
    assert_eq!(text(next(&mut ws).await)["status"]["code"], 4);
    assert_eq!(next(&mut ws).await, Frame::Close(4004));
    let stats = gw.store.streams().stats().clone();
    eventually("socket released", || {
        stats.sockets.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn client_streaming_answers_after_the_half_close() {
    let gw = Gateway::mirror("").await;
    let mut ws = open(&gw, "/v1/collect?method=POST", &[PG])
        .await
        .expect("open");
    for id in ["a", "b"] {
        ws.send(Message::text(format!("{{\"messageId\":\"{id}\"}}")))
            .await
            .unwrap();
    }
    ws.send(Message::text("EOF")).await.unwrap();
    assert_eq!(text(next(&mut ws).await)["result"]["messageId"], "b");
    assert_eq!(text(next(&mut ws).await)["status"]["code"], 0);
    assert_eq!(next(&mut ws).await, Frame::Close(1000));
}

#[tokio::test]
async fn a_deadline_on_the_upgrade_bounds_the_call() {
    let gw = Gateway::mirror("").await;
    let mut socket = open(
        &gw,
        "/v1/ws/chat",
        &[
            ("sec-websocket-protocol", "protogate.v1"),
            ("grpc-timeout", "500m"),
            ("grpc-metadata-x-mirror-repeat", "1"),
        ],
    )
    .await
    .expect("socket");
    socket
        .send(Message::text(r#"{"text":"hi"}"#))
        .await
        .expect("send");
    assert_eq!(text(next(&mut socket).await)["result"]["text"], "hi");
    // The socket stays open and quiet; the client's deadline ends the call.
    let status = text(next(&mut socket).await);
    assert_eq!(status["status"]["code"], 4, "{status}");
    assert_eq!(next(&mut socket).await, Frame::Close(4004));
}
