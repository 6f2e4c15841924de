//! gRPC calls, observed from both ends: tower layers for tonic servers
//! ([`GrpcServerLayer`]) and clients ([`GrpcClientLayer`]).
//!
//! Each call gets a span (`grpc.server` / `grpc.client`, named
//! `package.Service/Method`, with the `rpc.*` attributes and the status
//! code), the W3C trace context and `x-request-id` cross the wire in
//! metadata, and the grpc-ecosystem metrics that stock dashboards query are
//! kept:
//!
//! | metric | labels |
//! | --- | --- |
//! | `grpc_{server,client}_started_total` | `grpc_type`, `grpc_service`, `grpc_method` |
//! | `grpc_{server,client}_handled_total` | the same and `grpc_code` (`OK`, `NotFound`, …) |
//! | `grpc_{server,client}_handling_seconds` | histogram; `grpc_type`, `grpc_service`, `grpc_method` |
//! | `grpc_{server,client}_msg_received_total`, `…_msg_sent_total` | `grpc_type`, `grpc_service`, `grpc_method` |
//!
//! Label values come only from [`GrpcMethods`] — the methods compiled into
//! the binary — and the fixed code names: a call to a method the process
//! does not know is counted as `grpc_service="unknown"`, so request data
//! can never create a time series. Message counts are exact: the layers
//! count the length-prefixed gRPC messages in the bodies.

mod body;
mod client;
mod framing;
mod methods;
mod metrics;
mod server;

pub use body::ObservedBody;
pub use client::{GrpcClient, GrpcClientLayer};
pub use methods::{GrpcMethods, MethodInfo, MethodKind};
pub use metrics::{GrpcMetrics, Side, code_name};
pub use server::{GrpcServer, GrpcServerLayer};

/// The error type of the layers' services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
