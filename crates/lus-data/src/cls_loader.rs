//! Batches of (image, class label) for the diagnostic classifier: the segmentation loader's
//! machinery ([`crate::loader::epoch_batches_plan`], [`crate::loader::prepare_parallel`],
//! [`crate::loader::Prefetcher`], [`crate::augment::prepare`]) with a label instead of a mask.
//! The same determinism holds: order from `(seed, epoch)`, augmentation from
//! `(seed, epoch, index)`, independent of threads and prefetch depth.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use image::GrayImage;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::augment::prepare;
use crate::error::{DataError, Result};
use crate::image_io::load_gray;
use crate::loader::{LoaderConfig, Prefetcher, batch_count, epoch_batches_plan, prepare_parallel};

/// A set of (image, class id) examples addressed by index.
pub trait ClassificationSource: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class id of example `index` without loading its image (for stratification and class
    /// weights).
    fn label(&self, index: usize) -> Result<usize>;
    /// Image and class id of example `index`.
    fn load(&self, index: usize) -> Result<(GrayImage, usize)>;
    /// Loads every example once (in parallel) and returns the error of the first one, in index
    /// order, that fails (see [`crate::loader::SegmentationSource::check_all`]).
    fn check_all(&self) -> Result<()> {
        match (0..self.len())
            .into_par_iter()
            .find_map_first(|i| self.load(i).err())
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Examples held in memory.
pub struct InMemoryClassSource(pub Vec<(GrayImage, usize)>);

impl ClassificationSource for InMemoryClassSource {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn label(&self, index: usize) -> Result<usize> {
        self.0
            .get(index)
            .map(|e| e.1)
            .ok_or_else(|| out_of_range(index, self.0.len()))
    }

    fn load(&self, index: usize) -> Result<(GrayImage, usize)> {
        self.0
            .get(index)
            .cloned()
            .ok_or_else(|| out_of_range(index, self.0.len()))
    }
}

/// Image files with their class ids, read on demand.
pub struct FileClassSource {
    examples: Vec<(PathBuf, usize)>,
}

impl FileClassSource {
    pub fn new(examples: Vec<(PathBuf, usize)>) -> Self {
        FileClassSource { examples }
    }
}

impl ClassificationSource for FileClassSource {
    fn len(&self) -> usize {
        self.examples.len()
    }

    fn label(&self, index: usize) -> Result<usize> {
        self.examples
            .get(index)
            .map(|e| e.1)
            .ok_or_else(|| out_of_range(index, self.examples.len()))
    }

    fn load(&self, index: usize) -> Result<(GrayImage, usize)> {
        let (path, label) = self
            .examples
            .get(index)
            .ok_or_else(|| out_of_range(index, self.examples.len()))?;
        Ok((load_gray(path)?, *label))
    }
}

/// The examples `indices` of another source (a fold's training or validation part).
pub struct ClassSubset {
    pub inner: Arc<dyn ClassificationSource>,
    pub indices: Vec<usize>,
}

impl ClassificationSource for ClassSubset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn label(&self, index: usize) -> Result<usize> {
        let i = *self
            .indices
            .get(index)
            .ok_or_else(|| out_of_range(index, self.indices.len()))?;
        self.inner.label(i)
    }

    fn load(&self, index: usize) -> Result<(GrayImage, usize)> {
        let i = *self
            .indices
            .get(index)
            .ok_or_else(|| out_of_range(index, self.indices.len()))?;
        self.inner.load(i)
    }
}

fn out_of_range(index: usize, len: usize) -> DataError {
    DataError::config(
        "example index",
        format!("{index} is out of range for {len} examples"),
    )
}

/// One batch: `images` is `N x 1 x H x W` f32, `labels` is `N` u32, `indices` the source index
/// of each row.
#[derive(Debug, Clone)]
pub struct ClsBatch {
    pub images: Tensor,
    pub labels: Tensor,
    pub indices: Vec<usize>,
}

/// Batches of classification examples, prepared ahead of the consumer.
pub struct ClassificationLoader {
    source: Arc<dyn ClassificationSource>,
    config: LoaderConfig,
    seed: u64,
    device: Device,
    num_classes: usize,
}

impl ClassificationLoader {
    /// A loader over `source` whose labels must be `< num_classes`; `seed` fixes every epoch's
    /// order and augmentation.
    pub fn new(
        source: Arc<dyn ClassificationSource>,
        config: LoaderConfig,
        seed: u64,
        device: Device,
        num_classes: usize,
    ) -> Result<Self> {
        config.validate()?;
        Ok(ClassificationLoader {
            source,
            config,
            seed,
            device,
            num_classes,
        })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    pub fn source(&self) -> &Arc<dyn ClassificationSource> {
        &self.source
    }

    /// Batches per epoch.
    pub fn len(&self) -> usize {
        batch_count(
            self.source.len(),
            self.config.batch_size,
            self.config.drop_last,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batches of epoch `epoch` (an `Err` ends it: an unreadable image, a label out of
    /// range — the error names the example).
    pub fn epoch(&self, epoch: u64) -> Prefetcher<ClsBatch> {
        self.epoch_from(epoch, 0)
    }

    /// The batches of epoch `epoch` after its first `first` (see
    /// [`crate::loader::SegmentationLoader::epoch_from`]): for a run resumed inside an epoch.
    pub fn epoch_from(&self, epoch: u64, first: usize) -> Prefetcher<ClsBatch> {
        let mut plan = epoch_batches_plan(
            self.source.len(),
            self.config.batch_size,
            self.config.shuffle,
            self.config.drop_last,
            self.seed,
            epoch,
        );
        plan.drain(..first.min(plan.len()));
        let source = Arc::clone(&self.source);
        let config = self.config.clone();
        let device = self.device.clone();
        let seed = self.seed;
        let num_classes = self.num_classes;
        let make_batch = move |indices: &[usize], stop: &AtomicBool| -> Result<Option<ClsBatch>> {
            let prepare_one = |index: usize, rng: &mut ChaCha8Rng| {
                let (image, label) = source.load(index)?;
                if label >= num_classes {
                    return Err(DataError::config(
                        format!("label of example {index}"),
                        format!("{label} is not one of the {num_classes} classes"),
                    ));
                }
                let prepared = prepare(
                    &image,
                    None,
                    config.size,
                    config.augment.as_ref(),
                    config.normalize,
                    rng,
                )?;
                Ok((prepared.image, label))
            };
            let Some(examples) = prepare_parallel(indices, seed, epoch, stop, prepare_one)? else {
                return Ok(None);
            };
            let side = config.size as usize;
            let n = examples.len();
            let mut images = Vec::with_capacity(n * side * side);
            let mut labels = Vec::with_capacity(n);
            for (image, label) in examples {
                images.extend_from_slice(&image);
                labels.push(label as u32);
            }
            Ok(Some(ClsBatch {
                images: Tensor::from_vec(images, (n, 1, side, side), &device)?,
                labels: Tensor::from_vec(labels, n, &device)?,
                indices: indices.to_vec(),
            }))
        };
        Prefetcher::start(plan, self.config.prefetch, None, make_batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_all_names_the_first_unreadable_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut examples = Vec::new();
        for i in 0..4 {
            let path = dir.path().join(format!("f{i}.png"));
            crate::image_io::save_gray_png(&GrayImage::new(4, 4), &path).unwrap();
            examples.push((path, i % 3));
        }
        assert!(FileClassSource::new(examples.clone()).check_all().is_ok());
        std::fs::write(&examples[3].0, b"").unwrap();
        std::fs::write(&examples[2].0, b"not an image").unwrap();
        let e = FileClassSource::new(examples)
            .check_all()
            .unwrap_err()
            .to_string();
        assert!(e.contains("f2.png: not a PNG or JPEG image"), "{e}");
    }

    fn source(count: usize) -> Arc<dyn ClassificationSource> {
        Arc::new(InMemoryClassSource(
            (0..count)
                .map(|i| {
                    (
                        GrayImage::from_pixel(8, 8, image::Luma([(i * 20) as u8])),
                        i % 3,
                    )
                })
                .collect(),
        ))
    }

    fn config() -> LoaderConfig {
        LoaderConfig {
            batch_size: 3,
            size: 8,
            shuffle: true,
            drop_last: false,
            prefetch: 1,
            augment: None,
            normalize: crate::augment::Normalize::None,
        }
    }

    #[test]
    fn batches_carry_images_and_labels_of_the_same_examples() {
        let loader = ClassificationLoader::new(source(7), config(), 4, Device::Cpu, 3).unwrap();
        assert_eq!(loader.len(), 3);
        let mut seen = Vec::new();
        for batch in loader.epoch(0) {
            let batch = batch.unwrap();
            let labels: Vec<u32> = batch.labels.to_vec1().unwrap();
            let images: Vec<f32> = batch.images.flatten_all().unwrap().to_vec1().unwrap();
            for (row, &index) in batch.indices.iter().enumerate() {
                assert_eq!(labels[row] as usize, index % 3);
                // Pixel value (index * 20) / 255, normalisation off.
                assert!((images[row * 64] - (index * 20) as f32 / 255.0).abs() < 1e-6);
                seen.push(index);
            }
        }
        seen.sort();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        let order = |epoch| -> Vec<usize> {
            loader
                .epoch(epoch)
                .flat_map(|b| b.unwrap().indices)
                .collect()
        };
        assert_eq!(order(1), order(1));
        assert_ne!(order(0), order(1));
    }

    #[test]
    fn a_label_out_of_range_is_an_error_naming_the_example() {
        let loader = ClassificationLoader::new(source(4), config(), 0, Device::Cpu, 2).unwrap();
        let err = loader
            .epoch(0)
            .find_map(|b| b.err())
            .expect("label 2 >= 2 classes");
        assert!(
            err.to_string().contains("is not one of the 2 classes"),
            "{err}"
        );
        let subset = ClassSubset {
            inner: source(5),
            indices: vec![4, 1],
        };
        assert_eq!(subset.label(0).unwrap(), 1);
        assert!(subset.label(2).is_err());
    }
}
