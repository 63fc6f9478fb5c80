//! `lus predict`: the diagnosis of one frame or one clip by a trained classifier cell, with
//! its segmentation map.
//!
//! The weights are a classification cell's `best.safetensors`; the cell's
//! `config.resolved.toml` beside them (or `--config`) says what network, classes, input size
//! and aspect handling they were trained with, and the input goes through exactly that
//! preprocessing (POCUS frames: square by the pool's aspect mode, resized, normalised per
//! image). A clip is sampled by the POCOVID-Net rule (every int(fps/3)-th frame, at most 30)
//! and its verdict is the mean of its frames' class probabilities, as in the report's
//! clip-level metrics.
//!
//! Output folder (`--out`, default `predictions/<input stem>`), built staged and renamed:
//! `prediction.json` (what `--json` prints), `frames.csv` (one row per frame: index, time,
//! diagnosis, probability of each class) and `overlay.png` (frames with the segmentation map
//! in schema colours, the diagnosis in the column title).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use image::GrayImage;
use lus_data::LabelSchema;
use lus_data::cls_loader::{ClassificationLoader, InMemoryClassSource};
use lus_data::pocus::{
    AspectMode, DecodedFrame, IngestOptions, Tools, is_still_image, square_resized,
};
use lus_io::{StagedDir, write_atomic};
use lus_metrics::{OverlayRow, overlay_grid};
use lus_train::{ClassificationTask, parse_device};
use lus_unet::Mode;
use serde::Serialize;

use crate::cell_input::{input_stem, read_input_frames, resolved_config_path};
use crate::config::{ClassifyFrom, ExperimentConfig};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A classification cell's weights (`.../classify/<arm>-seed<s>-fold<f>/best.safetensors`).
    #[arg(long)]
    weights: PathBuf,
    /// A frame (PNG or JPEG) or a clip (any container ffmpeg reads).
    #[arg(long)]
    input: PathBuf,
    /// The cell's resolved experiment config; default: `config.resolved.toml` beside the weights.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder (replaced if it exists); default `predictions/<input stem>`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the prediction as JSON on standard output (instead of a summary).
    #[arg(long)]
    json: bool,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Clip sampling: every int(fps / this)-th frame.
    #[arg(long, default_value_t = IngestOptions::default().frames_per_second)]
    frames_per_second: f64,
    /// Clip sampling: at most this many frames.
    #[arg(long, default_value_t = IngestOptions::default().max_frames_per_clip)]
    max_frames: usize,
}

/// Class probabilities in class-index order, serialised as a JSON object in that order.
#[derive(Debug, Clone)]
pub struct ClassProbabilities(pub Vec<(String, f64)>);

impl Serialize for ClassProbabilities {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, p) in &self.0 {
            map.serialize_entry(name, p)?;
        }
        map.end()
    }
}

/// One frame's result.
#[derive(Serialize, Debug)]
pub struct FramePrediction {
    pub frame_index: usize,
    pub time_s: f64,
    pub diagnosis: String,
    pub probabilities: ClassProbabilities,
}

/// What `prediction.json` holds.
#[derive(Serialize, Debug)]
pub struct Prediction {
    pub input: String,
    /// `frame` or `clip`.
    pub kind: &'static str,
    pub weights: String,
    pub classes: Vec<String>,
    /// The diagnosis of the frame, or the clip's verdict (mean of its frames' probabilities).
    pub diagnosis: String,
    pub probabilities: ClassProbabilities,
    pub frames: Vec<FramePrediction>,
}

fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let config_path = resolved_config_path(&args.weights, args.config.as_deref())?;
    let config = ExperimentConfig::load(&config_path, &[])?;
    let classify = config.classify.as_ref().with_context(|| {
        format!(
            "{}: no [classify] section: these are not a classifier's weights",
            config_path.display()
        )
    })?;
    let [arm] = config.grid.arms.as_slice() else {
        bail!(
            "{}: a classification cell's config has one arm, this one has {}",
            config_path.display(),
            config.grid.arms.len()
        );
    };
    let run = config.arm_classifier(arm, classify)?;
    let names = config.class_names();
    let aspect = match config.dataset.classify_from {
        ClassifyFrom::Pocus => config.dataset.pocus.aspect,
        // Scanner images are square already; the loader's resize is a plain stretch.
        ClassifyFrom::Dataset => AspectMode::Stretch,
    };
    let size = run.data.size;
    let device = parse_device(&args.device)?;
    let task = ClassificationTask::from_checkpoint(
        &config.pretrain.unet,
        &run.classifier,
        names.clone(),
        &args.weights,
        &device,
    )
    .with_context(|| format!("{}: cannot load the weights", args.weights.display()))?;

    // The input's frames.
    let still = is_still_image(&args.input);
    let options = IngestOptions {
        frames_per_second: args.frames_per_second,
        max_frames_per_clip: args.max_frames,
        ..IngestOptions::default()
    };
    // FFmpeg is looked for only when there is a clip to decode.
    let tools = if still || !args.input.is_file() {
        None
    } else {
        Some(Tools::find()?)
    };
    let frames: Vec<DecodedFrame> = read_input_frames(&args.input, &options, tools.as_ref())?;
    let inputs: Vec<GrayImage> = frames
        .iter()
        .map(|f| square_resized(&f.image, aspect, size))
        .collect();

    // Through the evaluation loader (the training run's normalisation, no augmentation).
    let source = InMemoryClassSource(inputs.iter().map(|i| (i.clone(), 0)).collect());
    let loader = ClassificationLoader::new(
        Arc::new(source),
        run.loader_config(false),
        0,
        device.clone(),
        names.len(),
    )?;
    let mut probabilities: Vec<Vec<f64>> = vec![Vec::new(); inputs.len()];
    let mut masks: Vec<Vec<u8>> = vec![Vec::new(); inputs.len()];
    for batch in loader.epoch(0) {
        let batch = batch?;
        let out = task
            .model()
            .forward_t(&batch.images, &mut Mode::Eval, true)?;
        let p = lus_transfer::UNetClassifier::probabilities(&out.logits)?.to_vec2::<f32>()?;
        let segmentation = out
            .segmentation
            .context("the classifier gave no segmentation map")?
            .argmax_keepdim(1)?
            .squeeze(1)?
            .to_dtype(candle_core::DType::U8)?
            .to_vec3::<u8>()?;
        for ((&i, row), mask) in batch.indices.iter().zip(p).zip(segmentation) {
            probabilities[i] = row.into_iter().map(f64::from).collect();
            masks[i] = mask.into_iter().flatten().collect();
        }
    }
    let named =
        |p: &[f64]| ClassProbabilities(names.iter().cloned().zip(p.iter().copied()).collect());
    let frame_predictions: Vec<FramePrediction> = frames
        .iter()
        .zip(&probabilities)
        .map(|(f, p)| FramePrediction {
            frame_index: f.index,
            time_s: f.time_s,
            diagnosis: names[argmax(p)].clone(),
            probabilities: named(p),
        })
        .collect();
    let k = names.len();
    let mean: Vec<f64> = (0..k)
        .map(|c| probabilities.iter().map(|p| p[c]).sum::<f64>() / probabilities.len() as f64)
        .collect();
    let prediction = Prediction {
        input: args.input.display().to_string(),
        kind: if still { "frame" } else { "clip" },
        weights: args.weights.display().to_string(),
        classes: names.clone(),
        diagnosis: names[argmax(&mean)].clone(),
        probabilities: named(&mean),
        frames: frame_predictions,
    };

    // The output folder.
    let out = match args.out {
        Some(o) => o,
        None => PathBuf::from("predictions").join(input_stem(&args.input)),
    };
    let stage = StagedDir::open_fresh(&out)?;
    let json = serde_json::to_string_pretty(&prediction)?;
    write_atomic(&stage.path().join("prediction.json"), json.as_bytes())?;
    let mut csv = format!(
        "frame_index,time_s,diagnosis,{}\n",
        names
            .iter()
            .map(|n| format!("p_{n}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    for f in &prediction.frames {
        let _ = writeln!(
            csv,
            "{},{},{},{}",
            f.frame_index,
            f.time_s,
            f.diagnosis,
            f.probabilities
                .0
                .iter()
                .map(|(_, p)| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    write_atomic(&stage.path().join("frames.csv"), csv.as_bytes())?;
    // Up to 4 frames, evenly spread, in the overlay.
    let shown: Vec<usize> = {
        let n = inputs.len();
        let m = n.min(4);
        (0..m).map(|i| i * n / m).collect()
    };
    let rows: Vec<OverlayRow> = shown
        .iter()
        .map(|&i| OverlayRow {
            width: size as usize,
            height: size as usize,
            image: inputs[i].as_raw(),
            masks: vec![masks[i].as_slice()],
        })
        .collect();
    let verdict = format!("{} {:.2}", prediction.diagnosis, mean[argmax(&mean)]);
    let frame_title = if still {
        "frame".to_string()
    } else {
        format!("frames {} of {}", shown.len(), inputs.len())
    };
    let seg_title = if still {
        format!("segmentation; {verdict}")
    } else {
        format!("segmentation; clip: {verdict}")
    };
    let palette: Vec<[u8; 3]> = LabelSchema::default()
        .palette()
        .into_iter()
        .map(|c| c.0)
        .collect();
    overlay_grid(
        &stage.path().join("overlay.png"),
        &rows,
        &palette,
        &[frame_title.as_str(), seg_title.as_str()],
    )?;
    let out = stage.commit(true)?;
    if args.json {
        println!("{json}");
    } else {
        println!(
            "{}: {} ({}), {}",
            args.input.display(),
            prediction.diagnosis,
            prediction
                .probabilities
                .0
                .iter()
                .map(|(n, p)| format!("{n} {p:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            if still {
                "one frame".to_string()
            } else {
                format!("mean of {} frames", prediction.frames.len())
            }
        );
        println!("wrote {}", out.display());
    }
    Ok(())
}
