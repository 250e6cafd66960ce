//! The data plane: one REST request in, one gRPC call out, the answer rendered back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::error::{ErrorKind, GatewayError};
use crate::middleware::Pass;
use crate::routing::RouteMatch;
use crate::snapshot::{CallKind, Route, Snapshot, SnapshotStore};
use crate::stream;
use crate::telemetry::{Protocol, Rejection};
use crate::transcode::negotiate::{self, ResponseFormat};
use crate::transcode::status::error_body;
use crate::upstream::{self, Outgoing};

const ACCEPT: HeaderValue = HeaderValue::from_static("accept");

/// Serves one request against the current snapshot; never fails, every error is a response.
pub async fn handle(
    store: &SnapshotStore,
    mut request: Request<Body>,
    remote: Option<SocketAddr>,
) -> Response<Body> {
    let started = Instant::now();
    let snapshot = store.load();
    let method = request.method().clone();
    // A Uri clone shares its bytes: the log line costs no copy of the path.
    let uri = request.uri().clone();
    // The response format is decided once, before anything can fail, so every error is written
    // in it; an unacceptable Accept is reported in JSON once the route is known to need one.
    let accepted = negotiate_accept(request.headers(), &negotiate::OFFERS);
    let errors_in = accepted.as_ref().map_or(ResponseFormat::Json, |f| *f);
    let edge = &snapshot.edge;
    let metrics = store.metrics();
    let (mut pass, entered) = edge.enter(&mut request, remote);
    let protocol = if stream::ws::is_upgrade(request.headers()) {
        Protocol::Websocket
    } else {
        Protocol::Http
    };
    let served = match entered {
        Err(err) => Err((err, None)),
        Ok(()) => match edge.preflight(&snapshot.routes, &request, &mut pass) {
            Some(Ok(response)) => Ok((response, None)),
            Some(Err(err)) => Err((err, None)),
            None if protocol == Protocol::Websocket => stream::ws::upgrade(
                snapshot.clone(),
                store.streams(),
                metrics,
                request,
                remote,
                &mut pass,
            )
            .map(|(response, route)| (response, Some(route))),
            None => serve(&snapshot, request, store, &accepted, &mut pass)
                .await
                .map(|(response, route)| (response, Some(route))),
        },
    };
    let (mut response, route) = match served {
        Ok((response, route)) => (response, route),
        Err((err, route)) => {
            if err.kind() == &ErrorKind::PayloadTooLarge {
                metrics.reject(Rejection::BodyTooLarge);
            }
            (error_response_in(&snapshot, &err, errors_in), route)
        }
    };
    if let Some(rejection) = pass.rejection {
        metrics.reject(rejection);
    }
    edge.leave(&pass, &mut response);
    let elapsed = started.elapsed();
    let template = route.as_ref().map(|r| &r.template);
    tracing::info!(
        target: "protogate::access",
        method = %method,
        path = %uri.path(),
        route = template.map_or("-", |t| &**t),
        grpc_method = route.as_ref().map_or("-", |r| r.method.full_name()),
        status = response.status().as_u16(),
        latency_us = elapsed.as_micros() as u64,
        request_id = pass.request_id.to_str().unwrap_or("-"),
    );
    metrics.request(template, &method, response.status(), protocol, elapsed);
    response
}

type Failure = (GatewayError, Option<Arc<Route>>);

/// The response format among `offers` from every Accept header; one header, the usual case, is
/// negotiated without collecting.
fn negotiate_accept(
    headers: &HeaderMap,
    offers: &[ResponseFormat],
) -> Result<ResponseFormat, GatewayError> {
    let mut values = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok());
    match (values.next(), values.next()) {
        (None, _) => negotiate::response_format_among(std::iter::empty(), offers),
        (Some(one), None) => negotiate::response_format_among([one], offers),
        (Some(first), Some(second)) => {
            let all: Vec<&str> = [first, second].into_iter().chain(values).collect();
            negotiate::response_format_among(all.iter().copied(), offers)
        }
    }
}

