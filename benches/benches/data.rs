//! Benches of lus-data: the synthetic scanner and the rasterizer, at 128 and 256 px.
//!
//! The rasterizer runs the label recipes the studies use: `dense`, the built-in `sparse`
//! (strokes 3 px at 128 px, clipped to their objects: each stroke also fills its object's
//! extent) and `legacy-sparse` (3 px strokes at any size, not clipped: lus's sparse labels
//! before recipes). `rasterize/{recipe}/{size}` calls `rasterize` (a new `Rasterizer` per mask);
//! `rasterize/{recipe}-reused/{size}` draws with one `Rasterizer` whose buffers are reused.
//!
//! Throughput is reported in elements (images or masks) per second. `scanner/batch64` runs on
//! the global rayon pool (all cores), the way `lus synth` uses it; `scanner/one` is one image
//! on one core.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lus_data::LabelSchema;
use lus_data::raster::{RasterOptions, Rasterizer, rasterize};
use lus_data::recipe::LabelRecipe;
use lus_scanner::{Scanner, ScannerConfig};

const SIZES: [u32; 2] = [128, 256];

fn scanner_for(size: u32) -> Scanner {
    Scanner::new(
        ScannerConfig {
            size,
            ..ScannerConfig::default()
        },
        7,
    )
    .expect("default scanner config is valid")
}

fn bench_scanner(c: &mut Criterion) {
    let mut group = c.benchmark_group("scanner");
    group.sample_size(20);
    for size in SIZES {
        let scanner = scanner_for(size);
        group.throughput(Throughput::Elements(1));
        let mut index = 0u64;
        group.bench_with_input(BenchmarkId::new("one", size), &size, |b, _| {
            b.iter(|| {
                index += 1;
                black_box(scanner.sample(index))
            })
        });
        group.throughput(Throughput::Elements(64));
        let mut start = 0u64;
        group.bench_with_input(BenchmarkId::new("batch64", size), &size, |b, _| {
            b.iter(|| {
                start += 64;
                black_box(scanner.generate(start..start + 64))
            })
        });
    }
    group.finish();
}

fn bench_rasterizer(c: &mut Criterion) {
    let schema = LabelSchema::default();
    let mut group = c.benchmark_group("rasterize");
    for size in SIZES {
        let annotations: Vec<_> = scanner_for(size)
            .generate(0..32)
            .into_iter()
            .map(|s| s.annotation)
            .collect();
        group.throughput(Throughput::Elements(annotations.len() as u64));
        let recipes = [
            ("dense", RasterOptions::dense()),
            (
                "sparse",
                RasterOptions::recipe(LabelRecipe::builtin("sparse").expect("built-in recipe")),
            ),
            ("legacy-sparse", RasterOptions::sparse(3.0)),
        ];
        for (name, options) in recipes {
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    for a in &annotations {
                        black_box(rasterize(a, &schema, &options).expect("valid annotation"));
                    }
                })
            });
            let mut rasterizer = Rasterizer::new();
            group.bench_with_input(
                BenchmarkId::new(format!("{name}-reused"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        for a in &annotations {
                            black_box(
                                rasterizer
                                    .rasterize(a, &schema, &options)
                                    .expect("valid annotation"),
                            );
                        }
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_scanner, bench_rasterizer);
criterion_main!(benches);
