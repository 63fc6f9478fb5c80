//! Segmentation metrics, result tables and figures for lus.
//!
//! This crate depends on no other lus crate: it works on plain slices (`&[u8]` class-id masks,
//! row-major; `&[f64]` values; palettes as `&[[u8; 3]]`), so the trainers and the experiment
//! runner can use it without a dependency cycle.
//!
//! - [`confusion`]: pixel confusion matrix, per-class IoU / Dice / precision / recall and
//!   nan-means (the NaN conventions are documented there).
//! - [`components`]: connected-component labelling identical to `scipy.ndimage.label`.
//! - [`objects`]: object-level TP / FP / FN for the line classes.
//! - [`table`]: result tables (polars) written as CSV + Parquet.
//! - [`plot`]: training curves and image/mask overlay grids as PNG.
//! - [`classification`]: example-level classification metrics, ROC curves, example and
//!   cluster bootstrap confidence intervals, fold-averaged AUC.
//! - [`stats`]: mean / std, paired tests (Wilcoxon signed-rank, paired t), the corrected
//!   resampled t-test for cross-validation cells and Holm-Bonferroni adjustment.
//! - [`plot_cls`]: ROC curves, confusion-matrix heatmaps and bar charts with error bars.

pub mod classification;
pub mod components;
pub mod confusion;
pub mod error;
pub mod lung;
pub mod objects;
pub mod plot;
pub mod plot_cls;
pub mod stats;
pub mod table;

pub use classification::{
    BootstrapSettings, ClassMetrics, ClassificationMetrics, ConfidenceInterval, FoldAuc,
    Predictions, RocCurve, cluster_bootstrap_draws, cluster_indices, fold_averaged_auc,
};
pub use components::{Components, Connectivity, label_binary, label_class};
pub use confusion::{ClassScores, ConfusionMatrix, MeanScores, nan_mean};
pub use error::{MetricsError, Result};
pub use lung::{
    BLineVerdicts, ClipFindings, FindingClasses, FindingRules, FrameFindings, FrameReading,
    clip_findings, frame_findings, read_frame,
};
pub use lus_io::write_atomic;
pub use objects::{ObjectConfig, ObjectCounts, object_counts};
pub use plot::{OverlayLayout, OverlayRow, overlay_grid, plot_curves};
pub use plot_cls::{BarSeries, plot_bars, plot_confusion_matrix, plot_roc_curves};
pub use stats::{
    CorrectedTTestResult, CvCell, CvComparison, PairedComparison, TTestResult, WilcoxonMethod,
    WilcoxonResult, compare_cv_cells, compare_paired, corrected_resampled_t_test,
    corrected_resampled_t_test_paired, corrected_t_test_detectable_difference,
    corrected_t_test_power, holm_adjust, noncentral_t_cdf, paired_t_test, student_t_quantile,
    wilcoxon_signed_rank,
};
pub use table::{MetricsTable, Row, Value, read_table_csv, read_table_parquet, write_table};

/// The polars `DataFrame` type used by the table functions, re-exported so callers need no
/// direct polars dependency.
pub use polars::prelude::DataFrame;
