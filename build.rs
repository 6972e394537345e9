//! Records the git revision for `bullmq_warden_build_info{revision}`.

#[path = "build/revision.rs"]
mod revision;

const VAR: &str = "BULLMQ_WARDEN_REVISION";

fn main() {
    println!("cargo:rerun-if-env-changed={VAR}");
    println!("cargo:rerun-if-changed=build/revision.rs");
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    // Rebuild when HEAD moves: HEAD itself, the branch it names, packed refs.
    for args in [
        &["rev-parse", "--git-path", "HEAD"][..],
        &["rev-parse", "--git-path", "packed-refs"],
    ] {
        watch(&dir, revision::git(&dir, args));
    }
    if let Some(branch) = revision::git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch(
            &dir,
            revision::git(&dir, &["rev-parse", "--git-path", &branch]),
        );
    }
    let from_env = std::env::var(VAR).ok();
    let value = revision::revision(from_env.as_deref(), &dir);
    println!("cargo:rustc-env={VAR}={value}");
}

/// A file that does not exist would make cargo rerun this script on every build.
fn watch(dir: &std::path::Path, path: Option<String>) {
    if let Some(path) = path.map(|p| dir.join(p)).filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
