//! `/metrics` on the admin listener, scraped after real requests through the public listener: exact
//! counts, template labels, the upstream histogram, rejections and the WebSocket gauge.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protogate::config::Config;
use protogate::demo;
use reqwest::Method;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{repo, test_registry, AdminGateway, AdminSetup};

const TOKEN: &str = "metrics-secret";

/// The test protos behind a mirror, with the admin API (token [`TOKEN`]) and `config_toml`; the
/// returned sender stops the mirror when dropped.
async fn gateway(config_toml: &str) -> (AdminGateway, watch::Sender<()>) {
    let (stop, stopped) = watch::channel(());
    let (addr, _) = demo::start_mirror(test_registry().pool().clone(), stopped)
        .await
        .expect("mirror starts");
    (
        gateway_to(config_toml, &format!("http://{addr}")).await,
        stop,
    )
}

/// The test protos with `upstream` as the default backend, and the admin API.
async fn gateway_to(config_toml: &str, upstream: &str) -> AdminGateway {
    let mut config = Config::from_toml(config_toml, Path::new(".")).expect("test config");
    config.set_upstream(upstream).expect("upstream url");
    let mut setup = AdminSetup::new(config);
    setup
        .startup
        .add_protos(
            &[repo().join("protos/test/v1/echo.proto")],
            &[repo().join("protos")],
        )
        .expect("test protos");
    setup.token = Some(TOKEN.to_owned());
    AdminGateway::start(setup).await
}

