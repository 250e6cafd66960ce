//! Test keys from `tests/fixtures/jwt`, token signing, and a loopback JWKS server.
//!
//! Test-only (`#[cfg(test)] mod testkit`): unwraps here are on fixtures the tests own, so a
//! failure fails the test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use http::{StatusCode, Uri};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;

/// The fixture key pairs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TestKey {
    Rsa,
    Rsa2,
    Ec,
    Ed,
}

/// A shared secret long enough for HS256.
pub(crate) const HS_SECRET: &str = "an-hs256-test-secret-of-32-bytes!!";

pub(crate) fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

impl TestKey {
    fn stem(self) -> &'static str {
        match self {
            TestKey::Rsa => "rsa",
            TestKey::Rsa2 => "rsa2",
            TestKey::Ec => "ec",
            TestKey::Ed => "ed25519",
        }
    }

    pub(crate) fn algorithm(self) -> Algorithm {
        match self {
            TestKey::Rsa | TestKey::Rsa2 => Algorithm::RS256,
            TestKey::Ec => Algorithm::ES256,
            TestKey::Ed => Algorithm::EdDSA,
        }
    }

    pub(crate) fn public_pem_path(self) -> std::path::PathBuf {
        fixture_path(&format!("{}_public.pem", self.stem()))
    }

    pub(crate) fn public_pem(self) -> String {
        std::fs::read_to_string(self.public_pem_path()).unwrap()
    }

    fn encoding_key(self) -> EncodingKey {
        // RSA private keys are PKCS#1, the others PKCS#8: what the crate's DER readers take.
        let pem = std::fs::read(fixture_path(&format!("{}_private.pem", self.stem()))).unwrap();
        let (_, der) = super::pem::block(&pem).unwrap();
        match self {
            TestKey::Rsa | TestKey::Rsa2 => EncodingKey::from_rsa_der(&der),
            TestKey::Ec => EncodingKey::from_ec_der(&der),
            TestKey::Ed => EncodingKey::from_ed_der(&der),
        }
    }

    /// A token over `claims` signed by this key, naming `kid`.
    pub(crate) fn sign(self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm());
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, &self.encoding_key()).unwrap()
    }
}

/// An HS256 token signed with `secret`.
pub(crate) fn sign_hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// The public JWK of a fixture key, with `alg` set.
pub(crate) fn jwk(key: TestKey, kid: Option<&str>) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&key.encoding_key(), key.algorithm()).unwrap();
    jwk.common.key_id = kid.map(str::to_owned);
    jwk
}

/// A JWKS document holding `keys`.
pub(crate) fn jwks(keys: &[Jwk]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.to_vec(),
    })
    .unwrap()
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A real HTTP server on 127.0.0.1 answering every GET with a settable status and body.
pub(crate) struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<(StatusCode, String)>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub(crate) async fn start() -> JwksServer {
        let answer = Arc::new(Mutex::new((StatusCode::NOT_FOUND, String::new())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let app = Router::new().route(
            "/jwks.json",
            get(move || {
                let (a, h) = (a.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    a.lock().unwrap().clone()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        JwksServer {
            addr,
            answer,
            hits,
            task,
        }
    }

    pub(crate) fn uri(&self) -> Uri {
        format!("http://{}/jwks.json", self.addr).parse().unwrap()
    }

    pub(crate) fn serve(&self, status: StatusCode, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    pub(crate) fn serve_keys(&self, keys: &[Jwk]) {
        self.serve(StatusCode::OK, jwks(keys));
    }

    /// Requests answered so far.
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
