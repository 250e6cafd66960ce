//! JWT bearer tokens: settings from `[auth.jwt]`, and a verifier whose keys come from the config,
//! a JWKS file, or a JWKS URL refreshed in the background.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use http::Uri;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{watch, Notify};

use super::claims::Claims;
use super::jwks;
use super::keys::{configured_algorithm, KeyMaterial, KeySpec, VerifyKey};

/// `[auth.jwt]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwt {
    #[serde(default)]
    pub(crate) issuers: Vec<String>,
    #[serde(default)]
    pub(crate) audiences: Vec<String>,
    pub(crate) leeway: Option<String>,
    #[serde(default)]
    pub(crate) keys: Vec<RawJwtKey>,
    pub(crate) jwks_file: Option<String>,
    pub(crate) jwks_url: Option<String>,
    pub(crate) jwks_refresh: Option<String>,
    pub(crate) scope_claim: Option<String>,
}

/// `[[auth.jwt.keys]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwtKey {
    pub(crate) kid: Option<String>,
    pub(crate) algorithm: String,
    pub(crate) secret: Option<String>,
    pub(crate) pem: Option<String>,
    pub(crate) pem_file: Option<String>,
}

const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// The shortest gap between two fetches of the JWKS URL, so that tokens with made-up key ids
/// cannot turn the gateway into a load generator against the identity provider.
const REFETCH_GAP: Duration = Duration::from_secs(10);
/// HS256 secrets shorter than the hash output are refused (RFC 7518 section 3.2).
const MIN_SECRET_BYTES: usize = 32;

/// Checked JWT settings; equal settings mean a reload can keep the running verifier.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtSettings {
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) leeway: Duration,
    /// Keys from the config and from the JWKS file, read when the config was.
    pub(crate) keys: Vec<KeySpec>,
    pub(crate) jwks_url: Option<Uri>,
    pub(crate) jwks_refresh: Duration,
    pub(crate) refetch_gap: Duration,
    pub(crate) scope_claim: String,
}

impl JwtSettings {
    /// Checks `raw`, reading key files relative to `base`; every problem is pushed as
    /// "`key`.field: reason" and `None` is returned if there was any.
    pub(crate) fn from_raw(
        raw: &RawJwt,
        base: &Path,
        key: &str,
        problems: &mut Vec<String>,
    ) -> Option<JwtSettings> {
        let before = problems.len();
        let leeway = duration(
            &raw.leeway,
            DEFAULT_LEEWAY,
            &format!("{key}.leeway"),
            problems,
        );
        let jwks_refresh = duration(
            &raw.jwks_refresh,
            DEFAULT_REFRESH,
            &format!("{key}.jwks_refresh"),
            problems,
        );
        if jwks_refresh < Duration::from_secs(1) {
            problems.push(format!("{key}.jwks_refresh: at least 1s"));
        }
        for (field, values) in [("issuers", &raw.issuers), ("audiences", &raw.audiences)] {
            if values.iter().any(String::is_empty) {
                problems.push(format!("{key}.{field}: empty strings are not allowed"));
            }
        }
        let scope_claim = raw
            .scope_claim
            .clone()
            .unwrap_or_else(|| "scope".to_owned());
        if scope_claim.is_empty() {
            problems.push(format!("{key}.scope_claim: must not be empty"));
        }

        let mut keys = Vec::new();
        for (i, raw_key) in raw.keys.iter().enumerate() {
            if let Some(spec) = configured_key(raw_key, base, &format!("{key}.keys[{i}]"), problems)
            {
                keys.push(spec);
            }
        }
        if let Some(file) = &raw.jwks_file {
            let path = base.join(file);
            match std::fs::read(&path) {
                Ok(body) => match jwks::parse(&body) {
                    Ok(found) => keys.extend(found),
                    Err(e) => problems.push(format!("{key}.jwks_file: {}: {e}", path.display())),
                },
                Err(e) => problems.push(format!("{key}.jwks_file: {}: {e}", path.display())),
            }
        }
        let jwks_url = raw.jwks_url.as_deref().and_then(|text| {
            let problem = match text.parse::<Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some() =>
                {
                    return Some(uri)
                }
                Ok(_) => "must be an https:// or http:// URL with a host".to_owned(),
                Err(e) => format!("{e} (got {text:?})"),
            };
            problems.push(format!("{key}.jwks_url: {problem}"));
            None
        });
        if raw.keys.is_empty() && raw.jwks_file.is_none() && raw.jwks_url.is_none() {
            problems.push(format!(
                "{key}: no key source; set keys, jwks_file or jwks_url"
            ));
        }
        (problems.len() == before).then(|| JwtSettings {
            issuers: raw.issuers.clone(),
            audiences: raw.audiences.clone(),
            leeway,
            keys,
            jwks_url,
            jwks_refresh,
            refetch_gap: REFETCH_GAP,
            scope_claim,
        })
    }

    /// The claim checks every key shares; each key narrows the algorithms to its own.
    fn validation(&self) -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if self.issuers.is_empty() {
            v.iss = None;
        } else {
            v.set_issuer(&self.issuers);
            required.push("iss");
        }
        if self.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

