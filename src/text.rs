//! Text from outside — rows, Redis keys, error messages — made safe to show
//! on one line of a terminal or a log.

use std::borrow::Cow;

/// Control characters, and the Unicode marks that reorder or break what a
/// terminal shows (bidirectional overrides, line and paragraph separators).
pub(crate) fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

pub(crate) fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
    }
}

/// `text` fit for a terminal: every character [`needs_escape`] names is
/// written as an escape, so a row's value cannot move the cursor, recolour
/// the screen or start a line of its own.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `text` on one line with single spaces: what a driver's multi-line error
/// or a TOML parser's message becomes in a one-line report.
pub(crate) fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_what_would_steer_a_terminal() {
        assert_eq!(printable("inspection:1"), "inspection:1");
        assert_eq!(printable("x\n\x1b[31mred"), "x\\n\\u{1b}[31mred");
        assert_eq!(printable("a\tb\u{7f}"), "a\\tb\\u{7f}");
    }
}
