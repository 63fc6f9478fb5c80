//! Records, for the run manifests, the git revision the binary was built from and the versions
//! of the libraries that compute the results (read from Cargo.lock, so they are the versions
//! actually linked).

use std::path::Path;
use std::process::Command;

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let root = Path::new(&manifest_dir).join("../..");

    let mut revision = git(&root, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Built from edited sources: say so (tracked files only; new files do not count).
    // Only the sources count: a regenerated report or README in the tree does not make the
    // binary differ from its commit.
    let sources = ["crates", "benches", "Cargo.toml", "Cargo.lock"];
    let status = [
        &["status", "--porcelain", "--untracked-files=no", "--"][..],
        &sources,
    ]
    .concat();
    if git(&root, &status).is_some_and(|s| !s.is_empty()) {
        revision.push_str("-dirty");
    }
    println!("cargo:rustc-env=LUS_BUILD_GIT_REVISION={revision}");
    // Rerun when any source changes, so "-dirty" follows the working tree.
    for path in ["crates", "benches", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    // Rebuild the revision when HEAD moves: the HEAD file, the branch it points to, packed refs.
    for name in ["HEAD", "packed-refs"] {
        if let Some(path) = git(&root, &["rev-parse", "--git-path", name]) {
            println!("cargo:rerun-if-changed={}", root.join(path).display());
        }
    }
    if let Some(branch) = git(&root, &["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(&root, &["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    let lock = root.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    for (package, var) in [
        ("candle-core", "LUS_CANDLE_VERSION"),
        ("polars", "LUS_POLARS_VERSION"),
        ("plotters", "LUS_PLOTTERS_VERSION"),
    ] {
        let version = locked_version(&text, package).unwrap_or_else(|| "unknown".into());
        println!("cargo:rustc-env={var}={version}");
    }

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LUS_RUSTC_VERSION={rustc_version}");
}

/// The version of `package` in a Cargo.lock (`name = "x"` followed by `version = "v"`).
fn locked_version(lock: &str, package: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{package}\"") {
            let version = lines.next()?.trim();
            return version
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_string);
        }
    }
    None
}
