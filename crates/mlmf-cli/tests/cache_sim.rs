//! `mlmf cache-sim` over the three cached models (all-MiniLM-L6-v2, MobileNetV2, SmolLM2 Q4_1):
//! its JSON fields and their relations, the budget kept, the same counts for the same seed, byte
//! sizes with units, and a budget below a requested tensor as an error naming it.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod run;

use run::{mlmf, run};
use serde_json::Value;

fn models() -> Vec<String> {
    [common::MINILM, common::MOBILENET, common::SMOLLM2]
        .iter()
        .map(|m| common::model(m).display().to_string())
        .collect()
}

fn sim(args: &[&str]) -> Value {
    let models = models();
    let mut all: Vec<&str> = vec!["cache-sim", "--json"];
    all.extend_from_slice(args);
    all.extend(models.iter().map(String::as_str));
    let out = mlmf(&all);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// The sizes of the three files on disk, independent of mlmf's parsers: more than any load of
/// all their tensors reads.
fn files_bytes() -> u64 {
    models()
        .iter()
        .map(|m| std::fs::metadata(m).unwrap().len())
        .sum()
}

#[test]
fn a_budget_below_the_models_evicts_and_is_kept() {
    let total = files_bytes();
    for device in ["gpu", "cpu"] {
        let v = sim(&[
            "--budget",
            "100M",
            "--requests",
            "60",
            "--seed",
            "3",
            "--device",
            device,
        ]);
        assert!(100_000_000 < total);
        assert_eq!(n(&v, "requests"), 60);
        assert_eq!(n(&v, "model_requests") + n(&v, "tensor_requests"), 60);
        assert_eq!(n(&v, "budget_bytes"), 100_000_000);
        // Every tensor handed out was a hit or a load; nothing was warmed.
        assert_eq!(n(&v, "hits") + n(&v, "misses"), n(&v, "tensors"), "{v}");
        assert!(n(&v, "evictions") > 0, "{v}");
        assert!(n(&v, "peak_resident_bytes") <= 100_000_000, "{v}");
        assert!(
            n(&v, "resident_bytes") <= n(&v, "peak_resident_bytes"),
            "{v}"
        );
        assert!(n(&v, "bytes_loaded") > 0 && v["seconds"].as_f64().unwrap() > 0.0);
        let by_model: u64 = v["resident_by_model"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| pair[1].as_u64().unwrap())
            .sum();
        assert_eq!(by_model, n(&v, "resident_bytes"));
    }
}

#[test]
fn an_unbounded_budget_loads_each_tensor_once_and_a_seed_repeats() {
    let a = sim(&[
        "--budget",
        "1GiB",
        "--requests",
        "40",
        "--seed",
        "9",
        "--device",
        "cpu",
    ]);
    assert_eq!(n(&a, "budget_bytes"), 1 << 30);
    assert_eq!(n(&a, "evictions"), 0);
    // No tensor loaded twice: at most every tensor's bytes, which the files hold.
    assert!(n(&a, "bytes_loaded") <= files_bytes(), "{a}");
    assert_eq!(n(&a, "resident_bytes"), n(&a, "peak_resident_bytes"));
    let b = sim(&[
        "--budget",
        "1073741824",
        "--requests",
        "40",
        "--seed",
        "9",
        "--device",
        "cpu",
    ]);
    for key in [
        "tensors",
        "hits",
        "misses",
        "bytes_loaded",
        "model_requests",
    ] {
        assert_eq!(n(&a, key), n(&b, key), "{key}");
    }
}

#[test]
fn text_output_names_the_counts() {
    let models = models();
    let out = mlmf(&[
        "cache-sim",
        "--budget",
        "50000000",
        "--requests",
        "10",
        "--device",
        "cpu",
        &models[0],
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("10 requests ("), "{text}");
    assert!(
        text.contains("evictions") && text.contains("budget 50000000 bytes"),
        "{text}"
    );
    assert!(text.contains(&models[0]), "{text}");
}

#[test]
fn a_budget_below_a_requested_tensor_is_an_error_naming_it() {
    let models = models();
    for device in ["cpu", "gpu"] {
        let out = run(&[
            "cache-sim",
            "--budget",
            "1000",
            "--requests",
            "5",
            "--device",
            device,
            &models[0],
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains("does not fit the cache budget of 1000 bytes")
                && stderr.contains("tensor '")
                && stderr.contains(" bytes)"),
            "{stderr}"
        );
    }
    for bad in ["1.5G", "12X", "99999999999999999999"] {
        let out = run(&["cache-sim", "--budget", bad, &models[0]]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("--budget") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}
