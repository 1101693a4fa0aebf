//! Placement plans over several devices, and loading them: every device reads only its parts'
//! bytes, and the bytes it holds are the file's.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;

use mlmf::shard::{synthetic, DeviceSet, Plan, Split, Targets};
use mlmf::{DType, Error, ModelFile, Slice};

fn minilm() -> ModelFile {
    ModelFile::open(common::model("all-MiniLM-L6-v2/model.safetensors")).unwrap()
}

fn gemma() -> ModelFile {
    ModelFile::open(common::model("gemma-3-270m-q4_k_m.gguf")).unwrap()
}

/// The bytes of `slice` of tensor `name`, cut by hand from the file's bytes of the whole tensor.
fn expected(file: &ModelFile, name: &str, slice: &Slice) -> Vec<u8> {
    let info = file.tensor(name).unwrap();
    let whole = file.bytes(info);
    let dims = info.shape.dims();
    let rows = dims.first().copied().unwrap_or(1);
    match slice {
        Slice::Whole => whole.to_vec(),
        Slice::Rows(r) if dims.len() == 1 => {
            let e = info.dtype.block_bytes() as usize / info.dtype.block_elems() as usize;
            whole[r.start * e..r.end * e].to_vec()
        }
        Slice::Rows(r) => {
            let row = whole.len() / rows;
            whole[r.start * row..r.end * row].to_vec()
        }
        Slice::Cols(c) => {
            let row = whole.len() / rows;
            let per_block = info.dtype.block_bytes() as usize;
            let b = info.dtype.block_elems() as usize;
            (0..rows)
                .flat_map(|i| {
                    whole[i * row + c.start / b * per_block..i * row + c.end / b * per_block]
                        .iter()
                        .copied()
                })
                .collect()
        }
    }
}

/// Split tensors are covered exactly once by their parts; replicated ones are whole on every
/// device; the JSON reads back to the same plan.
fn check_plan(file: &ModelFile, plan: &Plan) {
    let mut covered: BTreeMap<&str, Vec<(usize, &Slice)>> = BTreeMap::new();
    for d in &plan.devices {
        for p in &d.tensors {
            covered
                .entry(&p.name)
                .or_default()
                .push((d.device, &p.slice));
        }
    }
    for info in file.tensors() {
        let parts = &covered[info.name.as_str()];
        if plan.replicated.contains(&info.name) || plan.split == "replicate" {
            assert_eq!(parts.len(), plan.devices.len(), "{}", info.name);
            assert!(
                parts.iter().all(|(_, s)| **s == Slice::Whole),
                "{}",
                info.name
            );
            continue;
        }
        // One whole, or consecutive ranges from 0 to the dimension's end.
        let mut at = 0;
        let mut end = None;
        for (_, s) in parts {
            match s {
                Slice::Whole => assert_eq!(parts.len(), 1, "{}", info.name),
                Slice::Rows(r) | Slice::Cols(r) => {
                    assert_eq!(r.start, at, "{}: {:?}", info.name, parts);
                    at = r.end;
                    let dim = match s {
                        Slice::Rows(_) => info.shape.dims()[0],
                        _ => info.shape.dims()[1],
                    };
                    end = Some(dim);
                }
            }
        }
        if let Some(dim) = end {
            assert_eq!(at, dim, "{}: {:?}", info.name, parts);
        }
    }
    let back = Plan::from_json(&plan.to_json().to_string()).unwrap();
    assert_eq!(&back, plan);
}

fn replicated_bytes(file: &ModelFile, plan: &Plan) -> u64 {
    plan.replicated
        .iter()
        .map(|n| file.tensor(n).unwrap().byte_len())
        .sum()
}

