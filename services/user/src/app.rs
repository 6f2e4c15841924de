//! Settings of the user service and its wiring into a [`Server`].

use std::{future::Future, time::Duration};

use mercato_database::DatabaseSettings;
use mercato_platform::{Server, ServerSettings, StartError, run_alone, settings::SettingsError};
use mercato_proto::{
    experiment::v1::experiment_service_server::ExperimentServiceServer,
    user::v1::user_service_server::UserServiceServer,
};
use mercato_redis::RedisSettings;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use mercato_activity::{ActivityFeed, StreamLimits};
use mercato_auth::AuthSettings;

use crate::{
    api_keys::ApiKeyStore,
    cache::{CacheRequests, CacheSettings, UserCache},
    experiments::{ExperimentMetrics, Experiments, grpc::ExperimentGrpc, store::ExperimentStore},
    grpc::UserGrpc,
    store::{MIGRATIONS, UserStore},
    users::Users,
};

/// Everything the user service is configured with. Field names are the
/// environment variable names, upper-cased (see `mercato_platform::settings`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Listen addresses and shutdown timing (`GRPC_ADDR`, `HTTP_ADDR`, ...).
    #[serde(flatten)]
    pub server: ServerSettings,
    /// Who may call (`auth:` in YAML; `AUTH__JWT__…` in the environment).
    pub auth: AuthSettings,
    /// `DATABASE_URL` (Postgres, or SQLite for the embedded mode) and pool size.
    #[serde(flatten)]
    pub database: DatabaseSettings,
    /// Redis for the shared cache and activity stream (`REDIS_URL`, ...).
    #[serde(flatten)]
    pub redis: RedisSettings,
    /// Users kept in the in-process cache.
    pub cache_l1_capacity: u64,
    /// Seconds an in-process cache entry lives.
    pub cache_l1_ttl_secs: u64,
    /// Seconds a Redis cache entry lives.
    pub cache_redis_ttl_secs: u64,
    /// Open StreamUserActivity streams allowed per user on one replica
    /// (beyond: RESOURCE_EXHAUSTED).
    pub activity_streams_per_user: usize,
    /// Open StreamUserActivity streams allowed on one replica, all users
    /// together (beyond: RESOURCE_EXHAUSTED).
    pub activity_streams_max: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::default(),
            auth: AuthSettings::default(),
            database: DatabaseSettings::sqlite_file("user"),
            redis: RedisSettings::default(),
            cache_l1_capacity: 10_000,
            cache_l1_ttl_secs: 5,
            cache_redis_ttl_secs: 300,
            activity_streams_per_user: StreamLimits::default().per_user,
            activity_streams_max: StreamLimits::default().total,
        }
    }
}

impl Settings {
    /// Checks what serde cannot, with messages naming the setting.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.server.validate()?;
        Ok(())
    }
}

/// The activity feed these settings ask for: Redis Streams when `redis_url`
/// is set, otherwise in-process, with the settings' caps on open streams.
/// In the monolith one feed is shared by all services so that their events
/// reach the user's stream.
pub fn activity_feed(settings: &Settings) -> Result<ActivityFeed, StartError> {
    let feed = ActivityFeed::new(settings.redis.open()?);
    feed.limit_streams(StreamLimits {
        per_user: settings.activity_streams_per_user,
        total: settings.activity_streams_max,
    });
    Ok(feed)
}

/// Connects and migrates the database, sets up the cache, and adds
/// `user.v1.UserService` (serving `feed`) and `experiment.v1.ExperimentService`,
/// their readiness checks and metrics to `server`.
pub async fn install(
    server: &mut Server,
    settings: &Settings,
    feed: ActivityFeed,
) -> Result<(), StartError> {
    settings.validate()?;
    let database = server
        .open_database(&settings.database, &MIGRATIONS)
        .await?;
    let api_keys = ApiKeyStore::new(database.pool.clone());
    let redis = settings.redis.open()?;
    // The keys admins create through the API are valid credentials too.
    server.add_key_store(api_keys.clone());

    let users_created = Counter::default();
    let cache_requests = CacheRequests::default();
    let registry = server.registry_mut();
    registry.register("users_created", "Users registered", users_created.clone());
    registry.register(
        "user_cache_requests",
        "User cache lookups by tier (l1, redis) and result (hit, miss, error)",
        cache_requests.clone(),
    );
    registry.register(
        "activity_stream_subscribers",
        "Open StreamUserActivity streams on this replica",
        feed.subscribers_gauge(),
    );

    let cache = UserCache::new(
        &CacheSettings {
            l1_capacity: settings.cache_l1_capacity,
            l1_ttl: Duration::from_secs(settings.cache_l1_ttl_secs),
            redis_ttl: Duration::from_secs(settings.cache_redis_ttl_secs),
        },
        redis.clone(),
        cache_requests,
    );
    if let Some(redis) = &redis {
        server.watch_redis(redis);
    }
    let users = Users::new(UserStore::new(&database), cache, feed, users_created);
    // Stops when the server drains.
    users.spawn_remote_eviction(server.drain_token());
    let grpc = UserGrpc::new(users, api_keys, server.drain_token());
    let limit = server.settings().max_decoding_message_size;
    server.add_service(UserServiceServer::new(grpc).max_decoding_message_size(limit));

    let experiment_metrics = ExperimentMetrics::default();
    experiment_metrics.register(server.registry_mut());
    let experiments = Experiments::new(
        ExperimentStore::new(database.pool.clone()),
        experiment_metrics,
    );
    server.add_service(
        ExperimentServiceServer::new(ExperimentGrpc::new(experiments))
            .max_decoding_message_size(limit),
    );
    Ok(())
}

/// Applies the user service's database migrations and returns (`user-service
/// migrate`, what a migration Job runs with the schema owner's role).
pub async fn migrate(settings: Settings) -> Result<(), StartError> {
    settings.database.migrate(&MIGRATIONS).await?;
    Ok(())
}

/// Runs the user service alone until `signal` completes (the `user-service` binary).
pub async fn run(settings: Settings, signal: impl Future<Output = ()>) -> Result<(), StartError> {
    let feed = activity_feed(&settings)?;
    run_alone(
        "user service",
        settings.server.clone(),
        &settings.auth,
        settings.redis.open()?,
        async |server| install(server, &settings, feed).await,
        signal,
    )
    .await
}
