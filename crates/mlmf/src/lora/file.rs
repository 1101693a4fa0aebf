//! Writing a merged model: every tensor of the base, with the adapter's targets merged and its
//! replacements put in, to safetensors or GGUF (by the output's extension), streamed one tensor
//! at a time through the checkpoint writers. Untouched tensors are copied byte for byte.

use std::path::Path;

use super::merge::{MergeOptions, MergeSource};
use super::{adapter_hash, Bound};
use crate::checkpoint::rewrite::{self, Output, Rewrite};
use crate::checkpoint::{Progress, TensorSource};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::{Format, ModelFile};
use crate::provenance::{absolute, Transform};
use crate::Device;

/// What happened to one tensor of the base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Copied as it is.
    Kept,
    /// The low-rank update was added.
    Merged,
    /// Replaced whole by the adapter's tensor.
    Replaced,
}

/// One row of [`merge_file`]'s report.
#[derive(Clone, Debug)]
pub struct MergedTensor {
    pub name: String,
    pub from: DType,
    pub to: DType,
    pub shape: Vec<usize>,
    pub action: Action,
}

/// Write `base` with `bound` merged into it to `out` (`.safetensors` or `.gguf`, else
/// [`Error::OutputName`]), atomically. `progress` is called before each tensor is written. The
/// output carries a [`crate::provenance`] record: parent `base`, transform `lora_merge` with the
/// adapter's path and [`adapter_hash`] and `options.multiplier` as `scale`.
pub fn merge_file(
    device: &Device,
    base: &ModelFile,
    bound: &Bound<'_>,
    options: &MergeOptions,
    out: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<MergedTensor>> {
    let format = rewrite::format_of(out);
    if format == Format::ShardedSafetensors {
        return Err(Error::OutputName {
            path: out.to_path_buf(),
            expected: ".safetensors or .gguf",
        });
    }
    let adapter = bound.adapter();
    let transforms = vec![Transform::LoraMerge {
        adapter: absolute(adapter.path()).display().to_string(),
        adapter_hash: adapter_hash(adapter)?,
        // Through its shortest decimal text, so 0.1 is recorded as 0.1, not 0.10000000149.
        scale: options
            .multiplier
            .to_string()
            .parse()
            .unwrap_or(f64::from(options.multiplier)),
    }];
    let mut report = Vec::with_capacity(base.tensors().len());
    let mut outputs = Vec::with_capacity(base.tensors().len());
    for info in base.tensors() {
        let name = info.name.clone();
        let shape = info.shape.dims().to_vec();
        let (output, action) = if let Some(target) = bound.target(&info.name) {
            let dtype = options.merged_dtype(info.dtype);
            let source = MergeSource {
                device,
                base,
                target,
                options,
                byte_len: rewrite::out_len(base, info, dtype)?,
            };
            let output = Output {
                name,
                dtype,
                shape: shape.clone(),
                source: Box::new(source),
            };
            (output, Action::Merged)
        } else if let Some(r) = bound.replacement(&info.name) {
            let output = Output {
                name,
                dtype: r.tensor.dtype(),
                shape: shape.clone(),
                source: Box::new(TensorSource::Tensor(&r.tensor)),
            };
            (output, Action::Replaced)
        } else {
            (Output::stored(name, base, info)?, Action::Kept)
        };
        report.push(MergedTensor {
            name: info.name.clone(),
            from: info.dtype,
            to: output.dtype,
            shape,
            action,
        });
        outputs.push(output);
    }
    Rewrite {
        provenance: true,
        input: base,
        format,
        transforms,
        gguf_keys: Vec::new(),
        max_shard_bytes: None,
    }
    .write(&outputs, out, progress)?;
    Ok(report)
}
