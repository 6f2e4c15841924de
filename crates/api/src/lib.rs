//! The API conventions every mercato service shares, as plain Rust (no
//! gRPC, no protobuf: each service's adapter converts): [`FieldViolation`]s
//! for invalid requests, [`Money`] in integer minor units, AIP-158
//! [`pagination`] (page sizes, opaque tokens, pages) and [`time`]stamps.

#![forbid(unsafe_code)]

pub mod money;
pub mod pagination;
pub mod time;
pub mod validation;

pub use money::{Amounts, Money};
pub use validation::FieldViolation;
