//! The JWT attack suite, through a real tonic server guarded by `AuthLayer`,
//! and the RBAC matrix through the layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, jwk::Jwk};
use mercato_auth::{AuthLayer, AuthSettings, JwtSettings, JwtVerifier, Policy, Principal};
use mercato_proto::payment::v1::{
    self as pb,
    payment_service_client::PaymentServiceClient,
    payment_service_server::{PaymentService, PaymentServiceServer},
};
use serde_json::{Value, json};
use tonic::{Code, Request, Response, Status, transport::Channel};
use tonic_types::StatusExt;

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(name)).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({"sub": sub, "roles": roles, "iss": "mercato", "aud": "mercato", "iat": now(), "nbf": now(), "exp": now() + 300})
}

fn sign(kid: &str, key: &str, claims: &Value) -> String {
    let (alg, key) = if key.starts_with("ed") {
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&pem(key)).unwrap(),
        )
    } else {
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&pem(key)).unwrap(),
        )
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, claims, &key).unwrap()
}

/// A stand-in PaymentService: GetPayment answers with the caller's identity.
struct Echo;

#[tonic::async_trait]
impl PaymentService for Echo {
    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let principal = request
            .extensions()
            .get::<Principal>()
            .cloned()
            .expect("principal set by the layer");
        Ok(Response::new(pb::GetPaymentResponse {
            payment: Some(pb::Payment {
                user_id: principal.subject.to_string(),
                order_id: principal.roles.join(","),
                ..Default::default()
            }),
        }))
    }

    async fn charge(
        &self,
        _: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        Ok(Response::new(pb::ChargeResponse::default()))
    }

    async fn refund(
        &self,
        _: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        Ok(Response::new(pb::RefundResponse::default()))
    }

    async fn void_charge(
        &self,
        _: Request<pb::VoidChargeRequest>,
    ) -> Result<Response<pb::VoidChargeResponse>, Status> {
        Ok(Response::new(pb::VoidChargeResponse::default()))
    }

    async fn list_payments(
        &self,
        _: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        Ok(Response::new(pb::ListPaymentsResponse::default()))
    }
    async fn reconcile(
        &self,
        _: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        Ok(Response::new(pb::ReconcileResponse::default()))
    }
}

async fn serve(verifier: JwtVerifier) -> PaymentServiceClient<Channel> {
    serve_layer(AuthLayer::new(
        Arc::new(verifier),
        Arc::new(Policy::default()),
    ))
    .await
}

async fn serve_layer(layer: AuthLayer) -> PaymentServiceClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(PaymentServiceServer::new(Echo))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    PaymentServiceClient::new(channel)
}

async fn call(
    client: &PaymentServiceClient<Channel>,
    token: Option<&str>,
) -> Result<pb::Payment, Status> {
    call_as(client, token, None).await
}

/// A call with `token`, claiming to come from `peer` (`x-envoy-external-address`).
async fn call_as(
    client: &PaymentServiceClient<Channel>,
    token: Option<&str>,
    peer: Option<&str>,
) -> Result<pb::Payment, Status> {
    let mut request = Request::new(pb::GetPaymentRequest::default());
    if let Some(peer) = peer {
        request
            .metadata_mut()
            .insert("x-envoy-external-address", peer.parse().unwrap());
    }
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client
        .clone()
        .get_payment(request)
        .await
        .map(|r| r.into_inner().payment.unwrap())
}

fn settings(files: &[&str]) -> JwtSettings {
    JwtSettings {
        public_key_files: files.iter().map(|f| keys_dir().join(f)).collect(),
        ..JwtSettings::default()
    }
}

