//! Experiment files: one TOML file declares the data set, the segmentation pretraining, how it
//! is evaluated, and the grid of arms and seeds. `lus train-seg` runs one cell of it, `lus run`
//! runs them all and writes the report.
//!
//! Loading is strict: unknown keys are errors with the nearest valid key suggested, every
//! section is validated, and `--set section.key=value` overrides are applied to the parsed
//! document before it is checked (so an override is validated like a value in the file).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lus_data::LabelMode;
use lus_data::scanner::ScannerConfig;
use lus_metrics::ObjectConfig;
use lus_metrics::components::Connectivity;
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
    fn default() -> Self {
        ExperimentConfig {
            name: "experiment".to_string(),
            runs_dir: PathBuf::from("runs"),
            reports_dir: PathBuf::from("reports"),
            dataset: DatasetConfig::default(),
            pretrain: SegRunConfig::default(),
            evaluation: EvaluationConfig::default(),
            classify: None,
            grid: GridConfig::default(),
        }
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
    /// Stroke width in pixels of the sparse labels the scanner's annotations are rasterised with.
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
    /// The classes, in class-index order (the paper's three by default; `viral` may be added).
    /// Frames of other classes are left out.
    pub classes: Vec<lus_data::pocus::PocusClass>,
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
        use lus_data::pocus::PocusClass;
        PocusPoolConfig {
            frames: PathBuf::from("runs/pocus-frames"),
            classes: vec![
                PocusClass::Covid,
                PocusClass::Pneumonia,
                PocusClass::Healthy,
            ],
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
            sparse_width: lus_data::RasterOptions::default().sparse_width,
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
    pub connectivity: u8,
    /// Test images shown in the report's overlay grid.
    pub overlay_examples: usize,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        let objects = ObjectConfig::default();
        EvaluationConfig {
            min_object_area: objects.min_area,
            object_iou: objects.iou_threshold,
            connectivity: 8,
            overlay_examples: 6,
        }
    }
}

impl EvaluationConfig {
    pub fn object_config(&self) -> ObjectConfig {
        ObjectConfig {
            connectivity: if self.connectivity == 4 {
                Connectivity::Four
            } else {
                Connectivity::Eight
            },
            min_area: self.min_object_area,
            iou_threshold: self.object_iou,
        }
    }
}

/// Where an arm's U-Net starts from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Pretrain {
    /// The U-Net pretrained on dense labels.
    Dense,
    /// The U-Net pretrained on sparse labels.
    Sparse,
    /// A freshly initialised U-Net (same architecture, same seed rules).
    None,
}

impl Pretrain {
    pub fn label_mode(self) -> Option<LabelMode> {
        match self {
            Pretrain::Dense => Some(LabelMode::Dense),
            Pretrain::Sparse => Some(LabelMode::Sparse),
            Pretrain::None => None,
        }
    }
}

/// One arm of the study: a pretraining and, optionally, classifier settings that differ from
/// `[classify.classifier]` (e.g. another head placement or freezing). In TOML either a name
/// (`"dense"`, `"sparse"`, `"none"`: the arm with that pretraining and the shared classifier)
/// or a table `{ name = "dense-frozen", pretrain = "dense", classifier = { freeze = "encoder" } }`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(try_from = "ArmSpec")]
pub struct ArmConfig {
    pub name: String,
    pub pretrain: Pretrain,
    /// Keys of `[classify.classifier]` this arm overrides.
    #[serde(skip_serializing_if = "toml::Table::is_empty", default)]
    pub classifier: toml::Table,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ArmSpec {
    Name(String),
    Full {
        name: String,
        pretrain: Pretrain,
        #[serde(default)]
        classifier: toml::Table,
    },
}

impl TryFrom<ArmSpec> for ArmConfig {
    type Error = String;

    fn try_from(spec: ArmSpec) -> Result<Self, String> {
        match spec {
            ArmSpec::Name(name) => {
                let pretrain = match name.as_str() {
                    "dense" => Pretrain::Dense,
                    "sparse" => Pretrain::Sparse,
                    "none" => Pretrain::None,
                    other => {
                        return Err(format!(
                            "arm {other:?}: a name alone must be dense, sparse or none; give other \
                             arms as {{ name = \"...\", pretrain = \"dense\", classifier = {{ ... }} }}"
                        ));
                    }
                };
                Ok(ArmConfig {
                    name,
                    pretrain,
                    classifier: toml::Table::new(),
                })
            }
            ArmSpec::Full {
                name,
                pretrain,
                classifier,
            } => Ok(ArmConfig {
                name,
                pretrain,
                classifier,
            }),
        }
    }
}

impl ArmConfig {
    pub fn plain(pretrain: Pretrain) -> Self {
        let name = match pretrain {
            Pretrain::Dense => "dense",
            Pretrain::Sparse => "sparse",
            Pretrain::None => "none",
        };
        ArmConfig {
            name: name.into(),
            pretrain,
            classifier: toml::Table::new(),
        }
    }
}

/// The cells of the study.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GridConfig {
    /// The arms: each pretraining (dense, sparse) is run once per seed, and each arm is
    /// classified per seed and fold.
    pub arms: Vec<ArmConfig>,
    /// Seeds; each (pretraining, seed) is one segmentation run, each (arm, seed, fold) one
    /// classification run.
    pub seeds: Vec<u64>,
    /// Stratified folds of the diagnostic task: fold f is the test set of cell f.
    pub folds: usize,
    /// The examples outside the test fold are split the same way into this many parts: one
    /// validates (picks the best epoch), the others train. 5 = a fifth for validation.
    pub inner_folds: usize,
    /// In the resolved config of a classification cell: its fold. Not set in experiment files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fold: Option<usize>,
}

