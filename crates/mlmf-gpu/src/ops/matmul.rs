//! Dense matrix products of F32, F16 or BF16 tensors, batched, with transposed operands and a
//! fused bias: [`matmul`] (`C = op(A) · op(B) + bias`, numpy's `@` with optional transposes) and
//! [`linear`] (PyTorch's `nn.Linear`: `x · Wᵀ + bias` with W `[out, in]`). Quantized weights go
//! through [`qmatmul`](super::qmatmul) instead.
//!
//! Shapes: A is `[..., m, k]` (`[..., k, m]` with `trans_a`), B `[..., k, n]` (`[..., n, k]` with
//! `trans_b`); the leading (batch) dimensions of A and B are equal, or one operand is a matrix
//! and is used for every batch. C is f32 `[..., m, n]`; the bias, when given, is `[n]` and is
//! added to every row. Each element is `C[b][i][j] = (sum_k A[b][i][k] * B[b][k][j]) + bias[j]`,
//! operands widened to f32 exactly, the sum in f32 in index order from 0, one product added at a
//! time, the bias added last.
//!
//! GPU: `shaders/matmul.wgsl`, workgroup tiles of [`TILE_M`] x [`TILE_N`] through workgroup
//! memory (8, 16 or 32 rows instead of 64 when m is that small), [`TM`] x [`TN`] outputs per
//! invocation; 16-bit operands are read as u32 words and widened in the shader, so they need no
//! shader-f16. Operands of several pages are gathered into
//! one buffer first; each operand and C must fit in one storage binding ([`Error::DeviceLimit`]
//! otherwise). When B is a matrix and A is not transposed, A's batch is folded into its rows so
//! the whole product is one grid of tiles.
//!
//! CPU twin: `cpu`, plain loops in the same order. Both round each product and each addition to
//! f32, so with `u = 2^-24` each element is within `γ(k+1) * (sum_k |A B| + |bias|)` of the exact
//! result, `γ(n) = n u / (1 - n u)` (Higham, *Accuracy and Stability*, 3.1); the tests check
//! `(k + 1) * f32::EPSILON * (sum_k |A B| + |bias|)`, which is at least that for `k < 2^22`. A
//! compiler that contracts a product and an addition into a fused multiply-add only rounds less;
//! without contraction (lavapipe) GPU and twin agree bit for bit.

use super::launch::{
    bind, f32_bytes, f32_shape, place, rank_error, scratch, shape_error, to_u32, whole, Output,
    Place,
};
use crate::device::kernels::{Kernel, PipelineKey};
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};
use mlmf_core::DType;
use mlmf_core::Shape;
use mlmf_core::{Error, Result};

const OP: &str = "matmul";

/// Invocations per workgroup along C's columns and rows (the shader's `WG_X`, `WG_Y`), and the
/// step along k per workgroup-memory tile (`TK`): chosen by measurement on lavapipe (2 shared
/// cores, best of repeated 256..1024 products): 16 x 16 invocations of 4 x 4 scalar outputs ran
/// at 0.4 GFLOP/s, vec4 tiles 0.7, 8 x 8 outputs per invocation 1.3, then TK 32 (half the
/// barriers) about 3 to 4; 16 x 8 invocations measured the same within the noise.
const WG_X: u32 = 8;
const WG_Y: u32 = 8;
const TK: u32 = 32;
/// Outputs per invocation along rows and columns (consts in the shader; `tests/shaders.rs`
/// checks they agree).
pub const TM: u32 = 8;
pub const TN: u32 = 8;
/// Rows and columns of C per workgroup.
pub const TILE_M: u32 = WG_Y * TM;
pub const TILE_N: u32 = WG_X * TN;

/// Uniform parameters of `matmul.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    batch0: u32,
    tile_row0: u32,
    tile_col0: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Matmul.params_bytes());

/// How [`matmul`] reads its operands.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatmulOptions<'a> {
    /// A is stored `[..., k, m]` and used transposed.
    pub trans_a: bool,
    /// B is stored `[..., n, k]` and used transposed (a weight `[out, in]` as in `nn.Linear`).
    pub trans_b: bool,
    /// Added to every row of C: `[n]`, F32, F16 or BF16.
    pub bias: Option<&'a Tensor>,
}