fn duration(
    text: &Option<String>,
    default: Duration,
    key: &str,
    problems: &mut Vec<String>,
) -> Duration {
    match text {
        None => default,
        Some(t) => humantime::parse_duration(t).unwrap_or_else(|e| {
            problems.push(format!(
                "{key}: {e} (got {t:?}; write e.g. \"60s\" or \"5m\")"
            ));
            default
        }),
    }
}

fn configured_key(
    raw: &RawJwtKey,
    base: &Path,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<KeySpec> {
    let Some(algorithm) = configured_algorithm(&raw.algorithm) else {
        problems.push(format!(
            "{key}.algorithm: {:?} is not one of HS256, RS256, ES256, EdDSA",
            raw.algorithm
        ));
        return None;
    };
    let material = if algorithm == Algorithm::HS256 {
        if raw.pem.is_some() || raw.pem_file.is_some() {
            problems.push(format!("{key}: HS256 takes a secret, not a PEM key"));
            return None;
        }
        match &raw.secret {
            None => {
                problems.push(format!("{key}.secret: required for HS256"));
                return None;
            }
            Some(s) if s.len() < MIN_SECRET_BYTES => {
                problems.push(format!(
                    "{key}.secret: at least {MIN_SECRET_BYTES} bytes for HS256"
                ));
                return None;
            }
            Some(s) => KeyMaterial::Secret(s.as_bytes().to_vec()),
        }
    } else {
        if raw.secret.is_some() {
            problems.push(format!(
                "{key}.secret: only for HS256; {} takes a PEM public key",
                raw.algorithm
            ));
            return None;
        }
        match (&raw.pem, &raw.pem_file) {
            (Some(pem), None) => KeyMaterial::Pem(pem.as_bytes().to_vec()),
            (None, Some(file)) => {
                let path = base.join(file);
                match std::fs::read(&path) {
                    Ok(bytes) => KeyMaterial::Pem(bytes),
                    Err(e) => {
                        problems.push(format!("{key}.pem_file: {}: {e}", path.display()));
                        return None;
                    }
                }
            }
            (Some(_), Some(_)) => {
                problems.push(format!("{key}: set pem or pem_file, not both"));
                return None;
            }
            (None, None) => {
                problems.push(format!(
                    "{key}.pem: a PEM public key (pem or pem_file) is required"
                ));
                return None;
            }
        }
    };
    let spec = KeySpec {
        kid: raw.kid.clone(),
        algorithms: vec![algorithm],
        material,
    };
    if let Err(e) = spec.decoding_key() {
        let field = if raw.pem_file.is_some() {
            "pem_file"
        } else {
            "pem"
        };
        problems.push(format!(
            "{key}.{field}: not a {} public key in PEM form ({e})",
            raw.algorithm
        ));
        return None;
    }
    Some(spec)
}

/// Why a token was refused; each message is safe to show the client in a 401.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON, or claims of the wrong shape.
    #[error("malformed token")]
    Malformed,
    /// No key accepted the signature.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` is past, beyond the leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` is ahead, beyond the leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not an accepted issuer.
    #[error("token issuer not accepted")]
    WrongIssuer,
    /// `aud` names none of the accepted audiences.
    #[error("token audience not accepted")]
    WrongAudience,
    /// A claim the settings require (`exp`, `iss`, `aud`) is absent.
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
    /// The token's `kid` names no known key.
    #[error("unknown signing key id")]
    UnknownKeyId,
    /// The header's `alg` is `none`, unknown, or not one the matching keys accept.
    #[error("signing algorithm not allowed")]
    AlgorithmNotAllowed,
    /// The JWKS URL has not answered with a usable key set yet, and no other keys exist.
    #[error("no signing keys loaded yet")]
    NoKeys,
}

impl From<jsonwebtoken::errors::Error> for JwtError {
    fn from(e: jsonwebtoken::errors::Error) -> JwtError {
        match e.kind() {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
            ErrorKind::InvalidAudience => JwtError::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) => JwtError::MissingClaim(claim.clone()),
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::InvalidAlgorithmName => JwtError::AlgorithmNotAllowed,
            // A key that cannot check this signature did not accept it.
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => JwtError::BadSignature,
            _ => JwtError::Malformed,
        }
    }
}

