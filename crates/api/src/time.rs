//! Timestamps: stored as epoch microseconds, carried as seconds + nanos
//! (`google.protobuf.Timestamp`'s parts, built by each gRPC adapter).

use crate::validation::FieldViolation;

/// Limits of google.protobuf.Timestamp: 0001-01-01 to 9999-12-31.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// (seconds, nanos) of epoch microseconds.
pub fn to_parts(us: i64) -> (i64, i32) {
    // In 0..1e9 by construction of rem_euclid.
    (
        us.div_euclid(1_000_000),
        i32::try_from(us.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    )
}

/// Epoch microseconds of a request's timestamp at `field`, or a violation.
pub fn from_parts(field: &str, seconds: i64, nanos: i32) -> Result<i64, FieldViolation> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
        return Err(FieldViolation::new(
            field,
            "must be a valid timestamp between 0001-01-01 and 9999-12-31",
        ));
    }
    Ok(seconds * 1_000_000 + i64::from(nanos / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_reject_out_of_range() {
        for us in [0, 1, -1, 1_764_000_000_123_456] {
            let (seconds, nanos) = to_parts(us);
            assert_eq!(from_parts("t", seconds, nanos), Ok(us));
        }
        assert!(from_parts("t", i64::MAX, 0).is_err());
        assert!(from_parts("t", 0, -1).is_err());
    }
}
