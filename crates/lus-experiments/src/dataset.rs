//! The train / validation / test splits of an experiment's data set, each with the masks of
//! every label recipe the experiment uses (the same images under every recipe), and the
//! diagnostic pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use image::GrayImage;
use lus_data::cls_loader::{ClassificationSource, FileClassSource, InMemoryClassSource};
use lus_data::loader::{AnnotatedFileSource, InMemorySource, SegmentationSource};
use lus_data::manifest::{MANIFEST_FILE, ManifestRow, read_manifest, resolve_inside};
use lus_data::raster::{RasterOptions, Rasterizer};
use lus_data::{Diagnosis, LabelRecipe, LabelSchema, Mask, Probe};
use lus_scanner::Scanner;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::{ClassifyFrom, DataSource, DatasetConfig, ExperimentConfig};

/// The examples of the diagnostic task, with what splits and reports need.
pub struct ClassifyPool {
    pub source: Arc<dyn ClassificationSource>,
    pub ids: Vec<String>,
    /// Class id (Diagnosis::index) of each example.
    pub labels: Vec<usize>,
    /// Group of each example for the folds (a scanner sample is its own group).
    pub groups: Vec<String>,
    pub probes: Vec<Probe>,
    /// The clip of each example (clip-level metrics average its frames' probabilities); a
    /// scanner sample or a still image is a clip of its own.
    pub clips: Vec<String>,
    /// Class names in class-id order.
    pub class_names: Vec<String>,
    /// What the pool is, for the report ("240 scanner images", "240 images of the folder
    /// `data/x`", "2287 real POCUS frames of ...").
    pub description: String,
}

/// Diagnosis names in class-id order.
pub fn diagnosis_names() -> Vec<String> {
    Diagnosis::PAPER
        .iter()
        .map(|d| d.as_str().to_string())
        .collect()
}

/// What the diagnostic pool of `experiment` is, in words, without loading it (the report's
/// setup line).
pub fn pool_description(experiment: &ExperimentConfig) -> String {
    let d = &experiment.dataset;
    match (d.classify_from, d.source) {
        (ClassifyFrom::Dataset, DataSource::Scanner) => {
            format!("{} scanner images", d.classify_samples)
        }
        (ClassifyFrom::Dataset, DataSource::Folder) => format!(
            "{} images of the folder `{}`",
            d.classify_samples,
            d.folder.as_deref().unwrap_or(Path::new("?")).display()
        ),
        (ClassifyFrom::Pocus, _) => format!(
            "real POCUS frames (`{}`, folds grouped by patient, else clip)",
            d.pocus.frames.display()
        ),
    }
}

impl ClassifyPool {
    /// The diagnostic pool of `experiment`: from its pretraining source or from POCUS frames.
    pub fn for_experiment(experiment: &ExperimentConfig) -> anyhow::Result<Self> {
        match experiment.dataset.classify_from {
            ClassifyFrom::Dataset => Self::load(&experiment.dataset),
            ClassifyFrom::Pocus => {
                let size = experiment
                    .classify
                    .as_ref()
                    .map_or(experiment.pretrain.data.size, |c| c.data.size);
                crate::pocus_pool::load_pocus_pool(&experiment.dataset.pocus, size)
            }
        }
    }

    /// A pool with no examples yet, room for `count`, the scanner's diagnosis names.
    pub(crate) fn empty(count: usize, description: String) -> Self {
        ClassifyPool {
            source: Arc::new(InMemoryClassSource(Vec::new())),
            ids: Vec::with_capacity(count),
            labels: Vec::with_capacity(count),
            groups: Vec::with_capacity(count),
            probes: Vec::with_capacity(count),
            clips: Vec::with_capacity(count),
            class_names: diagnosis_names(),
            description,
        }
    }

