//! The external programs: finding `ffmpeg` and `ffprobe` ([`Tools`]), reading a clip's stream
//! with ffprobe ([`StreamInfo`], [`probe_stream`]) and decoding its sampled frames with ffmpeg
//! ([`decode_video`]).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use image::GrayImage;
use serde::Deserialize;

use super::options::{IngestOptions, check_side};
use crate::error::{DataError, Result};

/// The external programs the ingest runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
}

impl Tools {
    /// `ffmpeg` and `ffprobe` from `LUS_FFMPEG` / `LUS_FFPROBE` or the `PATH`, checked to run.
    pub fn find() -> Result<Self> {
        let pick = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let tools = Tools {
            ffmpeg: pick("LUS_FFMPEG", "ffmpeg"),
            ffprobe: pick("LUS_FFPROBE", "ffprobe"),
        };
        for program in [&tools.ffmpeg, &tools.ffprobe] {
            let ok = Command::new(program)
                .arg("-version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(DataError::Tool {
                    program: program.display().to_string(),
                    reason: "not found or does not run; POCUS clips are decoded with FFmpeg: \
                             install it (Debian/Ubuntu: `apt-get install ffmpeg`, macOS: \
                             `brew install ffmpeg`) or point LUS_FFMPEG / LUS_FFPROBE at the \
                             programs"
                        .into(),
                });
            }
        }
        Ok(tools)
    }
}

/// The video stream as ffprobe reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub width: u32,
    pub height: u32,
    /// Sample (pixel) aspect ratio, `num:den`; `1:1` when unstated.
    pub sample_aspect: (u32, u32),
    /// Frames per second (average rate, else the base rate), when the stream states one.
    pub fps: Option<f64>,
}

impl StreamInfo {
    /// Width and height of the frames with square pixels: the width stretched by the sample
    /// aspect ratio (rounded to a whole pixel), the height kept.
    pub fn square_pixel_size(&self) -> (u32, u32) {
        let (num, den) = self.sample_aspect;
        if num == den || num == 0 || den == 0 {
            (self.width, self.height)
        } else {
            let width = (f64::from(self.width) * f64::from(num) / f64::from(den)).round() as u32;
            (width.max(1), self.height)
        }
    }
}

fn parse_ratio(text: &str, sep: char) -> Option<(u32, u32)> {
    let (a, b) = text.split_once(sep)?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Parses ffprobe's JSON (`-show_entries stream=width,height,sample_aspect_ratio,
/// avg_frame_rate,r_frame_rate -of json`).
pub fn parse_probe_json(json: &str) -> std::result::Result<StreamInfo, String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        streams: Vec<Stream>,
    }
    #[derive(Deserialize)]
    struct Stream {
        width: Option<u32>,
        height: Option<u32>,
        sample_aspect_ratio: Option<String>,
        avg_frame_rate: Option<String>,
        r_frame_rate: Option<String>,
    }
    let probe: Probe =
        serde_json::from_str(json).map_err(|e| format!("unreadable ffprobe output: {e}"))?;
    let stream = probe
        .streams
        .into_iter()
        .next()
        .ok_or_else(|| "no video stream".to_string())?;
    let (Some(width), Some(height)) = (stream.width, stream.height) else {
        return Err("the video stream has no frame size".into());
    };
    let rate = |r: &Option<String>| {
        r.as_deref()
            .and_then(|t| parse_ratio(t, '/'))
            .filter(|&(n, d)| n > 0 && d > 0)
            .map(|(n, d)| f64::from(n) / f64::from(d))
    };
    let sample_aspect = stream
        .sample_aspect_ratio
        .as_deref()
        .and_then(|t| parse_ratio(t, ':'))
        .filter(|&(n, d)| n > 0 && d > 0)
        .unwrap_or((1, 1));
    Ok(StreamInfo {
        width,
        height,
        sample_aspect,
        fps: rate(&stream.avg_frame_rate).or_else(|| rate(&stream.r_frame_rate)),
    })
}

