//! LoRA adapters end to end: PEFT and GGUF adapters read, bound to bases in either naming,
//! merged (GPU and CPU twin) and applied at run time, against peft's own outputs in
//! ../shared/fixtures/lora and against the real SmolLM2 GGUF file.

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::assert_lora_close as assert_close;

use std::path::{Path, PathBuf};
use std::process::Command;

use mlmf::lora::{AdapterSet, LoraAdapter, MergeOptions, MergedWeights, QuantizedMerge};
use mlmf::{DType, Device, Error, ModelFile, Tensor};

fn lora_dir(variant: &str) -> PathBuf {
    common::fixtures().join("lora").join(variant)
}

fn devices() -> Vec<Device> {
    vec![
        Device::gpu().expect("a GPU adapter (lavapipe in CI)"),
        Device::Cpu,
    ]
}

fn f32s(t: &Tensor) -> Vec<f32> {
    let f = mlmf::ops::convert::to_f32(t).unwrap();
    f.to_bytes()
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn file_f32s(file: &ModelFile, name: &str) -> Vec<f32> {
    f32s(&Device::Cpu.load(file, name).unwrap())
}

fn scaling(variant: &str) -> f32 {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lora_dir(variant).join("info.json")).unwrap())
            .unwrap();
    info["scaling"].as_f64().unwrap() as f32
}

#[test]
fn peft_adapters_merge_like_merge_and_unload_on_gpu_and_cpu() {
    for variant in ["standard", "rslora"] {
        let dir = lora_dir(variant);
        let base = ModelFile::open(dir.join("base.safetensors")).unwrap();
        let merged = ModelFile::open(dir.join("merged.safetensors")).unwrap();
        let adapter = LoraAdapter::open(dir.join("adapter")).unwrap();
        assert_eq!(adapter.modules().len(), 6);
        for m in adapter.modules() {
            assert_eq!(m.scale, scaling(variant), "{variant} {}", m.name);
        }
        let bound = adapter.bind(&base).unwrap();
        assert_eq!(bound.targets().len(), 6);
        let mut results = Vec::new();
        for device in devices() {
            let mut got = Vec::new();
            for target in bound.targets() {
                let t = mlmf::lora::merge_target(&device, &base, target, &MergeOptions::default())
                    .unwrap();
                assert_eq!(t.dtype(), DType::F32);
                let values = f32s(&t);
                assert_close(
                    &format!("{variant} {} on {}", target.tensor, device.describe()),
                    &values,
                    &file_f32s(&merged, &target.tensor),
                );
                got.push(values);
            }
            results.push(got);
        }
        // The GPU kernel and its CPU twin sum in the same order.
        assert_eq!(results[0], results[1], "{variant}: GPU and CPU differ");
    }
}

#[test]
fn merged_file_keeps_untouched_tensors_bit_identical() {
    let dir = lora_dir("standard");
    let base = ModelFile::open(dir.join("base.safetensors")).unwrap();
    let expected = ModelFile::open(dir.join("merged.safetensors")).unwrap();
    let adapter = LoraAdapter::open(dir.join("adapter")).unwrap();
    let bound = adapter.bind(&base).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (device, ext) in [
        (Device::gpu().unwrap(), "safetensors"),
        (Device::Cpu, "gguf"),
    ] {
        let out = tmp.path().join(format!("merged.{ext}"));
        let mut seen = Vec::new();
        let report = mlmf::lora::merge_file(
            &device,
            &base,
            &bound,
            &MergeOptions::default(),
            &out,
            &mut |p| seen.push((p.index, p.name.to_string())),
        )
        .unwrap();
        assert_eq!(seen.len(), base.tensors().len());
        assert_eq!(report.len(), base.tensors().len());
        let written = ModelFile::open(&out).unwrap();
        check_provenance(&written, &base, &dir.join("adapter"));
        for info in base.tensors() {
            let got = written.tensor(&info.name).unwrap();
            assert_eq!(got.dtype, info.dtype);
            assert_eq!(got.shape, info.shape);
            if bound.target(&info.name).is_some() {
                assert_close(
                    &info.name,
                    &file_f32s(&written, &info.name),
                    &file_f32s(&expected, &info.name),
                );
            } else {
                assert_eq!(
                    written.bytes(got),
                    base.bytes(info),
                    "{} changed",
                    info.name
                );
            }
        }
    }
}

