//! `lus domain-gap`: how far the synthetic scanner's frames are from real ones, measured.
//!
//! **Classifier two-sample test** (Lopez-Paz & Oquab, ICLR 2017): a small network is trained
//! to tell scanner frames from real POCUS frames, at the training size and through the
//! training preprocessing (square by padding, resized, normalised per image, so that what it
//! finds is what a segmenter sees). Its held-out accuracy is the measure: 0.5 means the two
//! sources cannot be told apart; 1.0 that every frame gives itself away. Held-out by
//! stratified group k-fold: every frame of a real clip (of a patient, when known) is in one
//! fold, so the network cannot score by recognising clips; each scanner frame is its own
//! group (independent draws). The interval resamples the groups (cluster bootstrap), as the
//! frames of one clip are not independent evidence. Inside each training fold, a fifth of the
//! groups is held out to pick the best epoch, so the test fold never chooses the weights.
//!
//! **Simple statistics** beside it, on the same frames before normalisation: the share of
//! black (letter-box and outside the fan) pixels, the intensity distribution of the field of
//! view (mean, standard deviation, and the Wasserstein-1 distance between the two pooled
//! distributions, in grey levels), the radial power spectrum of the per-image-normalised
//! frame (mean log10 power in 8 rings up to Nyquist; the distance is the mean absolute
//! difference of the log powers) and the depth profile (mean intensity per row; the distance
//! is the mean absolute difference in grey levels).
//!
//! Output (`--out`, staged and renamed): `domain_gap.json` (settings, C2ST accuracy and AUC
//! with intervals and per fold, the statistics), `statistics.csv`, `profiles.csv` (depth
//! profile, spectrum and histogram of each source) and `profiles.png`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use image::GrayImage;
use lus_data::cls_loader::{ClassificationLoader, InMemoryClassSource};
use lus_data::pocus::{AspectMode, POCUS_MANIFEST, read_frame_rows, square_resized};
use lus_data::splits::stratified_group_kfold;
use lus_io::{StagedDir, write_atomic};
use lus_metrics::{BootstrapSettings, MetricsTable, Predictions, Row, plot_curves};
use lus_scanner::{Scanner, ScannerConfig};
use lus_train::{
    Backbone, ClassificationTask, ClsRunConfig, DeviceSpec, ImageDataConfig, Resume, TrainConfig,
    train_classifier,
};
use lus_transfer::ClassifierConfig;
use lus_unet::UNetConfig;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::segment::FIELD_OF_VIEW_MIN_INTENSITY;

#[derive(Args, Debug)]
pub struct DomainGapArgs {
    /// An ingested POCUS folder (`lus ingest-pocus --out`, e.g. runs/pocus-frames).
    #[arg(long)]
    real: PathBuf,
    /// The scanner's settings (a TOML file of `ScannerConfig` fields; default: the default
    /// scanner). Its `size` is replaced by `--size`.
    #[arg(long)]
    scanner: Option<PathBuf>,
    /// Frame side the test runs at (the training size).
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Real frames used (at most; the scanner contributes as many).
    #[arg(long, default_value_t = 600)]
    frames: usize,
    /// At most this many frames of one real clip (evenly spread), so that many clips count.
    #[arg(long, default_value_t = 4)]
    frames_per_clip: usize,
    /// Folds of the grouped cross-validation.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Training epochs of each fold's classifier.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Seed of the frame choice, the scanner, the folds, the weights and the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output folder (replaced if it exists).
    #[arg(long, default_value = "runs/domain-gap")]
    out: PathBuf,
    /// No per-fold lines.
    #[arg(long)]
    quiet: bool,
    /// Only the statistics, no classifier test (seconds instead of minutes: for trying scanner
    /// settings).
    #[arg(long)]
    statistics_only: bool,
}

/// The inner split of each training part: one fold of it picks the epoch.
const INNER_FOLDS: usize = 5;

/// Class ids of the test: 0 scanner, 1 real.
const SOURCES: [&str; 2] = ["scanner", "real"];

/// One frame of the test.
struct Frame {
    image: GrayImage,
    source: usize,
    group: String,
}

#[derive(Serialize)]
struct Interval {
    estimate: f64,
    lower: f64,
    upper: f64,
}

