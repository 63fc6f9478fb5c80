//! The segmentation report of an experiment: `REPORT.md` with the tables, `figures/`, the
//! merged results table (`seg_results.{csv,parquet}`) and the experiment's resolved config,
//! built in a staging folder and renamed into place whole.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use image::imageops::FilterType;
use lus_data::LabelMode;
use lus_data::io::StagedDir;
use lus_data::loader::SegmentationLoader;
use lus_metrics::stats::summarize;
use lus_metrics::{
    MetricsTable, OverlayRow, Row, Value, nan_mean, overlay_grid, plot_curves, read_table_parquet,
};
use lus_train::SegModel;

use crate::config::{ExperimentConfig, RESOLVED_CONFIG_FILE};
use crate::dataset::Dataset;
use crate::provenance::{RUN_MANIFEST_FILE, RunManifest};
use crate::seg_cell::{best_checkpoint, read_eval};

/// Report file name inside the report folder.
pub const REPORT_FILE: &str = "REPORT.md";

/// One finished cell, as the report sees it.
pub struct CellResult {
    pub arm: LabelMode,
    pub seed: u64,
    pub dir: PathBuf,
    pub manifest: RunManifest,
    /// Per-class test evaluation against dense and sparse truth.
    pub eval_dense: MetricsTable,
    pub eval_sparse: MetricsTable,
    /// The cell's per-epoch table.
    pub history: MetricsTable,
}

impl CellResult {
    pub fn load(arm: LabelMode, seed: u64, dir: &Path) -> anyhow::Result<Self> {
        let manifest_path = dir.join(RUN_MANIFEST_FILE);
        let text = lus_data::io::read_text(&manifest_path)?;
        let manifest: RunManifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid run manifest", manifest_path.display()))?;
        let history_path = dir.join(lus_train::trainer::METRICS_PARQUET);
        let history = MetricsTable::from_dataframe(&read_table_parquet(&history_path)?)
            .with_context(|| history_path.display().to_string())?;
        Ok(CellResult {
            arm,
            seed,
            dir: dir.to_path_buf(),
            manifest,
            eval_dense: read_eval(dir, LabelMode::Dense)?,
            eval_sparse: read_eval(dir, LabelMode::Sparse)?,
            history,
        })
    }

    fn eval(&self, truth: LabelMode) -> &MetricsTable {
        match truth {
            LabelMode::Dense => &self.eval_dense,
            LabelMode::Sparse => &self.eval_sparse,
        }
    }
}

/// A cell value as f64 (ints widened; null, text and unknown columns are NaN).
pub fn float(table: &MetricsTable, row: usize, column: &str) -> f64 {
    match table.get(row, column) {
        Some(Value::Float(v)) => v,
        Some(Value::Int(v)) => v as f64,
        _ => f64::NAN,
    }
}

pub fn text(table: &MetricsTable, row: usize, column: &str) -> String {
    match table.get(row, column) {
        Some(Value::Text(s)) => s,
        Some(Value::Int(v)) => v.to_string(),
        Some(Value::Float(v)) => v.to_string(),
        None => String::new(),
    }
}

/// `0.123`, or `-` for NaN.
fn fmt3(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "-".to_string()
    }
}

/// `mean ± std` over seeds of a score (just the value for one seed; `-` when nothing is
/// finite).
fn mean_std(values: &[f64]) -> String {
    mean_std_of(values, false)
}

/// `mean ± std` over seeds of a count (an integer for one seed, one decimal for a mean).
fn mean_std_count(values: &[f64]) -> String {
    mean_std_of(values, true)
}

fn mean_std_of(values: &[f64], integral: bool) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    match finite.len() {
        0 => "-".to_string(),
        1 if integral => format!("{}", finite[0]),
        1 => fmt3(finite[0]),
        _ => {
            let s = summarize(&finite);
            if integral {
                // Counts: one decimal is all the precision a mean of counts has.
                format!("{:.1} ± {:.1}", s.mean, s.std)
            } else {
                format!("{:.3} ± {:.3}", s.mean, s.std)
            }
        }
    }
}

