//! Aspect handling: how a frame of any shape becomes a square network input ([`AspectMode`],
//! [`fit_square`], [`square_resized`]).

use image::GrayImage;
use serde::{Deserialize, Serialize};

/// How a frame of any shape becomes a square network input.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AspectMode {
    /// Centre the frame on a black square of its longer side (keeps the whole field of view).
    #[default]
    Pad,
    /// Keep the centred square of its shorter side (drops the sides).
    Crop,
    /// Resample to a square regardless of shape (distorts; for comparison only).
    Stretch,
}

/// A frame as the classifier sees it before normalisation: made square by `mode`, then
/// resized to `size x size` (triangle filter, whose support widens with the scale so that a
/// large reduction averages rather than aliases).
pub fn square_resized(image: &GrayImage, mode: AspectMode, size: u32) -> GrayImage {
    let square = fit_square(image, mode);
    if square.dimensions() == (size, size) {
        return square;
    }
    image::imageops::resize(&square, size, size, image::imageops::FilterType::Triangle)
}

/// `image` made square by `mode` (a copy; `Stretch` returns it unchanged, the loader's resize
/// then stretches it).
pub fn fit_square(image: &GrayImage, mode: AspectMode) -> GrayImage {
    let (w, h) = image.dimensions();
    if w == h || mode == AspectMode::Stretch {
        return image.clone();
    }
    match mode {
        AspectMode::Pad => {
            let side = w.max(h);
            let mut out = GrayImage::new(side, side);
            image::imageops::replace(
                &mut out,
                image,
                i64::from((side - w) / 2),
                i64::from((side - h) / 2),
            );
            out
        }
        AspectMode::Crop => {
            let side = w.min(h);
            image::imageops::crop_imm(image, (w - side) / 2, (h - side) / 2, side, side).to_image()
        }
        AspectMode::Stretch => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_square_pads_and_crops_centred() {
        let mut image = GrayImage::new(4, 2);
        for (x, _, p) in image.enumerate_pixels_mut() {
            p.0[0] = 10 + x as u8;
        }
        let padded = fit_square(&image, AspectMode::Pad);
        assert_eq!(padded.dimensions(), (4, 4));
        let rows: Vec<Vec<u8>> = (0..4)
            .map(|y| (0..4).map(|x| padded.get_pixel(x, y).0[0]).collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec![0; 4],
                vec![10, 11, 12, 13],
                vec![10, 11, 12, 13],
                vec![0; 4]
            ]
        );
        let cropped = fit_square(&image, AspectMode::Crop);
        assert_eq!(cropped.dimensions(), (2, 2));
        assert_eq!(cropped.as_raw(), &vec![11, 12, 11, 12]);
        assert_eq!(fit_square(&image, AspectMode::Stretch).dimensions(), (4, 2));
    }
}
