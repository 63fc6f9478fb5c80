//! Experiment files: one TOML file declares the data set, its label recipes, the segmentation
//! pretraining, how it is evaluated, the classification, and the grid: named pretraining arms
//! (a recipe and settings of their own), classifier arms on them, seeds and folds. Every
//! ablation is data: nothing here is keyed by a fixed list of arms. `lus train-seg` runs one
//! pretraining cell, `lus run` runs the plan ([`crate::plan`]) and writes the report. Which
//! settings define a cell's result and which only say how it runs: [`crate::cell`].
//!
//! Loading is strict: unknown keys are errors with the nearest valid key suggested, every
//! section is validated, and `--set section.key=value` overrides are applied to the parsed
//! document before it is checked (so an override is validated like a value in the file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lus_data::{LabelRecipe, LabelSchema, StrokeWidth};
use lus_metrics::ObjectConfig;
use lus_metrics::components::Connectivity;
use lus_scanner::ScannerConfig;
use lus_train::self_training::PseudoLabelConfig;
use lus_train::{ClsRunConfig, SegRunConfig};
use serde::{Deserialize, Serialize};

/// Name of the resolved configuration written beside every result.
pub const RESOLVED_CONFIG_FILE: &str = "config.resolved.toml";

/// A whole experiment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    /// Name of the experiment: runs go to `<runs_dir>/<name>/`, the report to
    /// `<reports_dir>/<name>/`.
    pub name: String,
    /// Folder of the run directories (git-ignored), relative to the working directory.
    pub runs_dir: PathBuf,
    /// Folder of the reports (committed), relative to the working directory.
    pub reports_dir: PathBuf,
    pub dataset: DatasetConfig,
    /// Label recipes of this experiment (`[recipes.<name>]`), beside the built-in `dense` and
    /// `sparse`: the keys of [`lus_data::LabelRecipe`] (`default`, `lines`, `classes`,
    /// `stroke_width`, `clip_strokes`, `off`, `unlabelled`) plus `base = "<recipe>"` to start
    /// from another recipe (a table named like a built-in starts from it). A recipe that sets
    /// no `stroke_width` takes `dataset.sparse_width`. Pretraining arms and
    /// `evaluation.truths` name them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub recipes: BTreeMap<String, toml::Table>,
    /// The segmentation pretraining: `[pretrain.train]` (with `[pretrain.train.loss]`),
    /// `[pretrain.unet]`, `[pretrain.data]`. `pretrain.train.seed` is replaced by each grid seed.
    pub pretrain: SegRunConfig,
    pub evaluation: EvaluationConfig,
    /// The diagnostic classification (reverse transfer): `[classify.train]`,
    /// `[classify.classifier]`, `[classify.data]`, `classify.class_weights`. Absent: the study
    /// stops after the segmentation pretraining.
    pub classify: Option<ClsRunConfig>,
    pub grid: GridConfig,
}

impl Default for ExperimentConfig {
    /// The defaults, resolved (see [`ExperimentConfig::resolve_defaults`]).
    fn default() -> Self {
        let mut config = ExperimentConfig {
            name: "experiment".to_string(),
            runs_dir: PathBuf::from("runs"),
            reports_dir: PathBuf::from("reports"),
            dataset: DatasetConfig::default(),
            recipes: BTreeMap::new(),
            pretrain: SegRunConfig::default(),
            evaluation: EvaluationConfig::default(),
            classify: None,
            grid: GridConfig::default(),
        };
        config.resolve_defaults();
        config
    }
}

/// Where the examples come from and how they are split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetConfig {
    pub source: DataSource,
    /// For `source = "folder"`: a folder in the layout `lus synth` writes (`manifest.csv` with
    /// image, dense-mask and sparse-mask paths), relative to the working directory.
    pub folder: Option<PathBuf>,
    /// Seed of the data: the scanner's seed, or the seed of the folder's split.
    pub seed: u64,
    /// Training, validation and test examples. The scanner draws samples `0..train`,
    /// `train..train+val` and the next `test` (disjoint by construction); a folder's rows are
    /// shuffled by `seed` and cut in that order.
    pub train: usize,
    pub val: usize,
    pub test: usize,
    /// Examples of the diagnostic task (classification), split into `grid.folds` stratified
    /// folds: the scanner draws them after the pretraining samples; a folder's come after them
    /// in the shuffled order. Unused without `[classify]`.
    pub classify_samples: usize,
    /// The scanner's settings (`[dataset.scanner]`); its `size` is the stored image size.
    pub scanner: ScannerConfig,
    /// Stroke width of the label recipes that set none (the built-in `sparse` among them), in
    /// pixels of a 128-px-wide image: scaled with the image, so 3.0 draws 1.5 px strokes at
    /// 64 px and 6 px strokes at 256 px. Strokes are never wider than their objects (see
    /// [`lus_data::recipe`]).
    pub sparse_width: f32,
    /// Where the diagnostic task's examples come from: `dataset` (the source above, after the
    /// pretraining examples; `classify_samples` of them) or `pocus` (real POCUS frames,
    /// `[dataset.pocus]`; the segmentation pretraining still uses the source above).
    pub classify_from: ClassifyFrom,
    /// The real frames of `classify_from = "pocus"`.
    pub pocus: PocusPoolConfig,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClassifyFrom {
    /// The pretraining data source (scanner or folder), after the pretraining examples.
    #[default]
    Dataset,
    /// Real POCUS frames (`lus ingest-pocus` output).
    Pocus,
}

/// The diagnostic pool of real POCUS frames.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PocusPoolConfig {
    /// An ingested folder (`lus ingest-pocus --out`), relative to the working directory. When
    /// it holds no manifest yet, `lus run` ingests the POCUS data into it first (from
    /// `$LUS_POCUS_DIR`, else `../shared/data/pocus`) with the POCOVID-Net sampling rule.
    pub frames: PathBuf,
    /// The classes, in class-index order (the paper's three by default, in the scanner's
    /// order `healthy, covid, pneumonia`, so that a class index means the same diagnosis for
    /// both sources; `viral` may be added). Frames of other classes are left out.
    pub classes: Vec<lus_data::Diagnosis>,
    /// Probes whose frames are used.
    pub probes: Vec<lus_data::Probe>,
    /// Use still images (one-frame clips) as well as clip frames.
    pub images: bool,
    /// How a non-square frame becomes square before it is resized: `pad` (black borders, the
    /// whole field of view), `crop` (centre square) or `stretch`.
    pub aspect: lus_data::pocus::AspectMode,
    /// Use at most this many frames of each clip (evenly spread over the clip's ingested
    /// frames); 0 uses them all. For quick runs: `--set dataset.pocus.max_frames_per_clip=4`.
    pub max_frames_per_clip: usize,
}

