//! The segmentation report of an experiment: `REPORT.md` with the tables, `figures/`, the
//! merged results table (`seg_results.{csv,parquet}`) and the experiment's resolved config,
//! built in a staging folder and renamed into place whole.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use image::imageops::FilterType;
use lus_data::loader::SegmentationLoader;
use lus_data::{ClassRender, LabelRecipe};
use lus_io::StagedDir;
use lus_metrics::stats::summarize;
use lus_metrics::{
    MetricsTable, OverlayRow, Row, Value, nan_mean, overlay_grid, plot_curves, read_table_parquet,
};
use lus_train::SegModel;

use crate::config::{ExperimentConfig, RESOLVED_CONFIG_FILE};
use crate::dataset::Dataset;
use crate::findings::{self, ClsSummary, Completeness, Facts, LineFp, SegScore};
use crate::plan::{Cell, CellKind, Plan};
use crate::provenance::{RUN_MANIFEST_FILE, RunManifest, read_run_manifest};
use crate::seg_cell::{best_checkpoint, cell_arm, read_eval, truths};

/// Report file name inside the report folder.
pub const REPORT_FILE: &str = "REPORT.md";

/// One finished pretraining cell, as the report sees it.
pub struct CellResult {
    /// The pretraining arm.
    pub arm: String,
    pub seed: u64,
    pub dir: PathBuf,
    pub manifest: RunManifest,
    /// Per-class test evaluation against each truth recipe, by the truth's name.
    pub evals: Vec<(String, MetricsTable)>,
    /// The cell's per-epoch table.
    pub history: MetricsTable,
    /// The U-Net it trained (a pretraining arm may override the experiment's).
    pub unet: lus_unet::UNetConfig,
}

