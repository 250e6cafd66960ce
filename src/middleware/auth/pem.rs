//! Public keys in PEM form (SubjectPublicKeyInfo, or PKCS#1 for RSA) read into JWT decoding keys.
//!
//! The JWT crate reads PEM only behind a feature that pulls two more crates in; a public key is
//! one small DER structure, so it is read here instead.

use base64::Engine as _;
use jsonwebtoken::{AlgorithmFamily, DecodingKey};

/// Why a PEM public key was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PemError {
    #[error("no PEM block (-----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----)")]
    NoBlock,
    #[error("a {0} block, not a public key")]
    NotPublic(String),
    #[error("the PEM body is not base64")]
    Base64,
    #[error("the DER inside is not a SubjectPublicKeyInfo")]
    Der,
    #[error("an {found} key, where {wanted} was expected")]
    WrongType {
        found: &'static str,
        wanted: &'static str,
    },
}

// Object identifiers as DER content bytes.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const ED25519: &[u8] = &[0x2b, 0x65, 0x70];

const SEQUENCE: u8 = 0x30;
const OBJECT_ID: u8 = 0x06;
const BIT_STRING: u8 = 0x03;
const INTEGER: u8 = 0x02;

/// The first PEM block of `text`: its label and decoded bytes.
pub(crate) fn block(text: &[u8]) -> Result<(String, Vec<u8>), PemError> {
    let text = std::str::from_utf8(text).map_err(|_| PemError::NoBlock)?;
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or(PemError::NoBlock)?;
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    for line in lines.by_ref() {
        if line == end {
            let der = base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|_| PemError::Base64)?;
            return Ok((label.to_owned(), der));
        }
        body.push_str(line);
    }
    Err(PemError::NoBlock)
}

/// A decoding key of `family` from a PEM public key: RSA, EC P-256 or Ed25519.
pub(crate) fn public_key(text: &[u8], family: AlgorithmFamily) -> Result<DecodingKey, PemError> {
    let (label, der) = block(text)?;
    let (found, key) = match label.as_str() {
        "PUBLIC KEY" => subject_public_key(&der)?,
        // PKCS#1 holds the RSA key itself.
        "RSA PUBLIC KEY" => (AlgorithmFamily::Rsa, der.as_slice()),
        other => return Err(PemError::NotPublic(other.to_owned())),
    };
    if found != family {
        return Err(PemError::WrongType {
            found: name(found),
            wanted: name(family),
        });
    }
    check_shape(found, key)?;
    Ok(match found {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_der(key),
        AlgorithmFamily::Ec => DecodingKey::from_ec_der(key),
        AlgorithmFamily::Ed => DecodingKey::from_ed_der(key),
        AlgorithmFamily::Hmac => return Err(PemError::Der),
    })
}

/// The key bytes have the form their family needs, so a broken key is refused with the config
/// instead of failing every token later.
fn check_shape(family: AlgorithmFamily, key: &[u8]) -> Result<(), PemError> {
    let fits = match family {
        // PKCS#1 RSAPublicKey: SEQUENCE { INTEGER modulus, INTEGER exponent }.
        AlgorithmFamily::Rsa => {
            let (seq, _) = element(key, SEQUENCE)?;
            let (modulus, rest) = element(seq, INTEGER)?;
            let (exponent, rest) = element(rest, INTEGER)?;
            !modulus.is_empty() && !exponent.is_empty() && rest.is_empty()
        }
        // An uncompressed P-256 point: 0x04, then 32 bytes each of x and y.
        AlgorithmFamily::Ec => key.len() == 65 && key[0] == 0x04,
        AlgorithmFamily::Ed => key.len() == 32,
        AlgorithmFamily::Hmac => false,
    };
    if fits {
        Ok(())
    } else {
        Err(PemError::Der)
    }
}

fn name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC P-256",
        AlgorithmFamily::Ed => "Ed25519",
        AlgorithmFamily::Hmac => "HMAC",
    }
}

/// SEQUENCE { SEQUENCE { OID algorithm, parameters }, BIT STRING key } → family and key bytes.
fn subject_public_key(der: &[u8]) -> Result<(AlgorithmFamily, &[u8]), PemError> {
    let (spki, _) = element(der, SEQUENCE)?;
    let (algorithm, rest) = element(spki, SEQUENCE)?;
    let (bits, _) = element(rest, BIT_STRING)?;
    let (oid, params) = element(algorithm, OBJECT_ID)?;
    let family = match oid {
        RSA_ENCRYPTION => AlgorithmFamily::Rsa,
        ED25519 => AlgorithmFamily::Ed,
        EC_PUBLIC_KEY => match element(params, OBJECT_ID)? {
            (P256, _) => AlgorithmFamily::Ec,
            _ => {
                return Err(PemError::WrongType {
                    found: "EC key on another curve than P-256",
                    wanted: "P-256",
                })
            }
        },
        _ => {
            return Err(PemError::WrongType {
                found: "unsupported",
                wanted: "RSA, EC P-256 or Ed25519",
            })
        }
    };
    // A BIT STRING starts with its count of unused bits, zero for every key format here.
    match bits.split_first() {
        Some((0, key)) if !key.is_empty() => Ok((family, key)),
        _ => Err(PemError::Der),
    }
}

