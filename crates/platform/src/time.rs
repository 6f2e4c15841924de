//! `google.protobuf.Timestamp` ⇄ epoch microseconds, the storage form.

use prost_types::Timestamp;

use crate::grpc_errors::FieldViolation;

/// Limits of google.protobuf.Timestamp: 0001-01-01 to 9999-12-31.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// The Timestamp for epoch microseconds.
pub fn timestamp_from_us(us: i64) -> Timestamp {
    Timestamp {
        seconds: us.div_euclid(1_000_000),
        // In 0..1e9 by construction of rem_euclid.
        nanos: i32::try_from(us.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// Epoch microseconds for a request's Timestamp at `field`, or a violation.
pub fn timestamp_to_us(field: &str, t: &Timestamp) -> Result<i64, FieldViolation> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(FieldViolation::new(
            field,
            "must be a valid timestamp between 0001-01-01 and 9999-12-31",
        ));
    }
    Ok(t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_reject_out_of_range() {
        for us in [0, 1, -1, 1_764_000_000_123_456] {
            assert_eq!(timestamp_to_us("t", &timestamp_from_us(us)), Ok(us));
        }
        let bad = Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert!(timestamp_to_us("t", &bad).is_err());
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(timestamp_to_us("t", &bad).is_err());
    }
}
