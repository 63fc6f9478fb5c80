//! End-to-end tests of `lus train-seg`, `lus eval-seg`, `lus run` and `lus report` on a tiny
//! experiment: outputs, determinism of two runs with the same seed, skipping finished cells,
//! and bad input.

mod common;

use common::{assert_fails_saying, lus, stderr};

use std::fs;
use std::path::Path;

/// A two-arm experiment small enough for a test (a few seconds per cell).
fn tiny_experiment(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"name = "tiny"
runs_dir = "{runs}"
reports_dir = "{reports}"
[dataset]
seed = 3
train = 12
val = 4
test = 4
[dataset.scanner]
size = 64
[pretrain.train]
epochs = 2
batch_size = 4
lr = 0.003
device = "cpu"
log_every = 1
[pretrain.train.loss]
dice_weight = 0.5
[pretrain.unet]
depth = 2
base_channels = 4
dropout = 0.1
[pretrain.data]
size = 32
[pretrain.data.augment]
[evaluation]
overlay_examples = 2
"#,
        runs = dir.join("runs").display(),
        reports = dir.join("reports").display()
    );
    let path = dir.join("tiny.toml");
    fs::write(&path, text).unwrap();
    path
}

/// `lus train-seg` of `labels` for one epoch into `run` (plus `extra` arguments); must succeed.
fn train_one_epoch(config: &Path, labels: &str, run: &Path, extra: &[&str]) {
    let mut args = vec![
        "train-seg",
        "--config",
        config.to_str().unwrap(),
        "--labels",
        labels,
        "--out",
        run.to_str().unwrap(),
        "--set",
        "pretrain.train.epochs=1",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let out = lus(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `lus synth` of three 64-px samples of `seed` into `out`; must succeed.
fn synth_three(out: &Path, seed: u64) {
    let seed = seed.to_string();
    let synth = lus(&[
        "synth",
        "--count",
        "3",
        "--size",
        "64",
        "--seed",
        &seed,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(synth.status.success(), "{}", stderr(&synth));
}

/// The metrics table without the two machine-dependent columns (throughput and wall time).
fn deterministic_columns(csv: &Path) -> Vec<Vec<String>> {
    let text = fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| !matches!(header[i], "images_per_s" | "seconds"))
        .collect();
    std::iter::once(header.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .chain(lines.map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            keep.iter().map(|&i| cells[i].to_string()).collect()
        }))
        .collect()
}

#[test]
fn two_runs_with_the_same_seed_give_identical_tables_and_finished_cells_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_experiment(dir.path());
    let config = config.to_str().unwrap();
    let a = lus(&["run", config, "--quiet"]);
    assert!(a.status.success(), "{}", stderr(&a));
    let runs_b = dir.path().join("runs-b");
    let reports_b = dir.path().join("reports-b");
    let b = lus(&[
        "run",
        config,
        "--quiet",
        "--set",
        &format!("runs_dir={:?}", runs_b.display().to_string()),
        "--set",
        &format!("reports_dir={:?}", reports_b.display().to_string()),
    ]);
    assert!(b.status.success(), "{}", stderr(&b));

    let report_a = dir.path().join("reports/tiny");
    let report_b = reports_b.join("tiny");
    for cell in ["dense-seed0", "sparse-seed0"] {
        let cell_a = dir.path().join("runs/tiny/pretrain").join(cell);
        let cell_b = runs_b.join("tiny/pretrain").join(cell);
        for file in [
            "best.safetensors",
            "best.json",
            "eval/test-dense.csv",
            "eval/test-sparse.csv",
        ] {
            assert_eq!(
                fs::read(cell_a.join(file)).unwrap(),
                fs::read(cell_b.join(file)).unwrap(),
                "{cell}/{file} differs between two runs with the same seed"
            );
        }
        let without_dirs = |p: &Path| -> String {
            fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("runs_dir") && !l.starts_with("reports_dir"))
                .collect()
        };
        assert_eq!(
            without_dirs(&cell_a.join("config.resolved.toml")),
            without_dirs(&cell_b.join("config.resolved.toml"))
        );
        let table = deterministic_columns(&cell_a.join("metrics.csv"));
        assert_eq!(table.len(), 3, "header + 2 epochs");
        assert_eq!(table, deterministic_columns(&cell_b.join("metrics.csv")));
        assert!(cell_a.join("run.json").is_file());
        assert!(cell_a.join("curves-loss.png").is_file());
    }
    assert_eq!(
        fs::read(report_a.join("seg_results.csv")).unwrap(),
        fs::read(report_b.join("seg_results.csv")).unwrap()
    );
    let report = fs::read_to_string(report_a.join("REPORT.md")).unwrap();
    for needle in [
        "FP / image",
        "dense truth",
        "Pretraining arms",
        "pleural-line",
    ] {
        assert!(report.contains(needle), "REPORT.md lacks {needle:?}");
    }
    for figure in ["curves-loss.png", "curves-val-miou.png", "overlay.png"] {
        assert!(report_a.join("figures").join(figure).is_file(), "{figure}");
    }
    // The dense arm is scored on 8 classes of dense truth; its table has one row per class for
    // each truth and arm: 2 arms x 2 truths x 9 classes.
    let results = fs::read_to_string(report_a.join("seg_results.csv")).unwrap();
    assert_eq!(results.lines().count(), 1 + 2 * 2 * 9);

    // Running again skips both cells and rewrites the report from them.
    let again = lus(&["run", config]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stderr(&again).matches("complete, skipped").count(),
        2,
        "{}",
        stderr(&again)
    );
    let rebuilt = lus(&["report", config]);
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    assert_eq!(
        fs::read(report_a.join("seg_results.csv")).unwrap(),
        fs::read(report_b.join("seg_results.csv")).unwrap()
    );

    // A changed configuration does not silently reuse the cells: they are moved aside, named
    // with what changed, and run again.
    let changed = lus(&["run", config, "--quiet", "--set", "pretrain.train.lr=0.01"]);
    assert!(changed.status.success(), "{}", stderr(&changed));
    assert_eq!(
        stderr(&changed)
            .matches("its configuration changed (pretrain.train.lr: ")
            .count(),
        2,
        "{}",
        stderr(&changed)
    );
    let superseded = dir.path().join("runs/tiny/superseded");
    assert_eq!(fs::read_dir(&superseded).unwrap().count(), 2);
    // `lus train-seg` never moves a folder it was given: another configuration is an error.
    let cell = dir.path().join("runs/tiny/pretrain/dense-seed0");
    let refused = lus(&[
        "train-seg",
        "--config",
        config,
        "--labels",
        "dense",
        "--seed",
        "0",
        "--out",
        cell.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("another configuration"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn train_seg_writes_a_run_folder_and_eval_seg_scores_a_synth_folder() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_experiment(dir.path());
    let run = dir.path().join("run");
    train_one_epoch(&config, "sparse", &run, &["--seed", "5"]);
    for file in [
        "best.safetensors",
        "metrics.csv",
        "metrics.parquet",
        "config.resolved.toml",
        "run.json",
        "eval/test-dense.csv",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let resolved = fs::read_to_string(run.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("name = \"sparse\""), "{resolved}");
    assert!(resolved.contains("seeds = [5]"), "{resolved}");
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(manifest["seed"], 5);
    assert_eq!(manifest["candle"], "0.11.1");
    assert!(manifest["build_git_revision"].as_str().unwrap().len() >= 7);

    let data = dir.path().join("synth");
    synth_three(&data, 9);
    let scored = dir.path().join("scored");
    let eval = lus(&[
        "eval-seg",
        "--weights",
        run.join("best.safetensors").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        scored.to_str().unwrap(),
    ]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let printed = String::from_utf8_lossy(&eval.stdout);
    assert!(printed.contains("| b-line |"), "{printed}");
    assert!(printed.contains("3 images"), "{printed}");
    let table = fs::read_to_string(scored.join("eval-dense.csv")).unwrap();
    assert_eq!(table.lines().count(), 1 + 9);
}

#[test]
fn bad_requests_fail_with_a_clear_message_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_experiment(dir.path());
    let config = config.to_str().unwrap();
    let out_dir = dir.path().join("never");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--set", "pretrain.train.epoch=2"],
            "did you mean `epochs`",
        ),
        (vec!["--set", "pretrain.train.lr=-1"], "lr"),
        (vec!["--device", "cuda"], "cuda"),
        (vec!["--set", "dataset.source=\"folder\""], "dataset.folder"),
    ];
    for (extra, needle) in cases {
        let mut args = vec![
            "train-seg",
            "--config",
            config,
            "--labels",
            "dense",
            "--out",
            out_dir.to_str().unwrap(),
            "--quiet",
        ];
        args.extend(extra.iter().copied());
        let out = lus(&args);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(stderr(&out).contains(needle), "{extra:?}: {}", stderr(&out));
        assert!(!out_dir.exists(), "{extra:?} wrote {}", out_dir.display());
    }
    let missing = lus(&["run", "/nonexistent/exp.toml"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("/nonexistent/exp.toml"),
        "{}",
        stderr(&missing)
    );
    let labels = lus(&[
        "train-seg",
        "--config",
        config,
        "--labels",
        "dens",
        "--out",
        "x",
    ]);
    assert!(!labels.status.success());
    assert!(
        stderr(&labels).contains("did you mean \"dense\""),
        "{}",
        stderr(&labels)
    );
    let no_config = lus(&[
        "eval-seg",
        "--weights",
        dir.path().join("w.safetensors").to_str().unwrap(),
        "--data",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!no_config.status.success());
    assert!(
        stderr(&no_config).contains("config.resolved.toml"),
        "{}",
        stderr(&no_config)
    );
}

#[test]
fn bench_unet_step_reports_times_and_the_flop_count() {
    let out = lus(&[
        "bench",
        "unet-step",
        "--batch",
        "2",
        "--size",
        "32",
        "--base",
        "4",
        "--depth",
        "2",
        "--classes",
        "3",
        "--rounds",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    // Forward multiply-adds of this net: level 0 (32 px, 4 ch) 9*(1*4 + 4*4), level 1 (16 px,
    // 8 ch) 9*(4*8 + 8*8), bottleneck (8 px, 16 ch) 9*(8*16 + 16*16), decoder 1: up 16->8 at
    // 8 px x 4 taps, convs 9*3*8*8 at 16 px; decoder 0: up 8->4, convs 9*3*4*4 at 32 px; head 4*3.
    let px = |s: f64| 2.0 * s * s;
    let macs = px(32.0) * 9.0 * 20.0
        + px(16.0) * 9.0 * 96.0
        + px(8.0) * 9.0 * 384.0
        + px(8.0) * 16.0 * 8.0 * 4.0
        + px(16.0) * 9.0 * 192.0
        + px(16.0) * 8.0 * 4.0 * 4.0
        + px(32.0) * 9.0 * 48.0
        + px(32.0) * 12.0;
    let gflop = result["gflop_per_step"].as_f64().unwrap();
    assert!(
        (gflop - 6.0 * macs / 1e9).abs() < 1e-12,
        "{gflop} vs {}",
        6.0 * macs / 1e9
    );
    assert_eq!(result["step_ms_all"].as_array().unwrap().len(), 2);
    assert!(result["step_ms_median"].as_f64().unwrap() > 0.0);
    assert_eq!(result["kernels"], "lus");
    let bad = lus(&["bench", "unet-step", "--size", "30", "--depth", "2"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("multiple of 2^depth"),
        "{}",
        stderr(&bad)
    );
}

/// `lus segment` on a frame, a clip and a folder with a tiny trained cell: the outputs, the
/// tables' rows, `--json`, and the errors that name what is wrong without writing anything.
#[test]
fn segment_reads_findings_off_frames_clips_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_experiment(dir.path());
    let run = dir.path().join("run");
    train_one_epoch(&config, "dense", &run, &[]);
    let weights = run.join("best.safetensors");
    let weights = weights.to_str().unwrap();
    let data = dir.path().join("synth");
    synth_three(&data, 4);
    let images: Vec<std::path::PathBuf> = {
        let mut v: Vec<_> = fs::read_dir(data.join("images"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    assert_eq!(images.len(), 3);

    // One frame, with --json.
    let frame_out = dir.path().join("seg-frame");
    let frame = lus(&[
        "segment",
        "--weights",
        weights,
        "--input",
        images[0].to_str().unwrap(),
        "--out",
        frame_out.to_str().unwrap(),
        "--json",
    ]);
    assert!(frame.status.success(), "{}", stderr(&frame));
    let json: serde_json::Value = serde_json::from_slice(&frame.stdout).unwrap();
    assert_eq!(json["kind"], "frame");
    assert_eq!(json["size"], 32);
    assert_eq!(json["frames"].as_array().unwrap().len(), 1);
    assert!(json["frames"][0]["b_lines"].is_u64());
    assert_eq!(json["rules"]["b_pattern"], 3);
    assert_eq!(json["timing"]["frames"], 1);
    for file in [
        "segment.json",
        "frames.csv",
        "frames.parquet",
        "overlay.png",
    ] {
        assert!(frame_out.join(file).is_file(), "{file} missing");
    }
    assert_eq!(
        fs::read_to_string(frame_out.join("frames.csv"))
            .unwrap()
            .lines()
            .count(),
        2
    );

    // A folder of frames: one clip per image.
    let folder_out = dir.path().join("seg-folder");
    let folder = lus(&[
        "segment",
        "--weights",
        weights,
        "--input",
        data.join("images").to_str().unwrap(),
        "--out",
        folder_out.to_str().unwrap(),
    ]);
    assert!(folder.status.success(), "{}", stderr(&folder));
    assert!(String::from_utf8_lossy(&folder.stdout).contains("frames/s"));
    let clips = fs::read_to_string(folder_out.join("clips.csv")).unwrap();
    assert_eq!(clips.lines().count(), 4, "{clips}");
    assert!(clips.lines().next().unwrap().contains("b_pattern_share"));
    assert!(folder_out.join("clips.parquet").is_file());

    // A clip (a GIF of the three frames, made by FFmpeg) when FFmpeg is installed.
    let ffmpeg = std::process::Command::new("ffmpeg")
        .arg("-version")
        .output();
    if ffmpeg.is_ok_and(|o| o.status.success()) {
        let clip = dir.path().join("clip.gif");
        let made = std::process::Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-framerate",
                "3",
                "-pattern_type",
                "glob",
                "-i",
            ])
            .arg(data.join("images").join("*.png"))
            .arg(&clip)
            .status()
            .unwrap();
        assert!(made.success());
        let clip_out = dir.path().join("seg-clip");
        let segmented = lus(&[
            "segment",
            "--weights",
            weights,
            "--input",
            clip.to_str().unwrap(),
            "--out",
            clip_out.to_str().unwrap(),
        ]);
        assert!(segmented.status.success(), "{}", stderr(&segmented));
        let doc: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(clip_out.join("segment.json")).unwrap())
                .unwrap();
        assert_eq!(doc["kind"], "clip");
        assert_eq!(doc["clip"]["frames"], 3);
        let gif = fs::read(clip_out.join("overlay.gif")).unwrap();
        assert!(gif.starts_with(b"GIF8"), "an animation");
        let names: Vec<String> = fs::read_dir(&clip_out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with('.')),
            "scratch left: {names:?}"
        );
    } else {
        eprintln!("skipping the clip case: ffmpeg is not installed");
    }

    // Errors: a missing input, a classifier's config, bad rules; nothing written.
    let never = dir.path().join("never");
    let missing = lus(&[
        "segment",
        "--weights",
        weights,
        "--input",
        "/nonexistent/clip.mp4",
        "--out",
        never.to_str().unwrap(),
    ]);
    assert_fails_saying(&missing, "/nonexistent/clip.mp4");
    let rules = dir.path().join("rules.toml");
    fs::write(&rules, "min_reach = 0.0\n").unwrap();
    let bad_rules = lus(&[
        "segment",
        "--weights",
        weights,
        "--input",
        images[0].to_str().unwrap(),
        "--out",
        never.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ]);
    assert_fails_saying(&bad_rules, "min_reach");
    fs::write(&rules, "min_rech = 0.5\n").unwrap();
    let typo = lus(&[
        "segment",
        "--weights",
        weights,
        "--input",
        images[0].to_str().unwrap(),
        "--out",
        never.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ]);
    assert!(!typo.status.success());
    assert!(
        stderr(&typo).contains("rules.toml") && stderr(&typo).contains("min_rech"),
        "{}",
        stderr(&typo)
    );
    assert!(!never.exists());
}