/// The merged file verifies and names `base` as its parent and the adapter, by the hash the
/// provenance module docs define (content hash of the tensors, then sha256 of the config), as
/// the merge.
fn check_provenance(written: &ModelFile, base: &ModelFile, adapter_dir: &Path) {
    use mlmf::provenance::{self, Transform};
    use sha2::{Digest, Sha256};
    let check = provenance::verify(written).unwrap();
    check.check().unwrap();
    let record = check.record.unwrap();
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(record.parents.len(), 1);
    assert_eq!(record.parents[0].path, canonical(base.path()));
    assert_eq!(
        record.parents[0].content_hash,
        provenance::content_hash(base).unwrap()
    );
    let tensors = provenance::content_hash(
        &ModelFile::open(adapter_dir.join("adapter_model.safetensors")).unwrap(),
    )
    .unwrap();
    let config = std::fs::read(adapter_dir.join("adapter_config.json")).unwrap();
    let mut h = Sha256::new();
    h.update(tensors.0);
    h.update(Sha256::digest(&config));
    let adapter_hash = provenance::Sha256Hash(h.finalize().into());
    assert_eq!(
        record.transforms,
        [Transform::LoraMerge {
            adapter: canonical(adapter_dir),
            adapter_hash,
            scale: 1.0,
        }]
    );
}

#[test]
fn unmerge_restores_the_base_bit_for_bit() {
    let dir = lora_dir("rslora");
    let base = ModelFile::open(dir.join("base.safetensors")).unwrap();
    let adapter = LoraAdapter::open(dir.join("adapter")).unwrap();
    let bound = adapter.bind(&base).unwrap();
    for device in devices() {
        let mut weights = MergedWeights::load(&device, &base).unwrap();
        weights.merge(&bound, &MergeOptions::default()).unwrap();
        assert_eq!(weights.changed().count(), 6);
        let q = "model.layers.0.self_attn.q_proj.weight";
        let q_info = base.tensor(q).unwrap();
        assert_ne!(
            weights.get(q).unwrap().to_bytes().unwrap(),
            base.bytes(q_info)
        );
        weights.unmerge().unwrap();
        assert_eq!(weights.changed().count(), 0);
        for info in base.tensors() {
            let t = weights.get(&info.name).unwrap();
            assert_eq!(t.to_bytes().unwrap(), base.bytes(info), "{}", info.name);
        }
    }
}

/// `x` of module `m` in `io`, and the rows of `y` and `y_base`.
struct Io {
    x: Tensor,
    y: Vec<f32>,
    y_base: Vec<f32>,
    out: usize,
}

fn io(dir: &Path, module: &str) -> Io {
    let file = ModelFile::open(dir.join("io.safetensors")).unwrap();
    let x = Device::Cpu.load(&file, &format!("{module}.x")).unwrap();
    let y_info = file.tensor(&format!("{module}.y")).unwrap();
    Io {
        x,
        y: file_f32s(&file, &format!("{module}.y")),
        y_base: file_f32s(&file, &format!("{module}.y_base")),
        out: y_info.shape.dims()[1],
    }
}

