//! lus-data: everything that makes and reads labelled lung-ultrasound data.
//!
//! - [`schema`]: the label schema (classes, colours, line classes, paint order).
//! - [`annotation`]: vector annotations; [`labelme`]: LabelMe JSON import.
//! - [`recipe`]: label recipes (dense, sparse, and any other as TOML); [`raster`]: one
//!   rasterizer that draws an annotation by a recipe -> [`mask::Mask`].
//! - [`augment`] and [`loader`]: augmentation and candle batches with background prefetch.
//!
//! The synthetic scanner that emits these annotations is the `lus-scanner` crate, which uses
//! this one (never the other way round).

pub mod annotation;
pub mod augment;
pub mod clinical;
pub mod cls_loader;
pub mod error;
pub mod image_io;
pub mod labelme;
pub mod loader;
pub mod manifest;
pub mod mask;
pub mod pocus;
pub mod raster;
pub mod recipe;
pub mod schema;
pub mod splits;

pub use annotation::{Annotation, Geometry, Point, Shape};
pub use clinical::{Diagnosis, Probe};
pub use error::{DataError, Result};
pub use labelme::{LabelmeOptions, load_annotation, load_labelme};
pub use mask::Mask;
pub use raster::{RasterOptions, Rasterizer, rasterize};
pub use recipe::{ClassRender, LabelRecipe, StrokeWidth};
pub use schema::LabelSchema;