#[derive(Serialize)]
struct C2st {
    accuracy: Interval,
    auc: Interval,
    /// Accuracy of each fold's held-out frames.
    fold_accuracy: Vec<f64>,
    /// `distinguishable` when the interval's lower end is above 0.5.
    verdict: &'static str,
    groups: usize,
    seconds: f64,
}

#[derive(Serialize)]
struct SourceStatistics {
    frames: usize,
    groups: usize,
    black_share: f64,
    fov_mean: f64,
    fov_std: f64,
}

#[derive(Serialize)]
struct Statistics {
    scanner: SourceStatistics,
    real: SourceStatistics,
    /// Wasserstein-1 distance of the field-of-view intensity distributions, grey levels.
    intensity_w1: f64,
    /// Mean absolute difference of the log10 radial power spectra (8 rings).
    spectrum_log10_distance: f64,
    /// Mean absolute difference of the depth profiles, grey levels.
    depth_profile_distance: f64,
}

#[derive(Serialize)]
struct DomainGap {
    real: String,
    scanner: ScannerConfig,
    size: u32,
    frames_per_clip: usize,
    folds: usize,
    epochs: usize,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    c2st: Option<C2st>,
    statistics: Statistics,
    build: String,
}

pub fn run(args: DomainGapArgs) -> anyhow::Result<()> {
    if args.folds < 2 || args.frames == 0 || args.frames_per_clip == 0 || args.epochs == 0 {
        bail!("--folds must be at least 2, --frames, --frames-per-clip and --epochs at least 1");
    }
    let mut scanner_config = match &args.scanner {
        Some(path) => {
            let text = lus_io::read_text(path)?;
            toml::from_str::<ScannerConfig>(&text)
                .map_err(|e| anyhow::anyhow!("{}: invalid scanner settings: {e}", path.display()))?
        }
        None => ScannerConfig::default(),
    };
    scanner_config.size = args.size;
    let scanner = Scanner::new(scanner_config.clone(), args.seed)?;
    let real = real_frames(&args)?;
    let n_real = real.len();
    eprintln!(
        "{n_real} real frames of {} groups; drawing {n_real} scanner frames at {} px",
        distinct(real.iter().map(|f| f.group.as_str())),
        args.size
    );
    let scanner_frames: Vec<Frame> = (0..n_real as u64)
        .map(|i| Frame {
            image: scanner.sample(i).image,
            source: 0,
            group: format!("scanner:{i}"),
        })
        .collect();
    let frames: Vec<Frame> = scanner_frames.into_iter().chain(real).collect();

    let sources = profiles(&frames);
    let statistics = statistics(&sources);
    let stage = StagedDir::open_fresh(&args.out)?;
    let (c2st, network) = if args.statistics_only {
        (None, None)
    } else {
        let (c2st, network) = classifier_test(&args, &frames, stage.path())?;
        (Some(c2st), Some(network))
    };
    write_profiles(&sources, stage.path())?;
    let mut table = MetricsTable::new();
    for (name, scanner_value, real_value, distance) in [
        (
            "black_share",
            statistics.scanner.black_share,
            statistics.real.black_share,
            (statistics.scanner.black_share - statistics.real.black_share).abs(),
        ),
        (
            "fov_intensity",
            statistics.scanner.fov_mean,
            statistics.real.fov_mean,
            statistics.intensity_w1,
        ),
        (
            "spectrum_log10",
            f64::NAN,
            f64::NAN,
            statistics.spectrum_log10_distance,
        ),
        (
            "depth_profile",
            f64::NAN,
            f64::NAN,
            statistics.depth_profile_distance,
        ),
        (
            "c2st_accuracy",
            f64::NAN,
            f64::NAN,
            c2st.as_ref().map_or(f64::NAN, |c| c.accuracy.estimate),
        ),
    ] {
        table.push_row(
            Row::new()
                .text("statistic", name)
                .float("scanner", scanner_value)
                .float("real", real_value)
                .float("distance", distance),
        )?;
    }
    table.write(
        &stage.path().join("statistics.csv"),
        &stage.path().join("statistics.parquet"),
    )?;
    let result = DomainGap {
        real: args.real.display().to_string(),
        scanner: scanner_config,
        size: args.size,
        frames_per_clip: args.frames_per_clip,
        folds: args.folds,
        epochs: args.epochs,
        seed: args.seed,
        network,
        c2st,
        statistics,
        build: env!("LUS_BUILD_GIT_REVISION").to_string(),
    };
    let json = serde_json::to_string_pretty(&result)?;
    write_atomic(&stage.path().join("domain_gap.json"), json.as_bytes())?;
    let out = stage.commit(true)?;
    if let Some(c) = &result.c2st {
        println!(
            "classifier two-sample test, {} folds grouped by clip: accuracy {:.3} [{:.3}, \
             {:.3}], AUC {:.3} [{:.3}, {:.3}] ({}; 0.5 = indistinguishable)",
            result.folds,
            c.accuracy.estimate,
            c.accuracy.lower,
            c.accuracy.upper,
            c.auc.estimate,
            c.auc.lower,
            c.auc.upper,
            c.verdict
        );
    }
    let s = &result.statistics;
    println!(
        "black share scanner {:.3} / real {:.3}; field-of-view intensity W1 {:.1} grey levels; \
         spectrum distance {:.3} log10; depth profile distance {:.1} grey levels",
        s.scanner.black_share,
        s.real.black_share,
        s.intensity_w1,
        s.spectrum_log10_distance,
        s.depth_profile_distance
    );
    println!("wrote {}", out.display());
    Ok(())
}

fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> usize {
    items.collect::<std::collections::HashSet<_>>().len()
}

/// Up to `frames_per_clip` frames of each real clip (evenly spread), clips in a seeded order,
/// until `frames`; squared by padding and resized.
fn real_frames(args: &DomainGapArgs) -> anyhow::Result<Vec<Frame>> {
    let manifest = args.real.join(POCUS_MANIFEST);
    if !manifest.is_file() {
        bail!(
            "{}: not found (--real must be a folder written by `lus ingest-pocus`)",
            manifest.display()
        );
    }
    let rows = read_frame_rows(&manifest)?;
    let mut by_clip: BTreeMap<&str, Vec<&lus_data::pocus::FrameRow>> = BTreeMap::new();
    for row in &rows {
        by_clip.entry(row.clip.as_str()).or_default().push(row);
    }
    let mut clips: Vec<&str> = by_clip.keys().copied().collect();
    clips.shuffle(&mut ChaCha8Rng::seed_from_u64(args.seed ^ 0x005e_edc2));
    let mut chosen = Vec::new();
    for clip in clips {
        if chosen.len() >= args.frames {
            break;
        }
        let frames = &by_clip[clip];
        let take = frames
            .len()
            .min(args.frames_per_clip)
            .min(args.frames - chosen.len());
        chosen.extend((0..take).map(|i| frames[i * frames.len() / take]));
    }
    if chosen.is_empty() {
        bail!("{}: no frames", manifest.display());
    }
    chosen
        .iter()
        .map(|row| {
            let path = lus_data::manifest::resolve_inside(&args.real, &row.path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
            let image = lus_data::image_io::load_gray(&path)?;
            Ok(Frame {
                image: square_resized(&image, AspectMode::Pad, args.size),
                source: 1,
                group: row.group(),
            })
        })
        .collect()
}

/// The grouped cross-validated classifier test; also returns the network's description.
fn classifier_test(
    args: &DomainGapArgs,
    frames: &[Frame],
    out: &Path,
) -> anyhow::Result<(C2st, String)> {
    let started = Instant::now();
    let labels: Vec<usize> = frames.iter().map(|f| f.source).collect();
    let groups: Vec<String> = frames.iter().map(|f| f.group.clone()).collect();
    // Each training part must still fill the inner 5-fold split with groups of both sources.
    let need = (INNER_FOLDS * args.folds).div_ceil(args.folds - 1);
    for (source, name) in SOURCES.iter().enumerate() {
        let n = distinct(
            frames
                .iter()
                .filter(|f| f.source == source)
                .map(|f| f.group.as_str()),
        );
        if n < need {
            bail!(
                "{name} frames come from {n} clips or patients; {} folds with an inner \
                 {INNER_FOLDS}-fold split need at least {need} (more --frames or fewer --folds)",
                args.folds
            );
        }
    }
    let folds = stratified_group_kfold(&labels, &groups, args.folds, args.seed)?;
    let unet = UNetConfig {
        depth: 3,
        base_channels: 8,
        ..UNetConfig::default()
    };
    let network = format!(
        "reverse-transfer classifier on a fresh U-Net (depth {}, base {} channels), {} epochs, \
         AdamW lr 1e-3, batch 16",
        unet.depth, unet.base_channels, args.epochs
    );
    let device_spec = DeviceSpec::parse(&args.device)?;
    let device = device_spec.open()?;
    let mut probabilities = vec![0.0f64; 2 * frames.len()];
    let mut fold_accuracy = Vec::with_capacity(args.folds);
    for fold in 0..args.folds {
        let train_idx: Vec<usize> = (0..frames.len()).filter(|&i| folds[i] != fold).collect();
        let test_idx: Vec<usize> = (0..frames.len()).filter(|&i| folds[i] == fold).collect();
        // An inner grouped split of the training part picks the epoch.
        let inner_labels: Vec<usize> = train_idx.iter().map(|&i| labels[i]).collect();
        let inner_groups: Vec<String> = train_idx.iter().map(|&i| groups[i].clone()).collect();
        let inner = stratified_group_kfold(
            &inner_labels,
            &inner_groups,
            INNER_FOLDS,
            args.seed + 1 + fold as u64,
        )?;
        let pick = |keep: bool| -> Vec<(GrayImage, usize)> {
            train_idx
                .iter()
                .zip(&inner)
                .filter(|&(_, &f)| (f == 0) == keep)
                .map(|(&i, _)| (frames[i].image.clone(), labels[i]))
                .collect()
        };
        let (val, train) = (pick(true), pick(false));
        let run = ClsRunConfig {
            train: TrainConfig {
                epochs: args.epochs,
                batch_size: 16,
                lr: 1e-3,
                seed: args.seed.wrapping_add(fold as u64),
                device: device_spec,
                ..TrainConfig::default()
            },
            classifier: ClassifierConfig {
                num_diagnoses: 2,
                ..ClassifierConfig::default()
            },
            data: ImageDataConfig {
                size: args.size,
                augment: None,
                ..ImageDataConfig::default()
            },
            ..ClsRunConfig::default()
        };
        let fold_dir = out.join("folds").join(format!("fold{fold}"));
        let summary = train_classifier(
            &run,
            &unet,
            Backbone::Fresh,
            Arc::new(InMemoryClassSource(train)),
            Arc::new(InMemoryClassSource(val)),
            SOURCES.map(String::from).to_vec(),
            &fold_dir,
            Resume::Never,
            |trainer| trainer.with_progress_bar(false),
        )?;
        let task = ClassificationTask::from_checkpoint(
            &unet,
            &run.classifier,
            SOURCES.map(String::from).to_vec(),
            &summary.best_checkpoint(),
            &device,
        )?;
        let test: Vec<(GrayImage, usize)> = test_idx
            .iter()
            .map(|&i| (frames[i].image.clone(), labels[i]))
            .collect();
        let loader = ClassificationLoader::new(
            Arc::new(InMemoryClassSource(test)),
            run.loader_config(false),
            0,
            device.clone(),
            2,
        )?;
        let mut correct = 0usize;
        for batch in loader.epoch(0) {
            let batch = batch?;
            let p = task.predict_proba(&batch.images)?;
            for (&local, row) in batch.indices.iter().zip(p) {
                let i = test_idx[local];
                probabilities[2 * i] = f64::from(row[0]);
                probabilities[2 * i + 1] = f64::from(row[1]);
                correct += usize::from((row[1] > row[0]) == (labels[i] == 1));
            }
        }
        let accuracy = correct as f64 / test_idx.len() as f64;
        if !args.quiet {
            eprintln!(
                "fold {}/{}: {} train, {} test frames, held-out accuracy {accuracy:.3}",
                fold + 1,
                args.folds,
                train_idx.len(),
                test_idx.len()
            );
        }
        fold_accuracy.push(accuracy);
    }
    let predictions = Predictions::new(&labels, &probabilities, 2)?;
    let names = SOURCES;
    let intervals = predictions.cluster_bootstrap(
        &groups,
        &names,
        &BootstrapSettings::default(),
        &mut ChaCha8Rng::seed_from_u64(args.seed ^ 0xb007),
    )?;
    let find = |metric: &str| -> anyhow::Result<Interval> {
        let ci = intervals
            .iter()
            .find(|c| c.metric == metric)
            .with_context(|| format!("no {metric} interval"))?;
        Ok(Interval {
            estimate: ci.estimate,
            lower: ci.lower,
            upper: ci.upper,
        })
    };
    let accuracy = find("accuracy")?;
    let verdict = if accuracy.lower > 0.5 {
        "distinguishable"
    } else {
        "not distinguishable at 95 %"
    };
    // The fold weights are a means, not a result: only the numbers are kept.
    std::fs::remove_dir_all(out.join("folds")).ok();
    Ok((
        C2st {
            auc: find("macro_auc")?,
            accuracy,
            fold_accuracy,
            verdict,
            groups: distinct(groups.iter().map(String::as_str)),
            seconds: started.elapsed().as_secs_f64(),
        },
        network,
    ))
}

fn is_black(v: u8) -> bool {
    v < FIELD_OF_VIEW_MIN_INTENSITY
}

fn source_statistics(frames: &[&Frame]) -> SourceStatistics {
    let (mut black, mut total, mut sum, mut sum_sq, mut fov) = (0usize, 0usize, 0.0, 0.0, 0usize);
    for f in frames {
        for &v in f.image.as_raw() {
            total += 1;
            if is_black(v) {
                black += 1;
            } else {
                fov += 1;
                sum += f64::from(v);
                sum_sq += f64::from(v) * f64::from(v);
            }
        }
    }
    let mean = sum / fov.max(1) as f64;
    SourceStatistics {
        frames: frames.len(),
        groups: distinct(frames.iter().map(|f| f.group.as_str())),
        black_share: black as f64 / total.max(1) as f64,
        fov_mean: mean,
        fov_std: (sum_sq / fov.max(1) as f64 - mean * mean).max(0.0).sqrt(),
    }
}

/// The normalised histogram (256 levels) of the field-of-view pixels of `frames`.
fn fov_histogram(frames: &[&Frame]) -> Vec<f64> {
    let mut h = vec![0.0f64; 256];
    for f in frames {
        for &v in f.image.as_raw() {
            if !is_black(v) {
                h[usize::from(v)] += 1.0;
            }
        }
    }
    let total: f64 = h.iter().sum::<f64>().max(1.0);
    h.iter_mut().for_each(|v| *v /= total);
    h
}

/// Wasserstein-1 distance of two distributions on the same unit-spaced support.
fn wasserstein1(a: &[f64], b: &[f64]) -> f64 {
    let (mut ca, mut cb, mut d) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ca += x;
        cb += y;
        d += (ca - cb).abs();
    }
    d
}

