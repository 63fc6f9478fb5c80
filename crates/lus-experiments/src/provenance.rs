//! The run manifest (`run.json`) written beside every result: what produced it (command,
//! revision, library versions, device, threads), with which seed, when, how long it took and
//! how much memory it needed.

use std::path::Path;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// File name of the run manifest.
pub const RUN_MANIFEST_FILE: &str = "run.json";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RunManifest {
    pub format: String,
    /// What the run is (e.g. `train-seg`, `eval-seg`).
    pub kind: String,
    pub lus_version: String,
    /// Revision the binary was built from.
    pub build_git_revision: String,
    /// Revision of the working directory when the run started (`None` outside a git checkout),
    /// and whether tracked source files (crates, benches, Cargo.toml/lock) had uncommitted
    /// changes.
    pub git_revision: Option<String>,
    pub git_dirty: Option<bool>,
    pub rustc: String,
    pub candle: String,
    pub polars: String,
    pub plotters: String,
    pub command: Vec<String>,
    pub seed: u64,
    pub device: String,
    pub rayon_threads: usize,
    pub host_cpus: usize,
    /// Seconds since the Unix epoch.
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    pub wall_seconds: Option<f64>,
    /// Peak resident memory of the process in MiB (Linux `VmHWM`), when known.
    pub peak_rss_mib: Option<f64>,
    /// Largest memory in use on the CUDA device during training, in MiB (driver's view, the
    /// allocator's pool included); absent on the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_device_memory_mib: Option<f64>,
}

/// Starts a manifest; [`RunClock::finish`] fills in the end.
pub struct RunClock {
    manifest: RunManifest,
    started: Instant,
}

impl RunClock {
    pub fn start(kind: &str, seed: u64, device: &str) -> Self {
        let (git_revision, git_dirty) = working_tree_revision();
        RunClock {
            manifest: RunManifest {
                format: "lus-run/1".into(),
                kind: kind.into(),
                lus_version: env!("CARGO_PKG_VERSION").into(),
                build_git_revision: env!("LUS_BUILD_GIT_REVISION").into(),
                git_revision,
                git_dirty,
                rustc: env!("LUS_RUSTC_VERSION").into(),
                candle: env!("LUS_CANDLE_VERSION").into(),
                polars: env!("LUS_POLARS_VERSION").into(),
                plotters: env!("LUS_PLOTTERS_VERSION").into(),
                command: std::env::args().collect(),
                seed,
                device: device.into(),
                rayon_threads: rayon::current_num_threads(),
                host_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
                started_unix: unix_now(),
                finished_unix: None,
                wall_seconds: None,
                peak_rss_mib: None,
                peak_device_memory_mib: None,
            },
            started: Instant::now(),
        }
    }

    /// The manifest with end time, wall time and peak memory filled in.
    pub fn finish(mut self) -> RunManifest {
        self.manifest.finished_unix = Some(unix_now());
        self.manifest.wall_seconds = Some(self.started.elapsed().as_secs_f64());
        self.manifest.peak_rss_mib = peak_rss_mib();
        self.manifest
    }
}

/// The run manifest of the run folder `dir`: `None` when it has none (the run is not
/// complete), an error naming the file when it cannot be read or is not a manifest.
pub fn read_run_manifest(dir: &Path) -> anyhow::Result<Option<RunManifest>> {
    use anyhow::Context as _;
    let path = dir.join(RUN_MANIFEST_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = lus_io::read_text(&path)?;
    let manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid run manifest", path.display()))?;
    Ok(Some(manifest))
}

/// Writes `manifest` as pretty JSON to `dir/run.json`, atomically.
pub fn write_run_manifest(dir: &Path, manifest: &RunManifest) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(manifest)?;
    lus_io::write_atomic(&dir.join(RUN_MANIFEST_FILE), text.as_bytes())?;
    Ok(())
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn working_tree_revision() -> (Option<String>, Option<bool>) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let revision = git(&["rev-parse", "HEAD"]);
    let dirty = revision
        .as_ref()
        // The sources only: reports and docs regenerated in the tree do not count.
        .and_then(|_| {
            git(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "crates",
                "benches",
                "Cargo.toml",
                "Cargo.lock",
            ])
        })
        .map(|s| !s.is_empty());
    (revision, dirty)
}

/// Peak resident set size of this process in MiB, from `/proc/self/status` (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