/// What the verifier and its refresh task share.
#[derive(Debug)]
struct Keys {
    /// From the config and the JWKS file; never change for this verifier.
    fixed: Vec<VerifyKey>,
    /// The last good set from the JWKS URL; empty until the first one arrives.
    fetched: ArcSwap<Vec<VerifyKey>>,
    validation: Validation,
    scope_claim: String,
    has_url: bool,
    /// Asks the refresh task for an early fetch (an unknown `kid` was seen).
    refetch: Notify,
    /// Counts finished fetch attempts, good or bad, so tests can wait for one.
    rounds: watch::Sender<u64>,
}

/// Verifies bearer tokens against the configured keys; dropping it stops the JWKS refresh.
#[derive(Debug)]
pub struct JwtVerifier {
    keys: Arc<Keys>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl JwtVerifier {
    /// Loads the configured and file keys; with a JWKS URL, spawns the task that fetches it now
    /// and every `jwks_refresh`. Must be called inside a tokio runtime.
    pub fn start(settings: JwtSettings) -> JwtVerifier {
        let validation = settings.validation();
        let fixed = settings
            .keys
            .iter()
            .filter_map(|spec| match VerifyKey::new(spec, &validation) {
                Ok(key) => Some(key),
                // from_raw decoded every key once already, so this is not expected.
                Err(e) => {
                    tracing::warn!(kid = ?spec.kid, error = %e, "JWT key skipped");
                    None
                }
            })
            .collect();
        let keys = Arc::new(Keys {
            fixed,
            fetched: ArcSwap::from_pointee(Vec::new()),
            validation,
            scope_claim: settings.scope_claim.clone(),
            has_url: settings.jwks_url.is_some(),
            refetch: Notify::new(),
            rounds: watch::Sender::new(0),
        });
        let refresher = settings.jwks_url.map(|uri| {
            tokio::spawn(refresh(
                keys.clone(),
                uri,
                settings.jwks_refresh,
                settings.refetch_gap,
            ))
        });
        JwtVerifier { keys, refresher }
    }

    /// Checks the signature, algorithm, `exp`, `nbf`, `iss` and `aud` of `token` (without the
    /// `Bearer ` prefix). An unknown `kid` asks for an early JWKS fetch; this call still fails.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let header = decode_header(token).map_err(|_| refused_header(token))?;
        let fetched = self.keys.fetched.load();
        let all = || self.keys.fixed.iter().chain(fetched.iter());
        if let Some(kid) = &header.kid {
            let named = all().any(|k| k.kid.as_ref() == Some(kid));
            if !named && self.keys.has_url {
                // A rotation we have not seen yet, or garbage; the task rate-limits either.
                self.keys.refetch.notify_one();
            }
        }
        if self.keys.fixed.is_empty() && fetched.is_empty() {
            return Err(JwtError::NoKeys);
        }
        let mut any_key = false;
        let mut any_alg = false;
        for key in all() {
            let fits = match (&header.kid, &key.kid) {
                (Some(wanted), Some(have)) => wanted == have,
                _ => true,
            };
            if !fits {
                continue;
            }
            any_key = true;
            if !key.validation.algorithms.contains(&header.alg) {
                continue;
            }
            any_alg = true;
            match decode::<Map<String, Value>>(token, &key.key, &key.validation) {
                Ok(data) => return Ok(Claims::new(data.claims, &self.keys.scope_claim)),
                // Another key may still fit; any other failure came after a good signature.
                Err(e) => match JwtError::from(e) {
                    JwtError::BadSignature => {}
                    other => return Err(other),
                },
            }
        }
        Err(if !any_key {
            JwtError::UnknownKeyId
        } else if !any_alg {
            JwtError::AlgorithmNotAllowed
        } else {
            JwtError::BadSignature
        })
    }

    /// Fetch attempts finished so far, to wait on in tests.
    #[cfg(test)]
    fn rounds(&self) -> watch::Receiver<u64> {
        self.keys.rounds.subscribe()
    }
}

