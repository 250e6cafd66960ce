//! The WebSocket bridge: one socket carries one gRPC call of any kind. By default frames follow
//! grpc-websocket-proxy exactly; the `protogate.v1` subprotocol adds a final status frame on
//! every call, close codes that carry the outcome, and binary protobuf frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use super::{ActiveStream, OpenSocket, StreamStats, Streams};
use crate::config::WebSocketConfig as Limits;
use crate::error::{ErrorKind, GatewayError, WS_CLOSE_GOING_AWAY, WS_CLOSE_NORMAL};
use crate::middleware::{MessageGate, Pass};
use crate::routing::RouteMatch;
use crate::snapshot::{CallKind, Route, Snapshot};
use crate::telemetry::{Metrics, UpstreamTimer};
use crate::transcode::status::error_json;
use crate::upstream::{self, Outgoing};

/// The subprotocol that turns on protogate's fixes.
pub const SUBPROTOCOL: &str = "protogate.v1";
/// The text frame a client sends to end its request stream and keep reading.
pub const HALF_CLOSE: &str = "EOF";
/// Initial read buffer of a socket; it grows to the largest frame read.
const READ_BUFFER: usize = 4096;

/// Frames are gathered up to this many bytes and written together: answers the backend has
/// already sent go out in one write, not a system call each. The buffer only grows on use, so
/// an idle socket holds none.
const WRITE_BUFFER: usize = 16 << 10;
/// The custom HttpRule kind that declares a WebSocket endpoint.
pub const RULE_KIND: &str = "websocket";

/// Which framing the socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// grpc-websocket-proxy's framing, unchanged.
    Compatible,
    /// `protogate.v1`: final status frame, outcome close codes, binary frames.
    Protogate,
}

/// Whether a request asks to become a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// What the handshake decided.
#[derive(Debug)]
struct Handshake {
    mode: Mode,
    selected: Option<HeaderValue>,
    token: Option<String>,
}

/// Reads `Sec-WebSocket-Protocol` and the `token` cookie: the mode, the subprotocol to answer
/// with, and a bearer token.
fn handshake(headers: &HeaderMap) -> Handshake {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let mut token = offered
        .iter()
        .position(|p| p.eq_ignore_ascii_case("bearer"))
        .and_then(|i| offered.get(i + 1))
        .filter(|t| *t != SUBPROTOCOL)
        .cloned();
    if token.is_none() {
        token = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_owned());
    }
    let (mode, selected) = if offered.iter().any(|p| p == SUBPROTOCOL) {
        (Mode::Protogate, Some(HeaderValue::from_static(SUBPROTOCOL)))
    } else if offered.iter().any(|p| p.eq_ignore_ascii_case("bearer")) {
        (Mode::Compatible, Some(HeaderValue::from_static("Bearer")))
    } else {
        (Mode::Compatible, None)
    };
    Handshake {
        mode,
        selected,
        token,
    }
}

/// The route a WebSocket request means: `?method=` overrides the HTTP method; otherwise a
/// `custom: {kind: "websocket"}` rule, then GET, then POST bindings of the path.
fn route_of(
    snapshot: &Snapshot,
    path: &str,
    method_override: Option<&str>,
) -> Result<(Arc<Route>, Vec<String>), GatewayError> {
    let candidates: Vec<Method> = match method_override {
        Some(m) => vec![Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| GatewayError::invalid(format!("bad method override {m:?}")))?],
        None => vec![
            Method::from_bytes(RULE_KIND.as_bytes()).unwrap_or(Method::GET),
            Method::GET,
            Method::POST,
        ],
    };
    for method in &candidates {
        if let RouteMatch::Found(found) = snapshot.routes.find(method, path) {
            let vars = found.bindings.into_iter().map(|b| b.value).collect();
            return Ok((found.value.clone(), vars));
        }
    }
    // `/{package.Service}/{Method}` reaches any method, whatever its HTTP bindings.
    if let Some(route) = snapshot
        .routes
        .iter()
        .map(|(_, _, route)| route)
        .find(|route| route.grpc_path.path() == path)
    {
        return Ok((route.clone(), Vec::new()));
    }
    Err(GatewayError::new(
        ErrorKind::NoRoute,
        "no WebSocket route at this path",
    ))
}

/// An upgrade refused: the error and the route it matched, if any (for the access log).
pub type Refusal = (GatewayError, Option<Arc<Route>>);

