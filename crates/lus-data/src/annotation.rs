//! Vector annotations: the geometry of every labelled object of one image. Dense and sparse
//! masks are both rasterized from the same annotation, so two pretrainings see the same images
//! and differ only in how the objects are labelled.
//!
//! Coordinates are pixels, `[x, y]`, origin at the top-left corner of the image; pixel `(i, j)`
//! covers `[i, i+1) x [j, j+1)`, so its centre is `(i + 0.5, j + 0.5)` (LabelMe's and
//! tiny-skia's convention).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::image_io::MAX_IMAGE_SIDE;
use crate::schema::LabelSchema;

/// A point `[x, y]` in pixels.
pub type Point = [f32; 2];

/// How far (pixels) a point may lie outside the image before the shape is rejected: annotation
/// tools commonly place vertices on or just past the border.
pub const OUTSIDE_TOLERANCE_PX: f32 = 1.0;

/// The geometry of one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Geometry {
    /// A closed region (chest wall, lung, rib and its shadow, consolidation, effusion; also a
    /// line artifact outlined by an annotator, whose centre line is then derived).
    Polygon {
        #[serde(deserialize_with = "points_or_null")]
        points: Vec<Point>,
    },
    /// An open stroke of a given full width: in dense labels the stroke is the object's extent;
    /// in sparse labels only its centre line is drawn, at the sparse stroke width.
    Polyline {
        #[serde(deserialize_with = "points_or_null")]
        points: Vec<Point>,
        width: f32,
    },
    /// A line artifact with both its centre line (sparse labels) and its full outline (dense
    /// labels), e.g. a B-line band widening with depth under a convex probe.
    Band {
        #[serde(deserialize_with = "points_or_null")]
        centerline: Vec<Point>,
        #[serde(deserialize_with = "points_or_null")]
        outline: Vec<Point>,
    },
}

/// Reads a list of `[x, y]` points in which a coordinate may be `null`, read as NaN.
///
/// serde_json writes a non-finite float as `null`, and Python's `json` writes it as a bare
/// `NaN`/`Infinity` (which [`Annotation::from_json_str`] turns into `null`): either way the
/// point is kept as non-finite, so validation reports it against its shape ("shape 3 (label
/// ...): non-finite coordinate") instead of a JSON type error at a line and column.
fn points_or_null<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<Point>, D::Error> {
    let points: Vec<[Option<f32>; 2]> = Deserialize::deserialize(deserializer)?;
    Ok(points
        .into_iter()
        .map(|p| p.map(|c| c.unwrap_or(f32::NAN)))
        .collect())
}

fn optional_points_or_null<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<Vec<Point>>, D::Error> {
    #[derive(Deserialize)]
    struct Points(#[serde(deserialize_with = "points_or_null")] Vec<Point>);
    let points: Option<Points> = Deserialize::deserialize(deserializer)?;
    Ok(points.map(|p| p.0))
}

impl Geometry {
    /// Every vertex of the geometry.
    pub fn points(&self) -> Box<dyn Iterator<Item = &Point> + '_> {
        match self {
            Geometry::Polygon { points } | Geometry::Polyline { points, .. } => {
                Box::new(points.iter())
            }
            Geometry::Band {
                centerline,
                outline,
            } => Box::new(centerline.iter().chain(outline)),
        }
    }
}

/// One labelled object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// Class name (canonical or an alias of the schema).
    pub label: String,
    /// Its geometry (`{"kind": "polygon" | "polyline" | "band", ...}`).
    pub geometry: Geometry,
}

/// The annotation of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Annotation {
    /// Format tag of our own JSON files.
    #[serde(default = "format_tag")]
    pub format: String,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// The image this annotates, relative to the annotation file (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The field of view (the scanned fan or rectangle) as a polygon; `None` means the whole
    /// image. Outside it every mask is background.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_points_or_null"
    )]
    pub field_of_view: Option<Vec<Point>>,
    /// The objects.
    pub shapes: Vec<Shape>,
}

/// The `format` value of lus annotation files.
pub const ANNOTATION_FORMAT: &str = "lus-annotation/1";

fn format_tag() -> String {
    ANNOTATION_FORMAT.to_string()
}

fn polygon_area(points: &[Point]) -> f32 {
    let n = points.len();
    let twice: f32 = (0..n)
        .map(|i| {
            let [x0, y0] = points[i];
            let [x1, y1] = points[(i + 1) % n];
            x0 * y1 - x1 * y0
        })
        .sum();
    twice.abs() / 2.0
}

