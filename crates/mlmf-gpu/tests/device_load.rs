//! Loading tensors to the GPU (lavapipe in CI) and reading them back: every byte must survive.

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../../../tests/common/shards.rs"]
mod shards;
#[path = "../../../tests/common/views.rs"]
mod views;

use std::collections::HashMap;
use std::io::Write;

use mlmf_core::{DType, ModelFile};
use mlmf_gpu::{Device, GpuOptions};

fn gpu() -> Device {
    Device::gpu().expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)")
}

/// Pages of 4 KiB and a 16 KiB staging window, so small tensors span pages and chunks.
fn tiny_gpu() -> Device {
    Device::gpu_with(&GpuOptions {
        max_page_bytes: Some(4096),
        staging_bytes: 16384,
        ..Default::default()
    })
    .expect("a GPU adapter")
}

fn assert_roundtrip(device: &Device, file: &ModelFile) {
    let tensors = device.load_all(file).unwrap();
    assert_eq!(tensors.len(), file.tensors().len());
    for (t, info) in tensors.iter().zip(file.tensors()) {
        assert_eq!(t.name(), info.name);
        let back = t.to_bytes().unwrap();
        assert!(
            back == file.bytes(info),
            "{}: bytes differ after upload and readback",
            info.name
        );
    }
}

/// A safetensors file with one tensor of every dtype safetensors defines, odd sizes included.
fn every_dtype_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    use safetensors::tensor::{Dtype, TensorView};
    let dtypes = [
        (Dtype::BOOL, 1),
        (Dtype::U8, 1),
        (Dtype::I8, 1),
        (Dtype::F8_E5M2, 1),
        (Dtype::F8_E4M3, 1),
        (Dtype::F8_E8M0, 1),
        (Dtype::I16, 2),
        (Dtype::U16, 2),
        (Dtype::F16, 2),
        (Dtype::BF16, 2),
        (Dtype::I32, 4),
        (Dtype::U32, 4),
        (Dtype::F32, 4),
        (Dtype::F64, 8),
        (Dtype::C64, 8),
        (Dtype::I64, 8),
        (Dtype::U64, 8),
    ];
    // 4099 elements: not a multiple of 4 bytes for the 1-byte types, and past a 4 KiB page.
    let n = 4099usize;
    let data: Vec<Vec<u8>> = dtypes
        .iter()
        .enumerate()
        .map(|(i, (_, size))| (0..n * size).map(|j| (j * 31 + i * 7) as u8).collect())
        .collect();
    let mut views: Vec<(String, TensorView)> = dtypes
        .iter()
        .zip(&data)
        .map(|((dt, _), bytes)| {
            (
                dt.to_string(),
                TensorView::new(*dt, vec![n], bytes).unwrap(),
            )
        })
        .collect();
    let f4: Vec<u8> = (0..5u8).collect();
    views.push((
        "F4".into(),
        TensorView::new(Dtype::F4, vec![10], &f4).unwrap(),
    ));
    let f6: Vec<u8> = (0..6u8).collect();
    views.push((
        "F6_E3M2".into(),
        TensorView::new(Dtype::F6_E3M2, vec![8], &f6).unwrap(),
    ));
    let bytes = safetensors::serialize(views, None).unwrap();
    let path = dir.path().join("every_dtype.bin");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    path
}

#[test]
fn every_dtype_roundtrips_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let file = ModelFile::open(every_dtype_file(&dir)).unwrap();
    assert_eq!(file.tensors().len(), 19);
    for info in file.tensors() {
        assert_eq!(
            info.dtype.info().safetensors,
            Some(info.name.as_str()),
            "dtype of {}",
            info.name
        );
    }
    assert_roundtrip(&gpu(), &file);
    assert_roundtrip(&tiny_gpu(), &file);
    assert_roundtrip(&Device::Cpu, &file);
}

