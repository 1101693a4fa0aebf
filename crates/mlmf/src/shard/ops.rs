//! Tensor-parallel linear layers: one weight matrix `[out, in]` split over devices, each device
//! loading only its part's bytes ([`Device::load_slice`]) and computing its part of
//! `y = x · Wᵀ + b` with the existing kernels ([`matmul::linear`] for F32, F16 and BF16
//! weights, [`qmatmul::matmul`] for block-quantized ones).
//!
//! - [`Cut::Rows`] (Megatron's column-parallel linear): device i holds rows `[a_i, b_i)` of W
//!   and of the bias and computes those output features whole; the parts are concatenated along
//!   the features ([`gather_rows`]). Each output element is the same sum, in the same order, on
//!   the same kind of device as without the split, so the result equals the single-device one
//!   bit for bit.
//! - [`Cut::Cols`] (Megatron's row-parallel linear): device i holds columns `[a_i, b_i)` of W
//!   and takes the same columns of x; the partial products are summed in device order
//!   ([`sum_partials`]) and the bias is added once, last. Only the order of the additions
//!   changes, so the result is within the f32 summation bound of the exact product, as the
//!   single-device one is. Block-quantized columns split on whole blocks only: a range that
//!   would cut one is [`Error::BadSlice`] naming the tensor.
//!
//! The collective step is separate from the compute: [`LinearPart`] is what one device (or one
//! MPI rank) holds and computes; [`gather_rows`] and [`sum_partials`] are the host-side
//! all-gather and all-reduce over the parts, so across ranks each rank runs its own
//! [`LinearPart::forward`] and a collective supplies the other parts.
//!
//! ```no_run
//! use mlmf::shard::ops::{ranges_by_ratio, SplitLinear};
//! use mlmf::{Device, ModelFile};
//! let file = ModelFile::open("model.safetensors")?;
//! let devices = [Device::gpu()?, Device::gpu()?]; // two logical devices on one adapter
//! let ranges = ranges_by_ratio(1536, &[3, 1], 1)?; // like --tensor-split 3,1
//! let (w, b) = ("encoder.layer.0.intermediate.dense.weight", "encoder.layer.0.intermediate.dense.bias");
//! let up = SplitLinear::rows(&devices, &file, w, Some(b), &ranges)?;
//! let x = vec![0.0f32; 8 * 384];
//! let y = up.forward(&x, 8)?; // [8, 1536]
//! # Ok::<(), mlmf::Error>(())
//! ```

use std::ops::Range;

use mlmf_core::{DType, Error, ModelFile, Result, Slice};
use mlmf_gpu::ops::{convert, elementwise, matmul, qmatmul};
use mlmf_gpu::{Device, Tensor};

/// How a weight `[out, in]` is split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cut {
    /// By output rows (features): parts are gathered.
    Rows,
    /// By input columns: partial products are summed.
    Cols,
}

/// One device's part of a split linear: its rows or columns of the weight (and its rows of the
/// bias, for a row split), loaded on its device.
#[derive(Debug)]
pub struct LinearPart {
    split: Cut,
    index: usize,
    range: Range<usize>,
    /// The whole weight's `[out, in]`.
    out: usize,
    inp: usize,
    weight: Tensor,
    /// Row split: this part's rows of the bias, on the device (F32 for a quantized weight, which
    /// adds it with `elementwise::add`). Column split: never (see `host_bias`).
    bias: Option<Tensor>,
    /// Column split: the whole bias, added once after the sum.
    host_bias: Option<Vec<f32>>,
}

