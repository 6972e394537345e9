//! The repository's own files, and the command-line tools that tests run on
//! them (kubectl, promtool, redis-cli, …) with their output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A path in this repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs a command-line tool from the repository root; a missing tool fails
/// the test with the Debian package that brings it.
pub fn run_tool(tool: &str, package: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{}", missing_tool(tool, package, &e)))
}

pub fn missing_tool(tool: &str, package: &str, error: &std::io::Error) -> String {
    format!(
        "cannot run `{tool}` ({error}). The tests need it: install the Debian package \
         `{package}` (apt-get install {package}), or run scripts/ensure-services, which installs it"
    )
}

/// A tool's stdout and stderr together.
pub fn text_of(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Panics with the tool's output unless it succeeded; returns the output.
pub fn assert_success(what: &str, output: &Output) -> String {
    let text = text_of(output);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{text}",
        output.status
    );
    text
}