/// Answers an upgrade request: refuses it with an ordinary error response, or switches
/// protocols and runs the call on the socket in its own task.
pub fn upgrade(
    snapshot: Arc<Snapshot>,
    streams: &Streams,
    metrics: &Metrics,
    mut request: Request<Body>,
    remote: Option<SocketAddr>,
    pass: &mut Pass,
) -> Result<(Response<Body>, Arc<Route>), Refusal> {
    let limits = snapshot.config.websocket.clone();
    let headers = request.headers();
    if let Some(allowed) = &limits.allowed_origins {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        if !origin.is_some_and(|o| allowed.iter().any(|a| a == o)) {
            return Err((
                GatewayError::new(
                    ErrorKind::Status(tonic::Code::PermissionDenied),
                    "this Origin may not open WebSockets here",
                ),
                None,
            ));
        }
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| {
            headers
                .get(header::SEC_WEBSOCKET_VERSION)
                .is_some_and(|v| v == "13")
        })
        .cloned()
        .ok_or_else(|| {
            (
                GatewayError::invalid("a WebSocket upgrade needs Sec-WebSocket-Key and version 13"),
                None,
            )
        })?;
    let auth = snapshot.edge.auth().settings();
    let query: Vec<(String, String)> = request
        .uri()
        .query()
        .map(|q| {
            url_pairs(q)
                .filter(|(k, _)| {
                    k != "method"
                        && metadata_param(k).is_none()
                        && !auth.credential_params().any(|c| c == k)
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let method_override = request
        .uri()
        .query()
        .and_then(|q| url_pairs(q).find(|(k, _)| k == "method").map(|(_, v)| v));
    let (route, vars) = route_of(&snapshot, request.uri().path(), method_override.as_deref())
        .map_err(|e| (e, None))?;
    let fail = |e: GatewayError| (e, Some(route.clone()));
    // Authenticated at the upgrade, by header, query parameter or handshake token.
    let shake = handshake(request.headers());
    // A socket lives as long as it is used; a deadline the client sets bounds its call.
    let deadline = crate::gateway::client_deadline(request.headers()).map_err(fail)?;
    let query_text_raw = request.uri().query().map(str::to_owned);
    snapshot
        .edge
        .admit(
            pass,
            &route,
            request.headers_mut(),
            query_text_raw.as_deref(),
            shake.token.as_deref(),
        )
        .map_err(fail)?;
    let headers = request.headers();
    let backend = route.require_backend().map_err(&fail)?.clone();
    let Some(socket) = streams.try_open_socket(limits.max_streams) else {
        return Err(fail(GatewayError::new(
            ErrorKind::Status(tonic::Code::ResourceExhausted),
            format!(
                "too many open WebSocket streams (limit {}); try again later",
                limits.max_streams
            ),
        )));
    };
    let mut metadata = upstream::request_metadata(
        headers,
        request.uri().authority().map(|a| a.as_str()),
        remote,
        &snapshot.config.forward_headers,
    );
    // The handshake token goes on as a bearer credential, unless it was one of our API keys.
    let by_key = pass
        .principal
        .as_ref()
        .is_some_and(|p| p.api_key().is_some());
    if let (Some(token), false) = (&shake.token, by_key) {
        if let Ok(value) = format!("Bearer {token}").parse() {
            metadata.insert("authorization", value);
        }
    }
    // Browsers cannot set headers on a socket: `?grpc-metadata-KEY=value` stands for the
    // `Grpc-Metadata-KEY` header (and, like it, cannot forge what the edge forwards).
    if let Some(q) = request.uri().query() {
        for (key, value) in url_pairs(q) {
            let Some(name) = metadata_param(&key) else {
                continue;
            };
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes()),
                tonic::metadata::AsciiMetadataValue::try_from(value.as_str()),
            ) {
                metadata.append(k, v);
            }
        }
    }
    snapshot.edge.forward(pass, &mut metadata);
    let gate = snapshot.edge.message_gate(pass, &route);
    let query_text = (!query.is_empty()).then(|| {
        query
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    });
    let on_upgrade = hyper::upgrade::on(&mut request);
    let call = WsCall {
        snapshot,
        route: route.clone(),
        backend,
        vars,
        query: query_text,
        metadata,
        mode: shake.mode,
        limits: limits.clone(),
        active: streams.open(),
        going_away: streams.going_away(),
        gate,
        deadline,
        timer: metrics.upstream(&route.method_name),
        _socket: socket,
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        // Small buffers: tungstenite's 128 KiB defaults would cost that much per idle socket.
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_message_size(Some(limits.max_message_bytes))
            .max_frame_size(Some(limits.max_message_bytes));
        let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            Some(config),
        )
        .await;
        bridge(socket, call).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(selected) = shake.selected {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, selected);
    }
    Ok((response, route))
}

/// The metadata key a `grpc-metadata-KEY` query parameter stands for; binary (`-bin`) and
/// reserved gRPC keys are not taken from a URL.
fn metadata_param(key: &str) -> Option<String> {
    let lower = key.to_ascii_lowercase();
    let name = lower.strip_prefix("grpc-metadata-")?;
    let reserved = name.is_empty() || name.ends_with("-bin") || name.starts_with("grpc-");
    (!reserved).then(|| name.to_owned())
}

fn url_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (dec(k), dec(v))
    })
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Everything one socket's call needs once the handshake is done.
#[derive(Debug)]
pub struct WsCall {
    snapshot: Arc<Snapshot>,
    route: Arc<Route>,
    backend: Arc<upstream::BackendChannel>,
    vars: Vec<String>,
    query: Option<String>,
    metadata: tonic::metadata::MetadataMap,
    mode: Mode,
    limits: Limits,
    active: ActiveStream,
    going_away: watch::Receiver<bool>,
    /// Charges each request message to the route's rate limits.
    gate: Option<MessageGate>,
    /// The client's deadline for the call, if it set one.
    deadline: Option<Duration>,
    timer: UpstreamTimer,
    _socket: OpenSocket,
}

