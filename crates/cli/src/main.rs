//! `mercato`: the whole suite in one process.
//!
//! `mercato up` (the default, so `cargo run --release` at the repository root
//! runs it) starts every service on one gRPC port with health and
//! reflection, SQLite files under `--data-dir`, and in-process cache and
//! activity bus; flags (or their environment variables) move ports and
//! switch services to Postgres and Redis.

/// mimalloc: measured faster than the system allocator on the hot path,
/// and the shipped image is a musl build, whose own allocator is slow
/// under threads (docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

mod bench;

use clap::{Args, Parser, Subcommand};
use mercato_auth::Role;
use mercato_database::DatabaseSettings;
use mercato_platform::{Server, ServerSettings, shutdown_signal};
use mercato_redis::RedisSettings;
use mercato_telemetry::{LogFormat, TelemetrySettings};

#[derive(Debug, Parser)]
#[command(name = "mercato", version, about = "mercato microservice suite")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in this process (the default command).
    Up(UpArgs),
    /// Mint a token with the dev signing key (`up` creates it; so does this).
    Token(TokenArgs),
    /// Load-test a running suite (see `mercato bench --help`).
    Bench(bench::BenchArgs),
    /// The bare tonic server `bench` compares with: GetUser from a map, no layers.
    BenchCeiling(bench::CeilingArgs),
    /// Issue an API key for a service (role `service`) and print the key
    /// (for the caller's Secret) and its record (for the callees' `AUTH__API_KEYS`).
    ServiceKey(ServiceKeyArgs),
}

#[derive(Debug, Args)]
struct ServiceKeyArgs {
    /// Whom the key acts for.
    #[arg(long, default_value = "order-service")]
    owner: String,
}

/// The key, then its record in the environment-variable form the services
/// read (`AUTH__API_KEYS=[{…}]`).
fn service_key(args: &ServiceKeyArgs) -> Result<String, Box<dyn std::error::Error>> {
    let issued =
        mercato_auth::api_keys::issue(&args.owner, vec![Role::Service.as_str().into()], None, 0)?;
    let r = &issued.record;
    Ok(format!(
        "key={}\nrecords=[{{id=\"{}\",secret_sha256=\"{}\",owner=\"{}\",roles=[\"service\"],rate_per_sec=0}}]",
        issued.key, r.id, r.secret_sha256, r.owner
    ))
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The subject: a user id (or any name for admins and services).
    #[arg(long)]
    sub: String,
    /// Roles to grant (repeat for several): admin, user, guest, service.
    #[arg(long = "role", default_value = "user")]
    roles: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Where `up` keeps its data (and the dev key).
    #[arg(long, env = "MERCATO_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// gRPC address for all services, health and reflection.
    #[arg(long, env = "MERCATO_GRPC_ADDR", default_value = "0.0.0.0:9090")]
    grpc_addr: SocketAddr,
    /// HTTP address of the /health/* probes.
    #[arg(long, env = "MERCATO_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Address of the Prometheus /metrics endpoint.
    #[arg(long, env = "MERCATO_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    metrics_addr: SocketAddr,
    /// Directory for the SQLite databases (created if missing).
    #[arg(long, env = "MERCATO_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Database of the user service instead of SQLite, e.g. postgres://postgres@127.0.0.1/mercato_user.
    #[arg(long, env = "MERCATO_USER_DATABASE_URL")]
    user_database_url: Option<String>,
    /// Database of the order service instead of SQLite.
    #[arg(long, env = "MERCATO_ORDER_DATABASE_URL")]
    order_database_url: Option<String>,
    /// Database of the payment service instead of SQLite.
    #[arg(long, env = "MERCATO_PAYMENT_DATABASE_URL")]
    payment_database_url: Option<String>,
    /// Redis for caches and the activity stream instead of in-process ones, e.g. redis://127.0.0.1:6379.
    #[arg(long, env = "MERCATO_REDIS_URL")]
    redis_url: Option<String>,
    /// Seconds in-flight calls get to finish on Ctrl-C / SIGTERM.
    #[arg(long, env = "MERCATO_DRAIN_TIMEOUT_SECS", default_value_t = 10.0)]
    drain_timeout_secs: f64,
    /// Log lines as `text` (for a terminal) or `json`; `RUST_LOG` sets the level.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = parse_log_format)]
    log_format: LogFormat,
}