/// Mean intensity per row, averaged over frames.
fn depth_profile(frames: &[&Frame]) -> Vec<f64> {
    let Some(first) = frames.first() else {
        return Vec::new();
    };
    let (w, h) = first.image.dimensions();
    let mut profile = vec![0.0f64; h as usize];
    for f in frames {
        for (y, p) in profile.iter_mut().enumerate() {
            let row = &f.image.as_raw()[y * w as usize..(y + 1) * w as usize];
            *p += row.iter().map(|&v| f64::from(v)).sum::<f64>() / f64::from(w);
        }
    }
    profile.iter_mut().for_each(|p| *p /= frames.len() as f64);
    profile
}

/// Rings of the radial power spectrum.
const SPECTRUM_RINGS: usize = 8;

/// Mean log10 power in [`SPECTRUM_RINGS`] rings up to Nyquist of the per-image-normalised
/// frames (zero mean, unit variance: the spectrum's shape, not the gain), by a separable DFT.
fn radial_spectrum(frames: &[&Frame]) -> Vec<f64> {
    let Some(first) = frames.first() else {
        return vec![f64::NAN; SPECTRUM_RINGS];
    };
    let n = first.image.width() as usize;
    let twiddle: Vec<(f64, f64)> = (0..n)
        .map(|k| {
            let a = -2.0 * std::f64::consts::PI * k as f64 / n as f64;
            (a.cos(), a.sin())
        })
        .collect();
    let mut power = [0.0f64; SPECTRUM_RINGS];
    let mut counts = [0usize; SPECTRUM_RINGS];
    use rayon::prelude::*;
    let per_frame: Vec<(Vec<f64>, Vec<usize>)> = frames
        .par_iter()
        .map(|f| {
            let raw = f.image.as_raw();
            let mean = raw.iter().map(|&v| f64::from(v)).sum::<f64>() / raw.len() as f64;
            let var = raw
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / raw.len() as f64;
            let scale = 1.0 / var.sqrt().max(1e-6);
            // Rows, then columns.
            let mut rows = vec![(0.0f64, 0.0f64); n * n];
            for y in 0..n {
                for k in 0..n {
                    let (mut re, mut im) = (0.0, 0.0);
                    for x in 0..n {
                        let v = (f64::from(raw[y * n + x]) - mean) * scale;
                        let (c, s) = twiddle[(k * x) % n];
                        re += v * c;
                        im += v * s;
                    }
                    rows[y * n + k] = (re, im);
                }
            }
            let mut p = vec![0.0f64; SPECTRUM_RINGS];
            let mut c = vec![0usize; SPECTRUM_RINGS];
            for kx in 0..n {
                for ky in 0..n {
                    let (mut re, mut im) = (0.0, 0.0);
                    for y in 0..n {
                        let (a, b) = rows[y * n + kx];
                        let (cw, sw) = twiddle[(ky * y) % n];
                        re += a * cw - b * sw;
                        im += a * sw + b * cw;
                    }
                    let fx = kx.min(n - kx) as f64 / n as f64;
                    let fy = ky.min(n - ky) as f64 / n as f64;
                    let r = (fx * fx + fy * fy).sqrt() / 0.5;
                    if r > 0.0 && r <= 1.0 {
                        let ring = ((r * SPECTRUM_RINGS as f64).ceil() as usize - 1)
                            .min(SPECTRUM_RINGS - 1);
                        p[ring] += (re * re + im * im) / (n * n) as f64;
                        c[ring] += 1;
                    }
                }
            }
            (p, c)
        })
        .collect();
    for (p, c) in per_frame {
        for r in 0..SPECTRUM_RINGS {
            power[r] += p[r];
            counts[r] += c[r];
        }
    }
    power
        .iter()
        .zip(&counts)
        .map(|(&p, &c)| (p / c.max(1) as f64).max(1e-300).log10())
        .collect()
}

