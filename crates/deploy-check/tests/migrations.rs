//! Every shipped migration follows the expand/contract rule
//! (docs/migrations.md), and the check refuses a destructive one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mercato_deploy_check::migrations::findings;

/// Migrations shipped before the rule, with why each is safe. They cannot
/// carry the reason themselves: sqlx refuses to start on a database that
/// applied a migration whose text has changed since.
const REVIEWED: &[(&str, &str)] = &[
    (
        "20261201000002_key_outcomes.postgres.sql",
        "expand-only: the recovery_point CHECK is widened ('voided' added); \
         every value the previous release writes still passes",
    ),
    (
        "20261201000002_key_outcomes.sqlite.sql",
        "expand-only: SQLite cannot alter a CHECK, so the table is rebuilt \
         with every column and row kept, in the migration's transaction",
    ),
];

#[test]
fn every_shipped_migration_only_expands_or_says_why() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../services");
    let mut checked = 0;
    let mut problems = Vec::new();
    for service in std::fs::read_dir(root).unwrap() {
        let folder = service.unwrap().path().join("migrations");
        let Ok(files) = std::fs::read_dir(&folder) else {
            continue;
        };
        for file in files {
            let path = file.unwrap().path();
            let sql = std::fs::read_to_string(&path).unwrap();
            checked += 1;
            let name = path.file_name().unwrap().to_string_lossy();
            if REVIEWED.iter().any(|(file, _)| *file == name) {
                continue;
            }
            problems.extend(
                findings(&sql)
                    .into_iter()
                    .map(|f| format!("{}: {f}", path.display())),
            );
        }
    }
    assert!(checked >= 9, "only {checked} migrations found");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_destructive_migration_is_refused_unless_it_says_why() {
    let destructive = [
        "DROP TABLE payments;",
        "ALTER TABLE payments DROP COLUMN note;",
        "ALTER TABLE users RENAME COLUMN email TO mail;",
        "ALTER TABLE orders ALTER COLUMN total_minor TYPE INTEGER;",
        "ALTER TABLE orders ALTER COLUMN note SET NOT NULL;",
        "ALTER TABLE orders ADD COLUMN region TEXT NOT NULL;",
        "ALTER TABLE orders ADD region TEXT NOT NULL;",
        "ALTER TABLE orders ADD COLUMN a TEXT NOT NULL, ADD COLUMN b BIGINT DEFAULT 0;",
        "ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_recovery_point_check;",
        "DELETE FROM payments WHERE status = 'DECLINED';",
        "DROP INDEX orders_idempotency;",
        "ALTER TABLE orders ADD CONSTRAINT positive CHECK (total_minor > 0);",
        "CREATE UNIQUE INDEX users_email ON users (email);",
        "UPDATE orders SET status = 'CANCELLED';",
    ];
    for sql in destructive {
        assert_eq!(findings(sql).len(), 1, "{sql}: {:?}", findings(sql));
    }
    let expanding = [
        "CREATE TABLE notes (id TEXT PRIMARY KEY, renamed_at BIGINT);",
        "ALTER TABLE orders ADD COLUMN region TEXT NOT NULL DEFAULT 'eu';",
        "ALTER TABLE orders ADD COLUMN note TEXT;",
        "CREATE INDEX orders_by_user ON orders (user_id); -- DROP TABLE in a comment",
        "INSERT INTO flags (name) VALUES ('x -- DROP TABLE y; not a comment');",
        "ALTER TABLE orders ALTER COLUMN note SET DEFAULT '';",
        "ALTER TABLE orders ALTER COLUMN note DROP NOT NULL;",
    ];
    for sql in expanding {
        assert!(findings(sql).is_empty(), "{sql}: {:?}", findings(sql));
    }
    let said_why = "-- contract: release 2026.12 stopped reading payments.note\nALTER TABLE payments DROP COLUMN note;";
    assert!(findings(said_why).is_empty());
    let empty_reason = "-- contract:\nALTER TABLE payments DROP COLUMN note;";
    assert_eq!(findings(empty_reason).len(), 1);
    // A reason covers the statement it precedes, not the whole file.
    let one_reason = "-- contract: release 2026.12 stopped reading payments.note\n\
                      ALTER TABLE payments DROP COLUMN note;\n\
                      DROP TABLE orders;";
    assert_eq!(findings(one_reason).len(), 1, "{:?}", findings(one_reason));
}
