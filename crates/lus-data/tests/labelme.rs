//! LabelMe import on hand-written fixtures (tests/fixtures/labelme/): every shape type, the
//! field-of-view convention, image-size checks, format sniffing, and one fixture per error,
//! whose message must name the file, the shape and the reason.

use std::path::{Path, PathBuf};

use lus_data::labelme::{LabelmeOptions, load_annotation, load_labelme};
use lus_data::raster::{RasterOptions, rasterize};
use lus_data::{Annotation, Geometry, LabelSchema, Point, Shape};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/labelme")
        .join(name)
}

fn load(name: &str) -> lus_data::Result<Annotation> {
    load_labelme(
        &fixture(name),
        &LabelSchema::default(),
        &LabelmeOptions::default(),
    )
}

fn polygon(label: &str, points: &[Point]) -> Shape {
    Shape {
        label: label.into(),
        geometry: Geometry::Polygon {
            points: points.to_vec(),
        },
    }
}

fn polyline(label: &str, points: &[Point], width: f32) -> Shape {
    Shape {
        label: label.into(),
        geometry: Geometry::Polyline {
            points: points.to_vec(),
            width,
        },
    }
}

/// complete.json as it must import: the `fov` shape is the field of view, labels canonical,
/// the rectangles 4-corner polygons, line and linestrip polylines of the given width.
fn complete_expected(line_width: f32) -> Annotation {
    let mut a = Annotation::new(40, 30);
    a.image = Some("frame_40x30.png".into());
    a.field_of_view = Some(vec![[8.0, 0.0], [32.0, 0.0], [40.0, 30.0], [0.0, 30.0]]);
    a.shapes = vec![
        polygon(
            "chest-wall",
            &[[0.0, 0.0], [40.0, 0.0], [40.0, 9.0], [0.0, 9.0]],
        ),
        polygon(
            "lung",
            &[[0.0, 9.0], [40.0, 9.0], [40.0, 30.0], [0.0, 30.0]],
        ),
        polyline("pleural-line", &[[2.0, 10.0], [38.0, 10.0]], line_width),
        polyline(
            "a-line",
            &[[4.0, 20.0], [20.0, 20.5], [36.0, 20.0]],
            line_width,
        ),
        polygon(
            "b-line",
            &[[18.0, 11.0], [22.0, 11.0], [24.0, 30.0], [16.0, 30.0]],
        ),
        polygon("rib", &[[30.0, 8.0], [26.0, 8.0], [26.0, 2.0], [30.0, 2.0]]),
    ];
    a
}

#[test]
fn every_supported_shape_type_imports() {
    assert_eq!(load("complete.json").unwrap(), complete_expected(6.0));
    let narrow = load_labelme(
        &fixture("complete.json"),
        &LabelSchema::default(),
        &LabelmeOptions { line_width: 2.5 },
    )
    .unwrap();
    assert_eq!(narrow, complete_expected(2.5));
}

#[test]
fn an_imported_file_rasterizes_in_both_modes() {
    let schema = LabelSchema::default();
    let a = load("complete.json").unwrap();
    let dense = rasterize(&a, &schema, &RasterOptions::dense()).unwrap();
    let sparse = rasterize(&a, &schema, &RasterOptions::sparse(3.0)).unwrap();
    // (pixel, dense id, sparse id). The fan's left edge is x = 8 - 8 y / 30.
    let expected = [
        ((0, 0), 0, 0),   // outside the fan
        ((5, 3), 0, 0),   // outside the fan, where the chest-wall rectangle is
        ((12, 3), 1, 0),  // chest wall
        ((28, 4), 2, 0),  // rib, over the chest wall
        ((20, 9), 3, 3),  // pleural line: y in [7, 13] dense (6 px), [8.5, 11.5] sparse (3 px)
        ((28, 7), 3, 0),  // pleural line over the rib (layer 7 over 6), outside the sparse stroke
        ((10, 20), 4, 4), // A-line
        ((20, 25), 5, 5), // the outlined B-line; sparse draws its derived centre line x = 20
        ((17, 25), 5, 0), // inside the B-line outline, off its centre line
        ((5, 25), 6, 0),  // lung
    ];
    for ((x, y), d, s) in expected {
        assert_eq!(dense.get(x, y), d, "dense at ({x}, {y})");
        assert_eq!(sparse.get(x, y), s, "sparse at ({x}, {y})");
    }
}

