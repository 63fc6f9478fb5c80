//! What every cell of an experiment shares: deciding whether a cell folder already holds the
//! result a configuration asks for, and the start-up of a cell that has to run (stale temp
//! files removed, resolved config written, run clock started).
//!
//! # What a result depends on, and how it is run
//! A cell's folder holds the configuration it ran with (`config.resolved.toml`). When the same
//! cell is asked for again, the two are compared in their **result view**: the configuration
//! minus the settings that say how a cell runs, not what it computes. These **execution
//! settings** may change on a finished experiment without re-running anything:
//!
//! | key | why it does not change the numbers |
//! |---|---|
//! | `name`, `runs_dir`, `reports_dir` | where results are kept and what they are called |
//! | `*.train.device` as `cuda:N` vs `cuda`, or `auto` | only the kind of device counts (`cpu` or `cuda`): runs on one kind are bit-identical on any ordinal and any thread count |
//! | `*.train.log_every`, `*.train.checkpoint_every_steps` | when the loss is read back and `last/` is written; resumed runs are bit-identical |
//! | `*.data.prefetch` | how many batches are prepared ahead (batches are a function of seed and epoch) |
//! | `pretrain.unet.kernels` | lus's or candle's CPU kernels: the same arithmetic in another order (last-digit differences, like a thread count elsewhere) |
//! | `evaluation.overlay_examples` | the report's figure only |
//! | threads (`RAYON_NUM_THREADS`) | not in the config; every kernel is bit-identical on any count |
//! | `dataset.pocus` unless `dataset.classify_from = "pocus"` | the settings of a source the cell does not read (every pretraining cell; studies on the scanner) |
//!
//! Everything else defines the result. A finished cell whose result view differs is
//! **superseded** by `lus run`: moved whole to `<runs>/<name>/superseded/` (nothing is deleted)
//! and run again; a pretraining cell whose training is the same and only `[evaluation]`
//! differs keeps its trained network and is evaluated again. A folder given to `lus train-seg
//! --out` is never moved: a different configuration there is an error.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::{ClassifyFrom, ExperimentConfig, RESOLVED_CONFIG_FILE};
use crate::provenance::{RUN_MANIFEST_FILE, RunClock};

/// Keys (dotted paths) of execution settings, removed from the result view.
const EXECUTION_KEYS: [&str; 11] = [
    "name",
    "runs_dir",
    "reports_dir",
    "pretrain.train.log_every",
    "pretrain.train.checkpoint_every_steps",
    "pretrain.data.prefetch",
    "pretrain.unet.kernels",
    "classify.train.log_every",
    "classify.train.checkpoint_every_steps",
    "classify.data.prefetch",
    "evaluation.overlay_examples",
];

/// Keys holding a device, compared by the kind of device only.
const DEVICE_KEYS: [&str; 2] = ["pretrain.train.device", "classify.train.device"];

/// The configuration as far as it defines a cell's numbers (see the module documentation).
pub fn result_view(config: &ExperimentConfig) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::try_from(config).context("serialising the config")?;
    for key in EXECUTION_KEYS {
        remove_path(&mut table, key);
    }
    if config.dataset.classify_from != ClassifyFrom::Pocus {
        // A source the cell does not read: a changed default of the POCUS pool must not
        // re-run the scanner's cells.
        remove_path(&mut table, "dataset.pocus");
    }
    for key in DEVICE_KEYS {
        if let Some(toml::Value::String(spec)) = get_path_mut(&mut table, key) {
            let kind = lus_train::DeviceSpec::parse(spec)?.result_kind();
            *spec = kind.to_string();
        }
    }
    Ok(table)
}

/// The result view without `[evaluation]`: what a pretraining cell's training depends on.
pub fn training_view(config: &ExperimentConfig) -> anyhow::Result<toml::Table> {
    let mut table = result_view(config)?;
    table.remove("evaluation");
    Ok(table)
}

fn remove_path(table: &mut toml::Table, key: &str) {
    match key.split_once('.') {
        None => {
            table.remove(key);
        }
        Some((head, rest)) => {
            if let Some(toml::Value::Table(inner)) = table.get_mut(head) {
                remove_path(inner, rest);
            }
        }
    }
}

fn get_path_mut<'a>(table: &'a mut toml::Table, key: &str) -> Option<&'a mut toml::Value> {
    match key.split_once('.') {
        None => table.get_mut(key),
        Some((head, rest)) => match table.get_mut(head) {
            Some(toml::Value::Table(inner)) => get_path_mut(inner, rest),
            _ => None,
        },
    }
}

