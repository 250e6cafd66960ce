//! Backends with several addresses share one pool that spreads calls over them.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use protogate::config::Config;
use protogate::demo;
use tokio::sync::watch;

use crate::support::{test_registry, Gateway};

#[tokio::test]
async fn calls_are_balanced_over_every_address_of_a_backend() {
    let registry = test_registry();
    let (_stop, stopped) = watch::channel(());
    let (a, stats_a) = demo::start_mirror(registry.pool().clone(), stopped.clone())
        .await
        .expect("mirror a");
    let (b, stats_b) = demo::start_mirror(registry.pool().clone(), stopped)
        .await
        .expect("mirror b");
    let toml = format!(
        r#"
        default_backend = "pair"
        [backends.pair]
        addresses = ["http://{a}", "http://{b}"]
        "#
    );
    let config = Config::from_toml(&toml, Path::new(".")).expect("config");
    let gw = Gateway::with(config, registry).await;
    for i in 0..40 {
        let (status, body) = gw.get(&format!("/v1/messages/{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["messageId"], i.to_string());
    }
    let (ca, cb) = (
        stats_a.calls.load(Ordering::Relaxed),
        stats_b.calls.load(Ordering::Relaxed),
    );
    assert_eq!(ca + cb, 40);
    assert!(ca > 0 && cb > 0, "one address got every call: {ca} vs {cb}");
}

/// A gateway whose default backend has a dead address first and a live mirror second.
async fn half_down() -> (
    Gateway,
    std::sync::Arc<demo::MirrorStats>,
    watch::Sender<()>,
) {
    let registry = test_registry();
    let (stop, stopped) = watch::channel(());
    let (up, stats) = demo::start_mirror(registry.pool().clone(), stopped)
        .await
        .expect("mirror");
    // A port that was bound and released: nothing listens there.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let toml = format!(
        r#"
        default_backend = "pair"
        default_timeout = "5s"
        [backends.pair]
        addresses = ["http://{down}", "http://{up}"]
        connect_timeout = "500ms"
        "#
    );
    let config = Config::from_toml(&toml, Path::new(".")).expect("config");
    (Gateway::with(config, registry).await, stats, stop)
}

#[tokio::test]
async fn an_address_that_is_down_is_avoided() {
    let (gw, stats, _stop) = half_down().await;
    let mut ok = 0;
    for i in 0..10 {
        let path = format!("/v1/messages/{i}");
        let (status, _) = tokio::time::timeout(Duration::from_secs(10), gw.get(&path))
            .await
            .expect("a request to a half-down backend must not hang");
        if status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "the live address should serve every call");
    assert_eq!(stats.calls.load(Ordering::Relaxed), 10);
}

#[tokio::test]
async fn streaming_calls_fail_over_from_an_address_that_is_down() {
    let (gw, stats, _stop) = half_down().await;
    // Round-robin starts each call at the next address, so some of these try the dead one
    // first; the messages must still all arrive, in order, at the live one.
    for i in 0..6 {
        let body = format!("{{\"messageId\":\"{i}a\"}}\n{{\"messageId\":\"{i}b\"}}\n");
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            gw.client
                .post(gw.url("/v1/chat"))
                .header("grpc-metadata-x-mirror-repeat", "1")
                .body(body)
                .send(),
        )
        .await
        .expect("no hang")
        .expect("chat");
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.expect("body");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "call {i}: {text}");
        assert!(lines[0].contains(&format!("\"{i}a\"")), "call {i}: {text}");
        assert!(lines[1].contains(&format!("\"{i}b\"")), "call {i}: {text}");
    }
    assert_eq!(stats.calls.load(Ordering::Relaxed), 6);
}

/// Serves a mirror on `listener` until the returned sender is dropped or signalled.
fn serve_mirror(
    registry: &protogate::descriptors::Registry,
    listener: tokio::net::TcpListener,
) -> watch::Sender<()> {
    let (stop, mut stopped) = watch::channel(());
    let mirror = demo::Mirror::new(registry.pool().clone());
    tokio::spawn(async move {
        let _ = mirror
            .serve(listener, async move {
                let _ = stopped.changed().await;
            })
            .await;
    });
    stop
}

#[tokio::test]
async fn unary_calls_reconnect_to_a_backend_that_restarted() {
    let registry = test_registry();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = serve_mirror(&registry, listener);
    let toml = format!(
        r#"
        default_backend = "solo"
        [backends.solo]
        addresses = ["http://{addr}"]
        "#
    );
    let config = Config::from_toml(&toml, Path::new(".")).expect("config");
    let gw = Gateway::with(config, registry.clone()).await;
    let (status, body) = gw.get("/v1/messages/1").await;
    assert_eq!(status, 200, "{body}");

    // The backend goes away: its connection closes and calls fail cleanly.
    let _ = stop.send(());
    drop(stop);
    let mut down = None;
    for _ in 0..50 {
        let (status, body) = gw.get("/v1/messages/2").await;
        if status == 503 {
            down = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = down.expect("the gateway never noticed the backend stopped");
    assert_eq!(body["code"], 14, "{body}");

    // Back on the same port: the next calls use a new connection.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let _stop = serve_mirror(&registry, listener);
    for i in 3..8 {
        let (status, body) = gw.get(&format!("/v1/messages/{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["messageId"], i.to_string());
    }
}

#[tokio::test]
async fn every_worker_count_serves_concurrent_connections() {
    // The spin setting with each: none, the default, and the longest.
    for (workers, spin) in [(0, "100us"), (1, "0s"), (3, "100us"), (2, "10ms")] {
        let gw = Gateway::mirror(&format!(
            "[server]\nworkers = {workers}\nidle_spin = \"{spin}\"\n"
        ))
        .await;
        let stats = gw.mirror.clone().expect("a mirror backend");
        // No idle connections kept: each request is a connection of its own, so they are
        // handed to the workers in turn.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let calls = (0..12).map(|i| {
            let (client, url) = (client.clone(), gw.url(&format!("/v1/messages/{i}")));
            async move {
                let resp = client.get(url).send().await.expect("request");
                let status = resp.status().as_u16();
                let body: serde_json::Value = resp.json().await.expect("json");
                (i, status, body)
            }
        });
        for (i, status, body) in futures_util::future::join_all(calls).await {
            assert_eq!(status, 200, "workers = {workers}, spin {spin}: {body}");
            assert_eq!(
                body["messageId"],
                i.to_string(),
                "workers = {workers}, spin {spin}"
            );
        }
        assert_eq!(
            stats.calls.load(Ordering::Relaxed),
            12,
            "workers = {workers}, spin {spin}"
        );
    }
}

#[tokio::test]
async fn megabyte_messages_cross_both_ways_past_the_http2_windows() {
    // 3 MB each way: far past HTTP/2's initial 64 KiB windows, so the call only completes if
    // flow control is released as data is read, and the answer spans many data frames.
    let gw = crate::support::Gateway::mirror("").await;
    let text: String = (0..3_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let body = serde_json::json!({ "s": text }).to_string();
    let (status, answer) = gw.send("POST", "/v1/types", &body).await;
    assert_eq!(status, 200, "{}", answer["message"]);
    assert_eq!(answer["s"].as_str().map(str::len), Some(text.len()));
    assert_eq!(answer["s"].as_str(), Some(text.as_str()));

    // One byte past max_response_bytes is refused as the backend's fault.
    let gw = crate::support::Gateway::mirror("max_response_bytes = 1000000\n").await;
    let (status, answer) = gw.send("POST", "/v1/types", &body).await;
    assert_eq!(status, 502, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("too large")),
        "{answer}"
    );
}