impl LinearPart {
    /// Load part `index` of the split of `weight` (and of `bias`, a vector `[out]`) given by
    /// `ranges` onto `device`, reading only that part's bytes. `ranges` are the parts of the
    /// output rows ([`Cut::Rows`]) or of the input columns ([`Cut::Cols`]) for every device
    /// in order; they must cover the dimension in order without gaps or overlaps
    /// ([`check_ranges`]). Errors: [`Error::BadPlan`] for bad ranges or an index past them,
    /// [`Error::BadSlice`] for a column range that cuts a quantized block, the file's errors,
    /// and [`Error::OpDType`] for a weight type no product takes.
    pub fn load(
        device: &Device,
        file: &ModelFile,
        weight: &str,
        bias: Option<&str>,
        split: Cut,
        ranges: &[Range<usize>],
        index: usize,
    ) -> Result<LinearPart> {
        let info = file.tensor(weight)?;
        let &[out, inp] = info.shape.dims() else {
            return Err(plan_error(
                weight,
                format!(
                    "a split linear needs a matrix [out, in]; it is {}",
                    info.shape
                ),
            ));
        };
        let dim = match split {
            Cut::Rows => out,
            Cut::Cols => inp,
        };
        check_ranges(weight, dim, ranges)?;
        let range = ranges.get(index).cloned().ok_or_else(|| {
            plan_error(
                weight,
                format!("part {index} of a split into {} parts", ranges.len()),
            )
        })?;
        if !is_dense(info.dtype) && !qmatmul::supports(info.dtype) {
            return Err(Error::OpDType {
                op: OP,
                tensor: weight.to_string(),
                dtype: info.dtype,
                expected: "F32, F16, BF16 or a GGML block type with a decoder",
            });
        }
        if let Some(name) = bias {
            let b = file.tensor(name)?;
            if b.shape.dims() != [out] {
                return Err(plan_error(
                    name,
                    format!(
                        "the bias of '{weight}' [{out}, {inp}] must be [{out}]; it is {}",
                        b.shape
                    ),
                ));
            }
        }
        let slice = match split {
            Cut::Rows => Slice::Rows(range.clone()),
            Cut::Cols => Slice::Cols(range.clone()),
        };
        // Check the slice (block cuts) before reading anything.
        slice.layout(file.file_of(info), info)?;
        let (weight, bias, host_bias) = match (split, bias) {
            (_, None) => (device.load_slice(file, weight, &slice)?, None, None),
            (Cut::Rows, Some(b)) => {
                let mut parts = device
                    .load_slices(file, &[(weight, slice), (b, Slice::Rows(range.clone()))])?
                    .into_iter();
                let (Some(w), Some(mut b)) = (parts.next(), parts.next()) else {
                    return Err(plan_error(weight, "the load returned fewer parts".into()));
                };
                // elementwise::add takes F32 only; the dense product takes any float bias.
                if !is_dense(w.dtype()) && b.dtype() != DType::F32 {
                    b = convert::to_f32(&b)?;
                }
                (w, Some(b), None)
            }
            (Cut::Cols, Some(b)) => {
                // Small and needed whole by every part: read it to the host once.
                let bias = Device::Cpu.load(file, b)?.to_f32_vec()?;
                (device.load_slice(file, weight, &slice)?, None, Some(bias))
            }
        };
        Ok(LinearPart {
            split,
            index,
            range,
            out,
            inp,
            weight,
            bias,
            host_bias,
        })
    }

    /// This part's share of `x · Wᵀ (+ b)` for `x` `[n, in]` (row-major, the whole input):
    /// row split `[n, b_i - a_i]` (its output features, bias included); column split the partial
    /// product `[n, out]` of its columns of x and W, without the bias. Errors: `x` not `n * in`
    /// values ([`Error::ShapeMismatch`]), the device's.
    pub fn forward(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.launch(x, n)?.to_f32_vec()
    }

    /// A column split's partial product from only its columns of x: `x_part` `[n, b_i - a_i]`
    /// (what a preceding row split leaves on this device, Megatron's pairing). For a row split
    /// it is [`LinearPart::forward`].
    pub fn forward_local(&self, x_part: &[f32], n: usize) -> Result<Vec<f32>> {
        let cols = match self.split {
            Cut::Rows => self.inp,
            Cut::Cols => self.range.len(),
        };
        check_input(self.weight.name(), x_part, n, cols)?;
        self.product(x_part, n, cols)?.to_f32_vec()
    }

    /// Records this part's product on its device and returns the output tensor, not read back
    /// (so that every device's work is submitted before any is waited for).
    fn launch(&self, x: &[f32], n: usize) -> Result<Tensor> {
        check_input(self.weight.name(), x, n, self.inp)?;
        match self.split {
            Cut::Rows => self.product(x, n, self.inp),
            Cut::Cols => {
                let cols = self.range.len();
                let mut part = Vec::with_capacity(n * cols);
                for row in x.chunks_exact(self.inp) {
                    part.extend_from_slice(&row[self.range.clone()]);
                }
                self.product(&part, n, cols)
            }
        }
    }

