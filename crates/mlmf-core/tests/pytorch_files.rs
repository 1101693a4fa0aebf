//! Real `torch.save` checkpoints, one of each layout.
//!
//! torch is not installed here. The expected names and shapes of MobileNetV2 come from
//! torchvision's architecture (rebuilt below); the counts, byte totals and first values of both
//! files were read once by hand with Python's own `pickle` module, through an Unpickler whose
//! `find_class` returned stubs for `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`
//! and the `torch.*Storage` names and whose `persistent_load` returned the persistent id, then
//! `struct.unpack('<f', ...)` on the storage bytes (from the zip member, or after the legacy
//! layout's u64 element count).

#[path = "../../../tests/common/mod.rs"]
mod common;

use mlmf_core::{DType, Format, ModelFile, TensorInfo};

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// torchvision `mobilenet_v2()` state-dict names and shapes, in module order
/// (torchvision/models/mobilenetv2.py: `inverted_residual_setting`, `InvertedResidual`).
fn mobilenet_v2_state_dict() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let bn = |out: &mut Vec<(String, Vec<usize>)>, prefix: &str, c: usize| {
        for stat in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{prefix}.{stat}"), vec![c]));
        }
        out.push((format!("{prefix}.num_batches_tracked"), vec![]));
    };
    out.push(("features.0.0.weight".to_string(), vec![32, 3, 3, 3]));
    bn(&mut out, "features.0.1", 32);
    let setting = [
        (1, 16, 1),
        (6, 24, 2),
        (6, 32, 3),
        (6, 64, 4),
        (6, 96, 3),
        (6, 160, 3),
        (6, 320, 1),
    ];
    let mut input = 32;
    let mut block = 1;
    for (t, c, n) in setting {
        for _ in 0..n {
            let hidden = input * t;
            let p = format!("features.{block}.conv");
            let mut i = 0;
            if t != 1 {
                out.push((format!("{p}.{i}.0.weight"), vec![hidden, input, 1, 1]));
                bn(&mut out, &format!("{p}.{i}.1"), hidden);
                i += 1;
            }
            out.push((format!("{p}.{i}.0.weight"), vec![hidden, 1, 3, 3]));
            bn(&mut out, &format!("{p}.{i}.1"), hidden);
            out.push((format!("{p}.{}.weight", i + 1), vec![c, hidden, 1, 1]));
            bn(&mut out, &format!("{p}.{}", i + 2), c);
            input = c;
            block += 1;
        }
    }
    out.push(("features.18.0.weight".to_string(), vec![1280, 320, 1, 1]));
    bn(&mut out, "features.18.1", 1280);
    out.push(("classifier.1.weight".to_string(), vec![1000, 1280]));
    out.push(("classifier.1.bias".to_string(), vec![1000]));
    out
}

#[test]
fn mobilenet_v2_legacy_checkpoint() {
    let path = common::model(common::MOBILENET);
    let file = ModelFile::open(&path).unwrap();
    assert_eq!(file.format(), Format::PyTorchLegacy);

    let expected = mobilenet_v2_state_dict();
    assert_eq!(expected.len(), 314);
    let found: Vec<(String, Vec<usize>)> = file
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.shape.dims().to_vec()))
        .collect();
    assert_eq!(found, expected);

    let raw = std::fs::read(&path).unwrap();
    for t in file.tensors() {
        assert!(t.is_contiguous(), "{}", t.name);
        let want = if t.name.ends_with("num_batches_tracked") {
            DType::I64
        } else {
            DType::F32
        };
        assert_eq!(t.dtype, want, "{}", t.name);
        assert_eq!(
            t.byte_len(),
            want.byte_len(t.shape.elem_count()).unwrap(),
            "{}",
            t.name
        );
        // Each tensor has a storage of its own here, and the legacy layout writes the storage's
        // element count just before its bytes.
        let count_at = t.range.start as usize - 8;
        let count = u64::from_le_bytes(raw[count_at..count_at + 8].try_into().unwrap());
        assert_eq!(count, t.shape.elem_count(), "{}", t.name);
    }
    // From Python's pickle (see the top of this file): 314 tensors, 14,156,352 bytes of data.
    assert_eq!(file.data_bytes(), 14_156_352);
    assert_eq!(
        file.tensors().iter().map(TensorInfo::byte_len).sum::<u64>(),
        file.data_bytes()
    );

    let bias = f32s(file.bytes(file.tensor("classifier.1.bias").unwrap()));
    assert_eq!(bias.len(), 1000);
    assert!(bias.iter().all(|v| v.is_finite()));
    assert_eq!(
        bias[..4],
        [0.047188025, 0.009949382, -0.033395123, -0.051339056]
    );
    let w = f32s(file.bytes(file.tensor("features.0.0.weight").unwrap()));
    assert_eq!(w[..4], [0.01318534, -0.0043212944, 0.014823136, 0.0327805]);
    let steps = file.bytes(file.tensor("features.0.1.num_batches_tracked").unwrap());
    assert_eq!(i64::from_le_bytes(steps.try_into().unwrap()), 1_431_430);
}

