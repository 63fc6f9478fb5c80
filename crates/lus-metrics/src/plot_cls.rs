//! Classification figures as PNG: ROC curves, a confusion-matrix heatmap, and bar charts with
//! error bars (arms x metrics).
//!
//! Same machinery as [`crate::plot`]: plotters' bitmap backend into an in-memory RGB buffer,
//! the embedded DejaVu Sans font, PNG written atomically. Every function checks its input
//! first and writes nothing on error.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::classification::RocCurve;
use crate::confusion::ConfusionMatrix;
use crate::error::{MetricsError, Result};
use crate::plot::{FONT_FAMILY, SERIES_COLORS, ensure_font, plot_err, write_png};

/// Size of a ROC figure in pixels.
pub const ROC_SIZE: (u32, u32) = (720, 720);
/// Size of a confusion-matrix figure in pixels.
pub const CONFUSION_SIZE: (u32, u32) = (720, 680);
/// Size of a bar chart in pixels.
pub const BARS_SIZE: (u32, u32) = (960, 600);

/// Colour of the diagonal "chance" line of a ROC figure.
pub const CHANCE_COLOR: [u8; 3] = [150, 150, 150];

fn invalid(path: &Path, message: String) -> MetricsError {
    MetricsError::InvalidInput(format!("{}: {message}", path.display()))
}

fn rgb([r, g, b]: [u8; 3]) -> RGBColor {
    RGBColor(r, g, b)
}

/// Draws ROC curves on one chart: curve `i` in [`SERIES_COLORS`]`[i % 8]`, labelled
/// `"<name> (AUC = 0.912)"` in the legend, over the grey diagonal of a chance classifier.
/// Writes a [`ROC_SIZE`] PNG to `path` atomically.
///
/// Errors (nothing is written): no curve; a curve with no point, with `fpr` and `tpr` of
/// different lengths, or with a rate that is NaN or outside `[0, 1]` (the ROC curve of a
/// class absent from the truth has NaN rates: leave it out).
pub fn plot_roc_curves(path: &Path, title: &str, curves: &[(&str, &RocCurve)]) -> Result<()> {
    if curves.is_empty() {
        return Err(invalid(path, "ROC figure without curves".into()));
    }
    for (name, curve) in curves {
        if curve.fpr.is_empty() || curve.fpr.len() != curve.tpr.len() {
            return Err(invalid(
                path,
                format!(
                    "ROC curve {name:?}: {} false and {} true positive rates",
                    curve.fpr.len(),
                    curve.tpr.len()
                ),
            ));
        }
        if let Some((i, (f, t))) = curve
            .fpr
            .iter()
            .zip(&curve.tpr)
            .enumerate()
            .find(|(_, (f, t))| !((0.0..=1.0).contains(*f) && (0.0..=1.0).contains(*t)))
        {
            return Err(invalid(
                path,
                format!(
                    "ROC curve {name:?}, point {i}: rates ({f}, {t}) are not in [0, 1] (a class \
                     absent from the truth has no ROC curve)"
                ),
            ));
        }
    }
    ensure_font().map_err(|m| plot_err(path, m))?;
    let (w, h) = ROC_SIZE;
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_FAMILY, 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.01f64..1.01f64, -0.01f64..1.01f64)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("false positive rate (1 - specificity)")
            .y_desc("true positive rate (sensitivity)")
            .label_style((FONT_FAMILY, 14))
            .axis_desc_style((FONT_FAMILY, 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                // Width 2: plotters anti-aliases 1-pixel lines, which would blur the colour.
                rgb(CHANCE_COLOR).stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?
            .label("chance")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], rgb(CHANCE_COLOR).stroke_width(2))
            });
        for (i, (name, curve)) in curves.iter().enumerate() {
            let color = rgb(SERIES_COLORS[i % SERIES_COLORS.len()]);
            let points: Vec<(f64, f64)> = curve
                .fpr
                .iter()
                .copied()
                .zip(curve.tpr.iter().copied())
                .collect();
            let auc = if curve.auc.is_nan() {
                "AUC undefined".to_string()
            } else {
                format!("AUC = {:.3}", curve.auc)
            };
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(3)))
                .map_err(|e| plot_err(path, e))?
                .label(format!("{name} ({auc})"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT_FAMILY, 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    write_png(path, &buffer, (w, h))
}

/// Colour of a heatmap cell holding `fraction` (0..=1) of its row: linear from white to
/// dark blue `[8, 48, 107]`.
pub fn heatmap_color(fraction: f64) -> [u8; 3] {
    const DARK: [f64; 3] = [8.0, 48.0, 107.0];
    let f = fraction.clamp(0.0, 1.0);
    DARK.map(|d| (255.0 + f * (d - 255.0)).round() as u8)
}

/// Where the cells of a confusion-matrix figure lie (for readers of the pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeatmapLayout {
    /// Number of classes.
    pub classes: usize,
    /// Left edge of the grid, pixels.
    pub left: u32,
    /// Top edge of the grid, pixels.
    pub top: u32,
    /// Width of a cell, pixels.
    pub cell_width: u32,
    /// Height of a cell, pixels.
    pub cell_height: u32,
}

