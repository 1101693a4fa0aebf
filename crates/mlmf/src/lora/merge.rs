//! Baking adapters into base weights (`W' = W + s·B·A`), and taking them out again.
//!
//! F32, F16 and BF16 bases are merged in their own dtype ([`crate::ops::lora::merge`]: f32
//! arithmetic, one rounding). A quantized base is decoded to f32 on the device, merged, and then
//! kept as F16 (the default, as `llama-export-lora` writes merged quantized tensors), kept as
//! F32, or quantized again to its own type with the CPU quantizers ([`crate::quant`]).
//!
//! Unmerging does not subtract: `W + s·B·A - s·B·A` is not `W` in floating point, and a
//! requantized tensor cannot be un-rounded. [`MergedWeights::unmerge`] re-reads every changed
//! tensor from the base file instead, so the result is the original bytes, bit for bit.

use std::collections::{BTreeMap, BTreeSet};

use super::{Bound, Target};
use crate::checkpoint::ChunkSource;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops;
use crate::Device;
use crate::Tensor;

/// What a merge makes of a quantized base tensor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuantizedMerge {
    /// Keep the merged tensor in F16 (as `llama-export-lora` does).
    #[default]
    F16,
    /// Keep it in F32.
    F32,
    /// Quantize it again to the base tensor's type.
    Requantize,
}

/// How to merge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MergeOptions {
    /// Multiplies the adapter's own scale (PEFT's `scale` argument, llama.cpp's `--lora-scaled`).
    pub multiplier: f32,
    pub quantized: QuantizedMerge,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            multiplier: 1.0,
            quantized: QuantizedMerge::default(),
        }
    }
}

impl MergeOptions {
    /// The dtype a merge of a base tensor of `base` gives.
    pub fn merged_dtype(&self, base: DType) -> DType {
        match (base, self.quantized) {
            (DType::F32 | DType::F16 | DType::BF16, _) => base,
            (_, QuantizedMerge::F16) => DType::F16,
            (_, QuantizedMerge::F32) => DType::F32,
            (_, QuantizedMerge::Requantize) => base,
        }
    }
}

/// Load `target`'s base tensor from `base` onto `device` and return it merged.
pub fn merge_target(
    device: &Device,
    base: &ModelFile,
    target: &Target<'_>,
    options: &MergeOptions,
) -> Result<Tensor> {
    let w = device.load(base, &target.tensor)?;
    merge_into(&w, target, options)
}

/// `w` (the current value of `target`'s base tensor, on any device) with the update added, on
/// the same device.
pub(crate) fn merge_into(
    w: &Tensor,
    target: &Target<'_>,
    options: &MergeOptions,
) -> Result<Tensor> {
    let device = w.device();
    let m = target.module;
    let a = Tensor::from_f32(
        &format!("{}.lora_A", m.name),
        vec![m.rank, m.in_features],
        &m.a,
    )?
    .to_device(&device)?;
    let b = Tensor::from_f32(
        &format!("{}.lora_B", m.name),
        vec![m.out_features, m.rank],
        &target.b,
    )?
    .to_device(&device)?;
    let scale = m.scale * options.multiplier;
    let fan = target.fan_in_fan_out;
    match w.dtype() {
        DType::F32 | DType::F16 | DType::BF16 => ops::lora::merge(w, &a, &b, scale, fan),
        dtype if ops::dequant::supports(dtype) => {
            let wide = ops::convert::to_f32(w)?;
            let merged = ops::lora::merge(&wide, &a, &b, scale, fan)?;
            if options.quantized == QuantizedMerge::F32 {
                return Ok(merged);
            }
            let values = f32_values(&merged)?;
            let (out, bytes) = match options.quantized {
                QuantizedMerge::Requantize => (
                    dtype,
                    crate::quant::quantize(dtype, &values, w.shape().row_len())?,
                ),
                _ => (
                    DType::F16,
                    values
                        .iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                        .collect(),
                ),
            };
            Tensor::from_bytes(w.name(), out, w.shape().clone(), bytes)?.to_device(&device)
        }
        dtype => Err(Error::OpDType {
            op: "lora merge",
            tensor: w.name().to_string(),
            dtype,
            expected: "F32, F16, BF16 or a GGML block type with a decoder",
        }),
    }
}

fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(t.shape().elem_count() as usize);
    t.for_each_chunk(|_, chunk| {
        out.extend(
            chunk
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        Ok(())
    })?;
    Ok(out)
}

/// A merged tensor as a writer source: the merge runs when the writer asks for the bytes, so a
/// whole model streams through one tensor at a time.
pub(crate) struct MergeSource<'a> {
    pub device: &'a Device,
    pub base: &'a ModelFile,
    pub target: &'a Target<'a>,
    pub options: &'a MergeOptions,
    pub byte_len: u64,
}

impl ChunkSource for MergeSource<'_> {
    fn byte_len(&self) -> u64 {
        self.byte_len
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let t = merge_target(self.device, self.base, self.target, self.options)?;
        t.for_each_chunk(|_, chunk| f(chunk))
    }
}

/// Base weights resident on a device, with adapters merged into them and taken out again.
///
/// ```no_run
/// use mlmf::lora::{LoraAdapter, MergeOptions, MergedWeights};
/// use mlmf::{Device, ModelFile};
/// let base = ModelFile::open("model.safetensors")?;
/// let adapter = LoraAdapter::open("adapter/")?;
/// let mut weights = MergedWeights::load(&Device::gpu()?, &base)?;
/// weights.merge(&adapter.bind(&base)?, &MergeOptions::default())?;
/// // ... run the model with weights.get(name) ...
/// weights.unmerge()?; // the base again, bit for bit
/// # Ok::<(), mlmf::Error>(())
/// ```
pub struct MergedWeights<'f> {
    file: &'f ModelFile,
    device: Device,
    tensors: BTreeMap<String, Tensor>,
    changed: BTreeSet<String>,
}

impl<'f> MergedWeights<'f> {
    /// Every tensor of `file`, loaded onto `device`.
    pub fn load(device: &Device, file: &'f ModelFile) -> Result<MergedWeights<'f>> {
        let tensors = device
            .load_all(file)?
            .into_iter()
            .map(|t| (t.name().to_string(), t))
            .collect();
        Ok(MergedWeights {
            file,
            device: device.clone(),
            tensors,
            changed: BTreeSet::new(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.tensors.values()
    }

    /// Names of the tensors that differ from the file (merged or replaced), in order.
    pub fn changed(&self) -> impl Iterator<Item = &str> {
        self.changed.iter().map(String::as_str)
    }

    /// Merge a bound adapter into the resident weights (on top of any merged before) and put in
    /// the tensors it replaces whole. `bound` must have been bound to this file.
    pub fn merge(&mut self, bound: &Bound<'_>, options: &MergeOptions) -> Result<()> {
        for target in bound.targets() {
            let w = self.resident(&target.tensor)?;
            let merged = merge_into(w, target, options)?;
            self.tensors.insert(target.tensor.clone(), merged);
            self.changed.insert(target.tensor.clone());
        }
        for (name, r) in bound.replacements() {
            self.resident(name)?;
            let t = r.tensor.to_device(&self.device)?;
            self.tensors.insert(name.clone(), t);
            self.changed.insert(name.clone());
        }
        Ok(())
    }

    /// Put every changed tensor back as the file has it, re-read from the file.
    pub fn unmerge(&mut self) -> Result<()> {
        for name in std::mem::take(&mut self.changed) {
            let t = self.device.load(self.file, &name)?;
            self.tensors.insert(name, t);
        }
        Ok(())
    }

    fn resident(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::TensorNotFound {
            path: self.file.path().to_path_buf(),
            tensor: name.to_string(),
        })
    }
}
