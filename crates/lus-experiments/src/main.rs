//! `lus`: the command-line program of lus. Each subcommand validates all of its input before it
//! writes anything, builds its output folder under a temporary name and renames it into place
//! when complete, and exits non-zero with a message naming the offending file on any error.
//!
//! `lus train-seg` and `lus run` stop gracefully on SIGINT (Ctrl-C) and SIGTERM: the training
//! step under way finishes, the run's `last/` checkpoint is written, and the process exits with
//! 128 + the signal (130, 143); the same command resumes. A second signal stops at once (every
//! file is written atomically, so the last checkpoint stays whole). A signal that arrives after
//! the last training step lets the command finish its outputs and exit 0: nothing is left to
//! resume.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lus_experiments::{
    bench, contact_sheet, domain_gap, eval_seg, ingest, power, predict, rasterize, segment, slurm,
    study, synth, train_seg,
};
use lus_train::StopRequest;
use signal_hook::consts::signal::{SIGINT, SIGTERM};

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
    /// Segment a frame, a clip or a folder of them with a segmentation cell and read the lung
    /// findings off each map: B-lines per frame, A-lines, pleural line, consolidation and
    /// effusion; per clip the B-pattern and A-pattern shares; overlays and an animation.
    Segment(segment::SegmentArgs),
    /// Measure how far the scanner's frames are from real POCUS frames: a classifier
    /// two-sample test grouped by clip (held-out accuracy, 0.5 = indistinguishable) beside
    /// intensity, spectrum and depth-profile statistics.
    DomainGap(domain_gap::DomainGapArgs),
    /// Write an experiment's report from the cells finished so far.
    Report(study::ReportArgs),
    /// Size a grid: the difference a k-fold comparison detects, and its power, per number of
    /// seeds, from a spread given or measured in a pilot's `cls_results.csv`.
    Power(power::PowerArgs),
    /// Write Slurm job arrays for an experiment (pretraining, then classification, then the
    /// report, chained by dependencies), timed from its finished cells.
    Slurm(slurm::SlurmArgs),
    /// Time kernels end to end (compare with PyTorch via benches/pytorch_unet_step.py).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// candle 0.11.1 runs its element-wise CPU ops on a pool of its own (`CANDLE_NUM_THREADS`
/// threads, by default one per core, that spin between ops) beside rayon's pool, on which
/// lus's CPU kernels run: the spinning threads take cores from the kernels. Unless the user
/// set `CANDLE_NUM_THREADS`, it is set to 1, so that candle's element-wise ops run on the
/// calling thread. On the 2-core development machine this took the median U-Net training step
/// from 315-319 to 304-307 ms and its slowest rounds from 431-485 to 347-349 ms
/// (`benches/README.md`).
// Unsafe: `set_var` is unsafe in edition 2024 (another thread could read the environment).
#[allow(unsafe_code)]
fn default_candle_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called first thing in `main`, before any thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// Output piped into a program that stops reading (`lus predict --json | head`) ends the
/// process quietly, as for any Unix filter, instead of a panic in `println!`.
// Unsafe: `libc::signal` is a foreign function.
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: called first thing in `main`, before any thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    default_candle_threads();
    default_sigpipe();
    let cli = Cli::parse();
    let stop = StopRequest::new();
    if matches!(cli.command, Command::TrainSeg(_) | Command::Run(_))
        && let Err(e) = stop_on_signals(&stop)
    {
        eprintln!("error: installing the SIGINT/SIGTERM handler: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Synth(args) => synth::run(args),
        Command::Rasterize(args) => rasterize::run(args),
        Command::ContactSheet(args) => contact_sheet::run(args),
        Command::IngestPocus(args) => ingest::run(args),
        Command::TrainSeg(args) => train_seg::run(args, &stop),
        Command::EvalSeg(args) => eval_seg::run(args),
        Command::Run(args) => study::run(args, &stop),
        Command::Predict(args) => predict::run(args),
        Command::Segment(args) => segment::run(args),
        Command::DomainGap(args) => domain_gap::run(args),
        Command::Report(args) => study::report(args),
        Command::Power(args) => power::run(args),
        Command::Slurm(args) => slurm::run(args),
        Command::Bench(command) => bench::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A command that fails after a stop request stopped because of it.
            match stop.raised() {
                Some(signal) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(u8::MAX)),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Raises `stop` on the first SIGINT or SIGTERM; a second one takes the signal's default
/// action (the process ends at once). The handler only wakes a thread (signal-hook's self-pipe),
/// so the message is printed outside the signal handler.
fn stop_on_signals(stop: &StopRequest) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let stop = stop.clone();
    std::thread::Builder::new()
        .name("lus-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                if stop.raised().is_some() {
                    eprintln!("\n{name} again: stopping now");
                    let _ = signal_hook::low_level::emulate_default_handler(signal);
                    std::process::exit(128 + signal);
                }
                stop.raise(signal);
                eprintln!(
                    "\n{name}: stopping after the current training step and saving the run \
                     (send it again to stop at once)"
                );
            }
        })?;
    Ok(())
}