/// The keys whose values differ between two tables, as `key: old -> new` (at most `limit`).
pub fn differences(old: &toml::Table, new: &toml::Table, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    diff_into(old, new, "", &mut out);
    let more = out.len().saturating_sub(limit);
    out.truncate(limit);
    if more > 0 {
        out.push(format!("and {more} more"));
    }
    out
}

fn diff_into(old: &toml::Table, new: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (old.get(key), new.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                diff_into(a, b, &path, out)
            }
            (a, b) if a != b => {
                let show = |v: Option<&toml::Value>| {
                    v.map_or_else(|| "(unset)".to_string(), |v| v.to_string())
                };
                out.push(format!("{path}: {} -> {}", show(a), show(b)));
            }
            _ => {}
        }
    }
}

/// What a cell folder holds, measured against a requested configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing yet (or no resolved config: a folder from a start killed before it wrote one).
    Nothing,
    /// A finished cell of this configuration.
    Complete,
    /// An unfinished cell of this configuration: resume it.
    Unfinished,
    /// A finished pretraining cell whose training matches but whose evaluation does not:
    /// evaluate it again.
    EvaluationChanged(Vec<String>),
    /// A cell of another configuration; the differing keys.
    Changed(Vec<String>),
}

/// Compares the cell folder `dir` with `config` (see the module documentation).
pub fn inspect(dir: &Path, config: &ExperimentConfig) -> anyhow::Result<Found> {
    let path = dir.join(RESOLVED_CONFIG_FILE);
    if !path.is_file() {
        return Ok(Found::Nothing);
    }
    let existing = ExperimentConfig::load(&path, &[])
        .with_context(|| format!("{}: the cell's saved configuration", dir.display()))?;
    let (old, new) = (result_view(&existing)?, result_view(config)?);
    if old == new {
        return Ok(if dir.join(RUN_MANIFEST_FILE).is_file() {
            Found::Complete
        } else {
            Found::Unfinished
        });
    }
    if existing.classify.is_none() && training_view(&existing)? == training_view(config)? {
        // An unfinished cell resumes and evaluates under the new settings anyway.
        return Ok(if dir.join(RUN_MANIFEST_FILE).is_file() {
            Found::EvaluationChanged(differences(&old, &new, 8))
        } else {
            Found::Unfinished
        });
    }
    Ok(Found::Changed(differences(&old, &new, 8)))
}

/// Whether `dir` holds a finished cell of `config` (the report's question; a cell of another
/// configuration is not one).
pub fn is_complete(dir: &Path, config: &ExperimentConfig) -> anyhow::Result<bool> {
    Ok(inspect(dir, config)? == Found::Complete)
}

/// What to do with a cell folder that holds a cell of another configuration.
#[derive(Debug, Clone)]
pub enum OnChange {
    /// Stop with an error that says so (a folder the user named).
    Error,
    /// Move it into this folder (created), under a name that says when, and run again.
    Supersede(PathBuf),
}

/// How cells are run by one command: what to do with a folder of another configuration,
/// whether to print progress, and the stop request that ends training gracefully.
pub struct Runner<'a> {
    pub on_change: OnChange,
    pub quiet: bool,
    pub stop: &'a lus_train::StopRequest,
}

/// A cell that has to run: its folder holds its resolved config, and its clock runs. (A
/// pretraining cell whose evaluation alone changed runs too: its trainer finds the training
/// finished and returns at once, and the evaluation runs again.)
pub struct CellStart {
    pub clock: RunClock,
}

