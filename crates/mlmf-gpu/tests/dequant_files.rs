//! Dequantization of real GGUF files on the GPU and with the CPU twin, checked against gguf-py
//! 0.19.0: the quantization oracle (one tensor per type), an IQ4_NL/IQ4_XS oracle in tests/data,
//! and every tensor of SmolLM2-135M Q4_1 and gemma-3-270m Q4_K_M (`fixtures/models/gguf`: the
//! first 8192 elements of a few tensors, and the sha256 of the full f32 decoding of every
//! tensor).

#[path = "../../../tests/common/mod.rs"]
mod common;

use mlmf_core::{DType, ModelFile};
use mlmf_gpu::ops::{convert, dequant};
use mlmf_gpu::Device;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The first element where two f32 byte streams differ, for the failure message.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let (g, w) = (f32s(got), f32s(want));
    match g
        .iter()
        .zip(&w)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        Some(i) => format!("element {i}: got {:e}, want {:e}", g[i], w[i]),
        None => format!("lengths {} and {}", g.len(), w.len()),
    }
}

/// The CPU twin's decoding of a tensor (the twin of whatever `to_f32` runs for its dtype, through
/// `convert::bytes_to_f32`), handed out in pieces of any length: decodes a bounded
/// run of blocks at a time, so no whole-tensor f32 copy is held.
struct Twin<'a> {
    dtype: DType,
    bytes: &'a [u8],
    at: usize,
    decoded: Vec<f32>,
}

impl<'a> Twin<'a> {
    const BLOCKS: usize = 1 << 14;

    fn new(dtype: DType, bytes: &'a [u8]) -> Self {
        Twin {
            dtype,
            bytes,
            at: 0,
            decoded: Vec::new(),
        }
    }

    /// The next `n` decoded elements.
    fn take(&mut self, n: usize) -> Vec<f32> {
        let step = Self::BLOCKS * self.dtype.block_bytes() as usize;
        while self.decoded.len() < n {
            assert!(self.at < self.bytes.len(), "twin ran out of blocks");
            let end = self.bytes.len().min(self.at + step);
            self.decoded
                .extend(convert::bytes_to_f32(self.dtype, &self.bytes[self.at..end]));
            self.at = end;
        }
        let rest = self.decoded.split_off(n);
        std::mem::replace(&mut self.decoded, rest)
    }
}

/// Every tensor of the quantization oracle, loaded from GGUF on each device, decodes exactly as
/// gguf-py decodes it (F16 and BF16 through convert, the block types through dequant).
#[test]
fn quant_oracle_decodes_exactly_as_gguf_py_on_both_devices() {
    let dir = common::fixtures().join("quant");
    let oracle = ModelFile::open(dir.join("quant_oracle.gguf")).unwrap();
    let expected = ModelFile::open(dir.join("expected.safetensors")).unwrap();
    assert_eq!(oracle.tensors().len(), 12);
    let gpu = Device::gpu().unwrap();
    for info in oracle.tensors() {
        let name = &info.name;
        assert_eq!(info.dtype.name(), name);
        let quant = expected.tensor(&format!("{name}.quant")).unwrap();
        assert_eq!(oracle.bytes(info), expected.bytes(quant), "{name} bytes");
        let want = expected.bytes(expected.tensor(&format!("{name}.dequant")).unwrap());
        for device in [&Device::Cpu, &gpu] {
            let t = device.load(&oracle, name).unwrap();
            let got = convert::to_f32(&t).unwrap().to_bytes().unwrap();
            assert!(
                got == want,
                "{name} on {}: {}",
                device.describe(),
                first_difference(&got, want)
            );
            if info.dtype.is_quantized() {
                let got = dequant::to_f32(&t).unwrap().to_bytes().unwrap();
                assert!(got == want, "{name} through dequant::to_f32");
            }
        }
    }
}

/// IQ4_NL and IQ4_XS, which the shared oracle lacks, against gguf-py's decoding of random blocks
/// (`tests/data/iq4_gguf_py.gguf`, written by `tests/data/make_iq4_fixture.py`).
#[test]
fn iq4_types_decode_exactly_as_gguf_py_on_both_devices() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/iq4_gguf_py.gguf");
    let file = ModelFile::open(path).unwrap();
    let gpu = Device::gpu().unwrap();
    for dtype in [DType::IQ4_NL, DType::IQ4_XS] {
        let name = dtype.name();
        let want = file.bytes(file.tensor(&format!("{name}.dequant")).unwrap());
        for device in [&Device::Cpu, &gpu] {
            let t = device.load(&file, name).unwrap();
            assert_eq!(t.dtype(), dtype);
            let got = dequant::to_f32(&t).unwrap().to_bytes().unwrap();
            assert!(
                got == want,
                "{name} on {}: {}",
                device.describe(),
                first_difference(&got, want)
            );
        }
    }
}

/// Every tensor of `model`, one at a time: the GPU result equals the CPU twin bit for bit
/// (compared chunk by chunk as it is read back), the sha256 of the twin's f32 bytes equals
/// gguf-py's, and the first 8192 elements of the tensors in `<short>.dequant.safetensors` equal
/// gguf-py's values.
fn check_model(model: &str, short: &str, count: usize) {
    let file = ModelFile::open(common::model(model)).unwrap();
    let gguf = common::fixtures().join("models/gguf");
    let digests: Json = serde_json::from_str(
        &std::fs::read_to_string(gguf.join(format!("{short}.tensor_digests.json"))).unwrap(),
    )
    .unwrap();
    let slices = ModelFile::open(gguf.join(format!("{short}.dequant.safetensors"))).unwrap();
    assert_eq!(file.tensors().len(), count);

    let gpu = Device::gpu().unwrap();
    let mut sliced = 0;
    for info in file.tensors() {
        let name = &info.name;
        let digest = &digests["tensors"][name]["sha256_dequant_f32_le"];
        let out = convert::to_f32(&gpu.load(&file, name).unwrap()).unwrap();
        let mut cpu = Twin::new(info.dtype, file.bytes(info));
        let mut sha = Sha256::new();
        let mut head = Vec::new();
        out.for_each_chunk(|pos, chunk| {
            let want = le_bytes(&cpu.take(chunk.len() / 4));
            assert!(
                chunk == want.as_slice(),
                "{model} {name} ({}), gpu vs cpu twin after element {}: {}",
                info.dtype,
                pos / 4,
                first_difference(chunk, &want)
            );
            sha.update(&want);
            if head.len() < 8192 * 4 {
                head.extend_from_slice(&want[..want.len().min(8192 * 4 - head.len())]);
            }
            Ok(())
        })
        .unwrap();
        let hex: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            digest,
            &Json::String(hex),
            "{model} {name} ({})",
            info.dtype
        );
        if let Ok(slice) = slices.tensor(name) {
            let want = slices.bytes(slice);
            assert!(
                head == want,
                "{model} {name} first 8192: {}",
                first_difference(&head, want)
            );
            sliced += 1;
        }
    }
    assert_eq!(sliced, slices.tensors().len());
}

#[test]
fn every_smollm2_tensor_decodes_identically_on_gpu_and_cpu_and_as_gguf_py() {
    check_model(common::SMOLLM2, "smollm2", 272);
}

#[test]
fn every_gemma3_tensor_decodes_identically_on_gpu_and_cpu_and_as_gguf_py() {
    check_model(common::GEMMA3, "gemma3", 236);
}
