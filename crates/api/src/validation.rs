//! Validation failures (DESIGN §3, AIP-193): each names the request field
//! and what is wrong with it; a service's gRPC adapter sends them as
//! `google.rpc.BadRequest` field violations.

/// One invalid request field: its path (`items[2].quantity`) and what is
/// wrong with it, in words a client developer can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request message.
    pub field: String,
    /// What is wrong and what is allowed.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}
