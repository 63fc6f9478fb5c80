//! The real POCUS lung-ultrasound data (Born et al., POCOVID-Net): ingest of its clips and
//! images into grayscale frames with a manifest, and the reading of that manifest.
//!
//! # Source layout (the public `covid19_ultrasound` data folder)
//! `videos/{convex,linear}/*.{mp4,mov,avi,mpeg,gif,...}`, `images/{convex,linear}/*.{jpg,png}`
//! and `metadata.csv` (one row per file: `filename` without extension, `label`, `media_type`,
//! `probe`, `patient_id` (may be empty), `fps`, `license`, ...). The class is the file-name
//! prefix ([`PocusClass::from_file_name`]). A sub-folder named `label_uncertain` holds clips
//! whose label is uncertain; they are excluded, as is every file named in
//! [`IngestOptions::exclude`] (by default the clip that shows liver, not lung).
//!
//! # Frames
//! Clips are decoded by the `ffmpeg` program (every container the data set uses; `ffprobe`
//! reads the stream's size, sample aspect ratio and frame rate). Frames are sampled by the
//! POCOVID-Net rule: every `int(fps / frames_per_second)`-th frame from the first, at most
//! `max_frames_per_clip` per clip. A clip with non-square pixels (sample aspect ratio other
//! than 1) is stretched horizontally to square pixels so that anatomy keeps its shape; every
//! other frame keeps its stored resolution. Frames are converted to 8-bit grayscale (BT.601
//! luma, ffmpeg's `gray`) and written as PNG. A still image is a clip of one frame.
//!
//! # Output layout
//! | path | |
//! |---|---|
//! | `frames/<clip>/frame_NNNNN.png` | frame `NNNNN` (index in the decoded stream) of one clip |
//! | `frames/<clip>/frames.csv` | that clip's manifest rows; written last, so its presence marks the clip done (the clip folder is staged and renamed whole) |
//! | `manifest.csv` | every frame of every ingested clip ([`FrameRow`]), sorted by clip then frame |
//! | `ingest-log.csv` | every source file with its outcome (ingested, done before, excluded, failed) and the reason |
//! | `ingest.json` | the [`IngestOptions`] used; a rerun with other options into the same folder is refused |
//!
//! A rerun skips the clips whose folder is complete, retries failed ones and rewrites the two
//! tables, so an interrupted ingest resumes where it stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use image::GrayImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::clinical::Probe;
use crate::error::{DataError, Result};
use crate::image_io::{MAX_IMAGE_SIDE, load_gray, save_gray_png};
use crate::io::{StagedDir, read_text, write_atomic};

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
/// Sub-folder of clips whose label is uncertain.
const UNCERTAIN_DIR: &str = "label_uncertain";

const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "mov", "avi", "mpeg", "mpg", "gif", "webm", "mkv", "m4v", "ogv",
];
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// The diagnostic class of a POCUS file, from its file-name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PocusClass {
    /// `Cov`: COVID-19.
    Covid,
    /// `Pneu`: bacterial pneumonia.
    Pneumonia,
    /// `Reg`: healthy ("regular").
    Healthy,
    /// `Vir`: non-COVID viral pneumonia.
    Viral,
}

impl PocusClass {
    pub const ALL: [PocusClass; 4] = [
        PocusClass::Covid,
        PocusClass::Pneumonia,
        PocusClass::Healthy,
        PocusClass::Viral,
    ];

