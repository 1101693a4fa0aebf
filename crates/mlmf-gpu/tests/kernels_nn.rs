//! The neural-network kernels (`ops::norm`, `ops::softmax`, `ops::embedding`, `ops::attention`,
//! `ops::conv`) on the GPU (lavapipe here, both ways of reducing a row where a family has two)
//! and through their CPU twins, against f64 references within the rounding bounds each module
//! doc derives (`eps = f32::EPSILON`):
//!
//! - layer norm: `(n + 16) eps (|w| r (mean|x| + |x - mean|) + |b|)`, RMS norm
//!   `(n + 16) eps |x w| r`, n the row length, r the exact reciprocal standard deviation;
//! - softmax: `eps p_k (n + 8 + 3 |t_k| + sum_j p_j (4 + 3 |t_j|)) + f32::MIN_POSITIVE`,
//!   t the exact exponents;
//! - attention: the score errors carried through the softmax plus the weighted sum's rounding
//!   (see `ops::attention`);
//! - conv2d: `(K + 2) eps (sum |w x| + |bias|)`, K terms; average pooling `(hw + 2) eps mean|x|`;
//! - embedding: no arithmetic but the decoders', so bit-identical to decoding the whole table.
//!
//! Shapes include rows shorter and longer than a workgroup (64) and not multiples of it, odd
//! spatial sizes, groups 1, 2 and c_in, strides 1 and 2, padding 0 and 1, operands spread over
//! several pages, padded keys (and a batch item with every key padded), and rows offset by 1e4.

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../../../tests/common/fma.rs"]
mod fma;

use common::random_f32;

use mlmf_core::{DType, Error, Shape};
use mlmf_gpu::ops::attention::{self, Dims};
use mlmf_gpu::ops::conv::{self, Conv2d, ConvDims};
use mlmf_gpu::ops::{embedding, norm, softmax, Reduce};
use mlmf_gpu::{Device, GpuOptions, Tensor};

const EPS: f64 = f32::EPSILON as f64;

fn values(t: &Tensor) -> Vec<f32> {
    t.to_bytes()
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn on(device: &Device, name: &str, dims: Vec<usize>, v: &[f32]) -> Tensor {
    Tensor::from_f32(name, dims, v)
        .unwrap()
        .to_device(device)
        .unwrap()
}

/// Every element of `got` within `bound[i]` of `want[i]`.
fn check(what: &str, got: &[f32], want: &[f64], bound: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((g, w), b)) in got.iter().zip(want).zip(bound).enumerate() {
        let err = (f64::from(*g) - w).abs();
        assert!(
            err <= *b,
            "{what}: element {i}: got {g:e}, want {w:e}, error {err:e} > bound {b:e}"
        );
    }
}

/// The devices every test runs on, with the way a GPU reduces rows: the GPU both ways, and the
/// CPU (the twins).
fn devices() -> Vec<(Device, Option<Reduce>)> {
    let gpu = Device::gpu().unwrap();
    vec![
        (gpu.clone(), Some(Reduce::Workgroup)),
        (gpu, Some(Reduce::PerInvocation)),
        (Device::Cpu, None),
    ]
}

/// A GPU whose pages hold 4 KiB, so small tensors span several.
fn paged_gpu() -> Device {
    Device::gpu_with(&GpuOptions {
        max_page_bytes: Some(4096),
        ..GpuOptions::default()
    })
    .unwrap()
}

// ---- norm -------------------------------------------------------------------------------------

/// Exact layer norm (or RMS norm, without bias) of each row, and its bound.
fn norm_reference(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    cols: usize,
    eps: f32,
) -> (Vec<f64>, Vec<f64>) {
    let (mut want, mut bound) = (Vec::new(), Vec::new());
    let k = (cols as f64 + 16.0) * EPS;
    for row in x.chunks_exact(cols) {
        let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let n = cols as f64;
        match b {
            Some(b) => {
                let mean = row.iter().sum::<f64>() / n;
                let mean_abs = row.iter().map(|v| v.abs()).sum::<f64>() / n;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let r = 1.0 / (var + f64::from(eps)).sqrt();
                for (j, v) in row.iter().enumerate() {
                    let (wj, bj) = (f64::from(w[j]), f64::from(b[j]));
                    want.push((v - mean) * r * wj + bj);
                    bound.push(k * (wj.abs() * r * (mean_abs + (v - mean).abs()) + bj.abs()));
                }
            }
            None => {
                let ms = row.iter().map(|v| v * v).sum::<f64>() / n;
                let r = 1.0 / (ms + f64::from(eps)).sqrt();
                for (j, v) in row.iter().enumerate() {
                    let wj = f64::from(w[j]);
                    want.push(v * r * wj);
                    bound.push(k * (v * wj).abs() * r);
                }
            }
        }
    }
    (want, bound)
}

/// Rows `[rows, cols]` (given as `dims`) of random values scaled by `scale` plus `offset`.
fn norm_case(
    device: &Device,
    reduce: Option<Reduce>,
    dims: Vec<usize>,
    scale: f32,
    offset: f32,
    seed: u64,
) {
    let cols = *dims.last().unwrap();
    let n: usize = dims.iter().product();
    let x: Vec<f32> = random_f32(n, seed)
        .iter()
        .map(|v| v * scale + offset)
        .collect();
    let w: Vec<f32> = random_f32(cols, seed + 1).iter().map(|v| v + 1.0).collect();
    let b = random_f32(cols, seed + 2);
    let what = format!(
        "{dims:?} x{scale}+{offset} on {} ({reduce:?})",
        device.describe()
    );
    let (xt, wt, bt) = (
        on(device, "x", dims.clone(), &x),
        on(device, "w", vec![cols], &w),
        on(device, "b", vec![cols], &b),
    );
    for eps in [1e-12f32, 1e-5] {
        let y = norm::layer_norm_with(&xt, &wt, &bt, eps, reduce).unwrap();
        assert_eq!(y.shape().dims(), &dims[..]);
        assert_eq!(y.dtype(), DType::F32);
        let (want, bound) = norm_reference(&x, &w, Some(&b), cols, eps);
        check(
            &format!("layer_norm {what} eps {eps}"),
            &values(&y),
            &want,
            &bound,
        );
        let y = norm::rms_norm_with(&xt, &wt, eps, reduce).unwrap();
        let (want, bound) = norm_reference(&x, &w, None, cols, eps);
        check(
            &format!("rms_norm {what} eps {eps}"),
            &values(&y),
            &want,
            &bound,
        );
    }
}