/// Runs ffprobe on a clip.
pub fn probe_stream(path: &Path, tools: &Tools) -> Result<StreamInfo> {
    let output = Command::new(&tools.ffprobe)
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .arg("stream=width,height,sample_aspect_ratio,avg_frame_rate,r_frame_rate")
        .args(["-of", "json"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DataError::Tool {
            program: tools.ffprobe.display().to_string(),
            reason: e.to_string(),
        })?;
    let fail = |reason: String| DataError::Image {
        path: path.to_path_buf(),
        reason,
    };
    if !output.status.success() {
        return Err(fail(format!(
            "ffprobe cannot read it: {}",
            last_lines(&String::from_utf8_lossy(&output.stderr), 3)
        )));
    }
    parse_probe_json(&String::from_utf8_lossy(&output.stdout)).map_err(fail)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    if tail.is_empty() {
        "(no message)".into()
    } else {
        tail.join(" | ")
    }
}

/// One sampled frame of a clip, decoded.
#[derive(Debug, Clone)]
pub struct DecodedFrame {
    /// Index of the frame in the decoded stream.
    pub index: usize,
    /// Presentation time in seconds from the first kept frame.
    pub time_s: f64,
    /// Grayscale, square pixels.
    pub image: GrayImage,
}

/// Decodes the frames of the clip at `path` that the sampling rule of `options` keeps (every
/// `int(fps / frames_per_second)`-th, at most `max_frames_per_clip`), as grayscale with square
/// pixels. `fallback_fps` is used when the stream states no frame rate.
pub fn decode_video(
    path: &Path,
    options: &IngestOptions,
    tools: &Tools,
    fallback_fps: Option<f64>,
) -> Result<Vec<DecodedFrame>> {
    options.validate()?;
    let info = probe_stream(path, tools)?;
    check_side(path, info.width, info.height, options)?;
    let fps = info.fps.or(fallback_fps).ok_or_else(|| DataError::Image {
        path: path.to_path_buf(),
        reason: "the stream states no frame rate and none is known for it".into(),
    })?;
    let step = options.frame_step(fps);
    let (width, height) = info.square_pixel_size();
    check_side(path, width, height, options)?;
    // `select` keeps frames 0, step, 2 step, ... of the decoded stream (numbered `n` from 0);
    // `showinfo` then logs each kept frame's presentation time, read back from stderr.
    let mut filters = format!("select='not(mod(n\\,{step}))'");
    if (width, height) != (info.width, info.height) {
        filters.push_str(&format!(",scale={width}:{height}:flags=bicubic,setsar=1"));
    }
    filters.push_str(",format=gray,showinfo");
    let mut child = Command::new(&tools.ffmpeg)
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "info",
            "-threads",
            "1",
        ])
        .arg("-i")
        .arg(path)
        .args(["-map", "0:v:0", "-vf", &filters, "-fps_mode", "passthrough"])
        .args(["-frames:v", &options.max_frames_per_clip.to_string()])
        .args(["-f", "rawvideo", "-pix_fmt", "gray", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DataError::Tool {
            program: tools.ffmpeg.display().to_string(),
            reason: e.to_string(),
        })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let log_reader = std::thread::spawn(move || {
        let mut times = Vec::new();
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if line.contains("showinfo") {
                if let Some(t) = showinfo_pts_time(&line) {
                    times.push(t);
                }
            } else {
                log.push_str(&line);
                log.push('\n');
            }
        }
        (times, log)
    });
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let frame_bytes = width as usize * height as usize;
    let mut frames = Vec::new();
    let mut read_error = None;
    loop {
        let mut buffer = vec![0u8; frame_bytes];
        match read_exact_or_eof(&mut stdout, &mut buffer) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                read_error = Some(DataError::io(path, e));
                break;
            }
        }
        let index = frames.len() * step;
        frames.push(DecodedFrame {
            index,
            time_s: index as f64 / fps,
            image: GrayImage::from_raw(width, height, buffer)
                .expect("the buffer holds width x height bytes"),
        });
    }
    drop(stdout);
    let status = child.wait().map_err(|e| DataError::Tool {
        program: tools.ffmpeg.display().to_string(),
        reason: e.to_string(),
    })?;
    let (times, log) = log_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(DataError::Image {
            path: path.to_path_buf(),
            reason: format!("ffmpeg cannot decode it: {}", last_lines(&log, 3)),
        });
    }
    if let Some(e) = read_error {
        return Err(e);
    }
    if frames.is_empty() {
        return Err(DataError::Image {
            path: path.to_path_buf(),
            reason: format!("no frame could be decoded: {}", last_lines(&log, 3)),
        });
    }
    // The stream's own clock where ffmpeg reported one for every kept frame (clips with a
    // variable frame rate), measured from the first kept frame.
    if times.len() == frames.len()
        && let Some(&first) = times.first()
    {
        for (frame, t) in frames.iter_mut().zip(&times) {
            frame.time_s = t - first;
        }
    }
    Ok(frames)
}

/// Fills `buffer` from `reader`; `Ok(false)` at a clean end of stream before the first byte.
fn read_exact_or_eof(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "ffmpeg output ended inside a frame ({filled} of {} bytes)",
                        buffer.len()
                    ),
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The `pts_time:` of an ffmpeg `showinfo` frame line.
pub fn showinfo_pts_time(line: &str) -> Option<f64> {
    let rest = &line[line.find("pts_time:")? + "pts_time:".len()..];
    let value: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+'))
        .collect();
    value.parse().ok().filter(|t: &f64| t.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_json_with_and_without_aspect_and_rate() {
        let info = parse_probe_json(
            r#"{"streams":[{"width":440,"height":440,"sample_aspect_ratio":"9:8","r_frame_rate":"113/4","avg_frame_rate":"113/4"}]}"#,
        )
        .unwrap();
        assert_eq!(info.sample_aspect, (9, 8));
        assert_eq!(info.square_pixel_size(), (495, 440));
        assert!((info.fps.unwrap() - 28.25).abs() < 1e-12);
        let info = parse_probe_json(
            r#"{"streams":[{"width":139,"height":120,"avg_frame_rate":"0/0","r_frame_rate":"10/1"}]}"#,
        )
        .unwrap();
        assert_eq!(info.square_pixel_size(), (139, 120));
        assert_eq!(info.fps, Some(10.0));
        assert!(
            parse_probe_json(r#"{"streams":[]}"#)
                .unwrap_err()
                .contains("no video stream")
        );
        assert!(parse_probe_json("not json").is_err());
    }

    #[test]
    fn showinfo_time_is_parsed() {
        let line = "[Parsed_showinfo_2 @ 0x55] n:   3 pts:  12288 pts_time:0.8     duration:512";
        assert_eq!(showinfo_pts_time(line), Some(0.8));
        assert_eq!(
            showinfo_pts_time("[Parsed_showinfo_2 @ 0x1] config in time_base"),
            None
        );
    }
}