impl Default for PocusPoolConfig {
    fn default() -> Self {
        use lus_data::Diagnosis;
        PocusPoolConfig {
            frames: PathBuf::from("runs/pocus-frames"),
            classes: vec![Diagnosis::Healthy, Diagnosis::Covid, Diagnosis::Pneumonia],
            probes: vec![lus_data::Probe::Convex, lus_data::Probe::Linear],
            images: true,
            aspect: lus_data::pocus::AspectMode::Pad,
            max_frames_per_clip: 0,
        }
    }
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig {
            source: DataSource::Scanner,
            folder: None,
            seed: 0,
            train: 512,
            val: 128,
            test: 128,
            classify_samples: 600,
            scanner: ScannerConfig::default(),
            sparse_width: lus_data::recipe::DEFAULT_STROKE_PX_AT_128,
            classify_from: ClassifyFrom::Dataset,
            pocus: PocusPoolConfig::default(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The embedded synthetic scanner (no download, exact ground truth).
    Scanner,
    /// A folder of images and dense + sparse masks with a manifest.
    Folder,
}

/// How trained segmentation nets are evaluated on the test split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationConfig {
    /// Predicted objects smaller than this many pixels are ignored by the object-level counts
    /// (0 keeps every speck: a false positive is a false positive).
    pub min_object_area: usize,
    /// Smallest IoU for a predicted and a true object to match.
    pub object_iou: f32,
    /// Pixel neighbourhood joining pixels into objects: 4 or 8.
    pub connectivity: Connectivity,
    /// Test images shown in the report's overlay grid (the report only: no cell depends on it).
    pub overlay_examples: usize,
    /// The ground truths every pretrained U-Net is evaluated against on the test split, by
    /// recipe (built-in, `[recipes.<name>]`, or a complete recipe table). The first is the
    /// comparison the report leads with; the others are for reference.
    pub truths: Vec<RecipeRef>,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        let objects = ObjectConfig::default();
        EvaluationConfig {
            min_object_area: objects.min_area,
            object_iou: objects.iou_threshold,
            connectivity: objects.connectivity,
            overlay_examples: 6,
            truths: vec![
                RecipeRef::Name("dense".into()),
                RecipeRef::Name("sparse".into()),
            ],
        }
    }
}

impl EvaluationConfig {
    pub fn object_config(&self) -> ObjectConfig {
        ObjectConfig {
            connectivity: self.connectivity,
            min_area: self.min_object_area,
            iou_threshold: self.object_iou,
        }
    }
}

/// A label recipe: by name (a built-in or a `[recipes.<name>]` table of the experiment), or
/// as a complete recipe table (what the resolved config of a cell writes, so that a cell's
/// folder says exactly how its labels were drawn).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum RecipeRef {
    Name(String),
    Table(toml::Table),
}

impl RecipeRef {
    /// The recipe's name (a table's `name` key; empty when it has none).
    pub fn name(&self) -> &str {
        match self {
            RecipeRef::Name(name) => name,
            RecipeRef::Table(table) => table.get("name").and_then(|v| v.as_str()).unwrap_or(""),
        }
    }

    /// A complete recipe table.
    pub fn resolved(recipe: &LabelRecipe) -> Self {
        RecipeRef::Table(toml::Table::try_from(recipe).expect("a recipe serialises to a table"))
    }
}

/// What a pretraining arm's U-Net learns from: a label recipe and, optionally, settings of
/// its own. In TOML:
///
/// ```toml
/// [[grid.pretrain]]
/// name = "dense-lines-lr"
/// recipe = "dense-lines"
/// overrides = { "pretrain.train.lr" = 0.001, "dataset.sparse_width" = 1.0 }
/// ```
///
/// `overrides` holds `key.path = value` pairs as `--set` takes them (dotted keys in quotes),
/// for keys under `pretrain.` (not `pretrain.train.seed`: the grid's seeds set it) and
/// `dataset.sparse_width`; they are checked like the file. Without `[[grid.pretrain]]` the
/// classifier arms' pretrainings name recipes: `arms = ["dense", "sparse", "none"]` pretrains
/// one arm per recipe, `dense` and `sparse`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PretrainArm {
    pub name: String,
    pub recipe: RecipeRef,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub overrides: toml::Table,
}

/// The `pretrain` of a classifier arm that starts from a freshly initialised U-Net.
pub const NO_PRETRAINING: &str = "none";

/// One classifier arm of the study: a pretraining arm's U-Net (or `none`: a fresh one) and,
/// optionally, classifier settings that differ from `[classify.classifier]` (another head
/// placement or freezing, say). In TOML either a name (`"dense"`: the arm pretrained by the
/// pretraining arm of that name, with the shared classifier; `"none"`) or a table
/// `{ name = "dense-frozen", pretrain = "dense", classifier = { freeze = "encoder" } }`.
///
/// With `real_unlabelled = { ... }` the arm's U-Net is first adapted to the diagnostic task's
/// real frames by self-training (see [`RealUnlabelled`] and [`crate::adapt`]), in each
/// classification cell on that cell's training frames only, then becomes the classifier: the
/// ablation "scanner only" vs "scanner + real adaptation" is two arms on one pretraining.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(try_from = "ArmSpec")]
pub struct ArmConfig {
    pub name: String,
    /// The pretraining arm whose U-Net this arm starts from, or `none`.
    pub pretrain: String,
    /// Keys of `[classify.classifier]` this arm overrides.
    #[serde(skip_serializing_if = "toml::Table::is_empty", default)]
    pub classifier: toml::Table,
    /// Self-training on the cell's unlabelled real training frames before classification.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub real_unlabelled: Option<RealUnlabelled>,
}

/// Self-training of a pretrained U-Net on unlabelled real frames (class-balanced
/// pseudo-labels of the pretrained U-Net as teacher; see [`lus_train::self_training`]). The
/// adaptation set of a classification cell is its **training** frames: never its test fold,
/// nor the validation part that picks its epoch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RealUnlabelled {
    /// Epochs of the student over its training set (the pseudo-labelled real frames and the
    /// scanner frames mixed in).
    pub epochs: usize,
    /// The student's learning rate as a share of the pretraining's (constant: the pretraining
    /// schedule's warm-up and decay are for training from scratch).
    pub lr_factor: f64,
    /// Class-balanced pseudo-labels: the share of each class's predicted pixels kept, the most
    /// confident first, in `(0, 1]`.
    pub portion: f32,
    /// The cap of the per-class confidence thresholds, in `(0, 1]`.
    pub max_threshold: f32,
    /// Labelled scanner training frames (under the pretraining arm's recipe) mixed in per real
    /// frame, so that the student keeps what the exact labels taught it; 0: real frames only.
    pub scanner_per_real: f32,
}

