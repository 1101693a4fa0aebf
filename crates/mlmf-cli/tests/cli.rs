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

/// gguf-py's typed value (`scripts/check_gguf.py`) equals what `inspect --json` wrote for it.
fn same_as_gguf_py(key: &str, ours: &serde_json::Value, theirs: &serde_json::Value) {
    match theirs["type"].as_str().unwrap() {
        "ARRAY" => {
            let (ours, items) = (
                ours.as_array().unwrap(),
                theirs["items"].as_array().unwrap(),
            );
            assert_eq!(ours.len(), items.len(), "{key}");
            for (o, t) in ours.iter().zip(items) {
                same_as_gguf_py(key, o, t);
            }
        }
        "FLOAT32" => {
            let bits = theirs["bits"].as_u64().unwrap() as u32;
            let v = f32::from_bits(bits);
            if v.is_finite() {
                assert_eq!((ours.as_f64().unwrap() as f32).to_bits(), bits, "{key}");
            } else {
                assert!(ours.is_null(), "{key}");
            }
        }
        "FLOAT64" => {
            let v = f64::from_bits(theirs["bits"].as_u64().unwrap());
            if v.is_finite() {
                assert_eq!(ours.as_f64().unwrap().to_bits(), v.to_bits(), "{key}");
            } else {
                assert!(ours.is_null(), "{key}");
            }
        }
        _ => assert_eq!(ours, &theirs["value"], "{key}"),
    }
}

