//! `lus`: the command-line program of lus. Each subcommand validates all of its input before it
//! writes anything, builds its output folder under a temporary name and renames it into place
//! when complete, and exits non-zero with a message naming the offending file on any error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lus_experiments::{
    bench, contact_sheet, eval_seg, ingest, predict, rasterize, study, synth, train_seg,
};

#[derive(Parser, Debug)]
#[command(
    name = "lus",
    version,
    about = "Reverse-transfer learning on lung ultrasound"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a synthetic lung-ultrasound data set (images, dense and sparse masks,
    /// annotations, manifest) with the seeded scanner.
    Synth(synth::SynthArgs),
    /// Draw a contact sheet of scanner output (image | dense | sparse), optionally beside
    /// real frames.
    ContactSheet(contact_sheet::ContactSheetArgs),
    /// Rasterize a folder of annotations (LabelMe or lus JSON) into dense or sparse masks.
    Rasterize(rasterize::RasterizeArgs),
    /// Decode the real POCUS clips and images into grayscale frames with a manifest
    /// (frames sampled by the POCOVID-Net rule; reruns skip clips already done).
    IngestPocus(ingest::IngestArgs),
    /// Train one segmentation U-Net on dense or sparse labels, then evaluate it on the test
    /// split (resumes an interrupted run in the same folder).
    TrainSeg(train_seg::TrainSegArgs),
    /// Evaluate segmentation weights on a labelled data folder: per-class IoU/Dice and
    /// object-level TP/FP/FN for the line classes.
    EvalSeg(eval_seg::EvalSegArgs),
    /// Run every cell of an experiment (skipping finished ones, resuming interrupted ones)
    /// and write its report.
    Run(study::RunArgs),
    /// Diagnose one frame or clip with a trained classification cell: class probabilities
    /// (JSON with --json), the segmentation overlay, and per-frame results for a clip.
    Predict(predict::PredictArgs),
    /// Write an experiment's report from the cells finished so far.
    Report(study::ReportArgs),
    /// Time kernels end to end (compare with PyTorch via benches/pytorch_unet_step.py).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Synth(args) => synth::run(args),
        Command::Rasterize(args) => rasterize::run(args),
        Command::ContactSheet(args) => contact_sheet::run(args),
        Command::IngestPocus(args) => ingest::run(args),
        Command::TrainSeg(args) => train_seg::run(args),
        Command::EvalSeg(args) => eval_seg::run(args),
        Command::Run(args) => study::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Report(args) => study::report(args),
        Command::Bench(command) => bench::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
