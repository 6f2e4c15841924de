//! A/B experiments as a library: no server, no storage, no clock of its own.
//!
//! - [`model`]: an [`Experiment`] (weighted [`Variant`]s, a traffic share,
//!   [`Targeting`], a [`Status`] with its legal transitions, forced variants
//!   for named users) and what a caller tells about a user ([`Attributes`]);
//! - [`validate`]: every rule an experiment must keep, as field violations
//!   (weights summing to 100, unique variant keys, traffic 0–100, end after
//!   start, a control that is a variant, parseable app versions);
//! - [`assign`]: the assignment, a pure function of the experiment (key,
//!   salt, configuration), the user id and the attributes — every replica and
//!   every restart agrees without a database write. Two independent hashes
//!   to 10 000 buckets: one decides enrolment (bucket < traffic share), the
//!   other the variant (cumulative weights), so raising the traffic share
//!   enrols new users and moves nobody already enrolled;
//! - [`stats`]: sample-ratio mismatch (chi-square against the weights) and
//!   each variant's difference from control (two-proportion z-test);
//! - [`propagation`]: the `x-ab-variant` header, read by a server layer into
//!   the request's extensions, answered back, and passed on by a client
//!   layer, so a downstream service keeps the caller's variant.
//!
//! Unlike the article's sketch (one MD5 byte mod 100, biased towards the
//! first 56 buckets; a Go map iterated to pick the variant, so not even
//! consistent), buckets come from 64 bits of SHA-256 and variants are
//! walked in their declared order.

pub mod assign;
pub mod model;
pub mod propagation;
pub mod stats;
pub mod validate;

pub use assign::{Assignment, Reason, assign, bucket};
pub use model::{Attributes, Experiment, Status, Targeting, TransitionError, Variant};
pub use validate::{FieldViolation, is_key_text, validate};
