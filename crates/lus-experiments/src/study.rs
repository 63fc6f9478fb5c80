//! `lus run FILE`: every cell of an experiment's grid (arm x seed), then the report;
//! `lus report FILE`: the report from whatever cells are complete.
//!
//! Cells live in `<runs_dir>/<name>/pretrain/<arm>-seed<seed>/` (see [`crate::seg_cell`]).
//! A complete cell is skipped, an interrupted one resumes from its last epoch, so a killed
//! `lus run` continues where it stopped when run again.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use lus_data::LabelMode;
use lus_train::StopRequest;

use crate::cls_cell::{cls_cell_config, cls_cell_dir, run_cls_cell};
use crate::config::ExperimentConfig;
use crate::dataset::ClassifyPool;
use crate::dataset::Dataset;
use crate::report::{CellResult, write_report};
use crate::report_cls::load_cls_cells;
use crate::seg_cell::{best_checkpoint, cell_config, is_complete, run_cell};
use lus_data::splits::stratified_group_kfold;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Experiment file (TOML).
    file: PathBuf,
    /// Override a config value: --set pretrain.train.epochs=3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    quiet: bool,
    /// Run only cells i with i mod N == K (K in 0..N; for job arrays), and no report (merge
    /// with `lus report` when all shards are done). Cells are numbered pretraining first.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Which cells: the segmentation pretraining, the classification, or all.
    #[arg(long, value_enum, default_value = "all")]
    stage: Stage,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Pretrain,
    Classify,
    All,
}

fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let (k, n) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: expected K/N, e.g. 0/4"))?;
    let k: usize = k
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: K is not a number"))?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: N is not a number"))?;
    if n == 0 || k >= n {
        return Err(format!("{text:?}: need 0 <= K < N"));
    }
    Ok((k, n))
}

/// The folder of one pretraining cell.
pub fn cell_dir(experiment: &ExperimentConfig, arm: LabelMode, seed: u64) -> PathBuf {
    experiment
        .runs_root()
        .join("pretrain")
        .join(format!("{arm}-seed{seed}"))
}

fn cells(experiment: &ExperimentConfig) -> Vec<(LabelMode, u64)> {
    let mut cells = Vec::new();
    for &seed in &experiment.grid.seeds {
        for arm in experiment.grid.pretrain_modes() {
            cells.push((arm, seed));
        }
    }
    cells
}

/// Runs the cells, then writes the report. A raised `stop` ends the cell under way with its
/// checkpoint saved (or, between cells, before the next one starts), as an error.
pub fn run(args: RunArgs, stop: &StopRequest) -> anyhow::Result<()> {
    let started = Instant::now();
    let experiment = ExperimentConfig::load(&args.file, &args.overrides)?;
    lus_train::parse_device(&experiment.pretrain.train.device)?;
    if let Some(c) = &experiment.classify {
        lus_train::parse_device(&c.train.device)?;
    }
    let data = Dataset::load(&experiment.dataset)?;
    let in_shard = |i: usize| args.shard.is_none_or(|(k, n)| i % n == k);
    let seg_cells = cells(&experiment);
    let mut index = 0;
    if args.stage != Stage::Classify {
        for &(arm, seed) in &seg_cells {
            if in_shard(index) {
                if !args.quiet {
                    eprintln!(
                        "pretraining cell {}/{}: {arm} labels, seed {seed}",
                        index + 1,
                        seg_cells.len()
                    );
                }
                check_stop(stop)?;
                let cell = cell_config(&experiment, arm, seed);
                run_cell(
                    &cell,
                    &data,
                    &cell_dir(&experiment, arm, seed),
                    args.quiet,
                    stop,
                )?;
            }
            index += 1;
        }
    } else {
        index += seg_cells.len();
    }
    if experiment.classify.is_some() && args.stage != Stage::Pretrain {
        check_backbones(&experiment, index, &in_shard)?;
        let pool = ClassifyPool::for_experiment(&experiment)?;
        let folds = stratified_group_kfold(
            &pool.labels,
            &pool.groups,
            experiment.grid.folds,
            experiment.dataset.seed,
        )?;
        let total =
            experiment.grid.seeds.len() * experiment.grid.folds * experiment.grid.arms.len();
        let mut n = 0;
        for &seed in &experiment.grid.seeds {
            for fold in 0..experiment.grid.folds {
                for arm in &experiment.grid.arms {
                    n += 1;
                    if in_shard(index) {
                        check_stop(stop)?;
                        if !args.quiet {
                            eprintln!(
                                "classification cell {n}/{total}: {}, seed {seed}, fold {fold}",
                                arm.name
                            );
                        }
                        let backbone = match arm.pretrain.label_mode() {
                            Some(mode) => {
                                let dir = cell_dir(&experiment, mode, seed);
                                if !is_complete(&dir, &cell_config(&experiment, mode, seed))? {
                                    bail!(
                                        "arm {} needs the {mode} pretraining of seed {seed} ({}), which is not complete; \
                                         run the pretraining stage first",
                                        arm.name,
                                        dir.display()
                                    );
                                }
                                Some(best_checkpoint(&dir))
                            }
                            None => None,
                        };
                        let cell = cls_cell_config(&experiment, arm, seed, fold);
                        run_cls_cell(
                            &cell,
                            &pool,
                            &folds,
                            backbone.as_deref(),
                            &cls_cell_dir(&experiment, &arm.name, seed, fold),
                            args.quiet,
                            stop,
                        )?;
                    }
                    index += 1;
                }
            }
        }
    }
    if args.shard.is_some() {
        eprintln!(
            "shard done; write the report with `lus report {}` when every shard is",
            args.file.display()
        );
        return Ok(());
    }
    let results = load_complete(&experiment)?;
    write_report_from(&experiment, &data, results, "lus run", started)
}