    /// The lower-case name used in files and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            PocusClass::Covid => "covid",
            PocusClass::Pneumonia => "pneumonia",
            PocusClass::Healthy => "healthy",
            PocusClass::Viral => "viral",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            PocusClass::Covid => "cov",
            PocusClass::Pneumonia => "pneu",
            PocusClass::Healthy => "reg",
            PocusClass::Viral => "vir",
        }
    }

    /// The class named by a file name's prefix (case-insensitive `Cov`, `Pneu`, `Reg`, `Vir`).
    pub fn from_file_name(name: &str) -> std::result::Result<Self, String> {
        let lower = name.to_ascii_lowercase();
        PocusClass::ALL
            .into_iter()
            .find(|c| lower.starts_with(c.prefix()))
            .ok_or_else(|| {
                format!(
                    "file name {name:?} does not start with a class prefix (Cov, Pneu, Reg, Vir)"
                )
            })
    }

    /// The class that `metadata.csv`'s `label` words name (`COVID-19`, `Bacterial pneumonia`,
    /// `regular`, `Viral pneumonia`), if any.
    pub fn from_metadata_label(label: &str) -> Option<Self> {
        let lower = label.trim().to_ascii_lowercase();
        if lower.starts_with("covid") {
            Some(PocusClass::Covid)
        } else if lower.starts_with("bacterial") || lower == "pneumonia" {
            Some(PocusClass::Pneumonia)
        } else if lower == "regular" || lower == "healthy" {
            Some(PocusClass::Healthy)
        } else if lower.starts_with("viral") {
            Some(PocusClass::Viral)
        } else {
            None
        }
    }
}

impl fmt::Display for PocusClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PocusClass {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        PocusClass::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown POCUS class {s:?} (expected covid, pneumonia, healthy or viral)")
            })
    }
}

/// A file left out of the ingest on purpose, with the reason logged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Exclusion {
    /// File name without extension (case-sensitive, as on disk).
    pub file: String,
    pub reason: String,
}

/// How frames are taken from the clips.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestOptions {
    /// Target sampling rate: every `int(fps / frames_per_second)`-th frame is kept (at least
    /// every frame). POCOVID-Net: 3.
    pub frames_per_second: f64,
    /// At most this many frames per clip (the first ones by the rule). POCOVID-Net: 30.
    pub max_frames_per_clip: usize,
    /// Files to leave out, with why.
    pub exclude: Vec<Exclusion>,
    /// Largest accepted frame side in pixels (a decoder limit against broken headers).
    pub max_side: u32,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            frames_per_second: 3.0,
            max_frames_per_clip: 30,
            exclude: vec![Exclusion {
                file: "Pneu_Basal-pneumonia-RUQ_crop".into(),
                reason: "shows more than 95 % liver, not lung (data set README)".into(),
            }],
            max_side: MAX_IMAGE_SIDE,
        }
    }
}

impl IngestOptions {
    pub fn validate(&self) -> Result<()> {
        if !(self.frames_per_second.is_finite() && self.frames_per_second > 0.0) {
            return Err(DataError::config(
                "frames_per_second",
                format!("{} is not a positive number", self.frames_per_second),
            ));
        }
        if self.max_frames_per_clip == 0 {
            return Err(DataError::config(
                "max_frames_per_clip",
                "must be at least 1",
            ));
        }
        if self.max_side == 0 {
            return Err(DataError::config("max_side", "must be at least 1"));
        }
        Ok(())
    }

    /// The frame step for a clip of `fps` frames per second.
    pub fn frame_step(&self, fps: f64) -> usize {
        ((fps / self.frames_per_second).floor() as usize).max(1)
    }
}

/// Still image or clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Media {
    Video,
    Image,
}

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
    pub class: PocusClass,
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
        let class = match PocusClass::from_file_name(&stem) {
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
                if let Some(named) = PocusClass::from_metadata_label(&m.label)
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

/// One frame of the ingested data set (a row of `manifest.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameRow {
    /// The PNG, relative to the ingested folder.
    pub path: String,
    /// The clip (or still image) the frame comes from.
    pub clip: String,
    /// The patient, when the metadata names one (empty otherwise).
    pub patient_id: String,
    pub label: PocusClass,
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

fn write_rows(path: &Path, rows: &[FrameRow]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer
            .serialize(row)
            .map_err(|e| DataError::config("manifest row", e.to_string()))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| DataError::config("manifest", e.to_string()))?;
    write_atomic(path, &bytes)
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

/// The external programs the ingest runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
}