/// The dimensions of one product, as both implementations see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Matrices in the batch.
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Elements between consecutive matrices of A and of B: 0 for a matrix used by every batch.
    pub a_batch_stride: usize,
    pub b_batch_stride: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

fn float_dtype(t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        dtype => Err(Error::OpDType {
            op: OP,
            tensor: t.name().to_string(),
            dtype,
            expected: "F32, F16 or BF16",
        }),
    }
}

/// `C = op(A) · op(B) (+ bias)` on the tensors' device, a new F32 tensor named like A (see the
/// module doc for shapes and the order of the sums). Errors: A or B of rank below 2, or a bias
/// that is not a vector ([`Error::OpRank`]); a dtype other than F32, F16, BF16
/// ([`Error::OpDType`]); inner dimensions, batch dimensions or the bias length that do not fit
/// ([`Error::ShapeMismatch`]); operands on different devices ([`Error::DeviceMismatch`]); bytes
/// that disagree with the shape ([`Error::TensorBytes`]); an operand or C larger than one storage
/// binding, or with 2^32 elements or more ([`Error::DeviceLimit`]).
pub fn matmul(a: &Tensor, b: &Tensor, options: MatmulOptions) -> Result<Tensor> {
    let rank = |t: &Tensor| {
        if t.shape().rank() < 2 {
            let expected = "a matrix or a batch of matrices [..., rows, cols]";
            return Err(rank_error(OP, t, expected));
        }
        Ok(t.shape().rank() - 2)
    };
    let (ra, rb) = (rank(a)?, rank(b)?);
    let (a_batch, a_mat) = a.shape().dims().split_at(ra);
    let (b_batch, b_mat) = b.shape().dims().split_at(rb);
    let (m, ka) = if options.trans_a {
        (a_mat[1], a_mat[0])
    } else {
        (a_mat[0], a_mat[1])
    };
    let (kb, n) = if options.trans_b {
        (b_mat[1], b_mat[0])
    } else {
        (b_mat[0], b_mat[1])
    };
    if ka != kb {
        return Err(shape_error(OP, a, b));
    }
    let batch_dims = match (a_batch.is_empty(), b_batch.is_empty()) {
        (_, true) => a_batch,
        (true, false) => b_batch,
        (false, false) if a_batch == b_batch => a_batch,
        _ => return Err(shape_error(OP, a, b)),
    };
    // Shapes were checked when made, so these products cannot overflow.
    let batch: usize = batch_dims.iter().product();
    let mut dims = Dims {
        batch,
        m,
        n,
        k: ka,
        a_batch_stride: if a_batch.is_empty() { 0 } else { m * ka },
        b_batch_stride: if b_batch.is_empty() { 0 } else { ka * n },
        trans_a: options.trans_a,
        trans_b: options.trans_b,
    };
    // One matrix B for the whole batch and A stored row by row: A's batch is just more rows.
    if b_batch.is_empty() && !options.trans_a {
        dims.m *= dims.batch;
        dims.batch = 1;
        dims.a_batch_stride = 0;
    }
    let mut out = batch_dims.to_vec();
    out.extend([m, n]);
    product(a, b, options.bias, dims, out)
}

/// `x · Wᵀ + bias`, PyTorch's `nn.Linear` (`F.linear`): x `[..., in]` (a vector `[in]` too), W
/// `[out, in]`, bias `[out]`; the result is F32 `[..., out]`, named like x. The same sums and
/// errors as [`matmul`] (with `trans_b`); all of x's leading dimensions are rows of one product.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let Some((&inp, lead)) = x.shape().dims().split_last() else {
        return Err(Error::OpRank {
            op: OP,
            tensor: x.name().to_string(),
            shape: Vec::new(),
            expected: "a vector [in] or a batch [..., in]",
        });
    };
    let &[out, w_in] = w.shape().dims() else {
        return Err(rank_error(OP, w, "a weight matrix [out, in]"));
    };
    if w_in != inp {
        return Err(shape_error(OP, x, w));
    }
    let rows: usize = lead.iter().product();
    let dims = Dims {
        batch: 1,
        m: rows,
        n: out,
        k: inp,
        a_batch_stride: 0,
        b_batch_stride: 0,
        trans_a: false,
        trans_b: true,
    };
    let mut shape = lead.to_vec();
    shape.push(out);
    product(x, w, bias, dims, shape)
}

