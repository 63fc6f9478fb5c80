//! The data set's `metadata.csv`: [`MetadataRow`] and [`read_metadata`].

use std::collections::HashMap;
use std::path::Path;

use crate::error::{DataError, Result};
use lus_io::read_text;

/// One row of `metadata.csv`, as far as the ingest uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataRow {
    pub filename: String,
    pub label: String,
    pub probe: String,
    pub patient_id: Option<String>,
    pub fps: Option<f64>,
    pub license: String,
}

/// Reads `metadata.csv`, keyed by `filename` (the file name without extension).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, MetadataRow>> {
    let text = read_text(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let bad = |reason: String| DataError::Annotation {
        path: path.to_path_buf(),
        reason,
    };
    let headers = reader
        .headers()
        .map_err(|e| bad(format!("cannot read the header: {e}")))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| bad(format!("no `{name}` column")))
    };
    let (c_file, c_label, c_probe, c_patient, c_fps, c_license) = (
        column("filename")?,
        column("label")?,
        column("probe")?,
        column("patient_id")?,
        column("fps")?,
        column("license")?,
    );
    let mut rows = HashMap::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(format!("row {}: {e}", line + 2)))?;
        let get = |c: usize| record.get(c).unwrap_or("").trim().to_string();
        let filename = get(c_file);
        if filename.is_empty() {
            return Err(bad(format!("row {}: empty filename", line + 2)));
        }
        let fps_text = get(c_fps);
        let fps = if fps_text.is_empty() {
            None
        } else {
            Some(
                fps_text
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| {
                        bad(format!(
                            "row {}: fps {fps_text:?} is not a positive number",
                            line + 2
                        ))
                    })?,
            )
        };
        let patient = get(c_patient);
        let row = MetadataRow {
            filename: filename.clone(),
            label: get(c_label),
            probe: get(c_probe).to_ascii_lowercase(),
            patient_id: (!patient.is_empty()).then_some(patient),
            fps,
            license: get(c_license),
        };
        if rows.insert(filename.clone(), row).is_some() {
            return Err(bad(format!(
                "row {}: filename {filename:?} appears twice",
                line + 2
            )));
        }
    }
    Ok(rows)
}
