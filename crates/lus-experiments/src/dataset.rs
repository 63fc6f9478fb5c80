//! The train / validation / test splits of an experiment's data set, each with its dense and
//! its sparse masks (the two label modes of the same images).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use image::GrayImage;
use lus_data::cls_loader::{ClassificationSource, FileClassSource, InMemoryClassSource};
use lus_data::loader::{FileSource, InMemorySource, SegmentationSource};
use lus_data::manifest::{MANIFEST_FILE, ManifestRow, read_manifest, resolve_inside};
use lus_data::raster::{LabelMode, RasterOptions, rasterize};
use lus_data::scanner::Scanner;
use lus_data::{Diagnosis, LabelSchema, Mask};
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
    pub probes: Vec<String>,
    /// The clip of each example (clip-level metrics average its frames' probabilities); a
    /// scanner sample or a still image is a clip of its own.
    pub clips: Vec<String>,
    /// Class names in class-id order.
    pub class_names: Vec<String>,
    /// What the pool is, for the report ("240 scanner images", "2287 POCUS frames of ...").
    pub description: String,
}

/// Diagnosis names in class-id order.
pub fn diagnosis_names() -> Vec<String> {
    Diagnosis::ALL
        .iter()
        .map(|d| d.as_str().to_string())
        .collect()
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
                    pool.probes.push(s.probe.as_str().to_string());
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
                let mut pool =
                    Self::empty(count, format!("{count} images of {}", folder.display()));
                for &i in &manifest.order[start..start + count] {
                    let row = &manifest.rows[i];
                    let image = manifest.resolve(&row.image)?;
                    files.push((image, row.diagnosis.index()));
                    pool.ids.push(row.id.clone());
                    pool.clips.push(row.id.clone());
                    pool.groups.push(row.id.clone());
                    pool.labels.push(row.diagnosis.index());
                    pool.probes.push(row.probe.as_str().to_string());
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

/// One split: the same examples under both label modes.
pub struct Split {
    /// Example identifiers (scanner sample index or manifest id), in index order.
    pub ids: Vec<String>,
    pub dense: Arc<dyn SegmentationSource>,
    pub sparse: Arc<dyn SegmentationSource>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn labels(&self, mode: LabelMode) -> Arc<dyn SegmentationSource> {
        match mode {
            LabelMode::Dense => self.dense.clone(),
            LabelMode::Sparse => self.sparse.clone(),
        }
    }

    /// Image, dense mask and sparse mask of example `index`.
    pub fn example(&self, index: usize) -> anyhow::Result<(GrayImage, Mask, Mask)> {
        let (image, dense) = self.dense.load(index)?;
        let (_, sparse) = self.sparse.load(index)?;
        Ok((image, dense, sparse))
    }
}

pub struct Dataset {
    pub schema: LabelSchema,
    pub train: Split,
    pub val: Split,
    pub test: Split,
}

impl Dataset {
    /// Draws (scanner) or reads the index of (folder) the data set of `config`.
    pub fn load(config: &DatasetConfig) -> anyhow::Result<Self> {
        match config.source {
            DataSource::Scanner => scanner_dataset(config),
            DataSource::Folder => {
                let folder = config
                    .folder
                    .as_deref()
                    .context("dataset.folder: required with source = \"folder\"")?;
                folder_dataset(config, folder)
            }
        }
    }
}

fn scanner_dataset(config: &DatasetConfig) -> anyhow::Result<Dataset> {
    let schema = LabelSchema::default();
    let scanner = Scanner::new(config.scanner.clone(), config.seed)?;
    let dense = RasterOptions {
        mode: LabelMode::Dense,
        ..RasterOptions::default()
    };
    let sparse = RasterOptions {
        mode: LabelMode::Sparse,
        sparse_width: config.sparse_width,
        ..RasterOptions::default()
    };
    let mut start = 0u64;
    let mut next_split = |count: usize| -> anyhow::Result<Split> {
        let range = start..start + count as u64;
        start = range.end;
        let samples = scanner.generate(range);
        let examples: Vec<(String, GrayImage, Mask, Mask)> = samples
            .into_par_iter()
            .map(|s| -> anyhow::Result<_> {
                let d = rasterize(&s.annotation, &schema, &dense)?;
                let sp = rasterize(&s.annotation, &schema, &sparse)?;
                Ok((format!("scanner-{}", s.index), s.image, d, sp))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut ids = Vec::with_capacity(count);
        let mut dense_pairs = Vec::with_capacity(count);
        let mut sparse_pairs = Vec::with_capacity(count);
        for (id, image, d, sp) in examples {
            ids.push(id);
            dense_pairs.push((image.clone(), d));
            sparse_pairs.push((image, sp));
        }
        Ok(Split {
            ids,
            dense: Arc::new(InMemorySource(dense_pairs)),
            sparse: Arc::new(InMemorySource(sparse_pairs)),
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

fn folder_dataset(config: &DatasetConfig, folder: &Path) -> anyhow::Result<Dataset> {
    let schema = LabelSchema::default();
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
        let mut dense = Vec::with_capacity(count);
        let mut sparse = Vec::with_capacity(count);
        for &i in picked {
            let row = &manifest.rows[i];
            let image = manifest.resolve(&row.image)?;
            ids.push(row.id.clone());
            dense.push((image.clone(), manifest.resolve(&row.dense_mask)?));
            sparse.push((image, manifest.resolve(&row.sparse_mask)?));
        }
        Ok(Split {
            ids,
            dense: Arc::new(FileSource::new(dense, schema.clone(), None)),
            sparse: Arc::new(FileSource::new(sparse, schema.clone(), None)),
        })
    };
    let train = next_split(config.train)?;
    let val = next_split(config.val)?;
    let test = next_split(config.test)?;
    // Every image and mask is decoded once before anything is written: a truncated file or a
    // mask value outside the schema then fails the command up front, naming the file, instead
    // of an epoch into a run with a half-made run folder.
    for split in [&train, &val, &test] {
        split.dense.check_all()?;
        split.sparse.check_all()?;
    }
    Ok(Dataset {
        schema,
        train,
        val,
        test,
    })
}