/// The checks every product shares, then the twin or the launcher.
fn product(
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    dims: Dims,
    out_dims: Vec<usize>,
) -> Result<Tensor> {
    float_dtype(a)?;
    float_dtype(b)?;
    let mut all = vec![a, b];
    if let Some(bias) = bias {
        if bias.shape().rank() != 1 {
            return Err(rank_error(OP, bias, "a vector [n]"));
        }
        float_dtype(bias)?;
        if bias.shape().dims()[0] != dims.n {
            return Err(shape_error(OP, b, bias));
        }
        all.push(bias);
    }
    for t in &all {
        t.check_layout()?;
    }
    let out_shape = f32_shape(a, out_dims)?;
    let storage = match place(OP, &all)? {
        Place::Cpu(bytes) => {
            let bias = bias.map(|t| cpu::widen(t.dtype(), bytes[2]));
            let c = cpu::matmul(
                &cpu::widen(a.dtype(), bytes[0]),
                &cpu::widen(b.dtype(), bytes[1]),
                bias.as_deref(),
                dims,
            );
            Storage::Cpu(f32_bytes(&c))
        }
        Place::Gpu(gs) => Storage::Gpu(gpu_matmul(&all, &gs, dims, &out_shape, BiasIndex::Column)?),
    };
    Ok(Tensor::new(
        a.name().to_string(),
        DType::F32,
        out_shape,
        storage,
    ))
}

/// The shader's number for a dtype (`A_TYPE`, `B_TYPE`, `BIAS_TYPE`).
fn type_code(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 1.0,
        DType::BF16 => 2.0,
        _ => 0.0,
    }
}

/// `WG_Y` for a product of `m` rows: [`WG_Y`], or fewer rows of invocations (a tile of 8, 16 or
/// 32 rows) when m is that small, so a 1x1 convolution to 16 or 24 channels does not compute a
/// tile of 64 rows to keep 16.
fn rows_of_invocations(m: usize) -> u32 {
    let rows = m.div_ceil(TM as usize).next_power_of_two();
    (rows as u32).clamp(1, WG_Y)
}

/// Which element of the bias `ts[2]` the launcher adds to `C[b][i][j]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BiasIndex {
    /// `bias[j]`, `[n]`: [`matmul`] and [`linear`].
    Column,
    /// `bias[i]`, `[m]`: a per-channel bias when C is `[c_out, h * w]`, as in a 1x1
    /// convolution ([`conv2d`](super::conv::conv2d) takes this launcher for those).
    Row,
}

