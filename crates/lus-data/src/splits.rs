//! Stratified group k-fold: every example of a group (a patient, else a clip; a scanner sample
//! is its own group) lands in one fold, and each fold's class proportions stay close to the
//! whole set's.
//!
//! The assignment follows scikit-learn's `StratifiedGroupKFold(shuffle=True)`: groups are
//! shuffled by the seed, then taken in order of decreasing spread of their class counts
//! (stable sort, so ties keep the shuffled order), and each goes to the fold where it least
//! increases the spread of the per-class fold shares (mean over classes of the standard
//! deviation, across folds, of `fold count / class total`); ties go to the fold with fewer
//! examples, then the lower index. The result is a function of the labels, the groups, `k` and
//! the seed only.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};

/// The fold (0..k) of every example.
pub fn stratified_group_kfold(
    labels: &[usize],
    groups: &[String],
    k: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    if labels.len() != groups.len() {
        return Err(DataError::config(
            "folds",
            format!("{} labels but {} groups", labels.len(), groups.len()),
        ));
    }
    if k < 2 {
        return Err(DataError::config(
            "folds",
            format!("k must be at least 2, is {k}"),
        ));
    }
    let num_classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    // Groups in order of first appearance, with their class counts.
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut counts: Vec<Vec<usize>> = Vec::new();
    for (i, (group, &label)) in groups.iter().zip(labels).enumerate() {
        let g = *index_of.entry(group.as_str()).or_insert_with(|| {
            members.push(Vec::new());
            counts.push(vec![0; num_classes]);
            members.len() - 1
        });
        members[g].push(i);
        counts[g][label] += 1;
    }
    if members.len() < k {
        return Err(DataError::config(
            "folds",
            format!("{} groups cannot fill {k} folds", members.len()),
        ));
    }
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let spread = |c: &[usize]| -> f64 {
        let n = c.len() as f64;
        let mean = c.iter().sum::<usize>() as f64 / n;
        (c.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
    };
    order.sort_by(|&a, &b| spread(&counts[b]).total_cmp(&spread(&counts[a])));

    let totals: Vec<f64> = (0..num_classes)
        .map(|c| counts.iter().map(|g| g[c]).sum::<usize>() as f64)
        .collect();
    let mut fold_counts = vec![vec![0usize; num_classes]; k];
    let mut fold_sizes = vec![0usize; k];
    let mut group_fold = vec![0usize; members.len()];
    for &g in &order {
        let mut best: Option<(f64, usize, usize)> = None;
        for (fold, &size) in fold_sizes.iter().enumerate() {
            let mut cost = 0.0;
            for c in 0..num_classes {
                if totals[c] == 0.0 {
                    continue;
                }
                let shares: Vec<f64> = (0..k)
                    .map(|f| {
                        let extra = if f == fold { counts[g][c] } else { 0 };
                        (fold_counts[f][c] + extra) as f64 / totals[c]
                    })
                    .collect();
                let mean = shares.iter().sum::<f64>() / k as f64;
                cost += (shares.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / k as f64).sqrt();
            }
            let candidate = (cost, size, fold);
            let better = match best {
                None => true,
                Some((bc, bs, bf)) => {
                    cost < bc - 1e-12 || ((cost - bc).abs() <= 1e-12 && (size, fold) < (bs, bf))
                }
            };
            if better {
                best = Some(candidate);
            }
        }
        let (_, _, fold) = best.expect("k >= 2 folds");
        group_fold[g] = fold;
        fold_sizes[fold] += members[g].len();
        for c in 0..num_classes {
            fold_counts[fold][c] += counts[g][c];
        }
    }
    let mut fold_of = vec![0usize; labels.len()];
    for (g, list) in members.iter().enumerate() {
        for &i in list {
            fold_of[i] = group_fold[g];
        }
    }
    Ok(fold_of)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn singleton_groups_are_stratified_exactly_when_counts_divide() {
        // 30 examples, classes 0/1/2 with 15/9/6 examples, 3 folds: each fold gets 5/3/2.
        let labels: Vec<usize> = (0..30)
            .map(|i| {
                if i < 15 {
                    0
                } else if i < 24 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let groups: Vec<String> = (0..30).map(|i| format!("s{i}")).collect();
        let folds = stratified_group_kfold(&labels, &groups, 3, 7).unwrap();
        for f in 0..3 {
            let per_class: Vec<usize> = (0..3)
                .map(|c| (0..30).filter(|&i| folds[i] == f && labels[i] == c).count())
                .collect();
            assert_eq!(per_class, vec![5, 3, 2], "fold {f}");
        }
        assert_eq!(
            folds,
            stratified_group_kfold(&labels, &groups, 3, 7).unwrap()
        );
        assert_ne!(
            folds,
            stratified_group_kfold(&labels, &groups, 3, 8).unwrap()
        );
    }

    #[test]
    fn bad_requests_are_errors() {
        let g = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>();
        assert!(stratified_group_kfold(&[0, 1], &g(3), 2, 0).is_err());
        assert!(stratified_group_kfold(&[0, 1], &g(2), 1, 0).is_err());
        assert!(
            stratified_group_kfold(&[0, 1, 0], &["a".into(), "a".into(), "b".into()], 3, 0)
                .is_err()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn groups_stay_whole_and_folds_are_filled(
            pairs in prop::collection::vec((0usize..3, 0usize..12), 12..80),
            k in 2usize..5,
            seed in 0u64..1000,
        ) {
            let labels: Vec<usize> = pairs.iter().map(|p| p.0).collect();
            let groups: Vec<String> = pairs.iter().map(|p| format!("g{}", p.1)).collect();
            let distinct = groups.iter().collect::<std::collections::HashSet<_>>().len();
            let result = stratified_group_kfold(&labels, &groups, k, seed);
            if distinct < k {
                prop_assert!(result.is_err());
            } else {
                let folds = result.unwrap();
                for i in 0..labels.len() {
                    prop_assert!(folds[i] < k);
                    for j in 0..labels.len() {
                        if groups[i] == groups[j] {
                            prop_assert_eq!(folds[i], folds[j]);
                        }
                    }
                }
                for f in 0..k {
                    prop_assert!(folds.contains(&f), "fold {} is empty", f);
                }
            }
        }
    }
}
