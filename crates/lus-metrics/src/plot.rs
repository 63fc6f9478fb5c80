//! Figures as PNG files: training curves and image/mask overlay grids.
//!
//! Everything is drawn into an in-memory RGB buffer (plotters' bitmap backend), encoded as PNG
//! with the `image` crate and written atomically, so a report never links a half-written
//! figure. Text uses DejaVu Sans, embedded in the binary (`assets/DejaVuSans.ttf`, Bitstream
//! Vera licence in `assets/LICENSE-DejaVu.txt`), so no system font library is needed at run
//! time.

use std::path::Path;
use std::sync::OnceLock;

use image::ImageEncoder;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{MetricsError, Result};
use lus_io::write_atomic;

/// The embedded font, registered with plotters under [`FONT_FAMILY`].
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// Family name under which the embedded font is registered (a private name, so that another
/// crate registering "sans-serif" cannot swap our font).
pub const FONT_FAMILY: &str = "lus-dejavu-sans";

/// Size of a curves figure in pixels.
pub const CURVES_SIZE: (u32, u32) = (960, 600);

/// Line colours of successive series (Okabe–Ito, distinguishable with colour blindness),
/// reused cyclically.
pub const SERIES_COLORS: [[u8; 3]; 8] = [
    [0, 114, 178],
    [213, 94, 0],
    [0, 158, 115],
    [204, 121, 167],
    [230, 159, 0],
    [86, 180, 233],
    [0, 0, 0],
    [240, 228, 66],
];

pub(crate) fn ensure_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, DEJAVU_SANS)
                .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
}

pub(crate) fn plot_err(path: &Path, message: impl ToString) -> MetricsError {
    MetricsError::Plot {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Encodes an RGB buffer as PNG and writes it atomically.
pub(crate) fn write_png(path: &Path, rgb: &[u8], (width, height): (u32, u32)) -> Result<()> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| plot_err(path, format!("PNG encoding failed: {e}")))?;
    Ok(write_atomic(path, &bytes)?)
}

/// Padded axis range of the finite values; `[0, 1]` when there are none.
fn axis_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        0.05 * span
    } else {
        0.5 * lo.abs().max(1.0)
    };
    (lo - pad, hi + pad)
}

/// Draws line curves (e.g. training loss and a validation metric per epoch), one colour per
/// series, with a legend. Points whose x or y is NaN or infinite are skipped and break the
/// line (a gap, not a jump to zero); a series with no finite point still appears in the
/// legend. Writes a [`CURVES_SIZE`] PNG to `path` atomically.
pub fn plot_curves(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, &[(f64, f64)])],
) -> Result<()> {
    ensure_font().map_err(|m| plot_err(path, m))?;
    let (w, h) = CURVES_SIZE;
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
        let all = || series.iter().flat_map(|(_, pts)| pts.iter()).filter(finite);
        let (x0, x1) = axis_range(all().map(|p| p.0));
        let (y0, y1) = axis_range(all().map(|p| p.1));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_FAMILY, 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style((FONT_FAMILY, 14))
            .axis_desc_style((FONT_FAMILY, 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (i, (name, points)) in series.iter().enumerate() {
            let [r, g, b] = SERIES_COLORS[i % SERIES_COLORS.len()];
            let color = RGBColor(r, g, b);
            // Consecutive finite points form one polyline; a non-finite point ends it.
            for run in points.split(|p| !finite(&p)) {
                if run.len() > 1 {
                    chart
                        .draw_series(LineSeries::new(run.iter().copied(), color.stroke_width(2)))
                        .map_err(|e| plot_err(path, e))?;
                }
            }
            chart
                .draw_series(
                    points
                        .iter()
                        .filter(finite)
                        .map(|&p| Circle::new(p, 3, color.filled())),
                )
                .map_err(|e| plot_err(path, e))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT_FAMILY, 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| plot_err(path, e))?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    write_png(path, &rgb, (w, h))
}

/// One row of an overlay grid: a grayscale image and any number of class-id masks of the
/// same size (e.g. dense truth, sparse truth, prediction of the dense-trained net, prediction
/// of the sparse-trained net).
#[derive(Debug, Clone)]
pub struct OverlayRow<'a> {
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Row-major grayscale image, `width * height` bytes.
    pub image: &'a [u8],
    /// Row-major class-id masks, `width * height` bytes each.
    pub masks: Vec<&'a [u8]>,
}

/// Opacity of a class colour over the image: a masked pixel is
/// `round_half_up((gray + colour) / 2)` per channel, i.e. `(gray + colour + 1) / 2`.
pub const OVERLAY_ALPHA: f32 = 0.5;

/// Where the cells of an overlay grid lie (shared by the drawing code and by anyone who wants
/// to read pixels back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayLayout {
    /// Integer upscaling (nearest neighbour) of every image: the smallest factor that makes
    /// the largest side at least [`OverlayLayout::MIN_CELL`] pixels, so titles fit over
    /// small images.
    pub scale: usize,
    /// Cell width in output pixels (largest image width times `scale`).
    pub cell_width: usize,
    /// Cell height in output pixels.
    pub cell_height: usize,
    /// Number of columns (image + masks).
    pub columns: usize,
    /// Number of rows.
    pub rows: usize,
}

