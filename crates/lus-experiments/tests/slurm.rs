//! A real Slurm: `experiments/slurm/local-cluster.sh` brings up munged, slurmctld and slurmd
//! on this machine (everything in a temporary folder), `lus slurm` writes the job arrays of a
//! tiny experiment (4 tasks per stage), `submit.sh` submits them with their dependencies, and
//! the results must be those of one unsharded `lus run`. Skipped, with the reason printed,
//! where Slurm is not installed (`apt-get install slurm-wlm munge`; `.ci/run` installs it) or
//! the test does not run as root (slurmd needs it).

mod common;

use common::{lus, stderr};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/slurm/local-cluster.sh")
}

fn installed(tool: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).is_file())
}

/// Stops the cluster however the test ends.
struct Cluster(PathBuf);

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.0).status();
    }
}

fn experiment(dir: &Path, runs: &str) -> String {
    common::write_tiny_grid(
        dir,
        "slurm",
        runs,
        "seeds = [0, 1]\nfolds = 3\ninner_folds = 4\narms = [\"dense\", \"sparse\", \"none\"]",
    )
}

fn squeue_empty(conf: &Path) -> bool {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%i %T"])
        .env("SLURM_CONF", conf)
        .output()
        .expect("squeue runs");
    assert!(out.status.success(), "squeue: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

fn logs(dir: &Path) -> String {
    let mut text = String::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        text.push_str(&format!(
            "--- {}\n{}\n",
            path.display(),
            fs::read_to_string(&path).unwrap_or_default()
        ));
    }
    text
}

#[test]
fn a_job_array_on_a_real_slurm_gives_the_results_of_one_run() {
    let missing: Vec<&str> = ["munged", "slurmctld", "slurmd", "sbatch", "squeue"]
        .into_iter()
        .filter(|t| !installed(t))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "skipped: Slurm is not installed here ({} missing; apt-get install slurm-wlm munge)",
            missing.join(", ")
        );
        return;
    }
    // /proc/self belongs to the process's effective user.
    let euid = std::os::unix::fs::MetadataExt::uid(&fs::metadata("/proc/self").unwrap());
    if euid != 0 {
        eprintln!("skipped: slurmd needs root to start job steps, and this test is not root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let alone = experiment(dir.path(), "alone");
    let out = lus(&["run", &alone, "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let cluster_dir = dir.path().join("cluster");
    let up = Command::new(script())
        .arg("start")
        .arg(&cluster_dir)
        .output()
        .unwrap();
    let _cluster = Cluster(cluster_dir.clone());
    assert!(
        up.status.success(),
        "local Slurm did not start:\n{}\n{}",
        String::from_utf8_lossy(&up.stdout),
        stderr(&up)
    );
    let conf = cluster_dir.join("slurm.conf");

    let arrays = experiment(dir.path(), "arrays");
    let scripts = dir.path().join("scripts");
    let out = lus(&[
        "slurm",
        &arrays,
        "--out",
        scripts.to_str().unwrap(),
        "--tasks",
        "4",
        "--cpus-per-task",
        "1",
        "--mem-gb",
        "1",
        "--pretrain-minutes",
        "2",
        "--classify-minutes",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("pretrain: 4 cells in 4 task(s)")
            && text.contains("classify: 18 cells in 4 task(s) of at most 5 cell(s)"),
        "{text}"
    );
    let pretrain = fs::read_to_string(scripts.join("pretrain.sbatch")).unwrap();
    assert!(pretrain.contains("#SBATCH --array=0-3"), "{pretrain}");
    assert!(
        pretrain.contains("--shard \"${SLURM_ARRAY_TASK_ID}/4\""),
        "{pretrain}"
    );
    assert!(!pretrain.contains("--gres"), "{pretrain}");

    let submitted = Command::new(scripts.join("submit.sh"))
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    assert!(
        submitted.status.success(),
        "submit.sh: {}\n{}",
        stderr(&submitted),
        logs(&cluster_dir)
    );
    let started = Instant::now();
    while !squeue_empty(&conf) {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the jobs did not finish in 15 min\n{}",
            logs(&scripts.join("logs"))
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let results = |runs: &str| {
        fs::read_to_string(
            dir.path()
                .join(format!("reports-{runs}/slurm/cls_results.csv")),
        )
    };
    let arrays_results = results("arrays").unwrap_or_else(|e| {
        panic!(
            "no report from the Slurm jobs ({e}):\n{}",
            logs(&scripts.join("logs"))
        )
    });
    assert_eq!(
        arrays_results,
        results("alone").unwrap(),
        "a 4-task job array per stage must give the results of one unsharded run"
    );
    // 4 pretraining tasks, 4 classification tasks and the report ran, each with a log.
    let job_logs: Vec<String> = fs::read_dir(scripts.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for (prefix, count) in [("pretrain-", 4), ("classify-", 4), ("report-", 1)] {
        assert_eq!(
            job_logs.iter().filter(|n| n.starts_with(prefix)).count(),
            count,
            "{job_logs:?}"
        );
    }
}
