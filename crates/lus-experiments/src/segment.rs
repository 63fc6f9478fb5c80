//! `lus segment`: a segmentation U-Net's map of a frame, a clip or a folder of them, and the
//! lung findings read off it (B-lines per frame, A-lines, pleural line, consolidation,
//! effusion; per clip the B-pattern and A-pattern shares). The rules are
//! [`lus_metrics::lung`]'s; `segment.json` records the thresholds used.
//!
//! The weights are a segmentation cell's `best.safetensors` (a `lus train-seg` run or a
//! pretraining cell `runs/<name>/pretrain/<arm>-seed<s>/`); its `config.resolved.toml` beside
//! them (or `--config`) gives the network, the input size and the normalisation. A frame goes
//! through the evaluation path of training: made square (`--aspect`, default pad), resized to
//! the input size, normalised, no augmentation. Frames are segmented in batches by one loaded
//! model.
//!
//! Outputs (`--out`, default `segmentations/<input stem>`, built staged and renamed):
//! - a frame: `segment.json`, `frames.csv`/`.parquet` (one row), `overlay.png`;
//! - a clip: the same with one row per sampled frame, the clip summary in `segment.json`, and
//!   `overlay.gif`, an animation of the frame beside its map (FFmpeg);
//! - a folder (an ingested POCUS folder, whose `manifest.csv` groups frames by clip, or any
//!   folder of frames and clips): `clips.csv`/`.parquet` (one row per clip), `frames.csv`/
//!   `.parquet` (one row per frame), `segment.json` (totals and timing) and, with
//!   `--overlays`, `overlays/<clip>.gif`.
//!
//! In the overlays, counted B-lines are drawn in the schema's `b-line` colour and `b-line`
//! pixels the rule rejected (short, floating, specks) in grey, so the rule can be read off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use clap::Args;
use image::{GrayImage, Rgb, RgbImage};
use lus_data::augment::{AugmentParams, Normalize, prepare_with};
use lus_data::pocus::{
    AspectMode, DecodedFrame, IngestOptions, POCUS_MANIFEST, Tools, is_still_image, is_video,
    read_frame_rows, square_resized,
};
use lus_data::{LabelSchema, image_io};
use lus_io::{StagedDir, write_atomic};
use lus_metrics::{
    ClipFindings, FindingClasses, FindingRules, FrameFindings, FrameReading, MetricsTable,
    OverlayRow, Row, clip_findings, overlay_grid, read_frame,
};
use lus_train::{SegModel, parse_device};
use rayon::prelude::*;
use serde::Serialize;

use crate::cell_input::{input_stem, read_input_frames, resolved_config_path};
use crate::config::ExperimentConfig;

#[derive(Args, Debug)]
pub struct SegmentArgs {
    /// A segmentation cell's weights (`lus train-seg` run or
    /// `runs/<name>/pretrain/<arm>-seed<s>/best.safetensors`).
    #[arg(long)]
    weights: PathBuf,
    /// A frame (PNG or JPEG), a clip (any container FFmpeg reads) or a folder of them (an
    /// ingested POCUS folder is read clip by clip from its manifest).
    #[arg(long)]
    input: PathBuf,
    /// The cell's resolved experiment config; default: `config.resolved.toml` beside the weights.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder (replaced if it exists); default `segmentations/<input stem>`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print `segment.json` on standard output (instead of a summary).
    #[arg(long)]
    json: bool,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// How a non-square frame becomes square: pad, crop or stretch.
    #[arg(long, default_value = "pad", value_parser = parse_aspect)]
    aspect: AspectMode,
    /// Clip sampling: every int(fps / this)-th frame.
    #[arg(long, default_value_t = 10.0)]
    frames_per_second: f64,
    /// Clip sampling: at most this many frames per clip.
    #[arg(long, default_value_t = 300)]
    max_frames: usize,
    /// Frames per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Folder input: write each clip's overlay animation too (`overlays/<clip>.gif`).
    #[arg(long)]
    overlays: bool,
    /// The finding rules (a TOML file of `lus_metrics::FindingRules` fields; missing ones keep
    /// their defaults).
    #[arg(long)]
    rules: Option<PathBuf>,
}

