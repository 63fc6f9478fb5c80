//! Class-id masks: one `u8` class id per pixel, stored as 8-bit grayscale PNG.

use std::io::Cursor;
use std::path::Path;

use image::{GrayImage, ImageFormat, RgbImage};

use crate::error::{DataError, Result};
use crate::schema::LabelSchema;

/// A class-id mask, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl Mask {
    /// A mask of one value.
    pub fn filled(width: u32, height: u32, value: u8) -> Self {
        Mask {
            width,
            height,
            data: vec![value; width as usize * height as usize],
        }
    }

    /// A mask from row-major data; `None` if the length is not `width * height`.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Option<Self> {
        (data.len() == width as usize * height as usize).then_some(Mask {
            width,
            height,
            data,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Row-major class ids.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Row-major class ids, mutable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The class id at `(x, y)`.
    pub fn get(&self, x: u32, y: u32) -> u8 {
        self.data[y as usize * self.width as usize + x as usize]
    }

    /// Sets the class id at `(x, y)`.
    pub fn set(&mut self, x: u32, y: u32, value: u8) {
        self.data[y as usize * self.width as usize + x as usize] = value;
    }

    /// Pixel count of each value 0..=255.
    pub fn histogram(&self) -> [u64; 256] {
        let mut h = [0u64; 256];
        for &v in &self.data {
            h[usize::from(v)] += 1;
        }
        h
    }

    /// The mask as an 8-bit grayscale image.
    pub fn to_gray_image(&self) -> GrayImage {
        GrayImage::from_raw(self.width, self.height, self.data.clone())
            .expect("length checked on construction")
    }

    /// Encodes the mask as PNG bytes.
    pub fn to_png_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.to_gray_image()
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .expect("encoding a gray PNG into memory cannot fail");
        bytes
    }

    /// Writes the mask as an 8-bit PNG, atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        Ok(lus_io::write_atomic(path, &self.to_png_bytes())?)
    }

    /// Reads an 8-bit PNG mask and checks that every value is a class of `schema` or
    /// `ignore_id`.
    pub fn load_png(path: &Path, schema: &LabelSchema, ignore_id: Option<u8>) -> Result<Self> {
        let bytes = lus_io::read_file(path)?;
        let image = crate::image_io::decode_with_limits(&bytes, path)?;
        let gray = match image {
            image::DynamicImage::ImageLuma8(g) => g,
            other => {
                return Err(DataError::Image {
                    path: path.to_path_buf(),
                    reason: format!(
                        "a mask must be an 8-bit single-channel PNG, this is {:?}",
                        other.color()
                    ),
                });
            }
        };
        let (width, height) = gray.dimensions();
        let mask = Mask {
            width,
            height,
            data: gray.into_raw(),
        };
        let n = schema.num_classes();
        if let Some(pos) = mask
            .data
            .iter()
            .position(|&v| usize::from(v) >= n && Some(v) != ignore_id)
        {
            let (x, y) = (pos as u32 % width, pos as u32 / width);
            return Err(DataError::Image {
                path: path.to_path_buf(),
                reason: format!(
                    "pixel ({x}, {y}) has value {}, which is neither a class id of schema {:?} (0..{n}) nor the ignore id {ignore_id:?}",
                    mask.data[pos],
                    schema.name()
                ),
            });
        }
        Ok(mask)
    }

    /// The mask in the schema's colours (ids without a class, such as an ignore id, are grey).
    pub fn colorize(&self, schema: &LabelSchema) -> RgbImage {
        let palette = schema.palette();
        let mut out = RgbImage::new(self.width, self.height);
        for (pixel, &v) in out.pixels_mut().zip(&self.data) {
            pixel.0 = palette.get(usize::from(v)).map_or([128, 128, 128], |c| c.0);
        }
        out
    }
}