    /// `config.classify_samples` examples after the pretraining ones.
    pub fn load(config: &DatasetConfig) -> anyhow::Result<Self> {
        let count = config.classify_samples;
        let start = config.train + config.val + config.test;
        match config.source {
            DataSource::Scanner => {
                let scanner = Scanner::new(config.scanner.clone(), config.seed)?;
                let samples = scanner.generate(start as u64..(start + count) as u64);
                let mut pool = Self::empty(count, format!("{count} scanner images"));
                let mut examples = Vec::with_capacity(count);
                for s in samples {
                    let id = format!("scanner-{}", s.index);
                    pool.ids.push(id.clone());
                    pool.clips.push(id.clone());
                    pool.groups.push(id);
                    pool.labels.push(s.diagnosis.index());
                    pool.probes.push(s.probe);
                    examples.push((s.image, s.diagnosis.index()));
                }
                pool.source = Arc::new(InMemoryClassSource(examples));
                Ok(pool)
            }
            DataSource::Folder => {
                let folder = config
                    .folder
                    .as_deref()
                    .context("dataset.folder: required with source = \"folder\"")?;
                let manifest = ShuffledManifest::read(
                    folder,
                    config.seed,
                    start + count,
                    "dataset.train + val + test + classify_samples",
                )?;
                let mut files = Vec::with_capacity(count);
                let mut pool = Self::empty(
                    count,
                    format!("{count} images of the folder `{}`", folder.display()),
                );
                for &i in &manifest.order[start..start + count] {
                    let row = &manifest.rows[i];
                    // The classifier's classes are the paper's three (class id = position);
                    // another diagnosis would be a label out of range deep in training.
                    if !Diagnosis::PAPER.contains(&row.diagnosis) {
                        bail!(
                            "{}: sample {:?} has diagnosis {}, but a folder's classifier \
                             classes are {} (use a POCUS pool for `viral`)",
                            folder.join(lus_data::manifest::MANIFEST_FILE).display(),
                            row.id,
                            row.diagnosis,
                            diagnosis_names().join(", ")
                        );
                    }
                    let image = manifest.resolve(&row.image)?;
                    files.push((image, row.diagnosis.index()));
                    pool.ids.push(row.id.clone());
                    pool.clips.push(row.id.clone());
                    pool.groups.push(row.id.clone());
                    pool.labels.push(row.diagnosis.index());
                    pool.probes.push(row.probe);
                }
                pool.source = Arc::new(FileClassSource::new(files));
                // Every image is decoded once before any cell writes, so a broken file fails
                // the command up front, naming it (see `SegmentationSource::check_all`).
                pool.source.check_all()?;
                Ok(pool)
            }
        }
    }
}

/// One split: the same examples under every label recipe of the experiment.
pub struct Split {
    /// Example identifiers (scanner sample index or manifest id), in index order.
    pub ids: Vec<String>,
    /// The examples under each recipe.
    sources: Vec<(LabelRecipe, Arc<dyn SegmentationSource>)>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The examples with their masks drawn by `recipe` (one the data set was loaded with).
    pub fn labels(&self, recipe: &LabelRecipe) -> anyhow::Result<Arc<dyn SegmentationSource>> {
        self.sources
            .iter()
            .find(|(r, _)| r == recipe)
            .map(|(_, source)| source.clone())
            .with_context(|| {
                format!(
                    "the data set was not drawn with label recipe {:?} (internal: every recipe \
                     a command uses is named when the data set is loaded)",
                    recipe.name
                )
            })
    }

    /// The image of example `index` (the same under every recipe).
    pub fn image(&self, index: usize) -> anyhow::Result<GrayImage> {
        let (_, source) = self.sources.first().context("a data set with no recipe")?;
        Ok(source.load(index)?.0)
    }
}

pub struct Dataset {
    pub schema: LabelSchema,
    pub train: Split,
    pub val: Split,
    pub test: Split,
}

impl Dataset {
    /// Draws (scanner) or reads the index of (folder) the data set of `config`, with the
    /// masks of every recipe in `recipes` (`ignore_id` for recipes that leave pixels unknown).
    pub fn load(
        config: &DatasetConfig,
        recipes: &[LabelRecipe],
        ignore_id: Option<u8>,
    ) -> anyhow::Result<Self> {
        let schema = LabelSchema::default();
        let options: Vec<RasterOptions> = recipes
            .iter()
            .map(|recipe| {
                let options = RasterOptions {
                    recipe: recipe.clone(),
                    ignore_id,
                };
                options
                    .validate(&schema)
                    .with_context(|| format!("label recipe {}", recipe.name))?;
                Ok(options)
            })
            .collect::<anyhow::Result<_>>()?;
        match config.source {
            DataSource::Scanner => scanner_dataset(config, schema, &options),
            DataSource::Folder => {
                let folder = config
                    .folder
                    .as_deref()
                    .context("dataset.folder: required with source = \"folder\"")?;
                folder_dataset(config, folder, schema, &options)
            }
        }
    }
}