impl Default for RealUnlabelled {
    fn default() -> Self {
        RealUnlabelled {
            epochs: 4,
            lr_factor: 0.2,
            portion: PseudoLabelConfig::default().portion,
            max_threshold: PseudoLabelConfig::default().max_threshold,
            scanner_per_real: 1.0,
        }
    }
}

impl RealUnlabelled {
    /// Every value in range; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.epochs == 0 {
            bail!("real_unlabelled.epochs must be at least 1");
        }
        if !(self.lr_factor.is_finite() && self.lr_factor > 0.0) {
            bail!(
                "real_unlabelled.lr_factor must be a positive number, got {}",
                self.lr_factor
            );
        }
        if !(self.scanner_per_real.is_finite() && (0.0..=100.0).contains(&self.scanner_per_real)) {
            bail!(
                "real_unlabelled.scanner_per_real must be in [0, 100], got {}",
                self.scanner_per_real
            );
        }
        self.pseudo_label_config()
            .validate()
            .map_err(|e| anyhow::anyhow!("real_unlabelled: {e}"))
    }

    /// The pseudo-labelling settings.
    pub fn pseudo_label_config(&self) -> PseudoLabelConfig {
        PseudoLabelConfig {
            portion: self.portion,
            max_threshold: self.max_threshold,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ArmSpec {
    Name(String),
    Full {
        name: String,
        pretrain: String,
        #[serde(default)]
        classifier: toml::Table,
        #[serde(default)]
        real_unlabelled: Option<RealUnlabelled>,
    },
}

impl TryFrom<ArmSpec> for ArmConfig {
    type Error = String;

    fn try_from(spec: ArmSpec) -> Result<Self, String> {
        Ok(match spec {
            ArmSpec::Name(name) => ArmConfig::plain(&name),
            ArmSpec::Full {
                name,
                pretrain,
                classifier,
                real_unlabelled,
            } => ArmConfig {
                name,
                pretrain,
                classifier,
                real_unlabelled,
            },
        })
    }
}

impl ArmConfig {
    /// The arm called `name` on the pretraining of the same name, shared classifier.
    pub fn plain(name: &str) -> Self {
        ArmConfig {
            name: name.into(),
            pretrain: name.into(),
            classifier: toml::Table::new(),
            real_unlabelled: None,
        }
    }

    /// The pretraining arm this arm starts from (`None` for `none`).
    pub fn pretrain_arm(&self) -> Option<&str> {
        (self.pretrain != NO_PRETRAINING).then_some(self.pretrain.as_str())
    }
}

/// Where the outer folds of the diagnostic task come from across the grid's seeds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FoldSeed {
    /// Each seed draws its own outer (and inner) folds: repeated k-fold, so seeds are
    /// independent replicates of the split as well as of the training, and the corrected
    /// resampled t-test's repetitions are what it assumes.
    #[default]
    PerSeed,
    /// One split for every seed, from `dataset.seed` (lus before repeated k-fold): seeds
    /// replicate the training only, and every seed tests on the same folds.
    Fixed,
}

/// The cells of the study.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GridConfig {
    /// The pretraining arms (`[[grid.pretrain]]`); each is trained once per seed. Left out:
    /// one arm per recipe the classifier arms name (see [`PretrainArm`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pretrain: Vec<PretrainArm>,
    /// The classifier arms; each is trained per seed and fold.
    pub arms: Vec<ArmConfig>,
    /// Seeds; each (pretraining arm, seed) is one segmentation cell, each (arm, seed, fold)
    /// one classification cell.
    pub seeds: Vec<u64>,
    /// Stratified folds of the diagnostic task: fold f is the test set of cell f.
    pub folds: usize,
    /// The examples outside the test fold are split the same way into this many parts: one
    /// validates (picks the best epoch), the others train. 5 = a fifth for validation.
    pub inner_folds: usize,
    /// `per-seed` (each seed its own folds: repeated k-fold) or `fixed` (one split from
    /// `dataset.seed` for every seed).
    pub fold_seed: FoldSeed,
    /// In the resolved config of a classification cell: its fold. Not set in experiment files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fold: Option<usize>,
    /// The planned comparisons of classifier arms, as `[first, second]` pairs: the report tests
    /// these (first minus second) and Holm-adjusts over them alone, so adding an arm for
    /// another question does not weaken the tests of this one. Empty (the default): every pair.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<[String; 2]>,
}

impl Default for GridConfig {
    fn default() -> Self {
        GridConfig {
            pretrain: Vec::new(),
            arms: ["dense", "sparse", NO_PRETRAINING]
                .iter()
                .map(|n| ArmConfig::plain(n))
                .collect(),
            seeds: vec![0],
            folds: 5,
            inner_folds: 5,
            fold_seed: FoldSeed::PerSeed,
            fold: None,
            comparisons: Vec::new(),
        }
    }
}

impl GridConfig {
    /// The pretraining arm called `name`.
    pub fn pretrain_arm(&self, name: &str) -> Option<&PretrainArm> {
        self.pretrain.iter().find(|a| a.name == name)
    }
}

/// Override keys a pretraining arm may set, besides those under `pretrain.`.
const ARM_OVERRIDE_KEYS: [&str; 1] = ["dataset.sparse_width"];

