//! What the commands that apply a trained cell to new input share (`lus predict`, `lus
//! segment`, `lus eval-seg`): the cell's resolved config beside its weights, the frames of an
//! input file, the default name of an output folder.

use std::path::{Path, PathBuf};

use anyhow::bail;
use lus_data::image_io;
use lus_data::pocus::{DecodedFrame, IngestOptions, Tools, decode_video, is_still_image};

use crate::config::RESOLVED_CONFIG_FILE;

/// The cell config to read: `config` when given, else `config.resolved.toml` beside
/// `weights`; an error naming it when it is not there.
pub fn resolved_config_path(weights: &Path, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match config {
        Some(p) => p.to_path_buf(),
        None => weights
            .parent()
            .unwrap_or(Path::new("."))
            .join(RESOLVED_CONFIG_FILE),
    };
    if !path.is_file() {
        bail!(
            "{}: no config beside the weights (pass --config with the cell's {RESOLVED_CONFIG_FILE})",
            path.display()
        );
    }
    Ok(path)
}

/// The frames of `path`: a still image (PNG, JPEG) is one frame at time 0; a clip is decoded
/// by `tools` with the sampling of `options`. `tools` may be `None` for a still image only.
pub fn read_input_frames(
    path: &Path,
    options: &IngestOptions,
    tools: Option<&Tools>,
) -> anyhow::Result<Vec<DecodedFrame>> {
    if is_still_image(path) {
        return Ok(vec![DecodedFrame {
            index: 0,
            time_s: 0.0,
            image: image_io::load_gray(path)?,
        }]);
    }
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let Some(tools) = tools else {
        bail!("{}: decoding a clip needs FFmpeg", path.display());
    };
    Ok(decode_video(path, options, tools, None)?)
}

/// The stem of `path` as an output folder's default name (`input` when it has none).
pub fn input_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into())
}
