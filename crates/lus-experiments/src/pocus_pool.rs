//! The diagnostic pool of real POCUS frames: the ingested manifest filtered to the configured
//! classes and probes, every frame made square (pad / crop / stretch) and resized once to the
//! network's input size, held in memory. The group of a frame is its patient when known, else
//! its clip, so the stratified group folds never split a patient or a clip.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use lus_data::cls_loader::InMemoryClassSource;
use lus_data::manifest::resolve_inside;
use lus_data::pocus::{
    FrameRow, IngestOptions, Media, POCUS_MANIFEST, Tools, ingest, inventory, read_frame_rows,
    square_resized,
};
use rayon::prelude::*;

use crate::config::PocusPoolConfig;
use crate::dataset::ClassifyPool;
use crate::ingest::pocus_dir;
use crate::lock::Lock;

/// The frames of `config` at `size x size`, ingesting the POCUS data first when the frames
/// folder has no manifest yet.
pub fn load_pocus_pool(config: &PocusPoolConfig, size: u32) -> anyhow::Result<ClassifyPool> {
    let manifest = config.frames.join(POCUS_MANIFEST);
    // One ingest at a time: shards that start together wait for the first, then find its
    // manifest. (Held only while the manifest is missing.)
    let ingest_lock = if manifest.is_file() {
        None
    } else {
        Some(Lock::acquire(
            &config.frames,
            || {
                eprintln!(
                    "{}: another process is ingesting the POCUS data; waiting for it",
                    config.frames.display()
                )
            },
            || Ok(()),
        )?)
    };
    if !manifest.is_file() {
        let src = pocus_dir(None);
        eprintln!(
            "{}: no manifest yet; ingesting the POCUS data from {} (POCOVID-Net sampling)",
            config.frames.display(),
            src.display()
        );
        let tools = Tools::find()?;
        let options = IngestOptions::default();
        let report = ingest(
            inventory(&src, &options)?,
            &config.frames,
            &options,
            &tools,
            &|_, _| {},
        )
        .with_context(|| {
            format!(
                "ingesting {} into {}",
                src.display(),
                config.frames.display()
            )
        })?;
        for (rel, reason) in report.failed() {
            eprintln!("warning: {rel}: skipped: {reason}");
        }
    }
    drop(ingest_lock);
    let rows = select_rows(read_frame_rows(&manifest)?, config);
    let class_of = |row: &FrameRow| config.classes.iter().position(|c| *c == row.label);
    for (k, class) in config.classes.iter().enumerate() {
        if !rows.iter().any(|r| class_of(r) == Some(k)) {
            bail!(
                "{}: no frames of class {class} for probes {:?}",
                manifest.display(),
                config.probes
            );
        }
    }
    let images = rows
        .par_iter()
        .map(|row| -> anyhow::Result<image::GrayImage> {
            let path = resolve_inside(&config.frames, &row.path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
            let frame = lus_data::image_io::load_gray(&path)?;
            Ok(square_resized(&frame, config.aspect, size))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let count = rows.len();
    let clips: std::collections::HashSet<&str> = rows.iter().map(|r| r.clip.as_str()).collect();
    let groups: std::collections::HashSet<String> = rows.iter().map(FrameRow::group).collect();
    let mut examples = Vec::with_capacity(count);
    let mut pool = ClassifyPool::empty(
        count,
        format!(
            "{count} real POCUS frames ({} clips and images, {} patient-or-clip groups; {}, \
             {} probes, aspect `{:?}`) from `{}`",
            clips.len(),
            groups.len(),
            config
                .classes
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(" / "),
            config
                .probes
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(" + "),
            config.aspect,
            config.frames.display()
        ),
    );
    pool.class_names = config
        .classes
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    for (row, image) in rows.iter().zip(images) {
        let label = class_of(row).expect("rows are filtered to the configured classes");
        pool.ids.push(format!("{}/{}", row.clip, row.frame_index));
        pool.labels.push(label);
        pool.groups.push(row.group());
        pool.probes.push(row.probe);
        pool.clips.push(row.clip.clone());
        examples.push((image, label));
    }
    pool.source = Arc::new(InMemoryClassSource(examples));
    Ok(pool)
}

/// The manifest rows of the configured classes, probes and media, at most
/// `max_frames_per_clip` per clip (evenly spread over the clip), in manifest order.
pub fn select_rows(rows: Vec<FrameRow>, config: &PocusPoolConfig) -> Vec<FrameRow> {
    let mut by_clip: BTreeMap<String, Vec<FrameRow>> = BTreeMap::new();
    for row in rows {
        let wanted = config.classes.contains(&row.label)
            && config.probes.contains(&row.probe)
            && (config.images || row.media != Media::Image);
        if wanted {
            by_clip.entry(row.clip.clone()).or_default().push(row);
        }
    }
    let mut out = Vec::new();
    for (_, mut frames) in by_clip {
        frames.sort_by_key(|r| r.frame_index);
        let n = frames.len();
        let k = match config.max_frames_per_clip {
            0 => n,
            m => m.min(n),
        };
        // Positions floor(i n / k): the first frame and an even spread after it.
        let keep: Vec<usize> = (0..k).map(|i| i * n / k).collect();
        out.extend(
            frames
                .into_iter()
                .enumerate()
                .filter(|(i, _)| keep.binary_search(i).is_ok())
                .map(|(_, r)| r),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lus_data::Diagnosis;
    use lus_data::Probe;

    fn row(clip: &str, frame: usize, label: Diagnosis, probe: Probe, media: Media) -> FrameRow {
        FrameRow {
            path: format!("frames/{clip}/frame_{frame:05}.png"),
            clip: clip.into(),
            patient_id: String::new(),
            label,
            probe,
            frame_index: frame,
            time_s: 0.0,
            width: 8,
            height: 8,
            license: String::new(),
            media,
            source: format!("videos/{clip}.mp4"),
        }
    }

    #[test]
    fn selection_filters_and_spreads_frames_evenly() {
        let mut rows: Vec<FrameRow> = (0..10)
            .map(|i| row("a", i * 3, Diagnosis::Covid, Probe::Convex, Media::Video))
            .collect();
        rows.push(row("b", 0, Diagnosis::Viral, Probe::Convex, Media::Video));
        rows.push(row("c", 0, Diagnosis::Healthy, Probe::Linear, Media::Video));
        rows.push(row("d", 0, Diagnosis::Healthy, Probe::Convex, Media::Image));
        let mut config = PocusPoolConfig {
            max_frames_per_clip: 4,
            probes: vec![Probe::Convex],
            ..PocusPoolConfig::default()
        };
        let picked = select_rows(rows.clone(), &config);
        let frames: Vec<(String, usize)> = picked
            .iter()
            .map(|r| (r.clip.clone(), r.frame_index))
            .collect();
        // 10 frames -> positions 0, 2, 5, 7 -> frame indices 0, 6, 15, 21; viral and linear out.
        assert_eq!(
            frames,
            vec![
                ("a".into(), 0),
                ("a".into(), 6),
                ("a".into(), 15),
                ("a".into(), 21),
                ("d".into(), 0)
            ]
        );
        config.images = false;
        config.max_frames_per_clip = 0;
        config.probes = vec![Probe::Convex, Probe::Linear];
        let picked = select_rows(rows, &config);
        assert_eq!(picked.len(), 11);
        assert!(
            picked
                .iter()
                .all(|r| r.media == Media::Video && r.label != Diagnosis::Viral)
        );
    }
}