async fn serve(
    snapshot: &Snapshot,
    request: Request<Body>,
    store: &SnapshotStore,
    accepted: &Result<ResponseFormat, GatewayError>,
    pass: &mut Pass,
) -> Result<(Response<Body>, Arc<Route>), Failure> {
    let (route, vars) = match snapshot.routes.find(request.method(), request.uri().path()) {
        RouteMatch::Found(found) => {
            let vars: Vec<String> = found.bindings.into_iter().map(|b| b.value).collect();
            (found.value.clone(), vars)
        }
        RouteMatch::MethodNotAllowed { allow } => {
            return Err((
                GatewayError::new(ErrorKind::MethodNotAllowed(allow), "Method Not Allowed"),
                None,
            ))
        }
        RouteMatch::NotFound => {
            return Err((GatewayError::new(ErrorKind::NoRoute, "Not Found"), None))
        }
    };
    match call(snapshot, &route, request, vars, store, accepted, pass).await {
        Ok(response) => Ok((response, route)),
        Err(err) => Err((err, Some(route))),
    }
}

async fn call(
    snapshot: &Snapshot,
    route: &Arc<Route>,
    request: Request<Body>,
    vars: Vec<String>,
    store: &SnapshotStore,
    accepted: &Result<ResponseFormat, GatewayError>,
    pass: &mut Pass,
) -> Result<Response<Body>, GatewayError> {
    let remote = pass.remote;
    let started_at = std::time::Instant::now();
    let config = &snapshot.config;
    let timer = store.metrics().upstream(&route.method_name);
    let (mut parts, body) = request.into_parts();
    snapshot
        .edge
        .admit(pass, route, &mut parts.headers, parts.uri.query(), None)?;
    // A key or token in the query is the edge's, never a field of the message.
    if let Some(uri) = snapshot.edge.without_credentials(&parts.uri) {
        parts.uri = uri;
    }
    // Streams may outlive the route's timeout, which bounds only the wait for their headers;
    // a deadline the client sets bounds the whole stream.
    let (timeout, stream_deadline) = deadline(&parts.headers, route.timeout)?;
    let mut metadata = upstream::request_metadata(
        &parts.headers,
        parts.uri.authority().map(|a| a.as_str()),
        remote,
        &config.forward_headers,
    );
    snapshot.edge.forward(pass, &mut metadata);
    if matches!(route.kind, CallKind::ClientStreaming | CallKind::Bidi) {
        // The body is read as a stream of messages, never collected.
        let call = stream::StreamCall {
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
            vars,
            metadata,
            timeout,
            deadline: stream_deadline,
        };
        // Streams' futures are boxed: their state is several KiB, and inline it would make every
        // request's future that large, unary ones included, and copied whole as it is built.
        return Box::pin(stream::serve(
            snapshot,
            route.clone(),
            call,
            store.streams(),
            &timer,
        ))
        .await;
    }
    // HttpBody responses are written raw whatever Accept says. Streams are JSON, framed as
    // NDJSON, an array or SSE (chosen from Accept by `stream::Framing`), so an Accept that allows
    // neither JSON nor an event stream is refused.
    let format = match route.kind {
        _ if route.response.is_raw() => ResponseFormat::Json,
        CallKind::ServerStreaming if stream::Framing::named_in(&parts.headers) => {
            ResponseFormat::Json
        }
        CallKind::ServerStreaming => negotiate_accept(&parts.headers, &[ResponseFormat::Json])?,
        _ => accepted.clone()?,
    };
    // Before the body is read: a call that cannot be made should not wait for it.
    let backend = route.require_backend()?;
    // A client that trickles its body must not hold a buffer for ever: the deadline covers it.
    let body = tokio::time::timeout(timeout, read_body(body, config.max_body_bytes))
        .await
        .map_err(|_| {
            GatewayError::new(
                ErrorKind::RequestTimeout,
                format!("the request body did not arrive within {timeout:?}"),
            )
        })??;
    let framing = stream::Framing::for_route(&parts.headers, config, route);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let message = Outgoing::from(route.request.build(
        &vars,
        parts.uri.query(),
        content_type,
        &body,
    )?);
    let parts = upstream::CallParts {
        metadata,
        message,
        timeout: match route.kind {
            CallKind::Unary => Some(timeout),
            _ => stream_deadline,
        },
    };
    match route.kind {
        CallKind::Unary => {
            let call_started = Instant::now();
            let reply = tokio::time::timeout(
                timeout,
                upstream::unary(
                    backend,
                    route.grpc_path.clone(),
                    parts,
                    config.max_response_bytes,
                    &timer,
                ),
            )
            .await
            .map_err(|_| deadline_exceeded(timeout))?
            .map_err(|err| deadline_passed(err, call_started, timeout))?;
            let rendered = route
                .response
                .render_as(reply.message, format)
                .map_err(|err| err.with_metadata(reply.headers.clone()))?;
            let content_type = rendered.content_type_header();
            let mut response = Response::new(Body::from(rendered.body));
            let headers = response.headers_mut();
            if let Some(ct) = content_type {
                headers.insert(header::CONTENT_TYPE, ct);
            }
            if !route.response.is_raw() {
                headers.insert(header::VARY, ACCEPT);
            }
            upstream::response_headers(&reply.headers, "grpc-metadata-", headers);
            upstream::response_headers(&reply.trailers, "grpc-trailer-", headers);
            Ok(response)
        }
        CallKind::ServerStreaming => {
            let stream = Box::pin(tokio::time::timeout(
                timeout,
                upstream::server_stream(
                    backend,
                    route.grpc_path.clone(),
                    parts,
                    config.max_response_bytes,
                    &timer,
                ),
            ))
            .await
            .map_err(|_| deadline_exceeded(timeout))??
            .until(stream_deadline.map(|d| tokio::time::Instant::from_std(started_at) + d));
            if route.response.is_raw() {
                return stream::raw_stream_response(
                    stream,
                    route.response.clone(),
                    store.streams().open(),
                )
                .await;
            }
            Ok(stream::streamed_response(
                stream,
                framing,
                stream::renderer(snapshot, route),
                None,
                stream::SSE_HEARTBEAT,
                store.streams().open(),
            ))
        }
        // Served above, before the body is read.
        CallKind::ClientStreaming | CallKind::Bidi => Err(GatewayError::new(
            ErrorKind::Internal,
            "streaming request reached the unary path",
        )),
    }
}

