//! One HTTP/2 connection to a backend address driven through h2 directly, for unary calls: the
//! caller's task frames the request and queues it on the connection itself, where tonic's
//! channel would hand it to a buffer task and then to hyper's dispatch task first.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use prost::Message;
use tokio::net::TcpStream;
use tonic::metadata::MetadataMap;

use super::call::UnaryReply;
use super::codec::Outgoing;
use crate::error::{ErrorKind, GatewayError};

/// hyper's client windows (2 MiB per stream, 5 MiB per connection), which tonic's channel had:
/// h2's own 64 KiB would cost a WINDOW_UPDATE round trip inside any larger response.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;

/// The bytes of a gRPC message frame's header: a compression flag and a big-endian length.
const FRAME_HEADER: usize = 5;

/// A lazily made connection, remade after it fails.
#[derive(Debug)]
pub struct Connection {
    scheme: Scheme,
    authority: Authority,
    connect_timeout: Duration,
    /// The live connection's handle; None until the first call, and after a failure.
    sender: std::sync::Mutex<Option<h2::client::SendRequest<Bytes>>>,
    /// Held while connecting, so concurrent first calls make one connection.
    connecting: tokio::sync::Mutex<()>,
    /// Connection attempts made, and the error of the last one that failed: calls that waited
    /// for a failed attempt share its error instead of each waiting out a timeout of their own.
    attempts: std::sync::atomic::AtomicU64,
    last_failure: std::sync::Mutex<Option<GatewayError>>,
}

impl Connection {
    /// A connection to `uri` (scheme and authority); nothing is connected yet.
    pub fn new(uri: &Uri, connect_timeout: Duration) -> Connection {
        Connection {
            scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: uri
                .authority()
                .cloned()
                .unwrap_or_else(|| Authority::from_static("localhost")),
            connect_timeout,
            sender: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            attempts: std::sync::atomic::AtomicU64::new(0),
            last_failure: std::sync::Mutex::new(None),
        }
    }

