//! Evaluation of a trained segmentation U-Net on a labelled set: the pixel confusion matrix
//! (per-class IoU, Dice, precision, recall) and object-level counts for the line classes
//! (connected components matched by overlap: true positives, false positives, false
//! negatives, false positives per image).
//!
//! Evaluation is done at the model's input size: images and masks are resampled exactly as the
//! validation loader does (bilinear images, nearest-neighbour masks, no augmentation).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use lus_data::loader::{SegBatch, SegmentationLoader, SegmentationSource};
use lus_metrics::{ConfusionMatrix, MetricsTable, ObjectConfig, ObjectCounts, Row, object_counts};
use lus_unet::{Mode, UNet, UNetConfig};

use crate::error::{Result, TrainError};
use crate::seg::SegRunConfig;

/// A U-Net with its weights, ready for inference.
pub struct SegModel {
    unet: UNet,
    // Owns the variables the U-Net reads.
    _varmap: VarMap,
}

impl SegModel {
    /// The U-Net of `config` on `device` with the weights of `weights` (a checkpoint written by
    /// the trainer; every tensor must be present with its shape, or the error lists them).
    pub fn load(config: &UNetConfig, weights: &Path, device: &Device) -> Result<Self> {
        config.validate()?;
        let varmap = VarMap::new();
        let unet = UNet::new(config, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        lus_unet::load_weights(&varmap, weights)?;
        Ok(SegModel {
            unet,
            _varmap: varmap,
        })
    }

    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    /// Predicted class ids (`N x H x W`, u8, row-major per image) of `N x 1 x H x W` images.
    pub fn predict(&self, images: &Tensor) -> Result<Vec<u8>> {
        let logits = self.unet.forward_t(images, &mut Mode::Eval)?;
        Ok(logits
            .argmax(1)?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1::<u8>()?)
    }
}

/// What [`evaluate_segmentation`] measures.
#[derive(Debug, Clone)]
pub struct SegEvalOptions {
    /// Name of each class id (table rows).
    pub class_names: Vec<String>,
    /// Class ids counted object by object (the line classes).
    pub object_classes: Vec<u8>,
    pub objects: ObjectConfig,
    /// Truth pixels with this id are left out of the confusion matrix.
    pub ignore_id: Option<u8>,
}

/// The result of evaluating one model on one labelled set.
#[derive(Debug, Clone)]
pub struct SegEvalReport {
    /// Images evaluated.
    pub images: usize,
    /// Side of the (square) evaluation resolution.
    pub size: u32,
    pub confusion: ConfusionMatrix,
    /// Object counts summed over images, per entry of `SegEvalOptions::object_classes`.
    pub objects: Vec<(u8, ObjectCounts)>,
    pub class_names: Vec<String>,
}

impl SegEvalReport {
    /// False positives per image of `class` (NaN if it is not an object class or no image was
    /// evaluated).
    pub fn fp_per_image(&self, class: u8) -> f64 {
        match self.objects.iter().find(|(c, _)| *c == class) {
            Some((_, counts)) if self.images > 0 => counts.fp as f64 / self.images as f64,
            _ => f64::NAN,
        }
    }

    /// One row per class: pixel scores, then the object columns (NaN / 0 for classes that are
    /// not counted as objects — `objects` says which are).
    pub fn per_class_table(&self) -> Result<MetricsTable> {
        let mut table = MetricsTable::new();
        for scores in self.confusion.per_class() {
            let id = scores.class as u8;
            let objects = self.objects.iter().find(|(c, _)| *c == id).map(|(_, o)| *o);
            let count = |f: fn(&ObjectCounts) -> usize| objects.map_or(0, |o| f(&o) as i64);
            let rate = |f: fn(&ObjectCounts) -> f64| objects.map_or(f64::NAN, |o| f(&o));
            table.push_row(
                Row::new()
                    .int("class_id", i64::from(id))
                    .text("class", self.class_names[scores.class].clone())
                    .int("objects", i64::from(objects.is_some()))
                    .int("truth_pixels", scores.support as i64)
                    .int("pred_pixels", scores.predicted as i64)
                    .float("iou", scores.iou)
                    .float("dice", scores.dice)
                    .float("precision", scores.precision)
                    .float("recall", scores.recall)
                    .int("obj_truth", count(|o| o.truth_objects))
                    .int("obj_pred", count(|o| o.pred_objects))
                    .int("obj_tp", count(|o| o.tp))
                    .int("obj_fp", count(|o| o.fp))
                    .int("obj_fn", count(|o| o.fn_))
                    .float("obj_precision", rate(ObjectCounts::precision))
                    .float("obj_recall", rate(ObjectCounts::recall))
                    .float("obj_f1", rate(ObjectCounts::f1))
                    .float("fp_per_image", self.fp_per_image(id)),
            )?;
        }
        Ok(table)
    }
}

/// Evaluates `model` on `source` (examples resampled to `config.data.size`, batches of
/// `config.train.batch_size`, normalised as in training).
pub fn evaluate_segmentation(
    model: &SegModel,
    source: Arc<dyn SegmentationSource>,
    config: &SegRunConfig,
    options: &SegEvalOptions,
    device: &Device,
) -> Result<SegEvalReport> {
    let num_classes = model.unet.config().num_classes;
    if options.class_names.len() != num_classes {
        return Err(TrainError::config(
            "class_names",
            format!(
                "{} names for a U-Net with {num_classes} classes",
                options.class_names.len()
            ),
        ));
    }
    if let Some(&bad) = options
        .object_classes
        .iter()
        .find(|&&c| usize::from(c) >= num_classes)
    {
        return Err(TrainError::config(
            "object_classes",
            format!("class {bad} is not one of the model's {num_classes} classes"),
        ));
    }
    // The seed only drives shuffling and augmentation, both off for evaluation.
    let loader = SegmentationLoader::new(source, config.loader_config(false), 0, device.clone())?;
    let side = config.data.size as usize;
    let mut confusion = ConfusionMatrix::new(num_classes);
    let mut objects: Vec<(u8, ObjectCounts)> = options
        .object_classes
        .iter()
        .map(|&c| (c, ObjectCounts::default()))
        .collect();
    let mut images = 0;
    for batch in loader.epoch(0) {
        let batch: SegBatch = batch?;
        let pred = model.predict(&batch.images)?;
        let truth: Vec<u8> = batch
            .masks
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|v| u8::try_from(v).unwrap_or(u8::MAX))
            .collect();
        confusion.update(&truth, &pred, options.ignore_id)?;
        for (t, p) in truth.chunks(side * side).zip(pred.chunks(side * side)) {
            for (class, counts) in objects.iter_mut() {
                *counts += object_counts(t, p, side, side, *class, &options.objects)?;
            }
            images += 1;
        }
    }
    Ok(SegEvalReport {
        images,
        size: config.data.size,
        confusion,
        objects,
        class_names: options.class_names.clone(),
    })
}
