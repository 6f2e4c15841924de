//! The expand/contract rule for migrations (docs/migrations.md): a release
//! only *expands* the schema — new tables, indexes, nullable or defaulted
//! columns — so that the release before it still runs on the new schema (a
//! rollback, or pods of both releases during a rolling update). What the
//! previous release reads or writes is removed only by a *contract*
//! migration, releases later.
//!
//! [`findings`] lists the statements of one migration that may break the
//! previous release. A statement is accepted anyway when a comment line
//! just before it (in the same statement, after the previous `;`) says why:
//! `-- expand-only: <why the previous release still works>` (e.g. a CHECK
//! widened, a SQLite table rebuilt with every column kept), or `--
//! contract: <the release that stopped using it>`. A migration released
//! before the rule cannot take the comment (its text is fixed once applied
//! anywhere): the test lists those with their reason.

/// Word sequences that can break the previous release, and why.
const DESTRUCTIVE: &[(&[&str], &str)] = &[
    (&["DROP", "TABLE"], "drops a table"),
    (&["DROP", "COLUMN"], "drops a column"),
    (&["DROP", "CONSTRAINT"], "drops a constraint"),
    (
        &["DROP", "INDEX"],
        "drops an index (a unique one backs ON CONFLICT)",
    ),
    (&["DROP", "VIEW"], "drops a view"),
    (&["DROP", "TYPE"], "drops a type"),
    (&["DROP", "SEQUENCE"], "drops a sequence"),
    (&["DROP", "FUNCTION"], "drops a function"),
    (&["DROP", "TRIGGER"], "drops a trigger"),
    (&["RENAME"], "renames a table or column"),
    (&["TRUNCATE"], "deletes every row"),
    (&["DELETE", "FROM"], "deletes rows"),
    (
        &["ADD", "CONSTRAINT"],
        "adds a constraint the previous release's writes may break",
    ),
    (
        &["CREATE", "UNIQUE", "INDEX"],
        "adds a uniqueness the previous release's writes may break",
    ),
];

/// `ALTER COLUMN …` forms that only loosen (fine for the previous release).
const LOOSENING: &[&[&str]] = &[
    &["SET", "DEFAULT"],
    &["DROP", "DEFAULT"],
    &["DROP", "NOT", "NULL"],
];

/// One statement of a migration: its code (comments and string contents
/// out) and whether a reason comment precedes it.
struct Statement {
    words: Vec<String>,
    text: String,
    justified: bool,
}

/// Splits `sql` into statements at `;` outside string literals, keeping
/// each statement's comment lines (a `--` inside a string is no comment).
fn statements(sql: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    let (mut code, mut comments) = (String::new(), String::new());
    let mut chars = sql.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            if c == '\'' {
                in_string = false;
                code.push('\'');
            }
            continue;
        }
        match c {
            '\'' => {
                in_string = true;
                code.push('\'');
            }
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                    comments.push(c);
                }
                comments.push('\n');
            }
            ';' => out.push(statement(&code, &comments)),
            c => code.push(c),
        }
        if c == ';' {
            code.clear();
            comments.clear();
        }
    }
    out.push(statement(&code, &comments));
    out.retain(|s| !s.words.is_empty());
    out
}

fn statement(code: &str, comments: &str) -> Statement {
    let justified = comments.lines().any(|line| {
        let line = line.trim_start_matches('-').trim();
        line.strip_prefix("expand-only:")
            .or_else(|| line.strip_prefix("contract:"))
            .is_some_and(|why| !why.trim().is_empty())
    });
    let words = code
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase)
        .collect();
    Statement {
        words,
        text: code.split_whitespace().collect::<Vec<_>>().join(" "),
        justified,
    }
}

/// Whether `words` holds `shape` at `at`.
fn at(words: &[String], at: usize, shape: &[&str]) -> bool {
    words.len() >= at + shape.len() && shape.iter().enumerate().all(|(i, w)| words[at + i] == *w)
}

/// Why each statement of `sql` may break the previous release, unless a
/// reason comment precedes it.
pub fn findings(sql: &str) -> Vec<String> {
    let mut found = Vec::new();
    for statement in statements(sql).into_iter().filter(|s| !s.justified) {
        let words = &statement.words;
        let mut why: Vec<&str> = Vec::new();
        for i in 0..words.len() {
            for (shape, reason) in DESTRUCTIVE {
                if at(words, i, shape) {
                    why.push(reason);
                }
            }
            if at(words, i, &["ALTER", "COLUMN"]) && !LOOSENING.iter().any(|l| at(words, i + 3, l))
            {
                why.push("changes a column (type, nullability)");
            }
        }
        if words.first().is_some_and(|w| w == "UPDATE") {
            why.push("rewrites rows");
        }
        // Each `ADD [COLUMN] name …` clause, up to the next ADD.
        let adds: Vec<usize> = (0..words.len()).filter(|&i| words[i] == "ADD").collect();
        for (n, &start) in adds.iter().enumerate() {
            let end = adds.get(n + 1).copied().unwrap_or(words.len());
            let clause = &words[start..end];
            let not_null = (0..clause.len()).any(|i| at(clause, i, &["NOT", "NULL"]));
            if clause.get(1).is_some_and(|w| w != "CONSTRAINT")
                && not_null
                && !clause.iter().any(|w| w == "DEFAULT")
            {
                why.push("adds a NOT NULL column without a default (the previous release's inserts fail)");
            }
        }
        found.extend(why.into_iter().map(|w| format!("{w}: {}", statement.text)));
    }
    found
}
