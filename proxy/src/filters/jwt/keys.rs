//! The keys a `jwt` filter verifies signatures with, and the algorithms each may verify:
//! public keys from PEM files (RSA, EC P-256 / P-384, Ed25519), an HMAC secret from a file,
//! or a JWKS document. A key verifies only the algorithms of its own type (an RSA key never
//! checks an HMAC signature: no algorithm confusion), and only those of its curve.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use simple_asn1::{oid, ASN1Block};

/// One key and what it verifies.
#[derive(Clone)]
pub(super) struct VerifyKey {
    /// The JWKS `kid`; PEM keys and secrets have none.
    pub(super) kid: Option<String>,
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The keys of one filter.
#[derive(Debug, Clone, Default)]
pub(super) struct KeySet {
    pub(super) keys: Vec<VerifyKey>,
}

const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

impl KeySet {
    /// The keys that may have signed a token of `alg` with `kid`: the one of that `kid` when
    /// there is one, else every key of the algorithm (a token without `kid`, or PEM keys).
    pub(super) fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        let kid_known =
            kid.is_some_and(|kid| self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
        self.keys
            .iter()
            .filter(move |k| k.algorithms.contains(&alg) && (!kid_known || k.kid.as_deref() == kid))
    }

    /// Every algorithm some key verifies, each once.
    pub(super) fn algorithms(&self) -> Vec<Algorithm> {
        let mut all: Vec<Algorithm> = Vec::new();
        for alg in self.keys.iter().flat_map(|k| k.algorithms.iter()) {
            if !all.contains(alg) {
                all.push(*alg);
            }
        }
        all
    }
}

/// A public key from a PEM file: `PUBLIC KEY` (SubjectPublicKeyInfo: RSA, EC P-256 or
/// P-384, Ed25519) or `RSA PUBLIC KEY` (PKCS#1).
pub(super) fn read_pem(path: &Path) -> Result<VerifyKey, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let at = |why: String| format!("{}: {why}", path.display());
    let block = pem::parse(&bytes).map_err(|e| at(format!("not PEM: {e}")))?;
    let (key, algorithms) =
        match block.tag() {
            "RSA PUBLIC KEY" => (DecodingKey::from_rsa_pem(&bytes), RSA.to_vec()),
            "PUBLIC KEY" => match spki_kind(block.contents()).map_err(at)? {
                SpkiKind::Rsa => (DecodingKey::from_rsa_pem(&bytes), RSA.to_vec()),
                SpkiKind::P256 => (DecodingKey::from_ec_pem(&bytes), vec![Algorithm::ES256]),
                SpkiKind::P384 => (DecodingKey::from_ec_pem(&bytes), vec![Algorithm::ES384]),
                SpkiKind::Ed25519 => (DecodingKey::from_ed_pem(&bytes), vec![Algorithm::EdDSA]),
            },
            "CERTIFICATE" => return Err(at(
                "a certificate, not a public key: extract it with `openssl x509 -pubkey -noout`"
                    .into(),
            )),
            tag if tag.contains("PRIVATE") => {
                return Err(at(format!(
                    "a private key ({tag}): give the gateway only the public key"
                )))
            }
            tag => return Err(at(format!("{tag:?} is not a public key"))),
        };
    let key = key.map_err(|e| at(format!("bad key: {e}")))?;
    Ok(VerifyKey {
        kid: None,
        algorithms,
        key,
    })
}

/// An HMAC secret: the file's bytes, without a final line break (as `echo … > FILE` leaves).
pub(super) fn read_secret(path: &Path) -> Result<VerifyKey, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    // RFC 7518 §3.2: a key of the same size as the hash output or larger; HS256 wants 32.
    if bytes.len() < 32 {
        return Err(format!(
            "{}: an HMAC secret of {} bytes is too short (at least 32)",
            path.display(),
            bytes.len()
        ));
    }
    Ok(VerifyKey {
        kid: None,
        algorithms: HMAC.to_vec(),
        key: DecodingKey::from_secret(&bytes),
    })
}

