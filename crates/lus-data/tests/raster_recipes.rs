//! Golden masks of label recipes on tiny hand-made annotations, written literally like those of
//! `raster_golden.rs`: `.` = background (0), `1`..`8` = class id of the default schema, `x` =
//! the ignore id (255). Every expected mask was worked out by hand from the geometry in the
//! comments, not copied from the rasterizer.
//!
//! Default schema ids (layer): 1 chest-wall (1), 2 rib (6), 3 pleural-line (7, line),
//! 4 a-line (4, line), 5 b-line (5, line), 6 lung (1), 7 consolidation (3), 8 effusion (2).
//!
//! A pixel `(i, j)` belongs to a region when its centre `(i + 0.5, j + 0.5)` does. Edges and
//! stroke sides stay away from pixel centres, so no expected pixel is a tie.

use std::path::Path;

use lus_data::raster::{RasterOptions, rasterize};
use lus_data::recipe::{ClassRender, LabelRecipe, OffAs, StrokeWidth, Unlabelled};
mod common;

use common::*;
use lus_data::{Annotation, Geometry, LabelSchema, Point, Shape};

/// A 12 x 10 annotation without a field of view.
fn frame_of(shapes: Vec<Shape>) -> Annotation {
    annotation(None, shapes)
}

/// A recipe from TOML, checked against the default schema.
fn toml_recipe(name: &str, text: &str) -> LabelRecipe {
    LabelRecipe::from_toml_str(
        text,
        name,
        &LabelSchema::default(),
        Path::new("recipe.toml"),
    )
    .unwrap()
}

fn with_ignore(recipe: LabelRecipe) -> RasterOptions {
    RasterOptions {
        recipe,
        ignore_id: Some(IGNORE),
    }
}

/// A frame with every kind of class, its objects of different widths:
/// - lung: the whole image;
/// - pleural line: y = 1.5, 1 px wide: row 1 only;
/// - A-line: y = 5 from x = 1 to 11, 2 px wide: rows 4-5, columns 1-10;
/// - B-line: a band 6 px wide around x = 6 from y = 2 to 10: columns 3-8, rows 2-9;
/// - rib: x 9..12, y 0..5: columns 9-11, rows 0-4 (over the A-line's right end in row 4);
/// - consolidation: columns 0-2, rows 7-9; effusion: columns 9-11, rows 8-9.
fn frame() -> Annotation {
    frame_of(vec![
        rect("lung", 0.0, 0.0, 12.0, 10.0),
        polyline("pleural-line", &[[0.0, 1.5], [12.0, 1.5]], 1.0),
        polyline("a-line", &[[1.0, 5.0], [11.0, 5.0]], 2.0),
        band(
            "b-line",
            &[[6.0, 2.0], [6.0, 10.0]],
            &[[3.0, 2.0], [9.0, 2.0], [9.0, 10.0], [3.0, 10.0]],
        ),
        rect("rib", 9.0, 0.0, 12.0, 5.0),
        rect("consolidation", 0.0, 7.0, 3.0, 10.0),
        rect("effusion", 9.0, 8.0, 12.0, 10.0),
    ])
}

#[test]
fn dense_frame() {
    // Paint order: lung (1), effusion (2), consolidation (3), A-line (4), B-line (5), rib (6),
    // pleura (7).
    assert_mask(
        &frame(),
        RasterOptions::dense(),
        "
        666666666222
        333333333333
        666555555222
        666555555222
        644555555222
        644555555446
        666555555666
        777555555666
        777555555888
        777555555888",
    );
}

#[test]
fn dense_lines_draws_line_classes_at_full_extent_only() {
    let recipe = toml_recipe("dense-lines", "default = \"off\"\nlines = \"full\"\n");
    assert_eq!(recipe.name, "dense-lines");
    // The lines as in the dense mask, without the rib over the A-line's end; no other class.
    let want = "
        ............
        333333333333
        ...555555...
        ...555555...
        .4455555544.
        .4455555544.
        ...555555...
        ...555555...
        ...555555...
        ...555555...";
    assert_mask(&frame(), RasterOptions::recipe(recipe.clone()), want);
    // Unlabelled pixels are background: an ignore id changes nothing.
    assert_mask(&frame(), with_ignore(recipe), want);
}

#[test]
fn sparse_pathology_strokes_lines_and_fills_consolidation_and_effusion() {
    let recipe = toml_recipe(
        "sparse-pathology",
        "lines = \"stroke\"\nstroke_width = { px = 2.5 }\n\
         [classes]\nconsolidation = \"full\"\neffusion = \"full\"\n",
    );
    // Strokes 2.5 px wide, clipped. Pleura: y in [0.25, 2.75] (rows 0-2) cut to its 1 px
    // extent: row 1. A-line: y in [3.75, 6.25]: rows 4-5, its extent. B-line: x in
    // [4.75, 7.25]: columns 5-6, inside its 6 px band. Consolidation and effusion in full;
    // lung and rib not drawn.
    assert_mask(
        &frame(),
        RasterOptions::recipe(recipe),
        "
        ............
        333333333333
        .....55.....
        .....55.....
        .4444554444.
        .4444554444.
        .....55.....
        777..55.....
        777..55..888
        777..55..888",
    );
}

