//! The typed plan of an experiment: every cell once, in one order, with its folder and its
//! resolved configuration. Pretraining cells come first (seed by seed, pretraining arms in
//! file order), then classification cells (seed, fold, classifier arm). `lus run`, its
//! `--shard K/N` (cell `i` belongs to shard `i mod N`), the check of the backbones a shard
//! needs, and the report all iterate this one list, so they cannot disagree about which cells
//! exist or how they are numbered.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::ExperimentConfig;

/// What a cell computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellKind {
    /// A U-Net trained on a pretraining arm's labels with one seed.
    Pretrain { arm: String, seed: u64 },
    /// A classifier arm's U-Net trained and tested on one fold with one seed; `pretrain` is
    /// the pretraining arm whose cell of the same seed gives its backbone (`None`: fresh).
    Classify {
        arm: String,
        seed: u64,
        fold: usize,
        pretrain: Option<String>,
    },
}

/// One cell of the plan.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Position in the plan (what `--shard` counts).
    pub index: usize,
    pub kind: CellKind,
    /// The cell's folder.
    pub dir: PathBuf,
    /// The experiment reduced to this cell (what its `config.resolved.toml` holds).
    pub config: ExperimentConfig,
}

impl Cell {
    /// The grid seed of the cell.
    pub fn seed(&self) -> u64 {
        match &self.kind {
            CellKind::Pretrain { seed, .. } | CellKind::Classify { seed, .. } => *seed,
        }
    }

    /// A short name for logs: `pretrain dense seed 0`, `classify none seed 1 fold 2`.
    pub fn label(&self) -> String {
        match &self.kind {
            CellKind::Pretrain { arm, seed } => format!("pretraining {arm}, seed {seed}"),
            CellKind::Classify {
                arm, seed, fold, ..
            } => format!("classification {arm}, seed {seed}, fold {fold}"),
        }
    }
}

/// Every cell of an experiment.
#[derive(Debug, Clone)]
pub struct Plan {
    cells: Vec<Cell>,
    pretrain_count: usize,
}

impl Plan {
    /// The plan of `experiment` (validated), every cell's configuration resolved.
    pub fn new(experiment: &ExperimentConfig) -> anyhow::Result<Self> {
        let mut cells = Vec::new();
        let root = experiment.runs_root();
        for &seed in &experiment.grid.seeds {
            for arm in &experiment.grid.pretrain {
                cells.push(Cell {
                    index: cells.len(),
                    kind: CellKind::Pretrain {
                        arm: arm.name.clone(),
                        seed,
                    },
                    dir: root
                        .join("pretrain")
                        .join(format!("{}-seed{seed}", arm.name)),
                    config: crate::seg_cell::cell_config(experiment, arm, seed)
                        .with_context(|| format!("pretraining arm {}", arm.name))?,
                });
            }
        }
        let pretrain_count = cells.len();
        if experiment.classify.is_some() {
            for &seed in &experiment.grid.seeds {
                for fold in 0..experiment.grid.folds {
                    for arm in &experiment.grid.arms {
                        // The backbone's config as its pretraining cell above has it.
                        let backbone = match arm.pretrain_arm() {
                            Some(name) => Some(
                                &find_pretrain_cell(&cells[..pretrain_count], name, seed)
                                    .with_context(|| {
                                        format!("arm {}: no pretraining arm {name:?}", arm.name)
                                    })?
                                    .config,
                            ),
                            None => None,
                        };
                        let config =
                            crate::cls_cell::cls_cell_config(experiment, arm, backbone, seed, fold);
                        cells.push(Cell {
                            index: cells.len(),
                            kind: CellKind::Classify {
                                arm: arm.name.clone(),
                                seed,
                                fold,
                                pretrain: arm.pretrain_arm().map(str::to_string),
                            },
                            dir: root
                                .join("classify")
                                .join(format!("{}-seed{seed}-fold{fold}", arm.name)),
                            config,
                        });
                    }
                }
            }
        }
        Ok(Plan {
            cells,
            pretrain_count,
        })
    }

