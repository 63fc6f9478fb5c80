//! Diagnostic classification: the reverse-transfer classifier as a [`Task`], trained by the
//! same [`Trainer`] (optimizer, schedule, checkpoints, resume, metrics table) as segmentation.
//!
//! The loss is the same cross-entropy code as segmentation's ([`crate::loss::cross_entropy`]),
//! fed `N x K x 1 x 1` logits: one "pixel" per image. Class weights, when set, weight each
//! example by its true class (PyTorch's `weight` semantics).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use lus_data::cls_loader::{ClassificationLoader, ClassificationSource, ClsBatch};
use lus_data::loader::{LoaderConfig, Prefetcher};
use lus_metrics::classification::Predictions;
use lus_transfer::{ClassifierConfig, UNetClassifier};
use lus_unet::{Mode, UNetConfig};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::loss::cross_entropy;
use crate::optim::ParamGroup;
use crate::rng::init_rng;
use crate::seg::ImageDataConfig;
use crate::task::{BatchSource, Task, TaskBatch};
use crate::trainer::{Resume, TrainSummary, Trainer};

impl TaskBatch for ClsBatch {
    fn num_examples(&self) -> usize {
        self.indices.len()
    }

    fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl BatchSource for ClassificationLoader {
    type Batch = ClsBatch;

    fn batches_per_epoch(&self) -> usize {
        self.len()
    }

    fn epoch(&self, epoch: u64) -> Box<dyn Iterator<Item = Result<ClsBatch>> + '_> {
        let batches: Prefetcher<ClsBatch> = ClassificationLoader::epoch(self, epoch);
        Box::new(batches.map(|b| b.map_err(Into::into)))
    }

    fn epoch_from(
        &self,
        epoch: u64,
        first: usize,
    ) -> Box<dyn Iterator<Item = Result<ClsBatch>> + '_> {
        let batches: Prefetcher<ClsBatch> = ClassificationLoader::epoch_from(self, epoch, first);
        Box::new(batches.map(|b| b.map_err(Into::into)))
    }
}

/// Where the classifier's U-Net starts from.
#[derive(Debug, Clone, PartialEq)]
pub enum Backbone<'a> {
    /// Freshly initialised from the run seed (the `none` arm).
    Fresh,
    /// The weights of a segmentation checkpoint (the `dense` and `sparse` arms).
    Pretrained(&'a Path),
}

/// The reverse-transfer classifier as a training task.
pub struct ClassificationTask {
    model: UNetClassifier,
    varmap: VarMap,
    class_names: Vec<String>,
    class_weights: Option<Tensor>,
}

impl ClassificationTask {
    /// A classifier on `device`, initialised from `seed` (U-Net then head, see
    /// [`UNetClassifier::init_weights`]), its U-Net then replaced by `backbone` if pretrained.
    pub fn new(
        unet: &UNetConfig,
        classifier: &ClassifierConfig,
        backbone: Backbone<'_>,
        class_names: Vec<String>,
        class_weights: Option<Vec<f32>>,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        if class_names.len() != classifier.num_diagnoses {
            return Err(TrainError::config(
                "class_names",
                format!(
                    "{} names for {} diagnoses",
                    class_names.len(),
                    classifier.num_diagnoses
                ),
            ));
        }
        let varmap = VarMap::new();
        let model = UNetClassifier::new(
            unet,
            classifier,
            VarBuilder::from_varmap(&varmap, DType::F32, device),
        )?;
        model.init_weights(&varmap, &mut init_rng(seed))?;
        if let Backbone::Pretrained(path) = backbone {
            model.load_backbone(&varmap, path)?;
        }
        let class_weights = match class_weights {
            Some(w) => {
                if w.len() != class_names.len() || w.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
                    return Err(TrainError::config(
                        "class_weights",
                        format!(
                            "need {} finite, non-negative weights, got {w:?}",
                            class_names.len()
                        ),
                    ));
                }
                Some(Tensor::new(w.as_slice(), device)?)
            }
            None => None,
        };
        Ok(ClassificationTask {
            model,
            varmap,
            class_names,
            class_weights,
        })
    }

    /// A trained classifier: the network of `unet` + `classifier` with every variable read
    /// from `weights` (a classification run's `best.safetensors`); an error names the file and
    /// the variable that is missing or has the wrong shape.
    pub fn from_checkpoint(
        unet: &UNetConfig,
        classifier: &ClassifierConfig,
        class_names: Vec<String>,
        weights: &Path,
        device: &Device,
    ) -> Result<Self> {
        let task = Self::new(
            unet,
            classifier,
            Backbone::Fresh,
            class_names,
            None,
            device,
            0,
        )?;
        lus_unet::load_weights(&task.varmap, weights)?;
        Ok(task)
    }

    pub fn model(&self) -> &UNetClassifier {
        &self.model
    }

    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (n, k) = logits.dims2()?;
        let logits = logits.reshape((n, k, 1, 1))?;
        let targets = labels.reshape((n, 1, 1))?;
        cross_entropy(&logits, &targets, self.class_weights.as_ref(), None)
    }

    /// Class probabilities (`N x K`, f32, host) of a batch of images, in evaluation mode.
    pub fn predict_proba(&self, images: &Tensor) -> Result<Vec<Vec<f32>>> {
        let out = self.model.forward_t(images, &mut Mode::Eval, false)?;
        Ok(UNetClassifier::probabilities(&out.logits)?.to_vec2::<f32>()?)
    }
}

