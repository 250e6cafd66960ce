//! How a stream of response messages is written into one HTTP body: grpc-gateway's
//! newline-delimited JSON, Server-Sent Events, or Envoy's single JSON array.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

/// A response framing for streamed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// grpc-gateway: `{"result":<message>}\n` per message, `{"error":<status>}\n` on failure.
    Ndjson,
    /// `data: <message>\n\n` per message, `event: error` on failure, comments while idle.
    Sse,
    /// Envoy's transcoder: `[<message>,<message>]`; a failure is a final `{"error":<status>}`
    /// element.
    Array,
}

/// The media type that asks for [`Framing::Array`].
pub const ARRAY_MEDIA_TYPE: &str = "application/json; stream=array";

impl Framing {
    /// The framing a client asks for in `Accept`; grpc-gateway's when it names none of ours.
    pub fn from_accept(headers: &HeaderMap) -> Framing {
        Self::negotiate(headers, Framing::Ndjson)
    }

    /// The framing `Accept` names, else `default` (a route's configured framing).
    pub fn negotiate(headers: &HeaderMap, default: Framing) -> Framing {
        let mut framing = default;
        for value in headers.get_all(http::header::ACCEPT) {
            let Ok(text) = value.to_str() else { continue };
            for item in text.split(',') {
                let mut params = item.split(';').map(str::trim);
                let media = params.next().unwrap_or("").to_ascii_lowercase();
                match media.as_str() {
                    "text/event-stream" => return Framing::Sse,
                    "application/x-ndjson" => return Framing::Ndjson,
                    "application/json"
                        if params.any(|p| p.eq_ignore_ascii_case("stream=array")) =>
                    {
                        framing = Framing::Array;
                    }
                    _ => {}
                }
            }
        }
        framing
    }

    /// Whether `Accept` names a stream media type of its own (`text/event-stream`,
    /// `application/x-ndjson`), which the JSON/XML negotiation of unary answers does not know.
    pub fn named_in(headers: &HeaderMap) -> bool {
        headers.get_all(http::header::ACCEPT).iter().any(|value| {
            value.to_str().is_ok_and(|text| {
                text.split(',').any(|item| {
                    let media = item.split(';').next().unwrap_or("").trim();
                    media.eq_ignore_ascii_case("text/event-stream")
                        || media.eq_ignore_ascii_case("application/x-ndjson")
                })
            })
        })
    }

    /// The framing a config names: `ndjson`, `sse` or `array`.
    pub fn from_name(name: &str) -> Option<Framing> {
        match name {
            "ndjson" => Some(Framing::Ndjson),
            "sse" => Some(Framing::Sse),
            "array" => Some(Framing::Array),
            _ => None,
        }
    }

    /// The framing of `route` under `config`: the Accept header's, else the service rule's.
    pub fn for_route(
        headers: &HeaderMap,
        config: &crate::config::Config,
        route: &crate::snapshot::Route,
    ) -> Framing {
        let service = route.method.parent_service();
        let default = config
            .service_rule(service.full_name())
            .and_then(|rule| rule.stream_framing)
            .unwrap_or(Framing::Ndjson);
        Self::negotiate(headers, default)
    }

    /// The response Content-Type.
    pub fn content_type(self) -> HeaderValue {
        match self {
            Framing::Ndjson => HeaderValue::from_static("application/json"),
            Framing::Sse => HeaderValue::from_static("text/event-stream"),
            Framing::Array => HeaderValue::from_static("application/json"),
        }
    }

    /// Bytes written before the first message.
    pub fn open(self) -> Option<Bytes> {
        match self {
            Framing::Array => Some(Bytes::from_static(b"[")),
            Framing::Ndjson | Framing::Sse => None,
        }
    }

    /// One rendered message; `first` says whether any frame came before it.
    pub fn message(self, json: &[u8], first: bool) -> Bytes {
        match self {
            Framing::Ndjson => wrap(b"{\"result\":", json, b"}\n"),
            Framing::Sse => wrap(b"data: ", json, b"\n\n"),
            Framing::Array if first => Bytes::copy_from_slice(json),
            Framing::Array => wrap(b",", json, b""),
        }
    }

    /// The final failure; for [`Framing::Array`] it also closes the array.
    pub fn error(self, status_json: &[u8], first: bool) -> Bytes {
        match self {
            Framing::Ndjson => wrap(b"{\"error\":", status_json, b"}\n"),
            Framing::Sse => wrap(b"event: error\ndata: ", status_json, b"\n\n"),
            Framing::Array if first => wrap(b"{\"error\":", status_json, b"}]"),
            Framing::Array => wrap(b",{\"error\":", status_json, b"}]"),
        }
    }

    /// Bytes written after a successful end.
    pub fn close(self) -> Option<Bytes> {
        match self {
            Framing::Array => Some(Bytes::from_static(b"]")),
            Framing::Ndjson | Framing::Sse => None,
        }
    }

    /// A frame the client ignores, sent while the stream is idle so proxies keep it open.
    pub fn heartbeat(self) -> Option<Bytes> {
        match self {
            Framing::Sse => Some(Bytes::from_static(b": keepalive\n\n")),
            Framing::Ndjson | Framing::Array => None,
        }
    }
}

fn wrap(prefix: &[u8], body: &[u8], suffix: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(prefix.len() + body.len() + suffix.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(body);
    out.extend_from_slice(suffix);
    out.into()
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    fn accept(value: &str) -> Framing {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, HeaderValue::from_str(value).unwrap());
        Framing::from_accept(&h)
    }

    #[test]
    fn accept_selects_framing() {
        assert_eq!(Framing::from_accept(&HeaderMap::new()), Framing::Ndjson);
        assert_eq!(accept("application/json"), Framing::Ndjson);
        assert_eq!(accept("text/event-stream"), Framing::Sse);
        assert_eq!(accept("application/json; stream=array"), Framing::Array);
        assert_eq!(accept("text/html, text/event-stream;q=0.9"), Framing::Sse);
    }

    #[test]
    fn frames_byte_for_byte() {
        let m = br#"{"a":1}"#;
        let e = br#"{"code":2}"#;
        assert_eq!(
            &Framing::Ndjson.message(m, true)[..],
            b"{\"result\":{\"a\":1}}\n"
        );
        assert_eq!(
            &Framing::Ndjson.error(e, false)[..],
            b"{\"error\":{\"code\":2}}\n"
        );
        assert_eq!(&Framing::Sse.message(m, true)[..], b"data: {\"a\":1}\n\n");
        assert_eq!(
            &Framing::Sse.error(e, true)[..],
            b"event: error\ndata: {\"code\":2}\n\n"
        );
        let array: Vec<u8> = [
            Framing::Array.open().unwrap(),
            Framing::Array.message(m, true),
            Framing::Array.message(m, false),
            Framing::Array.close().unwrap(),
        ]
        .concat();
        assert_eq!(array, b"[{\"a\":1},{\"a\":1}]");
        assert_eq!(
            &Framing::Array.error(e, true)[..],
            b"{\"error\":{\"code\":2}}]"
        );
    }
}
