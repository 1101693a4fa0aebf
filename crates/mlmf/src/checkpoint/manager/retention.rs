//! Which checkpoints [`super::CheckpointManager::prune`] keeps.

use std::path::PathBuf;

use super::{CheckpointEntry, CheckpointStatus, Manifest};

/// Which checkpoints [`CheckpointManager::prune`](super::CheckpointManager::prune) keeps. A
/// checkpoint is kept if any rule keeps it; a rule that is `None` keeps nothing. Whatever the
/// rules, the newest valid checkpoint is kept, and so is every (corrupt) checkpoint newer than
/// it, for inspection.
#[derive(Clone, Debug, Default)]
pub struct Retention {
    /// The last `n` checkpoints that pass the size check.
    pub keep_last: Option<usize>,
    /// Every checkpoint whose step is a multiple of `k` (`k` = 0 keeps none).
    pub keep_every: Option<u64>,
    /// `(metric, n, higher_is_better)`: the `n` best checkpoints by that metric; checkpoints
    /// without it, or with a non-finite value, are not ranked; ties go to the newer step.
    pub keep_best: Option<(String, usize, bool)>,
}

/// What [`CheckpointManager::prune`](super::CheckpointManager::prune) did.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub kept: Vec<u64>,
    pub removed: Vec<u64>,
    /// Checkpoints found corrupt (removed or, when newer than the newest valid one, kept).
    pub corrupt: Vec<CheckpointEntry>,
    /// Leftovers of interrupted saves and deletes that were removed.
    pub cleaned: Vec<PathBuf>,
}

/// Steps `retention` keeps among `entries` (ascending), given the newest valid step.
pub(super) fn kept_steps(
    entries: &[CheckpointEntry],
    newest_valid: u64,
    retention: &Retention,
) -> Vec<u64> {
    let mut keep: Vec<u64> = entries
        .iter()
        .map(|e| e.step)
        .filter(|&s| s >= newest_valid)
        .collect();
    let valid: Vec<(u64, &Manifest)> = entries
        .iter()
        .filter(|e| e.step <= newest_valid)
        .filter_map(|e| match &e.status {
            CheckpointStatus::Valid(m) => Some((e.step, m)),
            CheckpointStatus::Corrupt { .. } => None,
        })
        .collect();
    if let Some(n) = retention.keep_last {
        keep.extend(valid.iter().rev().take(n).map(|(s, _)| *s));
    }
    if let Some(k) = retention.keep_every.filter(|&k| k > 0) {
        keep.extend(valid.iter().map(|(s, _)| *s).filter(|s| s % k == 0));
    }
    if let Some((metric, n, higher)) = &retention.keep_best {
        let mut ranked: Vec<(u64, f64)> = valid
            .iter()
            .filter_map(|(s, m)| m.metrics.get(metric).map(|&v| (*s, v)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        ranked.sort_by(|a, b| {
            let by_value = if *higher {
                b.1.total_cmp(&a.1)
            } else {
                a.1.total_cmp(&b.1)
            };
            by_value.then(b.0.cmp(&a.0))
        });
        keep.extend(ranked.iter().take(*n).map(|(s, _)| *s));
    }
    keep.sort_unstable();
    keep.dedup();
    keep
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn entry(step: u64, metrics: &[(&str, f64)], valid: bool) -> CheckpointEntry {
        let status = if valid {
            let metrics = metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            CheckpointStatus::Valid(Manifest::new(step, Vec::new(), BTreeMap::new(), metrics))
        } else {
            CheckpointStatus::Corrupt {
                reason: "test".into(),
            }
        };
        CheckpointEntry {
            step,
            dir: PathBuf::new(),
            status,
        }
    }

    #[test]
    fn retention_rules_union_and_always_keep_the_newest_valid() {
        let entries = vec![
            entry(100, &[("loss", 0.9)], true),
            entry(200, &[("loss", 0.1)], true),
            entry(300, &[("loss", f64::NAN)], true),
            entry(400, &[("loss", 0.5)], false),
            entry(500, &[("loss", 0.4)], true),
            entry(600, &[("loss", 0.3)], true),
            entry(700, &[], false),
        ];
        let none = Retention::default();
        // 700 is newer than the newest valid (600): kept for inspection.
        assert_eq!(kept_steps(&entries, 600, &none), [600, 700]);
        let last = Retention {
            keep_last: Some(2),
            ..Default::default()
        };
        assert_eq!(kept_steps(&entries, 600, &last), [500, 600, 700]);
        let every = Retention {
            keep_every: Some(200),
            ..Default::default()
        };
        // 400 is corrupt: not kept by keep_every.
        assert_eq!(kept_steps(&entries, 600, &every), [200, 600, 700]);
        let best = Retention {
            keep_best: Some(("loss".into(), 2, false)),
            ..Default::default()
        };
        assert_eq!(kept_steps(&entries, 600, &best), [200, 600, 700]);
        let best_high = Retention {
            keep_best: Some(("loss".into(), 1, true)),
            keep_every: Some(0),
            ..Default::default()
        };
        assert_eq!(kept_steps(&entries, 600, &best_high), [100, 600, 700]);
    }
}
