//! The expand/contract rule for migrations (docs/migrations.md): a release
//! only *expands* the schema — new tables, indexes, nullable or defaulted
//! columns — so that the release before it still runs on the new schema (a
//! rollback, or pods of both releases during a rolling update). What the
//! previous release reads or writes is removed only by a *contract*
//! migration, two releases later.
//!
//! [`findings`] lists the statements of one migration that may break the
//! previous release. A statement is accepted anyway when the migration says
//! why, in a comment line: `-- expand-only: <why the previous release still
//! works>` (e.g. a CHECK widened, a SQLite table rebuilt with every column
//! kept), or `-- contract: <the release that stopped using it>`. A
//! migration released before the rule cannot take the comment (its text
//! is fixed once applied anywhere): the test lists those with their reason.

/// Statement shapes that can break the previous release, and why.
const DESTRUCTIVE: &[(&str, &str)] = &[
    ("DROP TABLE", "drops a table"),
    ("DROP COLUMN", "drops a column"),
    ("DROP CONSTRAINT", "drops a constraint"),
    ("DROP VIEW", "drops a view"),
    ("DROP TYPE", "drops a type"),
    ("RENAME", "renames a table or column"),
    (
        "ALTER COLUMN",
        "changes a column (type, nullability, default)",
    ),
    ("TRUNCATE", "deletes every row"),
    ("DELETE FROM", "deletes rows"),
];

/// Why each statement of `sql` may break the previous release, unless the
/// migration carries an `expand-only:` or `contract:` reason.
pub fn findings(sql: &str) -> Vec<String> {
    let justified = sql.lines().map(str::trim).any(|line| {
        line.strip_prefix("--").map(str::trim).is_some_and(|c| {
            c.strip_prefix("expand-only:")
                .or_else(|| c.strip_prefix("contract:"))
                .is_some_and(|why| !why.trim().is_empty())
        })
    });
    if justified {
        return Vec::new();
    }
    let code: String = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for statement in code.split(';') {
        let normal = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        let upper = normal.to_ascii_uppercase();
        for (shape, why) in DESTRUCTIVE {
            if upper.contains(shape) {
                found.push(format!("{why}: {normal}"));
            }
        }
        if upper.contains("ADD COLUMN") && upper.contains("NOT NULL") && !upper.contains("DEFAULT")
        {
            found.push(format!(
                "adds a NOT NULL column without a default (the previous release's inserts fail): {normal}"
            ));
        }
    }
    found
}
