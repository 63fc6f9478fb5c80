//! The random streams of a training run, all derived from the run seed.
//!
//! Every draw of a run comes from a ChaCha8 generator keyed by `(seed, a, b, tag)` laid out as
//! the 32-byte key, the layout of lus-data's loader streams: weight initialisation is
//! `(seed, 0, 0, "init")`, the dropout masks of training step `s` of epoch `e` are
//! `(seed, e, s, "dropout")`, and the loader's shuffling and augmentation use its own tags
//! (`"order"`, `"example"`). Distinct keys give independent streams (ChaCha is a PRF of its key),
//! and no stream carries state from one step to the next, so a resumed run draws exactly what an
//! uninterrupted one draws.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The purposes a training run draws random numbers for (besides the data loader's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Weight initialisation of the model (and of any head a task adds).
    Init,
    /// Dropout masks of one training step.
    Dropout,
    /// Free for a task's own use (e.g. a classifier's mixing or sampling), keyed like dropout.
    Task,
}

impl Stream {
    /// The ASCII of the stream's name as a little-endian word; distinct from the loader's tags.
    fn tag(self) -> u64 {
        match self {
            Self::Init => u64::from_le_bytes(*b"init\0\0\0\0"),
            Self::Dropout => u64::from_le_bytes(*b"dropout\0"),
            Self::Task => u64::from_le_bytes(*b"task\0\0\0\0"),
        }
    }
}

/// The generator of `stream` for `(seed, a, b)`.
pub fn stream_rng(seed: u64, stream: Stream, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_exact_mut(8).zip([seed, a, b, stream.tag()]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// The weight-initialisation stream of a run.
pub fn init_rng(seed: u64) -> ChaCha8Rng {
    stream_rng(seed, Stream::Init, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_distinct_and_reproducible() {
        let first = |mut r: ChaCha8Rng| r.next_u64();
        assert_eq!(first(init_rng(3)), first(init_rng(3)));
        assert_ne!(first(init_rng(3)), first(init_rng(4)));
        assert_ne!(
            first(stream_rng(3, Stream::Dropout, 0, 0)),
            first(init_rng(3))
        );
        assert_ne!(
            first(stream_rng(3, Stream::Dropout, 0, 1)),
            first(stream_rng(3, Stream::Dropout, 1, 0))
        );
        // The loader's example stream of (seed 3, epoch 0, index 0) is another key again.
        let loader = lus_data::loader::example_rng(3, 0, 0);
        assert_ne!(first(loader), first(stream_rng(3, Stream::Dropout, 0, 0)));
    }
}
