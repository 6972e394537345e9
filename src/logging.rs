//! Log output: where log lines go and how values from outside are kept from
//! forging lines or steering the terminal.
//!
//! Queue names, row ids and error texts come from the database and from Redis.
//! tracing-subscriber already escapes ANSI and C1 control characters inside
//! values; a newline or carriage return in a value would still start a line
//! that looks like the warden's own. Plain log lines pass through
//! [`OneLineStderr`], which escapes every line break but the last. JSON lines
//! need nothing: JSON escapes control characters itself.

use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;

use crate::text;

/// Which shape log lines take on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Plain,
    Json,
}

/// Log targets that would quote secrets, silenced below errors.
const SECRET_QUOTING_TARGETS: &str = "sqlx_postgres::options=error";

/// Installs the global subscriber; `RUST_LOG` sets the level.
pub(crate) fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
        // sqlx's PostgreSQL driver warns about URL parameters it does not
        // know and quotes their values, `sslpassword` among them: never show
        // those, whatever RUST_LOG says.
        .add_directive(SECRET_QUOTING_TARGETS.parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Plain => builder
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .with_writer(OneLineStderr)
            .init(),
        LogFormat::Json => builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .init(),
    }
}

/// Colours are for a person at a terminal: in a file or a pipe (a log
/// collector) they are escape codes around every field. A non-empty
/// `NO_COLOR` turns them off everywhere (<https://no-color.org>).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Stderr for plain log lines. The formatter hands over each event as one
/// buffer ending in a newline; everything in between that could break the
/// line is written escaped.
#[derive(Clone, Copy)]
pub(crate) struct OneLineStderr;

impl<'a> MakeWriter<'a> for OneLineStderr {
    type Writer = OneLineWriter<std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLineWriter(std::io::stderr())
    }
}

pub(crate) struct OneLineWriter<W>(W);

impl<W: Write> Write for OneLineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(one_log_line(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `text` with its inner line breaks and other control characters escaped.
/// ESC stays: the formatter's own colours use it, and tracing-subscriber has
/// already escaped every ESC that came inside a value.
fn one_log_line(text: &str) -> String {
    let (body, end) = match text.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (text, ""),
    };
    let mut line = String::with_capacity(text.len());
    for c in body.chars() {
        match c {
            '\x1b' | '\t' => line.push(c),
            c if text::needs_escape(c) => text::push_escaped(&mut line, c),
            c => line.push(c),
        }
    }
    line.push_str(end);
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }

    #[test]
    fn a_log_line_keeps_its_end_and_loses_inner_breaks() {
        assert_eq!(
            one_log_line("INFO queue=a\nFAKE line\r\n"),
            "INFO queue=a\\nFAKE line\\r\n"
        );
        assert_eq!(
            one_log_line("\x1b[2mts\x1b[0m ok\n"),
            "\x1b[2mts\x1b[0m ok\n"
        );
        assert_eq!(one_log_line("a\u{202e}b\n"), "a\\u{202e}b\n");
    }
}