impl Drop for JwtVerifier {
    fn drop(&mut self) {
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

/// A header the JWT crate could not read: `alg: none` and unknown algorithms are told apart
/// from plain garbage so the client learns which.
fn refused_header(token: &str) -> JwtError {
    let alg = token
        .split('.')
        .next()
        .and_then(|part| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        .and_then(|header| header.get("alg").and_then(Value::as_str).map(str::to_owned));
    match alg {
        Some(alg) if alg.parse::<Algorithm>().is_err() => JwtError::AlgorithmNotAllowed,
        _ => JwtError::Malformed,
    }
}

/// Fetches the JWKS now, then every `period`, or early when asked but never twice within `gap`;
/// a failed fetch keeps the keys of the last good one.
async fn refresh(keys: Arc<Keys>, uri: Uri, period: Duration, gap: Duration) {
    let client = match jwks::client() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(url = %uri, error = %e, "no JWKS client; tokens of this URL's keys fail");
            return;
        }
    };
    loop {
        let started = tokio::time::Instant::now();
        match jwks::fetch(&client, &uri).await {
            Ok(specs) => {
                let fresh: Vec<VerifyKey> = specs
                    .iter()
                    .filter_map(|spec| VerifyKey::new(spec, &keys.validation).ok())
                    .collect();
                tracing::debug!(url = %uri, keys = fresh.len(), "JWKS refreshed");
                keys.fetched.store(Arc::new(fresh));
            }
            Err(e) => {
                tracing::warn!(url = %uri, error = %e, "JWKS fetch failed; keeping the previous keys")
            }
        }
        keys.rounds.send_modify(|n| *n += 1);
        // The next fetch: at the period, or on request but not within `gap` of this one, and
        // never later than the period either way.
        let due = started + period;
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = keys.refetch.notified() => {
                tokio::time::sleep_until((started + gap).min(due)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use std::time::Instant;

    use http::StatusCode;
    use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
    use serde_json::json;

    use super::*;
    use crate::middleware::auth::testkit::{
        fixture_path, jwk, jwks, now, sign_hs256, JwksServer, TestKey, HS_SECRET,
    };

    fn raw(toml_text: &str) -> RawJwt {
        toml::from_str(toml_text).unwrap()
    }

    fn check(toml_text: &str) -> Result<JwtSettings, Vec<String>> {
        let mut problems = Vec::new();
        let base = fixture_path("");
        match JwtSettings::from_raw(&raw(toml_text), &base, "auth.jwt", &mut problems) {
            Some(s) if problems.is_empty() => Ok(s),
            _ => Err(problems),
        }
    }

    fn verifier(toml_text: &str) -> JwtVerifier {
        JwtVerifier::start(check(toml_text).unwrap())
    }

    fn payload() -> Value {
        json!({"sub": "alice", "exp": now() + 600, "scope": "read write"})
    }

    /// Writes `body` to a file of its own under the temp dir and returns the path.
    fn temp_file(name: &str, body: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("protogate-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    const KEYS: &str = r#"
        [[keys]]
        algorithm = "HS256"
        secret = "an-hs256-test-secret-of-32-bytes!!"
        [[keys]]
        algorithm = "RS256"
        pem_file = "rsa_public.pem"
        [[keys]]
        algorithm = "ES256"
        pem_file = "ec_public.pem"
        [[keys]]
        kid = "ed"
        algorithm = "EdDSA"
        pem_file = "ed25519_public.pem"
    "#;

    #[test]
    fn each_algorithm_verifies_with_a_configured_key() {
        let v = verifier(KEYS);
        let tokens = [
            ("HS256", sign_hs256(HS_SECRET.as_bytes(), None, &payload())),
            ("RS256", TestKey::Rsa.sign(None, &payload())),
            ("ES256", TestKey::Ec.sign(None, &payload())),
            ("EdDSA", TestKey::Ed.sign(Some("ed"), &payload())),
        ];
        for (alg, token) in &tokens {
            let claims = v.verify(token).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(claims.subject.as_deref(), Some("alice"), "{alg}");
            assert_eq!(claims.scopes, ["read", "write"], "{alg}");
        }
        // Keys nobody configured: right algorithm, wrong key.
        let strangers = [
            sign_hs256(b"another-secret-another-secret-32b", None, &payload()),
            TestKey::Rsa2.sign(None, &payload()),
        ];
        for token in &strangers {
            assert_eq!(v.verify(token).unwrap_err(), JwtError::BadSignature);
        }
    }

    #[test]
    fn each_algorithm_verifies_through_a_jwks_file() {
        let hmac = Jwk::from_encoding_key(
            &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        let mut hmac = hmac;
        hmac.common.key_id = Some("h".into());
        let body = jwks(&[
            jwk(TestKey::Rsa, Some("r")),
            jwk(TestKey::Ec, Some("e")),
            jwk(TestKey::Ed, Some("d")),
            hmac,
        ]);
        let path = temp_file("each-alg.json", &body);
        let v = verifier(&format!("jwks_file = {:?}", path.display().to_string()));
        let tokens = [
            TestKey::Rsa.sign(Some("r"), &payload()),
            TestKey::Ec.sign(Some("e"), &payload()),
            TestKey::Ed.sign(Some("d"), &payload()),
            sign_hs256(HS_SECRET.as_bytes(), Some("h"), &payload()),
            // Without a kid every key of the right algorithm is tried.
            TestKey::Ec.sign(None, &payload()),
        ];
        for token in &tokens {
            assert!(v.verify(token).is_ok(), "{token}");
        }
        // A kid naming a key of the set, signed by another key.
        let wrong = TestKey::Rsa2.sign(Some("r"), &payload());
        assert_eq!(v.verify(&wrong).unwrap_err(), JwtError::BadSignature);
        let unknown = TestKey::Rsa.sign(Some("nope"), &payload());
        assert_eq!(v.verify(&unknown).unwrap_err(), JwtError::UnknownKeyId);
    }

    #[test]
    fn expiry_and_not_before_respect_the_leeway() {
        let v = verifier(&format!("leeway = \"30s\"\n{KEYS}"));
        let t = now();
        let cases = [
            (json!({"exp": t - 10}), Ok(())),
            (json!({"exp": t - 100}), Err(JwtError::Expired)),
            (json!({"exp": t + 60, "nbf": t + 10}), Ok(())),
            (
                json!({"exp": t + 600, "nbf": t + 100}),
                Err(JwtError::NotYetValid),
            ),
            (
                json!({"sub": "no-exp"}),
                Err(JwtError::MissingClaim("exp".into())),
            ),
            // The crate reads a non-numeric `exp` as absent.
            (
                json!({"exp": "soon"}),
                Err(JwtError::MissingClaim("exp".into())),
            ),
        ];
        for (claims, want) in cases {
            let token = TestKey::Rsa.sign(None, &claims);
            assert_eq!(v.verify(&token).map(|_| ()), want, "{claims}");
        }
        let strict = verifier(&format!("leeway = \"0s\"\n{KEYS}"));
        let token = TestKey::Rsa.sign(None, &json!({"exp": t - 10}));
        assert_eq!(strict.verify(&token).unwrap_err(), JwtError::Expired);
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let v = verifier(&format!(
            "issuers = [\"https://idp.example\"]\naudiences = [\"api\", \"admin\"]\n{KEYS}"
        ));
        let exp = now() + 600;
        let iss = "https://idp.example";
        let cases = [
            (json!({"exp": exp, "iss": iss, "aud": "api"}), Ok(())),
            (
                json!({"exp": exp, "iss": iss, "aud": ["other", "admin"]}),
                Ok(()),
            ),
            (
                json!({"exp": exp, "iss": "https://evil.example", "aud": "api"}),
                Err(JwtError::WrongIssuer),
            ),
            (
                json!({"exp": exp, "iss": iss, "aud": "web"}),
                Err(JwtError::WrongAudience),
            ),
            (
                json!({"exp": exp, "iss": iss, "aud": []}),
                Err(JwtError::WrongAudience),
            ),
            (
                json!({"exp": exp, "aud": "api"}),
                Err(JwtError::MissingClaim("iss".into())),
            ),
            (
                json!({"exp": exp, "iss": iss}),
                Err(JwtError::MissingClaim("aud".into())),
            ),
        ];
        for (claims, want) in cases {
            let token = TestKey::Ec.sign(None, &claims);
            assert_eq!(v.verify(&token).map(|_| ()), want, "{claims}");
        }
        // Unconfigured, neither is looked at.
        let open = verifier(KEYS);
        let token = TestKey::Ec.sign(None, &json!({"exp": exp, "iss": "x", "aud": "y"}));
        assert!(open.verify(&token).is_ok());
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let v = verifier(KEYS);
        for token in [
            TestKey::Rsa.sign(None, &payload()),
            TestKey::Ec.sign(None, &payload()),
            TestKey::Ed.sign(Some("ed"), &payload()),
            sign_hs256(HS_SECRET.as_bytes(), None, &payload()),
        ] {
            let (rest, sig) = token.rsplit_once('.').unwrap();
            let (header, _) = rest.split_once('.').unwrap();
            // Flip the first signature character to another base64url letter.
            let flipped = if sig.starts_with('A') { "B" } else { "A" };
            let bad_sig = format!("{rest}.{flipped}{}", &sig[1..]);
            assert_eq!(v.verify(&bad_sig).unwrap_err(), JwtError::BadSignature);
            // Claims swapped for more generous ones, signature kept.
            let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(json!({"sub": "root", "exp": now() + 600}).to_string());
            let swapped = format!("{header}.{forged}.{sig}");
            assert_eq!(v.verify(&swapped).unwrap_err(), JwtError::BadSignature);
        }
    }

    #[test]
    fn an_hs256_token_keyed_with_a_public_key_is_refused() {
        // The classic confusion: the attacker knows the RSA public key and uses its PEM bytes
        // as an HMAC secret, hoping the verifier does the same.
        let pem = TestKey::Rsa.public_pem();
        let forged = sign_hs256(pem.as_bytes(), None, &payload());
        let v = verifier("[[keys]]\nalgorithm = \"RS256\"\npem_file = \"rsa_public.pem\"\n");
        assert_eq!(
            v.verify(&forged).unwrap_err(),
            JwtError::AlgorithmNotAllowed
        );

        let path = temp_file("confusion.json", &jwks(&[jwk(TestKey::Rsa, Some("r"))]));
        let v = verifier(&format!("jwks_file = {:?}", path.display().to_string()));
        let forged = sign_hs256(pem.as_bytes(), Some("r"), &payload());
        assert_eq!(
            v.verify(&forged).unwrap_err(),
            JwtError::AlgorithmNotAllowed
        );
    }

    #[test]
    fn unsigned_and_garbage_tokens_are_refused() {
        let v = verifier(KEYS);
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let claims = b64(payload());
        let cases = [
            (
                format!("{}.{claims}.", b64(json!({"alg": "none"}))),
                JwtError::AlgorithmNotAllowed,
            ),
            (
                format!("{}.{claims}.", b64(json!({"alg": "None", "typ": "JWT"}))),
                JwtError::AlgorithmNotAllowed,
            ),
            (
                format!("{}.{claims}.x", b64(json!({"alg": "HS1024"}))),
                JwtError::AlgorithmNotAllowed,
            ),
            // A real algorithm that no configured key accepts.
            (
                format!("{}.{claims}.x", b64(json!({"alg": "PS256"}))),
                JwtError::AlgorithmNotAllowed,
            ),
            (
                format!("{}.{claims}.x", b64(json!({"typ": "JWT"}))),
                JwtError::Malformed,
            ),
            (String::new(), JwtError::Malformed),
            ("abc".into(), JwtError::Malformed),
            ("a.b.c".into(), JwtError::Malformed),
            ("a.b.c.d".into(), JwtError::Malformed),
            (
                format!("{}.!!.x", b64(json!({"alg": "RS256"}))),
                JwtError::Malformed,
            ),
        ];
        for (token, want) in cases {
            assert_eq!(v.verify(&token).unwrap_err(), want, "{token:?}");
        }
    }

    #[test]
    fn messages_name_the_failure_without_key_material() {
        let v = verifier(KEYS);
        let err = v.verify(&TestKey::Rsa2.sign(None, &payload())).unwrap_err();
        assert_eq!(err.to_string(), "invalid token signature");
        let token = TestKey::Rsa.sign(Some("kid-from-client"), &payload());
        let err = verifier(
            "[[keys]]\nkid = \"k1\"\nalgorithm = \"RS256\"\npem_file = \"rsa_public.pem\"\n",
        )
        .verify(&token)
        .unwrap_err();
        assert_eq!(err.to_string(), "unknown signing key id");
        assert!(!err.to_string().contains("k1"));
    }

    #[test]
    fn settings_problems_are_all_reported() {
        let cases = [
            ("", "auth.jwt: no key source"),
            ("[[keys]]\nalgorithm = \"RS512\"\npem = \"x\"", "auth.jwt.keys[0].algorithm: \"RS512\" is not one of"),
            ("[[keys]]\nalgorithm = \"none\"", "auth.jwt.keys[0].algorithm"),
            ("[[keys]]\nalgorithm = \"HS256\"", "auth.jwt.keys[0].secret: required for HS256"),
            ("[[keys]]\nalgorithm = \"HS256\"\nsecret = \"short\"", "auth.jwt.keys[0].secret: at least 32 bytes"),
            ("[[keys]]\nalgorithm = \"HS256\"\nsecret = \"an-hs256-test-secret-of-32-bytes!!\"\npem_file = \"rsa_public.pem\"", "auth.jwt.keys[0]: HS256 takes a secret"),
            ("[[keys]]\nalgorithm = \"RS256\"", "auth.jwt.keys[0].pem: a PEM public key"),
            ("[[keys]]\nalgorithm = \"RS256\"\nsecret = \"an-hs256-test-secret-of-32-bytes!!\"", "auth.jwt.keys[0].secret: only for HS256"),
            ("[[keys]]\nalgorithm = \"RS256\"\npem = \"garbage\"", "auth.jwt.keys[0].pem: not a RS256 public key"),
            ("[[keys]]\nalgorithm = \"ES256\"\npem_file = \"rsa_public.pem\"", "auth.jwt.keys[0].pem_file: not a ES256 public key"),
            ("[[keys]]\nalgorithm = \"RS256\"\npem_file = \"missing.pem\"", "auth.jwt.keys[0].pem_file:"),
            ("[[keys]]\nalgorithm = \"RS256\"\npem_file = \"rsa_public.pem\"\npem = \"x\"", "set pem or pem_file, not both"),
            ("jwks_file = \"missing.json\"", "auth.jwt.jwks_file:"),
            ("jwks_file = \"rsa_public.pem\"", "not a JWKS document"),
            ("jwks_url = \"ftp://idp.example/jwks\"", "auth.jwt.jwks_url: must be an https:// or http:// URL"),
            ("jwks_url = \"not a url\"", "auth.jwt.jwks_url:"),
            ("jwks_url = \"http://idp/jwks\"\nleeway = \"soon\"", "auth.jwt.leeway:"),
            ("jwks_url = \"http://idp/jwks\"\njwks_refresh = \"1ms\"", "auth.jwt.jwks_refresh: at least 1s"),
            ("jwks_url = \"http://idp/jwks\"\njwks_refresh = \"often\"", "auth.jwt.jwks_refresh:"),
            ("jwks_url = \"http://idp/jwks\"\nissuers = [\"\"]", "auth.jwt.issuers: empty strings"),
            ("jwks_url = \"http://idp/jwks\"\nscope_claim = \"\"", "auth.jwt.scope_claim: must not be empty"),
        ];
        for (text, want) in cases {
            let problems = check(text).unwrap_err();
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(want) || p.contains(want)),
                "{text:?}: {problems:?}"
            );
        }
        // Several problems at once, none hiding another.
        let problems =
            check("leeway = \"x\"\njwks_refresh = \"y\"\n[[keys]]\nalgorithm = \"HS999\"")
                .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(toml::from_str::<RawJwt>("unknown_key = 1").is_err());
    }

    #[test]
    fn defaults_and_equality() {
        let s = check("jwks_url = \"http://idp.example/jwks\"").unwrap();
        assert_eq!(s.leeway, Duration::from_secs(60));
        assert_eq!(s.jwks_refresh, Duration::from_secs(300));
        assert_eq!(s.scope_claim, "scope");
        assert_eq!(s, check("jwks_url = \"http://idp.example/jwks\"").unwrap());
        assert_ne!(s, check("jwks_url = \"http://idp.example/jwks2\"").unwrap());
        assert_ne!(
            check(KEYS).unwrap(),
            check(&KEYS.replace("rsa_public", "rsa2_public")).unwrap()
        );
    }

    #[test]
    fn a_configured_scope_claim_is_read() {
        let v = verifier(&format!("scope_claim = \"scp\"\n{KEYS}"));
        let claims =
            json!({"exp": now() + 60, "scp": ["orders.read", "orders.write"], "scope": "x"});
        let got = v.verify(&TestKey::Rsa.sign(None, &claims)).unwrap();
        assert_eq!(got.scopes, ["orders.read", "orders.write"]);
    }

    // JWKS over HTTP: a real loopback server, and the verifier's refresh task.

    fn url_settings(server: &JwksServer, gap: Duration) -> JwtSettings {
        let mut s = check(&format!("jwks_url = \"{}\"", server.uri())).unwrap();
        s.refetch_gap = gap;
        s
    }

    /// Waits until `n` fetch attempts have finished.
    async fn rounds(v: &JwtVerifier, n: u64) {
        let mut rx = v.rounds();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|done| *done >= n))
            .await
            .expect("fetch round within 10s")
            .unwrap();
    }

    #[tokio::test]
    async fn no_keys_until_the_url_first_answers() {
        let server = JwksServer::start().await;
        server.serve(StatusCode::SERVICE_UNAVAILABLE, String::new());
        let v = JwtVerifier::start(url_settings(&server, Duration::ZERO));
        rounds(&v, 1).await;
        let token = TestKey::Rsa.sign(Some("a"), &payload());
        server.serve_keys(&[jwk(TestKey::Rsa, Some("a"))]);
        // Refused, but it asks for the early fetch that brings the key.
        assert_eq!(v.verify(&token).unwrap_err(), JwtError::NoKeys);
        rounds(&v, 2).await;
        assert!(v.verify(&token).is_ok());
    }

    #[tokio::test]
    async fn a_rotated_key_is_picked_up_after_one_refused_token() {
        let server = JwksServer::start().await;
        server.serve_keys(&[jwk(TestKey::Rsa, Some("a"))]);
        let v = JwtVerifier::start(url_settings(&server, Duration::from_millis(50)));
        rounds(&v, 1).await;
        let token_a = TestKey::Rsa.sign(Some("a"), &payload());
        let token_b = TestKey::Rsa2.sign(Some("b"), &payload());
        assert!(v.verify(&token_a).is_ok());

        server.serve_keys(&[jwk(TestKey::Rsa2, Some("b"))]);
        assert_eq!(v.verify(&token_b).unwrap_err(), JwtError::UnknownKeyId);
        rounds(&v, 2).await;
        assert!(v.verify(&token_b).is_ok());
        // The retired key went with the old set.
        assert_eq!(v.verify(&token_a).unwrap_err(), JwtError::UnknownKeyId);
    }

    #[tokio::test]
    async fn the_period_alone_refreshes_the_keys() {
        let server = JwksServer::start().await;
        server.serve_keys(&[jwk(TestKey::Ec, Some("a"))]);
        let mut settings = url_settings(&server, Duration::from_secs(3600));
        settings.jwks_refresh = Duration::from_millis(20);
        let v = JwtVerifier::start(settings);
        rounds(&v, 1).await;
        server.serve_keys(&[jwk(TestKey::Ed, Some("b"))]);
        rounds(&v, 3).await;
        assert!(v.verify(&TestKey::Ed.sign(Some("b"), &payload())).is_ok());
    }

    #[tokio::test]
    async fn bad_answers_keep_the_last_good_keys() {
        let server = JwksServer::start().await;
        server.serve_keys(&[jwk(TestKey::Rsa, Some("a"))]);
        let v = JwtVerifier::start(url_settings(&server, Duration::ZERO));
        rounds(&v, 1).await;
        let token = TestKey::Rsa.sign(Some("a"), &payload());
        let probe = TestKey::Rsa.sign(Some("unknown"), &payload());
        let mut enc_only = jwk(TestKey::Ec, Some("e"));
        enc_only.common.public_key_use = Some(PublicKeyUse::Encryption);
        let bad_answers = [
            (StatusCode::INTERNAL_SERVER_ERROR, "{}".to_owned()),
            (StatusCode::OK, "not json".to_owned()),
            (StatusCode::OK, "{\"keys\": []}".to_owned()),
            (StatusCode::OK, jwks(&[enc_only])),
            (
                StatusCode::OK,
                format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20)),
            ),
        ];
        for (round, (status, body)) in (2..).zip(bad_answers) {
            server.serve(status, body);
            // An unknown kid asks for a fetch now rather than in five minutes.
            assert_eq!(v.verify(&probe).unwrap_err(), JwtError::UnknownKeyId);
            rounds(&v, round).await;
            assert!(v.verify(&token).is_ok(), "round {round} lost the keys");
        }
        assert_eq!(server.hits(), 6);
    }

    #[tokio::test]
    async fn unknown_key_ids_cannot_hammer_the_jwks_url() {
        let server = JwksServer::start().await;
        server.serve_keys(&[jwk(TestKey::Rsa, Some("a"))]);
        let gap = Duration::from_millis(300);
        let started = Instant::now();
        let v = JwtVerifier::start(url_settings(&server, gap));
        rounds(&v, 1).await;
        for i in 0..100 {
            // HMAC-signed: cheap to make, and the kid alone decides the outcome.
            let kid = format!("garbage-{i}");
            let token = sign_hs256(HS_SECRET.as_bytes(), Some(&kid), &payload());
            assert_eq!(v.verify(&token).unwrap_err(), JwtError::UnknownKeyId);
        }
        rounds(&v, 2).await;
        assert!(started.elapsed() >= gap, "refetched within the gap");
        // A hundred refused tokens were worth one early fetch.
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn dropping_the_verifier_stops_the_refresh() {
        let server = JwksServer::start().await;
        server.serve_keys(&[jwk(TestKey::Rsa, Some("a"))]);
        let mut settings = url_settings(&server, Duration::ZERO);
        settings.jwks_refresh = Duration::from_millis(10);
        let v = JwtVerifier::start(settings);
        rounds(&v, 3).await;
        let mut rx = v.rounds();
        drop(v);
        // The task holds the only other reference to the shared state, the sender included:
        // once it is aborted, the channel closes. A task still running keeps it open forever.
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|_| false))
            .await
            .expect("the refresh task ends")
            .unwrap_err();
    }
}
