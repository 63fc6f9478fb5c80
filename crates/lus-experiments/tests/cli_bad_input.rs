//! Bad input on every reader of the `lus` binary (issue 8, part 4): images, masks, lus and
//! LabelMe annotation JSON, label schemas, experiment configs and `--set`, manifests, and
//! safetensors weights (eval-seg and the grid's pretrained backbone), plus the tables `lus
//! report` reads.
//!
//! One table of cases, one driver. Every case builds its inputs in a folder of its own, runs
//! one command, and asserts: a non-zero exit; stderr names the offending file (its full path)
//! and the fault (substrings); no "panicked" in stderr; and the case folder — inputs and the
//! output folder the command was given — is byte for byte what it was (an absent output stays
//! absent, no staging folder is left behind).
//!
//! The valid inputs the cases spoil are made once per test process (a `lus synth` folder and a
//! tiny grid pretrained by `lus run --stage pretrain`) and copied into each case folder.

mod common;

use common::{lus, stderr};

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Valid inputs, made once per test process.
struct Fixtures {
    /// A `lus synth` folder of 6 samples of 64 px.
    synth: PathBuf,
    /// The runs folder of a tiny grid whose pretraining stage is complete (one dense cell).
    grid_runs: PathBuf,
}

impl Fixtures {
    /// The complete pretraining cell of the grid fixture.
    fn pretrain_cell(&self) -> PathBuf {
        self.grid_runs.join("grid/pretrain/dense-seed0")
    }
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_bad_input");
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let synth = root.join("synth");
        let out = lus(&[
            "synth",
            "--count",
            "6",
            "--seed",
            "1",
            "--size",
            "64",
            "--out",
            synth.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let config = root.join("grid.toml");
        fs::write(&config, grid_experiment(&root)).unwrap();
        let out = lus(&[
            "run",
            config.to_str().unwrap(),
            "--stage",
            "pretrain",
            "--quiet",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        Fixtures {
            synth,
            grid_runs: root.join("runs"),
        }
    })
}

/// A grid with one pretrained arm, small enough to pretrain in seconds. `runs` and
/// `reports` are `dir/runs` and `dir/reports`.
fn grid_experiment(dir: &Path) -> String {
    format!(
        r#"name = "grid"
runs_dir = {runs:?}
reports_dir = {reports:?}
[dataset]
train = 4
val = 2
test = 2
classify_samples = 12
[dataset.scanner]
size = 64
[pretrain.train]
epochs = 1
batch_size = 2
device = "cpu"
[pretrain.unet]
depth = 2
base_channels = 4
[pretrain.data]
size = 32
[evaluation]
overlay_examples = 1
[classify.train]
epochs = 1
batch_size = 4
device = "cpu"
[classify.classifier]
head_channels = 4
[classify.data]
size = 32
[grid]
seeds = [0]
folds = 2
inner_folds = 2
arms = ["dense"]
"#,
        runs = dir.join("runs").display().to_string(),
        reports = dir.join("reports").display().to_string(),
    )
}

/// A one-cell pretraining experiment on the scanner (train-seg), writing under `dir`.
fn tiny_experiment(dir: &Path) -> String {
    format!(
        r#"name = "tiny"
runs_dir = {runs:?}
reports_dir = {reports:?}
[dataset]
train = 2
val = 2
test = 2
[dataset.scanner]
size = 64
[pretrain.train]
epochs = 1
batch_size = 2
lr = 0.003
device = "cpu"
[pretrain.unet]
depth = 2
base_channels = 4
[pretrain.data]
size = 32
"#,
        runs = dir.join("runs").display().to_string(),
        reports = dir.join("reports").display().to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// File helpers
// ---------------------------------------------------------------------------------------------

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap();
        }
    }
}

/// Every entry under `root`: files with their bytes, folders as `None` (so an empty staging
/// folder left behind counts as a change).
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, Some(fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn s(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// CRC-32 (IEEE) of PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header declares `width x height` 8-bit gray pixels, with no pixel data: a
/// decoder that trusts the header allocates `width * height` bytes before it finds out.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut typed = kind.to_vec();
        typed.extend_from_slice(data);
        png.extend_from_slice(&typed);
        png.extend_from_slice(&crc32(&typed).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit, grayscale, deflate, no filter, no interlace
    chunk(b"IHDR", &ihdr);
    chunk(b"IEND", &[]);
    png
}

/// The first half of a file.
fn truncate_half(path: &Path) {
    let bytes = fs::read(path).unwrap();
    fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

/// Rewrites the rows (header excluded) of a synth manifest, split at commas (synth writes no
/// quoted fields).
fn edit_manifest(data: &Path, edit: impl FnOnce(&mut Vec<Vec<String>>)) {
    let path = data.join("manifest.csv");
    let text = fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    let mut rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    edit(&mut rows);
    let mut out = header + "\n";
    for row in rows {
        out.push_str(&row.join(","));
        out.push('\n');
    }
    fs::write(&path, out).unwrap();
}

/// Column indices of the synth manifest.
const COL_ID: usize = 0;
const COL_IMAGE: usize = 1;
const COL_DIAGNOSIS: usize = 5;

/// Rewrites a safetensors file through candle: `edit` changes the map of tensors.
fn edit_safetensors(path: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// The alphabetically first tensor name of a weights file (a stable one to spoil).
fn first_tensor(path: &Path) -> String {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let mut names: Vec<String> = tensors.into_keys().collect();
    names.sort();
    names.swap_remove(0)
}

// ---------------------------------------------------------------------------------------------
// Scenario builders: each copies valid inputs into the case folder `dir`, lets `spoil` break
// one of them, and returns the command line.
// ---------------------------------------------------------------------------------------------

/// `lus train-seg` on a copy of the synth folder (`dir/data`).
fn train_on_folder(fx: &Fixtures, dir: &Path, spoil: impl FnOnce(&Path)) -> Vec<String> {
    let data = dir.join("data");
    copy_tree(&fx.synth, &data);
    spoil(&data);
    let config = dir.join("exp.toml");
    let text = tiny_experiment(dir).replace(
        "[dataset]\n",
        &format!("[dataset]\nsource = \"folder\"\nfolder = {:?}\n", s(&data)),
    );
    fs::write(&config, text.replace("[dataset.scanner]\nsize = 64\n", "")).unwrap();
    [
        "train-seg",
        "--config",
        &s(&config),
        "--labels",
        "dense",
        "--out",
        &s(&dir.join("run")),
        "--quiet",
    ]
    .map(String::from)
    .to_vec()
}

/// Replaces `from` (which must occur) by `to` in the text file `path`.
fn replace_in(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{}: no {from:?}", path.display());
    fs::write(path, text.replace(from, to)).unwrap();
}

/// `lus eval-seg` of the grid fixture's pretrained weights (copied to `dir/weights`) on a copy
/// of the synth folder (`dir/data`), writing to `dir/out`. `spoil` gets (weights, data).
fn eval_seg(fx: &Fixtures, dir: &Path, spoil: impl FnOnce(&Path, &Path)) -> Vec<String> {
    let data = dir.join("data");
    copy_tree(&fx.synth, &data);
    let run = dir.join("weights");
    fs::create_dir_all(&run).unwrap();
    for file in ["best.safetensors", "config.resolved.toml"] {
        fs::copy(fx.pretrain_cell().join(file), run.join(file)).unwrap();
    }
    let weights = run.join("best.safetensors");
    spoil(&weights, &data);
    [
        "eval-seg",
        "--weights",
        &s(&weights),
        "--data",
        &s(&data),
        "--out",
        &s(&dir.join("out")),
    ]
    .map(String::from)
    .to_vec()
}

/// `lus run --stage classify` (or `lus report`) on a copy of the grid fixture whose pretraining
/// is complete (`dir/runs`). `spoil` gets the pretraining cell folder.
fn grid(fx: &Fixtures, dir: &Path, command: &str, spoil: impl FnOnce(&Path)) -> Vec<String> {
    copy_tree(&fx.grid_runs, &dir.join("runs"));
    spoil(&dir.join("runs/grid/pretrain/dense-seed0"));
    let config = dir.join("grid.toml");
    fs::write(&config, grid_experiment(dir)).unwrap();
    let mut args = vec![command.to_string(), s(&config)];
    if command == "run" {
        args.extend(["--stage", "classify", "--quiet"].map(String::from));
    }
    args
}

/// `lus train-seg` of the tiny scanner experiment with `edit` applied to its text, and
/// `overrides` as `--set`.
fn train_config(
    dir: &Path,
    edit: impl FnOnce(String) -> String,
    overrides: &[&str],
) -> Vec<String> {
    let config = dir.join("exp.toml");
    fs::write(&config, edit(tiny_experiment(dir))).unwrap();
    let mut args = [
        "train-seg",
        "--config",
        &s(&config),
        "--labels",
        "sparse",
        "--out",
        &s(&dir.join("run")),
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    for o in overrides {
        args.push("--set".into());
        args.push(o.to_string());
    }
    args
}

/// A valid LabelMe file of a 32 x 32 image.
const LABELME_OK: &str = r#"{
  "version": "5.4.1", "flags": {},
  "shapes": [
    {"label": "pleural-line", "points": [[2, 10], [30, 11]], "group_id": null, "shape_type": "line", "flags": {}},
    {"label": "b-line", "points": [[14, 12], [18, 12], [19, 31], [13, 31]], "group_id": null, "shape_type": "polygon", "flags": {}},
    {"label": "chest-wall", "points": [[0, 0], [32, 9]], "group_id": null, "shape_type": "rectangle", "flags": {}}
  ],
  "imagePath": null, "imageData": null, "imageHeight": 32, "imageWidth": 32
}"#;

/// A valid lus annotation of a 32 x 32 image.
const LUS_OK: &str = r#"{
  "format": "lus-annotation/1", "width": 32, "height": 32,
  "shapes": [
    {"label": "pleural-line", "geometry": {"kind": "polyline", "points": [[2, 10], [30, 11]], "width": 2}},
    {"label": "b-line", "geometry": {"kind": "polygon", "points": [[14, 12], [18, 12], [19, 31], [13, 31]]}}
  ]
}"#;

/// `lus rasterize` of `dir/ann` (a valid LabelMe file `good.json` beside `bad.json` holding
/// `text`) into `dir/out`; `extra` are more arguments.
fn rasterize(dir: &Path, text: &str, extra: &[&str]) -> Vec<String> {
    let ann = dir.join("ann");
    fs::create_dir_all(&ann).unwrap();
    fs::write(ann.join("good.json"), LABELME_OK).unwrap();
    fs::write(ann.join("bad.json"), text).unwrap();
    let mut args = [
        "rasterize",
        "--annotations",
        &s(&ann),
        "--mode",
        "dense",
        "--out",
        &s(&dir.join("out")),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// `lus rasterize` of valid annotations with the label schema `text` (`dir/schema.toml`).
fn rasterize_with_schema(dir: &Path, text: &str) -> Vec<String> {
    let schema = dir.join("schema.toml");
    fs::write(&schema, text).unwrap();
    let ann = dir.join("ann");
    fs::create_dir_all(&ann).unwrap();
    fs::write(ann.join("good.json"), LABELME_OK).unwrap();
    [
        "rasterize",
        "--annotations",
        &s(&ann),
        "--mode",
        "sparse",
        "--schema",
        &s(&schema),
        "--out",
        &s(&dir.join("out")),
    ]
    .map(String::from)
    .to_vec()
}

/// The default schema's text with `from` replaced by `to` (once, checked).
fn default_schema_with(from: &str, to: &str) -> String {
    let text = lus_data::schema::DEFAULT_SCHEMA_TOML;
    assert!(text.contains(from), "{from:?} is not in the default schema");
    text.replacen(from, to, 1)
}

// ---------------------------------------------------------------------------------------------
// The cases and the driver
// ---------------------------------------------------------------------------------------------

/// One bad input.
struct Case {
    name: &'static str,
    /// Builds the inputs in the case folder and returns the `lus` command line.
    build: fn(&Fixtures, &Path) -> Vec<String>,
    /// The file the message must name, relative to the case folder.
    file: &'static str,
    /// What the message must say about the fault (each a substring of stderr).
    fault: &'static [&'static str],
}

/// Runs every case; reports every failing case at once.
fn run_cases(cases: &[Case]) {
    let fx = fixtures();
    let mut failures = Vec::new();
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let args = (case.build)(fx, dir.path());
        let before = tree(dir.path());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lus(&argv);
        let message = stderr(&out);
        let mut wrong = Vec::new();
        if out.status.success() {
            wrong.push("exited 0".to_string());
        }
        let file = dir.path().join(case.file);
        if !message.contains(&*file.to_string_lossy()) {
            wrong.push(format!("does not name {}", file.display()));
        }
        for needle in case.fault {
            if !message.contains(needle) {
                wrong.push(format!("lacks {needle:?}"));
            }
        }
        if message.contains("panicked") {
            wrong.push("panicked".into());
        }
        let after = tree(dir.path());
        if after != before {
            let changed: Vec<_> = after
                .keys()
                .chain(before.keys())
                .filter(|k| after.get(*k) != before.get(*k))
                .collect();
            wrong.push(format!("changed the case folder: {changed:?}"));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {}\n    stderr: {}",
                case.name,
                wrong.join("; "),
                message.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn images_and_masks() {
    run_cases(&[
        Case {
            name: "truncated image",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| truncate_half(&d.join("images/000001.png")))
            },
            file: "data/images/000001.png",
            fault: &["cannot decode image"],
        },
        Case {
            name: "zero-byte image",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    fs::write(d.join("images/000002.png"), b"").unwrap()
                })
            },
            file: "data/images/000002.png",
            fault: &["file is empty"],
        },
        Case {
            name: "image that is not an image",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    fs::write(d.join("images/000003.png"), b"id,label\n3,covid\n").unwrap()
                })
            },
            file: "data/images/000003.png",
            fault: &["not a PNG or JPEG"],
        },
        Case {
            name: "image header claiming 100000 x 100000 pixels",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    fs::write(
                        d.join("images/000004.png"),
                        png_header_only(100_000, 100_000),
                    )
                    .unwrap()
                })
            },
            file: "data/images/000004.png",
            fault: &["Image size exceeds limit"],
        },
        Case {
            name: "image with a broken chunk checksum",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    let path = d.join("images/000000.png");
                    let mut bytes = fs::read(&path).unwrap();
                    bytes[29] ^= 0xff; // inside the IHDR CRC
                    fs::write(&path, bytes).unwrap();
                })
            },
            file: "data/images/000000.png",
            fault: &["cannot decode image", "CRC"],
        },
        // A folder's masks are drawn from its annotations by the experiment's recipes (its
        // stored masks are for viewing), so the annotations are what can be broken.
        Case {
            name: "annotation with an unknown class",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    replace_in(
                        &d.join("annotations/000001.json"),
                        "\"chest-wall\"",
                        "\"chest-wal\"",
                    )
                })
            },
            file: "data/annotations/000001.json",
            fault: &["unknown class \"chest-wal\"", "did you mean \"chest-wall\""],
        },
        Case {
            name: "annotation of another size than its image",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    let path = d.join("annotations/000005.json");
                    replace_in(&path, "\"width\": 64", "\"width\": 128");
                    replace_in(&path, "\"height\": 64", "\"height\": 128");
                })
            },
            file: "data/annotations/000005.json",
            fault: &["annotation is 128x128", "is 64x64"],
        },
        Case {
            name: "truncated annotation",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    truncate_half(&d.join("annotations/000004.json"))
                })
            },
            file: "data/annotations/000004.json",
            fault: &["invalid JSON"],
        },
        Case {
            name: "eval-seg: truncated image",
            build: |fx, dir| eval_seg(fx, dir, |_, d| truncate_half(&d.join("images/000002.png"))),
            file: "data/images/000002.png",
            fault: &["cannot decode image"],
        },
        Case {
            name: "eval-seg: annotation with an unknown class",
            build: |fx, dir| {
                let mut args = eval_seg(fx, dir, |_, d| {
                    replace_in(&d.join("annotations/000000.json"), "\"lung\"", "\"lunk\"")
                });
                args.extend(["--labels", "sparse"].map(String::from));
                args
            },
            file: "data/annotations/000000.json",
            fault: &["unknown class \"lunk\""],
        },
    ]);
}

