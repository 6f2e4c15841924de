//! Development signing keys: the monolith generates an Ed25519 key pair on
//! first start and mints tokens with it (`mercato token`). Production takes
//! only public keys from settings; the issuer is external.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{
    encoding::{AsDer, PublicKeyX509Der},
    signature::{Ed25519KeyPair, KeyPair},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

/// A freshly generated key pair, PEM-encoded.
#[derive(Debug, Clone)]
pub struct DevKeyPair {
    /// PKCS#8 private key.
    pub private_pem: String,
    /// SubjectPublicKeyInfo public key.
    pub public_pem: String,
}

/// Key generation or signing failed.
#[derive(Debug, thiserror::Error)]
#[error("dev key: {0}")]
pub struct DevKeyError(String);

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A new Ed25519 key pair.
pub fn generate() -> Result<DevKeyPair, DevKeyError> {
    let pair = Ed25519KeyPair::generate().map_err(|e| DevKeyError(e.to_string()))?;
    let private = pair.to_pkcs8().map_err(|e| DevKeyError(e.to_string()))?;
    let public: PublicKeyX509Der<'static> = pair
        .public_key()
        .as_der()
        .map_err(|e| DevKeyError(e.to_string()))?;
    Ok(DevKeyPair {
        private_pem: pem("PRIVATE KEY", private.as_ref()),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    })
}

/// A signed token for `sub` with `roles`, valid for `ttl_secs`, from the
/// given private key (PEM), issuer and audience. `kid` names the key.
pub fn mint(
    private_pem: &str,
    kid: &str,
    issuer: &str,
    audience: &str,
    sub: &str,
    roles: &[String],
    ttl_secs: u64,
) -> Result<String, DevKeyError> {
    let key =
        EncodingKey::from_ed_pem(private_pem.as_bytes()).map_err(|e| DevKeyError(e.to_string()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = json!({
        "sub": sub, "roles": roles, "iss": issuer, "aud": audience,
        "iat": now, "nbf": now, "exp": now + ttl_secs,
    });
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    encode(&header, &claims, &key).map_err(|e| DevKeyError(e.to_string()))
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the 32 key
/// bytes follow it.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The body of a PEM block, decoded.
fn pem_der(pem: &str) -> Result<(String, Vec<u8>), DevKeyError> {
    use base64::Engine;
    let mut label = None;
    let mut body = String::new();
    for line in pem.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            label = Some(rest.trim_end_matches('-').to_owned());
        } else if line.starts_with("-----END ") {
            break;
        } else if label.is_some() {
            body.push_str(line);
        }
    }
    let label = label.ok_or_else(|| DevKeyError("no PEM block".into()))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| DevKeyError(format!("PEM body: {e}")))?;
    Ok((label, der))
}

/// The raw 32-byte Ed25519 public key of a PEM public key (SPKI) or of a
/// PKCS#8 private key (as `up` writes them).
fn ed25519_public_key(pem: &str) -> Result<Vec<u8>, DevKeyError> {
    let (label, der) = pem_der(pem)?;
    match label.as_str() {
        "PUBLIC KEY" => der
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .filter(|key| key.len() == 32)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| DevKeyError("not an Ed25519 public key".into())),
        "PRIVATE KEY" => {
            let pair = Ed25519KeyPair::from_pkcs8(&der)
                .map_err(|e| DevKeyError(format!("not an Ed25519 PKCS#8 key: {e}")))?;
            Ok(pair.public_key().as_ref().to_vec())
        }
        other => Err(DevKeyError(format!(
            "a PEM {other:?} block; expected PUBLIC KEY or PRIVATE KEY"
        ))),
    }
}

/// A JWKS document (`{"keys": [...]}`) of Ed25519 keys, each given as
/// (`kid`, PEM public or private key) — what a mesh (Istio's
/// `RequestAuthentication.jwks`) or any JWKS consumer needs to verify the
/// tokens these keys sign. `kid` is what the services use too: the key
/// file's stem.
pub fn jwks(keys: &[(&str, &str)]) -> Result<serde_json::Value, DevKeyError> {
    use base64::Engine;
    let keys = keys
        .iter()
        .map(|(kid, pem)| {
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(ed25519_public_key(pem).map_err(|e| DevKeyError(format!("{kid}: {}", e.0)))?);
            Ok(json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}))
        })
        .collect::<Result<Vec<_>, DevKeyError>>()?;
    Ok(json!({ "keys": keys }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JwtVerifier;

    #[tokio::test]
    async fn the_jwks_of_a_key_verifies_what_the_key_signs()
    -> Result<(), Box<dyn std::error::Error>> {
        let pair = generate()?;
        let token = mint(
            &pair.private_pem,
            "k1",
            "mercato",
            "mercato",
            "u-1",
            &[],
            60,
        )?;
        for pem in [&pair.public_pem, &pair.private_pem] {
            let document = jwks(&[("k1", pem)])?;
            assert_eq!(document["keys"][0]["kid"], "k1");
            let dir = tempfile::tempdir()?;
            let file = dir.path().join("jwks.json");
            std::fs::write(&file, document.to_string())?;
            let verifier = JwtVerifier::new(crate::jwt::JwtSettings {
                jwks_file: Some(file),
                ..crate::jwt::JwtSettings::default()
            })?;
            assert_eq!(&*verifier.verify(&token).await?.subject, "u-1");
        }
        assert!(
            jwks(&[(
                "k",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
            )])
            .is_err()
        );
        assert!(jwks(&[("k", "no pem")]).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn generated_keys_sign_tokens_the_verifier_accepts()
    -> Result<(), Box<dyn std::error::Error>> {
        let pair = generate()?;
        let token = mint(
            &pair.private_pem,
            "dev",
            "mercato",
            "mercato",
            "u-1",
            &["admin".into()],
            60,
        )?;
        let verifier =
            JwtVerifier::from_pem("dev", pair.public_pem.as_bytes(), "mercato", "mercato")?;
        let principal = verifier.verify(&token).await?;
        assert_eq!(
            (&*principal.subject, &*principal.roles),
            ("u-1", ["admin".to_owned()].as_slice())
        );
        Ok(())
    }
}