/// pocketnet 0.3.0 (PyPI, MIT): `pocketnet/weights/v3_fold0.pt`, a torch 2.x zip checkpoint.

#[test]
fn pocketnet_zip_checkpoint() {
    let file = ModelFile::open(common::model(common::POCKETNET)).unwrap();
    assert_eq!(file.format(), Format::PyTorchZip);
    assert_eq!(file.version(), Some(3));
    assert_eq!(file.tensors().len(), 98);
    assert_eq!(file.data_bytes(), 4_145_840);
    for t in file.tensors() {
        assert_eq!(t.dtype, DType::F32, "{}", t.name);
        assert!(t.is_contiguous(), "{}", t.name);
        // torch's zip writer starts every storage on a 64-byte boundary.
        assert_eq!(t.range.start % 64, 0, "{}", t.name);
    }
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names[..4],
        ["emb.weight", "bur.weight", "bur.bias", "rbf.mu"]
    );
    assert_eq!(names[names.len() - 2..], ["out.5.weight", "out.5.bias"]);
    let shape = |name: &str| file.tensor(name).unwrap().shape.dims().to_vec();
    assert_eq!(shape("emb.weight"), [189, 128]);
    assert_eq!(shape("layers.5.msg.0.weight"), [128, 272]);
    assert_eq!(shape("out.0.weight"), [256, 448]);
    assert_eq!(shape("out.5.bias"), [1]);

    let emb = f32s(file.bytes(file.tensor("emb.weight").unwrap()));
    assert_eq!(emb[..4], [-1.0902402, -1.1159102, -0.24265584, -0.42016345]);
    let mu = f32s(file.bytes(file.tensor("rbf.mu").unwrap()));
    assert_eq!(mu[..4], [0.0, 0.4, 0.8, 1.2]);
    let bias = f32s(file.bytes(file.tensor("out.5.bias").unwrap()));
    assert_eq!(bias, [-0.036902275]);
}

#[path = "../../../tests/common/views.rs"]
mod views;

/// Views with gaps, an expanded view, tied storages and 0-d tensors (a zip whose pickle
/// `tests/data/make_pytorch_fixtures.py` writes by hand): each tensor's bytes are its own
/// (dtype times shape), its span is kept apart, and gathering gives the view's elements.
#[test]
fn views_scalars_and_tied_storages() {
    let file = ModelFile::open(views::path()).unwrap();
    let expected = views::expected();
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|e| e.name).collect();
    assert_eq!(names, want);
    let mut scratch = Vec::new();
    for e in &expected {
        let t = file.tensor(e.name).unwrap();
        assert_eq!(
            Some(t.dtype),
            DType::from_safetensors(e.dtype),
            "{}",
            e.name
        );
        assert_eq!(t.shape.dims(), &e.shape[..], "{}", e.name);
        assert_eq!(t.byte_len(), e.bytes.len() as u64, "{}", e.name);
        assert_eq!(t.span_len(), e.span, "{}", e.name);
        let src = mlmf_core::Source::of(&file, t);
        assert_eq!(
            src.chunk(0, e.bytes.len(), &mut scratch),
            &e.bytes[..],
            "{}",
            e.name
        );
    }
    // The numbers: w[:, ::2] of a 4x12 float32 matrix is 96 bytes spread over 188.
    let every_other = file.tensor("w_every_other").unwrap();
    assert_eq!((every_other.byte_len(), every_other.span_len()), (96, 188));
    assert!(!every_other.is_contiguous());
    // Tied: one storage under several names.
    let w = file.tensor("w").unwrap();
    for name in ["w_tied", "w_t", "w_every_other"] {
        assert_eq!(
            file.tensor(name).unwrap().range.start,
            w.range.start,
            "{name}"
        );
    }
    assert_eq!(
        file.data_bytes(),
        expected.iter().map(|e| e.bytes.len() as u64).sum::<u64>()
    );
    assert_eq!(file.data_bytes(), 1356);
}
