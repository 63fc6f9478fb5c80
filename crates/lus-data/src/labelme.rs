//! LabelMe import: the JSON files research groups annotate lung ultrasound in become
//! [`Annotation`]s, validated against a [`LabelSchema`].
//!
//! A LabelMe file is `{version, flags, shapes: [{label, points: [[x, y], ...], group_id,
//! shape_type, flags, description?, mask?}], imagePath, imageData, imageHeight, imageWidth}`.
//! LabelMe's coordinates are pixel coordinates with the origin at the image's top-left corner,
//! as in [`crate::annotation`].
//!
//! # Shapes
//! | LabelMe `shape_type`      | lus geometry                                                    |
//! |---------------------------|-----------------------------------------------------------------|
//! | `polygon` (or absent, as written by LabelMe 3) | `Polygon` (also for a line class: sparse labels derive its centre line) |
//! | `rectangle` (2 opposite corners) | 4-corner `Polygon`                                       |
//! | `line`, `linestrip`       | `Polyline` of width [`LabelmeOptions::line_width`] (its dense extent) |
//! | `circle`, `point`, `points`, `mask`, others | error naming file, shape index, label and type |
//!
//! Labels are resolved by [`LabelSchema::resolve`] (aliases, case and separators ignored; an
//! unknown label is an error with a "did you mean") and stored under the class's canonical name
//! (`"Pleura"` becomes `"pleural-line"`); errors quote the label as the file spells it.
//!
//! # Field of view (a lus convention)
//! LabelMe has no notion of a field of view. A shape labelled `field-of-view` or `fov` (any case,
//! `-`, `_` or spaces ignored; checked before the schema, so it never names a class) is taken as
//! the annotation's field-of-view polygon, not as a shape; it must be a `polygon` or `rectangle`,
//! and there may be one at most. Without one the field of view is the whole image.
//!
//! # Image size
//! `imageWidth` and `imageHeight` are required. If `imageData` (the base64 image LabelMe can
//! embed) is present, the size in its header must match them; else if `imagePath` (relative to
//! the JSON file's folder; Windows `\` separators are accepted) names an existing file, that
//! image's size must match. `annotation.image` is `imagePath` with `/` separators.
//!
//! # Errors
//! Every error names the file; a shape's error names its index in the LabelMe `shapes` array, its
//! label and the reason; JSON syntax errors give the line and column. Python's `json` module
//! writes a non-finite float as a bare `NaN`/`Infinity`, which is not JSON: such a coordinate is
//! reported as a non-finite coordinate of its shape (the literal is read as `null`, which can
//! shift column numbers of later syntax errors on the same line by one).

use std::borrow::Cow;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::annotation::{Annotation, Geometry, Point, Shape};
use crate::error::{DataError, Result};
use crate::schema::{LabelSchema, normalize_label};

/// Default dense extent (full width, pixels) of a LabelMe `line`/`linestrip` shape.
pub const DEFAULT_LINE_WIDTH_PX: f32 = 6.0;

/// Labels that mark the field-of-view polygon rather than a shape (compared after
/// [`normalize_label`]).
pub const FIELD_OF_VIEW_LABELS: [&str; 2] = ["field-of-view", "fov"];

/// LabelMe import settings.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LabelmeOptions {
    /// Full width (pixels) a `line`/`linestrip` shape covers in dense labels (LabelMe lines have
    /// no width of their own).
    pub line_width: f32,
}

impl Default for LabelmeOptions {
    fn default() -> Self {
        LabelmeOptions {
            line_width: DEFAULT_LINE_WIDTH_PX,
        }
    }
}