fn scanner_dataset(
    config: &DatasetConfig,
    schema: LabelSchema,
    options: &[RasterOptions],
) -> anyhow::Result<Dataset> {
    let scanner = Scanner::new(config.scanner.clone(), config.seed)?;
    let mut start = 0u64;
    let mut next_split = |count: usize| -> anyhow::Result<Split> {
        let range = start..start + count as u64;
        start = range.end;
        let samples = scanner.generate(range);
        // Per sample: its id, image and one mask per recipe.
        let examples: Vec<(String, GrayImage, Vec<Mask>)> = samples
            .into_par_iter()
            .map_init(Rasterizer::new, |rasterizer, s| -> anyhow::Result<_> {
                let masks = options
                    .iter()
                    .map(|o| rasterizer.rasterize(&s.annotation, &schema, o))
                    .collect::<lus_data::Result<Vec<Mask>>>()?;
                Ok((format!("scanner-{}", s.index), s.image, masks))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut ids = Vec::with_capacity(count);
        let mut pairs: Vec<Vec<(GrayImage, Mask)>> = vec![Vec::with_capacity(count); options.len()];
        for (id, image, masks) in examples {
            ids.push(id);
            for (k, mask) in masks.into_iter().enumerate() {
                pairs[k].push((image.clone(), mask));
            }
        }
        Ok(Split {
            ids,
            sources: options
                .iter()
                .zip(pairs)
                .map(|(o, p)| {
                    (
                        o.recipe.clone(),
                        Arc::new(InMemorySource(p)) as Arc<dyn SegmentationSource>,
                    )
                })
                .collect(),
        })
    };
    let train = next_split(config.train)?;
    let val = next_split(config.val)?;
    let test = next_split(config.test)?;
    Ok(Dataset {
        schema,
        train,
        val,
        test,
    })
}

/// A `lus synth` folder's manifest rows in the order `seed` shuffles them to, checked to hold
/// at least `needed` rows (`what` names the settings that need them, for the error).
struct ShuffledManifest<'a> {
    folder: &'a Path,
    path: PathBuf,
    rows: Vec<ManifestRow>,
    order: Vec<usize>,
}

impl<'a> ShuffledManifest<'a> {
    fn read(folder: &'a Path, seed: u64, needed: usize, what: &str) -> anyhow::Result<Self> {
        let path = folder.join(MANIFEST_FILE);
        if !path.is_file() {
            bail!(
                "{}: no {MANIFEST_FILE} (dataset.folder must be a folder written by `lus synth`)",
                folder.display()
            );
        }
        let rows = read_manifest(&path)?;
        if rows.len() < needed {
            bail!(
                "{}: {} examples, but {what} = {needed}",
                path.display(),
                rows.len()
            );
        }
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        Ok(ShuffledManifest {
            folder,
            path,
            rows,
            order,
        })
    }

    /// `rel` (a path of a row) inside the folder, or an error naming the manifest.
    fn resolve(&self, rel: &str) -> anyhow::Result<PathBuf> {
        resolve_inside(self.folder, rel)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))
    }
}

/// A `lus synth` folder: images read on demand, masks drawn from each row's annotation by
/// every recipe (the folder's stored dense and sparse masks are for viewing; the experiment's
/// recipes decide the labels).
fn folder_dataset(
    config: &DatasetConfig,
    folder: &Path,
    schema: LabelSchema,
    options: &[RasterOptions],
) -> anyhow::Result<Dataset> {
    let manifest = ShuffledManifest::read(
        folder,
        config.seed,
        config.train + config.val + config.test,
        "dataset.train + val + test",
    )?;
    let mut start = 0;
    let mut next_split = |count: usize| -> anyhow::Result<Split> {
        let picked = &manifest.order[start..start + count];
        start += count;
        let mut ids = Vec::with_capacity(count);
        let mut pairs = Vec::with_capacity(count);
        for &i in picked {
            let row = &manifest.rows[i];
            ids.push(row.id.clone());
            pairs.push((
                manifest.resolve(&row.image)?,
                manifest.resolve(&row.annotation)?,
            ));
        }
        let sources = options
            .iter()
            .map(|o| -> anyhow::Result<_> {
                let source = AnnotatedFileSource::new(pairs.clone(), schema.clone(), o.clone())?;
                Ok((
                    o.recipe.clone(),
                    Arc::new(source) as Arc<dyn SegmentationSource>,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Split { ids, sources })
    };
    let train = next_split(config.train)?;
    let val = next_split(config.val)?;
    let test = next_split(config.test)?;
    // Every image and annotation is read once before anything is written: a truncated file or
    // an annotation the schema does not know then fails the command up front, naming the file,
    // instead of an epoch into a run with a half-made run folder. One recipe suffices: they
    // all read the same files.
    for split in [&train, &val, &test] {
        if let Some((_, source)) = split.sources.first() {
            source.check_all()?;
        }
    }
    Ok(Dataset {
        schema,
        train,
        val,
        test,
    })
}
