//! The manifest of a generated data set (`manifest.csv`): one row per sample, paths relative to
//! the data set's folder. Written by `lus synth`, read by the trainers.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clinical::{Diagnosis, Probe};
use crate::error::{DataError, Result};

/// File name of the manifest inside a data set folder.
pub const MANIFEST_FILE: &str = "manifest.csv";

/// One sample of a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRow {
    pub id: String,
    pub image: String,
    pub dense_mask: String,
    pub sparse_mask: String,
    pub annotation: String,
    pub diagnosis: Diagnosis,
    pub probe: Probe,
    /// Scanner findings (empty for data that has none), for analyses by finding.
    #[serde(default)]
    pub pleura: String,
    #[serde(default)]
    pub a_lines: Option<u32>,
    #[serde(default)]
    pub b_lines: Option<u32>,
    #[serde(default)]
    pub consolidation: Option<bool>,
    #[serde(default)]
    pub effusion: Option<bool>,
}

/// Writes rows as CSV, atomically.
pub fn write_manifest(path: &Path, rows: &[ManifestRow]) -> Result<()> {
    Ok(lus_io::write_atomic_with(path, |file| {
        let mut writer = csv::Writer::from_writer(file);
        for row in rows {
            writer.serialize(row).map_err(std::io::Error::other)?;
        }
        writer.flush()
    })?)
}

/// Reads a manifest and checks that ids are unique and that every path it names stays inside
/// `root` (no absolute paths, no `..`) and exists.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestRow>> {
    let root = path.parent().unwrap_or(Path::new("."));
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = csv::Reader::from_reader(file);
    let mut rows = Vec::new();
    // The line of each id: an id names an example in splits, predictions and reports, so two
    // rows under one id would be silently merged or confused downstream.
    let mut lines_of_ids: HashMap<String, usize> = HashMap::new();
    for (i, record) in reader.deserialize::<ManifestRow>().enumerate() {
        let line = i + 2; // header is line 1
        let row = record.map_err(|e| DataError::Annotation {
            path: path.to_path_buf(),
            reason: format!("line {line}: {e}"),
        })?;
        if let Some(first) = lines_of_ids.insert(row.id.clone(), line) {
            return Err(DataError::Annotation {
                path: path.to_path_buf(),
                reason: format!(
                    "line {line}: id {:?} is already the id of line {first}; ids must be unique",
                    row.id
                ),
            });
        }
        for rel in [
            &row.image,
            &row.dense_mask,
            &row.sparse_mask,
            &row.annotation,
        ] {
            resolve_inside(root, rel).map_err(|reason| DataError::Annotation {
                path: path.to_path_buf(),
                reason: format!("line {line}: {reason}"),
            })?;
        }
        rows.push(row);
    }
    Ok(rows)
}

/// `root/rel`, if `rel` is a relative path that stays inside `root` and names an existing file.
pub fn resolve_inside(root: &Path, rel: &str) -> std::result::Result<PathBuf, String> {
    let rel_path = Path::new(rel);
    if rel.is_empty()
        || rel_path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "path {rel:?} must be relative to the data set folder and must not leave it"
        ));
    }
    let full = root.join(rel_path);
    if !full.is_file() {
        return Err(format!("{} does not exist", full.display()));
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> ManifestRow {
        ManifestRow {
            id: id.into(),
            image: format!("images/{id}.png"),
            dense_mask: format!("masks/dense/{id}.png"),
            sparse_mask: format!("masks/sparse/{id}.png"),
            annotation: format!("annotations/{id}.json"),
            diagnosis: Diagnosis::Covid,
            probe: Probe::Convex,
            pleura: "irregular".into(),
            a_lines: Some(0),
            b_lines: Some(3),
            consolidation: Some(false),
            effusion: Some(true),
        }
    }

    fn touch_all(root: &Path, r: &ManifestRow) {
        for rel in [&r.image, &r.dense_mask, &r.sparse_mask, &r.annotation] {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
    }

    #[test]
    fn round_trip_and_path_checks() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![row("000000"), row("000001")];
        rows.iter().for_each(|r| touch_all(dir.path(), r));
        let path = dir.path().join(MANIFEST_FILE);
        write_manifest(&path, &rows).unwrap();
        assert_eq!(read_manifest(&path).unwrap(), rows);

        let mut escaping = row("000002");
        escaping.image = "../outside.png".into();
        write_manifest(&path, &[escaping]).unwrap();
        let e = read_manifest(&path).unwrap_err().to_string();
        assert!(
            e.contains("manifest.csv: line 2") && e.contains("must not leave"),
            "{e}"
        );

        let missing = row("000003");
        write_manifest(&path, &[missing]).unwrap();
        let e = read_manifest(&path).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");

        let mut twice = row("000004");
        touch_all(dir.path(), &twice);
        let first = twice.clone();
        twice.image = "images/000000.png".into();
        write_manifest(&path, &[row("000000"), first, row("000001"), twice]).unwrap();
        let e = read_manifest(&path).unwrap_err().to_string();
        assert!(
            e.contains("manifest.csv: line 5: id \"000004\" is already the id of line 3"),
            "{e}"
        );

        std::fs::write(&path, "id,image\n1,2\n").unwrap();
        let e = read_manifest(&path).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
