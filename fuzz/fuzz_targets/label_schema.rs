//! The label schema reader (`LabelSchema::from_toml_str`) on arbitrary bytes. It must return
//! rather than panic; an error must name the file; a schema it accepts must have ids 0..n, look
//! every class up by its name and aliases, and read back unchanged from the TOML lus writes.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lus_data::LabelSchema;

const SOURCE: &str = "/nonexistent/lus-fuzz/schema.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match LabelSchema::from_toml_str(text, Path::new(SOURCE)) {
        Ok(schema) => {
            let n = schema.num_classes();
            let mut ids: Vec<usize> = schema.classes().iter().map(|c| usize::from(c.id)).collect();
            ids.sort_unstable();
            assert_eq!(ids, (0..n).collect::<Vec<_>>(), "ids run 0..n");
            assert_eq!(schema.background().id, 0);
            assert!(schema.line_classes().next().is_some());
            for class in schema.classes() {
                for spelling in std::iter::once(&class.name).chain(&class.aliases) {
                    let found = schema.lookup(spelling).expect("every spelling resolves");
                    assert_eq!(found.id, class.id, "{spelling:?}");
                }
            }
            // A near-miss spelling gets an answer, never a panic.
            let _ = schema.resolve(&format!("{}x", schema.classes()[0].name));
            let written = schema.to_toml_string();
            let again = LabelSchema::from_toml_str(&written, Path::new(SOURCE))
                .unwrap_or_else(|e| panic!("the TOML written for an accepted schema: {e}"));
            assert_eq!(again, schema, "TOML round trip of {written}");
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
