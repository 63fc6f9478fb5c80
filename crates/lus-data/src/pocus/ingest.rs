//! The ingest: the output folder's file names, [`ingest`] with its resume (a complete clip
//! folder is kept, a failed one retried), the still-image copy and the clip decode into PNG
//! frames, and the per-file [`Outcome`]s of the [`IngestReport`] and `ingest-log.csv`.

use std::fs;
use std::path::Path;

use rayon::prelude::*;

use super::inventory::{Inventory, SourceFile};
use super::manifest::{FrameRow, read_frame_rows, write_rows};
use super::options::{IngestOptions, check_side};
use super::taxonomy::Media;
use super::tools::{Tools, decode_video};
use crate::error::{DataError, Result};
use crate::image_io::{load_gray, save_gray_png};
use lus_io::{StagedDir, read_text, write_atomic};

/// The frame manifest of an ingested folder.
pub const POCUS_MANIFEST: &str = "manifest.csv";
/// The per-file outcome table of an ingest.
pub const INGEST_LOG: &str = "ingest-log.csv";
/// The options an ingested folder was made with.
pub const INGEST_SETTINGS: &str = "ingest.json";
/// Folder of the per-clip frame folders.
pub const FRAMES_DIR: &str = "frames";
/// A clip folder's own manifest rows (its completion mark).
const CLIP_ROWS_FILE: &str = "frames.csv";

/// What happened to one source file.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Decoded now: this many frames.
    Ingested(usize),
    /// Complete from an earlier run: this many frames.
    Done(usize),
    /// Left out on purpose.
    Excluded(String),
    /// Could not be decoded (the rest of the ingest goes on).
    Failed(String),
}

/// The result of [`ingest`].
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// Every frame, sorted by clip then frame index (what `manifest.csv` holds).
    pub rows: Vec<FrameRow>,
    /// Every source file (relative path) with its outcome, sorted by path.
    pub outcomes: Vec<(String, Outcome)>,
    pub warnings: Vec<String>,
}

impl IngestReport {
    pub fn failed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.outcomes.iter().filter_map(|(rel, o)| match o {
            Outcome::Failed(reason) => Some((rel.as_str(), reason.as_str())),
            _ => None,
        })
    }
}

/// Ingests the files `inventory` lists (see [`inventory`](super::inventory()); the caller
/// lists them first, e.g. to size a progress bar) into `out` (see the module documentation),
/// decoding clips in parallel; `on_file` is called once per source file as it finishes.
pub fn ingest(
    inventory: Inventory,
    out: &Path,
    options: &IngestOptions,
    tools: &Tools,
    on_file: &(dyn Fn(&str, &Outcome) + Sync),
) -> Result<IngestReport> {
    options.validate()?;
    fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let settings_path = out.join(INGEST_SETTINGS);
    let settings = serde_json::to_string_pretty(options)
        .map_err(|e| DataError::config("ingest options", e.to_string()))?;
    if settings_path.is_file() {
        let before: IngestOptions =
            serde_json::from_str(&read_text(&settings_path)?).map_err(|e| DataError::Json {
                path: settings_path.clone(),
                source: e,
            })?;
        if &before != options {
            return Err(DataError::config(
                "ingest options",
                format!(
                    "{} was ingested with other options ({}); choose another --out folder",
                    out.display(),
                    settings_path.display()
                ),
            ));
        }
    } else {
        write_atomic(&settings_path, settings.as_bytes())?;
    }
    let frames_root = out.join(FRAMES_DIR);
    fs::create_dir_all(&frames_root).map_err(|e| DataError::io(&frames_root, e))?;

    let results: Vec<(String, Outcome, Vec<FrameRow>)> = inventory
        .files
        .par_iter()
        .map(|file| {
            let (outcome, rows) = match ingest_file(file, &frames_root, options, tools) {
                Ok((rows, fresh)) => (
                    if fresh {
                        Outcome::Ingested(rows.len())
                    } else {
                        Outcome::Done(rows.len())
                    },
                    rows,
                ),
                Err(e) => (Outcome::Failed(e.to_string()), Vec::new()),
            };
            on_file(&file.rel, &outcome);
            (file.rel.clone(), outcome, rows)
        })
        .collect();

    let mut outcomes = Vec::new();
    let mut rows = Vec::new();
    for (rel, outcome, file_rows) in results {
        outcomes.push((rel, outcome));
        rows.extend(file_rows);
    }
    for (rel, reason) in &inventory.excluded {
        let outcome = Outcome::Excluded(reason.clone());
        on_file(rel, &outcome);
        outcomes.push((rel.clone(), outcome));
    }
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    rows.sort_by(|a, b| (&a.clip, a.frame_index).cmp(&(&b.clip, b.frame_index)));

    let mut log = csv::Writer::from_writer(Vec::new());
    let csv_error = |e: csv::Error| DataError::config("ingest log", e.to_string());
    log.write_record(["source", "outcome", "frames", "reason"])
        .map_err(csv_error)?;
    for (rel, outcome) in &outcomes {
        let (kind, frames, reason) = match outcome {
            Outcome::Ingested(n) => ("ingested", n.to_string(), String::new()),
            Outcome::Done(n) => ("done-before", n.to_string(), String::new()),
            Outcome::Excluded(r) => ("excluded", String::new(), r.clone()),
            Outcome::Failed(r) => ("failed", String::new(), r.clone()),
        };
        log.write_record([rel.as_str(), kind, frames.as_str(), reason.as_str()])
            .map_err(csv_error)?;
    }
    let log_bytes = log
        .into_inner()
        .map_err(|e| DataError::config("ingest log", e.to_string()))?;
    write_atomic(&out.join(INGEST_LOG), &log_bytes)?;
    write_rows(&out.join(POCUS_MANIFEST), &rows)?;
    Ok(IngestReport {
        rows,
        outcomes,
        warnings: inventory.warnings,
    })
}