impl OverlayLayout {
    /// Gap between cells and around the grid, in pixels.
    pub const PAD: usize = 6;
    /// Height of the title band at the top, in pixels.
    pub const TITLE_HEIGHT: usize = 30;
    /// Smallest size of a cell's larger side, in pixels.
    pub const MIN_CELL: usize = 192;

    /// The layout for `rows` (which must all hold the same number of masks).
    pub fn for_rows(rows: &[OverlayRow]) -> Self {
        let max_w = rows.iter().map(|r| r.width).max().unwrap_or(1).max(1);
        let max_h = rows.iter().map(|r| r.height).max().unwrap_or(1).max(1);
        let scale = Self::MIN_CELL.div_ceil(max_w.max(max_h)).max(1);
        Self {
            scale,
            cell_width: max_w * scale,
            cell_height: max_h * scale,
            columns: 1 + rows.first().map_or(0, |r| r.masks.len()),
            rows: rows.len(),
        }
    }

    /// Top-left output pixel of the cell at (`row`, `column`).
    pub fn cell_origin(&self, row: usize, column: usize) -> (usize, usize) {
        (
            Self::PAD + column * (self.cell_width + Self::PAD),
            Self::TITLE_HEIGHT + Self::PAD + row * (self.cell_height + Self::PAD),
        )
    }

    /// Size of the whole figure in pixels.
    pub fn size(&self) -> (usize, usize) {
        (
            Self::PAD + self.columns * (self.cell_width + Self::PAD),
            Self::TITLE_HEIGHT + Self::PAD + self.rows * (self.cell_height + Self::PAD),
        )
    }
}

