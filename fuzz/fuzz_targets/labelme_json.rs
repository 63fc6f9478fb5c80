//! The LabelMe reader (`labelme_from_json_str`) on arbitrary bytes. It must return rather than
//! panic; an error must name the file; an annotation it makes must be valid, hold canonical
//! class names only, and read back unchanged from the lus JSON written for it.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use lus_data::labelme::{LabelmeOptions, labelme_from_json_str};
use lus_data::{Annotation, LabelSchema};

static SCHEMA: LazyLock<LabelSchema> = LazyLock::new(LabelSchema::default);

/// A path in no existing folder, so a relative `imagePath` names no file.
const SOURCE: &str = "/nonexistent/lus-fuzz/input.json";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Path::new(SOURCE);
    match labelme_from_json_str(text, source, &SCHEMA, &LabelmeOptions::default()) {
        Ok(annotation) => {
            annotation
                .validate(&SCHEMA, source)
                .expect("an imported annotation is valid");
            for shape in &annotation.shapes {
                let class = SCHEMA.lookup(&shape.label).expect("a known label");
                assert_eq!(class.name, shape.label, "labels are stored canonical");
            }
            let written = annotation.to_json_string();
            let again = Annotation::from_json_str(&written, &SCHEMA, source)
                .unwrap_or_else(|e| panic!("the JSON written for an import: {e}"));
            assert_eq!(again, annotation, "JSON round trip of {written}");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with(SOURCE),
                "error without the file: {message}"
            );
        }
    }
});
