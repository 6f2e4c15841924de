//! The two-tier cache: hits skip the database, writes are never hidden by a
//! cached copy, and Redis failing never fails a request.

use std::time::Duration;

use mercato_proto::user::v1::{ListUsersRequest, UpdateUserRequest, User};
use mercato_redis::Redis;
use mercato_user::{
    cache::{CacheRequests, CacheSettings, UserCache},
    domain::{Email, FullName, Preferences, User as DomainUser, UserId, UserStatus},
};
use prost_types::FieldMask;

use crate::{
    crud::create,
    helpers::{
        Db, RedisMode, TcpProxy, TestApp, TestDatabase, eventually, eventually_named, get_user,
        redis_url, socket_of,
    },
};

async fn rename(app: &mut TestApp, id: &str, name: &str) -> User {
    app.client
        .update_user(UpdateUserRequest {
            user_id: id.into(),
            full_name: name.into(),
            preferences: None,
            update_mask: Some(FieldMask {
                paths: vec!["full_name".into()],
            }),
        })
        .await
        .expect("update user")
        .into_inner()
        .user
        .expect("user")
}

/// Changes the row behind the service's back (no version bump), so only a
/// read that really reaches the database can see it.
async fn tamper(database: &TestDatabase, id: &str, name: &str) {
    let db = database.connect().await;
    let done = sqlx::query("UPDATE users SET full_name = $1 WHERE user_id = $2")
        .bind(name)
        .bind(id)
        .execute(&db.pool)
        .await
        .expect("tamper");
    assert_eq!(done.rows_affected(), 1);
}

