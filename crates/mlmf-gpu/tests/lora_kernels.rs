//! `ops::lora`: merge and BGMV on the GPU (lavapipe here) against the CPU twin (bit for bit where
//! the device does not fuse multiply-adds: `fma::fuses_multiply_add`) and against f64 references
//! (within the rounding bound of the module doc), on random shapes, with
//! W and the stacks spread over several pages, with adapters swapped in place; typed errors for
//! bad inputs; and both ops against PEFT 0.21.2's own merged weights and runtime outputs
//! (`shared/fixtures/lora`, "1e-5 relative").

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../../../tests/common/fma.rs"]
mod fma;

use common::random_f32;

use mlmf_core::{DType, Error, ModelFile, Shape};
use mlmf_gpu::ops::lora::{self, NO_ADAPTER};
use mlmf_gpu::ops::qmatmul;
use mlmf_gpu::{Device, GpuOptions, Storage, Tensor};

fn random_bits(n: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u32
        })
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    f32s(&t.to_bytes().unwrap())
}

/// Bytes of `dtype` (F32, F16 or BF16) holding `v` rounded.
fn encode(dtype: DType, v: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F16 => v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        DType::BF16 => v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => f32s(bytes),
    }
}

fn tensor(name: &str, dtype: DType, dims: Vec<usize>, bytes: Vec<u8>, device: &Device) -> Tensor {
    Tensor::from_bytes(name, dtype, Shape::new(dims).unwrap(), bytes)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn f32_tensor(name: &str, dims: Vec<usize>, v: &[f32], device: &Device) -> Tensor {
    Tensor::from_f32(name, dims, v)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn pages(t: &Tensor) -> usize {
    match t.storage() {
        Storage::Gpu(g) => g.pages().len(),
        Storage::Cpu(_) => 1,
    }
}

/// A GPU whose pages hold at most 4096 bytes, so small tensors span several.
fn paged_gpu() -> Device {
    Device::gpu_with(&GpuOptions {
        max_page_bytes: Some(4096),
        ..GpuOptions::default()
    })
    .unwrap()
}

/// Assert `got` and `want` are the same bytes, reporting the first difference as elements of
/// `dtype`.
fn assert_same_bytes(what: &str, dtype: DType, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if got != want {
        let size = dtype.block_bytes() as usize;
        let i = got
            .chunks_exact(size)
            .zip(want.chunks_exact(size))
            .position(|(g, w)| g != w)
            .unwrap();
        panic!(
            "{what}: element {i}: got {:?} ({:?}), want {:?} ({:?})",
            decode(dtype, &got[i * size..(i + 1) * size]),
            &got[i * size..(i + 1) * size],
            decode(dtype, &want[i * size..(i + 1) * size]),
            &want[i * size..(i + 1) * size],
        );
    }
}

/// Half an ulp of `dtype` at `x` (the error of the final rounding), and 0 for F32, whose
/// rounding error the f32 bound covers.
fn half_ulp(dtype: DType, x: f64) -> f64 {
    let bits = match dtype {
        DType::F16 => 11,
        DType::BF16 => 8,
        _ => return 0.0,
    };
    let min_normal: f64 = if dtype == DType::F16 {
        6.103515625e-5
    } else {
        1.2e-38
    };
    let e = x.abs().max(min_normal).log2().floor();
    2f64.powf(e - f64::from(bits))
}

/// One merge of random values on `device` and with the twin: bit-identical where the device does
/// not fuse multiply-adds, and both within the bound of the f64 reference. Returns the largest
/// error as a fraction of the bound.
#[allow(clippy::too_many_arguments)]
fn check_merge(
    device: &Device,
    dtype: DType,
    out: usize,
    inp: usize,
    rank: usize,
    fan_in_fan_out: bool,
    scale: f32,
    seed: u64,
) -> f64 {
    let w_vals = random_f32(out * inp, seed);
    let wb = encode(dtype, &w_vals);
    let av = random_f32(rank * inp, seed + 1);
    let bv = random_f32(out * rank, seed + 2);
    let w_dims = if fan_in_fan_out {
        vec![inp, out]
    } else {
        vec![out, inp]
    };
    // The twin: the same merge on the CPU device.
    let twin = lora::merge(
        &tensor("w", dtype, w_dims.clone(), wb.clone(), &Device::Cpu),
        &f32_tensor("a", vec![rank, inp], &av, &Device::Cpu),
        &f32_tensor("b", vec![out, rank], &bv, &Device::Cpu),
        scale,
        fan_in_fan_out,
    )
    .unwrap()
    .to_bytes()
    .unwrap();
    let w = tensor("w", dtype, w_dims.clone(), wb.clone(), device);
    let a = f32_tensor("a", vec![rank, inp], &av, device);
    let b = f32_tensor("b", vec![out, rank], &bv, device);
    let got = lora::merge(&w, &a, &b, scale, fan_in_fan_out).unwrap();
    assert_eq!(got.dtype(), dtype);
    assert_eq!(got.shape().dims(), &w_dims[..]);
    assert_eq!(got.name(), "w");
    let what = format!(
        "{dtype} [{out}, {inp}] rank {rank} fan_in_fan_out {fan_in_fan_out} on {}",
        device.describe()
    );
    let got = got.to_bytes().unwrap();
    if !fma::fuses_multiply_add(device) {
        assert_same_bytes(&what, dtype, &got, &twin);
    }

    let w_f32 = decode(dtype, &wb);
    let mut worst = 0.0f64;
    for (who, bytes) in [("twin", &twin), ("device", &got)] {
        let got_f32 = decode(dtype, bytes);
        for e in 0..out * inp {
            let (o, i) = if fan_in_fan_out {
                (e % out, e / out)
            } else {
                (e / inp, e % inp)
            };
            let (mut exact, mut abs) = (0.0f64, 0.0f64);
            for k in 0..rank {
                let p = f64::from(bv[o * rank + k]) * f64::from(av[k * inp + i]);
                exact += p;
                abs += p.abs();
            }
            let s = f64::from(scale);
            let exact = f64::from(w_f32[e]) + s * exact;
            let sum = f64::from(w_f32[e]).abs() + s.abs() * abs;
            let bound = (rank as f64 + 2.0) * f64::from(f32::EPSILON) * sum
                + half_ulp(dtype, exact.abs().max(f64::from(got_f32[e]).abs()));
            let err = (f64::from(got_f32[e]) - exact).abs();
            assert!(
                err <= bound,
                "{what} ({who}): element {e}: got {}, exact {exact}, error {err:e} > {bound:e}",
                got_f32[e]
            );
            if bound > 0.0 {
                worst = worst.max(err / bound);
            }
        }
    }
    worst
}

#[test]
fn merge_matches_the_twin_bit_for_bit_on_random_shapes() {
    let gpu = Device::gpu().unwrap();
    let mut n = 0;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Rank 0 (an empty adapter) and an empty W too.
        for rank in [0, 1, 4, 16] {
            for fan_in_fan_out in [false, true] {
                // Row lengths that are not multiples of the workgroup size (64), odd element
                // counts (a 16-bit W' ends in half a word), and a scale that is not a power of
                // two, so a contracted multiply-add would show.
                for (out, inp) in [(67, 100), (5, 131), (130, 3), (1, 1), (0, 5)] {
                    n += 1;
                    let worst = check_merge(&gpu, dtype, out, inp, rank, fan_in_fan_out, 1.7, n);
                    check_merge(&Device::Cpu, dtype, out, inp, rank, fan_in_fan_out, 1.7, n);
                    assert!(worst <= 1.0);
                }
            }
        }
    }
}

/// W spans several 4 KiB pages (and so does A at rank 16): one dispatch per page overlap,
/// A gathered into one buffer.
#[test]
fn merge_of_a_weight_spanning_pages() {
    let gpu = paged_gpu();
    for (k, dtype) in [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .enumerate()
    {
        for fan_in_fan_out in [false, true] {
            // 301 x 41: odd element count and odd rows; 64 x 1100: rows longer than 1/16 page.
            for (j, (out, inp)) in [(301, 41), (64, 1100)].into_iter().enumerate() {
                let seed = 100 + 10 * k as u64 + j as u64;
                check_merge(&gpu, dtype, out, inp, 16, fan_in_fan_out, -0.37, seed);
                let w = tensor(
                    "w",
                    dtype,
                    vec![out, inp],
                    encode(dtype, &random_f32(out * inp, seed)),
                    &gpu,
                );
                let a = f32_tensor("a", vec![16, inp], &random_f32(16 * inp, 1), &gpu);
                let b = f32_tensor("b", vec![out, 16], &random_f32(16 * out, 2), &gpu);
                let merged = lora::merge(&w, &a, &b, 1.0, false).unwrap();
                assert!(
                    pages(&w) > 1 && pages(&merged) > 1,
                    "{dtype} [{out}, {inp}]"
                );
                // A [16, 1100] takes 70400 bytes.
                assert!(inp < 1000 || pages(&a) > 1);
            }
        }
    }
}

/// f32 values through the GPU's hand-written rounding to f16 and bf16: W = 0, A = 1 and B the
/// values, so W' is each value rounded. Specials (ties, overflow, infinity, NaN, f16 subnormals,
/// underflow) and random bit patterns, against the twin (half's `from_f32`) bit for bit; any NaN
/// equals any NaN (GPU arithmetic may change a NaN's payload). f32 subnormals are left out:
/// WGSL lets a GPU flush them to zero.
#[test]
fn rounding_to_16_bits_matches_half() {
    let gpu = Device::gpu().unwrap();
    let mut targets: Vec<f32> = vec![
        0.0,
        1.0,
        -1.0,
        65504.0,
        65519.996,
        65520.0,
        -65520.0,
        1e5,
        3.4e38,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0x7fc1_2345),
        f32::from_bits(0xff80_0001),
        6.1035156e-5,
        6.1e-5,
        5.9604645e-8,
        2.9802322e-8,
        2.9802326e-8,
        1e-8,
        -3e-6,
        f32::MIN_POSITIVE,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        1.0 + 1.0 / 256.0 + 1.0 / 65536.0,
        2049.0,
        2051.0,
        -2051.0,
    ];
    targets.extend(
        random_bits(4001, 7)
            .into_iter()
            .map(f32::from_bits)
            .filter(|v| !v.is_subnormal()),
    );
    let n = targets.len();
    for dtype in [DType::F16, DType::BF16] {
        let w = tensor("w", dtype, vec![n, 1], vec![0; 2 * n], &gpu);
        let a = f32_tensor("a", vec![1, 1], &[1.0], &gpu);
        let b = f32_tensor("b", vec![n, 1], &targets, &gpu);
        let got = lora::merge(&w, &a, &b, 1.0, false)
            .unwrap()
            .to_bytes()
            .unwrap();
        let twin = lora::merge(
            &tensor("w", dtype, vec![n, 1], vec![0; 2 * n], &Device::Cpu),
            &f32_tensor("a", vec![1, 1], &[1.0], &Device::Cpu),
            &f32_tensor("b", vec![n, 1], &targets, &Device::Cpu),
            1.0,
            false,
        )
        .unwrap()
        .to_bytes()
        .unwrap();
        for (i, t) in targets.iter().enumerate() {
            let g = u16::from_le_bytes([got[2 * i], got[2 * i + 1]]);
            let c = u16::from_le_bytes([twin[2 * i], twin[2 * i + 1]]);
            // 0 + t is t, except -0 + 0 is +0.
            let direct = match dtype {
                DType::F16 => half::f16::from_f32(0.0 + t).to_bits(),
                _ => half::bf16::from_f32(0.0 + t).to_bits(),
            };
            if t.is_nan() {
                let nan = |h: u16| match dtype {
                    DType::F16 => half::f16::from_bits(h).is_nan(),
                    _ => half::bf16::from_bits(h).is_nan(),
                };
                assert!(
                    nan(g) && nan(c),
                    "{dtype}: NaN {:#x}: got {g:#x}",
                    t.to_bits()
                );
            } else {
                assert_eq!(g, c, "{dtype}: {t:e} ({:#x})", t.to_bits());
                assert_eq!(c, direct, "{dtype}: twin, {t:e}");
            }
        }
    }
}

/// A BGMV case: stacks of `slots` adapters of rank up to `rank` (slot s has rank
/// `ranks[s]`, the rest zero), random x, y and bias.
struct Case {
    batch: usize,
    inp: usize,
    out: usize,
    rank: usize,
    x: Vec<f32>,
    y: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    bias: Vec<f32>,
}

impl Case {
    fn new(batch: usize, inp: usize, out: usize, ranks: &[usize], seed: u64) -> Case {
        let rank = ranks.iter().copied().max().unwrap_or(0);
        let slots = ranks.len();
        let mut a = random_f32(slots * rank * inp, seed);
        let mut b = random_f32(slots * out * rank, seed + 1);
        for (s, &r) in ranks.iter().enumerate() {
            for k in r..rank {
                a[(s * rank + k) * inp..(s * rank + k + 1) * inp].fill(0.0);
                for o in 0..out {
                    b[(s * out + o) * rank + k] = 0.0;
                }
            }
        }
        Case {
            batch,
            inp,
            out,
            rank,
            x: random_f32(batch * inp, seed + 2),
            y: random_f32(batch * out, seed + 3),
            a,
            b,
            bias: random_f32(out, seed + 4),
        }
    }

    fn slots(&self) -> usize {
        self.a.len() / (self.rank * self.inp).max(1)
    }

    /// The twin: [`lora::bgmv`] on the CPU device.
    fn twin(&self, rows: &[u32], scales: &[f32], bias: bool) -> Vec<f32> {
        let [y, x, a, b, bi] = self.tensors(&Device::Cpu);
        let got = lora::bgmv(&y, &x, rows, &a, &b, scales, bias.then_some(&bi)).unwrap();
        let got = values(&got);
        assert_eq!(got.len(), self.batch * self.out);
        got
    }

    /// The exact result in f64, and the bound of the module doc (with room):
    /// `2 (in + r_max + 3) eps (|y| + |bias| + |s| sum_k |B| sum_i |A x|)`.
    fn reference(&self, rows: &[u32], scales: &[f32], bias: bool) -> (Vec<f64>, Vec<f64>) {
        let (inp, out, rank) = (self.inp, self.out, self.rank);
        let mut want = vec![0.0; self.batch * out];
        let mut bound = vec![0.0; self.batch * out];
        for bt in 0..self.batch {
            let mut v = vec![0.0f64; rank];
            let mut v_abs = vec![0.0f64; rank];
            let s = rows[bt];
            if s != NO_ADAPTER {
                for k in 0..rank {
                    for i in 0..inp {
                        let p = f64::from(self.a[(s as usize * rank + k) * inp + i])
                            * f64::from(self.x[bt * inp + i]);
                        v[k] += p;
                        v_abs[k] += p.abs();
                    }
                }
            }
            for o in 0..out {
                let y = f64::from(self.y[bt * out + o]);
                let bi = if bias { f64::from(self.bias[o]) } else { 0.0 };
                let (mut d, mut d_abs) = (0.0, 0.0);
                if s != NO_ADAPTER {
                    let sc = f64::from(scales[s as usize]);
                    for k in 0..rank {
                        let bk = f64::from(self.b[(s as usize * out + o) * rank + k]);
                        d += sc * bk * v[k];
                        d_abs += (sc * bk).abs() * v_abs[k];
                    }
                }
                want[bt * out + o] = y + bi + d;
                bound[bt * out + o] = 2.0
                    * (inp + rank + 3) as f64
                    * f64::from(f32::EPSILON)
                    * (y.abs() + bi.abs() + d_abs);
            }
        }
        (want, bound)
    }

    /// Stacks, x, y and bias on `device`.
    fn tensors(&self, device: &Device) -> [Tensor; 5] {
        let slots = self.slots();
        [
            f32_tensor("y", vec![self.batch, self.out], &self.y, device),
            f32_tensor("x", vec![self.batch, self.inp], &self.x, device),
            f32_tensor("a_stack", vec![slots, self.rank, self.inp], &self.a, device),
            f32_tensor("b_stack", vec![slots, self.out, self.rank], &self.b, device),
            f32_tensor("bias", vec![self.out], &self.bias, device),
        ]
    }

    /// [`lora::bgmv`] on `device` against the twin and the f64 reference ([`Case::compare`]).
    fn check(&self, device: &Device, rows: &[u32], scales: &[f32], bias: bool) {
        let [y, x, a, b, bi] = self.tensors(device);
        let got = lora::bgmv(&y, &x, rows, &a, &b, scales, bias.then_some(&bi)).unwrap();
        assert_eq!(got.shape().dims(), &[self.batch, self.out]);
        assert_eq!(got.dtype(), DType::F32);
        self.compare(device, &values(&got), rows, scales, bias);
    }

    /// `got`, a BGMV result from `device`, equals the twin bit for bit where the device does not
    /// fuse multiply-adds, and it and the twin are within the bound of the f64 reference.
    fn compare(&self, device: &Device, got: &[f32], rows: &[u32], scales: &[f32], bias: bool) {
        let twin = self.twin(rows, scales, bias);
        let what = format!(
            "bgmv [{}, {}] -> {} r_max {} rows {rows:?} bias {bias} on {}",
            self.batch,
            self.inp,
            self.out,
            self.rank,
            device.describe()
        );
        assert_eq!(got.len(), twin.len(), "{what}: length");
        if !fma::fuses_multiply_add(device) {
            for (i, (g, t)) in got.iter().zip(&twin).enumerate() {
                assert_eq!(g.to_bits(), t.to_bits(), "{what}: element {i}: {g} vs {t}");
            }
        }
        let (want, bound) = self.reference(rows, scales, bias);
        for (who, values) in [("device", got), ("twin", &twin[..])] {
            for (i, ((g, w), bd)) in values.iter().zip(&want).zip(&bound).enumerate() {
                let err = (f64::from(*g) - w).abs();
                assert!(
                    err <= *bd,
                    "{what} ({who}): element {i}: got {g}, exact {w}, {err:e} > {bd:e}"
                );
            }
        }
    }
}

#[test]
fn bgmv_with_mixed_rows_matches_the_twin_and_the_reference() {
    let gpu = Device::gpu().unwrap();
    let paged = paged_gpu();
    let n = NO_ADAPTER;
    // Slots of rank 1, 4 and 16 in stacks of r_max 16; rows using each slot and none; lengths
    // that are not multiples of the workgroup size.
    let case = Case::new(9, 150, 130, &[1, 4, 16], 11);
    let rows = [0, n, 2, 1, n, 0, 2, 2, 1];
    let scales = [2.0, 0.5, 1.3];
    for device in [&gpu, &paged, &Device::Cpu] {
        for bias in [false, true] {
            case.check(device, &rows, &scales, bias);
        }
    }
    // Everything spans pages on the paged device: y, x, both stacks and Y'.
    let [y, x, a, b, _] = case.tensors(&paged);
    assert!([&y, &x, &a, &b].iter().all(|t| pages(t) > 1));
    let got = lora::bgmv(&y, &x, &rows, &a, &b, &scales, None).unwrap();
    assert!(pages(&got) > 1);
    // Batches of one row, rank 1 only, every row without an adapter, and an empty batch.
    let one = Case::new(1, 64, 3, &[4], 12);
    one.check(&gpu, &[0], &[-0.75], true);
    let r1 = Case::new(5, 33, 130, &[1, 1], 13);
    r1.check(&gpu, &[1, 0, 1, n, 0], &[1.0, 3.0], false);
    r1.check(&gpu, &[n; 5], &[1.0, 3.0], true);
    let empty = Case::new(0, 8, 4, &[2], 14);
    empty.check(&gpu, &[], &[1.0], true);
}

/// Swapping an adapter in place: bgmv after write_slot sees the new slot, the other slots and
/// the base are untouched; also on stacks spanning pages, and a slot written while earlier work
/// still reads the old one.
#[test]
fn write_slot_then_bgmv_sees_the_new_adapter() {
    for device in [Device::gpu().unwrap(), paged_gpu()] {
        let mut case = Case::new(4, 70, 50, &[4, 8, 8], 21);
        let rows = [1, 0, NO_ADAPTER, 2];
        let scales = [1.0, 2.0, 0.5];
        let [y, x, a, b, bias] = case.tensors(&device);
        let before = lora::bgmv(&y, &x, &rows, &a, &b, &scales, Some(&bias)).unwrap();
        let (rank, inp, out) = (case.rank, case.inp, case.out);
        let new_a = random_f32(rank * inp, 99);
        let new_b = random_f32(out * rank, 98);
        lora::write_slot(&a, 1, &new_a).unwrap();
        lora::write_slot(&b, 1, &new_b).unwrap();
        let after = lora::bgmv(&y, &x, &rows, &a, &b, &scales, Some(&bias)).unwrap();
        // `before` was computed from the old stacks.
        case.compare(&device, &values(&before), &rows, &scales, true);
        case.a[rank * inp..2 * rank * inp].copy_from_slice(&new_a);
        case.b[out * rank..2 * out * rank].copy_from_slice(&new_b);
        case.compare(&device, &values(&after), &rows, &scales, true);
        assert_eq!(values(&a), case.a);
        assert_eq!(values(&b), case.b);
        case.check(&device, &rows, &scales, true);
        assert_ne!(values(&before)[..out], values(&after)[..out]);
        // Rows on other slots are the same as before.
        assert_eq!(values(&before)[out..], values(&after)[out..]);
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let gpu = Device::gpu().unwrap();
    for device in [Device::Cpu, gpu.clone()] {
        let z = |name: &str, dims: Vec<usize>| {
            let n = dims.iter().product();
            f32_tensor(name, dims, &vec![0.0; n], &device)
        };
        let h = |dims: Vec<usize>| {
            let n: usize = dims.iter().product();
            tensor("h", DType::F16, dims, vec![0; 2 * n], &device)
        };
        // Merge.
        let (w, a, b) = (z("w", vec![6, 5]), z("a", vec![2, 5]), z("b", vec![6, 2]));
        lora::merge(&w, &a, &b, 1.0, false).unwrap();
        let merge_err = |w: &Tensor, a: &Tensor, b: &Tensor, fan: bool| {
            lora::merge(w, a, b, 1.0, fan).unwrap_err()
        };
        assert!(matches!(
            merge_err(&w, &a, &b, true),
            Error::ShapeMismatch {
                op: "lora merge",
                ..
            }
        ));
        assert!(matches!(
            merge_err(&w, &z("a", vec![2, 4]), &b, false),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            merge_err(&w, &a, &z("b", vec![6, 3]), false),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            merge_err(&w, &a, &z("b", vec![5, 2]), false),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            merge_err(&z("w", vec![1, 6, 5]), &a, &b, false),
            Error::OpRank { .. }
        ));
        assert!(matches!(
            merge_err(&w, &z("a", vec![10]), &b, false),
            Error::OpRank { .. }
        ));
        assert!(matches!(
            merge_err(&w, &h(vec![2, 5]), &b, false),
            Error::OpDType {
                dtype: DType::F16,
                ..
            }
        ));
        let q = tensor("q", DType::Q8_0, vec![6, 32], vec![0; 6 * 34], &device);
        assert!(matches!(
            merge_err(&q, &z("a", vec![2, 32]), &b, false),
            Error::OpDType {
                dtype: DType::Q8_0,
                ..
            }
        ));
        // BGMV: y [2, 6], x [2, 5], stacks of 3 slots of rank 2.
        let (y, x) = (z("y", vec![2, 6]), z("x", vec![2, 5]));
        let (sa, sb) = (z("a", vec![3, 2, 5]), z("b", vec![3, 6, 2]));
        let scales = [1.0; 3];
        lora::bgmv(&y, &x, &[0, NO_ADAPTER], &sa, &sb, &scales, None).unwrap();
        let err = |y: &Tensor, x: &Tensor, rows: &[u32], a: &Tensor, b: &Tensor, s: &[f32]| {
            lora::bgmv(y, x, rows, a, b, s, None).unwrap_err()
        };
        assert!(matches!(
            err(&y, &x, &[0, 3], &sa, &sb, &scales),
            Error::OpIndex {
                op: "lora bgmv",
                index: 3,
                len: 3,
                ..
            }
        ));
        assert!(matches!(
            err(&y, &x, &[0], &sa, &sb, &scales),
            Error::ShapeMismatch { ref left, .. } if left == "rows"
        ));
        assert!(matches!(
            err(&y, &x, &[0, 0], &sa, &sb, &scales[..2]),
            Error::ShapeMismatch { ref left, .. } if left == "scales"
        ));
        assert!(matches!(
            err(&y, &z("x", vec![2, 4]), &[0, 0], &sa, &sb, &scales),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(&z("y", vec![3, 6]), &x, &[0, 0], &sa, &sb, &scales),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(&y, &x, &[0, 0], &sa, &z("b", vec![3, 6, 1]), &scales),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(&y, &x, &[0, 0], &sa, &z("b", vec![2, 6, 2]), &scales),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(&y, &x, &[0, 0], &sa, &z("b", vec![3, 7, 2]), &scales),
            Error::ShapeMismatch { .. }
        ));
        assert!(matches!(
            err(&y, &x, &[0, 0], &z("a", vec![6, 5]), &sb, &scales),
            Error::OpRank { .. }
        ));
        assert!(matches!(
            err(&y, &h(vec![2, 5]), &[0, 0], &sa, &sb, &scales),
            Error::OpDType { .. }
        ));
        let bad_bias = z("bias", vec![5]);
        assert!(matches!(
            lora::bgmv(&y, &x, &[0, 0], &sa, &sb, &scales, Some(&bad_bias)),
            Err(Error::ShapeMismatch { .. })
        ));
        // write_slot.
        let err = lora::write_slot(&sa, 3, &[0.0; 10]).unwrap_err();
        if device.is_gpu() {
            lora::write_slot(&sa, 2, &[1.0; 10]).unwrap();
            assert!(matches!(err, Error::OpIndex { index: 3, .. }));
            assert!(matches!(
                lora::write_slot(&sa, 0, &[0.0; 9]),
                Err(Error::ShapeMismatch { .. })
            ));
            assert!(matches!(
                lora::write_slot(&h(vec![2, 2]), 0, &[0.0; 2]),
                Err(Error::OpDType { .. })
            ));
        } else {
            assert!(matches!(err, Error::OpIndex { .. }));
            assert!(matches!(
                lora::write_slot(&sa, 0, &[0.0; 10]),
                Err(Error::OpDevice { .. })
            ));
        }
    }
    // Operands on different devices.
    let wc = Tensor::from_f32("w", vec![2, 2], &[0.0; 4]).unwrap();
    let wg = wc.to_device(&gpu).unwrap();
    let other = Device::gpu().unwrap();
    let ao = wc.to_device(&other).unwrap();
    assert!(matches!(
        lora::merge(&wg, &wc, &wc, 1.0, false),
        Err(Error::DeviceMismatch { .. })
    ));
    assert!(matches!(
        lora::merge(&wg, &ao, &wg, 1.0, false),
        Err(Error::DeviceMismatch { .. })
    ));
    let stack = Tensor::from_f32("s", vec![1, 2, 2], &[0.0; 4]).unwrap();
    assert!(matches!(
        lora::bgmv(&wg, &wg, &[0, 0], &stack, &stack, &[1.0], None),
        Err(Error::DeviceMismatch { .. })
    ));
}

/// `max |got - exp| <= 1e-5 * max(1, max |exp|)`, the fixtures' bar for LoRA.
fn check_close(what: &str, got: &[f32], exp: &[f32]) -> f64 {
    assert_eq!(got.len(), exp.len(), "{what}: length");
    let scale = exp.iter().fold(1.0f64, |m, v| m.max(f64::from(v.abs())));
    let err = got
        .iter()
        .zip(exp)
        .map(|(g, e)| (f64::from(*g) - f64::from(*e)).abs())
        .fold(0.0, f64::max);
    assert!(
        err <= 1e-5 * scale,
        "{what}: max error {err:e} > {:e}",
        1e-5 * scale
    );
    err / scale
}

/// PEFT's merge_and_unload and its runtime outputs for every targeted module of the fixture in
/// `folder`, at `scale` (alpha / r, or alpha / sqrt(r) with rsLoRA), on the GPU and the CPU.
fn peft_oracle(folder: &str, scale: f32) {
    let dir = common::fixtures().join("lora").join(folder);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("info.json")).unwrap()).unwrap();
    assert_eq!(info["scaling"].as_f64(), Some(f64::from(scale)));
    let base = ModelFile::open(dir.join("base.safetensors")).unwrap();
    let adapter = ModelFile::open(dir.join("adapter/adapter_model.safetensors")).unwrap();
    let merged = ModelFile::open(dir.join("merged.safetensors")).unwrap();
    let io = ModelFile::open(dir.join("io.safetensors")).unwrap();
    let host = |file: &ModelFile, name: &str| values(&Device::Cpu.load(file, name).unwrap());
    let modules = info["targeted_modules"].as_array().unwrap();
    assert_eq!(modules.len(), 6);
    let mut worst = 0.0f64;
    for device in [Device::gpu().unwrap(), Device::Cpu] {
        for m in modules {
            let m = m.as_str().unwrap();
            let what = format!("{folder} {m} on {}", device.describe());
            let w = device.load(&base, &format!("{m}.weight")).unwrap();
            let a_name = format!("base_model.model.{m}.lora_A.weight");
            let b_name = format!("base_model.model.{m}.lora_B.weight");
            let a = device.load(&adapter, &a_name).unwrap();
            let b = device.load(&adapter, &b_name).unwrap();
            let got = lora::merge(&w, &a, &b, scale, false).unwrap();
            let exp = host(&merged, &format!("{m}.weight"));
            worst = worst.max(check_close(&format!("{what} merge"), &values(&got), &exp));

            // Runtime: slot 1 holds the adapter (rank 4 padded to 8), slot 0 another one; rows
            // alternate between slot 1 and no adapter, both ways round.
            let &[out, inp] = w.shape().dims() else {
                panic!("{m}: {:?}", w.shape())
            };
            let (r, r_max) = (a.shape().dims()[0], 8);
            let (av, bv) = (host(&adapter, &a_name), host(&adapter, &b_name));
            let mut a_stack = random_f32(2 * r_max * inp, 5);
            let mut b_stack = random_f32(2 * out * r_max, 6);
            a_stack[r_max * inp..].fill(0.0);
            a_stack[r_max * inp..(r_max + r) * inp].copy_from_slice(&av);
            for o in 0..out {
                let row = &mut b_stack[(out + o) * r_max..(out + o + 1) * r_max];
                row.fill(0.0);
                row[..r].copy_from_slice(&bv[o * r..(o + 1) * r]);
            }
            let a_stack = f32_tensor("a_stack", vec![2, r_max, inp], &a_stack, &device);
            let b_stack = f32_tensor("b_stack", vec![2, out, r_max], &b_stack, &device);
            let x = device.load(&io, &format!("{m}.x")).unwrap();
            let batch = x.shape().dims()[0];
            let y = qmatmul::matmul(&w, &x).unwrap();
            let bias = base
                .tensor(&format!("{m}.bias"))
                .is_ok()
                .then(|| device.load(&base, &format!("{m}.bias")).unwrap());
            let (y_lora, y_base) = (
                host(&io, &format!("{m}.y")),
                host(&io, &format!("{m}.y_base")),
            );
            for first in [1, NO_ADAPTER] {
                let second = if first == 1 { NO_ADAPTER } else { 1 };
                let rows: Vec<u32> = (0..batch)
                    .map(|i| if i % 2 == 0 { first } else { second })
                    .collect();
                let got = lora::bgmv(
                    &y,
                    &x,
                    &rows,
                    &a_stack,
                    &b_stack,
                    &[3.0, scale],
                    bias.as_ref(),
                )
                .unwrap();
                let got = values(&got);
                for (i, &s) in rows.iter().enumerate() {
                    let exp = if s == NO_ADAPTER { &y_base } else { &y_lora };
                    let row = i * out..(i + 1) * out;
                    worst = worst.max(check_close(
                        &format!("{what} bgmv row {i} slot {s:#x}"),
                        &got[row.clone()],
                        &exp[row],
                    ));
                }
            }
        }
    }
    println!("{folder}: largest error {worst:.2e} relative");
}

#[test]
fn peft_standard_merge_and_runtime() {
    peft_oracle("standard", 2.0);
}

#[test]
fn peft_rslora_merge_and_runtime() {
    peft_oracle("rslora", 4.0);
}
