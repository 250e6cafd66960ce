//! Which responses are compressed: whole bodies big enough to gain from it, never live streams.

use http::{header, Response, StatusCode};
use http_body::Body;
use tower_http::compression::predicate::{NotForContentType, Predicate};
use tower_http::compression::CompressionLayer;

use crate::config::ServerConfig;
use crate::stream::Streamed;

/// The compression layer for `config`: gzip, br or zstd as the client's Accept-Encoding prefers.
pub(crate) fn layer(config: &ServerConfig) -> CompressionLayer<impl Predicate> {
    let worth_it = WorthIt {
        enabled: config.compression,
        min_bytes: config.compression_min_bytes,
    };
    // tower-http's own exclusions: gRPC has its own compression, images are compressed already,
    // and SSE must flush per event.
    let predicate = worth_it
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::SSE);
    CompressionLayer::new().compress_when(predicate)
}

/// Compression is on, the body is at least `min_bytes` (tower-http's `SizeAbove` takes only a
/// u16), and the response is neither a stream nor an upgrade.
#[derive(Debug, Clone, Copy)]
struct WorthIt {
    enabled: bool,
    min_bytes: u64,
}

impl Predicate for WorthIt {
    fn should_compress<B>(&self, response: &Response<B>) -> bool
    where
        B: Body,
    {
        if !self.enabled
            || response.status() == StatusCode::SWITCHING_PROTOCOLS
            // The compressor buffers its output: a stream's messages would stop being flushed
            // one by one.
            || response.extensions().get::<Streamed>().is_some()
        {
            return false;
        }
        let size = response.body().size_hint().exact().or_else(|| {
            response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        });
        // A body of unknown size that is not a marked stream is compressed, as tower-http does.
        size.is_none_or(|size| size >= self.min_bytes)
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn response(body: &'static str, streamed: bool) -> Response<Body> {
        let mut response = Response::new(Body::from(body));
        if streamed {
            response.extensions_mut().insert(Streamed);
        }
        response
    }

    #[test]
    fn size_threshold_marker_and_switch() {
        let on = WorthIt {
            enabled: true,
            min_bytes: 4,
        };
        assert!(on.should_compress(&response("abcd", false)));
        assert!(!on.should_compress(&response("abc", false)));
        assert!(!on.should_compress(&response("abcdef", true)));
        let mut upgrade = response("abcdef", false);
        *upgrade.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        assert!(!on.should_compress(&upgrade));
        let off = WorthIt {
            enabled: false,
            min_bytes: 0,
        };
        assert!(!off.should_compress(&response("abcdef", false)));
    }
}
