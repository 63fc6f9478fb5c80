//! Properties of rasterization on random valid annotations (random field of view + random
//! polygons, polylines and bands of every class), checked against an independent reference:
//! point-in-polygon by winding number and distances to centre lines, at pixel centres.
//!
//! tiny-skia snaps coordinates to 1/64 px and walks edges in fixed point, so a pixel centre
//! within about 0.03 px of an edge may go either way, and strokes overlap their pieces by
//! 1/16 px at shared vertices; the reference leaves out pixel centres within `EDGE_MARGIN_PX`
//! of a polygon's edge or `STROKE_MARGIN_PX` of a stroke's edge (sides, butt caps, join arcs).
//!
//! Floats are drawn as scaled integers: proptest 1.12's f32 range sampler tripped one of its own
//! debug assertions (float_samplers.rs: `self.low - result < initial.step`) in a long run.

use lus_data::raster::{
    DENSE_MIN_LINE_WIDTH_PX, RasterOptions, Rasterizer, derived_centerline, rasterize,
};
use lus_data::recipe::{ClassRender, LabelRecipe, OffAs, StrokeWidth, Unlabelled};
use lus_data::{Annotation, Geometry, LabelSchema, Mask, Point, Shape};
use proptest::prelude::*;

/// Pixel centres closer than this to a polygon's edge are not checked against the reference.
const EDGE_MARGIN_PX: f32 = 0.05;
/// Pixel centres closer than this to a stroke's edge are not checked against the reference.
const STROKE_MARGIN_PX: f32 = 0.1;
const IGNORE: u8 = 255;

/// Every label of the default schema, background included (an explicit "nothing here").
const LABELS: [&str; 9] = [
    "background",
    "chest-wall",
    "rib",
    "pleural-line",
    "a-line",
    "b-line",
    "lung",
    "consolidation",
    "effusion",
];

/// One label per layer of the default schema (chest-wall and lung share layer 1).
const DISTINCT_LAYER_LABELS: [&str; 8] = [
    "background",
    "chest-wall",
    "rib",
    "pleural-line",
    "a-line",
    "b-line",
    "consolidation",
    "effusion",
];

/// A float in `[low, high)` drawn as a scaled integer (see the module documentation).
fn float(low: f32, high: f32) -> impl Strategy<Value = f32> {
    const STEPS: u32 = 1 << 20;
    (0..STEPS).prop_map(move |k| low + (high - low) * (k as f32 / STEPS as f32))
}

/// A point in the unit square.
fn unit_point() -> impl Strategy<Value = (f32, f32)> {
    (float(0.0, 1.0), float(0.0, 1.0))
}

/// Raw numbers of a star-shaped polygon: (angle jitter, radius fraction) per vertex.
fn star_params(max_vertices: usize) -> impl Strategy<Value = Vec<(f32, f32)>> {
    prop::collection::vec((float(0.0, 1.0), float(0.15, 1.0)), 3..=max_vertices)
}

/// A star-shaped polygon (simple by construction) around `centre`, clamped into the image.
fn star(centre: Point, radius: f32, params: &[(f32, f32)], width: f32, height: f32) -> Vec<Point> {
    let n = params.len() as f32;
    params
        .iter()
        .enumerate()
        .map(|(k, &(jitter, fraction))| {
            let angle = std::f32::consts::TAU * (k as f32 + 0.8 * jitter) / n;
            let r = radius * fraction;
            [
                (centre[0] + r * angle.cos()).clamp(0.0, width),
                (centre[1] + r * angle.sin()).clamp(0.0, height),
            ]
        })
        .collect()
}

#[derive(Debug, Clone)]
enum RawGeometry {
    Polygon {
        centre: (f32, f32),
        radius: f32,
        params: Vec<(f32, f32)>,
    },
    Polyline {
        points: Vec<(f32, f32)>,
        width: f32,
    },
    Band {
        from: (f32, f32),
        to: (f32, f32),
        half_widths: (f32, f32),
    },
}

/// A geometry in unit coordinates (scaled to the image later).
fn raw_geometry() -> impl Strategy<Value = RawGeometry> {
    prop_oneof![
        (unit_point(), float(0.05, 0.5), star_params(8)).prop_map(|(centre, radius, params)| {
            RawGeometry::Polygon {
                centre,
                radius,
                params,
            }
        }),
        (prop::collection::vec(unit_point(), 2..6), float(0.5, 6.0))
            .prop_map(|(points, width)| RawGeometry::Polyline { points, width }),
        (
            unit_point(),
            unit_point(),
            (float(0.3, 3.0), float(0.3, 5.0))
        )
            .prop_map(|(from, to, half_widths)| RawGeometry::Band {
                from,
                to,
                half_widths
            }),
    ]
}

