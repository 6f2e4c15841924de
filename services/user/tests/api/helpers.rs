//! Starting real user servers for tests; the generic parts (databases,
//! Redis prefixes, proxy, HTTP) are in `mercato_testkit`.

use std::{net::SocketAddr, time::Duration};

use mercato_platform::{Server, ServerSettings};
use mercato_proto::user::v1::{GetUserRequest, User, user_service_client::UserServiceClient};
use mercato_redis::RedisSettings;
pub use mercato_testkit::{auth::AuthedChannel, *};
use mercato_user::{Settings, StartError, activity_feed, install};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running user server.
pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub client: UserServiceClient<AuthedChannel>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), StartError>>,
}

impl TestApp {
    /// Starts a server on `database` with `redis`.
    pub async fn spawn(database: &TestDatabase, redis: RedisMode) -> Self {
        Self::spawn_with(database, redis, |_| {}).await
    }

    /// Like `spawn`, with a chance to adjust the settings.
    pub async fn spawn_with(
        database: &TestDatabase,
        redis: RedisMode,
        adjust: impl FnOnce(&mut Settings),
    ) -> Self {
        let (redis_url, redis_key_prefix) = match redis {
            RedisMode::InProcess => (String::new(), String::new()),
            RedisMode::Url { url, prefix } => (url, prefix),
        };
        let mut settings = Settings {
            server: ServerSettings::ephemeral(),
            auth: mercato_testkit::auth::settings(),
            database: database.settings(),
            redis: RedisSettings {
                redis_url: redis_url.into(),
                redis_key_prefix,
                ..RedisSettings::default()
            },
            ..Settings::default()
        };
        adjust(&mut settings);
        let mut server = Server::bind(settings.server.clone()).await.expect("bind");
        install(
            &mut server,
            &settings,
            activity_feed(&settings).expect("activity feed"),
        )
        .await
        .expect("install user service");
        server
            .protect(
                &settings.auth,
                settings.redis.open().expect("redis settings"),
            )
            .expect("protect");
        let (grpc_addr, http_addr, metrics_addr) = (
            server.grpc_addr(),
            server.http_addr(),
            server.metrics_addr(),
        );
        let stop = CancellationToken::new();
        let signal = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move { server.run(signal).await.map_err(StartError::from) });
        let client = UserServiceClient::new(admin_channel(grpc_addr).await);
        Self {
            grpc_addr,
            http_addr,
            metrics_addr,
            client,
            stop,
            task,
        }
    }

    /// Sends the shutdown signal and waits for the server to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("server task")
            .expect("server ran cleanly");
    }

    /// Starts shutting down without waiting.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits until the server task ends, at most `limit`.
    pub async fn wait_stopped(self, limit: Duration) {
        tokio::time::timeout(limit, self.task)
            .await
            .expect("server stopped in time")
            .expect("server task")
            .expect("server ran cleanly");
    }

    /// GET on the HTTP probe port: (status code, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_addr, path).await
    }

    /// The value of one metric line (exact series text, e.g. `users_created_total`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get(self.metrics_addr, "/metrics").await;
        body.lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|value| value.trim().parse().ok())
    }
}

/// GetUser, expected to succeed.
pub async fn get_user(client: &mut UserServiceClient<AuthedChannel>, id: &str) -> User {
    client
        .get_user(GetUserRequest { user_id: id.into() })
        .await
        .expect("get user")
        .into_inner()
        .user
        .expect("user in response")
}

/// Polls GetUser on `app` until the user's name is `name`.
pub async fn eventually_named(app: &TestApp, id: &str, name: &str) {
    eventually(&format!("{id} is named {name:?}"), || {
        let mut client = app.client.clone();
        async move { get_user(&mut client, id).await.full_name == name }
    })
    .await;
}
