//! `lus ingest-pocus` and the POCUS diagnostic pool on the real data (`LUS_POCUS_DIR`, default
//! `../shared/data/pocus` from the repository root; these tests skip with a printed reason only
//! when that folder is absent). Decoding needs the `ffmpeg` program (`.ci/run` installs it).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{assert_fails_saying, lus, stderr};
use lus_data::pocus::{FrameRow, read_frame_rows};

fn pocus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LUS_POCUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/pocus")
        });
    if dir.join("metadata.csv").is_file() {
        Some(dir)
    } else {
        // Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and
        // a skipped real-data test must be visible in the CI log.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "skipping: no POCUS data at {} (set LUS_POCUS_DIR)",
            dir.display()
        );
        None
    }
}

/// The whole real data set ingested once per test process (about half a minute).
fn ingested() -> Option<&'static Path> {
    static DIR: OnceLock<Option<tempfile::TempDir>> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = pocus_dir()?;
        let dir = tempfile::tempdir().unwrap();
        let out = lus(&[
            "ingest-pocus",
            "--src",
            src.to_str().unwrap(),
            "--out",
            dir.path().join("frames").to_str().unwrap(),
            "--quiet",
        ]);
        assert!(
            out.status.success(),
            "ingest of the real data failed (is ffmpeg installed?): {}",
            stderr(&out)
        );
        Some(dir)
    })
    .as_ref()
    .map(|d| d.path())
}

fn copy(src: &Path, dst: &Path) {
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    fs::copy(src, dst).unwrap();
}

/// A small POCUS-layout folder: two GIF clips, one MP4, one still image, the uncertain clip,
/// and a truncated copy of the MP4 under another name.
fn small_source(root: &Path, real: &Path) {
    fs::create_dir_all(root).unwrap();
    fs::copy(real.join("metadata.csv"), root.join("metadata.csv")).unwrap();
    for rel in [
        "videos/convex/Cov-Atlas+(44).gif",
        "videos/convex/Cov-Atlas+(45).gif",
        "videos/convex/Reg_liftl_pneucase3_clip1.mp4",
        "images/convex/Pneu_northumbria_0409_set5_img1.jpg",
        "videos/linear/label_uncertain/Vir_or_Pneu_prospective_file4.mp4",
    ] {
        copy(&real.join(rel), &root.join(rel));
    }
    let bytes = fs::read(real.join("videos/convex/Pneu_liftl_pneu_case3_clip3.mp4")).unwrap();
    fs::write(
        root.join("videos/convex/Pneu_truncated_copy.mp4"),
        &bytes[..2048],
    )
    .unwrap();
}