impl HeatmapLayout {
    /// Margin left of the grid for the row (truth) names, pixels.
    pub const LEFT: u32 = 170;
    /// Margin above the grid for the title, pixels.
    pub const TOP: u32 = 56;
    /// Margin right of the grid, pixels.
    pub const RIGHT: u32 = 24;
    /// Margin below the grid for the column (prediction) names, pixels.
    pub const BOTTOM: u32 = 96;

    /// The layout of a [`CONFUSION_SIZE`] figure of `classes` classes (`>= 1`).
    pub fn for_classes(classes: usize) -> Self {
        let (w, h) = CONFUSION_SIZE;
        let k = classes.max(1) as u32;
        Self {
            classes,
            left: Self::LEFT,
            top: Self::TOP,
            cell_width: (w - Self::LEFT - Self::RIGHT) / k,
            cell_height: (h - Self::TOP - Self::BOTTOM) / k,
        }
    }

    /// Top-left pixel of the cell of truth `row`, prediction `column`.
    pub fn cell_origin(&self, row: usize, column: usize) -> (u32, u32) {
        (
            self.left + column as u32 * self.cell_width,
            self.top + row as u32 * self.cell_height,
        )
    }
}

/// Draws a confusion matrix as a heatmap: rows = true class, columns = predicted class, each
/// cell coloured by its share of the row ([`heatmap_color`]) and labelled with its count and
/// that share in percent (a row without examples shows "n/a"); class names on both axes.
/// Writes a [`CONFUSION_SIZE`] PNG to `path` atomically; cells as in [`HeatmapLayout`].
///
/// Errors (nothing is written): a class-name count different from the class count, no class,
/// or a matrix that counted no example.
pub fn plot_confusion_matrix(
    path: &Path,
    title: &str,
    matrix: &ConfusionMatrix,
    class_names: &[&str],
) -> Result<()> {
    let k = matrix.num_classes();
    if k == 0 {
        return Err(invalid(path, "confusion matrix without classes".into()));
    }
    if class_names.len() != k {
        return Err(invalid(
            path,
            format!("{} class names for {k} classes", class_names.len()),
        ));
    }
    if matrix.total() == 0 {
        return Err(invalid(path, "confusion matrix of zero examples".into()));
    }
    ensure_font().map_err(|m| plot_err(path, m))?;
    let layout = HeatmapLayout::for_classes(k);
    let (w, h) = CONFUSION_SIZE;
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let draw_err = |e| plot_err(path, e);
        let centred = |size: f64| {
            (FONT_FAMILY, size)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center))
        };
        root.draw(&Text::new(
            title.to_string(),
            ((w / 2) as i32, (HeatmapLayout::TOP / 2) as i32),
            centred(22.0),
        ))
        .map_err(draw_err)?;
        let (cw, ch) = (layout.cell_width as i32, layout.cell_height as i32);
        let text_size = f64::from(layout.cell_height.min(layout.cell_width) / 6).clamp(9.0, 22.0);
        for row in 0..k {
            let support: u64 = (0..k).map(|c| matrix.count(row, c)).sum();
            for column in 0..k {
                let count = matrix.count(row, column);
                let fraction = if support == 0 {
                    0.0
                } else {
                    count as f64 / support as f64
                };
                let (x, y) = layout.cell_origin(row, column);
                let (x, y) = (x as i32, y as i32);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cw, y + ch)],
                    rgb(heatmap_color(fraction)).filled(),
                ))
                .map_err(draw_err)?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cw, y + ch)],
                    RGBColor(200, 200, 200).stroke_width(1),
                ))
                .map_err(draw_err)?;
                let share = if support == 0 {
                    "n/a".to_string()
                } else {
                    format!("{:.1}%", 100.0 * fraction)
                };
                // White text on dark cells.
                let ink = if fraction > 0.5 { WHITE } else { BLACK };
                let (cx, cy) = (x + cw / 2, y + ch / 2);
                let style = centred(text_size).color(&ink);
                let gap = (text_size * 0.65) as i32;
                root.draw(&Text::new(count.to_string(), (cx, cy - gap), style.clone()))
                    .map_err(draw_err)?;
                root.draw(&Text::new(share, (cx, cy + gap), style))
                    .map_err(draw_err)?;
            }
        }
        let grid_bottom = layout.top as i32 + k as i32 * ch;
        for (i, name) in class_names.iter().enumerate() {
            let (x, y) = layout.cell_origin(i, i);
            // Row names right-aligned left of the grid; column names under it.
            let row_style = (FONT_FAMILY, 16.0)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center));
            root.draw(&Text::new(
                name.to_string(),
                (layout.left as i32 - 10, y as i32 + ch / 2),
                row_style,
            ))
            .map_err(draw_err)?;
            let col_style = (FONT_FAMILY, 16.0)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(
                name.to_string(),
                (x as i32 + cw / 2, grid_bottom + 10),
                col_style,
            ))
            .map_err(draw_err)?;
        }
        let grid_centre_x = layout.left as i32 + k as i32 * cw / 2;
        root.draw(&Text::new(
            "predicted class",
            (grid_centre_x, grid_bottom + 56),
            centred(17.0),
        ))
        .map_err(draw_err)?;
        root.draw(&Text::new(
            "true class",
            (24, layout.top as i32 + k as i32 * ch / 2),
            centred(17.0).transform(FontTransform::Rotate270),
        ))
        .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    write_png(path, &buffer, (w, h))
}

