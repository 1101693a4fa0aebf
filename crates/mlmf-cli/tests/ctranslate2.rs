//! `mlmf inspect`, `dump` and `convert` on a CTranslate2 `model.bin` (Whisper tiny.en), checked
//! against the fixture's layout (`../shared/fixtures/whisper/model_layout.json`), an independent
//! numpy reading (`scripts/check_ct2.py`) and the Python `safetensors` library.

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

fn layout() -> serde_json::Value {
    let path = common::fixtures().join("whisper/model_layout.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn python(code: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(common::python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn inspect_json_of_a_ctranslate2_file() {
    let path = common::model(common::WHISPER_CT2);
    let out = mlmf(&["inspect", "--json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layout = layout();
    assert_eq!(v["format"], "ctranslate2");
    assert_eq!(v["version"], 6);
    assert_eq!(v["tensor_count"], 148);
    assert_eq!(v["metadata"]["ctranslate2.spec"], "WhisperSpec");
    assert_eq!(v["metadata"]["ctranslate2.spec_revision"], 3);
    assert_eq!(v["metadata"]["ctranslate2.aliases"], layout["aliases"]);
    let tensors = v["tensors"].as_array().unwrap();
    let vars = layout["variables"].as_array().unwrap();
    assert_eq!(tensors.len(), vars.len());
    for (t, l) in tensors.iter().zip(vars) {
        assert_eq!(t["name"], l["name"]);
        assert_eq!(t["dtype"], l["dtype"], "{}", l["name"]);
        assert_eq!(t["shape"], l["dims"], "{}", l["name"]);
    }
}

/// `dump` of f16 tensors at odd and even offsets (the first through its alias) and an int16
/// scalar, on the GPU and the CPU, equals numpy's widening of the bytes numpy located itself.
#[test]
fn dump_matches_an_independent_reading() {
    let path = common::model(common::WHISPER_CT2);
    let names = [
        "decoder/projection/weight",
        "encoder/conv2/weight",
        "encoder/num_heads",
    ];
    let numpy = {
        let out = Command::new(common::python())
            .arg(common::workspace_dir().join("scripts/check_ct2.py"))
            .arg(&path)
            .args(names)
            .args(["decoder/embeddings/weight"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        // The alias's values are its target's.
        let source = if name == "decoder/projection/weight" {
            "decoder/embeddings/weight"
        } else {
            name
        };
        let values = |part: &str| -> Vec<f32> {
            numpy["values"][source][part]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        let (head, tail) = (values("head"), values("tail"));
        for device in ["gpu", "cpu"] {
            let out = dir.path().join(format!("{device}.f32"));
            mlmf(&[
                "dump",
                path.to_str().unwrap(),
                name,
                "--device",
                device,
                "-o",
                out.to_str().unwrap(),
            ]);
            let got: Vec<f32> = std::fs::read(&out)
                .unwrap()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert!(got.len() >= head.len(), "{name}");
            assert!(
                got[..head.len()] == head[..],
                "{name} on {device}: first values"
            );
            assert!(
                got[got.len() - tail.len()..] == tail[..],
                "{name} on {device}: last values"
            );
        }
    }
}

/// A CTranslate2 file converts to safetensors; the `safetensors` library reads every tensor back
/// with the fixture's dtype, shape and data sha256, and the spec as metadata.
#[test]
fn convert_to_safetensors_reads_back_in_the_safetensors_library() {
    let path = common::model(common::WHISPER_CT2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("whisper.safetensors");
    mlmf(&["convert", path.to_str().unwrap(), out.to_str().unwrap()]);
    let read = python(
        r#"
import hashlib, json, sys
from safetensors import safe_open
out = {"tensors": {}}
with safe_open(sys.argv[1], "np") as f:
    out["metadata"] = f.metadata()
    for k in f.keys():
        a = f.get_tensor(k)
        out["tensors"][k] = {"dtype": str(a.dtype), "dims": list(a.shape),
                             "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
json.dump(out, sys.stdout)
"#,
        &[out.to_str().unwrap()],
    );
    let layout = layout();
    let vars = layout["variables"].as_array().unwrap();
    let tensors = read["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), vars.len());
    for v in vars {
        let name = v["name"].as_str().unwrap();
        let t = &tensors[name];
        assert_eq!(t["dtype"], v["dtype"], "{name}");
        assert_eq!(t["dims"], v["dims"], "{name}");
        assert_eq!(t["sha256"], v["sha256"], "{name}");
    }
    assert_eq!(read["metadata"]["ctranslate2.spec"], "WhisperSpec");
    assert_eq!(read["metadata"]["ctranslate2.spec_revision"], "3");
}

#[test]
fn a_truncated_ctranslate2_file_is_an_error_naming_file_variable_and_offset() {
    let path = common::model(common::WHISPER_CT2);
    let layout = layout();
    // Cut inside the data of the token embedding (39.8 MB from byte 187); 1 MB in, so the 148
    // records' smallest size still fits and the cut is reported where it is.
    let cut = layout["variables"][4]["data_offset"].as_u64().unwrap() as usize + 1_000_000;
    assert_eq!(layout["variables"][4]["name"], "decoder/embeddings/weight");
    let bytes = std::fs::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.bin");
    std::fs::write(&short, &bytes[..cut]).unwrap();
    for args in [
        vec!["inspect", short.to_str().unwrap()],
        vec![
            "convert",
            short.to_str().unwrap(),
            dir.path().join("o.safetensors").to_str().unwrap(),
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mlmf"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("short.bin"), "{err}");
        assert!(err.contains("decoder/embeddings/weight"), "{err}");
        assert!(err.contains("offset 187"), "{err}");
    }
    assert!(!dir.path().join("o.safetensors").exists());
}