impl CellResult {
    pub fn load(cell: &Cell) -> anyhow::Result<Self> {
        let CellKind::Pretrain { arm, seed } = &cell.kind else {
            anyhow::bail!("{}: not a pretraining cell", cell.dir.display());
        };
        let dir = &cell.dir;
        let manifest = read_run_manifest(dir)?
            .with_context(|| format!("{}: missing", dir.join(RUN_MANIFEST_FILE).display()))?;
        let history_path = dir.join(lus_train::trainer::METRICS_PARQUET);
        let history = MetricsTable::from_dataframe(&read_table_parquet(&history_path)?)
            .with_context(|| history_path.display().to_string())?;
        let evals = truths(&cell.config)?
            .into_iter()
            .map(|t| Ok((t.name.clone(), read_eval(dir, &t.name)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(CellResult {
            arm: arm.clone(),
            seed: *seed,
            dir: dir.to_path_buf(),
            manifest,
            evals,
            history,
            unet: cell.config.pretrain.unet.clone(),
        })
    }

    /// The evaluation against the truth called `truth`.
    fn eval(&self, truth: &str) -> Option<&MetricsTable> {
        self.evals.iter().find(|(t, _)| t == truth).map(|(_, e)| e)
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

/// `mean ± std` of a score over cells (seeds, folds): the one formatter of the reports. Its
/// NaN rule: non-finite values (a metric undefined in a cell) are left out, and the count of
/// what is left decides the form: none `-`, one the value, more `mean ± std`; when some were
/// left out, `(k of n)` follows.
pub fn mean_std(values: &[f64]) -> String {
    mean_std_of(values, false)
}

/// `mean ± std` of a count (an integer for one value, one decimal for a mean); NaN rule as
/// [`mean_std`].
fn mean_std_count(values: &[f64]) -> String {
    mean_std_of(values, true)
}

fn mean_std_of(values: &[f64], integral: bool) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let text = match finite.len() {
        0 => return "-".to_string(),
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
    };
    if finite.len() < values.len() {
        // Say over how many cells a mean is when some had no value.
        format!("{text} ({} of {})", finite.len(), values.len())
    } else {
        text
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

/// What the segmentation part of a report is about: the schema's classes and the truths.
struct SegContext<'a> {
    experiment: &'a ExperimentConfig,
    data: &'a Dataset,
    cells: &'a [CellResult],
    /// Pretraining arms with at least one finished cell, in file order.
    arms: Vec<&'a str>,
    /// The truth recipes, the comparison first.
    truths: Vec<LabelRecipe>,
}

impl<'a> SegContext<'a> {
    /// The context of `experiment`'s report over its finished pretraining `cells`.
    fn new(
        experiment: &'a ExperimentConfig,
        data: &'a Dataset,
        cells: &'a [CellResult],
    ) -> anyhow::Result<Self> {
        Ok(SegContext {
            experiment,
            data,
            cells,
            arms: experiment
                .grid
                .pretrain
                .iter()
                .map(|a| a.name.as_str())
                .filter(|a| cells.iter().any(|c| c.arm == *a))
                .collect(),
            truths: experiment
                .evaluation
                .truths
                .iter()
                .map(|t| experiment.recipe(t))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    fn cells_of(&self, arm: &'a str) -> impl Iterator<Item = &'a CellResult> + 'a {
        self.cells.iter().filter(move |c| c.arm == arm)
    }

    /// `column` of class row `class` against `truth` in every cell of `arm`.
    fn column(&self, arm: &'a str, truth: &str, class: usize, column: &str) -> Vec<f64> {
        self.cells_of(arm)
            .map(|c| c.eval(truth).map_or(f64::NAN, |t| float(t, class, column)))
            .collect()
    }
}

/// The build revisions the cells were trained at (from their `run.json`), each with how many
/// cells, and whether the working tree had uncommitted changes when any of them started (the
/// binary's own revision says `-dirty` if it was built from one): a report whose cells come
/// from several builds says so.
fn trained_at(cells: &[CellResult], cls_cells: &[crate::report_cls::ClsCellResult]) -> String {
    let mut revisions: Vec<(String, usize)> = Vec::new();
    let mut dirty = false;
    let mut count = |revision: &str, is_dirty: Option<bool>| {
        dirty |= is_dirty == Some(true);
        match revisions.iter_mut().find(|(r, _)| r == revision) {
            Some((_, n)) => *n += 1,
            None => revisions.push((revision.to_string(), 1)),
        }
    };
    for cell in cells {
        count(&cell.manifest.build_git_revision, cell.manifest.git_dirty);
    }
    for cell in cls_cells {
        match read_run_manifest(&cell.dir).ok().flatten() {
            Some(m) => count(&m.build_git_revision, m.git_dirty),
            None => count("unknown", None),
        }
    }
    if revisions.is_empty() {
        return "no build (no cell)".into();
    }
    let list = revisions
        .iter()
        .map(|(r, n)| format!("`{r}` ({n} cell{})", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ");
    if dirty {
        format!("{list}; the working tree had uncommitted changes when some of them started")
    } else {
        list
    }
}

/// Writes the report of `experiment` from its finished pretraining cells `cells` and
/// classification cells `cls_cells` into `<reports_dir>/<name>/`, built in a staging folder
/// and renamed into place whole.
pub fn write_report(
    experiment: &ExperimentConfig,
    plan: &Plan,
    data: &Dataset,
    cells: &[CellResult],
    cls_cells: &[crate::report_cls::ClsCellResult],
    command: &str,
    wall_seconds_this_invocation: f64,
) -> anyhow::Result<PathBuf> {
    let root = experiment.report_root();
    // Two runners that finish together (shards, a second `lus run`) write one at a time: the
    // second would otherwise remove the first's staging folder. The lock file lives with the
    // runs, not in the (committed) reports folder.
    let _lock = crate::lock::Lock::acquire(
        &experiment.runs_root().join("report"),
        || eprintln!("{}: another process is writing it; waiting", root.display()),
        || Ok(()),
    )?;
    let staged = StagedDir::open_fresh(&root)?;
    let figures = staged.create_subdir("figures")?;
    let context = SegContext::new(experiment, data, cells)?;
    write_seg_results_table(cells, staged.path())?;
    lus_io::write_atomic(
        &staged.path().join(RESOLVED_CONFIG_FILE),
        experiment.to_toml_string()?.as_bytes(),
    )?;

    let mut md = header_section(experiment, cells, cls_cells, command);
    md.push_str(&setup_section(&context, plan)?);
    let cls_summary = match experiment.classify {
        Some(_) => Some(crate::report_cls::summarize_arms(experiment, cls_cells)?),
        None => None,
    };
    let facts = report_facts(&context, plan, cls_cells, cls_summary.clone())?;
    md.push_str(&findings::warnings_section(&facts));
    md.push_str(&findings::findings_section(&facts));
    for (k, truth) in context.truths.iter().enumerate() {
        md.push_str(&truth_section(&context, truth, k == 0));
    }
    md.push_str(&curves_section(&context, &figures)?);
    md.push_str(&overlay_section(&context, &figures)?);
    if let Some(summary) = &cls_summary {
        md.push_str(&crate::report_cls::classification_section(
            experiment,
            cls_cells,
            summary,
            staged.path(),
            &figures,
        )?);
        md.push('\n');
    }
    md.push_str(&cost_section(
        experiment,
        cells,
        cls_cells,
        command,
        wall_seconds_this_invocation,
    ));
    lus_io::write_atomic(&staged.path().join(REPORT_FILE), md.as_bytes())?;
    Ok(staged.commit(true)?)
}

/// The title and the provenance paragraph: the command and build that wrote the report, the
/// builds the cells were trained at, the toolchain, device and threads.
fn header_section(
    experiment: &ExperimentConfig,
    cells: &[CellResult],
    cls_cells: &[crate::report_cls::ClsCellResult],
    command: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# {}: {}\n",
        experiment.name,
        if experiment.classify.is_some() {
            "segmentation pretraining by label recipe, and reverse transfer to diagnosis"
        } else {
            "segmentation pretraining by label recipe"
        }
    );
    let first = cells.first().map(|c| &c.manifest);
    let _ = writeln!(
        md,
        "Written by `{command}` for `{}` (resolved config: [`{RESOLVED_CONFIG_FILE}`]({RESOLVED_CONFIG_FILE})) \
         at build revision `{}`; the cells were trained at {}; {}, candle {}; device {}; {} rayon \
         threads on {} CPUs.\n",
        experiment.name,
        env!("LUS_BUILD_GIT_REVISION"),
        trained_at(cells, cls_cells),
        first.map_or("unknown", |m| m.rustc.as_str()),
        first.map_or("unknown", |m| m.candle.as_str()),
        first.map_or("unknown", |m| m.device.as_str()),
        first.map_or(0, |m| m.rayon_threads),
        first.map_or(0, |m| m.host_cpus),
    );
    md
}

/// The overlay figure and its caption; empty when there is nothing to draw.
fn overlay_section(context: &SegContext<'_>, figures: &Path) -> anyhow::Result<String> {
    let mut md = String::new();
    if overlay_figure(context, &figures.join("overlay.png"))? {
        let _ = writeln!(md, "## Overlays\n");
        let _ = writeln!(
            md,
            "![overlay](figures/overlay.png)\n\nTest images (seed {} models): image | {} | {}.\n",
            context.experiment.grid.seeds[0],
            context
                .truths
                .iter()
                .map(|t| format!("{} truth", t.name))
                .collect::<Vec<_>>()
                .join(" | "),
            context
                .arms
                .iter()
                .map(|a| format!("prediction of the {a} U-Net"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(md)
}

/// `seg_results.{csv,parquet}`: every cell's per-class table against every truth.
fn write_seg_results_table(cells: &[CellResult], dir: &Path) -> anyhow::Result<()> {
    let mut results = MetricsTable::new();
    for cell in cells {
        for (truth, table) in &cell.evals {
            for row in 0..table.len() {
                let mut r = Row::new()
                    .text("arm", cell.arm.clone())
                    .int("seed", cell.seed as i64)
                    .text("truth", truth.clone());
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
        &dir.join("seg_results.csv"),
        &dir.join("seg_results.parquet"),
    )?;
    Ok(())
}

/// The setup: data, what each pretraining arm learns from, model, training, evaluation.
fn setup_section(context: &SegContext<'_>, plan: &Plan) -> anyhow::Result<String> {
    let experiment = context.experiment;
    let schema = &context.data.schema;
    let d = &experiment.dataset;
    let p = &experiment.pretrain;
    let mut md = String::from("## Setup\n\n");
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
        "- **Pretraining arms**: the same images, each arm labelled by its recipe (label recipes \
         in `lus_data::recipe`; a stroke width in px at 128 px is scaled with the image, and a \
         stroke is never wider than its object). Each arm validates and picks its best epoch on \
         its own labels (`{}`), as a researcher with only those labels would.",
        p.train.best_metric_or(lus_train::SEGMENTATION_BEST_METRIC)
    );
    for arm in &experiment.grid.pretrain {
        let Some(cell) = plan.pretrain_cell(&arm.name, experiment.grid.seeds[0]) else {
            continue;
        };
        let (_, recipe, _) = cell_arm(&cell.config)?;
        let _ = writeln!(
            md,
            "  - **{}** (recipe `{}`{}): {}.",
            arm.name,
            recipe.name,
            if arm.overrides.is_empty() {
                String::new()
            } else {
                format!(
                    "; overrides `{}`",
                    arm.overrides.to_string().trim().replace('\n', "; ")
                )
            },
            recipe.describe(schema)
        );
    }
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
    let e = &experiment.evaluation;
    let truth_names: Vec<String> = context
        .truths
        .iter()
        .map(|t| format!("**{}**", t.name))
        .collect();
    let _ = writeln!(
        md,
        "- **Evaluation**: the best checkpoint of every run on the {} test images, against the \
         {} ground truth (every arm alike){}. Objects are {} components of a line class, \
         matched one-to-one by IoU >= {} (greedy); an unmatched predicted component is a false \
         positive, predicted components under {} px are ignored. Seeds: {:?}.\n",
        d.test,
        truth_names[0],
        if truth_names.len() > 1 {
            format!(
                ", and against {} for reference",
                truth_names[1..].join(", ")
            )
        } else {
            String::new()
        },
        e.connectivity,
        e.object_iou,
        e.min_object_area,
        experiment.grid.seeds
    );
    Ok(md)
}

/// What the warnings and the findings are computed from: every cell's classes against the
/// comparison truth, the line classes' false positives per image, the classification
/// comparisons and the cells the plan has that are not complete.
fn report_facts(
    context: &SegContext<'_>,
    plan: &Plan,
    cls_cells: &[crate::report_cls::ClsCellResult],
    classification: Option<ClsSummary>,
) -> anyhow::Result<Facts> {
    let schema = &context.data.schema;
    let truth = &context.truths[0];
    let mut seg_scores = Vec::new();
    for cell in context.cells {
        let Some(table) = cell.eval(&truth.name) else {
            continue;
        };
        // The classes the arm's own labels draw (a class it was never taught is no collapse).
        let renders = match plan.pretrain_cell(&cell.arm, cell.seed) {
            Some(c) => cell_arm(&c.config)?.1.renders(schema),
            None => continue,
        };
        for row in 0..table.len() {
            let id = float(table, row, "class_id");
            let id = if id.is_finite() { id as usize } else { row };
            if id == 0 {
                continue;
            }
            seg_scores.push(SegScore {
                arm: cell.arm.clone(),
                seed: cell.seed,
                class: text(table, row, "class"),
                trained: renders.get(id).is_some_and(|r| *r != ClassRender::Off),
                truth_pixels: float(table, row, "truth_pixels"),
                dice: float(table, row, "dice"),
            });
        }
    }
    let line_fp = drawn_line_classes(schema, truth)
        .into_iter()
        .map(|class| LineFp {
            class: schema.classes()[class].name.clone(),
            per_arm: context
                .arms
                .iter()
                .map(|&arm| {
                    (
                        arm.to_string(),
                        context.column(arm, &truth.name, class, "fp_per_image"),
                    )
                })
                .collect(),
        })
        .collect();
    let missing = |cells: &[Cell], done: &dyn Fn(&CellKind) -> bool| Completeness {
        stage: match cells.first().map(|c| &c.kind) {
            Some(CellKind::Classify { .. }) => "classification".to_string(),
            _ => "pretraining".to_string(),
        },
        planned: cells.len(),
        missing: cells
            .iter()
            .filter(|c| !done(&c.kind))
            .map(Cell::label)
            .collect(),
    };
    let pretrain_done = |kind: &CellKind| {
        matches!(kind, CellKind::Pretrain { arm, seed }
            if context.cells.iter().any(|c| &c.arm == arm && c.seed == *seed))
    };
    let classify_done = |kind: &CellKind| {
        matches!(kind, CellKind::Classify { arm, seed, fold, .. }
            if cls_cells.iter().any(|c| &c.arm == arm && c.seed == *seed && c.fold == *fold))
    };
    Ok(Facts {
        truth: truth.name.clone(),
        seeds: context.experiment.grid.seeds.len(),
        seg_scores,
        seg_arms: context.arms.iter().map(|a| a.to_string()).collect(),
        line_fp,
        classification,
        completeness: vec![
            missing(plan.pretrain(), &pretrain_done),
            missing(plan.classify(), &classify_done),
        ],
    })
}

/// The line classes a truth recipe draws, by id.
fn drawn_line_classes(schema: &lus_data::LabelSchema, truth: &LabelRecipe) -> Vec<usize> {
    let renders = truth.renders(schema);
    schema
        .line_classes()
        .map(|c| usize::from(c.id))
        .filter(|&id| renders[id] != ClassRender::Off)
        .collect()
}

/// Object- and pixel-level tables of every arm against one truth recipe.
fn truth_section(context: &SegContext<'_>, truth: &LabelRecipe, comparison: bool) -> String {
    let schema = &context.data.schema;
    let renders = truth.renders(schema);
    let drawn = |id: usize| renders[id] != ClassRender::Off;
    let line_classes = drawn_line_classes(schema, truth);
    let foreground: Vec<usize> = (1..schema.num_classes()).filter(|&id| drawn(id)).collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Test results against {} ground truth{}\n",
        truth.name,
        if comparison {
            " (the comparison)"
        } else {
            " (reference)"
        }
    );
    let seeds_note = if context.experiment.grid.seeds.len() > 1 {
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
        for &arm in &context.arms {
            let col = |name: &str| context.column(arm, &truth.name, class, name);
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
    for arm in &context.arms {
        let _ = write!(header, " Dice ({arm}) | IoU ({arm}) |");
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    // Background and the classes the truth draws: a class it leaves off has no truth pixels.
    for class in std::iter::once(0).chain(foreground.iter().copied()) {
        let mut line = format!("| {} |", schema.classes()[class].name);
        for &arm in &context.arms {
            let dice = context.column(arm, &truth.name, class, "dice");
            let iou = context.column(arm, &truth.name, class, "iou");
            let _ = write!(line, " {} | {} |", mean_std(&dice), mean_std(&iou));
        }
        let _ = writeln!(md, "{line}");
    }
    for (label, subset) in [
        ("mean over line classes", &line_classes),
        ("mean over all foreground classes", &foreground),
    ] {
        // With no other class drawn the second mean repeats the first.
        if label != "mean over line classes" && subset.len() == line_classes.len() {
            continue;
        }
        let mut line = format!("| *{label}* |");
        for &arm in &context.arms {
            let (iou, dice): (Vec<f64>, Vec<f64>) = context
                .cells_of(arm)
                .map(|c| {
                    c.eval(&truth.name)
                        .map_or((f64::NAN, f64::NAN), |t| class_means(t, subset))
                })
                .unzip();
            let _ = write!(line, " {} | {} |", mean_std(&dice), mean_std(&iou));
        }
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(md);
    md
}

/// Every run's losses and validation mIoU, one chart each.
fn curves_section(context: &SegContext<'_>, figures: &Path) -> anyhow::Result<String> {
    let mut loss_series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut miou_series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for cell in context.cells {
        let h = &cell.history;
        let points = |col: &str| -> Vec<(f64, f64)> {
            (0..h.len())
                .map(|r| (float(h, r, "epoch"), float(h, r, col)))
                .collect()
        };
        let tag = if context.experiment.grid.seeds.len() > 1 {
            format!("{} s{}", cell.arm, cell.seed)
        } else {
            cell.arm.clone()
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
    Ok("## Curves\n\n\
        ![loss](figures/curves-loss.png)\n\n![validation mIoU](figures/curves-val-miou.png)\n\n\
        The loss scales differ between arms (different targets); the validation mIoU of each arm \
        is measured on its own labels, so compare arms in the tables above, not here.\n\n"
        .to_string())
}

/// Wall time, memory and throughput of every run.
fn cost_section(
    experiment: &ExperimentConfig,
    cells: &[CellResult],
    cls_cells: &[crate::report_cls::ClsCellResult],
    command: &str,
    wall_seconds_this_invocation: f64,
) -> String {
    let p = &experiment.pretrain;
    let mut md = String::from("## Cost\n\n");
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
    let cls_wall: f64 = cls_cells.iter().map(|c| cell_wall(&c.dir)).sum();
    total += cls_wall;
    if !cls_cells.is_empty() {
        let _ = writeln!(
            md,
            "| {} classification runs | {:.0} s | | | |",
            cls_cells.len(),
            cls_wall
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
    md
}

/// Wall time recorded in a run folder's manifest (NaN when unknown).
fn cell_wall(dir: &Path) -> f64 {
    read_run_manifest(dir)
        .ok()
        .flatten()
        .and_then(|m| m.wall_seconds)
        .unwrap_or(f64::NAN)
}

/// Draws image | each truth | prediction per arm for the first test images, with the first
/// seed's models. Returns false when there is nothing to draw.
fn overlay_figure(context: &SegContext<'_>, path: &Path) -> anyhow::Result<bool> {
    let (experiment, data) = (context.experiment, context.data);
    let count = experiment.evaluation.overlay_examples.min(data.test.len());
    let seed = experiment.grid.seeds[0];
    let models: Vec<&CellResult> = context
        .arms
        .iter()
        .filter_map(|a| context.cells.iter().find(|c| c.arm == *a && c.seed == seed))
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
    let first_batch = |recipe: &LabelRecipe| -> anyhow::Result<lus_data::loader::SegBatch> {
        let loader = SegmentationLoader::new(
            data.test.labels(recipe)?,
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
    let to_u8 = |t: &candle_core::Tensor| -> anyhow::Result<Vec<u8>> {
        Ok(t.flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|v| v.min(255) as u8)
            .collect())
    };
    let mut images_batch = None;
    let mut truth_masks = Vec::with_capacity(context.truths.len());
    for truth in &context.truths {
        let batch = first_batch(truth)?;
        truth_masks.push(to_u8(&batch.masks)?);
        images_batch.get_or_insert(batch.images);
    }
    let images_batch = images_batch.context("no truth to draw")?;
    let mut predictions = Vec::new();
    for cell in &models {
        let model = SegModel::load(&cell.unet, &best_checkpoint(&cell.dir), &device)?;
        predictions.push(model.predict(&images_batch)?);
    }
    // Display images: the stored image resized to the model's input size.
    let mut images = Vec::with_capacity(count);
    for i in 0..count {
        let image = data.test.image(i)?;
        let image = if image.dimensions() == (size, size) {
            image
        } else {
            image::imageops::resize(&image, size, size, FilterType::Triangle)
        };
        images.push(image.into_raw());
    }
    let n = (size * size) as usize;
    let rows: Vec<OverlayRow> = (0..count)
        .map(|i| OverlayRow {
            width: size as usize,
            height: size as usize,
            image: &images[i],
            masks: truth_masks
                .iter()
                .chain(&predictions)
                .map(|m| &m[i * n..(i + 1) * n])
                .collect(),
        })
        .collect();
    let palette: Vec<[u8; 3]> = data.schema.palette().iter().map(|c| c.0).collect();
    let mut titles = vec!["image".to_string()];
    titles.extend(context.truths.iter().map(|t| format!("{} truth", t.name)));
    titles.extend(models.iter().map(|c| format!("pred. ({})", c.arm)));
    let title_refs: Vec<&str> = titles.iter().map(String::as_str).collect();
    overlay_grid(path, &rows, &palette, &title_refs)?;
    Ok(true)
}