/// Prepares `dir` to run `config`: `None` when it is complete already. Otherwise removes
/// temporary files of a killed earlier attempt (in `dir` and `subdirs`), moves a cell of
/// another configuration aside or stops (`on_change`), writes the resolved config and starts
/// the run clock (`kind` and `seed` for the run manifest).
pub fn start(
    dir: &Path,
    config: &ExperimentConfig,
    subdirs: &[&str],
    runner: &Runner<'_>,
    kind: &str,
    seed: u64,
    device: lus_train::DeviceSpec,
) -> anyhow::Result<Option<CellStart>> {
    let quiet = runner.quiet;
    match inspect(dir, config)? {
        Found::Complete => {
            if !quiet {
                eprintln!("{}: complete, skipped", dir.display());
            }
            return Ok(None);
        }
        Found::Nothing | Found::Unfinished => {}
        Found::EvaluationChanged(keys) => {
            if !quiet {
                eprintln!(
                    "{}: the evaluation settings changed ({}); evaluating the trained network again",
                    dir.display(),
                    keys.join("; ")
                );
            }
            // The manifest marks a cell complete: without it the cell is evaluated again.
            remove_if_present(&dir.join(RUN_MANIFEST_FILE))?;
        }
        Found::Changed(keys) => match &runner.on_change {
            OnChange::Error => bail!(
                "{} belongs to a run with another configuration ({}); choose another output \
                 folder, or remove it (--force) to start over",
                dir.join(RESOLVED_CONFIG_FILE).display(),
                keys.join("; ")
            ),
            OnChange::Supersede(root) => {
                let moved = supersede(dir, root)?;
                eprintln!(
                    "{}: its configuration changed ({}); the old cell is kept in {} and the cell \
                     runs again",
                    dir.display(),
                    keys.join("; "),
                    moved.display()
                );
            }
        },
    }
    lus_io::remove_stale_temp_files(dir)?;
    for sub in subdirs {
        lus_io::remove_stale_temp_files(&dir.join(sub))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    lus_io::write_atomic(
        &dir.join(RESOLVED_CONFIG_FILE),
        config.to_toml_string()?.as_bytes(),
    )?;
    let clock = RunClock::start(kind, seed, &device.to_string());
    Ok(Some(CellStart { clock }))
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Moves the cell folder `dir` into `root` as `<unix time>-<parent>-<folder>` and returns
/// where it went.
fn supersede(dir: &Path, root: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let stamp = crate::provenance::unix_now();
    let part = |p: Option<&std::ffi::OsStr>| {
        p.map_or_else(String::new, |s| s.to_string_lossy().into_owned())
    };
    let name = format!(
        "{stamp}-{}-{}",
        part(dir.parent().and_then(Path::file_name)),
        part(dir.file_name())
    );
    let mut target = root.join(&name);
    let mut n = 1;
    while target.exists() {
        target = root.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(dir, &target)
        .with_context(|| format!("moving {} to {}", dir.display(), target.display()))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &[&str]) -> ExperimentConfig {
        let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        ExperimentConfig::from_toml_str("", &overrides).unwrap()
    }

    #[test]
    fn execution_settings_leave_the_result_view_alone() {
        let base = result_view(&config(&[])).unwrap();
        for set in [
            "pretrain.train.log_every=3",
            "pretrain.train.checkpoint_every_steps=7",
            "pretrain.data.prefetch=0",
            "pretrain.unet.kernels=candle",
            "evaluation.overlay_examples=2",
            "name=other",
            "runs_dir=elsewhere",
        ] {
            assert_eq!(result_view(&config(&[set])).unwrap(), base, "{set}");
        }
        // The POCUS pool matters only where the diagnostic pool comes from it.
        let classes = "dataset.pocus.classes=[\"covid\", \"healthy\"]";
        assert_eq!(result_view(&config(&[classes])).unwrap(), base);
        let pocus = "dataset.classify_from=pocus";
        assert_ne!(
            result_view(&config(&[pocus, classes])).unwrap(),
            result_view(&config(&[pocus])).unwrap()
        );
        let cpu = result_view(&config(&["pretrain.train.device=cpu"])).unwrap();
        let cuda0 = result_view(&config(&["pretrain.train.device=cuda:0"])).unwrap();
        let cuda3 = result_view(&config(&["pretrain.train.device=cuda:3"])).unwrap();
        assert_eq!(cuda0, cuda3);
        assert_ne!(cpu, cuda0);
    }

    #[test]
    fn result_settings_change_the_view_and_name_the_key() {
        let base = result_view(&config(&[])).unwrap();
        for (set, key) in [
            ("pretrain.train.lr=0.01", "pretrain.train.lr"),
            ("pretrain.train.epochs=3", "pretrain.train.epochs"),
            ("dataset.sparse_width=1.0", "dataset.sparse_width"),
            ("pretrain.unet.precision=bf16", "pretrain.unet.precision"),
        ] {
            let view = result_view(&config(&[set])).unwrap();
            assert_ne!(view, base, "{set}");
            let diff = differences(&base, &view, 8);
            assert_eq!(diff.len(), 1, "{diff:?}");
            assert!(diff[0].starts_with(key), "{diff:?}");
        }
        let eval = config(&["evaluation.object_iou=0.5"]);
        assert_ne!(result_view(&eval).unwrap(), base);
        assert_eq!(
            training_view(&eval).unwrap(),
            training_view(&config(&[])).unwrap()
        );
    }
}
