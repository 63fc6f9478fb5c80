//! The POCUS reader against the real data set (`LUS_POCUS_DIR`, default
//! `../shared/data/pocus` from the repository root; skipped with a printed reason only when the
//! folder is absent). No decoding here: file names, labels, metadata and the inventory.

use std::path::{Path, PathBuf};

use lus_data::Diagnosis;
use lus_data::pocus::{IngestOptions, inventory, read_metadata};

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

/// Every media file under videos/ and images/, relative to `root`.
fn media_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if !path.file_name().unwrap().to_string_lossy().starts_with('.') {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for top in ["videos", "images"] {
        walk(&root.join(top), &mut out);
    }
    out.sort();
    out
}

#[test]
fn every_real_file_name_gives_the_class_metadata_csv_names() {
    let Some(dir) = pocus_dir() else { return };
    let metadata = read_metadata(&dir.join("metadata.csv")).unwrap();
    let files = media_files(&dir);
    assert!(files.len() > 100, "{} files", files.len());
    let mut checked = 0;
    for path in &files {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let class = Diagnosis::from_pocus_file_name(&stem)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let row = metadata
            .get(&stem)
            .unwrap_or_else(|| panic!("{stem} is not in metadata.csv"));
        // The one uncertain clip ("Vir_or_Pneu") is labelled by its first prefix; its metadata
        // label may say either.
        if !path.to_string_lossy().contains("label_uncertain") {
            assert_eq!(
                Diagnosis::from_pocus_metadata_label(&row.label),
                Some(class),
                "{}: metadata label {:?}",
                path.display(),
                row.label
            );
        }
        checked += 1;
    }
    assert_eq!(checked, files.len());
    // metadata.csv has a row for every file and nothing else.
    assert_eq!(metadata.len(), files.len());
}

#[test]
fn the_real_inventory_excludes_exactly_the_uncertain_and_the_liver_clip() {
    let Some(dir) = pocus_dir() else { return };
    let inventory = inventory(&dir, &IngestOptions::default()).unwrap();
    let files = media_files(&dir);
    assert_eq!(
        inventory.files.len() + inventory.excluded.len(),
        files.len()
    );
    let excluded: Vec<&str> = inventory.excluded.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        excluded,
        vec![
            "videos/convex/Pneu_Basal-pneumonia-RUQ_crop.mp4",
            "videos/linear/label_uncertain/Vir_or_Pneu_prospective_file4.mp4"
        ]
    );
    assert!(inventory.excluded[0].1.contains("liver"));
    assert!(inventory.excluded[1].1.contains("label uncertain"));
    assert!(
        inventory.warnings.is_empty(),
        "file names, folders and metadata.csv agree: {:?}",
        inventory.warnings
    );
    // Clip identifiers are unique and file-system safe; names with `+`, `(`, `)`, spaces
    // are mapped, not rejected.
    let mut ids: Vec<&str> = inventory.files.iter().map(|f| f.clip.as_str()).collect();
    assert!(ids.iter().all(|id| {
        id.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    }));
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), inventory.files.len());
    // Every file has a patient in metadata.csv.
    assert!(inventory.files.iter().all(|f| f.patient_id.is_some()));
}
