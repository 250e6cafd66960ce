//! SIGTERM on a `protogate serve` process: it stops accepting, lets in-flight requests finish
//! within the configured grace, and exits 0.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::cli::{Launching, MirrorBackend, Served, TempDir, PATIENCE};
use crate::support;

/// `protogate serve` over the test protos in front of `mirror`, plus `extra` arguments.
async fn gateway(mirror: &MirrorBackend, extra: &[&str]) -> Served {
    let mut args = vec![
        "serve",
        "--proto",
        "protos/test/v1/echo.proto",
        "--proto-path",
        "protos",
        "--upstream",
        &mirror.url,
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Served::start(args).await
}

/// Sends `GET /v1/messages/1`, which the mirror answers after `sleep_ms`, and returns once the
/// mirror holds the call.
async fn slow_request(
    gateway: &Served,
    mirror: &MirrorBackend,
    sleep_ms: u64,
) -> JoinHandle<reqwest::Result<(u16, serde_json::Value)>> {
    let before = mirror.stats.calls.load(Ordering::SeqCst);
    let request = reqwest::Client::new()
        .get(gateway.url("/v1/messages/1"))
        .header("Grpc-Metadata-X-Mirror-Sleep-Ms", sleep_ms.to_string());
    let in_flight = tokio::spawn(async move { Ok(support::read(request.send().await?).await) });
    let deadline = Instant::now() + PATIENCE;
    while mirror.stats.calls.load(Ordering::SeqCst) == before {
        assert!(
            Instant::now() < deadline,
            "the call never reached the mirror"
        );
        assert!(
            !in_flight.is_finished(),
            "the request ended before reaching the mirror"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    in_flight
}

/// Polls until connecting to `gateway` is refused (the listener is closed).
async fn wait_until_refused(gateway: &Served, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match TcpStream::connect(gateway.addr).await {
            // A connect caught in the closing listener's backlog is reset rather than refused;
            // either way nothing accepts it any more.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return
            }
            Err(e) => panic!("connecting failed otherwise than refused: {e}"),
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting connections {within:?} after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_refuses_new_ones() {
    let mirror = MirrorBackend::start().await;
    let gateway = gateway(&mirror, &[]).await;
    // The call outlasts the refusal check by a wide margin, so a loaded machine cannot reorder them.
    let in_flight = slow_request(&gateway, &mirror, 6000).await;

    gateway.terminate();
    wait_until_refused(&gateway, Duration::from_secs(5)).await;
    assert!(
        !in_flight.is_finished(),
        "the listener closed while the request was still running"
    );

    let (status, body) = in_flight
        .await
        .expect("request task")
        .expect("the in-flight request completes");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messageId"], "1");

    let (exit, stderr) = gateway.exit_within(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0), "{exit:?}; stderr:\n{stderr}");
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    let mirror = MirrorBackend::start().await;
    let tmp = TempDir::new("grace");
    let config = tmp.join("protogate.toml");
    std::fs::write(&config, "shutdown_grace = \"300ms\"\n").expect("write config");
    let config = config.display().to_string();
    let gateway = gateway(&mirror, &["--config", &config]).await;
    // Far longer than the grace and than this test may take.
    let in_flight = slow_request(&gateway, &mirror, 60_000).await;

    gateway.terminate();
    // Without the grace bound it would wait for the mirror's full minute.
    let (exit, stderr) = gateway.exit_within(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0), "{exit:?}; stderr:\n{stderr}");
    let outcome = in_flight.await.expect("request task");
    assert!(
        !matches!(outcome, Ok((200, _))),
        "the request cannot have been answered: {outcome:?}"
    );
}

#[tokio::test]
async fn sigterm_right_after_the_listening_line_is_graceful() {
    // A script may signal as soon as it has read the port; the handlers must be in place by then.
    // A shell waits to send it, so no fork and exec of `kill` gives the gateway time to get ready.
    for _ in 0..5 {
        let launching = Launching::spawn(["serve", "--listen", "127.0.0.1:0"]);
        let mut trigger = tokio::process::Command::new("sh")
            .args(["-c", &format!("read _ && kill -TERM {}", launching.pid())])
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sh");
        let mut pull = trigger.stdin.take().expect("piped stdin");
        let gateway = launching.announced().await;
        pull.write_all(b"\n").await.expect("trigger the signal");
        drop(pull);
        let sent = tokio::time::timeout(PATIENCE, trigger.wait()).await;
        assert!(
            matches!(sent, Ok(Ok(status)) if status.success()),
            "{sent:?}"
        );
        let (exit, stderr) = gateway.exit_within(Duration::from_secs(5)).await;
        assert_eq!(exit.code(), Some(0), "{exit:?}; stderr:\n{stderr}");
    }
}