#[test]
fn ingest_skips_a_corrupt_clip_keeps_the_rest_and_resumes() {
    let Some(real) = pocus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    small_source(&src, &real);
    let out_dir = dir.path().join("out");
    let args = [
        "ingest-pocus",
        "--src",
        src.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--quiet",
    ];
    let first = lus(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let message = stderr(&first);
    assert!(
        message.contains("Pneu_truncated_copy.mp4") && message.contains("skipped"),
        "{message}"
    );
    assert!(message.contains("not in metadata.csv"), "{message}");
    let rows = read_frame_rows(&out_dir.join("manifest.csv")).unwrap();
    let mut per_clip: BTreeMap<&str, Vec<&FrameRow>> = BTreeMap::new();
    for row in &rows {
        per_clip.entry(row.clip.as_str()).or_default().push(row);
    }
    assert_eq!(
        per_clip.keys().copied().collect::<Vec<_>>(),
        vec![
            "Cov-Atlas__44_",
            "Cov-Atlas__45_",
            "Pneu_northumbria_0409_set5_img1",
            "Reg_liftl_pneucase3_clip1"
        ]
    );
    // Cov-Atlas+(44): 41 frames at 10 fps -> every int(10 / 3) = 3rd frame: 0, 3, ..., 39.
    let atlas = &per_clip["Cov-Atlas__44_"];
    assert_eq!(
        atlas.iter().map(|r| r.frame_index).collect::<Vec<_>>(),
        (0..41).step_by(3).collect::<Vec<_>>()
    );
    for (k, row) in atlas.iter().enumerate() {
        assert!((row.time_s - 0.3 * k as f64).abs() < 1e-6, "{row:?}");
        assert_eq!((row.width, row.height), (139, 139));
        assert_eq!(row.patient_id, "36");
        assert_eq!(row.label.as_str(), "covid");
        let image = image::open(out_dir.join(&row.path)).unwrap();
        assert_eq!(image.color(), image::ColorType::L8);
        assert_eq!((image.width(), image.height()), (139, 139));
    }
    // At most 30 frames per clip, and a still image is a clip of one frame.
    assert!(per_clip.values().all(|frames| frames.len() <= 30));
    assert_eq!(per_clip["Pneu_northumbria_0409_set5_img1"].len(), 1);
    let log = fs::read_to_string(out_dir.join("ingest-log.csv")).unwrap();
    for needle in [
        "Pneu_truncated_copy.mp4,failed",
        "Vir_or_Pneu_prospective_file4.mp4,excluded,,label uncertain",
        "Cov-Atlas+(44).gif,ingested,14,",
    ] {
        assert!(log.contains(needle), "{needle:?} not in\n{log}");
    }
    assert!(
        !out_dir.join("frames/Pneu_truncated_copy").exists(),
        "a failed clip leaves no folder"
    );

    // A rerun decodes nothing new and writes the same manifest.
    let manifest = fs::read(out_dir.join("manifest.csv")).unwrap();
    let second = lus(&args);
    assert!(second.status.success(), "{}", stderr(&second));
    let summary = String::from_utf8_lossy(&second.stdout);
    assert!(
        summary.contains("0 decoded now, 4 done before, 1 excluded, 1 failed"),
        "{summary}"
    );
    assert_eq!(fs::read(out_dir.join("manifest.csv")).unwrap(), manifest);

    // Other sampling options into the same folder are refused, with nothing changed.
    let other = lus(&[
        "ingest-pocus",
        "--src",
        src.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--max-frames",
        "5",
        "--quiet",
    ]);
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("other options"),
        "{}",
        stderr(&other)
    );
    assert_eq!(fs::read(out_dir.join("manifest.csv")).unwrap(), manifest);
}

