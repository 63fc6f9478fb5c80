//! Figures: PNGs decode, have the documented size, and known pixels have known colours.
//!
//! Set `LUS_METRICS_KEEP_PLOTS=<folder>` to keep the figures for viewing.

use std::path::PathBuf;

use lus_metrics::plot::{CURVES_SIZE, SERIES_COLORS};
use lus_metrics::{OverlayLayout, OverlayRow, overlay_grid, plot_curves};

fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("LUS_METRICS_KEEP_PLOTS") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            (None, PathBuf::from(dir))
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    }
}

fn decode(path: &std::path::Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

const PALETTE: [[u8; 3]; 6] = [
    [0, 0, 0],
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [255, 255, 0],
    [0, 255, 255],
];

#[test]
fn overlay_grid_places_blended_colours_where_the_masks_say() {
    let (_keep, dir) = out_dir();
    let path = dir.join("overlay.png");
    let (w, h) = (64usize, 48usize);
    // Horizontal gray ramp 0..=252 in steps of 4.
    let image: Vec<u8> = (0..w * h).map(|i| (i % w) as u8 * 4).collect();
    // Mask 1: class 3 in the left half of rows 10..20. Mask 2: class 5 on column 40.
    let mask_a: Vec<u8> = (0..w * h)
        .map(|i| {
            if (10..20).contains(&(i / w)) && i % w < 32 {
                3
            } else {
                0
            }
        })
        .collect();
    let mask_b: Vec<u8> = (0..w * h)
        .map(|i| if i % w == 40 { 5 } else { 0 })
        .collect();
    let empty = vec![0u8; w * h];
    let rows = [
        OverlayRow {
            width: w,
            height: h,
            image: &image,
            masks: vec![&mask_a, &mask_b],
        },
        OverlayRow {
            width: w,
            height: h,
            image: &image,
            masks: vec![&empty, &mask_a],
        },
    ];
    overlay_grid(
        &path,
        &rows,
        &PALETTE,
        &["image", "dense GT", "prediction (sparse-trained)"],
    )
    .unwrap();

    let layout = OverlayLayout::for_rows(&rows);
    assert_eq!(layout.scale, 3); // 64 px -> 192 px cells
    let png = decode(&path);
    let (fw, fh) = layout.size();
    assert_eq!((png.width() as usize, png.height() as usize), (fw, fh));
    // Output pixel of image pixel (x, y) in cell (row, col), at the centre of its 3x3 block.
    let at = |row: usize, col: usize, x: usize, y: usize| {
        let (ox, oy) = layout.cell_origin(row, col);
        png.get_pixel((ox + 3 * x + 1) as u32, (oy + 3 * y + 1) as u32)
            .0
    };
    // Image column: plain gray. x = 25 -> gray 100.
    assert_eq!(at(0, 0, 25, 15), [100, 100, 100]);
    // Mask 1, class 3 (blue) over gray 100: ((100 + c + 1) / 2) per channel.
    assert_eq!(at(0, 1, 25, 15), [50, 50, 178]);
    // Outside the mask (class 0) the image shows through unchanged.
    assert_eq!(at(0, 1, 25, 30), [100, 100, 100]);
    assert_eq!(at(0, 1, 40, 15), [160, 160, 160]);
    // Mask 2, class 5 (cyan) on column 40 (gray 160): [80, 208, 208].
    assert_eq!(at(0, 2, 40, 5), [80, 208, 208]);
    assert_eq!(at(0, 2, 41, 5), [164, 164, 164]);
    // Second row: an empty mask shows the image; the last column holds mask 1.
    assert_eq!(at(1, 1, 25, 15), [100, 100, 100]);
    assert_eq!(at(1, 2, 0, 10), [0, 0, 128]);
    // Padding between cells is white.
    let (ox, oy) = layout.cell_origin(1, 1);
    assert_eq!(png.get_pixel((ox - 1) as u32, oy as u32).0, [255, 255, 255]);
    // The titles drew dark text in the title band of every column.
    for col in 0..3 {
        let (ox, _) = layout.cell_origin(0, col);
        let dark = (ox..ox + layout.cell_width)
            .flat_map(|x| (0..OverlayLayout::TITLE_HEIGHT).map(move |y| (x, y)))
            .filter(|&(x, y)| png.get_pixel(x as u32, y as u32).0[0] < 100)
            .count();
        assert!(
            dark > 20,
            "column {col}: no title text ({dark} dark pixels)"
        );
    }
}

#[test]
fn overlay_grid_rejects_bad_input_without_writing() {
    let (_keep, dir) = out_dir();
    let path = dir.join("bad-overlay.png");
    let image = vec![10u8; 12];
    let mask = vec![0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let rows = [OverlayRow {
        width: 4,
        height: 3,
        image: &image,
        masks: vec![&mask],
    }];
    let err = overlay_grid(&path, &rows, &PALETTE, &["image", "mask"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("pixel 2") && err.contains("class 7"), "{err}");
    let err = overlay_grid(&path, &rows, &PALETTE, &["image"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("column titles"), "{err}");
    let short = vec![0u8; 11];
    let rows = [OverlayRow {
        width: 4,
        height: 3,
        image: &image,
        masks: vec![&short],
    }];
    assert!(overlay_grid(&path, &rows, &PALETTE, &["image", "mask"]).is_err());
    assert!(overlay_grid(&path, &[], &PALETTE, &[]).is_err());
    assert!(!path.exists());
}

fn count_colour(png: &image::RgbImage, colour: [u8; 3]) -> usize {
    png.pixels().filter(|p| p.0 == colour).count()
}

#[test]
fn curves_draw_every_series_and_skip_nan_points() {
    let (_keep, dir) = out_dir();
    let path = dir.join("curves.png");
    let train: Vec<(f64, f64)> = (0..30)
        .map(|e| (e as f64, 1.5 * (-0.1 * e as f64).exp()))
        .collect();
    // Validation with undefined epochs (NaN) and one infinite value: gaps, not a panic.
    let val: Vec<(f64, f64)> = (0..30)
        .map(|e| {
            let y = match e {
                5 | 6 => f64::NAN,
                12 => f64::INFINITY,
                _ => 0.3 + 0.02 * e as f64,
            };
            (e as f64, y)
        })
        .collect();
    let only_nan = [(0.0, f64::NAN), (f64::NAN, 1.0)];
    plot_curves(
        &path,
        "U-Net training (dense labels)",
        "epoch",
        "loss / mIoU",
        &[
            ("train loss", &train),
            ("val mIoU", &val),
            ("undefined", &only_nan),
        ],
    )
    .unwrap();
    let png = decode(&path);
    assert_eq!((png.width(), png.height()), CURVES_SIZE);
    // Each drawn series leaves many pixels of exactly its colour (lines, markers, legend).
    for (i, colour) in SERIES_COLORS.iter().take(2).enumerate() {
        let n = count_colour(&png, *colour);
        assert!(n > 500, "series {i}: only {n} pixels of its colour");
    }
    // The all-NaN series only has its legend swatch (a short 3 px line).
    let n = count_colour(&png, SERIES_COLORS[2]);
    assert!(n > 20 && n < 200, "all-NaN series: {n} pixels");

    // No series at all, or only non-finite values, still gives a valid empty chart.
    let empty = dir.join("empty-curves.png");
    plot_curves(&empty, "nothing yet", "epoch", "loss", &[]).unwrap();
    assert_eq!(decode(&empty).dimensions(), CURVES_SIZE);
}
