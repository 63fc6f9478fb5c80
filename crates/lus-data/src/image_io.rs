//! Image decoding with limits, so a hostile or broken file is an error naming it rather than a
//! panic or a huge allocation.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, GrayImage, ImageReader, Limits};

use crate::error::{DataError, Result};

/// Largest accepted image side (pixels). The largest real POCUS frame is 2700 x 2696.
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Largest accepted decoder allocation (bytes).
pub const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// Decodes PNG or JPEG bytes (format guessed from content) under size limits.
pub fn decode_with_limits(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
    let fail = |reason: String| DataError::Image {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(fail("file is empty".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if reader.format().is_none() {
        return Err(fail("not a PNG or JPEG image".into()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| fail(format!("cannot decode image: {e}")))?;
    if image.width() == 0 || image.height() == 0 {
        return Err(fail("image has zero size".into()));
    }
    Ok(image)
}

/// Reads an image file and converts it to 8-bit grayscale (ultrasound is grayscale; colour
/// overlays in real frames are mixed down by luma).
pub fn load_gray(path: &Path) -> Result<GrayImage> {
    let bytes = lus_io::read_file(path)?;
    Ok(decode_with_limits(&bytes, path)?.into_luma8())
}

/// Writes a grayscale image as PNG, atomically.
pub fn save_gray_png(image: &GrayImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .expect("encoding a gray PNG into memory cannot fail");
    Ok(lus_io::write_atomic(path, &bytes)?)
}
