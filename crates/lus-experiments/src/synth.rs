//! `lus synth`: a data set from the synthetic scanner.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use lus_data::manifest::{MANIFEST_FILE, ManifestRow, write_manifest};
use lus_data::raster::{RasterOptions, rasterize};
use lus_data::{LabelRecipe, StrokeWidth};
use lus_data::{LabelSchema, image_io};
use lus_io::{StagedDir, write_atomic};
use lus_scanner::{Sample, Scanner, ScannerConfig};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// File holding the resolved request inside the data set folder.
pub const SYNTH_CONFIG_FILE: &str = "synth.toml";

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Number of samples.
    #[arg(long)]
    count: u64,
    /// Seed: sample i of seed s is the same on every machine.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels (overrides the scanner config's `size`).
    #[arg(long)]
    size: Option<u32>,
    /// Output folder (created; must not exist unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Scanner settings (TOML with the fields of ScannerConfig); defaults otherwise.
    #[arg(long)]
    scanner: Option<PathBuf>,
    /// Label schema (TOML); the embedded default otherwise.
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Stroke width of the sparse labels in pixels of a 128-px-wide image (scaled with the
    /// image size; strokes are never wider than their objects).
    #[arg(long, default_value_t = lus_data::recipe::DEFAULT_STROKE_PX_AT_128)]
    sparse_width: f32,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
}

/// The resolved request, saved as `synth.toml` beside the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthRecord {
    pub lus_version: String,
    pub seed: u64,
    pub count: u64,
    pub scanner: ScannerConfig,
    pub dense: RasterOptions,
    pub sparse: RasterOptions,
    pub schema: LabelSchema,
}

fn resolve(args: &SynthArgs) -> anyhow::Result<SynthRecord> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let schema = match &args.schema {
        Some(path) => LabelSchema::load(path)?,
        None => LabelSchema::default(),
    };
    let mut scanner = match &args.scanner {
        Some(path) => {
            let text = lus_io::read_text(path)?;
            toml::from_str::<ScannerConfig>(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: invalid scanner config: {}",
                    path.display(),
                    lus_data::schema::explain_unknown_key(&e.to_string())
                )
            })?
        }
        None => ScannerConfig::default(),
    };
    if let Some(size) = args.size {
        scanner.size = size;
    }
    scanner.validate()?;
    let dense = RasterOptions::dense();
    let sparse =
        RasterOptions::recipe(LabelRecipe::sparse(StrokeWidth::PxAt128(args.sparse_width)));
    dense.validate(&schema)?;
    sparse.validate(&schema)?;
    Ok(SynthRecord {
        lus_version: env!("CARGO_PKG_VERSION").to_string(),
        seed: args.seed,
        count: args.count,
        scanner,
        dense,
        sparse,
        schema,
    })
}

fn read_record(path: &Path) -> Option<SynthRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str(&text).ok()
}

/// Relative paths of sample `index`'s files.
fn sample_paths(index: u64) -> [String; 4] {
    let id = format!("{index:06}");
    [
        format!("images/{id}.png"),
        format!("masks/dense/{id}.png"),
        format!("masks/sparse/{id}.png"),
        format!("annotations/{id}.json"),
    ]
}

fn manifest_row(sample: &Sample) -> ManifestRow {
    let [image, dense_mask, sparse_mask, annotation] = sample_paths(sample.index);
    let f = &sample.findings;
    ManifestRow {
        id: format!("{:06}", sample.index),
        image,
        dense_mask,
        sparse_mask,
        annotation,
        diagnosis: sample.diagnosis,
        probe: sample.probe,
        pleura: f.pleura.to_string(),
        a_lines: Some(f.a_lines),
        b_lines: Some(f.b_lines),
        consolidation: Some(f.consolidation),
        effusion: Some(f.effusion),
    }
}

/// Writes one sample's four files into `root` unless all of them are already there (a resumed
/// run: each file was written atomically, so an existing one is complete).
fn write_sample(root: &Path, sample: &Sample, record: &SynthRecord) -> anyhow::Result<()> {
    let paths = sample_paths(sample.index).map(|rel| root.join(rel));
    if paths.iter().all(|p| p.is_file()) {
        return Ok(());
    }
    let [image, dense_mask, sparse_mask, annotation] = &paths;
    let dense = rasterize(&sample.annotation, &record.schema, &record.dense)?;
    let sparse = rasterize(&sample.annotation, &record.schema, &record.sparse)?;
    image_io::save_gray_png(&sample.image, image)?;
    dense.save_png(dense_mask)?;
    sparse.save_png(sparse_mask)?;
    sample.annotation.save(annotation)?;
    Ok(())
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let record = resolve(&args)?;
    let record_text = toml::to_string(&record).context("serialising the synth record")?;
    let out = &args.out;
    if out.exists() && !args.force {
        if read_record(&out.join(SYNTH_CONFIG_FILE)).as_ref() == Some(&record)
            && out.join(MANIFEST_FILE).is_file()
        {
            eprintln!(
                "{} already holds this data set (same {SYNTH_CONFIG_FILE}); nothing to do",
                out.display()
            );
            return Ok(());
        }
        bail!(
            "{}: output folder already exists and holds something else; pass --force to replace it",
            out.display()
        );
    }
    let mut stage = StagedDir::open(out)?;
    // A stage left by a killed run is resumed only if it was making the same data set.
    let staged_record = stage.path().join(SYNTH_CONFIG_FILE);
    if staged_record.exists() && read_record(&staged_record).as_ref() != Some(&record) {
        stage.discard();
        stage = StagedDir::open(out)?;
    }
    for sub in ["images", "masks/dense", "masks/sparse", "annotations"] {
        stage.create_subdir(sub)?;
    }
    write_atomic(&staged_record, record_text.as_bytes())?;

    let scanner = Scanner::new(record.scanner.clone(), record.seed)?;
    let bar = crate::progress::bar(record.count, "synth");
    let root = stage.path().to_path_buf();
    let rows: Vec<ManifestRow> = (0..record.count)
        .into_par_iter()
        .map(|index| {
            let sample = scanner.sample(index);
            write_sample(&root, &sample, &record)
                .with_context(|| format!("writing sample {index}"))?;
            bar.inc(1);
            Ok(manifest_row(&sample))
        })
        .collect::<anyhow::Result<_>>()?;
    bar.finish_and_clear();
    write_manifest(&root.join(MANIFEST_FILE), &rows)?;
    let done = stage.commit(args.force)?;
    let mut counts = [0usize; lus_data::Diagnosis::ALL.len()];
    rows.iter().for_each(|r| counts[r.diagnosis.index()] += 1);
    eprintln!(
        "wrote {} samples ({} healthy, {} covid, {} pneumonia) at {} px to {}",
        rows.len(),
        counts[0],
        counts[1],
        counts[2],
        record.scanner.size,
        done.display()
    );
    Ok(())
}
