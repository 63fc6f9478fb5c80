//! The frame manifest of an ingested folder: [`FrameRow`], the writing and reading of
//! `manifest.csv` and of a clip's `frames.csv`, and counts over its rows.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::taxonomy::Media;
use crate::clinical::Diagnosis;
use crate::clinical::Probe;
use crate::error::{DataError, Result};
use lus_io::{read_text, write_atomic};

/// One frame of the ingested data set (a row of `manifest.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameRow {
    /// The PNG, relative to the ingested folder.
    pub path: String,
    /// The clip (or still image) the frame comes from.
    pub clip: String,
    /// The patient, when the metadata names one (empty otherwise).
    pub patient_id: String,
    pub label: Diagnosis,
    pub probe: Probe,
    /// Index of the frame in the decoded stream (0 for a still image).
    pub frame_index: usize,
    /// Presentation time of the frame in seconds from the clip's first frame.
    pub time_s: f64,
    pub width: u32,
    pub height: u32,
    pub license: String,
    pub media: Media,
    /// The source file, relative to the source folder.
    pub source: String,
}

impl FrameRow {
    /// The group a fold split must keep whole: the patient when known, else the clip.
    pub fn group(&self) -> String {
        if self.patient_id.is_empty() {
            format!("clip:{}", self.clip)
        } else {
            format!("patient:{}", self.patient_id)
        }
    }
}

pub(super) fn write_rows(path: &Path, rows: &[FrameRow]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer
            .serialize(row)
            .map_err(|e| DataError::config("manifest row", e.to_string()))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| DataError::config("manifest", e.to_string()))?;
    Ok(write_atomic(path, &bytes)?)
}

/// Reads an ingested folder's `manifest.csv` (or a clip's `frames.csv`).
pub fn read_frame_rows(path: &Path) -> Result<Vec<FrameRow>> {
    let text = read_text(path)?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (line, row) in reader.deserialize::<FrameRow>().enumerate() {
        let row = row.map_err(|e| DataError::Annotation {
            path: path.to_path_buf(),
            reason: format!("row {}: {e}", line + 2),
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// Frame and clip counts per class and probe, for logs and notes.
pub fn count_by_class_and_probe(
    rows: &[FrameRow],
) -> BTreeMap<(Diagnosis, String), (usize, usize)> {
    let mut clips: BTreeMap<(Diagnosis, String), HashSet<&str>> = BTreeMap::new();
    let mut frames: BTreeMap<(Diagnosis, String), usize> = BTreeMap::new();
    for row in rows {
        let key = (
            row.label,
            format!("{}-{}", row.probe, media_name(row.media)),
        );
        clips.entry(key.clone()).or_default().insert(&row.clip);
        *frames.entry(key).or_default() += 1;
    }
    frames
        .into_iter()
        .map(|(k, f)| {
            let c = clips.get(&k).map_or(0, HashSet::len);
            (k, (c, f))
        })
        .collect()
}

fn media_name(media: Media) -> &'static str {
    match media {
        Media::Video => "video",
        Media::Image => "image",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_group_is_patient_else_clip() {
        let mut row = FrameRow {
            path: "frames/a/frame_00000.png".into(),
            clip: "a".into(),
            patient_id: String::new(),
            label: Diagnosis::Covid,
            probe: Probe::Convex,
            frame_index: 0,
            time_s: 0.0,
            width: 1,
            height: 1,
            license: String::new(),
            media: Media::Video,
            source: "videos/convex/a.mp4".into(),
        };
        assert_eq!(row.group(), "clip:a");
        row.patient_id = "36".into();
        assert_eq!(row.group(), "patient:36");
    }
}
