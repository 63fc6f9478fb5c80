//! Batches of prepared examples as candle tensors, produced ahead of the consumer.
//!
//! The machinery is split so that another loader (a classifier's image + class label) reuses it
//! without copying: [`epoch_batches_plan`] fixes an epoch's order and batch boundaries,
//! [`example_rng`] gives each example its own random stream, [`prepare_parallel`] runs a
//! per-example closure over a batch with rayon, and [`Prefetcher`] runs a per-batch closure
//! on a producer thread behind a bounded channel. [`SegmentationLoader`] is those four plus
//! [`crate::augment::prepare`] and a collate step.
//!
//! Determinism: the order of epoch `e` comes from `(seed, e)` only; the augmentation of an
//! example from `(seed, e, source index)` only. Neither depends on the rayon thread count, the
//! prefetch depth or which thread prepared what.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use image::GrayImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{AugmentConfig, MAX_OUTPUT_SIDE, Normalize, prepare};
use crate::error::{DataError, Result};
use crate::image_io::load_gray;
use crate::mask::Mask;
use crate::schema::LabelSchema;

/// Largest prefetch depth accepted by [`LoaderConfig::validate`]: each batch in flight holds its
/// tensors in memory, and more than a handful never helps a consumer that is slower anyway.
pub const MAX_PREFETCH: usize = 64;

/// A set of (image, class-id mask) pairs addressed by index.
pub trait SegmentationSource: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether the source has no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Loads example `index` (< `len()`); the mask has the image's dimensions.
    fn load(&self, index: usize) -> Result<(GrayImage, Mask)>;
    /// Loads every example once (in parallel) and returns the error of the first one, in index
    /// order, that fails: a command calls this before it writes anything, so that a broken file
    /// deep in a data folder fails the command up front instead of an epoch into a run.
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

/// Examples held in memory (synthetic data, tests).
pub struct InMemorySource(pub Vec<(GrayImage, Mask)>);

impl SegmentationSource for InMemorySource {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn load(&self, index: usize) -> Result<(GrayImage, Mask)> {
        let (image, mask) = self.0.get(index).ok_or_else(|| {
            DataError::config(
                "example index",
                format!(
                    "{index} is out of range for {} in-memory examples",
                    self.0.len()
                ),
            )
        })?;
        Ok((image.clone(), mask.clone()))
    }
}

/// Several sources one after the other: example `i` of the whole is example `i - offset` of
/// the part it falls in (a self-training set: pseudo-labelled real frames, then scanner frames).
pub struct ConcatSource(pub Vec<Arc<dyn SegmentationSource>>);

impl SegmentationSource for ConcatSource {
    fn len(&self) -> usize {
        self.0.iter().map(|part| part.len()).sum()
    }

    fn load(&self, index: usize) -> Result<(GrayImage, Mask)> {
        let mut local = index;
        for part in &self.0 {
            if local < part.len() {
                return part.load(local);
            }
            local -= part.len();
        }
        Err(DataError::config(
            "example index",
            format!("{index} is out of range for {} examples", self.len()),
        ))
    }
}

/// The examples `indices` of another source, in that order.
pub struct SubsetSource {
    pub inner: Arc<dyn SegmentationSource>,
    pub indices: Vec<usize>,
}

impl SegmentationSource for SubsetSource {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn load(&self, index: usize) -> Result<(GrayImage, Mask)> {
        let &inner = self.indices.get(index).ok_or_else(|| {
            DataError::config(
                "example index",
                format!(
                    "{index} is out of range for a subset of {} examples",
                    self.indices.len()
                ),
            )
        })?;
        self.inner.load(inner)
    }
}

/// Image and mask files, read on demand (an epoch never holds more than the batches in flight).
pub struct FileSource {
    pairs: Vec<(PathBuf, PathBuf)>,
    schema: LabelSchema,
    ignore_id: Option<u8>,
}

