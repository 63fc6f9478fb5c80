//! `lus run FILE`: every cell of an experiment's plan (pretraining arm x seed, then classifier
//! arm x seed x fold), then the report; `lus report FILE`: the report from whatever cells are
//! complete.
//!
//! Cells live in `<runs_dir>/<name>/pretrain/<arm>-seed<seed>/` and
//! `<runs_dir>/<name>/classify/<arm>-seed<seed>-fold<fold>/` (see [`crate::seg_cell`],
//! [`crate::cls_cell`], [`crate::plan`]). A complete cell is skipped, an interrupted one resumes
//! from its last checkpoint, so a killed `lus run` continues where it stopped when run again; a
//! cell whose configuration changed is moved aside and runs again (see [`crate::cell`]).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use lus_train::StopRequest;

use crate::cell::{OnChange, Runner};
use crate::cls_cell::run_cls_cell;
use crate::config::ExperimentConfig;
use crate::dataset::{ClassifyPool, Dataset};
use crate::lock::Lock;
use crate::plan::{Cell, CellKind, Plan};
use crate::report::{CellResult, write_report};
use crate::report_cls::{ClsCellResult, load_cls_cells};
use crate::seg_cell::{best_checkpoint, recipes_of, run_cell};
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

/// Where `lus run` keeps cells that a changed configuration superseded.
pub fn superseded_root(experiment: &ExperimentConfig) -> PathBuf {
    experiment.runs_root().join("superseded")
}

/// Runs the cells, then writes the report. A raised `stop` ends the cell under way with its
/// checkpoint saved (or, between cells, before the next one starts), as an error.
pub fn run(args: RunArgs, stop: &StopRequest) -> anyhow::Result<()> {
    let started = Instant::now();
    let experiment = ExperimentConfig::load(&args.file, &args.overrides)?;
    // Fail on the devices before drawing any data.
    experiment.pretrain.train.device.open()?;
    if let Some(c) = &experiment.classify {
        c.train.device.open()?;
    }
    let plan = Plan::new(&experiment)?;
    let runner = Runner {
        on_change: OnChange::Supersede(superseded_root(&experiment)),
        quiet: args.quiet,
        stop,
    };
    let selected: Vec<&Cell> = plan
        .shard(args.shard)
        .filter(|c| {
            !matches!(
                (&c.kind, args.stage),
                (CellKind::Pretrain { .. }, Stage::Classify)
                    | (CellKind::Classify { .. }, Stage::Pretrain)
            )
        })
        .collect();
    let (pretrain, classify): (Vec<&Cell>, Vec<&Cell>) = selected
        .into_iter()
        .partition(|c| matches!(c.kind, CellKind::Pretrain { .. }));
    let data = Dataset::load(
        &experiment.dataset,
        &recipes_of(plan.pretrain().iter().map(|c| &c.config))?,
        experiment.pretrain.train.loss.ignore_id,
    )?;
    let announce = |cell: &Cell| {
        if !args.quiet {
            eprintln!(
                "cell {}/{}: {}",
                cell.index + 1,
                plan.cells().len(),
                cell.label()
            );
        }
    };
    run_exclusively(&pretrain, args.quiet, stop, |cell| {
        announce(cell);
        run_cell(&cell.config, &data, &cell.dir, &runner)
    })?;
    if !classify.is_empty() {
        check_backbones(&plan, &classify)?;
        let pool = ClassifyPool::for_experiment(&experiment)?;
        // The outer folds of each grid seed (one split for all with `fold_seed = "fixed"`).
        let mut folds_of_seed: Vec<(u64, Vec<usize>)> = Vec::new();
        for &seed in &experiment.grid.seeds {
            let folds = stratified_group_kfold(
                &pool.labels,
                &pool.groups,
                experiment.grid.folds,
                experiment.split_seed(seed),
            )?;
            folds_of_seed.push((seed, folds));
        }
        run_exclusively(&classify, args.quiet, stop, |cell| {
            announce(cell);
            let backbone = plan.backbone_of(cell).map(|b| best_checkpoint(&b.dir));
            let folds = folds_of_seed
                .iter()
                .find(|(s, _)| *s == cell.seed())
                .map(|(_, f)| f.as_slice())
                .context("a cell of a seed outside the grid")?;
            run_cls_cell(
                &cell.config,
                &pool,
                folds,
                backbone.as_deref(),
                &data,
                &cell.dir,
                &runner,
            )
        })?;
    }
    if args.shard.is_some() {
        eprintln!(
            "shard done; write the report with `lus report {}` when every shard is",
            args.file.display()
        );
        return Ok(());
    }
    let (results, cls_results) = load_finished(&experiment, &plan)?;
    write_loaded_report(
        &experiment,
        &plan,
        &data,
        (&results, &cls_results),
        "lus run",
        started,
    )
}

