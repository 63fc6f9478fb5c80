//! `lus rasterize`: masks from a folder of annotations (LabelMe or lus JSON).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use lus_data::labelme::{LabelmeOptions, load_annotation};
use lus_data::raster::{RasterOptions, rasterize};
use lus_data::{Annotation, LabelRecipe, LabelSchema, StrokeWidth};
use lus_io::{StagedDir, write_atomic};
use rayon::prelude::*;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct RasterizeArgs {
    /// Folder of annotation files (*.json: LabelMe or lus format).
    #[arg(long)]
    annotations: PathBuf,
    /// Label recipe: `dense` (every field-of-view pixel), `sparse` (line classes as thin
    /// strokes), or a recipe file (TOML, see `lus_data::recipe`).
    #[arg(long, alias = "mode")]
    recipe: String,
    /// Output folder for the masks (<annotation stem>.png).
    #[arg(long)]
    out: PathBuf,
    /// Label schema (TOML); the embedded default otherwise.
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Stroke width of the recipe's strokes in pixels of a 128-px-wide image (scaled with each
    /// image); default: the recipe's own.
    #[arg(long, alias = "sparse-width")]
    stroke_width: Option<f32>,
    /// Id of the pixels the recipe leaves unknown (dense: field-of-view pixels no shape
    /// covers); background otherwise.
    #[arg(long)]
    ignore_id: Option<u8>,
    /// Full width (px) that LabelMe `line`/`linestrip` shapes cover in dense labels.
    #[arg(long, default_value_t = LabelmeOptions::default().line_width)]
    line_width: f32,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
}

#[derive(Serialize)]
struct RasterizeRecord<'a> {
    lus_version: &'a str,
    annotations: &'a Path,
    raster: &'a RasterOptions,
    labelme: &'a LabelmeOptions,
    schema: &'a LabelSchema,
}

fn annotation_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot read folder", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("{}: cannot read folder", dir.display()))?
            .path();
        if path.is_file()
            && path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.json annotation files", dir.display());
    }
    Ok(files)
}

pub fn run(args: RasterizeArgs) -> anyhow::Result<()> {
    let schema = match &args.schema {
        Some(path) => LabelSchema::load(path)?,
        None => LabelSchema::default(),
    };
    let mut recipe = LabelRecipe::load(&args.recipe, &schema)?;
    if let Some(width) = args.stroke_width {
        recipe.stroke_width = StrokeWidth::PxAt128(width);
    }
    let raster = RasterOptions {
        recipe,
        ignore_id: args.ignore_id,
    };
    raster.validate(&schema)?;
    let labelme = LabelmeOptions {
        line_width: args.line_width,
    };
    labelme.validate()?;
    if args.out.exists() && !args.force {
        bail!(
            "{}: output folder already exists; pass --force to replace it",
            args.out.display()
        );
    }
    let files = annotation_files(&args.annotations)?;
    // Read and validate everything before writing anything: one bad file fails the whole
    // command with nothing written.
    let annotations: Vec<Annotation> = files
        .par_iter()
        .map(|path| load_annotation(path, &schema, &labelme))
        .collect::<Result<_, _>>()?;

    // Masks are cheap to remake: a stage left by a killed run is thrown away, not resumed, so
    // no mask of an older request can survive into this one.
    StagedDir::open(&args.out)?.discard();
    let stage = StagedDir::open(&args.out)?;
    let record = RasterizeRecord {
        lus_version: env!("CARGO_PKG_VERSION"),
        annotations: &args.annotations,
        raster: &raster,
        labelme: &labelme,
        schema: &schema,
    };
    let bar = crate::progress::bar(files.len() as u64, "rasterize");
    let written = files
        .par_iter()
        .zip(&annotations)
        .map(|(path, annotation)| {
            let mask = rasterize(annotation, &schema, &raster)?;
            let stem = path.file_stem().expect("a *.json file has a stem");
            let name = format!("{}.png", stem.to_string_lossy());
            mask.save_png(&stage.path().join(name))?;
            bar.inc(1);
            Ok(())
        })
        .collect::<anyhow::Result<Vec<()>>>();
    if let Err(e) = written {
        stage.discard();
        return Err(e);
    }
    bar.finish_and_clear();
    write_atomic(
        &stage.path().join("rasterize.toml"),
        toml::to_string(&record)?.as_bytes(),
    )?;
    let done = stage.commit(args.force)?;
    eprintln!(
        "wrote {} {} masks to {}",
        files.len(),
        record.raster.recipe.name,
        done.display()
    );
    Ok(())
}
