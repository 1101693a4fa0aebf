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
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// `x W^T + b` (PyTorch's `nn.Linear`).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        matmul::linear(x, &self.weight, Some(&self.bias))
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

    /// The matrix `name` `[rows, cols]` in the file's dtype (see the module doc), streamed onto
    /// the device by the loader every format uses.
    pub(crate) fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor> {
        variable(self.file, name, &[Some(rows), Some(cols)])?;
        self.device.load(self.file, name)
    }

    /// The matrix `name` `[rows, cols]` cut into `parts` equal row blocks, each in the file's
    /// dtype.
    fn row_blocks(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        parts: usize,
    ) -> Result<Vec<Tensor>> {
        let info = variable(self.file, name, &[Some(rows), Some(cols)])?;
        let bytes = self.file.bytes(info);
        let total = info.dtype.byte_len(info.shape.elem_count());
        if total != Some(bytes.len() as u64) || parts == 0 || !rows.is_multiple_of(parts) {
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
        (0..parts)
            .map(|i| {
                let shape = Shape::new(vec![rows / parts, cols]).ok_or_else(|| {
                    bad(
                        self.file,
                        format!("{name}: shape [{rows}, {cols}] overflows"),
                    )
                })?;
                Tensor::from_bytes(
                    part_name(name, i, parts),
                    info.dtype,
                    shape,
                    bytes[i * block..(i + 1) * block].to_vec(),
                )?
                .to_device(self.device)
            })
            .collect()
    }

    /// The linear layer `name` (`weight` `[out, inp]`, `bias` `[out]`) cut into `parts` equal
    /// blocks of outputs, in order: the fused `[Wq; Wk; Wv]` of self-attention in three (or in
    /// three times the heads), `[Wk; Wv]` of cross-attention in two.
    pub(crate) fn linear_blocks(
        &self,
        name: &str,
        out: usize,
        inp: usize,
        parts: usize,
    ) -> Result<Vec<Linear>> {
        let weights = self.row_blocks(&format!("{name}/weight"), out, inp, parts)?;
        let name = format!("{name}/bias");
        let v = values(self.file, variable(self.file, &name, &[Some(out)])?)?;
        let n = out / parts;
        weights
            .into_iter()
            .enumerate()
            .map(|(i, weight)| {
                let bias =
                    Tensor::from_f32(&part_name(&name, i, parts), vec![n], &v[i * n..(i + 1) * n])?;
                Ok(Linear {
                    weight,
                    bias: bias.to_device(self.device)?,
                })
            })
            .collect()
    }

    /// [`Loader::linear_blocks`] into `N` blocks.
    pub(crate) fn linears<const N: usize>(
        &self,
        name: &str,
        out: usize,
        inp: usize,
    ) -> Result<[Linear; N]> {
        let parts = self.linear_blocks(name, out, inp, N)?;
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

/// The name of block `i` of `parts` cut from `name`.
fn part_name(name: &str, i: usize, parts: usize) -> String {
    if parts == 1 {
        name.to_string()
    } else {
        format!("{name}[{i}/{parts}]")
    }
}
