//! JSON Web Key Sets: a JWKS document read into verification keys, and fetched over HTTP.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::keys::{KeyMaterial, KeySpec};

/// The largest JWKS body accepted; real ones are a few KiB.
pub(crate) const MAX_JWKS_BYTES: usize = 1 << 20;

/// The most keys taken from one set: a token without `kid` is tried against each key of its
/// algorithm, so a bloated set must not multiply the cost of a forged token.
pub(crate) const MAX_JWKS_KEYS: usize = 64;

/// How long one fetch (connect, headers and body) may take.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a JWKS document could not be used; the previous keys stay in force.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not JSON, or no `keys` array.
    #[error("not a JWKS document: {0}")]
    Malformed(String),
    /// Every key was skipped (encryption keys, unsupported types or algorithms).
    #[error("no usable signing key in the set")]
    NoUsableKey,
    /// The server answered something other than 200.
    #[error("the server answered {0}")]
    Status(StatusCode),
    /// The body is larger than [`MAX_JWKS_BYTES`].
    #[error("the body is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// The fetch took longer than [`FETCH_TIMEOUT`].
    #[error("no complete answer within {}s", FETCH_TIMEOUT.as_secs())]
    Timeout,
    /// Connecting, sending or reading failed.
    #[error("transport: {0}")]
    Transport(String),
}

#[derive(Deserialize)]
struct Document {
    // Values first, so one odd key does not make the whole set unreadable.
    keys: Vec<serde_json::Value>,
}

/// The signing keys of a JWKS document; keys that cannot be used are skipped with a warning.
pub(crate) fn parse(body: &[u8]) -> Result<Vec<KeySpec>, JwksError> {
    let doc: Document =
        serde_json::from_slice(body).map_err(|e| JwksError::Malformed(e.to_string()))?;
    let mut keys = Vec::with_capacity(doc.keys.len());
    for (index, value) in doc.keys.into_iter().enumerate() {
        match signing_key(value) {
            Ok(Some(_)) if keys.len() == MAX_JWKS_KEYS => {
                tracing::warn!(index, "JWKS key skipped: more than {MAX_JWKS_KEYS} keys");
            }
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(reason) => tracing::warn!(index, reason, "JWKS key skipped"),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(keys)
}

/// `Ok(None)` for keys meant for encryption, which are not ours to use.
fn signing_key(value: serde_json::Value) -> Result<Option<KeySpec>, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Ok(None);
    }
    let family = DecodingKey::from_jwk(&jwk)
        .map_err(|e| format!("unusable key: {e}"))?
        .family();
    let algorithms = match jwk.common.key_algorithm {
        Some(declared) => {
            let alg = Algorithm::from_str(&declared.to_string())
                .map_err(|_| format!("algorithm {declared} is not a signing algorithm"))?;
            // An `alg` of another family than the key (an RSA key marked HS256) is how
            // algorithm confusion gets in; such a key is dropped, not reinterpreted.
            if alg.family() != family {
                return Err(format!("algorithm {declared} does not fit the key type"));
            }
            vec![alg]
        }
        None => family.algorithms().to_vec(),
    };
    let spec = KeySpec {
        kid: jwk.common.key_id.clone(),
        algorithms,
        material: KeyMaterial::Jwk(Box::new(jwk)),
    };
    // The same checks a configured key passes (family, Ed25519 length).
    spec.decoding_key().map_err(|e| e.to_string())?;
    Ok(Some(spec))
}