    /// Makes one unary call: `message` to `path` with `metadata`, `timeout` sent as
    /// `grpc-timeout` (the caller enforces it), at most `max_response_bytes` read back.
    pub async fn unary(
        &self,
        path: &PathAndQuery,
        metadata: MetadataMap,
        message: Outgoing,
        timeout: Option<Duration>,
        max_response_bytes: usize,
    ) -> Result<UnaryReply, GatewayError> {
        let request = self.request(path, metadata, timeout)?;
        let body = frame(message)?;
        // A connection that ended since its last call fails its readiness before anything is
        // sent on it, so the call safely goes to a new one.
        let mut sender = match self.sender().await?.ready().await {
            Ok(sender) => sender,
            Err(_) => {
                self.forget();
                self.sender()
                    .await?
                    .ready()
                    .await
                    .map_err(|err| self.failed(err))?
            }
        };
        let (response, mut send) = match sender.send_request(request, false) {
            Ok(sent) => sent,
            Err(err) => return Err(self.failed(err)),
        };
        if let Err(err) = send.send_data(body, true) {
            return Err(self.failed(err));
        }
        // The answer is a backend round trip away: the worker spins for it from here.
        crate::server::spin::busy();
        let response = response.await.map_err(|err| self.failed(err))?;
        let (head, mut body) = response.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(http_status_error(head.status, &head.headers));
        }
        // A trailers-only answer: the status is in the headers and there is no body.
        if head.headers.contains_key("grpc-status") {
            return Err(status_error(&head.headers));
        }
        let message =
            read_message(&mut body, max_response_bytes)
                .await
                .map_err(|err| match err {
                    Read::H2(err) => self.failed(err),
                    Read::Bad(err) => err,
                })?;
        let trailers = match body.trailers().await {
            Ok(Some(trailers)) => trailers,
            Ok(None) => HeaderMap::new(),
            Err(err) => return Err(self.failed(err)),
        };
        match trailers.get("grpc-status").map(HeaderValue::as_bytes) {
            Some(b"0") => {}
            Some(_) => return Err(status_error(&trailers)),
            None => {
                return Err(GatewayError::new(
                    ErrorKind::BadGateway,
                    "bad response from backend: grpc-status header missing",
                ))
            }
        }
        let Some(message) = message else {
            return Err(GatewayError::new(
                ErrorKind::BadGateway,
                "bad response from backend: no response message",
            ));
        };
        Ok(UnaryReply {
            headers: MetadataMap::from_headers(head.headers),
            message,
            trailers: MetadataMap::from_headers(trailers),
        })
    }

    fn request(
        &self,
        path: &PathAndQuery,
        metadata: MetadataMap,
        timeout: Option<Duration>,
    ) -> Result<Request<()>, GatewayError> {
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path.clone())
            .build()
            .map_err(|err| GatewayError::new(ErrorKind::Internal, err.to_string()))?;
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        *headers = metadata.into_headers();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        }
        if let Some(timeout) = timeout {
            headers.insert(GRPC_TIMEOUT, grpc_timeout(timeout));
        }
        Ok(request)
    }

    /// The live connection, made first if there is none.
    async fn sender(&self) -> Result<h2::client::SendRequest<Bytes>, GatewayError> {
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        use std::sync::atomic::Ordering;
        let seen = self.attempts.load(Ordering::Acquire);
        let _connecting = self.connecting.lock().await;
        // Another call may have connected while this one waited, or failed to.
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            if let Some(err) = self.last_failure.lock().ok().and_then(|e| e.clone()) {
                return Err(err);
            }
        }
        let outcome = self.connect().await;
        if let Ok(mut last) = self.last_failure.lock() {
            *last = outcome.as_ref().err().cloned();
        }
        self.attempts.fetch_add(1, Ordering::AcqRel);
        let sender = outcome?;
        if let Ok(mut slot) = self.sender.lock() {
            *slot = Some(sender.clone());
        }
        Ok(sender)
    }

    fn forget(&self) {
        if let Ok(mut slot) = self.sender.lock() {
            *slot = None;
        }
    }

    fn live(&self) -> Option<h2::client::SendRequest<Bytes>> {
        self.sender.lock().ok().and_then(|slot| slot.clone())
    }

    async fn connect(&self) -> Result<h2::client::SendRequest<Bytes>, GatewayError> {
        let port = self.authority.port_u16().unwrap_or(80);
        let host = self.authority.host();
        let target = format!("{host}:{port}");
        let tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&target)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(err)) => {
                    let refused = matches!(
                        err.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::HostUnreachable
                            | std::io::ErrorKind::NetworkUnreachable
                            | std::io::ErrorKind::AddrNotAvailable
                    );
                    let err = GatewayError::new(
                        ErrorKind::Unavailable,
                        format!("backend unavailable: cannot connect to {target}: {err}"),
                    );
                    return Err(if refused {
                        err.as_connect_failure()
                    } else {
                        err
                    });
                }
                Err(_) => {
                    return Err(GatewayError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "backend unavailable: connecting to {target} took more than {:?}",
                            self.connect_timeout
                        ),
                    )
                    .as_connect_failure())
                }
            };
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .enable_push(false)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|err| {
                GatewayError::new(
                    ErrorKind::Unavailable,
                    format!("backend unavailable: HTTP/2 handshake with {target} failed: {err}"),
                )
                .as_connect_failure()
            })?;
        // The connection's frames are read and written by its own task on this runtime.
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("backend connection to {target} ended: {err}");
            }
        });
        Ok(sender)
    }

    /// The error for an h2 failure; a failure of the connection (not of one stream) drops it,
    /// so the next call connects again.
    fn failed(&self, err: h2::Error) -> GatewayError {
        let connection_gone = err.is_io() || err.is_go_away() || err.reason().is_none();
        if connection_gone {
            self.forget();
        }
        // A stream the backend refused, or one above a GOAWAY's last stream, was never
        // processed: safe to try elsewhere, like a refused connection.
        let unprocessed = err.reason() == Some(h2::Reason::REFUSED_STREAM)
            || (err.is_go_away() && err.is_remote());
        match err.reason() {
            // The backend reset this one stream: gRPC's table of HTTP/2 codes says what it means.
            Some(reason) if err.is_reset() && !unprocessed => {
                GatewayError::from_status(tonic::Status::new(
                    reset_code(reason),
                    format!("the backend reset the stream: {reason}"),
                ))
            }
            _ => {
                let err = GatewayError::new(
                    ErrorKind::Unavailable,
                    format!("backend unavailable: {err}"),
                );
                if unprocessed {
                    err.as_connect_failure()
                } else {
                    err
                }
            }
        }
    }
}

/// The gRPC code of an RST_STREAM reason, as gRPC's HTTP/2 mapping gives it.
fn reset_code(reason: h2::Reason) -> tonic::Code {
    match reason {
        h2::Reason::REFUSED_STREAM => tonic::Code::Unavailable,
        h2::Reason::CANCEL => tonic::Code::Cancelled,
        h2::Reason::ENHANCE_YOUR_CALM => tonic::Code::ResourceExhausted,
        h2::Reason::INADEQUATE_SECURITY => tonic::Code::PermissionDenied,
        _ => tonic::Code::Internal,
    }
}