/// `inspect --json` of gemma-3 (a 262,144-string vocabulary) is streamed from the parsed
/// metadata; every key, value, tensor name and offset equals gguf-py's reading of the file.
#[test]
fn inspect_json_streams_a_large_vocabulary_as_gguf_py_reads_it() {
    let path = common::model(common::GEMMA3);
    let out = mlmf(&["inspect", "--json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let py = common::gguf_py(&path);
    let kv = py["kv"].as_array().unwrap();
    let ours = v["metadata"].as_object().unwrap();
    assert_eq!(ours.len(), kv.len());
    for (entry, (key, value)) in kv.iter().zip(ours) {
        assert_eq!(entry["key"], key.as_str());
        same_as_gguf_py(key, value, &entry["value"]);
    }
    assert_eq!(
        ours["tokenizer.ggml.tokens"].as_array().unwrap().len(),
        262_144
    );
    let tensors = v["tensors"].as_array().unwrap();
    let theirs = py["tensors"].as_array().unwrap();
    assert_eq!(v["tensor_count"], theirs.len());
    assert_eq!(tensors.len(), theirs.len());
    for (o, t) in tensors.iter().zip(theirs) {
        assert_eq!((&o["name"], &o["offset"]), (&t["name"], &t["offset"]));
    }
    // One document and one newline, as before.
    assert!(out.stdout.ends_with(b"}\n") && !out.stdout.ends_with(b"}\n\n"));
}

/// `mlmf inspect --json FILE | head -1`: the reader closes the pipe after one line; the command
/// stops quietly with success (as ripgrep does), with no panic and nothing on stderr.
#[test]
fn a_pipe_closed_early_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    // 2 MB of JSON, far more than a pipe holds.
    let path = common::model(common::SMOLLM2);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlmf"))
        .args(["inspect", "--json", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "{\n");
    // The reader (and with it the pipe) is dropped here.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.is_empty(), "{err}");
}

/// Standard output on a full device: a typed error with a message and a failure status, never
/// a panic. `/dev/full` is only opened for writing here, as a shell's `>/dev/full` would.
#[test]
fn a_full_stdout_is_an_error_not_a_panic() {
    let full = std::path::Path::new("/dev/full");
    if !full.exists() {
        println!("skipped: this system has no /dev/full");
        return;
    }
    let path = common::model(common::MINILM);
    for args in [vec!["inspect", "--json"], vec!["inspect"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_mlmf"))
            .args(&args)
            .arg(&path)
            .stdout(std::fs::OpenOptions::new().write(true).open(full).unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("writing to standard output") && err.contains("No space left"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
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

/// MXFP4, TQ1_0 and TQ2_0 in a GGUF file gguf-py writes (`mlmf-gpu/tests/data/block_types.py`):
/// `mlmf dump` of each, on each device, equals gguf-py's decoding; `mlmf quantize --type` to each
/// writes the bytes gguf-py's quantizer writes for the file's F32 tensors.
#[test]
fn dump_and_quantize_mxfp4_and_ternary_types_as_gguf_py() {
    let dir = tempfile::tempdir().unwrap();
    for ty in ["MXFP4", "TQ1_0", "TQ2_0"] {
        let file = dir.path().join(format!("{ty}.gguf"));
        let script = common::workspace_dir().join("crates/mlmf-gpu/tests/data/block_types.py");
        let made = Command::new(common::python())
            .arg(&script)
            .arg(&file)
            .arg(ty)
            .status()
            .unwrap();
        assert!(made.success(), "{}", script.display());
        let model = mlmf::ModelFile::open(&file).unwrap();
        let name = format!("{ty}.quantized");
        let want = model.bytes(model.tensor(&format!("{name}.dequant")).unwrap());
        for device in ["gpu", "cpu"] {
            let out = dir.path().join(format!("{ty}.{device}.f32"));
            mlmf(&[
                "dump",
                file.to_str().unwrap(),
                &name,
                "--device",
                device,
                "-o",
                out.to_str().unwrap(),
            ]);
            assert!(std::fs::read(&out).unwrap() == want, "{ty} on {device}");
        }

        // Quantize the F32 tensors (`*.dequant`), keeping the block tensors.
        let out = dir.path().join(format!("{ty}.requantized.gguf"));
        mlmf(&[
            "quantize",
            file.to_str().unwrap(),
            out.to_str().unwrap(),
            "--type",
            ty,
            "--keep",
            r"\.(random|narrow|quantized)$",
        ]);
        let q = mlmf::ModelFile::open(&out).unwrap();
        let t = q.tensor(&format!("{name}.dequant")).unwrap();
        assert_eq!(t.dtype.name(), ty);
        let source = dir.path().join("source.f32");
        std::fs::write(&source, want).unwrap();
        let expected = dir.path().join("expected.bin");
        let script =
            common::workspace_dir().join("crates/mlmf-core/tests/data/quantize_gguf_py.py");
        let ran = Command::new(common::python())
            .arg(&script)
            .arg(&source)
            .args([ty, "4096"])
            .arg(&expected)
            .status()
            .unwrap();
        assert!(ran.success(), "{}", script.display());
        assert!(
            q.bytes(t) == std::fs::read(&expected).unwrap(),
            "{ty} quantize"
        );
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

/// `mlmf quantize --type Q4_K` on MiniLM, whose 384-wide rows are not whole 256-element
/// super-blocks: the matrices fall back to Q5_0 as llama-quantize's table says, and the table and
/// summary say which and why.
#[test]
fn quantize_prints_llama_quantize_fallbacks() {
    let input = common::model(common::MINILM);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("minilm.q4_k.gguf");
    let printed = mlmf(&[
        "quantize",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "Q4_K",
    ]);
    let table = String::from_utf8(printed.stdout).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with("encoder.layer.0.attention.self.query.weight "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains(" Q5_0 ") && row.ends_with("fallback: rows of 384 are not whole Q4_K blocks"),
        "{row}"
    );
    assert!(
        table.contains("40 of 104 tensors quantized to Q4_K (34 of them to a fallback type"),
        "{table}"
    );
    let q = mlmf::ModelFile::open(&out).unwrap();
    let t = q
        .tensor("encoder.layer.0.attention.self.query.weight")
        .unwrap();
    assert_eq!(t.dtype, mlmf::DType::Q5_0);
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

#[path = "../../../tests/common/views.rs"]
mod views;

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// `inspect` of a PyTorch file with views with gaps: `bytes` is each tensor's own byte count
/// (dtype times shape) and `data_bytes` their sum; the span in the file is `span_bytes`, with
/// the view's `strides`. Dtypes are spelled as torch spells them.
#[test]
fn inspect_reports_views_by_their_own_bytes() {
    let path = views::path();
    let out = mlmf(&["inspect", "--json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = views::expected();
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), expected.len());
    for (t, e) in tensors.iter().zip(&expected) {
        assert_eq!(t["name"], e.name);
        assert_eq!(t["bytes"], e.bytes.len() as u64, "{}", e.name);
        assert_eq!(t["span_bytes"], e.span, "{}", e.name);
        let torch = match e.dtype {
            "F32" => "float32",
            "F16" => "float16",
            "I64" => "int64",
            other => panic!("{other}"),
        };
        assert_eq!(t["dtype"], torch, "{}", e.name);
    }
    let every_other = &tensors[1];
    assert_eq!(every_other["name"], "w_every_other");
    assert_eq!(
        (&every_other["bytes"], &every_other["span_bytes"]),
        (&serde_json::json!(96), &serde_json::json!(188))
    );
    assert_eq!(every_other["strides"], serde_json::json!([12, 2]));
    assert!(tensors[0].get("strides").is_none());
    let sum: u64 = expected.iter().map(|e| e.bytes.len() as u64).sum();
    assert_eq!(v["data_bytes"], sum);

    let text = String::from_utf8(mlmf(&["inspect", path.to_str().unwrap()]).stdout).unwrap();
    assert!(
        text.contains(&format!("{sum} bytes of tensor data")),
        "{text}"
    );
}

/// Every dtype name `inspect` prints is the file format's own: safetensors' header strings
/// (`BOOL`, as Python's `safetensors` writes it), GGML type names as gguf-py reads them, torch's
/// names for PyTorch files.
#[test]
fn inspect_spells_dtypes_as_the_format_does() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("bool.safetensors");
    let script = "import sys, numpy as np\nfrom safetensors.numpy import save_file\n\
                  save_file({'mask': np.array([True, False, True]), 'x': np.zeros(2, np.float16)}, sys.argv[1])";
    let py = Command::new(common::python())
        .args(["-c", script, st.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let header = std::fs::read(&st).unwrap();
    // The oracle's own spelling, in the header it wrote.
    assert!(header.windows(6).any(|w| w == b"\"BOOL\""));
    let inspect = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&mlmf(&["inspect", "--json", p.to_str().unwrap()]).stdout).unwrap()
    };
    let v = inspect(&st);
    let dtype_of = |v: &serde_json::Value, name: &str| -> String {
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["dtype"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(dtype_of(&v, "mask"), "BOOL");
    assert_eq!(dtype_of(&v, "x"), "F16");
    let text = String::from_utf8(mlmf(&["inspect", st.to_str().unwrap()]).stdout).unwrap();
    assert!(text.contains("BOOL") && !text.contains("Bool"), "{text}");

    // GGUF: each tensor's type as gguf-py names it (F16, BF16, Q4_0 ... Q6_K; F32, I64).
    for gguf in [
        common::fixtures().join("quant/quant_oracle.gguf"),
        common::workspace_dir().join("crates/mlmf-core/tests/data/gguf_py_scalars.gguf"),
    ] {
        let v = inspect(&gguf);
        let py = common::gguf_py(&gguf);
        let py_tensors = py["tensors"].as_array().unwrap();
        assert_eq!(py_tensors.len(), v["tensors"].as_array().unwrap().len());
        for t in py_tensors {
            let name = t["name"].as_str().unwrap();
            assert_eq!(dtype_of(&v, name), t["type"].as_str().unwrap(), "{name}");
        }
    }
    // And for every GGML type both know: gguf-py's GGMLQuantizationType names.
    let py = Command::new(common::python())
        .args([
            "-c",
            "from gguf import GGMLQuantizationType as T\nfor t in T: print(t.value, t.name)",
        ])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let mut known = 0;
    for line in String::from_utf8(py.stdout).unwrap().lines() {
        let (id, name) = line.split_once(' ').unwrap();
        if let Some(dtype) = mlmf::DType::from_ggml_id(id.parse().unwrap()) {
            assert_eq!(mlmf::Format::Gguf.dtype_name(dtype), name, "ggml type {id}");
            known += 1;
        }
    }
    let ours = mlmf::DType::all()
        .filter(|d| d.info().ggml_id.is_some())
        .count();
    assert_eq!(
        known, ours,
        "a ggml type of ours that gguf-py does not list"
    );
}

/// A directory that holds no model: the message names what was looked for.
#[test]
fn inspect_of_a_directory_without_a_model_says_what_it_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mlmf"))
        .args(["inspect", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("looked for model.safetensors.index.json or model.safetensors"),
        "{err}"
    );
    assert!(!err.contains("No such file"), "{err}");
}

/// `quantize` gathers a view with gaps: `v[:, ::2]` quantizes to the same Q8_0 bytes as its
/// contiguous copy (gguf-py reads both); rows that are not whole blocks stay as the view's own
/// bytes, and the 0-d tensors are ggml's `[1]`, listed under `mlmf.scalar_tensors`.
#[test]
fn quantize_gathers_views_and_keeps_scalars() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.gguf");
    let src = views::path();
    let report = mlmf(&[
        "quantize",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "Q8_0",
    ]);
    // The report spells the input's dtypes as torch does, the output's as GGML does, and
    // counts a view's own bytes.
    let report = String::from_utf8(report.stdout).unwrap();
    let row: Vec<&str> = report
        .lines()
        .find(|l| l.starts_with("v_every_other "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[1..3], ["float32", "Q8_0"], "{report}");
    assert_eq!(row[5], "256", "{report}");
    let py = common::gguf_py(&out);
    let tensors = py["tensors"].as_array().unwrap();
    let find = |name: &str| tensors.iter().find(|t| t["name"] == name).unwrap();
    let (view, copy) = (find("v_every_other"), find("v_copy"));
    assert_eq!(
        (&view["type"], &copy["type"]),
        (&"Q8_0".into(), &"Q8_0".into())
    );
    assert_eq!(view["sha256"], copy["sha256"]);
    for e in views::expected() {
        let t = find(e.name);
        if e.name.starts_with("v_") {
            continue;
        }
        assert_eq!(t["type"], e.dtype, "{}", e.name);
        assert_eq!(t["sha256"], sha256_hex(&e.bytes), "{}", e.name);
        if e.shape.is_empty() {
            assert_eq!(t["ne"], serde_json::json!([1]), "{}", e.name);
        }
    }
    let scalars = py["kv"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == "mlmf.scalar_tensors")
        .unwrap();
    let names: Vec<&str> = scalars["value"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert_eq!(names, views::SCALARS);
    let back = mlmf::ModelFile::open(&out).unwrap();
    for name in views::SCALARS {
        assert_eq!(back.tensor(name).unwrap().shape.rank(), 0, "{name}");
    }
}

/// `convert --no-provenance` of a GGUF file to GGUF, nothing else asked, writes the input
/// back byte for byte: SmolLM2 (a real file) and gguf-py's quant oracle. Without the flag the
/// output gets a record; converting that output with the flag drops it again.
#[test]
fn convert_no_provenance_rewrites_gguf_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    for src in [
        common::model(common::SMOLLM2),
        common::fixtures().join("quant/quant_oracle.gguf"),
    ] {
        let original = std::fs::read(&src).unwrap();
        let plain = dir.path().join("plain.gguf");
        let recorded = dir.path().join("recorded.gguf");
        let again = dir.path().join("again.gguf");
        for p in [&plain, &recorded, &again] {
            let _ = std::fs::remove_file(p);
        }
        let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
        mlmf(&["convert", "--no-provenance", &s(&src), &s(&plain)]);
        assert!(
            std::fs::read(&plain).unwrap() == original,
            "{}: convert --no-provenance changed bytes",
            src.display()
        );
        mlmf(&["convert", &s(&src), &s(&recorded)]);
        let with = mlmf::ModelFile::open(&recorded).unwrap();
        assert!(with.metadata().get("mlmf.provenance").is_some());
        mlmf(&["convert", "--no-provenance", &s(&recorded), &s(&again)]);
        assert!(
            std::fs::read(&again).unwrap() == original,
            "{}: the carried record was not dropped",
            src.display()
        );
    }
}

/// A FIFO (`mkfifo`), or a character device with /dev/full's numbers (1, 7) made by `mknod` in
/// the test's own directory; false where this process may not make it.
fn make_node(path: &std::path::Path, kind: &str) -> bool {
    let mut cmd = Command::new(if kind == "fifo" { "mkfifo" } else { "mknod" });
    cmd.arg(path);
    if kind != "fifo" {
        cmd.args(["c", "1", "7"]);
    }
    cmd.status().is_ok_and(|s| s.success())
}

fn is_node(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::symlink_metadata(path).unwrap().file_type();
    t.is_fifo() || t.is_char_device()
}

/// `dump -o NODE` and `convert ... NODE --force` (one file, and sharded, which moves the old
/// output aside) over a FIFO or a device node: refused with a message, the node left as it was.
/// As root, `dump -o /dev/full` used to rename its temporary file over the device.
#[test]
fn outputs_that_are_device_nodes_or_fifos_are_refused() {
    let model = common::model(common::MINILM);
    let dir = tempfile::tempdir().unwrap();
    let mut kinds = vec!["fifo"];
    if make_node(&dir.path().join("probe"), "char") {
        kinds.push("char");
    } else {
        println!("mknod of a character device is not permitted here; testing a FIFO only");
    }
    for kind in kinds {
        let node = dir.path().join(format!("{kind}-node"));
        assert!(make_node(&node, kind));
        let node_arg = node.to_str().unwrap();
        let runs: [&[&str]; 3] = [
            &[
                "dump",
                model.to_str().unwrap(),
                "embeddings.LayerNorm.weight",
                "--device",
                "cpu",
                "-o",
                node_arg,
            ],
            &["convert", model.to_str().unwrap(), node_arg, "--force"],
            &[
                "convert",
                model.to_str().unwrap(),
                node_arg,
                "--force",
                "--max-shard-size",
                "20000000",
            ],
        ];
        for args in runs {
            let out = Command::new(env!("CARGO_BIN_EXE_mlmf"))
                .args(args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.contains("not a regular file"), "{args:?}: {err}");
            assert!(is_node(&node), "{args:?} replaced the {kind} node");
        }
    }
}

/// `inspect` and `verify` of a FIFO return at once with an error, not wait for a writer.
#[test]
fn inspect_and_verify_refuse_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.safetensors");
    assert!(make_node(&fifo, "fifo"));
    for command in ["inspect", "verify"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlmf"))
            .arg(command)
            .arg(&fifo)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("mlmf {command} waited 20 s on a FIFO");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("model.safetensors") && err.contains("FIFO"),
            "{err}"
        );
    }
}

/// The i-quants on grids are decode-only: `quantize --type` names why (an importance matrix for
/// IQ1/IQ2 and IQ3_XXS, an unimplemented search for IQ3_S), writes nothing, and IQ4_NL still quantizes.
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
        ("IQ3_XXS", "importance matrix"),
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
/// (mlmf-gpu's `tests/data/block_types.py`, the random blocks), equals gguf-py's decoding.
#[test]
fn dump_matches_gguf_py_for_every_iq_grid_type() {
    let dir = tempfile::tempdir().unwrap();
    let oracle = dir.path().join("iq.gguf");
    let script = common::workspace_dir().join("crates/mlmf-gpu/tests/data/block_types.py");
    let types = [
        "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
    ];
    let made = Command::new(common::python())
        .arg(&script)
        .arg(&oracle)
        .args(types)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let file = mlmf::ModelFile::open(&oracle).unwrap();
    for ty in types {
        let name = format!("{ty}.random");
        let want = f32s(file.bytes(file.tensor(&format!("{name}.dequant")).unwrap()));
        for device in ["gpu", "cpu"] {
            let out = dir.path().join(format!("{ty}.{device}.f32"));
            mlmf(&[
                "dump",
                oracle.to_str().unwrap(),
                &name,
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