enum SpkiKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// The key type of a DER SubjectPublicKeyInfo, from its algorithm identifier.
fn spki_kind(der: &[u8]) -> Result<SpkiKind, String> {
    let blocks = simple_asn1::from_der(der).map_err(|e| format!("bad public key: {e}"))?;
    let Some(ASN1Block::Sequence(_, info)) = blocks.first() else {
        return Err("bad public key: not a SubjectPublicKeyInfo".into());
    };
    let Some(ASN1Block::Sequence(_, algorithm)) = info.first() else {
        return Err("bad public key: no algorithm identifier".into());
    };
    let oid_at = |i: usize| match algorithm.get(i) {
        Some(ASN1Block::ObjectIdentifier(_, oid)) => Some(oid.clone()),
        _ => None,
    };
    let Some(kind) = oid_at(0) else {
        return Err("bad public key: no algorithm".into());
    };
    if kind == oid!(1, 2, 840, 113_549, 1, 1, 1) {
        return Ok(SpkiKind::Rsa);
    }
    if kind == oid!(1, 3, 101, 112) {
        return Ok(SpkiKind::Ed25519);
    }
    if kind == oid!(1, 2, 840, 10_045, 2, 1) {
        return match oid_at(1) {
            Some(curve) if curve == oid!(1, 2, 840, 10_045, 3, 1, 7) => Ok(SpkiKind::P256),
            Some(curve) if curve == oid!(1, 3, 132, 0, 34) => Ok(SpkiKind::P384),
            _ => Err("an EC key on a curve other than P-256 and P-384".into()),
        };
    }
    Err("not an RSA, EC (P-256, P-384) or Ed25519 public key".into())
}

/// The keys of a JWKS document (`{"keys": [...]}`). Keys this filter cannot verify with (an
/// encryption key, an unknown type or curve, an unsupported `alg`) are left out and
/// counted; a document that is not a JWKS at all is an error.
pub(super) fn parse_jwks(text: &[u8]) -> Result<(KeySet, usize), String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut set = KeySet::default();
    let mut skipped = 0;
    for value in document.keys {
        match serde_json::from_value::<Jwk>(value)
            .ok()
            .and_then(|jwk| jwk_key(&jwk))
        {
            Some(key) => set.keys.push(key),
            None => skipped += 1,
        }
    }
    Ok((set, skipped))
}

/// The key of one JWK, if it is a signature key this filter can use.
fn jwk_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA.to_vec(),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => HMAC.to_vec(),
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(alg) => {
            let alg = signing_algorithm(alg)?;
            // A key that names an algorithm of another type is not used at all.
            if !by_type.contains(&alg) {
                return None;
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // `openssl genpkey -algorithm ed25519 | openssl pkey -pubout`
    const ED25519: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn pem_keys_are_told_apart_by_their_algorithm_identifier() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ed.pem");
        std::fs::write(&path, ED25519).unwrap();
        let key = read_pem(&path).unwrap();
        assert_eq!(key.algorithms, [Algorithm::EdDSA]);
        std::fs::write(&path, ED25519.replace("PUBLIC", "PRIVATE")).unwrap();
        assert!(read_pem(&path).unwrap_err().contains("private key"));
        std::fs::write(&path, "hello").unwrap();
        assert!(read_pem(&path).unwrap_err().contains("not PEM"));
    }

    #[test]
    fn jwks_keys_the_filter_cannot_use_are_left_out() {
        let text = br#"{"keys": [
            {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI", "kid": "h", "alg": "HS256"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "rs", "alg": "RS256"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "use": "enc"},
            {"kty": "weird"}
        ]}"#;
        let (set, skipped) = parse_jwks(text).unwrap();
        assert_eq!(skipped, 4);
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.algorithms(), [Algorithm::HS256]);
        assert_eq!(set.candidates(Algorithm::HS256, Some("h")).count(), 1);
        assert_eq!(set.candidates(Algorithm::HS256, Some("other")).count(), 1);
        assert_eq!(set.candidates(Algorithm::RS256, None).count(), 0);
        assert!(parse_jwks(b"[]").is_err());
    }
}
