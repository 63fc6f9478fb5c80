//! `lus slurm FILE`: the Slurm job scripts of an experiment: a job array for the pretraining
//! stage, one for the classification stage that starts when the first has succeeded, and the
//! report after both, plus `submit.sh` that submits the three with their dependencies.
//!
//! Each array task runs `lus run FILE --stage S --shard K/N` (K = the array index), so the
//! tasks split the stage's cells between them; the cell locks ([`crate::lock`]) keep a
//! resubmitted or overlapping task off a cell another one is running, and a task that hits its
//! time limit is sent SIGTERM two minutes before (`--signal=B:TERM@120`): `lus run` saves the
//! cell's checkpoint and a resubmission resumes it.
//!
//! The time limit of a task is its cells times the time of one cell, times 1.5, plus 10
//! minutes for start-up (data, ingest); the time of one cell and the memory come from the
//! experiment's finished cells (`run.json`: the slowest cell of the stage, and the largest peak
//! RSS), so a short pilot (`--set` a grid of one seed, or a first sharded run) sizes the rest,
//! or from `--pretrain-minutes` / `--classify-minutes` / `--mem-gb`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::config::ExperimentConfig;
use crate::plan::{Cell, Plan};
use crate::provenance::read_run_manifest;

#[derive(Args, Debug)]
pub struct SlurmArgs {
    /// Experiment file (TOML).
    file: PathBuf,
    /// Override a config value, passed on to every job (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Folder for the scripts and the jobs' logs (default: `<runs_dir>/<name>/slurm`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Array tasks per stage (at most one per cell; default: one per cell).
    #[arg(long)]
    tasks: Option<usize>,
    /// Ask for one GPU per task (`--gres=gpu:1`); the config must train on `cuda`.
    #[arg(long)]
    gpu: bool,
    /// CPU cores per task (default: 4 on the CPU, 8 with a GPU for the data loading).
    #[arg(long)]
    cpus_per_task: Option<usize>,
    /// Memory per task in GiB (default: twice the largest peak RSS of the finished cells,
    /// at least 4; 16 when no cell has finished).
    #[arg(long)]
    mem_gb: Option<u64>,
    /// Minutes one pretraining cell takes (default: measured on the finished cells).
    #[arg(long)]
    pretrain_minutes: Option<f64>,
    /// Minutes one classification cell takes (default: measured on the finished cells).
    #[arg(long)]
    classify_minutes: Option<f64>,
    /// Slurm partition (`--partition`).
    #[arg(long)]
    partition: Option<String>,
    /// Slurm account (`--account`).
    #[arg(long)]
    account: Option<String>,
    /// The `lus` binary the jobs run (default: this one).
    #[arg(long)]
    lus: Option<PathBuf>,
}

/// What the finished cells of one stage measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    /// Finished cells with a wall time.
    pub cells: usize,
    /// The slowest cell, in seconds.
    pub max_wall_seconds: f64,
    /// The largest peak RSS, in MiB.
    pub max_rss_mib: f64,
}

/// The wall time and peak memory of the finished cells among `cells`.
pub fn measure(cells: &[Cell]) -> anyhow::Result<Measured> {
    let mut m = Measured::default();
    for cell in cells {
        let Some(manifest) = read_run_manifest(&cell.dir)? else {
            continue;
        };
        if let Some(wall) = manifest.wall_seconds {
            m.cells += 1;
            m.max_wall_seconds = m.max_wall_seconds.max(wall);
        }
        if let Some(rss) = manifest.peak_rss_mib {
            m.max_rss_mib = m.max_rss_mib.max(rss);
        }
    }
    Ok(m)
}

/// Most cells any of `tasks` shards gets of `cells` (shard K takes the plan indices i with
/// i mod tasks == K, as `lus run --shard`).
pub fn cells_per_task(cells: &[Cell], tasks: usize) -> usize {
    (0..tasks)
        .map(|k| cells.iter().filter(|c| c.index % tasks == k).count())
        .max()
        .unwrap_or(0)
}

/// The time limit of a task of `cells` cells of `minutes` each: x1.5, plus 10 minutes.
pub fn time_limit_minutes(cells: usize, minutes: f64) -> u64 {
    (cells as f64 * minutes * 1.5).ceil() as u64 + 10
}

/// `D-HH:MM:SS`, Slurm's `--time`.
pub fn slurm_time(minutes: u64) -> String {
    format!(
        "{}-{:02}:{:02}:00",
        minutes / (24 * 60),
        minutes / 60 % 24,
        minutes % 60
    )
}

/// One argument, quoted for bash.
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Everything one stage's script needs.
struct Stage<'a> {
    name: &'a str,
    tasks: usize,
    minutes: u64,
}

