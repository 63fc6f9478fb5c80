//! End-to-end tests of `lus synth` and `lus rasterize`: outputs, determinism, resume, and bad
//! input (non-zero exit, a message naming the file, nothing written).

mod common;

use common::{lus, stderr};

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Every file under `root` (relative path -> bytes).
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&path).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn synth(out: &Path, count: &str, seed: &str) -> Output {
    lus(&[
        "synth",
        "--count",
        count,
        "--seed",
        seed,
        "--size",
        "64",
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn synth_writes_the_documented_layout_and_is_byte_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let c = dir.path().join("c");
    for (out, seed) in [(&a, "3"), (&b, "3"), (&c, "4")] {
        let o = synth(out, "6", seed);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let ta = tree(&a);
    assert_eq!(ta, tree(&b), "same seed, same bytes");
    assert_ne!(ta, tree(&c), "another seed, other data");
    for sub in ["images", "masks/dense", "masks/sparse"] {
        for i in 0..6 {
            assert!(ta.contains_key(&PathBuf::from(format!("{sub}/{i:06}.png"))));
        }
    }
    assert!(ta.contains_key(Path::new("annotations/000005.json")));
    assert!(ta.contains_key(Path::new("synth.toml")));
    let manifest = String::from_utf8(ta[Path::new("manifest.csv")].clone()).unwrap();
    let mut lines = manifest.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("id,image,dense_mask,sparse_mask,annotation,diagnosis,probe")
    );
    assert_eq!(lines.count(), 6);
    // the manifest reads back, and every path in it resolves
    let rows = lus_data::manifest::read_manifest(&a.join("manifest.csv")).unwrap();
    assert_eq!(rows.len(), 6);
    // no staging folder is left beside the output
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn synth_masks_agree_with_the_annotations() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    assert!(synth(&out, "4", "1").status.success());
    let schema = lus_data::LabelSchema::default();
    for row in lus_data::manifest::read_manifest(&out.join("manifest.csv")).unwrap() {
        let annotation = lus_data::Annotation::load(&out.join(&row.annotation), &schema).unwrap();
        for (rel, recipe) in [(&row.dense_mask, "dense"), (&row.sparse_mask, "sparse")] {
            let options = lus_data::raster::RasterOptions::recipe(
                lus_data::LabelRecipe::builtin(recipe).unwrap(),
            );
            let expected = lus_data::raster::rasterize(&annotation, &schema, &options).unwrap();
            let on_disk = lus_data::Mask::load_png(&out.join(rel), &schema, None).unwrap();
            assert_eq!(on_disk, expected, "{rel}");
        }
    }
}

#[test]
fn synth_resumes_a_killed_run_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    assert!(synth(&whole, "8", "5").status.success());
    // What a run killed midway leaves: the staging folder with its record and some samples.
    let resumed = dir.path().join("resumed");
    let stage = dir.path().join(".resumed.partial");
    for (rel, bytes) in tree(&whole) {
        let keep = rel == Path::new("synth.toml")
            || ["000001", "000002", "000006"]
                .iter()
                .any(|id| rel.to_string_lossy().contains(id));
        if keep {
            let to = stage.join(&rel);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::write(to, bytes).unwrap();
        }
    }
    let o = synth(&resumed, "8", "5");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tree(&whole), tree(&resumed));
    assert!(!stage.exists());
    // A complete folder asked for again: nothing to do.
    let o = synth(&resumed, "8", "5");
    assert!(o.status.success());
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));
}

fn assert_fails_cleanly(out: &Output, names: &[&str], untouched: &Path) {
    assert!(!out.status.success(), "expected failure");
    let msg = stderr(out);
    for n in names {
        assert!(msg.contains(n), "{n:?} not in {msg:?}");
    }
    assert!(!msg.contains("panicked"), "{msg}");
    assert!(
        !untouched.exists() || tree(untouched).is_empty() || untouched.join("keep").exists(),
        "{} was written",
        untouched.display()
    );
}

#[test]
fn synth_rejects_bad_requests_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let o = lus(&["synth", "--count", "0", "--out", &p(&out)]);
    assert_fails_cleanly(&o, &["--count"], &out);
    let o = lus(&["synth", "--count", "2", "--size", "0", "--out", &p(&out)]);
    assert_fails_cleanly(&o, &["size"], &out);

    let bad_scanner = dir.path().join("scanner.toml");
    fs::write(&bad_scanner, "sise = 128\n").unwrap();
    let o = lus(&[
        "synth",
        "--count",
        "2",
        "--scanner",
        &p(&bad_scanner),
        "--out",
        &p(&out),
    ]);
    assert_fails_cleanly(&o, &["scanner.toml", "sise"], &out);

    let bad_schema = dir.path().join("schema.toml");
    fs::write(&bad_schema, "name = \"x\"\n[[class]]\nid = 1\n").unwrap();
    let o = lus(&[
        "synth",
        "--count",
        "2",
        "--schema",
        &p(&bad_schema),
        "--out",
        &p(&out),
    ]);
    assert_fails_cleanly(&o, &["schema.toml"], &out);
    assert!(!out.exists());

    // An existing folder with other contents is never replaced silently.
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("keep"), b"mine").unwrap();
    let o = synth(&out, "2", "0");
    assert_fails_cleanly(&o, &["already exists", "--force"], &out);
    assert_eq!(fs::read(out.join("keep")).unwrap(), b"mine");
}

