//! How frames are taken from the clips: [`IngestOptions`] with its [`Exclusion`]s, and the
//! frame-size check they set.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::image_io::MAX_IMAGE_SIDE;

/// A file left out of the ingest on purpose, with the reason logged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Exclusion {
    /// File name without extension (case-sensitive, as on disk).
    pub file: String,
    pub reason: String,
}

/// How frames are taken from the clips.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestOptions {
    /// Target sampling rate: every `int(fps / frames_per_second)`-th frame is kept (at least
    /// every frame). POCOVID-Net: 3.
    pub frames_per_second: f64,
    /// At most this many frames per clip (the first ones by the rule). POCOVID-Net: 30.
    pub max_frames_per_clip: usize,
    /// Files to leave out, with why.
    pub exclude: Vec<Exclusion>,
    /// Largest accepted frame side in pixels (a decoder limit against broken headers).
    pub max_side: u32,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            frames_per_second: 3.0,
            max_frames_per_clip: 30,
            exclude: vec![Exclusion {
                file: "Pneu_Basal-pneumonia-RUQ_crop".into(),
                reason: "shows more than 95 % liver, not lung (data set README)".into(),
            }],
            max_side: MAX_IMAGE_SIDE,
        }
    }
}

impl IngestOptions {
    pub fn validate(&self) -> Result<()> {
        if !(self.frames_per_second.is_finite() && self.frames_per_second > 0.0) {
            return Err(DataError::config(
                "frames_per_second",
                format!("{} is not a positive number", self.frames_per_second),
            ));
        }
        if self.max_frames_per_clip == 0 {
            return Err(DataError::config(
                "max_frames_per_clip",
                "must be at least 1",
            ));
        }
        if self.max_side == 0 {
            return Err(DataError::config("max_side", "must be at least 1"));
        }
        Ok(())
    }

    /// The frame step for a clip of `fps` frames per second.
    pub fn frame_step(&self, fps: f64) -> usize {
        ((fps / self.frames_per_second).floor() as usize).max(1)
    }
}

pub(super) fn check_side(
    path: &Path,
    width: u32,
    height: u32,
    options: &IngestOptions,
) -> Result<()> {
    if width == 0 || height == 0 || width > options.max_side || height > options.max_side {
        return Err(DataError::Image {
            path: path.to_path_buf(),
            reason: format!(
                "frame size {width}x{height} is outside 1..={} pixels a side",
                options.max_side
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_step_follows_pocovid_rule() {
        let o = IngestOptions::default();
        // int(fps / 3), at least 1.
        assert_eq!(o.frame_step(10.0), 3);
        assert_eq!(o.frame_step(30.0), 10);
        assert_eq!(o.frame_step(113.0 / 4.0), 9);
        assert_eq!(o.frame_step(60.0), 20);
        assert_eq!(o.frame_step(2.0), 1);
    }
}