#[test]
fn runtime_batches_mix_adapters_and_the_base_like_peft() {
    let dir = lora_dir("standard");
    let base = ModelFile::open(dir.join("base.safetensors")).unwrap();
    let standard = LoraAdapter::open(dir.join("adapter")).unwrap();
    let rslora = LoraAdapter::open(lora_dir("rslora").join("adapter")).unwrap();
    let modules: Vec<String> = standard
        .modules()
        .iter()
        .map(|m| format!("{}.weight", m.name))
        .collect();
    for device in devices() {
        let mut set = AdapterSet::new(&device, &base, &modules, 3, 8).unwrap();
        let std_id = set.load(&standard.bind(&base).unwrap(), 1.0).unwrap();
        let half_id = set.load(&standard.bind(&base).unwrap(), 0.5).unwrap();
        let rs_bound = rslora.bind(&base).unwrap();
        let rs_id = set.load(&rs_bound, 1.0).unwrap();
        for m in standard.modules() {
            let weight = format!("{}.weight", m.name);
            let io = io(&dir, &m.name);
            let x = io.x.to_device(&device).unwrap();
            let rows = [Some(std_id), None, Some(half_id), Some(rs_id)];
            let y = f32s(&set.forward(&weight, &x, &rows).unwrap());
            let (out, what) = (io.out, format!("{weight} on {}", device.describe()));
            // Row 0: peft's runtime output. Row 1: the base layer alone.
            assert_close(&what, &y[..out], &io.y[..out]);
            assert_close(&what, &y[out..2 * out], &io.y_base[out..2 * out]);
            // Row 2: half the adapter's contribution, from peft's outputs.
            let half: Vec<f32> = (0..out)
                .map(|o| {
                    io.y_base[2 * out + o] + 0.5 * (io.y[2 * out + o] - io.y_base[2 * out + o])
                })
                .collect();
            assert_close(&what, &y[2 * out..3 * out], &half);
            // Row 3: the rsLoRA adapter on this base, in f64.
            let t = rs_bound.target(&weight).unwrap();
            let xs = f32s(&io.x);
            let inp = t.module.in_features;
            let r = t.module.rank;
            let expect: Vec<f32> = (0..out)
                .map(|o| {
                    let lora: f64 = (0..r)
                        .map(|k| {
                            let ax: f64 = (0..inp)
                                .map(|i| t.module.a[k * inp + i] as f64 * xs[3 * inp + i] as f64)
                                .sum();
                            t.b[o * r + k] as f64 * ax
                        })
                        .sum();
                    (io.y_base[3 * out + o] as f64 + t.module.scale as f64 * lora) as f32
                })
                .collect();
            assert_close(&what, &y[3 * out..], &expect);
        }
        // Hot swap: unload one, load another in its place; the old handle is refused.
        set.unload(half_id).unwrap();
        let again = set.load(&standard.bind(&base).unwrap(), 1.0).unwrap();
        let m = &standard.modules()[0];
        let io = io(&dir, &m.name);
        let x = io.x.to_device(&device).unwrap();
        let weight = format!("{}.weight", m.name);
        assert!(set.forward(&weight, &x, &[Some(half_id); 4]).is_err());
        let y = f32s(&set.forward(&weight, &x, &[Some(again); 4]).unwrap());
        assert_close("after a swap", &y, &io.y);
        let y = f32s(&set.forward(&weight, &x, &[None; 4]).unwrap());
        assert_close("base after a swap", &y, &io.y_base);
    }
}