#[test]
fn norms_within_their_bounds() {
    for (device, reduce) in devices() {
        // Rows shorter than, equal to, just over and far over a workgroup; MiniLM's 384.
        for (k, dims) in [
            vec![1, 1],
            vec![3, 7],
            vec![5, 64],
            vec![4, 65],
            vec![2, 3, 384],
            vec![3, 1000],
            vec![130, 33],
        ]
        .into_iter()
        .enumerate()
        {
            norm_case(&device, reduce, dims.clone(), 1.0, 0.0, 10 + k as u64);
            // A large common offset: the two-pass variance keeps it exact enough.
            norm_case(&device, reduce, dims, 3.0, 1e3, 20 + k as u64);
        }
    }
    // Operands and the output spread over several 4 KiB pages.
    let paged = paged_gpu();
    for reduce in [Reduce::Workgroup, Reduce::PerInvocation] {
        norm_case(&paged, Some(reduce), vec![40, 100], 1.0, 0.5, 30);
        norm_case(&paged, Some(reduce), vec![3, 1500], 1.0, 0.0, 31);
    }
}

// ---- softmax ----------------------------------------------------------------------------------

/// Exact softmax of each row and its bound. Entries of exactly 0 probability (f32::MIN inputs)
/// contribute nothing to the bound's sums.
fn softmax_reference(x: &[f32], cols: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut want, mut bound) = (Vec::new(), Vec::new());
    for row in x.chunks_exact(cols) {
        let m = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let t: Vec<f64> = row.iter().map(|&v| f64::from(v) - m).collect();
        let e: Vec<f64> = t.iter().map(|t| t.exp()).collect();
        let s: f64 = e.iter().sum();
        let p: Vec<f64> = e.iter().map(|e| e / s).collect();
        let spread: f64 = p
            .iter()
            .zip(&t)
            .filter(|(p, _)| **p > 0.0)
            .map(|(p, t)| p * (4.0 + 3.0 * t.abs()))
            .sum();
        for (pk, tk) in p.iter().zip(&t) {
            let own = if *pk > 0.0 { 3.0 * tk.abs() } else { 0.0 };
            want.push(*pk);
            bound
                .push(EPS * pk * (cols as f64 + 8.0 + own + spread) + f64::from(f32::MIN_POSITIVE));
        }
    }
    (want, bound)
}

fn softmax_case(device: &Device, reduce: Option<Reduce>, dims: Vec<usize>, x: &[f32]) {
    let cols = *dims.last().unwrap();
    let y = softmax::softmax_with(&on(device, "x", dims.clone(), x), reduce).unwrap();
    assert_eq!(y.shape().dims(), &dims[..]);
    let (want, bound) = softmax_reference(x, cols);
    let what = format!("softmax {dims:?} on {} ({reduce:?})", device.describe());
    check(&what, &values(&y), &want, &bound);
}

#[test]
fn softmax_within_its_bound_and_stable() {
    for (device, reduce) in devices() {
        for (k, dims) in [
            vec![1, 1],
            vec![3, 5],
            vec![7, 64],
            vec![2, 2, 65],
            vec![2, 200],
            vec![3, 1500],
        ]
        .into_iter()
        .enumerate()
        {
            let n: usize = dims.iter().product();
            let cols = *dims.last().unwrap();
            // Spread over [-10, 10): probabilities from e^-20 to near 1.
            let x: Vec<f32> = random_f32(n, 40 + k as u64)
                .iter()
                .map(|v| v * 10.0)
                .collect();
            softmax_case(&device, reduce, dims.clone(), &x);
            // Offsets of 1e4 and -1e4 (exp of them would overflow or vanish without the max).
            let big: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, v)| v + if (i / cols) % 2 == 0 { 1e4 } else { -1e4 })
                .collect();
            softmax_case(&device, reduce, dims.clone(), &big);
            // Masked entries as attention writes them, including a row of only those.
            let mut masked = x.clone();
            for (i, v) in masked.iter_mut().enumerate() {
                if i % 3 == 1 || i < cols {
                    *v = f32::MIN;
                }
            }
            softmax_case(&device, reduce, dims, &masked);
        }
    }
    let paged = paged_gpu();
    let x: Vec<f32> = random_f32(3 * 1500, 50).iter().map(|v| v * 5.0).collect();
    for reduce in [Reduce::Workgroup, Reduce::PerInvocation] {
        softmax_case(&paged, Some(reduce), vec![3, 1500], &x);
    }
}

/// The twin follows IEEE for infinities as torch does: -inf entries get 0, a row of only -inf
/// gives NaN.
#[test]
fn softmax_twin_infinities() {
    // The twin: softmax on the CPU device.
    let twin =
        |x: &[f32]| values(&softmax::softmax(&on(&Device::Cpu, "x", vec![x.len()], x)).unwrap());
    let inf = f32::NEG_INFINITY;
    assert_eq!(
        twin(&[0.0, inf, 0.0, inf, inf]),
        vec![0.5, 0.0, 0.5, 0.0, 0.0]
    );
    assert!(twin(&[inf; 3]).iter().all(|v| v.is_nan()));
}

// ---- embedding --------------------------------------------------------------------------------

/// Bytes of `dtype` for a `[rows, cols]` table: F32, F16 and BF16 from random values; block
/// types quantized from them by mlmf's quantizer.
fn table_bytes(dtype: DType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let v = random_f32(rows * cols, seed);
    match dtype {
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        DType::BF16 => v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => mlmf_core::quant::quantize(dtype, &v, cols).unwrap(),
    }
}

