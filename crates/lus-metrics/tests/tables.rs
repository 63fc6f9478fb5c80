//! Result tables: CSV and Parquet round trips read back with polars.

use lus_metrics::{
    MetricsError, MetricsTable, Row, Value, read_table_csv, read_table_parquet, write_table,
};

/// An epoch log as a trainer would write it: awkward floats, a NaN metric, a column that
/// appears only from epoch 1 on and a text column.
fn epoch_log() -> MetricsTable {
    let mut log = MetricsTable::new();
    for epoch in 0..4i64 {
        let mut row = Row::new()
            .int("epoch", epoch)
            .int("step", epoch * 125 + 7)
            .float("lr", 1e-3 * 0.1f64.powi(epoch as i32))
            .float(
                "train_loss",
                1.0 / 3.0 + epoch as f64 * 1e-17 + (epoch as f64).sqrt(),
            )
            .text(
                "arm",
                if epoch % 2 == 0 {
                    "dense"
                } else {
                    "sparse, \"thin\""
                },
            );
        // Epoch 0 has no validation yet; epoch 2's B-line IoU is undefined (NaN).
        if epoch > 0 {
            let iou = if epoch == 2 {
                f64::NAN
            } else {
                0.123_456_789_012_345_67 * epoch as f64
            };
            row = row
                .float("val_iou_b_line", iou)
                .float("val_miou", -0.0 + epoch as f64 / 7.0);
        }
        log.push_row(row).unwrap();
    }
    log
}

/// Equality that treats NaN as equal to NaN and compares floats bit for bit otherwise.
fn same_value(a: &Option<Value>, b: &Option<Value>) -> bool {
    match (a, b) {
        (Some(Value::Float(x)), Some(Value::Float(y))) => {
            (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits() || (*x == 0.0 && *y == 0.0)
        }
        _ => a == b,
    }
}

fn assert_same_table(ours: &MetricsTable, back: &MetricsTable, what: &str) {
    assert_eq!(back.column_names(), ours.column_names(), "{what}: columns");
    assert_eq!(back.len(), ours.len(), "{what}: rows");
    for name in ours.column_names() {
        for row in 0..ours.len() {
            let (a, b) = (ours.get(row, name), back.get(row, name));
            assert!(
                same_value(&a, &b),
                "{what}: row {row} column {name}: wrote {a:?}, read {b:?}"
            );
        }
    }
}

#[test]
fn csv_and_parquet_round_trip_values_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, parquet) = (
        dir.path().join("epochs.csv"),
        dir.path().join("epochs.parquet"),
    );
    let log = epoch_log();
    assert_eq!(
        log.column_names(),
        [
            "epoch",
            "step",
            "lr",
            "train_loss",
            "arm",
            "val_iou_b_line",
            "val_miou"
        ]
    );
    assert_eq!(log.get(0, "val_miou"), None);
    assert_eq!(log.get(3, "step"), Some(Value::Int(382)));
    log.write(&csv, &parquet).unwrap();

    let from_csv = read_table_csv(&csv).unwrap();
    let from_parquet = read_table_parquet(&parquet).unwrap();
    assert_eq!(from_csv.shape(), (4, 7));
    assert_eq!(from_parquet.shape(), (4, 7));
    assert_same_table(
        &log,
        &MetricsTable::from_dataframe(&from_csv).unwrap(),
        "csv",
    );
    assert_same_table(
        &log,
        &MetricsTable::from_dataframe(&from_parquet).unwrap(),
        "parquet",
    );
    // The NaN stays a NaN (not a null) and the missing epoch-0 value stays a null.
    let iou = from_parquet
        .column("val_iou_b_line")
        .unwrap()
        .f64()
        .unwrap()
        .clone();
    assert!(iou.get(2).unwrap().is_nan());
    assert_eq!(iou.get(0), None);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with("epoch,step,lr,train_loss,arm,val_iou_b_line,val_miou\n"),
        "{text}"
    );
    // No temporary files are left beside the tables.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["epochs.csv", "epochs.parquet"]);
}

#[test]
fn writing_again_replaces_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, parquet) = (dir.path().join("t.csv"), dir.path().join("t.parquet"));
    let mut log = epoch_log();
    log.write(&csv, &parquet).unwrap();
    log.push_row(Row::new().int("epoch", 4)).unwrap();
    let mut df = log.to_dataframe().unwrap();
    write_table(&mut df, &csv, &parquet).unwrap();
    assert_eq!(read_table_csv(&csv).unwrap().height(), 5);
    assert_eq!(read_table_parquet(&parquet).unwrap().height(), 5);
}

#[test]
fn bad_rows_are_rejected_and_leave_the_table_unchanged() {
    let mut log = epoch_log();
    let before = log.clone();
    let err = log.push_row(Row::new().float("epoch", 1.5)).unwrap_err();
    assert!(matches!(err, MetricsError::TableShape { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("\"epoch\"") && msg.contains("integer") && msg.contains("float"),
        "{msg}"
    );
    let err = log
        .push_row(Row::new().int("x", 1).int("x", 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("given twice"), "{err}");
    assert_eq!(log.len(), before.len());
    assert_eq!(log.column_names(), before.column_names());
}

#[test]
fn read_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.csv");
    let err = read_table_csv(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.csv"), "{err}");
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"not parquet").unwrap();
    let err = read_table_parquet(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.parquet"), "{err}");
}