#[test]
fn embedded_image_and_old_files() {
    // LabelMe 3 style: no shape_type (a polygon), a Windows imagePath that does not exist here,
    // and the image embedded as base64 (8 x 6, which imageWidth/imageHeight agree with).
    let a = load("embedded_image.json").unwrap();
    let mut expected = Annotation::new(8, 6);
    expected.image = Some("../images/frame_8x6.png".into());
    expected.shapes = vec![
        polygon("lung", &[[0.0, 2.0], [8.0, 2.0], [8.0, 6.0], [0.0, 6.0]]),
        polyline("pleural-line", &[[0.0, 2.0], [4.0, 2.5], [8.0, 2.0]], 6.0),
    ];
    assert_eq!(a, expected);
}

#[test]
fn load_annotation_sniffs_the_format() {
    let schema = LabelSchema::default();
    let options = LabelmeOptions::default();
    assert_eq!(
        load_annotation(&fixture("complete.json"), &schema, &options).unwrap(),
        complete_expected(6.0)
    );
    let ours = load_annotation(&fixture("lus_format.json"), &schema, &options).unwrap();
    assert_eq!(
        ours,
        Annotation::load(&fixture("lus_format.json"), &schema).unwrap()
    );
    assert_eq!(
        ours.shapes,
        [polyline("pleural-line", &[[2.0, 10.0], [38.0, 10.0]], 2.0)]
    );
    let e = load_annotation(&fixture("neither.json"), &schema, &options)
        .unwrap_err()
        .to_string();
    assert!(e.contains("neither.json: neither a lus annotation"), "{e}");
    // Errors of LabelMe files come through the sniffer unchanged.
    let e = load_annotation(&fixture("circle.json"), &schema, &options)
        .unwrap_err()
        .to_string();
    assert!(e.contains("circle.json: shape 1"), "{e}");
    let e = load_annotation(
        &fixture("complete.json"),
        &schema,
        &LabelmeOptions { line_width: 0.0 },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("line_width 0"), "{e}");
}

#[test]
fn every_bad_shape_is_an_error_naming_file_shape_and_reason() {
    // (fixture, shape, label as written, reason)
    let cases = [
        (
            "circle.json",
            1,
            "consolidation",
            "shape_type \"circle\" is not supported",
        ),
        (
            "point.json",
            0,
            "b-line",
            "shape_type \"point\" is not supported",
        ),
        (
            "points.json",
            2,
            "a-line",
            "shape_type \"points\" is not supported",
        ),
        (
            "mask.json",
            0,
            "effusion",
            "shape_type \"mask\" is not supported",
        ),
        (
            "ellipse.json",
            1,
            "consolidation",
            "unknown LabelMe shape_type \"ellipse\"",
        ),
        (
            "unknown_label.json",
            2,
            "b-lnie",
            "unknown class \"b-lnie\" (did you mean \"b-line\"?)",
        ),
        (
            "empty_polygon.json",
            1,
            "consolidation",
            "polygon has 0 point(s); needs at least 3 (LabelMe shape_type \"polygon\")",
        ),
        (
            "two_point_polygon.json",
            0,
            "effusion",
            "polygon has 2 point(s)",
        ),
        (
            "string_point.json",
            0,
            "rib",
            "point 0 has coordinate \"12\", which is not a number",
        ),
        (
            "nan_point.json",
            1,
            "rib",
            "point 1 has a non-finite coordinate",
        ),
        (
            "outside.json",
            2,
            "a-line",
            "point [55.0, 20.0] lies outside the 40x30 image (LabelMe shape_type \"line\")",
        ),
        (
            "rectangle_three_points.json",
            0,
            "rib",
            "\"rectangle\" needs its 2 opposite corners, has 3 point(s)",
        ),
        (
            "two_fov.json",
            3,
            "Field of View",
            "a second field-of-view shape (shape 0 is the field of view already)",
        ),
        (
            "fov_outside.json",
            1,
            "field-of-view",
            "field of view point [48.0, 30.0] lies outside the 40x30 image",
        ),
    ];
    for (name, index, label, reason) in cases {
        let e = load(name).unwrap_err().to_string();
        let head = format!(
            "{}: shape {index} (label {label:?}): ",
            fixture(name).display()
        );
        assert!(
            e.starts_with(&head),
            "{name}: expected {head:?} at the start of\n{e}"
        );
        assert!(e.contains(reason), "{name}: expected {reason:?} in\n{e}");
    }
}

