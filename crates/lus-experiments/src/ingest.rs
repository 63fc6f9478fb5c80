//! `lus ingest-pocus`: the real POCUS clips and images into grayscale frames and a manifest
//! (see [`lus_data::pocus`] for the rules and the output layout).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use lus_data::pocus::{
    INGEST_LOG, IngestOptions, Outcome, POCUS_MANIFEST, Tools, count_by_class_and_probe, ingest,
    inventory,
};

/// Where the POCUS data is found when `--src` is not given.
pub const POCUS_DIR_ENV: &str = "LUS_POCUS_DIR";
/// The default POCUS folder, relative to the repository root.
pub const DEFAULT_POCUS_DIR: &str = "../shared/data/pocus";

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// The POCUS data folder (videos/, images/, metadata.csv). Default: $LUS_POCUS_DIR, else
    /// ../shared/data/pocus.
    #[arg(long)]
    src: Option<PathBuf>,
    /// Output folder: frames/, manifest.csv, ingest-log.csv, ingest.json. A rerun into the
    /// same folder skips the clips already done.
    #[arg(long)]
    out: PathBuf,
    /// Sampling rate: every int(fps / this)-th frame is kept (POCOVID-Net: 3).
    #[arg(long, default_value_t = IngestOptions::default().frames_per_second)]
    frames_per_second: f64,
    /// At most this many frames per clip (POCOVID-Net: 30).
    #[arg(long, default_value_t = IngestOptions::default().max_frames_per_clip)]
    max_frames: usize,
    /// Clips decoded at once (default: the rayon pool, one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// The POCUS folder: `explicit`, else `$LUS_POCUS_DIR`, else the default.
pub fn pocus_dir(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os(POCUS_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_POCUS_DIR))
}

pub fn run(args: IngestArgs) -> anyhow::Result<()> {
    let src = pocus_dir(args.src);
    let options = IngestOptions {
        frames_per_second: args.frames_per_second,
        max_frames_per_clip: args.max_frames,
        ..IngestOptions::default()
    };
    options.validate()?;
    let tools = Tools::find()?;
    let start = Instant::now();
    let listed = inventory(&src, &options)?;
    let bar = crate::progress::bar((listed.files.len() + listed.excluded.len()) as u64, "files");
    if args.quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let work = || {
        ingest(listed, &args.out, &options, &tools, &|rel, outcome| {
            if let Outcome::Failed(reason) = outcome {
                bar.suspend(|| eprintln!("warning: {rel}: skipped: {reason}"));
            }
            bar.inc(1);
        })
    };
    let report = match args.jobs {
        Some(jobs) => rayon::ThreadPoolBuilder::new()
            .num_threads(jobs.max(1))
            .build()
            .context("starting the decoding threads")?
            .install(work),
        None => work(),
    }?;
    bar.finish_and_clear();
    for warning in &report.warnings {
        eprintln!("note: {warning}");
    }
    let count = |f: fn(&Outcome) -> bool| report.outcomes.iter().filter(|(_, o)| f(o)).count();
    println!(
        "{}: {} frames from {} files ({} decoded now, {} done before, {} excluded, {} failed) in {:.1} s",
        args.out.join(POCUS_MANIFEST).display(),
        report.rows.len(),
        count(|o| matches!(o, Outcome::Ingested(_) | Outcome::Done(_))),
        count(|o| matches!(o, Outcome::Ingested(_))),
        count(|o| matches!(o, Outcome::Done(_))),
        count(|o| matches!(o, Outcome::Excluded(_))),
        count(|o| matches!(o, Outcome::Failed(_))),
        start.elapsed().as_secs_f64()
    );
    println!("\n| class | probe/media | clips | frames |\n|---|---|---:|---:|");
    for ((class, probe), (clips, frames)) in count_by_class_and_probe(&report.rows) {
        println!("| {class} | {probe} | {clips} | {frames} |");
    }
    for (rel, outcome) in &report.outcomes {
        if let Outcome::Excluded(reason) = outcome {
            println!("excluded: {rel}: {reason}");
        }
    }
    let failed: Vec<_> = report.failed().collect();
    if !failed.is_empty() {
        eprintln!(
            "warning: {} file(s) failed and were skipped (see {}); rerun to retry them",
            failed.len(),
            args.out.join(INGEST_LOG).display()
        );
    }
    Ok(())
}