impl ExperimentConfig {
    /// Checks every section and their agreement; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !self.name.starts_with('.');
        if !name_ok {
            bail!(
                "name: {:?} must be non-empty ASCII letters, digits, '-', '_' or '.' (it names folders)",
                self.name
            );
        }
        self.pretrain.validate().context("pretrain")?;
        let segmentation_classes = crate::seg_cell::class_names(&lus_data::LabelSchema::default());
        check_best_metric(
            "pretrain.train.best_metric",
            self.pretrain
                .train
                .best_metric_or(lus_train::SEGMENTATION_BEST_METRIC),
            &lus_train::segmentation_metric_names(&segmentation_classes),
        )?;
        let d = &self.dataset;
        match d.source {
            DataSource::Scanner => {
                d.scanner.validate().context("dataset.scanner")?;
                if d.folder.is_some() {
                    bail!("dataset.folder: only used with source = \"folder\"");
                }
            }
            DataSource::Folder => {
                if d.folder.is_none() {
                    bail!("dataset.folder: required with source = \"folder\"");
                }
            }
        }
        if d.train == 0 || d.val == 0 || d.test == 0 {
            bail!(
                "dataset: train, val and test must each be at least 1 (are {}, {}, {})",
                d.train,
                d.val,
                d.test
            );
        }
        if !(d.sparse_width.is_finite() && d.sparse_width > 0.0) {
            bail!(
                "dataset.sparse_width: must be finite and > 0, is {}",
                d.sparse_width
            );
        }
        let schema_classes = lus_data::LabelSchema::default().num_classes();
        if self.pretrain.unet.num_classes != schema_classes {
            bail!(
                "pretrain.unet.num_classes: is {} but the label schema has {schema_classes} classes",
                self.pretrain.unet.num_classes
            );
        }
        let e = &self.evaluation;
        if !(e.object_iou.is_finite() && (0.0..=1.0).contains(&e.object_iou)) {
            bail!(
                "evaluation.object_iou: must be in [0, 1], is {}",
                e.object_iou
            );
        }
        if e.truths.is_empty() {
            bail!("evaluation.truths: needs at least one recipe");
        }
        let mut truth_names: Vec<String> = Vec::new();
        for truth in &e.truths {
            let recipe = self
                .recipe(truth)
                .with_context(|| format!("evaluation.truths: {:?}", truth.name()))?;
            if truth_names.contains(&recipe.name) {
                bail!("evaluation.truths: {} appears twice", recipe.name);
            }
            truth_names.push(recipe.name);
        }
        for name in self.recipes.keys() {
            self.recipe(&RecipeRef::Name(name.clone()))
                .with_context(|| format!("recipes.{name}"))?;
        }
        if self.grid.seeds.is_empty() {
            bail!("grid: needs at least one seed");
        }
        for (i, arm) in self.grid.pretrain.iter().enumerate() {
            let context = || format!("grid.pretrain: arm {:?}", arm.name);
            if self.grid.pretrain[..i].iter().any(|a| a.name == arm.name) {
                bail!("grid.pretrain: {} appears twice", arm.name);
            }
            if !lus_data::recipe::valid_name(&arm.name) || arm.name == NO_PRETRAINING {
                bail!(
                    "grid.pretrain: name {:?} must be ASCII letters, digits, '-' or '_', and not \
                     {NO_PRETRAINING:?}",
                    arm.name
                );
            }
            let with_overrides = self.with_arm_overrides(arm).with_context(context)?;
            with_overrides.recipe(&arm.recipe).with_context(context)?;
        }
        for (i, arm) in self.grid.arms.iter().enumerate() {
            if self.grid.arms[..i].iter().any(|a| a.name == arm.name) {
                bail!("grid.arms: {} appears twice", arm.name);
            }
            if !lus_data::recipe::valid_name(&arm.name) {
                bail!(
                    "grid.arms: name {:?} must be ASCII letters, digits, '-' or '_'",
                    arm.name
                );
            }
            if let Some(pretrain) = arm.pretrain_arm()
                && self.grid.pretrain_arm(pretrain).is_none()
            {
                bail!(
                    "grid.arms: arm {} starts from pretraining {pretrain:?}, which is neither a \
                     pretraining arm ({}) nor {NO_PRETRAINING:?}",
                    arm.name,
                    self.grid
                        .pretrain
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if let Some(adaptation) = &arm.real_unlabelled {
                let context = || format!("grid.arms: arm {}", arm.name);
                adaptation.validate().with_context(context)?;
                if arm.pretrain_arm().is_none() {
                    bail!(
                        "grid.arms: arm {} sets real_unlabelled but starts from no pretraining: \
                         self-training needs a pretrained U-Net as its teacher",
                        arm.name
                    );
                }
                if self.dataset.classify_from != ClassifyFrom::Pocus {
                    bail!(
                        "grid.arms: arm {} sets real_unlabelled, which adapts the U-Net to real \
                         frames, but the diagnostic task is not on real frames (set \
                         dataset.classify_from = \"pocus\")",
                        arm.name
                    );
                }
            }
            if let Some(classify) = &self.classify {
                self.arm_classifier(arm, classify)
                    .with_context(|| format!("grid.arms: arm {}", arm.name))?;
            } else if !arm.classifier.is_empty() {
                bail!(
                    "grid.arms: arm {} sets classifier keys but there is no [classify]",
                    arm.name
                );
            }
        }
        for (i, [a, b]) in self.grid.comparisons.iter().enumerate() {
            for name in [a, b] {
                if !self.grid.arms.iter().any(|arm| &arm.name == name) {
                    bail!(
                        "grid.comparisons: {name:?} is not a classifier arm ({}); compare pairs of \
                         these arms, or set grid.comparisons = [] to compare every pair (after \
                         narrowing grid.arms with --set, say)",
                        self.grid
                            .arms
                            .iter()
                            .map(|arm| arm.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            if a == b {
                bail!("grid.comparisons: [{a:?}, {b:?}] compares an arm with itself");
            }
            if self.grid.comparisons[..i]
                .iter()
                .any(|[c, d]| (c == a && d == b) || (c == b && d == a))
            {
                bail!("grid.comparisons: {a} and {b} are compared twice");
            }
        }
        if self.classify.is_some() && self.grid.arms.is_empty() {
            bail!("grid.arms: [classify] needs at least one classifier arm");
        }
        if self.grid.folds < 2 {
            bail!("grid.folds: must be at least 2 (is {})", self.grid.folds);
        }
        if self.grid.inner_folds < 2 {
            bail!(
                "grid.inner_folds: must be at least 2 (is {})",
                self.grid.inner_folds
            );
        }
        if let Some(fold) = self.grid.fold
            && fold >= self.grid.folds
        {
            bail!(
                "grid.fold: {fold} is not below grid.folds = {}",
                self.grid.folds
            );
        }
        let p = &self.dataset.pocus;
        if p.classes.len() < 2 {
            bail!("dataset.pocus.classes: needs at least 2 classes");
        }
        for (i, class) in p.classes.iter().enumerate() {
            if p.classes[..i].contains(class) {
                bail!("dataset.pocus.classes: {class} appears twice");
            }
        }
        if p.probes.is_empty() {
            bail!("dataset.pocus.probes: needs at least one probe");
        }
        if let Some(classify) = &self.classify {
            classify.validate(&self.pretrain.unet).context("classify")?;
            let classes = self.class_names();
            check_best_metric(
                "classify.train.best_metric",
                classify
                    .train
                    .best_metric_or(lus_train::CLASSIFICATION_BEST_METRIC),
                &lus_train::classification_metric_names(&classes),
            )?;
            if classify.classifier.num_diagnoses != classes.len() {
                bail!(
                    "classify.classifier.num_diagnoses: is {} but the diagnostic task has {} classes ({})",
                    classify.classifier.num_diagnoses,
                    classes.len(),
                    classes.join(", ")
                );
            }
            if self.dataset.classify_from == ClassifyFrom::Dataset
                && self.dataset.classify_samples < 2 * self.grid.folds * self.grid.inner_folds
            {
                bail!(
                    "dataset.classify_samples: {} examples cannot fill {} folds",
                    self.dataset.classify_samples,
                    self.grid.folds
                );
            }
        } else if self.grid.pretrain.is_empty() {
            bail!("grid: no pretraining arm and no [classify]: nothing to run");
        }
        for (i, seed) in self.grid.seeds.iter().enumerate() {
            if self.grid.seeds[..i].contains(seed) {
                bail!("grid.seeds: {seed} appears twice");
            }
        }
        Ok(())
    }

    /// The diagnostic classes in class-index order.
    pub fn class_names(&self) -> Vec<String> {
        match self.dataset.classify_from {
            ClassifyFrom::Dataset => crate::dataset::diagnosis_names(),
            ClassifyFrom::Pocus => self
                .dataset
                .pocus
                .classes
                .iter()
                .map(|c| c.as_str().to_string())
                .collect(),
        }
    }

    /// Reads `path`, applies `overrides` (`key.path=value`), checks unknown keys and values.
    /// Every error names the file.
    pub fn load(path: &Path, overrides: &[String]) -> anyhow::Result<Self> {
        let text = lus_io::read_text(path)?;
        Self::from_toml_str(&text, overrides)
            .with_context(|| format!("{}: invalid experiment config", path.display()))
    }

    pub fn from_toml_str(text: &str, overrides: &[String]) -> anyhow::Result<Self> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        for assignment in overrides {
            apply_override(&mut doc, assignment)?;
        }
        let config: ExperimentConfig = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!(explain_unknown_key(&e.to_string())))?;
        let mut config = config;
        config.resolve_defaults();
        config.validate()?;
        Ok(config)
    }

    /// Writes out what the file leaves to defaults that depend on other sections, so the
    /// resolved config says it: each task's best metric, and the pretraining arms the
    /// classifier arms name when there is no `[[grid.pretrain]]`. Idempotent.
    pub fn resolve_defaults(&mut self) {
        if self.pretrain.train.best_metric.is_none() {
            self.pretrain.train.best_metric = Some(lus_train::SEGMENTATION_BEST_METRIC.into());
        }
        if let Some(classify) = self.classify.as_mut()
            && classify.train.best_metric.is_none()
        {
            classify.train.best_metric = Some(lus_train::CLASSIFICATION_BEST_METRIC.into());
        }
        if self.grid.pretrain.is_empty() {
            for arm in &self.grid.arms {
                if let Some(name) = arm.pretrain_arm()
                    && self.grid.pretrain_arm(name).is_none()
                {
                    self.grid.pretrain.push(PretrainArm {
                        name: name.to_string(),
                        recipe: RecipeRef::Name(name.to_string()),
                        overrides: toml::Table::new(),
                    });
                }
            }
        }
    }

    /// The label schema of the experiment's segmentation (the embedded default).
    pub fn schema(&self) -> LabelSchema {
        LabelSchema::default()
    }

    /// The label recipe `reference` stands for in this experiment, checked against the schema:
    /// a complete table as it is; a name as `[recipes.<name>]` (on its `base`, or on the
    /// built-in of its name) or the built-in. Recipes that set no stroke width take
    /// `dataset.sparse_width` (pixels at 128 px).
    pub fn recipe(&self, reference: &RecipeRef) -> anyhow::Result<LabelRecipe> {
        let schema = self.schema();
        let recipe = match reference {
            RecipeRef::Table(table) => {
                let recipe: LabelRecipe = from_table(table.clone(), "recipe table")?;
                if recipe.name.is_empty() {
                    bail!("a recipe table needs a name");
                }
                recipe
            }
            RecipeRef::Name(name) => self.named_recipe(name, &mut Vec::new())?,
        };
        recipe.validate(&schema)?;
        Ok(recipe)
    }

    fn named_recipe(&self, name: &str, seen: &mut Vec<String>) -> anyhow::Result<LabelRecipe> {
        let width = StrokeWidth::PxAt128(self.dataset.sparse_width);
        let builtin = || {
            LabelRecipe::builtin(name).map(|recipe| LabelRecipe {
                stroke_width: width,
                ..recipe
            })
        };
        let Some(table) = self.recipes.get(name) else {
            return builtin().with_context(|| {
                let mut known: Vec<&str> = lus_data::recipe::BUILTIN_RECIPES.to_vec();
                known.extend(self.recipes.keys().map(String::as_str));
                let nearest = known
                    .iter()
                    .map(|k| (lus_data::schema::edit_distance(k, name), *k))
                    .min()
                    .filter(|(d, _)| *d <= 3)
                    .map_or(String::new(), |(_, k)| format!(" (did you mean {k:?}?)"));
                format!(
                    "no label recipe {name:?}{nearest}; recipes: {}",
                    known.join(", ")
                )
            });
        };
        if seen.iter().any(|s| s == name) {
            bail!(
                "recipes: {} is its own base ({} -> {name})",
                name,
                seen.join(" -> ")
            );
        }
        seen.push(name.to_string());
        let mut table = table.clone();
        if table.contains_key("name") {
            bail!("recipes.{name}: the table's key is its name; remove `name`");
        }
        let start = match table.remove("base") {
            Some(toml::Value::String(base)) if base == name => builtin()
                .with_context(|| format!("recipes.{name}: base {base:?} is the recipe itself"))?,
            Some(toml::Value::String(base)) => self
                .named_recipe(&base, seen)
                .with_context(|| format!("recipes.{name}: base"))?,
            Some(other) => bail!("recipes.{name}.base: expected a recipe name, found {other}"),
            None => builtin().unwrap_or(LabelRecipe {
                stroke_width: width,
                ..LabelRecipe::default()
            }),
        };
        let mut merged = toml::Table::try_from(&start).context("serialising a recipe")?;
        for (key, value) in table {
            match (merged.get_mut(&key), value) {
                // Classes add to (or change) the base's, not replace them.
                (Some(toml::Value::Table(classes)), toml::Value::Table(more))
                    if key == "classes" =>
                {
                    classes.extend(more)
                }
                (_, value) => {
                    merged.insert(key, value);
                }
            }
        }
        merged.insert("name".into(), toml::Value::String(name.to_string()));
        let recipe: LabelRecipe = from_table(merged, &format!("recipes.{name}"))?;
        seen.pop();
        Ok(recipe)
    }

    /// This experiment as pretraining arm `arm` sees it: its `overrides` applied (checked like
    /// `--set`, and only for the keys an arm may change).
    pub fn with_arm_overrides(&self, arm: &PretrainArm) -> anyhow::Result<ExperimentConfig> {
        if arm.overrides.is_empty() {
            return Ok(self.clone());
        }
        let mut doc = toml::Table::try_from(self).context("serialising the config")?;
        for (key, value) in &arm.overrides {
            let allowed = (key.starts_with("pretrain.") && key != "pretrain.train.seed")
                || ARM_OVERRIDE_KEYS.contains(&key.as_str());
            if !allowed {
                bail!(
                    "overrides: {key:?} cannot differ between pretraining arms; an arm may set \
                     keys under \"pretrain.\" (write the whole path in quotes, e.g. \
                     \"pretrain.train.lr\" = 0.001; not pretrain.train.seed, which the grid's seeds \
                     set) and {}",
                    ARM_OVERRIDE_KEYS.join(", ")
                );
            }
            set_value(&mut doc, key, value.clone())
                .with_context(|| format!("overrides: {key:?}"))?;
        }
        let mut config: ExperimentConfig = from_table(doc, "overrides")?;
        config.resolve_defaults();
        config.pretrain.validate().context("overrides: pretrain")?;
        let d = &config.dataset;
        if !(d.sparse_width.is_finite() && d.sparse_width > 0.0) {
            bail!(
                "overrides: dataset.sparse_width must be finite and > 0, is {}",
                d.sparse_width
            );
        }
        check_best_metric(
            "overrides: pretrain.train.best_metric",
            config
                .pretrain
                .train
                .best_metric_or(lus_train::SEGMENTATION_BEST_METRIC),
            &lus_train::segmentation_metric_names(&crate::seg_cell::class_names(&self.schema())),
        )?;
        Ok(config)
    }

    /// The configuration as TOML (what is saved as `config.resolved.toml`).
    pub fn to_toml_string(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("serialising the resolved config")
    }

    /// The classification run config of `arm`: `[classify]` with the arm's classifier
    /// overrides applied (and checked like the file).
    pub fn arm_classifier(
        &self,
        arm: &ArmConfig,
        classify: &ClsRunConfig,
    ) -> anyhow::Result<ClsRunConfig> {
        let mut run = classify.clone();
        if !arm.classifier.is_empty() {
            let mut table = toml::Table::try_from(&run.classifier)?;
            for (key, value) in &arm.classifier {
                if !table.contains_key(key) {
                    bail!(
                        "{}",
                        explain_unknown_key(&format!(
                            "unknown field `{key}`, expected one of {}",
                            table
                                .keys()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    );
                }
                table.insert(key.clone(), value.clone());
            }
            run.classifier = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| anyhow::anyhow!("{e}"))?;
        }
        run.validate(&self.pretrain.unet)?;
        Ok(run)
    }

    /// The seed of the outer folds (and, mixed with the fold, of the inner split) of grid seed
    /// `seed`: `dataset.seed` itself with `fold_seed = "fixed"`, else a mix of the two
    /// (SplitMix64 finaliser), so nearby seeds give unrelated splits.
    pub fn split_seed(&self, seed: u64) -> u64 {
        match self.grid.fold_seed {
            FoldSeed::Fixed => self.dataset.seed,
            FoldSeed::PerSeed => {
                let mut z = self
                    .dataset
                    .seed
                    .wrapping_add(seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            }
        }
    }

    /// Folder of this experiment's runs.
    pub fn runs_root(&self) -> PathBuf {
        self.runs_dir.join(&self.name)
    }

    /// Folder of this experiment's report.
    pub fn report_root(&self) -> PathBuf {
        self.reports_dir.join(&self.name)
    }
}

/// `table` read as a `T`; an error says where (`context`) and suggests the nearest key for an
/// unknown one.
fn from_table<T: serde::de::DeserializeOwned>(
    table: toml::Table,
    context: &str,
) -> anyhow::Result<T> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            anyhow::anyhow!("{context}: {}", explain_unknown_key(&e.to_string()))
        })
}

/// Applies `a.b.c=value` to `doc`. The value is read as a TOML value (`3`, `1e-3`, `true`,
/// `"x"`, `[1, 2]`, `{ group = { groups = 8 } }`); anything that is not valid TOML is taken as
/// a string, so `--set pretrain.train.device=cpu` works without quotes.
pub fn apply_override(doc: &mut toml::Table, assignment: &str) -> anyhow::Result<()> {
    let Some((key, raw)) = assignment.split_once('=') else {
        bail!("--set {assignment:?}: expected key.path=value");
    };
    let key = key.trim();
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    set_value(doc, key, value).with_context(|| format!("--set {assignment:?}"))
}

/// Sets `key` (a dotted path, `a.b.c`) of `doc` to `value`, creating the sections on the way.
pub fn set_value(doc: &mut toml::Table, key: &str, value: toml::Value) -> anyhow::Result<()> {
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("empty key segment in {key:?}");
    }
    let (last, parents) = parts.split_last().expect("at least one segment");
    let mut table = doc;
    for (depth, part) in parents.iter().enumerate() {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("{} is a value, not a section", parts[..=depth].join(".")),
        };
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// Checks that `best` is `train_loss`, `val_loss` or `val_<m>` for a metric `m` of the task,
/// before any training starts (a typo would otherwise surface only when the run begins).
fn check_best_metric(key: &str, best: &str, metrics: &[String]) -> anyhow::Result<()> {
    let mut selectable: Vec<String> = vec!["train_loss".into(), "val_loss".into()];
    selectable.extend(metrics.iter().map(|m| format!("val_{m}")));
    if selectable.iter().any(|s| s == best) {
        return Ok(());
    }
    let nearest = selectable
        .iter()
        .min_by_key(|s| lus_data::schema::edit_distance(s, best))
        .expect("never empty");
    bail!(
        "{key}: {best:?} is not a metric of this task (did you mean {nearest:?}?); choose one of {}",
        selectable.join(", ")
    )
}

/// Adds "did you mean" to serde's "unknown field `x`, expected one of `a`, `b`" messages (it
/// lives in lus-data, which also reads TOML: label schemas and scanner settings).
pub use lus_data::schema::explain_unknown_key;

#[cfg(test)]
mod tests {
    #[test]
    fn a_classify_train_table_without_best_metric_keeps_the_classifier_default() {
        let config = super::ExperimentConfig::from_toml_str(
            "[classify.train]\nepochs = 3\n[grid]\narms = [\"none\"]\nseeds = [0]",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.classify.unwrap().train.best_metric.as_deref(),
            Some("val_balanced_accuracy")
        );
    }

    use super::*;

    #[test]
    fn defaults_validate_and_round_trip() {
        let config = ExperimentConfig::default();
        config.validate().unwrap();
        let text = config.to_toml_string().unwrap();
        assert_eq!(ExperimentConfig::from_toml_str(&text, &[]).unwrap(), config);
    }

    #[test]
    fn overrides_are_typed_and_validated() {
        let config = ExperimentConfig::from_toml_str(
            "name = \"x\"\n",
            &[
                "pretrain.train.epochs=3".into(),
                "pretrain.train.device=cpu".into(),
                "grid.seeds=[1, 2]".into(),
                "pretrain.unet.norm={ group = { groups = 4 } }".into(),
            ],
        )
        .unwrap();
        assert_eq!(config.pretrain.train.epochs, 3);
        assert_eq!(config.pretrain.train.device, lus_train::DeviceSpec::Cpu);
        assert_eq!(config.grid.seeds, vec![1, 2]);
        let err =
            ExperimentConfig::from_toml_str("", &["pretrain.train.epochs=0".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("epochs"), "{err:#}");
        let err =
            ExperimentConfig::from_toml_str("name = \"x\"", &["name.x=1".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("is a value"), "{err:#}");
        assert!(ExperimentConfig::from_toml_str("", &["noequals".into()]).is_err());
    }

    #[test]
    fn unknown_keys_suggest_the_nearest() {
        let err =
            ExperimentConfig::from_toml_str("[pretrain.train]\nepoch = 3\n", &[]).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("did you mean `epochs`"), "{text}");
        let err =
            ExperimentConfig::from_toml_str("[dataset]\nsorce = \"scanner\"\n", &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("did you mean `source`"),
            "{err:#}"
        );
    }

    #[test]
    fn inconsistent_sections_are_rejected() {
        for (text, key) in [
            ("[dataset]\nsource = \"folder\"\n", "dataset.folder"),
            ("[dataset]\ntest = 0\n", "dataset"),
            ("[pretrain.unet]\nnum_classes = 4\n", "num_classes"),
            ("[grid]\narms = [\"dense\", \"dense\"]\n", "grid.arms"),
            ("[grid]\narms = [\"dens\"]\n", "dens"),
            ("name = \"../x\"\n", "name"),
            ("[evaluation]\nconnectivity = 6\n", "connectivity"),
            ("[evaluation]\ntruths = []\n", "evaluation.truths"),
            ("[evaluation]\ntruths = [\"dense\", \"dense\"]\n", "twice"),
            ("[recipes.x]\nlines = \"strok\"\n", "recipes.x"),
            (
                "[recipes.x]\nbase = \"y\"\n[recipes.y]\nbase = \"x\"\n",
                "own base",
            ),
            (
                "[[grid.pretrain]]\nname = \"a\"\nrecipe = \"dense\"\n\
                 overrides = { \"dataset.train\" = 3 }\n",
                "cannot differ between pretraining arms",
            ),
            (
                "[[grid.pretrain]]\nname = \"a\"\nrecipe = \"dense\"\n\
                 overrides = { \"pretrain.train.seed\" = 3 }\n",
                "pretrain.train.seed",
            ),
            (
                "[[grid.pretrain]]\nname = \"a\"\nrecipe = \"dense\"\n\
                 overrides = { \"pretrain.train.epoch\" = 3 }\n",
                "did you mean `epochs`",
            ),
            (
                "[[grid.pretrain]]\nname = \"none\"\nrecipe = \"dense\"\n",
                "grid.pretrain",
            ),
            (
                "[classify.train]\nepochs = 1\n[[grid.pretrain]]\nname = \"a\"\nrecipe = \"dense\"\n\
                 [grid]\narms = [{ name = \"c\", pretrain = \"b\" }]\n",
                "neither a pretraining arm",
            ),
            (
                "[classify.train]\nepochs = 1\n[dataset]\nclassify_from = \"pocus\"\n[grid]\n\
                 arms = [\"dense\", { name = \"n\", pretrain = \"none\", real_unlabelled = {} }]\n",
                "starts from no pretraining",
            ),
            (
                "[grid]\ncomparisons = [[\"dense\", \"sprase\"]]\n",
                "\"sprase\" is not a classifier arm",
            ),
            ("[grid]\ncomparisons = [[\"dense\", \"dense\"]]\n", "itself"),
            (
                "[grid]\ncomparisons = [[\"dense\", \"none\"], [\"none\", \"dense\"]]\n",
                "compared twice",
            ),
            (
                "[classify.train]\nepochs = 1\n[grid]\n\
                 arms = [\"dense\", { name = \"d\", pretrain = \"dense\", real_unlabelled = {} }]\n",
                "classify_from",
            ),
            (
                "[classify.train]\nepochs = 1\n[dataset]\nclassify_from = \"pocus\"\n[grid]\n\
                 arms = [\"dense\", { name = \"d\", pretrain = \"dense\", \
                 real_unlabelled = { portion = 1.5 } }]\n",
                "portion",
            ),
            (
                "[classify.train]\nepochs = 1\n[dataset]\nclassify_from = \"pocus\"\n[grid]\n\
                 arms = [\"dense\", { name = \"d\", pretrain = \"dense\", \
                 real_unlabelled = { epochs = 0 } }]\n",
                "real_unlabelled.epochs",
            ),
        ] {
            let err = ExperimentConfig::from_toml_str(text, &[]).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{text}: {err:#}");
        }
    }
}

#[cfg(test)]
mod split_seeds {
    use super::*;

    #[test]
    fn each_seed_draws_its_own_split_unless_the_split_is_fixed() {
        let per_seed = ExperimentConfig::from_toml_str("[dataset]\nseed = 7\n", &[]).unwrap();
        assert_eq!(per_seed.grid.fold_seed, FoldSeed::PerSeed);
        let seeds: Vec<u64> = (0..50).map(|s| per_seed.split_seed(s)).collect();
        let mut unique = seeds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), seeds.len(), "every seed its own split");
        assert!(!seeds.contains(&7));
        // The data set's seed takes part: another data seed, other splits.
        let other = ExperimentConfig::from_toml_str("[dataset]\nseed = 8\n", &[]).unwrap();
        assert_ne!(other.split_seed(0), per_seed.split_seed(0));
        let fixed = ExperimentConfig::from_toml_str(
            "[dataset]\nseed = 7\n[grid]\nfold_seed = \"fixed\"\n",
            &[],
        )
        .unwrap();
        assert!((0..5).all(|s| fixed.split_seed(s) == 7));
        let err =
            ExperimentConfig::from_toml_str("[grid]\nfold_seed = \"per_seed\"\n", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("per-seed"), "{err:#}");
    }
}

#[cfg(test)]
mod recipes_and_arms {
    use super::*;
    use lus_data::ClassRender;

    #[test]
    fn recipes_resolve_from_built_ins_bases_and_the_default_width() {
        let config = ExperimentConfig::from_toml_str(
            r#"
[dataset]
sparse_width = 2.0
[recipes.dense-lines]
lines = "full"
[recipes.sparse-pathology]
base = "sparse"
classes = { consolidation = "full" }
[recipes.sparse-pathology-w1]
base = "sparse-pathology"
stroke_width = { px_at_128 = 1.0 }
classes = { effusion = "full" }
[recipes.sparse]
clip_strokes = false
"#,
            &[],
        )
        .unwrap();
        let schema = config.schema();
        let get = |name: &str| config.recipe(&RecipeRef::Name(name.into())).unwrap();
        let render =
            |r: &LabelRecipe, class: &str| r.render_of(schema.lookup(class).unwrap(), &schema);
        let dense_lines = get("dense-lines");
        assert_eq!(render(&dense_lines, "b-line"), ClassRender::Full);
        assert_eq!(render(&dense_lines, "lung"), ClassRender::Off);
        // A table named like a built-in starts from it.
        let sparse = get("sparse");
        assert!(!sparse.clip_strokes);
        assert_eq!(render(&sparse, "a-line"), ClassRender::Stroke);
        assert_eq!(sparse.stroke_width, StrokeWidth::PxAt128(2.0));
        let w1 = get("sparse-pathology-w1");
        assert_eq!(w1.name, "sparse-pathology-w1");
        assert_eq!(w1.stroke_width, StrokeWidth::PxAt128(1.0));
        // Classes merge along the bases.
        assert_eq!(render(&w1, "consolidation"), ClassRender::Full);
        assert_eq!(render(&w1, "effusion"), ClassRender::Full);
        assert_eq!(render(&w1, "a-line"), ClassRender::Stroke);
        // Bases resolve through the experiment's own recipes: its `sparse` does not clip.
        assert!(!w1.clip_strokes);
        // A resolved recipe written out as a table reads back as itself.
        assert_eq!(config.recipe(&RecipeRef::resolved(&w1)).unwrap(), w1);
        let err = config
            .recipe(&RecipeRef::Name("sparse-pathologie".into()))
            .unwrap_err();
        assert!(format!("{err:#}").contains("sparse-pathology"), "{err:#}");
    }

    #[test]
    fn pretraining_arms_default_from_the_classifier_arms_and_take_overrides() {
        let config = ExperimentConfig::from_toml_str(
            "[classify.train]\nepochs = 1\n[grid]\narms = [\"dense\", \"sparse\", \"none\", \
             { name = \"dense-frozen\", pretrain = \"dense\", classifier = { freeze = \"encoder\" } }]\n",
            &[],
        )
        .unwrap();
        let names: Vec<&str> = config
            .grid
            .pretrain
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["dense", "sparse"]);
        // Resolution is idempotent: the resolved config reads back as itself.
        let text = config.to_toml_string().unwrap();
        assert_eq!(ExperimentConfig::from_toml_str(&text, &[]).unwrap(), config);

        let config = ExperimentConfig::from_toml_str(
            r#"
[pretrain.train]
lr = 0.003
[[grid.pretrain]]
name = "thin"
recipe = "sparse"
overrides = { "pretrain.train.lr" = 0.001, "dataset.sparse_width" = 1.0, "pretrain.unet.norm" = { group = { groups = 4 } } }
[grid]
arms = []
"#,
            &[],
        )
        .unwrap();
        let arm = &config.grid.pretrain[0];
        let seen = config.with_arm_overrides(arm).unwrap();
        assert_eq!(seen.pretrain.train.lr, 0.001);
        assert_eq!(config.pretrain.train.lr, 0.003);
        assert_eq!(
            seen.recipe(&arm.recipe).unwrap().stroke_width,
            StrokeWidth::PxAt128(1.0)
        );
        assert!(matches!(
            seen.pretrain.unet.norm,
            lus_unet::Norm::Group { groups: 4 }
        ));
    }
}

#[cfg(test)]
mod committed_experiments {
    use super::*;

    /// Every experiment file in `experiments/` parses and validates as committed.
    #[test]
    fn every_committed_experiment_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = ExperimentConfig::load(&path, &[])
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert_eq!(
                    path.file_stem().unwrap().to_str().unwrap(),
                    config.name,
                    "{}: the name should match the file",
                    path.display()
                );
                checked += 1;
            }
        }
        assert!(
            checked >= 2,
            "found {checked} experiment files in {}",
            dir.display()
        );
        // Scanner settings files (`lus domain-gap --scanner`, `[dataset.scanner]` tables).
        for entry in std::fs::read_dir(dir.join("scanner")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let config: ScannerConfig =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }

    /// A class index is the same diagnosis whichever source the pool comes from.
    #[test]
    fn pocus_classes_default_to_the_scanner_order() {
        let pocus: Vec<String> = PocusPoolConfig::default()
            .classes
            .iter()
            .map(|c| c.to_string())
            .collect();
        let scanner: Vec<String> = lus_data::Diagnosis::PAPER
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(pocus, scanner);
        let committed = ExperimentConfig::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/pocus.toml"),
            &[],
        )
        .unwrap();
        assert_eq!(
            committed.dataset.pocus.classes,
            PocusPoolConfig::default().classes
        );
    }
}