/// One DER element of `tag` at the start of `input`: its content and what follows.
fn element(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), PemError> {
    let (&found, rest) = input.split_first().ok_or(PemError::Der)?;
    let (&first, rest) = rest.split_first().ok_or(PemError::Der)?;
    if found != tag {
        return Err(PemError::Der);
    }
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits say how many length bytes follow; keys need at most two.
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 2 || rest.len() < count {
            return Err(PemError::Der);
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return Err(PemError::Der);
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;
    use crate::middleware::auth::testkit::fixture_path;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(fixture_path(name)).unwrap()
    }

    #[test]
    fn each_fixture_reads_as_its_family_only() {
        let cases = [
            ("rsa_public.pem", AlgorithmFamily::Rsa),
            ("ec_public.pem", AlgorithmFamily::Ec),
            ("ed25519_public.pem", AlgorithmFamily::Ed),
        ];
        for (file, family) in cases {
            let pem = fixture(file);
            assert_eq!(public_key(&pem, family).unwrap().family(), family, "{file}");
            for (_, other) in cases.iter().filter(|(_, f)| *f != family) {
                assert!(
                    matches!(public_key(&pem, *other), Err(PemError::WrongType { .. })),
                    "{file} as {other:?}"
                );
            }
            assert!(public_key(&pem, AlgorithmFamily::Hmac).is_err());
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let cases: [(&[u8], PemError); 5] = [
            (b"", PemError::NoBlock),
            (b"-----BEGIN PUBLIC KEY-----\nAAAA\n", PemError::NoBlock),
            (
                b"-----BEGIN PUBLIC KEY-----\n*not base64*\n-----END PUBLIC KEY-----\n",
                PemError::Base64,
            ),
            (
                b"-----BEGIN PUBLIC KEY-----\nMAMCAQE=\n-----END PUBLIC KEY-----\n",
                PemError::Der,
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                PemError::NotPublic("CERTIFICATE".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                public_key(text, AlgorithmFamily::Rsa).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        let private = fixture("ec_private.pem");
        assert_eq!(
            public_key(&private, AlgorithmFamily::Ec).unwrap_err(),
            PemError::NotPublic("PRIVATE KEY".into())
        );
    }

    /// A SubjectPublicKeyInfo around `key`, for lengths under 128 bytes.
    fn spki(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
        let mut alg = vec![SEQUENCE, algorithm.len() as u8];
        alg.extend_from_slice(algorithm);
        let mut bits = vec![BIT_STRING, key.len() as u8 + 1, 0];
        bits.extend_from_slice(key);
        let mut out = vec![SEQUENCE, (alg.len() + bits.len()) as u8];
        out.extend(alg);
        out.extend(bits);
        out
    }

    fn pem_of(der: &[u8]) -> Vec<u8> {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n").into_bytes()
    }

    #[test]
    fn keys_of_the_wrong_shape_are_refused() {
        let mut rsa = vec![OBJECT_ID, RSA_ENCRYPTION.len() as u8];
        rsa.extend_from_slice(RSA_ENCRYPTION);
        rsa.extend_from_slice(&[0x05, 0x00]);
        let mut ec = vec![OBJECT_ID, EC_PUBLIC_KEY.len() as u8];
        ec.extend_from_slice(EC_PUBLIC_KEY);
        ec.extend_from_slice(&[OBJECT_ID, P256.len() as u8]);
        ec.extend_from_slice(P256);
        let mut ed = vec![OBJECT_ID, ED25519.len() as u8];
        ed.extend_from_slice(ED25519);

        let mut point = vec![0x04];
        point.extend([7; 64]);
        let good = [
            (
                &rsa,
                vec![SEQUENCE, 6, INTEGER, 1, 9, INTEGER, 1, 3],
                AlgorithmFamily::Rsa,
            ),
            (&ec, point.clone(), AlgorithmFamily::Ec),
            (&ed, vec![1; 32], AlgorithmFamily::Ed),
        ];
        for (alg, key, family) in &good {
            assert!(
                public_key(&pem_of(&spki(alg, key)), *family).is_ok(),
                "{family:?}"
            );
        }
        let bad = [
            (&rsa, vec![1, 2, 3], AlgorithmFamily::Rsa),
            (&rsa, vec![SEQUENCE, 3, INTEGER, 1, 9], AlgorithmFamily::Rsa),
            (&ec, point[..64].to_vec(), AlgorithmFamily::Ec),
            (
                &ec,
                [&[0x02][..], &point[1..]].concat(),
                AlgorithmFamily::Ec,
            ),
            (&ed, vec![1; 31], AlgorithmFamily::Ed),
            (&ed, vec![1; 33], AlgorithmFamily::Ed),
        ];
        for (alg, key, family) in &bad {
            assert_eq!(
                public_key(&pem_of(&spki(alg, key)), *family).unwrap_err(),
                PemError::Der,
                "{family:?} {key:?}"
            );
        }
    }

    #[test]
    fn truncated_der_never_panics() {
        let (_, der) = block(&fixture("rsa_public.pem")).unwrap();
        for cut in 0..der.len() {
            assert!(subject_public_key(&der[..cut]).is_err(), "cut at {cut}");
        }
    }
}
