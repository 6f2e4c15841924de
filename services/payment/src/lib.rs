//! The payment service: Charge and Refund against a payment provider, with
//! Stripe-style idempotency keys and a ledger of every capture, decline and
//! refund.
//!
//! Guarantees: one capture per idempotency key whatever the retries or
//! concurrency (the key's primary key decides, not a read-before-write);
//! the same key with other parameters is ALREADY_EXISTS; a concurrent
//! request with a key in flight gets ABORTED; refunds never exceed the
//! capture (a CHECK constraint backs the conditional update); a provider
//! failure releases the key and answers UNAVAILABLE with `google.rpc.ErrorInfo`
//! reason `PROVIDER_UNAVAILABLE`, meaning nothing moved.
//!
//! Layers: [`grpc::PaymentGrpc`] → [`payments::Payments`] → [`store::PaymentStore`]
//! and [`provider::PaymentProvider`] (built in: [`provider::SimulatedProvider`]).

pub mod app;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod payments;
pub mod provider;
pub mod reconcile;
pub mod reconciliation;
pub mod store;

pub use app::{Settings, install, install_with, migrate, run};
pub use mercato_platform::StartError;
