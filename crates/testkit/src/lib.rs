//! Test-only support for the services' integration tests (never a
//! dependency of production code): a fresh database per test (a new Postgres
//! database, or a SQLite file in a temporary directory), a fresh Redis key
//! prefix, a TCP proxy that can take a dependency away mid-test, service
//! binaries as processes ([`processes`]), the replica fault harness
//! ([`replicas`], on [`netns`] hosts behind a [`balancer`]), the invariant
//! checkers ([`invariants`]), a real Prometheus ([`prometheus`]), and small
//! HTTP and polling helpers.
//!
//! Postgres and Redis come from `MERCATO_TEST_POSTGRES_URL` and
//! `MERCATO_TEST_REDIS_URL` (defaults: the local servers that
//! `scripts/test.sh` makes sure are running).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod auth;
pub mod balancer;
pub mod fixtures;
pub mod invariants;
pub mod localstripe;
pub mod metrics;
pub mod netns;
pub mod processes;
pub mod prometheus;
pub mod replicas;
pub mod shoppers;
pub mod writes;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use mercato_database::{Database, DatabaseSettings, PoolSettings};
use sqlx::{Connection, Executor, PgConnection};
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpListener};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

/// Runs each listed `async fn(Db)` of the calling module as two tests,
/// `sqlite::<name>` and `postgres::<name>`, so one suite covers both engines.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::Db::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::Db::Postgres).await } )*
        }
    };
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

fn postgres_admin_url() -> String {
    std::env::var("MERCATO_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("MERCATO_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database that exists for one test and is removed afterwards.
pub struct TestDatabase {
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    SqliteDir(#[allow(dead_code)] tempfile::TempDir),
    Postgres(String),
    None,
}

impl TestDatabase {
    pub async fn create(db: Db) -> Self {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("user.db").display());
                Self {
                    url,
                    cleanup: Cleanup::SqliteDir(dir),
                }
            }
            Db::Postgres => {
                let name = format!("mercato_test_{}", Uuid::new_v4().simple());
                let admin = postgres_admin_url();
                let mut conn = PgConnection::connect(&admin)
                    .await
                    .expect("Postgres reachable (run scripts/test.sh, which starts it)");
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create test database");
                let base = admin
                    .rsplit_once('/')
                    .map_or(admin.as_str(), |(base, _)| base);
                Self {
                    url: format!("{base}/{name}"),
                    cleanup: Cleanup::Postgres(name),
                }
            }
        }
    }

    /// The same database reached through `proxy` instead; owns no cleanup.
    pub fn through(&self, proxy: SocketAddr) -> Self {
        let url = self
            .url
            .replace(&socket_of(&self.url).to_string(), &proxy.to_string());
        Self {
            url,
            cleanup: Cleanup::None,
        }
    }

    /// Service settings pointing at this database (a small pool).
    pub fn settings(&self) -> DatabaseSettings {
        DatabaseSettings {
            database_url: self.url.as_str().into(),
            database_max_connections: 5,
            ..DatabaseSettings::default()
        }
    }

    /// A pool straight to the database, bypassing the service.
    pub async fn connect(&self) -> Database {
        Database::connect(&self.url, &PoolSettings::default())
            .await
            .expect("direct database connection")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Cleanup::Postgres(name) = &self.cleanup {
            let name = name.clone();
            // Drop runs outside async; a short-lived runtime of its own does the DROP.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime
                    .block_on(async move {
                        let mut conn = PgConnection::connect(&postgres_admin_url()).await?;
                        conn.execute(
                            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                        )
                        .await?;
                        Ok::<_, sqlx::Error>(())
                    })
                    .map_err(std::io::Error::other)
            })
            .join();
        }
    }
}

/// How the app under test reaches Redis.
#[derive(Debug, Clone)]
pub enum RedisMode {
    /// In-process cache and activity bus (the monolith's mode).
    InProcess,
    /// This Redis URL, with a key prefix unique to the test.
    Url { url: String, prefix: String },
}

impl RedisMode {
    /// The local test Redis with a fresh prefix.
    pub fn fresh() -> Self {
        Self::Url {
            url: redis_url(),
            prefix: format!("test:{}:", Uuid::new_v4().simple()),
        }
    }

    /// The same prefix on another URL (e.g. through a proxy).
    pub fn via(&self, url: String) -> Self {
        match self {
            Self::Url { prefix, .. } => Self::Url {
                url,
                prefix: prefix.clone(),
            },
            Self::InProcess => Self::Url {
                url,
                prefix: format!("test:{}:", Uuid::new_v4().simple()),
            },
        }
    }
}

/// A channel to `addr` whose calls carry an administrator's token.
pub async fn admin_channel(addr: SocketAddr) -> auth::AuthedChannel {
    auth::with_token(channel(addr).await, &auth::admin())
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to test server")
}

/// A minimal HTTP/1.1 GET, enough for probes and /metrics.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write request");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .await
        .expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (code, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` until it returns true, for at most five seconds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy that a test can take down and bring back, to make a
/// dependency disappear mid-test without touching the shared server.
pub struct TcpProxy {
    pub addr: SocketAddr,
    /// Whether connections are passed through.
    up: tokio::sync::watch::Sender<bool>,
    stop: CancellationToken,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let stop = CancellationToken::new();
        let (up, _) = tokio::sync::watch::channel(true);
        let token = stop.clone();
        let state = up.clone();
        tokio::spawn(async move {
            loop {
                let mut inbound = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => return },
                    () = token.cancelled() => return,
                };
                let mut watch = state.subscribe();
                if !*watch.borrow_and_update() {
                    continue; // down: close at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, stop }
    }

    /// Drops every connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Passes connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.up.send_replace(false);
        self.stop.cancel();
    }
}

/// A TCP proxy that records what its clients send, one chunk per read: a
/// client that writes a batch of messages and then waits for the answer
/// shows up as one chunk. For tests that count round trips or commands.
pub struct RecordingProxy {
    pub addr: SocketAddr,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RecordingProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    tokio::spawn(async move {
                        tokio::io::copy(&mut server_read, &mut client_write)
                            .await
                            .ok();
                    });
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        record.lock().unwrap().push(buf[..n].to_vec());
                    }
                });
            }
        });
        Self { addr, sent }
    }

    /// How many reads the clients' bytes have taken so far.
    pub fn writes(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    /// How often `needle` occurs in everything the clients have sent.
    pub fn occurrences(&self, needle: &[u8]) -> usize {
        let sent = self.sent.lock().unwrap().concat();
        sent.windows(needle.len()).filter(|w| *w == needle).count()
    }
}

/// The host:port of a URL like `redis://127.0.0.1:6379`.
pub fn socket_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, hp)| hp);
    std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("url with a resolvable host:port")
}
