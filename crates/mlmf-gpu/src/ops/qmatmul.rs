//! Fused matrix products with a weight matrix in any decodable type: `Y = W·X`, ggml's `mul_mat`
//! and PyTorch's `Linear` convention. W is `[rows, cols]` (numpy order; GGUF `ne = [cols,
//! rows]`) in F32, F16, BF16 or any GGML block type [`dequant`](super::dequant) decodes; X is
//! f32 `[batch, cols]` (or a vector `[cols]`); Y is f32 `[batch, rows]` (or `[rows]`), with
//! `Y[b][r] = sum_k W[r][k] * X[b][k]`.
//!
//! GPU: `shaders/qmatmul.wgsl` reads W's blocks as stored (no dequantized copy of W), through the
//! same element decoders as dequant (`shaders/quant_decode.wgsl`). One workgroup per row of W;
//! up to [`MAX_BATCH`] batch columns per dispatch, larger batches loop. Rows that lie whole in
//! one page of W (always, when W was loaded with the row-aligned page unit, see
//! [`DType::row_page_unit`]) are read in place, a run of them per dispatch; a row that straddles
//! two pages (rows longer than 1/16 of a page) is copied alone into a small buffer first.
//!
//! CPU twin: `cpu`, each row decoded with the type's twin in `quant_decode`, then accumulated in
//! f32 in a plain loop. GPU and twin sum in different orders, so they agree to a rounding bound,
//! not bit for bit: both satisfy `|y - y_exact| <= 2 * cols * f32::EPSILON * sum_k |W[r][k]
//! X[b][k]|` against the exact product of the decoded weights (the tests check it in f64).

use super::launch::{self, check_binding, check_page_bytes, scratch, to_u32, Place, Reduce};
use super::quant_decode::{self, Decoder};
use crate::device::kernels::{Kernel, PipelineKey};
use crate::device::Fill;
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::Shape;
use mlmf_core::{Error, Result};

const OP: &str = "qmatmul";
const WORKGROUP: u32 = 64;

/// Most batch columns one dispatch computes (the kernel's `MAX_BATCH` override); larger batches
/// run as several dispatches.
pub const MAX_BATCH: usize = 8;

/// Uniform parameters of `qmatmul.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    row0: u32,
    cols: u32,
    out_rows: u32,
    w_offset: u32,
    row_bytes: u32,
    block_bytes: u32,
    block_elems: u32,
    batch: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::QMatmul.params_bytes());

/// Whether [`matmul`] takes weights of `dtype`.
pub fn supports(dtype: DType) -> bool {
    quant_decode::decoder(dtype).is_some()
}

/// `Y = W·X` on the tensors' device: W `[rows, cols]` of any type [`supports`] takes, X f32
/// `[batch, cols]` or `[cols]`; Y f32 `[batch, rows]` or `[rows]`. Errors: W not a matrix or X
/// not a vector or matrix ([`Error::OpRank`]), W of a type without a decoder or X not f32
/// ([`Error::OpDType`]), row lengths that differ ([`Error::ShapeMismatch`]), W and X on different
/// devices ([`Error::DeviceMismatch`]), bytes that disagree with the shape
/// ([`Error::TensorBytes`], [`Error::PartialBlock`]).
pub fn matmul(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    matmul_with(w, x, None)
}