fn parse_log_format(value: &str) -> Result<LogFormat, String> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("expected text or json, got {other:?}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Token(args)) => return print_or_fail(mint(&args)),
        Some(Command::ServiceKey(args)) => return print_or_fail(service_key(&args)),
        Some(Command::Bench(args)) => return exit_code(bench::run(args).await.map(drop)),
        Some(Command::BenchCeiling(args)) => return exit_code(bench::serve_ceiling(args).await),
        Some(Command::Up(args)) => args,
        None => match Cli::try_parse_from(["mercato", "up"]) {
            Ok(Cli {
                command: Some(Command::Up(args)),
            }) => args,
            _ => return ExitCode::FAILURE,
        },
    };
    let telemetry = mercato_telemetry::init(
        "mercato",
        &TelemetrySettings {
            log_format: args.log_format,
            ..TelemetrySettings::default()
        },
    );
    let code = match up(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

/// Prints what a one-shot subcommand produced, or its error.
fn print_or_fail(result: Result<String, Box<dyn std::error::Error>>) -> ExitCode {
    exit_code(result.map(|text| println!("{text}")))
}

/// Success, or the error on stderr and a failing exit code.
fn exit_code(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The dev signing key's kid, file stem of its public half.
const DEV_KID: &str = "dev-signing";

fn dev_key_paths(data_dir: &std::path::Path) -> (PathBuf, PathBuf) {
    (
        data_dir.join(format!("{DEV_KID}.key")),
        data_dir.join(format!("{DEV_KID}.pem")),
    )
}

/// Creates the dev key pair on first start; the private key is readable by
/// the owner only.
fn ensure_dev_keys(data_dir: &std::path::Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let (private, public) = dev_key_paths(data_dir);
    if !private.exists() || !public.exists() {
        let pair = mercato_auth::dev_keys::generate()?;
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&private)?
            .write_all(pair.private_pem.as_bytes())?;
        std::fs::write(&public, pair.public_pem)?;
        tracing::info!(key = %private.display(), "generated a dev signing key");
    }
    Ok(public)
}

/// A token signed with the dev key in `--data-dir`, created there first if
/// missing (the services then trust `<data-dir>/dev-signing.pem`).
fn mint(args: &TokenArgs) -> Result<String, Box<dyn std::error::Error>> {
    let (private, _) = dev_key_paths(&args.data_dir);
    if !private.exists() {
        std::fs::create_dir_all(&args.data_dir)?;
        ensure_dev_keys(&args.data_dir)?;
    }
    let pem =
        std::fs::read_to_string(&private).map_err(|e| format!("{}: {e}", private.display()))?;
    Ok(mercato_auth::dev_keys::mint(
        &pem,
        DEV_KID,
        "mercato",
        "mercato",
        &args.sub,
        &args.roles,
        args.ttl,
    )?)
}

async fn up(args: UpArgs) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            args.data_dir.display()
        )
    })?;
    let public_key = ensure_dev_keys(&args.data_dir)?;
    // The order service's identity towards the others: a fresh key per start.
    let service_key = mercato_auth::api_keys::issue(
        "order-service",
        vec![Role::Service.as_str().into()],
        None,
        0,
    )?;
    let auth = mercato_auth::AuthSettings {
        jwt: mercato_auth::JwtSettings {
            public_key_files: vec![public_key],
            ..mercato_auth::JwtSettings::default()
        },
        api_keys: vec![service_key.record.clone()],
        policy: None,
    };
    let server_settings = ServerSettings {
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        metrics_addr: args.metrics_addr,
        shutdown_delay_secs: 0.0,
        drain_timeout_secs: args.drain_timeout_secs,
        ..ServerSettings::default()
    };
    server_settings.validate()?;
    let mut server = Server::bind(server_settings.clone()).await?;
    let monolith = Monolith {
        args: &args,
        server: server_settings,
        auth,
        service_key: service_key.key,
    };
    monolith.install(&mut server).await?;
    // One auth layer for the one server, whatever the install order: the
    // dev issuer's key, the order service's key and the keys admins manage
    // through the user service.
    server.protect(&monolith.auth, monolith.redis().open()?)?;

    let admin_token = mint(&TokenArgs {
        sub: "admin".into(),
        roles: vec![Role::Admin.as_str().into()],
        ttl: 24 * 3600,
        data_dir: args.data_dir.clone(),
    })?;
    print_banner(&server, &args, &admin_token);
    server.run(shutdown_signal()).await?;
    Ok(())
}

