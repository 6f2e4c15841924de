//! The error conventions every mercato API shares (DESIGN §3, AIP-193):
//! validation failures carry `google.rpc.BadRequest` field violations.

use mercato_api::FieldViolation;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` listing every violation.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    let summary = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {summary}"),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_travel_as_bad_request_details() {
        let status = invalid_argument(&[
            FieldViolation::new("email", "must be an email address"),
            FieldViolation::new("full_name", "must not be empty"),
        ]);
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad_request = status
            .get_details_bad_request()
            .expect("BadRequest detail present");
        let fields: Vec<_> = bad_request
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["email", "full_name"]);
        assert!(status.message().contains("email: must be an email address"));
    }
}
