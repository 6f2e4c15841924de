//! Load shedding: past the concurrency limit, calls are refused at once
//! with RESOURCE_EXHAUSTED while the admitted ones still succeed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mercato_platform::{Server, ServerSettings};
use mercato_proto::payment::v1::{
    self as pb,
    payment_service_client::PaymentServiceClient,
    payment_service_server::{PaymentService, PaymentServiceServer},
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, transport::Channel};

/// A service whose Charge takes half a second.
struct Slow;

#[tonic::async_trait]
impl PaymentService for Slow {
    async fn charge(
        &self,
        _: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Response::new(pb::ChargeResponse::default()))
    }

    async fn refund(
        &self,
        _: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn void_charge(
        &self,
        _: Request<pb::VoidChargeRequest>,
    ) -> Result<Response<pb::VoidChargeResponse>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn get_payment(
        &self,
        _: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn list_payments(
        &self,
        _: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn reconcile(
        &self,
        _: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_calls_are_shed_at_once_and_admitted_ones_succeed() {
    let settings = ServerSettings {
        max_concurrent_requests: 4,
        ..ServerSettings::ephemeral()
    };
    let mut server = Server::bind(settings).await.unwrap();
    server.add_service(PaymentServiceServer::new(Slow));
    let addr = server.grpc_addr();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone().cancelled_owned()));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut client = PaymentServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result = client.charge(pb::ChargeRequest::default()).await;
                (result.map(drop).map_err(|s| s.code()), started.elapsed())
            })
        })
        .collect();
    let (mut admitted, mut shed, mut slowest_shed) = (0, 0, Duration::ZERO);
    for call in calls {
        match call.await.unwrap() {
            (Ok(()), took) => {
                admitted += 1;
                assert!(took >= Duration::from_millis(500));
            }
            (Err(Code::ResourceExhausted), took) => {
                shed += 1;
                slowest_shed = slowest_shed.max(took);
            }
            (Err(code), _) => panic!("unexpected {code:?}"),
        }
    }
    println!(
        "20 calls at a limit of 4: {admitted} admitted, {shed} shed, slowest refusal {slowest_shed:?}"
    );
    assert_eq!((admitted, shed), (4, 16));
    // Refused at once, not queued until a slot frees (≥ 500 ms): a bound
    // on meaning, with room for a loaded machine (it once took 17 ms).
    assert!(
        slowest_shed < Duration::from_millis(250),
        "{slowest_shed:?}"
    );

    // Once the burst is over, calls are admitted again.
    PaymentServiceClient::new(channel)
        .charge(pb::ChargeRequest::default())
        .await
        .unwrap();
    stop.cancel();
}
