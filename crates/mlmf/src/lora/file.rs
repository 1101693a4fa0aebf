//! Writing a merged model: every tensor of the base, with the adapter's targets merged and its
//! replacements put in, to safetensors or GGUF (by the output's extension), streamed one tensor
//! at a time through the checkpoint writers. Untouched tensors are copied byte for byte.

use std::collections::BTreeMap;
use std::path::Path;

use super::merge::{MergeOptions, MergeSource};
use super::Bound;
use crate::checkpoint::{ChunkSource, GgufWriter, SafetensorsWriter, TensorSource};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::{ModelFile, TensorInfo, Value};
use crate::provenance::{absolute, adapter_hash, Parent, Provenance, Transform};
use crate::Device;
use crate::Source;

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

/// Stored bytes of an untouched tensor, gathered in row-major order where the file stores a
/// strided view (PyTorch).
struct Stored<'a> {
    file: &'a ModelFile,
    info: &'a TensorInfo,
}

impl ChunkSource for Stored<'_> {
    fn byte_len(&self) -> u64 {
        self.info.byte_len()
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let src = Source::of(self.file, self.info);
        let len = self.byte_len() as usize;
        let mut scratch = Vec::new();
        f(src.chunk(0, len, &mut scratch))
    }
}

/// Where each tensor's bytes come from.
enum Plan<'a> {
    Stored(Stored<'a>),
    Merged(MergeSource<'a>),
    Replaced(&'a crate::Tensor),
}

/// Write `base` with `bound` merged into it to `out` (`.safetensors` or `.gguf`), atomically.
/// `progress` is called before each tensor is written, with its index and name. The output
/// carries a [`crate::provenance`] record: parent `base`, transform `lora_merge` with the
/// adapter's path and [`crate::provenance::adapter_hash`] and `options.multiplier` as `scale`.
pub fn merge_file(
    device: &Device,
    base: &ModelFile,
    bound: &Bound<'_>,
    options: &MergeOptions,
    out: &Path,
    progress: &mut dyn FnMut(usize, &str),
) -> Result<Vec<MergedTensor>> {
    let gguf = match out.extension().and_then(|e| e.to_str()) {
        Some("gguf") => true,
        Some("safetensors") => false,
        _ => {
            return Err(Error::Usage(format!(
                "{}: the output must end in .safetensors or .gguf",
                out.display()
            )))
        }
    };
    let adapter = bound.adapter();
    let provenance = Provenance {
        parents: vec![Parent::of(base)?],
        transforms: vec![Transform::LoraMerge {
            adapter: absolute(adapter.path()).display().to_string(),
            adapter_hash: adapter_hash(adapter)?,
            // Through its shortest decimal text, so 0.1 is recorded as 0.1, not 0.10000000149.
            scale: options
                .multiplier
                .to_string()
                .parse()
                .unwrap_or(f64::from(options.multiplier)),
        }],
    };
    let mut report = Vec::with_capacity(base.tensors().len());
    let mut plans = Vec::with_capacity(base.tensors().len());
    for info in base.tensors() {
        let dims = info.shape.dims().to_vec();
        let (plan, to, action) = if let Some(target) = bound.target(&info.name) {
            let to = options.merged_dtype(info.dtype);
            let byte_len =
                to.byte_len(info.shape.elem_count())
                    .ok_or_else(|| Error::ShapeOverflow {
                        path: base.path().to_path_buf(),
                        tensor: info.name.clone(),
                        shape: dims.iter().map(|&d| d as u64).collect(),
                    })?;
            let source = MergeSource {
                device,
                base,
                target,
                options,
                byte_len,
            };
            (Plan::Merged(source), to, Action::Merged)
        } else if let Some(r) = bound.replacement(&info.name) {
            (
                Plan::Replaced(&r.tensor),
                r.tensor.dtype(),
                Action::Replaced,
            )
        } else {
            let stored = Stored { file: base, info };
            (Plan::Stored(stored), info.dtype, Action::Kept)
        };
        plans.push(plan);
        report.push(MergedTensor {
            name: info.name.clone(),
            from: info.dtype,
            to,
            shape: dims,
            action,
        });
    }
    let progress = std::cell::RefCell::new(progress);
    let counted: Vec<Counted> = plans
        .iter()
        .enumerate()
        .map(|(index, plan)| Counted {
            plan,
            index,
            name: &report[index].name,
            progress: &progress,
        })
        .collect();
    if gguf {
        let mut writer = GgufWriter::new(crate::quantize::carried_metadata(base));
        writer.provenance(provenance);
        for (row, c) in report.iter().zip(&counted) {
            writer.add_tensor(
                row.name.clone(),
                row.to,
                &row.shape,
                TensorSource::Chunks(c),
            );
        }
        writer.write(out)?;
    } else {
        let mut writer = SafetensorsWriter::new(string_metadata(base));
        writer.provenance(provenance);
        for (row, c) in report.iter().zip(&counted) {
            writer.add_tensor(
                row.name.clone(),
                row.to,
                &row.shape,
                TensorSource::Chunks(c),
            );
        }
        writer.write(out)?;
    }
    Ok(report)
}

/// A safetensors `__metadata__` from the base's metadata: strings as they are; other GGUF values
/// as JSON text.
fn string_metadata(base: &ModelFile) -> BTreeMap<String, String> {
    base.metadata()
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_json().to_string(),
            };
            (k.to_string(), text)
        })
        .collect()
}

type ProgressCell<'p> = std::cell::RefCell<&'p mut dyn FnMut(usize, &str)>;

/// A plan that reports progress when the writer reaches it.
struct Counted<'a, 'p> {
    plan: &'a Plan<'a>,
    index: usize,
    name: &'a str,
    progress: &'a ProgressCell<'p>,
}

impl ChunkSource for Counted<'_, '_> {
    fn byte_len(&self) -> u64 {
        match self.plan {
            Plan::Stored(s) => s.byte_len(),
            Plan::Merged(m) => m.byte_len(),
            Plan::Replaced(t) => t.byte_len(),
        }
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        (self.progress.borrow_mut())(self.index, self.name);
        match self.plan {
            Plan::Stored(s) => s.for_each_chunk(f),
            Plan::Merged(m) => m.for_each_chunk(f),
            Plan::Replaced(t) => t.for_each_chunk(|_, chunk| f(chunk)),
        }
    }
}
