//! The error conventions every mercato API shares (DESIGN §3, AIP-193):
//! validation failures carry `google.rpc.BadRequest` field violations.

use mercato_api::FieldViolation;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Violations sent in `google.rpc.BadRequest` at most (and named in the
/// message at most): a status travels in HTTP/2 headers, and clients
/// refuse header blocks past 16 KiB (tonic's and grpc-go's default), so a
/// request with a thousand bad fields must not make its answer unreadable.
const MAX_DETAILED: usize = 10;
const MAX_SUMMARIZED: usize = 5;
/// Longest field path / description sent, in bytes (they may quote the
/// request).
const MAX_FIELD_BYTES: usize = 64;
const MAX_DESCRIPTION_BYTES: usize = 200;

/// `text` cut to at most `max` bytes at a character boundary, with an
/// ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` listing the violations
/// (the first [`MAX_DETAILED`], each cut to a readable length; the message
/// names the first few and counts the rest).
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let shown: Vec<(String, String)> = violations
        .iter()
        .take(MAX_DETAILED)
        .map(|v| {
            (
                cut(&v.field, MAX_FIELD_BYTES),
                cut(&v.description, MAX_DESCRIPTION_BYTES),
            )
        })
        .collect();
    let mut details = ErrorDetails::new();
    for (field, description) in &shown {
        details.add_bad_request_violation(field.clone(), description.clone());
    }
    let mut summary = shown
        .iter()
        .take(MAX_SUMMARIZED)
        .map(|(field, description)| format!("{field}: {description}"))
        .collect::<Vec<_>>()
        .join("; ");
    if violations.len() > MAX_SUMMARIZED {
        summary.push_str(&format!(
            "; and {} more (google.rpc.BadRequest lists {})",
            violations.len() - MAX_SUMMARIZED,
            shown.len()
        ));
    }
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

    /// Found by `crates/cli/tests/fuzz_grpc.rs`: an UpdateUser whose mask
    /// named long unknown paths got an answer whose headers tonic's client
    /// refused (PROTOCOL_ERROR) instead of INVALID_ARGUMENT.
    #[test]
    fn any_number_of_long_violations_fits_in_what_clients_accept() {
        let long = "🙂é".repeat(2000);
        let violations: Vec<_> = (0..1000)
            .map(|i| {
                FieldViolation::new(
                    format!("update_mask.paths[{i}]{long}"),
                    format!("unknown path {long:?}"),
                )
            })
            .collect();
        let status = invalid_argument(&violations);
        let response = status.clone().into_http::<()>();
        let header_bytes: usize = response
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        assert!(header_bytes < 12 * 1024, "{header_bytes} bytes of headers");
        let listed = status.get_details_bad_request().expect("details");
        assert_eq!(listed.field_violations.len(), MAX_DETAILED);
        assert!(
            status.message().contains("and 995 more"),
            "{}",
            status.message()
        );
    }
}
