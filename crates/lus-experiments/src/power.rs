//! `lus power`: how many seeds a cross-validated comparison needs, before it is run.
//!
//! The corrected resampled t-test inflates the variance of the mean cell difference by
//! `1 / (r k) + 1 / (k − 1)`: the second term does not shrink with more seeds `r`, so the
//! power of a k-fold design has a ceiling that only more folds or a smaller spread of the
//! cell differences raise. This command prints, for a spread of the per-cell differences
//! (given, or measured between two arms of a finished study's `cls_results.csv`: a pilot), the
//! difference detectable with the target power and the power against a given difference, for
//! a range of seeds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use lus_metrics::stats::{
    corrected_t_test_detectable_difference, corrected_t_test_power, sample_std,
};

use crate::findings::{ALPHA, PRIMARY_METRIC, REFERENCE_DIFFERENCE, TARGET_POWER};

#[derive(Args, Debug)]
pub struct PowerArgs {
    /// Standard deviation of the per-cell differences between two arms (one number), or
    /// nothing with `--from`.
    #[arg(long, conflicts_with = "from")]
    std: Option<f64>,
    /// A finished study's `cls_results.csv`: the std of the per-cell differences of
    /// `--arms` on `--metric` is measured there (a pilot).
    #[arg(long, requires = "arms")]
    from: Option<PathBuf>,
    /// The two arms of `--from` to compare, `first,second`.
    #[arg(long, value_delimiter = ',')]
    arms: Vec<String>,
    /// The metric column of `--from`.
    #[arg(long, default_value = PRIMARY_METRIC)]
    metric: String,
    /// Folds of the planned design (default: the pilot's, or 5).
    #[arg(long)]
    folds: Option<usize>,
    /// Numbers of seeds (repetitions of the k-fold split) to tabulate.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 3, 5, 10, 20])]
    seeds: Vec<usize>,
    /// The true difference whose power is printed.
    #[arg(long, default_value_t = REFERENCE_DIFFERENCE)]
    effect: f64,
    /// Level of the two-sided test (before any adjustment across comparisons).
    #[arg(long, default_value_t = ALPHA)]
    alpha: f64,
    /// Target power of the detectable difference.
    #[arg(long, default_value_t = TARGET_POWER)]
    power: f64,
}

/// The spread of a pilot's cell differences.
#[derive(Debug, Clone, PartialEq)]
pub struct PilotSpread {
    /// Cells both arms have (with the metric defined).
    pub cells: usize,
    /// Folds of the pilot (its largest fold index + 1).
    pub folds: usize,
    pub mean_difference: f64,
    pub std_difference: f64,
}

/// The std of `first − second` on `metric` over the (seed, fold) cells of a
/// `cls_results.csv`; cells missing in one arm or with the metric undefined are left out.
pub fn pilot_spread(
    path: &Path,
    first: &str,
    second: &str,
    metric: &str,
) -> anyhow::Result<PilotSpread> {
    let mut reader = csv::Reader::from_path(path)
        .with_context(|| format!("{}: cannot read the results table", path.display()))?;
    let headers = reader
        .headers()
        .with_context(|| format!("{}: no header row", path.display()))?
        .clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).with_context(|| {
            format!(
                "{}: no column `{name}` (columns: {})",
                path.display(),
                headers.iter().collect::<Vec<_>>().join(", ")
            )
        })
    };
    let (arm_col, seed_col, fold_col, metric_col) = (
        column("arm")?,
        column("seed")?,
        column("fold")?,
        column(metric)?,
    );
    let mut scores: BTreeMap<(String, u64, usize), f64> = BTreeMap::new();
    let mut arms_seen = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.with_context(|| format!("{}: line {line}", path.display()))?;
        let field = |c: usize| record.get(c).unwrap_or("");
        let arm = field(arm_col).to_string();
        let seed: u64 = field(seed_col).parse().with_context(|| {
            format!(
                "{}: line {line}: seed `{}`",
                path.display(),
                field(seed_col)
            )
        })?;
        let fold: usize = field(fold_col).parse().with_context(|| {
            format!(
                "{}: line {line}: fold `{}`",
                path.display(),
                field(fold_col)
            )
        })?;
        let text = field(metric_col);
        let value: f64 = if text.is_empty() || text.eq_ignore_ascii_case("nan") {
            f64::NAN
        } else {
            text.parse().with_context(|| {
                format!(
                    "{}: line {line}: {metric} `{text}` is not a number",
                    path.display()
                )
            })?
        };
        if !arms_seen.contains(&arm) {
            arms_seen.push(arm.clone());
        }
        if scores.insert((arm.clone(), seed, fold), value).is_some() {
            bail!(
                "{}: line {line}: arm {arm}, seed {seed}, fold {fold} appears twice",
                path.display()
            );
        }
    }
    for arm in [first, second] {
        if !arms_seen.iter().any(|a| a == arm) {
            bail!(
                "{}: no arm `{arm}` (arms: {})",
                path.display(),
                arms_seen.join(", ")
            );
        }
    }
    let mut differences = Vec::new();
    let mut folds = 0;
    for ((arm, seed, fold), x) in &scores {
        if arm != first {
            continue;
        }
        folds = folds.max(fold + 1);
        if let Some(y) = scores.get(&(second.to_string(), *seed, *fold))
            && x.is_finite()
            && y.is_finite()
        {
            differences.push(x - y);
        }
    }
    if differences.len() < 2 {
        bail!(
            "{}: {first} and {second} share {} cell(s) with {metric} defined; a spread needs 2",
            path.display(),
            differences.len()
        );
    }
    Ok(PilotSpread {
        cells: differences.len(),
        folds,
        mean_difference: differences.iter().sum::<f64>() / differences.len() as f64,
        std_difference: sample_std(&differences),
    })
}