#[test]
fn annotations() {
    run_cases(&[
        Case {
            name: "lus JSON truncated",
            build: |_, dir| rasterize(dir, &LUS_OK[..150], &[]),
            file: "ann/bad.json",
            fault: &["invalid JSON", "EOF"],
        },
        Case {
            name: "lus JSON with a string width",
            build: |_, dir| {
                rasterize(
                    dir,
                    &LUS_OK.replace("\"width\": 32", "\"width\": \"32\""),
                    &[],
                )
            },
            file: "ann/bad.json",
            fault: &["invalid type: string \"32\", expected u32"],
        },
        Case {
            name: "lus JSON with an unknown class",
            build: |_, dir| rasterize(dir, &LUS_OK.replace("\"b-line\"", "\"a-lnie\""), &[]),
            file: "ann/bad.json",
            fault: &[
                "shape 1",
                "unknown class \"a-lnie\"",
                "did you mean \"a-line\"",
            ],
        },
        Case {
            name: "lus JSON with a NaN coordinate",
            build: |_, dir| rasterize(dir, &LUS_OK.replace("[30, 11]", "[NaN, 11]"), &[]),
            file: "ann/bad.json",
            fault: &["shape 0", "non-finite"],
        },
        Case {
            name: "lus JSON with a coordinate beyond f32",
            build: |_, dir| rasterize(dir, &LUS_OK.replace("[30, 11]", "[1e39, 11]"), &[]),
            file: "ann/bad.json",
            fault: &["shape 0", "non-finite coordinate"],
        },
        Case {
            name: "lus JSON with a huge coordinate",
            build: |_, dir| rasterize(dir, &LUS_OK.replace("[30, 11]", "[3e30, 11]"), &[]),
            file: "ann/bad.json",
            fault: &["shape 0", "outside the 32x32 image"],
        },
        Case {
            name: "lus JSON polygon with 2 points",
            build: |_, dir| rasterize(dir, &LUS_OK.replace(", [19, 31], [13, 31]]", "]"), &[]),
            file: "ann/bad.json",
            fault: &["shape 1", "polygon has 2 point(s); needs at least 3"],
        },
        Case {
            name: "lus JSON of an image too large to rasterize",
            build: |_, dir| {
                rasterize(
                    dir,
                    &LUS_OK.replace("\"height\": 32", "\"height\": 100000"),
                    &[],
                )
            },
            file: "ann/bad.json",
            fault: &["100000", "8192"],
        },
        Case {
            name: "lus JSON of another format version",
            build: |_, dir| rasterize(dir, &LUS_OK.replace("annotation/1", "annotation/7"), &[]),
            file: "ann/bad.json",
            fault: &["unsupported format \"lus-annotation/7\""],
        },
        Case {
            name: "LabelMe truncated",
            build: |_, dir| rasterize(dir, &LABELME_OK[..200], &[]),
            file: "ann/bad.json",
            fault: &["invalid JSON", "EOF"],
        },
        Case {
            name: "LabelMe with a string imageWidth",
            build: |_, dir| {
                rasterize(
                    dir,
                    &LABELME_OK.replace("\"imageWidth\": 32", "\"imageWidth\": \"32\""),
                    &[],
                )
            },
            file: "ann/bad.json",
            fault: &["invalid type: string \"32\", expected u32"],
        },
        Case {
            name: "LabelMe without imageWidth",
            build: |_, dir| rasterize(dir, &LABELME_OK.replace(", \"imageWidth\": 32", ""), &[]),
            file: "ann/bad.json",
            fault: &["no imageWidth"],
        },
        Case {
            name: "LabelMe shapes that are not a list",
            build: |_, dir| {
                rasterize(
                    dir,
                    r#"{"shapes": {"label": "rib"}, "imageWidth": 32, "imageHeight": 32}"#,
                    &[],
                )
            },
            file: "ann/bad.json",
            fault: &["invalid type: map, expected a sequence"],
        },
        Case {
            name: "LabelMe with an unknown label",
            build: |_, dir| {
                rasterize(
                    dir,
                    &LABELME_OK.replace("\"chest-wall\"", "\"chestwal\""),
                    &[],
                )
            },
            file: "ann/bad.json",
            fault: &["shape 2", "\"chestwal\"", "did you mean \"chest-wall\""],
        },
        Case {
            name: "LabelMe with a NaN coordinate",
            build: |_, dir| rasterize(dir, &LABELME_OK.replace("[18, 12]", "[NaN, 12]"), &[]),
            file: "ann/bad.json",
            fault: &["shape 1", "point 1 has a non-finite coordinate"],
        },
        Case {
            name: "LabelMe with an Infinity coordinate",
            build: |_, dir| rasterize(dir, &LABELME_OK.replace("[30, 11]", "[30, -Infinity]"), &[]),
            file: "ann/bad.json",
            fault: &["shape 0", "point 1 has a non-finite coordinate"],
        },
        Case {
            name: "LabelMe with a coordinate beyond f32",
            build: |_, dir| rasterize(dir, &LABELME_OK.replace("[30, 11]", "[1e300, 11]"), &[]),
            file: "ann/bad.json",
            fault: &["shape 0", "out of range"],
        },
        Case {
            name: "LabelMe with a string coordinate",
            build: |_, dir| rasterize(dir, &LABELME_OK.replace("[13, 31]", "[13, \"31\"]"), &[]),
            file: "ann/bad.json",
            fault: &[
                "shape 1",
                "point 3 has coordinate \"31\", which is not a number",
            ],
        },
        Case {
            name: "LabelMe polygon with 2 points",
            build: |_, dir| rasterize(dir, &LABELME_OK.replace(", [19, 31], [13, 31]]", "]"), &[]),
            file: "ann/bad.json",
            fault: &["shape 1", "needs at least 3"],
        },
        Case {
            name: "LabelMe rectangle with 3 points",
            build: |_, dir| {
                rasterize(
                    dir,
                    &LABELME_OK.replace("[[0, 0], [32, 9]]", "[[0, 0], [32, 9], [4, 4]]"),
                    &[],
                )
            },
            file: "ann/bad.json",
            fault: &["shape 2", "2 opposite corners, has 3"],
        },
        Case {
            name: "LabelMe polygon without points",
            build: |_, dir| {
                rasterize(
                    dir,
                    &LABELME_OK.replace("[[14, 12], [18, 12], [19, 31], [13, 31]]", "[]"),
                    &[],
                )
            },
            file: "ann/bad.json",
            fault: &["shape 1", "polygon has 0 point(s)"],
        },
        Case {
            name: "LabelMe circle",
            build: |_, dir| rasterize(dir, &LABELME_OK.replace("\"polygon\"", "\"circle\""), &[]),
            file: "ann/bad.json",
            fault: &["shape 1", "\"circle\" is not supported"],
        },
        Case {
            name: "LabelMe with two fields of view",
            build: |_, dir| {
                let fov =
                    r#"{"label": "fov", "points": [[0, 0], [32, 32]], "shape_type": "rectangle"},"#;
                rasterize(
                    dir,
                    &LABELME_OK.replace("\"shapes\": [", &format!("\"shapes\": [{fov}{fov}")),
                    &[],
                )
            },
            file: "ann/bad.json",
            fault: &["shape 1", "a second field-of-view shape"],
        },
        Case {
            name: "LabelMe imageData that is not base64",
            build: |_, dir| {
                rasterize(
                    dir,
                    &LABELME_OK.replace("\"imageData\": null", "\"imageData\": \"%%%\""),
                    &[],
                )
            },
            file: "ann/bad.json",
            fault: &["imageData is not valid base64"],
        },
        Case {
            name: "LabelMe imageData that is not an image",
            build: |_, dir| {
                rasterize(
                    dir,
                    &LABELME_OK
                        .replace("\"imageData\": null", "\"imageData\": \"aGVsbG8gd29ybGQ=\""),
                    &[],
                )
            },
            file: "ann/bad.json",
            fault: &["imageData is not a readable PNG or JPEG image"],
        },
        Case {
            name: "LabelMe imagePath naming a zero-byte image",
            build: |_, dir| {
                let args = rasterize(
                    dir,
                    &LABELME_OK.replace("\"imagePath\": null", "\"imagePath\": \"frame.png\""),
                    &[],
                );
                fs::write(dir.join("ann/frame.png"), b"").unwrap();
                args
            },
            file: "ann/bad.json",
            fault: &["cannot read the size of its image", "frame.png"],
        },
        Case {
            name: "annotation that is neither format",
            build: |_, dir| rasterize(dir, r#"{"objects": [], "size": [32, 32]}"#, &[]),
            file: "ann/bad.json",
            fault: &["neither a lus annotation", "nor a LabelMe file"],
        },
        Case {
            name: "annotation file that is not UTF-8",
            build: |_, dir| {
                let args = rasterize(dir, "", &[]);
                fs::write(dir.join("ann/bad.json"), [0xff, 0xfe, 0x00, 0x7b]).unwrap();
                args
            },
            file: "ann/bad.json",
            fault: &["valid UTF-8"],
        },
    ]);
}

#[test]
fn label_schemas() {
    run_cases(&[
        Case {
            name: "schema with a duplicate id",
            build: |_, dir| {
                rasterize_with_schema(dir, &default_schema_with("id = 2\n", "id = 1\n"))
            },
            file: "schema.toml",
            fault: &["classes \"chest-wall\" and \"rib\" share id 1"],
        },
        Case {
            name: "schema with an id gap",
            build: |_, dir| {
                rasterize_with_schema(dir, &default_schema_with("id = 8\n", "id = 12\n"))
            },
            file: "schema.toml",
            fault: &["id 12", "without gaps"],
        },
        Case {
            name: "schema with an unknown key",
            build: |_, dir| {
                rasterize_with_schema(
                    dir,
                    &default_schema_with("color = \"#f0f0f0\"", "colour = \"#f0f0f0\""),
                )
            },
            file: "schema.toml",
            fault: &["unknown field `colour`", "did you mean `color`"],
        },
        Case {
            name: "schema with a wrong type",
            build: |_, dir| {
                rasterize_with_schema(
                    dir,
                    &default_schema_with("layer = 1\n", "layer = \"top\"\n"),
                )
            },
            file: "schema.toml",
            fault: &["invalid TOML", "expected i32"],
        },
        Case {
            name: "schema with a malformed colour",
            build: |_, dir| {
                rasterize_with_schema(dir, &default_schema_with("\"#f0f0f0\"", "\"white\""))
            },
            file: "schema.toml",
            fault: &["\"white\" is not of the form \"#rrggbb\""],
        },
        Case {
            name: "schema whose background is a line class",
            build: |_, dir| {
                rasterize_with_schema(
                    dir,
                    &default_schema_with("layer = 0\n", "layer = 0\nline = true\n"),
                )
            },
            file: "schema.toml",
            fault: &["background", "cannot be a line class"],
        },
        Case {
            name: "schema with a TOML syntax error",
            build: |_, dir| {
                rasterize_with_schema(dir, &default_schema_with("[[class]]", "[[class]"))
            },
            file: "schema.toml",
            fault: &["invalid TOML", "line 13"],
        },
        Case {
            name: "synth with a schema claiming a label twice",
            build: |_, dir| {
                let schema = dir.join("schema.toml");
                fs::write(&schema, default_schema_with("\"soft-tissue\"", "\"bone\"")).unwrap();
                [
                    "synth",
                    "--count",
                    "2",
                    "--size",
                    "32",
                    "--schema",
                    &s(&schema),
                    "--out",
                    &s(&dir.join("out")),
                ]
                .map(String::from)
                .to_vec()
            },
            file: "schema.toml",
            fault: &["\"bone\" is claimed by both"],
        },
    ]);
}

#[test]
fn experiment_configs() {
    run_cases(&[
        Case {
            name: "unknown key",
            build: |_, dir| train_config(dir, |t| t.replace("epochs = 1", "epoch = 1"), &[]),
            file: "exp.toml",
            fault: &["unknown field `epoch`", "did you mean `epochs`"],
        },
        Case {
            name: "unknown section",
            build: |_, dir| {
                train_config(
                    dir,
                    |t| t.replace("[pretrain.unet]", "[pretrain.unte]"),
                    &[],
                )
            },
            file: "exp.toml",
            fault: &["unknown field `unte`", "did you mean `unet`"],
        },
        Case {
            name: "wrong type",
            build: |_, dir| train_config(dir, |t| t.replace("epochs = 1", "epochs = \"one\""), &[]),
            file: "exp.toml",
            fault: &["invalid type: string \"one\"", "epochs"],
        },
        Case {
            name: "negative learning rate",
            build: |_, dir| train_config(dir, |t| t.replace("lr = 0.003", "lr = -0.5"), &[]),
            file: "exp.toml",
            fault: &["lr", "-0.5"],
        },
        Case {
            name: "NaN learning rate",
            build: |_, dir| train_config(dir, |t| t.replace("lr = 0.003", "lr = nan"), &[]),
            file: "exp.toml",
            fault: &["lr", "NaN"],
        },
        Case {
            name: "batch size 0",
            build: |_, dir| {
                train_config(dir, |t| t.replace("batch_size = 2", "batch_size = 0"), &[])
            },
            file: "exp.toml",
            fault: &["batch_size"],
        },
        Case {
            name: "object IoU above 1",
            build: |_, dir| train_config(dir, |t| t + "[evaluation]\nobject_iou = 1.5\n", &[]),
            file: "exp.toml",
            fault: &["evaluation.object_iou", "1.5"],
        },
        Case {
            name: "TOML syntax error",
            build: |_, dir| {
                train_config(dir, |t| t.replace("[pretrain.unet]", "[pretrain.unet"), &[])
            },
            file: "exp.toml",
            fault: &["line 15", "unclosed table"],
        },
        Case {
            name: "config that is not UTF-8",
            build: |_, dir| {
                let args = train_config(dir, |t| t, &[]);
                fs::write(dir.join("exp.toml"), [b'n', 0xff, 0xfe]).unwrap();
                args
            },
            file: "exp.toml",
            fault: &["valid UTF-8"],
        },
        Case {
            name: "--set without '='",
            build: |_, dir| train_config(dir, |t| t, &["pretrain.train.epochs"]),
            file: "exp.toml",
            fault: &["expected key.path=value"],
        },
        Case {
            name: "--set of an unknown key",
            build: |_, dir| train_config(dir, |t| t, &["pretrain.train.weight_decai=0.1"]),
            file: "exp.toml",
            fault: &[
                "unknown field `weight_decai`",
                "did you mean `weight_decay`",
            ],
        },
        Case {
            name: "--set of a wrong type",
            build: |_, dir| train_config(dir, |t| t, &["pretrain.train.epochs=many"]),
            file: "exp.toml",
            fault: &["invalid type: string \"many\"", "epochs"],
        },
        Case {
            name: "--set below a value",
            build: |_, dir| train_config(dir, |t| t, &["name.first=1"]),
            file: "exp.toml",
            fault: &["name is a value, not a section"],
        },
        Case {
            name: "--set of an empty key segment",
            build: |_, dir| train_config(dir, |t| t, &["pretrain..epochs=2"]),
            file: "exp.toml",
            fault: &["empty key segment"],
        },
        Case {
            name: "scanner file with an unknown key",
            build: |_, dir| {
                let scanner = dir.join("scanner.toml");
                fs::write(&scanner, "sise = 64\n").unwrap();
                [
                    "synth",
                    "--count",
                    "2",
                    "--scanner",
                    &s(&scanner),
                    "--out",
                    &s(&dir.join("out")),
                ]
                .map(String::from)
                .to_vec()
            },
            file: "scanner.toml",
            fault: &["unknown field `sise`", "did you mean `size`"],
        },
    ]);
}

#[test]
fn manifests() {
    run_cases(&[
        Case {
            name: "row naming a missing file",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    fs::remove_file(d.join("masks/sparse/000003.png")).unwrap()
                })
            },
            file: "data/manifest.csv",
            fault: &["line 5", "masks/sparse/000003.png does not exist"],
        },
        Case {
            name: "path leaving the data root",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    edit_manifest(d, |rows| rows[1][COL_IMAGE] = "../../etc/passwd".into())
                })
            },
            file: "data/manifest.csv",
            fault: &["line 3", "\"../../etc/passwd\"", "must not leave"],
        },
        Case {
            name: "absolute path",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    edit_manifest(d, |rows| rows[2][COL_IMAGE] = "/etc/passwd".into())
                })
            },
            file: "data/manifest.csv",
            fault: &["line 4", "\"/etc/passwd\"", "must not leave"],
        },
        Case {
            name: "duplicate ids",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    edit_manifest(d, |rows| rows[4][COL_ID] = rows[1][COL_ID].clone())
                })
            },
            file: "data/manifest.csv",
            fault: &["line 6", "id \"000001\"", "line 3"],
        },
        Case {
            name: "row with too few fields",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| edit_manifest(d, |rows| rows[3].truncate(4)))
            },
            file: "data/manifest.csv",
            fault: &["line 5", "4 fields"],
        },
        Case {
            name: "unknown diagnosis",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    edit_manifest(d, |rows| rows[0][COL_DIAGNOSIS] = "influenza".into())
                })
            },
            file: "data/manifest.csv",
            fault: &["line 2", "unknown variant `influenza`"],
        },
        Case {
            name: "header without a column",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    let path = d.join("manifest.csv");
                    let text = fs::read_to_string(&path).unwrap();
                    let lines: Vec<String> = text
                        .lines()
                        .map(|l| {
                            l.split(',')
                                .enumerate()
                                .filter(|(i, _)| *i != 3)
                                .map(|(_, c)| c)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .collect();
                    fs::write(&path, lines.join("\n") + "\n").unwrap();
                })
            },
            file: "data/manifest.csv",
            fault: &["line 2", "missing field `sparse_mask`"],
        },
        Case {
            name: "manifest that is not UTF-8",
            build: |fx, dir| {
                train_on_folder(fx, dir, |d| {
                    let path = d.join("manifest.csv");
                    let mut bytes = fs::read(&path).unwrap();
                    let at = bytes.len() - 10;
                    bytes[at] = 0xff;
                    fs::write(&path, bytes).unwrap();
                })
            },
            file: "data/manifest.csv",
            fault: &["line 7", "UTF-8"],
        },
        Case {
            name: "eval-seg: empty manifest",
            build: |fx, dir| eval_seg(fx, dir, |_, d| edit_manifest(d, |rows| rows.clear())),
            file: "data/manifest.csv",
            fault: &["no examples"],
        },
        Case {
            name: "eval-seg: data folder without a manifest",
            build: |fx, dir| {
                eval_seg(fx, dir, |_, d| {
                    fs::remove_file(d.join("manifest.csv")).unwrap()
                })
            },
            file: "data/manifest.csv",
            fault: &["not found"],
        },
    ]);
}

