//! `lus`: the command-line program of lus. Each subcommand validates all of its input before it
//! writes anything, builds its output folder under a temporary name and renames it into place
//! when complete, and exits non-zero with a message naming the offending file on any error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod contact_sheet;
mod progress;
mod rasterize;
mod synth;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Synth(args) => synth::run(args),
        Command::Rasterize(args) => rasterize::run(args),
        Command::ContactSheet(args) => contact_sheet::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
