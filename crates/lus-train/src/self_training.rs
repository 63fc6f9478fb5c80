//! Self-training on unlabelled frames: a teacher U-Net's confident predictions become the labels
//! a student learns from, so that frames nobody annotated (real lung ultrasound) still shape the
//! segmenter.
//!
//! # Pseudo-labels: class-balanced self-training
//! The teacher predicts every frame at the training size. A fixed confidence threshold would
//! keep almost only the easy, frequent classes (background, chest wall) and drop the thin lines
//! the study is about, so each class gets its own threshold (Zou et al., "Unsupervised Domain
//! Adaptation for Semantic Segmentation via Class-Balanced Self-Training", ECCV 2018): among the
//! pixels the teacher assigns to class `c`, the most confident `portion` are kept, i.e. the
//! threshold of `c` is the `1 - portion` quantile of their confidences, capped at
//! `max_threshold` (a class the teacher is sure of everywhere keeps every pixel above the cap).
//! Every other pixel gets the ignore id: the student's loss skips it. Confidences are the
//! softmax maximum, quantised to 1/65535 for the per-class histograms that give the quantiles
//! (exact up to that step, and in memory independent of the number of frames).
//!
//! The student then trains on these frames mixed with labelled scanner frames (see lus-experiments'
//! `adapt` module), starting from the teacher's weights, with the training augmentation as the
//! "noise" of noisy-student training (Xie et al., CVPR 2020).

use candle_core::{Device, Tensor};
use image::GrayImage;
use lus_data::Mask;
use lus_data::augment::{AugmentParams, Normalize, prepare_with};
use lus_unet::Mode;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::seg::ImageDataConfig;
use crate::seg_eval::SegModel;

/// Confidence histogram bins (the quantisation step of the thresholds).
const CONFIDENCE_LEVELS: usize = 65536;

/// How pseudo-labels are chosen.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PseudoLabelConfig {
    /// Share of each class's predicted pixels kept, the most confident first (CBST's `p`),
    /// in `(0, 1]`.
    pub portion: f32,
    /// A class's threshold is never above this (in `(0, 1]`): a class predicted with high
    /// confidence everywhere keeps every pixel above it.
    pub max_threshold: f32,
}

impl Default for PseudoLabelConfig {
    fn default() -> Self {
        PseudoLabelConfig {
            portion: 0.5,
            max_threshold: 0.9,
        }
    }
}

impl PseudoLabelConfig {
    /// Both values in `(0, 1]`; the error names the field.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("portion", self.portion),
            ("max_threshold", self.max_threshold),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= 1.0) {
                return Err(TrainError::config(
                    name,
                    format!("must be in (0, 1], got {value}"),
                ));
            }
        }
        Ok(())
    }
}

/// What the teacher said about one class over every frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PseudoClass {
    pub class: usize,
    /// Pixels the teacher assigned to the class.
    pub predicted: u64,
    /// The class's confidence threshold (`None` when no pixel was assigned to it).
    pub threshold: Option<f64>,
    /// Pixels kept with the class as their label.
    pub kept: u64,
}

/// Pseudo-labelled frames: each image at the training size with its mask (class ids where the
/// teacher is confident enough, the ignore id elsewhere), and the per-class account.
pub struct PseudoLabels {
    pub examples: Vec<(GrayImage, Mask)>,
    pub classes: Vec<PseudoClass>,
}

/// `image` resampled to `size x size` the way the loaders resample (bilinear, area-averaged
/// when shrinking by more than 2x), as 8-bit grey.
pub fn resize_like_loader(image: &GrayImage, size: u32) -> Result<GrayImage> {
    let prepared = prepare_with(
        image,
        None,
        size,
        &AugmentParams::identity(),
        Normalize::None,
    )?;
    let bytes = prepared
        .image
        .iter()
        .map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    Ok(GrayImage::from_raw(size, size, bytes).expect("size * size values"))
}

