//! Money as the API carries it (DESIGN §3): an ISO 4217 code and an integer
//! amount of minor units. Never floating point.

use crate::validation::FieldViolation;

/// A validated amount of money.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Money {
    /// Three upper-case ASCII letters, e.g. `USD`.
    pub currency: String,
    /// Minor units (cents).
    pub minor: i64,
}

/// Which amounts a field allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amounts {
    /// More than zero (charges, refunds).
    Positive,
    /// Zero or more (prices).
    NonNegative,
}

impl Money {
    /// Validates the amount found at `field` (`None`: the field is unset).
    pub fn new(
        field: &str,
        value: Option<(&str, i64)>,
        allowed: Amounts,
    ) -> Result<Self, FieldViolation> {
        let Some((code, minor)) = value else {
            return Err(FieldViolation::new(field, "is required"));
        };
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(FieldViolation::new(
                format!("{field}.currency_code"),
                "must be a three-letter upper-case ISO 4217 code such as \"USD\"",
            ));
        }
        let (ok, rule) = match allowed {
            Amounts::Positive => (minor > 0, "must be greater than 0"),
            Amounts::NonNegative => (minor >= 0, "must not be negative"),
        };
        if !ok {
            return Err(FieldViolation::new(format!("{field}.amount_minor"), rule));
        }
        Ok(Self {
            currency: code.to_owned(),
            minor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_rules() {
        let positive = |v| Money::new("amount", v, Amounts::Positive);
        assert_eq!(positive(Some(("EUR", 1))).map(|m| m.minor), Ok(1));
        assert_eq!(
            Money::new("price", Some(("EUR", 0)), Amounts::NonNegative).map(|m| m.minor),
            Ok(0)
        );
        let field = |r: Result<Money, FieldViolation>| r.err().map(|v| v.field);
        assert_eq!(field(positive(None)), Some("amount".into()));
        assert_eq!(
            field(positive(Some(("eur", 1)))),
            Some("amount.currency_code".into())
        );
        assert_eq!(
            field(positive(Some(("EURO", 1)))),
            Some("amount.currency_code".into())
        );
        assert_eq!(
            field(positive(Some(("EUR", 0)))),
            Some("amount.amount_minor".into())
        );
        assert_eq!(
            field(Money::new("price", Some(("EUR", -1)), Amounts::NonNegative)),
            Some("price.amount_minor".into())
        );
    }
}
