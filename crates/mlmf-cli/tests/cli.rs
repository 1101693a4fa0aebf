//! The `mlmf` binary, run as a user would.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::Command;

fn mlmf(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_mlmf"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mlmf {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn inspect_json_of_a_gguf_file() {
    let path = common::model(common::SMOLLM2);
    let out = mlmf(&["inspect", "--json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["version"], 3);
    assert_eq!(v["tensor_count"], 272);
    assert_eq!(v["tensors"].as_array().unwrap().len(), 272);
    assert_eq!(v["metadata"]["general.architecture"], "llama");
    let embd = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(embd["dtype"], "Q8_0");
    assert_eq!(embd["shape"], serde_json::json!([49152, 576]));
}

#[test]
fn inspect_text_of_a_safetensors_file() {
    let path = common::model(common::MINILM);
    let out = mlmf(&["inspect", path.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("safetensors"));
    assert!(text.contains("104 tensors"));
    assert!(text.contains("embeddings.word_embeddings.weight"));
}

/// Every tensor of the quant oracle (F16, BF16 and each block type), dumped on each device,
/// equals gguf-py's decoding.
#[test]
fn dump_matches_gguf_py_for_every_oracle_type() {
    let fixtures = common::fixtures().join("quant");
    let oracle = fixtures.join("quant_oracle.gguf");
    let expected = mlmf::ModelFile::open(fixtures.join("expected.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for ty in [
        "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
        "Q6_K",
    ] {
        let want = f32s(expected.bytes(expected.tensor(&format!("{ty}.dequant")).unwrap()));
        for device in ["gpu", "cpu"] {
            let out = dir.path().join(format!("{ty}.{device}.f32"));
            mlmf(&[
                "dump",
                oracle.to_str().unwrap(),
                ty,
                "--device",
                device,
                "-o",
                out.to_str().unwrap(),
            ]);
            let got = f32s(&std::fs::read(&out).unwrap());
            assert_eq!(got.len(), 8 * 1024);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{ty} on {device} differs from gguf-py");
        }
    }
}

#[test]
fn dump_of_an_f32_tensor_is_its_bytes() {
    let path = common::model(common::MINILM);
    let file = mlmf::ModelFile::open(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ln.f32");
    mlmf(&[
        "dump",
        path.to_str().unwrap(),
        "embeddings.LayerNorm.weight",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        file.bytes(file.tensor("embeddings.LayerNorm.weight").unwrap())
    );
}

#[test]
fn devices_lists_the_lavapipe_adapter() {
    let out = mlmf(&["devices", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let adapters = v.as_array().unwrap();
    assert!(!adapters.is_empty());
    assert!(adapters
        .iter()
        .all(|a| a["max_storage_buffer_binding_size"].as_u64().unwrap() > 0));
}

#[test]
fn errors_exit_non_zero_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"definitely not a model").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mlmf"))
        .args(["inspect", junk.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("junk.bin") && err.contains("not a known model file"),
        "{err}"
    );
}

/// No adapter for the chosen backend: a clear error naming what to install; the CPU device
/// still works.
#[test]
fn no_adapter_is_a_clear_error_and_cpu_still_works() {
    let path = common::model(common::MINILM);
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("x.f32");
    // No DX12 on Linux, no Metal off Apple: either leaves no adapter here.
    let backend = if cfg!(target_os = "linux") {
        "dx12"
    } else {
        "metal"
    };
    let run = |device: &str| {
        Command::new(env!("CARGO_BIN_EXE_mlmf"))
            .env("MLMF_BACKEND", backend)
            .args([
                "dump",
                path.to_str().unwrap(),
                "pooler.dense.bias",
                "--device",
                device,
            ])
            .args(["-o", out_path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let gpu = run("gpu");
    assert!(!gpu.status.success());
    let err = String::from_utf8_lossy(&gpu.stderr);
    assert!(
        err.contains("no GPU adapter") && err.contains("mesa-vulkan-drivers"),
        "{err}"
    );
    assert!(run("cpu").status.success());
    assert_eq!(std::fs::metadata(&out_path).unwrap().len(), 384 * 4);

    let bad = Command::new(env!("CARGO_BIN_EXE_mlmf"))
        .env("MLMF_BACKEND", "opengl-es-9")
        .args(["devices"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("MLMF_BACKEND"));
}

/// `MLMF_ADAPTER` picks by index or by name; a name that matches nothing is an error.
#[test]
fn adapter_choice_by_env() {
    let list = mlmf(&["devices", "--json"]);
    let adapters: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let first = adapters[0]["name"].as_str().unwrap().to_string();
    let path = common::model(common::MINILM);
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("x.f32");
    for (choice, ok) in [
        ("0", true),
        (&first[..4], true),
        ("no-such-adapter-xyz", false),
        ("99", false),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mlmf"))
            .env("MLMF_ADAPTER", choice)
            .args([
                "dump",
                path.to_str().unwrap(),
                "pooler.dense.bias",
                "-o",
                out_path.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.success(),
            ok,
            "MLMF_ADAPTER={choice}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn q8_0_error_bound_holds(original: &[f32], decoded: &[f32]) {
    // Q8_0 stores d = amax / 127 per block of 32 and rounds each value to a multiple of d, so
    // no value moves by more than d / 2 (plus the f16 rounding of d, relative 2^-11 of amax).
    for (block, (x, y)) in original.chunks(32).zip(decoded.chunks(32)).enumerate() {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let bound = amax / 127.0 / 2.0 + amax * 2f32.powi(-10);
        for (a, b) in x.iter().zip(y) {
            assert!(
                (a - b).abs() <= bound,
                "block {block}: {a} -> {b}, bound {bound}"
            );
        }
    }
}

/// `mlmf quantize` on the real MiniLM safetensors: matrices become Q8_0, 1-D tensors and
/// `--keep` matches stay, and gguf-py reads the result.
#[test]
fn quantize_safetensors_to_q8_0() {
    let input = common::model(common::MINILM);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("minilm.q8_0.gguf");
    let printed = mlmf(&[
        "quantize",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "q8_0",
        "--keep",
        r"^embeddings\.",
    ]);
    let table = String::from_utf8(printed.stdout).unwrap();
    assert!(
        table.contains("37 of 104 tensors quantized to Q8_0"),
        "{table}"
    );

    let src = mlmf::ModelFile::open(&input).unwrap();
    let q = mlmf::ModelFile::open(&out).unwrap();
    assert_eq!(q.format(), mlmf::Format::Gguf);
    assert_eq!(q.tensors().len(), 104);
    assert_eq!(
        q.metadata().get("general.file_type"),
        Some(&mlmf::Value::U32(7))
    );
    for t in src.tensors() {
        let o = q.tensor(&t.name).unwrap();
        assert_eq!(o.shape, t.shape, "{}", t.name);
        let quantized = t.shape.rank() == 2 && !t.name.starts_with("embeddings.");
        if quantized {
            assert_eq!(o.dtype, mlmf::DType::Q8_0, "{}", t.name);
            let x = f32s(src.bytes(t));
            let y = mlmf::ops::dequant::to_f32(
                &mlmf::Tensor::from_bytes("t", o.dtype, o.shape.clone(), q.bytes(o).to_vec())
                    .unwrap(),
            )
            .unwrap()
            .to_f32_vec()
            .unwrap();
            q8_0_error_bound_holds(&x, &y);
        } else {
            assert_eq!(o.dtype, t.dtype, "{}", t.name);
            assert!(q.bytes(o) == src.bytes(t), "{} changed", t.name);
        }
    }
    let py = common::gguf_py(&out);
    assert_eq!(py["tensors"].as_array().unwrap().len(), 104);
}

/// Re-quantizing a GGUF file: its metadata is carried, the quantized-from-Q4_1 tensor decodes
/// within Q8_0's bound of the Q4_1 values, and kept tensors are the same bytes.
#[test]
fn quantize_gguf_q4_1_to_q8_0() {
    let input = common::model(common::SMOLLM2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2.q8_0.gguf");
    // Only block 0's matrices are converted, to keep the test short.
    mlmf(&[
        "quantize",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "Q8_0",
        "--keep",
        r"^blk\.([1-9]|[1-9][0-9])\.",
        "--keep",
        "^(token_embd|output)",
    ]);
    let src = mlmf::ModelFile::open(&input).unwrap();
    let q = mlmf::ModelFile::open(&out).unwrap();
    assert_eq!(
        q.metadata().get("general.architecture"),
        src.metadata().get("general.architecture")
    );
    assert_eq!(
        q.metadata().get("general.quantization_version"),
        Some(&mlmf::Value::U32(2))
    );
    let t = src.tensor("blk.0.attn_q.weight").unwrap();
    let o = q.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((t.dtype, o.dtype), (mlmf::DType::Q4_1, mlmf::DType::Q8_0));
    let x = mlmf::ops::dequant::to_f32(
        &mlmf::Tensor::from_bytes("t", t.dtype, t.shape.clone(), src.bytes(t).to_vec()).unwrap(),
    )
    .unwrap()
    .to_f32_vec()
    .unwrap();
    let y = mlmf::ops::dequant::to_f32(
        &mlmf::Tensor::from_bytes("t", o.dtype, o.shape.clone(), q.bytes(o).to_vec()).unwrap(),
    )
    .unwrap()
    .to_f32_vec()
    .unwrap();
    q8_0_error_bound_holds(&x, &y);
    let kept = src.tensor("blk.1.attn_q.weight").unwrap();
    assert!(q.bytes(q.tensor(&kept.name).unwrap()) == src.bytes(kept));
}

#[test]
fn quantize_refuses_unknown_types_and_bad_regexes() {
    let input = common::model(common::MINILM);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    for args in [
        vec!["--type", "Q9_9"],
        vec!["--type", "Q8_0", "--keep", "("],
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_mlmf"))
            .args(["quantize", input.to_str().unwrap(), out.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        assert!(!run.status.success(), "{args:?}");
        assert!(!out.exists());
    }
}

/// The top-5 class indices the fixture recorded for a photo (`top5`, i64).
fn expected_top5(file: &mlmf::ModelFile) -> Vec<usize> {
    let t = mlmf::Device::Cpu.load(file, "top5").unwrap();
    t.to_bytes()
        .unwrap()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect()
}

#[test]
fn cli_embed_and_classify_print_the_documented_json() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlmf"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = run(&["embed", "--json", "a cat", "a cup of coffee"]);
    let e = v["embeddings"].as_array().unwrap();
    assert_eq!(e.len(), 2);
    assert!(e.iter().all(|row| row.as_array().unwrap().len() == 384));

    let dir = common::fixtures().join("preprocess/image");
    let (chelsea, coffee) = (dir.join("chelsea.png"), dir.join("coffee.png"));
    let v = run(&[
        "classify",
        "--device",
        "cpu",
        "--top",
        "5",
        "--json",
        chelsea.to_str().unwrap(),
        coffee.to_str().unwrap(),
    ]);
    let list = v.as_array().unwrap();
    for (item, name) in list.iter().zip(["chelsea", "coffee"]) {
        assert!(item["image"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{name}.png")));
        let expected = mlmf::ModelFile::open(
            common::fixtures().join(format!("models/mobilenetv2/{name}.safetensors")),
        )
        .unwrap();
        let top: Vec<usize> = item["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["index"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(top, expected_top5(&expected), "{name}");
        let first = &item["top"][0];
        assert!(first["label"].is_string() && first["logit"].is_number());
        assert!(first["prob"].as_f64().unwrap() > 0.5, "{name}");
    }
    assert_eq!(list[0]["top"][0]["label"], "Egyptian cat");
}

#[test]
fn cli_convert_refuses_an_existing_output_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("base.safetensors");
    std::fs::write(&out, b"previous").unwrap();
    let src = common::fixtures().join("lora/standard/base.safetensors");
    let run = |force: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlmf"));
        cmd.arg("convert")
            .arg(&src)
            .arg(&out)
            .args(["--dtype", "bf16"]);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let refused = run(false);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    let done = run(true);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let written = mlmf::ModelFile::open(&out).unwrap();
    assert!(written
        .tensors()
        .iter()
        .all(|t| t.dtype == mlmf::DType::BF16));
}

fn file_f32s(file: &mlmf::ModelFile, name: &str) -> Vec<f32> {
    mlmf::Device::Cpu
        .load(file, name)
        .and_then(|t| t.to_f32_vec())
        .unwrap()
}

#[test]
fn cli_merge_writes_the_merged_model() {
    let dir = common::fixtures().join("lora/standard");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_mlmf"))
        .args(["lora", "merge"])
        .arg(dir.join("base.safetensors"))
        .arg(dir.join("adapter"))
        .args(["--device", "cpu", "--scale", "1.0", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("6 merged, 0 replaced, 4 kept"), "{stdout}");
    let written = mlmf::ModelFile::open(&out).unwrap();
    let expected = mlmf::ModelFile::open(dir.join("merged.safetensors")).unwrap();
    for info in expected.tensors() {
        common::assert_lora_close(
            &info.name,
            &file_f32s(&written, &info.name),
            &file_f32s(&expected, &info.name),
        );
    }
}

/// The i-quants on grids are decode-only: `quantize --type` names why (an importance matrix for
/// IQ1/IQ2, an unimplemented search for IQ3), writes nothing, and IQ4_NL still quantizes.
#[test]
fn quantize_to_an_iq_type_says_why_not() {
    let input = common::model(common::MINILM);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    for (ty, why) in [
        ("IQ2_XXS", "importance matrix"),
        ("IQ2_XS", "importance matrix"),
        ("IQ2_S", "importance matrix"),
        ("IQ1_S", "importance matrix"),
        ("IQ1_M", "importance matrix"),
        ("IQ3_XXS", "grid-search quantizer"),
        ("IQ3_S", "grid-search quantizer"),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_mlmf"))
            .args(["quantize", input.to_str().unwrap(), out.to_str().unwrap()])
            .args(["--type", ty])
            .output()
            .unwrap();
        assert!(!run.status.success(), "{ty}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains(&format!("mlmf cannot quantize to {ty}")) && stderr.contains(why),
            "{ty}: {stderr}"
        );
        assert!(!out.exists());
    }
    let info = mlmf::quant::plan(
        &mlmf::ModelFile::open(&input).unwrap(),
        &mlmf::quant::QuantizeOptions {
            dtype: mlmf::DType::IQ2_XXS,
            keep: Vec::new(),
        },
    );
    let Err(err) = info else {
        panic!("IQ2_XXS is decode-only")
    };
    assert!(matches!(
        err,
        mlmf::Error::UnsupportedQuant {
            dtype: mlmf::DType::IQ2_XXS
        }
    ));
    assert!(err.to_string().contains("importance matrix"), "{err}");
}

/// `mlmf dump` of each i-quant on grids, on both devices, from a file gguf-py writes
/// (mlmf-gpu's `tests/data/make_iq_fixture.py`), equals gguf-py's decoding.
#[test]
fn dump_matches_gguf_py_for_every_iq_grid_type() {
    let dir = tempfile::tempdir().unwrap();
    let oracle = dir.path().join("iq.gguf");
    let script = common::workspace_dir().join("crates/mlmf-gpu/tests/data/make_iq_fixture.py");
    let made = Command::new(common::python())
        .arg(&script)
        .arg(&oracle)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let file = mlmf::ModelFile::open(&oracle).unwrap();
    for ty in [
        "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
    ] {
        let want = f32s(file.bytes(file.tensor(&format!("{ty}.dequant")).unwrap()));
        for device in ["gpu", "cpu"] {
            let out = dir.path().join(format!("{ty}.{device}.f32"));
            mlmf(&[
                "dump",
                oracle.to_str().unwrap(),
                ty,
                "--device",
                device,
                "-o",
                out.to_str().unwrap(),
            ]);
            let got = f32s(&std::fs::read(&out).unwrap());
            assert_eq!(got.len(), want.len());
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{ty} on {device} differs from gguf-py");
        }
    }
}
