//! What a report says about its own numbers: the comparisons of classifier arms over
//! cross-validation cells (corrected resampled t-test, Holm-adjusted p-values, intervals), the
//! `## Warnings` block (checks that fire on the numbers) and the `## Findings` text, generated
//! from the numbers and claiming nothing they do not carry.
//!
//! Everything here works on plain values (no files), so each rule is unit-tested on made-up
//! inputs; `report.rs` and `report_cls.rs` gather the values from the cells.
//!
//! The rules:
//! - **segmentation collapse**: in a pretraining cell (arm, seed), a class the arm's own
//!   labels draw scores a test Dice below [`COLLAPSE_DICE`] against the comparison truth while
//!   that truth has pixels of the class in the test set (the eval table's `truth_pixels`; where
//!   that column is missing, a defined Dice stands for "present"). A class the arm was never
//!   taught (a sparse arm has no chest-wall labels) is not a collapse.
//! - **spread larger than the difference**: an arm whose balanced accuracy varies over its
//!   cells (std over seeds x folds) by more than its mean difference to another arm.
//! - **significance lost after correction**: a comparison with raw p < [`ALPHA`] whose
//!   Holm-adjusted p is >= [`ALPHA`].
//! - **incomplete grid**: fewer complete cells than the plan has.

use std::fmt::Write as _;

use lus_metrics::stats::{
    CvCell, compare_cv_cells, corrected_t_test_detectable_difference, corrected_t_test_power,
    holm_adjust, student_t_quantile,
};

use crate::report::mean_std;

/// Significance level of the two-sided tests, before and after the Holm adjustment.
pub const ALPHA: f64 = 0.05;
/// Coverage of the intervals of mean differences.
pub const CONFIDENCE: f64 = 0.95;
/// A test Dice below this, with truth pixels present, is a collapse.
pub const COLLAPSE_DICE: f64 = 0.05;
/// The metrics every pair of classifier arms is compared on (one Holm family together).
pub const COMPARED_METRICS: [&str; 3] = ["balanced_accuracy", "macro_f1", "macro_auc"];
/// The metric of the spread warning and of the findings sentences.
pub const PRIMARY_METRIC: &str = "balanced_accuracy";
/// The power at which a design's detectable difference is stated.
pub const TARGET_POWER: f64 = 0.8;
/// The difference of the primary metric whose power the findings state: the smallest
/// balanced-accuracy difference we would call relevant between two pretrainings.
pub const REFERENCE_DIFFERENCE: f64 = 0.05;

/// The cells of one comparison: `first − second` on `metric`, one [`CvCell`] per (seed,
/// fold) both arms finished, `None` where the metric is undefined (NaN) in an arm.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonInput {
    pub first: String,
    pub second: String,
    pub metric: String,
    pub cells: Vec<CvCell>,
}

/// One row of the comparison table.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub first: String,
    pub second: String,
    pub metric: String,
    /// Cells the test used.
    pub cells: usize,
    /// Cells both arms finished but with the metric undefined in one of them.
    pub dropped: usize,
    /// Mean and sample std of the per-cell differences `first − second`.
    pub mean_difference: f64,
    pub std_difference: f64,
    /// [`CONFIDENCE`] interval of the mean difference from the corrected variance.
    pub lower: f64,
    pub upper: f64,
    /// Corrected t statistic and its degrees of freedom.
    pub statistic: f64,
    pub df: f64,
    /// Two-sided raw p-value, and Holm-adjusted over every comparison of the table.
    pub p_value: f64,
    pub holm_p: f64,
    /// The smallest true difference the corrected test detects with probability
    /// [`TARGET_POWER`] at level [`ALPHA`] (before Holm), given these cells and the observed
    /// std of their differences; NaN without a test or with zero spread.
    pub detectable_difference: f64,
    /// The test's power against a true difference of [`REFERENCE_DIFFERENCE`] (same model).
    pub power_at_reference: f64,
    /// Why there is no p-value, if there is none.
    pub no_test: Option<String>,
}

impl Comparison {
    /// `first − second`.
    pub fn label(&self) -> String {
        format!("{} − {}", self.first, self.second)
    }
}

