//! Arbitrary bytes -> annotation (either format, as `lus rasterize` reads a folder) -> masks of
//! the dense recipe, the legacy sparse labels (absolute width, not clipped) and the built-in
//! sparse recipe (width relative to the image, clipped). The first two bytes pick the legacy
//! stroke width and the ignore id; the rest is the JSON text. An accepted annotation must
//! rasterize without error under every recipe, and the masks must keep the invariants: the
//! annotation's size; dense ids are classes of the schema or the ignore id; sparse ids are the
//! background or line classes; and a rasterizer that reuses its buffers between calls gives the
//! same masks as a fresh one.

#![no_main]

use std::path::Path;
use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use lus_data::labelme::{LabelmeOptions, annotation_from_json_str};
use lus_data::raster::{RasterOptions, Rasterizer, rasterize};
use lus_data::recipe::LabelRecipe;
use lus_data::{LabelSchema, Mask};

static SCHEMA: LazyLock<LabelSchema> = LazyLock::new(LabelSchema::default);

/// One rasterizer kept between inputs, so stale buffers of an earlier input would show.
static REUSED: LazyLock<Mutex<Rasterizer>> = LazyLock::new(|| Mutex::new(Rasterizer::new()));

/// Images larger than this (pixels) are valid but skipped: rasterizing an 8192 x 8192 frame
/// takes long enough to slow the search without exercising anything new.
const MAX_PIXELS: u64 = 1 << 20;

const SOURCE: &str = "/nonexistent/lus-fuzz/input.json";

fn check_ids(mask: &Mask, allowed: impl Fn(u8) -> bool, what: &str) {
    if let Some(&bad) = mask.data().iter().find(|&&v| !allowed(v)) {
        panic!("{what} mask holds id {bad}");
    }
}

fuzz_target!(|data: &[u8]| {
    let [width_byte, ignore_byte, json @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(json) else {
        return;
    };
    let schema = &*SCHEMA;
    let Ok(annotation) =
        annotation_from_json_str(text, Path::new(SOURCE), schema, &LabelmeOptions::default())
    else {
        return;
    };
    if u64::from(annotation.width) * u64::from(annotation.height) > MAX_PIXELS {
        return;
    }
    let classes = schema.num_classes();
    // Ids from the class count up are free: any of them may serve as the ignore id.
    let ignore_id = (usize::from(*ignore_byte) >= classes).then_some(*ignore_byte);
    let dense = RasterOptions {
        ignore_id,
        ..RasterOptions::dense()
    };
    let legacy_sparse = RasterOptions::sparse(0.25 + f32::from(*width_byte) / 16.0);
    let sparse = RasterOptions {
        ignore_id,
        ..RasterOptions::recipe(LabelRecipe::builtin("sparse").expect("built-in recipe"))
    };
    let size = (annotation.width, annotation.height);
    let mut reused = REUSED.lock().unwrap();
    for (what, options) in [
        ("dense", dense),
        ("legacy sparse", legacy_sparse),
        ("sparse", sparse),
    ] {
        let mask = rasterize(&annotation, schema, &options)
            .unwrap_or_else(|e| panic!("an accepted annotation fails to rasterize: {e}"));
        assert_eq!((mask.width(), mask.height()), size);
        if what == "dense" {
            check_ids(
                &mask,
                |v| usize::from(v) < classes || Some(v) == ignore_id,
                "dense",
            );
        } else {
            check_ids(
                &mask,
                |v| v == 0 || schema.class(v).is_some_and(|c| c.line),
                what,
            );
        }
        let again = reused
            .rasterize(&annotation, schema, &options)
            .expect("the same annotation rasterizes again");
        assert!(
            again == mask,
            "{what}: a reused rasterizer differs from a fresh one"
        );
    }
});
