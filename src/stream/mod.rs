//! Streams between clients and gRPC backends: request bodies split into JSON messages, response
//! framings (newline-delimited JSON, Server-Sent Events, one JSON array), and the WebSocket
//! bridge. Every stream is counted, so a leak shows as a gauge that does not return to zero.

mod framing;
mod http;
mod split;
pub mod ws;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

pub use framing::{Framing, ARRAY_MEDIA_TYPE};
pub use http::{
    client_stream_response, raw_stream_response, renderer, request_messages, serve,
    streamed_response, Binding, Renderer, RequestAbort, StreamCall, Streamed, SSE_HEARTBEAT,
};
pub use split::{JsonSplitter, SplitError};

/// Counters of every stream the gateway serves, shared by all snapshots of one listener.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Streams open now (HTTP response streams and WebSocket calls).
    pub active: AtomicUsize,
    /// WebSocket connections open now.
    pub sockets: AtomicUsize,
    /// Messages taken from backends so far.
    pub from_backend: AtomicU64,
    /// Messages written towards clients so far (handed to the connection, not yet acknowledged).
    pub to_client: AtomicU64,
    /// Request messages sent to backends so far.
    pub to_backend: AtomicU64,
}

/// What every stream of a listener shares: the counters and the going-away signal.
#[derive(Debug)]
pub struct Streams {
    stats: Arc<StreamStats>,
    going_away: watch::Sender<bool>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            stats: Arc::default(),
            going_away: watch::channel(false).0,
        }
    }
}

impl Streams {
    /// The counters.
    pub fn stats(&self) -> &Arc<StreamStats> {
        &self.stats
    }

    /// Tells every open WebSocket to close with going-away; HTTP streams end with their
    /// connections as the server drains.
    pub fn go_away(&self) {
        self.going_away.send_replace(true);
    }

    /// A receiver that turns true when the listener shuts down.
    pub fn going_away(&self) -> watch::Receiver<bool> {
        self.going_away.subscribe()
    }

    /// Counts a stream open until the returned guard drops.
    pub fn open(&self) -> ActiveStream {
        ActiveStream::new(self.stats.clone(), self.going_away())
    }
}

/// One open stream; the active gauge goes down when it drops, however the stream ended.
#[derive(Debug)]
pub struct ActiveStream(Arc<StreamStats>, watch::Receiver<bool>);

impl ActiveStream {
    fn new(stats: Arc<StreamStats>, going_away: watch::Receiver<bool>) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        ActiveStream(stats, going_away)
    }

    /// Resolves when the listener starts shutting down (never, if its state is gone).
    pub async fn shutting_down(&mut self) {
        if self.1.wait_for(|away| *away).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The counters this stream reports to.
    pub fn stats(&self) -> &StreamStats {
        &self.0
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open WebSocket; the socket gauge goes down when it drops.
#[derive(Debug)]
pub struct OpenSocket(Arc<StreamStats>);

impl Streams {
    /// Counts one more socket unless `max` are open already.
    pub fn try_open_socket(&self, max: usize) -> Option<OpenSocket> {
        let before = self.stats.sockets.fetch_add(1, Ordering::SeqCst);
        let socket = OpenSocket(self.stats.clone());
        (before < max).then_some(socket)
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::SeqCst);
    }
}