/// Draws a grid: one row per [`OverlayRow`], columns `image | mask 1 | mask 2 | ...`, with
/// `column_titles` (one per column) above. Mask columns show the image with each pixel of
/// class `k > 0` blended with `palette[k]` (see [`OVERLAY_ALPHA`]); class 0 is transparent.
/// Images are upscaled by [`OverlayLayout::scale`] and placed top-left in their cells; the
/// background is white. Writes the PNG to `path` atomically.
///
/// Errors (nothing is written): no rows, rows with different mask counts, a title count that
/// is not the column count, a buffer whose length is not `width * height`, an empty image, or
/// a mask value without a palette colour (the error names row, column, pixel and value).
pub fn overlay_grid(
    path: &Path,
    rows: &[OverlayRow],
    palette: &[[u8; 3]],
    column_titles: &[&str],
) -> Result<()> {
    let invalid = |m: String| MetricsError::InvalidInput(format!("{}: {m}", path.display()));
    if rows.is_empty() {
        return Err(invalid("overlay grid without rows".into()));
    }
    let layout = OverlayLayout::for_rows(rows);
    if column_titles.len() != layout.columns {
        return Err(invalid(format!(
            "{} column titles for {} columns (image + {} masks)",
            column_titles.len(),
            layout.columns,
            layout.columns - 1
        )));
    }
    for (r, row) in rows.iter().enumerate() {
        if row.width == 0 || row.height == 0 {
            return Err(invalid(format!(
                "row {r}: empty image {}x{}",
                row.width, row.height
            )));
        }
        if row.masks.len() + 1 != layout.columns {
            return Err(invalid(format!(
                "row {r} has {} masks, row 0 has {}",
                row.masks.len(),
                layout.columns - 1
            )));
        }
        let n = row.width * row.height;
        if row.image.len() != n {
            return Err(invalid(format!(
                "row {r}: image has {} bytes, expected {}x{} = {n}",
                row.image.len(),
                row.width,
                row.height
            )));
        }
        for (m, mask) in row.masks.iter().enumerate() {
            if mask.len() != n {
                return Err(invalid(format!(
                    "row {r}, mask {m}: {} bytes, expected {n}",
                    mask.len()
                )));
            }
            if let Some((i, &v)) = mask
                .iter()
                .enumerate()
                .find(|(_, v)| **v as usize >= palette.len().max(1))
            {
                return Err(invalid(format!(
                    "row {r}, mask {m}, pixel {i}: class {v} has no palette colour ({} colours)",
                    palette.len()
                )));
            }
        }
    }
    ensure_font().map_err(|m| plot_err(path, m))?;

    let (fig_w, fig_h) = layout.size();
    let mut rgb = vec![255u8; fig_w * fig_h * 3];
    let s = layout.scale;
    for (r, row) in rows.iter().enumerate() {
        for c in 0..layout.columns {
            let (ox, oy) = layout.cell_origin(r, c);
            let mask = if c == 0 { None } else { Some(row.masks[c - 1]) };
            for y in 0..row.height * s {
                let out_row = (oy + y) * fig_w;
                for x in 0..row.width * s {
                    let src = (y / s) * row.width + x / s;
                    let g = row.image[src];
                    let px = match mask.map(|m| m[src]) {
                        Some(k) if k != 0 => blend(g, palette[k as usize]),
                        _ => [g, g, g],
                    };
                    let o = (out_row + ox + x) * 3;
                    rgb[o..o + 3].copy_from_slice(&px);
                }
            }
        }
    }
    {
        let root =
            BitMapBackend::with_buffer(&mut rgb, (fig_w as u32, fig_h as u32)).into_drawing_area();
        for (c, title) in column_titles.iter().enumerate() {
            let (ox, _) = layout.cell_origin(0, c);
            // Shrink the font until the title fits its column (down to 9 px).
            let mut size = 17.0;
            while size > 9.0 {
                let (tw, _) = root
                    .estimate_text_size(title, &(FONT_FAMILY, size).into_font().into())
                    .map_err(|e| plot_err(path, e))?;
                if (tw as usize) < layout.cell_width {
                    break;
                }
                size -= 1.0;
            }
            let style = (FONT_FAMILY, size)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center));
            let centre = (
                (ox + layout.cell_width / 2) as i32,
                ((OverlayLayout::TITLE_HEIGHT + OverlayLayout::PAD) / 2) as i32,
            );
            root.draw(&Text::new(*title, centre, style))
                .map_err(|e| plot_err(path, e))?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    write_png(path, &rgb, (fig_w as u32, fig_h as u32))
}

/// A class colour over a gray value at [`OVERLAY_ALPHA`] = 0.5, rounding halves up.
fn blend(gray: u8, color: [u8; 3]) -> [u8; 3] {
    // Round half up: ceil((gray + colour) / 2).
    color.map(|c| (u16::from(gray) + u16::from(c)).div_ceil(2) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_rounds_half_up() {
        assert_eq!(blend(100, [255, 0, 1]), [178, 50, 51]);
        assert_eq!(blend(0, [0, 255, 254]), [0, 128, 127]);
    }

    #[test]
    fn axis_range_pads_and_handles_degenerate_input() {
        assert_eq!(axis_range([0.0, 10.0].into_iter()), (-0.5, 10.5));
        assert_eq!(axis_range([f64::NAN].into_iter()), (0.0, 1.0));
        assert_eq!(axis_range([2.0, 2.0].into_iter()), (1.0, 3.0));
    }

    #[test]
    fn layout_upscales_small_images_only() {
        let img = vec![0u8; 64 * 32];
        let small = [OverlayRow {
            width: 64,
            height: 32,
            image: &img,
            masks: vec![],
        }];
        let l = OverlayLayout::for_rows(&small);
        assert_eq!((l.scale, l.cell_width, l.cell_height), (3, 192, 96));
        let big_img = vec![0u8; 256 * 200];
        let big = [OverlayRow {
            width: 256,
            height: 200,
            image: &big_img,
            masks: vec![],
        }];
        assert_eq!(OverlayLayout::for_rows(&big).scale, 1);
    }
}