#[test]
fn row_split_reads_each_byte_once_plus_the_replicated_ones() {
    for (file, count) in [(minilm(), 2), (gemma(), 2), (minilm(), 4)] {
        let set = DeviceSet::logical(count, None).unwrap();
        let plan = Plan::for_file(&file, &Split::Row, &set.targets(None)).unwrap();
        check_plan(&file, &plan);
        // From config.json beside MiniLM, from the GGUF metadata for Gemma.
        let heads = if file.format() == mlmf::Format::Gguf {
            (4, 1)
        } else {
            (12, 12)
        };
        assert_eq!(plan.heads, Some(heads));
        let loaded = set.load(&file, &plan).unwrap();
        let read: u64 = loaded.iter().map(|l| l.bytes_read).sum();
        let extra = (count as u64 - 1) * replicated_bytes(&file, &plan);
        assert_eq!(read, file.data_bytes() + extra, "{}", file.path().display());
        assert_eq!(read, plan.placed_bytes());
        for (d, l) in loaded.iter().enumerate() {
            assert_eq!(l.bytes_read, plan.devices[d].bytes);
            for (part, t) in &l.parts {
                let got = t.to_bytes().unwrap();
                assert!(
                    got == expected(&file, &part.name, &part.slice),
                    "device {d}: {} {}",
                    part.name,
                    part.slice
                );
            }
        }
    }
}

#[test]
fn layer_split_places_consecutive_blocks_and_reads_the_file_once() {
    let file = gemma();
    let set = DeviceSet::cpu(2, None).unwrap();
    let plan = Plan::for_file(&file, &Split::Layer, &set.targets(Some(vec![3.0, 1.0]))).unwrap();
    check_plan(&file, &plan);
    // Blocks 0..k on device 0, k.. on device 1; the embeddings with the first, the final norm
    // with the last.
    let block = |name: &str| {
        name.strip_prefix("blk.")
            .and_then(|s| s.split('.').next()?.parse::<usize>().ok())
    };
    let last0 = plan.devices[0]
        .tensors
        .iter()
        .filter_map(|p| block(&p.name))
        .max()
        .unwrap();
    let first1 = plan.devices[1]
        .tensors
        .iter()
        .filter_map(|p| block(&p.name))
        .min()
        .unwrap();
    assert_eq!(first1, last0 + 1);
    assert!(plan.devices[0]
        .tensors
        .iter()
        .any(|p| p.name == "token_embd.weight"));
    assert!(plan.devices[1]
        .tensors
        .iter()
        .any(|p| p.name == "output_norm.weight"));
    let loaded = set.load(&file, &plan).unwrap();
    let read: u64 = loaded.iter().map(|l| l.bytes_read).sum();
    assert_eq!(read, file.data_bytes());
}

#[test]
fn replicate_reads_the_file_once_per_device() {
    let file = minilm();
    let set = DeviceSet::cpu(3, None).unwrap();
    let plan = Plan::for_file(&file, &Split::Replicate, &set.targets(None)).unwrap();
    check_plan(&file, &plan);
    let loaded = set.load(&file, &plan).unwrap();
    for l in &loaded {
        assert_eq!(l.bytes_read, file.data_bytes());
        assert_eq!(l.bytes_on_device(), file.data_bytes());
    }
}

#[test]
fn plans_are_the_same_every_time() {
    let file = gemma();
    for split in [Split::Row, Split::Layer, Split::Replicate] {
        let t = Targets {
            count: 4,
            ratios: Some(vec![1.0, 2.0, 0.5, 1.0]),
            budgets: vec![],
        };
        let a = Plan::for_file(&file, &split, &t).unwrap();
        let b = Plan::for_file(&file, &split, &t).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_json().to_string(), b.to_json().to_string());
    }
}

#[test]
fn row_split_keeps_whole_heads_and_pairs_columns_with_rows() {
    let file = minilm();
    let plan = Plan::for_file(&file, &Split::Row, &Targets::equal(4)).unwrap();
    assert_eq!(plan.heads, Some((12, 12)));
    for d in &plan.devices {
        let part = |name: &str| {
            d.tensors
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.slice.clone())
        };
        let q = part("encoder.layer.3.attention.self.query.weight").unwrap();
        let o = part("encoder.layer.3.attention.output.dense.weight").unwrap();
        let (Slice::Rows(qr), Slice::Cols(oc)) = (&q, &o) else {
            panic!("{q} {o}")
        };
        assert_eq!(qr, oc);
        // 12 heads of 32 over 4 devices: 3 heads each.
        assert_eq!(qr.len(), 96);
        assert_eq!(qr.start % 32, 0);
        let up = part("encoder.layer.3.intermediate.dense.weight").unwrap();
        let down = part("encoder.layer.3.output.dense.weight").unwrap();
        assert_eq!(
            (up, down),
            (
                Slice::Rows(d.device * 384..(d.device + 1) * 384),
                Slice::Cols(d.device * 384..(d.device + 1) * 384)
            )
        );
        assert_eq!(
            part("encoder.layer.3.output.dense.bias"),
            Some(Slice::Whole),
            "the bias after a column split is replicated"
        );
    }
}

