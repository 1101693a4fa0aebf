//! `mlmf convert` and the writers under it, on real files: round trips of MiniLM through GGUF and
//! back, sharded output, dtype conversion with llama.cpp's q/k permutation undone on SmolLM2, a
//! PyTorch input, and every output checked by the Python reference readers (safetensors, gguf-py).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mlmf::checkpoint::{convert_file, ConvertOptions, MapDirection};
use mlmf::{DType, Device, Format, ModelFile};

fn convert(input: &Path, out: &Path, options: &ConvertOptions) -> Vec<mlmf::checkpoint::Converted> {
    let file = ModelFile::open(input).unwrap();
    convert_file(&file, out, options, &mut |_| {}).unwrap()
}

/// Per tensor name: dtype, shape, sha256 of the bytes.
type Summary = BTreeMap<String, (String, Vec<u64>, String)>;

/// What Python's `safetensors` reads from `files`: name -> (dtype, shape, sha256).
fn python_safetensors(files: &[PathBuf]) -> (serde_json::Value, Summary) {
    let script = common::workspace_dir().join("scripts/check_safetensors.py");
    let out = Command::new(common::python())
        .arg(&script)
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tensors = v["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, t)| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            (
                k.clone(),
                (
                    t["dtype"].as_str().unwrap().to_string(),
                    shape,
                    t["sha256"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    (v["metadata"].clone(), tensors)
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// Every tensor of `a` is in `b` under the same name with the same dtype, shape and bytes.
fn assert_same_tensors(a: &ModelFile, b: &ModelFile) {
    assert_eq!(a.tensors().len(), b.tensors().len());
    for t in a.tensors() {
        let u = b
            .tensor(&t.name)
            .unwrap_or_else(|_| panic!("{} missing", t.name));
        assert_eq!((u.dtype, &u.shape), (t.dtype, &t.shape), "{}", t.name);
        assert!(a.bytes(t) == b.bytes(u), "{} differs", t.name);
    }
}

#[test]
fn minilm_round_trips_through_gguf_bit_identical() {
    let src = common::model(common::MINILM);
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("minilm.gguf");
    let back = tmp.path().join("minilm.safetensors");
    let to_gguf = ConvertOptions {
        map: Some(MapDirection::HfToGguf),
        ..Default::default()
    };
    let report = convert(&src, &gguf, &to_gguf);
    assert!(
        report.iter().any(|t| t.name == "token_embd.weight"),
        "names were not mapped"
    );
    let g = ModelFile::open(&gguf).unwrap();
    assert_eq!(g.format(), Format::Gguf);
    assert_eq!(
        g.metadata()
            .get("general.architecture")
            .and_then(|v| v.as_str()),
        Some("bert")
    );
    // gguf-py reads every tensor with the bytes we wrote.
    let py = common::gguf_py(&gguf);
    let tensors = py["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), g.tensors().len());
    for t in tensors {
        let ours = g.tensor(t["name"].as_str().unwrap()).unwrap();
        assert_eq!(t["sha256"].as_str().unwrap(), sha256(g.bytes(ours)));
    }

    let to_hf = ConvertOptions {
        map: Some(MapDirection::GgufToHf),
        ..Default::default()
    };
    convert(&gguf, &back, &to_hf);
    let original = ModelFile::open(&src).unwrap();
    let round = ModelFile::open(&back).unwrap();
    assert_same_tensors(&original, &round);
    // Both outputs verify and name their parents; same tensors, same content hash.
    for (file, parent) in [(&g, &src), (&round, &gguf)] {
        mlmf::provenance::verify(file).unwrap().check().unwrap();
        let record = mlmf::provenance::read_record(file).unwrap().unwrap();
        assert!(record.parents[0]
            .path
            .ends_with(parent.file_name().unwrap().to_str().unwrap()));
    }
    assert_eq!(
        mlmf::provenance::content_hash(&round).unwrap(),
        mlmf::provenance::content_hash(&original).unwrap()
    );
    // The original's __metadata__ comes back under its own keys.
    for (k, v) in original.metadata().iter() {
        assert_eq!(round.metadata().get(k), Some(v), "{k}");
    }
    // Python's safetensors reads the same.
    let (_, py) = python_safetensors(std::slice::from_ref(&back));
    assert_eq!(py.len(), round.tensors().len());
    for t in round.tensors() {
        let (dtype, shape, hash) = &py[&t.name];
        assert_eq!(dtype, t.dtype.info().safetensors.unwrap());
        assert_eq!(
            shape,
            &t.shape.dims().iter().map(|&d| d as u64).collect::<Vec<_>>()
        );
        assert_eq!(hash, &sha256(round.bytes(t)));
    }
}

#[test]
fn sharded_output_opens_in_both_readers_and_force_replaces_it() {
    let src = common::model(common::MINILM);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sharded");
    let options = ConvertOptions {
        max_shard_bytes: Some(20_000_000),
        ..Default::default()
    };
    convert(&src, &out, &options);
    let shards: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        v.sort();
        v
    };
    assert!(shards.len() >= 4, "{shards:?}");
    let original = ModelFile::open(&src).unwrap();
    let sharded = ModelFile::open(&out).unwrap();
    assert_eq!(sharded.format(), Format::ShardedSafetensors);
    assert_same_tensors(&original, &sharded);
    // The index records the whole checkpoint, each shard its own tensors.
    mlmf::provenance::verify(&sharded).unwrap().check().unwrap();
    for shard in &shards {
        mlmf::provenance::verify(&ModelFile::open(shard).unwrap())
            .unwrap()
            .check()
            .unwrap();
    }
    let (_, py) = python_safetensors(&shards);
    assert_eq!(py.len(), original.tensors().len());

    // Without --force an existing output is refused; with it, replaced.
    let file = ModelFile::open(&src).unwrap();
    assert!(convert_file(&file, &out, &options, &mut |_| {}).is_err());
    let f16 = ConvertOptions {
        dtype: Some(DType::F16),
        force: true,
        ..options
    };
    convert_file(&file, &out, &f16, &mut |_| {}).unwrap();
    let replaced = ModelFile::open(&out).unwrap();
    let w = replaced
        .tensor("embeddings.word_embeddings.weight")
        .unwrap();
    assert_eq!(w.dtype, DType::F16);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["sharded"], "temporary directories left behind");
}

/// llama.cpp's q/k permutation, written out independently of the library: GGUF row `g` holds
/// Hugging Face row `h*2*half + s*half + i` where `g = h*2*half + 2*i + s`.
fn hf_row_of_gguf_row(g: usize, rows: usize, n_head: usize) -> usize {
    let half = rows / n_head / 2;
    let (h, rest) = (g / (2 * half), g % (2 * half));
    h * 2 * half + (rest % 2) * half + rest / 2
}

#[test]
fn smollm2_to_hf_f16_undoes_the_qk_permutation() {
    let src = common::model(common::SMOLLM2);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2.safetensors");
    let options = ConvertOptions {
        map: Some(MapDirection::GgufToHf),
        dtype: Some(DType::F16),
        ..Default::default()
    };
    let report = convert(&src, &out, &options);
    let gguf = ModelFile::open(&src).unwrap();
    let hf = ModelFile::open(&out).unwrap();
    let permuted = report.iter().filter(|t| t.note.is_some()).count();
    assert_eq!(permuted, 2 * 30, "q and k of 30 layers");
    let meta = |k: &str| gguf.metadata().get(k).unwrap().as_u64().unwrap() as usize;
    for (gguf_name, hf_name, heads) in [
        (
            "blk.3.attn_q.weight",
            "model.layers.3.self_attn.q_proj.weight",
            meta("llama.attention.head_count"),
        ),
        (
            "blk.3.attn_k.weight",
            "model.layers.3.self_attn.k_proj.weight",
            meta("llama.attention.head_count_kv"),
        ),
        (
            "blk.3.attn_v.weight",
            "model.layers.3.self_attn.v_proj.weight",
            0,
        ),
    ] {
        let w = mlmf::ops::convert::to_f32(&Device::Cpu.load(&gguf, gguf_name).unwrap()).unwrap();
        let w: Vec<f32> = w
            .to_bytes()
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let info = hf.tensor(hf_name).unwrap();
        assert_eq!(info.dtype, DType::F16);
        let &[rows, cols] = info.shape.dims() else {
            panic!()
        };
        let got: Vec<u16> = hf
            .bytes(info)
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        for g in 0..rows {
            let r = if heads == 0 {
                g
            } else {
                hf_row_of_gguf_row(g, rows, heads)
            };
            for c in 0..cols {
                let want = half::f16::from_f32(w[g * cols + c]).to_bits();
                assert_eq!(got[r * cols + c], want, "{hf_name} row {r} col {c}");
            }
        }
    }
}

#[test]
fn pytorch_state_dict_converts_to_safetensors_unchanged() {
    let src = common::model(common::MOBILENET);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mobilenet.safetensors");
    convert(&src, &out, &ConvertOptions::default());
    let original = ModelFile::open(&src).unwrap();
    let written = ModelFile::open(&out).unwrap();
    assert_eq!(original.tensors().len(), written.tensors().len());
    for t in original.tensors() {
        let u = written.tensor(&t.name).unwrap();
        assert_eq!((u.dtype, &u.shape), (t.dtype, &t.shape), "{}", t.name);
        let loaded = Device::Cpu
            .load(&original, &t.name)
            .unwrap()
            .to_bytes()
            .unwrap();
        assert_eq!(written.bytes(u), &loaded[..], "{}", t.name);
    }
    let (_, py) = python_safetensors(&[out]);
    assert_eq!(py.len(), written.tensors().len());
}

#[path = "../../../tests/common/views.rs"]
mod views;

/// gguf-py's view of a GGUF file's tensors: name -> (type, ne, sha256), and its metadata value
/// under `key` (as `scripts/check_gguf.py` types it), if there.
fn gguf_py_tensors(path: &Path, key: &str) -> (Summary, Option<serde_json::Value>) {
    let g = common::gguf_py(path);
    let tensors = g["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let ne = t["ne"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            (
                t["name"].as_str().unwrap().to_string(),
                (
                    t["type"].as_str().unwrap().to_string(),
                    ne,
                    t["sha256"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    let value = g["kv"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| kv["value"].clone());
    (tensors, value)
}

/// The string items of a string array as check_gguf.py prints it.
fn gguf_py_strings(value: &serde_json::Value) -> Vec<String> {
    assert_eq!(value["type"], "ARRAY");
    value["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap().to_string())
        .collect()
}

/// A PyTorch zip with views with gaps (`[:, ::2]`, columns, every other row), an expanded view,
/// tied storages and 0-d tensors (its pickle written by hand) converts to safetensors and to
/// GGUF with every tensor's own bytes, as Python's `safetensors` and gguf-py read them; GGUF
/// holds the scalars as `[1]`, lists them under `mlmf.scalar_tensors`, and our reader (and a
/// conversion back to safetensors) gives them their 0-d shape again.
#[test]
fn pytorch_views_and_scalars_convert_to_safetensors_and_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = views::expected();
    let want = |scalar_as_1: bool| -> Summary {
        expected
            .iter()
            .map(|e| {
                let mut shape: Vec<u64> = e.shape.iter().map(|&d| d as u64).collect();
                if scalar_as_1 {
                    // GGUF order, fastest first; a scalar as ggml writes it.
                    shape.reverse();
                    if shape.is_empty() {
                        shape.push(1);
                    }
                }
                let entry = (e.dtype.to_string(), shape, sha256(&e.bytes));
                (e.name.to_string(), entry)
            })
            .collect()
    };

    let st = tmp.path().join("views.safetensors");
    convert(&views::path(), &st, &ConvertOptions::default());
    let (_, py) = python_safetensors(std::slice::from_ref(&st));
    assert_eq!(py, want(false));

    let gguf = tmp.path().join("views.gguf");
    convert(&views::path(), &gguf, &ConvertOptions::default());
    let (py, scalars) = gguf_py_tensors(&gguf, "mlmf.scalar_tensors");
    assert_eq!(py, want(true));
    assert_eq!(gguf_py_strings(&scalars.unwrap()), views::SCALARS);
    let back = ModelFile::open(&gguf).unwrap();
    for e in &expected {
        let t = back.tensor(e.name).unwrap();
        assert_eq!(t.shape.dims(), &e.shape[..], "{}", e.name);
        assert_eq!(back.bytes(t), &e.bytes[..], "{}", e.name);
    }

    // Back to safetensors: 0-d again, and GGUF's list of scalars is not carried there.
    let st2 = tmp.path().join("back.safetensors");
    convert(&gguf, &st2, &ConvertOptions::default());
    let (meta, py) = python_safetensors(std::slice::from_ref(&st2));
    assert_eq!(py, want(false));
    assert!(meta.get("mlmf.scalar_tensors").is_none(), "{meta}");
    assert!(meta.get("mlmf.provenance").is_some(), "{meta}");
}

/// gguf-py writes a numpy 0-d array with n_dims = 0: it opens, converts to safetensors as 0-d
/// and to GGUF as ggml's `[1]` listed under `mlmf.scalar_tensors`, which reads back as 0-d.
#[test]
fn gguf_py_scalars_round_trip() {
    let src = common::workspace_dir().join("crates/mlmf-core/tests/data/gguf_py_scalars.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let (orig, none) = gguf_py_tensors(&src, "mlmf.scalar_tensors");
    assert!(none.is_none());
    assert_eq!(orig["scale"].1, Vec::<u64>::new());

    let st = tmp.path().join("s.safetensors");
    convert(&src, &st, &ConvertOptions::default());
    let (_, py) = python_safetensors(std::slice::from_ref(&st));
    for (name, (_, ne, sha)) in &orig {
        let (_, shape, st_sha) = &py[name];
        let numpy: Vec<u64> = ne.iter().rev().copied().collect();
        assert_eq!((shape, st_sha), (&numpy, sha), "{name}");
    }
    assert_eq!(py["scale"].0, "F32");
    assert_eq!(py["bn.num_batches_tracked"].0, "I64");

    let gguf = tmp.path().join("s.gguf");
    convert(&src, &gguf, &ConvertOptions::default());
    let (written, scalars) = gguf_py_tensors(&gguf, "mlmf.scalar_tensors");
    assert_eq!(
        gguf_py_strings(&scalars.unwrap()),
        ["scale", "bn.num_batches_tracked"]
    );
    for (name, (ty, ne, sha)) in &orig {
        let ne = if ne.is_empty() { vec![1] } else { ne.clone() };
        assert_eq!(written[name], (ty.clone(), ne, sha.clone()), "{name}");
    }
    let a = ModelFile::open(&src).unwrap();
    let b = ModelFile::open(&gguf).unwrap();
    assert_same_tensors(&a, &b);
}