impl FileSource {
    /// `pairs` are (image, mask) paths; masks are checked against `schema` (and `ignore_id`) as
    /// they are read.
    pub fn new(pairs: Vec<(PathBuf, PathBuf)>, schema: LabelSchema, ignore_id: Option<u8>) -> Self {
        FileSource {
            pairs,
            schema,
            ignore_id,
        }
    }

    /// The (image, mask) paths, in index order.
    pub fn pairs(&self) -> &[(PathBuf, PathBuf)] {
        &self.pairs
    }
}

impl SegmentationSource for FileSource {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn load(&self, index: usize) -> Result<(GrayImage, Mask)> {
        let (image_path, mask_path) = self.pairs.get(index).ok_or_else(|| {
            DataError::config(
                "example index",
                format!("{index} is out of range for {} files", self.pairs.len()),
            )
        })?;
        let image = load_gray(image_path)?;
        let mask = Mask::load_png(mask_path, &self.schema, self.ignore_id)?;
        if (mask.width(), mask.height()) != image.dimensions() {
            return Err(DataError::Image {
                path: mask_path.clone(),
                reason: format!(
                    "mask is {}x{} but its image {} is {}x{}",
                    mask.width(),
                    mask.height(),
                    image_path.display(),
                    image.width(),
                    image.height()
                ),
            });
        }
        Ok((image, mask))
    }
}

/// Images read on demand, each with its mask drawn from its annotation file by a label recipe
/// (a `lus synth` folder under any recipe, not only the two it stored masks for). The
/// annotation is read and rasterized at every load: a few hundred microseconds beside the
/// image decode, and no mask of a recipe is ever stale.
pub struct AnnotatedFileSource {
    /// (image, annotation) paths.
    pairs: Vec<(PathBuf, PathBuf)>,
    schema: LabelSchema,
    options: crate::raster::RasterOptions,
}

impl AnnotatedFileSource {
    /// `pairs` are (image, annotation JSON) paths; masks are drawn with `options` under
    /// `schema`. The options are checked here.
    pub fn new(
        pairs: Vec<(PathBuf, PathBuf)>,
        schema: LabelSchema,
        options: crate::raster::RasterOptions,
    ) -> Result<Self> {
        options.validate(&schema)?;
        Ok(AnnotatedFileSource {
            pairs,
            schema,
            options,
        })
    }
}

impl SegmentationSource for AnnotatedFileSource {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn load(&self, index: usize) -> Result<(GrayImage, Mask)> {
        let (image_path, annotation_path) = self.pairs.get(index).ok_or_else(|| {
            DataError::config(
                "example index",
                format!("{index} is out of range for {} files", self.pairs.len()),
            )
        })?;
        let image = load_gray(image_path)?;
        let annotation = crate::labelme::load_annotation(
            annotation_path,
            &self.schema,
            &crate::labelme::LabelmeOptions::default(),
        )?;
        if (annotation.width, annotation.height) != image.dimensions() {
            return Err(DataError::Annotation {
                path: annotation_path.clone(),
                reason: format!(
                    "annotation is {}x{} but its image {} is {}x{}",
                    annotation.width,
                    annotation.height,
                    image_path.display(),
                    image.width(),
                    image.height()
                ),
            });
        }
        let mask = crate::raster::rasterize(&annotation, &self.schema, &self.options).map_err(
            |e| match e {
                DataError::Shape {
                    index,
                    label,
                    reason,
                    ..
                } => DataError::Shape {
                    path: annotation_path.clone(),
                    index,
                    label,
                    reason,
                },
                DataError::Annotation { reason, .. } => DataError::Annotation {
                    path: annotation_path.clone(),
                    reason,
                },
                other => other,
            },
        )?;
        Ok((image, mask))
    }
}