/// The GGUF files `tests/data/lora_gguf.py` makes with gguf-py from the fixture.
fn gguf_files() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lora_gguf.py");
    let out = Command::new(common::python())
        .arg(&script)
        .arg(lora_dir("standard"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = tmp.path().to_path_buf();
    (tmp, path)
}

#[test]
fn gguf_adapter_merges_into_a_safetensors_base() {
    let (_tmp, dir) = gguf_files();
    let fixture = lora_dir("standard");
    let base = ModelFile::open(fixture.join("base.safetensors")).unwrap();
    let merged = ModelFile::open(fixture.join("merged.safetensors")).unwrap();
    let adapter = LoraAdapter::open(dir.join("adapter-qwen2.gguf")).unwrap();
    let bound = adapter.bind(&base).unwrap();
    assert_eq!(bound.targets().len(), 6);
    for target in bound.targets() {
        assert!(
            target.tensor.starts_with("model.layers."),
            "{}",
            target.tensor
        );
        let t = mlmf::lora::merge_target(&Device::Cpu, &base, target, &MergeOptions::default())
            .unwrap();
        assert_close(
            &target.tensor,
            &f32s(&t),
            &file_f32s(&merged, &target.tensor),
        );
    }
    // A GGUF adapter's settings are metadata, outside the content hash: its hash is the sha256
    // of the whole file.
    use sha2::{Digest, Sha256};
    let whole = std::fs::read(dir.join("adapter-qwen2.gguf")).unwrap();
    assert_eq!(
        mlmf::lora::adapter_hash(&adapter).unwrap().0,
        <[u8; 32]>::from(Sha256::digest(&whole))
    );
}

#[test]
fn peft_adapter_merges_into_a_permuted_gguf_base() {
    let (_tmp, dir) = gguf_files();
    let base = ModelFile::open(dir.join("base-llama.gguf")).unwrap();
    let expected = ModelFile::open(dir.join("merged-llama.gguf")).unwrap();
    let adapter = LoraAdapter::open(lora_dir("standard").join("adapter")).unwrap();
    let bound = adapter.bind(&base).unwrap();
    let names: Vec<&str> = bound.targets().iter().map(|t| t.tensor.as_str()).collect();
    assert!(names.contains(&"blk.0.attn_q.weight"), "{names:?}");
    for device in devices() {
        for target in bound.targets() {
            let t =
                mlmf::lora::merge_target(&device, &base, target, &MergeOptions::default()).unwrap();
            assert_close(
                &format!("{} on {}", target.tensor, device.describe()),
                &f32s(&t),
                &file_f32s(&expected, &target.tensor),
            );
        }
    }
}

/// A PEFT adapter directory for SmolLM2's q/k/v/o projections of layers 0 and 1, rank 8,
/// random A and B, written with our safetensors writer.
fn smollm2_adapter(dir: &Path, base: &ModelFile) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let r = 8;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for layer in 0..2 {
        for (hf, gguf) in [
            ("q_proj", "attn_q"),
            ("k_proj", "attn_k"),
            ("v_proj", "attn_v"),
            ("o_proj", "attn_output"),
        ] {
            let info = base.tensor(&format!("blk.{layer}.{gguf}.weight")).unwrap();
            let &[out, inp] = info.shape.dims() else {
                panic!()
            };
            let module = format!("base_model.model.model.layers.{layer}.self_attn.{hf}");
            for (kind, dims) in [("lora_A", vec![r, inp]), ("lora_B", vec![out, r])] {
                let n: usize = dims.iter().product();
                let bytes = (0..n).flat_map(|_| (rand() * 0.1).to_le_bytes()).collect();
                tensors.push((format!("{module}.{kind}.weight"), dims, bytes));
            }
        }
    }
    let mut writer = mlmf::SafetensorsWriter::new(Default::default());
    for (name, dims, bytes) in &tensors {
        writer.add_tensor(name.clone(), DType::F32, dims, bytes);
    }
    writer.write(dir.join("adapter_model.safetensors")).unwrap();
    let config = serde_json::json!({
        "peft_type": "LORA", "r": r, "lora_alpha": 16, "use_rslora": false,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "fan_in_fan_out": false,
        "bias": "none", "modules_to_save": null, "rank_pattern": {}, "alpha_pattern": {}
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
}

/// llama.cpp's q/k permutation of rows, written out independently of the library.
fn permuted_row(row: usize, rows: usize, n_head: usize) -> usize {
    // GGUF row g = h*2*half + 2*i + s holds Hugging Face row h*2*half + s*half + i.
    let half = rows / n_head / 2;
    let (h, rest) = (row / (2 * half), row % (2 * half));
    let (i, s) = (rest / 2, rest % 2);
    h * 2 * half + s * half + i
}

#[test]
fn peft_adapter_on_the_real_smollm2_gguf() {
    let base = ModelFile::open(common::model(common::SMOLLM2)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    smollm2_adapter(tmp.path(), &base);
    let adapter = LoraAdapter::open(tmp.path()).unwrap();
    let bound = adapter.bind(&base).unwrap();
    assert_eq!(bound.targets().len(), 8);
    let meta = |k: &str| base.metadata().get(k).unwrap().as_u64().unwrap() as usize;
    let (n_head, n_kv) = (
        meta("llama.attention.head_count"),
        meta("llama.attention.head_count_kv"),
    );
    let gpu = Device::gpu().unwrap();
    for target in bound.targets() {
        let m = target.module;
        let info = base.tensor(&target.tensor).unwrap();
        assert!(info.dtype.is_quantized(), "{}", target.tensor);
        // F32 keeps the merge exact to compare with; then the default F16 and requantized.
        let f32_opts = MergeOptions {
            quantized: QuantizedMerge::F32,
            ..Default::default()
        };
        let on_gpu = f32s(&mlmf::lora::merge_target(&gpu, &base, target, &f32_opts).unwrap());
        let on_cpu =
            f32s(&mlmf::lora::merge_target(&Device::Cpu, &base, target, &f32_opts).unwrap());
        assert_eq!(on_gpu, on_cpu, "{}: GPU and CPU twin", target.tensor);
        // merged - W is s * P(B·A), P llama.cpp's permutation for q and k, computed here in f64.
        let w = file_f32s(&base, &target.tensor);
        let (out, inp, r) = (m.out_features, m.in_features, m.rank);
        let heads = if target.tensor.contains("attn_q") {
            Some(n_head)
        } else if target.tensor.contains("attn_k") {
            Some(n_kv)
        } else {
            None
        };
        let mut worst = 0f64;
        for o in 0..out {
            let hf_row = heads.map_or(o, |h| permuted_row(o, out, h));
            for i in 0..inp {
                let d: f64 = (0..r)
                    .map(|k| m.b[hf_row * r + k] as f64 * m.a[k * inp + i] as f64)
                    .sum();
                let want = w[o * inp + i] as f64 + m.scale as f64 * d;
                worst = worst.max((on_gpu[o * inp + i] as f64 - want).abs());
            }
        }
        assert!(worst < 1e-5, "{}: merged differs by {worst}", target.tensor);

        let f16 = mlmf::lora::merge_target(&gpu, &base, target, &MergeOptions::default()).unwrap();
        assert_eq!(f16.dtype(), DType::F16);
        let requant = MergeOptions {
            quantized: QuantizedMerge::Requantize,
            ..Default::default()
        };
        let q = mlmf::lora::merge_target(&gpu, &base, target, &requant).unwrap();
        assert_eq!(q.dtype(), info.dtype);
        let q_cpu = mlmf::lora::merge_target(&Device::Cpu, &base, target, &requant).unwrap();
        assert_eq!(q.to_bytes().unwrap(), q_cpu.to_bytes().unwrap());
    }
}

#[test]
fn mismatches_are_listed_not_ignored() {
    let (_tmp, dir) = gguf_files();
    let adapter = LoraAdapter::open(lora_dir("standard").join("adapter")).unwrap();
    // The SmolLM2 file has the names but not the shapes.
    let smol = ModelFile::open(common::model(common::SMOLLM2)).unwrap();
    let Err(Error::AdapterMismatch { problems, .. }) = adapter.bind(&smol) else {
        panic!("expected a mismatch")
    };
    assert_eq!(problems.len(), 6, "{problems:?}");
    assert!(problems[0].contains("base tensor"), "{problems:?}");
    // A GGUF adapter for another architecture.
    let gguf_adapter = LoraAdapter::open(dir.join("adapter-qwen2.gguf")).unwrap();
    let llama = ModelFile::open(dir.join("base-llama.gguf")).unwrap();
    let err = gguf_adapter.bind(&llama).unwrap_err();
    assert!(err.to_string().contains("qwen2"), "{err}");
    // Targets missing from the base.
    let minilm = ModelFile::open(common::model(common::MINILM)).unwrap();
    let Err(Error::AdapterMismatch { problems, .. }) = adapter.bind(&minilm) else {
        panic!("expected a mismatch")
    };
    assert!(
        problems.iter().all(|p| p.contains("no tensor")),
        "{problems:?}"
    );
    // Not an adapter at all.
    assert!(matches!(
        LoraAdapter::open(lora_dir("standard").join("base.safetensors")),
        Err(Error::BadAdapter { .. })
    ));
}

#[test]
fn config_that_disagrees_with_the_tensors_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = lora_dir("standard").join("adapter");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        tmp.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
    for (key, value) in [
        ("r", serde_json::json!(8)),
        ("target_modules", serde_json::json!(["q_proj"])),
        ("use_dora", serde_json::json!(true)),
        ("rank_pattern", serde_json::json!({"down_proj": 2})),
    ] {
        let mut c = config.clone();
        c[key] = value;
        std::fs::write(tmp.path().join("adapter_config.json"), c.to_string()).unwrap();
        let err = LoraAdapter::open(tmp.path()).unwrap_err();
        assert!(matches!(err, Error::BadAdapter { .. }), "{key}: {err}");
    }
    // alpha_pattern is honoured: a different scale for down_proj only.
    let mut c = config.clone();
    c["alpha_pattern"] = serde_json::json!({"down_proj": 16});
    std::fs::write(tmp.path().join("adapter_config.json"), c.to_string()).unwrap();
    let adapter = LoraAdapter::open(tmp.path()).unwrap();
    for m in adapter.modules() {
        let want = if m.name.ends_with("down_proj") {
            4.0
        } else {
            2.0
        };
        assert_eq!(m.scale, want, "{}", m.name);
    }
}

#[test]
fn peft_adapter_model_bin_reads_like_the_safetensors() {
    let src = lora_dir("standard").join("adapter");
    let tmp = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/peft_adapter_bin.py");
    let out = Command::new(common::python())
        .arg(&script)
        .arg(&src)
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tmp.path().join("adapter_model.bin").is_file());
    let from_bin = LoraAdapter::open(tmp.path()).unwrap();
    let from_st = LoraAdapter::open(&src).unwrap();
    assert_eq!(from_bin.modules().len(), from_st.modules().len());
    for (a, b) in from_bin.modules().iter().zip(from_st.modules()) {
        assert_eq!(
            (&a.name, &a.a, &a.b, a.scale),
            (&b.name, &b.a, &b.b, b.scale)
        );
    }
}

#[test]
fn modules_to_save_replace_whole_tensors_in_a_merge_and_are_refused_at_run_time() {
    let src = lora_dir("standard");
    let base = ModelFile::open(src.join("base.safetensors")).unwrap();
    let adapter_file = ModelFile::open(src.join("adapter/adapter_model.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The fixture's adapter plus a trained copy of one bias, saved as PEFT saves modules_to_save
    // (and bias="all"): under the base model's own name.
    let bias_name = "model.layers.1.self_attn.v_proj.bias";
    let bias: Vec<u8> = (0..96)
        .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
        .collect();
    let mut writer = mlmf::SafetensorsWriter::new(Default::default());
    for info in adapter_file.tensors() {
        writer.add_tensor(
            info.name.clone(),
            info.dtype,
            info.shape.dims(),
            adapter_file.bytes(info),
        );
    }
    writer.add_tensor(
        format!("base_model.model.{bias_name}"),
        DType::F32,
        &[96],
        &bias,
    );
    writer
        .write(tmp.path().join("adapter_model.safetensors"))
        .unwrap();
    std::fs::copy(
        src.join("adapter/adapter_config.json"),
        tmp.path().join("adapter_config.json"),
    )
    .unwrap();
    let adapter = LoraAdapter::open(tmp.path()).unwrap();
    let bound = adapter.bind(&base).unwrap();
    assert_eq!(bound.replacements().len(), 1);
    let out = tmp.path().join("merged.safetensors");
    let report = mlmf::lora::merge_file(
        &Device::Cpu,
        &base,
        &bound,
        &MergeOptions::default(),
        &out,
        &mut |_| {},
    )
    .unwrap();
    let replaced: Vec<&str> = report
        .iter()
        .filter(|t| t.action == mlmf::lora::Action::Replaced)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(replaced, [bias_name]);
    let written = ModelFile::open(&out).unwrap();
    assert_eq!(written.bytes(written.tensor(bias_name).unwrap()), &bias[..]);
    let mut set = AdapterSet::new(
        &Device::Cpu,
        &base,
        &["model.layers.1.self_attn.v_proj.weight"],
        1,
        4,
    )
    .unwrap();
    let err = set.load(&bound, 1.0).unwrap_err();
    assert!(err.to_string().contains(bias_name), "{err}");
}

/// A full set of slots and a handle whose slot was reused are typed errors.
#[test]
fn runtime_slots_full_and_stale_handles_are_typed_errors() {
    let dir = lora_dir("standard");
    let base = ModelFile::open(dir.join("base.safetensors")).unwrap();
    let adapter = LoraAdapter::open(dir.join("adapter")).unwrap();
    let modules: Vec<String> = adapter
        .modules()
        .iter()
        .map(|m| format!("{}.weight", m.name))
        .collect();
    let bound = adapter.bind(&base).unwrap();
    let mut set = AdapterSet::new(&Device::Cpu, &base, &modules, 1, 8).unwrap();
    let first = set.load(&bound, 1.0).unwrap();
    assert!(matches!(
        set.load(&bound, 1.0),
        Err(Error::AdapterSlotsFull { capacity: 1 })
    ));
    set.unload(first).unwrap();
    let _second = set.load(&bound, 1.0).unwrap();
    let m = &adapter.modules()[0];
    let x = io(&dir, &m.name).x;
    let err = set
        .forward(&format!("{}.weight", m.name), &x, &[Some(first); 4])
        .unwrap_err();
    assert!(matches!(err, Error::StaleAdapter { slot: 0 }), "{err}");
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| v[r * cols + c]))
        .collect()
}

#[test]
fn fan_in_fan_out_merges_into_transposed_weights() {
    // GPT-2's Conv1D stores weights [in, out]; PEFT marks such adapters fan_in_fan_out.
    let src = lora_dir("standard");
    let base = ModelFile::open(src.join("base.safetensors")).unwrap();
    let merged = ModelFile::open(src.join("merged.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors = Vec::new();
    for info in base.tensors() {
        let v = file_f32s(&base, &info.name);
        let (dims, v) = match *info.shape.dims() {
            [rows, cols] => (vec![cols, rows], transpose(&v, rows, cols)),
            _ => (info.shape.dims().to_vec(), v),
        };
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push((info.name.clone(), dims, bytes));
    }
    let mut writer = mlmf::SafetensorsWriter::new(Default::default());
    for (name, dims, bytes) in &tensors {
        writer.add_tensor(name.clone(), DType::F32, dims, bytes);
    }
    writer.write(tmp.path().join("base.safetensors")).unwrap();
    let adapter_dir = tmp.path().join("adapter");
    std::fs::create_dir(&adapter_dir).unwrap();
    std::fs::copy(
        src.join("adapter/adapter_model.safetensors"),
        adapter_dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("adapter/adapter_config.json")).unwrap())
            .unwrap();
    config["fan_in_fan_out"] = serde_json::json!(true);
    std::fs::write(adapter_dir.join("adapter_config.json"), config.to_string()).unwrap();

    let t_base = ModelFile::open(tmp.path().join("base.safetensors")).unwrap();
    let adapter = LoraAdapter::open(&adapter_dir).unwrap();
    assert!(adapter.fan_in_fan_out());
    let bound = adapter.bind(&t_base).unwrap();
    for device in devices() {
        for target in bound.targets() {
            let t = mlmf::lora::merge_target(&device, &t_base, target, &MergeOptions::default())
                .unwrap();
            let &[inp, out] = t.shape().dims() else {
                panic!()
            };
            assert_close(
                &target.tensor,
                &transpose(&f32s(&t), inp, out),
                &file_f32s(&merged, &target.tensor),
            );
        }
    }
    // The untransposed fixture base does not fit a fan_in_fan_out adapter.
    assert!(matches!(
        adapter.bind(&base),
        Err(Error::AdapterMismatch { .. })
    ));
}
