//! Admin API errors, rendered in the gateway's one error format: a google.rpc.Status JSON body
//! with the HTTP status of its gRPC code.

use axum::body::Body;
use http::{header, HeaderValue, Response, StatusCode};
use tonic::Code;

use crate::error::{ErrorKind, GatewayError};
use crate::transcode::status::error_json;

/// A refused admin request; nothing changed.
#[derive(Debug, Clone)]
pub struct AdminError {
    status: StatusCode,
    code: Code,
    message: String,
    /// The token was presented but is wrong (RFC 6750's `invalid_token`).
    bad_token: bool,
}

impl AdminError {
    /// An error with this HTTP status and gRPC code.
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        AdminError {
            status,
            code,
            message: message.into(),
            bad_token: false,
        }
    }

    /// 400: the input is unusable.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
    }

    /// 409: the input conflicts with what is loaded.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, Code::AlreadyExists, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, Code::NotFound, message)
    }

    /// 413: the body is larger than `limit`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            format!("the upload is larger than {limit} bytes (admin_max_upload_bytes)"),
        )
    }

    /// 415: a Content-Type the upload endpoint does not read.
    pub fn unsupported_media(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            format!(
                "Content-Type {content_type:?} is not read here: send a FileDescriptorSet as \
                 application/x-protobuf or application/octet-stream, one .proto file as \
                 text/plain, or several as multipart/form-data"
            ),
        )
    }

    /// 401, with `WWW-Authenticate`.
    pub fn unauthorized(bad_token: bool) -> Self {
        let message = if bad_token {
            "the admin token is wrong"
        } else {
            "the admin API needs Authorization: Bearer <token>"
        };
        AdminError {
            bad_token,
            ..Self::new(StatusCode::UNAUTHORIZED, Code::Unauthenticated, message)
        }
    }

    /// 502: a backend did not answer usefully.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, Code::Unavailable, message)
    }

    /// 500: the gateway failed (the state folder could not be written).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response: `{"code": N, "message": "...", "details": []}`.
    pub fn into_response(self) -> Response<Body> {
        let err = GatewayError::new(ErrorKind::Status(self.code), self.message);
        let mut response = Response::new(Body::from(error_json(&err, None)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = if self.bad_token {
                "Bearer realm=\"protogate-admin\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"protogate-admin\""
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for AdminError {}
