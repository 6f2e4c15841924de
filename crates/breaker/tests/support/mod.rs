//! A deliberately flaky gRPC server for the resilience tests.

#![allow(dead_code, unreachable_pub)]

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tonic::{Code, Request, Response, Status};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{Health, HealthServer},
};

/// Answers Check with the configured code (0 = OK) after the configured
/// delay; with `fail_percent` set, only that share of calls fails (spread
/// evenly), the others succeed.
#[derive(Clone, Default)]
pub struct Flaky {
    pub code: Arc<AtomicU32>,
    pub delay_ms: Arc<AtomicU64>,
    pub fail_percent: Arc<AtomicU32>,
    pub calls: Arc<AtomicU32>,
    /// A `google.rpc.ErrorInfo` reason the errors carry, if any.
    pub reason: Arc<Mutex<Option<&'static str>>>,
    /// When the last handler future was dropped (finished or cancelled).
    pub last_drop: Arc<Mutex<Option<Instant>>>,
}

struct DropClock(Arc<Mutex<Option<Instant>>>);

impl Drop for DropClock {
    fn drop(&mut self) {
        if let Ok(mut at) = self.0.lock() {
            *at = Some(Instant::now());
        }
    }
}

#[tonic::async_trait]
impl Health for Flaky {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let _clock = DropClock(self.last_drop.clone());
        tokio::time::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))).await;
        let percent = self.fail_percent.load(Ordering::SeqCst);
        // Evenly spread failures: call n fails when (n * 37) % 100 < percent.
        let fails = percent == 0 || (n * 37) % 100 < percent;
        match self.code.load(Ordering::SeqCst) {
            code if code != 0 && fails => {
                let code = Code::from_i32(code as i32);
                match *self.reason.lock().unwrap() {
                    Some(reason) => {
                        let mut details = tonic_types::ErrorDetails::new();
                        details.set_error_info(reason, "test", std::collections::HashMap::new());
                        Err(<Status as tonic_types::StatusExt>::with_error_details(
                            code, "flaky", details,
                        ))
                    }
                    None => Err(Status::new(code, "flaky")),
                }
            }
            _ => Ok(Response::new(HealthCheckResponse {
                status: ServingStatus::Serving.into(),
            })),
        }
    }

    type WatchStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

pub async fn serve(flaky: Flaky) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(flaky))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}
