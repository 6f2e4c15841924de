//! The order service: the catalog (products, stock) and orders, each placed
//! by a durable saga across the user and payment services.
//!
//! CreateOrder stores the order (PENDING) and its saga in one transaction,
//! then runs the saga (see [`sagas`]): validate the user → reserve stock →
//! charge → confirm, compensating in reverse on a refusal or after the saga
//! deadline. The saga's state is persisted before every external call and
//! leased to one replica, so a crash anywhere is recovered by another
//! replica or by the restarted process ([`mercato_saga`]). CreateOrder waits
//! for the outcome up to the call's deadline and otherwise answers PENDING
//! while the saga continues.
//!
//! Layers: [`grpc::OrderGrpc`] → [`orders::Orders`] → [`store::OrderStore`],
//! [`catalog::Catalog`], the sagas and [`peers::Peers`] (tonic clients).

pub mod app;
pub mod catalog;
pub mod domain;
pub mod error;
pub mod experiments;
pub mod grpc;
pub mod orders;
pub mod peers;
pub mod sagas;
pub mod store;

pub use app::{Settings, install, migrate, run};
pub use mercato_platform::StartError;