#[test]
fn a_plan_that_would_cut_a_block_names_the_tensor() {
    // Llama 3 8B in Q4_K over 32 devices: one query head (128 columns) each cuts the 256-element
    // blocks of the attention output's rows.
    let (tensors, heads) = synthetic::index("llama-8b", DType::Q4_K).unwrap();
    let err = Plan::new(
        "llama-8b",
        &tensors,
        Some(heads),
        &Split::Row,
        &Targets::equal(32),
    )
    .unwrap_err();
    match &err {
        Error::BadSlice { tensor, .. } => assert_eq!(tensor, "blk.0.attn_output.weight"),
        other => panic!("expected BadSlice, got {other}"),
    }
    // Eight devices take one key-value group each: whole blocks.
    let plan = Plan::new(
        "llama-8b",
        &tensors,
        Some(heads),
        &Split::Row,
        &Targets::equal(8),
    )
    .unwrap();
    let split: u64 = tensors
        .iter()
        .filter(|t| !plan.replicated.contains(&t.name))
        .map(|t| t.byte_len())
        .sum();
    let replicated: u64 = tensors.iter().map(|t| t.byte_len()).sum::<u64>() - split;
    assert_eq!(plan.placed_bytes(), split + 8 * replicated);
}

#[test]
fn budgets_and_prefix_rules() {
    let file = minilm();
    let t = Targets {
        count: 2,
        ratios: None,
        budgets: vec![Some(10 << 20), Some(200 << 20)],
    };
    let err = Plan::for_file(&file, &Split::Replicate, &t).unwrap_err();
    assert!(matches!(err, Error::BadPlan { .. }), "{err}");
    assert!(err.to_string().contains("device 0 needs"), "{err}");
    // The budgets' proportions are the default ratios of a layer split.
    let plan = Plan::for_file(
        &file,
        &Split::Layer,
        &Targets {
            budgets: vec![Some(200 << 20), Some(200 << 20)],
            ..t.clone()
        },
    )
    .unwrap();
    assert!(plan.devices.iter().all(|d| d.bytes > 0));
    let rules = Split::ByPrefix(vec![
        mlmf::shard::PrefixRule {
            prefix: "embeddings.".into(),
            devices: vec![0],
        },
        mlmf::shard::PrefixRule {
            prefix: String::new(),
            devices: vec![1],
        },
    ]);
    let plan = Plan::for_file(&file, &rules, &Targets::equal(2)).unwrap();
    assert!(plan.devices[0]
        .tensors
        .iter()
        .all(|p| p.name.starts_with("embeddings.")));
    assert!(plan.devices[1]
        .tensors
        .iter()
        .all(|p| !p.name.starts_with("embeddings.")));
    assert_eq!(plan.placed_bytes(), file.data_bytes());
}

#[test]
fn a_plan_for_another_file_is_refused() {
    let plan = Plan::for_file(&minilm(), &Split::Row, &Targets::equal(2)).unwrap();
    let mut wrong = plan.clone();
    wrong.devices[1].tensors[0].byte_range.start += 4;
    let err = DeviceSet::cpu(2, None)
        .unwrap()
        .load(&minilm(), &wrong)
        .err()
        .unwrap();
    assert!(matches!(err, Error::BadPlan { .. }), "{err}");
}

#[test]
fn a_device_on_every_adapter() {
    let set = DeviceSet::adapters(Some(64 << 20)).unwrap();
    assert_eq!(set.len(), mlmf::adapters().unwrap().len());
    for (i, d) in set.devices().iter().enumerate() {
        assert!(d.name.starts_with(&format!("{i}: ")), "{}", d.name);
        assert_eq!(d.budget, Some(64 << 20));
        assert!(d.device.is_gpu());
    }
    let t = set.targets(None);
    assert_eq!((t.count, t.budgets.len()), (set.len(), set.len()));
}