impl Default for GridConfig {
    fn default() -> Self {
        GridConfig {
            arms: vec![
                ArmConfig::plain(Pretrain::Dense),
                ArmConfig::plain(Pretrain::Sparse),
                ArmConfig::plain(Pretrain::None),
            ],
            seeds: vec![0],
            folds: 5,
            inner_folds: 5,
            fold: None,
        }
    }
}

impl GridConfig {
    /// The label modes to pretrain on, in arm order, each once.
    pub fn pretrain_modes(&self) -> Vec<LabelMode> {
        let mut modes = Vec::new();
        for arm in &self.arms {
            if let Some(mode) = arm.pretrain.label_mode()
                && !modes.contains(&mode)
            {
                modes.push(mode);
            }
        }
        modes
    }
}

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
            &self.pretrain.train.best_metric,
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
        if !matches!(e.connectivity, 4 | 8) {
            bail!(
                "evaluation.connectivity: must be 4 or 8, is {}",
                e.connectivity
            );
        }
        if self.grid.arms.is_empty() || self.grid.seeds.is_empty() {
            bail!("grid: needs at least one arm and one seed");
        }
        for (i, arm) in self.grid.arms.iter().enumerate() {
            if self.grid.arms[..i].iter().any(|a| a.name == arm.name) {
                bail!("grid.arms: {} appears twice", arm.name);
            }
            let name_ok = !arm.name.is_empty()
                && arm
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
            if !name_ok {
                bail!(
                    "grid.arms: name {:?} must be ASCII letters, digits, '-' or '_'",
                    arm.name
                );
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
                &classify.train.best_metric,
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
        } else if self.grid.arms.iter().all(|a| a.pretrain == Pretrain::None) {
            bail!("grid.arms: only `none` arms and no [classify]: nothing to run");
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
        let text = lus_data::io::read_text(path)?;
        Self::from_toml_str(&text, overrides)
            .with_context(|| format!("{}: invalid experiment config", path.display()))
    }

    pub fn from_toml_str(text: &str, overrides: &[String]) -> anyhow::Result<Self> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        for assignment in overrides {
            apply_override(&mut doc, assignment)?;
        }
        // A `[classify.train]` table is a TrainConfig whose own default best metric is the
        // segmentation one (`val_miou`); a table that leaves it out means the classifier's
        // default, as an absent table does.
        if let Some(toml::Value::Table(classify)) = doc.get_mut("classify")
            && let Some(toml::Value::Table(train)) = classify.get_mut("train")
            && !train.contains_key("best_metric")
        {
            train.insert(
                "best_metric".into(),
                toml::Value::String(ClsRunConfig::default().train.best_metric),
            );
        }
        let config: ExperimentConfig = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!(explain_unknown_key(&e.to_string())))?;
        config.validate()?;
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

    /// Folder of this experiment's runs.
    pub fn runs_root(&self) -> PathBuf {
        self.runs_dir.join(&self.name)
    }

    /// Folder of this experiment's report.
    pub fn report_root(&self) -> PathBuf {
        self.reports_dir.join(&self.name)
    }
}

/// Applies `a.b.c=value` to `doc`. The value is read as a TOML value (`3`, `1e-3`, `true`,
/// `"x"`, `[1, 2]`, `{ group = { groups = 8 } }`); anything that is not valid TOML is taken as
/// a string, so `--set pretrain.train.device=cpu` works without quotes.
pub fn apply_override(doc: &mut toml::Table, assignment: &str) -> anyhow::Result<()> {
    let Some((key, raw)) = assignment.split_once('=') else {
        bail!("--set {assignment:?}: expected key.path=value");
    };
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {assignment:?}: empty key segment in {key:?}");
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let (last, parents) = parts.split_last().expect("at least one segment");
    let mut table = doc;
    for (depth, part) in parents.iter().enumerate() {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => bail!(
                "--set {assignment:?}: {} is a value, not a section",
                parts[..=depth].join(".")
            ),
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
            config.classify.unwrap().train.best_metric,
            "val_balanced_accuracy"
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
        assert_eq!(config.pretrain.train.device, "cpu");
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
        ] {
            let err = ExperimentConfig::from_toml_str(text, &[]).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{text}: {err:#}");
        }
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
    }
}
