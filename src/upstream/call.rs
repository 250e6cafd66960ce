//! Calls to a backend over a shared channel.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use super::backends::{Address, BackendChannel};
use super::codec::{DynamicCodec, Outgoing};
use crate::error::{ErrorKind, GatewayError};
use crate::telemetry::UpstreamTimer;

/// What one call sends, whichever address it goes to.
#[derive(Debug)]
pub struct CallParts {
    /// Request metadata.
    pub metadata: MetadataMap,
    /// The request message.
    pub message: Outgoing,
    /// The deadline sent as `grpc-timeout`; None sends none (a stream the client set no
    /// deadline for may live as long as it is used).
    pub timeout: Option<std::time::Duration>,
}

impl CallParts {
    fn request(self) -> tonic::Request<Outgoing> {
        let mut request =
            tonic::Request::from_parts(self.metadata, Default::default(), self.message);
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        request
    }
}

/// Runs `call` on the backend's addresses in turn until one connects: a refused connection means
/// the request was never sent, so trying the next address is safe for any method.
async fn on_some_address<'a, T, F, Fut>(
    backend: &'a BackendChannel,
    parts: CallParts,
    call: F,
) -> Result<T, GatewayError>
where
    F: Fn(&'a Address, CallParts) -> Fut,
    Fut: std::future::Future<Output = Result<T, GatewayError>>,
{
    if backend.len() <= 1 {
        let Some((_, address)) = backend.candidates().next() else {
            return Err(GatewayError::new(
                ErrorKind::Unavailable,
                "backend has no address",
            ));
        };
        return call(address, parts).await;
    }
    // Encoded once, so each attempt clones bytes rather than a message.
    let parts = CallParts {
        message: parts.message.encoded(),
        ..parts
    };
    let mut last = None;
    for (i, address) in backend.candidates() {
        let attempt = CallParts {
            metadata: parts.metadata.clone(),
            message: parts.message.clone(),
            timeout: parts.timeout,
        };
        match call(address, attempt).await {
            Err(err) if err.is_connect_failure() => {
                backend.mark_down(i);
                last = Some(err);
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| GatewayError::new(ErrorKind::Unavailable, "backend has no address")))
}

/// A unary answer: response headers, the one message, and the trailers, kept apart so headers
/// and trailers can be forwarded under their own prefixes.
#[derive(Debug)]
pub struct UnaryReply {
    /// Response header metadata.
    pub headers: MetadataMap,
    /// The encoded response message.
    pub message: Bytes,
    /// Trailer metadata.
    pub trailers: MetadataMap,
}

/// Runs one attempt, timed on `timer` (its outcome labels the upstream histogram).
async fn timed<T>(
    timer: &UpstreamTimer,
    attempt: impl std::future::Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    let call = timer.start();
    let outcome = attempt.await;
    call.finish(&outcome);
    outcome
}

/// Makes one unary call. The deadline is the caller's: wrap this in a timeout. Each attempt is
/// timed on `timer` up to the trailers.
pub async fn unary(
    backend: &BackendChannel,
    path: PathAndQuery,
    parts: CallParts,
    max_response_bytes: usize,
    timer: &UpstreamTimer,
) -> Result<UnaryReply, GatewayError> {
    on_some_address(backend, parts, |address, parts| {
        let path = &path;
        // Boxed: the attempt is most of the call's state, and the callers' futures (timeout,
        // gateway, hyper's service) would each copy it whole as they are built and moved.
        Box::pin(timed(timer, async move {
            address
                .unary()
                .unary(
                    path,
                    parts.metadata,
                    parts.message,
                    parts.timeout,
                    max_response_bytes,
                )
                .await
        }))
    })
    .await
}

/// Sends one request message on `channel` and returns the response headers and message stream;
/// the server-streaming form keeps headers and trailers apart, where tonic's unary form merges them.
async fn open(
    channel: Channel,
    path: PathAndQuery,
    request: tonic::Request<Outgoing>,
    max_response_bytes: usize,
) -> Result<(MetadataMap, tonic::Streaming<Bytes>), GatewayError> {
    let mut grpc = Grpc::new(channel).max_decoding_message_size(max_response_bytes);
    grpc.ready().await.map_err(|err| {
        GatewayError::new(
            ErrorKind::Unavailable,
            format!("backend unavailable: {err}"),
        )
    })?;
    let response = grpc
        .server_streaming(request, path, DynamicCodec)
        .await
        .map_err(GatewayError::from_status)?;
    let (headers, stream, _) = response.into_parts();
    Ok((headers, stream))
}

/// A server-streaming answer: response headers now, messages as they arrive.
pub struct ServerStream {
    /// Response header metadata.
    pub headers: MetadataMap,
    /// Each message's bytes; a failure is the last item.
    pub messages: futures_util::stream::BoxStream<'static, Result<Bytes, GatewayError>>,
}

impl ServerStream {
    /// The same stream, ended with DEADLINE_EXCEEDED if it is still running at `deadline`
    /// (dropping the backend's stream cancels the call there).
    pub fn until(self, deadline: Option<tokio::time::Instant>) -> ServerStream {
        let Some(deadline) = deadline else {
            return self;
        };
        let bounded = futures_util::stream::unfold(Some(self.messages), move |state| async move {
            let mut messages = state?;
            match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut messages))
                .await
            {
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(messages))),
                Ok(Some(Err(err))) => Some((Err(err), None)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(GatewayError::new(
                        ErrorKind::Timeout,
                        "the call's deadline passed before the stream ended",
                    )),
                    None,
                )),
            }
        });
        ServerStream {
            headers: self.headers,
            messages: Box::pin(bounded),
        }
    }
}

