//! The gateway's one error type and the one table that maps it to HTTP status and gRPC code.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use tonic::Code;

/// Where an error came from, which decides who must act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something the gateway cannot serve; retrying it unchanged will fail again.
    Client,
    /// The backend answered with a gRPC status, or broke the protocol.
    Upstream,
    /// The gateway itself failed.
    Gateway,
}

/// What went wrong on a request, in terms of what the client should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matches the path.
    NoRoute,
    /// A route matches the path, but not for this HTTP method.
    MethodNotAllowed(Vec<http::Method>),
    /// The request could not be bound into the request message.
    InvalidRequest,
    /// The request body is larger than the configured bound.
    PayloadTooLarge,
    /// The client did not send its body within the call's deadline.
    RequestTimeout,
    /// The request's Content-Type is not one the gateway reads.
    UnsupportedMediaType,
    /// None of the types in Accept can be produced.
    NotAcceptable,
    /// A rate limit refused the request (429, whatever the status table says).
    RateLimited,
    /// The request's headers are larger than the configured bound (431).
    HeadersTooLarge,
    /// The backend answered with this non-OK gRPC status.
    Status(Code),
    /// The backend's answer broke the gRPC protocol (no status, undecodable message).
    BadGateway,
    /// The backend could not be reached.
    Unavailable,
    /// The deadline passed before the backend answered.
    Timeout,
    /// A gateway fault; details are logged, never sent.
    Internal,
}

/// WebSocket close code of a call that ended with OK.
pub const WS_CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code when the gateway shuts down.
pub const WS_CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code of a frame over the size limit.
pub const WS_CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close codes 4000..=4016 carry the gRPC code a call ended with.
pub const WS_CLOSE_STATUS_BASE: u16 = 4000;

/// An error on the request path; every one becomes a response in the google.rpc.Status format.
#[derive(Debug, Clone)]
pub struct GatewayError {
    kind: ErrorKind,
    message: String,
    /// Encoded `google.rpc.Status` from the backend (`grpc-status-details-bin`), if any.
    details: Bytes,
    /// Response metadata and trailers from the backend, forwarded as headers.
    metadata: Option<Box<tonic::metadata::MetadataMap>>,
    /// The connection to the backend could not be made, so nothing was sent.
    connect_failure: bool,
}

