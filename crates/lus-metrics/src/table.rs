//! Result tables: rows of named integer / float / text cells (one row per epoch, or per cell
//! of an experiment grid), turned into a polars `DataFrame` and written as CSV (for people and
//! diffs) and Parquet (typed, for analysis) side by side.
//!
//! ```
//! use lus_metrics::{MetricsTable, Row};
//! let mut log = MetricsTable::new();
//! for epoch in 0..3 {
//!     log.push_row(
//!         Row::new()
//!             .int("epoch", epoch)
//!             .float("lr", 1e-3)
//!             .float("train_loss", 1.0 / (epoch as f64 + 1.0)),
//!     )?;
//! }
//! let df = log.to_dataframe()?;
//! assert_eq!(df.height(), 3);
//! # Ok::<(), lus_metrics::MetricsError>(())
//! ```

use std::fs::File;
use std::path::Path;

use polars::prelude::*;

use crate::error::{MetricsError, Result};
use lus_io::write_atomic;

/// One cell value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Stored as polars `Int64`.
    Int(i64),
    /// Stored as polars `Float64`; NaN is kept as NaN (not null).
    Float(f64),
    /// Stored as polars `String`.
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

/// The cells of one row, in the order given (new columns are appended in that order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    cells: Vec<(String, Value)>,
}

impl Row {
    /// An empty row.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds an integer cell.
    pub fn int(self, name: &str, value: i64) -> Self {
        self.set(name, Value::Int(value))
    }
    /// Adds a float cell.
    pub fn float(self, name: &str, value: f64) -> Self {
        self.set(name, Value::Float(value))
    }
    /// Adds a text cell.
    pub fn text(self, name: &str, value: impl Into<String>) -> Self {
        self.set(name, Value::Text(value.into()))
    }
    /// Adds a cell of any [`Value`].
    pub fn set(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.cells.push((name.to_string(), value.into()));
        self
    }
    /// The cells.
    pub fn cells(&self) -> &[(String, Value)] {
        &self.cells
    }
}

#[derive(Debug, Clone, PartialEq)]
enum ColumnData {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
}

impl ColumnData {
    fn empty_like(value: &Value, rows: usize) -> Self {
        match value {
            Value::Int(_) => ColumnData::Int(vec![None; rows]),
            Value::Float(_) => ColumnData::Float(vec![None; rows]),
            Value::Text(_) => ColumnData::Text(vec![None; rows]),
        }
    }
    fn type_name(&self) -> &'static str {
        match self {
            ColumnData::Int(_) => "integer",
            ColumnData::Float(_) => "float",
            ColumnData::Text(_) => "text",
        }
    }
    fn accepts(&self, value: &Value) -> bool {
        matches!(
            (self, value),
            (ColumnData::Int(_), Value::Int(_))
                | (ColumnData::Float(_), Value::Float(_))
                | (ColumnData::Text(_), Value::Text(_))
        )
    }
    fn push(&mut self, value: Option<Value>) {
        match (self, value) {
            (ColumnData::Int(v), Some(Value::Int(x))) => v.push(Some(x)),
            (ColumnData::Float(v), Some(Value::Float(x))) => v.push(Some(x)),
            (ColumnData::Text(v), Some(Value::Text(x))) => v.push(Some(x)),
            (ColumnData::Int(v), None) => v.push(None),
            (ColumnData::Float(v), None) => v.push(None),
            (ColumnData::Text(v), None) => v.push(None),
            _ => unreachable!("cell types are checked before pushing"),
        }
    }
    fn get(&self, row: usize) -> Option<Value> {
        match self {
            ColumnData::Int(v) => v[row].map(Value::Int),
            ColumnData::Float(v) => v[row].map(Value::Float),
            ColumnData::Text(v) => v[row].clone().map(Value::Text),
        }
    }
}

fn value_type_name(value: &Value) -> &'static str {
    match value {
        Value::Int(_) => "integer",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
    }
}

/// A growing table of typed columns. A column's type is fixed by its first value; a row that
/// lacks a column leaves a null there, and a column first seen in a later row is null in the
/// earlier ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsTable {
    columns: Vec<(String, ColumnData)>,
    rows: usize,
}