fn parse_aspect(s: &str) -> Result<AspectMode, String> {
    match s {
        "pad" => Ok(AspectMode::Pad),
        "crop" => Ok(AspectMode::Crop),
        "stretch" => Ok(AspectMode::Stretch),
        other => Err(format!(
            "unknown aspect {other:?} (expected pad, crop or stretch)"
        )),
    }
}

/// A loaded segmentation U-Net with its preprocessing and the finding rules.
pub struct Segmenter {
    model: SegModel,
    device: Device,
    size: u32,
    normalize: Normalize,
    aspect: AspectMode,
    batch_size: usize,
    pub class_names: Vec<String>,
    pub palette: Vec<[u8; 3]>,
    pub classes: FindingClasses,
    pub rules: FindingRules,
}

/// One segmented frame.
pub struct SegmentedFrame {
    /// The network input before normalisation (square, `size x size`).
    pub input: GrayImage,
    /// Class ids, row-major.
    pub mask: Vec<u8>,
    /// Its findings, and the B-line rule's verdict on each b-line component (for overlays).
    pub reading: FrameReading,
}

impl Segmenter {
    /// The cell of `weights` as its `config` (a resolved experiment config, see
    /// [`resolved_config_path`]) describes it.
    pub fn load(
        weights: &Path,
        config: &Path,
        device: Device,
        aspect: AspectMode,
        rules: FindingRules,
    ) -> anyhow::Result<Self> {
        let experiment = ExperimentConfig::load(config, &[])?;
        if experiment.classify.is_some() {
            bail!(
                "{}: a classification cell's config; `lus segment` reads a segmentation cell \
                 (a `lus train-seg` run or runs/<name>/pretrain/<arm>-seed<s>/), and `lus \
                 predict` a classifier",
                config.display()
            );
        }
        rules.validate()?;
        let schema: LabelSchema = experiment.schema();
        let class_names = crate::seg_cell::class_names(&schema);
        let classes = FindingClasses::from_names(&class_names)?;
        let palette = schema.palette().into_iter().map(|c| c.0).collect();
        let model = SegModel::load(&experiment.pretrain.unet, weights, &device)
            .with_context(|| format!("{}: cannot load the weights", weights.display()))?;
        Ok(Segmenter {
            model,
            device,
            size: experiment.pretrain.data.size,
            normalize: experiment.pretrain.data.normalize,
            aspect,
            batch_size: 16,
            class_names,
            palette,
            classes,
            rules,
        })
    }

    /// Frames per forward pass (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The network's input side.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Segments `frames` (any sizes) in batches and reads each map's findings.
    pub fn segment(&self, frames: &[&GrayImage]) -> anyhow::Result<Vec<SegmentedFrame>> {
        let side = self.size as usize;
        let inputs: Vec<GrayImage> = frames
            .par_iter()
            .map(|f| square_resized(f, self.aspect, self.size))
            .collect();
        let mut out = Vec::with_capacity(frames.len());
        for chunk in inputs.chunks(self.batch_size) {
            let values = chunk
                .par_iter()
                .map(|image| {
                    prepare_with(
                        image,
                        None,
                        self.size,
                        &AugmentParams::identity(),
                        self.normalize,
                    )
                    .map(|p| p.image)
                })
                .collect::<Result<Vec<Vec<f32>>, _>>()?;
            let batch =
                Tensor::from_vec(values.concat(), (chunk.len(), 1, side, side), &self.device)?;
            let masks = self.model.predict(&batch)?;
            let readings: Vec<anyhow::Result<FrameReading>> = masks
                .par_chunks(side * side)
                .zip(chunk.par_iter())
                .map(|(m, input)| {
                    let fov = field_of_view(input);
                    Ok(read_frame(
                        m,
                        Some(&fov),
                        side,
                        side,
                        &self.classes,
                        &self.rules,
                    )?)
                })
                .collect();
            for ((input, mask), reading) in
                chunk.iter().zip(masks.chunks(side * side)).zip(readings)
            {
                out.push(SegmentedFrame {
                    input: input.clone(),
                    mask: mask.to_vec(),
                    reading: reading?,
                });
            }
        }
        Ok(out)
    }