/// The corrected resampled t-test (Nadeau-Bengio, Bouckaert-Frank) of every input with the
/// test/train size ratio of a cell (`1 / (folds − 1)` for k-fold), its interval, and the
/// Holm-adjusted p-values over all of them (a comparison without a test is not counted).
pub fn compare(
    inputs: &[ComparisonInput],
    test_train_ratio: f64,
) -> anyhow::Result<Vec<Comparison>> {
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        let used: Vec<f64> = input
            .cells
            .iter()
            .filter_map(|c| Some(c.x? - c.y?))
            .collect();
        let dropped = input.cells.len() - used.len();
        let mut row = Comparison {
            first: input.first.clone(),
            second: input.second.clone(),
            metric: input.metric.clone(),
            cells: used.len(),
            dropped,
            mean_difference: f64::NAN,
            std_difference: f64::NAN,
            lower: f64::NAN,
            upper: f64::NAN,
            statistic: f64::NAN,
            df: f64::NAN,
            p_value: f64::NAN,
            holm_p: f64::NAN,
            detectable_difference: f64::NAN,
            power_at_reference: f64::NAN,
            no_test: None,
        };
        if used.len() < 2 {
            if let [d] = used.as_slice() {
                row.mean_difference = *d;
            }
            row.no_test = Some(format!(
                "{} cell(s) with both scores, fewer than 2",
                used.len()
            ));
            out.push(row);
            continue;
        }
        let test = compare_cv_cells(&input.cells, test_train_ratio)
            .map_err(|e| anyhow::anyhow!("{} on {}: {e}", row.label(), input.metric))?
            .test;
        let half = student_t_quantile(0.5 + CONFIDENCE / 2.0, test.df)
            * (test.correction * test.std_difference * test.std_difference).sqrt();
        row.mean_difference = test.mean_difference;
        row.std_difference = test.std_difference;
        row.lower = test.mean_difference - half;
        row.upper = test.mean_difference + half;
        row.statistic = test.statistic;
        row.df = test.df;
        row.p_value = test.p_value;
        row.no_test = test.undefined.map(str::to_string);
        if test.std_difference > 0.0 {
            // Observed spread taken as the true one: a post-hoc figure of what this design
            // can resolve, not a claim about the effect.
            row.detectable_difference = corrected_t_test_detectable_difference(
                test.std_difference,
                test.cells,
                test_train_ratio,
                ALPHA,
                TARGET_POWER,
            )?;
            row.power_at_reference = corrected_t_test_power(
                REFERENCE_DIFFERENCE,
                test.std_difference,
                test.cells,
                test_train_ratio,
                ALPHA,
            )?;
        }
        out.push(row);
    }
    let raw: Vec<f64> = out.iter().map(|c| c.p_value).collect();
    for (c, p) in out.iter_mut().zip(holm_adjust(&raw)?) {
        c.holm_p = p;
    }
    Ok(out)
}

/// `+0.072` / `−0.031` (a real minus sign), `-` for NaN.
pub fn signed(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 0.0 {
        format!("−{:.3}", -v)
    } else {
        format!("+{v:.3}")
    }
}

/// A p-value: three decimals, scientific under 0.001, `-` for NaN.
pub fn format_p(p: f64) -> String {
    if p.is_nan() {
        "-".into()
    } else if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

/// Mean and spread of one classifier arm's primary metric over its cells.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmSpread {
    pub arm: String,
    /// Cells with a defined value.
    pub cells: usize,
    pub mean: f64,
    /// Sample std over the cells (seeds x folds).
    pub std: f64,
}

/// The classification side of the report's checks and text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClsSummary {
    /// Classifier arms with at least one complete cell, in file order.
    pub arms: Vec<String>,
    /// Per arm, its [`PRIMARY_METRIC`].
    pub spreads: Vec<ArmSpread>,
    /// Every pair of arms on every metric of [`COMPARED_METRICS`], one Holm family.
    pub comparisons: Vec<Comparison>,
}

/// One class of one pretraining cell against the comparison truth.
#[derive(Debug, Clone, PartialEq)]
pub struct SegScore {
    pub arm: String,
    pub seed: u64,
    pub class: String,
    /// Whether the arm's own training labels draw the class.
    pub trained: bool,
    /// Pixels of the class in the truth of the test set (NaN: not recorded).
    pub truth_pixels: f64,
    pub dice: f64,
}

