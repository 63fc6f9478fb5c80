//! The classification part of an experiment's report: per-arm means over seeds x folds,
//! comparisons between arms over the same (seed, fold) cells (corrected resampled t-test,
//! Holm-adjusted; computed by [`summarize_arms`] with [`crate::findings`]), cluster-bootstrap
//! intervals of pooled test predictions with the fold-averaged AUC beside the pooled one, the
//! frame / clip / probe levels, the results table and the figures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lus_metrics::classification::{BootstrapSettings, FoldAuc, Predictions, fold_averaged_auc};
use lus_metrics::stats::{CvCell, summarize};
use lus_metrics::{
    BarSeries, MetricsTable, Row, plot_bars, plot_confusion_matrix, plot_curves, plot_roc_curves,
    read_table_parquet,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::cls_cell::{PREDICTIONS_FILE, TEST_DIR};
use crate::config::{ExperimentConfig, FoldSeed};
use crate::findings::{
    self, ArmSpread, COMPARED_METRICS, ClsSummary, ComparisonInput, PRIMARY_METRIC, format_p,
    signed,
};
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
    /// The clip, fold group (patient, else clip) and probe of each test example.
    pub clips: Vec<String>,
    pub groups: Vec<String>,
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
        let groups = rows.iter().map(|r| r.group.clone()).collect();
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
            groups,
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

/// `Some(v)` for a finite value, `None` for an undefined one (NaN).
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The cells of `arm`.
fn cells_of<'a>(
    cells: &'a [ClsCellResult],
    arm: &'a str,
) -> impl Iterator<Item = &'a ClsCellResult> + 'a {
    cells.iter().filter(move |c| c.arm == arm)
}

/// The classifier arms with at least one complete cell, in file order.
fn arms_with_cells<'a>(experiment: &'a ExperimentConfig, cells: &[ClsCellResult]) -> Vec<&'a str> {
    experiment
        .grid
        .arms
        .iter()
        .map(|a| a.name.as_str())
        .filter(|a| cells.iter().any(|c| c.arm == *a))
        .collect()
}

/// The pairs of arms (among `arms`, those with cells) the report compares: the planned
/// `grid.comparisons`, else every pair in arm order.
fn compared_pairs<'a>(
    experiment: &'a ExperimentConfig,
    arms: &[&'a str],
) -> Vec<(&'a str, &'a str)> {
    if experiment.grid.comparisons.is_empty() {
        arms.iter()
            .enumerate()
            .flat_map(|(i, &a)| arms[i + 1..].iter().map(move |&b| (a, b)))
            .collect()
    } else {
        experiment
            .grid
            .comparisons
            .iter()
            .map(|[a, b]| (a.as_str(), b.as_str()))
            .filter(|(a, b)| arms.contains(a) && arms.contains(b))
            .collect()
    }
}

/// `n_test / n_train` of a cell of k-fold cross-validation: `1 / (k − 1)` (the training side
/// of a cell is everything outside its test fold, its validation part included).
fn test_train_ratio(experiment: &ExperimentConfig) -> f64 {
    1.0 / (experiment.grid.folds as f64 - 1.0)
}

/// The arms, their spread of balanced accuracy, and every comparison of two arms on every
/// metric of [`COMPARED_METRICS`] over the (seed, fold) cells both finished (corrected
/// resampled t-test, Holm-adjusted over the whole table): what the comparison table, the
/// warnings and the findings read.
pub fn summarize_arms(
    experiment: &ExperimentConfig,
    cells: &[ClsCellResult],
) -> anyhow::Result<ClsSummary> {
    let arms = arms_with_cells(experiment, cells);
    let mut inputs = Vec::new();
    for (a, b) in compared_pairs(experiment, &arms) {
        for metric in COMPARED_METRICS {
            let cv_cells = cells_of(cells, a)
                .filter_map(|ca| {
                    let cb = cells_of(cells, b).find(|c| c.seed == ca.seed && c.fold == ca.fold)?;
                    Some(CvCell {
                        repetition: ca.seed,
                        fold: ca.fold,
                        x: finite(ca.metric(metric)),
                        y: finite(cb.metric(metric)),
                    })
                })
                .collect();
            inputs.push(ComparisonInput {
                first: a.to_string(),
                second: b.to_string(),
                metric: metric.to_string(),
                cells: cv_cells,
            });
        }
    }
    let spreads = arms
        .iter()
        .map(|arm| {
            let values: Vec<f64> = cells_of(cells, arm)
                .filter_map(|c| finite(c.metric(PRIMARY_METRIC)))
                .collect();
            let s = summarize(&values);
            ArmSpread {
                arm: arm.to_string(),
                cells: s.n,
                mean: s.mean,
                std: s.std,
            }
        })
        .collect();
    Ok(ClsSummary {
        arms: arms.iter().map(|a| a.to_string()).collect(),
        spreads,
        comparisons: findings::compare(&inputs, test_train_ratio(experiment))?,
    })
}