/// One set of bars (e.g. one arm): a mean and a standard deviation per group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BarSeries<'a> {
    /// Legend entry.
    pub name: &'a str,
    /// Bar heights, one per group; must be finite.
    pub means: &'a [f64],
    /// Error-bar half lengths (mean ± std), one per group; finite and `>= 0`, or NaN for "no
    /// error bar" (the std of a single run is NaN, see [`crate::stats::sample_std`]).
    pub stds: &'a [f64],
}

/// Draws grouped bars: one group per entry of `groups` (e.g. metrics, or arms), inside each
/// group one bar per series (series `i` in [`SERIES_COLORS`]`[i % 8]`), with a black error
/// bar from `mean - std` to `mean + std` and the mean written above. The y axis starts at 0
/// unless a bar or error bar goes below it. Writes a [`BARS_SIZE`] PNG to `path` atomically.
///
/// Errors (nothing is written): no group, no series, a series whose `means` or `stds` length
/// is not the group count, a non-finite mean, or a std that is infinite or negative.
pub fn plot_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[&str],
    series: &[BarSeries],
) -> Result<()> {
    if groups.is_empty() || series.is_empty() {
        return Err(invalid(
            path,
            format!(
                "bar chart with {} groups and {} series",
                groups.len(),
                series.len()
            ),
        ));
    }
    for s in series {
        if s.means.len() != groups.len() || s.stds.len() != groups.len() {
            return Err(invalid(
                path,
                format!(
                    "series {:?}: {} means and {} stds for {} groups",
                    s.name,
                    s.means.len(),
                    s.stds.len(),
                    groups.len()
                ),
            ));
        }
        for (g, (m, sd)) in s.means.iter().zip(s.stds).enumerate() {
            if !m.is_finite() {
                return Err(invalid(
                    path,
                    format!("series {:?}, group {:?}: mean {m}", s.name, groups[g]),
                ));
            }
            if !(sd.is_nan() || (sd.is_finite() && *sd >= 0.0)) {
                return Err(invalid(
                    path,
                    format!("series {:?}, group {:?}: std {sd}", s.name, groups[g]),
                ));
            }
        }
    }
    ensure_font().map_err(|m| plot_err(path, m))?;
    // Extent of the bars and error bars (a NaN std counts as 0).
    let ends = series.iter().flat_map(|s| {
        s.means.iter().zip(s.stds).flat_map(|(m, sd)| {
            let sd = if sd.is_nan() { 0.0 } else { *sd };
            [m - sd, m + sd]
        })
    });
    let (lo, hi) = ends.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    // Headroom for the value labels and the legend.
    let (y0, y1) = (
        if lo < 0.0 { lo - 0.08 * span } else { 0.0 },
        hi + 0.22 * span,
    );
    let (w, h) = BARS_SIZE;
    let n_groups = groups.len();
    let n_series = series.len();
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_FAMILY, 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0f64..n_groups as f64, y0..y1)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(y_label)
            .label_style((FONT_FAMILY, 14))
            .axis_desc_style((FONT_FAMILY, 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        // Each group spans one x unit; its bars fill the middle 80 %.
        let bar_width = 0.8 / n_series as f64;
        let value_style = (FONT_FAMILY, 12.0)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        for (i, s) in series.iter().enumerate() {
            let color = rgb(SERIES_COLORS[i % SERIES_COLORS.len()]);
            let left = |g: usize| g as f64 + 0.1 + i as f64 * bar_width;
            chart
                .draw_series(s.means.iter().enumerate().map(|(g, &m)| {
                    Rectangle::new(
                        [(left(g), 0.0), (left(g) + bar_width * 0.92, m)],
                        color.filled(),
                    )
                }))
                .map_err(|e| plot_err(path, e))?
                .label(s.name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled())
                });
            let centre = |g: usize| left(g) + bar_width * 0.46;
            // Error bars: a vertical stroke with caps (plotters' ErrorBar also marks the mean
            // with a circle, which hides the bar top).
            let cap = bar_width * 0.12;
            chart
                .draw_series(
                    s.means
                        .iter()
                        .zip(s.stds)
                        .enumerate()
                        .filter(|(_, (_, sd))| !sd.is_nan())
                        .flat_map(|(g, (&m, &sd))| {
                            let x = centre(g);
                            [
                                vec![(x, m - sd), (x, m + sd)],
                                vec![(x - cap, m - sd), (x + cap, m - sd)],
                                vec![(x - cap, m + sd), (x + cap, m + sd)],
                            ]
                        })
                        .map(|points| PathElement::new(points, BLACK.stroke_width(2))),
                )
                .map_err(|e| plot_err(path, e))?;
            for (g, (&m, &sd)) in s.means.iter().zip(s.stds).enumerate() {
                let top = m + if sd.is_nan() { 0.0 } else { sd };
                let (px, py) = chart.backend_coord(&(centre(g), top.max(m).max(0.0)));
                root.draw(&Text::new(
                    format!("{m:.3}"),
                    (px, py - 4),
                    value_style.clone(),
                ))
                .map_err(|e| plot_err(path, e))?;
            }
        }
        let group_style = (FONT_FAMILY, 15.0)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for (g, name) in groups.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(g as f64 + 0.5, y0));
            root.draw(&Text::new(
                name.to_string(),
                (px, py + 10),
                group_style.clone(),
            ))
            .map_err(|e| plot_err(path, e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT_FAMILY, 14))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    write_png(path, &buffer, (w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_colours_run_from_white_to_dark_blue() {
        assert_eq!(heatmap_color(0.0), [255, 255, 255]);
        assert_eq!(heatmap_color(1.0), [8, 48, 107]);
        assert_eq!(heatmap_color(0.5), [132, 152, 181]);
        assert_eq!(heatmap_color(f64::INFINITY), [8, 48, 107]);
    }

    #[test]
    fn heatmap_layout_fits_the_figure() {
        for k in 1..=8 {
            let l = HeatmapLayout::for_classes(k);
            let (x, y) = l.cell_origin(k - 1, k - 1);
            assert!(x + l.cell_width <= CONFUSION_SIZE.0 - HeatmapLayout::RIGHT);
            assert!(y + l.cell_height <= CONFUSION_SIZE.1 - HeatmapLayout::BOTTOM);
        }
    }
}