    fn product(&self, x: &[f32], n: usize, cols: usize) -> Result<Tensor> {
        let device = self.weight.device();
        let x = Tensor::from_f32("x", vec![n, cols], x)?.to_device(&device)?;
        if is_dense(self.weight.dtype()) {
            matmul::linear(&x, &self.weight, self.bias.as_ref())
        } else {
            let y = qmatmul::matmul(&self.weight, &x)?;
            match &self.bias {
                Some(b) => elementwise::add(&y, b),
                None => Ok(y),
            }
        }
    }

    /// Add the bias to a column split's summed partials `y` `[n, out]` (after [`sum_partials`]
    /// or an all-reduce); nothing for a row split, whose parts include it, or without a bias.
    pub fn add_bias(&self, y: &mut [f32]) -> Result<()> {
        let Some(bias) = self.host_bias.as_ref().filter(|b| !b.is_empty()) else {
            return Ok(());
        };
        if !y.len().is_multiple_of(self.out) {
            return Err(plan_error(
                self.weight.name(),
                format!("a sum of {} values is not rows of {}", y.len(), self.out),
            ));
        }
        for row in y.chunks_exact_mut(self.out) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        Ok(())
    }

    pub fn split(&self) -> Cut {
        self.split
    }

    /// Which part of the split this is.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The rows (row split) or columns (column split) of W this part holds.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The device this part lives on.
    pub fn device(&self) -> Device {
        self.weight.device()
    }

    /// This part of the weight, as loaded.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

/// A linear layer split over several devices of one process: one [`LinearPart`] per device,
/// combined on the host.
#[derive(Debug)]
pub struct SplitLinear {
    parts: Vec<LinearPart>,
    out: usize,
}

impl SplitLinear {
    /// Split `weight` `[out, in]` (and `bias` `[out]`) by output rows: `devices[i]` holds rows
    /// `ranges[i]`. See [`LinearPart::load`] for the errors; also [`Error::BadPlan`] when the
    /// numbers of devices and ranges differ.
    pub fn rows(
        devices: &[Device],
        file: &ModelFile,
        weight: &str,
        bias: Option<&str>,
        ranges: &[Range<usize>],
    ) -> Result<SplitLinear> {
        Self::load(devices, file, weight, bias, Cut::Rows, ranges)
    }

    /// Split `weight` `[out, in]` by input columns: `devices[i]` holds columns `ranges[i]`; the
    /// bias is added once after the sum. Errors as [`SplitLinear::rows`], and
    /// [`Error::BadSlice`] for a range that cuts a quantized block.
    pub fn cols(
        devices: &[Device],
        file: &ModelFile,
        weight: &str,
        bias: Option<&str>,
        ranges: &[Range<usize>],
    ) -> Result<SplitLinear> {
        Self::load(devices, file, weight, bias, Cut::Cols, ranges)
    }

    fn load(
        devices: &[Device],
        file: &ModelFile,
        weight: &str,
        bias: Option<&str>,
        split: Cut,
        ranges: &[Range<usize>],
    ) -> Result<SplitLinear> {
        if devices.len() != ranges.len() {
            return Err(plan_error(
                weight,
                format!("{} devices for {} ranges", devices.len(), ranges.len()),
            ));
        }
        let parts = devices
            .iter()
            .enumerate()
            .map(|(i, d)| LinearPart::load(d, file, weight, bias, split, ranges, i))
            .collect::<Result<Vec<_>>>()?;
        let out = parts.first().map_or(0, |p| p.out);
        Ok(SplitLinear { parts, out })
    }

    /// `x · Wᵀ + b` for `x` `[n, in]` (row-major), `[n, out]`: every device's part is submitted,
    /// then read back and combined ([`gather_rows`] or [`sum_partials`] and the bias).
    pub fn forward(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let launched = self
            .parts
            .iter()
            .map(|p| p.launch(x, n))
            .collect::<Result<Vec<_>>>()?;
        let parts = launched
            .iter()
            .map(Tensor::to_f32_vec)
            .collect::<Result<Vec<_>>>()?;
        self.combine(&parts, n)
    }

