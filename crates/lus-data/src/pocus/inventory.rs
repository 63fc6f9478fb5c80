//! The inventory of the source folder: which media files are ingested ([`SourceFile`]) and
//! which are left out and why ([`Inventory`], [`inventory`]), with the file-system-safe clip
//! identifiers and the media file extensions.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::metadata::read_metadata;
use super::options::IngestOptions;
use super::taxonomy::Media;
use crate::clinical::Diagnosis;
use crate::clinical::Probe;
use crate::error::{DataError, Result};

/// Sub-folder of clips whose label is uncertain.
const UNCERTAIN_DIR: &str = "label_uncertain";

const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "mov", "avi", "mpeg", "mpg", "gif", "webm", "mkv", "m4v", "ogv",
];
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// A media file of the source folder that will be ingested.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFile {
    /// Full path.
    pub path: PathBuf,
    /// Path relative to the source folder (`videos/convex/...`), as logged.
    pub rel: String,
    /// File name without extension (the metadata key).
    pub stem: String,
    /// The clip's identifier in the output: the stem made file-system safe, unique.
    pub clip: String,
    pub class: Diagnosis,
    pub probe: Probe,
    pub media: Media,
    /// The patient from `metadata.csv`, when known.
    pub patient_id: Option<String>,
    pub license: String,
    /// Frame rate from `metadata.csv` (used when the stream does not state one).
    pub metadata_fps: Option<f64>,
}

/// What the source folder holds: the files to ingest, and those left out with the reason.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub files: Vec<SourceFile>,
    /// `(relative path, reason)` of every file left out.
    pub excluded: Vec<(String, String)>,
    /// Notes on mismatches between file names and `metadata.csv` (logged, not fatal).
    pub warnings: Vec<String>,
}

/// Lists the source folder's media files: `{videos,images}/{convex,linear}/**`, sorted by
/// relative path so that clip identifiers and every later order are reproducible.
pub fn inventory(src: &Path, options: &IngestOptions) -> Result<Inventory> {
    let metadata_path = src.join("metadata.csv");
    let metadata = if metadata_path.is_file() {
        read_metadata(&metadata_path)?
    } else {
        return Err(DataError::io(
            &metadata_path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no metadata.csv: --src must be a POCUS data folder (videos/, images/, metadata.csv)",
            ),
        ));
    };
    let mut found: Vec<(String, PathBuf, Media, Probe, bool)> = Vec::new();
    for (top, media) in [("videos", Media::Video), ("images", Media::Image)] {
        for probe in [Probe::Convex, Probe::Linear] {
            let dir = src.join(top).join(probe.as_str());
            if !dir.is_dir() {
                continue;
            }
            walk(&dir, &mut |path, uncertain| {
                let rel = path
                    .strip_prefix(src)
                    .unwrap_or(path)
                    .to_string_lossy()
                    .into_owned();
                found.push((rel, path.to_path_buf(), media, probe, uncertain));
            })?;
        }
    }
    if found.is_empty() {
        return Err(DataError::io(
            src,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no files under videos/{convex,linear} or images/{convex,linear}",
            ),
        ));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));

    let excluded_names: HashMap<&str, &str> = options
        .exclude
        .iter()
        .map(|e| (e.file.as_str(), e.reason.as_str()))
        .collect();
    let mut inventory = Inventory::default();
    let mut used_clip_ids = HashSet::new();
    for (rel, path, media, probe, uncertain) in found {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (stem, extension) = match name.rsplit_once('.') {
            Some((s, e)) => (s.to_string(), e.to_ascii_lowercase()),
            None => (name.clone(), String::new()),
        };
        let known = match media {
            Media::Video => VIDEO_EXTENSIONS.contains(&extension.as_str()),
            Media::Image => IMAGE_EXTENSIONS.contains(&extension.as_str()),
        };
        if !known {
            inventory.excluded.push((
                rel,
                format!("not a {media:?} file (extension {extension:?})").to_lowercase(),
            ));
            continue;
        }
        if uncertain {
            inventory
                .excluded
                .push((rel, format!("label uncertain (in {UNCERTAIN_DIR}/)")));
            continue;
        }
        if let Some(reason) = excluded_names.get(stem.as_str()) {
            inventory
                .excluded
                .push((rel, format!("excluded: {reason}")));
            continue;
        }
        let class = match Diagnosis::from_pocus_file_name(&stem) {
            Ok(c) => c,
            Err(reason) => {
                inventory.excluded.push((rel, reason));
                continue;
            }
        };
        let meta = metadata.get(&stem);
        match meta {
            None => inventory.warnings.push(format!(
                "{rel}: not in metadata.csv; patient unknown (the clip is its own group)"
            )),
            Some(m) => {
                if let Some(named) = Diagnosis::from_pocus_metadata_label(&m.label)
                    && named != class
                {
                    inventory.warnings.push(format!(
                        "{rel}: file name says {class}, metadata.csv says {:?}; the file name is used",
                        m.label
                    ));
                }
                if !m.probe.is_empty() && m.probe != probe.as_str() {
                    inventory.warnings.push(format!(
                        "{rel}: in the {probe} folder, metadata.csv says probe {:?}; the folder is used",
                        m.probe
                    ));
                }
            }
        }
        let clip = unique_clip_id(&stem, &mut used_clip_ids);
        inventory.files.push(SourceFile {
            path,
            rel,
            stem: stem.clone(),
            clip,
            class,
            probe,
            media,
            patient_id: meta.and_then(|m| m.patient_id.clone()),
            license: meta.map(|m| m.license.clone()).unwrap_or_default(),
            metadata_fps: meta.and_then(|m| m.fps),
        });
    }
    Ok(inventory)
}