#[test]
fn ingest_without_ffmpeg_says_how_to_install_it_and_writes_nothing() {
    let Some(real) = pocus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_lus"))
        .args([
            "ingest-pocus",
            "--src",
            real.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .env("LUS_FFMPEG", dir.path().join("no-such-ffmpeg"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("no-such-ffmpeg") && message.contains("apt-get install ffmpeg"),
        "{message}"
    );
    assert!(!out_dir.exists());
}

#[test]
fn the_whole_real_folder_ingests_and_folds_never_split_a_patient_or_a_clip() {
    let Some(root) = ingested() else { return };
    let frames = root.join("frames");
    let rows = read_frame_rows(&frames.join("manifest.csv")).unwrap();
    let log = fs::read_to_string(frames.join("ingest-log.csv")).unwrap();
    assert!(!log.contains(",failed,"), "every real clip decodes:\n{log}");
    let clips: BTreeSet<&str> = rows.iter().map(|r| r.clip.as_str()).collect();
    assert_eq!(clips.len(), 161, "163 files minus the two excluded");
    assert!(rows.len() > 2000, "{} frames", rows.len());

    // The pool and the folds exactly as `lus run` makes them, at a small input size.
    let config = lus_experiments::config::PocusPoolConfig {
        frames: frames.clone(),
        ..Default::default()
    };
    let pool = lus_experiments::pocus_pool::load_pocus_pool(&config, 16).unwrap();
    assert_eq!(pool.class_names, ["healthy", "covid", "pneumonia"]);
    let viral = rows.iter().filter(|r| r.label.as_str() == "viral").count();
    assert_eq!(pool.labels.len(), rows.len() - viral);
    for seed in 0..3 {
        let folds =
            lus_data::splits::stratified_group_kfold(&pool.labels, &pool.groups, 5, seed).unwrap();
        let mut fold_of_clip: HashMap<&str, usize> = HashMap::new();
        let mut fold_of_group: HashMap<&str, usize> = HashMap::new();
        for (i, &fold_i) in folds.iter().enumerate() {
            for (map, key) in [
                (&mut fold_of_clip, pool.clips[i].as_str()),
                (&mut fold_of_group, pool.groups[i].as_str()),
            ] {
                let fold = *map.entry(key).or_insert(fold_i);
                assert_eq!(
                    fold, fold_i,
                    "seed {seed}: {key} is in folds {fold} and {fold_i}"
                );
            }
        }
        // Every fold tests every class.
        for fold in 0..5 {
            let classes: BTreeSet<usize> = (0..folds.len())
                .filter(|&i| folds[i] == fold)
                .map(|i| pool.labels[i])
                .collect();
            assert_eq!(classes.len(), 3, "seed {seed} fold {fold}");
        }
        // The inner train / validation split of each cell keeps groups whole too.
        for fold in 0..5 {
            let (train, val, test) =
                lus_experiments::cls_cell::roles(&pool, &folds, fold, 5, seed).unwrap();
            let mut role_of: HashMap<&str, &str> = HashMap::new();
            for (role, indices) in [("train", &train), ("val", &val), ("test", &test)] {
                for &i in indices {
                    let previous = role_of.insert(pool.groups[i].as_str(), role);
                    assert!(
                        previous.is_none_or(|p| p == role),
                        "seed {seed} fold {fold}: group {} in {previous:?} and {role}",
                        pool.groups[i]
                    );
                }
            }
            assert_eq!(train.len() + val.len() + test.len(), pool.labels.len());
        }
    }
}

#[test]
fn a_tiny_study_classifies_real_frames_and_reports_frame_clip_and_probe_levels() {
    let Some(root) = ingested() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pocus-tiny.toml");
    fs::write(
        &config,
        format!(
            r#"
name = "tiny"
runs_dir = "{runs}"
reports_dir = "{reports}"
[dataset]
train = 16
val = 8
test = 8
classify_from = "pocus"
[dataset.scanner]
size = 64
[dataset.pocus]
frames = "{frames}"
max_frames_per_clip = 2
[pretrain.train]
epochs = 1
batch_size = 8
device = "cpu"
[pretrain.unet]
depth = 2
base_channels = 4
[pretrain.data]
size = 16
[classify]
class_weights = "balanced"
[classify.train]
epochs = 1
batch_size = 16
device = "cpu"
best_metric = "val_balanced_accuracy"
[classify.classifier]
head_channels = 4
[classify.data]
size = 16
[grid]
arms = ["dense", "none", {{ name = "dense-st", pretrain = "dense", real_unlabelled = {{ epochs = 1 }} }}]
seeds = [0]
folds = 3
inner_folds = 3
"#,
            runs = dir.path().join("runs").display(),
            reports = dir.path().join("reports").display(),
            frames = root.join("frames").display(),
        ),
    )
    .unwrap();
    let out = lus(&["run", config.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report_dir = dir.path().join("reports/tiny");
    let report = fs::read_to_string(report_dir.join("REPORT.md")).unwrap();
    for needle in [
        "diagnosis (healthy / covid / pneumonia)",
        "real POCUS frames",
        "Frame and clip level",
        "| dense | clip | linear |",
        "sensitivity covid",
    ] {
        assert!(report.contains(needle), "{needle:?} not in the report");
    }
    let levels = fs::read_to_string(report_dir.join("cls_levels.csv")).unwrap();
    let header: Vec<&str> = levels.lines().next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = levels
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    // Clip level over all probes: every clip of the pool once (no viral).
    let clip_all = rows
        .iter()
        .find(|r| {
            r[column("arm")] == "none"
                && r[column("level")] == "clip"
                && r[column("probe")] == "all"
        })
        .unwrap();
    let clips: BTreeSet<String> = read_frame_rows(&root.join("frames/manifest.csv"))
        .unwrap()
        .into_iter()
        .filter(|r| r.label.as_str() != "viral")
        .map(|r| r.clip)
        .collect();
    assert_eq!(clip_all[column("examples")], clips.len().to_string());
    // The cells' splits keep every clip in one role.
    let split = fs::read_to_string(
        dir.path()
            .join("runs/tiny/classify/none-seed0-fold0/split.csv"),
    )
    .unwrap();
    let mut role_of_clip: HashMap<String, String> = HashMap::new();
    for line in split.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let (clip, role) = (cells[2].to_string(), cells[6].to_string());
        let previous = role_of_clip.insert(clip.clone(), role.clone());
        assert!(previous.is_none_or(|p| p == role), "clip {clip} split");
    }

    // The adapted arm: each cell adapted to exactly its training frames, never to a clip of
    // its test fold or validation part; the adapted U-Net segments with `lus segment`.
    for fold in 0..3 {
        let cell = dir
            .path()
            .join(format!("runs/tiny/classify/dense-st-seed0-fold{fold}"));
        let split = fs::read_to_string(cell.join("split.csv")).unwrap();
        let mut train_ids = BTreeSet::new();
        let mut held_out_clips = BTreeSet::new();
        for line in split.lines().skip(1) {
            let cells: Vec<&str> = line.split(',').collect();
            if cells[6] == "train" {
                train_ids.insert(cells[1].to_string());
            } else {
                held_out_clips.insert(cells[2].to_string());
            }
        }
        let frames = fs::read_to_string(cell.join("adapt/frames.csv")).unwrap();
        let adapted: BTreeSet<String> = frames
            .lines()
            .skip(1)
            .map(|line| {
                let cells: Vec<&str> = line.split(',').collect();
                assert!(
                    !held_out_clips.contains(cells[2]),
                    "fold {fold}: adapted to held-out clip {}",
                    cells[2]
                );
                cells[1].to_string()
            })
            .collect();
        assert_eq!(adapted, train_ids, "fold {fold}");
        let pseudo = fs::read_to_string(cell.join("adapt/pseudo_labels.csv")).unwrap();
        assert_eq!(pseudo.lines().count(), 1 + 9, "{pseudo}");
        assert!(cell.join("adapt/adapted.safetensors").is_file());
    }
    let adapted = dir
        .path()
        .join("runs/tiny/classify/dense-st-seed0-fold0/adapt/adapted.safetensors");
    let frame = root.join("frames").join(
        read_frame_rows(&root.join("frames/manifest.csv")).unwrap()[0]
            .path
            .clone(),
    );
    let out = lus(&[
        "segment",
        "--weights",
        adapted.to_str().unwrap(),
        "--input",
        frame.to_str().unwrap(),
        "--out",
        dir.path().join("seg-adapted").to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // `lus predict` with that cell's weights: a clip and a still frame.
    let weights = dir
        .path()
        .join("runs/tiny/classify/dense-seed0-fold0/best.safetensors");
    let real = pocus_dir().unwrap();
    let clip = real.join("videos/convex/Cov-Atlas+(44).gif");
    let out_dir = dir.path().join("pred-clip");
    let out = lus(&[
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        clip.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kind"], "clip");
    let frames = json["frames"].as_array().unwrap();
    // 41 frames at 10 fps, every 3rd.
    assert_eq!(frames.len(), 14);
    let classes = ["covid", "pneumonia", "healthy"];
    let mut mean = [0.0f64; 3];
    for frame in frames {
        let p: Vec<f64> = classes
            .iter()
            .map(|c| frame["probabilities"][c].as_f64().unwrap())
            .collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{p:?}");
        for (m, v) in mean.iter_mut().zip(&p) {
            *m += v / frames.len() as f64;
        }
    }
    let verdict: Vec<f64> = classes
        .iter()
        .map(|c| json["probabilities"][c].as_f64().unwrap())
        .collect();
    for (a, b) in verdict.iter().zip(&mean) {
        assert!(
            (a - b).abs() < 1e-9,
            "the verdict is the mean of the frames"
        );
    }
    let best = (0..3).max_by(|&a, &b| mean[a].total_cmp(&mean[b])).unwrap();
    assert_eq!(json["diagnosis"], classes[best]);
    assert_eq!(
        fs::read_to_string(out_dir.join("prediction.json"))
            .unwrap()
            .trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert_eq!(
        fs::read_to_string(out_dir.join("frames.csv"))
            .unwrap()
            .lines()
            .count(),
        1 + 14
    );
    assert!(image::open(out_dir.join("overlay.png")).is_ok());

    let still = real.join("images/convex/Pneu_northumbria_0409_set5_img1.jpg");
    let out = lus(&[
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        still.to_str().unwrap(),
        "--out",
        dir.path().join("pred-still").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("one frame"));

    // Weights that are not this cell's: an error naming the file, nothing written.
    let wrong = dir
        .path()
        .join("runs/tiny/pretrain/dense-seed0/best.safetensors");
    let bad_out = dir.path().join("pred-bad");
    let out = lus(&[
        "predict",
        "--weights",
        wrong.to_str().unwrap(),
        "--config",
        dir.path()
            .join("runs/tiny/classify/dense-seed0-fold0/config.resolved.toml")
            .to_str()
            .unwrap(),
        "--input",
        still.to_str().unwrap(),
        "--out",
        bad_out.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("best.safetensors"),
        "{}",
        stderr(&out)
    );
    assert!(!bad_out.exists());
}

/// An ingested folder made here (no real data needed): `clips` clips of `per_clip` non-square
/// frames each, with the manifest `lus ingest-pocus` writes.
fn fake_ingested(root: &Path, clips: usize, per_clip: usize) {
    let mut manifest = String::from(
        "path,clip,patient_id,label,probe,frame_index,time_s,width,height,license,media,source\n",
    );
    for c in 0..clips {
        let clip = format!("Cov-fake-{c}");
        fs::create_dir_all(root.join("frames").join(&clip)).unwrap();
        for f in 0..per_clip {
            let rel = format!("frames/{clip}/frame_{f:05}.png");
            // A bright band at a clip-dependent depth over a dim ramp, 48 x 40.
            let image = image::GrayImage::from_fn(48, 40, |x, y| {
                let band = (y as usize).abs_diff(8 + 2 * c) < 2;
                image::Luma([if band {
                    200
                } else {
                    (20 + x + 2 * f as u32) as u8
                }])
            });
            image.save(root.join(&rel)).unwrap();
            manifest.push_str(&format!(
                "{rel},{clip},,covid,convex,{f},{},48,40,CC BY 4.0,video,videos/{clip}.mp4\n",
                f as f64 / 3.0
            ));
        }
    }
    fs::write(root.join("manifest.csv"), manifest).unwrap();
}

/// `lus domain-gap` end to end on a tiny fake ingested folder: the classifier test's numbers
/// and intervals, the statistics and the files; `--statistics-only`; too few clips is an error
/// that says what to change, and writes nothing.
#[test]
fn domain_gap_measures_the_scanner_against_an_ingested_folder() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("ingested");
    fake_ingested(&real, 10, 2);
    let out = dir.path().join("gap");
    let run = lus(&[
        "domain-gap",
        "--real",
        real.to_str().unwrap(),
        "--size",
        "64",
        "--frames",
        "20",
        "--frames-per-clip",
        "2",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("domain_gap.json")).unwrap()).unwrap();
    let accuracy = &doc["c2st"]["accuracy"];
    let (estimate, lower, upper) = (
        accuracy["estimate"].as_f64().unwrap(),
        accuracy["lower"].as_f64().unwrap(),
        accuracy["upper"].as_f64().unwrap(),
    );
    assert!((0.0..=1.0).contains(&estimate) && lower <= estimate && estimate <= upper);
    assert_eq!(doc["c2st"]["fold_accuracy"].as_array().unwrap().len(), 2);
    // 10 clips + 20 scanner frames, each its own group.
    assert_eq!(doc["c2st"]["groups"], 30);
    assert_eq!(doc["statistics"]["real"]["frames"], 20);
    assert_eq!(doc["statistics"]["real"]["groups"], 10);
    assert_eq!(doc["statistics"]["scanner"]["frames"], 20);
    // The fake frames are 48 x 40, padded square: 1/6 of each is black border, and no pixel
    // of the ramp is black.
    let black = doc["statistics"]["real"]["black_share"].as_f64().unwrap();
    assert!((black - 1.0 / 6.0).abs() < 0.03, "{black}");
    for file in [
        "statistics.csv",
        "profiles.csv",
        "profiles.png",
        "domain_gap.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    assert!(!out.join("folds").exists(), "the fold weights are not kept");
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(printed.contains("classifier two-sample test"), "{printed}");

    let quick = dir.path().join("gap-stats");
    let stats = lus(&[
        "domain-gap",
        "--real",
        real.to_str().unwrap(),
        "--size",
        "64",
        "--frames",
        "20",
        "--statistics-only",
        "--out",
        quick.to_str().unwrap(),
    ]);
    assert!(stats.status.success(), "{}", stderr(&stats));
    let doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(quick.join("domain_gap.json")).unwrap()).unwrap();
    assert!(doc.get("c2st").is_none());
    assert!(doc["statistics"]["intensity_w1"].as_f64().unwrap() > 0.0);

    let never = dir.path().join("never");
    let few = lus(&[
        "domain-gap",
        "--real",
        real.to_str().unwrap(),
        "--size",
        "64",
        "--frames",
        "6",
        "--frames-per-clip",
        "2",
        "--folds",
        "2",
        "--out",
        never.to_str().unwrap(),
    ]);
    assert_fails_saying(&few, "more --frames or fewer --folds");
    let missing = lus(&[
        "domain-gap",
        "--real",
        dir.path().to_str().unwrap(),
        "--out",
        never.to_str().unwrap(),
    ]);
    assert_fails_saying(&missing, "manifest.csv");
    assert!(!never.exists());
}