impl Tools {
    /// `ffmpeg` and `ffprobe` from `LUS_FFMPEG` / `LUS_FFPROBE` or the `PATH`, checked to run.
    pub fn find() -> Result<Self> {
        let pick = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let tools = Tools {
            ffmpeg: pick("LUS_FFMPEG", "ffmpeg"),
            ffprobe: pick("LUS_FFPROBE", "ffprobe"),
        };
        for program in [&tools.ffmpeg, &tools.ffprobe] {
            let ok = Command::new(program)
                .arg("-version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(DataError::Tool {
                    program: program.display().to_string(),
                    reason: "not found or does not run; POCUS clips are decoded with FFmpeg: \
                             install it (Debian/Ubuntu: `apt-get install ffmpeg`, macOS: \
                             `brew install ffmpeg`) or point LUS_FFMPEG / LUS_FFPROBE at the \
                             programs"
                        .into(),
                });
            }
        }
        Ok(tools)
    }
}

/// Ingests the files `inventory` lists (see [`inventory`]; the caller lists them first, e.g.
/// to size a progress bar) into `out` (see the module documentation), decoding clips in
/// parallel; `on_file` is called once per source file as it finishes.
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

fn check_side(path: &Path, width: u32, height: u32, options: &IngestOptions) -> Result<()> {
    if width == 0 || height == 0 || width > options.max_side || height > options.max_side {
        return Err(DataError::Image {
            path: path.to_path_buf(),
            reason: format!(
                "frame size {width}x{height} is outside 1..={} pixels a side",
                options.max_side
            ),
        });
    }
    Ok(())
}

/// The video stream as ffprobe reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub width: u32,
    pub height: u32,
    /// Sample (pixel) aspect ratio, `num:den`; `1:1` when unstated.
    pub sample_aspect: (u32, u32),
    /// Frames per second (average rate, else the base rate), when the stream states one.
    pub fps: Option<f64>,
}

impl StreamInfo {
    /// Width and height of the frames with square pixels: the width stretched by the sample
    /// aspect ratio (rounded to a whole pixel), the height kept.
    pub fn square_pixel_size(&self) -> (u32, u32) {
        let (num, den) = self.sample_aspect;
        if num == den || num == 0 || den == 0 {
            (self.width, self.height)
        } else {
            let width = (f64::from(self.width) * f64::from(num) / f64::from(den)).round() as u32;
            (width.max(1), self.height)
        }
    }
}

fn parse_ratio(text: &str, sep: char) -> Option<(u32, u32)> {
    let (a, b) = text.split_once(sep)?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Parses ffprobe's JSON (`-show_entries stream=width,height,sample_aspect_ratio,
/// avg_frame_rate,r_frame_rate -of json`).
pub fn parse_probe_json(json: &str) -> std::result::Result<StreamInfo, String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        streams: Vec<Stream>,
    }
    #[derive(Deserialize)]
    struct Stream {
        width: Option<u32>,
        height: Option<u32>,
        sample_aspect_ratio: Option<String>,
        avg_frame_rate: Option<String>,
        r_frame_rate: Option<String>,
    }
    let probe: Probe =
        serde_json::from_str(json).map_err(|e| format!("unreadable ffprobe output: {e}"))?;
    let stream = probe
        .streams
        .into_iter()
        .next()
        .ok_or_else(|| "no video stream".to_string())?;
    let (Some(width), Some(height)) = (stream.width, stream.height) else {
        return Err("the video stream has no frame size".into());
    };
    let rate = |r: &Option<String>| {
        r.as_deref()
            .and_then(|t| parse_ratio(t, '/'))
            .filter(|&(n, d)| n > 0 && d > 0)
            .map(|(n, d)| f64::from(n) / f64::from(d))
    };
    let sample_aspect = stream
        .sample_aspect_ratio
        .as_deref()
        .and_then(|t| parse_ratio(t, ':'))
        .filter(|&(n, d)| n > 0 && d > 0)
        .unwrap_or((1, 1));
    Ok(StreamInfo {
        width,
        height,
        sample_aspect,
        fps: rate(&stream.avg_frame_rate).or_else(|| rate(&stream.r_frame_rate)),
    })
}

