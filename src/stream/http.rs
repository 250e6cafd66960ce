//! Streaming over plain HTTP: the request body as a stream of messages going to the backend as
//! they arrive, and the backend's messages framed into the response body as they arrive.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http::{header, HeaderMap, Response};
use tokio::sync::mpsc;

use super::framing::Framing;
use super::split::{JsonSplitter, SplitError};
use super::ActiveStream;
use crate::error::{ErrorKind, GatewayError};
use crate::snapshot::Route;
use crate::upstream::{self, Outgoing};

/// The request side's way to fail the whole call: a bad message in the body ends the request
/// stream by cancelling the call, never by half-closing it (which the backend would take as a
/// complete request).
#[derive(Debug)]
pub struct RequestAbort(mpsc::Receiver<GatewayError>);

impl RequestAbort {
    /// Waits for a request-side failure; pends forever once the request side is done cleanly.
    pub async fn failed(&mut self) -> GatewayError {
        match self.0.recv().await {
            Some(err) => err,
            None => std::future::pending().await,
        }
    }
}

/// What [`request_messages`] needs to bind each message as the route binds a unary body.
#[derive(Debug)]
pub struct Binding {
    /// The route.
    pub route: Arc<Route>,
    /// Its path variables' values.
    pub vars: Vec<String>,
    /// The query string.
    pub query: Option<String>,
    /// The request Content-Type.
    pub content_type: Option<String>,
    /// The largest one message may be.
    pub max_message_bytes: usize,
}

/// Splits `body` into JSON messages and binds each into the request type (path variables and
/// query apply to every one). Nothing is read ahead: the backend pulls, so its flow control
/// reaches the client. A bad message cancels the call through the returned [`RequestAbort`].
pub fn request_messages(
    body: Body,
    binding: Binding,
    stats: Arc<super::StreamStats>,
) -> (BoxStream<'static, Outgoing>, RequestAbort) {
    let (abort, failed) = mpsc::channel(1);
    struct State {
        body: axum::body::BodyDataStream,
        splitter: JsonSplitter,
        binding: Binding,
        abort: mpsc::Sender<GatewayError>,
        stats: Arc<super::StreamStats>,
        abandoned: bool,
    }
    let state = State {
        body: body.into_data_stream(),
        splitter: JsonSplitter::new(binding.max_message_bytes),
        binding,
        abort,
        stats,
        abandoned: false,
    };
    let messages = futures_util::stream::unfold(state, |mut s| async move {
        let failure = loop {
            match s.splitter.next_message() {
                Ok(Some(json)) => {
                    let b = &s.binding;
                    match b.route.request.build(
                        &b.vars,
                        b.query.as_deref(),
                        b.content_type.as_deref(),
                        &json,
                    ) {
                        Ok(msg) => {
                            s.stats.to_backend.fetch_add(1, Ordering::Relaxed);
                            return Some((Outgoing::from(msg), s));
                        }
                        Err(err) => break err,
                    }
                }
                Ok(None) => {}
                Err(err) => break split_error(err),
            }
            match s.body.next().await {
                Some(Ok(chunk)) => s.splitter.push(&chunk),
                Some(Err(err)) => {
                    break GatewayError::invalid(format!("could not read the request body: {err}"))
                }
                None => match s.splitter.finish() {
                    // The client half-closed: so does the call.
                    Ok(()) => return None,
                    Err(err) => break split_error(err),
                },
            }
        };
        if s.abandoned {
            // Never polled again once the encoder has failed on `Abandon`.
            std::future::pending::<()>().await;
        }
        let _ = s.abort.send(failure).await;
        // The request stays open (no half-close) until the response side has told the client
        // and gone; then `Abandon` resets the backend's stream, which cancels the call there.
        s.abort.closed().await;
        s.abandoned = true;
        Some((Outgoing::Abandon, s))
    });
    (messages.boxed(), RequestAbort(failed))
}

fn split_error(err: SplitError) -> GatewayError {
    match err {
        SplitError::TooLarge { .. } => {
            GatewayError::new(ErrorKind::PayloadTooLarge, err.to_string())
        }
        _ => GatewayError::invalid(err.to_string()),
    }
}

/// How a streamed response renders messages and failures.
#[derive(Clone)]
pub struct Renderer {
    /// Message bytes from the backend → JSON.
    pub message: Arc<dyn Fn(Bytes) -> Result<Bytes, GatewayError> + Send + Sync>,
    /// A failure → google.rpc.Status JSON.
    pub status: Arc<dyn Fn(&GatewayError) -> Bytes + Send + Sync>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").finish_non_exhaustive()
    }
}

/// Marks a response whose body is a live stream of messages, so layers that buffer (compression)
/// leave it alone and each message still reaches the client when it is written.
#[derive(Debug, Clone, Copy)]
pub struct Streamed;