/// [`matmul`] with the GPU's way of summing a row chosen by the caller (tests run both); `None`
/// chooses by the adapter.
pub(crate) fn matmul_with(w: &Tensor, x: &Tensor, reduce: Option<Reduce>) -> Result<Tensor> {
    let [rows, cols] = launch::dims(OP, w, "a matrix [rows, cols]")?;
    let Some(decoder) = quant_decode::decoder(w.dtype()) else {
        return Err(Error::OpDType {
            op: OP,
            tensor: w.name().to_string(),
            dtype: w.dtype(),
            expected: "F32, F16, BF16 or a GGML block type with a decoder",
        });
    };
    launch::require_f32(OP, x)?;
    let (batch, x_cols, out_dims) = match *x.shape().dims() {
        [c] => (1, c, vec![rows]),
        [b, c] => (b, c, vec![b, rows]),
        _ => {
            return Err(launch::rank_error(
                OP,
                x,
                "a vector [cols] or a matrix [batch, cols]",
            ))
        }
    };
    if x_cols != cols {
        return Err(launch::shape_error(OP, w, x));
    }
    w.check_layout()?;
    // batch * rows elements of 4 bytes: refuse sizes that overflow rather than wrap.
    let out_shape = launch::f32_shape(w, out_dims)?;
    let storage = match launch::place(OP, &[w, x])? {
        Place::Cpu(bytes) => {
            let y = cpu::matmul(
                w.dtype(),
                bytes[0],
                rows,
                cols,
                &launch::f32s(bytes[1]),
                batch,
            );
            Storage::Cpu(launch::f32_bytes(&y))
        }
        Place::Gpu(gs) => {
            let reduce = reduce.unwrap_or_else(|| Reduce::for_gpu(gs[0].gpu()));
            let dims = [rows, cols, batch].map(|n| n as u64);
            Storage::Gpu(gpu_matmul(
                w, gs[0], gs[1], decoder, dims, &out_shape, reduce,
            )?)
        }
    };
    Ok(Tensor::new(
        w.name().to_string(),
        DType::F32,
        out_shape,
        storage,
    ))
}

/// Where a dispatch finds its rows of W.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rows {
    /// In page `page`, the first row at byte `offset` of it.
    InPage { page: usize, offset: u64 },
    /// One row straddling pages: bytes `start..start + len` of W (4-aligned, enclosing the row)
    /// are copied to a buffer of their own, the row at byte `offset` of it.
    Straddles { start: u64, len: u64, offset: u64 },
}

/// Runs of whole rows per page of `page_bytes`, and each row that straddles pages on its own,
/// as `(first row, rows, where)`, covering rows `0..rows` in order. `row_bytes > 0`.
fn row_groups(rows: u64, row_bytes: u64, page_bytes: u64) -> Vec<(u64, u64, Rows)> {
    let mut out = Vec::new();
    let mut r = 0;
    while r < rows {
        let start = r * row_bytes;
        let page = start / page_bytes;
        let in_page = start - page * page_bytes;
        let whole = ((page_bytes - in_page) / row_bytes).min(rows - r);
        if whole > 0 {
            let place = Rows::InPage {
                page: page as usize,
                offset: in_page,
            };
            out.push((r, whole, place));
            r += whole;
        } else {
            let aligned = start & !3;
            let end = (start + row_bytes).next_multiple_of(4);
            let place = Rows::Straddles {
                start: aligned,
                len: end - aligned,
                offset: start - aligned,
            };
            out.push((r, 1, place));
            r += 1;
        }
    }
    out
}

/// Copy bytes `pos..pos + len` (multiples of 4) of `from` to the start of `to`.
fn gather(
    encoder: &mut wgpu::CommandEncoder,
    from: &GpuStorage,
    pos: u64,
    len: u64,
    to: &wgpu::Buffer,
) {
    for (page, in_page, at, count) in from.spans(pos, len) {
        encoder.copy_buffer_to_buffer(page, in_page, to, at - pos, count);
    }
}