fn embedding_case(device: &Device, dtype: DType, vocab: usize, dim: usize, ids: &[u32], seed: u64) {
    let bytes = table_bytes(dtype, vocab, dim, seed);
    let table =
        Tensor::from_bytes("table", dtype, Shape::new(vec![vocab, dim]).unwrap(), bytes).unwrap();
    // The whole table decoded by the convert/dequant ops on the CPU, then rows picked.
    let all = values(&mlmf_gpu::ops::convert::to_f32(&table).unwrap());
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&id| all[id as usize * dim..][..dim].to_vec())
        .collect();
    let t = table.to_device(device).unwrap();
    let y = embedding::embedding(&t, ids).unwrap();
    assert_eq!(y.shape().dims(), &[ids.len(), dim]);
    let got = values(&y);
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "{dtype} [{vocab}, {dim}] on {}",
        device.describe()
    );
    let ids64: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    assert_eq!(values(&embedding::embedding_i64(&t, &ids64).unwrap()), got);
}

#[test]
fn embedding_rows_bit_identical_to_decoding() {
    let gpu = Device::gpu().unwrap();
    let paged = paged_gpu();
    let ids = [0u32, 49, 7, 7, 23, 48, 1];
    for device in [gpu, Device::Cpu, paged] {
        for (k, (dtype, dim)) in [
            (DType::F32, 37),
            (DType::F16, 38),
            (DType::BF16, 384),
            (DType::Q8_0, 64),
            (DType::Q4_0, 96),
            (DType::Q4_K, 256),
            (DType::Q6_K, 512),
        ]
        .into_iter()
        .enumerate()
        {
            embedding_case(&device, dtype, 50, dim, &ids, 60 + k as u64);
        }
        embedding_case(&device, DType::F32, 50, 37, &[], 70);
    }
}

// ---- attention --------------------------------------------------------------------------------

/// Exact attention and its bound (see `ops::attention`).
fn attention_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[u32]>,
    d: Dims,
    scale: f32,
) -> (Vec<f64>, Vec<f64>) {
    let hidden = d.heads * d.head_dim;
    let mut want = vec![0.0; d.batch * d.seq_q * hidden];
    let mut bound = vec![0.0; want.len()];
    for b in 0..d.batch {
        for h in 0..d.heads {
            for i in 0..d.seq_q {
                let qrow = &q[(b * d.seq_q + i) * hidden + h * d.head_dim..][..d.head_dim];
                let mut s = vec![0.0f64; d.seq_k];
                let mut ds = vec![0.0f64; d.seq_k];
                for j in 0..d.seq_k {
                    if mask.is_some_and(|m| m[b * d.seq_k + j] == 0) {
                        s[j] = f64::from(f32::MIN);
                        continue;
                    }
                    let krow = &k[(b * d.seq_k + j) * hidden + h * d.head_dim..][..d.head_dim];
                    let (mut dot, mut abs) = (0.0, 0.0);
                    for (a, c) in qrow.iter().zip(krow) {
                        dot += f64::from(*a) * f64::from(*c);
                        abs += (f64::from(*a) * f64::from(*c)).abs();
                    }
                    s[j] = dot * f64::from(scale);
                    ds[j] = (d.head_dim as f64 + 2.0) * EPS * f64::from(scale).abs() * abs;
                }
                // The softmax bound on the exact scores, as f32 inputs of that row would give.
                let sf: Vec<f32> = s.iter().map(|&x| x as f32).collect();
                let (_, dp) = softmax_reference(&sf, d.seq_k);
                let m = s.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let total: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|e| e / total).collect();
                let mean_ds: f64 = p.iter().zip(&ds).map(|(p, d)| p * d).sum();
                for e in 0..d.head_dim {
                    let at = (b * d.seq_q + i) * hidden + h * d.head_dim + e;
                    let (mut acc, mut spread, mut weighted) = (0.0, 0.0, 0.0);
                    for j in 0..d.seq_k {
                        let vj = f64::from(v[(b * d.seq_k + j) * hidden + h * d.head_dim + e]);
                        acc += p[j] * vj;
                        spread += vj.abs() * (p[j] * (ds[j] + mean_ds) + dp[j]);
                        weighted += p[j] * vj.abs();
                    }
                    want[at] = acc;
                    bound[at] = 2.0 * spread + (d.seq_k as f64 + 1.0) * EPS * weighted;
                }
            }
        }
    }
    (want, bound)
}

fn attention_case(device: &Device, d: Dims, mask: Option<&[u32]>, scale: Option<f32>, seed: u64) {
    let hidden = d.heads * d.head_dim;
    let q: Vec<f32> = random_f32(d.batch * d.seq_q * hidden, seed)
        .iter()
        .map(|v| v * 2.0)
        .collect();
    let k: Vec<f32> = random_f32(d.batch * d.seq_k * hidden, seed + 1)
        .iter()
        .map(|v| v * 2.0)
        .collect();
    let v = random_f32(d.batch * d.seq_k * hidden, seed + 2);
    let y = attention::attention(
        &on(device, "q", vec![d.batch, d.seq_q, hidden], &q),
        &on(device, "k", vec![d.batch, d.seq_k, hidden], &k),
        &on(device, "v", vec![d.batch, d.seq_k, hidden], &v),
        d.heads,
        mask,
        scale,
    )
    .unwrap();
    assert_eq!(y.shape().dims(), &[d.batch, d.seq_q, hidden]);
    let s = scale.unwrap_or(1.0 / (d.head_dim as f32).sqrt());
    let (want, bound) = attention_reference(&q, &k, &v, mask, d, s);
    check(
        &format!("attention {d:?} on {}", device.describe()),
        &values(&y),
        &want,
        &bound,
    );
}