/// An error once `stop` is raised: checked before each cell, so a stop that arrives between
/// the trainer's last check and the end of a cell (its test evaluation) ends the run there.
fn check_stop(stop: &StopRequest) -> anyhow::Result<()> {
    match stop.raised() {
        Some(signal) => bail!(
            "interrupted by {} between cells; the finished cells are kept: run the same command \
             again to continue",
            lus_train::error::signal_name(signal)
        ),
        None => Ok(()),
    }
}

/// Checks, before the first classification cell writes anything, that every pretrained
/// backbone the classification cells of this shard need is complete and that its weights load
/// into the experiment's U-Net (every tensor present, with its shape and dtype). Without this a
/// truncated or mismatched `best.safetensors` would be found only after a cell had written its
/// resolved config and split, and after the cells before it had run. `first_index` is the
/// number of the first classification cell (cells are numbered pretraining first).
fn check_backbones(
    experiment: &ExperimentConfig,
    first_index: usize,
    in_shard: &dyn Fn(usize) -> bool,
) -> anyhow::Result<()> {
    let mut needed: Vec<(String, LabelMode, u64)> = Vec::new();
    let mut index = first_index;
    for &seed in &experiment.grid.seeds {
        for _fold in 0..experiment.grid.folds {
            for arm in &experiment.grid.arms {
                if let Some(mode) = arm.pretrain.label_mode()
                    && in_shard(index)
                    && !needed.iter().any(|(_, m, s)| (*m, *s) == (mode, seed))
                {
                    needed.push((arm.name.clone(), mode, seed));
                }
                index += 1;
            }
        }
    }
    for (arm, mode, seed) in needed {
        let dir = cell_dir(experiment, mode, seed);
        if !is_complete(&dir, &cell_config(experiment, mode, seed))? {
            bail!(
                "arm {arm} needs the {mode} pretraining of seed {seed} ({}), which is not complete; \
                 run the pretraining stage first",
                dir.display()
            );
        }
        lus_train::SegModel::load(
            &experiment.pretrain.unet,
            &best_checkpoint(&dir),
            &candle_core::Device::Cpu,
        )
        .with_context(|| format!("the backbone of arm {arm}, seed {seed}"))?;
    }
    Ok(())
}

/// Writes the report of `experiment` from its finished pretraining cells `results` and its
/// finished classification cells (loaded here), and says where it is.
fn write_report_from(
    experiment: &ExperimentConfig,
    data: &Dataset,
    results: Vec<CellResult>,
    command: &str,
    started: Instant,
) -> anyhow::Result<()> {
    let cls_results = load_cls_cells(experiment)?;
    let path = write_report(
        experiment,
        data,
        &results,
        &cls_results,
        command,
        started.elapsed().as_secs_f64(),
    )?;
    eprintln!(
        "report of {} of {} pretraining cells and {} classification cells: {}",
        results.len(),
        cells(experiment).len(),
        cls_results.len(),
        path.join(crate::report::REPORT_FILE).display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Experiment file (TOML).
    file: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let experiment = ExperimentConfig::load(&args.file, &args.overrides)?;
    let results = load_complete(&experiment)?;
    if results.is_empty() {
        bail!(
            "{}: no complete cell yet under {}",
            args.file.display(),
            experiment.runs_root().display()
        );
    }
    let data = Dataset::load(&experiment.dataset)?;
    write_report_from(&experiment, &data, results, "lus report", started)
}

fn load_complete(experiment: &ExperimentConfig) -> anyhow::Result<Vec<CellResult>> {
    let mut results = Vec::new();
    for (arm, seed) in cells(experiment) {
        let dir = cell_dir(experiment, arm, seed);
        if is_complete(&dir, &cell_config(experiment, arm, seed))? {
            results.push(CellResult::load(arm, seed, &dir)?);
        }
    }
    Ok(results)
}
