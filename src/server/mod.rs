//! The public listener: HTTP/1.1 and HTTP/2 (h2c) over one accept loop with a connection cap,
//! header limits, health endpoints and response compression, drained gracefully.

mod compression;
mod health;
pub mod spin;
pub mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceBuilder;

use crate::config::ServerConfig;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway;
use crate::snapshot::SnapshotStore;
use health::Health;
use workers::Workers;

/// Room above `max_header_bytes` for what our count leaves out (request line, `: ` and CRLF per
/// header, HPACK's 32 bytes per entry), so hyper's own limit is only reached far past ours.
const HEADER_SLACK: usize = 16 << 10;

/// How long a refused connection may take to read its 503 before it is dropped.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Serves the gateway on a bound listener until `shutdown` completes, then stops accepting and
/// waits for in-flight requests (the caller bounds that wait). The `[server]` settings are read
/// from the store's snapshot once, here.
pub async fn run(
    listener: TcpListener,
    store: Arc<SnapshotStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = store.load().config.server.clone();
    // Connections go to the worker threads, or stay on the caller's runtime with `workers = 0`.
    let workers = match config.workers {
        0 => None,
        n => Some(Workers::start(
            n,
            spin::IdleSpin::new(config.idle_spin, store.metrics().idle_spin()),
        )?),
    };
    let builder = Arc::new(connection_builder(&config));
    let front = Arc::new(Front {
        health: Health::new(&config),
        max_header_bytes: config.max_header_bytes,
        store: store.clone(),
    });
    let compression = compression::layer(&config);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    // Connections still waiting for their first byte are dropped, not drained, at shutdown.
    let (draining, drain_started) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    pause_after_accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        // A slot is taken without waiting: a client beyond the cap learns it at once instead of
        // sitting in the backlog until its own timeout.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(tcp, store.clone()));
            continue;
        };
        let front = front.clone();
        let service = ServiceBuilder::new().layer(compression.clone()).service_fn(
            move |request: Request<Incoming>| {
                let front = front.clone();
                // Boxed once here, the request's whole future (several KiB) is never copied
                // again as hyper and tower move theirs around.
                Box::pin(async move { Ok::<_, Infallible>(front.serve(request, remote).await) })
            },
        );
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let mut drain_started = drain_started.clone();
        let first_byte_within = config.header_read_timeout;
        let serve = move |tcp: TcpStream| async move {
            // hyper's header timeout starts once it knows the protocol, which takes a first
            // byte: a client that sends nothing would otherwise hold its slot for ever.
            let mut first = [0u8; 1];
            tokio::select! {
                peeked = tokio::time::timeout(first_byte_within, tcp.peek(&mut first)) => {
                    if !matches!(peeked, Ok(Ok(n)) if n > 0) {
                        return;
                    }
                }
                _ = drain_started.wait_for(|draining| *draining) => return,
            }
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(tcp),
                TowerToHyperService::new(service),
            );
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%remote, "connection ended: {e}");
            }
            drop(slot);
        };
        match &workers {
            None => {
                tokio::spawn(serve(tcp));
            }
            // The socket moves to the worker's own reactor.
            Some(workers) => match tcp.into_std() {
                Ok(tcp) => workers.spawn(async move {
                    match TcpStream::from_std(tcp) {
                        Ok(tcp) => serve(tcp).await,
                        Err(e) => tracing::warn!(%remote, "cannot serve a connection: {e}"),
                    }
                }),
                Err(e) => tracing::warn!(%remote, "cannot hand a connection over: {e}"),
            },
        }
    }
    drop(listener);
    let _ = draining.send(true);
    // WebSockets are detached from their connections once upgraded: tell them to close
    // (going away) when the drain starts.
    store.streams().go_away();
    graceful.shutdown().await;
    Ok(())
}

/// hyper's settings for every connection of the listener.
pub(crate) fn connection_builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let headroom = config.max_header_bytes.saturating_add(HEADER_SLACK);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        // hyper refuses a buffer under 8 KiB.
        .max_buf_size(headroom.max(8 << 10));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(headroom).unwrap_or(u32::MAX));
    builder
}

/// Transient accept failures (a client that reset before accept) are skipped; others (out of
/// file descriptors) are logged and waited out, so the loop does not spin.
async fn pause_after_accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accepting a connection failed: {e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// What every request of the listener passes before the gateway.
#[derive(Debug)]
struct Front {
    store: Arc<SnapshotStore>,
    health: Health,
    max_header_bytes: usize,
}

impl Front {
    /// Serves one request on the worker that owns its connection.
    async fn serve(&self, request: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        // A request and its response are the moments the next event (the backend's answer, the
        // client's next request) is likely to come soon: spin for it rather than sleep.
        spin::busy();
        let response = self.answer(request, remote).await;
        spin::busy();
        response
    }

    /// Header limit, then health endpoints, then the gateway.
    async fn answer(&self, request: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        let size = header_bytes(request.headers());
        if size > self.max_header_bytes {
            tracing::info!(
                target: "protogate::access",
                method = %request.method(),
                path = %request.uri().path(),
                status = 431,
                header_bytes = size,
            );
            self.store
                .metrics()
                .reject(crate::telemetry::Rejection::HeadersTooLarge);
            return self.headers_too_large(size);
        }
        if let Some(response) = self.health.answer(&self.store, &request).await {
            return response;
        }
        gateway::handle(&self.store, request.map(Body::new), Some(remote)).await
    }

    fn headers_too_large(&self, size: usize) -> Response<Body> {
        let snapshot = self.store.load();
        let err = GatewayError::new(
            ErrorKind::HeadersTooLarge,
            format!(
                "request headers are {size} bytes, more than the {} allowed",
                self.max_header_bytes
            ),
        );
        gateway::error_response(&snapshot, &err)
    }
}

/// The size of the headers as the limit counts them: names and values, nothing else.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

/// Answers a connection beyond the cap with a 503 in the gateway's error format and closes it.
/// The response is written as HTTP/1.1 before the request is read; an HTTP/2 client sees the
/// connection close instead.
async fn refuse(mut tcp: TcpStream, store: Arc<SnapshotStore>) {
    store
        .metrics()
        .reject(crate::telemetry::Rejection::TooManyConnections);
    let snapshot = store.load();
    let err = GatewayError::new(
        ErrorKind::Unavailable,
        "the gateway is serving as many connections as it allows; try again later",
    );
    let response = gateway::error_response(&snapshot, &err);
    let bytes = http1_bytes(response).await;
    let linger = async {
        tcp.write_all(&bytes).await?;
        tcp.shutdown().await?;
        // Read what the client sent until it closes: closing with unread input would reset the
        // connection and could destroy the 503 before the client reads it.
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

/// `response` as HTTP/1.1 bytes, with `Connection: close`.
async fn http1_bytes(response: Response<Body>) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    // The error body is in memory already; collecting it cannot wait on anything.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    let mut headers = parts.headers;
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[test]
    fn header_bytes_counts_names_and_values() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("12345"));
        headers.append("x-a", HeaderValue::from_static("1"));
        assert_eq!(header_bytes(&headers), 3 + 5 + 3 + 1);
        assert_eq!(header_bytes(&HeaderMap::new()), 0);
    }

    #[tokio::test]
    async fn refusal_is_a_complete_http1_response() {
        let mut response = Response::new(Body::from("{\"code\":14}"));
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        let text = String::from_utf8(http1_bytes(response).await).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.contains("content-length: 11\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"code\":14}"), "{text}");
    }
}
