//! What a request costs a Postgres database in writes: triggers log every
//! row written to the given tables with the id of its transaction and the
//! start of the client statement that wrote it (`statement_timestamp()`,
//! distinct for each statement a client sends).

use mercato_database::Database;

/// Logs every row written to `tables` into a `write_log` table.
pub async fn log_writes(db: &Database, tables: &[&str]) {
    for statement in [
        "CREATE TABLE write_log (txid BIGINT NOT NULL, table_name TEXT NOT NULL, statement TIMESTAMPTZ NOT NULL)",
        "CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO write_log VALUES (txid_current(), TG_TABLE_NAME, statement_timestamp()); RETURN NULL; END $$",
    ] {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    for table in tables {
        sqlx::query(&format!(
            "CREATE TRIGGER log_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION log_write()"
        ))
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

/// The logged writes as (transaction, table, statement start), in order.
pub async fn logged(db: &Database) -> Vec<(i64, String, String)> {
    sqlx::query_as("SELECT txid, table_name, statement::text FROM write_log ORDER BY statement")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// One number from the log (or any query).
pub async fn count(db: &Database, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

/// Transactions that wrote.
pub async fn writing_transactions(db: &Database) -> i64 {
    count(db, "SELECT count(DISTINCT txid) FROM write_log").await
}

/// Client statements that wrote.
pub async fn writing_statements(db: &Database) -> i64 {
    count(
        db,
        "SELECT count(*) FROM (SELECT DISTINCT txid, statement FROM write_log) s",
    )
    .await
}