#[test]
fn tensors_larger_than_a_page_are_paged() {
    let dir = tempfile::tempdir().unwrap();
    let file = ModelFile::open(every_dtype_file(&dir)).unwrap();
    let device = tiny_gpu();
    let t = device.load(&file, "F64").unwrap();
    let mlmf_gpu::Storage::Gpu(g) = t.storage() else {
        panic!("not on the GPU")
    };
    assert_eq!(g.pages().len(), (4099 * 8usize).div_ceil(4096));
    assert_eq!(
        t.to_bytes().unwrap(),
        file.bytes(file.tensor("F64").unwrap())
    );
    // Moving between devices keeps every byte.
    let on_cpu = t.to_device(&Device::Cpu).unwrap();
    let back = on_cpu.to_device(&gpu()).unwrap();
    assert_eq!(back.to_bytes().unwrap(), on_cpu.to_bytes().unwrap());
}

/// Load progress counts every selected byte once, in order, ending at the total: within a
/// tensor on a GPU whose staging window is smaller than it, per tensor on the CPU.
#[test]
fn load_progress_reaches_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let file = ModelFile::open(every_dtype_file(&dir)).unwrap();
    let keep = |t: &mlmf_core::TensorInfo| t.name == "F64" || t.name == "U8";
    let want: u64 = file
        .tensors()
        .iter()
        .filter(|t| keep(t))
        .map(|t| t.byte_len())
        .sum();
    for (device, min_calls) in [(tiny_gpu(), 4), (Device::Cpu, 2)] {
        let mut seen = Vec::new();
        let tensors = device
            .load_where_with_progress(&file, keep, &mut |done, total| seen.push((done, total)))
            .unwrap();
        assert_eq!(tensors.len(), 2);
        assert!(seen.len() >= min_calls, "{}: {seen:?}", device.describe());
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
        assert!(seen.iter().all(|&(_, total)| total == want));
        assert_eq!(seen.last().map(|p| p.0), Some(want));
    }
}

#[test]
fn load_list_predicate_and_lazy() {
    let file = ModelFile::open(common::model(common::MINILM)).unwrap();
    let device = gpu();
    let names = ["pooler.dense.bias", "embeddings.word_embeddings.weight"];
    let some = device.load_list(&file, &names).unwrap();
    assert_eq!(some.iter().map(|t| t.name()).collect::<Vec<_>>(), names);
    let biases = device
        .load_where(&file, |t| t.name.ends_with(".bias"))
        .unwrap();
    assert!(!biases.is_empty() && biases.iter().all(|t| t.name().ends_with(".bias")));
    let one = device.load(&file, "embeddings.LayerNorm.weight").unwrap();
    assert_eq!(one.dtype(), DType::F32);
    assert!(matches!(
        device.load(&file, "nope"),
        Err(mlmf_core::Error::TensorNotFound { .. })
    ));
}

/// Every tensor of every real model file, onto the GPU and back, bit-identical.
#[test]
fn real_files_roundtrip() {
    let device = gpu();
    for name in [
        common::SMOLLM2,
        common::GEMMA3,
        common::MOBILENET,
        common::POCKETNET,
    ] {
        let file = ModelFile::open(common::model(name)).unwrap();
        assert_roundtrip(&device, &file);
    }
}

/// gemma's token embedding (178 MB) is larger than lavapipe's 128 MiB storage binding limit, so
/// with the device's own limits it is stored in two pages.
#[test]
fn real_tensor_above_the_binding_limit_is_paged() {
    let Device::Gpu(gpu) = gpu() else {
        unreachable!()
    };
    let file = ModelFile::open(common::model(common::GEMMA3)).unwrap();
    let info = file.tensor("token_embd.weight").unwrap();
    assert_eq!(info.byte_len(), 178257920);
    let t = Device::Gpu(gpu.clone())
        .load(&file, "token_embd.weight")
        .unwrap();
    let mlmf_gpu::Storage::Gpu(g) = t.storage() else {
        panic!("not on the GPU")
    };
    let binding = gpu.limits().max_storage_buffer_binding_size;
    assert_eq!(
        g.pages().len() as u64,
        info.byte_len().div_ceil(g.page_bytes())
    );
    assert!(g.pages().iter().all(|p| p.size() <= binding));
    let mut at = 0usize;
    let bytes = file.bytes(info);
    t.for_each_chunk(|pos, chunk| {
        assert_eq!(pos as usize, at);
        assert!(
            chunk == &bytes[at..at + chunk.len()],
            "chunk at {pos} differs"
        );
        at += chunk.len();
        Ok(())
    })
    .unwrap();
    assert_eq!(at, bytes.len());
}