fn mean_abs_difference(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len().max(1) as f64
}

/// One source's profiles: field-of-view histogram, depth profile, radial spectrum (computed
/// once, for the statistics and for `profiles.csv` alike).
struct SourceProfiles {
    histogram: Vec<f64>,
    depth: Vec<f64>,
    spectrum: Vec<f64>,
}

impl SourceProfiles {
    fn of(frames: &[&Frame]) -> Self {
        SourceProfiles {
            histogram: fov_histogram(frames),
            depth: depth_profile(frames),
            spectrum: radial_spectrum(frames),
        }
    }
}

/// The frames of each source (scanner, real) and their profiles.
fn profiles(frames: &[Frame]) -> [(Vec<&Frame>, SourceProfiles); 2] {
    let (scanner, real): (Vec<&Frame>, Vec<&Frame>) = frames.iter().partition(|f| f.source == 0);
    let (scanner_profiles, real_profiles) =
        (SourceProfiles::of(&scanner), SourceProfiles::of(&real));
    [(scanner, scanner_profiles), (real, real_profiles)]
}

fn statistics(sources: &[(Vec<&Frame>, SourceProfiles); 2]) -> Statistics {
    let [(scanner, s), (real, r)] = sources;
    Statistics {
        intensity_w1: wasserstein1(&s.histogram, &r.histogram),
        spectrum_log10_distance: mean_abs_difference(&s.spectrum, &r.spectrum),
        depth_profile_distance: mean_abs_difference(&s.depth, &r.depth),
        scanner: source_statistics(scanner),
        real: source_statistics(real),
    }
}

