//! Classification figures: PNGs decode, have the documented size, are not blank, show known
//! colours where the data put them, and bad input is an error that writes nothing.
//!
//! Set `LUS_METRICS_KEEP_PLOTS=<folder>` to keep the figures for viewing.

use std::path::PathBuf;

use lus_metrics::plot::SERIES_COLORS;
use lus_metrics::plot_cls::{
    BARS_SIZE, CHANCE_COLOR, CONFUSION_SIZE, HeatmapLayout, ROC_SIZE, heatmap_color,
};
use lus_metrics::{
    BarSeries, ConfusionMatrix, Predictions, RocCurve, plot_bars, plot_confusion_matrix,
    plot_roc_curves,
};

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

/// Variance of the gray levels: 0 for a blank figure.
fn gray_variance(png: &image::RgbImage) -> f64 {
    let values: Vec<f64> = png
        .pixels()
        .map(|p| (u32::from(p.0[0]) + u32::from(p.0[1]) + u32::from(p.0[2])) as f64 / 3.0)
        .collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / values.len() as f64
}

fn count_colour(png: &image::RgbImage, colour: [u8; 3]) -> usize {
    png.pixels().filter(|p| p.0 == colour).count()
}

fn three_class_predictions() -> Predictions {
    let truth: Vec<usize> = (0..60).map(|i| i % 3).collect();
    let rows: Vec<Vec<f64>> = (0..60)
        .map(|i| {
            let t = i % 3;
            let noise = ((i * 37) % 11) as f64 / 11.0;
            let mut w = [0.2 + 0.5 * noise, 0.3, 0.6 * (1.0 - noise)];
            w[t] += 0.45;
            let s: f64 = w.iter().sum();
            w.iter().map(|v| v / s).collect()
        })
        .collect();
    Predictions::from_rows(&truth, &rows).unwrap()
}

#[test]
fn roc_figure_draws_every_curve_and_the_chance_line() {
    let (_keep, dir) = out_dir();
    let path = dir.join("roc.png");
    let p = three_class_predictions();
    let curves: Vec<RocCurve> = (0..3).map(|c| p.roc_curve(c).unwrap()).collect();
    let named: Vec<(&str, &RocCurve)> = ["healthy", "COVID-19", "pneumonia"]
        .into_iter()
        .zip(&curves)
        .collect();
    plot_roc_curves(&path, "dense-pretrained, fold 0", &named).unwrap();
    let png = decode(&path);
    assert_eq!(png.dimensions(), ROC_SIZE);
    assert!(gray_variance(&png) > 100.0);
    for (i, colour) in SERIES_COLORS.iter().take(3).enumerate() {
        let n = count_colour(&png, *colour);
        // The curves overlap near the top-left corner; each still shows in its legend entry
        // and along its own steps.
        assert!(n > 150, "curve {i}: only {n} pixels of its colour");
    }
    assert!(count_colour(&png, SERIES_COLORS[3]) == 0);
    // The diagonal runs across the plot: hundreds of its pixels show.
    assert!(count_colour(&png, CHANCE_COLOR) > 300);
}