#[test]
fn real_minilm_roundtrips() {
    let file = ModelFile::open(common::model(common::MINILM)).unwrap();
    let shapes: HashMap<&str, &[usize]> = file
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.shape.dims()))
        .collect();
    // Counted independently with Python's json module on the header: 103 F32 and one I64.
    assert_eq!(file.tensors().len(), 104);
    assert_eq!(
        file.metadata().get("format").and_then(|v| v.as_str()),
        Some("pt")
    );
    assert_eq!(
        file.tensor("embeddings.position_ids").unwrap().dtype,
        DType::I64
    );
    assert_eq!(shapes["embeddings.word_embeddings.weight"], &[30522, 384]);
    assert_eq!(shapes["encoder.layer.5.output.dense.weight"], &[384, 1536]);
    assert_roundtrip(&gpu(), &file);
}

/// A sharded checkpoint (three safetensors files and an index) loads onto the GPU bit-identical.
#[test]
fn sharded_checkpoint_loads_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    shards::write_shards(dir.path());
    let sharded = ModelFile::open(dir.path()).unwrap();
    let gpu = Device::gpu().unwrap();
    for (t, info) in gpu
        .load_all(&sharded)
        .unwrap()
        .iter()
        .zip(sharded.tensors())
    {
        assert!(
            t.to_bytes().unwrap() == sharded.bytes(info),
            "{}",
            info.name
        );
    }
}

/// PyTorch views with gaps, an expanded view and 0-d tensors load as their own row-major bytes
/// (not their spans) on the GPU, through pages and staging chunks smaller than the file, and on
/// the CPU.
#[test]
fn strided_views_and_scalars_load_as_their_own_bytes() {
    let file = ModelFile::open(views::path()).unwrap();
    for device in [tiny_gpu(), Device::Cpu] {
        let tensors = device.load_all(&file).unwrap();
        for (t, e) in tensors.iter().zip(views::expected()) {
            assert_eq!(t.name(), e.name);
            assert_eq!(t.shape().dims(), &e.shape[..], "{}", e.name);
            assert!(t.to_bytes().unwrap() == e.bytes, "{}: bytes differ", e.name);
        }
    }
}

/// Whisper tiny.en's CTranslate2 file: f16 tensors at odd file offsets, 1- and 2-byte scalars,
/// an alias. Every tensor loads bit-identical on the GPU and the CPU; f16 stays f16 on both
/// (kernels read 16-bit operands as u32 words and widen them in the shader, so they need no
/// shader-f16), and its widening to f32 on the GPU equals half's exact widening.
#[test]
fn whisper_ctranslate2_loads_bit_identical() {
    let file = ModelFile::open(common::model(common::WHISPER_CT2)).unwrap();
    let device = gpu();
    assert_roundtrip(&device, &file);
    assert_roundtrip(&Device::Cpu, &file);
    for name in [
        // The alias of the token embedding, stored at byte 187.
        "decoder/projection/weight",
        "encoder/conv1/weight",
        "encoder/layer_0/self_attention/linear_0/bias",
        "encoder/num_heads",
        "decoder/activation",
    ] {
        let info = file.tensor(name).unwrap();
        let bytes = file.bytes(info);
        let want: Vec<f32> = match info.dtype {
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::I16 => bytes
                .chunks_exact(2)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::I8 => bytes.iter().map(|&b| f32::from(b as i8)).collect(),
            other => panic!("{name}: {other}"),
        };
        for device in [&device, &Device::Cpu] {
            let t = device.load(&file, name).unwrap();
            assert_eq!(t.dtype(), info.dtype, "{name}: loaded as stored");
            assert_eq!(t.shape(), &info.shape, "{name}");
            let got = t.to_f32_vec().unwrap();
            assert_eq!(got.len(), want.len(), "{name}");
            let same = got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(
                same,
                "{name} on {}: widened values differ",
                device.describe()
            );
        }
    }
    assert_eq!(
        file.tensor("decoder/projection/weight")
            .unwrap()
            .range
            .start
            % 2,
        1
    );
}