#[test]
fn attention_within_its_bound_with_padding() {
    for device in [Device::gpu().unwrap(), Device::Cpu, paged_gpu()] {
        let d = Dims {
            batch: 3,
            heads: 2,
            seq_q: 5,
            seq_k: 7,
            head_dim: 8,
        };
        // Item 0 attends everywhere, item 1 has its last 3 keys padded, item 2 all of them.
        let mut mask = vec![1u32; 21];
        mask[4..7].fill(0);
        mask[14..21].fill(0);
        attention_case(&device, d, Some(&mask), None, 80);
        attention_case(&device, d, None, Some(0.3), 81);
        // BERT-like: 12 heads of 32, a sequence longer than a workgroup, padding at the end.
        let d = Dims {
            batch: 2,
            heads: 12,
            seq_q: 70,
            seq_k: 70,
            head_dim: 32,
        };
        let mut mask = vec![1u32; 140];
        mask[70 + 50..].fill(0);
        attention_case(&device, d, Some(&mask), None, 82);
    }
}

/// A padded key changes nothing for the others: attention over a batch item padded at the end
/// equals attention over the item cut to its real length (as in BERT, up to rounding).
#[test]
fn padded_keys_are_ignored() {
    let gpu = Device::gpu().unwrap();
    let (heads, hd, seq, real) = (2, 4, 9, 6);
    let hidden = heads * hd;
    let q = random_f32(seq * hidden, 90);
    let k = random_f32(seq * hidden, 91);
    let v = random_f32(seq * hidden, 92);
    let mut mask = vec![1u32; seq];
    mask[real..].fill(0);
    let full = attention::attention(
        &on(&gpu, "q", vec![1, seq, hidden], &q),
        &on(&gpu, "k", vec![1, seq, hidden], &k),
        &on(&gpu, "v", vec![1, seq, hidden], &v),
        heads,
        Some(&mask),
        None,
    )
    .unwrap();
    let cut = attention::attention(
        &on(&gpu, "q", vec![1, seq, hidden], &q),
        &on(&gpu, "k", vec![1, real, hidden], &k[..real * hidden]),
        &on(&gpu, "v", vec![1, real, hidden], &v[..real * hidden]),
        heads,
        None,
        None,
    )
    .unwrap();
    // Same scores, same order; the padded terms add exact zeros.
    assert_eq!(values(&full), values(&cut));
}

// ---- conv -------------------------------------------------------------------------------------

/// Exact convolution and its bound.
fn conv_reference(x: &[f32], w: &[f32], b: Option<&[f32]>, d: ConvDims) -> (Vec<f64>, Vec<f64>) {
    let (cin_g, cout_g) = (d.c_in / d.groups, d.c_out / d.groups);
    let k = (cin_g * d.kh * d.kw) as f64;
    let (mut want, mut bound) = (Vec::new(), Vec::new());
    for n in 0..d.n {
        for o in 0..d.c_out {
            let g = o / cout_g;
            for oy in 0..d.oh {
                for ox in 0..d.ow {
                    let (mut s, mut abs) = (0.0f64, 0.0f64);
                    for c in 0..cin_g {
                        for ky in 0..d.kh {
                            for kx in 0..d.kw {
                                let iy = (oy * d.stride + ky) as i64 - d.padding as i64;
                                let ix = (ox * d.stride + kx) as i64 - d.padding as i64;
                                if iy < 0 || ix < 0 || iy >= d.h as i64 || ix >= d.w as i64 {
                                    continue;
                                }
                                let xv = x[((n * d.c_in + g * cin_g + c) * d.h + iy as usize)
                                    * d.w
                                    + ix as usize];
                                let wv = w[((o * cin_g + c) * d.kh + ky) * d.kw + kx];
                                let p = f64::from(xv) * f64::from(wv);
                                s += p;
                                abs += p.abs();
                            }
                        }
                    }
                    let bo = b.map_or(0.0, |b| f64::from(b[o]));
                    want.push(s + bo);
                    bound.push((k + 2.0) * EPS * (abs + bo.abs()));
                }
            }
        }
    }
    (want, bound)
}