/// How a segmentation loader batches and prepares examples.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    /// Examples per batch.
    pub batch_size: usize,
    /// Output side: every example is resampled to `size x size`.
    pub size: u32,
    /// Shuffle the order every epoch (off for evaluation).
    pub shuffle: bool,
    /// Drop a last batch smaller than `batch_size` (keeps batch statistics comparable).
    pub drop_last: bool,
    /// Batches prepared ahead on a producer thread; 0 prepares synchronously in the consumer's
    /// thread.
    pub prefetch: usize,
    /// Random augmentation; `None` (the default, and what an omitted TOML table gives) for
    /// evaluation. An empty `[augment]` table gives the default ranges.
    pub augment: Option<AugmentConfig>,
    /// Intensity normalisation.
    pub normalize: Normalize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 8,
            size: 256,
            shuffle: true,
            drop_last: false,
            prefetch: 2,
            augment: None,
            normalize: Normalize::PerImage,
        }
    }
}

impl LoaderConfig {
    /// Checks batch size, output size, prefetch depth, augmentation and normalisation.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(DataError::config("loader.batch_size", "must be at least 1"));
        }
        if self.size == 0 || self.size > MAX_OUTPUT_SIDE {
            return Err(DataError::config(
                "loader.size",
                format!("{} is not in [1, {MAX_OUTPUT_SIDE}]", self.size),
            ));
        }
        if self.prefetch > MAX_PREFETCH {
            return Err(DataError::config(
                "loader.prefetch",
                format!(
                    "{} is more than {MAX_PREFETCH} batches in flight",
                    self.prefetch
                ),
            ));
        }
        if let Some(augment) = &self.augment {
            augment.validate()?;
        }
        self.normalize.validate()
    }
}

/// One batch: `images` is `N x 1 x H x W` f32, `masks` is `N x H x W` u32 (the target dtype of
/// candle's cross-entropy), `indices` the source index of each row.
#[derive(Debug, Clone)]
pub struct SegBatch {
    pub images: Tensor,
    pub masks: Tensor,
    pub indices: Vec<usize>,
}

