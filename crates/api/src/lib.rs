//! The API conventions every mercato service shares, as plain Rust (no
//! gRPC, no protobuf: each service's adapter converts): [`FieldViolation`]s
//! for invalid requests, [`Money`] in integer minor units, AIP-158
//! [`pagination`] (page sizes, opaque tokens, pages), [`time`]stamps, and
//! [`Secret`] setting values that are never printed.

#![forbid(unsafe_code)]

pub mod money;
pub mod pagination;
pub mod secret;
pub mod time;
pub mod validation;

pub use money::{Amounts, Money};
pub use secret::Secret;
pub use validation::FieldViolation;