#[test]
fn off_ignore_paints_off_objects_with_the_ignore_id_in_layer_order() {
    let recipe = LabelRecipe {
        name: "lines-ignore-rest".into(),
        lines: Some(ClassRender::Stroke),
        stroke_width: StrokeWidth::Px(2.5),
        off: OffAs::Ignore,
        ..LabelRecipe::default()
    };
    // Lung, rib, consolidation and effusion are drawn over their full extent as `x`, each at
    // its layer: the rib (6) lies over the A-line stroke (4) in row 4, columns 9-11; the
    // B-line stroke (5) over the consolidation (3); the pleura (7) over the rib.
    assert_mask(
        &frame(),
        with_ignore(recipe.clone()),
        "
        xxxxxxxxxxxx
        333333333333
        xxxxx55xxxxx
        xxxxx55xxxxx
        x44445544xxx
        x4444554444x
        xxxxx55xxxxx
        xxxxx55xxxxx
        xxxxx55xxxxx
        xxxxx55xxxxx",
    );
    // Without an ignore id the recipe cannot be drawn.
    let e = rasterize(
        &frame(),
        &LabelSchema::default(),
        &RasterOptions::recipe(recipe),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no ignore id is set"), "{e}");
}

#[test]
fn unlabelled_ignore_marks_pixels_no_drawn_object_covers() {
    let recipe = LabelRecipe {
        name: "dense-lines-ignore".into(),
        lines: Some(ClassRender::Full),
        unlabelled: Unlabelled::Ignore,
        ..LabelRecipe::default()
    };
    // An explicit background shape over rows 8-9 ("known to be nothing") paints 0 there, under
    // the B-line; the off classes (lung, rib, ...) are hidden, so their pixels are unlabelled.
    let mut a = frame();
    a.shapes.push(rect("background", 0.0, 8.0, 12.0, 10.0));
    assert_mask(
        &a,
        with_ignore(recipe.clone()),
        "
        xxxxxxxxxxxx
        333333333333
        xxx555555xxx
        xxx555555xxx
        x4455555544x
        x4455555544x
        xxx555555xxx
        xxx555555xxx
        ...555555...
        ...555555...",
    );
    // Without an ignore id unlabelled pixels stay background.
    assert_mask(
        &a,
        RasterOptions::recipe(recipe),
        "
        ............
        333333333333
        ...555555...
        ...555555...
        .4455555544.
        .4455555544.
        ...555555...
        ...555555...
        ...555555...
        ...555555...",
    );
}

#[test]
fn unlabelled_ignore_stays_inside_the_field_of_view() {
    // The fan of `raster_golden.rs`: left edge x = 4 - 0.4 y, right edge x = 8 + 0.4 y.
    let mut a = frame_of(vec![polyline(
        "pleural-line",
        &[[0.0, 3.0], [12.0, 3.0]],
        2.0,
    )]);
    a.field_of_view = Some(vec![[4.0, 0.0], [8.0, 0.0], [12.0, 10.0], [0.0, 10.0]]);
    let recipe = LabelRecipe {
        name: "ignore-rest".into(),
        lines: Some(ClassRender::Full),
        unlabelled: Unlabelled::Ignore,
        ..LabelRecipe::default()
    };
    assert_mask(
        &a,
        with_ignore(recipe),
        "
        ....xxxx....
        ...xxxxxx...
        ...333333...
        ...333333...
        ..xxxxxxxx..
        ..xxxxxxxx..
        .xxxxxxxxxx.
        .xxxxxxxxxx.
        .xxxxxxxxxx.
        xxxxxxxxxxxx",
    );
}

#[test]
fn stroking_a_polygon_class_follows_its_derived_centre_line() {
    // Consolidation outlined as x 1..11, y 3..7: centre line y = 5 from x = 1 to 11; its
    // 2.5 px stroke covers y in [3.75, 6.25]: rows 4-5, columns 1-10. A thin rib outlined as
    // x 8.6..9.8, y 0..10: centre line x = 9.2, stroke x in [7.95, 10.45] (columns 8-9), cut
    // to the rib's own pixels: column 9 (8.5 lies outside the rib). Unclipped, both columns.
    let a = frame_of(vec![
        rect("consolidation", 1.0, 3.0, 11.0, 7.0),
        rect("rib", 8.6, 0.0, 9.8, 10.0),
        rect("lung", 0.0, 0.0, 12.0, 10.0),
    ]);
    let recipe = toml_recipe(
        "outlines",
        "stroke_width = { px = 2.5 }\n[classes]\nconsolidation = \"stroke\"\nrib = \"stroke\"\n",
    );
    assert_mask(
        &a,
        RasterOptions::recipe(recipe.clone()),
        "
        .........2..
        .........2..
        .........2..
        .........2..
        .7777777727.
        .7777777727.
        .........2..
        .........2..
        .........2..
        .........2..",
    );
    let unclipped = LabelRecipe {
        clip_strokes: false,
        ..recipe
    };
    assert_mask(
        &a,
        RasterOptions::recipe(unclipped),
        "
        ........22..
        ........22..
        ........22..
        ........22..
        .7777777227.
        .7777777227.
        ........22..
        ........22..
        ........22..
        ........22..",
    );
}

/// A thin pleural band and a wide B-line band, for the clipping of strokes.
/// - Pleura: outline y 1.8..3.2 (centres of row 2 only), centre line y = 2.5 (1 px: row 2):
///   its full extent is row 2.
/// - B-line: outline x 2..10 (columns 2-9), centre line x = 6.2 from y = 4 to 10.
fn bands() -> Annotation {
    frame_of(vec![
        band(
            "pleural-line",
            &[[0.0, 2.5], [12.0, 2.5]],
            &[[0.0, 1.8], [12.0, 1.8], [12.0, 3.2], [0.0, 3.2]],
        ),
        band(
            "b-line",
            &[[6.2, 4.0], [6.2, 10.0]],
            &[[2.0, 4.0], [10.0, 4.0], [10.0, 10.0], [2.0, 10.0]],
        ),
    ])
}

fn five_px_strokes(clip_strokes: bool) -> RasterOptions {
    RasterOptions::recipe(LabelRecipe {
        name: "five".into(),
        lines: Some(ClassRender::Stroke),
        stroke_width: StrokeWidth::Px(5.0),
        clip_strokes,
        ..LabelRecipe::default()
    })
}

#[test]
fn a_stroke_wider_than_a_thin_band_is_cut_to_the_band() {
    // 5 px strokes. Pleura: y in [0, 5] (rows 0-4), cut to row 2. B-line: x in [3.7, 8.7]
    // (columns 4-8), inside its 8 px band: it keeps its width.
    assert_mask(
        &bands(),
        five_px_strokes(true),
        "
        ............
        ............
        333333333333
        ............
        ....55555...
        ....55555...
        ....55555...
        ....55555...
        ....55555...
        ....55555...",
    );
    // Not clipped (the legacy behaviour): the pleura's stroke is 5 rows, over the B-line's
    // first row (layer 7 over 5).
    assert_mask(
        &bands(),
        five_px_strokes(false),
        "
        333333333333
        333333333333
        333333333333
        333333333333
        333333333333
        ....55555...
        ....55555...
        ....55555...
        ....55555...
        ....55555...",
    );
    // Dense, for comparison: the bands' full extents.
    assert_mask(
        &bands(),
        RasterOptions::dense(),
        "
        ............
        ............
        333333333333
        ............
        ..55555555..
        ..55555555..
        ..55555555..
        ..55555555..
        ..55555555..
        ..55555555..",
    );
}

#[test]
fn the_built_in_sparse_width_is_relative_to_the_image() {
    // The bands above scaled by 8 (96 x 80 px): the built-in sparse stroke is 3 px at 128 px,
    // 2.25 px at 96 px. B-line centre line x = 49.6: x in [48.475, 50.725]: columns 48-50
    // (centres 48.5, 49.5, 50.5), rows 32-79. Pleura (outline y 14.4..25.6, rows 14-25): centre
    // y = 20: y in [18.875, 21.125]: rows 19-20, all 96 columns.
    let scale = |shape: &Shape| -> Shape {
        let s =
            |ps: &[Point]| -> Vec<Point> { ps.iter().map(|p| [p[0] * 8.0, p[1] * 8.0]).collect() };
        let geometry = match &shape.geometry {
            Geometry::Band {
                centerline,
                outline,
            } => Geometry::Band {
                centerline: s(centerline),
                outline: s(outline),
            },
            _ => unreachable!(),
        };
        Shape {
            label: shape.label.clone(),
            geometry,
        }
    };
    let mut a = Annotation::new(96, 80);
    a.shapes = bands().shapes.iter().map(scale).collect();
    let sparse = RasterOptions::recipe(LabelRecipe::builtin("sparse").unwrap());
    let mask = rasterize(&a, &LabelSchema::default(), &sparse).unwrap();
    for y in 0..80u32 {
        for x in 0..96u32 {
            let want = if (19..=20).contains(&y) {
                3
            } else if y >= 32 && (48..=50).contains(&x) {
                5
            } else {
                0
            };
            assert_eq!(mask.get(x, y), want, "({x}, {y})\n{}", art(&mask));
        }
    }
    let hist = mask.histogram();
    assert_eq!((hist[3], hist[5]), (2 * 96, 3 * 48));
}
