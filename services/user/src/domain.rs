//! The user domain: value types that can only hold valid data, and the rules
//! that make them so. No tonic, no SQL here.

use mercato_api::FieldViolation;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest accepted email address (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
const MAX_LANGUAGE_LEN: usize = 35;
const MAX_TIMEZONE_LEN: usize = 64;

/// A user's id: a UUID, kept in its canonical lower-case text form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserId(String);

impl UserId {
    /// A fresh time-ordered id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }

    /// Parses `field` as a UUID.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldViolation> {
        if value.is_empty() {
            return Err(FieldViolation::new(field, "is required"));
        }
        Uuid::try_parse(value)
            .map(|id| Self(id.to_string()))
            .map_err(|_| FieldViolation::new(field, "must be a UUID"))
    }

    /// Wraps an id read back from storage.
    pub(crate) fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The canonical text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A syntactically valid email address, normalised to lower case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email(String);

impl Email {
    /// Validates and normalises.
    pub fn parse(value: &str) -> Result<Self, FieldViolation> {
        let value = value.trim();
        if value.is_empty() {
            return Err(FieldViolation::new("email", "is required"));
        }
        if value.len() > MAX_EMAIL_LEN {
            return Err(FieldViolation::new(
                "email",
                format!("must be at most {MAX_EMAIL_LEN} characters"),
            ));
        }
        let invalid =
            || FieldViolation::new("email", "must be an email address like name@example.com");
        // A shop mails its users: require a dotted DNS name (not a bare host or
        // an IP literal, which RFC 5322 allows) and no display text.
        let options = email_address::Options {
            allow_display_text: false,
            ..email_address::Options::default()
        }
        .with_required_tld()
        .without_domain_literal();
        if value.chars().any(char::is_whitespace)
            || email_address::EmailAddress::parse_with_options(value, options).is_err()
        {
            return Err(invalid());
        }
        Ok(Self(value.to_lowercase()))
    }

    pub(crate) fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: trimmed, 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullName(String);

impl FullName {
    /// Validates and trims.
    pub fn parse(value: &str) -> Result<Self, FieldViolation> {
        let value = value.trim();
        let chars = value.chars().count();
        if chars == 0 {
            return Err(FieldViolation::new("full_name", "is required"));
        }
        if chars > MAX_NAME_CHARS {
            return Err(FieldViolation::new(
                "full_name",
                format!("must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(FieldViolation::new(
                "full_name",
                "must not contain control characters",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub(crate) fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lifecycle state of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserStatus {
    /// May sign in and order.
    Active,
    /// Soft-deleted.
    Inactive,
    /// Blocked by an operator.
    Suspended,
}

impl UserStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
            Self::Suspended => "SUSPENDED",
        }
    }

    /// Reads the stored form.
    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "ACTIVE" => Some(Self::Active),
            "INACTIVE" => Some(Self::Inactive),
            "SUSPENDED" => Some(Self::Suspended),
            _ => None,
        }
    }
}

/// Per-user settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    /// BCP 47 tag or empty.
    pub language: String,
    /// IANA zone name or empty.
    pub timezone: String,
    /// Opted in to notification emails.
    pub email_notifications: bool,
}

/// Checks a BCP 47-looking tag (`en`, `pt-BR`, `zh-Hant-TW`); empty is allowed.
pub fn validate_language(field: &str, value: &str) -> Result<(), FieldViolation> {
    let ok = value.len() <= MAX_LANGUAGE_LEN
        && value.split('-').all(|part| {
            !part.is_empty() && part.len() <= 8 && part.chars().all(|c| c.is_ascii_alphanumeric())
        });
    if value.is_empty() || ok {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            format!(
                "must be a BCP 47 language tag such as \"en\" or \"pt-BR\", at most {MAX_LANGUAGE_LEN} characters"
            ),
        ))
    }
}

/// Checks an IANA-looking zone name (`UTC`, `Europe/Paris`, `Etc/GMT+3`); empty is allowed.
pub fn validate_timezone(field: &str, value: &str) -> Result<(), FieldViolation> {
    let ok = value.len() <= MAX_TIMEZONE_LEN
        && value.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
        });
    if value.is_empty() || ok {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            format!(
                "must be an IANA time zone such as \"Europe/Paris\", at most {MAX_TIMEZONE_LEN} characters"
            ),
        ))
    }
}

impl Preferences {
    /// Validates every field, naming them under `prefix` (e.g. `preferences`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldViolation> {
        [
            validate_language(&format!("{prefix}.language"), &self.language),
            validate_timezone(&format!("{prefix}.timezone"), &self.timezone),
        ]
        .into_iter()
        .filter_map(Result::err)
        .collect()
    }
}

/// A user of record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub full_name: FullName,
    pub status: UserStatus,
    pub preferences: Preferences,
    /// Epoch microseconds.
    pub created_at_us: i64,
    /// Epoch microseconds.
    pub updated_at_us: i64,
    /// Incremented on every write; caches keep the highest they have seen.
    pub version: i64,
}

/// A validated registration.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: Email,
    pub full_name: FullName,
    pub preferences: Preferences,
}

/// A validated partial update: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    pub full_name: Option<FullName>,
    pub language: Option<String>,
    pub timezone: Option<String>,
    pub email_notifications: Option<bool>,
}

impl UserPatch {
    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Names of the fields this patch sets, for the `user.updated` event.
    pub fn changed_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.full_name.is_some() {
            out.push("full_name");
        }
        if self.language.is_some() {
            out.push("preferences.language");
        }
        if self.timezone.is_some() {
            out.push("preferences.timezone");
        }
        if self.email_notifications.is_some() {
            out.push("preferences.email_notifications");
        }
        out
    }
}

pub use mercato_activity::now_us;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_rules() {
        assert_eq!(
            Email::parse(" Ada@Example.COM ").map(|e| e.0),
            Ok("ada@example.com".into())
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "a b@example.com",
            "ada@[127.0.0.1]",
            "Ada <ada@example.com>",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn name_rules() {
        assert_eq!(
            FullName::parse("  Ada Lovelace ").map(|n| n.0),
            Ok("Ada Lovelace".into())
        );
        assert!(FullName::parse("   ").is_err());
        assert!(FullName::parse(&"é".repeat(100)).is_ok());
        assert!(FullName::parse(&"é".repeat(101)).is_err());
        assert!(FullName::parse("Ada\u{0}").is_err());
    }

    #[test]
    fn id_and_preference_rules() {
        assert!(UserId::parse("user_id", "").is_err());
        assert!(UserId::parse("user_id", "42").is_err());
        let id = UserId::generate();
        assert_eq!(
            UserId::parse("user_id", &id.as_str().to_uppercase()),
            Ok(id)
        );
        assert!(validate_language("l", "pt-BR").is_ok());
        assert!(validate_language("l", "pt_BR").is_err());
        assert!(validate_timezone("t", "America/Argentina/Buenos_Aires").is_ok());
        assert!(validate_timezone("t", "../etc/passwd").is_err());
    }
}