/// Validation state: every example's truth and probabilities.
pub struct ClsEvaluation {
    pub truth: Vec<usize>,
    pub probabilities: Vec<Vec<f64>>,
    pub indices: Vec<usize>,
}

impl ClsEvaluation {
    pub fn predictions(&self) -> Result<Predictions> {
        Ok(Predictions::from_rows(&self.truth, &self.probabilities)?)
    }
}

impl Task for ClassificationTask {
    type Batch = ClsBatch;
    type Evaluation = ClsEvaluation;

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn param_groups(&self) -> Result<Vec<ParamGroup>> {
        Ok(self
            .model
            .param_sets(&self.varmap)?
            .into_iter()
            .map(|s| ParamGroup::new(s.name, s.params).with_lr_multiplier(s.lr_multiplier))
            .collect())
    }

    fn train_loss(&mut self, batch: &ClsBatch, mode: &mut Mode<'_>) -> Result<Tensor> {
        let out = self.model.forward_t(&batch.images, mode, false)?;
        self.loss(&out.logits, &batch.labels)
    }

    fn start_evaluation(&self) -> ClsEvaluation {
        ClsEvaluation {
            truth: Vec::new(),
            probabilities: Vec::new(),
            indices: Vec::new(),
        }
    }

    fn evaluate_batch(&self, batch: &ClsBatch, evaluation: &mut ClsEvaluation) -> Result<Tensor> {
        let out = self
            .model
            .forward_t(&batch.images, &mut Mode::Eval, false)?;
        let loss = self.loss(&out.logits, &batch.labels)?;
        let probabilities = UNetClassifier::probabilities(&out.logits)?.to_vec2::<f32>()?;
        let labels = batch.labels.to_vec1::<u32>()?;
        for (row, label) in probabilities.into_iter().zip(labels) {
            evaluation.truth.push(label as usize);
            evaluation
                .probabilities
                .push(row.into_iter().map(f64::from).collect());
        }
        evaluation.indices.extend_from_slice(&batch.indices);
        Ok(loss)
    }

    fn finish_evaluation(&self, evaluation: ClsEvaluation) -> Result<Vec<(String, f64)>> {
        let names: Vec<&str> = self.class_names.iter().map(String::as_str).collect();
        Ok(evaluation.predictions()?.metrics().named(&names)?)
    }

    fn metric_names(&self) -> Vec<String> {
        classification_metric_names(&self.class_names)
    }

    fn default_best_metric(&self) -> &'static str {
        CLASSIFICATION_BEST_METRIC
    }
}

/// The column that picks a classification run's best checkpoint when the config names none.
pub const CLASSIFICATION_BEST_METRIC: &str = "val_balanced_accuracy";

/// The validation metrics of a classifier over `class_names` (what `best_metric = "val_<name>"`
/// may pick), known before training so configs can be checked up front.
pub fn classification_metric_names(class_names: &[String]) -> Vec<String> {
    {
        let mut names: Vec<String> = [
            "accuracy",
            "balanced_accuracy",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "weighted_f1",
            "macro_auc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for class in class_names {
            for metric in ["precision", "recall", "specificity", "f1", "auc", "support"] {
                names.push(format!("{metric}_{class}"));
            }
        }
        names
    }
}

/// How training examples are weighted by class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClassWeighting {
    /// Every example counts the same.
    #[default]
    None,
    /// `n / (k * n_c)` for class `c` with `n_c` training examples (scikit-learn's
    /// `class_weight="balanced"`); a class absent from the training set gets 0.
    Balanced,
    /// The square root of the balanced weight, `sqrt(n / (k * n_c))`: rare classes count more,
    /// but a class a hundred times rarer counts ten times, not a hundred (for segmentation,
    /// where a thin line class has 1% of the pixels); absent classes get 0.
    SqrtBalanced,
    /// Given weights, one per class.
    Explicit(Vec<f32>),
}