/// The launcher of `qmatmul.wgsl`. Per chunk of up to [`MAX_BATCH`] batch columns: X's columns
/// are copied to one buffer, one dispatch per run of rows (see [`row_groups`]) writes a buffer of
/// Y's columns, which is copied into Y's pages. Recorded, not waited for (readback waits).
fn gpu_matmul(
    w: &Tensor,
    ws: &GpuStorage,
    xs: &GpuStorage,
    decoder: &Decoder,
    [rows, cols, batch]: [u64; 3],
    out_shape: &Shape,
    reduce: Reduce,
) -> Result<GpuStorage> {
    check_page_bytes(w, ws)?;
    let gpu = ws.gpu();
    let dtype = w.dtype();
    let out_bytes = out_shape.elem_count() * 4;
    let unit = GpuStorage::page_unit(gpu, DType::F32, out_shape);
    let out = GpuStorage::allocate(gpu, w.name(), out_bytes, unit, Fill::KERNEL)?;
    // With no rows or batch Y is empty; with no columns it is zeros, which pool buffers are not.
    if rows == 0 || batch == 0 {
        return Ok(out);
    }
    if cols == 0 {
        out.clear();
        return Ok(out);
    }
    let row_bytes = dtype.byte_len(cols).ok_or_else(|| Error::DeviceLimit {
        tensor: w.name().to_string(),
        bytes: w.byte_len(),
        reason: "the row size overflows".into(),
    })?;
    let chunk = batch.min(MAX_BATCH as u64);
    let groups = row_groups(rows, row_bytes, ws.page_bytes());
    check_binding(gpu, w, "X's batch columns", chunk * cols * 4)?;
    check_binding(gpu, w, "Y's batch columns", chunk * rows * 4)?;
    check_binding(gpu, w, "a row of W", row_bytes + 8)?;
    let (rows32, cols32, row_bytes32) = (
        to_u32(w, rows, "the row count")?,
        to_u32(w, cols, "the row length")?,
        to_u32(w, row_bytes, "the row size")?,
    );

    let key = decoder
        .specialise(PipelineKey::new(Kernel::QMatmul, "qmatmul"))
        .with("WG", f64::from(WORKGROUP))
        .with("MAX_BATCH", MAX_BATCH as f64)
        .with("ROW_PER_INVOCATION", reduce.flag());
    let pipeline = gpu.pipeline(&key)?;
    let mut encoder = gpu.record(OP);
    // Rows straddling pages, copied once for all batch chunks.
    let mut copies = Vec::new();
    for &(_, _, place) in &groups {
        if let Rows::Straddles { start, len, .. } = place {
            let buf = scratch(gpu, "qmatmul straddling row", len)?;
            gather(&mut encoder, ws, start, len, &buf);
            copies.push(buf);
        }
    }
    let mut b0 = 0;
    while b0 < batch {
        let nb = chunk.min(batch - b0);
        // Padded to 16 bytes: the kernel reads X as vec4s.
        let x_buf = scratch(gpu, "qmatmul x", (nb * cols * 4).next_multiple_of(16))?;
        gather(&mut encoder, xs, b0 * cols * 4, nb * cols * 4, &x_buf);
        let y_buf = scratch(gpu, "qmatmul y", nb * rows * 4)?;
        let mut copy = copies.iter();
        for &(r0, n, place) in &groups {
            let (w_buf, offset) = match place {
                Rows::InPage { page, offset } => (ws.page(page)?, offset),
                Rows::Straddles { offset, .. } => (
                    copy.next().map(|b| &***b).ok_or_else(|| Error::Gpu {
                        during: "binding a row of W".into(),
                        reason: "a straddling row was not copied".into(),
                    })?,
                    offset,
                ),
            };
            let params = Params {
                rows: to_u32(w, n, "the row count")?,
                row0: to_u32(w, r0, "the first row")?,
                cols: cols32,
                out_rows: rows32,
                w_offset: to_u32(w, offset, "the row offset")?,
                row_bytes: row_bytes32,
                block_bytes: to_u32(w, dtype.block_bytes(), "the block size")?,
                block_elems: to_u32(w, dtype.block_elems(), "the block length")?,
                batch: to_u32(w, nb, "the batch")?,
                _pad: [0; 3],
            };
            let bind = launch::bind(
                &mut encoder,
                &pipeline,
                OP,
                bytemuck::bytes_of(&params),
                &[w_buf, &x_buf, &y_buf],
            )?;
            let invocations = reduce.invocations(n, WORKGROUP);
            gpu.dispatch(&mut encoder, &pipeline, &bind, invocations, WORKGROUP);
        }
        let pos = b0 * rows * 4;
        for (page, in_page, at, count) in out.spans(pos, nb * rows * 4) {
            encoder.copy_buffer_to_buffer(&y_buf, at - pos, page, in_page, count);
        }
        b0 += nb;
    }
    encoder.finish();
    Ok(out)
}

