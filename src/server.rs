//! The public listener: HTTP/1.1 and HTTP/2 (h2c) over one accept loop, drained gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::serve::ListenerExt;
use axum::Router;
use http::{Request, Response};
use tokio::net::TcpListener;

use crate::gateway;
use crate::snapshot::SnapshotStore;

/// The data-plane router: every path goes to the gateway, whose routes are not axum's.
pub fn router(store: Arc<SnapshotStore>) -> Router {
    Router::new().fallback(handler).with_state(store)
}

async fn handler(
    State(store): State<Arc<SnapshotStore>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response<Body> {
    gateway::handle(&store, request, Some(remote)).await
}

/// Serves the gateway on a bound listener until `shutdown` completes, then stops accepting and
/// waits for in-flight requests (the caller bounds that wait).
pub async fn run(
    listener: TcpListener,
    store: Arc<SnapshotStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // WebSockets are detached from their connections once upgraded: tell them to close
    // (going away) when the drain starts.
    let streams_store = store.clone();
    let shutdown = async move {
        shutdown.await;
        streams_store.streams().go_away();
    };
    let app = router(store).into_make_service_with_connect_info::<SocketAddr>();
    // Small responses must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