impl SegScore {
    /// Whether the truth has the class in the test set: truth pixels, or (where their count
    /// was not recorded) a defined Dice.
    fn truth_present(&self) -> bool {
        if self.truth_pixels.is_nan() {
            self.dice.is_finite()
        } else {
            self.truth_pixels > 0.0
        }
    }
}

/// False positives per image of one line class, per pretraining arm (one value per seed).
#[derive(Debug, Clone, PartialEq)]
pub struct LineFp {
    pub class: String,
    pub per_arm: Vec<(String, Vec<f64>)>,
}

/// Complete cells of one stage of the plan against those planned.
#[derive(Debug, Clone, PartialEq)]
pub struct Completeness {
    /// `pretraining` / `classification`.
    pub stage: String,
    pub planned: usize,
    /// Labels of the planned cells not complete.
    pub missing: Vec<String>,
}

/// Everything the warnings and the findings are computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Name of the comparison truth (the first of `evaluation.truths`).
    pub truth: String,
    /// Seeds of the grid (for "over N seeds").
    pub seeds: usize,
    /// Every (pretraining cell, foreground class) against the comparison truth.
    pub seg_scores: Vec<SegScore>,
    /// Pretraining arms with a complete cell.
    pub seg_arms: Vec<String>,
    /// Line classes the comparison truth draws.
    pub line_fp: Vec<LineFp>,
    /// `None`: the experiment has no classification stage.
    pub classification: Option<ClsSummary>,
    pub completeness: Vec<Completeness>,
}

/// Collapsed classes (see the module docs): one warning per arm and class, naming the seeds.
pub fn collapse_warnings(truth: &str, scores: &[SegScore]) -> Vec<String> {
    let collapsed: Vec<&SegScore> = scores
        .iter()
        .filter(|s| s.trained && s.truth_present() && (s.dice.is_nan() || s.dice < COLLAPSE_DICE))
        .collect();
    // (arm, class) in first-seen order.
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for s in &collapsed {
        if !keys.contains(&(s.arm.as_str(), s.class.as_str())) {
            keys.push((&s.arm, &s.class));
        }
    }
    keys.into_iter()
        .map(|(arm, class)| {
            let of: Vec<&&SegScore> = collapsed
                .iter()
                .filter(|s| s.arm == arm && s.class == class)
                .collect();
            let seeds = of
                .iter()
                .map(|s| {
                    let dice = if s.dice.is_nan() {
                        "undefined".to_string()
                    } else {
                        format!("{:.3}", s.dice)
                    };
                    let pixels = if s.truth_pixels.is_nan() {
                        String::new()
                    } else {
                        format!(", {} truth pixels", s.truth_pixels)
                    };
                    format!("seed {}: Dice {dice}{pixels}", s.seed)
                })
                .collect::<Vec<_>>()
                .join("; ");
            format!(
                "**segmentation collapse**: the **{arm}** U-Net, trained with {class} labels, \
                 scores test Dice < {COLLAPSE_DICE} on {class} against the {truth} truth, which \
                 has it in the test set ({seeds})."
            )
        })
        .collect()
}

/// Comparisons on the primary metric whose mean difference is smaller than the spread over
/// cells of one of the two arms (or both): one warning per comparison.
pub fn spread_warnings(spreads: &[ArmSpread], comparisons: &[Comparison]) -> Vec<String> {
    let mut out = Vec::new();
    for c in comparisons
        .iter()
        .filter(|c| c.metric == PRIMARY_METRIC && c.mean_difference.is_finite())
    {
        let wider: Vec<String> = [&c.first, &c.second]
            .into_iter()
            .filter_map(|arm| spreads.iter().find(|s| &s.arm == arm))
            .filter(|s| s.std.is_finite() && s.std > c.mean_difference.abs())
            .map(|s| format!("**{}** std {:.3} over {} cells", s.arm, s.std, s.cells))
            .collect();
        if !wider.is_empty() {
            out.push(format!(
                "**spread larger than the difference**: {} = {} balanced accuracy, smaller in \
                 size than the spread over cells of {}.",
                c.label(),
                signed(c.mean_difference),
                wider.join(" and ")
            ));
        }
    }
    out
}