/// The client JWKS fetches go through: `https://` checked against the webpki root certificates,
/// or `http://`.
pub(crate) type JwksClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client for [`fetch`]; fails only if the TLS library cannot offer its default protocol
/// versions.
pub(crate) fn client() -> Result<JwksClient, JwksError> {
    let connector = HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| JwksError::Transport(format!("TLS set-up: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Fetches and parses the JWKS at `uri`, bounded in time and size.
pub(crate) async fn fetch(client: &JwksClient, uri: &Uri) -> Result<Vec<KeySpec>, JwksError> {
    let work = async {
        let request = Request::get(uri.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| JwksError::Transport(e.to_string()))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| JwksError::Transport(e.to_string()))?;
        if response.status() != StatusCode::OK {
            return Err(JwksError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    JwksError::TooLarge
                } else {
                    JwksError::Transport(e.to_string())
                }
            })?
            .to_bytes();
        parse(&body)
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| JwksError::Timeout)?
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use serde_json::json;

    use super::*;
    use crate::middleware::auth::testkit::{jwk, jwks, JwksServer, TestKey};

    #[test]
    fn a_set_keeps_signing_keys_with_their_algorithms() {
        let mut unmarked = jwk(TestKey::Ec, Some("ec"));
        unmarked.common.key_algorithm = None;
        let body = json!({"keys": [
            jwk(TestKey::Rsa, Some("rsa")),
            unmarked,
            jwk(TestKey::Ed, None),
        ]});
        let keys = parse(body.to_string().as_bytes()).unwrap();
        let summary: Vec<_> = keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.algorithms.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (Some("rsa"), vec![Algorithm::RS256]),
                (Some("ec"), vec![Algorithm::ES256, Algorithm::ES384]),
                (None, vec![Algorithm::EdDSA]),
            ]
        );
    }

    #[test]
    fn odd_keys_are_skipped_and_an_empty_result_refused() {
        let mut encryption = jwk(TestKey::Rsa, Some("enc"));
        encryption.common.public_key_use = Some(PublicKeyUse::Encryption);
        let mut confused = serde_json::to_value(jwk(TestKey::Rsa, Some("confused"))).unwrap();
        confused["alg"] = json!("HS256");
        let mut unknown_alg = serde_json::to_value(jwk(TestKey::Rsa, Some("x"))).unwrap();
        unknown_alg["alg"] = json!("RSA-OAEP");
        let broken = json!({"kty": "RSA", "kid": "broken", "n": 5});
        let short_ed = json!({"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"});
        let odd = json!({"keys": [
            encryption, confused, unknown_alg, broken, short_ed, {"kty": "weird"}
        ]});
        assert!(matches!(
            parse(odd.to_string().as_bytes()),
            Err(JwksError::NoUsableKey)
        ));

        let mixed = json!({"keys": [broken_rsa(), jwk(TestKey::Ed, Some("ok"))]});
        let keys = parse(mixed.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ok"));
    }

    #[test]
    fn a_bloated_set_is_cut_short() {
        let keys: Vec<_> = (0..MAX_JWKS_KEYS + 5)
            .map(|i| jwk(TestKey::Ed, Some(&format!("k{i}"))))
            .collect();
        let parsed = parse(jwks(&keys).as_bytes()).unwrap();
        assert_eq!(parsed.len(), MAX_JWKS_KEYS);
        assert_eq!(parsed[0].kid.as_deref(), Some("k0"));
    }

    fn broken_rsa() -> serde_json::Value {
        json!({"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"})
    }

    #[test]
    fn non_documents_are_malformed() {
        for body in [&b"not json"[..], b"{}", b"[]", b"{\"keys\": 3}"] {
            assert!(
                matches!(parse(body), Err(JwksError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[tokio::test]
    async fn fetch_reads_a_set_and_refuses_bad_answers() {
        let server = JwksServer::start().await;
        let client = client().unwrap();
        server.serve_keys(&[jwk(TestKey::Rsa, Some("a"))]);
        let keys = fetch(&client, &server.uri()).await.unwrap();
        assert_eq!(keys[0].kid.as_deref(), Some("a"));

        server.serve(StatusCode::INTERNAL_SERVER_ERROR, "oops".into());
        let err = fetch(&client, &server.uri()).await.unwrap_err();
        assert!(
            matches!(err, JwksError::Status(s) if s.as_u16() == 500),
            "{err}"
        );

        let huge = format!(
            "{{\"keys\": [], \"pad\": \"{}\"}}",
            "x".repeat(MAX_JWKS_BYTES)
        );
        server.serve(StatusCode::OK, huge);
        let err = fetch(&client, &server.uri()).await.unwrap_err();
        assert!(matches!(err, JwksError::TooLarge), "{err}");

        server.serve(StatusCode::OK, "<html>".into());
        let err = fetch(&client, &server.uri()).await.unwrap_err();
        assert!(matches!(err, JwksError::Malformed(_)), "{err}");
        assert_eq!(server.hits(), 4);
    }

    #[tokio::test]
    async fn fetch_reports_an_unreachable_server() {
        // Bind then drop: the port is closed, so the connection is refused.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri: Uri = format!("http://{addr}/jwks.json").parse().unwrap();
        let err = fetch(&client().unwrap(), &uri).await.unwrap_err();
        assert!(matches!(err, JwksError::Transport(_)), "{err}");
    }

    #[tokio::test]
    async fn an_https_url_goes_through_tls() {
        // The JWKS server speaks plain HTTP: an https:// URL to it must fail in the TLS handshake,
        // never fall back to reading the plain answer.
        let server = JwksServer::start().await;
        server.serve_keys(&[jwk(TestKey::Rsa, Some("a"))]);
        let plain = server.uri();
        let uri: Uri = format!("https://{}{}", plain.authority().unwrap(), plain.path())
            .parse()
            .unwrap();
        let err = fetch(&client().unwrap(), &uri).await.unwrap_err();
        assert!(matches!(err, JwksError::Transport(_)), "{err}");
    }
}
