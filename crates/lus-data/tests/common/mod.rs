//! What the rasterization tests share: shape builders for small hand-made annotations, and
//! masks drawn as text ("art") to compare with expected pictures.

#![allow(dead_code)]

use std::borrow::Borrow;

use lus_data::raster::{RasterOptions, rasterize};
use lus_data::{Annotation, Geometry, LabelSchema, Mask, Point, Shape};

/// The ignore id of the tests; drawn as `x`.
pub const IGNORE: u8 = 255;

pub fn polygon(label: &str, points: &[Point]) -> Shape {
    Shape {
        label: label.into(),
        geometry: Geometry::Polygon {
            points: points.to_vec(),
        },
    }
}

pub fn rect(label: &str, x0: f32, y0: f32, x1: f32, y1: f32) -> Shape {
    polygon(label, &[[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
}

pub fn polyline(label: &str, points: &[Point], width: f32) -> Shape {
    Shape {
        label: label.into(),
        geometry: Geometry::Polyline {
            points: points.to_vec(),
            width,
        },
    }
}

pub fn band(label: &str, centerline: &[Point], outline: &[Point]) -> Shape {
    Shape {
        label: label.into(),
        geometry: Geometry::Band {
            centerline: centerline.to_vec(),
            outline: outline.to_vec(),
        },
    }
}

/// A 12 x 10 annotation.
pub fn annotation(field_of_view: Option<&[Point]>, shapes: Vec<Shape>) -> Annotation {
    let mut a = Annotation::new(12, 10);
    a.field_of_view = field_of_view.map(<[Point]>::to_vec);
    a.shapes = shapes;
    a
}

/// The mask as text: `.` background, digits class ids, `x` the ignore id, `?` anything else.
pub fn art(mask: &Mask) -> String {
    let width = mask.width() as usize;
    mask.data()
        .chunks(width)
        .map(|row| {
            row.iter()
                .map(|&v| match v {
                    0 => '.',
                    1..=9 => char::from(b'0' + v),
                    IGNORE => 'x',
                    _ => '?',
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The expected art without the indentation of the test source.
pub fn expected(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rasterizes `a` with `options` under the default schema and compares with `want`.
#[track_caller]
pub fn assert_mask(a: &Annotation, options: impl Borrow<RasterOptions>, want: &str) {
    let options = options.borrow();
    let mask = rasterize(a, &LabelSchema::default(), options).unwrap();
    assert_eq!((mask.width(), mask.height()), (a.width, a.height));
    let got = art(&mask);
    let want = expected(want);
    assert!(
        got == want,
        "{options:?}\n--- got ---\n{got}\n--- expected ---\n{want}\n"
    );
}
