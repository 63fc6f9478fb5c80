//! Segmentation training: the U-Net as a [`Task`], and [`train_segmentation`], which wires
//! device, model, loaders and trainer together from one [`SegRunConfig`].

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use lus_data::augment::{AugmentConfig, Normalize};
use lus_data::loader::{LoaderConfig, SegBatch, SegmentationLoader, SegmentationSource};
use lus_metrics::ConfusionMatrix;
use lus_unet::{Mode, UNet, UNetConfig};
use serde::{Deserialize, Serialize};

use crate::cls::ClassWeighting;
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::loss::{LossConfig, SegLoss};
use crate::optim::ParamGroup;
use crate::rng::init_rng;
use crate::task::Task;
use crate::trainer::{Resume, TrainSummary, Trainer};

/// A U-Net trained to label every pixel.
///
/// Training reads nothing back from the device but the loss (see [`crate::trainer`]);
/// validation reads each batch's predicted class ids (one byte per pixel) and masks back to
/// accumulate the confusion matrix on the host.
///
/// Validation metrics (from one confusion matrix accumulated over the whole validation set,
/// pixels whose truth is the ignore id left out): `pixel_accuracy`, `miou` and `mdice`
/// (nan-means over the classes whose score is defined; background included or not as set by
/// [`SegmentationTask::with_background_in_means`]), then `iou_<class>` and `dice_<class>` for
/// every class in id order (NaN for a class neither present nor predicted).
pub struct SegmentationTask {
    unet: UNet,
    varmap: VarMap,
    loss: SegLoss,
    class_names: Vec<String>,
    ignore_id: Option<u8>,
    include_background: bool,
}

impl SegmentationTask {
    /// A freshly initialised U-Net on `device` (f32), its weights drawn from the run seed's
    /// initialisation stream ([`crate::rng::init_rng`]). `class_names[i]` names class id `i`
    /// (metric column names are built from them).
    pub fn new(
        unet_config: &UNetConfig,
        loss: &LossConfig,
        class_names: Vec<String>,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let unet = UNet::new(
            unet_config,
            VarBuilder::from_varmap(&varmap, DType::F32, device),
        )?;
        unet.init_weights(&varmap, &mut init_rng(seed))?;
        Self::from_parts(unet, varmap, loss, class_names, device)
    }

    /// A task over an existing model (pretrained weights already loaded into `varmap`).
    pub fn from_parts(
        unet: UNet,
        varmap: VarMap,
        loss: &LossConfig,
        class_names: Vec<String>,
        device: &Device,
    ) -> Result<Self> {
        let num_classes = unet.config().num_classes;
        if class_names.len() != num_classes {
            return Err(TrainError::config(
                "class_names",
                format!(
                    "{} names for a U-Net with {num_classes} classes",
                    class_names.len()
                ),
            ));
        }
        for (i, name) in class_names.iter().enumerate() {
            if name.trim().is_empty() || name.contains(',') || name.contains('"') {
                return Err(TrainError::config(
                    "class_names",
                    format!("name {i} ({name:?}) must be non-empty, without commas or quotes"),
                ));
            }
            if class_names[..i].contains(name) {
                return Err(TrainError::config(
                    "class_names",
                    format!("{name:?} appears twice"),
                ));
            }
        }
        Ok(SegmentationTask {
            loss: SegLoss::new(loss, num_classes, device)?,
            ignore_id: loss.ignore_id,
            unet,
            varmap,
            class_names,
            include_background: false,
        })
    }

    /// Whether `miou` and `mdice` average over the background class (id 0) too; off by
    /// default, because background dominates lung-ultrasound frames and would hide the line
    /// classes.
    pub fn with_background_in_means(mut self, include: bool) -> Self {
        self.include_background = include;
        self
    }

    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Class ids `N x H x W` (u32) predicted in evaluation mode for `N x 1 x H x W` images.
    pub fn predict(&self, images: &Tensor) -> Result<Tensor> {
        let logits = self.unet.forward_t(images, &mut Mode::Eval)?;
        Ok(logits.argmax(1)?)
    }