    /// The frame beside its map: finding classes blended over the frame, counted B-lines in
    /// the schema colour, rejected `b-line` components in grey; scaled up (nearest) to at
    /// least 256 pixels high so that a 64-pixel map is readable.
    pub fn overlay(&self, frame: &SegmentedFrame) -> RgbImage {
        let side = self.size as usize;
        let verdicts = &frame.reading.b_lines;
        let shown = [
            Some(self.classes.pleural_line),
            Some(self.classes.a_line),
            self.classes.rib,
            self.classes.consolidation,
            self.classes.effusion,
        ];
        let scale = (256 / side).max(1) as u32;
        let s = self.size * scale;
        let mut out = RgbImage::new(2 * s, s);
        for y in 0..side {
            for x in 0..side {
                let g = frame.input.get_pixel(x as u32, y as u32).0[0];
                let class = frame.mask[y * side + x];
                let colour = if class == self.classes.b_line {
                    let label = verdicts.components.labels[y * side + x] as usize;
                    Some(if label > 0 && verdicts.counted[label - 1] {
                        self.palette[class as usize]
                    } else {
                        [150, 150, 150]
                    })
                } else if shown.contains(&Some(class)) {
                    Some(self.palette[class as usize])
                } else {
                    None
                };
                let blended = match colour {
                    Some(c) => c.map(|v| ((u16::from(v) * 3 + u16::from(g) * 2) / 5) as u8),
                    None => [g, g, g],
                };
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (x as u32 * scale + dx, y as u32 * scale + dy);
                        out.put_pixel(px, py, Rgb([g, g, g]));
                        out.put_pixel(s + px, py, Rgb(blended));
                    }
                }
            }
        }
        out
    }
}

/// Pixels at least this bright are inside the field of view. Outside it a scanner frame is
/// exactly 0 and a real one black up to compression noise; inside, speckle keeps every column
/// above it down to the fan's bottom (the lowest such pixel of a column is what counts).
pub const FIELD_OF_VIEW_MIN_INTENSITY: u8 = 8;

/// The frame's field of view: its pixels of at least [`FIELD_OF_VIEW_MIN_INTENSITY`].
pub fn field_of_view(image: &GrayImage) -> Vec<bool> {
    image
        .as_raw()
        .iter()
        .map(|&v| v >= FIELD_OF_VIEW_MIN_INTENSITY)
        .collect()
}

/// One input clip (a still image is a one-frame clip).
struct ClipInput {
    /// Name in tables: the clip id of an ingested folder, else the path relative to the input.
    name: String,
    source: PathBuf,
    /// The diagnosis an ingested folder's manifest gives (empty otherwise).
    label: String,
    still: bool,
}

/// Per-frame JSON row.
#[derive(Serialize)]
struct FrameRecord {
    frame_index: usize,
    time_s: f64,
    #[serde(flatten)]
    findings: FrameFindings,
    b_pattern: bool,
    a_pattern: bool,
}

#[derive(Serialize)]
struct ClipRecord {
    clip: String,
    source: String,
    label: String,
    #[serde(flatten)]
    summary: ClipFindings,
}

#[derive(Serialize)]
struct Timing {
    frames: usize,
    /// Decoding and reading the frames.
    decode_s: f64,
    /// Resizing, normalising, the forward passes and reading the findings.
    segment_s: f64,
    /// Frames per second of `segment_s`.
    frames_per_s: f64,
    /// The whole command, outputs included.
    total_s: f64,
}

