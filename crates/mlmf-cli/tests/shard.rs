//! `mlmf plan` and `mlmf bench-load --split`: the JSON forms, checked against the safetensors
//! header read here by hand and against sizes computed here from a model's published shapes.

#[path = "../../../tests/common/mod.rs"]
mod common;
#[cfg(feature = "mpi")]
#[path = "../../../tests/common/mpirun.rs"]
mod mpirun;
mod run;

use run::{mlmf, run};
use serde_json::Value;

fn json(args: &[&str]) -> Value {
    serde_json::from_slice(&mlmf(args).stdout).unwrap()
}

fn json_lines(args: &[&str]) -> Vec<Value> {
    let out = mlmf(args);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `mlmf plan PATH --devices 2 --split SPLIT --json`.
fn plan_json(path: &std::path::Path, split: &str) -> Value {
    json(&[
        "plan",
        path.to_str().unwrap(),
        "--devices",
        "2",
        "--split",
        split,
        "--json",
    ])
}

/// Each tensor's `data_offsets` length, from the safetensors header parsed here.
fn header_sizes(path: &std::path::Path) -> Vec<(String, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = v["data_offsets"].as_array().unwrap();
            (k.clone(), o[1].as_u64().unwrap() - o[0].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn plan_json_row_split_of_minilm() {
    let path = common::model(common::MINILM);
    let sizes = header_sizes(&path);
    let total: u64 = sizes.iter().map(|s| s.1).sum();
    let plan = plan_json(&path, "row");
    assert_eq!(plan["total_bytes"].as_u64(), Some(total));
    assert_eq!(plan["split"], "row");
    let replicated: Vec<&str> = plan["replicated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let replicated_bytes: u64 = sizes
        .iter()
        .filter(|(n, _)| replicated.contains(&n.as_str()))
        .map(|s| s.1)
        .sum();
    let devices = plan["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let mut placed = 0;
    for d in devices {
        let tensors = d["tensors"].as_array().unwrap();
        let sum: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
        assert_eq!(d["bytes"].as_u64(), Some(sum));
        placed += sum;
        for t in tensors {
            let r = &t["byte_ranges"][0];
            let (start, end) = (r["start"].as_u64().unwrap(), r["end"].as_u64().unwrap());
            let count = r["count"].as_u64().unwrap_or(1);
            assert_eq!((end - start) * count, t["bytes"].as_u64().unwrap(), "{t}");
            if t.get("cols").is_some() {
                assert!(
                    count > 1 && r["stride"].as_u64().unwrap() > end - start,
                    "{t}"
                );
            }
        }
    }
    assert_eq!(placed, total + replicated_bytes);
    let q = devices[1]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "encoder.layer.0.attention.self.query.weight")
        .unwrap();
    assert_eq!(q["rows"], serde_json::json!([192, 384]));
}

#[test]
fn plan_of_a_synthetic_llama_70b() {
    // Llama 3 70B's config: vocab 128256, hidden 8192, 80 layers, 64 heads and 8 key-value
    // heads of 128, feed-forward 28672. Q4_K: 144 bytes per 256 weights; norms in f32.
    let (v, h, l, kv, f) = (128256u64, 8192u64, 80u64, 1024u64, 28672u64);
    let weights = 2 * v * h + l * (2 * h * h + 2 * kv * h + 3 * h * f);
    let norms = h + l * 2 * h;
    let total = weights / 256 * 144 + norms * 4;
    let plan = json(&[
        "plan",
        "--synthetic",
        "llama-70b",
        "--devices",
        "8",
        "--split",
        "row",
        "--json",
    ]);
    assert_eq!(plan["total_bytes"].as_u64(), Some(total));
    let devices = plan["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 8);
    // Each device: an eighth of every matrix, and every norm.
    for d in devices {
        assert_eq!(
            d["bytes"].as_u64(),
            Some(weights / 256 * 144 / 8 + norms * 4)
        );
    }
    // Per token and device: two ring all-reduces of the hidden state per layer, one for the
    // embedding lookup, and the gather of the logits, all f32.
    let ring = |bytes: u64| 2 * 7 * bytes / 8;
    let traffic = (2 * l + 1) * ring(h * 4) + 7 * v * 4 / 8;
    assert_eq!(plan["traffic_per_token_bytes"].as_u64(), Some(traffic));
}

#[test]
fn a_plan_that_cuts_blocks_fails_naming_the_tensor() {
    let out = run(&[
        "plan",
        "--synthetic",
        "llama-8b",
        "--devices",
        "32",
        "--split",
        "row",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("blk.0.attn_output.weight"), "{err}");
    assert!(err.contains("Q4_K block"), "{err}");
}

#[test]
fn bench_load_row_split_on_two_devices_in_one_process() {
    let path = common::model(common::GEMMA3);
    let ranks = json_lines(&[
        "bench-load",
        path.to_str().unwrap(),
        "--split",
        "row",
        "--devices",
        "2",
        "--json",
    ]);
    let plan = plan_json(&path, "row");
    assert_eq!(ranks.len(), 2);
    for (i, r) in ranks.iter().enumerate() {
        assert_eq!(r["rank"].as_u64(), Some(i as u64));
        assert_eq!(r["world_size"].as_u64(), Some(2));
        assert_eq!(r["verified"], true);
        assert_eq!(r["bytes_read"], plan["devices"][i]["bytes"]);
        assert_eq!(r["bytes_on_device"], r["bytes_read"]);
        assert!(r["seconds"].as_f64().unwrap() > 0.0);
    }
    // Rank 0 broadcasting the replicated tensors: the ranks together read the file once.
    let ranks = json_lines(&[
        "bench-load",
        path.to_str().unwrap(),
        "--split",
        "row",
        "--devices",
        "2",
        "--replicated",
        "broadcast",
        "--json",
    ]);
    let read: u64 = ranks
        .iter()
        .map(|r| r["bytes_read"].as_u64().unwrap())
        .sum();
    assert_eq!(Some(read), plan["total_bytes"].as_u64());
    for (i, r) in ranks.iter().enumerate() {
        assert_eq!(r["bytes_on_device"], plan["devices"][i]["bytes"]);
        assert_eq!(r["verified"], true);
    }
}

/// The same under `mpirun -np 2`, one process per rank (Open MPI's run-as-root variables are
/// the test's, not a user's).
#[cfg(feature = "mpi")]
#[test]
fn bench_load_under_mpirun() {
    let path = common::model(common::GEMMA3);
    let out = mpirun::command(2)
        .arg(env!("CARGO_BIN_EXE_mlmf"))
        .args([
            "bench-load",
            path.to_str().unwrap(),
            "--split",
            "layer",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ranks: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ranks.len(), 2, "rank 0 prints every rank");
    let total: u64 = ranks
        .iter()
        .map(|r| r["bytes_read"].as_u64().unwrap())
        .sum();
    let plan = plan_json(&path, "layer");
    assert_eq!(
        Some(total),
        plan["total_bytes"].as_u64(),
        "a layer split reads the file once"
    );
    assert!(ranks
        .iter()
        .all(|r| r["verified"] == true && r["split"] == "layer"));
}
