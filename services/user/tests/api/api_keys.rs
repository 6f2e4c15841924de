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