/// Comparisons significant before the Holm adjustment and not after.
pub fn correction_warnings(comparisons: &[Comparison]) -> Vec<String> {
    comparisons
        .iter()
        .filter(|c| c.p_value < ALPHA && (c.holm_p.is_nan() || c.holm_p >= ALPHA))
        .map(|c| {
            format!(
                "**significance lost after correction**: {} on {}: raw p = {} < {ALPHA}, \
                 Holm-adjusted p = {}.",
                c.label(),
                c.metric,
                format_p(c.p_value),
                format_p(c.holm_p)
            )
        })
        .collect()
}

/// Stages with fewer complete cells than planned.
pub fn completeness_warnings(stages: &[Completeness]) -> Vec<String> {
    const NAMED: usize = 4;
    stages
        .iter()
        .filter(|s| !s.missing.is_empty())
        .map(|s| {
            let mut named = s.missing[..s.missing.len().min(NAMED)].join("; ");
            if s.missing.len() > NAMED {
                let _ = write!(named, "; and {} more", s.missing.len() - NAMED);
            }
            format!(
                "**incomplete grid**: {} of {} {} cells are complete (missing: {named}); every \
                 number of this report is over the complete cells.",
                s.planned - s.missing.len(),
                s.planned,
                s.stage
            )
        })
        .collect()
}

/// Every warning that fires, in the order of the rules.
pub fn warnings(facts: &Facts) -> Vec<String> {
    let mut out = collapse_warnings(&facts.truth, &facts.seg_scores);
    if let Some(cls) = &facts.classification {
        out.extend(spread_warnings(&cls.spreads, &cls.comparisons));
        out.extend(correction_warnings(&cls.comparisons));
    }
    out.extend(completeness_warnings(&facts.completeness));
    out
}

/// The `## Warnings` section: the rules checked, then each warning, or "None".
pub fn warnings_section(facts: &Facts) -> String {
    let fired = warnings(facts);
    let mut md = String::from("## Warnings\n\n");
    let _ = writeln!(
        md,
        "Checked on the numbers below: segmentation collapse (a class the arm's own labels \
         draw, with truth pixels in the test set (`truth_pixels` of the eval table) against the \
         {} truth, and test Dice < {COLLAPSE_DICE} in some cell){}; incomplete grids.\n",
        facts.truth,
        if facts.classification.is_some() {
            "; an arm whose balanced-accuracy spread (std over cells) exceeds its mean \
             difference to another arm; a comparison significant before (raw p < 0.05) but not \
             after the Holm adjustment"
        } else {
            ""
        }
    );
    if fired.is_empty() {
        md.push_str("None.\n\n");
    } else {
        for w in &fired {
            let _ = writeln!(md, "- {w}");
        }
        md.push('\n');
    }
    md
}

/// The findings sentence of one comparison.
pub fn comparison_sentence(c: &Comparison) -> String {
    let metric = c.metric.replace('_', " ");
    let head = format!(
        "{}: {} {metric} over {} (seed, fold) cells",
        c.label(),
        signed(c.mean_difference),
        c.cells
    );
    if let Some(why) = &c.no_test {
        return format!("{head}; no test ({why}).");
    }
    let ci = format!(
        "{:.0}% CI {} to {}",
        CONFIDENCE * 100.0,
        signed(c.lower),
        signed(c.upper)
    );
    let verdict = if c.holm_p < ALPHA {
        "significant after Holm correction"
    } else if c.p_value < ALPHA {
        "significant before but not significant after Holm correction"
    } else {
        "not significant, before or after Holm correction"
    };
    format!(
        "{head} ({ci}), {verdict} (p = {}, adjusted {}).",
        format_p(c.p_value),
        format_p(c.holm_p)
    )
}