    /// The host copy of a batch's masks as u8, checked: every id is a class or the ignore id.
    /// The error names the source example.
    fn host_truth(&self, batch: &SegBatch) -> Result<Vec<u8>> {
        let values = batch
            .masks
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?;
        let per_example = values.len() / batch.indices.len().max(1);
        let classes = self.class_names.len() as u32;
        let mut truth = Vec::with_capacity(values.len());
        for (i, &v) in values.iter().enumerate() {
            if v >= classes && Some(v) != self.ignore_id.map(u32::from) {
                let example = batch
                    .indices
                    .get(i / per_example.max(1))
                    .copied()
                    .unwrap_or(usize::MAX);
                return Err(TrainError::Batch(format!(
                    "mask of source example {example} has label {v} at pixel {}, but the model \
                     has {classes} classes{}",
                    i % per_example.max(1),
                    match self.ignore_id {
                        Some(id) => format!(" and the ignore id is {id}"),
                        None => " and no ignore id is set".to_string(),
                    }
                )));
            }
            truth.push(v as u8);
        }
        Ok(truth)
    }
}

/// The validation state of a [`SegmentationTask`].
pub struct SegEvaluation {
    confusion: ConfusionMatrix,
}

impl SegEvaluation {
    pub fn confusion(&self) -> &ConfusionMatrix {
        &self.confusion
    }
}

impl Task for SegmentationTask {
    type Batch = SegBatch;
    type Evaluation = SegEvaluation;

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn param_groups(&self) -> Result<Vec<ParamGroup>> {
        let vars = self.unet.trainable_vars(&self.varmap)?;
        let names = self
            .unet
            .param_specs()
            .iter()
            .filter(|s| s.kind.is_trainable())
            .map(|s| s.name.clone());
        // `trainable_vars` lists the same specs in the same (sorted) order.
        Ok(vec![ParamGroup::new("unet", names.zip(vars).collect())])
    }

    fn train_loss(&mut self, batch: &SegBatch, mode: &mut Mode<'_>) -> Result<Tensor> {
        let logits = self.unet.forward_t(&batch.images, mode)?;
        self.loss.compute(&logits, &batch.masks)
    }

    fn start_evaluation(&self) -> SegEvaluation {
        SegEvaluation {
            confusion: ConfusionMatrix::new(self.class_names.len()),
        }
    }

    fn evaluate_batch(&self, batch: &SegBatch, evaluation: &mut SegEvaluation) -> Result<Tensor> {
        if batch.indices.is_empty() {
            return Err(TrainError::Batch("empty validation batch".to_string()));
        }
        let logits = self.unet.forward_t(&batch.images, &mut Mode::Eval)?;
        let loss = self.loss.compute(&logits, &batch.masks)?;
        let truth = self.host_truth(batch)?;
        let pred = logits
            .argmax(1)?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        evaluation.confusion.update(&truth, &pred, self.ignore_id)?;
        Ok(loss)
    }

    fn finish_evaluation(&self, evaluation: SegEvaluation) -> Result<Vec<(String, f64)>> {
        let mean = evaluation.confusion.mean(self.include_background);
        let per_class = evaluation.confusion.per_class();
        let mut metrics = vec![
            ("pixel_accuracy".to_string(), mean.pixel_accuracy),
            ("miou".to_string(), mean.miou),
            ("mdice".to_string(), mean.mdice),
        ];
        for (name, scores) in self.class_names.iter().zip(&per_class) {
            metrics.push((format!("iou_{name}"), scores.iou));
        }
        for (name, scores) in self.class_names.iter().zip(&per_class) {
            metrics.push((format!("dice_{name}"), scores.dice));
        }
        Ok(metrics)
    }

    fn metric_names(&self) -> Vec<String> {
        segmentation_metric_names(&self.class_names)
    }

    fn default_best_metric(&self) -> &'static str {
        SEGMENTATION_BEST_METRIC
    }
}