impl MetricsTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Column names in order.
    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The value at (`row`, `column`); `None` for a null or an unknown row/column.
    pub fn get(&self, row: usize, column: &str) -> Option<Value> {
        if row >= self.rows {
            return None;
        }
        let (_, data) = self.columns.iter().find(|(n, _)| n == column)?;
        data.get(row)
    }

    /// Appends a row. A cell whose type differs from its column's, or a name given twice in
    /// the row, is an error and leaves the table unchanged.
    pub fn push_row(&mut self, row: Row) -> Result<()> {
        for (i, (name, value)) in row.cells.iter().enumerate() {
            if row.cells[..i].iter().any(|(n, _)| n == name) {
                return Err(MetricsError::TableShape {
                    path: None,
                    message: format!("column {name:?} given twice in row {}", self.rows),
                });
            }
            if let Some((_, data)) = self.columns.iter().find(|(n, _)| n == name)
                && !data.accepts(value)
            {
                return Err(MetricsError::TableShape {
                    path: None,
                    message: format!(
                        "row {}: column {name:?} holds {} values, got a {} value",
                        self.rows,
                        data.type_name(),
                        value_type_name(value)
                    ),
                });
            }
        }
        let mut cells = row.cells;
        for (name, data) in &mut self.columns {
            // `remove` (not `swap_remove`) keeps the remaining new cells in the row's order.
            let value = cells
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| cells.remove(i).1);
            data.push(value);
        }
        for (name, value) in cells {
            let mut data = ColumnData::empty_like(&value, self.rows);
            data.push(Some(value));
            self.columns.push((name, data));
        }
        self.rows += 1;
        Ok(())
    }

    /// The table as a polars `DataFrame` (Int64 / Float64 / String columns, nulls for gaps).
    pub fn to_dataframe(&self) -> Result<DataFrame> {
        let columns: Vec<Column> = self
            .columns
            .iter()
            .map(|(name, data)| match data {
                ColumnData::Int(v) => Column::new(name.as_str().into(), v),
                ColumnData::Float(v) => Column::new(name.as_str().into(), v),
                ColumnData::Text(v) => Column::new(name.as_str().into(), v),
            })
            .collect();
        DataFrame::new(self.rows, columns)
            .map_err(|source| MetricsError::Table { path: None, source })
    }

    /// Reads a `DataFrame` back (e.g. a log read from disk, to resume a run). Integer columns
    /// become integer columns, float columns float, string columns text; any other type is an
    /// error naming the column. A column that is null everywhere becomes an (all-null) text
    /// column, as CSV reading infers it.
    pub fn from_dataframe(df: &DataFrame) -> Result<Self> {
        let shape_err = |message: String| MetricsError::TableShape {
            path: None,
            message,
        };
        let table_err = |source| MetricsError::Table { path: None, source };
        let mut columns = Vec::with_capacity(df.width());
        for column in df.columns() {
            let name = column.name().to_string();
            let series = column.as_materialized_series();
            let data = match series.dtype() {
                dt if dt.is_integer() => {
                    let cast = series.cast(&DataType::Int64).map_err(table_err)?;
                    ColumnData::Int(cast.i64().map_err(table_err)?.iter().collect())
                }
                dt if dt.is_float() => {
                    let cast = series.cast(&DataType::Float64).map_err(table_err)?;
                    ColumnData::Float(cast.f64().map_err(table_err)?.iter().collect())
                }
                DataType::String => ColumnData::Text(
                    series
                        .str()
                        .map_err(table_err)?
                        .iter()
                        .map(|s| s.map(str::to_string))
                        .collect(),
                ),
                DataType::Null => ColumnData::Text(vec![None; df.height()]),
                other => {
                    return Err(shape_err(format!(
                        "column {name:?} has type {other}, expected integer, float or string"
                    )));
                }
            };
            columns.push((name, data));
        }
        Ok(Self {
            columns,
            rows: df.height(),
        })
    }

    /// Writes the table as CSV and Parquet (see [`write_table`]).
    pub fn write(&self, csv: &Path, parquet: &Path) -> Result<()> {
        write_table(&mut self.to_dataframe()?, csv, parquet)
    }
}

/// Writes `df` to `csv` and to `parquet`, each atomically (serialised in memory, then a
/// temporary file in the same folder renamed over the target), so a reader never sees a
/// partial file. The two files are replaced one after the other (Parquet first), not as one
/// transaction. CSV floats are written in the shortest form that reads back to the same `f64`;
/// NaN is written `NaN`, null as an empty field.
pub fn write_table(df: &mut DataFrame, csv: &Path, parquet: &Path) -> Result<()> {
    let mut parquet_bytes = Vec::new();
    ParquetWriter::new(&mut parquet_bytes)
        .finish(df)
        .map_err(|source| MetricsError::Table {
            path: Some(parquet.to_path_buf()),
            source,
        })?;
    let mut csv_bytes = Vec::new();
    CsvWriter::new(&mut csv_bytes)
        .include_header(true)
        .finish(df)
        .map_err(|source| MetricsError::Table {
            path: Some(csv.to_path_buf()),
            source,
        })?;
    write_atomic(parquet, &parquet_bytes)?;
    Ok(write_atomic(csv, &csv_bytes)?)
}

/// Reads a CSV table written by [`write_table`] (header row; types inferred from all rows).
pub fn read_table_csv(path: &Path) -> Result<DataFrame> {
    let table_err = |source| MetricsError::Table {
        path: Some(path.to_path_buf()),
        source,
    };
    if !path.is_file() {
        return Err(MetricsError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(None)
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|reader| reader.finish())
        .map_err(table_err)
}

/// Reads a Parquet table written by [`write_table`].
pub fn read_table_parquet(path: &Path) -> Result<DataFrame> {
    let file = File::open(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ParquetReader::new(file)
        .finish()
        .map_err(|source| MetricsError::Table {
            path: Some(path.to_path_buf()),
            source,
        })
}
