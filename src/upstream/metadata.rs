//! HTTP headers to gRPC metadata and back, the way grpc-gateway maps them.

use std::io::Write as _;
use std::net::SocketAddr;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::metadata::{KeyAndValueRef, MetadataMap};

/// Each name paired with its `grpcgateway-` form, made at compile time.
macro_rules! with_prefix {
    ($($name:literal),* $(,)?) => {
        [$(($name, HeaderName::from_static(concat!("grpcgateway-", $name)))),*]
    };
}

/// Request headers grpc-gateway forwards as `grpcgateway-<name>`, with that name made once.
static PERMANENT: [(&str, HeaderName); 24] = with_prefix![
    "accept",
    "accept-charset",
    "accept-language",
    "accept-ranges",
    "authorization",
    "cache-control",
    "content-type",
    "cookie",
    "date",
    "expect",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-schedule-tag-match",
    "if-unmodified-since",
    "max-forwards",
    "origin",
    "pragma",
    "referer",
    "user-agent",
    "via",
    "warning",
];

/// Headers that describe one hop and never cross the gateway.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Metadata the gRPC protocol owns, never copied back as headers.
const RESERVED_RESPONSE: &[&str] = &[
    "content-type",
    "content-length",
    "date",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "grpc-accept-encoding",
];

const METADATA_PREFIX: &str = "grpc-metadata-";

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Room for the entries added after the client's: the forwarding pair here, the request id and
/// the call's own headers (content-type, te, user-agent, grpc-timeout), so the map never grows.
const ADDED: usize = 8;

/// Builds the metadata of a backend call from the client's headers.
/// `authority` is the request URI's, which stands for `Host` over HTTP/2.
pub fn request_metadata(
    headers: &HeaderMap,
    authority: Option<&str>,
    remote: Option<SocketAddr>,
    allow: &[HeaderName],
) -> MetadataMap {
    // Built as plain headers: values are shared with the request's, not copied, and names are
    // the client's or made once (this runs for every call, and each copy was an allocation).
    let mut md = HeaderMap::with_capacity(headers.len() + ADDED);
    // Headers named in `Connection` belong to this hop only (RFC 9110 §7.6.1).
    let connection: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    for (name, value) in headers {
        let key = name.as_str();
        if HOP_BY_HOP.contains(&key) || connection.iter().any(|c| c == key) {
            continue;
        }
        if key == "authorization" {
            md.append(name.clone(), value.clone());
        }
        if let Some((_, prefixed)) = PERMANENT.iter().find(|(permanent, _)| *permanent == key) {
            md.append(prefixed.clone(), value.clone());
        } else if let Some(stripped) = key.strip_prefix(METADATA_PREFIX) {
            // `Grpc-Metadata-Connection` must not smuggle a hop-by-hop name upstream: HTTP/2
            // refuses those, which would fail the call.
            if !HOP_BY_HOP.contains(&stripped) {
                if let Ok(stripped) = HeaderName::from_bytes(stripped.as_bytes()) {
                    append(&mut md, stripped, value);
                }
            }
        } else if allow.contains(name) {
            append(&mut md, name.clone(), value);
        }
    }
    // As grpc-gateway: the client's X-Forwarded-Host if it sent one, else its Host.
    let host = headers
        .get(X_FORWARDED_HOST)
        .or_else(|| headers.get(http::header::HOST))
        .cloned()
        .or_else(|| authority.and_then(|a| HeaderValue::from_str(a).ok()));
    if let Some(host) = host {
        md.insert(X_FORWARDED_HOST, host);
    }
    if let Some(remote) = remote {
        let ip = remote.ip();
        let chain = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(previous) => HeaderValue::try_from(format!("{previous}, {ip}")).map_err(|_| ()),
            None => formatted(format_args!("{ip}")).ok_or(()),
        };
        if let Ok(value) = chain {
            md.insert(X_FORWARDED_FOR, value);
        }
    }
    MetadataMap::from_headers(md)
}

