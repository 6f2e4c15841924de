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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JwtVerifier;

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