impl GatewayError {
    /// An error of `kind` with a client-facing message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            message: message.into(),
            details: Bytes::new(),
            metadata: None,
            connect_failure: false,
        }
    }

    /// A 400 for input that could not be bound into the request message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    /// The same error carrying the backend's response metadata, forwarded as headers.
    pub fn with_metadata(mut self, metadata: tonic::metadata::MetadataMap) -> Self {
        self.metadata = Some(Box::new(metadata));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The message, with its details: for logs.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message the client sees: a gateway fault's details stay in the logs.
    pub fn client_message(&self) -> &str {
        match self.kind {
            ErrorKind::Internal => "internal error",
            _ => &self.message,
        }
    }

    /// The backend's encoded google.rpc.Status, empty when there is none.
    pub fn details(&self) -> &Bytes {
        &self.details
    }

    /// Metadata the backend sent with the failure.
    pub fn metadata(&self) -> Option<&tonic::metadata::MetadataMap> {
        self.metadata.as_deref()
    }

    /// Whether the backend refused the connection, so the request was never sent.
    pub fn is_connect_failure(&self) -> bool {
        self.kind == ErrorKind::Unavailable && self.connect_failure
    }

    /// The same error, marked as one where the request never reached the backend (refused
    /// connection, refused stream), so another address may be tried.
    pub fn as_connect_failure(mut self) -> Self {
        self.connect_failure = true;
        self
    }

    /// Who must act on this error.
    pub fn source(&self) -> ErrorSource {
        match self.kind {
            ErrorKind::NoRoute
            | ErrorKind::MethodNotAllowed(_)
            | ErrorKind::InvalidRequest
            | ErrorKind::PayloadTooLarge
            | ErrorKind::RequestTimeout
            | ErrorKind::RateLimited
            | ErrorKind::HeadersTooLarge
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::NotAcceptable => ErrorSource::Client,
            ErrorKind::Status(_)
            | ErrorKind::BadGateway
            | ErrorKind::Unavailable
            | ErrorKind::Timeout => ErrorSource::Upstream,
            ErrorKind::Internal => ErrorSource::Gateway,
        }
    }

    /// The gRPC code that stands for this error in the body and in WebSocket status frames.
    pub fn code(&self) -> Code {
        match &self.kind {
            ErrorKind::NoRoute => Code::NotFound,
            ErrorKind::MethodNotAllowed(_) => Code::Unimplemented,
            ErrorKind::InvalidRequest => Code::InvalidArgument,
            ErrorKind::PayloadTooLarge => Code::ResourceExhausted,
            ErrorKind::RequestTimeout => Code::DeadlineExceeded,
            ErrorKind::RateLimited | ErrorKind::HeadersTooLarge => Code::ResourceExhausted,
            ErrorKind::UnsupportedMediaType | ErrorKind::NotAcceptable => Code::InvalidArgument,
            ErrorKind::Status(code) => *code,
            ErrorKind::BadGateway => Code::Internal,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Timeout => Code::DeadlineExceeded,
            ErrorKind::Internal => Code::Internal,
        }
    }

    /// The WebSocket close code that says how a call ended with this error: 1009 for a frame
    /// over the size limit, otherwise 4000 plus the gRPC code (private-use range), so a client
    /// that only sees the close still learns the outcome. Success is [`WS_CLOSE_NORMAL`].
    pub fn ws_close_code(&self) -> u16 {
        match self.kind {
            ErrorKind::PayloadTooLarge => WS_CLOSE_TOO_BIG,
            _ => WS_CLOSE_STATUS_BASE + self.code() as u16,
        }
    }

    /// The HTTP status for this error under `table`.
    pub fn http_status(&self, table: &StatusTable) -> StatusCode {
        match &self.kind {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            _ => table.status(self.code()),
        }
    }

    /// Headers the error requires: `Allow` on 405, `WWW-Authenticate` on UNAUTHENTICATED.
    pub fn extra_headers(&self) -> Vec<(http::HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        if let ErrorKind::MethodNotAllowed(allow) = &self.kind {
            let list = allow
                .iter()
                .map(http::Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(value) = HeaderValue::from_str(&list) {
                headers.push((http::header::ALLOW, value));
            }
        }
        // Keyed on the code, as grpc-gateway does, so an override of the status keeps it.
        if self.code() == Code::Unauthenticated {
            headers.push((
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            ));
        }
        headers
    }

    /// The error for a gRPC status received from, or made by tonic for, a backend call.
    pub fn from_status(status: tonic::Status) -> Self {
        let message = status.message();
        // tonic reports transport failures as UNAVAILABLE and a missing grpc-status as a locally
        // made UNKNOWN; its message prefixes are the only way to tell those from backend answers.
        let kind = if status.code() == Code::Unknown
            && (message.starts_with("protocol error")
                || message.starts_with("grpc-status header missing"))
        {
            ErrorKind::BadGateway
        } else if status.code() == Code::Unavailable && is_transport_failure(&status) {
            ErrorKind::Unavailable
        } else if status.code() == Code::Cancelled && is_local_timeout(&status) {
            // The channel enforces the deadline the gateway put in `grpc-timeout` and reports it
            // as a locally made CANCELLED; it is the gateway's deadline passing, not a backend
            // answer, and often fires a moment before the gateway's own timer.
            ErrorKind::Timeout
        } else if status.code() == Code::OutOfRange
            && message.starts_with("Error, decoded message length too large")
        {
            // tonic's own limit on what the backend sent: the backend's fault, not the client's.
            ErrorKind::BadGateway
        } else if status.code() == Code::Ok {
            // An OK status can only reach here through a protocol violation.
            ErrorKind::BadGateway
        } else {
            ErrorKind::Status(status.code())
        };
        let text = match kind {
            ErrorKind::BadGateway => format!("bad response from backend: {message}"),
            ErrorKind::Unavailable => format!("backend unavailable: {message}"),
            ErrorKind::Timeout => "the backend did not answer before the deadline".to_owned(),
            _ => message.to_owned(),
        };
        GatewayError {
            kind,
            message: text,
            details: status.details().to_vec().into(),
            metadata: Some(Box::new(status.metadata().clone())),
            connect_failure: is_connect_failure(&status),
        }
    }
}

fn is_transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// A refused or failed TCP connect somewhere in the error's causes.
fn is_connect_failure(status: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        if let Some(hyper) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
            if hyper.is_connect() {
                return true;
            }
        }
        // tonic's ConnectError is private; its text is the last resort.
        if err.to_string().contains("connect error") {
            return true;
        }
        cause = err.source();
    }
    false
}

/// Whether tonic made the status because its own deadline layer fired.
fn is_local_timeout(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", code_name(self.code()), self.message)
    }
}

impl std::error::Error for GatewayError {}

/// The gRPC code → HTTP status table, grpc-gateway v2's by default, overridable per code.
#[derive(Debug, Clone, Default)]
pub struct StatusTable {
    overrides: HashMap<i32, StatusCode>,
}

impl StatusTable {
    /// A table with the given per-code overrides on top of the default mapping.
    pub fn with_overrides(overrides: HashMap<Code, StatusCode>) -> Self {
        StatusTable {
            overrides: overrides
                .into_iter()
                .map(|(code, status)| (code as i32, status))
                .collect(),
        }
    }