#[allow(clippy::too_many_arguments)]
fn conv_case(
    device: &Device,
    n: usize,
    c_in: usize,
    hw: (usize, usize),
    c_out: usize,
    k: usize,
    conv: Conv2d,
    bias: bool,
    seed: u64,
) {
    let (h, w) = hw;
    let cin_g = c_in / conv.groups;
    let x = random_f32(n * c_in * h * w, seed);
    let wt = random_f32(c_out * cin_g * k * k, seed + 1);
    let b = random_f32(c_out, seed + 2);
    let oh = (h + 2 * conv.padding - k) / conv.stride + 1;
    let ow = (w + 2 * conv.padding - k) / conv.stride + 1;
    let bias_t = on(device, "b", vec![c_out], &b);
    let y = conv::conv2d(
        &on(device, "x", vec![n, c_in, h, w], &x),
        &on(device, "w", vec![c_out, cin_g, k, k], &wt),
        bias.then_some(&bias_t),
        conv,
    )
    .unwrap();
    assert_eq!(y.shape().dims(), &[n, c_out, oh, ow]);
    let d = ConvDims {
        n,
        c_in,
        h,
        w,
        c_out,
        kh: k,
        kw: k,
        oh,
        ow,
        stride: conv.stride,
        padding: conv.padding,
        groups: conv.groups,
    };
    let (want, bound) = conv_reference(&x, &wt, bias.then_some(&b[..]), d);
    let what = format!("conv {d:?} bias {bias} on {}", device.describe());
    let got = values(&y);
    check(&what, &got, &want, &bound);
    // Every GPU kernel sums like the twin: bit for bit where products and sums are each rounded.
    if !matches!(device, Device::Cpu) && !fma::fuses_multiply_add(device) {
        // The twin: the same convolution on the CPU device.
        let cpu = |name: &str, dims: Vec<usize>, v: &[f32]| on(&Device::Cpu, name, dims, v);
        let bias_t = cpu("b", vec![c_out], &b);
        let twin = values(
            &conv::conv2d(
                &cpu("x", vec![n, c_in, h, w], &x),
                &cpu("w", vec![c_out, cin_g, k, k], &wt),
                bias.then_some(&bias_t),
                conv,
            )
            .unwrap(),
        );
        let differ = got
            .iter()
            .zip(&twin)
            .filter(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(differ.count(), 0, "{what}: GPU and twin differ");
    }
}

#[test]
fn conv2d_within_its_bound() {
    let c = |stride, padding, groups| Conv2d {
        stride,
        padding,
        groups,
    };
    for device in [Device::gpu().unwrap(), Device::Cpu, paged_gpu()] {
        for bias in [true, false] {
            let s = u64::from(bias);
            // Dense 3x3, stride 2, pad 1, odd sizes (MobileNetV2's stem on a small image).
            conv_case(&device, 1, 3, (9, 11), 5, 3, c(2, 1, 1), bias, 100 + s);
            // Dense 3x3, stride 1, pad 0 and 1, a batch of 2.
            conv_case(&device, 2, 4, (7, 6), 6, 3, c(1, 0, 1), bias, 102 + s);
            conv_case(&device, 2, 4, (7, 6), 6, 3, c(1, 1, 1), bias, 104 + s);
            // Depthwise 3x3 stride 1 and 2 (groups == c_in == c_out).
            conv_case(&device, 2, 5, (7, 7), 5, 3, c(1, 1, 5), bias, 106 + s);
            conv_case(&device, 1, 8, (9, 8), 8, 3, c(2, 1, 8), bias, 108 + s);
            // Groups 2.
            conv_case(&device, 1, 6, (8, 5), 4, 3, c(1, 0, 2), bias, 110 + s);
            conv_case(&device, 1, 4, (5, 5), 6, 3, c(2, 1, 2), bias, 112 + s);
            // Pointwise 1x1, which the GPU runs as matrix products (a batch of 2; more rows,
            // columns and channels than one tile and one step along k), and a 1x1 with stride
            // 2, which takes the general kernel.
            conv_case(&device, 2, 8, (5, 7), 12, 1, c(1, 0, 1), bias, 114 + s);
            conv_case(&device, 1, 8, (5, 7), 6, 1, c(1, 0, 1), bias, 116 + s);
            conv_case(&device, 2, 40, (9, 9), 70, 1, c(1, 0, 1), bias, 122 + s);
            conv_case(&device, 1, 8, (5, 7), 8, 1, c(2, 0, 1), bias, 118 + s);
            // A 1x1 with padding 1 (zeros ring the output).
            conv_case(&device, 1, 3, (4, 4), 4, 1, c(1, 1, 1), bias, 120 + s);
            // 5x5 with groups 3; stride 4, whose row of eight outputs spans more input columns
            // than conv2d_rows holds (the one-output kernel).
            conv_case(&device, 2, 6, (11, 19), 6, 5, c(2, 2, 3), bias, 124 + s);
            conv_case(&device, 1, 4, (13, 37), 6, 3, c(4, 1, 1), bias, 126 + s);
        }
    }
    // MobileNetV2's stem as it runs: [1, 3, 224, 224], 32 channels, 3x3 stride 2 pad 1.
    conv_case(
        &Device::gpu().unwrap(),
        1,
        3,
        (224, 224),
        32,
        3,
        c(2, 1, 1),
        false,
        130,
    );
}

/// Exact 1-D convolution `[n, c_out, l_out]` (torch's conv1d, written plainly in f64) and its
/// bound `(K + 2) eps (sum |w x| + |bias|)`, K = c_in * k terms.
#[allow(clippy::too_many_arguments)]
fn conv1d_reference(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    (n, c_in, l): (usize, usize, usize),
    (c_out, k): (usize, usize),
    stride: usize,
    padding: usize,
) -> (Vec<f64>, Vec<f64>) {
    let l_out = (l + 2 * padding - k) / stride + 1;
    let terms = (c_in * k) as f64;
    let (mut want, mut bound) = (Vec::new(), Vec::new());
    for b_i in 0..n {
        for o in 0..c_out {
            for t in 0..l_out {
                let (mut s, mut abs) = (0.0f64, 0.0f64);
                for i in 0..c_in {
                    for j in 0..k {
                        let pos = (stride * t + j) as i64 - padding as i64;
                        if pos < 0 || pos >= l as i64 {
                            continue;
                        }
                        let p = f64::from(w[(o * c_in + i) * k + j])
                            * f64::from(x[(b_i * c_in + i) * l + pos as usize]);
                        s += p;
                        abs += p.abs();
                    }
                }
                let bo = b.map_or(0.0, |b| f64::from(b[o]));
                want.push(s + bo);
                bound.push((terms + 2.0) * EPS * (abs + bo.abs()));
            }
        }
    }
    (want, bound)
}

/// `[n, c, l]` to `[n, l, c]`.
fn channels_last(v: &[f64], n: usize, c: usize, l: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for b in 0..n {
        for o in 0..c {
            for t in 0..l {
                out[(b * l + t) * c + o] = v[(b * c + o) * l + t];
            }
        }
    }
    out
}

#[test]
fn conv1d_within_its_bound() {
    // (n, c_in, l), (c_out, k), stride, padding: Whisper's two layers (kernel 3, padding 1,
    // strides 1 and 2) at small sizes with lengths that are not multiples of the eight outputs
    // per invocation, a pointwise k = 1 (the matrix-product path when channels come first), a
    // kernel of 5 with stride 3, and Whisper's second layer at its own size on the GPU below.
    let cases = [
        ((1, 5, 23), (7, 3), 1, 1),
        ((2, 6, 19), (4, 3), 2, 1),
        ((1, 3, 8), (5, 1), 1, 0),
        ((2, 4, 30), (3, 5), 3, 2),
        ((1, 70, 41), (9, 3), 2, 1),
    ];
    for device in [Device::gpu().unwrap(), Device::Cpu, paged_gpu()] {
        for (i, &((n, c_in, l), (c_out, k), stride, padding)) in cases.iter().enumerate() {
            for (bias, last) in [(true, false), (false, false), (true, true), (false, true)] {
                let seed = 300 + 10 * i as u64;
                let x = random_f32(n * c_in * l, seed);
                let w = random_f32(c_out * c_in * k, seed + 1);
                let b = random_f32(c_out, seed + 2);
                let conv = conv::Conv1d {
                    stride,
                    padding,
                    channels_last: last,
                };
                let run = |dev: &Device| {
                    let bias_t = on(dev, "b", vec![c_out], &b);
                    conv::conv1d(
                        &on(dev, "x", vec![n, c_in, l], &x),
                        &on(dev, "w", vec![c_out, c_in, k], &w),
                        bias.then_some(&bias_t),
                        conv,
                    )
                    .unwrap()
                };
                let y = run(&device);
                let l_out = (l + 2 * padding - k) / stride + 1;
                let dims = if last {
                    [n, l_out, c_out]
                } else {
                    [n, c_out, l_out]
                };
                assert_eq!(y.shape().dims(), &dims);
                let (mut want, mut bound) = conv1d_reference(
                    &x,
                    &w,
                    bias.then_some(&b[..]),
                    (n, c_in, l),
                    (c_out, k),
                    stride,
                    padding,
                );
                if last {
                    want = channels_last(&want, n, c_out, l_out);
                    bound = channels_last(&bound, n, c_out, l_out);
                }
                let what = format!(
                    "conv1d case {i} {conv:?} bias {bias} on {}",
                    device.describe()
                );
                let got = values(&y);
                check(&what, &got, &want, &bound);
                if !matches!(device, Device::Cpu) && !fma::fuses_multiply_add(&device) {
                    let twin = values(&run(&Device::Cpu));
                    let differ = got
                        .iter()
                        .zip(&twin)
                        .filter(|(a, b)| a.to_bits() != b.to_bits());
                    assert_eq!(differ.count(), 0, "{what}: GPU and twin differ");
                }
            }
        }
    }
    // Whisper tiny's second layer as it runs: [1, 384, 3000] -> [1500, 384], stride 2, pad 1.
    let (c, l) = (384, 3000);
    let x = random_f32(c * l, 350);
    let w = random_f32(c * c * 3, 351);
    let b = random_f32(c, 352);
    let gpu = Device::gpu().unwrap();
    let y = conv::conv1d(
        &on(&gpu, "x", vec![1, c, l], &x),
        &on(&gpu, "w", vec![c, c, 3], &w),
        Some(&on(&gpu, "b", vec![c], &b)),
        conv::Conv1d {
            stride: 2,
            padding: 1,
            channels_last: true,
        },
    )
    .unwrap();
    assert_eq!(y.shape().dims(), &[1, 1500, c]);
    let (want, bound) = conv1d_reference(&x, &w, Some(&b), (1, c, l), (c, 3), 2, 1);
    let want = channels_last(&want, 1, c, 1500);
    let bound = channels_last(&bound, 1, c, 1500);
    check(
        "conv1d Whisper conv2 on lavapipe",
        &values(&y),
        &want,
        &bound,
    );
}

#[test]
fn avg_pool_within_its_bound() {
    for device in [Device::gpu().unwrap(), Device::Cpu, paged_gpu()] {
        for (k, dims) in [
            [2usize, 5, 7, 7],
            [1, 3, 1, 1],
            [1, 1280, 7, 7],
            [3, 2, 5, 9],
        ]
        .into_iter()
        .enumerate()
        {
            let n: usize = dims.iter().product();
            let plane = dims[2] * dims[3];
            let x: Vec<f32> = random_f32(n, 140 + k as u64)
                .iter()
                .map(|v| v + 0.25)
                .collect();
            let y = conv::avg_pool_global(&on(&device, "x", dims.to_vec(), &x)).unwrap();
            assert_eq!(y.shape().dims(), &dims[..2]);
            let (mut want, mut bound) = (Vec::new(), Vec::new());
            for p in x.chunks_exact(plane) {
                let s: f64 = p.iter().map(|&v| f64::from(v)).sum();
                let a: f64 = p.iter().map(|&v| f64::from(v).abs()).sum();
                want.push(s / plane as f64);
                bound.push((plane as f64 + 2.0) * EPS * a / plane as f64);
            }
            check(
                &format!("avg_pool {dims:?} on {}", device.describe()),
                &values(&y),
                &want,
                &bound,
            );
        }
    }
}

/// MobileNetV2's tail on the GPU without readback between ops: a depthwise and a pointwise
/// convolution, pooling, then softmax, against the same chain of twins.
#[test]
fn ops_compose_on_the_device() {
    let gpu = Device::gpu().unwrap();
    let x = random_f32(16 * 9 * 9, 150);
    let dw = random_f32(16 * 9, 151);
    let pw = random_f32(24 * 16, 152);
    let run = |device: &Device| {
        let h = conv::conv2d(
            &on(device, "x", vec![1, 16, 9, 9], &x),
            &on(device, "dw", vec![16, 1, 3, 3], &dw),
            None,
            Conv2d {
                stride: 2,
                padding: 1,
                groups: 16,
            },
        )
        .unwrap();
        let h = conv::conv2d(
            &h,
            &on(device, "pw", vec![24, 16, 1, 1], &pw),
            None,
            Conv2d::default(),
        )
        .unwrap();
        let h = conv::avg_pool_global(&h).unwrap();
        values(&softmax::softmax(&h).unwrap())
    };
    let (g, c) = (run(&gpu), run(&Device::Cpu));
    assert_eq!(g.len(), 24);
    for (a, b) in g.iter().zip(&c) {
        // Each step's bound is far below 1e-5 here; the chain adds them.
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-3), "{a} vs {b}");
    }
}

