//! AIP-158 pagination: page size rules and opaque page tokens.
//!
//! A token is URL-safe base64 of `<kind>:<cursor>`. The kind ties a token to
//! the list call that issued it, so a token from ListUsers given to
//! ListProducts is rejected instead of silently misread. Tokens are opaque to
//! clients but not secret: they carry only the last id of the previous page.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::validation::FieldViolation;

/// Page size used when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Larger requested page sizes are lowered to this (AIP-158 coerces rather
/// than rejects).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The effective page size for a requested one, or a violation of
/// `page_size` if it is negative.
pub fn page_size(requested: i32) -> Result<u32, FieldViolation> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(FieldViolation::new(
            "page_size",
            "must not be negative (0 means the default of 50)",
        )),
        n => Ok(n.unsigned_abs().min(MAX_PAGE_SIZE)),
    }
}

/// Encodes the cursor after which the next page starts.
pub fn encode_token(kind: &str, cursor: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{cursor}"))
}

/// Decodes a page token issued by [`encode_token`] with the same `kind`.
/// An empty token means the first page (`Ok(None)`).
pub fn decode_token(kind: &str, token: &str) -> Result<Option<String>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        FieldViolation::new(
            "page_token",
            "is not a token returned by this call's next_page_token",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    match text.split_once(':') {
        Some((k, cursor)) if k == kind && !cursor.is_empty() => Ok(Some(cursor.to_owned())),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_caps_and_rejects_negative() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(7), Ok(7));
        assert_eq!(page_size(i32::MAX), Ok(MAX_PAGE_SIZE));
        assert_eq!(page_size(-1).map_err(|v| v.field), Err("page_size".into()));
    }

    #[test]
    fn tokens_round_trip_and_reject_foreign_or_garbage() {
        let token = encode_token("users", "0190-abc");
        assert_eq!(decode_token("users", &token), Ok(Some("0190-abc".into())));
        assert_eq!(decode_token("users", ""), Ok(None));
        assert!(decode_token("products", &token).is_err());
        assert!(decode_token("users", "%%%").is_err());
        assert!(decode_token("users", &encode_token("users", "")).is_err());
    }
}
