//! The lus annotation JSON reader (`Annotation::from_json_str`) on arbitrary bytes. It must
//! return rather than panic; an error must name the file; an annotation it accepts must be
//! valid and read back unchanged from the JSON lus writes for it.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use lus_data::{Annotation, LabelSchema};

static SCHEMA: LazyLock<LabelSchema> = LazyLock::new(LabelSchema::default);

/// A path in no existing folder, so nothing the input names is found beside it.
const SOURCE: &str = "/nonexistent/lus-fuzz/input.json";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Path::new(SOURCE);
    match Annotation::from_json_str(text, &SCHEMA, source) {
        Ok(annotation) => {
            annotation
                .validate(&SCHEMA, source)
                .expect("an accepted annotation is valid");
            let written = annotation.to_json_string();
            let again = Annotation::from_json_str(&written, &SCHEMA, source)
                .unwrap_or_else(|e| panic!("the JSON written for an accepted annotation: {e}"));
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
