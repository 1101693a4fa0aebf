//! The pieces the encoder and decoder share: linear layers and layer norms loaded from checked
//! variables, and the fused projections split into their row blocks.
//!
//! Matrices stay in the file's dtype (f16 for the CTranslate2 files) on the device: the matmul
//! kernels widen 16-bit operands to f32 exactly as they read them, with or without shader-f16,
//! so this halves their memory and changes no result. Vectors (biases, norms) and the conv
//! kernels, which the elementwise, norm and conv kernels take in f32 only, are widened at load
//! (exact: every f16 is an f32).

use crate::error::Result;
use crate::formats::ModelFile;
use crate::ops::{matmul, norm};
use crate::{Device, Shape, Tensor};

use super::{bad, values, variable};

/// CTranslate2's LayerNorm epsilon when the norm has a beta and config.json names none.
const LAYER_NORM_EPS: f32 = 1e-5;

pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    /// `x W^T + b` (PyTorch's `nn.Linear`).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        matmul::linear(x, &self.weight, self.bias.as_ref())
    }
}

pub(crate) struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
}

impl LayerNorm {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        norm::layer_norm(x, &self.gamma, &self.beta, LAYER_NORM_EPS)
    }
}

/// Loads checked variables onto one device.
pub(crate) struct Loader<'f> {
    pub(crate) file: &'f ModelFile,
    pub(crate) device: &'f Device,
}

impl Loader<'_> {
    /// The variable `name` of shape `dims`, widened to f32.
    pub(crate) fn f32(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let want: Vec<Option<usize>> = dims.iter().map(|&d| Some(d)).collect();
        let info = variable(self.file, name, &want)?;
        Tensor::from_f32(name, dims.to_vec(), &values(self.file, info)?)?.to_device(self.device)
    }

    /// The matrix `name` `[rows, cols]` cut into `N` equal row blocks, each in the file's dtype
    /// (see the module doc).
    pub(crate) fn row_blocks<const N: usize>(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<[Tensor; N]> {
        let parts = N;
        let info = variable(self.file, name, &[Some(rows), Some(cols)])?;
        let bytes = self.file.bytes(info);
        let total = info.dtype.byte_len(info.shape.elem_count());
        if total != Some(bytes.len() as u64) || !rows.is_multiple_of(parts) {
            return Err(bad(
                self.file,
                format!(
                    "{name}: {} bytes for {:?} of {}, in {parts} parts",
                    bytes.len(),
                    info.shape.dims(),
                    info.dtype
                ),
            ));
        }
        let block = bytes.len() / parts;
        let blocks = (0..parts)
            .map(|i| {
                let shape = Shape::new(vec![rows / parts, cols]).ok_or_else(|| {
                    bad(
                        self.file,
                        format!("{name}: shape [{rows}, {cols}] overflows"),
                    )
                })?;
                let part_name = if parts == 1 {
                    name.to_string()
                } else {
                    format!("{name}[{i}/{parts}]")
                };
                Tensor::from_bytes(
                    part_name,
                    info.dtype,
                    shape,
                    bytes[i * block..(i + 1) * block].to_vec(),
                )?
                .to_device(self.device)
            })
            .collect::<Result<Vec<_>>>()?;
        <[Tensor; N]>::try_from(blocks).map_err(|b| {
            bad(
                self.file,
                format!("{name}: {} blocks, expected {N}", b.len()),
            )
        })
    }

    /// The vector `name` `[len]` cut into `parts` equal pieces, widened to f32.
    fn pieces(&self, name: &str, len: usize, parts: usize) -> Result<Vec<Tensor>> {
        let v = values(self.file, variable(self.file, name, &[Some(len)])?)?;
        let n = len / parts;
        (0..parts)
            .map(|i| {
                let part_name = if parts == 1 {
                    name.to_string()
                } else {
                    format!("{name}[{i}/{parts}]")
                };
                Tensor::from_f32(&part_name, vec![n], &v[i * n..(i + 1) * n])?
                    .to_device(self.device)
            })
            .collect()
    }

    /// The linear layer `name` (`weight` `[out, inp]`, `bias` `[out]`) cut into `N` along its
    /// outputs: the fused `[Wq; Wk; Wv]` of self-attention gives three, `[Wk; Wv]` of
    /// cross-attention two.
    pub(crate) fn linears<const N: usize>(
        &self,
        name: &str,
        out: usize,
        inp: usize,
    ) -> Result<[Linear; N]> {
        let weights = self.row_blocks::<N>(&format!("{name}/weight"), out, inp)?;
        let biases = self.pieces(&format!("{name}/bias"), out, N)?;
        let parts: Vec<Linear> = weights
            .into_iter()
            .zip(biases)
            .map(|(weight, bias)| Linear {
                weight,
                bias: Some(bias),
            })
            .collect();
        <[Linear; N]>::try_from(parts).map_err(|p| {
            bad(
                self.file,
                format!("{name}: {} parts, expected {N}", p.len()),
            )
        })
    }

    pub(crate) fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        let [l] = self.linears(name, out, inp)?;
        Ok(l)
    }

    pub(crate) fn layer_norm(&self, name: &str, d: usize) -> Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: self.f32(&format!("{name}/gamma"), &[d])?,
            beta: self.f32(&format!("{name}/beta"), &[d])?,
        })
    }
}