struct Common<'a> {
    experiment: &'a str,
    workdir: String,
    logs: String,
    lus: String,
    file: String,
    sets: String,
    cpus: usize,
    mem_gb: u64,
    gpu: bool,
    partition: Option<&'a str>,
    account: Option<&'a str>,
}

fn header(common: &Common<'_>, job: &str, minutes: u64, cpus: usize, gpu: bool) -> String {
    let mut s = format!(
        "#!/bin/bash\n\
         # Written by `lus slurm` for {experiment}; submit with submit.sh beside it.\n\
         #SBATCH --job-name=lus-{experiment}-{job}\n\
         #SBATCH --time={time}\n\
         #SBATCH --cpus-per-task={cpus}\n\
         #SBATCH --mem={mem}G\n\
         #SBATCH --open-mode=append\n",
        experiment = common.experiment,
        time = slurm_time(minutes),
        mem = common.mem_gb,
    );
    if gpu {
        s.push_str("#SBATCH --gres=gpu:1\n");
    }
    if let Some(p) = common.partition {
        let _ = writeln!(s, "#SBATCH --partition={p}");
    }
    if let Some(a) = common.account {
        let _ = writeln!(s, "#SBATCH --account={a}");
    }
    s
}

fn stage_script(common: &Common<'_>, stage: &Stage<'_>) -> String {
    let mut s = header(common, stage.name, stage.minutes, common.cpus, common.gpu);
    let _ = write!(
        s,
        "#SBATCH --array=0-{last}\n\
         #SBATCH --output={logs}/{name}-%A_%a.out\n\
         # SIGTERM two minutes before the limit: lus saves the cell's checkpoint and exits;\n\
         # resubmitting the array resumes it.\n\
         #SBATCH --signal=B:TERM@120\n\
         set -euo pipefail\n\
         cd {workdir}\n\
         export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\"\n\
         exec {lus} run {file} --stage {name} --shard \"${{SLURM_ARRAY_TASK_ID}}/{tasks}\" --quiet{sets}\n",
        last = stage.tasks - 1,
        logs = common.logs,
        name = stage.name,
        workdir = common.workdir,
        lus = common.lus,
        file = common.file,
        tasks = stage.tasks,
        sets = common.sets,
    );
    s
}

fn report_script(common: &Common<'_>) -> String {
    let mut s = header(common, "report", 60, 2, false);
    let _ = write!(
        s,
        "#SBATCH --output={logs}/report-%j.out\n\
         set -euo pipefail\n\
         cd {workdir}\n\
         export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\"\n\
         exec {lus} report {file}{sets}\n",
        logs = common.logs,
        workdir = common.workdir,
        lus = common.lus,
        file = common.file,
        sets = common.sets,
    );
    s
}

fn submit_script(stages: &[&str]) -> String {
    let mut s = String::from(
        "#!/bin/bash\n\
         # Submits the stages of this folder in order, each after the previous one succeeded\n\
         # (afterok), then the report. Extra arguments go to every sbatch (e.g. --qos=...).\n\
         set -euo pipefail\n\
         cd \"$(dirname \"$0\")\"\n\
         after=()\n",
    );
    for stage in stages {
        let _ = write!(
            s,
            "id=$(sbatch --parsable \"${{after[@]}}\" \"$@\" {stage}.sbatch)\n\
             id=${{id%%;*}}\n\
             echo \"{stage}: job ${{id}}\"\n\
             after=(--dependency=afterok:${{id}})\n"
        );
    }
    s.push_str("squeue --me 2>/dev/null || true\n");
    s
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}: cannot make absolute", path.display()))
}

