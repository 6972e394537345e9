// The git revision that `bullmq_warden_build_info` reports. Shared by
// build.rs and its test (tests/build_info.rs), so the rules are tested as built.

/// `BULLMQ_WARDEN_REVISION` when set (container builds have no .git), else
/// `git rev-parse HEAD` in `dir`, else "unknown".
pub fn revision(from_env: Option<&str>, dir: &std::path::Path) -> String {
    if let Some(value) = from_env.map(str::trim).filter(|v| !v.is_empty()) {
        return value.to_owned();
    }
    git(dir, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}

/// A git command's trimmed output, or `None` without git or a repository.
pub fn git(dir: &std::path::Path, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}