/// What the three services of the monolith share.
struct Monolith<'a> {
    args: &'a UpArgs,
    server: ServerSettings,
    auth: mercato_auth::AuthSettings,
    /// The order service's API key towards the others.
    service_key: String,
}

impl Monolith<'_> {
    /// A service's own database: the flag's URL, or a SQLite file in --data-dir.
    fn database(&self, url: &Option<String>, file: &str) -> DatabaseSettings {
        DatabaseSettings {
            database_url: url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", self.args.data_dir.join(file).display()))
                .into(),
            ..DatabaseSettings::default()
        }
    }

    fn redis(&self) -> RedisSettings {
        RedisSettings {
            redis_url: self.args.redis_url.clone().unwrap_or_default().into(),
            ..RedisSettings::default()
        }
    }

    /// Installs the user, payment and order services into `server`.
    async fn install(&self, server: &mut Server) -> Result<(), Box<dyn std::error::Error>> {
        let user = mercato_user::Settings {
            server: self.server.clone(),
            auth: self.auth.clone(),
            database: self.database(&self.args.user_database_url, "user.db"),
            redis: self.redis(),
            ..mercato_user::Settings::default()
        };
        // One activity feed for the whole process: order and payment events
        // reach the user's StreamUserActivity through it.
        let feed = mercato_user::activity_feed(&user)?;
        mercato_user::install(server, &user, feed.clone()).await?;

        let payment = mercato_payment::Settings {
            server: self.server.clone(),
            auth: self.auth.clone(),
            database: self.database(&self.args.payment_database_url, "payment.db"),
            redis: self.redis(),
            ..mercato_payment::Settings::default()
        };
        mercato_payment::install(server, &payment, feed.clone()).await?;

        // The order service calls the others through real gRPC clients, over
        // loopback to this very process, as it would across pods.
        let loopback = format!("http://127.0.0.1:{}", server.grpc_addr().port());
        let order = mercato_order::Settings {
            server: self.server.clone(),
            auth: self.auth.clone(),
            service_api_key: self.service_key.clone().into(),
            database: self.database(&self.args.order_database_url, "order.db"),
            redis: self.redis(),
            user_service_addr: loopback.clone(),
            payment_service_addr: loopback,
            ..mercato_order::Settings::default()
        };
        mercato_order::install(server, &order, feed).await?;
        Ok(())
    }
}

/// The URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, rest)), Some((userinfo, host))) if rest.contains('@') => {
            let user = userinfo[scheme.len() + 3..]
                .split(':')
                .next()
                .unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

fn print_banner(server: &Server, args: &UpArgs, admin_token: &str) {
    let grpc = server.grpc_addr();
    let local = |addr: SocketAddr| {
        if addr.ip().is_unspecified() {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        }
    };
    let storage = match (&args.user_database_url, &args.redis_url) {
        (None, None) => format!(
            "SQLite under {}/, in-process cache and bus",
            args.data_dir.display()
        ),
        (db, redis) => format!(
            "user db: {}, redis: {}",
            db.as_deref().map_or("SQLite".into(), redact),
            redis.as_deref().map_or("in-process".into(), redact)
        ),
    };
    println!(
        "\nmercato is up\n\
         \x20 gRPC     {grpc}  user.v1.UserService, order.v1.OrderService, order.v1.CatalogService,\n\
         \x20                   payment.v1.PaymentService, grpc.health.v1.Health, reflection v1/v1alpha\n\
         \x20 probes   http://{http}/health/ready\n\
         \x20 metrics  http://{metrics}/metrics\n\
         \x20 storage  {storage}\n\n\
         Admin token (24 h; more with `mercato token --sub ID --role admin|user`):\n\
         \x20 export TOKEN={admin_token}\n\n\
         Try:\n\
         \x20 grpcurl -plaintext {g} list\n\
         \x20 grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"email\":\"ada@example.com\",\"full_name\":\"Ada Lovelace\"}}' {g} user.v1.UserService/CreateUser\n",
        http = local(server.http_addr()),
        metrics = local(server.metrics_addr()),
        g = local(grpc),
    );
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn banner_never_prints_passwords() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/users"),
            "postgres://app:***@db:5432/users"
        );
        assert_eq!(redact("redis://:pw@cache:6379"), "redis://:***@cache:6379");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