// ---- errors -----------------------------------------------------------------------------------

#[test]
fn bad_inputs_are_typed_errors() {
    let gpu = Device::gpu().unwrap();
    for device in [Device::Cpu, gpu.clone()] {
        let t = |dims: Vec<usize>| {
            let n = dims.iter().product();
            on(&device, "t", dims, &vec![0.5; n])
        };
        let half = Tensor::from_bytes(
            "h",
            DType::F16,
            Shape::new(vec![2, 4]).unwrap(),
            vec![0; 16],
        )
        .unwrap()
        .to_device(&device)
        .unwrap();
        let scalar = t(vec![]);
        // norm
        assert!(matches!(
            norm::layer_norm(&scalar, &t(vec![1]), &t(vec![1]), 1e-5),
            Err(Error::OpRank { .. })
        ));
        assert!(matches!(
            norm::layer_norm(&t(vec![2, 4]), &t(vec![3]), &t(vec![4]), 1e-5),
            Err(Error::ShapeMismatch {
                op: "layer_norm",
                ..
            })
        ));
        assert!(matches!(
            norm::rms_norm(&t(vec![2, 4]), &t(vec![1, 4]), 1e-5),
            Err(Error::OpRank { .. })
        ));
        assert!(matches!(
            norm::rms_norm(&half, &t(vec![4]), 1e-5),
            Err(Error::OpDType {
                dtype: DType::F16,
                ..
            })
        ));
        // softmax
        assert!(matches!(
            softmax::softmax(&scalar),
            Err(Error::OpRank { .. })
        ));
        assert!(matches!(
            softmax::softmax(&half),
            Err(Error::OpDType { .. })
        ));
        // embedding
        let table = t(vec![10, 4]);
        assert!(matches!(
            embedding::embedding(&table, &[0, 10]),
            Err(Error::OpIndex {
                index: 10,
                len: 10,
                ..
            })
        ));
        assert!(matches!(
            embedding::embedding_i64(&table, &[3, -1]),
            Err(Error::OpIndex { .. })
        ));
        assert!(matches!(
            embedding::embedding_i64(&table, &[1 << 40]),
            Err(Error::OpIndex { .. })
        ));
        assert!(matches!(
            embedding::embedding(&t(vec![40]), &[0]),
            Err(Error::OpRank { .. })
        ));
        let q81 = Tensor::from_bytes(
            "q",
            DType::Q8_1,
            Shape::new(vec![1, 32]).unwrap(),
            vec![0; 36],
        )
        .unwrap()
        .to_device(&device)
        .unwrap();
        assert!(matches!(
            embedding::embedding(&q81, &[0]),
            Err(Error::OpDType {
                dtype: DType::Q8_1,
                ..
            })
        ));
        // attention
        let (q, k) = (t(vec![2, 3, 8]), t(vec![2, 5, 8]));
        assert!(matches!(
            attention::attention(&q, &k, &k, 2, Some(&[1; 9]), None),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            attention::attention(&q, &k, &k, 3, None, None),
            Err(Error::OpArgument {
                argument: "heads",
                value: 3,
                ..
            })
        ));
        assert!(matches!(
            attention::attention(&q, &k, &k, 0, None, None),
            Err(Error::OpArgument { .. })
        ));
        assert!(matches!(
            attention::attention(&q, &t(vec![1, 5, 8]), &k, 2, None, None),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            attention::attention(&q, &k, &t(vec![2, 4, 8]), 2, None, None),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            attention::attention(&t(vec![6, 8]), &k, &k, 2, None, None),
            Err(Error::OpRank { .. })
        ));
        // conv
        let x = t(vec![1, 4, 5, 5]);
        let conv = |w: &Tensor, b: Option<&Tensor>, c| conv::conv2d(&x, w, b, c);
        let dense = Conv2d::default();
        assert!(matches!(
            conv(&t(vec![2, 3, 3, 3]), None, dense),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            conv(&t(vec![2, 4, 3, 3]), Some(&t(vec![3])), dense),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            conv(&t(vec![2, 4, 7, 7]), None, dense),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            conv(&t(vec![2, 4, 3, 3]), None, Conv2d { stride: 0, ..dense }),
            Err(Error::OpArgument {
                argument: "stride",
                ..
            })
        ));
        assert!(matches!(
            conv(&t(vec![2, 4, 3, 3]), None, Conv2d { groups: 0, ..dense }),
            Err(Error::OpArgument {
                argument: "groups",
                ..
            })
        ));
        assert!(matches!(
            conv(&t(vec![3, 2, 3, 3]), None, Conv2d { groups: 2, ..dense }),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            conv(&t(vec![2, 4, 3]), None, dense),
            Err(Error::OpRank { .. })
        ));
        // conv1d: channels that differ, a bias of the wrong length, a kernel longer than the
        // padded input, stride 0, wrong ranks.
        let x1 = t(vec![1, 4, 5]);
        let c1 = conv::Conv1d {
            stride: 1,
            padding: 1,
            channels_last: false,
        };
        let conv1 = |x: &Tensor, w: &Tensor, b: Option<&Tensor>, c| conv::conv1d(x, w, b, c);
        assert!(matches!(
            conv1(&x1, &t(vec![2, 3, 3]), None, c1),
            Err(Error::ShapeMismatch { op: "conv1d", .. })
        ));
        assert!(matches!(
            conv1(&x1, &t(vec![2, 4, 3]), Some(&t(vec![3])), c1),
            Err(Error::ShapeMismatch { op: "conv1d", .. })
        ));
        assert!(matches!(
            conv1(&x1, &t(vec![2, 4, 8]), None, c1),
            Err(Error::ShapeMismatch { op: "conv1d", .. })
        ));
        assert!(matches!(
            conv1(
                &x1,
                &t(vec![2, 4, 3]),
                None,
                conv::Conv1d { stride: 0, ..c1 }
            ),
            Err(Error::OpArgument {
                argument: "stride",
                ..
            })
        ));
        assert!(matches!(
            conv1(&t(vec![4, 5]), &t(vec![2, 4, 3]), None, c1),
            Err(Error::OpRank { op: "conv1d", .. })
        ));
        assert!(matches!(
            conv1(&x1, &t(vec![2, 4, 1, 3]), None, c1),
            Err(Error::OpRank { op: "conv1d", .. })
        ));
        assert!(matches!(
            conv::avg_pool_global(&t(vec![2, 3, 4])),
            Err(Error::OpRank { .. })
        ));
        assert!(matches!(
            conv::avg_pool_global(&t(vec![1, 2, 0, 3])),
            Err(Error::OpArgument { .. })
        ));
    }
    // Operands on different devices.
    let cpu = |dims: Vec<usize>| {
        let n = dims.iter().product();
        on(&Device::Cpu, "c", dims, &vec![0.5; n])
    };
    let g = |dims: Vec<usize>| {
        let n = dims.iter().product();
        on(&gpu, "g", dims, &vec![0.5; n])
    };
    assert!(matches!(
        norm::layer_norm(&g(vec![2, 4]), &cpu(vec![4]), &g(vec![4]), 1e-5),
        Err(Error::DeviceMismatch { .. })
    ));
    assert!(matches!(
        norm::rms_norm(&cpu(vec![2, 4]), &g(vec![4]), 1e-5),
        Err(Error::DeviceMismatch { .. })
    ));
    assert!(matches!(
        attention::attention(
            &g(vec![1, 2, 4]),
            &cpu(vec![1, 2, 4]),
            &g(vec![1, 2, 4]),
            1,
            None,
            None
        ),
        Err(Error::DeviceMismatch { .. })
    ));
    let other = Device::gpu().unwrap();
    let o = |dims: Vec<usize>| {
        let n = dims.iter().product();
        on(&other, "o", dims, &vec![0.5; n])
    };
    assert!(matches!(
        conv::conv2d(
            &g(vec![1, 2, 2, 2]),
            &o(vec![1, 2, 1, 1]),
            None,
            Conv2d::default()
        ),
        Err(Error::DeviceMismatch { .. })
    ));
}