impl LabelmeOptions {
    /// Checks that the line width is a positive finite number.
    pub fn validate(&self) -> Result<()> {
        if !(self.line_width.is_finite() && self.line_width > 0.0) {
            return Err(DataError::config(
                "LabelMe options",
                format!(
                    "line_width {} is not a positive finite number of pixels",
                    self.line_width
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct LabelmeFile {
    shapes: Vec<LabelmeShape>,
    #[serde(rename = "imagePath", default)]
    image_path: Option<String>,
    #[serde(rename = "imageData", default)]
    image_data: Option<String>,
    #[serde(rename = "imageWidth", default)]
    image_width: Option<u32>,
    #[serde(rename = "imageHeight", default)]
    image_height: Option<u32>,
}

#[derive(Deserialize)]
struct LabelmeShape {
    label: String,
    /// Kept as JSON values so a bad coordinate is reported against its shape.
    points: Option<Vec<Value>>,
    shape_type: Option<String>,
}

impl LabelmeShape {
    fn shape_type(&self) -> &str {
        // LabelMe 3 wrote no shape_type: every shape was a polygon.
        self.shape_type.as_deref().unwrap_or("polygon")
    }
}

/// Reads a LabelMe JSON file and converts it to a validated [`Annotation`].
pub fn load_labelme(
    path: &Path,
    schema: &LabelSchema,
    options: &LabelmeOptions,
) -> Result<Annotation> {
    let raw = lus_io::read_text(path)?;
    labelme_from_json_str(&raw, path, schema, options)
}

/// Parses LabelMe JSON text and converts it to a validated [`Annotation`], like
/// [`load_labelme`] without reading the file: `source` names the text in errors, and an
/// `imagePath` is looked up relative to its folder.
pub fn labelme_from_json_str(
    text: &str,
    source: &Path,
    schema: &LabelSchema,
    options: &LabelmeOptions,
) -> Result<Annotation> {
    options.validate()?;
    labelme_from_str(&non_finite_literals_as_null(text), source, schema, options)
}

/// Reads an annotation file of either format: ours (a `"format"` key, or `width`/`height`
/// without LabelMe's keys) or LabelMe (`imageWidth`/`imageHeight`/`imagePath`/`imageData`, or
/// shapes with a `shape_type`).
pub fn load_annotation(
    path: &Path,
    schema: &LabelSchema,
    options: &LabelmeOptions,
) -> Result<Annotation> {
    let raw = lus_io::read_text(path)?;
    annotation_from_json_str(&raw, path, schema, options)
}

/// Parses annotation JSON text of either format (see [`load_annotation`]) without reading a
/// file: `source` names the text in errors.
pub fn annotation_from_json_str(
    raw: &str,
    path: &Path,
    schema: &LabelSchema,
    options: &LabelmeOptions,
) -> Result<Annotation> {
    let text = non_finite_literals_as_null(raw);
    let value: Value = serde_json::from_str(&text).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    match sniff(&value) {
        Some(Format::Lus) => Annotation::from_json_str(&text, schema, path),
        Some(Format::Labelme) => {
            options.validate()?;
            labelme_from_str(&text, path, schema, options)
        }
        None => Err(DataError::Annotation {
            path: path.to_path_buf(),
            reason: format!(
                "neither a lus annotation (\"format\": \"{}\") nor a LabelMe file (\"shapes\" \
                 with \"shape_type\", \"imageWidth\", \"imageHeight\")",
                crate::annotation::ANNOTATION_FORMAT
            ),
        }),
    }
}

enum Format {
    Lus,
    Labelme,
}

fn sniff(value: &Value) -> Option<Format> {
    let object = value.as_object()?;
    if object.contains_key("format") {
        return Some(Format::Lus);
    }
    let labelme_keys = ["imageWidth", "imageHeight", "imagePath", "imageData"];
    let has_shape_type = object
        .get("shapes")
        .and_then(Value::as_array)
        .is_some_and(|shapes| shapes.iter().any(|s| s.get("shape_type").is_some()));
    if object.contains_key("shapes")
        && (has_shape_type || labelme_keys.iter().any(|k| object.contains_key(*k)))
    {
        return Some(Format::Labelme);
    }
    if ["width", "height", "shapes"]
        .iter()
        .all(|k| object.contains_key(*k))
    {
        return Some(Format::Lus);
    }
    None
}

/// Whether `label` marks the field of view (see the module documentation).
pub fn is_field_of_view_label(label: &str) -> bool {
    let key = normalize_label(label);
    FIELD_OF_VIEW_LABELS
        .iter()
        .any(|l| normalize_label(l) == key)
}

fn labelme_from_str(
    text: &str,
    path: &Path,
    schema: &LabelSchema,
    options: &LabelmeOptions,
) -> Result<Annotation> {
    let whole = |reason: String| DataError::Annotation {
        path: path.to_path_buf(),
        reason,
    };
    let file: LabelmeFile = serde_json::from_str(text).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let (width, height) = match (file.image_width, file.image_height) {
        (Some(w), Some(h)) => (w, h),
        (w, h) => {
            let missing: Vec<&str> = [("imageWidth", w), ("imageHeight", h)]
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| *k)
                .collect();
            return Err(whole(format!(
                "LabelMe file has no {} (the image size is required)",
                missing.join(" and ")
            )));
        }
    };
    let image_path = file.image_path.as_ref().map(|p| p.replace('\\', "/"));
    check_image_size(path, &file, image_path.as_deref(), width, height)?;

    let mut annotation = Annotation::new(width, height);
    annotation.image = image_path;
    // LabelMe index of each annotation shape, so validation errors name the LabelMe shape.
    let mut labelme_index = Vec::with_capacity(file.shapes.len());
    let mut field_of_view_index = None;
    for (index, shape) in file.shapes.iter().enumerate() {
        let fail = |reason: String| DataError::Shape {
            path: path.to_path_buf(),
            index,
            label: shape.label.clone(),
            reason,
        };
        let shape_type = shape.shape_type();
        let is_field_of_view = is_field_of_view_label(&shape.label);
        let class_name = if is_field_of_view {
            None
        } else {
            Some(schema.resolve(&shape.label).map_err(fail)?.name.clone())
        };
        let points = match &shape.points {
            Some(values) => parse_points(values).map_err(fail)?,
            None => return Err(fail("has no \"points\"".into())),
        };
        let geometry = match shape_type {
            "polygon" => Geometry::Polygon { points },
            "rectangle" => {
                let &[[x0, y0], [x1, y1]] = points.as_slice() else {
                    return Err(fail(format!(
                        "LabelMe shape_type \"rectangle\" needs its 2 opposite corners, has {} \
                         point(s)",
                        points.len()
                    )));
                };
                Geometry::Polygon {
                    points: vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1]],
                }
            }
            "line" | "linestrip" if !is_field_of_view => Geometry::Polyline {
                points,
                width: options.line_width,
            },
            "line" | "linestrip" => {
                return Err(fail(format!(
                    "the field of view must be a polygon or rectangle, not a {shape_type:?}"
                )));
            }
            "circle" | "point" | "points" | "mask" => {
                return Err(fail(format!(
                    "LabelMe shape_type {shape_type:?} is not supported: lus labels regions and \
                     lines (draw it as polygon, rectangle, line or linestrip)"
                )));
            }
            other => {
                return Err(fail(format!(
                    "unknown LabelMe shape_type {other:?} (supported: polygon, rectangle, line, \
                     linestrip)"
                )));
            }
        };
        let Some(class_name) = class_name else {
            if let Some(first) = field_of_view_index {
                return Err(fail(format!(
                    "a second field-of-view shape (shape {first} is the field of view already)"
                )));
            }
            let Geometry::Polygon { points } = geometry else {
                unreachable!("only polygons and rectangles reach here as a field of view")
            };
            annotation.field_of_view = Some(points);
            field_of_view_index = Some(index);
            continue;
        };
        annotation.shapes.push(Shape {
            label: class_name,
            geometry,
        });
        labelme_index.push(index);
    }

    match annotation.validate(schema, path) {
        Ok(()) => Ok(annotation),
        Err(DataError::Shape {
            path,
            index,
            reason,
            ..
        }) => {
            let index = labelme_index[index];
            Err(DataError::Shape {
                path,
                index,
                label: file.shapes[index].label.clone(),
                reason: format!(
                    "{reason} (LabelMe shape_type {:?})",
                    file.shapes[index].shape_type()
                ),
            })
        }
        Err(DataError::Annotation { path, reason }) => {
            // Whole-annotation errors other than the size come from the field of view: name its
            // LabelMe shape.
            let mut without = annotation.clone();
            without.field_of_view = None;
            let from_field_of_view = !matches!(
                without.validate(schema, &path),
                Err(DataError::Annotation { .. })
            );
            match field_of_view_index {
                Some(index) if from_field_of_view => Err(DataError::Shape {
                    path,
                    index,
                    label: file.shapes[index].label.clone(),
                    reason,
                }),
                _ => Err(DataError::Annotation { path, reason }),
            }
        }
        Err(other) => Err(other),
    }
}

/// At most this many characters of an offending JSON value are quoted in errors.
const QUOTE_LIMIT: usize = 40;

fn quote(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

fn parse_points(values: &[Value]) -> std::result::Result<Vec<Point>, String> {
    values
        .iter()
        .enumerate()
        .map(|(k, value)| {
            let Some([x, y]) = value
                .as_array()
                .and_then(|a| <&[Value; 2]>::try_from(a.as_slice()).ok())
            else {
                return Err(format!(
                    "point {k} is {}, expected [x, y] with two numbers",
                    quote(value)
                ));
            };
            let coordinate = |c: &Value| match c {
                Value::Number(n) => match n.as_f64().map(|v| v as f32) {
                    Some(v) if v.is_finite() => Ok(v),
                    _ => Err(format!(
                        "point {k} has coordinate {n}, which is out of range"
                    )),
                },
                Value::Null => Err(format!(
                    "point {k} has a non-finite coordinate (NaN, Infinity or null in the file)"
                )),
                other => Err(format!(
                    "point {k} has coordinate {}, which is not a number",
                    quote(other)
                )),
            };
            Ok([coordinate(x)?, coordinate(y)?])
        })
        .collect()
}

/// Compares the declared image size with the embedded image or the image file.
fn check_image_size(
    json_path: &Path,
    file: &LabelmeFile,
    image_path: Option<&str>,
    width: u32,
    height: u32,
) -> Result<()> {
    let fail = |reason: String| DataError::Image {
        path: json_path.to_path_buf(),
        reason,
    };
    if let Some(data) = &file.image_data {
        let compact: Cow<str> = if data.bytes().any(|b| b.is_ascii_whitespace()) {
            Cow::Owned(data.chars().filter(|c| !c.is_ascii_whitespace()).collect())
        } else {
            Cow::Borrowed(data)
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| fail(format!("imageData is not valid base64: {e}")))?;
        let (w, h) = image::ImageReader::new(Cursor::new(&bytes))
            .with_guessed_format()
            .map_err(|e| fail(format!("imageData cannot be read: {e}")))?
            .into_dimensions()
            .map_err(|e| {
                fail(format!(
                    "imageData is not a readable PNG or JPEG image: {e}"
                ))
            })?;
        if (w, h) != (width, height) {
            return Err(fail(format!(
                "the embedded image (imageData) is {w}x{h}, but imageWidth x imageHeight say \
                 {width}x{height}"
            )));
        }
    } else if let Some(relative) = image_path {
        let image_file: PathBuf = json_path
            .parent()
            .unwrap_or_else(|| Path::new(""))
            .join(relative);
        if image_file.is_file() {
            let (w, h) = image::ImageReader::open(&image_file)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| DataError::io(&image_file, e))?
                .into_dimensions()
                .map_err(|e| {
                    fail(format!(
                        "cannot read the size of its image {}: {e}",
                        image_file.display()
                    ))
                })?;
            if (w, h) != (width, height) {
                return Err(fail(format!(
                    "its image {} is {w}x{h}, but imageWidth x imageHeight say {width}x{height}",
                    image_file.display()
                )));
            }
        }
    }
    Ok(())
}

/// Replaces the bare `NaN`, `Infinity` and `-Infinity` that Python's `json` writes (not JSON)
/// by `null` outside strings, so the coordinate is reported against its shape. Lines are kept.
pub(crate) fn non_finite_literals_as_null(text: &str) -> Cow<'_, str> {
    const LITERALS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `text` already in `out`
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        // Compared as bytes: `i` may sit inside a multi-byte character outside any string (in
        // a malformed file), where slicing `text[i..]` would panic.
        let literal = LITERALS.iter().find(|l| {
            bytes[i..].starts_with(l.as_bytes())
                && !bytes
                    .get(i + l.len())
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        });
        if let Some(literal) = literal {
            let buffer = out.get_or_insert_with(|| String::with_capacity(text.len()));
            buffer.push_str(&text[copied..i]);
            buffer.push_str("null");
            i += literal.len();
            copied = i;
        } else {
            i += 1;
        }
    }
    match out {
        Some(mut buffer) => {
            buffer.push_str(&text[copied..]);
            Cow::Owned(buffer)
        }
        None => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_literals_become_null_outside_strings() {
        let text = "{\"a\": [NaN, -Infinity, Infinity], \"NaN\": \"x NaN \\\" NaN\", \"b\": NaNx}";
        assert_eq!(
            non_finite_literals_as_null(text),
            "{\"a\": [null, null, null], \"NaN\": \"x NaN \\\" NaN\", \"b\": NaNx}"
        );
        assert!(matches!(
            non_finite_literals_as_null("{\"a\": 1}\n"),
            Cow::Borrowed(_)
        ));
    }

    /// Fuzzing (annotation_json) found a panic: a multi-byte character outside strings made
    /// the literal scan slice `text` inside a character.
    #[test]
    fn multi_byte_characters_outside_strings_are_a_json_error_not_a_panic() {
        assert_eq!(
            non_finite_literals_as_null("{\u{795}NaN: ޕ}"),
            "{\u{795}null: ޕ}"
        );
        let crash =
            "{\n  \"format\": \"lus-annotation/1\",\n\" hdiw t\": 40,\n  ޕmage\": \"frame.png\"}";
        let schema = LabelSchema::default();
        for result in [
            annotation_from_json_str(
                crash,
                Path::new("c.json"),
                &schema,
                &LabelmeOptions::default(),
            ),
            labelme_from_json_str(
                crash,
                Path::new("c.json"),
                &schema,
                &LabelmeOptions::default(),
            ),
            Annotation::from_json_str(crash, &schema, Path::new("c.json")),
        ] {
            let e = result.unwrap_err().to_string();
            assert!(e.starts_with("c.json: invalid JSON"), "{e}");
        }
    }

    #[test]
    fn field_of_view_labels() {
        for label in [
            "fov",
            "FOV",
            "field of view",
            "Field_Of_View",
            "field-of-view",
        ] {
            assert!(is_field_of_view_label(label), "{label}");
        }
        assert!(!is_field_of_view_label("lung"));
        // No class of the default schema is spelt like a field-of-view label.
        let schema = LabelSchema::default();
        assert!(
            FIELD_OF_VIEW_LABELS
                .iter()
                .all(|l| schema.lookup(l).is_none())
        );
    }

    #[test]
    fn options_are_validated() {
        assert!(LabelmeOptions::default().validate().is_ok());
        let e = LabelmeOptions { line_width: -1.0 }
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("line_width -1"), "{e}");
        let parsed: LabelmeOptions = toml::from_str("line_width = 4.5").unwrap();
        assert_eq!(parsed.line_width, 4.5);
        assert!(toml::from_str::<LabelmeOptions>("width = 4.5").is_err());
    }
}