/// Runs ffprobe on a clip.
pub fn probe_stream(path: &Path, tools: &Tools) -> Result<StreamInfo> {
    let output = Command::new(&tools.ffprobe)
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .arg("stream=width,height,sample_aspect_ratio,avg_frame_rate,r_frame_rate")
        .args(["-of", "json"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DataError::Tool {
            program: tools.ffprobe.display().to_string(),
            reason: e.to_string(),
        })?;
    let fail = |reason: String| DataError::Image {
        path: path.to_path_buf(),
        reason,
    };
    if !output.status.success() {
        return Err(fail(format!(
            "ffprobe cannot read it: {}",
            last_lines(&String::from_utf8_lossy(&output.stderr), 3)
        )));
    }
    parse_probe_json(&String::from_utf8_lossy(&output.stdout)).map_err(fail)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    if tail.is_empty() {
        "(no message)".into()
    } else {
        tail.join(" | ")
    }
}

/// One sampled frame of a clip, decoded.
#[derive(Debug, Clone)]
pub struct DecodedFrame {
    /// Index of the frame in the decoded stream.
    pub index: usize,
    /// Presentation time in seconds from the first kept frame.
    pub time_s: f64,
    /// Grayscale, square pixels.
    pub image: GrayImage,
}

/// Decodes the frames of the clip at `path` that the sampling rule of `options` keeps (every
/// `int(fps / frames_per_second)`-th, at most `max_frames_per_clip`), as grayscale with square
/// pixels. `fallback_fps` is used when the stream states no frame rate.
pub fn decode_video(
    path: &Path,
    options: &IngestOptions,
    tools: &Tools,
    fallback_fps: Option<f64>,
) -> Result<Vec<DecodedFrame>> {
    options.validate()?;
    let info = probe_stream(path, tools)?;
    check_side(path, info.width, info.height, options)?;
    let fps = info.fps.or(fallback_fps).ok_or_else(|| DataError::Image {
        path: path.to_path_buf(),
        reason: "the stream states no frame rate and none is known for it".into(),
    })?;
    let step = options.frame_step(fps);
    let (width, height) = info.square_pixel_size();
    check_side(path, width, height, options)?;
    // `select` keeps frames 0, step, 2 step, ... of the decoded stream (numbered `n` from 0);
    // `showinfo` then logs each kept frame's presentation time, read back from stderr.
    let mut filters = format!("select='not(mod(n\\,{step}))'");
    if (width, height) != (info.width, info.height) {
        filters.push_str(&format!(",scale={width}:{height}:flags=bicubic,setsar=1"));
    }
    filters.push_str(",format=gray,showinfo");
    let mut child = Command::new(&tools.ffmpeg)
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "info",
            "-threads",
            "1",
        ])
        .arg("-i")
        .arg(path)
        .args(["-map", "0:v:0", "-vf", &filters, "-fps_mode", "passthrough"])
        .args(["-frames:v", &options.max_frames_per_clip.to_string()])
        .args(["-f", "rawvideo", "-pix_fmt", "gray", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DataError::Tool {
            program: tools.ffmpeg.display().to_string(),
            reason: e.to_string(),
        })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let log_reader = std::thread::spawn(move || {
        let mut times = Vec::new();
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if line.contains("showinfo") {
                if let Some(t) = showinfo_pts_time(&line) {
                    times.push(t);
                }
            } else {
                log.push_str(&line);
                log.push('\n');
            }
        }
        (times, log)
    });
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let frame_bytes = width as usize * height as usize;
    let mut frames = Vec::new();
    let mut read_error = None;
    loop {
        let mut buffer = vec![0u8; frame_bytes];
        match read_exact_or_eof(&mut stdout, &mut buffer) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                read_error = Some(DataError::io(path, e));
                break;
            }
        }
        let index = frames.len() * step;
        frames.push(DecodedFrame {
            index,
            time_s: index as f64 / fps,
            image: GrayImage::from_raw(width, height, buffer)
                .expect("the buffer holds width x height bytes"),
        });
    }
    drop(stdout);
    let status = child.wait().map_err(|e| DataError::Tool {
        program: tools.ffmpeg.display().to_string(),
        reason: e.to_string(),
    })?;
    let (times, log) = log_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(DataError::Image {
            path: path.to_path_buf(),
            reason: format!("ffmpeg cannot decode it: {}", last_lines(&log, 3)),
        });
    }
    if let Some(e) = read_error {
        return Err(e);
    }
    if frames.is_empty() {
        return Err(DataError::Image {
            path: path.to_path_buf(),
            reason: format!("no frame could be decoded: {}", last_lines(&log, 3)),
        });
    }
    // The stream's own clock where ffmpeg reported one for every kept frame (clips with a
    // variable frame rate), measured from the first kept frame.
    if times.len() == frames.len()
        && let Some(&first) = times.first()
    {
        for (frame, t) in frames.iter_mut().zip(&times) {
            frame.time_s = t - first;
        }
    }
    Ok(frames)
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

