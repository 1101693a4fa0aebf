//! Embedding lookup (`torch.nn.functional.embedding`, ggml's `get_rows`): row `ids[i]` of a
//! table `[vocab, dim]` for each id, as a new f32 tensor `[n, dim]` named like the table, on the
//! table's device. The table may be F32, F16, BF16 or any GGML block type [`super::dequant`]
//! decodes ([`supports`]); its rows are decoded exactly as the dequant kernels decode them, so
//! the result is bit-identical to dequantizing the table and picking rows, on the GPU and in the
//! CPU twin alike (no arithmetic but the decoders').
//!
//! The ids come from the caller's memory (a tokenizer's output) and are checked on the host
//! before anything is dispatched: an id past the table is [`Error::OpIndex`].
//!
//! GPU: `shaders/embedding.wgsl`, one invocation per output element, reading the table's blocks
//! in place; one dispatch per page of the table, each writing the elements whose block lies in
//! that page. The output must fit in one storage binding. CPU twin: `cpu`.

use super::launch::{self, Place};
use super::quant_decode::{self, Decoder};
use crate::device::kernels::{Kernel, PipelineKey};
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::{Error, Result};

const OP: &str = "embedding";
const WORKGROUP: u32 = 64;

/// Uniform parameters of `embedding.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    dim: u32,
    row_blocks: u32,
    block_bytes: u32,
    block_elems: u32,
    first_block: u32,
    page_blocks: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Embedding.params_bytes());

/// Whether [`embedding`] takes tables of `dtype`: every type `quant_decode` decodes, as
/// [`qmatmul`](super::qmatmul) does.
pub fn supports(dtype: DType) -> bool {
    quant_decode::decoder(dtype).is_some()
}

/// Rows `ids` of `table` (`[vocab, dim]`), as f32 `[ids.len(), dim]`. Errors: table not a
/// matrix ([`Error::OpRank`]), of a type without a decoder ([`Error::OpDType`]), an id of
/// `vocab` or more ([`Error::OpIndex`]), bytes that disagree with the shape
/// ([`Error::TensorBytes`], [`Error::PartialBlock`]), an output larger than one storage binding
/// or a table of 2^32 blocks or more ([`Error::DeviceLimit`]).
pub fn embedding(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let [vocab, dim] = launch::dims(OP, table, "a matrix [vocab, dim]")?;
    let Some(decoder) = quant_decode::decoder(table.dtype()) else {
        return Err(Error::OpDType {
            op: OP,
            tensor: table.name().to_string(),
            dtype: table.dtype(),
            expected: "F32, F16, BF16 or a GGML block type with a decoder",
        });
    };
    table.check_layout()?;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::OpIndex {
            op: OP,
            what: "token id",
            index: u64::from(bad),
            len: vocab as u64,
        });
    }
    let out_shape = launch::f32_shape(table, vec![ids.len(), dim])?;
    let storage = match launch::place(OP, &[table])? {
        Place::Cpu(bytes) => Storage::Cpu(launch::f32_bytes(&cpu::embedding(
            table.dtype(),
            bytes[0],
            dim,
            ids,
        ))),
        Place::Gpu(gs) => Storage::Gpu(gpu_embedding(table, gs[0], decoder, dim, ids, &out_shape)?),
    };
    Ok(Tensor::new(
        table.name().to_string(),
        DType::F32,
        out_shape,
        storage,
    ))
}

/// [`embedding`] with i64 ids (PyTorch's and transformers' `input_ids` type); a negative id is
/// [`Error::OpIndex`] as an id past the table is.
pub fn embedding_i64(table: &Tensor, ids: &[i64]) -> Result<Tensor> {
    let vocab = table.shape().dims().first().copied().unwrap_or(0) as u64;
    let ids = ids
        .iter()
        .map(|&id| {
            u32::try_from(id).map_err(|_| Error::OpIndex {
                op: OP,
                what: "token id",
                // A negative id shows as its two's-complement u64: past any table.
                index: id as u64,
                len: vocab,
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    embedding(table, &ids)
}

/// The launcher: the ids in one buffer, one dispatch per page of the table. Recorded, not
/// waited for.
fn gpu_embedding(
    table: &Tensor,
    ts: &GpuStorage,
    decoder: &Decoder,
    dim: usize,
    ids: &[u32],
    out_shape: &mlmf_core::Shape,
) -> Result<GpuStorage> {
    let gpu = ts.gpu();
    let dtype = table.dtype();
    let out = launch::Output::new(gpu, table, out_shape)?;
    let mut encoder = gpu.record(OP);
    let count = out_shape.elem_count();
    if count > 0 {
        let u32_of = |v: u64, what: &str| launch::to_u32(table, v, what);
        let (block_bytes, block_elems) = (dtype.block_bytes(), dtype.block_elems());
        // Block numbers and in-page byte offsets are u32 in the kernel.
        u32_of(table.byte_len() / block_bytes, "the table's block count")?;
        launch::check_page_bytes(table, ts)?;
        let page_blocks = ts.page_bytes() / block_bytes;
        let key = decoder
            .specialise(PipelineKey::new(Kernel::Embedding, "embedding"))
            .with("WG", f64::from(WORKGROUP));
        let pipeline = gpu.pipeline(&key)?;
        let ids_buf = launch::words_buffer(gpu, "embedding ids", ids)?;
        for (p, page) in ts.pages().iter().enumerate() {
            let params = Params {
                count: u32_of(count, "the output element count")?,
                dim: u32_of(dim as u64, "the row length")?,
                row_blocks: u32_of(dim as u64 / block_elems, "the blocks per row")?,
                block_bytes: u32_of(block_bytes, "the block size")?,
                block_elems: u32_of(block_elems, "the block length")?,
                first_block: u32_of(p as u64 * page_blocks, "a page's first block")?,
                page_blocks: u32_of(page_blocks, "the blocks per page")?,
                _pad: 0,
            };
            let group = launch::bind(
                &mut encoder,
                &pipeline,
                OP,
                bytemuck::bytes_of(&params),
                &[page, &ids_buf, out.buffer()],
            )?;
            gpu.dispatch(&mut encoder, &pipeline, &group, count, WORKGROUP);
        }
    }
    let storage = out.finish(&mut encoder);
    encoder.finish();
    Ok(storage)
}

/// The CPU twin: each requested row decoded with the type's twin in `quant_decode`.
pub(crate) mod cpu {
    use crate::ops::quant_decode::decode_row;
    use mlmf_core::DType;

    /// Rows `ids` of the table `bytes` (rows of `dim` elements of `dtype`). Empty when `dtype`
    /// has no decoder or a row lies past the bytes.
    pub(crate) fn embedding(dtype: DType, bytes: &[u8], dim: usize, ids: &[u32]) -> Vec<f32> {
        let Some(row_bytes) = dtype.byte_len(dim as u64).map(|b| b as usize) else {
            return Vec::new();
        };
        let mut out = vec![0.0f32; ids.len() * dim];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(dim.max(1))) {
            let start = id as usize * row_bytes;
            let Some(src) = bytes.get(start..start + row_bytes) else {
                return Vec::new();
            };
            if !decode_row(dtype, src, row) {
                return Vec::new();
            }
        }
        out
    }
}