/// Writes the classification section's figures and tables into the staged report folder and
/// returns its markdown. `summary` is [`summarize_arms`] of the same cells.
pub fn classification_section(
    experiment: &ExperimentConfig,
    cells: &[ClsCellResult],
    summary: &ClsSummary,
    report_dir: &Path,
    figures: &Path,
) -> anyhow::Result<String> {
    let names = experiment.class_names();
    let arms = arms_with_cells(experiment, cells);
    let mut md = intro(experiment, cells);
    write_results_table(cells, report_dir)?;
    md.push_str(&per_arm_table(cells, &arms, &names));
    md.push_str(&comparisons_table(experiment, summary));
    md.push_str(&pooled_section(experiment, cells, &arms, &names, figures)?);
    md.push_str(&levels_section(
        experiment, cells, &arms, &names, report_dir,
    )?);
    md.push_str(&bars_figure(cells, &arms, figures)?);
    md.push_str(&learning_curves_figure(cells, &arms, figures)?);
    let _ = writeln!(
        md,
        "Every cell's test metrics: `cls_results.csv` / `cls_results.parquet` (columns `arm, seed, fold, best_epoch, test_examples`, then the metrics); \
         per-example predictions in each cell's `test/predictions.csv`."
    );
    Ok(md)
}

/// The section's title and what was trained on what.
fn intro(experiment: &ExperimentConfig, cells: &[ClsCellResult]) -> String {
    let mut md = String::new();
    let names = experiment.class_names();
    let total = experiment.grid.arms.len() * experiment.grid.seeds.len() * experiment.grid.folds;
    let _ = writeln!(
        md,
        "## Reverse transfer: diagnosis ({})\n",
        names.join(" / ")
    );
    let Some(c) = experiment.classify.as_ref() else {
        return md;
    };
    let arms = experiment
        .grid
        .arms
        .iter()
        .map(|a| {
            format!(
                "**{}** ({}{})",
                a.name,
                match (a.pretrain_arm(), &a.real_unlabelled) {
                    (Some(p), Some(st)) => format!(
                        "the U-Net of pretraining arm {p}, self-trained on each cell's unlabelled \
                         real training frames: {} epochs at {} x its learning rate, class-balanced \
                         pseudo-labels keeping the most confident {:.0} % of each class's pixels \
                         (thresholds capped at {}), {} labelled scanner frame(s) per real frame",
                        st.epochs,
                        st.lr_factor,
                        100.0 * st.portion,
                        st.max_threshold,
                        st.scanner_per_real
                    ),
                    (Some(p), None) => format!("the U-Net of pretraining arm {p}"),
                    (None, _) => "a freshly initialised U-Net".to_string(),
                },
                if a.classifier.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", classifier overrides `{}`",
                        a.classifier.to_string().trim().replace('\n', "; ")
                    )
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        md,
        "Each arm's U-Net becomes a classifier (head on the `{:?}` output, freeze `{:?}`, {} head \
         channels) trained {} epochs (batch {}, lr {:e}, best epoch by `{}` on the validation \
         part) on {} in {} stratified folds{}: fold f is the test set of cell f; \
         the other folds are split {} ways the same stratified way, one part validating, the \
         rest training. Arms: {arms}. \
         {} of {total} cells are complete; every number below is over those.\n",
        c.classifier.head,
        c.classifier.freeze,
        c.classifier.head_channels,
        c.train.epochs,
        c.train.batch_size,
        c.train.lr,
        c.train
            .best_metric_or(lus_train::CLASSIFICATION_BEST_METRIC),
        crate::dataset::pool_description(experiment),
        experiment.grid.folds,
        match experiment.grid.fold_seed {
            FoldSeed::PerSeed => " drawn anew for each seed (repeated k-fold)",
            FoldSeed::Fixed => ", the same folds for every seed (`grid.fold_seed = \"fixed\"`)",
        },
        experiment.grid.inner_folds,
        cells.len(),
    );
    md
}

/// `cls_results.{csv,parquet}`: every cell's one-row test metrics.
fn write_results_table(cells: &[ClsCellResult], report_dir: &Path) -> anyhow::Result<()> {
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
    Ok(())
}

/// Per-arm means over seeds x folds of the headline and per-class metrics.
fn per_arm_table(cells: &[ClsCellResult], arms: &[&str], names: &[String]) -> String {
    let mut md = String::new();
    let mut metrics: Vec<String> = HEADLINE.iter().map(|s| s.to_string()).collect();
    for n in names {
        metrics.push(format!("recall_{n}"));
        metrics.push(format!("specificity_{n}"));
    }
    let _ = writeln!(
        md,
        "### Test metrics per arm (mean ± std over seeds × folds)\n"
    );
    let mut header = String::from("| metric |");
    let mut rule = String::from("|---|");
    for arm in arms {
        let _ = write!(header, " {arm} (n={}) |", cells_of(cells, arm).count());
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for metric in &metrics {
        let mut line = format!("| {metric} |");
        for arm in arms {
            let values: Vec<f64> = cells_of(cells, arm).map(|c| c.metric(metric)).collect();
            let _ = write!(line, " {} |", mean_std(&values));
        }
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(md);
    md
}

/// The header of the comparison table (also what the end-to-end test looks for).
pub const COMPARISON_HEADER: &str = "| comparison | metric | cells | mean difference ± std | 95% CI of the mean difference | corrected t (df) | raw p | Holm-adjusted p |";

/// The comparisons of every pair of arms: corrected resampled t-test over CV cells, interval,
/// raw and Holm-adjusted p.
fn comparisons_table(experiment: &ExperimentConfig, summary: &ClsSummary) -> String {
    let mut md = String::from("### Comparisons over cross-validation cells\n\n");
    if let Some(text) = crate::findings::no_comparison(&summary.arms) {
        let _ = writeln!(md, "{text}\n");
        return md;
    }
    let k = experiment.grid.folds;
    let family = summary
        .comparisons
        .iter()
        .filter(|c| c.no_test.is_none())
        .count();
    let _ = writeln!(
        md,
        "Difference = first arm minus second, over the (seed, fold) cells both arms finished; \
         a cell where the metric is undefined in one arm (NaN, e.g. an AUC with a class absent \
         from the test fold) is dropped and counted. The cells of a cross-validation share \
         training data, so their differences are correlated and a plain paired t-test or \
         Wilcoxon test over them understates the variance and rejects too often. The corrected \
         resampled t-test (Nadeau & Bengio 2003; Bouckaert & Frank 2004) replaces the 1/n of \
         the variance of the mean by 1/n + n_test/n_train, here 1/n + 1/{} for {k} folds (the \
         training side of a cell is everything outside its test fold, its validation part \
         included); t = mean / sqrt((1/n + 1/{}) · var), df = n − 1, two-sided. 95% CI = mean \
         ± t(0.975, df) · sqrt((1/n + 1/{}) · var). Holm-adjusted p: Holm-Bonferroni over the \
         {family} tested comparisons of this table ({} on {}).{}\n",
        k - 1,
        k - 1,
        k - 1,
        if experiment.grid.comparisons.is_empty() {
            "every pair of arms".to_string()
        } else {
            format!(
                "the {} planned comparisons of `grid.comparisons`, no other pair",
                experiment.grid.comparisons.len()
            )
        },
        COMPARED_METRICS.join(", "),
        match experiment.grid.fold_seed {
            FoldSeed::PerSeed => "",
            FoldSeed::Fixed =>
                " With `grid.fold_seed = \"fixed\"` every seed tests on the same folds, so \
                 the seeds replicate the training only, not the split: read the p-values as \
                 optimistic.",
        }
    );
    let _ = writeln!(
        md,
        "{COMPARISON_HEADER}\n|---|---|---:|---:|---:|---:|---:|---:|"
    );
    for c in &summary.comparisons {
        let cells = if c.dropped > 0 {
            format!("{} ({} dropped)", c.cells, c.dropped)
        } else {
            c.cells.to_string()
        };
        let std = if c.std_difference.is_nan() {
            "-".to_string()
        } else {
            format!("{:.3}", c.std_difference)
        };
        let ci = if c.lower.is_nan() {
            "-".to_string()
        } else {
            format!("[{}, {}]", signed(c.lower), signed(c.upper))
        };
        let t = if c.statistic.is_nan() {
            format!("- ({})", c.no_test.as_deref().unwrap_or("no test"))
        } else {
            format!("{:.2} ({})", c.statistic, c.df).replacen('-', "−", 1)
        };
        let _ = writeln!(
            md,
            "| {} | {} | {cells} | {} ± {std} | {ci} | {t} | {} | {} |",
            c.label(),
            c.metric,
            signed(c.mean_difference),
            format_p(c.p_value),
            format_p(c.holm_p),
        );
    }
    let _ = writeln!(md);
    md
}

/// One arm's test predictions of one seed, pooled over its folds.
struct Pooled<'a> {
    arm: &'a str,
    seed: u64,
    predictions: Predictions,
    /// The fold group (patient, else clip) of each example: the independent unit.
    groups: Vec<&'a str>,
    /// Macro AUC of each fold model on its own test fold.
    fold_auc: FoldAuc,
}

impl Pooled<'_> {
    fn units(&self) -> usize {
        self.groups
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    }
}

/// Every arm's pooled predictions of every seed, in seed then arm order.
fn pool_by_seed<'a>(
    experiment: &ExperimentConfig,
    cells: &'a [ClsCellResult],
    arms: &[&'a str],
) -> anyhow::Result<Vec<Pooled<'a>>> {
    let mut pooled = Vec::new();
    for &seed in &experiment.grid.seeds {
        for &arm in arms {
            let folds: Vec<&ClsCellResult> =
                cells_of(cells, arm).filter(|c| c.seed == seed).collect();
            if folds.is_empty() {
                continue;
            }
            let (mut truth, mut rows, mut groups) = (Vec::new(), Vec::new(), Vec::new());
            let mut per_fold = Vec::new();
            for c in &folds {
                truth.extend_from_slice(&c.truth);
                rows.extend(c.probabilities.iter().cloned());
                groups.extend(c.groups.iter().map(String::as_str));
                per_fold.push(Predictions::from_rows(&c.truth, &c.probabilities)?);
            }
            pooled.push(Pooled {
                arm,
                seed,
                predictions: Predictions::from_rows(&truth, &rows)?,
                groups,
                fold_auc: fold_averaged_auc(&per_fold)?,
            });
        }
    }
    Ok(pooled)
}