    /// Combine every part's [`LinearPart::forward`] output, in device order, into `[n, out]`.
    pub fn combine(&self, parts: &[Vec<f32>], n: usize) -> Result<Vec<f32>> {
        if parts.len() != self.parts.len() {
            return Err(Error::BadPlan {
                reason: format!(
                    "{} outputs for a split into {} parts",
                    parts.len(),
                    self.parts.len()
                ),
            });
        }
        let Some(first) = self.parts.first() else {
            return Ok(Vec::new());
        };
        match first.split {
            Cut::Rows => gather_rows(parts, n),
            Cut::Cols => {
                let mut y = sum_partials(parts)?;
                if y.len() != n * self.out {
                    return Err(Error::BadPlan {
                        reason: format!(
                            "partial sums of {} values for {n} rows of {}",
                            y.len(),
                            self.out
                        ),
                    });
                }
                first.add_bias(&mut y)?;
                Ok(y)
            }
        }
    }

    /// The parts, in device order.
    pub fn parts(&self) -> &[LinearPart] {
        &self.parts
    }
}

/// Concatenate row-split parts along the features: `parts[i]` is `[n, w_i]` row-major; the result
/// is `[n, sum w_i]`, each row the parts' rows in order (an all-gather's result, rearranged).
/// Errors: a part that is not `n` rows ([`Error::BadPlan`]).
pub fn gather_rows(parts: &[Vec<f32>], n: usize) -> Result<Vec<f32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let widths = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.len() % n != 0 {
                return Err(Error::BadPlan {
                    reason: format!("part {i} has {} values, not {n} rows", p.len()),
                });
            }
            Ok(p.len() / n)
        })
        .collect::<Result<Vec<_>>>()?;
    let total: usize = parts.iter().map(Vec::len).sum();
    let mut y = Vec::with_capacity(total);
    for row in 0..n {
        for (p, &w) in parts.iter().zip(&widths) {
            y.extend_from_slice(&p[row * w..(row + 1) * w]);
        }
    }
    Ok(y)
}

/// Sum column-split partial products element by element in part order:
/// `((p_0 + p_1) + p_2) + ...`, the same on every process (an all-reduce's result). Errors: parts
/// of different lengths ([`Error::BadPlan`]).
pub fn sum_partials(parts: &[Vec<f32>]) -> Result<Vec<f32>> {
    let Some((first, rest)) = parts.split_first() else {
        return Ok(Vec::new());
    };
    let mut y = first.clone();
    for (i, p) in rest.iter().enumerate() {
        if p.len() != y.len() {
            return Err(Error::BadPlan {
                reason: format!(
                    "partial {} has {} values, partial 0 has {}",
                    i + 1,
                    p.len(),
                    y.len()
                ),
            });
        }
        for (a, b) in y.iter_mut().zip(p) {
            *a += b;
        }
    }
    Ok(y)
}

/// Check that `ranges` split `0..dim` of `tensor` into non-empty consecutive parts: the first
/// starts at 0, each starts where the one before ends, the last ends at `dim`
/// ([`Error::BadPlan`] naming the tensor otherwise).
pub fn check_ranges(tensor: &str, dim: usize, ranges: &[Range<usize>]) -> Result<()> {
    if ranges.is_empty() {
        return Err(plan_error(tensor, "no parts".into()));
    }
    let mut at = 0;
    for (i, r) in ranges.iter().enumerate() {
        if r.start != at {
            let what = if r.start > at { "a gap" } else { "an overlap" };
            return Err(plan_error(
                tensor,
                format!("part {i} starts at {}, after {at}: {what}", r.start),
            ));
        }
        if r.end <= r.start {
            return Err(plan_error(
                tensor,
                format!("part {i} ({}..{}) is empty", r.start, r.end),
            ));
        }
        at = r.end;
    }
    if at != dim {
        return Err(plan_error(
            tensor,
            format!("the parts end at {at}; the dimension has {dim}"),
        ));
    }
    Ok(())
}

