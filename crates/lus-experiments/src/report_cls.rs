//! The classification part of an experiment's report: per-arm means over seeds x folds, paired
//! comparisons between arms over the same (seed, fold) cells, bootstrap intervals of pooled
//! test predictions, the results table and the figures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lus_metrics::classification::{BootstrapSettings, Predictions};
use lus_metrics::stats::{compare_paired, summarize};
use lus_metrics::{
    BarSeries, MetricsTable, Row, plot_bars, plot_confusion_matrix, plot_curves, plot_roc_curves,
    read_table_parquet,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::cls_cell::{PREDICTIONS_FILE, TEST_DIR};
use crate::config::ExperimentConfig;
use crate::plan::{CellKind, Plan};
use crate::predictions::read_predictions;
use crate::report::{float, mean_std};
use lus_data::Probe;

/// The headline metrics of the tables, plots and comparisons.
const HEADLINE: [&str; 5] = [
    "balanced_accuracy",
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_auc",
];

/// One finished classification cell.
pub struct ClsCellResult {
    pub arm: String,
    pub seed: u64,
    pub fold: usize,
    pub dir: PathBuf,
    /// The one-row test metrics table.
    pub metrics: MetricsTable,
    /// Per-epoch table of the training.
    pub history: MetricsTable,
    /// Test truths and probabilities.
    pub truth: Vec<usize>,
    pub probabilities: Vec<Vec<f64>>,
    /// The clip and probe of each test example.
    pub clips: Vec<String>,
    pub probes: Vec<Probe>,
}

impl ClsCellResult {
    fn load(
        arm: &str,
        seed: u64,
        fold: usize,
        dir: &Path,
        names: &[String],
    ) -> anyhow::Result<Self> {
        let table = |path: PathBuf| -> anyhow::Result<MetricsTable> {
            MetricsTable::from_dataframe(&read_table_parquet(&path)?)
                .with_context(|| path.display().to_string())
        };
        let metrics = table(dir.join(TEST_DIR).join("metrics.parquet"))?;
        let history = table(dir.join(lus_train::trainer::METRICS_PARQUET))?;
        let rows = read_predictions(&dir.join(TEST_DIR).join(PREDICTIONS_FILE), names)?;
        let truth = rows.iter().map(|r| r.truth).collect();
        let probabilities = rows
            .iter()
            .map(|r| r.probabilities.iter().map(|&p| f64::from(p)).collect())
            .collect();
        let clips = rows.iter().map(|r| r.clip.clone()).collect();
        let probes = rows.iter().map(|r| r.probe).collect();
        Ok(ClsCellResult {
            arm: arm.to_string(),
            seed,
            fold,
            dir: dir.to_path_buf(),
            metrics,
            history,
            truth,
            probabilities,
            clips,
            probes,
        })
    }

    fn metric(&self, name: &str) -> f64 {
        float(&self.metrics, 0, name)
    }
}

/// Every complete classification cell of `plan` (a cell of another configuration is not one).
pub fn load_cls_cells(
    experiment: &ExperimentConfig,
    plan: &Plan,
) -> anyhow::Result<Vec<ClsCellResult>> {
    let mut cells = Vec::new();
    let names = experiment.class_names();
    for cell in plan.classify() {
        let CellKind::Classify {
            arm, seed, fold, ..
        } = &cell.kind
        else {
            continue;
        };
        if crate::cell::is_complete(&cell.dir, &cell.config)? {
            cells.push(ClsCellResult::load(arm, *seed, *fold, &cell.dir, &names)?);
        }
    }
    Ok(cells)
}

fn p_value(p: f64) -> String {
    if p.is_nan() {
        "-".into()
    } else if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

/// Writes the classification section's figures and tables into the staged report folder and
/// returns its markdown.
pub fn classification_section<'a>(
    experiment: &'a ExperimentConfig,
    cells: &'a [ClsCellResult],
    report_dir: &Path,
    figures: &Path,
) -> anyhow::Result<String> {
    let mut md = String::new();
    let names = experiment.class_names();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let arms: Vec<&str> = experiment
        .grid
        .arms
        .iter()
        .map(|a| a.name.as_str())
        .filter(|a| cells.iter().any(|c| c.arm == *a))
        .collect();
    let total = experiment.grid.arms.len() * experiment.grid.seeds.len() * experiment.grid.folds;
    let _ = writeln!(
        md,
        "## Reverse transfer: diagnosis ({})\n",
        names.join(" / ")
    );
    let pool = crate::dataset::pool_description(experiment);
    let classify = experiment.classify.as_ref();
    if let Some(c) = classify {
        let _ = writeln!(
            md,
            "Each arm's U-Net becomes a classifier (head on the `{:?}` output, freeze `{:?}`, {} head \
             channels) trained {} epochs (batch {}, lr {:e}, best epoch by `{}` on the validation \
             part) on {} in {} stratified folds: fold f is the test set of cell f; \
             the other folds are split {} ways the same stratified way, one part validating, the \
             rest training. Arms: {}. \
             {} of {total} cells are complete; every number below is over those.\n",
            c.classifier.head,
            c.classifier.freeze,
            c.classifier.head_channels,
            c.train.epochs,
            c.train.batch_size,
            c.train.lr,
            c.train
                .best_metric_or(lus_train::CLASSIFICATION_BEST_METRIC),
            pool,
            experiment.grid.folds,
            experiment.grid.inner_folds,
            experiment
                .grid
                .arms
                .iter()
                .map(|a| format!(
                    "**{}** ({}{})",
                    a.name,
                    match a.pretrain_arm() {
                        Some(p) => format!("the U-Net of pretraining arm {p}"),
                        None => "a freshly initialised U-Net".to_string(),
                    },
                    if a.classifier.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", classifier overrides `{}`",
                            a.classifier.to_string().trim().replace('\n', "; ")
                        )
                    }
                ))
                .collect::<Vec<_>>()
                .join(", "),
            cells.len(),
        );
    }

    // Results table of every cell.
    let mut results = MetricsTable::new();
    for cell in cells {
        let mut row = Row::new();
        for name in cell.metrics.column_names() {
            if let Some(v) = cell.metrics.get(0, name) {
                row = row.set(name, v);
            }
        }
        results.push_row(row)?;
    }
    results.write(
        &report_dir.join("cls_results.csv"),
        &report_dir.join("cls_results.parquet"),
    )?;

    // Per-arm means over seeds x folds.
    let cells_of = |arm: &'a str| cells.iter().filter(move |c| c.arm == arm);
    let mut metrics: Vec<String> = HEADLINE.iter().map(|s| s.to_string()).collect();
    for n in &names {
        metrics.push(format!("recall_{n}"));
        metrics.push(format!("specificity_{n}"));
    }
    let _ = writeln!(
        md,
        "### Test metrics per arm (mean ± std over seeds × folds)\n"
    );
    let mut header = String::from("| metric |");
    let mut rule = String::from("|---|");
    for arm in &arms {
        let _ = write!(header, " {arm} (n={}) |", cells_of(arm).count());
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for metric in &metrics {
        let mut line = format!("| {metric} |");
        for arm in &arms {
            let values: Vec<f64> = cells_of(arm).map(|c| c.metric(metric)).collect();
            let _ = write!(line, " {} |", mean_std(&values));
        }
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(md);

    // Paired comparisons over the same (seed, fold).
    if arms.len() >= 2 {
        let _ = writeln!(
            md,
            "### Paired comparisons (same seed and fold)\n\nDifference = first arm minus second, over the (seed, fold) cells both arms \
             finished; p-values of the two-sided paired t-test and Wilcoxon signed-rank test \
             (scipy's `ttest_rel` and `wilcoxon` conventions). With few cells these tests have \
             little power: read the differences and their spread first.\n"
        );
        let _ = writeln!(
            md,
            "| comparison | metric | pairs | mean difference ± std | t-test p | Wilcoxon p |\n|---|---|---:|---:|---:|---:|"
        );
        for (i, a) in arms.iter().enumerate() {
            for b in &arms[i + 1..] {
                for metric in ["balanced_accuracy", "macro_f1", "macro_auc"] {
                    let mut x = Vec::new();
                    let mut y = Vec::new();
                    for ca in cells_of(a) {
                        if let Some(cb) =
                            cells_of(b).find(|c| c.seed == ca.seed && c.fold == ca.fold)
                        {
                            x.push(ca.metric(metric));
                            y.push(cb.metric(metric));
                        }
                    }
                    if x.is_empty() {
                        continue;
                    }
                    let cmp = compare_paired(&x, &y)?;
                    let _ = writeln!(
                        md,
                        "| {a} − {b} | {metric} | {} | {:+.3} ± {} | {} | {} |",
                        x.len(),
                        cmp.difference.mean,
                        if cmp.difference.std.is_nan() {
                            "-".into()
                        } else {
                            format!("{:.3}", cmp.difference.std)
                        },
                        p_value(cmp.t_test.p_value),
                        p_value(cmp.wilcoxon.p_value),
                    );
                }
            }
        }
        let _ = writeln!(md);
    }

    // Pooled test predictions of the first seed: bootstrap intervals, ROC, confusion.
    let seed = experiment.grid.seeds[0];
    let mut pooled: Vec<(&str, Predictions)> = Vec::new();
    for arm in &arms {
        let (mut truth, mut rows) = (Vec::new(), Vec::new());
        for c in cells_of(arm).filter(|c| c.seed == seed) {
            truth.extend_from_slice(&c.truth);
            rows.extend(c.probabilities.iter().cloned());
        }
        if !truth.is_empty() {
            pooled.push((arm, Predictions::from_rows(&truth, &rows)?));
        }
    }
    if !pooled.is_empty() {
        let _ = writeln!(
            md,
            "### Pooled test predictions, seed {seed} (every pool example once, from the fold that tested it)\n\n\
             95% percentile-bootstrap intervals (1000 resamples of examples).\n"
        );
        let _ = writeln!(
            md,
            "| arm | examples | accuracy | balanced accuracy | macro F1 | macro AUC |\n|---|---:|---:|---:|---:|---:|"
        );
        for (arm, predictions) in &pooled {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let intervals =
                predictions.bootstrap(&name_refs, &BootstrapSettings::default(), &mut rng)?;
            let cell = |metric: &str| {
                intervals
                    .iter()
                    .find(|i| i.metric == metric)
                    .map_or("-".to_string(), |i| {
                        format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.lower, i.upper)
                    })
            };
            let _ = writeln!(
                md,
                "| {arm} | {} | {} | {} | {} | {} |",
                predictions.num_examples(),
                cell("accuracy"),
                cell("balanced_accuracy"),
                cell("macro_f1"),
                cell("macro_auc")
            );
            plot_confusion_matrix(
                &figures.join(format!("confusion-{arm}.png")),
                &format!("{arm}: pooled test predictions (seed {seed})"),
                &predictions.metrics().confusion,
                &name_refs,
            )?;
        }
        let _ = writeln!(md);
        for (k, class) in names.iter().enumerate() {
            let curves: Vec<(String, lus_metrics::RocCurve)> = pooled
                .iter()
                .map(|(arm, p)| Ok((arm.to_string(), p.roc_curve(k)?)))
                .collect::<anyhow::Result<_>>()?;
            let refs: Vec<(&str, &lus_metrics::RocCurve)> =
                curves.iter().map(|(n, c)| (n.as_str(), c)).collect();
            plot_roc_curves(
                &figures.join(format!("roc-{class}.png")),
                &format!("ROC, {class} vs rest (pooled test, seed {seed})"),
                &refs,
            )?;
        }
        let _ = writeln!(
            md,
            "{}\n\n{}\n",
            names
                .iter()
                .map(|c| format!("![ROC {c}](figures/roc-{c}.png)"))
                .collect::<Vec<_>>()
                .join(" "),
            pooled
                .iter()
                .map(|(a, _)| format!("![confusion {a}](figures/confusion-{a}.png)"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    md.push_str(&levels_section(
        experiment, cells, &arms, &names, report_dir,
    )?);

    // Bars: headline metrics per arm.
    let groups: Vec<&str> = ["balanced_accuracy", "macro_f1", "macro_auc"].to_vec();
    let stats: Vec<(Vec<f64>, Vec<f64>)> = arms
        .iter()
        .map(|arm| {
            groups
                .iter()
                .map(|m| {
                    let s = summarize(&cells_of(arm).map(|c| c.metric(m)).collect::<Vec<_>>());
                    (if s.mean.is_finite() { s.mean } else { 0.0 }, s.std)
                })
                .unzip()
        })
        .collect();
    let series: Vec<BarSeries> = arms
        .iter()
        .zip(&stats)
        .map(|(arm, (means, stds))| BarSeries {
            name: arm,
            means,
            stds,
        })
        .collect();
    if !series.is_empty() {
        plot_bars(
            &figures.join("cls-bars.png"),
            "test metrics per arm (mean ± std over seeds × folds)",
            "score",
            &groups,
            &series,
        )?;
        let _ = writeln!(md, "![bars](figures/cls-bars.png)\n");
    }

    // Learning curves: validation balanced accuracy per epoch, mean over cells.
    let mut curves: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for arm in &arms {
        let histories: Vec<&MetricsTable> = cells_of(arm).map(|c| &c.history).collect();
        let epochs = histories.iter().map(|h| h.len()).max().unwrap_or(0);
        let points = (0..epochs)
            .map(|e| {
                let values: Vec<f64> = histories
                    .iter()
                    .filter(|h| e < h.len())
                    .map(|h| float(h, e, "val_balanced_accuracy"))
                    .collect();
                ((e + 1) as f64, summarize(&values).mean)
            })
            .collect();
        curves.push((arm.to_string(), points));
    }
    if !curves.is_empty() {
        let refs: Vec<(&str, &[(f64, f64)])> = curves
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_slice()))
            .collect();
        plot_curves(
            &figures.join("cls-learning-curves.png"),
            "validation balanced accuracy (mean over cells)",
            "epoch",
            "balanced accuracy",
            &refs,
        )?;
        let _ = writeln!(md, "![learning curves](figures/cls-learning-curves.png)\n");
    }
    let _ = writeln!(
        md,
        "Every cell's test metrics: `cls_results.csv` / `cls_results.parquet` (columns `arm, seed, fold, best_epoch, test_examples`, then the metrics); \
         per-example predictions in each cell's `test/predictions.csv`."
    );
    Ok(md)
}

/// Out-of-fold predictions of one arm and seed (every pool example once, from the fold that
/// tested it), at frame or clip level, for one probe or all.
fn pooled_predictions(
    cells: &[&ClsCellResult],
    clip_level: bool,
    probe: Option<&str>,
) -> anyhow::Result<Option<Predictions>> {
    let mut truth = Vec::new();
    let mut rows: Vec<Vec<f64>> = Vec::new();
    // Clip -> (truth, summed probabilities, frames), in first-seen order.
    let mut clips: Vec<(String, usize, Vec<f64>, usize)> = Vec::new();
    let mut clip_index = std::collections::HashMap::new();
    for cell in cells {
        for i in 0..cell.truth.len() {
            if probe.is_some_and(|p| cell.probes[i].as_str() != p) {
                continue;
            }
            if !clip_level {
                truth.push(cell.truth[i]);
                rows.push(cell.probabilities[i].clone());
                continue;
            }
            let key = cell.clips[i].clone();
            let k = *clip_index.entry(key.clone()).or_insert_with(|| {
                clips.push((
                    key,
                    cell.truth[i],
                    vec![0.0; cell.probabilities[i].len()],
                    0,
                ));
                clips.len() - 1
            });
            let entry = &mut clips[k];
            if entry.1 != cell.truth[i] {
                anyhow::bail!(
                    "{}: clip {} has frames of two classes",
                    cell.dir.display(),
                    entry.0
                );
            }
            for (sum, p) in entry.2.iter_mut().zip(&cell.probabilities[i]) {
                *sum += p;
            }
            entry.3 += 1;
        }
    }
    for (_, t, sums, n) in clips {
        truth.push(t);
        rows.push(sums.into_iter().map(|s| s / n as f64).collect());
    }
    if truth.is_empty() {
        return Ok(None);
    }
    Ok(Some(Predictions::from_rows(&truth, &rows)?))
}

/// One line of the levels table: an arm at one level (frame or clip) for one probe or all.
struct LevelSummary {
    arm: String,
    level: &'static str,
    subset: String,
    /// Per seed: the number of examples and the metric values, in the table's column order.
    per_seed: Vec<(usize, Vec<f64>)>,
}

/// Frame- and clip-level metrics (a clip's verdict is the mean of its frames' probabilities),
/// overall and per probe, of each arm's out-of-fold predictions, mean ± std over seeds; also
/// written as `cls_levels.{csv,parquet}` (one row per arm, seed, level and probe).
fn levels_section(
    experiment: &ExperimentConfig,
    cells: &[ClsCellResult],
    arms: &[&str],
    names: &[String],
    report_dir: &Path,
) -> anyhow::Result<String> {
    let mut md = String::new();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut probes: Vec<&str> = cells
        .iter()
        .flat_map(|c| c.probes.iter().map(|p| p.as_str()))
        .collect();
    probes.sort_unstable();
    probes.dedup();
    let has_clips = cells.iter().any(|c| {
        let mut seen = std::collections::HashSet::new();
        c.clips.iter().any(|clip| !seen.insert(clip))
    });
    let levels: &[(&str, bool)] = if has_clips {
        &[("frame", false), ("clip", true)]
    } else {
        &[("frame", false)]
    };
    let mut subsets: Vec<Option<&str>> = vec![None];
    if probes.len() > 1 {
        subsets.extend(probes.iter().map(|p| Some(*p)));
    }
    let mut columns: Vec<String> = vec![
        "accuracy".into(),
        "balanced_accuracy".into(),
        "macro_f1".into(),
    ];
    columns.extend(names.iter().map(|n| format!("recall_{n}")));

    let mut table = MetricsTable::new();
    let mut summary: Vec<LevelSummary> = Vec::new();
    for arm in arms {
        for &(level, clip_level) in levels {
            for subset in &subsets {
                let mut per_seed = Vec::new();
                for &seed in &experiment.grid.seeds {
                    let of_seed: Vec<&ClsCellResult> = cells
                        .iter()
                        .filter(|c| c.arm == *arm && c.seed == seed)
                        .collect();
                    let Some(predictions) = pooled_predictions(&of_seed, clip_level, *subset)?
                    else {
                        continue;
                    };
                    let named = predictions.metrics().named(&name_refs)?;
                    let value = |m: &str| {
                        named
                            .iter()
                            .find(|(n, _)| n == m)
                            .map_or(f64::NAN, |(_, v)| *v)
                    };
                    let values: Vec<f64> = columns.iter().map(|c| value(c)).collect();
                    let mut row = Row::new()
                        .text("arm", arm.to_string())
                        .int("seed", seed as i64)
                        .text("level", level.to_string())
                        .text("probe", subset.unwrap_or("all").to_string())
                        .int("examples", predictions.num_examples() as i64);
                    for (c, v) in columns.iter().zip(&values) {
                        row = row.float(c, *v);
                    }
                    table.push_row(row)?;
                    per_seed.push((predictions.num_examples(), values));
                }
                if !per_seed.is_empty() {
                    summary.push(LevelSummary {
                        arm: arm.to_string(),
                        level,
                        subset: subset.unwrap_or("all").to_string(),
                        per_seed,
                    });
                }
            }
        }
    }
    if summary.is_empty() {
        return Ok(md);
    }
    table.write(
        &report_dir.join("cls_levels.csv"),
        &report_dir.join("cls_levels.parquet"),
    )?;
    let _ = writeln!(
        md,
        "### Frame and clip level, overall and per probe (out-of-fold predictions)\n\n\
         Each seed's test predictions pooled over its folds (every pool example once); {}\
         mean ± std over seeds. Sensitivity = recall of the class. Table: `cls_levels.csv`.\n",
        if has_clips {
            "a clip's verdict is the mean of its frames' class probabilities; "
        } else {
            ""
        }
    );
    let mut header = String::from("| arm | level | probe | examples |");
    let mut rule = String::from("|---|---|---|---:|");
    for c in &columns {
        let label = c
            .strip_prefix("recall_")
            .map_or_else(|| c.replace('_', " "), |n| format!("sensitivity {n}"));
        let _ = write!(header, " {label} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for LevelSummary {
        arm,
        level,
        subset,
        per_seed,
    } in &summary
    {
        let examples = per_seed[0].0;
        let mut line = format!("| {arm} | {level} | {subset} | {examples} |");
        for k in 0..columns.len() {
            let values: Vec<f64> = per_seed.iter().map(|(_, v)| v[k]).collect();
            let _ = write!(line, " {} |", mean_std(&values));
        }
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(md);
    Ok(md)
}
