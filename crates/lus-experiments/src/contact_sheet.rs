//! `lus contact-sheet`: a picture of scanner output (image | dense labels | sparse labels over
//! the image), optionally beside real frames read from a POCUS-layout folder. The real frames
//! are only ever drawn into the output file the user names: they are never written into the
//! repository.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use image::{GrayImage, Rgb, RgbImage, imageops};
use lus_data::LabelRecipe;
use lus_data::raster::{RasterOptions, rasterize};
use lus_data::{LabelSchema, Mask, image_io};
use lus_scanner::{Scanner, ScannerConfig};

const GAP: u32 = 4;

#[derive(Args, Debug)]
pub struct ContactSheetArgs {
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Number of scanner samples (one row each).
    #[arg(long, default_value_t = 6)]
    count: u64,
    /// Scanner seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tile side in pixels (also the scanner's image size).
    #[arg(long, default_value_t = 128)]
    size: u32,
    /// A POCUS-layout folder (images/convex, images/linear): real still frames are drawn in
    /// columns beside the scanner rows.
    #[arg(long)]
    real: Option<PathBuf>,
}

fn gray_to_rgb(gray: &GrayImage) -> RgbImage {
    RgbImage::from_fn(gray.width(), gray.height(), |x, y| {
        let v = gray.get_pixel(x, y).0[0];
        Rgb([v, v, v])
    })
}

/// The image with the mask's non-background classes blended over it in schema colours.
fn overlay(image: &GrayImage, mask: &Mask, schema: &LabelSchema) -> RgbImage {
    let palette = schema.palette();
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let v = f32::from(image.get_pixel(x, y).0[0]);
        match mask.get(x, y) {
            0 => Rgb([v as u8; 3]),
            id => {
                let c = palette.get(usize::from(id)).map_or([128; 3], |c| c.0);
                Rgb(c.map(|c| (0.25 * v + 0.75 * f32::from(c)) as u8))
            }
        }
    })
}

/// Real still frames (sorted by name), centre-cropped to a square and resized to `size`.
fn real_frames(root: &Path, size: u32, count: usize) -> anyhow::Result<Vec<GrayImage>> {
    let mut paths = Vec::new();
    for probe in ["convex", "linear"] {
        let dir = root.join("images").join(probe);
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("{}: cannot read real-frame folder", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            if matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
                paths.push(path);
            }
        }
    }
    paths.sort();
    if paths.is_empty() {
        bail!("{}: no real still frames under images/", root.display());
    }
    // Spread the picks over the sorted list, so every class prefix is represented.
    let step = (paths.len() as f64 / count as f64).max(1.0);
    (0..count.min(paths.len()))
        .map(|i| {
            let path = &paths[(i as f64 * step) as usize];
            let gray = image_io::load_gray(path)?;
            let side = gray.width().min(gray.height());
            let x0 = (gray.width() - side) / 2;
            let y0 = (gray.height() - side) / 2;
            let crop = imageops::crop_imm(&gray, x0, y0, side, side).to_image();
            Ok(imageops::resize(
                &crop,
                size,
                size,
                imageops::FilterType::Triangle,
            ))
        })
        .collect()
}

pub fn run(args: ContactSheetArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let schema = LabelSchema::default();
    let scanner = Scanner::new(
        ScannerConfig {
            size: args.size,
            ..ScannerConfig::default()
        },
        args.seed,
    )?;
    let real = match &args.real {
        Some(root) => real_frames(root, args.size, 2 * args.count as usize)?,
        None => Vec::new(),
    };
    let rows = args.count as u32;
    let real_cols = real.len().div_ceil(rows as usize) as u32;
    let cols = 3 + real_cols;
    let tile = args.size + GAP;
    let extra = if real_cols > 0 { 3 * GAP } else { 0 };
    let mut sheet =
        RgbImage::from_pixel(cols * tile + GAP + extra, rows * tile + GAP, Rgb([40; 3]));
    let dense = RasterOptions::dense();
    let sparse = RasterOptions::recipe(LabelRecipe::builtin("sparse").expect("built in"));
    for (row, sample) in scanner.generate(0..args.count).iter().enumerate() {
        let y = GAP + row as u32 * tile;
        let dense_mask = rasterize(&sample.annotation, &schema, &dense)?;
        let sparse_mask = rasterize(&sample.annotation, &schema, &sparse)?;
        let tiles = [
            gray_to_rgb(&sample.image),
            dense_mask.colorize(&schema),
            overlay(&sample.image, &sparse_mask, &schema),
        ];
        for (col, t) in tiles.iter().enumerate() {
            imageops::replace(
                &mut sheet,
                t,
                i64::from(GAP + col as u32 * tile),
                i64::from(y),
            );
        }
    }
    for (i, frame) in real.iter().enumerate() {
        let (col, row) = (3 + i as u32 / rows, i as u32 % rows);
        let x = GAP + col * tile + extra;
        imageops::replace(
            &mut sheet,
            &gray_to_rgb(frame),
            i64::from(x),
            i64::from(GAP + row * tile),
        );
    }
    let mut bytes = Vec::new();
    sheet
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .context("encoding the contact sheet")?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create folder", parent.display()))?;
    }
    lus_io::write_atomic(&args.out, &bytes)?;
    eprintln!(
        "wrote {} ({} scanner rows, {} real frames)",
        args.out.display(),
        rows,
        real.len()
    );
    Ok(())
}
