//! One auth layer per server, built by the composition root from every key
//! store the installed services added: a second `protect` is refused, and a
//! key known only to a store added after another service still works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use mercato_auth::{
    AuthSettings, JwtSettings,
    api_keys::{StaticKeys, issue},
};
use mercato_platform::{Server, ServerSettings};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test]
async fn a_server_is_protected_once_by_every_added_key_store() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("k.pem");
    std::fs::write(&pem, mercato_auth::dev_keys::generate().unwrap().public_pem).unwrap();
    let auth = AuthSettings {
        jwt: JwtSettings {
            public_key_files: vec![pem],
            ..JwtSettings::default()
        },
        ..AuthSettings::default()
    };
    let mut server = Server::bind(ServerSettings::ephemeral()).await.unwrap();
    let first = issue("first", vec!["admin".into()], None, 0).unwrap();
    let second = issue("second", vec!["admin".into()], None, 0).unwrap();
    for key in [&first, &second] {
        server.add_key_store(StaticKeys(HashMap::from([(
            key.record.id.clone(),
            key.record.clone(),
        )])));
    }
    server.protect(&auth, None).unwrap();
    let again = server.protect(&auth, None).unwrap_err();
    assert!(again.to_string().contains("protected already"), "{again}");

    // Health is public; a key of the second store is accepted like the first.
    let addr = server.grpc_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.run(stop.clone().cancelled_owned()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    for key in [&first, &second] {
        let mut request = tonic::Request::new(mercato_proto::user::v1::GetUserRequest {
            user_id: "0193a000-0000-7000-8000-000000000000".into(),
        });
        request
            .metadata_mut()
            .insert("x-api-key", key.key.parse().unwrap());
        let status =
            mercato_proto::user::v1::user_service_client::UserServiceClient::new(channel.clone())
                .get_user(request)
                .await
                .unwrap_err();
        // Past auth: no user service is installed here.
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{}: {status:?}",
            key.record.owner
        );
    }
    stop.cancel();
}