/// Pooled out-of-fold predictions per arm and seed: cluster-bootstrap intervals over the
/// independent units, the pooled and the fold-averaged macro AUC; ROC and confusion figures
/// of the first seed with results.
fn pooled_section(
    experiment: &ExperimentConfig,
    cells: &[ClsCellResult],
    arms: &[&str],
    names: &[String],
    figures: &Path,
) -> anyhow::Result<String> {
    let mut md = String::new();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pooled = pool_by_seed(experiment, cells, arms)?;
    let Some(first_seed) = pooled.first().map(|p| p.seed) else {
        return Ok(md);
    };
    let settings = BootstrapSettings::default();
    let mut units: Vec<usize> = pooled.iter().map(Pooled::units).collect();
    units.dedup();
    let _ = writeln!(
        md,
        "### Pooled test predictions per seed (every pool example once, from the fold that tested it)\n\n\
         {:.0}% percentile-bootstrap intervals from {} resamples of the {} independent units \
         (patients or clips; a scanner image is its own unit): a resample draws whole units, \
         every example of a drawn unit with it, since frames of one clip or clips of one \
         patient are not independent evidence. The pooled macro AUC ranks the probabilities \
         of the {} fold models together, whose scales need not agree; the macro AUC, mean over \
         folds, is each fold model's AUC on its own test fold, mean ± std over the folds.\n",
        settings.confidence * 100.0,
        settings.resamples,
        match units.as_slice() {
            [n] => n.to_string(),
            _ => "(column units)".to_string(),
        },
        experiment.grid.folds,
    );
    let _ = writeln!(
        md,
        "| arm | seed | examples | units | accuracy | balanced accuracy | macro F1 | pooled macro AUC | macro AUC, mean over folds |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for p in &pooled {
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        let intervals = p
            .predictions
            .cluster_bootstrap(&p.groups, &name_refs, &settings, &mut rng)?;
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
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.arm,
            p.seed,
            p.predictions.num_examples(),
            p.units(),
            cell("accuracy"),
            cell("balanced_accuracy"),
            cell("macro_f1"),
            cell("macro_auc"),
            mean_std(&p.fold_auc.per_fold),
        );
    }
    let _ = writeln!(md);
    let shown: Vec<&Pooled> = pooled.iter().filter(|p| p.seed == first_seed).collect();
    md.push_str(&pooled_figures(&shown, names, figures)?);
    Ok(md)
}