async fn cache_hit_skips_database_and_update_invalidates(db: Db, redis: RedisMode) {
    let database = TestDatabase::create(db).await;
    let mut app = TestApp::spawn(&database, redis).await;
    let user = create(&mut app, "cache@example.com", "Original").await;
    assert_eq!(
        get_user(&mut app.client, &user.user_id).await.full_name,
        "Original"
    );

    tamper(&database, &user.user_id, "Tampered in the database").await;
    let hits_before = app
        .metric("user_cache_requests_total{tier=\"l1\",result=\"hit\"}")
        .await
        .unwrap_or(0.0);
    assert_eq!(
        get_user(&mut app.client, &user.user_id).await.full_name,
        "Original",
        "served from cache"
    );
    let hits_after = app
        .metric("user_cache_requests_total{tier=\"l1\",result=\"hit\"}")
        .await
        .unwrap_or(0.0);
    assert_eq!(hits_after, hits_before + 1.0);

    rename(&mut app, &user.user_id, "Renamed").await;
    assert_eq!(
        get_user(&mut app.client, &user.user_id).await.full_name,
        "Renamed",
        "read after write sees the write"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_cache_hit_skips_database_and_update_invalidates() {
    cache_hit_skips_database_and_update_invalidates(Db::Sqlite, RedisMode::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_hit_skips_database_and_update_invalidates() {
    cache_hit_skips_database_and_update_invalidates(Db::Postgres, RedisMode::fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_redis_tier_and_see_each_others_writes() {
    let database = TestDatabase::create(Db::Postgres).await;
    let redis = RedisMode::fresh();
    let mut a = TestApp::spawn(&database, redis.clone()).await;
    let mut b = TestApp::spawn(&database, redis).await;
    let user = create(&mut a, "shared@example.com", "Original").await;
    tamper(&database, &user.user_id, "Tampered").await;

    // B has never seen the user: the copy A wrote through to Redis answers.
    assert_eq!(
        get_user(&mut b.client, &user.user_id).await.full_name,
        "Original"
    );
    assert_eq!(
        b.metric("user_cache_requests_total{tier=\"redis\",result=\"hit\"}")
            .await,
        Some(1.0)
    );

    // A write on A reaches B (B's L1 copy is evicted by the user.updated event).
    rename(&mut a, &user.user_id, "Renamed on A").await;
    eventually_named(&b, &user.user_id, "Renamed on A").await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_from_the_start_degrades_but_serves() {
    let database = TestDatabase::create(Db::Postgres).await;
    let mut app = TestApp::spawn(
        &database,
        RedisMode::fresh().via("redis://127.0.0.1:1".into()),
    )
    .await;
    let user = create(&mut app, "noredis@example.com", "No Redis").await;
    assert_eq!(
        get_user(&mut app.client, &user.user_id).await.full_name,
        "No Redis"
    );
    assert_eq!(
        rename(&mut app, &user.user_id, "Still works")
            .await
            .full_name,
        "Still works"
    );
    assert_eq!(
        get_user(&mut app.client, &user.user_id).await.full_name,
        "Still works"
    );
    let list = app
        .client
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.users.len(), 1);

    let (code, body) = app.http_get("/health/ready").await;
    assert_eq!(code, 200, "Redis is not critical: {body}");
    assert!(
        body.contains("\"status\":\"degraded\"") && body.contains("\"database\":\"ok\""),
        "{body}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_mid_test_then_back_never_serves_stale_data() {
    let database = TestDatabase::create(Db::Postgres).await;
    let redis = RedisMode::fresh();
    let proxy = TcpProxy::start(socket_of(&redis_url())).await;
    let mut a = TestApp::spawn(&database, redis.via(format!("redis://{}", proxy.addr))).await;
    // B talks to Redis directly and keeps a short L1, as another replica would.
    let mut b = TestApp::spawn_with(&database, redis, |s| s.cache_l1_ttl_secs = 1).await;

    let user = create(&mut a, "outage@example.com", "Before").await;
    assert_eq!(
        get_user(&mut b.client, &user.user_id).await.full_name,
        "Before"
    );

    proxy.cut();
    // Writes, reads, creates and lists on A all still work without Redis.
    assert_eq!(
        rename(&mut a, &user.user_id, "During").await.full_name,
        "During"
    );
    assert_eq!(
        get_user(&mut a.client, &user.user_id).await.full_name,
        "During"
    );
    let other = create(&mut a, "second@example.com", "Second").await;
    assert_eq!(
        get_user(&mut a.client, &other.user_id).await.full_name,
        "Second"
    );
    assert_eq!(
        a.client
            .list_users(ListUsersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .users
            .len(),
        2
    );
    eventually("A reports Redis degraded", || async {
        a.http_get("/health/ready").await.1.contains("degraded")
    })
    .await;

    // Redis comes back still holding "Before": A repairs it, and B ends up
    // on the database's "During" without anyone writing again.
    proxy.restore();
    eventually_named(&b, &user.user_id, "During").await;
    assert_eq!(
        get_user(&mut a.client, &user.user_id).await.full_name,
        "During"
    );
    a.shutdown().await;
    b.shutdown().await;
}

fn domain_user(id: &UserId, version: i64, name: &str) -> DomainUser {
    DomainUser {
        id: id.clone(),
        email: Email::parse("v@example.com").unwrap(),
        full_name: FullName::parse(name).unwrap(),
        status: UserStatus::Active,
        preferences: Preferences::default(),
        created_at_us: 0,
        updated_at_us: version,
        version,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_never_replaces_a_newer_one() {
    let RedisMode::Url { url, prefix } = RedisMode::fresh() else {
        unreachable!()
    };
    let redis = Redis::open(&url, &prefix, Duration::from_millis(500)).unwrap();
    let settings = CacheSettings {
        l1_capacity: 100,
        l1_ttl: Duration::from_secs(60),
        redis_ttl: Duration::from_secs(60),
    };
    let writer = UserCache::new(&settings, Some(redis.clone()), CacheRequests::default());
    let id = UserId::generate();
    writer.store(&domain_user(&id, 2, "Newer")).await;
    // A slow reader that loaded version 1 before the write arrives late.
    writer.store(&domain_user(&id, 1, "Older")).await;
    assert_eq!(
        writer.get(&id).await.unwrap().full_name.as_str(),
        "Newer",
        "L1 kept the newer copy"
    );

    let fresh_replica = UserCache::new(&settings, Some(redis), CacheRequests::default());
    assert_eq!(
        fresh_replica.get(&id).await.unwrap().full_name.as_str(),
        "Newer",
        "Redis kept the newer copy"
    );
}