    /// Every cell, in plan order.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    /// The pretraining cells.
    pub fn pretrain(&self) -> &[Cell] {
        &self.cells[..self.pretrain_count]
    }

    /// The classification cells.
    pub fn classify(&self) -> &[Cell] {
        &self.cells[self.pretrain_count..]
    }

    /// The pretraining cell of `arm` and `seed`.
    pub fn pretrain_cell(&self, arm: &str, seed: u64) -> Option<&Cell> {
        self.pretrain().iter().find(
            |c| matches!(&c.kind, CellKind::Pretrain { arm: a, seed: s } if a == arm && *s == seed),
        )
    }

    /// The pretraining cell whose network classification cell `cell` starts from.
    pub fn backbone_of(&self, cell: &Cell) -> Option<&Cell> {
        match &cell.kind {
            CellKind::Classify {
                seed,
                pretrain: Some(arm),
                ..
            } => self.pretrain_cell(arm, *seed),
            _ => None,
        }
    }

    /// The cells of shard `k` of `n` (`None`: all of them).
    pub fn shard(&self, shard: Option<(usize, usize)>) -> impl Iterator<Item = &Cell> {
        self.cells
            .iter()
            .filter(move |c| shard.is_none_or(|(k, n)| c.index % n == k))
    }
}

/// The pretraining cell of `arm` and `seed` among `cells`.
fn find_pretrain_cell<'a>(cells: &'a [Cell], arm: &str, seed: u64) -> Option<&'a Cell> {
    cells.iter().find(
        |c| matches!(&c.kind, CellKind::Pretrain { arm: a, seed: s } if a == arm && *s == seed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn experiment(pretrain: usize, arms: usize, seeds: usize, folds: usize) -> ExperimentConfig {
        let mut text = String::from("[classify.train]\nepochs = 1\n[grid]\n");
        text.push_str(&format!(
            "seeds = {:?}\nfolds = {folds}\ninner_folds = 2\narms = [{}]\n",
            (0..seeds as u64).collect::<Vec<_>>(),
            (0..arms)
                .map(|a| match a % (pretrain + 1) {
                    0 => format!("{{ name = \"c{a}\", pretrain = \"none\" }}"),
                    p => format!("{{ name = \"c{a}\", pretrain = \"p{}\" }}", p - 1),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for p in 0..pretrain {
            text.push_str(&format!(
                "[[grid.pretrain]]\nname = \"p{p}\"\nrecipe = \"{}\"\n",
                if p % 2 == 0 { "dense" } else { "sparse" }
            ));
        }
        ExperimentConfig::from_toml_str(&text, &[]).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

        /// Every cell of a plan with named arms belongs to exactly one shard, whatever N, and
        /// the shards together are the plan.
        #[test]
        fn shards_cover_every_cell_once(
            pretrain in 1usize..4,
            arms in 1usize..5,
            seeds in 1usize..3,
            folds in 2usize..4,
            n in 1usize..7,
        ) {
            let plan = Plan::new(&experiment(pretrain, arms, seeds, folds)).unwrap();
            prop_assert_eq!(plan.pretrain().len(), pretrain * seeds);
            prop_assert_eq!(plan.classify().len(), arms * seeds * folds);
            let mut seen = vec![0usize; plan.cells().len()];
            for k in 0..n {
                for cell in plan.shard(Some((k, n))) {
                    seen[cell.index] += 1;
                }
            }
            prop_assert!(seen.iter().all(|&c| c == 1), "{:?}", seen);
            let dirs: std::collections::HashSet<_> = plan.cells().iter().map(|c| &c.dir).collect();
            prop_assert_eq!(dirs.len(), plan.cells().len());
            for cell in plan.classify() {
                if let CellKind::Classify { pretrain: Some(p), seed, .. } = &cell.kind {
                    let backbone = plan.backbone_of(cell).unwrap();
                    prop_assert_eq!(
                        &backbone.kind,
                        &CellKind::Pretrain { arm: p.clone(), seed: *seed }
                    );
                }
            }
        }
    }
}