fn polyline_length(points: &[Point]) -> f32 {
    points
        .windows(2)
        .map(|w| ((w[1][0] - w[0][0]).powi(2) + (w[1][1] - w[0][1]).powi(2)).sqrt())
        .sum()
}

impl Annotation {
    /// The annotation of the same image resized by `factor` to `width x height` pixels: every
    /// coordinate and stroke width multiplied by `factor` (pixel corners at integer
    /// coordinates, so the image's edges map onto the resized image's edges).
    pub fn scaled(&self, factor: f32, width: u32, height: u32) -> Annotation {
        self.mapped(|p| [p[0] * factor, p[1] * factor], factor, width, height)
    }

    /// The annotation of the same image shrunk (or grown) by `factor` and placed with its
    /// top-left corner at `offset` in an image of `width x height` pixels (a letter-boxed
    /// frame): every point `p` becomes `p * factor + offset`, stroke widths `* factor`.
    pub fn placed(&self, factor: f32, offset: Point, width: u32, height: u32) -> Annotation {
        self.mapped(
            |p| [p[0] * factor + offset[0], p[1] * factor + offset[1]],
            factor,
            width,
            height,
        )
    }

    /// Every point through `map`, stroke widths times `width_factor`, the image size set.
    fn mapped(
        &self,
        map: impl Fn(&Point) -> Point,
        width_factor: f32,
        width: u32,
        height: u32,
    ) -> Annotation {
        let factor = width_factor;
        let scale = |points: &[Point]| -> Vec<Point> { points.iter().map(&map).collect() };
        Annotation {
            width,
            height,
            field_of_view: self.field_of_view.as_deref().map(scale),
            shapes: self
                .shapes
                .iter()
                .map(|shape| Shape {
                    label: shape.label.clone(),
                    geometry: match &shape.geometry {
                        Geometry::Polygon { points } => Geometry::Polygon {
                            points: scale(points),
                        },
                        Geometry::Polyline { points, width } => Geometry::Polyline {
                            points: scale(points),
                            width: width * factor,
                        },
                        Geometry::Band {
                            centerline,
                            outline,
                        } => Geometry::Band {
                            centerline: scale(centerline),
                            outline: scale(outline),
                        },
                    },
                })
                .collect(),
            ..self.clone()
        }
    }

    /// A new, empty annotation of an image of the given size.
    pub fn new(width: u32, height: u32) -> Self {
        Annotation {
            format: format_tag(),
            width,
            height,
            image: None,
            field_of_view: None,
            shapes: Vec::new(),
        }
    }