    /// The HTTP status for a gRPC code.
    pub fn status(&self, code: Code) -> StatusCode {
        if let Some(status) = self.overrides.get(&(code as i32)) {
            return *status;
        }
        default_status(code)
    }
}

/// The standard gRPC code → HTTP status mapping (as grpc-gateway v2 and Envoy use it).
pub fn default_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The canonical upper-case name of a gRPC code, as in google/rpc/code.proto.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The gRPC code named `name` (upper-case canonical name), if there is one.
pub fn code_from_name(name: &str) -> Option<Code> {
    (0..=16)
        .map(Code::from_i32)
        .find(|code| code_name(*code) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_close_codes_carry_the_outcome() {
        let cases: &[(ErrorKind, u16)] = &[
            (ErrorKind::PayloadTooLarge, WS_CLOSE_TOO_BIG),
            (ErrorKind::InvalidRequest, 4003),
            (ErrorKind::RateLimited, 4008),
            (ErrorKind::HeadersTooLarge, 4008),
            (ErrorKind::Status(Code::NotFound), 4005),
            (ErrorKind::Unavailable, 4014),
            (ErrorKind::Timeout, 4004),
            (ErrorKind::Internal, 4013),
        ];
        for (kind, want) in cases {
            assert_eq!(
                GatewayError::new(kind.clone(), "x").ws_close_code(),
                *want,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn default_table_matches_grpc_gateway() {
        let cases = [
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
        ];
        let table = StatusTable::default();
        for (code, status) in cases {
            assert_eq!(table.status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn overrides_replace_one_code_only() {
        let table = StatusTable::with_overrides(HashMap::from([(
            Code::FailedPrecondition,
            StatusCode::PRECONDITION_FAILED,
        )]));
        assert_eq!(table.status(Code::FailedPrecondition).as_u16(), 412);
        assert_eq!(table.status(Code::OutOfRange).as_u16(), 400);
    }

    #[test]
    fn code_names_round_trip() {
        for n in 0..=16 {
            let code = Code::from_i32(n);
            assert_eq!(code_from_name(code_name(code)), Some(code));
        }
        assert_eq!(code_from_name("NOPE"), None);
    }

    #[test]
    fn missing_grpc_status_is_bad_gateway() {
        let err = GatewayError::from_status(tonic::Status::unknown(
            "protocol error: missing grpc-status trailer",
        ));
        assert_eq!(err.kind(), &ErrorKind::BadGateway);
        assert_eq!(
            err.http_status(&StatusTable::default()),
            StatusCode::BAD_GATEWAY
        );
    }

    #[test]
    fn channel_deadline_is_a_timeout_but_backend_cancel_is_not() {
        let local = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(local.code(), Code::Cancelled);
        let err = GatewayError::from_status(local);
        assert_eq!(err.kind(), &ErrorKind::Timeout);
        assert_eq!(
            err.http_status(&StatusTable::default()),
            StatusCode::GATEWAY_TIMEOUT
        );
        let answered = GatewayError::from_status(tonic::Status::cancelled("Timeout expired"));
        assert_eq!(answered.kind(), &ErrorKind::Status(Code::Cancelled));
    }

    #[test]
    fn oversized_backend_message_is_bad_gateway() {
        let err = GatewayError::from_status(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        ));
        assert_eq!(err.kind(), &ErrorKind::BadGateway);
        let backend = GatewayError::from_status(tonic::Status::out_of_range("page 9 of 4"));
        assert_eq!(backend.kind(), &ErrorKind::Status(Code::OutOfRange));
    }

    #[test]
    fn internal_details_stay_out_of_the_client_message() {
        let err = GatewayError::new(ErrorKind::Internal, "serializer said: secret");
        assert_eq!(err.client_message(), "internal error");
        assert!(err.message().contains("secret"));
    }

    #[test]
    fn www_authenticate_follows_the_code_not_the_status() {
        let table = StatusTable::with_overrides(HashMap::from([(
            Code::Unauthenticated,
            StatusCode::FORBIDDEN,
        )]));
        let err = GatewayError::new(ErrorKind::Status(Code::Unauthenticated), "no");
        assert_eq!(err.http_status(&table), StatusCode::FORBIDDEN);
        assert!(err
            .extra_headers()
            .iter()
            .any(|(name, _)| name == http::header::WWW_AUTHENTICATE));
    }

    #[test]
    fn unauthenticated_adds_www_authenticate() {
        let err = GatewayError::new(ErrorKind::Status(Code::Unauthenticated), "no");
        let headers = err.extra_headers();
        assert!(headers
            .iter()
            .any(|(name, _)| name == http::header::WWW_AUTHENTICATE));
    }
}