/// Empty shapes give empty results, not errors or dispatches over nothing.
#[test]
fn empty_shapes() {
    for device in [Device::gpu().unwrap(), Device::Cpu] {
        let x = on(&device, "x", vec![0, 5], &[]);
        let w = on(&device, "w", vec![5], &[1.0; 5]);
        assert_eq!(
            norm::layer_norm(&x, &w, &w, 1e-5).unwrap().shape().dims(),
            &[0, 5]
        );
        assert_eq!(softmax::softmax(&x).unwrap().shape().dims(), &[0, 5]);
        let x = on(&device, "x", vec![3, 0], &[]);
        assert!(values(&softmax::softmax(&x).unwrap()).is_empty());
        let q = on(&device, "q", vec![0, 4, 8], &[]);
        assert_eq!(
            attention::attention(&q, &q, &q, 2, Some(&[]), None)
                .unwrap()
                .shape()
                .dims(),
            &[0, 4, 8]
        );
    }
}

/// Timings on this machine's adapter (not a check): `cargo test --test kernels_nn -- --ignored
/// --nocapture timings`. Each op is run once to compile its pipeline, then timed over 5 runs
/// with the device synchronised.
#[test]
#[ignore]
fn timings() {
    let gpu = Device::gpu().unwrap();
    let time = |what: &str, f: &dyn Fn() -> Tensor| {
        f();
        gpu.sync().unwrap();
        let t = std::time::Instant::now();
        for _ in 0..5 {
            f();
        }
        gpu.sync().unwrap();
        println!("{what}: {:.2} ms", t.elapsed().as_secs_f64() * 200.0);
    };
    let t = |dims: Vec<usize>, seed| {
        let n = dims.iter().product();
        on(&gpu, "t", dims, &random_f32(n, seed))
    };
    let dense = Conv2d::default();
    let (x, w) = (t(vec![1, 3, 224, 224], 1), t(vec![32, 3, 3, 3], 2));
    time("stem 3x3 s2 [1,3,224,224] -> 32", &|| {
        conv::conv2d(
            &x,
            &w,
            None,
            Conv2d {
                stride: 2,
                padding: 1,
                ..dense
            },
        )
        .unwrap()
    });
    let (x, w) = (t(vec![1, 32, 112, 112], 3), t(vec![32, 1, 3, 3], 4));
    time("depthwise 3x3 s1 [1,32,112,112]", &|| {
        conv::conv2d(
            &x,
            &w,
            None,
            Conv2d {
                stride: 1,
                padding: 1,
                groups: 32,
            },
        )
        .unwrap()
    });
    let w16 = t(vec![16, 32, 1, 1], 5);
    time("pointwise [1,32,112,112] -> 16", &|| {
        conv::conv2d(&x, &w16, None, dense).unwrap()
    });
    let w15 = t(vec![15, 32, 1, 1], 6);
    time("pointwise [1,32,112,112] -> 15", &|| {
        conv::conv2d(&x, &w15, None, dense).unwrap()
    });
    let (x, w) = (t(vec![1, 320, 7, 7], 7), t(vec![1280, 320, 1, 1], 8));
    time("pointwise [1,320,7,7] -> 1280", &|| {
        conv::conv2d(&x, &w, None, dense).unwrap()
    });
    let (x, wn) = (t(vec![128, 384], 9), t(vec![384], 10));
    let s = t(vec![12 * 128, 128], 11);
    for reduce in [Reduce::Workgroup, Reduce::PerInvocation] {
        time(&format!("layer_norm [128,384] {reduce:?}"), &|| {
            norm::layer_norm_with(&x, &wn, &wn, 1e-12, Some(reduce)).unwrap()
        });
        time(&format!("softmax [1536,128] {reduce:?}"), &|| {
            softmax::softmax_with(&s, Some(reduce)).unwrap()
        });
    }
    let q = t(vec![1, 128, 384], 12);
    time("attention [1,128,384] 12 heads", &|| {
        attention::attention(&q, &q, &q, 12, None, None).unwrap()
    });
}