/// A backend that enforces the `grpc-timeout` it was sent may answer at the same moment the
/// gateway's own timer fires (tonic servers answer CANCELLED, others DEADLINE_EXCEEDED): once
/// the deadline has passed, that answer is the gateway's deadline too, a 504 either way.
fn deadline_passed(err: GatewayError, started: Instant, timeout: Duration) -> GatewayError {
    // The backend's clock starts after the gateway's; a few milliseconds cover timer rounding.
    const SLACK: Duration = Duration::from_millis(5);
    let code = err.code();
    let deadline_code = matches!(code, tonic::Code::Cancelled | tonic::Code::DeadlineExceeded);
    if deadline_code
        && matches!(err.kind(), ErrorKind::Status(_))
        && started.elapsed() + SLACK >= timeout
    {
        deadline_exceeded(timeout)
    } else {
        err
    }
}

fn deadline_exceeded(timeout: Duration) -> GatewayError {
    GatewayError::new(
        ErrorKind::Timeout,
        format!("the backend did not answer within {timeout:?}"),
    )
}

/// The call's deadline (the client's `grpc-timeout` or `X-Request-Timeout`, capped by the
/// route's), and the client's own, read once.
fn deadline(
    headers: &HeaderMap,
    route: Duration,
) -> Result<(Duration, Option<Duration>), GatewayError> {
    let client = client_deadline(headers)?;
    Ok((client.map_or(route, |c| c.min(route)), client))
}

/// The deadline the client asked for with `grpc-timeout` or `X-Request-Timeout`, if any.
pub fn client_deadline(headers: &HeaderMap) -> Result<Option<Duration>, GatewayError> {
    let client = if let Some(value) = headers.get("grpc-timeout") {
        Some(parse_grpc_timeout(value.as_bytes()).ok_or_else(|| {
            GatewayError::invalid("invalid grpc-timeout header: expected e.g. 500m or 5S")
        })?)
    } else if let Some(value) = headers.get("x-request-timeout") {
        let text = value.to_str().unwrap_or("");
        let parsed = text
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .or_else(|| humantime::parse_duration(text).ok());
        Some(parsed.ok_or_else(|| {
            GatewayError::invalid(
                "invalid X-Request-Timeout header: expected seconds (1.5) or a duration (250ms)",
            )
        })?)
    } else {
        None
    };
    Ok(client)
}