/// The column that picks a segmentation run's best checkpoint when the config names none.
pub const SEGMENTATION_BEST_METRIC: &str = "val_miou";

/// The validation metrics of a segmentation net over `class_names` (what
/// `best_metric = "val_<name>"` may pick), known before training so configs can be checked up
/// front.
pub fn segmentation_metric_names(class_names: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ["pixel_accuracy", "miou", "mdice"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.extend(class_names.iter().map(|n| format!("iou_{n}")));
    names.extend(class_names.iter().map(|n| format!("dice_{n}")));
    names
}

/// How examples become batches, for segmentation and classification alike (the batch size is
/// the training config's). In TOML, the table `[data]` of a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageDataConfig {
    /// Every example is resampled to `size x size` (a multiple of `2^depth`).
    pub size: u32,
    /// Augmentation of training examples (validation is never augmented). Omitted: none; an
    /// empty `[data.augment]` table: lus-data's default ranges (the loader's convention).
    pub augment: Option<AugmentConfig>,
    /// Intensity normalisation (training and validation alike).
    pub normalize: Normalize,
    /// Batches prepared ahead on a producer thread.
    pub prefetch: usize,
    /// Drop a last training batch smaller than the batch size.
    pub drop_last: bool,
}

impl Default for ImageDataConfig {
    fn default() -> Self {
        ImageDataConfig {
            size: 256,
            augment: None,
            normalize: Normalize::PerImage,
            prefetch: 2,
            drop_last: false,
        }
    }
}

impl ImageDataConfig {
    /// Checks that `size` fits a U-Net of `unet`'s depth.
    pub fn validate_for(&self, unet: &UNetConfig) -> Result<()> {
        let multiple = unet.min_input_multiple() as u32;
        if self.size == 0 || !self.size.is_multiple_of(multiple) {
            return Err(TrainError::config(
                "data.size",
                format!(
                    "{} is not a positive multiple of 2^depth = {multiple}",
                    self.size
                ),
            ));
        }
        Ok(())
    }

    /// The loader configuration for the training (`train = true`) or validation set.
    pub fn loader_config(&self, batch_size: usize, train: bool) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            size: self.size,
            shuffle: train,
            drop_last: train && self.drop_last,
            prefetch: self.prefetch,
            augment: if train { self.augment.clone() } else { None },
            normalize: self.normalize,
        }
    }
}

/// Everything a segmentation run needs besides the data: training, model and batching. In
/// TOML, the tables `[train]` (with `[train.loss]`), `[unet]` and `[data]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SegRunConfig {
    pub train: TrainConfig,
    pub unet: UNetConfig,
    pub data: ImageDataConfig,
    /// Average `miou`/`mdice` over the background class too.
    pub background_in_means: bool,
    /// Class weights of the cross-entropy from the training masks' pixel counts: `none`,
    /// `balanced`, `sqrt-balanced` (see [`ClassWeighting`]) or `{ explicit = [...] }`. Computed
    /// per run from its own labels, so every label recipe is balanced on what it draws. Not
    /// together with `train.loss.class_weights`.
    pub class_weights: ClassWeighting,
}