/// The table of `lus power`: per number of seeds, cells, detectable difference and power.
pub fn power_table(
    std_difference: f64,
    folds: usize,
    seeds: &[usize],
    effect: f64,
    alpha: f64,
    power: f64,
) -> anyhow::Result<String> {
    if folds < 2 {
        bail!("--folds: k-fold cross-validation needs at least 2 folds, got {folds}");
    }
    let ratio = 1.0 / (folds - 1) as f64;
    let mut md = format!(
        "| seeds | cells | detectable difference ({:.0} % power) | power at {effect} |\n\
         |---:|---:|---:|---:|\n",
        power * 100.0
    );
    for &r in seeds {
        let cells = r * folds;
        if cells < 2 {
            let _ = writeln!(md, "| {r} | {cells} | - | - |");
            continue;
        }
        let detectable =
            corrected_t_test_detectable_difference(std_difference, cells, ratio, alpha, power)?;
        let p = corrected_t_test_power(effect, std_difference, cells, ratio, alpha)?;
        let _ = writeln!(md, "| {r} | {cells} | {detectable:.3} | {p:.2} |");
    }
    // The ceiling: infinitely many seeds leave 1 / (k − 1) of the variance.
    let ceiling =
        corrected_t_test_detectable_difference(std_difference, 100_000, ratio, alpha, power)?;
    let _ = writeln!(
        md,
        "\nWith any number of seeds, {folds} folds never detect less than {ceiling:.3} with \
         {:.0} % power at this spread: the corrected variance keeps 1/(k − 1) = {ratio:.3} of \
         it. More folds or a smaller spread (larger test folds, less training noise) lower it.",
        power * 100.0
    );
    Ok(md)
}

pub fn run(args: PowerArgs) -> anyhow::Result<()> {
    let (std_difference, folds) = match (&args.from, args.std) {
        (Some(path), _) => {
            let [first, second] = args.arms.as_slice() else {
                bail!("--arms: give two arms, `first,second`");
            };
            let pilot = pilot_spread(path, first, second, &args.metric)?;
            let folds = args.folds.unwrap_or(pilot.folds);
            // Per-cell differences are dominated by the test fold's sampling noise, whose
            // variance grows with the number of folds (each test fold is 1/k of the pool).
            let scaled = pilot.std_difference * (folds as f64 / pilot.folds as f64).sqrt();
            println!(
                "Pilot {}: {first} − {second} on {}: {} cells of {} folds, mean {:+.3}, std \
                 of the cell differences {:.3}.",
                path.display(),
                args.metric,
                pilot.cells,
                pilot.folds,
                pilot.mean_difference,
                pilot.std_difference
            );
            if folds != pilot.folds {
                println!(
                    "Planned {folds} folds: std scaled by sqrt({folds}/{}) to {scaled:.3} (test \
                     folds of 1/{folds} of the same pool; an approximation).",
                    pilot.folds
                );
            }
            (scaled, folds)
        }
        (None, Some(std)) => (std, args.folds.unwrap_or(5)),
        (None, None) => bail!("give --std, or --from RESULTS.csv --arms first,second"),
    };
    if !(std_difference > 0.0 && std_difference.is_finite()) {
        bail!("the std of the cell differences is {std_difference}: it must be positive");
    }
    println!(
        "Corrected resampled t-test, two-sided, level {} (before adjustment across \
         comparisons), {folds} folds, std of the cell differences {std_difference:.3}:\n",
        args.alpha
    );
    print!(
        "{}",
        power_table(
            std_difference,
            folds,
            &args.seeds,
            args.effect,
            args.alpha,
            args.power
        )?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_the_asked_power_and_a_ceiling() {
        let md = power_table(0.03, 5, &[1, 2, 10], 0.05, 0.05, 0.8).unwrap();
        let d = corrected_t_test_detectable_difference(0.03, 10, 0.25, 0.05, 0.8).unwrap();
        let p = corrected_t_test_power(0.05, 0.03, 10, 0.25, 0.05).unwrap();
        assert!(
            md.contains(&format!("| 2 | 10 | {d:.3} | {p:.2} |")),
            "{md}"
        );
        assert!(md.contains("never detect less than"), "{md}");
        assert!(power_table(0.03, 1, &[1], 0.05, 0.05, 0.8).is_err());
    }

    #[test]
    fn the_pilot_spread_pairs_cells_and_names_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cls_results.csv");
        std::fs::write(
            &path,
            "arm,seed,fold,balanced_accuracy\n\
             dense,0,0,0.80\nsparse,0,0,0.70\n\
             dense,0,1,0.90\nsparse,0,1,0.75\n\
             dense,1,0,0.85\nsparse,1,0,NaN\n\
             dense,1,1,0.70\n",
        )
        .unwrap();
        let s = pilot_spread(&path, "dense", "sparse", "balanced_accuracy").unwrap();
        assert_eq!((s.cells, s.folds), (2, 2));
        assert!((s.mean_difference - 0.125).abs() < 1e-12);
        assert!((s.std_difference - sample_std(&[0.10, 0.15])).abs() < 1e-12);
        let err = pilot_spread(&path, "dense", "none", "balanced_accuracy").unwrap_err();
        assert!(format!("{err:#}").contains("no arm `none`"), "{err:#}");
        let err = pilot_spread(&path, "dense", "sparse", "auc").unwrap_err();
        assert!(format!("{err:#}").contains("no column `auc`"), "{err:#}");
        std::fs::write(&path, "arm,seed,fold,balanced_accuracy\ndense,x,0,0.8\n").unwrap();
        let err = pilot_spread(&path, "dense", "sparse", "balanced_accuracy").unwrap_err();
        assert!(format!("{err:#}").contains("line 2: seed `x`"), "{err:#}");
    }
}