#[derive(Serialize)]
struct SegmentJson<'a> {
    input: String,
    /// `frame`, `clip` or `folder`.
    kind: &'static str,
    weights: String,
    config: String,
    size: u32,
    aspect: AspectMode,
    classes: &'a [String],
    rules: FindingRules,
    timing: Timing,
    #[serde(skip_serializing_if = "Option::is_none")]
    clip: Option<ClipFindings>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    frames: Vec<FrameRecord>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    clips: Vec<ClipRecord>,
}

pub fn run(args: SegmentArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let rules = match &args.rules {
        Some(path) => {
            let text = lus_io::read_text(path)?;
            toml::from_str::<FindingRules>(&text)
                .map_err(|e| anyhow::anyhow!("{}: invalid finding rules: {e}", path.display()))?
        }
        None => FindingRules::default(),
    };
    if args.max_frames == 0 {
        bail!("--max-frames must be at least 1");
    }
    if !args.input.exists() {
        bail!("{}: no such file or folder", args.input.display());
    }
    let folder = args.input.is_dir();
    let (clips, ingested) = if folder {
        folder_inputs(&args.input)?
    } else {
        let clip = ClipInput {
            name: input_stem(&args.input),
            source: args.input.clone(),
            label: String::new(),
            still: is_still_image(&args.input),
        };
        (vec![clip], IngestedFrames::new())
    };
    if clips.is_empty() {
        bail!(
            "{}: no frames or clips in it (PNG/JPEG images, video files, or an ingested POCUS folder)",
            args.input.display()
        );
    }
    let config_path = resolved_config_path(&args.weights, args.config.as_deref())?;
    let segmenter = Segmenter::load(
        &args.weights,
        &config_path,
        parse_device(&args.device)?,
        args.aspect,
        rules,
    )?
    .with_batch_size(args.batch_size);
    let needs_ffmpeg = clips
        .iter()
        .any(|c| !c.still && !ingested.contains_key(&c.name))
        || (folder && args.overlays);
    let tools = if needs_ffmpeg {
        Some(Tools::find()?)
    } else {
        None
    };
    let sampling = IngestOptions {
        frames_per_second: args.frames_per_second,
        max_frames_per_clip: args.max_frames,
        ..IngestOptions::default()
    };
    sampling.validate()?;

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("segmentations").join(input_stem(&args.input)));
    let stage = StagedDir::open_fresh(&out)?;
    let bar = crate::progress::bar(clips.len() as u64, "clips");
    if !folder {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut decode_s, mut segment_s) = (0.0, 0.0);
    let mut frames_table = MetricsTable::new();
    let mut clips_table = MetricsTable::new();
    let mut clip_records = Vec::new();
    let mut single: Option<(ClipFindings, Vec<FrameRecord>)> = None;
    let mut total_frames = 0usize;
    for clip in &clips {
        let t = Instant::now();
        let frames = read_clip(clip, ingested.get(&clip.name), &sampling, tools.as_ref())
            .with_context(|| format!("clip {}", clip.source.display()))?;
        decode_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let images: Vec<&GrayImage> = frames.iter().map(|f| &f.image).collect();
        let segmented = segmenter.segment(&images)?;
        segment_s += t.elapsed().as_secs_f64();
        total_frames += segmented.len();
        let findings: Vec<FrameFindings> = segmented
            .iter()
            .map(|s| s.reading.findings.clone())
            .collect();
        let summary = clip_findings(&findings, &segmenter.rules)?;
        let records: Vec<FrameRecord> = frames
            .iter()
            .zip(findings)
            .map(|(f, x)| FrameRecord {
                frame_index: f.index,
                time_s: f.time_s,
                b_pattern: x.b_pattern(&segmenter.rules),
                a_pattern: x.a_pattern(&segmenter.rules),
                findings: x,
            })
            .collect();
        for r in &records {
            let row = if folder {
                Row::new().text("clip", &clip.name)
            } else {
                Row::new()
            };
            frames_table.push_row(frame_row(row, r))?;
        }
        if folder {
            clips_table.push_row(clip_row(clip, &summary))?;
            if args.overlays {
                let dir = stage.create_subdir("overlays")?;
                let name = sanitize(&clip.name);
                write_animation(
                    &segmenter,
                    &segmented,
                    &dir.join(format!("{name}.gif")),
                    args.frames_per_second,
                    tools.as_ref(),
                )?;
            }
            clip_records.push(ClipRecord {
                clip: clip.name.clone(),
                source: clip.source.display().to_string(),
                label: clip.label.clone(),
                summary,
            });
        } else {
            write_overlay_grid(
                &segmenter,
                &segmented,
                &records,
                &stage.path().join("overlay.png"),
            )?;
            if !clip.still {
                write_animation(
                    &segmenter,
                    &segmented,
                    &stage.path().join("overlay.gif"),
                    args.frames_per_second,
                    tools.as_ref(),
                )?;
            }
            single = Some((summary, records));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    frames_table.write(
        &stage.path().join("frames.csv"),
        &stage.path().join("frames.parquet"),
    )?;
    if folder {
        clips_table.write(
            &stage.path().join("clips.csv"),
            &stage.path().join("clips.parquet"),
        )?;
    }
    let kind = if folder {
        "folder"
    } else if clips[0].still {
        "frame"
    } else {
        "clip"
    };
    let (clip_summary, frame_records) = match single {
        Some((s, r)) => (Some(s), r),
        None => (None, Vec::new()),
    };
    let document = SegmentJson {
        input: args.input.display().to_string(),
        kind,
        weights: args.weights.display().to_string(),
        config: config_path.display().to_string(),
        size: segmenter.size(),
        aspect: args.aspect,
        classes: &segmenter.class_names,
        rules: segmenter.rules,
        timing: Timing {
            frames: total_frames,
            decode_s,
            segment_s,
            frames_per_s: total_frames as f64 / segment_s.max(1e-9),
            total_s: started.elapsed().as_secs_f64(),
        },
        clip: clip_summary,
        frames: frame_records,
        clips: clip_records,
    };
    let json = serde_json::to_string_pretty(&document)?;
    write_atomic(&stage.path().join("segment.json"), json.as_bytes())?;
    let out = stage.commit(true)?;
    if args.json {
        println!("{json}");
    } else {
        print_summary(&document, &out);
    }
    Ok(())
}

fn print_summary(document: &SegmentJson<'_>, out: &Path) {
    let t = &document.timing;
    match &document.clip {
        Some(c) => println!(
            "{}: {} frame(s); B-lines per frame max {}, mean {:.2}; B-pattern {:.0} % of frames, \
             A-pattern {:.0} %",
            document.input,
            c.frames,
            c.b_lines_max,
            c.b_lines_mean,
            100.0 * c.b_pattern_share,
            100.0 * c.a_pattern_share
        ),
        None => println!(
            "{}: {} clips, {} frames",
            document.input,
            document.clips.len(),
            t.frames
        ),
    }
    println!(
        "segmented {} frames at {} px in {:.2} s ({:.1} frames/s; decoding {:.2} s, total {:.2} s)",
        t.frames, document.size, t.segment_s, t.frames_per_s, t.decode_s, t.total_s
    );
    println!("wrote {}", out.display());
}

fn frame_row(row: Row, r: &FrameRecord) -> Row {
    let f = &r.findings;
    row.int("frame_index", r.frame_index as i64)
        .float("time_s", r.time_s)
        .int("b_lines", i64::from(f.b_lines))
        .int("b_line_rejects", i64::from(f.b_line_rejects))
        .float("b_line_coverage", f.b_line_coverage)
        .int("a_lines", i64::from(f.a_lines))
        .int("b_pattern", i64::from(r.b_pattern))
        .int("a_pattern", i64::from(r.a_pattern))
        .float("pleura_length", f.pleura_length)
        .float("pleura_thickness_px", f.pleura_thickness_px)
        .float("pleura_irregularity_px", f.pleura_irregularity_px)
        .int("pleura_gaps", i64::from(f.pleura_gaps))
        .float("consolidation_area", f.consolidation_area)
        .float("effusion_area", f.effusion_area)
}

fn clip_row(clip: &ClipInput, s: &ClipFindings) -> Row {
    Row::new()
        .text("clip", &clip.name)
        .text("source", clip.source.display().to_string())
        .text("label", &clip.label)
        .int("frames", s.frames as i64)
        .int("b_lines_max", i64::from(s.b_lines_max))
        .float("b_lines_mean", s.b_lines_mean)
        .float("b_pattern_share", s.b_pattern_share)
        .float("a_pattern_share", s.a_pattern_share)
        .float("a_lines_share", s.a_lines_share)
        .float("consolidation_area_mean", s.consolidation_area_mean)
        .float("effusion_area_mean", s.effusion_area_mean)
        .float("pleura_irregularity_px_mean", s.pleura_irregularity_px_mean)
}

/// A clip name as a file name: path separators and anything but `[A-Za-z0-9._+()-]` become `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+()-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The clips of a folder, with the frames of an ingested one: an ingested POCUS folder's clips
/// in manifest order and their frames (the manifest read once), else every image and video
/// file under it (sorted by path) and no frames.
fn folder_inputs(folder: &Path) -> anyhow::Result<(Vec<ClipInput>, IngestedFrames)> {
    let manifest = folder.join(POCUS_MANIFEST);
    if is_frame_manifest(&manifest) {
        let mut clips = Vec::new();
        let mut frames = IngestedFrames::new();
        for row in read_frame_rows(&manifest)? {
            let path = lus_data::manifest::resolve_inside(folder, &row.path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
            if !frames.contains_key(&row.clip) {
                clips.push(ClipInput {
                    name: row.clip.clone(),
                    source: PathBuf::from(&row.source),
                    label: row.label.to_string(),
                    still: false,
                });
            }
            frames
                .entry(row.clip)
                .or_default()
                .push((row.frame_index, row.time_s, path));
        }
        return Ok((clips, frames));
    }
    let mut files = Vec::new();
    collect_media(folder, &mut files)?;
    files.sort();
    let clips = files
        .into_iter()
        .map(|path| ClipInput {
            name: path
                .strip_prefix(folder)
                .unwrap_or(&path)
                .display()
                .to_string(),
            still: is_still_image(&path),
            source: path,
            label: String::new(),
        })
        .collect();
    Ok((clips, IngestedFrames::new()))
}

fn collect_media(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_media(&path, out)?;
        } else if is_still_image(&path) || is_video(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether `path` is an ingested folder's frame manifest (its header names `clip` and
/// `frame_index`; a `lus synth` folder's `manifest.csv` does not). Read strictly when it is: a
/// broken manifest is an error, not a folder walked instead.
fn is_frame_manifest(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| {
        text.lines().next().is_some_and(|header| {
            let columns: Vec<&str> = header.split(',').map(str::trim).collect();
            columns.contains(&"clip") && columns.contains(&"frame_index")
        })
    })
}

/// An ingested folder's frames by clip: (frame index, time, PNG path) in manifest order.
type IngestedFrames = BTreeMap<String, Vec<(usize, f64, PathBuf)>>;

/// The frames of a clip: read from an ingested folder (its PNGs, `ingested`), else from the
/// file.
fn read_clip(
    clip: &ClipInput,
    ingested: Option<&Vec<(usize, f64, PathBuf)>>,
    sampling: &IngestOptions,
    tools: Option<&Tools>,
) -> anyhow::Result<Vec<DecodedFrame>> {
    if let Some(frames) = ingested {
        return frames
            .par_iter()
            .map(|(index, time_s, path)| {
                Ok(DecodedFrame {
                    index: *index,
                    time_s: *time_s,
                    image: image_io::load_gray(path)?,
                })
            })
            .collect();
    }
    let frames = read_input_frames(&clip.source, sampling, tools)?;
    if frames.is_empty() {
        bail!("{}: no frames decoded", clip.source.display());
    }
    Ok(frames)
}

/// Up to four frames, evenly spread, beside their maps, each titled with its B-line count.
fn write_overlay_grid(
    segmenter: &Segmenter,
    frames: &[SegmentedFrame],
    records: &[FrameRecord],
    path: &Path,
) -> anyhow::Result<()> {
    let n = frames.len();
    let m = n.min(4);
    let side = segmenter.size() as usize;
    let shown: Vec<usize> = (0..m).map(|i| i * n / m).collect();
    let rows: Vec<OverlayRow> = shown
        .iter()
        .map(|&i| OverlayRow {
            width: side,
            height: side,
            image: frames[i].input.as_raw(),
            masks: vec![frames[i].mask.as_slice()],
        })
        .collect();
    let counts = shown
        .iter()
        .map(|&i| format!("{}", records[i].findings.b_lines))
        .collect::<Vec<_>>()
        .join(", ");
    let title = format!("segmentation; B-lines {counts}");
    let first = if n == 1 {
        "frame".to_string()
    } else {
        format!("frames {m} of {n}")
    };
    overlay_grid(
        path,
        &rows,
        &segmenter.palette,
        &[first.as_str(), title.as_str()],
    )?;
    Ok(())
}

/// The clip's overlay animation (GIF through FFmpeg's palette filters), at the sampling rate.
fn write_animation(
    segmenter: &Segmenter,
    frames: &[SegmentedFrame],
    path: &Path,
    frames_per_second: f64,
    tools: Option<&Tools>,
) -> anyhow::Result<()> {
    let tools = tools.context("the overlay animation needs FFmpeg")?;
    // The frames go to a scratch folder beside the animation (inside the staged output), which
    // is removed when the animation is written.
    let scratch = lus_io::temp_path_for(&path.with_extension("frames"));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let rendered = frames
        .par_iter()
        .enumerate()
        .try_for_each(|(i, frame)| -> anyhow::Result<()> {
            let image = segmenter.overlay(frame);
            let png = scratch.join(format!("{i:05}.png"));
            image
                .save(&png)
                .with_context(|| format!("writing {}", png.display()))?;
            Ok(())
        });
    let encoded = rendered.and_then(|()| encode_gif(tools, &scratch, path, frames_per_second));
    let _ = std::fs::remove_dir_all(&scratch);
    encoded
}

fn encode_gif(
    tools: &Tools,
    scratch: &Path,
    path: &Path,
    frames_per_second: f64,
) -> anyhow::Result<()> {
    let tmp = lus_io::temp_path_for(path);
    let status = Command::new(&tools.ffmpeg)
        .args(["-v", "error", "-y", "-framerate"])
        .arg(format!("{}", frames_per_second.clamp(1.0, 30.0)))
        .arg("-i")
        .arg(scratch.join("%05d.png"))
        .args([
            "-vf",
            "split[a][b];[a]palettegen=max_colors=128[p];[b][p]paletteuse",
            "-loop",
            "0",
            "-f",
            "gif",
        ])
        .arg(&tmp)
        .status()
        .with_context(|| format!("running {}", tools.ffmpeg.display()))?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "{}: FFmpeg could not write the animation ({status})",
            path.display()
        );
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lus_data::{LabelRecipe, RasterOptions, Rasterizer, StrokeWidth};
    use lus_metrics::frame_findings;
    use lus_scanner::{Scanner, ScannerConfig};

    /// The B-line rule on the scanner's exact labels finds the scanner's B-lines: on the dense
    /// truth and on the sparse strokes, linear and convex probes, at 64 and 256 pixels. The
    /// scanner's `Findings::b_lines` counts bands (a confluent band once), as the rule does.
    #[test]
    fn the_rule_counts_the_scanners_b_lines_on_its_exact_labels() {
        let schema = LabelSchema::default();
        let names = crate::seg_cell::class_names(&schema);
        let classes = FindingClasses::from_names(&names).unwrap();
        let rules = FindingRules::default();
        let mut rasterizer = Rasterizer::new();
        let recipes = [
            LabelRecipe::dense(),
            LabelRecipe::sparse(StrokeWidth::PxAt128(
                lus_data::recipe::DEFAULT_STROKE_PX_AT_128,
            )),
        ];
        let (mut checked, mut with_b_lines, mut mismatches) = (0, 0, Vec::new());
        // (output side, render scale, samples): rendered at the size, and rendered at three
        // times it and shrunk (the labels scaled with the image).
        // The last: every realism option on (pleura anywhere in the top half; screen overlays,
        // whose bright ticks and text must not count; Z-lines and comet tails, which are not
        // B-lines; letter-boxed frames; compression, whose ringing outside the field of view
        // must not stretch it).
        for (size, render_scale, n, realistic) in [
            (64u32, 1u32, 80u64, false),
            (256, 1, 24, false),
            (64, 3, 40, false),
            (128, 2, 32, true),
        ] {
            let scanner = Scanner::new(
                ScannerConfig {
                    size,
                    render_scale,
                    overlays: if realistic { 1.0 } else { 0.0 },
                    pleura_depth: realistic.then_some([0.1, 0.5]),
                    z_lines: if realistic { 1.0 } else { 0.0 },
                    near_field_haze: if realistic { 0.5 } else { 0.0 },
                    display_variety: if realistic { 1.0 } else { 0.0 },
                    compression: if realistic { 0.8 } else { 0.0 },
                    focal_zone: if realistic { 0.7 } else { 0.0 },
                    letterbox: if realistic { 0.5 } else { 0.0 },
                    convex_opening_deg: realistic.then_some([60.0, 100.0]),
                    convex_fraction: 0.5,
                    // COVID-19-heavy: most frames show B-lines, many several or confluent.
                    diagnosis_weights: [1.0, 3.0, 1.0],
                    ..ScannerConfig::default()
                },
                17,
            )
            .unwrap();
            for index in 0..n {
                let sample = scanner.sample(index);
                for recipe in &recipes {
                    let mask = rasterizer
                        .rasterize(
                            &sample.annotation,
                            &schema,
                            &RasterOptions::recipe(recipe.clone()),
                        )
                        .unwrap();
                    let side = size as usize;
                    let fov = field_of_view(&sample.image);
                    let found =
                        frame_findings(mask.data(), Some(&fov), side, side, &classes, &rules)
                            .unwrap();
                    checked += 1;
                    with_b_lines += usize::from(sample.findings.b_lines > 0);
                    if found.b_lines != sample.findings.b_lines {
                        mismatches.push(format!(
                            "{size} px (render scale {render_scale}) sample {index} ({}, {}): truth {} B-lines, rule {} ({} rejected)",
                            recipe.name,
                            sample.probe,
                            sample.findings.b_lines,
                            found.b_lines,
                            found.b_line_rejects
                        ));
                    }
                    if recipe.name == "dense" {
                        assert_eq!(
                            found.a_lines > 0,
                            sample.findings.a_lines > 0,
                            "{size} px sample {index}: A-lines {:?} vs {found:?}",
                            sample.findings
                        );
                    }
                }
            }
        }
        assert!(with_b_lines > checked / 2, "{with_b_lines} of {checked}");
        assert!(
            mismatches.is_empty(),
            "{} of {checked} maps disagree:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }

    #[test]
    fn clip_names_become_file_names_and_aspects_parse() {
        assert_eq!(
            sanitize("convex/Cov-Atlas+(45).gif"),
            "convex_Cov-Atlas+(45).gif"
        );
        assert_eq!(sanitize("a b:c"), "a_b_c");
        assert_eq!(parse_aspect("crop"), Ok(AspectMode::Crop));
        assert!(
            parse_aspect("fit")
                .unwrap_err()
                .contains("pad, crop or stretch")
        );
    }
}