/// What protogate says it is to backends that got no User-Agent from the client.
const USER_AGENT_VALUE: &str = concat!("protogate/", env!("CARGO_PKG_VERSION"));

/// `message` as one uncompressed gRPC frame.
fn frame(message: Outgoing) -> Result<Bytes, GatewayError> {
    let too_large = || GatewayError::new(ErrorKind::PayloadTooLarge, "request message above 4 GiB");
    match message {
        Outgoing::Message(msg) => {
            let len = msg.encoded_len();
            let len32 = u32::try_from(len).map_err(|_| too_large())?;
            let mut out = BytesMut::with_capacity(FRAME_HEADER + len);
            out.put_u8(0);
            out.put_u32(len32);
            msg.encode(&mut out).map_err(|err| {
                GatewayError::new(ErrorKind::Internal, format!("encoding the request: {err}"))
            })?;
            Ok(out.freeze())
        }
        Outgoing::Abandon => Err(GatewayError::new(
            ErrorKind::Status(tonic::Code::Cancelled),
            "the client abandoned the request",
        )),
        Outgoing::Encoded(bytes) => {
            let len32 = u32::try_from(bytes.len()).map_err(|_| too_large())?;
            let mut out = BytesMut::with_capacity(FRAME_HEADER + bytes.len());
            out.put_u8(0);
            out.put_u32(len32);
            out.put_slice(&bytes);
            Ok(out.freeze())
        }
    }
}

enum Read {
    H2(h2::Error),
    Bad(GatewayError),
}

/// Reads the response body: at most one message, whose frame may span data frames. A second
/// message, a compressed one, a cut frame or one above `max` is a bad response.
async fn read_message(body: &mut h2::RecvStream, max: usize) -> Result<Option<Bytes>, Read> {
    let bad = |text: String| Read::Bad(GatewayError::new(ErrorKind::BadGateway, text));
    let mut buffered = BytesMut::new();
    let mut message = None;
    loop {
        let chunk = match body.data().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(err)) => return Err(Read::H2(err)),
            None => break,
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        // The usual case: one data frame holds exactly the one message, taken without a copy.
        if buffered.is_empty() && message.is_none() {
            if let Some(whole) = whole_frame(&chunk, max) {
                message = Some(whole);
                continue;
            }
        }
        buffered.extend_from_slice(&chunk);
        while buffered.len() >= FRAME_HEADER {
            let compressed = buffered[0];
            let len = u32::from_be_bytes([buffered[1], buffered[2], buffered[3], buffered[4]]);
            let len = len as usize;
            if compressed != 0 {
                return Err(bad(
                    "bad response from backend: a compressed message, though none was accepted"
                        .to_owned(),
                ));
            }
            if len > max {
                return Err(bad(format!(
                    "bad response from backend: Error, decoded message length too large: found {len} bytes, the limit is: {max} bytes"
                )));
            }
            if buffered.len() < FRAME_HEADER + len {
                break;
            }
            if message.is_some() {
                return Err(bad(
                    "bad response from backend: more than one message for a unary call".to_owned(),
                ));
            }
            buffered.advance(FRAME_HEADER);
            message = Some(buffered.split_to(len).freeze());
        }
    }
    if !buffered.is_empty() {
        return Err(bad(
            "bad response from backend: the response body ends inside a message".to_owned(),
        ));
    }
    Ok(message)
}

/// The message of `chunk` if it is exactly one complete, uncompressed frame within `max`.
fn whole_frame(chunk: &Bytes, max: usize) -> Option<Bytes> {
    let header = chunk.get(..FRAME_HEADER)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    (header[0] == 0 && len <= max && chunk.len() == FRAME_HEADER + len)
        .then(|| chunk.slice(FRAME_HEADER..))
}

/// The error a `grpc-status` other than OK in `headers` stands for.
fn status_error(headers: &HeaderMap) -> GatewayError {
    match tonic::Status::from_header_map(headers) {
        Some(status) => GatewayError::from_status(status),
        None => GatewayError::new(
            ErrorKind::BadGateway,
            "bad response from backend: an unreadable grpc-status",
        ),
    }
}