/// Fills `buffer` from `reader`; `Ok(false)` at a clean end of stream before the first byte.
fn read_exact_or_eof(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "ffmpeg output ended inside a frame ({filled} of {} bytes)",
                        buffer.len()
                    ),
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The `pts_time:` of an ffmpeg `showinfo` frame line.
pub fn showinfo_pts_time(line: &str) -> Option<f64> {
    let rest = &line[line.find("pts_time:")? + "pts_time:".len()..];
    let value: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+'))
        .collect();
    value.parse().ok().filter(|t: &f64| t.is_finite())
}

/// Frame and clip counts per class and probe, for logs and notes.
pub fn count_by_class_and_probe(
    rows: &[FrameRow],
) -> BTreeMap<(PocusClass, String), (usize, usize)> {
    let mut clips: BTreeMap<(PocusClass, String), HashSet<&str>> = BTreeMap::new();
    let mut frames: BTreeMap<(PocusClass, String), usize> = BTreeMap::new();
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

/// How a frame of any shape becomes a square network input.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AspectMode {
    /// Centre the frame on a black square of its longer side (keeps the whole field of view).
    #[default]
    Pad,
    /// Keep the centred square of its shorter side (drops the sides).
    Crop,
    /// Resample to a square regardless of shape (distorts; for comparison only).
    Stretch,
}

/// Whether `path` names a still image (by extension) rather than a clip.
pub fn is_still_image(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str())
    })
}

/// A frame as the classifier sees it before normalisation: made square by `mode`, then
/// resized to `size x size` (triangle filter, whose support widens with the scale so that a
/// large reduction averages rather than aliases).
pub fn square_resized(image: &GrayImage, mode: AspectMode, size: u32) -> GrayImage {
    let square = fit_square(image, mode);
    if square.dimensions() == (size, size) {
        return square;
    }
    image::imageops::resize(&square, size, size, image::imageops::FilterType::Triangle)
}