fn write_profiles(sources: &[(Vec<&Frame>, SourceProfiles); 2], out: &Path) -> anyhow::Result<()> {
    let mut table = MetricsTable::new();
    let mut depth_curves = Vec::new();
    for (name, (_, profiles)) in SOURCES.iter().zip(sources) {
        let h = profiles.depth.len().max(1) as f64;
        let curve: Vec<(f64, f64)> = profiles
            .depth
            .iter()
            .enumerate()
            .map(|(y, &v)| ((y as f64 + 0.5) / h, v))
            .collect();
        for (kind, values) in [
            ("depth_profile", curve.clone()),
            (
                "spectrum_log10",
                profiles
                    .spectrum
                    .iter()
                    .enumerate()
                    .map(|(r, &v)| ((r as f64 + 1.0) / SPECTRUM_RINGS as f64, v))
                    .collect(),
            ),
            (
                "fov_histogram",
                profiles
                    .histogram
                    .iter()
                    .enumerate()
                    .map(|(v, &p)| (v as f64, p))
                    .collect(),
            ),
        ] {
            for (x, v) in values {
                table.push_row(
                    Row::new()
                        .text("source", *name)
                        .text("profile", kind)
                        .float("x", x)
                        .float("value", v),
                )?;
            }
        }
        depth_curves.push((*name, curve));
    }
    table.write(&out.join("profiles.csv"), &out.join("profiles.parquet"))?;
    let series: Vec<(&str, &[(f64, f64)])> = depth_curves
        .iter()
        .map(|(n, c)| (*n, c.as_slice()))
        .collect();
    plot_curves(
        &out.join("profiles.png"),
        "mean intensity by depth",
        "depth (share of the frame height)",
        "mean grey level",
        &series,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(values: Vec<u8>, side: u32, source: usize) -> Frame {
        Frame {
            image: GrayImage::from_raw(side, side, values).unwrap(),
            source,
            group: "g".into(),
        }
    }

    #[test]
    fn wasserstein_of_shifted_distributions_is_the_shift() {
        let mut a = vec![0.0; 256];
        let mut b = vec![0.0; 256];
        a[10] = 0.5;
        a[20] = 0.5;
        b[15] = 0.5;
        b[25] = 0.5;
        assert!((wasserstein1(&a, &b) - 5.0).abs() < 1e-12);
        assert_eq!(wasserstein1(&a, &a), 0.0);
    }

    #[test]
    fn white_noise_has_a_flat_spectrum_and_a_smooth_image_a_falling_one() {
        use rand::RngExt;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let side = 32u32;
        let noise: Vec<u8> = (0..side * side)
            .map(|_| rng.random_range(0..=255u8))
            .collect();
        let smooth: Vec<u8> = (0..side * side)
            .map(|i| {
                let (x, y) = ((i % side) as f64, (i / side) as f64);
                (128.0 + 100.0 * (x / 5.0).sin() * (y / 7.0).cos()) as u8
            })
            .collect();
        let white = radial_spectrum(&[&frame(noise, side, 0)]);
        let low = radial_spectrum(&[&frame(smooth, side, 0)]);
        let spread = white.iter().cloned().fold(f64::MIN, f64::max)
            - white.iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            spread < 0.5,
            "white noise rings within a factor 3: {white:?}"
        );
        assert!(low[0] - low[SPECTRUM_RINGS - 1] > 2.0, "{low:?}");
        // Parseval: unit variance spreads unit power over the non-zero frequencies.
        assert!(white.iter().all(|p| (p.abs()) < 0.4), "{white:?}");
    }

    #[test]
    fn black_share_depth_profile_and_fov_statistics() {
        // Top half black, bottom half grey 100.
        let side = 8u32;
        let values: Vec<u8> = (0..64).map(|i| if i < 32 { 0 } else { 100 }).collect();
        let f = frame(values, side, 1);
        let s = source_statistics(&[&f]);
        assert_eq!(s.black_share, 0.5);
        assert_eq!((s.fov_mean, s.fov_std), (100.0, 0.0));
        let p = depth_profile(&[&f]);
        assert_eq!(p, [0.0, 0.0, 0.0, 0.0, 100.0, 100.0, 100.0, 100.0]);
    }
}