/// Confusion matrices and per-class ROC curves of pooled predictions of one seed.
fn pooled_figures(pooled: &[&Pooled], names: &[String], figures: &Path) -> anyhow::Result<String> {
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let Some(seed) = pooled.first().map(|p| p.seed) else {
        return Ok(String::new());
    };
    for p in pooled {
        plot_confusion_matrix(
            &figures.join(format!("confusion-{}.png", p.arm)),
            &format!("{}: pooled test predictions (seed {seed})", p.arm),
            &p.predictions.metrics().confusion,
            &name_refs,
        )?;
    }
    for (k, class) in names.iter().enumerate() {
        let curves: Vec<(String, lus_metrics::RocCurve)> = pooled
            .iter()
            .map(|p| Ok((p.arm.to_string(), p.predictions.roc_curve(k)?)))
            .collect::<anyhow::Result<_>>()?;
        let refs: Vec<(&str, &lus_metrics::RocCurve)> =
            curves.iter().map(|(n, c)| (n.as_str(), c)).collect();
        plot_roc_curves(
            &figures.join(format!("roc-{class}.png")),
            &format!("ROC, {class} vs rest (pooled test, seed {seed})"),
            &refs,
        )?;
    }
    Ok(format!(
        "ROC curves and confusion matrices of the pooled test predictions of seed {seed}:\n\n{}\n\n{}\n\n",
        names
            .iter()
            .map(|c| format!("![ROC {c}](figures/roc-{c}.png)"))
            .collect::<Vec<_>>()
            .join(" "),
        pooled
            .iter()
            .map(|p| format!("![confusion {a}](figures/confusion-{a}.png)", a = p.arm))
            .collect::<Vec<_>>()
            .join(" ")
    ))
}