impl std::fmt::Debug for ServerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerStream")
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// Opens a server-streaming call; the caller's timeout covers the wait for response headers.
/// Each attempt is timed on `timer` up to the response headers.
pub async fn server_stream(
    backend: &BackendChannel,
    path: PathAndQuery,
    parts: CallParts,
    max_response_bytes: usize,
    timer: &UpstreamTimer,
) -> Result<ServerStream, GatewayError> {
    on_some_address(backend, parts, |address, parts| {
        let path = path.clone();
        timed(
            timer,
            server_stream_on(
                address.channel().clone(),
                path,
                parts.request(),
                max_response_bytes,
            ),
        )
    })
    .await
}

async fn server_stream_on(
    channel: Channel,
    path: PathAndQuery,
    request: tonic::Request<Outgoing>,
    max_response_bytes: usize,
) -> Result<ServerStream, GatewayError> {
    let (headers, stream) = open(channel, path, request, max_response_bytes).await?;
    Ok(ServerStream {
        headers,
        messages: Box::pin(messages(stream)),
    })
}

/// Opens a client-streaming or bidi call: `requests` is pulled as the backend's HTTP/2 window
/// allows, so a slow backend slows the reader of the client's body. A refused connection fails
/// over to the next address, since no message has left yet. The call is timed
/// on `timer` up to the response headers.
pub async fn streaming(
    backend: &BackendChannel,
    path: PathAndQuery,
    metadata: MetadataMap,
    timeout: Option<std::time::Duration>,
    requests: futures_util::stream::BoxStream<'static, Outgoing>,
    max_response_bytes: usize,
    timer: &UpstreamTimer,
) -> Result<ServerStream, GatewayError> {
    timed(
        timer,
        streaming_on(
            backend,
            path,
            metadata,
            timeout,
            requests,
            max_response_bytes,
        ),
    )
    .await
}

async fn streaming_on(
    backend: &BackendChannel,
    path: PathAndQuery,
    metadata: MetadataMap,
    timeout: Option<std::time::Duration>,
    requests: futures_util::stream::BoxStream<'static, Outgoing>,
    max_response_bytes: usize,
) -> Result<ServerStream, GatewayError> {
    // The request stream cannot be replayed, but until an attempt first polls it nothing has
    // been sent: a refused connection hands it back for the next address.
    let slot = Arc::new(Mutex::new(Some(requests)));
    let mut last = None;
    for (i, address) in backend.candidates() {
        let channel = address.channel();
        let attempt = HandOff {
            slot: slot.clone(),
            taken: None,
        };
        let mut request = tonic::Request::from_parts(metadata.clone(), Default::default(), attempt);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let opened =
            open_streaming(channel.clone(), path.clone(), request, max_response_bytes).await;
        match opened {
            Err(err) if err.is_connect_failure() && slot_full(&slot) => {
                backend.mark_down(i);
                last = Some(err);
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| GatewayError::new(ErrorKind::Unavailable, "backend has no address")))
}

async fn open_streaming(
    channel: Channel,
    path: PathAndQuery,
    request: tonic::Request<HandOff>,
    max_response_bytes: usize,
) -> Result<ServerStream, GatewayError> {
    let mut grpc = Grpc::new(channel).max_decoding_message_size(max_response_bytes);
    grpc.ready().await.map_err(|err| {
        GatewayError::new(
            ErrorKind::Unavailable,
            format!("backend unavailable: {err}"),
        )
    })?;
    let response = grpc
        .streaming(request, path, DynamicCodec)
        .await
        .map_err(GatewayError::from_status)?;
    let (headers, stream, _) = response.into_parts();
    Ok(ServerStream {
        headers,
        messages: Box::pin(messages(stream)),
    })
}

type Requests = futures_util::stream::BoxStream<'static, Outgoing>;

fn slot_full(slot: &Mutex<Option<Requests>>) -> bool {
    slot.lock().map(|s| s.is_some()).unwrap_or(false)
}

/// A request stream one attempt may take: it moves out of the shared slot on the first poll, so
/// an attempt that never polled leaves it for the next.
struct HandOff {
    slot: Arc<Mutex<Option<Requests>>>,
    taken: Option<Requests>,
}

impl futures_util::Stream for HandOff {
    type Item = Outgoing;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Outgoing>> {
        if self.taken.is_none() {
            let taken = self.slot.lock().ok().and_then(|mut s| s.take());
            match taken {
                Some(stream) => self.taken = Some(stream),
                // Another attempt has it: this one has nothing to send.
                None => return std::task::Poll::Ready(None),
            }
        }
        match self.taken.as_mut() {
            Some(stream) => stream.as_mut().poll_next(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// The messages of a response stream; dropping it resets the HTTP/2 stream (the backend sees a
/// cancellation).
fn messages(
    stream: tonic::Streaming<Bytes>,
) -> impl futures_util::Stream<Item = Result<Bytes, GatewayError>> {
    futures_util::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        match stream.message().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(stream))),
            Ok(None) => None,
            Err(status) => Some((Err(GatewayError::from_status(status)), None)),
        }
    })
}