/// What the backend side reports to the socket loop.
enum FromBackend {
    Message(Bytes),
    End(Result<(), GatewayError>),
}

/// How the call ended, for the last frames.
enum Ending {
    /// The backend finished (OK or a status).
    Finished(Result<(), GatewayError>),
    /// The client broke the protocol.
    Refused(GatewayError),
    /// The client closed or vanished; the backend call is cancelled, nothing more is sent.
    ClientGone,
    /// The gateway is shutting down.
    GoingAway,
}

/// Joins a socket to one gRPC call in both directions with bounded buffers, until the call ends
/// or the socket goes away; either way the backend call is dropped (cancelled if still running).
/// Generic over the socket so tests and other transports can drive it.
pub async fn bridge<S>(socket: S, call: WsCall)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let WsCall {
        snapshot,
        route,
        backend,
        vars,
        query,
        metadata,
        mode,
        limits,
        active,
        mut going_away,
        gate,
        deadline,
        timer,
        _socket,
    } = call;
    let stats: &StreamStats = active.stats();
    let (mut sink, mut source) = socket.split();
    let (requests, request_rx) = mpsc::channel::<Outgoing>(8);
    let mut requests = Some(requests);
    let (events_tx, mut events) = mpsc::channel::<FromBackend>(8);
    let max_response = snapshot.config.max_response_bytes;
    let grpc_path = route.grpc_path.clone();
    let backend_task = tokio::spawn(async move {
        let requests = tokio_stream::wrappers::ReceiverStream::new(request_rx).boxed();
        let until = deadline.map(|d| tokio::time::Instant::now() + d);
        let open = upstream::streaming(
            &backend,
            grpc_path,
            metadata,
            deadline,
            requests,
            max_response,
            &timer,
        );
        let opened = match until {
            Some(until) => tokio::time::timeout_at(until, open)
                .await
                .unwrap_or_else(|_| {
                    Err(GatewayError::new(
                        ErrorKind::Timeout,
                        "the call's deadline passed before the backend answered",
                    ))
                }),
            None => open.await,
        };
        let mut stream = match opened {
            Ok(stream) => stream.until(until),
            Err(err) => {
                let _ = events_tx.send(FromBackend::End(Err(err))).await;
                return;
            }
        };
        while let Some(item) = stream.messages.next().await {
            let event = match item {
                Ok(bytes) => FromBackend::Message(bytes),
                Err(err) => {
                    let _ = events_tx.send(FromBackend::End(Err(err))).await;
                    return;
                }
            };
            if events_tx.send(event).await.is_err() {
                return;
            }
        }
        let _ = events_tx.send(FromBackend::End(Ok(()))).await;
    });
    let one_request = matches!(route.kind, CallKind::Unary | CallKind::ServerStreaming);
    let mut binary_out = false;
    let mut pending: Option<Outgoing> = None;
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.reset();
    let mut last_seen = Instant::now();
    let ending = loop {
        let idle = tokio::time::sleep_until(last_seen + limits.idle_timeout);
        tokio::select! {
            biased;
            () = shutting_down(&mut going_away) => break Ending::GoingAway,
            event = events.recv() => match event {
                Some(FromBackend::Message(bytes)) => {
                    // Every answer already waiting is framed before one flush writes them all.
                    let mut next = Some(bytes);
                    let mut ended = None;
                    while let Some(bytes) = next.take() {
                        stats.from_backend.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let frame = if binary_out {
                            Ok(Message::Binary(bytes))
                        } else {
                            route.response.render(bytes).map(|r| {
                                let mut text = Vec::with_capacity(r.body.len() + 11);
                                text.extend_from_slice(b"{\"result\":");
                                text.extend_from_slice(&r.body);
                                text.push(b'}');
                                text_message(text)
                            })
                        };
                        match frame {
                            Ok(frame) => {
                                if sink.feed(frame).await.is_err() {
                                    ended = Some(Ending::ClientGone);
                                    break;
                                }
                                stats.to_client.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(err) => {
                                ended = Some(Ending::Finished(Err(err)));
                                break;
                            }
                        }
                        match events.try_recv() {
                            Ok(FromBackend::Message(bytes)) => next = Some(bytes),
                            Ok(FromBackend::End(result)) => ended = Some(Ending::Finished(result)),
                            Err(_) => {}
                        }
                    }
                    if sink.flush().await.is_err() {
                        break Ending::ClientGone;
                    }
                    if let Some(ending) = ended {
                        break ending;
                    }
                }
                Some(FromBackend::End(result)) => break Ending::Finished(result),
                None => break Ending::Finished(Err(GatewayError::new(
                    ErrorKind::Internal,
                    "the backend call ended without a status",
                ))),
            },
            permit = reserve(requests.clone()), if pending.is_some() => {
                let Some(permit) = permit else {
                    pending = None;
                    continue;
                };
                if let Some(message) = pending.take() {
                    permit.send(message);
                    stats.to_backend.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if one_request {
                    requests = None;
                }
            },
            frame = source.next(), if pending.is_none() => {
                last_seen = Instant::now();
                let message = match frame {
                    None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                        break Ending::ClientGone
                    }
                    Some(Err(WsError::Capacity(
                        CapacityError::MessageTooLong { .. },
                    ))) => break Ending::Refused(GatewayError::new(
                        ErrorKind::PayloadTooLarge,
                        format!("a frame is larger than {} bytes", limits.max_message_bytes),
                    )),
                    Some(Err(_)) => break Ending::ClientGone,
                    Some(Ok(message)) => message,
                };
                let is_request = match &message {
                    Message::Text(text) => text.as_str() != HALF_CLOSE,
                    Message::Binary(_) => true,
                    _ => false,
                };
                if let (true, Some(gate)) = (is_request, &gate) {
                    if let Err(err) = gate.check() {
                        break Ending::Refused(err);
                    }
                }
                match message {
                    Message::Text(text) if text.as_str() == HALF_CLOSE => requests = None,
                    Message::Text(text) => {
                        if requests.is_none() {
                            break Ending::Refused(GatewayError::invalid(
                                "a request frame came after the request stream was closed",
                            ));
                        }
                        let json = Bytes::copy_from_slice(text.as_bytes());
                        match route.request.build(&vars, query.as_deref(), None, &json) {
                            Ok(msg) => pending = Some(Outgoing::from(msg)),
                            Err(err) => break Ending::Refused(err),
                        }
                    }
                    Message::Binary(bytes) => {
                        if mode != Mode::Protogate {
                            break Ending::Refused(GatewayError::invalid(format!(
                                "binary frames need the {SUBPROTOCOL} subprotocol; this stream \
                                 speaks JSON text frames"
                            )));
                        }
                        if requests.is_none() {
                            break Ending::Refused(GatewayError::invalid(
                                "a request frame came after the request stream was closed",
                            ));
                        }
                        if let Err(err) =
                            prost_reflect::DynamicMessage::decode(route.request.input().clone(), bytes.clone())
                        {
                            break Ending::Refused(GatewayError::invalid(format!(
                                "binary frame is not a {}: {err}",
                                route.request.input().full_name()
                            )));
                        }
                        binary_out = true;
                        pending = Some(Outgoing::Encoded(bytes));
                    }
                    Message::Close(_) => break Ending::ClientGone,
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break Ending::ClientGone;
                }
            },
            () = idle => break Ending::Refused(GatewayError::new(
                ErrorKind::Timeout,
                format!("no frame for {:?}", limits.idle_timeout),
            )),
        }
    };
    // The call is over for the socket: drop the backend side (a reset if it still runs).
    backend_task.abort();
    drop(requests);
    let pool = snapshot.registry.pool();
    let (status, close) = match &ending {
        Ending::ClientGone => (None, None),
        Ending::Finished(Ok(())) => (
            (mode == Mode::Protogate)
                .then(|| b"{\"code\":0,\"message\":\"\",\"details\":[]}".to_vec()),
            Some(WS_CLOSE_NORMAL),
        ),
        Ending::Finished(Err(err)) | Ending::Refused(err) => (
            Some(error_json(err, Some(pool))),
            Some(close_code(mode, err)),
        ),
        Ending::GoingAway => {
            let err = GatewayError::new(ErrorKind::Unavailable, "the gateway is shutting down");
            (
                Some(error_json(&err, Some(pool))),
                Some(WS_CLOSE_GOING_AWAY),
            )
        }
    };
    if let Some(status) = status {
        let key: &[u8] = match mode {
            Mode::Protogate => b"{\"status\":",
            Mode::Compatible => b"{\"error\":",
        };
        let frame = [key, &status, b"}"].concat();
        let _ = sink.send(text_message(frame)).await;
    }
    if let Some(code) = close {
        let reason = match &ending {
            Ending::Finished(Err(err)) | Ending::Refused(err) => short(err.message()),
            Ending::GoingAway => "going away".to_owned(),
            _ => String::new(),
        };
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            })))
            .await;
    }
    // Wait (bounded) for the client's close reply so the TCP connection ends cleanly.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = source.next().await {}
    })
    .await;
    drop(active);
}