/// The findings sentence of one line class: each arm's false positives per image, fewest
/// first (no significance claimed).
pub fn fp_sentence(truth: &str, line: &LineFp, seeds: usize) -> String {
    let mut arms: Vec<(&str, f64, String)> = line
        .per_arm
        .iter()
        .map(|(arm, values)| {
            let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
            let mean = if finite.is_empty() {
                f64::NAN
            } else {
                finite.iter().sum::<f64>() / finite.len() as f64
            };
            (arm.as_str(), mean, mean_std(values))
        })
        .filter(|(_, mean, _)| mean.is_finite())
        .collect();
    let over = if seeds > 1 {
        format!("mean ± std over {seeds} seeds")
    } else {
        "one seed".to_string()
    };
    let what = format!(
        "{}: false positives per image against the {truth} truth ({over})",
        line.class
    );
    match arms.len() {
        0 => format!("{what}: no value."),
        1 => format!(
            "{what}: {} {}; one pretraining arm, nothing to compare.",
            arms[0].0, arms[0].2
        ),
        _ => {
            arms.sort_by(|a, b| a.1.total_cmp(&b.1));
            let rounded = |v: f64| format!("{v:.3}");
            let mut chain = format!("{} {}", arms[0].0, arms[0].2);
            for pair in arms.windows(2) {
                let sign = if rounded(pair[0].1) == rounded(pair[1].1) {
                    "="
                } else {
                    "<"
                };
                let _ = write!(chain, " {sign} {} {}", pair[1].0, pair[1].2);
            }
            let tied: Vec<&str> = arms
                .iter()
                .filter(|a| rounded(a.1) == rounded(arms[0].1))
                .map(|a| a.0)
                .collect();
            let fewest = if tied.len() > 1 {
                format!("{} have the same fewest on average", tied.join(" and "))
            } else {
                format!("{} has the fewest on average", tied[0])
            };
            format!("{what}: {chain}; {fewest}.")
        }
    }
}

/// The `## Findings` section.
pub fn findings_section(facts: &Facts) -> String {
    let mut md = String::from("## Findings\n\n");
    md.push_str(
        "Generated from the tables below; each sentence states a number of a table and what \
         the test says of it, nothing more.\n\n",
    );
    if let Some(cls) = &facts.classification {
        md.push_str(&classification_findings(cls));
    }
    md.push_str(&segmentation_findings(facts));
    md
}

/// What to say instead of comparisons when fewer than two arms have results (`None` when
/// there are two or more).
pub fn no_comparison(arms: &[String]) -> Option<String> {
    match arms {
        [] => Some("No classifier arm has a complete cell: no comparison between arms.".into()),
        [one] => Some(format!(
            "One classifier arm has results ({one}): no comparison between arms."
        )),
        _ => None,
    }
}

fn classification_findings(cls: &ClsSummary) -> String {
    let mut md = String::from("**Diagnosis** (balanced accuracy, first arm minus second):\n\n");
    if let Some(text) = no_comparison(&cls.arms) {
        let _ = writeln!(md, "{text}\n");
        return md;
    }
    for c in cls
        .comparisons
        .iter()
        .filter(|c| c.metric == PRIMARY_METRIC)
    {
        let _ = writeln!(md, "- {}", comparison_sentence(c));
    }
    let family = cls
        .comparisons
        .iter()
        .filter(|c| c.no_test.is_none())
        .count();
    let _ = writeln!(
        md,
        "\nCorrected resampled t-test over the cells, two-sided, level {ALPHA}; the Holm \
         adjustment covers the {family} tested comparison(s) of the comparison table (every \
         pair of arms on {}).\n",
        COMPARED_METRICS.join(", ")
    );
    md.push_str(&power_paragraph(&cls.comparisons));
    md
}

/// What the design could have detected: per comparison on [`PRIMARY_METRIC`], the difference
/// detectable with [`TARGET_POWER`] and the power against [`REFERENCE_DIFFERENCE`], from the
/// observed spread of the cell differences.
pub fn power_paragraph(comparisons: &[Comparison]) -> String {
    let rows: Vec<&Comparison> = comparisons
        .iter()
        .filter(|c| c.metric == PRIMARY_METRIC && c.detectable_difference.is_finite())
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "**Power** of these comparisons (corrected resampled t-test, level {ALPHA}, before \
         Holm; the observed std of the per-cell differences taken as the true one, so these \
         are estimates from the study itself): the difference each would detect with {:.0} % \
         probability, and its probability of detecting a true difference of {}.\n\n\
         | comparison | cells | std of cell differences | detectable at {:.0} % power | power at {} |\n\
         |---|---:|---:|---:|---:|\n",
        TARGET_POWER * 100.0,
        signed(REFERENCE_DIFFERENCE),
        TARGET_POWER * 100.0,
        signed(REFERENCE_DIFFERENCE),
    );
    for c in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.3} | {:.2} |",
            c.label(),
            c.cells,
            c.std_difference,
            c.detectable_difference,
            c.power_at_reference
        );
    }
    let underpowered = rows
        .iter()
        .filter(|c| c.detectable_difference > REFERENCE_DIFFERENCE)
        .count();
    if underpowered > 0 {
        let _ = writeln!(
            md,
            "\n{underpowered} of {} comparison(s) cannot resolve a difference of {} with {:.0} % \
             power: a non-significant result there is not evidence of no difference.",
            rows.len(),
            signed(REFERENCE_DIFFERENCE),
            TARGET_POWER * 100.0
        );
    }
    md.push('\n');
    md
}