/// A stream of backend messages as an HTTP response in `framing`: response metadata as headers,
/// each message flushed as it arrives, the final status in the body. The body pulls one message
/// at a time, so a client that stops reading stops the backend through flow control; dropping
/// the body (the client went away) cancels the backend call.
pub fn streamed_response(
    stream: upstream::ServerStream,
    framing: Framing,
    renderer: Renderer,
    abort: Option<RequestAbort>,
    heartbeat: Duration,
    guard: ActiveStream,
) -> Response<Body> {
    let mut headers = HeaderMap::new();
    upstream::response_headers(&stream.headers, "grpc-metadata-", &mut headers);
    let body = frames(stream.messages, framing, renderer, abort, heartbeat, guard);
    let mut response = Response::new(Body::from_stream(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, framing.content_type());
    if framing == Framing::Sse {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
    }
    response.headers_mut().extend(headers);
    response.extensions_mut().insert(Streamed);
    response
}

/// Serves a server stream of `google.api.HttpBody` as grpc-gateway does: each message's data
/// written raw, under the first message's content type. The headers wait for that first
/// message. A failure after it cannot be told in a raw body, so the body is cut short (no final
/// chunk on HTTP/1.1, a reset on HTTP/2): a download never ends looking complete.
pub async fn raw_stream_response(
    stream: upstream::ServerStream,
    plan: crate::transcode::ResponsePlan,
    guard: ActiveStream,
) -> Result<Response<Body>, GatewayError> {
    let upstream::ServerStream {
        headers: metadata,
        mut messages,
    } = stream;
    let (content_type, first) = match messages.next().await {
        None => ("application/octet-stream".into(), Bytes::new()),
        Some(Err(err)) => return Err(err.with_metadata(metadata)),
        Some(Ok(bytes)) => {
            let rendered = plan
                .render(bytes)
                .map_err(|err| err.with_metadata(metadata.clone()))?;
            (rendered.content_type, rendered.body)
        }
    };
    let rest = messages.map(move |item| {
        let _open = &guard;
        item.and_then(|bytes| plan.render(bytes).map(|r| r.body))
            .map_err(|err| std::io::Error::other(err.to_string()))
    });
    // Fused: a body reader may poll again after the end.
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
        .chain(rest)
        .fuse();
    let mut response = Response::new(Body::from_stream(body));
    // Written as each message arrives, so not held back by compression.
    response.extensions_mut().insert(Streamed);
    if let Ok(ct) = http::HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    upstream::response_headers(&metadata, "grpc-metadata-", response.headers_mut());
    Ok(response)
}

enum Event {
    Message(Bytes),
    Failed(GatewayError),
    End,
    Idle,
}

fn frames(
    messages: BoxStream<'static, Result<Bytes, GatewayError>>,
    framing: Framing,
    renderer: Renderer,
    abort: Option<RequestAbort>,
    heartbeat: Duration,
    guard: ActiveStream,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    struct State {
        messages: BoxStream<'static, Result<Bytes, GatewayError>>,
        abort: Option<RequestAbort>,
        opening: Option<Bytes>,
        first: bool,
        done: bool,
        guard: ActiveStream,
    }
    let state = State {
        messages,
        abort,
        opening: framing.open(),
        first: true,
        done: false,
        guard,
    };
    futures_util::stream::unfold(state, move |mut s| {
        let renderer = renderer.clone();
        async move {
            if s.done {
                return None;
            }
            if let Some(open) = s.opening.take() {
                return Some((Ok(open), s));
            }
            loop {
                let idle = async {
                    match framing.heartbeat() {
                        Some(_) => tokio::time::sleep(heartbeat).await,
                        None => std::future::pending().await,
                    }
                };
                let abort = async {
                    match s.abort.as_mut() {
                        Some(abort) => abort.failed().await,
                        None => std::future::pending().await,
                    }
                };
                let away = s.guard.shutting_down();
                let event = tokio::select! {
                    biased;
                    () = away => Event::Failed(GatewayError::new(
                        ErrorKind::Unavailable,
                        "the gateway is shutting down",
                    )),
                    err = abort => Event::Failed(err),
                    item = s.messages.next() => match item {
                        Some(Ok(bytes)) => Event::Message(bytes),
                        Some(Err(err)) => Event::Failed(err),
                        None => Event::End,
                    },
                    () = idle => Event::Idle,
                };
                let frame = match event {
                    Event::Idle => match framing.heartbeat() {
                        Some(beat) => beat,
                        None => continue,
                    },
                    Event::Message(bytes) => {
                        s.guard.stats().from_backend.fetch_add(1, Ordering::Relaxed);
                        match (renderer.message)(bytes) {
                            Ok(json) => {
                                let frame = framing.message(&json, s.first);
                                s.first = false;
                                s.guard.stats().to_client.fetch_add(1, Ordering::Relaxed);
                                frame
                            }
                            Err(err) => fail(
                                &mut s.done,
                                &mut s.messages,
                                framing,
                                &renderer,
                                &err,
                                s.first,
                            ),
                        }
                    }
                    Event::Failed(err) => fail(
                        &mut s.done,
                        &mut s.messages,
                        framing,
                        &renderer,
                        &err,
                        s.first,
                    ),
                    Event::End => {
                        s.done = true;
                        s.messages = futures_util::stream::empty().boxed();
                        return framing.close().map(|close| (Ok(close), s));
                    }
                };
                return Some((Ok(frame), s));
            }
        }
    })
}

/// Ends the stream with a status frame and drops the backend call (cancelling it if it runs).
fn fail(
    done: &mut bool,
    messages: &mut BoxStream<'static, Result<Bytes, GatewayError>>,
    framing: Framing,
    renderer: &Renderer,
    err: &GatewayError,
    first: bool,
) -> Bytes {
    *done = true;
    *messages = futures_util::stream::empty().boxed();
    framing.error(&(renderer.status)(err), first)
}

/// A client-streaming call answered as grpc-gateway answers it: the one response message as a
/// plain JSON body (the backend's status decides the HTTP status), or a failure.
pub async fn client_stream_response(
    stream: upstream::ServerStream,
    abort: RequestAbort,
) -> Result<(tonic::metadata::MetadataMap, Bytes), GatewayError> {
    let upstream::ServerStream {
        headers,
        mut messages,
    } = stream;
    let mut abort = abort;
    let first = tokio::select! {
        biased;
        err = abort.failed() => return Err(err),
        item = messages.next() => item,
    };
    let message = match first {
        Some(Ok(bytes)) => bytes,
        Some(Err(err)) => return Err(err.with_metadata(headers)),
        None => {
            return Err(GatewayError::new(
                ErrorKind::BadGateway,
                "bad response from backend: no response message",
            ))
        }
    };
    match messages.next().await {
        None => Ok((headers, message)),
        Some(Err(err)) => Err(err.with_metadata(headers)),
        Some(Ok(_)) => Err(GatewayError::new(
            ErrorKind::BadGateway,
            "bad response from backend: more than one message for a client-streaming call",
        )),
    }
}

/// How often an idle Server-Sent Events stream sends a comment.
pub const SSE_HEARTBEAT: Duration = Duration::from_secs(15);

/// The renderer of `route`'s messages and failures under `snapshot`.
pub fn renderer(snapshot: &crate::snapshot::Snapshot, route: &Route) -> Renderer {
    let plan = route.response.clone();
    let pool = snapshot.registry.pool().clone();
    Renderer {
        message: Arc::new(move |bytes| plan.render(bytes).map(|r| r.body)),
        status: Arc::new(move |err| {
            Bytes::from(crate::transcode::status::error_json(err, Some(&pool)))
        }),
    }
}

/// Serves a client-streaming or bidi method over HTTP: the body is a stream of JSON messages,
/// each sent as it arrives; bidi answers in the client's framing, client streaming as unary.
pub async fn serve(
    snapshot: &crate::snapshot::Snapshot,
    route: Arc<Route>,
    call: StreamCall,
    streams: &super::Streams,
    timer: &crate::telemetry::UpstreamTimer,
) -> Result<Response<Body>, GatewayError> {
    let backend = route.require_backend()?.clone();
    let guard = streams.open();
    let framing = Framing::for_route(&call.headers, &snapshot.config, &route);
    let content_type = call
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let binding = Binding {
        route: route.clone(),
        vars: call.vars,
        query: call.query,
        content_type,
        max_message_bytes: snapshot.config.max_body_bytes,
    };
    let (requests, mut abort) = request_messages(call.body, binding, streams.stats().clone());
    let until = call.deadline.map(|d| tokio::time::Instant::now() + d);
    let wait = call.deadline.map_or(call.timeout, |d| d.min(call.timeout));
    let open = upstream::streaming(
        &backend,
        route.grpc_path.clone(),
        call.metadata,
        call.deadline,
        requests,
        snapshot.config.max_response_bytes,
        timer,
    );
    let stream = tokio::select! {
        biased;
        err = abort.failed() => return Err(err),
        opened = tokio::time::timeout(wait, open) => opened.map_err(|_| {
            GatewayError::new(
                ErrorKind::Timeout,
                format!("the backend did not answer within {wait:?}"),
            )
        })??,
    }
    .until(until);
    if route.kind == crate::snapshot::CallKind::ClientStreaming {
        let (headers, message) = client_stream_response(stream, abort).await?;
        let rendered = route
            .response
            .render(message)
            .map_err(|err| err.with_metadata(headers.clone()))?;
        let content_type = rendered.content_type_header();
        let mut response = Response::new(Body::from(rendered.body));
        if let Some(ct) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        upstream::response_headers(&headers, "grpc-metadata-", response.headers_mut());
        return Ok(response);
    }
    Ok(streamed_response(
        stream,
        framing,
        renderer(snapshot, &route),
        Some(abort),
        SSE_HEARTBEAT,
        guard,
    ))
}

/// One streaming request, taken apart.
#[derive(Debug)]
pub struct StreamCall {
    /// The request headers (Accept, Content-Type).
    pub headers: HeaderMap,
    /// The body, read as it arrives.
    pub body: Body,
    /// Path variable values.
    pub vars: Vec<String>,
    /// The query string.
    pub query: Option<String>,
    /// Metadata for the backend.
    pub metadata: tonic::metadata::MetadataMap,
    /// How long the backend may take to answer with its headers.
    pub timeout: Duration,
    /// The client's deadline for the whole stream, if it set one.
    pub deadline: Option<Duration>,
}
