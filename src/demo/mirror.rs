//! A real tonic server for any loaded service: it answers each request with the request itself
//! (or its fields copied by name into the response type), steered by request metadata. Tests and
//! benchmarks use it as a backend for protos that have no hand-written implementation.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::metadata::{AsciiMetadataKey, KeyAndValueRef, MetadataMap};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::proto::google::rpc;
use crate::upstream::{DynamicCodec, Outgoing};

/// Request metadata that steers the mirror.
pub mod control {
    /// Answer with this gRPC code (a number) instead of a message.
    pub const CODE: &str = "x-mirror-code";
    /// The message of that status.
    pub const MESSAGE: &str = "x-mirror-message";
    /// Wait this many milliseconds before answering.
    pub const SLEEP_MS: &str = "x-mirror-sleep-ms";
    /// Answer with bytes that are not a valid message.
    pub const GARBAGE: &str = "x-mirror-garbage";
    /// Answer a server stream with this many copies (default 3).
    pub const REPEAT: &str = "x-mirror-repeat";
    /// Fail with `x-mirror-code` (default 13, INTERNAL) after this many response messages.
    pub const FAIL_AFTER: &str = "x-mirror-fail-after";
}

/// Counters a test can read.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Calls received.
    pub calls: AtomicUsize,
    /// Calls whose answer is still being streamed.
    pub active: AtomicUsize,
    /// Calls the client cancelled (the answer was dropped before it ended).
    pub cancelled: AtomicUsize,
    /// Response messages handed to the transport.
    pub sent: AtomicUsize,
}

/// The mirror service over a pool.
#[derive(Debug, Clone)]
pub struct Mirror {
    pool: DescriptorPool,
    stats: Arc<MirrorStats>,
}

impl Mirror {
    /// A mirror answering for every service in `pool`.
    pub fn new(pool: DescriptorPool) -> Self {
        Mirror {
            pool,
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<MirrorStats> {
        self.stats.clone()
    }

    /// The mirror as tonic routes that answer every path, so a test can add real services (gRPC
    /// reflection, say) in front of it.
    pub fn routes(self) -> tonic::service::Routes {
        let service = tower::service_fn(move |req: http::Request<Body>| {
            let mirror = self.clone();
            async move { Ok::<_, Infallible>(mirror.call(req).await) }
        });
        tonic::service::Routes::from(axum::Router::new().fallback_service(service))
    }

    /// Serves on a bound listener until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_routes(self.routes())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
    }

    async fn call(&self, req: http::Request<Body>) -> http::Response<tonic::body::Body> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let method = req
            .uri()
            .path()
            .trim_start_matches('/')
            .split_once('/')
            .and_then(|(service, method)| {
                self.pool
                    .get_service_by_name(service)?
                    .methods()
                    .find(|m| m.name() == method)
            });
        let Some(method) = method else {
            return Status::unimplemented(format!("no method at {}", req.uri().path())).into_http();
        };
        let stats = self.stats.clone();
        let handler = tower::service_fn(move |request: Request<Streaming<Bytes>>| {
            let method = method.clone();
            let stats = stats.clone();
            async move {
                let response = answer(method, request).await?;
                let (md, answers, ext) = response.into_parts();
                let watched: Answer = Watched::new(answers, stats).boxed();
                Ok::<_, Status>(Response::from_parts(md, watched, ext))
            }
        });
        tonic::server::Grpc::new(MirrorCodec)
            .streaming(handler, req)
            .await
    }
}

/// The server side of [`DynamicCodec`]: bytes in, encoded messages out.
#[derive(Debug, Clone, Copy, Default)]
struct MirrorCodec;

impl tonic::codec::Codec for MirrorCodec {
    type Encode = Outgoing;
    type Decode = Bytes;
    type Encoder = <DynamicCodec as tonic::codec::Codec>::Encoder;
    type Decoder = <DynamicCodec as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicCodec.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicCodec.decoder()
    }
}

type Answer = stream::BoxStream<'static, Result<Outgoing, Status>>;

