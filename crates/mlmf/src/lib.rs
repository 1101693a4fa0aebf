//! mlmf loads machine-learning model files (safetensors, sharded safetensors, GGUF, PyTorch)
//! straight from disk into GPU memory through wgpu (Vulkan, Metal, DX12), works with them there
//! (dequantization, LoRA, real models) and saves results atomically with provenance.
//!
//! The types most programs need are at the crate root: [`ModelFile`] (a file opened by memory
//! map, its tensor index and metadata), [`Device`] (a GPU, or the CPU that runs the plain-Rust
//! twin of every kernel), [`Tensor`], [`DType`] and the one [`Error`]. The modules hold the
//! tasks: [`ops`] (kernels), [`lora`], [`checkpoint`] (writers and training checkpoints),
//! [`provenance`], [`quant`] (CPU quantizers), [`models`] and [`multimodal`].
//!
//! # Open a file
//!
//! The format is found from the first bytes; nothing is copied until a tensor is loaded.
//!
//! ```no_run
//! use mlmf::ModelFile;
//! let file = ModelFile::open("model.safetensors")?;
//! println!("{} {} tensors", file.format(), file.tensors().len());
//! for t in file.tensors() {
//!     println!("{} {} {} ({} bytes)", t.name, t.dtype, t.shape, t.byte_len());
//! }
//! # Ok::<(), mlmf::Error>(())
//! ```
//!
//! # Load onto the GPU
//!
//! Tensors stream from the memory map through a bounded staging window into GPU buffers.
//!
//! ```no_run
//! use mlmf::{Device, ModelFile};
//! let file = ModelFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let gpu = Device::gpu()?;
//! let embeddings = gpu.load(&file, "token_embd.weight")?;
//! let all = gpu.load_all(&file)?;
//! println!("{embeddings:?}, {} tensors on {}", all.len(), gpu.describe());
//! # Ok::<(), mlmf::Error>(())
//! ```
//!
//! # Dequantize
//!
//! GGML blocks are uploaded as the file stores them and decoded in WGSL; on [`Device::Cpu`]
//! the same op runs the CPU twin.
//!
//! ```no_run
//! use mlmf::{Device, ModelFile};
//! let file = ModelFile::open("gemma-3-270m-q4_k_m.gguf")?;
//! let w = Device::gpu()?.load(&file, "blk.0.attn_q.weight")?;
//! let f32s = mlmf::ops::dequant::to_f32(&w)?;
//! let values: Vec<f32> = f32s.to_f32_vec()?;
//! # Ok::<(), mlmf::Error>(())
//! ```
//!
//! # Merge a LoRA adapter
//!
//! A PEFT adapter directory (or a llama.cpp GGUF adapter) is matched to the base in either
//! naming and merged tensor by tensor into a new file, on the GPU.
//!
//! ```no_run
//! use mlmf::lora::{merge_file, LoraAdapter, MergeOptions};
//! use mlmf::{Device, ModelFile};
//! let base = ModelFile::open("base.safetensors")?;
//! let adapter = LoraAdapter::open("my-peft-adapter/")?;
//! let bound = adapter.bind(&base)?;
//! let report = merge_file(
//!     &Device::gpu()?,
//!     &base,
//!     &bound,
//!     &MergeOptions::default(),
//!     "merged.safetensors".as_ref(),
//!     &mut |_| {},
//! )?;
//! println!("{} tensors written", report.len());
//! # Ok::<(), mlmf::Error>(())
//! ```
//!
//! # Save with provenance
//!
//! Writers stream each tensor (from memory, a memory map or a GPU readback) into a temporary
//! file that replaces the target only when complete. With a provenance record, the file
//! carries its content hash, its parents and what was done to them.
//!
//! ```no_run
//! use mlmf::provenance::{self, Parent, Provenance, Transform};
//! use mlmf::{DType, ModelFile, SafetensorsWriter, TensorSource};
//! let input = ModelFile::open("model.safetensors")?;
//! let scaled: Vec<u8> = (0..16u32).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
//! let mut writer = SafetensorsWriter::new(Default::default());
//! writer.provenance(Provenance {
//!     parents: vec![Parent::of(&input)?],
//!     transforms: vec![Transform::LoadTransform { description: "scaled by 0.5".into() }],
//! });
//! writer.add_tensor("w".to_string(), DType::F32, &[4, 4], TensorSource::Bytes(&scaled));
//! writer.write("out.safetensors")?;
//! provenance::verify(&ModelFile::open("out.safetensors")?)?.check()?;
//! # Ok::<(), mlmf::Error>(())
//! ```
//!
//! # Resume from a checkpoint
//!
//! A checkpoint directory keeps numbered steps, each verified by its manifest's sha256 on
//! resume; saves are atomic, so a killed process leaves the previous checkpoint whole.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use mlmf::checkpoint::CheckpointManager;
//! use mlmf::{DType, Device, Tensor};
//! let mut ckpt = CheckpointManager::open("runs/a")?;
//! let resume = ckpt.resume()?;
//! let start = match &resume.checkpoint {
//!     Some(info) => {
//!         let model = ckpt.load(info.step)?;
//!         let _weights = Device::gpu()?.load_all(&model)?;
//!         info.step + 1
//!     }
//!     None => 0,
//! };
//! let w = Tensor::from_f32("w", vec![2, 2], &[1.0, 2.0, 3.0, 4.0])?;
//! let metrics = BTreeMap::from([("loss".to_string(), 0.25)]);
//! ckpt.save(start + 100, [&w], &BTreeMap::new(), &metrics)?;
//! # Ok::<(), mlmf::Error>(())
//! ```

pub mod cache;
pub mod checkpoint;
pub mod fusion;
pub mod lora;
pub mod models;
pub mod multimodal;
pub mod provenance;
mod quantize;
pub mod shard;
mod timestamp;

pub use mlmf_core::dtype;
// Inside the crate, `crate::error::{Error, Result}` and `crate::formats::...` read like the rest
// of the code base; users get the types from the root.
use mlmf_core::{error, formats, Source};
pub use mlmf_gpu::ops;

/// CPU quantizers ([`quant::quantize`]) and whole-file quantization ([`quant::quantize_file`]).
pub mod quant {
    pub use crate::quantize::{fallback, plan, quantize_file, Planned, QuantizeOptions};
    pub use mlmf_core::quant::*;
}

pub use cache::{CacheStats, TensorCache, Transform as CacheTransform};
pub use checkpoint::{GgufWriter, SafetensorsWriter, TensorSource};
pub use mlmf_core::{
    Arch, ByteRange, DType, Error, Format, Metadata, ModelFile, NameMap, Result, Rule, Shape,
    Slice, TensorInfo, Value,
};
pub use mlmf_gpu::{adapters, AdapterReport, Device, Gpu, GpuOptions, KvCache, Storage, Tensor};