/// Every file under `dir` (recursively, sorted), with whether it lies in an uncertain-label
/// folder.
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, bool)) -> Result<()> {
    fn inner(dir: &Path, uncertain: bool, visit: &mut dyn FnMut(&Path, bool)) -> Result<()> {
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| DataError::io(dir, e))?
            .map(|e| e.map(|e| e.path()).map_err(|err| DataError::io(dir, err)))
            .collect::<Result<_>>()?;
        entries.sort();
        for path in entries {
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                let here = uncertain
                    || path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().eq_ignore_ascii_case(UNCERTAIN_DIR));
                inner(&path, here, visit)?;
            } else {
                visit(&path, uncertain);
            }
        }
        Ok(())
    }
    inner(dir, false, visit)
}

/// The stem with every character outside `[A-Za-z0-9._-]` replaced by `_` (the data set's
/// names hold `+`, `(`, `)` and spaces), made unique by a `-2`, `-3`, ... suffix.
fn unique_clip_id(stem: &str, used: &mut HashSet<String>) -> String {
    let safe: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.').to_string();
    let base = if safe.is_empty() {
        "clip".to_string()
    } else {
        safe
    };
    let mut candidate = base.clone();
    let mut n = 2;
    while !used.insert(candidate.to_ascii_lowercase()) {
        candidate = format!("{base}-{n}");
        n += 1;
    }
    candidate
}

/// Whether `path` names a clip (by its extension: MP4, MOV, AVI, MPEG, GIF, WebM, MKV, M4V,
/// OGV).
pub fn is_video(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        VIDEO_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str())
    })
}

/// Whether `path` names a still image (by its extension: PNG or JPEG).
pub fn is_still_image(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_ids_are_safe_and_unique() {
        let mut used = HashSet::new();
        assert_eq!(
            unique_clip_id("Cov-Atlas+(44)", &mut used),
            "Cov-Atlas__44_"
        );
        assert_eq!(
            unique_clip_id("Cov-Atlas (44)", &mut used),
            "Cov-Atlas__44_-2"
        );
        assert_eq!(
            unique_clip_id("cov-atlas__44_", &mut used),
            "cov-atlas__44_-3"
        );
        assert_eq!(unique_clip_id("..", &mut used), "clip");
    }
}
