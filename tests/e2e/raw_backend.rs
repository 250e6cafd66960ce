//! A backend written against the HTTP/2 framing directly, for answers tonic servers cannot give:
//! custom trailers on success, a response with no grpc-status at all, an HTTP error instead of
//! gRPC, two messages for a unary call, and a reset stream.

use std::convert::Infallible;
use std::path::Path;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use protogate::config::Config;
use tokio::net::TcpListener;

use crate::support::{test_registry, Gateway};

/// Serves gRPC-framed answers: `/test.v1.Echo/GetMessage` returns one empty message with a header
/// and a trailer of its own; `Delete` answers HTTP 503 with no gRPC at all; `GetLiteral` sends two
/// messages; `GetSub` resets the stream after its headers; any other path returns a message
/// and ends without grpc-status.
async fn start_raw_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path();
                        let with_status = matches!(
                            path,
                            "/test.v1.Echo/GetMessage" | "/test.v1.Echo/GetLiteral"
                        );
                        // One gRPC frame: not compressed, zero-length message.
                        let mut frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
                            vec![Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])))];
                        if path == "/test.v1.Echo/GetLiteral" {
                            frames.push(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))));
                        }
                        if path == "/test.v1.Echo/GetSub" {
                            // A failing body: hyper resets the stream (INTERNAL_ERROR).
                            frames = vec![Err(std::io::Error::other("broken"))];
                        }
                        if with_status {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            trailers.insert("x-note", http::HeaderValue::from_static("done"));
                            frames.push(Ok(Frame::trailers(trailers)));
                        }
                        let body = StreamBody::new(futures_util::stream::iter(frames));
                        let status = if path == "/test.v1.Echo/Delete" {
                            503
                        } else {
                            200
                        };
                        let response = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/grpc")
                            .header("x-head", "h")
                            .body(body)
                            .expect("response");
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn gateway_over_raw_backend() -> Gateway {
    let addr = start_raw_backend().await;
    let mut config = Config::from_toml("", Path::new(".")).expect("config");
    config
        .set_upstream(&format!("http://{addr}"))
        .expect("upstream");
    Gateway::with(config, test_registry()).await
}

#[tokio::test]
async fn response_headers_and_trailers_come_back_under_their_prefixes() {
    let gw = gateway_over_raw_backend().await;
    let resp = gw
        .client
        .get(gw.url("/v1/messages/1"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("grpc-metadata-x-head").as_deref(), Some("h"));
    assert_eq!(header("grpc-trailer-x-note").as_deref(), Some("done"));
    // The protocol's own trailer is not echoed back.
    assert_eq!(header("grpc-trailer-grpc-status"), None);
}

#[tokio::test]
async fn an_answer_without_grpc_status_is_a_bad_gateway() {
    let gw = gateway_over_raw_backend().await;
    let (status, body) = gw.get("/v1/messages?revision=1").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], 13);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("grpc-status"), "{message}");
    // The gateway keeps serving.
    let (status, _) = gw.get("/v1/messages/2").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn broken_answers_get_the_status_grpc_gives_them() {
    let gw = gateway_over_raw_backend().await;
    // HTTP 503 without gRPC: UNAVAILABLE, by gRPC's HTTP-to-gRPC table.
    let (status, body) = gw.send("DELETE", "/v1/messages/1", "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], 14, "{body}");
    // Two messages for a unary call: the backend broke the protocol.
    let (status, body) = gw.get("/v1/nested/literal/3").await;
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("more than one message"), "{message}");
    // A reset stream (INTERNAL_ERROR): INTERNAL, as the HTTP/2 table says.
    let (status, body) = gw.get("/v1/sub/1").await;
    assert_eq!(body["code"], 13, "{body}");
    assert_eq!(status, 500, "{body}");
    // The connection survives all of it.
    let (status, _) = gw.get("/v1/messages/2").await;
    assert_eq!(status, 200);
}
