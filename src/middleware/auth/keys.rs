//! JWT verification keys: the material as configured or published, and the ready-to-use form.

use std::fmt;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

use super::pem::{self, PemError};

/// Why key material cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("not a usable JWK: {0}")]
    Jwk(String),
    #[error("the key does not fit its algorithms")]
    Family,
    #[error("an Ed25519 public key is 32 bytes")]
    Ed25519Length,
}

/// Key bytes as written, kept raw so that settings compare by value on a reload.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum KeyMaterial {
    /// An HMAC shared secret.
    Secret(Vec<u8>),
    /// A PEM public key whose type follows the key's algorithm.
    Pem(Vec<u8>),
    /// One key of a JWKS document.
    Jwk(Box<Jwk>),
}

// Debug output may end up in logs, so it names the kind of key only.
impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::Secret(_) => f.write_str("Secret([redacted])"),
            KeyMaterial::Pem(_) => f.write_str("Pem(..)"),
            KeyMaterial::Jwk(_) => f.write_str("Jwk(..)"),
        }
    }
}

/// A verification key with the algorithms it may verify, one family only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeySpec {
    /// The key id a token names in its header; a key without one is tried for any token.
    pub(crate) kid: Option<String>,
    /// Accepted `alg` values, never empty, all of the key's family.
    pub(crate) algorithms: Vec<Algorithm>,
    /// The key itself.
    pub(crate) material: KeyMaterial,
}

impl KeySpec {
    /// The decoding key; fails when the bytes are not a key of the algorithms' family.
    pub(crate) fn decoding_key(&self) -> Result<DecodingKey, KeyError> {
        let key = match &self.material {
            KeyMaterial::Secret(secret) => DecodingKey::from_secret(secret),
            KeyMaterial::Pem(pem) => match self.family() {
                // A PEM is never an HMAC secret: that is the algorithm-confusion attack.
                Some(AlgorithmFamily::Hmac) | None => return Err(KeyError::Family),
                Some(family) => pem::public_key(pem, family)?,
            },
            KeyMaterial::Jwk(jwk) => {
                DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Jwk(e.to_string()))?
            }
        };
        if Some(key.family()) != self.family() {
            return Err(KeyError::Family);
        }
        // The crate slices an Ed25519 key to 32 bytes when verifying, and would panic on a
        // shorter one; such a key is refused here, before any token reaches it.
        if key.family() == AlgorithmFamily::Ed
            && !matches!(key.try_get_as_bytes(), Ok(bytes) if bytes.len() == 32)
        {
            return Err(KeyError::Ed25519Length);
        }
        Ok(key)
    }

    fn family(&self) -> Option<AlgorithmFamily> {
        let first = self.algorithms.first()?.family();
        self.algorithms
            .iter()
            .all(|a| a.family() == first)
            .then_some(first)
    }
}

/// A key ready to verify: decoded once, with its validation rules (algorithms, iss, aud, times).
#[derive(Clone, Debug)]
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    pub(crate) validation: Validation,
}

impl VerifyKey {
    /// Decodes `spec` and narrows `base` to the key's algorithms.
    pub(crate) fn new(spec: &KeySpec, base: &Validation) -> Result<VerifyKey, KeyError> {
        let key = spec.decoding_key()?;
        let mut validation = base.clone();
        validation.algorithms.clone_from(&spec.algorithms);
        Ok(VerifyKey {
            kid: spec.kid.clone(),
            key,
            validation,
        })
    }
}

/// The one algorithm a configured key is written for (`algorithm = "..."`).
pub(crate) fn configured_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(crate::middleware::auth::testkit::fixture_path(name)).unwrap()
    }

    fn spec(alg: Algorithm, material: KeyMaterial) -> KeySpec {
        KeySpec {
            kid: None,
            algorithms: vec![alg],
            material,
        }
    }

    #[test]
    fn each_pem_decodes_for_its_own_family_only() {
        let cases = [
            ("rsa_public.pem", Algorithm::RS256),
            ("ec_public.pem", Algorithm::ES256),
            ("ed25519_public.pem", Algorithm::EdDSA),
        ];
        for (file, alg) in cases {
            let pem = fixture(file);
            assert!(
                spec(alg, KeyMaterial::Pem(pem.clone()))
                    .decoding_key()
                    .is_ok(),
                "{file}"
            );
            // A PEM read as an HMAC secret is refused outright.
            let hmac = spec(Algorithm::HS256, KeyMaterial::Pem(pem.clone()));
            assert!(hmac.decoding_key().is_err(), "{file} as HS256");
        }
        let rsa_as_ec = spec(
            Algorithm::ES256,
            KeyMaterial::Pem(fixture("rsa_public.pem")),
        );
        assert!(rsa_as_ec.decoding_key().is_err());
        let garbage = spec(Algorithm::RS256, KeyMaterial::Pem(b"not a pem".to_vec()));
        assert!(garbage.decoding_key().is_err());
    }

    #[test]
    fn short_ed25519_keys_are_refused() {
        use jsonwebtoken::jwk::{
            AlgorithmParameters, CommonParameters, EllipticCurve, OctetKeyPairParameters,
            OctetKeyPairType,
        };
        let short = |x: &str| Jwk {
            common: CommonParameters::default(),
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: x.to_owned(),
            }),
        };
        for x in ["", "AAAA", &"A".repeat(42)] {
            let spec = spec(Algorithm::EdDSA, KeyMaterial::Jwk(Box::new(short(x))));
            assert_eq!(
                spec.decoding_key().unwrap_err(),
                KeyError::Ed25519Length,
                "{x:?}"
            );
        }
        // 43 base64url characters: exactly 32 bytes.
        let right = spec(
            Algorithm::EdDSA,
            KeyMaterial::Jwk(Box::new(short(&"A".repeat(43)))),
        );
        assert!(right.decoding_key().is_ok());
    }

    #[test]
    fn mixed_families_are_refused() {
        let mixed = KeySpec {
            kid: None,
            algorithms: vec![Algorithm::RS256, Algorithm::HS256],
            material: KeyMaterial::Pem(fixture("rsa_public.pem")),
        };
        assert!(mixed.decoding_key().is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let key = spec(
            Algorithm::HS256,
            KeyMaterial::Secret(b"hunter2-hunter2".to_vec()),
        );
        let shown = format!("{key:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn configured_algorithms_are_the_four_supported() {
        for name in ["HS256", "RS256", "ES256", "EdDSA"] {
            assert!(configured_algorithm(name).is_some(), "{name}");
        }
        for name in ["none", "hs256", "RS384", "PS256", ""] {
            assert!(configured_algorithm(name).is_none(), "{name}");
        }
    }
}