#[tokio::test]
async fn jwt_attacks_are_all_unauthenticated() {
    let client = serve(JwtVerifier::new(settings(&["rsa-old.pub.pem"])).unwrap()).await;
    let good = sign("rsa-old.pub", "rsa-old.key.pem", &claims("u-1", &["user"]));
    let echoed = call(&client, Some(&good))
        .await
        .expect("a valid token passes");
    assert_eq!(
        (echoed.user_id.as_str(), echoed.order_id.as_str()),
        ("u-1", "user"),
        "principal reaches the handler"
    );

    let segment = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let with = |patch: &dyn Fn(&mut Value)| {
        let mut c = claims("u-1", &["user"]);
        patch(&mut c);
        sign("rsa-old.pub", "rsa-old.key.pem", &c)
    };
    let parts: Vec<&str> = good.split('.').collect();
    let hs256_with_public_key = encode(
        &Header {
            kid: Some("rsa-old.pub".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims("u-1", &["admin"]),
        &EncodingKey::from_secret(&pem("rsa-old.pub.pem")),
    )
    .unwrap();
    let attacks: Vec<(&str, String)> = vec![
        (
            "alg=none",
            format!(
                "{}.{}.",
                segment(&json!({"alg": "none", "typ": "JWT"})),
                segment(&claims("u-1", &["admin"]))
            ),
        ),
        (
            "HS256 signed with the RSA public key",
            hs256_with_public_key,
        ),
        (
            "unknown kid",
            sign(
                "someone-elses-key",
                "rsa-new.key.pem",
                &claims("u-1", &["admin"]),
            ),
        ),
        (
            "signed by a key we do not trust",
            sign("rsa-old.pub", "rsa-new.key.pem", &claims("u-1", &["admin"])),
        ),
        (
            "expired beyond the leeway",
            with(&|c| c["exp"] = json!(now() - 31)),
        ),
        ("nbf in the future", with(&|c| c["nbf"] = json!(now() + 60))),
        ("wrong iss", with(&|c| c["iss"] = json!("evil"))),
        ("wrong aud", with(&|c| c["aud"] = json!("other-app"))),
        (
            "exp as a string",
            with(&|c| c["exp"] = json!((now() + 300).to_string())),
        ),
        (
            "missing exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "missing nbf",
            with(&|c| {
                c.as_object_mut().unwrap().remove("nbf");
            }),
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                segment(&claims("u-1", &["admin"])),
                parts[2]
            ),
        ),
        ("garbage", "not.a.jwt".into()),
    ];
    let mut observed = BTreeMap::new();
    for (name, token) in &attacks {
        let status = call(&client, Some(token)).await.expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        assert_eq!(
            status.message(),
            "invalid credentials",
            "{name}: no detail leaks"
        );
        observed.insert(*name, status.code());
    }
    let missing = call(&client, None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    observed.insert("no credentials", missing.code());
    // Within the leeway an expired token still passes (clock skew).
    call(&client, Some(&with(&|c| c["exp"] = json!(now() - 10))))
        .await
        .expect("within 30 s leeway");
    for (name, code) in observed {
        println!("attack {name:<40} -> {code:?}");
    }
}

#[tokio::test]
async fn a_jku_header_is_never_followed() {
    // An attacker's "key server": it must never be contacted.
    let bait = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bait_addr = bait.local_addr().unwrap();
    let contacted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = contacted.clone();
    tokio::spawn(async move {
        if bait.accept().await.is_ok() {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let client = serve(JwtVerifier::new(settings(&["rsa-old.pub.pem"])).unwrap()).await;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("attacker".into());
    header.jku = Some(format!("http://{bait_addr}/jwks.json"));
    let token = encode(
        &header,
        &claims("u-1", &["admin"]),
        &EncodingKey::from_rsa_pem(&pem("rsa-new.key.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        call(&client, Some(&token)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !contacted.load(std::sync::atomic::Ordering::SeqCst),
        "no outbound fetch"
    );
}

fn jwks(keys: &[(&str, &str)]) -> String {
    let keys: Vec<Jwk> = keys
        .iter()
        .map(|(kid, private)| {
            let mut jwk = Jwk::from_encoding_key(
                &EncodingKey::from_rsa_pem(&pem(private)).unwrap(),
                Algorithm::RS256,
            )
            .unwrap();
            jwk.common.key_id = Some((*kid).into());
            jwk
        })
        .collect();
    json!({"keys": keys}).to_string()
}

#[tokio::test]
async fn keys_rotate_without_rejecting_a_valid_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[("k-old", "rsa-old.key.pem")])).unwrap();
    let verifier = JwtVerifier::new(JwtSettings {
        jwks_file: Some(file.clone()),
        jwks_refresh_secs: 0,
        jwks_unknown_kid_refresh_secs: 0,
        ..JwtSettings::default()
    })
    .unwrap();
    let client = serve(verifier).await;
    let old = || sign("k-old", "rsa-old.key.pem", &claims("u-1", &["user"]));
    let new = || sign("k-new", "rsa-new.key.pem", &claims("u-1", &["user"]));

    let mut rejected_valid = 0;
    let mut check = |result: Result<pb::Payment, Status>, valid: bool| {
        if valid && result.is_err() {
            rejected_valid += 1;
        }
        if !valid {
            assert_eq!(result.unwrap_err().code(), Code::Unauthenticated);
        }
    };
    check(call(&client, Some(&old())).await, true);
    check(call(&client, Some(&new())).await, false);
    // Overlap: the issuer publishes both keys; tokens of either pass.
    std::fs::write(
        &file,
        jwks(&[("k-old", "rsa-old.key.pem"), ("k-new", "rsa-new.key.pem")]),
    )
    .unwrap();
    for _ in 0..5 {
        check(call(&client, Some(&new())).await, true);
        check(call(&client, Some(&old())).await, true);
    }
    // The old key is retired: after the next refresh its tokens fail.
    std::fs::write(&file, jwks(&[("k-new", "rsa-new.key.pem")])).unwrap();
    let _ = call(
        &client,
        Some(&sign(
            "k-unknown",
            "rsa-new.key.pem",
            &claims("u-1", &["user"]),
        )),
    )
    .await;
    check(call(&client, Some(&new())).await, true);
    check(call(&client, Some(&old())).await, false);
    assert_eq!(rejected_valid, 0, "0 valid tokens rejected during rotation");
}

#[tokio::test]
async fn ed25519_keys_verify_and_pem_algorithms_are_pinned() {
    let client = serve(JwtVerifier::new(settings(&["ed.pub.pem"])).unwrap()).await;
    call(
        &client,
        Some(&sign("ed.pub", "ed.key.pem", &claims("u-2", &["admin"]))),
    )
    .await
    .unwrap();
    // An RS256 token under the Ed25519 key's kid is refused.
    assert_eq!(
        call(
            &client,
            Some(&sign(
                "ed.pub",
                "rsa-old.key.pem",
                &claims("u-2", &["admin"])
            ))
        )
        .await
        .unwrap_err()
        .code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn rbac_matrix_matches_the_policy_table() {
    let client = serve(JwtVerifier::new(settings(&["rsa-old.pub.pem"])).unwrap()).await;
    let policy = Policy::default();
    let payment_methods = [
        ("GetPayment", "payment:read"),
        ("ListPayments", "payment:read"),
        ("Charge", "payment:write"),
        ("Refund", "payment:write"),
    ];
    for role in ["admin", "user", "guest", "service", "nobody"] {
        let token = sign("rsa-old.pub", "rsa-old.key.pem", &claims("u-1", &[role]));
        for (method, permission) in payment_methods {
            let expected = policy
                .roles
                .get(role)
                .is_some_and(|p| p.contains(permission));
            let mut c = client.clone();
            let auth = |mut r: tonic::Request<()>| {
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                r
            };
            let result = match method {
                "GetPayment" => c
                    .get_payment(auth(Request::new(())).map(|_| pb::GetPaymentRequest::default()))
                    .await
                    .map(drop),
                "ListPayments" => c
                    .list_payments(
                        auth(Request::new(())).map(|_| pb::ListPaymentsRequest::default()),
                    )
                    .await
                    .map(drop),
                "Charge" => c
                    .charge(auth(Request::new(())).map(|_| pb::ChargeRequest::default()))
                    .await
                    .map(drop),
                _ => c
                    .refund(auth(Request::new(())).map(|_| pb::RefundRequest::default()))
                    .await
                    .map(drop),
            };
            match (expected, result) {
                (true, Ok(())) => {}
                (false, Err(s)) if s.code() == Code::PermissionDenied => {}
                (e, r) => panic!("{role} × {method}: expected allowed={e}, got {r:?}"),
            }
        }
    }
}

#[test]
fn every_rpc_of_the_suite_is_in_the_policy_and_unknown_methods_are_denied() {
    let policy = Policy::default();
    let descriptors = mercato_proto::FILE_DESCRIPTOR_SET;
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(descriptors).unwrap();
    let mut count = 0;
    for file in set
        .file
        .iter()
        .filter(|f| !f.package().starts_with("google"))
    {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                assert!(
                    policy.methods.contains_key(&path),
                    "{path} has no permission in the policy"
                );
                count += 1;
            }
        }
    }
    assert_eq!(count, policy.methods.len());
    let admin = Principal {
        subject: "a".into(),
        roles: vec!["admin".to_owned()].into(),
    };
    assert!(
        policy
            .authorize(&admin, "/user.v1.UserService/NotARealMethod")
            .is_err()
    );
}

/// Serves `body()` as JSON over HTTP/1.1 and counts requests.
async fn jwks_server(
    body: Arc<std::sync::Mutex<String>>,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, hits)
}

#[tokio::test]
async fn keys_rotate_through_a_jwks_url_fetched_at_most_once_per_interval() {
    let body = Arc::new(std::sync::Mutex::new(jwks(&[("k-old", "rsa-old.key.pem")])));
    let (url, hits) = jwks_server(body.clone()).await;
    let verifier = JwtVerifier::new(JwtSettings {
        jwks_url: Some(url.clone()),
        jwks_refresh_secs: 0,
        jwks_unknown_kid_refresh_secs: 0,
        ..JwtSettings::default()
    })
    .unwrap();
    let client = serve(verifier).await;
    let old = sign("k-old", "rsa-old.key.pem", &claims("u-1", &["user"]));
    let new = sign("k-new", "rsa-new.key.pem", &claims("u-1", &["user"]));
    call(&client, Some(&old))
        .await
        .expect("first use fetches the set");
    assert_eq!(
        call(&client, Some(&new)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    *body.lock().unwrap() = jwks(&[("k-old", "rsa-old.key.pem"), ("k-new", "rsa-new.key.pem")]);
    call(&client, Some(&new))
        .await
        .expect("the new key is fetched on its unknown kid");
    call(&client, Some(&old))
        .await
        .expect("the old key still verifies during the overlap");
    let fetched = hits.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=3).contains(&fetched), "fetched {fetched} times");

    // With a 60 s interval, a burst of unknown kids costs one fetch at most.
    let (url, hits) = jwks_server(body).await;
    let verifier = JwtVerifier::new(JwtSettings {
        jwks_url: Some(url),
        jwks_refresh_secs: 60,
        ..JwtSettings::default()
    })
    .unwrap();
    let client = serve(verifier).await;
    for i in 0..20 {
        let forged = sign(
            &format!("unknown-{i}"),
            "rsa-new.key.pem",
            &claims("u-1", &["admin"]),
        );
        assert_eq!(
            call(&client, Some(&forged)).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one fetch for 20 unknown kids"
    );
}

/// Verified tokens are remembered (the cache), but never past their `exp`:
/// with no leeway, the same token that passed a moment ago is refused once
/// it has expired, and a token differing in one byte is checked afresh.
#[tokio::test]
async fn a_remembered_token_is_refused_after_its_exp() {
    let verifier = JwtVerifier::new(JwtSettings {
        leeway_secs: 0,
        ..settings(&["ed.pub.pem"])
    })
    .unwrap();
    let mut short = claims("u-1", &["user"]);
    let exp = now() + 1;
    short["exp"] = json!(exp);
    let token = sign("ed.pub", "ed.key.pem", &short);
    for _ in 0..3 {
        assert_eq!(
            verifier.verify(&token).await.unwrap().subject.as_ref(),
            "u-1"
        );
    }
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert!(
        verifier.verify(&tampered).await.is_err(),
        "a different token is not a cache hit"
    );

    // A fresh check accepts the token through its exp second; wait past it.
    while now() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        verifier.verify(&token).await.is_err(),
        "refused after exp although it verified (and was cached) before"
    );
}

/// A key removed from the JWKS stops verifying within one refresh
/// interval, with no token of an unknown `kid` to trigger the re-read, and
/// tokens remembered under it are checked again at once.
#[tokio::test]
async fn a_key_removed_from_the_set_stops_verifying_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(
        &file,
        jwks(&[("k-old", "rsa-old.key.pem"), ("k-new", "rsa-new.key.pem")]),
    )
    .unwrap();
    let verifier = JwtVerifier::new(JwtSettings {
        jwks_file: Some(file.clone()),
        jwks_refresh_secs: 1,
        ..JwtSettings::default()
    })
    .unwrap();
    let old = sign("k-old", "rsa-old.key.pem", &claims("u-1", &["user"]));
    let new = sign("k-new", "rsa-new.key.pem", &claims("u-1", &["user"]));
    for _ in 0..3 {
        verifier.verify(&old).await.expect("remembered");
    }
    // The compromised key is rotated out.
    std::fs::write(&file, jwks(&[("k-new", "rsa-new.key.pem")])).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    assert!(
        verifier.verify(&old).await.is_err(),
        "a removed key still verified a remembered token"
    );
    verifier.verify(&new).await.expect("the kept key verifies");
}

/// With the shipped settings (a scheduled re-read each minute), made-up
/// `kid`s just before a real rotation do not keep the issuer's new key out
/// for the interval: unknown-kid re-reads have their own, shorter limit.
#[tokio::test]
async fn made_up_kids_cannot_keep_a_new_key_out_for_the_interval() {
    let body = Arc::new(std::sync::Mutex::new(jwks(&[("k-old", "rsa-old.key.pem")])));
    let (url, hits) = jwks_server(body.clone()).await;
    let verifier = JwtVerifier::new(JwtSettings {
        jwks_url: Some(url),
        ..JwtSettings::default()
    })
    .unwrap();
    let old = sign("k-old", "rsa-old.key.pem", &claims("u-1", &["user"]));
    verifier
        .verify(&old)
        .await
        .expect("first use fetches the set");
    let forged = |i: usize| {
        sign(
            &format!("made-up-{i}"),
            "rsa-new.key.pem",
            &claims("u-1", &["admin"]),
        )
    };
    assert!(verifier.verify(&forged(0)).await.is_err());
    // The issuer publishes its new key; made-up kids keep coming.
    *body.lock().unwrap() = jwks(&[("k-old", "rsa-old.key.pem"), ("k-new", "rsa-new.key.pem")]);
    let published = std::time::Instant::now();
    let new = sign("k-new", "rsa-new.key.pem", &claims("u-1", &["user"]));
    let mut i = 1;
    loop {
        assert!(verifier.verify(&forged(i)).await.is_err());
        i += 1;
        if verifier.verify(&new).await.is_ok() {
            break;
        }
        assert!(
            published.elapsed() < std::time::Duration::from_secs(8),
            "the new key was refused for {:?} ({} fetches)",
            published.elapsed(),
            hits.load(std::sync::atomic::Ordering::SeqCst)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let fetches = hits.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "new key accepted {:?} after publication; {i} made-up kids, {fetches} fetches",
        published.elapsed()
    );
    assert!(fetches <= 3, "made-up kids fetched {fetches} times");
}

/// The shipped defaults' layer (`AuthSettings::default()` with these keys).
fn shipped(files: &[&str]) -> AuthSettings {
    AuthSettings {
        jwt: settings(files),
        ..AuthSettings::default()
    }
}

fn retry_after(status: &Status) -> std::time::Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("RetryInfo with a delay")
}

/// With the shipped limits (20 failed authentications per peer, then one a
/// second), a peer that keeps failing stops getting its credentials
/// checked — even a fresh valid token waits — while a token verified
/// earlier keeps passing, and the peer recovers at the rate.
#[tokio::test]
async fn a_peer_that_keeps_failing_stops_being_checked_but_remembered_tokens_pass() {
    let client = serve_layer(shipped(&["rsa-old.pub.pem"]).layer().unwrap()).await;
    let earlier = sign("rsa-old.pub", "rsa-old.key.pem", &claims("u-1", &["user"]));
    call(&client, Some(&earlier)).await.expect("verified once");
    // Signed with a key the server does not trust, under a trusted kid.
    let forged = sign("rsa-old.pub", "rsa-new.key.pem", &claims("u-1", &["admin"]));
    for i in 0..20 {
        let refused = call(&client, Some(&forged)).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "failure {i}");
    }
    let fresh = sign("rsa-old.pub", "rsa-old.key.pem", &claims("u-2", &["user"]));
    let wait = retry_after(&call(&client, Some(&fresh)).await.unwrap_err());
    assert!(wait <= std::time::Duration::from_secs(1), "{wait:?}");
    let refused = call(&client, Some(&forged)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "forgeries go unchecked too"
    );
    assert_eq!(
        call(&client, Some(&earlier))
            .await
            .expect("remembered")
            .user_id,
        "u-1"
    );
    tokio::time::sleep(wait).await;
    assert_eq!(
        call(&client, Some(&fresh))
            .await
            .expect("checked again")
            .user_id,
        "u-2"
    );
}

/// Behind a trusted proxy the peer is the header's client address: one
/// client's failures do not lock out another behind the same proxy.
#[tokio::test]
async fn a_trusted_peer_header_keeps_clients_behind_a_proxy_apart() {
    let layer = AuthSettings {
        peer_header: Some("X-Envoy-External-Address".into()),
        ..shipped(&["rsa-old.pub.pem"])
    }
    .layer()
    .unwrap();
    let client = serve_layer(layer).await;
    let forged = sign("rsa-old.pub", "rsa-new.key.pem", &claims("u-1", &["admin"]));
    for _ in 0..21 {
        let refused = call_as(&client, Some(&forged), Some("203.0.113.7"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused.code(),
                Code::Unauthenticated | Code::ResourceExhausted
            ),
            "{refused:?}"
        );
    }
    let fresh = sign("rsa-old.pub", "rsa-old.key.pem", &claims("u-3", &["user"]));
    retry_after(
        &call_as(&client, Some(&fresh), Some("203.0.113.7"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        call_as(&client, Some(&fresh), Some("198.51.100.9"))
            .await
            .expect("another client")
            .user_id,
        "u-3"
    );
}

/// The shipped per-caller limits: a `user` may burst 200 calls and then
/// make 100 a second; an `admin` is not limited.
#[tokio::test]
async fn jwt_callers_are_limited_by_role() {
    let client = serve_layer(shipped(&["rsa-old.pub.pem"]).layer().unwrap()).await;
    let user = sign("rsa-old.pub", "rsa-old.key.pem", &claims("u-4", &["user"]));
    let admin = sign("rsa-old.pub", "rsa-old.key.pem", &claims("a-1", &["admin"]));
    let started = std::time::Instant::now();
    let mut passed = 0u32;
    let mut refused = None;
    for _ in 0..400 {
        match call(&client, Some(&user)).await {
            Ok(_) => passed += 1,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let status = refused.expect("the user's calls are limited");
    let wait = retry_after(&status);
    assert!(wait <= std::time::Duration::from_millis(10), "{wait:?}");
    // A burst of 200, plus what the rate refilled meanwhile.
    let most = 200.0 + 100.0 * elapsed + 1.0;
    assert!(
        passed >= 200 && f64::from(passed) <= most,
        "{passed} passed in {elapsed:.3} s"
    );
    for _ in 0..400 {
        call(&client, Some(&admin))
            .await
            .expect("admins are not limited");
    }
}
