//! Storage behaviour: concurrent migrations, and a database outage.

use mercato_database::Database;
use mercato_proto::user::v1::GetUserRequest;
use tonic::Code;

use crate::{
    crud::create,
    helpers::{Db, RedisMode, TcpProxy, TestApp, TestDatabase, eventually, socket_of},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let database = TestDatabase::create(Db::Postgres).await;
    let starts = (0..4)
        .map(|_| {
            let url = database.url.clone();
            tokio::spawn(async move {
                let db = Database::connect(&url, &Default::default()).await?;
                db.migrate(&mercato_user::store::MIGRATIONS).await?;
                Ok::<_, mercato_database::DatabaseError>(())
            })
        })
        .collect::<Vec<_>>();
    for start in starts {
        start.await.unwrap().expect("every replica starts");
    }
    let db = database.connect().await;
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        applied,
        i64::try_from(mercato_user::store::MIGRATIONS.postgres.len()).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_unavailable_then_recovers() {
    let database = TestDatabase::create(Db::Postgres).await;
    let proxy = TcpProxy::start(socket_of(&database.url)).await;
    let via_proxy = database.through(proxy.addr);
    let mut app = TestApp::spawn(&via_proxy, RedisMode::InProcess).await;
    let user = create(&mut app, "outage@example.com", "Outage").await;

    proxy.cut();
    let missing = uuid::Uuid::now_v7().to_string();
    let status = app
        .client
        .get_user(GetUserRequest { user_id: missing })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !status.message().contains("sqlx") && !status.message().contains("127.0.0.1"),
        "no internals leak: {status:?}"
    );
    eventually("readiness fails without the database", || async {
        app.http_get("/health/ready").await.0 == 503
    })
    .await;
    assert_eq!(
        app.http_get("/health/live").await.0,
        200,
        "liveness never depends on the database"
    );

    proxy.restore();
    eventually("service recovers", || {
        let mut client = app.client.clone();
        let id = user.user_id.clone();
        async move {
            client
                .get_user(GetUserRequest { user_id: id })
                .await
                .is_ok()
        }
    })
    .await;
    app.shutdown().await;
}