/// Split `0..dim` by `ratios` (as `--tensor-split 3,1`) into consecutive ranges whose bounds are
/// multiples of `align` (a block's elements, for quantized columns; 1 otherwise), the last
/// taking what rounding leaves. Errors ([`Error::BadPlan`]): no ratios, all zero, `align` 0 or
/// not dividing `dim`, or a part that would be empty.
pub fn ranges_by_ratio(dim: usize, ratios: &[u32], align: usize) -> Result<Vec<Range<usize>>> {
    let bad = |reason: String| Error::BadPlan { reason };
    let total: u128 = ratios.iter().map(|&r| u128::from(r)).sum();
    if total == 0 || align == 0 || !dim.is_multiple_of(align) {
        return Err(bad(format!(
            "cannot split {dim} by ratios {ratios:?} on multiples of {align}"
        )));
    }
    // The plans' rounding (each bound to the nearest unit), so a split linear and a plan cut
    // the same dimension at the same places.
    let shares: Vec<f64> = ratios.iter().map(|&r| f64::from(r)).collect();
    let out: Vec<Range<usize>> = super::plan::partition(dim / align, &shares)
        .into_iter()
        .map(|u| u.start * align..u.end * align)
        .collect();
    if let Some(i) = out.iter().position(|r| r.is_empty()) {
        return Err(bad(format!(
            "part {i} of {dim} split by {ratios:?} on multiples of {align} would be empty"
        )));
    }
    Ok(out)
}

const OP: &str = "split linear";

fn is_dense(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

fn plan_error(tensor: &str, reason: String) -> Error {
    Error::BadPlan {
        reason: format!("tensor '{tensor}': {reason}"),
    }
}

fn check_input(weight: &str, x: &[f32], n: usize, cols: usize) -> Result<()> {
    if n.checked_mul(cols) != Some(x.len()) {
        return Err(Error::ShapeMismatch {
            op: OP,
            left: "x".into(),
            left_shape: vec![x.len()],
            right: weight.to_string(),
            right_shape: vec![n, cols],
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_concatenates_each_row_in_part_order() {
        let parts = vec![vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![7.0, 8.0]];
        let y = gather_rows(&parts, 2).unwrap();
        assert_eq!(y, vec![1.0, 2.0, 3.0, 7.0, 4.0, 5.0, 6.0, 8.0]);
        assert!(matches!(
            gather_rows(&[vec![1.0, 2.0, 3.0]], 2),
            Err(Error::BadPlan { .. })
        ));
    }

    #[test]
    fn partials_are_summed_left_to_right() {
        // (1e8 + -1e8) + 1 = 1, whereas 1e8 + (-1e8 + 1) = 0 in f32: the order is part order.
        let y = sum_partials(&[vec![1e8], vec![-1e8], vec![1.0]]).unwrap();
        assert_eq!(y, vec![1.0]);
        assert!(matches!(
            sum_partials(&[vec![1.0], vec![1.0, 2.0]]),
            Err(Error::BadPlan { .. })
        ));
    }

    #[test]
    fn ranges_cover_in_order() {
        assert!(check_ranges("w", 8, &[0..6, 6..8]).is_ok());
        for bad in [
            vec![0..5, 6..8],
            vec![0..6, 5..8],
            vec![0..6, 6..7],
            std::iter::once(1..8).collect(),
            vec![0..0, 0..8],
            vec![],
        ] {
            let err = check_ranges("w", 8, &bad).unwrap_err();
            assert!(
                matches!(&err, Error::BadPlan { reason } if reason.contains("'w'")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn ratios_round_to_aligned_ranges() {
        assert_eq!(
            ranges_by_ratio(640, &[3, 1], 1).unwrap(),
            vec![0..480, 480..640]
        );
        assert_eq!(
            ranges_by_ratio(1024, &[3, 1], 256).unwrap(),
            vec![0..768, 768..1024]
        );
        assert_eq!(
            ranges_by_ratio(640, &[1, 1, 1, 1], 32).unwrap(),
            vec![0..160, 160..320, 320..480, 480..640]
        );
        assert!(ranges_by_ratio(256, &[1, 1, 1, 1, 1], 256).is_err());
        assert!(ranges_by_ratio(100, &[1], 32).is_err());
        assert!(ranges_by_ratio(100, &[0, 0], 1).is_err());
    }
}