/// The CPU twin: each row of W decoded to f32 with the dequant and convert twins, then a plain
/// f32 dot product per batch column, summed left to right.
pub(crate) mod cpu {
    use crate::ops::quant_decode::decode_row;
    use mlmf_core::DType;

    /// `Y = W·X`: `w` the bytes of `rows` rows of `cols` elements of `dtype`, `x` `batch` rows of
    /// `cols` f32; Y is `batch` rows of `rows` f32. Empty when `dtype` has no decoder or the
    /// bytes are short.
    pub(crate) fn matmul(
        dtype: DType,
        w: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        batch: usize,
    ) -> Vec<f32> {
        let Some(row_bytes) = dtype.byte_len(cols as u64).map(|b| b as usize) else {
            return Vec::new();
        };
        if w.len() < rows * row_bytes || x.len() < batch * cols {
            return Vec::new();
        }
        let mut y = vec![0.0f32; batch * rows];
        let mut wrow = vec![0.0f32; cols];
        for r in 0..rows {
            if !decode_row(dtype, &w[r * row_bytes..(r + 1) * row_bytes], &mut wrow) {
                return Vec::new();
            }
            for b in 0..batch {
                let xrow = &x[b * cols..(b + 1) * cols];
                let mut acc = 0.0f32;
                for k in 0..cols {
                    acc += wrow[k] * xrow[k];
                }
                y[b * rows + r] = acc;
            }
        }
        y
    }
}

