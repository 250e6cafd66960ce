//! Request headers become backend metadata the way grpc-gateway maps them, and backend metadata
//! comes back as `Grpc-Metadata-*` headers. The mirror returns every ASCII entry it received as
//! response metadata `echo-<key>`, so a request's forwarded metadata is read back from the
//! response's `grpc-metadata-echo-<key>` headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use protogate::config::Config;
use reqwest::header::HeaderMap;
use tokio::sync::watch;

use crate::support::{self, Gateway};

/// POSTs `{}` to /v1/types with `headers`; returns the status and the response headers.
async fn post_with(gw: &Gateway, headers: &[(&str, &str)]) -> (u16, HeaderMap) {
    let mut request = gw
        .client
        .post(gw.url("/v1/types"))
        .header("content-type", "application/json")
        .body("{}");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let resp = request.send().await.expect("request");
    (resp.status().as_u16(), resp.headers().clone())
}

/// Every value the backend received under metadata key `key`, in order.
fn received(headers: &HeaderMap, key: &str) -> Vec<String> {
    headers
        .get_all(format!("grpc-metadata-echo-{key}"))
        .iter()
        .map(|v| v.to_str().expect("ASCII echo").to_owned())
        .collect()
}

#[tokio::test]
async fn request_headers_arrive_as_grpc_gateway_names_them() {
    let gw = Gateway::mirror("").await;
    let (status, headers) = post_with(
        &gw,
        &[
            ("Grpc-Metadata-Tenant", "acme"),
            ("Grpc-Metadata-Request-Id", "r-1"),
            ("User-Agent", "e2e-agent/1.0"),
            ("Accept", "application/json"),
            ("Accept-Language", "fr"),
            ("Cookie", "session=s"),
            ("Authorization", "Bearer token"),
            ("X-Not-Allowed", "dropped"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let cases = [
        // Grpc-Metadata-<key> arrives as <key>.
        ("tenant", vec!["acme"]),
        ("request-id", vec!["r-1"]),
        // Standard headers arrive prefixed.
        ("grpcgateway-user-agent", vec!["e2e-agent/1.0"]),
        ("grpcgateway-accept", vec!["application/json"]),
        ("grpcgateway-accept-language", vec!["fr"]),
        ("grpcgateway-cookie", vec!["session=s"]),
        ("grpcgateway-content-type", vec!["application/json"]),
        // Authorization arrives as itself as well.
        ("authorization", vec!["Bearer token"]),
        ("grpcgateway-authorization", vec!["Bearer token"]),
        // Anything else needs the allow-list.
        ("x-not-allowed", vec![]),
        ("grpc-metadata-tenant", vec![]),
    ];
    for (key, want) in cases {
        assert_eq!(received(&headers, key), want, "{key}: {headers:?}");
    }
}

#[tokio::test]
async fn allow_listed_headers_are_forwarded_as_they_are() {
    let gw = Gateway::mirror("[headers]\nforward = [\"x-custom\", \"X-Trace\"]\n").await;
    let (status, headers) = post_with(
        &gw,
        &[
            ("X-Custom", "one"),
            ("X-Custom", "two"),
            ("x-trace", "t"),
            ("X-Other", "no"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(received(&headers, "x-custom"), ["one", "two"]);
    assert_eq!(received(&headers, "x-trace"), ["t"]);
    assert!(received(&headers, "x-other").is_empty());
}

#[tokio::test]
async fn forwarded_for_and_host_describe_the_client() {
    let gw = Gateway::mirror("").await;
    let host = gw.base.trim_start_matches("http://").to_owned();
    let cases = [
        (vec![], "127.0.0.1", host.as_str()),
        (
            vec![("X-Forwarded-For", "203.0.113.7")],
            "203.0.113.7, 127.0.0.1",
            host.as_str(),
        ),
        (
            vec![
                ("X-Forwarded-For", "203.0.113.7, 10.0.0.1"),
                ("X-Forwarded-Host", "api.example.com"),
            ],
            "203.0.113.7, 10.0.0.1, 127.0.0.1",
            "api.example.com",
        ),
    ];
    for (sent, forwarded_for, forwarded_host) in cases {
        let (status, headers) = post_with(&gw, &sent).await;
        assert_eq!(status, 200);
        assert_eq!(
            received(&headers, "x-forwarded-for"),
            [forwarded_for],
            "{sent:?}"
        );
        assert_eq!(
            received(&headers, "x-forwarded-host"),
            [forwarded_host],
            "{sent:?}"
        );
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_never_forwarded() {
    // Every header here would be forwarded if it were not hop-by-hop.
    let gw = Gateway::mirror(
        "[headers]\nforward = [\"x-custom\", \"x-hop\", \"keep-alive\", \"proxy-authorization\"]\n",
    )
    .await;
    let (status, headers) = post_with(
        &gw,
        &[
            ("Connection", "keep-alive, X-Hop, Grpc-Metadata-Private"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic cHJveHk6cHc="),
            ("X-Hop", "hop"),
            ("Grpc-Metadata-Private", "hop"),
            ("Grpc-Metadata-Public", "end-to-end"),
            ("X-Custom", "end-to-end"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    for key in [
        "connection",
        "keep-alive",
        "proxy-authorization",
        "x-hop",
        "private",
    ] {
        assert!(received(&headers, key).is_empty(), "{key}: {headers:?}");
    }
    assert_eq!(received(&headers, "public"), ["end-to-end"]);
    assert_eq!(received(&headers, "x-custom"), ["end-to-end"]);
}

#[tokio::test]
async fn an_invalid_binary_value_is_skipped_not_fatal() {
    let gw = Gateway::mirror("").await;
    let (status, headers) = post_with(
        &gw,
        &[
            ("Grpc-Metadata-Trace-Bin", "*** not base64 ***"),
            ("Grpc-Metadata-Tenant", "acme"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(received(&headers, "tenant"), ["acme"]);
}

#[tokio::test]
async fn the_deadline_travels_to_the_backend() {
    let gw = Gateway::mirror("").await;
    let (status, headers) = post_with(&gw, &[("Grpc-Timeout", "2S")]).await;
    assert_eq!(status, 200);
    let sent = received(&headers, "grpc-timeout");
    let [value] = sent.as_slice() else {
        panic!("one grpc-timeout expected: {sent:?}");
    };
    let micros: u64 = value
        .strip_suffix('u')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("grpc-timeout in microseconds expected: {value}"));
    assert!(micros > 0 && micros <= 2_000_000, "{value}");
}

#[tokio::test]
async fn backend_metadata_comes_back_as_grpc_metadata_headers() {
    let gw = Gateway::mirror("").await;
    let (status, headers) = post_with(&gw, &[("Grpc-Metadata-Tenant", "acme")]).await;
    assert_eq!(status, 200);
    // The mirror's response metadata `echo-tenant` is the header below; gRPC's own never is.
    assert_eq!(received(&headers, "tenant"), ["acme"]);
    for reserved in [
        "content-type",
        "grpc-status",
        "grpc-message",
        "grpc-encoding",
    ] {
        let name = format!("grpc-metadata-{reserved}");
        assert!(headers.get(&name).is_none(), "{name}: {headers:?}");
    }
}

/// A tonic backend that fails every call with PERMISSION_DENIED, carrying ASCII and binary
/// metadata; stops when `stop` is dropped.
async fn denying_backend(mut stop: watch::Receiver<()>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = tower::service_fn(|_: http::Request<axum::body::Body>| async {
        let mut status = tonic::Status::permission_denied("quota spent");
        let md = status.metadata_mut();
        md.insert("x-quota-left", "0".parse().expect("ASCII value"));
        md.insert_bin(
            "x-trace-bin",
            tonic::metadata::MetadataValue::from_bytes(&[1, 2, 3]),
        );
        Ok::<_, Infallible>(status.into_http::<tonic::body::Body>())
    });
    let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(service));
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stop.changed().await;
                },
            )
            .await;
    });
    addr
}

#[tokio::test]
async fn backend_metadata_comes_back_on_an_error_response_too() {
    let (_stop, stopped) = watch::channel(());
    let addr = denying_backend(stopped).await;
    let mut config = Config::from_toml("", Path::new(".")).expect("config");
    config
        .set_upstream(&format!("http://{addr}"))
        .expect("upstream");
    let gw = Gateway::with(config, support::test_registry()).await;
    let request = post_with(&gw, &[]);
    let (status, headers) = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("answer");
    assert_eq!(status, 403, "{headers:?}");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("grpc-metadata-x-quota-left"), Some("0"));
    // Binary values are passed on in base64.
    assert_eq!(header("grpc-metadata-x-trace-bin"), Some("AQID"));
    assert_eq!(header("grpc-metadata-grpc-status"), None);
    assert_eq!(header("grpc-metadata-grpc-message"), None);
}

#[tokio::test]
async fn backend_metadata_comes_back_with_an_undecodable_answer() {
    let gw = Gateway::mirror("").await;
    let (status, headers) = post_with(
        &gw,
        &[
            ("Grpc-Metadata-X-Mirror-Garbage", "1"),
            ("Grpc-Metadata-Tenant", "acme"),
        ],
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(received(&headers, "tenant"), ["acme"]);
}
