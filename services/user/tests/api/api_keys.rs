//! API keys managed through the user service's admin RPCs.

use mercato_proto::user::v1::{
    CreateApiKeyRequest, GetUserRequest, ListApiKeysRequest, RevokeApiKeyRequest,
    user_service_client::UserServiceClient,
};
use mercato_testkit::auth::{token, with_api_key, with_token};
use tonic::Code;

use crate::{
    crud::create,
    helpers::{Db, RedisMode, TestApp, TestDatabase, channel},
};

mercato_testkit::on_both_backends!(admins_create_list_and_revoke_keys);

async fn admins_create_list_and_revoke_keys(db: Db) {
    let database = TestDatabase::create(db).await;
    let mut app = TestApp::spawn(&database, RedisMode::InProcess).await;
    let someone = create(&mut app, "someone@example.com", "Someone").await;

    let created = app
        .client
        .create_api_key(CreateApiKeyRequest {
            owner: "reporting".into(),
            roles: vec!["service".into()],
            ttl_seconds: 3600,
            rate_per_sec: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let key = created.api_key.clone();
    let meta = created.key.unwrap();
    assert!(key.starts_with("mk_") && key.contains(&meta.key_id));
    assert!(meta.expires_at.is_some() && meta.revoked_at.is_none());

    // The key works as a credential right away (role service may read users).
    let mut as_key = UserServiceClient::new(with_api_key(channel(app.grpc_addr).await, &key));
    let read = as_key
        .get_user(GetUserRequest {
            user_id: someone.user_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.user.unwrap().user_id, someone.user_id);

    // Listed without its secret; stored as a hash only.
    let listed = app
        .client
        .list_api_keys(ListApiKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .keys
            .iter()
            .map(|k| k.key_id.as_str())
            .collect::<Vec<_>>(),
        [meta.key_id.as_str()]
    );
    let db = database.connect().await;
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT key_id, secret_sha256 FROM api_keys")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let secret = &key[3 + 12 + 1..3 + 12 + 1 + 32];
    assert!(rows.iter().all(|(id, hash)| !key.contains(hash.as_str())
        && !hash.contains(secret)
        && id == &meta.key_id));

    // Revoked: refused at once; revoking again is a no-op.
    let revoked = app
        .client
        .revoke_api_key(RevokeApiKeyRequest {
            key_id: meta.key_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.key.unwrap().revoked_at.is_some());
    app.client
        .revoke_api_key(RevokeApiKeyRequest {
            key_id: meta.key_id.clone(),
        })
        .await
        .unwrap();
    let status = as_key
        .get_user(GetUserRequest {
            user_id: someone.user_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Only admins manage keys, and requests are validated.
    let mut as_user = UserServiceClient::new(with_token(
        channel(app.grpc_addr).await,
        &token(&someone.user_id, &["user"]),
    ));
    let status = as_user
        .create_api_key(CreateApiKeyRequest {
            owner: "x".into(),
            roles: vec!["admin".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .client
        .create_api_key(CreateApiKeyRequest {
            owner: String::new(),
            roles: vec!["root".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app
        .client
        .revoke_api_key(RevokeApiKeyRequest {
            key_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_rate_limit_is_shared_by_all_replicas() {
    let database = TestDatabase::create(Db::Postgres).await;
    let redis = RedisMode::fresh();
    let mut a = TestApp::spawn(&database, redis.clone()).await;
    let b = TestApp::spawn(&database, redis).await;
    let someone = create(&mut a, "limited@example.com", "Limited").await;
    let key = a
        .client
        .create_api_key(CreateApiKeyRequest {
            owner: "batch".into(),
            roles: vec!["service".into()],
            ttl_seconds: 0,
            rate_per_sec: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .api_key;
    let mut replicas = [
        UserServiceClient::new(with_api_key(channel(a.grpc_addr).await, &key)),
        UserServiceClient::new(with_api_key(channel(b.grpc_addr).await, &key)),
    ];
    // Start right after a second boundary so the burst stays in one window.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(
        1010 - u64::from(now.subsec_millis()),
    ))
    .await;
    let (mut allowed, mut limited) = (0, 0);
    for i in 0..10 {
        match replicas[i % 2]
            .get_user(GetUserRequest {
                user_id: someone.user_id.clone(),
            })
            .await
        {
            Ok(_) => allowed += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                limited += 1;
            }
        }
    }
    assert_eq!(
        (allowed, limited),
        (2, 8),
        "2 per second across both replicas, not 2 each"
    );
    a.shutdown().await;
    b.shutdown().await;
}