/// Bars: the compared metrics per arm, mean ± std over cells.
fn bars_figure(cells: &[ClsCellResult], arms: &[&str], figures: &Path) -> anyhow::Result<String> {
    let groups: Vec<&str> = COMPARED_METRICS.to_vec();
    let stats: Vec<(Vec<f64>, Vec<f64>)> = arms
        .iter()
        .map(|arm| {
            groups
                .iter()
                .map(|m| {
                    let s = summarize(
                        &cells_of(cells, arm)
                            .map(|c| c.metric(m))
                            .collect::<Vec<_>>(),
                    );
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
    if series.is_empty() {
        return Ok(String::new());
    }
    plot_bars(
        &figures.join("cls-bars.png"),
        "test metrics per arm (mean ± std over seeds × folds)",
        "score",
        &groups,
        &series,
    )?;
    Ok("![bars](figures/cls-bars.png)\n\n".to_string())
}

/// Learning curves: validation balanced accuracy per epoch, mean over each arm's cells.
fn learning_curves_figure(
    cells: &[ClsCellResult],
    arms: &[&str],
    figures: &Path,
) -> anyhow::Result<String> {
    let mut curves: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for arm in arms {
        let histories: Vec<&MetricsTable> = cells_of(cells, arm).map(|c| &c.history).collect();
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
    if curves.is_empty() {
        return Ok(String::new());
    }
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
    Ok("![learning curves](figures/cls-learning-curves.png)\n\n".to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_comparisons_replace_every_pair() {
        let text =
            "[classify.train]\nepochs = 1\n[grid]\narms = [\"dense\", \"sparse\", \"none\"]\n";
        let all = ExperimentConfig::from_toml_str(text, &[]).unwrap();
        assert_eq!(
            compared_pairs(&all, &["dense", "sparse", "none"]),
            [("dense", "sparse"), ("dense", "none"), ("sparse", "none")]
        );
        let planned = ExperimentConfig::from_toml_str(
            text,
            &["grid.comparisons=[[\"none\", \"dense\"], [\"sparse\", \"dense\"]]".into()],
        )
        .unwrap();
        assert_eq!(
            compared_pairs(&planned, &["dense", "sparse", "none"]),
            [("none", "dense"), ("sparse", "dense")]
        );
        // An arm without finished cells drops out of the comparisons it is in.
        assert_eq!(
            compared_pairs(&planned, &["dense", "none"]),
            [("none", "dense")]
        );
        // Cells do not carry the comparisons: adding them changes no cell.
        let arm = &planned.grid.arms[0];
        let cell = crate::cls_cell::cls_cell_config(&planned, arm, None, 0, 0);
        assert!(cell.grid.comparisons.is_empty());
        assert_eq!(
            cell,
            crate::cls_cell::cls_cell_config(&all, arm, None, 0, 0)
        );
    }
}