/// The launcher for `ts` = [A, B] or [A, B, bias], whose shapes the caller checked against
/// `dims` and `bias`: operands whole, C in its page (or a scratch buffer copied into its pages),
/// one dispatch per chunk of the tile grid that fits the per-dimension workgroup limit. C is
/// named like A. Recorded, not waited for (readback waits).
pub(crate) fn gpu_matmul(
    ts: &[&Tensor],
    gs: &[&GpuStorage],
    dims: Dims,
    out_shape: &Shape,
    bias_index: BiasIndex,
) -> Result<GpuStorage> {
    let (a, b) = (ts[0], ts[1]);
    let gpu = gs[0].gpu();
    let out_elems = out_shape.elem_count();
    let out = Output::new(gpu, a, out_shape)?;
    let mut encoder = gpu.record(OP);
    if out_elems == 0 {
        return Ok(out.finish(&mut encoder));
    }
    // The shader indexes every operand and C with u32 element numbers.
    for t in ts {
        to_u32(t, t.shape().elem_count(), "the element count")?;
    }
    to_u32(a, out_elems, "the product's element count")?;
    let params = Params {
        m: to_u32(a, dims.m as u64, "the row count")?,
        n: to_u32(b, dims.n as u64, "the column count")?,
        k: to_u32(a, dims.k as u64, "the inner dimension")?,
        a_batch_stride: to_u32(a, dims.a_batch_stride as u64, "the batch stride")?,
        b_batch_stride: to_u32(b, dims.b_batch_stride as u64, "the batch stride")?,
        ..Params::default()
    };
    let bias = ts.get(2);
    let wg_y = rows_of_invocations(dims.m);
    let key = PipelineKey::new(Kernel::Matmul, "matmul")
        .with("WG_X", f64::from(WG_X))
        .with("WG_Y", f64::from(wg_y))
        .with("TK", f64::from(TK))
        .with("TRANS_A", f64::from(u8::from(dims.trans_a)))
        .with("TRANS_B", f64::from(u8::from(dims.trans_b)))
        .with("HAS_BIAS", f64::from(u8::from(bias.is_some())))
        .with(
            "BIAS_PER_ROW",
            f64::from(u8::from(bias_index == BiasIndex::Row)),
        )
        .with("A_TYPE", type_code(a.dtype()))
        .with("B_TYPE", type_code(b.dtype()))
        .with("BIAS_TYPE", bias.map_or(0.0, |t| type_code(t.dtype())));
    let pipeline = gpu.pipeline(&key)?;
    let a_buf = whole(&mut encoder, a, gs[0], "the whole tensor")?;
    let b_buf = whole(&mut encoder, b, gs[1], "the whole tensor")?;
    let bias_buf = match bias {
        Some(t) => whole(&mut encoder, t, gs[2], "the whole tensor")?,
        None => scratch(gpu, "matmul no bias", 4)?,
    };

    let max = u64::from(gpu.limits().max_compute_workgroups_per_dimension.max(1));
    let tiles_n = (dims.n as u64).div_ceil(u64::from(TILE_N));
    let tiles_m = (dims.m as u64).div_ceil(u64::from(wg_y * TM));
    for batch0 in (0..dims.batch as u64).step_by(max as usize) {
        for row0 in (0..tiles_m).step_by(max as usize) {
            for col0 in (0..tiles_n).step_by(max as usize) {
                let params = Params {
                    batch0: batch0 as u32,
                    tile_row0: row0 as u32,
                    tile_col0: col0 as u32,
                    ..params
                };
                let groups = [
                    (tiles_n - col0).min(max) as u32,
                    (tiles_m - row0).min(max) as u32,
                    (dims.batch as u64 - batch0).min(max) as u32,
                ];
                let group = bind(
                    &mut encoder,
                    &pipeline,
                    OP,
                    bytemuck::bytes_of(&params),
                    &[&a_buf, &b_buf, &bias_buf, out.buffer()],
                )?;
                gpu.dispatch_groups(&mut encoder, &pipeline, &group, groups);
            }
        }
    }
    let storage = out.finish(&mut encoder);
    encoder.finish();
    Ok(storage)
}

/// The CPU twin: plain loops, summing in the order the module doc gives (the GPU's order).
pub(crate) mod cpu {
    use super::Dims;
    use mlmf_core::DType;

    /// The numbers in `bytes` (little-endian F32, F16 or BF16; anything else is read as F32)
    /// widened exactly to f32.
    pub(crate) fn widen(dtype: DType, bytes: &[u8]) -> Vec<f32> {
        match dtype {
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        }
    }

    /// C `[batch, m, n]`: `(sum_k op(A)[i][k] * op(B)[k][j]) + bias[j]`, k in order from 0.
    /// Empty when a slice is shorter than `dims` says.
    pub(crate) fn matmul(a: &[f32], b: &[f32], bias: Option<&[f32]>, dims: Dims) -> Vec<f32> {
        let Dims {
            batch,
            m,
            n,
            k,
            a_batch_stride,
            b_batch_stride,
            trans_a,
            trans_b,
        } = dims;
        let last = batch.saturating_sub(1);
        if batch > 0
            && (a.len() < last * a_batch_stride + m * k
                || b.len() < last * b_batch_stride + k * n
                || bias.is_some_and(|v| v.len() < n))
        {
            return Vec::new();
        }
        let mut c = vec![0.0f32; batch * m * n];
        for p in 0..batch {
            let (a, b) = (&a[p * a_batch_stride..], &b[p * b_batch_stride..]);
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0.0f32;
                    for kk in 0..k {
                        let x = if trans_a {
                            a[kk * m + i]
                        } else {
                            a[i * k + kk]
                        };
                        let y = if trans_b {
                            b[j * k + kk]
                        } else {
                            b[kk * n + j]
                        };
                        acc += x * y;
                    }
                    if let Some(bias) = bias {
                        acc += bias[j];
                    }
                    c[(p * m + i) * n + j] = acc;
                }
            }
        }
        c
    }
}