/// Ingests one file into `frames/<clip>/` unless that folder is complete. Returns its rows and
/// whether they were made now.
fn ingest_file(
    file: &SourceFile,
    frames_root: &Path,
    options: &IngestOptions,
    tools: &Tools,
) -> Result<(Vec<FrameRow>, bool)> {
    let clip_dir = frames_root.join(&file.clip);
    let done_mark = clip_dir.join(CLIP_ROWS_FILE);
    if done_mark.is_file() {
        let rows = read_frame_rows(&done_mark)?;
        if rows.first().is_some_and(|r| r.source != file.rel) {
            return Err(DataError::config(
                "clip folder",
                format!(
                    "{} holds frames of {}, not of {}",
                    clip_dir.display(),
                    rows[0].source,
                    file.rel
                ),
            ));
        }
        return Ok((rows, false));
    }
    let stage = StagedDir::open_fresh(&clip_dir)?;
    let result = match file.media {
        Media::Video => decode_clip(file, stage.path(), options, tools),
        Media::Image => copy_still(file, stage.path(), options),
    };
    // `decode_video` refuses a clip with no frame and a still is one frame, so `f` is never
    // empty.
    let frames = match result {
        Ok(f) => f,
        Err(e) => {
            stage.discard();
            return Err(e);
        }
    };
    let rows: Vec<FrameRow> = frames
        .into_iter()
        .map(|f| FrameRow {
            path: format!("{FRAMES_DIR}/{}/{}", file.clip, f.file_name),
            clip: file.clip.clone(),
            patient_id: file.patient_id.clone().unwrap_or_default(),
            label: file.class,
            probe: file.probe,
            frame_index: f.index,
            time_s: f.time_s,
            width: f.width,
            height: f.height,
            license: file.license.clone(),
            media: file.media,
            source: file.rel.clone(),
        })
        .collect();
    write_rows(&stage.path().join(CLIP_ROWS_FILE), &rows)?;
    stage.commit(false)?;
    Ok((rows, true))
}

/// A frame written to a staging folder.
struct WrittenFrame {
    file_name: String,
    index: usize,
    time_s: f64,
    width: u32,
    height: u32,
}

fn frame_file_name(index: usize) -> String {
    format!("frame_{index:05}.png")
}

fn copy_still(file: &SourceFile, dir: &Path, options: &IngestOptions) -> Result<Vec<WrittenFrame>> {
    let image = load_gray(&file.path)?;
    check_side(&file.path, image.width(), image.height(), options)?;
    let name = frame_file_name(0);
    save_gray_png(&image, &dir.join(&name))?;
    Ok(vec![WrittenFrame {
        file_name: name,
        index: 0,
        time_s: 0.0,
        width: image.width(),
        height: image.height(),
    }])
}

/// Decodes the sampled frames of a clip into `dir` as PNGs.
fn decode_clip(
    file: &SourceFile,
    dir: &Path,
    options: &IngestOptions,
    tools: &Tools,
) -> Result<Vec<WrittenFrame>> {
    decode_video(&file.path, options, tools, file.metadata_fps)?
        .into_iter()
        .map(|frame| {
            let file_name = frame_file_name(frame.index);
            save_gray_png(&frame.image, &dir.join(&file_name))?;
            Ok(WrittenFrame {
                file_name,
                index: frame.index,
                time_s: frame.time_s,
                width: frame.image.width(),
                height: frame.image.height(),
            })
        })
        .collect()
}
