//! The `lus` program as a library: experiment configs, the ablation grid and its runner,
//! reports and the subcommands. `src/main.rs` only parses the command line and dispatches;
//! the modules are public so that fuzz targets and benches can reach the readers (the
//! experiment config above all) without going through a process.

pub mod adapt;
pub mod bench;
pub mod cell;
pub mod cell_input;
pub mod cls_cell;
pub mod config;
pub mod contact_sheet;
pub mod dataset;
pub mod domain_gap;
pub mod eval_seg;
pub mod findings;
pub mod ingest;
pub mod lock;
pub mod plan;
pub mod pocus_pool;
pub mod power;
pub mod predict;
pub mod predictions;
pub mod progress;
pub mod provenance;
pub mod rasterize;
pub mod report;
pub mod report_cls;
pub mod seg_cell;
pub mod segment;
pub mod slurm;
pub mod study;
pub mod synth;
pub mod train_seg;