/// Resolves when the listener starts shutting down.
async fn shutting_down(going_away: &mut watch::Receiver<bool>) {
    let away = going_away.wait_for(|away| *away).await.is_ok();
    if !away {
        // The listener's state is gone without a shutdown: nothing will come.
        std::future::pending::<()>().await;
    }
}

async fn reserve(requests: Option<mpsc::Sender<Outgoing>>) -> Option<mpsc::OwnedPermit<Outgoing>> {
    requests?.reserve_owned().await.ok()
}

/// The close code for a failed call: the outcome in protogate mode; grpc-websocket-proxy's
/// normal closure otherwise, except for the size limit (1009), which both modes use.
fn close_code(mode: Mode, err: &GatewayError) -> u16 {
    match mode {
        Mode::Protogate => err.ws_close_code(),
        Mode::Compatible if err.kind() == &ErrorKind::PayloadTooLarge => err.ws_close_code(),
        Mode::Compatible => WS_CLOSE_NORMAL,
    }
}

/// A close reason fits in 123 bytes.
fn short(message: &str) -> String {
    let mut end = message.len().min(120);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

fn text_message(bytes: Vec<u8>) -> Message {
    // Rendered JSON is UTF-8; a lossy conversion only guards the invariant.
    match String::from_utf8(bytes) {
        Ok(text) => Message::text(text),
        Err(err) => Message::text(String::from_utf8_lossy(err.as_bytes()).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn credentials_and_subprotocols() {
        let shake = handshake(&headers(&[("sec-websocket-protocol", "Bearer, abc.def")]));
        assert_eq!(shake.mode, Mode::Compatible);
        assert_eq!(shake.token.as_deref(), Some("abc.def"));
        assert_eq!(shake.selected.unwrap(), "Bearer");

        let shake = handshake(&headers(&[(
            "sec-websocket-protocol",
            "protogate.v1, Bearer, tok",
        )]));
        assert_eq!(shake.mode, Mode::Protogate);
        assert_eq!(shake.token.as_deref(), Some("tok"));
        assert_eq!(shake.selected.unwrap(), SUBPROTOCOL);

        let shake = handshake(&headers(&[("cookie", "a=1; token=xyz")]));
        assert_eq!(shake.token.as_deref(), Some("xyz"));
        assert!(shake.selected.is_none());
    }

    #[test]
    fn upgrade_detection() {
        assert!(is_upgrade(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ])));
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
    }
}