pub fn run(args: SlurmArgs) -> anyhow::Result<()> {
    let experiment = ExperimentConfig::load(&args.file, &args.overrides)?;
    let plan = Plan::new(&experiment)?;
    let devices: Vec<&str> = std::iter::once(&experiment.pretrain.train.device)
        .chain(experiment.classify.as_ref().map(|c| &c.train.device))
        .map(|d| d.result_kind())
        .collect();
    let trains_on_cuda = devices.contains(&"cuda");
    if args.gpu && !trains_on_cuda {
        bail!(
            "--gpu: {} trains on the CPU (device = \"cpu\"); set pretrain.train.device=cuda and \
             classify.train.device=cuda, or leave --gpu out",
            args.file.display()
        );
    }
    if !args.gpu && trains_on_cuda {
        bail!(
            "{} trains on cuda: add --gpu (one GPU per task), or --set the devices to cpu",
            args.file.display()
        );
    }
    let mut stages: Vec<(&str, &[Cell], Option<f64>)> = Vec::new();
    if !plan.pretrain().is_empty() {
        stages.push(("pretrain", plan.pretrain(), args.pretrain_minutes));
    }
    if !plan.classify().is_empty() {
        stages.push(("classify", plan.classify(), args.classify_minutes));
    }
    let mut rss_mib: f64 = 0.0;
    let mut planned = Vec::new();
    let mut summary = String::new();
    for (name, cells, given) in &stages {
        let measured = measure(cells)?;
        rss_mib = rss_mib.max(measured.max_rss_mib);
        let (minutes, source) = match given {
            Some(m) if *m > 0.0 && m.is_finite() => (*m, "given".to_string()),
            Some(m) => bail!("--{name}-minutes: {m} is not a positive number of minutes"),
            None if measured.cells > 0 => (
                measured.max_wall_seconds / 60.0,
                format!(
                    "the slowest of {} finished {name} cell(s) (device {})",
                    measured.cells, devices[0]
                ),
            ),
            None => bail!(
                "no finished {name} cell of {} to measure a cell's time on: give \
                 --{name}-minutes, or run a pilot first (e.g. `lus run {} --shard 0/{}`)",
                experiment.name,
                args.file.display(),
                cells.len().max(2)
            ),
        };
        let tasks = args.tasks.unwrap_or(cells.len()).clamp(1, cells.len());
        let per_task = cells_per_task(cells, tasks);
        let limit = time_limit_minutes(per_task, minutes);
        let _ = writeln!(
            summary,
            "{name}: {} cells in {tasks} task(s) of at most {per_task} cell(s); {minutes:.1} \
             min per cell ({source}); time limit {}",
            cells.len(),
            slurm_time(limit)
        );
        planned.push(Stage {
            name,
            tasks,
            minutes: limit,
        });
    }
    if planned.is_empty() {
        bail!("{}: the plan has no cells", args.file.display());
    }
    let mem_gb = match args.mem_gb {
        Some(0) => bail!("--mem-gb: must be at least 1"),
        Some(g) => g,
        // Nothing measured: room for a 256-px pool in memory.
        None if rss_mib == 0.0 => 16,
        None => ((2.0 * rss_mib / 1024.0).ceil() as u64).max(4),
    };
    let out = match &args.out {
        Some(o) => o.clone(),
        None => experiment.runs_root().join("slurm"),
    };
    let out = absolute(&out)?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let lus = match &args.lus {
        Some(p) => absolute(p)?,
        None => std::env::current_exe().context("finding the lus binary")?,
    };
    let workdir = std::env::current_dir().context("the working directory")?;
    let sets: String = args
        .overrides
        .iter()
        .map(|o| format!(" --set {}", shell_quote(o)))
        .collect();
    let common = Common {
        experiment: &experiment.name,
        workdir: shell_quote(&workdir.to_string_lossy()),
        logs: shell_quote(&logs.to_string_lossy()),
        lus: shell_quote(&lus.to_string_lossy()),
        file: shell_quote(&absolute(&args.file)?.to_string_lossy()),
        sets,
        cpus: args.cpus_per_task.unwrap_or(if args.gpu { 8 } else { 4 }),
        mem_gb,
        gpu: args.gpu,
        partition: args.partition.as_deref(),
        account: args.account.as_deref(),
    };
    let mut names = Vec::new();
    for stage in &planned {
        write_script(
            &out.join(format!("{}.sbatch", stage.name)),
            &stage_script(&common, stage),
        )?;
        names.push(stage.name);
    }
    write_script(&out.join("report.sbatch"), &report_script(&common))?;
    names.push("report");
    write_script(&out.join("submit.sh"), &submit_script(&names))?;
    print!("{summary}");
    println!(
        "memory {mem_gb} GiB and {} CPU(s) per task{}; scripts in {} (submit with {}/submit.sh)",
        common.cpus,
        if args.gpu { ", one GPU" } else { "" },
        out.display(),
        out.display()
    );
    Ok(())
}

fn write_script(path: &Path, text: &str) -> anyhow::Result<()> {
    lus_io::write_atomic(path, text.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_quotes_and_shards() {
        assert_eq!(slurm_time(0), "0-00:00:00");
        assert_eq!(slurm_time(61), "0-01:01:00");
        assert_eq!(slurm_time(24 * 60 + 5), "1-00:05:00");
        assert_eq!(time_limit_minutes(3, 2.0), 19);
        assert_eq!(
            shell_quote("pretrain.train.epochs=3"),
            "pretrain.train.epochs=3"
        );
        assert_eq!(shell_quote("grid.seeds=[0, 1]"), "'grid.seeds=[0, 1]'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_submit_script_chains_the_stages() {
        let s = submit_script(&["pretrain", "classify", "report"]);
        let pre = s.find("pretrain.sbatch").unwrap();
        let cls = s.find("classify.sbatch").unwrap();
        let rep = s.find("report.sbatch").unwrap();
        assert!(pre < cls && cls < rep);
        assert_eq!(s.matches("--dependency=afterok:${id}").count(), 3);
    }
}
