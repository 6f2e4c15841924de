//! API key attacks through a real tonic server guarded by `AuthLayer`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
};

use mercato_auth::{
    AuthLayer, AuthSettings, JwtSettings, JwtVerifier, Policy,
    api_keys::{
        ApiKeyRecord, ApiKeyVerifier, KeyStore, KeyStoreUnavailable, LocalRateLimiter, StaticKeys,
        compose_key, issue,
    },
};
use mercato_proto::payment::v1::{
    self as pb,
    payment_service_client::PaymentServiceClient,
    payment_service_server::{PaymentService, PaymentServiceServer},
};
use tonic::{Code, Request, Response, Status, transport::Channel};
use tonic_types::StatusExt;

struct Ok;

#[tonic::async_trait]
impl PaymentService for Ok {
    async fn get_payment(
        &self,
        _: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        Result::Ok(Response::new(pb::GetPaymentResponse::default()))
    }
    async fn charge(
        &self,
        _: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        Result::Ok(Response::new(pb::ChargeResponse::default()))
    }
    async fn refund(
        &self,
        _: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        Result::Ok(Response::new(pb::RefundResponse::default()))
    }
    async fn void_charge(
        &self,
        _: Request<pb::VoidChargeRequest>,
    ) -> Result<Response<pb::VoidChargeResponse>, Status> {
        Result::Ok(Response::new(pb::VoidChargeResponse::default()))
    }
    async fn list_payments(
        &self,
        _: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        Result::Ok(Response::new(pb::ListPaymentsResponse::default()))
    }
    async fn reconcile(
        &self,
        _: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        Result::Ok(Response::new(pb::ReconcileResponse::default()))
    }
}

async fn charge(client: &PaymentServiceClient<Channel>, key: &str) -> Result<(), Status> {
    let mut request = Request::new(pb::ChargeRequest::default());
    request
        .metadata_mut()
        .insert("x-api-key", key.parse().unwrap());
    client.clone().charge(request).await.map(drop)
}

/// A payment server guarded by `layer`, and a client of it.
async fn serve(layer: AuthLayer) -> PaymentServiceClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(PaymentServiceServer::new(Ok))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    PaymentServiceClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn api_key_attacks() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let service = issue("order-service", vec!["service".into()], None, 0).unwrap();
    let expired = issue("old-integration", vec!["service".into()], Some(now - 1), 0).unwrap();
    let mut revoked = issue("leaked", vec!["service".into()], None, 0).unwrap();
    revoked.record.revoked_at = Some(now - 60);
    let limited = issue("batch-job", vec!["service".into()], None, 3).unwrap();
    let reader = issue("dashboard", vec!["user".into()], None, 0).unwrap();
    let store = StaticKeys(
        [&service, &expired, &revoked, &limited, &reader]
            .into_iter()
            .map(|k| (k.record.id.clone(), k.record.clone()))
            .collect::<HashMap<_, _>>(),
    );
    // The stored table holds no key and no secret in plaintext.
    let stored = format!("{:?}", store.0);
    for key in [&service, &expired, &revoked, &limited, &reader] {
        let secret = &key.key[3 + 12 + 1..3 + 12 + 1 + 32];
        assert!(
            !stored.contains(&key.key) && !stored.contains(secret),
            "plaintext in the key table"
        );
    }

    let keys_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let jwt = JwtVerifier::new(JwtSettings {
        public_key_files: vec![keys_dir.join("rsa-old.pub.pem")],
        ..JwtSettings::default()
    })
    .unwrap();
    let layer = AuthLayer::new(Arc::new(jwt), Arc::new(Policy::default()))
        .with_api_keys(Arc::new(ApiKeyVerifier::new(store)));
    let client = serve(layer).await;

    charge(&client, &service.key)
        .await
        .expect("a valid service key may charge");
    let wrong_secret = compose_key(&service.record.id, &"x".repeat(32));
    let mut typo = service.key.clone();
    typo.replace_range(20..21, if &typo[20..21] == "a" { "b" } else { "a" });
    let attacks = [
        (
            "right prefix and id, wrong secret",
            wrong_secret,
            Code::Unauthenticated,
        ),
        ("mistyped key (checksum)", typo, Code::Unauthenticated),
        ("expired key", expired.key.clone(), Code::Unauthenticated),
        ("revoked key", revoked.key.clone(), Code::Unauthenticated),
        (
            "unknown key id",
            compose_key("ZZZZZZZZZZZZ", &"y".repeat(32)),
            Code::Unauthenticated,
        ),
        (
            "valid key, role without payment:write",
            reader.key.clone(),
            Code::PermissionDenied,
        ),
    ];
    for (name, key, code) in &attacks {
        let status = charge(&client, key).await.expect_err(name);
        assert_eq!(status.code(), *code, "{name}: {status:?}");
        println!("attack {name:<40} -> {:?}", status.code());
    }

    for _ in 0..3 {
        charge(&client, &limited.key)
            .await
            .expect("within the rate");
    }
    let status = charge(&client, &limited.key).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry = status.get_details_retry_info().expect("RetryInfo detail");
    assert!(
        retry
            .retry_delay
            .is_some_and(|d| d <= std::time::Duration::from_millis(334))
    );
    println!(
        "attack {:<40} -> {:?} (retry after {:?})",
        "rate limit reached",
        status.code(),
        retry.retry_delay
    );
}

/// Counts the lookups that reach it; knows no key.
#[derive(Clone, Default)]
struct Counting(Arc<std::sync::atomic::AtomicUsize>);

#[tonic::async_trait]
impl KeyStore for Counting {
    async fn find(&self, _: &str) -> Result<Option<ApiKeyRecord>, KeyStoreUnavailable> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Result::Ok(None)
    }
}

/// The checksum is public, so anyone can mint well-formed keys with new
/// ids (which the unknown-id cache cannot stop): with the shipped limits a
/// peer's made-up keys cost at most its 20 failed authentications of store
/// lookups, then RESOURCE_EXHAUSTED without one.
#[tokio::test]
async fn made_up_keys_with_new_ids_cost_a_bounded_number_of_store_queries() {
    let keys_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let store = Counting::default();
    // The order service's key, from settings, as every service has it.
    let service = issue("order-service", vec!["service".into()], None, 0).unwrap();
    let layer = AuthSettings {
        jwt: JwtSettings {
            public_key_files: vec![keys_dir.join("rsa-old.pub.pem")],
            ..JwtSettings::default()
        },
        api_keys: vec![service.record.clone()],
        ..AuthSettings::default()
    }
    .layer_with(store.clone(), LocalRateLimiter::default())
    .unwrap();
    let client = serve(layer).await;
    let mut codes = BTreeMap::new();
    for _ in 0..200 {
        let made_up = issue("nobody", vec!["service".into()], None, 0)
            .unwrap()
            .key;
        let status = charge(&client, &made_up).await.unwrap_err();
        *codes.entry(format!("{:?}", status.code())).or_insert(0) += 1;
    }
    let queries = store.0.load(std::sync::atomic::Ordering::SeqCst);
    println!("200 made-up keys -> {codes:?}, {queries} store queries");
    assert!(queries <= 21, "{queries} store queries");
    assert!(
        codes.get("ResourceExhausted").is_some_and(|n| *n >= 179),
        "{codes:?}"
    );
    // Behind a sidecar every caller shares one address: the service's own
    // key, which costs nothing to check, is checked and passes anyway.
    charge(&client, &service.key)
        .await
        .expect("a key from settings passes whatever its address's failures");
}