/// Runs `each` on every cell while holding the cell's lock ([`crate::lock`]), so that no two
/// processes run one cell. A cell whose lock another process holds is left for later; once
/// the others are done, each such cell is waited for and then run (a cell the other process
/// completed is then found complete and skipped; one it left unfinished, killed, resumes
/// here). So every cell of `cells` is complete when this returns, and the next stage can rely
/// on it.
fn run_exclusively(
    cells: &[&Cell],
    quiet: bool,
    stop: &StopRequest,
    mut each: impl FnMut(&Cell) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut busy: Vec<&Cell> = Vec::new();
    for &cell in cells {
        check_stop(stop)?;
        match Lock::try_acquire(&cell.dir)? {
            Some(_lock) => each(cell)?,
            None => {
                if !quiet {
                    eprintln!(
                        "{}: another process is running it; back to it after the other cells",
                        cell.label()
                    );
                }
                busy.push(cell);
            }
        }
    }
    for cell in busy {
        check_stop(stop)?;
        let _lock = Lock::acquire(
            &cell.dir,
            || {
                if !quiet {
                    eprintln!(
                        "{}: waiting for the other process to finish it",
                        cell.label()
                    );
                }
            },
            || check_stop(stop),
        )?;
        each(cell)?;
    }
    Ok(())
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
/// backbone the classification cells `cells` need is complete and that its weights load into
/// its U-Net (every tensor present, with its shape and dtype). Without this a truncated or
/// mismatched `best.safetensors` would be found only after a cell had written its resolved
/// config and split, and after the cells before it had run.
fn check_backbones(plan: &Plan, cells: &[&Cell]) -> anyhow::Result<()> {
    let mut checked: Vec<usize> = Vec::new();
    for cell in cells {
        let Some(backbone) = plan.backbone_of(cell) else {
            continue;
        };
        if checked.contains(&backbone.index) {
            continue;
        }
        checked.push(backbone.index);
        if !crate::cell::is_complete(&backbone.dir, &backbone.config)? {
            bail!(
                "{} needs the {} ({}), which is not complete; run the pretraining stage first",
                cell.label(),
                backbone.label(),
                backbone.dir.display()
            );
        }
        lus_train::SegModel::load(
            &backbone.config.pretrain.unet,
            &best_checkpoint(&backbone.dir),
            &candle_core::Device::Cpu,
        )
        .with_context(|| format!("the backbone of {}", cell.label()))?;
    }
    Ok(())
}

/// The finished pretraining and classification cells of `plan`.
fn load_finished(
    experiment: &ExperimentConfig,
    plan: &Plan,
) -> anyhow::Result<(Vec<CellResult>, Vec<ClsCellResult>)> {
    Ok((load_complete(plan)?, load_cls_cells(experiment, plan)?))
}

/// Writes the report from cells loaded already, and says where it is.
fn write_loaded_report(
    experiment: &ExperimentConfig,
    plan: &Plan,
    data: &Dataset,
    (results, cls_results): (&[CellResult], &[ClsCellResult]),
    command: &str,
    started: Instant,
) -> anyhow::Result<()> {
    let path = write_report(
        experiment,
        plan,
        data,
        results,
        cls_results,
        command,
        started.elapsed().as_secs_f64(),
    )?;
    eprintln!(
        "report of {} of {} pretraining cells and {} of {} classification cells: {}",
        results.len(),
        plan.pretrain().len(),
        cls_results.len(),
        plan.classify().len(),
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
    let plan = Plan::new(&experiment)?;
    // Loaded before the data set is drawn: with no finished cell there is nothing to report.
    let (results, cls_results) = load_finished(&experiment, &plan)?;
    if results.is_empty() && cls_results.is_empty() {
        bail!(
            "{}: no complete cell yet under {}",
            args.file.display(),
            experiment.runs_root().display()
        );
    }
    let data = Dataset::load(
        &experiment.dataset,
        &recipes_of(plan.pretrain().iter().map(|c| &c.config))?,
        experiment.pretrain.train.loss.ignore_id,
    )?;
    write_loaded_report(
        &experiment,
        &plan,
        &data,
        (&results, &cls_results),
        "lus report",
        started,
    )
}

/// The finished pretraining cells of `plan` (a cell of another configuration is not one; it
/// is named on stderr).
fn load_complete(plan: &Plan) -> anyhow::Result<Vec<CellResult>> {
    let mut results = Vec::new();
    for cell in plan.pretrain() {
        match crate::cell::inspect(&cell.dir, &cell.config)? {
            crate::cell::Found::Complete => results.push(CellResult::load(cell)?),
            crate::cell::Found::Changed(keys) | crate::cell::Found::EvaluationChanged(keys) => {
                eprintln!(
                    "{}: left out of the report, its configuration differs ({}); `lus run` runs it again",
                    cell.dir.display(),
                    keys.join("; ")
                )
            }
            _ => {}
        }
    }
    Ok(results)
}