/// The per-class evaluation table as markdown (what `lus eval-seg` prints).
pub fn markdown_eval_table(table: &MetricsTable, images: usize) -> String {
    let mut out = String::from(
        "| class | IoU | Dice | precision | recall | true obj. | pred. obj. | TP | FP | FN | FP / image |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in 0..table.len() {
        let objects = float(table, row, "objects") > 0.0;
        let obj = |c: &str| {
            if objects {
                format!("{}", float(table, row, c))
            } else {
                String::new()
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            text(table, row, "class"),
            fmt3(float(table, row, "iou")),
            fmt3(float(table, row, "dice")),
            fmt3(float(table, row, "precision")),
            fmt3(float(table, row, "recall")),
            obj("obj_truth"),
            obj("obj_pred"),
            obj("obj_tp"),
            obj("obj_fp"),
            obj("obj_fn"),
            if objects {
                format!("{:.2}", float(table, row, "fp_per_image"))
            } else {
                String::new()
            },
        );
    }
    let _ = writeln!(out, "\n{images} images.");
    out
}

/// Mean IoU and Dice over the non-background classes whose score is defined.
fn class_means(table: &MetricsTable, classes: &[usize]) -> (f64, f64) {
    let iou: Vec<f64> = classes.iter().map(|&r| float(table, r, "iou")).collect();
    let dice: Vec<f64> = classes.iter().map(|&r| float(table, r, "dice")).collect();
    (nan_mean(&iou), nan_mean(&dice))
}

/// Writes the report of `experiment` from `cells` into `<reports_dir>/<name>/`.
pub fn write_report(
    experiment: &ExperimentConfig,
    data: &Dataset,
    cells: &[CellResult],
    cls_cells: &[crate::report_cls::ClsCellResult],
    command: &str,
    wall_seconds_this_invocation: f64,
) -> anyhow::Result<PathBuf> {
    let root = experiment.report_root();
    let staged = StagedDir::open_fresh(&root)?;
    let figures = staged.create_subdir("figures")?;
    let schema = &data.schema;
    let class_count = schema.num_classes();
    let line_classes: Vec<usize> = schema.line_classes().map(|c| usize::from(c.id)).collect();
    let foreground: Vec<usize> = (1..class_count).collect();

    // The merged results table.
    let mut results = MetricsTable::new();
    for cell in cells {
        for truth in [LabelMode::Dense, LabelMode::Sparse] {
            let table = cell.eval(truth);
            for row in 0..table.len() {
                let mut r = Row::new()
                    .text("arm", cell.arm.to_string())
                    .int("seed", cell.seed as i64)
                    .text("truth", truth.to_string());
                for name in table.column_names() {
                    if let Some(v) = table.get(row, name) {
                        r = r.set(name, v);
                    }
                }
                results.push_row(r)?;
            }
        }
    }
    results.write(
        &staged.path().join("seg_results.csv"),
        &staged.path().join("seg_results.parquet"),
    )?;
    lus_data::io::write_atomic(
        &staged.path().join(RESOLVED_CONFIG_FILE),
        experiment.to_toml_string()?.as_bytes(),
    )?;

    let arms: Vec<LabelMode> = experiment
        .grid
        .pretrain_modes()
        .into_iter()
        .filter(|a| cells.iter().any(|c| c.arm == *a))
        .collect();
    let cells_of = |arm: LabelMode| cells.iter().filter(move |c| c.arm == arm);

    let mut md = String::new();
    let d = &experiment.dataset;
    let p = &experiment.pretrain;
    let _ = writeln!(
        md,
        "# {}: {}\n",
        experiment.name,
        if experiment.classify.is_some() {
            "dense vs sparse segmentation pretraining, and reverse transfer to diagnosis"
        } else {
            "dense vs sparse segmentation pretraining"
        }
    );
    let first = cells.first().map(|c| &c.manifest);
    let _ = writeln!(
        md,
        "Written by `{command}` for `{}` (resolved config: [`{RESOLVED_CONFIG_FILE}`]({RESOLVED_CONFIG_FILE})). \
         Build revision `{}`{}; {}, candle {}; device {}; {} rayon threads on {} CPUs.\n",
        experiment.name,
        first.map_or("unknown", |m| m.build_git_revision.as_str()),
        match first.and_then(|m| m.git_dirty) {
            Some(true) => " (working tree with uncommitted changes)",
            _ => "",
        },
        first.map_or("unknown", |m| m.rustc.as_str()),
        first.map_or("unknown", |m| m.candle.as_str()),
        first.map_or("unknown", |m| m.device.as_str()),
        first.map_or(0, |m| m.rayon_threads),
        first.map_or(0, |m| m.host_cpus),
    );

    let _ = writeln!(md, "## Setup\n");
    let _ = writeln!(
        md,
        "- **Data**: {}; {} training, {} validation and {} test images of {}x{} px (seed {}).",
        match d.source {
            crate::config::DataSource::Scanner =>
                "the embedded synthetic scanner (exact ground truth)".to_string(),
            crate::config::DataSource::Folder => format!(
                "the folder `{}`",
                d.folder.as_deref().unwrap_or(Path::new("?")).display()
            ),
        },
        d.train,
        d.val,
        d.test,
        d.scanner.size,
        d.scanner.size,
        d.seed
    );
    let _ = writeln!(
        md,
        "- **What each arm is trained on**: the same images; **dense** = every pixel of the field \
         of view labelled with one of the {} classes, artifacts over their full extent (an A-line \
         is its whole horizontal band, a B-line the whole band from the pleura to the bottom); \
         **sparse** = only the pleural line, A-lines and B-lines, as {} px strokes along their \
         centre lines, everything else background. Each arm validates and picks its best epoch \
         on its own kind of labels (`{}`), as a researcher with only those labels would.",
        class_count - 1,
        d.sparse_width,
        p.train.best_metric
    );
    let u = &p.unet;
    let _ = writeln!(
        md,
        "- **Model**: U-Net, depth {}, base width {}, {:?} norm, {:?} up-sampling, {} classes; \
         input {}x{} px.",
        u.depth, u.base_channels, u.norm, u.upsampling, u.num_classes, p.data.size, p.data.size
    );
    let _ = writeln!(
        md,
        "- **Training**: {} epochs, batch {}, {:?}, lr {:e}, weight decay {:e}, schedule {:?}; \
         loss: cross-entropy x {} + soft Dice x {}{}; augmentation {}.",
        p.train.epochs,
        p.train.batch_size,
        p.train.optimizer,
        p.train.lr,
        p.train.weight_decay,
        p.train.schedule,
        p.train.loss.ce_weight,
        p.train.loss.dice_weight,
        if p.train.loss.class_weights.is_some() {
            " (class-weighted)"
        } else {
            ""
        },
        if p.data.augment.is_some() {
            "on"
        } else {
            "off"
        }
    );
    let _ = writeln!(
        md,
        "- **Evaluation**: the best checkpoint of every run on the {} test images, against the \
         **dense** ground truth (both arms alike), and against the sparse truth for reference. \
         Objects are 8-connected components (`connectivity = {}`) of a line class, matched \
         one-to-one by IoU >= {} (greedy); an unmatched predicted component is a false \
         positive, predicted components under {} px are ignored. Seeds: {:?}.\n",
        d.test,
        experiment.evaluation.connectivity,
        experiment.evaluation.object_iou,
        experiment.evaluation.min_object_area,
        experiment.grid.seeds
    );

    for truth in [LabelMode::Dense, LabelMode::Sparse] {
        let _ = writeln!(
            md,
            "## Test results against {truth} ground truth{}\n",
            if truth == LabelMode::Dense {
                " (the comparison)"
            } else {
                " (reference)"
            }
        );
        let seeds_note = if experiment.grid.seeds.len() > 1 {
            " (mean ± std over seeds)"
        } else {
            ""
        };
        let _ = writeln!(md, "### Object level, line classes{seeds_note}\n");
        let _ = writeln!(
            md,
            "| class | arm | true objects | predicted | TP | FP | FN | **FP / image** | object precision | object recall |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for &class in &line_classes {
            for &arm in &arms {
                let col = |name: &str| -> Vec<f64> {
                    cells_of(arm)
                        .map(|c| float(c.eval(truth), class, name))
                        .collect()
                };
                let _ = writeln!(
                    md,
                    "| {} | {arm} | {} | {} | {} | {} | {} | **{}** | {} | {} |",
                    schema.classes()[class].name,
                    mean_std_count(&col("obj_truth")),
                    mean_std_count(&col("obj_pred")),
                    mean_std_count(&col("obj_tp")),
                    mean_std_count(&col("obj_fp")),
                    mean_std_count(&col("obj_fn")),
                    mean_std(&col("fp_per_image")),
                    mean_std(&col("obj_precision")),
                    mean_std(&col("obj_recall")),
                );
            }
        }
        let _ = writeln!(md, "\n### Pixel level{seeds_note}\n");
        let mut header = String::from("| class |");
        let mut rule = String::from("|---|");
        for arm in &arms {
            let _ = write!(header, " Dice ({arm}) | IoU ({arm}) |");
            rule.push_str("---:|---:|");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        let classes: Vec<usize> = if truth == LabelMode::Dense {
            (0..class_count).collect()
        } else {
            std::iter::once(0)
                .chain(line_classes.iter().copied())
                .collect()
        };
        for &class in &classes {
            let mut line = format!("| {} |", schema.classes()[class].name);
            for &arm in &arms {
                let dice: Vec<f64> = cells_of(arm)
                    .map(|c| float(c.eval(truth), class, "dice"))
                    .collect();
                let iou: Vec<f64> = cells_of(arm)
                    .map(|c| float(c.eval(truth), class, "iou"))
                    .collect();
                let _ = write!(line, " {} | {} |", mean_std(&dice), mean_std(&iou));
            }
            let _ = writeln!(md, "{line}");
        }
        for (label, subset) in [
            ("mean over line classes", &line_classes),
            ("mean over all foreground classes", &foreground),
        ] {
            if truth == LabelMode::Sparse && subset.len() != line_classes.len() {
                continue;
            }
            let mut line = format!("| *{label}* |");
            for &arm in &arms {
                let (iou, dice): (Vec<f64>, Vec<f64>) = cells_of(arm)
                    .map(|c| class_means(c.eval(truth), subset))
                    .unzip();
                let _ = write!(line, " {} | {} |", mean_std(&dice), mean_std(&iou));
            }
            let _ = writeln!(md, "{line}");
        }
        let _ = writeln!(md);
    }

    // Curves: every run's losses and validation mIoU on one chart each.
    let mut loss_series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut miou_series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for cell in cells {
        let h = &cell.history;
        let points = |col: &str| -> Vec<(f64, f64)> {
            (0..h.len())
                .map(|r| (float(h, r, "epoch"), float(h, r, col)))
                .collect()
        };
        let tag = if experiment.grid.seeds.len() > 1 {
            format!("{} s{}", cell.arm, cell.seed)
        } else {
            cell.arm.to_string()
        };
        loss_series.push((format!("{tag} train"), points("train_loss")));
        loss_series.push((format!("{tag} val"), points("val_loss")));
        miou_series.push((tag, points("val_miou")));
    }
    let loss_refs: Vec<(&str, &[(f64, f64)])> = loss_series
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_slice()))
        .collect();
    plot_curves(
        &figures.join("curves-loss.png"),
        "training and validation loss",
        "epoch",
        "loss",
        &loss_refs,
    )?;
    let miou_refs: Vec<(&str, &[(f64, f64)])> = miou_series
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_slice()))
        .collect();
    plot_curves(
        &figures.join("curves-val-miou.png"),
        "validation mIoU (each arm on its own labels)",
        "epoch",
        "mIoU",
        &miou_refs,
    )?;
    let _ = writeln!(md, "## Curves\n");
    let _ = writeln!(
        md,
        "![loss](figures/curves-loss.png)\n\n![validation mIoU](figures/curves-val-miou.png)\n\n\
         The loss scales differ between arms (different targets); the validation mIoU of each arm \
         is measured on its own label mode, so compare arms in the tables above, not here.\n"
    );

    // Overlay grid of the first seed.
    let overlay = overlay_figure(experiment, data, cells, &figures.join("overlay.png"))?;
    if overlay {
        let _ = writeln!(md, "## Overlays\n");
        let _ = writeln!(
            md,
            "![overlay](figures/overlay.png)\n\nTest images (seed {} models): image | dense truth | sparse truth | {}.\n",
            experiment.grid.seeds[0],
            arms.iter()
                .map(|a| format!("prediction of the {a}-trained U-Net"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }

    if experiment.classify.is_some() {
        md.push_str(&crate::report_cls::classification_section(
            experiment,
            cls_cells,
            staged.path(),
            &figures,
        )?);
        md.push('\n');
    }

    // Cost.
    let _ = writeln!(md, "## Cost\n");
    let _ = writeln!(
        md,
        "| run | wall time (train + eval) | peak RSS of the process so far | mean training throughput | per training step (batch {}) |\n|---|---:|---:|---:|---:|",
        p.train.batch_size
    );
    let mut total = 0.0;
    for cell in cells {
        let h = &cell.history;
        let ips: Vec<f64> = (0..h.len()).map(|r| float(h, r, "images_per_s")).collect();
        let ips = nan_mean(&ips);
        let wall = cell.manifest.wall_seconds.unwrap_or(f64::NAN);
        total += wall;
        let _ = writeln!(
            md,
            "| {} seed {} | {:.0} s | {} | {:.1} img/s | {:.0} ms |",
            cell.arm,
            cell.seed,
            wall,
            cell.manifest
                .peak_rss_mib
                .map_or("-".to_string(), |m| format!("{m:.0} MiB")),
            ips,
            1000.0 * p.train.batch_size as f64 / ips
        );
    }
    for cell in cls_cells {
        let wall = cell_wall(&cell.dir);
        total += wall;
    }
    if !cls_cells.is_empty() {
        let _ = writeln!(
            md,
            "| {} classification runs | {:.0} s | | | |",
            cls_cells.len(),
            cls_cells.iter().map(|c| cell_wall(&c.dir)).sum::<f64>()
        );
    }
    let _ = writeln!(
        md,
        "\nSum over runs: {total:.0} s. Wall time of the `{command}` that wrote this report (it skips \
         finished runs, so a re-run is short): {wall_seconds_this_invocation:.0} s.\n"
    );
    let _ = writeln!(
        md,
        "Per-class tables of every run: `seg_results.csv` / `seg_results.parquet` (columns `arm, seed, truth`, then the \
         `lus eval-seg` columns). Run folders: `{}`.",
        experiment.runs_root().display()
    );
    lus_data::io::write_atomic(&staged.path().join(REPORT_FILE), md.as_bytes())?;
    Ok(staged.commit(true)?)
}

/// Wall time recorded in a run folder's manifest (NaN when unknown).
fn cell_wall(dir: &Path) -> f64 {
    lus_data::io::read_text(&dir.join(RUN_MANIFEST_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<RunManifest>(&t).ok())
        .and_then(|m| m.wall_seconds)
        .unwrap_or(f64::NAN)
}

/// Draws image | dense truth | sparse truth | prediction per arm for the first test images,
/// with the first seed's models. Returns false when there is nothing to draw.
fn overlay_figure(
    experiment: &ExperimentConfig,
    data: &Dataset,
    cells: &[CellResult],
    path: &Path,
) -> anyhow::Result<bool> {
    let count = experiment.evaluation.overlay_examples.min(data.test.len());
    let seed = experiment.grid.seeds[0];
    let models: Vec<&CellResult> = experiment
        .grid
        .pretrain_modes()
        .into_iter()
        .filter_map(|a| cells.iter().find(|c| c.arm == a && c.seed == seed))
        .collect();
    if count == 0 || models.is_empty() {
        return Ok(false);
    }
    let p = &experiment.pretrain;
    let size = p.data.size;
    let device = candle_core::Device::Cpu;
    // Images and truths resampled like the evaluation does, by the validation loader.
    // Unshuffled, so the first batch of `count` is test examples 0..count; synchronous
    // (prefetch 0), so nothing past it is prepared.
    let mut loader_config = p.loader_config(false);
    loader_config.batch_size = count;
    loader_config.prefetch = 0;
    let first_batch = |mode| -> anyhow::Result<lus_data::loader::SegBatch> {
        let loader = SegmentationLoader::new(
            data.test.labels(mode),
            loader_config.clone(),
            0,
            device.clone(),
        )?;
        loader
            .epoch(0)
            .next()
            .context("the overlay loader yielded no batch")?
            .map_err(Into::into)
    };
    let dense = first_batch(LabelMode::Dense)?;
    let sparse = first_batch(LabelMode::Sparse)?;
    let to_u8 = |t: &candle_core::Tensor| -> anyhow::Result<Vec<u8>> {
        Ok(t.flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|v| v.min(255) as u8)
            .collect())
    };
    let dense_masks = to_u8(&dense.masks)?;
    let sparse_masks = to_u8(&sparse.masks)?;
    let mut predictions = Vec::new();
    for cell in &models {
        let model = SegModel::load(&p.unet, &best_checkpoint(&cell.dir), &device)?;
        predictions.push(model.predict(&dense.images)?);
    }
    // Display images: the stored image resized to the model's input size.
    let mut images = Vec::with_capacity(count);
    for i in 0..count {
        let (image, _, _) = data.test.example(i)?;
        let image = if image.dimensions() == (size, size) {
            image
        } else {
            image::imageops::resize(&image, size, size, FilterType::Triangle)
        };
        images.push(image.into_raw());
    }
    let n = (size * size) as usize;
    let rows: Vec<OverlayRow> = (0..count)
        .map(|i| {
            let mut masks = vec![
                &dense_masks[i * n..(i + 1) * n],
                &sparse_masks[i * n..(i + 1) * n],
            ];
            for pred in &predictions {
                masks.push(&pred[i * n..(i + 1) * n]);
            }
            OverlayRow {
                width: size as usize,
                height: size as usize,
                image: &images[i],
                masks,
            }
        })
        .collect();
    let palette: Vec<[u8; 3]> = data.schema.palette().iter().map(|c| c.0).collect();
    let mut titles = vec![
        "image".to_string(),
        "dense truth".to_string(),
        "sparse truth".to_string(),
    ];
    titles.extend(models.iter().map(|c| format!("pred. ({})", c.arm)));
    let title_refs: Vec<&str> = titles.iter().map(String::as_str).collect();
    overlay_grid(path, &rows, &palette, &title_refs)?;
    Ok(true)
}