/// Batches of segmentation examples, prepared ahead of the consumer.
pub struct SegmentationLoader {
    source: Arc<dyn SegmentationSource>,
    config: LoaderConfig,
    seed: u64,
    device: Device,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl SegmentationLoader {
    /// A loader over `source`; `seed` fixes every epoch's order and augmentation.
    pub fn new(
        source: Arc<dyn SegmentationSource>,
        config: LoaderConfig,
        seed: u64,
        device: Device,
    ) -> Result<Self> {
        config.validate()?;
        Ok(SegmentationLoader {
            source,
            config,
            seed,
            device,
            pool: None,
        })
    }

    /// Prepares the examples of a batch on `pool` instead of rayon's global pool (to bound the
    /// CPU share of data preparation, or to test thread-count independence).
    pub fn with_thread_pool(mut self, pool: Arc<rayon::ThreadPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches per epoch.
    pub fn len(&self) -> usize {
        batch_count(
            self.source.len(),
            self.config.batch_size,
            self.config.drop_last,
        )
    }

    /// Whether an epoch yields no batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batches of epoch `epoch`. With `prefetch > 0` a producer thread starts preparing
    /// immediately; dropping the iterator stops it.
    pub fn epoch(&self, epoch: u64) -> EpochBatches {
        self.epoch_from(epoch, 0)
    }

    /// The batches of epoch `epoch` from batch `first` on (counted from 0): the batches
    /// [`SegmentationLoader::epoch`] yields after its first `first`, identical to them (order
    /// and augmentation are keyed by seed, epoch and example), without preparing the skipped
    /// ones. A run resumed inside an epoch continues with these.
    pub fn epoch_from(&self, epoch: u64, first: usize) -> EpochBatches {
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
        let make_batch = move |indices: &[usize], stop: &AtomicBool| -> Result<Option<SegBatch>> {
            let prepare_one = |index: usize, rng: &mut ChaCha8Rng| {
                let (image, mask) = source.load(index)?;
                prepare(
                    &image,
                    Some(&mask),
                    config.size,
                    config.augment.as_ref(),
                    config.normalize,
                    rng,
                )
                .map_err(|e| name_example(e, index))
            };
            let Some(examples) = prepare_parallel(indices, seed, epoch, stop, prepare_one)? else {
                return Ok(None);
            };
            collate_segmentation(examples, indices, config.size, &device).map(Some)
        };
        EpochBatches {
            inner: Prefetcher::start(plan, self.config.prefetch, self.pool.clone(), make_batch),
        }
    }
}

/// Points an error from [`prepare`] (which knows no file) at the source example it came from.
fn name_example(error: DataError, index: usize) -> DataError {
    match error {
        DataError::Config { what, reason } => DataError::Config {
            what: format!("{what} of source example {index}"),
            reason,
        },
        other => other,
    }
}

/// Stacks prepared examples into one contiguous buffer per tensor and makes each tensor with a
/// single `Tensor::from_vec` on `device`.
///
/// Measured against candle-datasets' `Batcher` (per-example tensors, then `Tensor::stack`):
/// collating 8 examples of 128x128 took 0.041-0.055 ms this way versus 0.098-0.142 ms through
/// `Batcher::new2` (CPU, opt-level 3, a loaded 2-core machine; `cargo bench -p lus-benches
/// --bench loader -- collate` measures both), because stacking copies every example twice. Both are small next to
/// preparing the examples (~0.5-0.7 ms each), so the faster, copy-once path is kept.
fn collate_segmentation(
    examples: Vec<crate::augment::Prepared>,
    indices: &[usize],
    size: u32,
    device: &Device,
) -> Result<SegBatch> {
    let side = size as usize;
    let n = examples.len();
    let mut images = Vec::with_capacity(n * side * side);
    let mut masks = Vec::with_capacity(n * side * side);
    for example in examples {
        images.extend_from_slice(&example.image);
        let mask = example
            .mask
            .expect("segmentation examples are always prepared with their mask");
        masks.extend(mask.iter().map(|&v| u32::from(v)));
    }
    Ok(SegBatch {
        images: Tensor::from_vec(images, (n, 1, side, side), device)?,
        masks: Tensor::from_vec(masks, (n, side, side), device)?,
        indices: indices.to_vec(),
    })
}

/// The batches of one epoch of a [`SegmentationLoader`]. Ends after the last batch, or after
/// the first `Err` (an example that could not be loaded or prepared; the error names the file).
pub struct EpochBatches {
    inner: Prefetcher<SegBatch>,
}

impl Iterator for EpochBatches {
    type Item = Result<SegBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------------
// Reusable machinery: ordering, per-example randomness, parallel preparation, prefetch.

/// Domain tags that keep the order stream and the example streams of one seed apart.
const ORDER_STREAM: u64 = 0x6f72646572; // "order" in ASCII
const EXAMPLE_STREAM: u64 = 0x006578616d706c65; // "example" in ASCII

/// A ChaCha8 generator keyed by `(seed, epoch, index, tag)` laid out as the 32-byte key: distinct
/// tuples give independent streams (ChaCha is a PRF of its key), with no hashing that could
/// collide.
fn keyed_rng(seed: u64, epoch: u64, index: u64, tag: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_exact_mut(8).zip([seed, epoch, index, tag]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// The random stream of source example `index` in epoch `epoch`: a function of these three
/// numbers only, so an example's augmentation is the same whichever thread prepares it, and
/// changes from epoch to epoch.
pub fn example_rng(seed: u64, epoch: u64, index: usize) -> ChaCha8Rng {
    keyed_rng(seed, epoch, index as u64, EXAMPLE_STREAM)
}

/// An unbiased draw in `0..bound` (Lemire's multiply-and-reject), spelled out so the epoch order
/// depends only on ChaCha8's output and never on a rand version's sampling algorithm.
fn below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    debug_assert!(bound > 0);
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let product = u128::from(rng.next_u64()) * u128::from(bound);
        if (product as u64) >= threshold {
            return (product >> 64) as u64;
        }
    }
}

/// The source indices of epoch `epoch` in visiting order: `0..len`, Fisher-Yates shuffled by the
/// `(seed, epoch)` stream when `shuffle` is set.
pub fn epoch_order(len: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = keyed_rng(seed, epoch, 0, ORDER_STREAM);
        for i in (1..len).rev() {
            let j = below(&mut rng, i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// Number of batches of `len` examples.
pub fn batch_count(len: usize, batch_size: usize, drop_last: bool) -> usize {
    if batch_size == 0 {
        return 0;
    }
    if drop_last {
        len / batch_size
    } else {
        len.div_ceil(batch_size)
    }
}

/// The source indices of each batch of epoch `epoch`.
pub fn epoch_batches_plan(
    len: usize,
    batch_size: usize,
    shuffle: bool,
    drop_last: bool,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let order = epoch_order(len, shuffle, seed, epoch);
    let count = batch_count(len, batch_size, drop_last);
    order
        .chunks(batch_size.max(1))
        .take(count)
        .map(<[usize]>::to_vec)
        .collect()
}

/// Runs `prepare_one(index, rng)` for every index of a batch in parallel (rayon), each with its
/// own [`example_rng`], and returns the results in batch order. The first failing example (in
/// batch order, so the reported error does not depend on scheduling) is the error. Returns
/// `Ok(None)` if `stop` was raised meanwhile (the consumer went away).
pub fn prepare_parallel<E, F>(
    indices: &[usize],
    seed: u64,
    epoch: u64,
    stop: &AtomicBool,
    prepare_one: F,
) -> Result<Option<Vec<E>>>
where
    E: Send,
    F: Fn(usize, &mut ChaCha8Rng) -> Result<E> + Sync,
{
    let results: Vec<Option<Result<E>>> = indices
        .par_iter()
        .map(|&index| {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let mut rng = example_rng(seed, epoch, index);
            Some(prepare_one(index, &mut rng))
        })
        .collect();
    if stop.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Some(Ok(example)) => out.push(example),
            Some(Err(e)) => return Err(e),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// Makes one batch from its source indices; `Ok(None)` means "stopped, produce nothing".
type MakeBatch<B> = dyn Fn(&[usize], &AtomicBool) -> Result<Option<B>> + Send + Sync;

/// Runs a batch closure over an epoch plan, either synchronously (depth 0) or on a producer
/// thread that keeps up to `depth` finished batches in a bounded channel. Yields batches in plan
/// order; after an `Err` it yields nothing more. Dropping it raises the stop flag, disconnects the
/// channel and joins the producer, so no thread outlives the iterator.
pub struct Prefetcher<B: Send + 'static> {
    mode: Mode<B>,
    remaining: usize,
    finished: bool,
}

enum Mode<B: Send + 'static> {
    Synchronous {
        plan: std::vec::IntoIter<Vec<usize>>,
        make_batch: Arc<MakeBatch<B>>,
        pool: Option<Arc<rayon::ThreadPool>>,
        stop: AtomicBool,
    },
    Background {
        receiver: Option<Receiver<Result<B>>>,
        stop: Arc<AtomicBool>,
        producer: Option<JoinHandle<()>>,
    },
}

impl<B: Send + 'static> Prefetcher<B> {
    /// Starts producing `plan`'s batches with `make_batch`, on `pool` if given (else rayon's
    /// global pool).
    pub fn start(
        plan: Vec<Vec<usize>>,
        depth: usize,
        pool: Option<Arc<rayon::ThreadPool>>,
        make_batch: impl Fn(&[usize], &AtomicBool) -> Result<Option<B>> + Send + Sync + 'static,
    ) -> Self {
        let remaining = plan.len();
        let make_batch: Arc<MakeBatch<B>> = Arc::new(make_batch);
        if depth == 0 || plan.is_empty() {
            return Prefetcher {
                mode: Mode::Synchronous {
                    plan: plan.into_iter(),
                    make_batch,
                    pool,
                    stop: AtomicBool::new(false),
                },
                remaining,
                finished: false,
            };
        }
        let (sender, receiver) = mpsc::sync_channel(depth);
        let stop = Arc::new(AtomicBool::new(false));
        let producer_stop = Arc::clone(&stop);
        let producer = std::thread::Builder::new()
            .name("lus-loader".into())
            .spawn(move || {
                let run = || produce(plan, &*make_batch, &sender, &producer_stop);
                match pool {
                    Some(pool) => pool.install(run),
                    None => run(),
                }
            })
            .expect("the OS refused to start the loader's producer thread");
        Prefetcher {
            mode: Mode::Background {
                receiver: Some(receiver),
                stop,
                producer: Some(producer),
            },
            remaining,
            finished: false,
        }
    }
}

/// The producer loop: one batch at a time, blocking on the bounded channel when the consumer is
/// `depth` batches behind. Returns when the plan is done, after sending an error, or as soon as
/// the consumer is gone (stop flag raised or channel disconnected).
fn produce<B>(
    plan: Vec<Vec<usize>>,
    make_batch: &MakeBatch<B>,
    sender: &SyncSender<Result<B>>,
    stop: &AtomicBool,
) {
    for indices in plan {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let item = match make_batch(&indices, stop) {
            Ok(Some(batch)) => Ok(batch),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let is_err = item.is_err();
        // `send` blocks while `depth` batches wait unread, and fails once the consumer has
        // dropped the receiver (which `Prefetcher::drop` does before joining this thread).
        if sender.send(item).is_err() || is_err {
            return;
        }
    }
}

impl<B: Send + 'static> Iterator for Prefetcher<B> {
    type Item = Result<B>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let item = match &mut self.mode {
            Mode::Synchronous {
                plan,
                make_batch,
                pool,
                stop,
            } => {
                let indices = plan.next()?;
                let make = || make_batch(&indices, stop);
                let result = match pool {
                    Some(pool) => pool.install(make),
                    None => make(),
                };
                // The stop flag is never raised in synchronous mode, so `None` cannot happen;
                // treat it as the end of the epoch all the same.
                result.transpose()
            }
            Mode::Background {
                receiver, producer, ..
            } => {
                let received = receiver.as_ref().and_then(|r| r.recv().ok());
                if received.is_none() {
                    // The producer is done. If it panicked (a bug, not bad data), surface the
                    // panic here rather than ending the epoch silently short.
                    if let Some(handle) = producer.take()
                        && let Err(panic) = handle.join()
                    {
                        std::panic::resume_unwind(panic);
                    }
                }
                received
            }
        };
        match &item {
            Some(Ok(_)) => self.remaining = self.remaining.saturating_sub(1),
            Some(Err(_)) | None => {
                self.finished = true;
                self.remaining = 0;
            }
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // An error can end the epoch early, so only the upper bound is certain.
        (0, Some(self.remaining))
    }
}

impl<B: Send + 'static> Drop for Prefetcher<B> {
    fn drop(&mut self) {
        if let Mode::Background {
            receiver,
            stop,
            producer,
        } = &mut self.mode
        {
            stop.store(true, Ordering::Relaxed);
            // Disconnect first so a producer blocked on a full channel wakes up, then wait for
            // it: at most the example it is preparing right now finishes.
            drop(receiver.take());
            if let Some(handle) = producer.take() {
                // A panic in the producer is not re-raised while dropping (that would abort
                // if we are already unwinding); the epoch is being abandoned anyway.
                let _ = handle.join();
            }
        }
    }
}