fn to_geometry(raw: &RawGeometry, width: f32, height: f32) -> Geometry {
    to_geometry_scaled(raw, width, height, 1.0)
}

/// [`to_geometry`] with the widths in pixels (a polyline's width, a band's half widths)
/// multiplied by `px`.
fn to_geometry_scaled(raw: &RawGeometry, width: f32, height: f32, px: f32) -> Geometry {
    let scale = |(x, y): (f32, f32)| -> Point { [x * width, y * height] };
    match raw {
        RawGeometry::Polygon {
            centre,
            radius,
            params,
        } => Geometry::Polygon {
            points: star(
                scale(*centre),
                radius * width.min(height),
                params,
                width,
                height,
            ),
        },
        RawGeometry::Polyline { points, width: w } => Geometry::Polyline {
            points: points.iter().copied().map(scale).collect(),
            width: *w * px,
        },
        RawGeometry::Band {
            from,
            to,
            half_widths,
        } => {
            let (a, b) = (scale(*from), scale(*to));
            let half_widths = (half_widths.0 * px, half_widths.1 * px);
            let length = (b[0] - a[0]).hypot(b[1] - a[1]).max(1e-3);
            let normal = [-(b[1] - a[1]) / length, (b[0] - a[0]) / length];
            let offset = |p: Point, d: f32| -> Point {
                [
                    (p[0] + d * normal[0]).clamp(0.0, width),
                    (p[1] + d * normal[1]).clamp(0.0, height),
                ]
            };
            Geometry::Band {
                centerline: vec![a, b],
                outline: vec![
                    offset(a, half_widths.0),
                    offset(b, half_widths.1),
                    offset(b, -half_widths.1),
                    offset(a, -half_widths.0),
                ],
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    annotation: Annotation,
    sparse_width: f32,
}

/// A random valid annotation: image 16..64 px a side, a field of view (or none), 0..12 shapes.
fn case() -> impl Strategy<Value = Case> {
    (
        16u32..64,
        16u32..64,
        prop::option::weighted(0.8, ((float(0.3, 0.7), float(0.3, 0.7)), star_params(12))),
        prop::collection::vec((0..LABELS.len(), raw_geometry()), 0..12),
        float(0.5, 5.0),
    )
        .prop_map(|(width, height, fov, shapes, sparse_width)| {
            let (w, h) = (width as f32, height as f32);
            let mut annotation = Annotation::new(width, height);
            annotation.field_of_view =
                fov.map(|((cx, cy), params)| star([cx * w, cy * h], w.max(h), &params, w, h));
            annotation.shapes = shapes
                .iter()
                .map(|(label, raw)| Shape {
                    label: LABELS[*label].into(),
                    geometry: to_geometry(raw, w, h),
                })
                .collect();
            Case {
                annotation,
                sparse_width,
            }
        })
        .prop_filter("clamping may leave a polygon without area", |c| {
            c.annotation
                .validate(&LabelSchema::default(), std::path::Path::new("case"))
                .is_ok()
        })
}

/// The two label modes from before recipes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum LabelMode {
    /// [`RasterOptions::dense`].
    Dense,
    /// [`RasterOptions::sparse`]: the legacy sparse labels (absolute width, not clipped).
    Sparse,
}

fn options(mode: LabelMode, sparse_width: f32, ignore_id: Option<u8>) -> RasterOptions {
    let base = match mode {
        LabelMode::Dense => RasterOptions::dense(),
        LabelMode::Sparse => RasterOptions::sparse(sparse_width),
    };
    RasterOptions { ignore_id, ..base }
}

fn raster(a: &Annotation, options: RasterOptions) -> Mask {
    rasterize(a, &LabelSchema::default(), &options).expect("a valid annotation rasterizes")
}

fn centre(index: usize, width: u32) -> Point {
    [
        (index % width as usize) as f32 + 0.5,
        (index / width as usize) as f32 + 0.5,
    ]
}

fn segment_distance(p: Point, a: Point, b: Point) -> f32 {
    let d = [b[0] - a[0], b[1] - a[1]];
    let length2 = d[0] * d[0] + d[1] * d[1];
    let t = if length2 > 0.0 {
        (((p[0] - a[0]) * d[0] + (p[1] - a[1]) * d[1]) / length2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (p[0] - a[0] - t * d[0]).hypot(p[1] - a[1] - t * d[1])
}

/// Whether `p` is inside `polygon` by the non-zero winding rule, or `None` when it lies within
/// `EDGE_MARGIN_PX` of an edge.
fn inside(p: Point, polygon: &[Point]) -> Option<bool> {
    let n = polygon.len();
    let mut winding = 0;
    for i in 0..n {
        let (a, b) = (polygon[i], polygon[(i + 1) % n]);
        if segment_distance(p, a, b) < EDGE_MARGIN_PX {
            return None;
        }
        let side = (b[0] - a[0]) * (p[1] - a[1]) - (p[0] - a[0]) * (b[1] - a[1]);
        if a[1] <= p[1] && b[1] > p[1] && side > 0.0 {
            winding += 1;
        } else if a[1] > p[1] && b[1] <= p[1] && side < 0.0 {
            winding -= 1;
        }
    }
    Some(winding != 0)
}

fn inside_field_of_view(p: Point, a: &Annotation) -> Option<bool> {
    a.field_of_view
        .as_ref()
        .map_or(Some(true), |fov| inside(p, fov))
}

fn sub(a: Point, b: Point) -> Point {
    [a[0] - b[0], a[1] - b[1]]
}

fn dot(a: Point, b: Point) -> f32 {
    a[0] * b[0] + a[1] * b[1]
}

/// Whether `q` lies in the rectangle a butt-capped stroke of half width `half` has along the
/// segment from `a` to `b`.
fn in_segment(q: Point, a: Point, b: Point, half: f32) -> bool {
    let d = sub(b, a);
    let length2 = dot(d, d);
    let t = dot(sub(q, a), d) / length2;
    length2 > 0.0
        && (0.0..=1.0).contains(&t)
        && (q[0] - a[0] - t * d[0]).hypot(q[1] - a[1] - t * d[1]) <= half
}

/// Whether `q` lies in the round join at `vertex` between the segments from `previous` and to
/// `next`: within `half` of the vertex, past the end of the incoming segment and before the
/// start of the outgoing one. (A wedge, not a disc, as in SVG: the disc's part ahead of a short
/// last segment lies beyond the butt cap.)
fn in_join(q: Point, previous: Point, vertex: Point, next: Point, half: f32) -> bool {
    let v = sub(q, vertex);
    dot(v, sub(vertex, previous)) >= 0.0
        && dot(v, sub(next, vertex)) <= 0.0
        && v[0].hypot(v[1]) <= half
}

/// Whether the stroke covers `q` (the union of its rectangles and joins).
fn in_stroke(q: Point, line: &[Point], half: f32) -> bool {
    line.windows(2).any(|w| in_segment(q, w[0], w[1], half))
        || line.windows(3).any(|w| in_join(q, w[0], w[1], w[2], half))
}

/// `p` and 16 points `STROKE_MARGIN_PX` around it: a pixel centre whose samples disagree about
/// a stroke lies on its edge, where tiny-skia may decide either way.
fn around(p: Point) -> impl Iterator<Item = Point> {
    std::iter::once(p).chain((0..16).map(move |k| {
        let angle = std::f32::consts::TAU * k as f32 / 16.0;
        [
            p[0] + STROKE_MARGIN_PX * angle.cos(),
            p[1] + STROKE_MARGIN_PX * angle.sin(),
        ]
    }))
}

/// The centre lines sparse labels draw for class `id`.
fn centre_lines(a: &Annotation, schema: &LabelSchema, id: u8) -> Vec<Vec<Point>> {
    a.shapes
        .iter()
        .filter(|s| schema.lookup(&s.label).map(|c| c.id) == Some(id))
        .filter_map(|s| match &s.geometry {
            Geometry::Polyline { points, .. } => Some(points.clone()),
            Geometry::Band { centerline, .. } => Some(centerline.clone()),
            Geometry::Polygon { points } => derived_centerline(points),
        })
        .collect()
}

/// Whether the stroke of `width` along `line` covers `p`: `Some(false)` when no point within
/// `STROKE_MARGIN_PX` of `p` is in it; `Some(true)` when all of them are in one rectangle, or,
/// next to a vertex, in its join and the two rectangles that meet there (the rasterizer
/// overlaps those neighbours on purpose); `None` near an edge, or on a seam where two legs of
/// the line fold onto each other and just touch.
fn stroke_covers(p: Point, line: &[Point], width: f32) -> Option<bool> {
    let mut line = line.to_vec();
    line.dedup(); // the rasterizer drops repeated points too: they have no direction
    let half = width / 2.0;
    // Quick rejection by the distance to the polyline, which changes by at most the margin
    // between p and its samples.
    let to_line = line
        .windows(2)
        .map(|w| segment_distance(p, w[0], w[1]))
        .fold(f32::INFINITY, f32::min);
    if to_line > half + STROKE_MARGIN_PX {
        return Some(false);
    }
    let samples: Vec<Point> = around(p).collect();
    if samples.iter().all(|&q| !in_stroke(q, &line, half)) {
        return Some(false);
    }
    let single = line
        .windows(2)
        .any(|w| samples.iter().all(|&q| in_segment(q, w[0], w[1], half)));
    let run = line.windows(3).any(|w| {
        let v = sub(p, w[1]);
        v[0].hypot(v[1]) <= half + STROKE_MARGIN_PX
            && samples.iter().all(|&q| {
                in_segment(q, w[0], w[1], half)
                    || in_join(q, w[0], w[1], w[2], half)
                    || in_segment(q, w[1], w[2], half)
            })
    });
    (single || run).then_some(true)
}

/// What a shape covers under a recipe.
enum Cover {
    Region(Vec<Point>),
    Stroke(Vec<Point>, f32),
    /// A full band: its outline, and its centre line stroked `DENSE_MIN_LINE_WIDTH_PX` wide.
    Band(Vec<Point>, Vec<Point>),
    /// A clipped stroke: the stroke, cut to the full extent.
    Clipped(Box<Cover>, Box<Cover>),
}

/// What the full extent of `geometry` covers.
fn full_cover(geometry: &Geometry) -> Cover {
    match geometry {
        Geometry::Polygon { points } => Cover::Region(points.clone()),
        Geometry::Band {
            outline,
            centerline,
        } => Cover::Band(outline.clone(), centerline.clone()),
        Geometry::Polyline { points, width } => {
            Cover::Stroke(points.clone(), width.max(DENSE_MIN_LINE_WIDTH_PX))
        }
    }
}

/// The centre line a stroke of `geometry` follows (`None`: a polygon without one).
fn centre_line(geometry: &Geometry) -> Option<Vec<Point>> {
    match geometry {
        Geometry::Polyline { points, .. } => Some(points.clone()),
        Geometry::Band { centerline, .. } => Some(centerline.clone()),
        Geometry::Polygon { points } => derived_centerline(points),
    }
}

/// The module's rules, computed independently of tiny-skia: the shapes a recipe paints, topmost
/// first (by layer, then annotation order), with the id each paints and what it covers.
fn reference_plan(a: &Annotation, schema: &LabelSchema, o: &RasterOptions) -> Vec<(u8, Cover)> {
    let mut order: Vec<(i32, usize)> = a
        .shapes
        .iter()
        .enumerate()
        .map(|(index, s)| (schema.lookup(&s.label).expect("valid label").layer, index))
        .collect();
    order.sort();
    let width = o.recipe.stroke_width.pixels(a.width);
    order
        .iter()
        .rev()
        .filter_map(|&(_, index)| {
            let shape = &a.shapes[index];
            let class = schema.lookup(&shape.label).expect("valid label");
            let render = if class.id == 0 {
                ClassRender::Full
            } else {
                o.recipe.render_of(class, schema)
            };
            Some(match render {
                ClassRender::Full => (class.id, full_cover(&shape.geometry)),
                ClassRender::Stroke => {
                    let stroke = Cover::Stroke(centre_line(&shape.geometry)?, width);
                    let cover = if o.recipe.clip_strokes {
                        Cover::Clipped(Box::new(stroke), Box::new(full_cover(&shape.geometry)))
                    } else {
                        stroke
                    };
                    (class.id, cover)
                }
                ClassRender::Off => match (o.recipe.off, o.ignore_id) {
                    (OffAs::Ignore, Some(ignore)) => (ignore, full_cover(&shape.geometry)),
                    _ => return None,
                },
            })
        })
        .collect()
}

/// Whether `cover` covers pixel centre `p`; `None` when it lies within the margins of an edge.
fn covers(p: Point, cover: &Cover) -> Option<bool> {
    match cover {
        Cover::Region(polygon) => inside(p, polygon),
        Cover::Stroke(line, width) => stroke_covers(p, line, *width),
        Cover::Band(outline, line) => {
            match (
                inside(p, outline),
                stroke_covers(p, line, DENSE_MIN_LINE_WIDTH_PX),
            ) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }
        }
        Cover::Clipped(stroke, extent) => match (covers(p, stroke), covers(p, extent)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
    }
}

/// The id of pixel centre `p` under `plan`: the topmost covering shape's; `None` where the
/// answer hinges on a pixel centre within the margins of an edge.
fn reference_id(p: Point, a: &Annotation, plan: &[(u8, Cover)], o: &RasterOptions) -> Option<u8> {
    if !inside_field_of_view(p, a)? {
        return Some(0);
    }
    for (id, cover) in plan {
        if covers(p, cover)? {
            return Some(*id);
        }
    }
    Some(match o.recipe.unlabelled {
        Unlabelled::Ignore => o.ignore_id.unwrap_or(0),
        Unlabelled::Background => 0,
    })
}

fn permuted<T: Clone>(items: &[T], keys: &[u32]) -> Vec<T> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| (keys[i % keys.len()], i));
    order.into_iter().map(|i| items[i].clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn dense_is_background_exactly_outside_the_field_of_view(c in case()) {
        let a = &c.annotation;
        for ignore_id in [None, Some(IGNORE)] {
            let mask = raster(a, options(LabelMode::Dense, c.sparse_width, ignore_id));
            for (index, &v) in mask.data().iter().enumerate() {
                let p = centre(index, a.width);
                match inside_field_of_view(p, a) {
                    Some(false) => prop_assert_eq!(v, 0, "pixel {:?} outside the FOV", p),
                    // Inside, an ignore id or a class id; 0 only where a background shape is.
                    Some(true) if ignore_id.is_some() && v == 0 => prop_assert!(
                        a.shapes.iter().any(|s| s.label == "background"),
                        "pixel {:?} inside the FOV is 0 without a background shape", p
                    ),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn both_modes_match_an_independent_pixel_centre_reference(c in case()) {
        let a = &c.annotation;
        let schema = LabelSchema::default();
        let mut checked = 0usize;
        for o in [
            options(LabelMode::Dense, c.sparse_width, None),
            options(LabelMode::Dense, c.sparse_width, Some(IGNORE)),
            options(LabelMode::Sparse, c.sparse_width, None),
        ] {
            let mask = raster(a, o.clone());
            let plan = reference_plan(a, &schema, &o);
            for (index, &v) in mask.data().iter().enumerate() {
                let p = centre(index, a.width);
                if let Some(expected) = reference_id(p, a, &plan, &o) {
                    prop_assert_eq!(v, expected, "{} at {:?}", o.recipe.name, p);
                    checked += 1;
                }
            }
        }
        // The margins leave out only the few centres that lie on an edge.
        let total = 3 * (a.width * a.height) as usize;
        prop_assert!(checked * 10 >= total * 8, "only {} of {} pixels checked", checked, total);
    }

    #[test]
    fn a_shape_tiling_the_field_of_view_labels_all_of_it(c in case()) {
        let mut a = c.annotation.clone();
        let (w, h) = (a.width as f32, a.height as f32);
        a.shapes.push(Shape {
            label: "lung".into(),
            geometry: Geometry::Polygon { points: vec![[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]] },
        });
        let mask = raster(&a, options(LabelMode::Dense, c.sparse_width, None));
        // The field of view as the rasterizer fills it: the ignore region of an empty annotation.
        let mut empty = a.clone();
        empty.shapes.clear();
        let fov = raster(&empty, options(LabelMode::Dense, 1.0, Some(IGNORE)));
        for (index, (&v, &f)) in mask.data().iter().zip(fov.data()).enumerate() {
            let p = centre(index, a.width);
            // Background shapes (layer 0) lie under the lung (layer 1): nothing is background.
            prop_assert_eq!(v != 0, f == IGNORE, "pixel {:?}", p);
            if let Some(expected) = inside_field_of_view(p, &a) {
                prop_assert_eq!(f == IGNORE, expected, "FOV fill at {:?}", p);
            }
        }
    }

    #[test]
    fn sparse_strokes_are_line_classes_along_their_centre_lines(c in case()) {
        let a = &c.annotation;
        let schema = LabelSchema::default();
        let half = c.sparse_width / 2.0;
        let mask = raster(a, options(LabelMode::Sparse, c.sparse_width, Some(IGNORE)));
        let lines: Vec<(u8, Vec<Vec<Point>>)> = schema
            .line_classes()
            .map(|class| (class.id, centre_lines(a, &schema, class.id)))
            .collect();
        for (index, &v) in mask.data().iter().enumerate() {
            let p = centre(index, a.width);
            if v != 0 {
                let class = schema.class(v);
                prop_assert!(class.is_some_and(|c| c.line), "id {} at {:?} is not a line class", v, p);
                let own = &lines.iter().find(|(id, _)| *id == v).expect("line class").1;
                prop_assert!(
                    own.iter().any(|l| stroke_covers(p, l, c.sparse_width) != Some(false)),
                    "{:?} has class {} outside its strokes (half width {})", p, v, half
                );
                prop_assert_ne!(inside_field_of_view(p, a), Some(false), "{:?} outside the FOV", p);
            } else if inside_field_of_view(p, a) == Some(true) {
                // Conversely every centre well inside some line-class stroke is painted.
                prop_assert!(
                    lines
                        .iter()
                        .flat_map(|(_, ls)| ls.iter())
                        .all(|l| stroke_covers(p, l, c.sparse_width) != Some(true)),
                    "{:?} is inside a stroke (half width {}) but unpainted", p, half
                );
            }
        }
    }

    #[test]
    fn dense_and_sparse_agree_on_the_field_of_view(c in case()) {
        let a = &c.annotation;
        let mut empty = a.clone();
        empty.shapes.clear();
        let fov = raster(&empty, options(LabelMode::Dense, 1.0, Some(IGNORE)));
        let dense = raster(a, options(LabelMode::Dense, c.sparse_width, None));
        let sparse = raster(a, options(LabelMode::Sparse, c.sparse_width, None));
        for (index, ((&f, &d), &s)) in fov.data().iter().zip(dense.data()).zip(sparse.data()).enumerate() {
            if f != IGNORE {
                prop_assert!(d == 0 && s == 0, "pixel {:?}: dense {} sparse {} outside the FOV", centre(index, a.width), d, s);
            }
        }
        // With no field of view, the ignore region of an empty annotation is the whole image.
        if a.field_of_view.is_none() {
            prop_assert!(fov.data().iter().all(|&v| v == IGNORE));
        }
    }

    #[test]
    fn rasterize_is_deterministic_and_buffer_reuse_is_invisible(c in case(), d in case()) {
        let schema = LabelSchema::default();
        let mut reused = Rasterizer::new();
        for mode in [LabelMode::Dense, LabelMode::Sparse] {
            let o = options(mode, c.sparse_width, Some(IGNORE));
            let first = rasterize(&c.annotation, &schema, &o).unwrap();
            // Another annotation through the same rasterizer first: its buffers must not leak.
            reused.rasterize(&d.annotation, &schema, &o).unwrap();
            prop_assert_eq!(&reused.rasterize(&c.annotation, &schema, &o).unwrap(), &first);
            prop_assert_eq!(&rasterize(&c.annotation, &schema, &o).unwrap(), &first);
        }
    }

    #[test]
    fn shapes_of_distinct_layers_paint_the_same_in_any_order(
        raw in prop::collection::vec(raw_geometry(), 1..=DISTINCT_LAYER_LABELS.len()),
        keys in prop::collection::vec(any::<u32>(), 1..16),
        sparse_width in float(0.5, 5.0),
    ) {
        let mut a = Annotation::new(40, 32);
        a.shapes = raw
            .iter()
            .zip(DISTINCT_LAYER_LABELS)
            .map(|(g, label)| Shape { label: label.into(), geometry: to_geometry(g, 40.0, 32.0) })
            .collect();
        prop_assume!(a.validate(&LabelSchema::default(), std::path::Path::new("case")).is_ok());
        let mut b = a.clone();
        b.shapes = permuted(&a.shapes, &keys);
        for mode in [LabelMode::Dense, LabelMode::Sparse] {
            let o = options(mode, sparse_width, None);
            prop_assert_eq!(raster(&a, o.clone()), raster(&b, o));
        }
    }

    #[test]
    fn non_overlapping_shapes_of_equal_layers_paint_the_same_in_any_order(
        cells in prop::collection::vec((prop::sample::select(vec!["chest-wall", "lung", "a-line", "b-line"]), raw_geometry()), 1..=12),
        keys in prop::collection::vec(any::<u32>(), 1..16),
    ) {
        // Each shape lives in its own 12 x 12 cell of a 4 x 3 grid, inside a 6 x 6 box 3 px from
        // the cell's edges; strokes reach at most 1.5 px (dense) or a derived centre line's
        // rotated box plus 0.75 px (sparse) beyond it, so no two shapes share a pixel. Labels
        // repeat, so layers tie.
        let mut a = Annotation::new(48, 36);
        a.shapes = cells
            .iter()
            .enumerate()
            .map(|(k, (label, raw))| {
                let (x0, y0) = ((k % 4) as f32 * 12.0 + 3.0, (k / 4) as f32 * 12.0 + 3.0);
                let mut geometry = match to_geometry(raw, 6.0, 6.0) {
                    Geometry::Polyline { points, width } => Geometry::Polyline { points, width: width.min(3.0) },
                    other => other,
                };
                let shift = |ps: &mut Vec<Point>| ps.iter_mut().for_each(|p| { p[0] += x0; p[1] += y0; });
                match &mut geometry {
                    Geometry::Polygon { points } | Geometry::Polyline { points, .. } => shift(points),
                    Geometry::Band { centerline, outline } => { shift(centerline); shift(outline); }
                }
                Shape { label: (*label).into(), geometry }
            })
            .collect();
        prop_assume!(a.validate(&LabelSchema::default(), std::path::Path::new("case")).is_ok());
        let mut b = a.clone();
        b.shapes = permuted(&a.shapes, &keys);
        for mode in [LabelMode::Dense, LabelMode::Sparse] {
            let o = options(mode, 1.5, None);
            prop_assert_eq!(raster(&a, o.clone()), raster(&b, o));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Label recipes

/// Every class of the default schema but the background (always `full`).
const CLASSES: [&str; 8] = [
    "chest-wall",
    "rib",
    "pleural-line",
    "a-line",
    "b-line",
    "lung",
    "consolidation",
    "effusion",
];

fn class_render() -> impl Strategy<Value = ClassRender> {
    prop_oneof![
        Just(ClassRender::Full),
        Just(ClassRender::Stroke),
        Just(ClassRender::Off)
    ]
}

/// A stroke width of any kind, 0.5 to 8 px on the images of [`case`].
fn stroke_width() -> impl Strategy<Value = StrokeWidth> {
    prop_oneof![
        float(0.5, 12.0).prop_map(StrokeWidth::PxAt128),
        float(0.01, 0.1).prop_map(StrokeWidth::Fraction),
        float(0.5, 6.0).prop_map(StrokeWidth::Px),
    ]
}

/// A random valid recipe: a render per class, any stroke width, clipped or not, off classes
/// hidden or ignored, unlabelled pixels background or ignored.
fn recipe() -> impl Strategy<Value = LabelRecipe> {
    (
        prop::collection::vec(class_render(), CLASSES.len()),
        stroke_width(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(renders, stroke_width, clip_strokes, off_ignore, unlabelled_ignore)| LabelRecipe {
                name: "random".into(),
                classes: CLASSES
                    .iter()
                    .zip(renders)
                    .map(|(name, render)| (name.to_string(), render))
                    .collect(),
                stroke_width,
                clip_strokes,
                off: if off_ignore {
                    OffAs::Ignore
                } else {
                    OffAs::Hidden
                },
                unlabelled: if unlabelled_ignore {
                    Unlabelled::Ignore
                } else {
                    Unlabelled::Background
                },
                ..LabelRecipe::default()
            },
        )
        .prop_filter("a recipe draws some class", |r| {
            r.validate(&LabelSchema::default()).is_ok()
        })
}

/// A recipe that strokes every class (the background stays `full`), clipped, of any width.
fn clipped_stroke_recipe() -> impl Strategy<Value = LabelRecipe> {
    stroke_width().prop_map(|stroke_width| LabelRecipe {
        name: "strokes".into(),
        default: ClassRender::Stroke,
        stroke_width,
        clip_strokes: true,
        ..LabelRecipe::default()
    })
}

/// `a` with only its shape `index` (same size and field of view).
fn only_shape(a: &Annotation, index: usize) -> Annotation {
    let mut one = a.clone();
    one.shapes = vec![a.shapes[index].clone()];
    one
}

/// `a` with only the shapes of class `id`.
fn only_class(a: &Annotation, schema: &LabelSchema, id: u8) -> Annotation {
    let mut one = a.clone();
    one.shapes
        .retain(|s| schema.lookup(&s.label).map(|c| c.id) == Some(id));
    one
}

/// An annotation in unit coordinates: a field of view (or none) and 1..10 shapes.
type UnitAnnotation = (
    Option<((f32, f32), Vec<(f32, f32)>)>,
    Vec<(usize, RawGeometry)>,
);

fn unit_annotation() -> impl Strategy<Value = UnitAnnotation> {
    (
        prop::option::weighted(0.8, ((float(0.3, 0.7), float(0.3, 0.7)), star_params(12))),
        prop::collection::vec((0..LABELS.len(), raw_geometry()), 1..10),
    )
}

/// `raw` on a `size` px square image; pixel widths are those of a 64 px image, scaled.
fn at_size((fov, shapes): &UnitAnnotation, size: u32) -> Annotation {
    let s = size as f32;
    let mut a = Annotation::new(size, size);
    a.field_of_view = fov
        .as_ref()
        .map(|((cx, cy), params)| star([cx * s, cy * s], s, params, s, s));
    a.shapes = shapes
        .iter()
        .map(|(label, raw)| Shape {
            label: LABELS[*label].into(),
            geometry: to_geometry_scaled(raw, s, s, s / 64.0),
        })
        .collect();
    a
}

/// Pixels where `mask` holds a class id (not background, not the ignore id), as (index, id).
fn class_pixels(mask: &Mask) -> impl Iterator<Item = (usize, u8)> + '_ {
    mask.data()
        .iter()
        .enumerate()
        .filter(|&(_, &v)| v != 0 && v != IGNORE)
        .map(|(i, &v)| (i, v))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_recipe_matches_an_independent_pixel_centre_reference(
        c in case(),
        recipe in recipe(),
        with_ignore in any::<bool>(),
    ) {
        let a = &c.annotation;
        let schema = LabelSchema::default();
        let ignore_id = (with_ignore || recipe.off == OffAs::Ignore).then_some(IGNORE);
        let o = RasterOptions { recipe, ignore_id };
        let mask = raster(a, o.clone());
        let plan = reference_plan(a, &schema, &o);
        let mut checked = 0usize;
        for (index, &v) in mask.data().iter().enumerate() {
            let p = centre(index, a.width);
            if let Some(expected) = reference_id(p, a, &plan, &o) {
                prop_assert_eq!(v, expected, "{:?} at {:?}", o, p);
                checked += 1;
            }
        }
        let total = (a.width * a.height) as usize;
        prop_assert!(checked * 10 >= total * 8, "only {} of {} pixels checked", checked, total);
    }

    #[test]
    fn a_clipped_stroke_lies_in_its_objects_full_extent(
        c in case(),
        recipe in clipped_stroke_recipe(),
    ) {
        // Each shape alone (field of view kept): every pixel its clipped stroke paints, its
        // full extent paints too, with the same id. Exact, not up to edge ties.
        let a = &c.annotation;
        let strokes = RasterOptions::recipe(recipe);
        for index in 0..a.shapes.len() {
            let one = only_shape(a, index);
            let stroke = raster(&one, strokes.clone());
            let full = raster(&one, RasterOptions::dense());
            for (i, v) in class_pixels(&stroke) {
                prop_assert_eq!(
                    full.data()[i], v,
                    "shape {} ({:?}): stroke pixel {:?} outside the full extent",
                    index, &one.shapes[0], centre(i, a.width)
                );
            }
        }
    }

    #[test]
    fn built_in_sparse_is_never_thicker_than_dense_at_any_size(
        raw in unit_annotation(),
        size in 32u32..=512,
    ) {
        // The size invariant: one annotation scaled to `size`; the built-in sparse recipe's
        // strokes (3 px at 128 px, clipped) never reach outside the dense object, per shape,
        // and so never outnumber its pixels, per class.
        let a = at_size(&raw, size);
        let schema = LabelSchema::default();
        prop_assume!(a.validate(&schema, std::path::Path::new("case")).is_ok());
        let sparse = RasterOptions::recipe(LabelRecipe::builtin("sparse").unwrap());
        let dense = RasterOptions::dense();
        for index in 0..a.shapes.len() {
            let one = only_shape(&a, index);
            let s = raster(&one, sparse.clone());
            let d = raster(&one, dense.clone());
            for (i, v) in class_pixels(&s) {
                prop_assert_eq!(
                    d.data()[i], v,
                    "{} px, shape {} ({:?}): sparse pixel {:?} outside the dense object",
                    size, index, &one.shapes[0], centre(i, size)
                );
            }
        }
        for class in schema.line_classes() {
            let one = only_class(&a, &schema, class.id);
            let s = raster(&one, sparse.clone()).histogram()[usize::from(class.id)];
            let d = raster(&one, dense.clone()).histogram()[usize::from(class.id)];
            prop_assert!(s <= d, "{} px, {}: {} sparse pixels > {} dense", size, class.name, s, d);
        }
        // The whole annotation: a sparse pixel of a class lies on a dense object of that class,
        // or under one of a layer at least as high that dense labels paint over it. (Per class
        // counts of the whole annotation are not ordered: a rib, which sparse labels do not
        // draw, can cover an A-line in the dense mask only.)
        let layer = |id: u8| schema.class(id).expect("a class id").layer;
        let s = raster(&a, sparse);
        let d = raster(&a, dense);
        for (i, v) in class_pixels(&s) {
            let under = d.data()[i];
            prop_assert!(
                under == v || (under != 0 && layer(under) >= layer(v)),
                "{} px: sparse {} at {:?} over dense {}", size, v, centre(i, size), under
            );
        }
    }
}