/// Helpers for the tests here and the bound they check.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::ops::dequant::testing::{moderate_blocks, random_blocks};

    /// Deterministic pseudo-random f32 in [-1, 1) (xorshift), so failures reproduce.
    pub(crate) fn random_f32(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// `rows * cols` random weights of `dtype`: random blocks with finite f16 scales for block
    /// types, values in [-1, 1) for F32, F16 and BF16.
    pub(crate) fn random_weights(dtype: DType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let n = rows * cols;
        let values = || random_f32(n, seed);
        match dtype {
            DType::F32 => values().iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => values()
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            DType::BF16 => values()
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            // MXFP4's scales reach 2^127: sums of its random blocks overflow f32.
            DType::MXFP4 => moderate_blocks(dtype, n / dtype.block_elems() as usize, seed),
            _ => random_blocks(dtype, n / dtype.block_elems() as usize, seed),
        }
    }

    /// The exact product of the CPU-decoded weights with `x` (in f64), and the sums of
    /// |W[r][k] X[b][k]|, both `[batch, rows]`.
    pub(crate) fn reference(
        dtype: DType,
        w: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        batch: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let row_bytes = dtype.byte_len(cols as u64).unwrap() as usize;
        let mut y = vec![0.0; batch * rows];
        let mut abs = vec![0.0; batch * rows];
        let mut wrow = vec![0.0f32; cols];
        for r in 0..rows {
            assert!(quant_decode::decode_row(
                dtype,
                &w[r * row_bytes..(r + 1) * row_bytes],
                &mut wrow
            ));
            for b in 0..batch {
                for k in 0..cols {
                    let p = f64::from(wrow[k]) * f64::from(x[b * cols + k]);
                    y[b * rows + r] += p;
                    abs[b * rows + r] += p.abs();
                }
            }
        }
        (y, abs)
    }

    /// Check `got` against the reference within `2 * cols * f32::EPSILON * sum |W X|`; return
    /// the largest error as a fraction of its bound.
    pub(crate) fn check_bound(
        what: &str,
        got: &[f32],
        want: &[f64],
        abs: &[f64],
        cols: usize,
    ) -> f64 {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let mut worst = 0.0f64;
        for (i, ((g, w), a)) in got.iter().zip(want).zip(abs).enumerate() {
            let bound = 2.0 * cols as f64 * f64::from(f32::EPSILON) * a;
            let err = (f64::from(*g) - w).abs();
            assert!(
                err <= bound,
                "{what}: element {i}: got {g:e}, want {w:e}, error {err:e} > bound {bound:e}"
            );
            if bound > 0.0 {
                worst = worst.max(err / bound);
            }
        }
        worst
    }

    pub(crate) fn f32s(t: &Tensor) -> Vec<f32> {
        crate::ops::dequant::testing::f32s(&t.to_bytes().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::device::Device;
    use crate::ops::dequant::testing::{paged_gpu, tensor};

    /// Every type the decoder table has, in its order.
    fn types() -> impl Iterator<Item = DType> {
        quant_decode::DECODERS.iter().map(|d| d.dtype)
    }

    /// Both ways a GPU dispatch can sum a row, whatever the adapter would choose.
    const REDUCE: [Reduce; 2] = [Reduce::Workgroup, Reduce::PerInvocation];

    /// W `[rows, cols]` of random `dtype` times random X `[batch, cols]` on `device` (and with
    /// the CPU twin), both within the bound of the f64 reference. `reduce` picks how a GPU sums
    /// (`None`: as the adapter would). Returns W's page count.
    fn check(
        device: &Device,
        reduce: Option<Reduce>,
        dtype: DType,
        rows: usize,
        cols: usize,
        batch: usize,
        seed: u64,
    ) -> usize {
        let wb = random_weights(dtype, rows, cols, seed);
        let xv = random_f32(batch * cols, seed + 1000);
        let (want, abs) = reference(dtype, &wb, rows, cols, &xv, batch);
        let what = format!("{dtype} [{rows}, {cols}] x [{batch}, {cols}]");
        let twin = cpu::matmul(dtype, &wb, rows, cols, &xv, batch);
        check_bound(&format!("{what} twin"), &twin, &want, &abs, cols);
        let w = tensor(dtype, vec![rows, cols], wb)
            .to_device(device)
            .unwrap();
        let x = Tensor::from_f32("x", vec![batch, cols], &xv)
            .unwrap()
            .to_device(device)
            .unwrap();
        let y = matmul_with(&w, &x, reduce).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        assert_eq!(y.shape().dims(), &[batch, rows]);
        check_bound(
            &format!("{what} on {} ({reduce:?})", device.describe()),
            &f32s(&y),
            &want,
            &abs,
            cols,
        );
        match w.storage() {
            Storage::Gpu(g) => g.pages().len(),
            Storage::Cpu(_) => 1,
        }
    }

    #[test]
    fn every_type_within_the_bound_on_random_shapes() {
        let gpu = Device::gpu().unwrap();
        for (k, dtype) in types().enumerate() {
            let block = dtype.block_elems() as usize;
            // Rows and row lengths that are not multiples of the workgroup size (64); batches
            // of 1, 3 and more than MAX_BATCH. Plain types: 100, 102 and 104 columns, so the
            // row path sums in quads (with and without a tail) and one column at a time.
            for (n, (rows, batch)) in [(1, 1), (67, 3), (13, MAX_BATCH + 3)]
                .into_iter()
                .enumerate()
            {
                let cols = if block == 1 { 100 + 2 * n } else { 3 * block };
                let seed = 1 + 10 * k as u64 + n as u64;
                for reduce in REDUCE {
                    check(&gpu, Some(reduce), dtype, rows, cols, batch, seed);
                }
                check(&Device::Cpu, None, dtype, rows, cols, batch, seed);
            }
        }
    }

    /// A real weight (SmolLM2's `blk.0.attn_q.weight`, Q4_1), summed both ways on the GPU:
    /// tests/qmatmul_files.rs covers real weights through `matmul`, which on lavapipe always
    /// picks one invocation per row.
    #[test]
    fn real_weight_both_ways_of_summing() {
        let models = std::env::var_os("MLMF_MODELS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/mlmf")
            });
        let path = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
        let file = mlmf_core::ModelFile::open(&path)
            .unwrap_or_else(|e| panic!("{e}: run `python3 scripts/fetch_models.py` first"));
        let info = file.tensor("blk.0.attn_q.weight").unwrap();
        let (rows, cols) = (info.shape.dims()[0], info.shape.dims()[1]);
        let wb = file.bytes(info).to_vec();
        let batch = 2;
        let xv = random_f32(batch * cols, 9);
        let (want, abs) = reference(info.dtype, &wb, rows, cols, &xv, batch);
        let gpu = Device::gpu().unwrap();
        let w = tensor(info.dtype, vec![rows, cols], wb)
            .to_device(&gpu)
            .unwrap();
        let x = Tensor::from_f32("x", vec![batch, cols], &xv)
            .unwrap()
            .to_device(&gpu)
            .unwrap();
        for reduce in REDUCE {
            let y = matmul_with(&w, &x, Some(reduce)).unwrap();
            check_bound(
                &format!("attn_q ({reduce:?})"),
                &f32s(&y),
                &want,
                &abs,
                cols,
            );
        }
    }

    #[test]
    fn tensors_spanning_pages() {
        let gpu = paged_gpu(4096);
        for (k, dtype) in types().enumerate() {
            let block = dtype.block_elems() as usize;
            // Short rows: pages split at whole rows.
            let cols = if block == 1 { 36 } else { block };
            for reduce in REDUCE.map(Some) {
                let pages = check(&gpu, reduce, dtype, 400, cols, 3, 500 + k as u64);
                assert!(pages > 1, "{dtype}: {pages} page(s)");
            }
            // Rows longer than 1/16 of a page: pages split at blocks, rows straddle them.
            let cols = if block == 1 { 1500 } else { 7 * block.max(256) };
            for reduce in REDUCE.map(Some) {
                let pages = check(&gpu, reduce, dtype, 23, cols, MAX_BATCH + 1, 600 + k as u64);
                assert!(pages > 1, "{dtype}: {pages} page(s)");
            }
        }
        // Rows longer than a page: 8704 bytes of Q8_0 per row.
        for reduce in REDUCE.map(Some) {
            check(&gpu, reduce, DType::Q8_0, 5, 8192, 2, 700);
        }
    }

    #[test]
    fn vectors_and_empty_shapes() {
        let gpu = Device::gpu().unwrap();
        for device in [Device::Cpu, gpu] {
            let wb = random_weights(DType::Q4_0, 5, 64, 3);
            let xv = random_f32(64, 4);
            let (want, abs) = reference(DType::Q4_0, &wb, 5, 64, &xv, 1);
            let w = tensor(DType::Q4_0, vec![5, 64], wb)
                .to_device(&device)
                .unwrap();
            let x = Tensor::from_f32("x", vec![64], &xv)
                .unwrap()
                .to_device(&device)
                .unwrap();
            let y = matmul(&w, &x).unwrap();
            assert_eq!(y.shape().dims(), &[5]);
            check_bound("vector", &f32s(&y), &want, &abs, 64);
            // No batch columns, and rows of no elements (Y is zeros).
            let x = Tensor::from_f32("x", vec![0, 64], &[])
                .unwrap()
                .to_device(&device)
                .unwrap();
            assert_eq!(matmul(&w, &x).unwrap().shape().dims(), &[0, 5]);
            let w = tensor(DType::F16, vec![4, 0], vec![])
                .to_device(&device)
                .unwrap();
            let x = Tensor::from_f32("x", vec![2, 0], &[])
                .unwrap()
                .to_device(&device)
                .unwrap();
            assert_eq!(f32s(&matmul(&w, &x).unwrap()), vec![0.0; 8]);
        }
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let gpu = Device::gpu().unwrap();
        for device in [Device::Cpu, gpu.clone()] {
            let on = |t: Tensor| t.to_device(&device).unwrap();
            let w = on(tensor(DType::Q8_0, vec![2, 32], vec![0; 68]));
            let x = on(Tensor::from_f32("x", vec![1, 64], &[0.0; 64]).unwrap());
            assert!(matches!(
                matmul(&w, &x),
                Err(Error::ShapeMismatch { op: "qmatmul", .. })
            ));
            let w3 = on(tensor(DType::Q8_0, vec![1, 2, 32], vec![0; 68]));
            let x32 = on(Tensor::from_f32("x", vec![32], &[0.0; 32]).unwrap());
            assert!(matches!(matmul(&w3, &x32), Err(Error::OpRank { .. })));
            let w1 = on(tensor(DType::Q8_0, vec![32], vec![0; 34]));
            assert!(matches!(matmul(&w1, &x32), Err(Error::OpRank { .. })));
            let x3 = on(Tensor::from_f32("x", vec![1, 1, 32], &[0.0; 32]).unwrap());
            assert!(matches!(matmul(&w, &x3), Err(Error::OpRank { .. })));
            let xh = on(tensor(DType::F16, vec![32], vec![0; 64]));
            assert!(matches!(
                matmul(&w, &xh),
                Err(Error::OpDType {
                    dtype: DType::F16,
                    ..
                })
            ));
            let wq = on(tensor(DType::Q8_1, vec![1, 32], vec![0; 36]));
            assert!(matches!(
                matmul(&wq, &x32),
                Err(Error::OpDType {
                    dtype: DType::Q8_1,
                    ..
                })
            ));
            // 33 bytes for a Q8_0 block of 34.
            let short = on(tensor(DType::Q8_0, vec![1, 32], vec![0; 33]));
            assert!(matches!(
                matmul(&short, &x32),
                Err(Error::TensorBytes { .. })
            ));
        }
        // W and X on different devices: CPU and GPU, and two GPU devices.
        let w = tensor(DType::Q8_0, vec![1, 32], vec![0; 34]);
        let x = Tensor::from_f32("x", vec![32], &[0.0; 32]).unwrap();
        let xg = x.to_device(&gpu).unwrap();
        assert!(matches!(matmul(&w, &xg), Err(Error::DeviceMismatch { .. })));
        let other = Device::gpu().unwrap();
        let wg = w.to_device(&other).unwrap();
        assert!(matches!(
            matmul(&wg, &xg),
            Err(Error::DeviceMismatch { .. })
        ));
        assert!(matches!(matmul(&wg, &x), Err(Error::DeviceMismatch { .. })));
    }

    #[test]
    fn row_groups_cover_every_row_once() {
        for (rows, row_bytes, page) in [
            (10, 18, 36),
            (10, 18, 4068),
            (7, 1152, 4068),
            (3, 8704, 4080),
            (1, 4, 4),
        ] {
            let groups = row_groups(rows, row_bytes, page);
            let mut at = 0;
            for (r0, n, place) in groups {
                assert_eq!(r0, at);
                assert!(n > 0);
                match place {
                    Rows::InPage { page: p, offset } => {
                        assert_eq!(p as u64 * page + offset, r0 * row_bytes);
                        assert!(offset + n * row_bytes <= page);
                    }
                    Rows::Straddles { start, len, offset } => {
                        assert_eq!(n, 1);
                        assert_eq!(start % 4, 0);
                        assert_eq!(len % 4, 0);
                        assert_eq!(start + offset, r0 * row_bytes);
                        assert!(offset + row_bytes <= len);
                    }
                }
                at += n;
            }
            assert_eq!(at, rows);
        }
    }
}