#[test]
fn weights() {
    run_cases(&[
        Case {
            name: "eval-seg: truncated weights",
            build: |fx, dir| eval_seg(fx, dir, |w, _| truncate_half(w)),
            file: "weights/best.safetensors",
            fault: &["not a complete safetensors file"],
        },
        Case {
            name: "eval-seg: zero-byte weights",
            build: |fx, dir| eval_seg(fx, dir, |w, _| fs::write(w, b"").unwrap()),
            file: "weights/best.safetensors",
            fault: &["not a complete safetensors file"],
        },
        Case {
            name: "eval-seg: weights that are not safetensors",
            build: |fx, dir| {
                eval_seg(fx, dir, |w, _| {
                    fs::write(w, b"{\"epoch\": 3, \"loss\": 0.2}\n").unwrap()
                })
            },
            file: "weights/best.safetensors",
            fault: &["not a complete safetensors file"],
        },
        Case {
            name: "eval-seg: header length beyond the file",
            build: |fx, dir| {
                eval_seg(fx, dir, |w, _| {
                    let mut bytes = fs::read(w).unwrap();
                    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
                    fs::write(w, bytes).unwrap();
                })
            },
            file: "weights/best.safetensors",
            fault: &["not a complete safetensors file"],
        },
        Case {
            name: "eval-seg: tensor of the wrong shape",
            build: |fx, dir| {
                eval_seg(fx, dir, |w, _| {
                    let name = first_tensor(w);
                    edit_safetensors(w, |t| {
                        let flat = t[&name].flatten_all().unwrap();
                        t.insert(name.clone(), flat);
                    })
                })
            },
            file: "weights/best.safetensors",
            fault: &[
                "weights do not fit the model",
                "1 with wrong shape or dtype",
            ],
        },
        Case {
            name: "eval-seg: tensor of the wrong dtype",
            build: |fx, dir| {
                eval_seg(fx, dir, |w, _| {
                    let name = first_tensor(w);
                    edit_safetensors(w, |t| {
                        let wide = t[&name].to_dtype(DType::F64).unwrap();
                        t.insert(name.clone(), wide);
                    })
                })
            },
            file: "weights/best.safetensors",
            fault: &["weights do not fit the model", "expected F32", "found F64"],
        },
        Case {
            name: "eval-seg: missing tensor",
            build: |fx, dir| {
                eval_seg(fx, dir, |w, _| {
                    let name = first_tensor(w);
                    edit_safetensors(w, |t| {
                        t.remove(&name);
                    })
                })
            },
            file: "weights/best.safetensors",
            fault: &["weights do not fit the model", "1 missing: "],
        },
        Case {
            name: "eval-seg: unexpected tensor",
            build: |fx, dir| {
                eval_seg(fx, dir, |w, _| {
                    edit_safetensors(w, |t| {
                        t.insert(
                            "head.extra".into(),
                            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
                        );
                    })
                })
            },
            file: "weights/best.safetensors",
            fault: &["weights do not fit the model", "1 unexpected: head.extra"],
        },
        Case {
            name: "grid backbone: truncated",
            build: |fx, dir| {
                grid(fx, dir, "run", |cell| {
                    truncate_half(&cell.join("best.safetensors"))
                })
            },
            file: "runs/grid/pretrain/dense-seed0/best.safetensors",
            fault: &["not a complete safetensors file"],
        },
        Case {
            name: "grid backbone: not safetensors",
            build: |fx, dir| {
                grid(fx, dir, "run", |cell| {
                    fs::write(cell.join("best.safetensors"), b"PK\x03\x04").unwrap()
                })
            },
            file: "runs/grid/pretrain/dense-seed0/best.safetensors",
            fault: &["not a complete safetensors file"],
        },
        Case {
            name: "grid backbone: wrong shape",
            build: |fx, dir| {
                grid(fx, dir, "run", |cell| {
                    let w = cell.join("best.safetensors");
                    let name = first_tensor(&w);
                    edit_safetensors(&w, |t| {
                        let flat = t[&name].flatten_all().unwrap();
                        t.insert(name.clone(), flat);
                    })
                })
            },
            file: "runs/grid/pretrain/dense-seed0/best.safetensors",
            fault: &["weights do not fit the model", "wrong shape or dtype"],
        },
        Case {
            name: "grid backbone: wrong dtype",
            build: |fx, dir| {
                grid(fx, dir, "run", |cell| {
                    let w = cell.join("best.safetensors");
                    let name = first_tensor(&w);
                    edit_safetensors(&w, |t| {
                        let half = t[&name].to_dtype(DType::BF16).unwrap();
                        t.insert(name.clone(), half);
                    })
                })
            },
            file: "runs/grid/pretrain/dense-seed0/best.safetensors",
            fault: &["weights do not fit the model", "found BF16"],
        },
        Case {
            name: "grid backbone: missing tensor",
            build: |fx, dir| {
                grid(fx, dir, "run", |cell| {
                    let w = cell.join("best.safetensors");
                    let name = first_tensor(&w);
                    edit_safetensors(&w, |t| {
                        t.remove(&name);
                    })
                })
            },
            file: "runs/grid/pretrain/dense-seed0/best.safetensors",
            fault: &["weights do not fit the model", "1 missing"],
        },
        Case {
            name: "report: truncated evaluation table",
            build: |fx, dir| {
                grid(fx, dir, "report", |cell| {
                    truncate_half(&cell.join("eval/test-dense.parquet"))
                })
            },
            file: "runs/grid/pretrain/dense-seed0/eval/test-dense.parquet",
            fault: &["parquet"],
        },
        Case {
            name: "report: run manifest that is not JSON",
            build: |fx, dir| {
                grid(fx, dir, "report", |cell| {
                    fs::write(cell.join("run.json"), b"{\"seed\": ").unwrap()
                })
            },
            file: "runs/grid/pretrain/dense-seed0/run.json",
            fault: &["invalid run manifest", "EOF"],
        },
    ]);
}
