//! Whether a configured query is one statement: `[source] query` runs on a
//! read-only connection, but a second statement hidden behind a semicolon
//! would still run with whatever else the account may do.

/// Whether `query` holds more than one statement. SQLite runs every
/// statement of a query text, so `PRAGMA query_only = OFF; DELETE …` would
/// write; the other databases refuse several statements in a prepared query.
///
/// Quoting rules differ (MySQL escapes with a backslash inside quotes,
/// PostgreSQL and SQLite do not), so the text is read both ways and refused
/// if either reading finds a second statement.
pub(crate) fn more_than_one_statement(query: &str) -> bool {
    second_statement(query, true) || second_statement(query, false)
}

fn second_statement(query: &str, backslash_escapes: bool) -> bool {
    let mut chars = query.chars().peekable();
    let mut ended = false;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                if ended {
                    return true;
                }
                while let Some(inner) = chars.next() {
                    if inner == '\\' && backslash_escapes && c != '`' {
                        chars.next();
                    } else if inner == c {
                        // A doubled quote is an escaped one; the string goes on.
                        if chars.peek() != Some(&c) {
                            break;
                        }
                        chars.next();
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for inner in chars.by_ref() {
                    if inner == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                for inner in chars.by_ref() {
                    if previous == '*' && inner == '/' {
                        break;
                    }
                    previous = inner;
                }
            }
            ';' => ended = true,
            c if c.is_whitespace() => {}
            _ if ended => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_statement_with_a_trailing_semicolon_or_quoted_semicolons_is_one() {
        for query in [
            "SELECT id FROM t WHERE enabled",
            "SELECT id FROM t;",
            "SELECT id FROM t; -- done\n",
            "SELECT id FROM t; /* done */ ",
            "SELECT 'a;b' AS x, \"c;d\" FROM t WHERE n <> 'it''s; fine'",
            "SELECT `x;y` FROM t -- ; DELETE\n",
        ] {
            assert!(!more_than_one_statement(query), "{query}");
        }
    }

    #[test]
    fn a_second_statement_is_found_however_it_is_hidden() {
        for query in [
            "PRAGMA query_only = OFF; DELETE FROM t",
            "SELECT 1;DELETE FROM t",
            "SELECT 1; /* x */ DELETE FROM t",
            "SELECT 'a\\'; DELETE FROM t; SELECT '",
            "SELECT 1 /* a */; 'x'",
        ] {
            assert!(more_than_one_statement(query), "{query}");
        }
    }
}