impl SegRunConfig {
    /// Checks the parts and their agreement (class weights per class, input size a multiple of
    /// `2^depth`).
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        self.unet.validate()?;
        self.train.loss.validate(Some(self.unet.num_classes))?;
        self.data.validate_for(&self.unet)?;
        self.loader_config(true).validate()?;
        if self.class_weights != ClassWeighting::None && self.train.loss.class_weights.is_some() {
            return Err(TrainError::config(
                "class_weights",
                "set either class_weights (from the training masks) or train.loss.class_weights \
                 (given), not both",
            ));
        }
        if let ClassWeighting::Explicit(w) = &self.class_weights {
            LossConfig {
                class_weights: Some(w.clone()),
                ..self.train.loss.clone()
            }
            .validate(Some(self.unet.num_classes))
            .map_err(|e| TrainError::config("class_weights", e.to_string()))?;
        }
        Ok(())
    }

    /// Parses a TOML document (unknown keys are errors), then validates it.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let config: SegRunConfig =
            toml::from_str(text).map_err(|e| TrainError::config("toml", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The loader configuration for the training (`train = true`) or validation set.
    pub fn loader_config(&self, train: bool) -> LoaderConfig {
        self.data.loader_config(self.train.batch_size, train)
    }
}

/// Pixels of each class id `0..classes` over every mask of `source` (ignored and out-of-range
/// ids not counted), read in parallel.
pub fn pixel_counts(source: &dyn SegmentationSource, classes: usize) -> Result<Vec<u64>> {
    use rayon::prelude::*;
    (0..source.len())
        .into_par_iter()
        .map(|i| -> Result<Vec<u64>> {
            let (_, mask) = source.load(i)?;
            let mut counts = vec![0u64; classes];
            for &id in mask.data() {
                if let Some(c) = counts.get_mut(usize::from(id)) {
                    *c += 1;
                }
            }
            Ok(counts)
        })
        .try_reduce(
            || vec![0u64; classes],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                Ok(a)
            },
        )
}

/// Trains a U-Net on `train`, validating on `val`, writing into `out_dir` (see
/// [`crate::trainer`] for the files). The model is initialised from `config.train.seed`, and the
/// loaders shuffle and augment from the same seed.
pub fn train_segmentation(
    config: &SegRunConfig,
    train: Arc<dyn SegmentationSource>,
    val: Arc<dyn SegmentationSource>,
    class_names: Vec<String>,
    out_dir: &Path,
    resume: Resume,
) -> Result<TrainSummary> {
    train_segmentation_with(config, train, val, class_names, out_dir, resume, |t| t)
}

/// [`train_segmentation`] with the trainer adjusted by `configure` before it runs (observers,
/// progress bar).
pub fn train_segmentation_with(
    config: &SegRunConfig,
    train: Arc<dyn SegmentationSource>,
    val: Arc<dyn SegmentationSource>,
    class_names: Vec<String>,
    out_dir: &Path,
    resume: Resume,
    configure: impl FnOnce(Trainer) -> Trainer,
) -> Result<TrainSummary> {
    train_segmentation_from(
        config,
        None,
        train,
        val,
        class_names,
        out_dir,
        resume,
        configure,
    )
}

/// [`train_segmentation_with`] starting from the weights of `init` (a checkpoint of a U-Net of
/// the same configuration: fine-tuning, self-training) instead of a fresh initialisation
/// (`None`). A resumed run continues from its own `last/` checkpoint either way.
#[allow(clippy::too_many_arguments)]
pub fn train_segmentation_from(
    config: &SegRunConfig,
    init: Option<&Path>,
    train: Arc<dyn SegmentationSource>,
    val: Arc<dyn SegmentationSource>,
    class_names: Vec<String>,
    out_dir: &Path,
    resume: Resume,
    configure: impl FnOnce(Trainer) -> Trainer,
) -> Result<TrainSummary> {
    config.validate()?;
    let mut trainer = configure(Trainer::new(config.train.clone(), out_dir)?);
    let device = trainer.device().clone();
    let mut loss = config.train.loss.clone();
    if config.class_weights != ClassWeighting::None {
        let counts = pixel_counts(train.as_ref(), config.unet.num_classes)?;
        loss.class_weights = config.class_weights.weights_from_counts(&counts);
    }
    let mut task =
        SegmentationTask::new(&config.unet, &loss, class_names, &device, config.train.seed)?
            .with_background_in_means(config.background_in_means);
    if let Some(weights) = init {
        lus_unet::load_weights(task.varmap(), weights)?;
    }
    let seed = config.train.seed;
    let train_loader =
        SegmentationLoader::new(train, config.loader_config(true), seed, device.clone())?;
    let val_loader = SegmentationLoader::new(val, config.loader_config(false), seed, device)?;
    trainer.fit(&mut task, &train_loader, &val_loader, resume)
}
