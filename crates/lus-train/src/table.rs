//! The per-epoch metrics table, written through lus-metrics as CSV and Parquet.

use std::path::Path;

use lus_metrics::{MetricsTable, Row};

use crate::error::Result;
use crate::trainer::EpochRecord;

/// The table of `records`: integer columns `epoch` and `step`, then the float columns of
/// [`EpochRecord::float_columns`] in their order.
pub fn metrics_table(records: &[EpochRecord]) -> Result<MetricsTable> {
    let mut table = MetricsTable::new();
    for record in records {
        let mut row = Row::new()
            .int("epoch", record.epoch as i64)
            .int("step", record.step as i64);
        for (name, value) in record.float_columns() {
            row = row.float(&name, value);
        }
        table.push_row(row)?;
    }
    Ok(table)
}

/// Writes the table of `records` to `csv` and `parquet` (each atomically).
pub fn write_metrics_tables(records: &[EpochRecord], csv: &Path, parquet: &Path) -> Result<()> {
    metrics_table(records)?.write(csv, parquet)?;
    Ok(())
}