/// A response whose HTTP status is not 200, mapped as gRPC's HTTP-to-gRPC table says.
fn http_status_error(status: http::StatusCode, headers: &HeaderMap) -> GatewayError {
    if headers.contains_key("grpc-status") {
        return status_error(headers);
    }
    use tonic::Code;
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    GatewayError::from_status(tonic::Status::new(
        code,
        format!("the backend answered HTTP {status}, not gRPC"),
    ))
}

/// A `grpc-timeout` value: at most 8 digits, in the finest unit that fits.
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let (value, unit) = [
        (1u128, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ]
    .iter()
    .map(|(per, unit)| (nanos.div_ceil(*per), *unit))
    .find(|(value, _)| *value <= MAX)
    .unwrap_or((MAX, "H"));
    super::metadata::formatted(format_args!("{value}{unit}"))
        .unwrap_or_else(|| HeaderValue::from_static("99999999H"))
}

const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[tokio::test]
    async fn calls_waiting_on_a_failed_connect_share_its_error() {
        // A port that was bound and released: connecting is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let uri: Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
        let connection = Connection::new(&uri, Duration::from_secs(1));
        let path = PathAndQuery::from_static("/test.v1.Echo/GetMessage");
        let calls = (0..5).map(|_| {
            connection.unary(
                &path,
                MetadataMap::new(),
                Outgoing::Encoded(Bytes::new()),
                None,
                1024,
            )
        });
        for outcome in futures_util::future::join_all(calls).await {
            let err = outcome.unwrap_err();
            assert!(err.is_connect_failure(), "{err:?}");
        }
        // One attempt made; the four calls that queued behind it took its error.
        assert_eq!(
            connection
                .attempts
                .load(std::sync::atomic::Ordering::Acquire),
            1
        );
        // A later call tries again.
        let again = connection
            .unary(
                &path,
                MetadataMap::new(),
                Outgoing::Encoded(Bytes::new()),
                None,
                1024,
            )
            .await;
        assert!(again.is_err());
        assert_eq!(
            connection
                .attempts
                .load(std::sync::atomic::Ordering::Acquire),
            2
        );
    }

    #[test]
    fn timeouts_use_the_finest_unit_of_at_most_eight_digits() {
        let cases = [
            (Duration::from_nanos(5), "5n"),
            (Duration::from_millis(30), "30000000n"),
            (Duration::from_millis(150), "150000u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_secs(200_000), "200000S"),
        ];
        for (timeout, expected) in cases {
            assert_eq!(grpc_timeout(timeout), expected, "{timeout:?}");
        }
    }

    #[test]
    fn frames_carry_a_flag_and_a_big_endian_length() {
        let framed = frame(Outgoing::Encoded(Bytes::from_static(b"abc"))).unwrap();
        assert_eq!(&framed[..], b"\0\0\0\0\x03abc");
    }

    #[test]
    fn a_data_frame_holding_one_whole_message_is_taken_as_it_is() {
        let chunk = Bytes::from_static(b"\0\0\0\0\x03abc");
        assert_eq!(whole_frame(&chunk, 10).unwrap(), "abc");
        // Over the limit, compressed, cut short or followed by more: the slow path decides.
        assert!(whole_frame(&chunk, 2).is_none());
        assert!(whole_frame(&Bytes::from_static(b"\x01\0\0\0\x03abc"), 10).is_none());
        assert!(whole_frame(&Bytes::from_static(b"\0\0\0\0\x03ab"), 10).is_none());
        assert!(whole_frame(&Bytes::from_static(b"\0\0\0\0\x03abcd"), 10).is_none());
        assert!(whole_frame(&Bytes::from_static(b"\0\0"), 10).is_none());
    }

    #[test]
    fn stream_resets_map_as_grpc_says() {
        assert_eq!(reset_code(h2::Reason::CANCEL), tonic::Code::Cancelled);
        assert_eq!(
            reset_code(h2::Reason::REFUSED_STREAM),
            tonic::Code::Unavailable
        );
        assert_eq!(
            reset_code(h2::Reason::ENHANCE_YOUR_CALM),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            reset_code(h2::Reason::PROTOCOL_ERROR),
            tonic::Code::Internal
        );
    }

    #[test]
    fn http_statuses_map_as_grpc_says() {
        for (status, code) in [
            (404, tonic::Code::Unimplemented),
            (503, tonic::Code::Unavailable),
            (401, tonic::Code::Unauthenticated),
            (500, tonic::Code::Unknown),
        ] {
            let err = http_status_error(
                http::StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
            );
            assert_eq!(err.code(), code, "{status}");
        }
    }
}