#[test]
fn roc_figure_rejects_bad_curves_without_writing() {
    let (_keep, dir) = out_dir();
    let path = dir.join("bad-roc.png");
    assert!(plot_roc_curves(&path, "t", &[]).is_err());
    // A class absent from the truth: NaN true positive rates.
    let absent = RocCurve::from_scores(&[false, false], &[0.2, 0.9]).unwrap();
    let err = plot_roc_curves(&path, "t", &[("absent", &absent)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent") && err.contains("NaN"), "{err}");
    let ragged = RocCurve {
        fpr: vec![0.0, 1.0],
        tpr: vec![0.0],
        thresholds: vec![f64::INFINITY, 0.5],
        auc: 0.5,
    };
    assert!(plot_roc_curves(&path, "t", &[("ragged", &ragged)]).is_err());
    assert!(!path.exists());
}

#[test]
fn confusion_heatmap_colours_cells_by_row_share() {
    let (_keep, dir) = out_dir();
    let path = dir.join("confusion.png");
    // Row 0: 10 / 0 / 0 (100 % on the diagonal); row 1: 2 / 6 / 0 ... row 2: none.
    let mut m = ConfusionMatrix::new(3);
    let truth = [vec![0u8; 10], vec![1u8; 8]].concat();
    let pred = [vec![0u8; 10], vec![0u8; 2], vec![1u8; 6]].concat();
    m.update(&truth, &pred, None).unwrap();
    let names = ["healthy", "COVID-19", "pneumonia"];
    plot_confusion_matrix(&path, "confusion, sparse-pretrained", &m, &names).unwrap();
    let png = decode(&path);
    assert_eq!(png.dimensions(), CONFUSION_SIZE);
    assert!(gray_variance(&png) > 100.0);
    let layout = HeatmapLayout::for_classes(3);
    // A pixel near the top-left corner of a cell (inside the border, away from the text).
    let corner = |row: usize, col: usize| {
        let (x, y) = layout.cell_origin(row, col);
        png.get_pixel(x + 5, y + 5).0
    };
    assert_eq!(corner(0, 0), heatmap_color(1.0));
    assert_eq!(corner(0, 1), heatmap_color(0.0));
    assert_eq!(corner(1, 0), heatmap_color(0.25));
    assert_eq!(corner(1, 1), heatmap_color(0.75));
    // The empty row stays white.
    assert_eq!(corner(2, 2), [255, 255, 255]);
    // Text: white digits in the dark cell's centre, dark digits in a light one.
    let (x, y) = layout.cell_origin(0, 0);
    let centre_band = |x: u32, y: u32| {
        (x + layout.cell_width / 3..x + 2 * layout.cell_width / 3)
            .flat_map(|px| {
                (y + layout.cell_height / 4..y + 3 * layout.cell_height / 4).map(move |py| (px, py))
            })
            .map(|(px, py)| png.get_pixel(px, py).0)
            .collect::<Vec<_>>()
    };
    assert!(centre_band(x, y).iter().filter(|p| p[0] > 200).count() > 30);
    let (x, y) = layout.cell_origin(0, 1);
    assert!(centre_band(x, y).iter().filter(|p| p[0] < 80).count() > 30);
    // Class names left of the grid: dark pixels in the margin of each row.
    for row in 0..3 {
        let (_, y) = layout.cell_origin(row, 0);
        let dark = (20..layout.left - 5)
            .flat_map(|px| (y..y + layout.cell_height).map(move |py| (px, py)))
            .filter(|&(px, py)| png.get_pixel(px, py).0[0] < 100)
            .count();
        assert!(dark > 30, "row {row}: no class name ({dark} dark pixels)");
    }
}

#[test]
fn confusion_heatmap_rejects_bad_input() {
    let (_keep, dir) = out_dir();
    let path = dir.join("bad-confusion.png");
    let m = ConfusionMatrix::new(2);
    let err = plot_confusion_matrix(&path, "t", &m, &["a", "b"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("zero examples"), "{err}");
    let mut m = ConfusionMatrix::new(2);
    m.update(&[0, 1], &[0, 0], None).unwrap();
    assert!(plot_confusion_matrix(&path, "t", &m, &["a"]).is_err());
    assert!(plot_confusion_matrix(&path, "t", &ConfusionMatrix::new(0), &[]).is_err());
    assert!(!path.exists());
}

#[test]
fn bar_chart_draws_one_colour_per_arm_with_error_bars() {
    let (_keep, dir) = out_dir();
    let path = dir.join("bars.png");
    let groups = ["accuracy", "macro F1", "macro AUC"];
    let series = [
        BarSeries {
            name: "dense-pretrained",
            means: &[0.84, 0.81, 0.93],
            stds: &[0.03, 0.04, 0.02],
        },
        BarSeries {
            name: "sparse-pretrained",
            means: &[0.80, 0.77, 0.90],
            stds: &[0.05, 0.05, 0.03],
        },
        BarSeries {
            name: "not pretrained",
            means: &[0.71, 0.66, 0.85],
            // One run only: no error bar for the last group.
            stds: &[0.06, 0.07, f64::NAN],
        },
    ];
    plot_bars(
        &path,
        "classification, 5 seeds x 5 folds",
        "score",
        &groups,
        &series,
    )
    .unwrap();
    let png = decode(&path);
    assert_eq!(png.dimensions(), BARS_SIZE);
    assert!(gray_variance(&png) > 100.0);
    // Bars are large filled areas of their arm's colour.
    for (i, colour) in SERIES_COLORS.iter().take(3).enumerate() {
        let n = count_colour(&png, *colour);
        assert!(n > 10_000, "arm {i}: only {n} pixels of its colour");
    }
    // Taller bars, more pixels: the first arm's bars are the tallest.
    assert!(count_colour(&png, SERIES_COLORS[0]) > count_colour(&png, SERIES_COLORS[2]));
    // Error bars: the same chart without stds has far fewer black pixels (axes and text
    // only); 8 bars with error bars of 2-px strokes about 10-50 px long each.
    let black = count_colour(&png, [0, 0, 0]);
    let no_std = dir.join("bars-no-std.png");
    let bare: Vec<BarSeries> = series
        .iter()
        .map(|s| BarSeries {
            stds: &[f64::NAN; 3],
            ..*s
        })
        .collect();
    plot_bars(
        &no_std,
        "classification, 5 seeds x 5 folds",
        "score",
        &groups,
        &bare,
    )
    .unwrap();
    let black_bare = count_colour(&decode(&no_std), [0, 0, 0]);
    assert!(
        black > black_bare + 400,
        "{black} black pixels with error bars, {black_bare} without"
    );

    // Negative values are allowed and move the axis below zero.
    let neg = dir.join("bars-negative.png");
    let diff = [BarSeries {
        name: "dense - sparse",
        means: &[0.04, -0.02],
        stds: &[0.02, 0.03],
    }];
    plot_bars(
        &neg,
        "paired differences",
        "difference",
        &["accuracy", "AUC"],
        &diff,
    )
    .unwrap();
    assert_eq!(decode(&neg).dimensions(), BARS_SIZE);
}

#[test]
fn bar_chart_rejects_bad_input_without_writing() {
    let (_keep, dir) = out_dir();
    let path = dir.join("bad-bars.png");
    let ok = BarSeries {
        name: "a",
        means: &[0.5],
        stds: &[0.1],
    };
    assert!(plot_bars(&path, "t", "y", &[], &[ok]).is_err());
    assert!(plot_bars(&path, "t", "y", &["g"], &[]).is_err());
    let nan_mean = BarSeries {
        name: "arm",
        means: &[f64::NAN],
        stds: &[0.1],
    };
    let err = plot_bars(&path, "t", "y", &["g"], &[nan_mean])
        .unwrap_err()
        .to_string();
    assert!(err.contains("arm") && err.contains("NaN"), "{err}");
    let negative_std = BarSeries {
        name: "arm",
        means: &[0.5],
        stds: &[-0.1],
    };
    assert!(plot_bars(&path, "t", "y", &["g"], &[negative_std]).is_err());
    let short = BarSeries {
        name: "arm",
        means: &[0.5],
        stds: &[],
    };
    assert!(plot_bars(&path, "t", "y", &["g"], &[short]).is_err());
    assert!(!path.exists());
}