fn segmentation_findings(facts: &Facts) -> String {
    let mut md = String::new();
    if facts.seg_arms.is_empty() || facts.line_fp.is_empty() {
        return md;
    }
    let _ = writeln!(
        md,
        "**Segmentation** (object level, line classes; no significance test on this side):\n"
    );
    for line in &facts.line_fp {
        let _ = writeln!(md, "- {}", fp_sentence(&facts.truth, line, facts.seeds));
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(x: &[f64], y: &[f64]) -> Vec<CvCell> {
        x.iter()
            .zip(y)
            .enumerate()
            .map(|(i, (&x, &y))| CvCell {
                repetition: (i / 3) as u64,
                fold: i % 3,
                x: x.is_finite().then_some(x),
                y: y.is_finite().then_some(y),
            })
            .collect()
    }

    fn input(first: &str, second: &str, metric: &str, x: &[f64], y: &[f64]) -> ComparisonInput {
        ComparisonInput {
            first: first.into(),
            second: second.into(),
            metric: metric.into(),
            cells: cells(x, y),
        }
    }

    /// A made-up comparison row with the given p-values.
    fn row(p: f64, holm: f64) -> Comparison {
        Comparison {
            first: "dense".into(),
            second: "sparse".into(),
            metric: PRIMARY_METRIC.into(),
            cells: 6,
            dropped: 0,
            mean_difference: 0.072,
            std_difference: 0.05,
            lower: -0.03,
            upper: 0.17,
            statistic: 1.4,
            df: 5.0,
            p_value: p,
            holm_p: holm,
            detectable_difference: 0.165,
            power_at_reference: 0.12,
            no_test: None,
        }
    }

    #[test]
    fn the_power_paragraph_says_what_the_design_cannot_resolve() {
        let weak = row(0.2, 0.4);
        let mut strong = row(0.001, 0.003);
        strong.second = "none".into();
        strong.detectable_difference = 0.04;
        strong.power_at_reference = 0.93;
        let mut other_metric = row(0.2, 0.4);
        other_metric.metric = "macro_f1".into();
        let md = power_paragraph(&[weak, strong, other_metric]);
        assert!(md.contains("| 6 | 0.050 | 0.165 | 0.12 |"), "{md}");
        assert!(md.contains("| 6 | 0.050 | 0.040 | 0.93 |"), "{md}");
        assert_eq!(md.matches("\n| ").count(), 3, "header + 2 rows: {md}");
        assert!(
            md.contains("1 of 2 comparison(s) cannot resolve a difference of +0.050"),
            "{md}"
        );
        let mut untested = row(f64::NAN, f64::NAN);
        untested.detectable_difference = f64::NAN;
        assert_eq!(power_paragraph(&[untested]), "");
    }

    #[test]
    fn compare_corrects_the_variance_adjusts_and_drops_undefined_cells() {
        let x = [0.80, 0.78, 0.85, 0.83, 0.79, 0.84];
        let y = [0.75, 0.77, 0.79, 0.80, 0.74, 0.78];
        let mut auc_x = x;
        auc_x[2] = f64::NAN;
        let rows = compare(
            &[
                input("dense", "sparse", "balanced_accuracy", &x, &y),
                input("dense", "sparse", "macro_auc", &auc_x, &y),
                input("dense", "none", "macro_f1", &x[..1], &y[..1]),
            ],
            0.5,
        )
        .unwrap();
        let d: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        let mean = d.iter().sum::<f64>() / 6.0;
        let var = d.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 5.0;
        let t = mean / ((1.0 / 6.0 + 0.5) * var).sqrt();
        let r = &rows[0];
        assert!((r.statistic - t).abs() < 1e-12 && r.df == 5.0 && r.dropped == 0);
        let half = student_t_quantile(0.975, 5.0) * ((1.0 / 6.0 + 0.5) * var).sqrt();
        assert!((r.lower - (mean - half)).abs() < 1e-12);
        assert!((r.upper - (mean + half)).abs() < 1e-12);
        // The interval excludes 0 exactly when p < 0.05.
        assert_eq!(r.lower > 0.0, r.p_value < 0.05);
        // The NaN cell is dropped, not an error.
        assert_eq!((rows[1].cells, rows[1].dropped), (5, 1));
        // One cell: no test, not counted in the Holm family.
        assert!(rows[2].no_test.is_some() && rows[2].holm_p.is_nan());
        let holm = holm_adjust(&[rows[0].p_value, rows[1].p_value]).unwrap();
        assert_eq!((rows[0].holm_p, rows[1].holm_p), (holm[0], holm[1]));
        for r in &rows[..2] {
            assert!(r.holm_p >= r.p_value);
        }
        // Power from the observed spread: the detectable difference has the target power.
        let sd = var.sqrt();
        let power = corrected_t_test_power(r.detectable_difference, sd, 6, 0.5, ALPHA).unwrap();
        assert!((power - TARGET_POWER).abs() < 1e-8, "{power}");
        let at_reference = corrected_t_test_power(REFERENCE_DIFFERENCE, sd, 6, 0.5, ALPHA).unwrap();
        assert!((r.power_at_reference - at_reference).abs() < 1e-15);
        assert!(rows[2].detectable_difference.is_nan() && rows[2].power_at_reference.is_nan());
    }

    #[test]
    fn the_sentence_says_significant_or_not_from_raw_and_adjusted_p() {
        let s = comparison_sentence(&row(0.21, 0.42));
        assert!(
            s.starts_with("dense − sparse: +0.072 balanced accuracy over 6 (seed, fold) cells"),
            "{s}"
        );
        assert!(s.contains("95% CI −0.030 to +0.170"), "{s}");
        assert!(
            s.contains(
                "not significant, before or after Holm correction (p = 0.210, adjusted 0.420)"
            ),
            "{s}"
        );
        let s = comparison_sentence(&row(0.01, 0.03));
        assert!(s.contains("significant after Holm correction"), "{s}");
        assert!(!s.contains("not significant"), "{s}");
        let s = comparison_sentence(&row(0.03, 0.09));
        assert!(
            s.contains("significant before but not significant after Holm correction"),
            "{s}"
        );
        let mut none = row(f64::NAN, f64::NAN);
        none.no_test = Some("all cell differences are zero".into());
        let s = comparison_sentence(&none);
        assert!(s.contains("no test") && !s.contains("significant"), "{s}");
    }

    fn seg(arm: &str, class: &str, trained: bool, pixels: f64, dice: f64) -> SegScore {
        SegScore {
            arm: arm.into(),
            seed: 1,
            class: class.into(),
            trained,
            truth_pixels: pixels,
            dice,
        }
    }

    #[test]
    fn collapse_fires_on_a_trained_present_class_only() {
        let mut other_seed = seg("dense", "a-line", true, 900.0, 0.02);
        other_seed.seed = 2;
        let w = collapse_warnings(
            "dense",
            &[seg("dense", "a-line", true, 900.0, 0.0), other_seed],
        );
        assert_eq!(w.len(), 1, "one warning per arm and class: {w:?}");
        assert!(
            w[0].contains("**dense** U-Net")
                && w[0].contains("seed 1: Dice 0.000, 900 truth pixels; seed 2: Dice 0.020"),
            "{w:?}"
        );
        let clean = [
            // Healthy.
            seg("dense", "a-line", true, 900.0, 0.62),
            // Untrained class (a sparse arm has no chest-wall labels).
            seg("sparse", "chest-wall", false, 900.0, 0.0),
            // No truth in the test set.
            seg("dense", "effusion", true, 0.0, 0.0),
            // Count not recorded, Dice undefined: no truth.
            seg("dense", "effusion", true, f64::NAN, f64::NAN),
        ];
        assert!(collapse_warnings("dense", &clean).is_empty());
        // Count not recorded but Dice defined: present.
        assert_eq!(
            collapse_warnings("dense", &[seg("dense", "b-line", true, f64::NAN, 0.01)]).len(),
            1
        );
    }

    fn spread(arm: &str, std: f64) -> ArmSpread {
        ArmSpread {
            arm: arm.into(),
            cells: 6,
            mean: 0.8,
            std,
        }
    }

    #[test]
    fn spread_fires_when_an_arm_varies_more_than_the_difference() {
        let comparisons = [row(0.21, 0.42)];
        let w = spread_warnings(
            &[spread("dense", 0.09), spread("sparse", 0.01)],
            &comparisons,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("dense − sparse = +0.072")
                && w[0].contains("**dense** std 0.090")
                && !w[0].contains("**sparse**"),
            "{w:?}"
        );
        let both = spread_warnings(
            &[spread("dense", 0.09), spread("sparse", 0.08)],
            &comparisons,
        );
        assert_eq!(both.len(), 1, "one warning per comparison: {both:?}");
        assert!(both[0].contains("**sparse** std 0.080"), "{both:?}");
        assert!(
            spread_warnings(
                &[spread("dense", 0.05), spread("sparse", 0.01)],
                &comparisons
            )
            .is_empty()
        );
        // Other metrics do not count.
        let mut f1 = row(0.21, 0.42);
        f1.metric = "macro_f1".into();
        assert!(spread_warnings(&[spread("dense", 0.5)], &[f1]).is_empty());
    }

    #[test]
    fn lost_significance_fires_only_between_raw_and_adjusted() {
        let w = correction_warnings(&[row(0.03, 0.09)]);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("raw p = 0.030") && w[0].contains("Holm-adjusted p = 0.090"));
        assert!(
            correction_warnings(&[row(0.01, 0.03), row(0.2, 0.4), row(f64::NAN, f64::NAN)])
                .is_empty()
        );
    }

    #[test]
    fn incomplete_grids_are_named() {
        let stage = |missing: usize| Completeness {
            stage: "classification".into(),
            planned: 18,
            missing: (0..missing).map(|i| format!("cell {i}")).collect(),
        };
        assert!(completeness_warnings(&[stage(0)]).is_empty());
        let w = completeness_warnings(&[stage(6)]);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("12 of 18 classification cells") && w[0].contains("and 2 more"));
    }

    #[test]
    fn the_warnings_section_says_none_when_nothing_fires() {
        let clean = Facts {
            truth: "dense".into(),
            seeds: 2,
            classification: Some(ClsSummary {
                arms: vec!["dense".into(), "sparse".into()],
                spreads: vec![spread("dense", 0.01), spread("sparse", 0.01)],
                comparisons: vec![row(0.01, 0.03)],
            }),
            ..Facts::default()
        };
        let md = warnings_section(&clean);
        assert!(
            md.starts_with("## Warnings") && md.contains("None."),
            "{md}"
        );
        let mut bad = clean.clone();
        bad.seg_scores = vec![seg("dense", "a-line", true, 10.0, 0.0)];
        let md = warnings_section(&bad);
        assert!(
            !md.contains("None.") && md.contains("segmentation collapse"),
            "{md}"
        );
    }

    #[test]
    fn fp_sentences_order_the_arms_and_claim_no_significance() {
        let line = LineFp {
            class: "pleural-line".into(),
            per_arm: vec![
                ("dense".into(), vec![0.4, 0.9]),
                ("sparse".into(), vec![0.0, 0.0]),
            ],
        };
        let s = fp_sentence("dense", &line, 2);
        assert!(
            s.contains("sparse 0.000 ± 0.000 < dense 0.650 ± 0.354; sparse has the fewest"),
            "{s}"
        );
        assert!(!s.contains("significant"), "{s}");
        let one = LineFp {
            class: "b-line".into(),
            per_arm: vec![("dense".into(), vec![0.25])],
        };
        let s = fp_sentence("dense", &one, 1);
        assert!(s.contains("dense 0.250; one pretraining arm"), "{s}");
        let tie = LineFp {
            class: "a-line".into(),
            per_arm: vec![("a".into(), vec![0.1]), ("b".into(), vec![0.1])],
        };
        assert!(fp_sentence("dense", &tie, 1).contains("a and b have the same fewest"));
    }

    #[test]
    fn findings_with_one_arm_say_there_is_no_comparison() {
        let facts = Facts {
            truth: "dense".into(),
            seeds: 1,
            classification: Some(ClsSummary {
                arms: vec!["dense".into()],
                ..ClsSummary::default()
            }),
            ..Facts::default()
        };
        let md = findings_section(&facts);
        assert!(
            md.contains("One classifier arm has results (dense): no comparison"),
            "{md}"
        );
    }
}