#[test]
fn file_level_errors_name_the_file_and_the_reason() {
    let cases = [
        (
            "size_mismatch_path.json",
            format!(
                "its image {} is 40x30, but imageWidth x imageHeight say 64x48",
                fixture("frame_40x30.png").display()
            ),
        ),
        (
            "size_mismatch_data.json",
            "the embedded image (imageData) is 8x6, but imageWidth x imageHeight say 16x12".into(),
        ),
        (
            "missing_size.json",
            "LabelMe file has no imageHeight (the image size is required)".into(),
        ),
        // A trailing comma after the last point of shape 0, at the end of line 23.
        ("syntax_error.json", "invalid JSON: ".into()),
    ];
    for (name, reason) in cases {
        let e = load(name).unwrap_err().to_string();
        let head = format!("{}: ", fixture(name).display());
        assert!(e.starts_with(&head), "{name}: {e}");
        assert!(e.contains(&reason), "{name}: expected {reason:?} in\n{e}");
    }
    let e = load("syntax_error.json").unwrap_err().to_string();
    assert!(e.contains("line 24"), "{e}");
    let e = load("no_such_file.json").unwrap_err().to_string();
    assert!(e.contains("no_such_file.json"), "{e}");
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn labelme_json(image_path: &str, image_data: Option<&str>, width: u32, height: u32) -> String {
    let data = image_data.map_or("null".to_string(), |d| format!("{d:?}"));
    format!(
        r#"{{
  "version": "5.4.1",
  "flags": {{}},
  "shapes": [
    {{"label": "lung", "points": [[0.0, 2.0], [10.0, 2.0], [10.0, 8.0]], "group_id": null,
      "shape_type": "polygon", "flags": {{}}}}
  ],
  "imagePath": {image_path:?},
  "imageData": {data},
  "imageHeight": {height},
  "imageWidth": {width}
}}"#
    )
}

#[test]
fn image_path_is_resolved_from_the_json_folder() {
    let dir = tempfile::tempdir().unwrap();
    // A 20 x 10 PNG in a sibling folder, referenced the Windows way.
    let image = image::GrayImage::from_fn(20, 10, |x, y| image::Luma([(x * 10 + y) as u8]));
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    image.save(dir.path().join("images/frame.png")).unwrap();
    let schema = LabelSchema::default();
    let options = LabelmeOptions::default();

    let good = dir.path().join("json/good.json");
    write(&good, &labelme_json("..\\images\\frame.png", None, 20, 10));
    let a = load_labelme(&good, &schema, &options).unwrap();
    assert_eq!(a.image.as_deref(), Some("../images/frame.png"));
    assert_eq!((a.width, a.height), (20, 10));

    let wrong = dir.path().join("json/wrong.json");
    write(&wrong, &labelme_json("../images/frame.png", None, 20, 12));
    let e = load_labelme(&wrong, &schema, &options)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!("{}: ", wrong.display())), "{e}");
    assert!(
        e.contains("frame.png is 20x10") && e.contains("say 20x12"),
        "{e}"
    );

    // A file at imagePath that is no image.
    write(&dir.path().join("json/notes.png"), "not a png");
    let notes = dir.path().join("json/notes.json");
    write(&notes, &labelme_json("notes.png", None, 20, 10));
    let e = load_labelme(&notes, &schema, &options)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read the size of its image") && e.contains("notes.png"),
        "{e}"
    );

    // imageData that is not base64, or base64 of something that is not an image.
    let bad = dir.path().join("json/bad_data.json");
    write(&bad, &labelme_json("x.png", Some("@@not base64@@"), 20, 10));
    let e = load_labelme(&bad, &schema, &options)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad_data.json: imageData is not valid base64"),
        "{e}"
    );
    write(
        &bad,
        &labelme_json("x.png", Some("aGVsbG8gd29ybGQ="), 20, 10),
    );
    let e = load_labelme(&bad, &schema, &options)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad_data.json: imageData is not a readable PNG or JPEG"),
        "{e}"
    );

    // A missing image file is not an error (LabelMe folders are often moved without images).
    let moved = dir.path().join("json/moved.json");
    write(&moved, &labelme_json("gone/frame.png", None, 20, 10));
    assert!(load_labelme(&moved, &schema, &options).is_ok());
}