/// Pseudo-labels `images` with `teacher` (see the module documentation): each image resized to
/// `data.size` and normalised by `data.normalize` (the teacher's training preprocessing; no
/// augmentation), predicted in batches of `batch_size`.
pub fn pseudo_label(
    teacher: &SegModel,
    images: &[GrayImage],
    data: &ImageDataConfig,
    batch_size: usize,
    ignore_id: u8,
    config: &PseudoLabelConfig,
    device: &Device,
) -> Result<PseudoLabels> {
    config.validate()?;
    let (size, normalize) = (data.size, data.normalize);
    let classes = teacher.unet().config().num_classes;
    if usize::from(ignore_id) < classes {
        return Err(TrainError::config(
            "ignore_id",
            format!("{ignore_id} is a class id of this {classes}-class U-Net"),
        ));
    }
    if batch_size == 0 {
        return Err(TrainError::config("batch_size", "must be at least 1"));
    }
    let resized: Vec<GrayImage> = images
        .par_iter()
        .map(|image| resize_like_loader(image, size))
        .collect::<Result<_>>()?;
    let side = size as usize;
    // Per pixel: the predicted class and its quantised confidence.
    let mut predicted: Vec<Vec<(u8, u16)>> = Vec::with_capacity(resized.len());
    let mut histograms = vec![vec![0u64; CONFIDENCE_LEVELS]; classes];
    for chunk in resized.chunks(batch_size) {
        let inputs: Vec<f32> = chunk
            .par_iter()
            .map(|image| {
                prepare_with(image, None, size, &AugmentParams::identity(), normalize)
                    .map(|p| p.image)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
            .concat();
        let inputs = Tensor::from_vec(inputs, (chunk.len(), 1, side, side), device)?;
        let logits = teacher.unet().forward_t(&inputs, &mut Mode::Eval)?;
        let probabilities = candle_nn::ops::softmax(&logits, 1)?;
        let confidence = probabilities.max(1)?.flatten_all()?.to_vec1::<f32>()?;
        let class = logits.argmax(1)?.flatten_all()?.to_vec1::<u32>()?;
        for (c_frame, p_frame) in class
            .chunks(side * side)
            .zip(confidence.chunks(side * side))
        {
            let frame: Vec<(u8, u16)> = c_frame
                .iter()
                .zip(p_frame)
                .map(|(&c, &p)| {
                    let level = (f64::from(p) * (CONFIDENCE_LEVELS - 1) as f64)
                        .floor()
                        .clamp(0.0, (CONFIDENCE_LEVELS - 1) as f64)
                        as u16;
                    (c as u8, level)
                })
                .collect();
            for &(c, level) in &frame {
                histograms[usize::from(c)][usize::from(level)] += 1;
            }
            predicted.push(frame);
        }
    }
    let cap = (f64::from(config.max_threshold) * (CONFIDENCE_LEVELS - 1) as f64).floor() as usize;
    let thresholds: Vec<Option<usize>> = histograms
        .iter()
        .map(|h| class_threshold(h, f64::from(config.portion)).map(|t| t.min(cap)))
        .collect();
    let mut kept = vec![0u64; classes];
    let examples = resized
        .into_iter()
        .zip(predicted)
        .map(|(image, frame)| {
            let ids: Vec<u8> = frame
                .iter()
                .map(|&(c, level)| match thresholds[usize::from(c)] {
                    Some(t) if usize::from(level) >= t => {
                        kept[usize::from(c)] += 1;
                        c
                    }
                    _ => ignore_id,
                })
                .collect();
            let mask = Mask::from_raw(size, size, ids).expect("size * size ids");
            (image, mask)
        })
        .collect();
    let classes = histograms
        .iter()
        .zip(&thresholds)
        .zip(&kept)
        .enumerate()
        .map(|(class, ((h, t), &kept))| PseudoClass {
            class,
            predicted: h.iter().sum(),
            threshold: t.map(|t| t as f64 / (CONFIDENCE_LEVELS - 1) as f64),
            kept,
        })
        .collect();
    Ok(PseudoLabels { examples, classes })
}

/// The highest confidence level `t` such that at least `portion` of the histogram's pixels
/// are at `t` or above (`None` for an empty histogram).
fn class_threshold(histogram: &[u64], portion: f64) -> Option<usize> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    let wanted = (portion * total as f64).ceil().max(1.0) as u64;
    let mut above = 0u64;
    for level in (0..histogram.len()).rev() {
        above += histogram[level];
        if above >= wanted {
            return Some(level);
        }
    }
    Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_keep_the_most_confident_portion_of_each_class() {
        let mut h = vec![0u64; 10];
        // 10 pixels: 4 at level 9, 3 at 5, 3 at 1.
        h[9] = 4;
        h[5] = 3;
        h[1] = 3;
        assert_eq!(class_threshold(&h, 0.4), Some(9));
        assert_eq!(class_threshold(&h, 0.5), Some(5));
        assert_eq!(class_threshold(&h, 0.7), Some(5));
        assert_eq!(class_threshold(&h, 0.71), Some(1));
        assert_eq!(class_threshold(&h, 1.0), Some(1));
        assert_eq!(class_threshold(&[0; 10], 0.5), None);
        // A tiny portion still keeps one pixel.
        assert_eq!(class_threshold(&h, 1e-9), Some(9));
    }

    #[test]
    fn config_values_must_be_in_the_unit_interval() {
        PseudoLabelConfig::default().validate().unwrap();
        for (portion, max_threshold) in [(0.0, 0.9), (1.1, 0.9), (0.5, f32::NAN), (0.5, 0.0)] {
            let bad = PseudoLabelConfig {
                portion,
                max_threshold,
            };
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
