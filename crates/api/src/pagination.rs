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

/// One page of a list: its items and, when more follow, the cursor that
/// the next page starts after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// The page in `fetched`, read with a limit of `page_size + 1`: an item
    /// beyond `page_size` only tells that another page follows. `cursor`
    /// names an item for the next page to start after.
    pub fn of(mut fetched: Vec<T>, page_size: u32, cursor: impl Fn(&T) -> String) -> Self {
        let size = usize::try_from(page_size).unwrap_or(usize::MAX);
        let next = if fetched.len() > size {
            fetched.truncate(size);
            fetched.last().map(cursor)
        } else {
            None
        };
        Self {
            items: fetched,
            next,
        }
    }

    /// The next page's token for list call `kind` (empty on the last page).
    pub fn next_token(&self, kind: &str) -> String {
        self.next
            .as_deref()
            .map(|cursor| encode_token(kind, cursor))
            .unwrap_or_default()
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
    fn a_page_keeps_page_size_items_and_says_whether_more_follow() {
        let page = Page::of(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(
            (page.items.as_slice(), page.next.as_deref()),
            ([1, 2].as_slice(), Some("2"))
        );
        let last = Page::of(vec![1, 2], 2, |n| n.to_string());
        assert_eq!((last.items.len(), last.next.as_deref()), (2, None));
        assert_eq!(last.next_token("n"), "");
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