/// `image` made square by `mode` (a copy; `Stretch` returns it unchanged, the loader's resize
/// then stretches it).
pub fn fit_square(image: &GrayImage, mode: AspectMode) -> GrayImage {
    let (w, h) = image.dimensions();
    if w == h || mode == AspectMode::Stretch {
        return image.clone();
    }
    match mode {
        AspectMode::Pad => {
            let side = w.max(h);
            let mut out = GrayImage::new(side, side);
            image::imageops::replace(
                &mut out,
                image,
                i64::from((side - w) / 2),
                i64::from((side - h) / 2),
            );
            out
        }
        AspectMode::Crop => {
            let side = w.min(h);
            image::imageops::crop_imm(image, (w - side) / 2, (h - side) / 2, side, side).to_image()
        }
        AspectMode::Stretch => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_from_every_prefix_spelling() {
        for (name, class) in [
            ("Cov-Atlas+(44)", PocusClass::Covid),
            ("cov_combatting_image4", PocusClass::Covid),
            ("Pneu_Avi_Video_001", PocusClass::Pneumonia),
            ("pneu-atlas-pneumonia2", PocusClass::Pneumonia),
            ("Reg_Image_181206_crop", PocusClass::Healthy),
            ("Vir_liftl_H1N1_case2_clip2", PocusClass::Viral),
        ] {
            assert_eq!(PocusClass::from_file_name(name), Ok(class), "{name}");
        }
        let err = PocusClass::from_file_name("Liver_clip").unwrap_err();
        assert!(
            err.contains("Liver_clip") && err.contains("Cov, Pneu, Reg, Vir"),
            "{err}"
        );
        assert_eq!(
            PocusClass::from_metadata_label("Bacterial pneumonia"),
            Some(PocusClass::Pneumonia)
        );
        assert_eq!(
            PocusClass::from_metadata_label("COVID-19"),
            Some(PocusClass::Covid)
        );
        assert_eq!(
            PocusClass::from_metadata_label("regular"),
            Some(PocusClass::Healthy)
        );
        assert_eq!(
            PocusClass::from_metadata_label("Viral pneumonia"),
            Some(PocusClass::Viral)
        );
        assert_eq!(PocusClass::from_metadata_label("unclear"), None);
    }

    #[test]
    fn frame_step_follows_pocovid_rule() {
        let o = IngestOptions::default();
        // int(fps / 3), at least 1.
        assert_eq!(o.frame_step(10.0), 3);
        assert_eq!(o.frame_step(30.0), 10);
        assert_eq!(o.frame_step(113.0 / 4.0), 9);
        assert_eq!(o.frame_step(60.0), 20);
        assert_eq!(o.frame_step(2.0), 1);
    }

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

    #[test]
    fn probe_json_with_and_without_aspect_and_rate() {
        let info = parse_probe_json(
            r#"{"streams":[{"width":440,"height":440,"sample_aspect_ratio":"9:8","r_frame_rate":"113/4","avg_frame_rate":"113/4"}]}"#,
        )
        .unwrap();
        assert_eq!(info.sample_aspect, (9, 8));
        assert_eq!(info.square_pixel_size(), (495, 440));
        assert!((info.fps.unwrap() - 28.25).abs() < 1e-12);
        let info = parse_probe_json(
            r#"{"streams":[{"width":139,"height":120,"avg_frame_rate":"0/0","r_frame_rate":"10/1"}]}"#,
        )
        .unwrap();
        assert_eq!(info.square_pixel_size(), (139, 120));
        assert_eq!(info.fps, Some(10.0));
        assert!(
            parse_probe_json(r#"{"streams":[]}"#)
                .unwrap_err()
                .contains("no video stream")
        );
        assert!(parse_probe_json("not json").is_err());
    }

    #[test]
    fn showinfo_time_is_parsed() {
        let line = "[Parsed_showinfo_2 @ 0x55] n:   3 pts:  12288 pts_time:0.8     duration:512";
        assert_eq!(showinfo_pts_time(line), Some(0.8));
        assert_eq!(
            showinfo_pts_time("[Parsed_showinfo_2 @ 0x1] config in time_base"),
            None
        );
    }

    #[test]
    fn fit_square_pads_and_crops_centred() {
        let mut image = GrayImage::new(4, 2);
        for (x, _, p) in image.enumerate_pixels_mut() {
            p.0[0] = 10 + x as u8;
        }
        let padded = fit_square(&image, AspectMode::Pad);
        assert_eq!(padded.dimensions(), (4, 4));
        let rows: Vec<Vec<u8>> = (0..4)
            .map(|y| (0..4).map(|x| padded.get_pixel(x, y).0[0]).collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec![0; 4],
                vec![10, 11, 12, 13],
                vec![10, 11, 12, 13],
                vec![0; 4]
            ]
        );
        let cropped = fit_square(&image, AspectMode::Crop);
        assert_eq!(cropped.dimensions(), (2, 2));
        assert_eq!(cropped.as_raw(), &vec![11, 12, 11, 12]);
        assert_eq!(fit_square(&image, AspectMode::Stretch).dimensions(), (4, 2));
    }

    #[test]
    fn frame_group_is_patient_else_clip() {
        let mut row = FrameRow {
            path: "frames/a/frame_00000.png".into(),
            clip: "a".into(),
            patient_id: String::new(),
            label: PocusClass::Covid,
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
