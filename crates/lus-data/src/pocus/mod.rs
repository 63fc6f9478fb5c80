//! The real POCUS lung-ultrasound data (Born et al., POCOVID-Net): ingest of its clips and
//! images into grayscale frames with a manifest, and the reading of that manifest.
//!
//! # Source layout (the public `covid19_ultrasound` data folder)
//! `videos/{convex,linear}/*.{mp4,mov,avi,mpeg,gif,...}`, `images/{convex,linear}/*.{jpg,png}`
//! and `metadata.csv` (one row per file: `filename` without extension, `label`, `media_type`,
//! `probe`, `patient_id` (may be empty), `fps`, `license`, ...). The class is the file-name
//! prefix ([`crate::Diagnosis::from_pocus_file_name`]). A sub-folder named `label_uncertain` holds clips
//! whose label is uncertain; they are excluded, as is every file named in
//! [`IngestOptions::exclude`] (by default the clip that shows liver, not lung).
//!
//! # Frames
//! Clips are decoded by the `ffmpeg` program (every container the data set uses; `ffprobe`
//! reads the stream's size, sample aspect ratio and frame rate). Frames are sampled by the
//! POCOVID-Net rule: every `int(fps / frames_per_second)`-th frame from the first, at most
//! `max_frames_per_clip` per clip. A clip with non-square pixels (sample aspect ratio other
//! than 1) is stretched horizontally to square pixels so that anatomy keeps its shape; every
//! other frame keeps its stored resolution. Frames are converted to 8-bit grayscale (BT.601
//! luma, ffmpeg's `gray`) and written as PNG. A still image is a clip of one frame.
//!
//! # Output layout
//! | path | |
//! |---|---|
//! | `frames/<clip>/frame_NNNNN.png` | frame `NNNNN` (index in the decoded stream) of one clip |
//! | `frames/<clip>/frames.csv` | that clip's manifest rows; written last, so its presence marks the clip done (the clip folder is staged and renamed whole) |
//! | `manifest.csv` | every frame of every ingested clip ([`FrameRow`]), sorted by clip then frame |
//! | `ingest-log.csv` | every source file with its outcome (ingested, done before, excluded, failed) and the reason |
//! | `ingest.json` | the [`IngestOptions`] used; a rerun with other options into the same folder is refused |
//!
//! A rerun skips the clips whose folder is complete, retries failed ones and rewrites the two
//! tables, so an interrupted ingest resumes where it stopped.

mod aspect;
mod ingest;
mod inventory;
mod manifest;
mod metadata;
mod options;
mod taxonomy;
mod tools;

pub use aspect::{AspectMode, fit_square, square_resized};
pub use ingest::{
    FRAMES_DIR, INGEST_LOG, INGEST_SETTINGS, IngestReport, Outcome, POCUS_MANIFEST, ingest,
};
pub use inventory::{Inventory, SourceFile, inventory, is_still_image, is_video};
pub use manifest::{FrameRow, count_by_class_and_probe, read_frame_rows};
pub use metadata::{MetadataRow, read_metadata};
pub use options::{Exclusion, IngestOptions};
pub use taxonomy::Media;
pub use tools::{
    DecodedFrame, StreamInfo, Tools, decode_video, parse_probe_json, probe_stream,
    showinfo_pts_time,
};
