//! `lus eval-seg`: a trained segmentation U-Net on a labelled data folder.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use lus_data::RasterOptions;
use lus_data::loader::{AnnotatedFileSource, SegmentationSource};
use lus_data::manifest::{MANIFEST_FILE, read_manifest, resolve_inside};
use lus_train::{SegModel, device_name, evaluate_segmentation};

use crate::config::{ExperimentConfig, RecipeRef};
use crate::provenance::{RunClock, write_run_manifest};
use crate::report::markdown_eval_table;
use crate::seg_cell::eval_options;

#[derive(Args, Debug)]
pub struct EvalSegArgs {
    /// Weights (a checkpoint written by train-seg, e.g. RUN/best.safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Data folder in the layout `lus synth` writes (manifest.csv); every row is evaluated.
    #[arg(long)]
    data: PathBuf,
    /// Truth to compare with: a label recipe drawn from each row's annotation (a truth of
    /// the run's config, `dense`, `sparse`, or a `[recipes.<name>]` of the config).
    #[arg(long, default_value = "dense")]
    labels: String,
    /// The run's resolved config (default: config.resolved.toml beside the weights).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Write the per-class table (CSV + Parquet) and run.json into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: EvalSegArgs) -> anyhow::Result<()> {
    let config_path =
        crate::cell_input::resolved_config_path(&args.weights, args.config.as_deref())?;
    let experiment = ExperimentConfig::load(&config_path, &[])?;
    let manifest_path = args.data.join(MANIFEST_FILE);
    if !manifest_path.is_file() {
        bail!(
            "{}: not found (--data must be a folder written by `lus synth`)",
            manifest_path.display()
        );
    }
    let rows = read_manifest(&manifest_path)?;
    if rows.is_empty() {
        bail!("{}: no examples", manifest_path.display());
    }
    // A truth of the run's config by name (written out there), else a recipe of the config.
    let truth = match experiment
        .evaluation
        .truths
        .iter()
        .find(|t| t.name() == args.labels)
    {
        Some(reference) => experiment.recipe(reference)?,
        None => experiment
            .recipe(&RecipeRef::Name(args.labels.clone()))
            .with_context(|| format!("--labels {}", args.labels))?,
    };
    let mut pairs = Vec::with_capacity(rows.len());
    for row in &rows {
        let resolve = |rel: &str| {
            resolve_inside(&args.data, rel)
                .map_err(|e| anyhow::anyhow!("{}: {e}", manifest_path.display()))
        };
        pairs.push((resolve(&row.image)?, resolve(&row.annotation)?));
    }
    let schema = lus_data::LabelSchema::default();
    let source = Arc::new(AnnotatedFileSource::new(
        pairs,
        schema.clone(),
        RasterOptions {
            recipe: truth.clone(),
            ignore_id: experiment.pretrain.train.loss.ignore_id,
        },
    )?);
    // Every image and mask is decoded once up front: a broken file fails before the weights
    // are loaded and anything is written.
    source.check_all()?;

    let device = lus_train::DeviceSpec::parse(&args.device)?.open()?;
    let clock = RunClock::start("eval-seg", experiment.pretrain.train.seed, &args.device);
    let model = SegModel::load(&experiment.pretrain.unet, &args.weights, &device)?;
    let options = eval_options(&experiment, &schema);
    let report = evaluate_segmentation(&model, source, &experiment.pretrain, &options, &device)?;
    let table = report.per_class_table()?;
    println!(
        "{} on {} ({} images, {} truth, {}x{} px):\n",
        args.weights.display(),
        args.data.display(),
        report.images,
        truth.name,
        report.size,
        report.size
    );
    println!("{}", markdown_eval_table(&table, report.images));
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let stem = format!("eval-{}", truth.name);
        table.write(
            &out.join(format!("{stem}.csv")),
            &out.join(format!("{stem}.parquet")),
        )?;
        let mut manifest = clock.finish();
        manifest.device = device_name(&device);
        write_run_manifest(out, &manifest)?;
    }
    Ok(())
}