/// Parses the gRPC wire form of a timeout: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    let too_large = || {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = http_body::Body::size_hint(&body).exact();
    if declared.is_some_and(|len| len > limit as u64) {
        drain(body, declared).await;
        return Err(too_large());
    }
    // One data frame is the usual body: kept as it is, with no copy.
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            GatewayError::invalid(format!("could not read the request body: {err}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let read = first.as_ref().map_or(0, Bytes::len) + rest.len() + data.len();
        if read > limit {
            drain(body, None).await;
            return Err(too_large());
        }
        match &first {
            None if rest.is_empty() => first = Some(data),
            _ => {
                if let Some(first) = first.take() {
                    rest.extend_from_slice(&first);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(match first {
        Some(first) => first,
        None => rest.freeze(),
    })
}

/// A body refused as too large is still read and dropped, within bounds, before the 413 goes
/// out: a client still writing it would otherwise meet a reset connection instead of the answer.
async fn drain(mut body: Body, declared: Option<u64>) {
    const MAX_DRAIN: u64 = 1 << 20;
    const DRAIN_FOR: Duration = Duration::from_secs(1);
    if declared.is_some_and(|len| len > MAX_DRAIN) {
        return;
    }
    let _ = tokio::time::timeout(DRAIN_FOR, async {
        let mut drained = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                drained += data.len() as u64;
                if drained > MAX_DRAIN {
                    break;
                }
            }
        }
    })
    .await;
}

/// The one error response: status from the table, google.rpc.Status JSON body, metadata headers.
pub fn error_response(snapshot: &Snapshot, err: &GatewayError) -> Response<Body> {
    error_response_in(snapshot, err, ResponseFormat::Json)
}

/// [`error_response`] with the body in `format` (JSON, XML or protobuf): same status, same fields.
pub fn error_response_in(
    snapshot: &Snapshot,
    err: &GatewayError,
    format: ResponseFormat,
) -> Response<Body> {
    let table = &snapshot.config.status_table;
    let status = err.http_status(table);
    if status == StatusCode::INTERNAL_SERVER_ERROR && err.kind() == &ErrorKind::Internal {
        tracing::error!("internal error: {err}");
    }
    let body = error_body(err, Some(snapshot.registry.pool()), format.format());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::VARY, ACCEPT);
    for (name, value) in err.extra_headers() {
        headers.insert(name, value);
    }
    if let Some(md) = err.metadata() {
        upstream::response_headers(md, "grpc-metadata-", headers);
    }
    response
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("10u", Some(Duration::from_micros(10))),
            ("7n", Some(Duration::from_nanos(7))),
            ("S", None),
            ("123456789S", None),
            ("5s", None),
            ("-1S", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_grpc_timeout(text.as_bytes()), *want, "{text}");
        }
    }

    #[test]
    fn client_deadline_is_capped_by_route() {
        let mut h = HeaderMap::new();
        h.insert("x-request-timeout", HeaderValue::from_static("0.5"));
        assert_eq!(
            deadline(&h, Duration::from_secs(10)).unwrap().0,
            Duration::from_millis(500)
        );
        h.insert("x-request-timeout", HeaderValue::from_static("1m"));
        assert_eq!(
            deadline(&h, Duration::from_secs(10)).unwrap().0,
            Duration::from_secs(10)
        );
        h.insert("x-request-timeout", HeaderValue::from_static("soon"));
        assert!(deadline(&h, Duration::from_secs(10)).is_err());
        // Values no Duration can hold are refused, not a panic.
        for huge in ["1e300", "-1", "NaN", "inf"] {
            h.insert("x-request-timeout", HeaderValue::from_static(huge));
            assert!(deadline(&h, Duration::from_secs(10)).is_err(), "{huge}");
        }
    }
}