async fn answer(
    method: MethodDescriptor,
    request: Request<Streaming<Bytes>>,
) -> Result<Response<Answer>, Status> {
    let md = request.metadata().clone();
    let text = |key: &str| md.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(ms) = text(control::SLEEP_MS).and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let fail_after = text(control::FAIL_AFTER).and_then(|v| v.parse::<usize>().ok());
    let code = text(control::CODE).and_then(|v| v.parse::<i32>().ok());
    if let (Some(code), None) = (code, fail_after) {
        return Err(failure(code, text(control::MESSAGE).unwrap_or_default()));
    }
    let mut headers = echo_headers(&md);
    if text(control::GARBAGE).is_some() {
        let garbage: Answer = stream::iter([Ok(Outgoing::Encoded(Bytes::from_static(
            b"\xff\xff\xff\xff",
        )))])
        .boxed();
        return Ok(with_metadata(garbage, std::mem::take(&mut headers)));
    }
    let output = method.output();
    let repeat = if method.is_server_streaming() {
        text(control::REPEAT)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(3)
    } else {
        1
    };
    let incoming = request.into_inner();
    if method.is_client_streaming() && !method.is_server_streaming() {
        // One answer for the whole request stream: its last message.
        let last = incoming
            .fold(None, |last, item| async move {
                match (last, item) {
                    (Some(Err(err)), _) => Some(Err(err)),
                    (_, item) => Some(item),
                }
            })
            .await;
        let reply = match last {
            Some(item) => item.and_then(|bytes| mirror_message(&method, &output, bytes)),
            None => Ok(Bytes::new()),
        };
        let answers: Answer = stream::iter([reply.map(Outgoing::Encoded)]).boxed();
        return Ok(with_metadata(answers, headers));
    }
    let answers = incoming
        .map(move |item| {
            let output = output.clone();
            let reply = item.and_then(|bytes| mirror_message(&method, &output, bytes));
            stream::iter(std::iter::repeat_n(reply, repeat))
        })
        .flatten()
        .map(|r| r.map(Outgoing::Encoded))
        .boxed();
    let answers = match fail_after {
        Some(n) => {
            let status = failure(
                code.unwrap_or(13),
                text(control::MESSAGE).unwrap_or_default(),
            );
            answers.take(n).chain(stream::iter([Err(status)])).boxed()
        }
        None => answers,
    };
    Ok(with_metadata(answers, headers))
}

/// An answer stream that counts what it sends and notices being dropped before its end.
struct Watched {
    inner: Answer,
    stats: Arc<MirrorStats>,
    ended: bool,
}

impl Watched {
    fn new(inner: Answer, stats: Arc<MirrorStats>) -> Self {
        stats.active.fetch_add(1, Ordering::SeqCst);
        Watched {
            inner,
            stats,
            ended: false,
        }
    }
}

impl futures_util::Stream for Watched {
    type Item = Result<Outgoing, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            std::task::Poll::Ready(Some(_)) => {
                self.stats.sent.fetch_add(1, Ordering::SeqCst);
            }
            std::task::Poll::Ready(None) => self.ended = true,
            std::task::Poll::Pending => {}
        }
        polled
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.ended {
            self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
        }
        self.stats.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn with_metadata(stream: Answer, headers: MetadataMap) -> Response<Answer> {
    let mut response = Response::new(stream);
    *response.metadata_mut() = headers;
    response
}

/// Every ASCII request entry comes back as `echo-<key>`, so tests can see what was forwarded.
fn echo_headers(md: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for entry in md.iter() {
        if let KeyAndValueRef::Ascii(key, value) = entry {
            if let Ok(k) = AsciiMetadataKey::from_bytes(format!("echo-{}", key.as_str()).as_bytes())
            {
                out.append(k, value.clone());
            }
        }
    }
    out
}

fn mirror_message(
    method: &MethodDescriptor,
    output: &MessageDescriptor,
    bytes: Bytes,
) -> Result<Bytes, Status> {
    if method.input() == *output {
        return Ok(bytes);
    }
    if output.fields().len() == 0 {
        // Empty (and any message without fields) takes nothing from the request.
        return Ok(Bytes::new());
    }
    // Different types: copy fields across by name through JSON.
    let input = DynamicMessage::decode(method.input(), bytes)
        .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))?;
    let json = serde_json::to_value(&input).map_err(|e| Status::internal(e.to_string()))?;
    let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
    let out = DynamicMessage::deserialize_with_options(output.clone(), json, &options)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(out.encode_to_vec().into())
}

fn failure(code: i32, message: String) -> Status {
    let info = rpc::ErrorInfo {
        reason: "MIRROR_FAILURE".to_owned(),
        domain: "mirror.test".to_owned(),
        metadata: Default::default(),
    };
    let status = rpc::Status {
        code,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".to_owned(),
            value: info.encode_to_vec(),
        }],
    };
    Status::with_details(Code::from_i32(code), message, status.encode_to_vec().into())
}
