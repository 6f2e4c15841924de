//! Migrations that allow a rollback, and pods that never run them (issue
//! 35, defect 2).
//!
//! A rollback must be able to start the previous release. Here this build plays the previous release against a database
//! a newer one migrated (its migrations plus one this build does not know,
//! additive as the expand/contract rule asks). Before the fix every such
//! pod refused to start (sqlx: "migration … was previously applied but is
//! missing"), so a rollback crash-looped until the new release came back.

use std::process::Command;

use mercato_database::{MigrationSource, Migrations};
use mercato_proto::payment::v1::{PaymentStatus, payment_service_client::PaymentServiceClient};
use mercato_testkit::{
    RedisMode, auth,
    processes::{LogDir, ServiceProcess, free_port, local_service_env},
};

use crate::support::*;

/// The environment of a payment-service process on `database_url`.
fn service_env(logs: &LogDir, database_url: &str, migrations: &str) -> Vec<(String, String)> {
    let mut env = local_service_env(logs.path(), free_port(), database_url, &RedisMode::fresh());
    env.push(("DATABASE_MIGRATIONS".into(), migrations.into()));
    env
}

/// A charge through the service at `process`, as an admin.
async fn charge_through(process: &ServiceProcess, key: &str) -> PaymentStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", process.grpc))
        .unwrap()
        .connect_lazy();
    let mut client = PaymentServiceClient::new(auth::with_token(channel, &auth::admin()));
    client
        .charge(charge_req(key, &format!("o-{key}"), 1200, "pm_approve"))
        .await
        .expect("a charge")
        .into_inner()
        .payment
        .expect("payment")
        .status()
}

/// This build's migrations and the next release's: one more, additive.
fn next_release() -> Migrations {
    let with_next = |ours: &'static [MigrationSource]| -> &'static [MigrationSource] {
        let mut all = ours.to_vec();
        all.push(MigrationSource {
            version: 29991231000001,
            description: "next release: payment notes",
            sql: "ALTER TABLE payments ADD COLUMN note TEXT; \
                  CREATE TABLE payment_notes (payment_id TEXT PRIMARY KEY, note TEXT NOT NULL);",
        });
        Box::leak(all.into_boxed_slice())
    };
    let ours = mercato_payment::store::MIGRATIONS;
    Migrations {
        name: ours.name,
        postgres: with_next(ours.postgres),
        sqlite: with_next(ours.sqlite),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_starts_and_serves_on_a_schema_a_newer_one_migrated() {
    let database = TestDatabase::create(Db::Postgres).await;
    database
        .connect()
        .await
        .migrate(&next_release())
        .await
        .expect("the next release migrates");

    let logs = LogDir::new("mercato-rollback-");
    let env = service_env(&logs, &database.url, "apply");
    let previous = ServiceProcess::start(
        "payment service",
        env!("CARGO_BIN_EXE_payment-service").into(),
        env,
        logs.path(),
    )
    .await;

    assert_eq!(
        charge_through(&previous, "k-rollback").await,
        PaymentStatus::Captured
    );
}

/// `url` acting as `role` (same server and database).
/// The dev overlay's grants for the payment database, with its roles
/// (`postgres` owns, `mercato_app` serves) replaced by this test's.
fn dev_default_privileges(owner: &str, app: &str) -> String {
    let datastores = include_str!("../../../../deploy/overlays/dev/datastores.yaml");
    let (_, payment) = datastores
        .split_once("\\connect mercato_payment")
        .expect("datastores.yaml connects to mercato_payment");
    let statements: Vec<String> = payment
        .lines()
        .skip(1)
        .map(str::trim)
        .take_while(|line| line.starts_with("ALTER DEFAULT PRIVILEGES"))
        .map(|line| {
            line.replace("FOR ROLE postgres", &format!("FOR ROLE {owner}"))
                .replace("mercato_app", app)
        })
        .collect();
    assert_eq!(statements.len(), 2, "{payment}");
    statements.join("\n")
}

fn as_role(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}:{role}@{host}")
}

/// With `DATABASE_MIGRATIONS=require` a pod applies nothing: on a database
/// not migrated yet it refuses to start and says which command to run;
/// `payment-service migrate` (the migration Job, with the owner's role and
/// the Job's pool of one connection) applies them and exits; then the pod
/// starts and serves with a role that has no DDL rights at all — granted
/// its rows by the dev overlay's own default privileges (what
/// deploy/overlays/dev/datastores.yaml runs on a new Postgres).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_require_migrations_run_no_ddl_and_start_once_the_job_applied_them() {
    let database = TestDatabase::create(Db::Postgres).await;
    let owner = database.connect().await;
    let name: String = sqlx::query_scalar("SELECT CAST(current_database() AS TEXT)")
        .fetch_one(&owner.pool)
        .await
        .unwrap();
    // Named after the database: test.sh's sweep of stale test databases
    // takes stale roles too.
    let role = format!("{name}_app");
    sqlx::query(&format!("CREATE ROLE {role} LOGIN PASSWORD '{role}'"))
        .execute(&owner.pool)
        .await
        .unwrap();
    let app_url = as_role(&database.url, &role);
    let logs = LogDir::new("mercato-require-");
    let binary = env!("CARGO_BIN_EXE_payment-service");

    let refused = Command::new(binary)
        .env_clear()
        .envs(service_env(&logs, &app_url, "require"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("lacks migrations") && said.contains("payment-service migrate"),
        "{said}"
    );

    let owner_role: String = sqlx::query_scalar("SELECT CAST(current_user AS TEXT)")
        .fetch_one(&owner.pool)
        .await
        .unwrap();
    sqlx::raw_sql(&dev_default_privileges(&owner_role, &role))
        .execute(&owner.pool)
        .await
        .unwrap();
    let mut job_env = service_env(&logs, &database.url, "require");
    job_env.push(("DATABASE_MAX_CONNECTIONS".into(), "1".into()));
    let job = Command::new(binary)
        .arg("migrate")
        .env_clear()
        .envs(job_env)
        .output()
        .unwrap();
    assert!(
        job.status.success(),
        "{}",
        String::from_utf8_lossy(&job.stdout)
    );

    // Postgres 15 revokes CREATE on `public` from everyone by default;
    // older ones need this.
    sqlx::raw_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .execute(&owner.pool)
        .await
        .unwrap();
    let app = sqlx::AnyPool::connect(&app_url).await.unwrap();
    let ddl = sqlx::query("CREATE TABLE app_may_not (id TEXT)")
        .execute(&app)
        .await;
    assert!(ddl.is_err(), "the pods' role can change the schema");
    app.close().await;

    let pod = ServiceProcess::start(
        "payment service",
        binary.into(),
        service_env(&logs, &app_url, "require"),
        logs.path(),
    )
    .await;
    assert_eq!(
        charge_through(&pod, "k-require").await,
        PaymentStatus::Captured
    );
    drop(pod);
    owner.pool.close().await;
    drop(database);
    let admin = TestDatabase::create(Db::Postgres).await.connect().await;
    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
        .execute(&admin.pool)
        .await;
}