    /// Checks the annotation against a schema: known labels, finite coordinates inside the
    /// image, polygons with area, polylines with length and positive width. `source` names the
    /// file in errors.
    pub fn validate(&self, schema: &LabelSchema, source: &Path) -> Result<()> {
        let whole = |reason: String| DataError::Annotation {
            path: source.to_path_buf(),
            reason,
        };
        if self.format != ANNOTATION_FORMAT {
            return Err(whole(format!(
                "unsupported format {:?} (expected {ANNOTATION_FORMAT:?})",
                self.format
            )));
        }
        if self.width == 0 || self.height == 0 {
            return Err(whole(format!(
                "image size {}x{} is empty",
                self.width, self.height
            )));
        }
        // Checked here, not only when rasterizing, so that a folder of annotations is refused
        // while it is read, before any mask is written, with the error naming the file.
        if self.width > MAX_IMAGE_SIDE || self.height > MAX_IMAGE_SIDE {
            return Err(whole(format!(
                "image size {}x{} exceeds the largest supported side of {MAX_IMAGE_SIDE} px",
                self.width, self.height
            )));
        }
        let (w, h) = (self.width as f32, self.height as f32);
        let inside = |p: &Point| {
            p[0] >= -OUTSIDE_TOLERANCE_PX
                && p[1] >= -OUTSIDE_TOLERANCE_PX
                && p[0] <= w + OUTSIDE_TOLERANCE_PX
                && p[1] <= h + OUTSIDE_TOLERANCE_PX
        };
        if let Some(fov) = &self.field_of_view {
            if let Some(p) = fov.iter().find(|p| !p[0].is_finite() || !p[1].is_finite()) {
                return Err(whole(format!("field of view has a non-finite point {p:?}")));
            }
            if fov.len() < 3 || polygon_area(fov) < 1.0 {
                return Err(whole(
                    "field of view is not a polygon with area (needs >= 3 points)".into(),
                ));
            }
            if let Some(p) = fov.iter().find(|p| !inside(p)) {
                return Err(whole(format!(
                    "field of view point {p:?} lies outside the {}x{} image",
                    self.width, self.height
                )));
            }
        }
        for (index, shape) in self.shapes.iter().enumerate() {
            let fail = |reason: String| DataError::Shape {
                path: source.to_path_buf(),
                index,
                label: shape.label.clone(),
                reason,
            };
            schema.resolve(&shape.label).map_err(fail)?;
            if let Some(p) = shape
                .geometry
                .points()
                .find(|p| !p[0].is_finite() || !p[1].is_finite())
            {
                return Err(fail(format!("non-finite coordinate {p:?}")));
            }
            if let Some(p) = shape.geometry.points().find(|p| !inside(p)) {
                return Err(fail(format!(
                    "point {p:?} lies outside the {}x{} image",
                    self.width, self.height
                )));
            }
            match &shape.geometry {
                Geometry::Polygon { points } => {
                    if points.len() < 3 {
                        return Err(fail(format!(
                            "polygon has {} point(s); needs at least 3",
                            points.len()
                        )));
                    }
                    if polygon_area(points) <= 0.0 {
                        return Err(fail("polygon has zero area".into()));
                    }
                }
                Geometry::Polyline { points, width } => {
                    if points.len() < 2 {
                        return Err(fail(format!(
                            "polyline has {} point(s); needs at least 2",
                            points.len()
                        )));
                    }
                    if polyline_length(points) <= 0.0 {
                        return Err(fail("polyline has zero length".into()));
                    }
                    if !(width.is_finite() && *width > 0.0) {
                        return Err(fail(format!(
                            "polyline width {width} is not a positive number"
                        )));
                    }
                }
                Geometry::Band {
                    centerline,
                    outline,
                } => {
                    if centerline.len() < 2 || polyline_length(centerline) <= 0.0 {
                        return Err(fail(
                            "band centre line needs at least 2 distinct points".into(),
                        ));
                    }
                    if outline.len() < 3 || polygon_area(outline) <= 0.0 {
                        return Err(fail("band outline is not a polygon with area".into()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Parses our own JSON format and validates it against the schema.
    pub fn from_json_str(text: &str, schema: &LabelSchema, source: &Path) -> Result<Self> {
        let text = crate::labelme::non_finite_literals_as_null(text);
        let annotation: Annotation = serde_json::from_str(&text).map_err(|e| DataError::Json {
            path: source.to_path_buf(),
            source: e,
        })?;
        annotation.validate(schema, source)?;
        Ok(annotation)
    }

    /// Reads and validates an annotation file of our own JSON format.
    pub fn load(path: &Path, schema: &LabelSchema) -> Result<Self> {
        let text = lus_io::read_text(path)?;
        Self::from_json_str(&text, schema, path)
    }

    /// The annotation as pretty JSON.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("an annotation always serialises")
    }

    /// Writes the annotation atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        Ok(lus_io::write_atomic(
            path,
            self.to_json_string().as_bytes(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Annotation {
        let mut a = Annotation::new(16, 12);
        a.field_of_view = Some(vec![[0.0, 0.0], [16.0, 0.0], [16.0, 12.0], [0.0, 12.0]]);
        a.shapes.push(Shape {
            label: "pleural-line".into(),
            geometry: Geometry::Polyline {
                points: vec![[1.0, 4.5], [15.0, 4.5]],
                width: 2.0,
            },
        });
        a.shapes.push(Shape {
            label: "b-line".into(),
            geometry: Geometry::Band {
                centerline: vec![[8.0, 5.0], [8.0, 12.0]],
                outline: vec![[7.0, 5.0], [9.0, 5.0], [10.0, 12.0], [6.0, 12.0]],
            },
        });
        a.shapes.push(Shape {
            label: "chest-wall".into(),
            geometry: Geometry::Polygon {
                points: vec![[0.0, 0.0], [16.0, 0.0], [16.0, 4.0], [0.0, 4.0]],
            },
        });
        a
    }

    #[test]
    fn json_round_trip() {
        let schema = LabelSchema::default();
        let a = sample();
        let text = a.to_json_string();
        assert!(text.contains("\"kind\": \"band\""), "{text}");
        let b = Annotation::from_json_str(&text, &schema, Path::new("a.json")).unwrap();
        assert_eq!(a, b);
    }

    fn error_of(a: &Annotation) -> String {
        a.validate(&LabelSchema::default(), Path::new("x/a.json"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn invalid_annotations_name_file_and_shape() {
        let mut a = sample();
        a.shapes[1].label = "b-lnie".into();
        let e = error_of(&a);
        assert!(e.starts_with("x/a.json: shape 1 (label \"b-lnie\")"), "{e}");
        assert!(e.contains("did you mean \"b-line\""), "{e}");

        let mut a = sample();
        a.shapes[2].geometry = Geometry::Polygon {
            points: vec![[0.0, 0.0], [3.0, 3.0]],
        };
        assert!(error_of(&a).contains("shape 2"), "{}", error_of(&a));
        assert!(error_of(&a).contains("needs at least 3"));

        let mut a = sample();
        a.shapes[2].geometry = Geometry::Polygon {
            points: vec![[0.0, 0.0], [3.0, 3.0], [6.0, 6.0]],
        };
        assert!(error_of(&a).contains("zero area"));

        let mut a = sample();
        a.shapes[0].geometry = Geometry::Polyline {
            points: vec![[1.0, 4.5], [40.0, 4.5]],
            width: 2.0,
        };
        assert!(error_of(&a).contains("outside the 16x12 image"));

        let mut a = sample();
        a.shapes[0].geometry = Geometry::Polyline {
            points: vec![[1.0, f32::NAN], [4.0, 4.5]],
            width: 2.0,
        };
        assert!(error_of(&a).contains("non-finite"));

        let mut a = sample();
        a.shapes[0].geometry = Geometry::Polyline {
            points: vec![[1.0, 4.5], [4.0, 4.5]],
            width: 0.0,
        };
        assert!(error_of(&a).contains("not a positive number"));

        let mut a = sample();
        a.width = 0;
        assert!(error_of(&a).contains("empty"));
    }

    #[test]
    fn non_finite_coordinates_are_reported_against_their_shape() {
        let schema = LabelSchema::default();
        let text = sample().to_json_string();
        // serde_json's null, Python's bare NaN and -Infinity, and a number beyond f32.
        for (from, to) in [
            ("15.0", "null"),
            ("15.0", "NaN"),
            ("15.0", "-Infinity"),
            ("15.0", "1e39"),
        ] {
            let bad = text.replacen(from, to, 1);
            assert_ne!(bad, text);
            let e = Annotation::from_json_str(&bad, &schema, Path::new("x/a.json"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("x/a.json: shape 0 (label \"pleural-line\"): non-finite coordinate"),
                "{to}: {e}"
            );
        }
        let mut bad: serde_json::Value = serde_json::from_str(&text).unwrap();
        bad["field_of_view"][2][0] = serde_json::Value::Null;
        let e = Annotation::from_json_str(&bad.to_string(), &schema, Path::new("x/a.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field of view has a non-finite point [NaN, 12.0]"),
            "{e}"
        );
    }

    #[test]
    fn an_image_too_large_to_rasterize_is_refused_when_read() {
        let mut a = sample();
        a.height = MAX_IMAGE_SIDE + 1;
        let e = error_of(&a);
        assert!(
            e.contains("16x8193 exceeds the largest supported side of 8192 px"),
            "{e}"
        );
        a.height = MAX_IMAGE_SIDE;
        a.validate(&LabelSchema::default(), Path::new("x/a.json"))
            .unwrap();
    }

    #[test]
    fn malformed_json_is_an_error_naming_the_file() {
        let schema = LabelSchema::default();
        for text in [
            "{",
            "{\"width\": 4}",
            "{\"width\": \"4\", \"height\": 4, \"shapes\": []}",
            "{\"width\": 4, \"height\": 4, \"shapes\": [], \"colour\": 1}",
            "{\"width\": 4, \"height\": 4, \"shapes\": [{\"label\": \"rib\", \"geometry\": {\"kind\": \"circle\", \"points\": []}}]}",
            "{\"width\": 4, \"height\": 4, \"shapes\": [{\"label\": \"rib\", \"geometry\": {\"kind\": \"polygon\", \"points\": [], \"extra\": 1}}]}",
        ] {
            let e = Annotation::from_json_str(text, &schema, Path::new("bad.json"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("bad.json: invalid JSON"), "{e}");
        }
    }
}
