//! Money as the API carries it (DESIGN §3): an ISO 4217 code and an integer
//! amount of minor units. Never floating point.

use mercato_proto::common::v1 as pb;

use crate::grpc_errors::FieldViolation;

/// A validated amount of money.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Money {
    /// Three upper-case ASCII letters, e.g. `USD`.
    pub currency: String,
    /// Minor units (cents).
    pub minor: i64,
}

impl Money {
    /// Validates `value` found at `field`; `positive` demands an amount > 0
    /// (charges, refunds), otherwise >= 0 (prices).
    pub fn parse(
        field: &str,
        value: Option<&pb::Money>,
        positive: bool,
    ) -> Result<Self, FieldViolation> {
        let Some(value) = value else {
            return Err(FieldViolation::new(field, "is required"));
        };
        let code = &value.currency_code;
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(FieldViolation::new(
                format!("{field}.currency_code"),
                "must be a three-letter upper-case ISO 4217 code such as \"USD\"",
            ));
        }
        let ok = if positive {
            value.amount_minor > 0
        } else {
            value.amount_minor >= 0
        };
        if !ok {
            let rule = if positive {
                "must be greater than 0"
            } else {
                "must not be negative"
            };
            return Err(FieldViolation::new(format!("{field}.amount_minor"), rule));
        }
        Ok(Self {
            currency: code.clone(),
            minor: value.amount_minor,
        })
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::Money {
        pb::Money {
            currency_code: self.currency.clone(),
            amount_minor: self.minor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(code: &str, minor: i64) -> pb::Money {
        pb::Money {
            currency_code: code.into(),
            amount_minor: minor,
        }
    }

    #[test]
    fn money_rules() {
        assert_eq!(
            Money::parse("amount", Some(&m("EUR", 1)), true).map(|m| m.minor),
            Ok(1)
        );
        assert_eq!(
            Money::parse("price", Some(&m("EUR", 0)), false).map(|m| m.minor),
            Ok(0)
        );
        let field = |r: Result<Money, FieldViolation>| r.err().map(|v| v.field);
        assert_eq!(
            field(Money::parse("amount", None, true)),
            Some("amount".into())
        );
        assert_eq!(
            field(Money::parse("amount", Some(&m("eur", 1)), true)),
            Some("amount.currency_code".into())
        );
        assert_eq!(
            field(Money::parse("amount", Some(&m("EURO", 1)), true)),
            Some("amount.currency_code".into())
        );
        assert_eq!(
            field(Money::parse("amount", Some(&m("EUR", 0)), true)),
            Some("amount.amount_minor".into())
        );
        assert_eq!(
            field(Money::parse("price", Some(&m("EUR", -1)), false)),
            Some("price.amount_minor".into())
        );
    }
}