const LABELME_OK: &str = r#"{
  "version": "5.4.1", "flags": {},
  "shapes": [
    {"label": "pleural-line", "points": [[2, 10], [30, 11]], "group_id": null, "shape_type": "line", "flags": {}},
    {"label": "b-line", "points": [[14, 12], [18, 12], [19, 31], [13, 31]], "group_id": null, "shape_type": "polygon", "flags": {}},
    {"label": "chest-wall", "points": [[0, 0], [32, 9]], "group_id": null, "shape_type": "rectangle", "flags": {}}
  ],
  "imagePath": null, "imageData": null, "imageHeight": 32, "imageWidth": 32
}"#;

#[test]
fn rasterize_labelme_folder_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let ann = dir.path().join("ann");
    fs::create_dir_all(&ann).unwrap();
    fs::write(ann.join("frame.a.json"), LABELME_OK).unwrap();
    fs::write(ann.join("frame_b.json"), LABELME_OK).unwrap();
    for mode in ["dense", "sparse"] {
        let out = dir.path().join(mode);
        let o = lus(&[
            "rasterize",
            "--annotations",
            ann.to_str().unwrap(),
            "--mode",
            mode,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let schema = lus_data::LabelSchema::default();
        let mask = lus_data::Mask::load_png(&out.join("frame.a.png"), &schema, None).unwrap();
        assert_eq!((mask.width(), mask.height()), (32, 32));
        let h = mask.histogram();
        // the B-line polygon is drawn in both modes; the chest wall only in dense
        assert!(h[5] > 0, "{mode}: no b-line pixels");
        assert_eq!(h[1] > 0, mode == "dense", "{mode}: chest wall");
        assert!(out.join("frame_b.png").is_file() && out.join("rasterize.toml").is_file());
    }
}

#[test]
fn rasterize_rejects_each_bad_file_naming_it_and_writes_nothing() {
    let cases: [(&str, String, &[&str]); 6] = [
        (
            "truncated.json",
            LABELME_OK[..120].to_string(),
            &["truncated.json", "JSON"],
        ),
        (
            "unknown.json",
            LABELME_OK.replace("\"b-line\"", "\"b-lnie\""),
            &["unknown.json", "shape 1", "b-lnie", "did you mean"],
        ),
        (
            "outside.json",
            LABELME_OK.replace("[30, 11]", "[90, 11]"),
            &["outside.json", "shape 0", "outside"],
        ),
        (
            "empty.json",
            LABELME_OK.replace("[[14, 12], [18, 12], [19, 31], [13, 31]]", "[]"),
            &["empty.json", "shape 1"],
        ),
        (
            "circle.json",
            LABELME_OK.replace("\"polygon\"", "\"circle\""),
            &["circle.json", "shape 1", "circle"],
        ),
        (
            "nan.json",
            LABELME_OK.replace("[30, 11]", "[\"x\", 11]"),
            &["nan.json"],
        ),
    ];
    for (name, text, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let ann = dir.path().join("ann");
        fs::create_dir_all(&ann).unwrap();
        fs::write(ann.join("good.json"), LABELME_OK).unwrap();
        fs::write(ann.join(name), text).unwrap();
        let out = dir.path().join("out");
        let o = lus(&[
            "rasterize",
            "--annotations",
            ann.to_str().unwrap(),
            "--mode",
            "dense",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_fails_cleanly(&o, expected, &out);
        assert!(!out.exists(), "{name}: output written");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{name}: staging left behind");
    }
}

#[test]
fn rasterize_reports_a_missing_folder_and_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let missing = dir.path().join("nope");
    let o = lus(&[
        "rasterize",
        "--annotations",
        missing.to_str().unwrap(),
        "--mode",
        "sparse",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(&o, &["nope"], &out);
    let o = lus(&[
        "rasterize",
        "--annotations",
        dir.path().to_str().unwrap(),
        "--mode",
        "sparse",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(&o, &["no *.json"], &out);
    let o = lus(&[
        "rasterize",
        "--annotations",
        dir.path().to_str().unwrap(),
        "--mode",
        "sparse-ish",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(&o, &["sparse-ish"], &out);
}

#[test]
fn rasterize_rejects_an_image_whose_size_disagrees_with_its_annotation() {
    let dir = tempfile::tempdir().unwrap();
    let ann = dir.path().join("ann");
    fs::create_dir_all(&ann).unwrap();
    image::GrayImage::new(16, 16)
        .save(ann.join("small.png"))
        .unwrap();
    fs::write(
        ann.join("frame.json"),
        LABELME_OK.replace("\"imagePath\": null", "\"imagePath\": \"small.png\""),
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = lus(&[
        "rasterize",
        "--annotations",
        ann.to_str().unwrap(),
        "--mode",
        "dense",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(&o, &["frame.json", "small.png", "16", "32"], &out);
    assert!(!out.exists());
}
