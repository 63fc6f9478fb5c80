//! `test/predictions.csv` of a classification cell: one row per test example with its pool
//! index, id, clip, fold group (patient, else clip: the unit a bootstrap resamples), probe,
//! true and predicted class and the probability of each class
//! (`p_<class>` columns, as the model gave them in f32). Written and read with the `csv`
//! crate, so ids and clip names with commas or quotes survive.

use std::path::Path;

use anyhow::{Context, bail};
use lus_data::Probe;

/// One tested example.
#[derive(Debug, Clone, PartialEq)]
pub struct TestPrediction {
    /// Index in the diagnostic pool.
    pub index: usize,
    pub id: String,
    pub clip: String,
    /// The fold group: the patient, else the clip (a scanner image is its own).
    pub group: String,
    pub probe: Probe,
    /// Class indices.
    pub truth: usize,
    pub predicted: usize,
    pub probabilities: Vec<f32>,
}

fn header(class_names: &[String]) -> Vec<String> {
    let mut header: Vec<String> = [
        "index",
        "id",
        "clip",
        "group",
        "probe",
        "truth",
        "predicted",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(class_names.iter().map(|n| format!("p_{n}")));
    header
}

/// Writes `rows` to `path` atomically.
pub fn write_predictions(
    path: &Path,
    class_names: &[String],
    rows: &[TestPrediction],
) -> anyhow::Result<()> {
    lus_io::write_atomic_with(path, |file| {
        let mut writer = csv::Writer::from_writer(file);
        writer
            .write_record(header(class_names))
            .map_err(std::io::Error::other)?;
        for row in rows {
            let mut record = vec![
                row.index.to_string(),
                row.id.clone(),
                row.clip.clone(),
                row.group.clone(),
                row.probe.to_string(),
                class_names[row.truth].clone(),
                class_names[row.predicted].clone(),
            ];
            record.extend(row.probabilities.iter().map(|p| p.to_string()));
            writer
                .write_record(&record)
                .map_err(std::io::Error::other)?;
        }
        writer.flush()
    })?;
    Ok(())
}

/// Reads a predictions file written for `class_names`; every error names the file and line.
pub fn read_predictions(
    path: &Path,
    class_names: &[String],
) -> anyhow::Result<Vec<TestPrediction>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = csv::Reader::from_reader(file);
    let expected = header(class_names);
    let found: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: unreadable header", path.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    if found != expected {
        bail!(
            "{}: header {found:?}, expected {expected:?} (predictions of another class list?)",
            path.display()
        );
    }
    let class_of = |name: &str, line: u64| -> anyhow::Result<usize> {
        class_names
            .iter()
            .position(|n| n == name)
            .with_context(|| format!("{}: line {line}: unknown class {name:?}", path.display()))
    };
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{}: malformed row", path.display()))?;
        let line = record.position().map_or(0, |p| p.line());
        let bad = |what: &str| anyhow::anyhow!("{}: line {line}: {what}", path.display());
        let index = record[0]
            .parse()
            .map_err(|_| bad("index is not a number"))?;
        let probe: Probe = record[4].parse().map_err(|e: String| bad(&e))?;
        let probabilities = (7..record.len())
            .map(|k| {
                record[k]
                    .parse::<f32>()
                    .ok()
                    .filter(|p| p.is_finite())
                    .ok_or_else(|| bad(&format!("{:?} is not a probability", &record[k])))
            })
            .collect::<anyhow::Result<Vec<f32>>>()?;
        rows.push(TestPrediction {
            index,
            id: record[1].to_string(),
            clip: record[2].to_string(),
            group: record[3].to_string(),
            probe,
            truth: class_of(&record[5], line)?,
            predicted: class_of(&record[6], line)?,
            probabilities,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_round_trip_with_awkward_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("predictions.csv");
        let names: Vec<String> = ["covid", "pneumonia", "healthy"].map(String::from).to_vec();
        let rows = vec![
            TestPrediction {
                index: 3,
                id: "Cov-Atlas+(45).gif#frame,2".into(),
                clip: "clip \"a\"".into(),
                group: "patient 7".into(),
                probe: Probe::Convex,
                truth: 0,
                predicted: 2,
                probabilities: vec![0.25, 0.125, 0.625],
            },
            TestPrediction {
                index: 9,
                id: "b".into(),
                clip: "b".into(),
                group: "b".into(),
                probe: Probe::Linear,
                truth: 1,
                predicted: 1,
                probabilities: vec![0.1, 0.8, 0.1],
            },
        ];
        write_predictions(&path, &names, &rows).unwrap();
        assert_eq!(read_predictions(&path, &names).unwrap(), rows);
        let other: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let err = read_predictions(&path, &other).unwrap_err().to_string();
        assert!(
            err.contains("predictions.csv") && err.contains("header"),
            "{err}"
        );
        std::fs::write(
            &path,
            "index,id,clip,group,probe,truth,predicted,p_covid,p_pneumonia,p_healthy\n1,a,a,a,convex,covid,flu,0.1,0.2,0.7\n",
        )
        .unwrap();
        let err = read_predictions(&path, &names).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("flu"), "{err}");
    }
}