impl ClassWeighting {
    /// The weights for `labels` (training-set class ids) over `k` classes, or `None`.
    pub fn weights(&self, labels: &[usize], k: usize) -> Option<Vec<f32>> {
        let mut counts = vec![0u64; k];
        for &l in labels {
            if l < k {
                counts[l] += 1;
            }
        }
        self.weights_from_counts(&counts)
    }

    /// The weights for per-class counts `counts` (examples, or pixels for segmentation), or
    /// `None`.
    pub fn weights_from_counts(&self, counts: &[u64]) -> Option<Vec<f32>> {
        let k = counts.len() as f64;
        let n: u64 = counts.iter().sum();
        let balanced = |c: u64| {
            if c == 0 {
                0.0
            } else {
                n as f64 / (k * c as f64)
            }
        };
        match self {
            ClassWeighting::None => None,
            ClassWeighting::Explicit(w) => Some(w.clone()),
            ClassWeighting::Balanced => Some(counts.iter().map(|&c| balanced(c) as f32).collect()),
            ClassWeighting::SqrtBalanced => {
                Some(counts.iter().map(|&c| balanced(c).sqrt() as f32).collect())
            }
        }
    }
}

/// A classification run: training, classifier, batching, class weighting. In TOML:
/// `[train]`, `[classifier]`, `[data]`, `class_weights`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClsRunConfig {
    pub train: TrainConfig,
    pub classifier: ClassifierConfig,
    pub data: ImageDataConfig,
    pub class_weights: ClassWeighting,
}

impl Default for ClsRunConfig {
    fn default() -> Self {
        ClsRunConfig {
            train: TrainConfig::default(),
            classifier: ClassifierConfig::default(),
            data: ImageDataConfig::default(),
            class_weights: ClassWeighting::None,
        }
    }
}

impl ClsRunConfig {
    /// Checks the parts and their agreement with the U-Net the classifier wraps.
    pub fn validate(&self, unet: &UNetConfig) -> Result<()> {
        self.train.validate()?;
        self.classifier.validate()?;
        let loss = &self.train.loss;
        if loss.dice_weight != 0.0 || loss.ignore_id.is_some() || loss.class_weights.is_some() {
            return Err(TrainError::config(
                "train.loss",
                "classification uses plain cross-entropy: dice_weight must be 0, ignore_id and \
                 class_weights unset (class weighting is the run's `class_weights`)",
            ));
        }
        if let ClassWeighting::Explicit(w) = &self.class_weights
            && (w.len() != self.classifier.num_diagnoses
                || w.iter().any(|v| !(v.is_finite() && *v >= 0.0)))
        {
            return Err(TrainError::config(
                "class_weights",
                format!(
                    "need {} finite, non-negative weights, got {w:?}",
                    self.classifier.num_diagnoses
                ),
            ));
        }
        self.data.validate_for(unet)?;
        self.loader_config(true).validate()?;
        Ok(())
    }

    pub fn loader_config(&self, train: bool) -> LoaderConfig {
        self.data.loader_config(self.train.batch_size, train)
    }
}

/// Trains the classifier on `train`, validating on `val`, into `out_dir`.
#[allow(clippy::too_many_arguments)]
pub fn train_classifier(
    config: &ClsRunConfig,
    unet: &UNetConfig,
    backbone: Backbone<'_>,
    train: Arc<dyn ClassificationSource>,
    val: Arc<dyn ClassificationSource>,
    class_names: Vec<String>,
    out_dir: &Path,
    resume: Resume,
    configure: impl FnOnce(Trainer) -> Trainer,
) -> Result<TrainSummary> {
    config.validate(unet)?;
    let mut trainer = configure(Trainer::new(config.train.clone(), out_dir)?);
    let device = trainer.device().clone();
    let k = config.classifier.num_diagnoses;
    let labels = (0..train.len())
        .map(|i| train.label(i))
        .collect::<lus_data::Result<Vec<usize>>>()?;
    let mut task = ClassificationTask::new(
        unet,
        &config.classifier,
        backbone,
        class_names,
        config.class_weights.weights(&labels, k),
        &device,
        config.train.seed,
    )?;
    let seed = config.train.seed;
    let train_loader =
        ClassificationLoader::new(train, config.loader_config(true), seed, device.clone(), k)?;
    let val_loader = ClassificationLoader::new(val, config.loader_config(false), seed, device, k)?;
    trainer.fit(&mut task, &train_loader, &val_loader, resume)
}