/// One scrape through the admin listener, with the token.
async fn scrape(gw: &AdminGateway) -> String {
    let resp = gw
        .admin_request(Method::GET, "/metrics")
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().expect("ascii");
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = resp.text().await.expect("body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn requests(route: &str, method: &str, status: u16, protocol: &str) -> String {
    format!(
        r#"protogate_requests_total{{route="{route}",method="{method}",status="{status}",protocol="{protocol}"}}"#
    )
}

fn upstream_count(grpc_method: &str, code: &str) -> String {
    format!(
        r#"protogate_upstream_duration_seconds_count{{grpc_method="{grpc_method}",code="{code}"}}"#
    )
}

#[tokio::test]
async fn metrics_need_the_admin_token() {
    let (gw, _mirror) = gateway("").await;
    let anonymous = gw
        .gateway
        .client
        .get(format!("{}/metrics", gw.admin))
        .send()
        .await
        .expect("scrape");
    assert_eq!(anonymous.status().as_u16(), 401);
    // Not served on the public listener.
    let public = gw
        .gateway
        .client
        .get(gw.gateway.url("/metrics"))
        .send()
        .await;
    assert_eq!(public.expect("request").status().as_u16(), 404);
}

#[tokio::test]
async fn requests_are_counted_by_route_template() {
    let (gw, _mirror) = gateway("max_body_bytes = 64").await;
    let public = &gw.gateway;
    for id in ["a", "b", "c"] {
        assert_eq!(public.get(&format!("/v1/messages/{id}")).await.0, 200);
    }
    // The backend answers NOT_FOUND: an upstream call with that code, a 404 on the route.
    let failed = public
        .exchange(
            "GET",
            "/v1/messages/gone",
            &[("grpc-metadata-x-mirror-code", "5")],
            "",
        )
        .await;
    assert_eq!(failed.status, 404);
    // No route at all.
    assert_eq!(public.get("/nowhere/x").await.0, 404);
    // A body over max_body_bytes never reaches the backend.
    let big = format!("{{\"s\":\"{}\"}}", "x".repeat(100));
    assert_eq!(public.send("POST", "/v1/types", &big).await.0, 413);
    // A server stream: the upstream time is to its response headers.
    let streamed = public
        .exchange(
            "GET",
            "/v1/stream/s",
            &[("grpc-metadata-x-mirror-repeat", "2")],
            "",
        )
        .await;
    assert_eq!(streamed.status, 200);

    let text = scrape(&gw).await;
    let template = "/v1/messages/{message_id}";
    assert_eq!(
        sample(&text, &requests(template, "GET", 200, "http")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &requests(template, "GET", 404, "http")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &requests("-", "GET", 404, "http")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &requests("/v1/types", "POST", 413, "http")),
        Some(1.0),
        "{text}"
    );
    for raw in ["/v1/messages/a", "/v1/messages/gone", "/nowhere"] {
        assert!(!text.contains(raw), "raw path {raw} in: {text}");
    }
    let latency = format!(
        r#"protogate_request_duration_seconds_count{{route="{template}",protocol="http"}}"#
    );
    assert_eq!(sample(&text, &latency), Some(4.0), "{text}");

    let get = "test.v1.Echo.GetMessage";
    assert_eq!(
        sample(&text, &upstream_count(get, "OK")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &upstream_count(get, "NOT_FOUND")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &upstream_count("test.v1.Echo.Stream", "OK")),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("test.v1.Echo.Types"),
        "the 413 made no call: {text}"
    );
    let too_large = r#"protogate_rejections_total{reason="body_too_large"}"#;
    assert_eq!(sample(&text, too_large), Some(1.0), "{text}");
    let unauthenticated = r#"protogate_rejections_total{reason="unauthenticated"}"#;
    assert_eq!(sample(&text, unauthenticated), Some(0.0), "{text}");

    // A second round adds exactly what it made.
    assert_eq!(public.get("/v1/messages/d").await.0, 200);
    let again = scrape(&gw).await;
    assert_eq!(
        sample(&again, &requests(template, "GET", 200, "http")),
        Some(4.0),
        "{again}"
    );
    assert_eq!(
        sample(&again, &upstream_count(get, "OK")),
        Some(4.0),
        "{again}"
    );
}

#[tokio::test]
async fn a_backend_that_cannot_be_reached_is_unavailable() {
    // Bound and dropped: nothing listens there any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let gw = gateway_to("", &format!("http://{addr}")).await;
    assert_eq!(gw.gateway.get("/v1/messages/a").await.0, 503);
    let text = scrape(&gw).await;
    let series = upstream_count("test.v1.Echo.GetMessage", "UNAVAILABLE");
    assert_eq!(sample(&text, &series), Some(1.0), "{text}");
    let template = "/v1/messages/{message_id}";
    assert_eq!(
        sample(&text, &requests(template, "GET", 503, "http")),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn the_websocket_gauge_follows_open_sockets() {
    let (gw, _mirror) = gateway("").await;
    let gauge = "protogate_websocket_streams_open";
    assert_eq!(sample(&scrape(&gw).await, gauge), Some(0.0));

    let url = gw
        .gateway
        .url("/v1/ws/chat")
        .replacen("http://", "ws://", 1);
    let mut request = url.as_str().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("grpc-metadata-x-mirror-repeat", "1".parse().expect("value"));
    let tcp = TcpStream::connect(gw.gateway.base.trim_start_matches("http://"))
        .await
        .expect("connect");
    let (mut socket, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("handshake");
    socket
        .send(Message::text("{\"messageId\":\"m\"}"))
        .await
        .expect("send");
    // An answer means the backend call is open: the socket is counted and the call timed.
    let answer = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("answer in time");
    assert!(matches!(answer, Some(Ok(Message::Text(_)))), "{answer:?}");
    let open = scrape(&gw).await;
    assert_eq!(sample(&open, gauge), Some(1.0), "{open}");
    assert_eq!(sample(&open, "protogate_streams_open"), Some(1.0), "{open}");
    let upgrade = requests("/v1/ws/chat", "GET", 101, "websocket");
    assert_eq!(sample(&open, &upgrade), Some(1.0), "{open}");
    let chat = upstream_count("test.v1.Echo.Chat", "OK");
    assert_eq!(sample(&open, &chat), Some(1.0), "{open}");

    socket.close(None).await.expect("close");
    drop(socket);
    // The socket's task ends after the close: poll the scrape until the gauge is back to 0.
    let mut last = String::new();
    for _ in 0..500 {
        last = scrape(&gw).await;
        if sample(&last, gauge) == Some(0.0) {
            assert_eq!(sample(&last, "protogate_streams_open"), Some(0.0), "{last}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the gauge did not return to 0: {last}");
}

#[tokio::test]
async fn idle_spin_time_is_counted() {
    let series = "protogate_idle_spin_seconds_total";
    for spin in ["10ms", "0s"] {
        let toml = format!("[server]\nworkers = 1\nidle_spin = \"{spin}\"\n");
        let (gw, _mirror) = gateway(&toml).await;
        assert_eq!(gw.gateway.get("/v1/messages/a").await.0, 200);
        // A spin is counted when it ends, its window after the response at the earliest.
        let mut seconds = 0.0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            seconds = sample(&scrape(&gw).await, series).expect("the series is there");
            if seconds > 0.0 {
                break;
            }
        }
        if spin == "0s" {
            assert_eq!(
                seconds, 0.0,
                "a worker that never spins counted {seconds} s"
            );
        } else {
            // The window is the least one spin lasts; a second covers any wait for the CPU.
            assert!((0.010..1.0).contains(&seconds), "spun for {seconds} s");
        }
    }
}