/// A header value formatted on the stack, so that its own copy is its only allocation; None if
/// it is longer than 64 bytes or not a valid value.
pub(super) fn formatted(args: std::fmt::Arguments<'_>) -> Option<HeaderValue> {
    let mut text = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    cursor.write_fmt(args).ok()?;
    let len = usize::try_from(cursor.position()).ok()?;
    HeaderValue::from_bytes(text.get(..len)?).ok()
}

/// Adds one entry; a `-bin` value is checked as base64 (any of the three alphabets clients use)
/// and carried in gRPC's own encoding, and one that is not base64 is skipped.
fn append(md: &mut HeaderMap, name: HeaderName, value: &HeaderValue) {
    if !name.as_str().ends_with("-bin") {
        md.append(name, value.clone());
        return;
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let text = value.as_bytes();
    let decoded = STANDARD
        .decode(text)
        .or_else(|_| STANDARD_NO_PAD.decode(text))
        .or_else(|_| URL_SAFE_NO_PAD.decode(text));
    if let Ok(bytes) = decoded {
        // tonic's binary metadata is unpadded standard base64.
        let encoded = STANDARD_NO_PAD.encode(bytes);
        if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(encoded)) {
            md.append(name, value);
        }
    }
}

/// Copies backend metadata into response headers as `<prefix><name>` (`Grpc-Metadata-` for
/// headers, `Grpc-Trailer-` for trailers); binary values are base64-encoded.
pub fn response_headers(md: &MetadataMap, prefix: &str, out: &mut HeaderMap) {
    for entry in md.iter() {
        let (key, value) = match entry {
            KeyAndValueRef::Ascii(key, value) => (key.as_str(), value.as_encoded_bytes()),
            KeyAndValueRef::Binary(key, value) => (key.as_str(), value.as_encoded_bytes()),
        };
        // Checked before anything is copied: most of a backend's metadata is gRPC's own.
        if RESERVED_RESPONSE.contains(&key) || HOP_BY_HOP.contains(&key) {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(format!("{prefix}{key}").as_bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        out.append(name, value);
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;
    use tonic::metadata::BinaryMetadataValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn maps_headers_like_grpc_gateway() {
        let h = headers(&[
            ("grpc-metadata-tenant", "acme"),
            ("authorization", "Bearer x"),
            ("user-agent", "curl"),
            ("host", "api.example"),
            ("x-custom", "kept"),
            ("x-other", "dropped"),
            ("connection", "close"),
            ("grpc-metadata-trace-bin", "AQID"),
        ]);
        let allow = [HeaderName::from_static("x-custom")];
        let md = request_metadata(&h, None, Some(SocketAddr::from(([10, 0, 0, 1], 5))), &allow);
        assert_eq!(md.get("tenant").unwrap(), "acme");
        assert_eq!(md.get("authorization").unwrap(), "Bearer x");
        assert_eq!(md.get("grpcgateway-authorization").unwrap(), "Bearer x");
        assert_eq!(md.get("grpcgateway-user-agent").unwrap(), "curl");
        assert_eq!(md.get("x-forwarded-host").unwrap(), "api.example");
        assert_eq!(md.get("x-forwarded-for").unwrap(), "10.0.0.1");
        assert_eq!(md.get("x-custom").unwrap(), "kept");
        assert!(md.get("x-other").is_none());
        assert!(md.get("connection").is_none());
        let bin = md.get_bin("trace-bin").unwrap().to_bytes().unwrap();
        assert_eq!(&bin[..], &[1, 2, 3]);
    }

    #[test]
    fn prefixed_hop_by_hop_names_are_dropped() {
        let h = headers(&[
            ("grpc-metadata-connection", "close"),
            ("grpc-metadata-te", "trailers"),
            ("grpc-metadata-upgrade", "h2c"),
            ("grpc-metadata-kept", "yes"),
        ]);
        let md = request_metadata(&h, None, None, &[]);
        assert!(md.get("connection").is_none() && md.get("te").is_none());
        assert!(md.get("upgrade").is_none());
        assert_eq!(md.get("kept").unwrap(), "yes");
    }

    #[test]
    fn bad_binary_and_names_are_skipped() {
        let h = headers(&[("grpc-metadata-x-bin", "***"), ("grpc-metadata-ok", "1")]);
        let md = request_metadata(&h, None, None, &[]);
        assert!(md.get_bin("x-bin").is_none());
        assert_eq!(md.get("ok").unwrap(), "1");
    }

    #[test]
    fn connection_listed_headers_stay_on_this_hop() {
        let h = headers(&[
            ("connection", "keep-alive, X-Hop"),
            ("connection", "grpc-metadata-private"),
            ("x-hop", "1"),
            ("x-custom", "kept"),
            ("grpc-metadata-private", "no"),
            ("grpc-metadata-public", "yes"),
        ]);
        let allow = [
            HeaderName::from_static("x-hop"),
            HeaderName::from_static("x-custom"),
        ];
        let md = request_metadata(&h, None, None, &allow);
        assert!(md.get("x-hop").is_none());
        assert!(md.get("private").is_none());
        assert_eq!(md.get("x-custom").unwrap(), "kept");
        assert_eq!(md.get("public").unwrap(), "yes");
    }

    #[test]
    fn forwarded_host_keeps_the_clients_value() {
        let h = headers(&[("host", "gw.internal"), ("x-forwarded-host", "api.example")]);
        let allow = [HeaderName::from_static("x-forwarded-host")];
        for allow in [&allow[..], &[]] {
            let md = request_metadata(&h, None, None, allow);
            let all: Vec<_> = md.get_all("x-forwarded-host").iter().collect();
            assert_eq!(all, ["api.example"]);
        }
    }

    #[test]
    fn http2_authority_stands_for_host() {
        let md = request_metadata(&HeaderMap::new(), Some("api.example:443"), None, &[]);
        assert_eq!(md.get("x-forwarded-host").unwrap(), "api.example:443");
    }

    #[test]
    fn forwarded_for_appends() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        let md = request_metadata(&h, None, Some(SocketAddr::from(([127, 0, 0, 1], 1))), &[]);
        assert_eq!(md.get("x-forwarded-for").unwrap(), "1.2.3.4, 127.0.0.1");
    }

    #[test]
    fn forwarded_for_holds_the_longest_ipv6() {
        let ip: std::net::IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        let md = request_metadata(&HeaderMap::new(), None, Some(SocketAddr::new(ip, 1)), &[]);
        assert_eq!(md.get("x-forwarded-for").unwrap(), &ip.to_string());
    }

    #[test]
    fn formatted_values_fit_in_64_bytes() {
        let fits = "x".repeat(64);
        assert_eq!(formatted(format_args!("{fits}")).unwrap(), fits.as_str());
        assert!(
            formatted(format_args!("{fits}y")).is_none(),
            "too long: refused, not cut"
        );
        assert!(
            formatted(format_args!("a\nb")).is_none(),
            "not a header value"
        );
    }

    #[test]
    fn response_metadata_gets_prefix_and_skips_reserved() {
        let mut md = MetadataMap::new();
        md.insert("x-rate", "5".parse().unwrap());
        md.insert("content-type", "application/grpc".parse().unwrap());
        md.insert_bin("blob-bin", BinaryMetadataValue::from_bytes(&[1, 2]));
        let mut out = HeaderMap::new();
        response_headers(&md, "grpc-metadata-", &mut out);
        assert_eq!(out.get("grpc-metadata-x-rate").unwrap(), "5");
        assert!(out.get("grpc-metadata-content-type").is_none());
        assert_eq!(out.get("grpc-metadata-blob-bin").unwrap(), "AQI");
    }
}
