//! `ops::matmul` and `ops::elementwise`: the GPU kernels (lavapipe here) against their CPU twins
//! (bit for bit where both round each operation the same way, that is, on devices whose shader
//! compiler does not fuse multiply-adds: `fma::fuses_multiply_add`) and against f64
//! references within bounds derived from the formulas (see each check), on random shapes that
//! are not multiples of the tiles (1, 7, 63, 65, 129), batched, transposed, with a bias, with
//! F16/BF16 operands and with operands spread over several pages; typed errors for bad inputs.

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../../../tests/common/erf.rs"]
mod erf;
#[path = "../../../tests/common/fma.rs"]
mod fma;

use mlmf_core::{DType, Error, Shape};
use mlmf_gpu::ops::elementwise;
use mlmf_gpu::ops::matmul::{linear, matmul, Dims, MatmulOptions};
use mlmf_gpu::{Device, GpuOptions, Tensor};

fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_bytes()
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `values` stored as `dtype` (rounded to nearest even), and the values as stored.
fn stored(name: &str, dtype: DType, dims: Vec<usize>, values: &[f32]) -> (Tensor, Vec<f32>) {
    let (bytes, back): (Vec<u8>, Vec<f32>) = match dtype {
        DType::F16 => {
            let h: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
            (
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        DType::BF16 => {
            let h: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
            (
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        _ => (
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            values.to_vec(),
        ),
    };
    let t = Tensor::from_bytes(name, dtype, Shape::new(dims).unwrap(), bytes).unwrap();
    (t, back)
}

/// The exact product (in f64) and, per element, `sum_k |A B| + |bias|`.
fn reference(a: &[f32], b: &[f32], bias: Option<&[f32]>, d: Dims) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0.0; d.batch * d.m * d.n];
    let mut abs = vec![0.0; d.batch * d.m * d.n];
    for p in 0..d.batch {
        for i in 0..d.m {
            for j in 0..d.n {
                let (mut s, mut sa) = (0.0f64, 0.0f64);
                for kk in 0..d.k {
                    let x = if d.trans_a {
                        a[p * d.a_batch_stride + kk * d.m + i]
                    } else {
                        a[p * d.a_batch_stride + i * d.k + kk]
                    };
                    let y = if d.trans_b {
                        b[p * d.b_batch_stride + j * d.k + kk]
                    } else {
                        b[p * d.b_batch_stride + kk * d.n + j]
                    };
                    let prod = f64::from(x) * f64::from(y);
                    s += prod;
                    sa += prod.abs();
                }
                if let Some(bias) = bias {
                    s += f64::from(bias[j]);
                    sa += f64::from(bias[j]).abs();
                }
                c[(p * d.m + i) * d.n + j] = s;
                abs[(p * d.m + i) * d.n + j] = sa;
            }
        }
    }
    (c, abs)
}

/// Every element within `(k + 1) * f32::EPSILON * (sum_k |A B| + |bias|)` of the exact product:
/// k + 1 roundings of additions and k of products, each at most u = eps / 2 relative, give
/// Higham's `γ(k+1) < (k + 1) eps` for these sizes (module doc of `ops::matmul`).
fn check_bound(what: &str, got: &[f32], want: &[f64], abs: &[f64], k: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((g, w), a)) in got.iter().zip(want).zip(abs).enumerate() {
        let bound = (k + 1) as f64 * f64::from(f32::EPSILON) * a;
        let err = (f64::from(*g) - w).abs();
        assert!(
            err <= bound,
            "{what}: element {i}: got {g:e}, want {w:e}, error {err:e} > bound {bound:e}"
        );
    }
}

/// `got` and `want` equal bit for bit; the first difference is reported.
fn same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: element {i}: got {:e}, want {:e}", got[i], want[i]);
    }
}

struct Case {
    a_batch: Vec<usize>,
    b_batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
}

/// `matmul` of random operands on `device` and with the twin, both within the bound of the f64
/// reference, and equal bit for bit where the device does not fuse multiply-adds.
#[allow(clippy::too_many_arguments)]
fn check_matmul(
    device: &Device,
    case: &Case,
    trans_a: bool,
    trans_b: bool,
    with_bias: bool,
    dtypes: [DType; 3],
    seed: u64,
) {
    let Case {
        a_batch,
        b_batch,
        m,
        k,
        n,
    } = case;
    let (m, k, n) = (*m, *k, *n);
    let mut a_dims = a_batch.clone();
    a_dims.extend(if trans_a { [k, m] } else { [m, k] });
    let mut b_dims = b_batch.clone();
    b_dims.extend(if trans_b { [n, k] } else { [k, n] });
    let batch_dims = if a_batch.is_empty() { b_batch } else { a_batch };
    let batch: usize = batch_dims.iter().product();
    let (a, av) = stored(
        "a",
        dtypes[0],
        a_dims.clone(),
        &random_f32(a_dims.iter().product(), seed),
    );
    let (b, bv) = stored(
        "b",
        dtypes[1],
        b_dims.clone(),
        &random_f32(b_dims.iter().product(), seed + 1),
    );
    let (bias, biasv) = stored("bias", dtypes[2], vec![n], &random_f32(n, seed + 2));
    let dims = Dims {
        batch,
        m,
        n,
        k,
        a_batch_stride: if a_batch.is_empty() { 0 } else { m * k },
        b_batch_stride: if b_batch.is_empty() { 0 } else { k * n },
        trans_a,
        trans_b,
    };
    let biasv = with_bias.then_some(biasv.as_slice());
    let (want, abs) = reference(&av, &bv, biasv, dims);
    let what = format!(
        "{a_dims:?}{} x {b_dims:?}{} bias {with_bias} {dtypes:?} on {}",
        if trans_a { "ᵀ" } else { "" },
        if trans_b { "ᵀ" } else { "" },
        device.describe()
    );
    // The twin: the same product on the CPU device.
    let cpu_options = MatmulOptions {
        trans_a,
        trans_b,
        bias: with_bias.then_some(&bias),
    };
    let twin = f32s(&matmul(&a, &b, cpu_options).unwrap());
    check_bound(&format!("{what} (twin)"), &twin, &want, &abs, k);
    let on = |t: &Tensor| t.to_device(device).unwrap();
    let bias_t = on(&bias);
    let options = MatmulOptions {
        trans_a,
        trans_b,
        bias: with_bias.then_some(&bias_t),
    };
    let c = matmul(&on(&a), &on(&b), options).unwrap();
    let mut out_dims = batch_dims.clone();
    out_dims.extend([m, n]);
    assert_eq!(c.shape().dims(), out_dims.as_slice(), "{what}");
    assert_eq!(c.dtype(), DType::F32);
    let got = f32s(&c);
    check_bound(&what, &got, &want, &abs, k);
    // Same products and sums in the same order: equal unless the compiler fuses multiply-adds.
    if !fma::fuses_multiply_add(device) {
        same_bits(&format!("{what}: GPU against twin"), &got, &twin);
    }
}

const SIZES: [usize; 5] = [1, 7, 63, 65, 129];

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    // Every size in every role, in a rotation (all 125 triples would take minutes on lavapipe).
    for (i, &m) in SIZES.iter().enumerate() {
        for j in 0..SIZES.len() {
            let k = SIZES[(i + j) % 5];
            let n = SIZES[(i + 2 * j + 1) % 5];
            out.push(Case {
                a_batch: vec![],
                b_batch: vec![],
                m,
                k,
                n,
            });
        }
    }
    // Batches: both batched, A batched over one B, one A over a batched B, two batch dims.
    for (a_batch, b_batch) in [
        (vec![3], vec![3]),
        (vec![3], vec![]),
        (vec![], vec![2]),
        (vec![2, 2], vec![2, 2]),
        (vec![2, 3], vec![]),
    ] {
        out.push(Case {
            a_batch,
            b_batch,
            m: 63,
            k: 65,
            n: 7,
        });
    }
    out
}

#[test]
fn matmul_random_shapes_every_layout() {
    let gpu = Device::gpu().unwrap();
    let f32s3 = [DType::F32; 3];
    for (c, case) in cases().iter().enumerate() {
        for (t, (ta, tb)) in [(false, false), (false, true), (true, false), (true, true)]
            .into_iter()
            .enumerate()
        {
            let bias = (c + t) % 2 == 0;
            check_matmul(&gpu, case, ta, tb, bias, f32s3, (c * 4 + t) as u64);
        }
    }
    // The twin through the public op on the CPU device.
    for case in cases().iter().step_by(3) {
        check_matmul(&Device::Cpu, case, false, true, true, f32s3, 77);
    }
}

#[test]
fn matmul_f16_and_bf16_operands() {
    let gpu = Device::gpu().unwrap();
    let case = Case {
        a_batch: vec![2],
        b_batch: vec![],
        m: 65,
        k: 63,
        n: 7,
    };
    for (i, dtypes) in [
        [DType::F32, DType::F16, DType::F32],
        [DType::F16, DType::F16, DType::F16],
        [DType::BF16, DType::F32, DType::BF16],
        [DType::F16, DType::BF16, DType::F32],
    ]
    .into_iter()
    .enumerate()
    {
        for device in [&gpu, &Device::Cpu] {
            check_matmul(device, &case, false, true, true, dtypes, 100 + i as u64);
            check_matmul(device, &case, true, false, true, dtypes, 110 + i as u64);
        }
    }
}

/// Operands and the result over several pages (4 KiB pages): gathered, computed, scattered.
#[test]
fn matmul_operands_spanning_pages() {
    let gpu = Device::gpu_with(&GpuOptions {
        max_page_bytes: Some(4096),
        ..Default::default()
    })
    .unwrap();
    let case = Case {
        a_batch: vec![2],
        b_batch: vec![2],
        m: 129,
        k: 65,
        n: 63,
    };
    check_matmul(&gpu, &case, false, false, true, [DType::F32; 3], 200);
    check_matmul(&gpu, &case, true, true, false, [DType::F16; 3], 201);
    let x = Tensor::from_f32("x", vec![129, 65], &random_f32(129 * 65, 3))
        .unwrap()
        .to_device(&gpu)
        .unwrap();
    let mlmf_gpu::Storage::Gpu(g) = x.storage() else {
        panic!("not on the GPU")
    };
    assert!(g.pages().len() > 1);
}

#[test]
fn linear_is_x_times_w_transposed_plus_bias() {
    let gpu = Device::gpu().unwrap();
    let (inp, out) = (63, 65);
    let w = random_f32(out * inp, 5);
    let bias = random_f32(out, 6);
    for device in [gpu, Device::Cpu] {
        for lead in [vec![], vec![7], vec![2, 5]] {
            let rows: usize = lead.iter().product();
            let x = random_f32(rows * inp, 7);
            let mut x_dims = lead.clone();
            x_dims.push(inp);
            let on = |name: &str, dims: Vec<usize>, v: &[f32]| {
                Tensor::from_f32(name, dims, v)
                    .unwrap()
                    .to_device(&device)
                    .unwrap()
            };
            let (xt, wt, bt) = (
                on("x", x_dims.clone(), &x),
                on("w", vec![out, inp], &w),
                on("bias", vec![out], &bias),
            );
            let y = linear(&xt, &wt, Some(&bt)).unwrap();
            let mut y_dims = lead.clone();
            y_dims.push(out);
            assert_eq!(y.shape().dims(), y_dims.as_slice());
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
            let (want, abs) = reference(&x, &w, Some(&bias), dims);
            let got = f32s(&y);
            check_bound(&format!("linear {lead:?}"), &got, &want, &abs, inp);
            // The twin: linear on the CPU device.
            let cpu = |name: &str, dims: Vec<usize>, v: &[f32]| Tensor::from_f32(name, dims, v);
            let (xc, wc, bc) = (
                cpu("x", x_dims, &x),
                cpu("w", vec![out, inp], &w),
                cpu("bias", vec![out], &bias),
            );
            let twin = f32s(&linear(&xc.unwrap(), &wc.unwrap(), Some(&bc.unwrap())).unwrap());
            check_bound("linear twin", &twin, &want, &abs, inp);
            if !fma::fuses_multiply_add(&device) {
                same_bits("linear against twin", &got, &twin);
            }
            let no_bias = linear(&xt, &wt, None).unwrap();
            let (want, abs) = reference(&x, &w, None, dims);
            check_bound("linear without bias", &f32s(&no_bias), &want, &abs, inp);
        }
    }
}

#[test]
fn matmul_empty_and_zero_inner_dimension() {
    let gpu = Device::gpu().unwrap();
    for device in [gpu, Device::Cpu] {
        let on = |dims: Vec<usize>, v: &[f32]| {
            Tensor::from_f32("t", dims, v)
                .unwrap()
                .to_device(&device)
                .unwrap()
        };
        // k = 0: C is the bias in every row.
        let bias = on(vec![3], &[1.0, 2.0, 3.0]);
        let options = MatmulOptions {
            bias: Some(&bias),
            ..Default::default()
        };
        let c = matmul(&on(vec![2, 0], &[]), &on(vec![0, 3], &[]), options).unwrap();
        assert_eq!(f32s(&c), [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        let c = matmul(&on(vec![0, 4], &[]), &on(vec![4, 3], &[0.0; 12]), options).unwrap();
        assert_eq!(c.shape().dims(), &[0, 3]);
    }
}

#[test]
fn matmul_bad_inputs_are_typed_errors() {
    let gpu = Device::gpu().unwrap();
    for device in [Device::Cpu, gpu.clone()] {
        let on = |dims: Vec<usize>| {
            let n = dims.iter().product();
            Tensor::from_f32("t", dims, &vec![0.0; n])
                .unwrap()
                .to_device(&device)
                .unwrap()
        };
        let none = MatmulOptions::default();
        let a = on(vec![2, 3]);
        assert!(matches!(
            matmul(&on(vec![3]), &a, none),
            Err(Error::OpRank { op: "matmul", .. })
        ));
        assert!(matches!(
            matmul(&a, &on(vec![4, 2]), none),
            Err(Error::ShapeMismatch { op: "matmul", .. })
        ));
        assert!(matches!(
            matmul(&on(vec![2, 2, 3]), &on(vec![3, 3, 4]), none),
            Err(Error::ShapeMismatch { .. })
        ));
        let b = on(vec![3, 4]);
        let bad_bias = on(vec![3]);
        let long = MatmulOptions {
            bias: Some(&bad_bias),
            ..none
        };
        assert!(matches!(
            matmul(&a, &b, long),
            Err(Error::ShapeMismatch { .. })
        ));
        let flat_bias = on(vec![1, 4]);
        let flat = MatmulOptions {
            bias: Some(&flat_bias),
            ..none
        };
        assert!(matches!(matmul(&a, &b, flat), Err(Error::OpRank { .. })));
        let q = Tensor::from_bytes(
            "q",
            DType::Q8_0,
            Shape::new(vec![1, 32]).unwrap(),
            vec![0; 34],
        )
        .unwrap()
        .to_device(&device)
        .unwrap();
        assert!(matches!(
            linear(&on(vec![32]), &q, None),
            Err(Error::OpDType {
                dtype: DType::Q8_0,
                ..
            })
        ));
        assert!(matches!(
            linear(&on(vec![31]), &on(vec![2, 32]), None),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            linear(&on(vec![32]), &on(vec![32]), None),
            Err(Error::OpRank { .. })
        ));
    }
    let cpu = Tensor::from_f32("a", vec![2, 3], &[0.0; 6]).unwrap();
    let on_gpu = Tensor::from_f32("b", vec![3, 2], &[0.0; 6])
        .unwrap()
        .to_device(&gpu)
        .unwrap();
    assert!(matches!(
        matmul(&cpu, &on_gpu, MatmulOptions::default()),
        Err(Error::DeviceMismatch { .. })
    ));
}

/// A product larger than one storage binding is refused with DeviceLimit (the output's pages
/// exist, but the kernel writes C through one binding).
#[test]
fn matmul_larger_than_a_binding_is_device_limit() {
    let gpu = Device::gpu().unwrap();
    let Device::Gpu(g) = &gpu else { unreachable!() };
    let binding = g
        .limits()
        .max_storage_buffer_binding_size
        .min(g.limits().max_buffer_size);
    // The output just above the limit is allocated: 128 MiB on lavapipe, 2 GiB of device memory
    // on NVIDIA's Vulkan driver; a limit above 4 GiB would make this test allocate too much.
    assert!(binding <= 1 << 32, "binding limit {binding}");
    let side = ((binding / 4) as f64).sqrt() as usize + 2;
    let on = |dims: Vec<usize>| {
        let n = dims.iter().product();
        Tensor::from_f32("t", dims, &vec![0.0; n])
            .unwrap()
            .to_device(&gpu)
            .unwrap()
    };
    let r = matmul(
        &on(vec![side, 1]),
        &on(vec![1, side]),
        MatmulOptions::default(),
    );
    assert!(matches!(r, Err(Error::DeviceLimit { .. })), "{r:?}");
}

// ---- elementwise ----------------------------------------------------------------------------

/// Inputs that cover the activations' shapes: a ramp over [-10, 10], the branch point of erf,
/// zeros and random values.
fn activation_inputs() -> Vec<f32> {
    let mut v: Vec<f32> = (0..=4000).map(|i| -10.0 + i as f32 * 0.005).collect();
    v.extend([0.0, -0.0, 1.312_034_8, -1.312_034_8, 6.0, 7.5, -3.0, 1e-30]);
    v.extend(random_f32(1000, 9).iter().map(|x| x * 8.0));
    v
}

/// gelu (erf) within `0.5 |x| (E + 0.8 |x| u + 2 u) + u |y|` of the exact value, u = 2^-24:
/// E bounds erf's absolute error (twin 1.35e-7: Juffa's 1.2e-7 plus exp's rounding; GPU 2.35e-7
/// with WGSL's exp, see the shader), the second term the rounding of x / sqrt(2) through erf's
/// slope (at most 2/sqrt(pi)), then the rounding of 1 + erf and of the product.
fn check_gelu(what: &str, x: &[f32], got: &[f32], erf_error: f64) {
    let u = f64::from(f32::EPSILON) / 2.0;
    for (&x, &g) in x.iter().zip(got) {
        let x64 = f64::from(x);
        let want = 0.5 * x64 * (1.0 + erf::erf64(x64 / std::f64::consts::SQRT_2));
        let bound = 0.5 * x64.abs() * (erf_error + 0.8 * x64.abs() * u + 2.0 * u) + u * want.abs();
        let err = (f64::from(g) - want).abs();
        assert!(
            err <= bound,
            "{what}: gelu({x:e}) = {g:e}, want {want:e}, error {err:e} > {bound:e}"
        );
    }
}

/// gelu_tanh within `0.5 |x| (T + 2 u) + u |y|`, where T bounds tanh's absolute error: exp(2v)'s
/// relative error r (twin 1 ulp, GPU `3 + 2|2v|` ulp) enters `2 / (E + 1)` times
/// `2E / (E + 1)²`, plus 4 roundings of at most u each, plus v's own error (6 roundings,
/// `6 u |v|`) through tanh's slope `1 - tanh²`.
fn check_gelu_tanh(what: &str, x: &[f32], got: &[f32], gpu_exp: bool) {
    let u = f64::from(f32::EPSILON) / 2.0;
    for (&x, &g) in x.iter().zip(got) {
        let x64 = f64::from(x);
        let v = 0.797_884_560_802_865_4 * (x64 + 0.044715 * x64 * x64 * x64);
        let t = v.tanh();
        let want = 0.5 * x64 * (1.0 + t);
        let e = (2.0 * v).exp();
        let ulps = if gpu_exp { 3.0 + 4.0 * v.abs() } else { 1.0 };
        let slope = if e.is_finite() {
            2.0 * e / ((e + 1.0) * (e + 1.0))
        } else {
            0.0
        };
        let tanh_error = ulps * 2.0 * u * slope + 4.0 * u + (1.0 - t * t) * 6.0 * u * v.abs();
        let bound = 0.5 * x64.abs() * (tanh_error + 2.0 * u) + u * want.abs();
        let err = (f64::from(g) - want).abs();
        assert!(
            err <= bound,
            "{what}: gelu_tanh({x:e}) = {g:e}, want {want:e}, error {err:e} > {bound:e}"
        );
    }
}

/// tanh as `1 - 2 / (exp(2x) + 1)` within `r 2 slope + 5 u` of the exact value: exp(2x)'s
/// relative error r (twin 1 ulp, GPU `3 + 2|2x|` ulp) through the slope `2E / (E + 1)²`, then
/// the roundings of `E + 1` and of the quotient (each at most u of a quotient below 2) and of
/// `1 - q` (at most u).
fn check_tanh(what: &str, x: &[f32], got: &[f32], gpu_exp: bool) {
    let u = f64::from(f32::EPSILON) / 2.0;
    for (&x, &g) in x.iter().zip(got) {
        let x64 = f64::from(x);
        let want = x64.tanh();
        let e = (2.0 * x64).exp();
        let ulps = if gpu_exp { 3.0 + 4.0 * x64.abs() } else { 1.0 };
        let slope = if e.is_finite() {
            2.0 * e / ((e + 1.0) * (e + 1.0))
        } else {
            0.0
        };
        let bound = ulps * 2.0 * u * slope + 5.0 * u;
        let err = (f64::from(g) - want).abs();
        assert!(
            err <= bound,
            "{what}: tanh({x:e}) = {g:e}, want {want:e}, error {err:e} > {bound:e}"
        );
    }
}

#[test]
fn activations_against_f64_and_twin() {
    let gpu = Device::gpu().unwrap();
    let x = activation_inputs();
    // Paged too: 4 KiB pages hold 1024 f32.
    let paged = Device::gpu_with(&GpuOptions {
        max_page_bytes: Some(4096),
        ..Default::default()
    })
    .unwrap();
    for device in [Device::Cpu, gpu, paged] {
        let on_gpu = device.is_gpu();
        let t = Tensor::from_f32("x", vec![x.len()], &x)
            .unwrap()
            .to_device(&device)
            .unwrap();
        let what = device.describe();
        let erf_error = if on_gpu { 2.35e-7 } else { 1.35e-7 };
        check_gelu(&what, &x, &f32s(&elementwise::gelu(&t).unwrap()), erf_error);
        check_gelu_tanh(
            &what,
            &x,
            &f32s(&elementwise::gelu_tanh(&t).unwrap()),
            on_gpu,
        );
        check_tanh(&what, &x, &f32s(&elementwise::tanh(&t).unwrap()), on_gpu);
        // One correctly rounded operation: exact against f64 and the twin (relu6 up to the sign
        // of zero, which WGSL's max leaves open: `+ 0.0` makes both zeros +0).
        let relu6: Vec<f32> = f32s(&elementwise::relu6(&t).unwrap())
            .iter()
            .map(|v| v + 0.0)
            .collect();
        let want: Vec<f32> = x.iter().map(|v| v.clamp(0.0, 6.0) + 0.0).collect();
        same_bits(&format!("{what}: relu6"), &relu6, &want);
        let scaled = f32s(&elementwise::scale(&t, 0.125).unwrap());
        let want: Vec<f32> = x.iter().map(|v| (f64::from(*v) * 0.125) as f32).collect();
        same_bits(&format!("{what}: scale"), &scaled, &want);
        let scaled = f32s(&elementwise::scale(&t, -3.3).unwrap());
        let want: Vec<f32> = x
            .iter()
            .map(|v| (f64::from(*v) * f64::from(-3.3f32)) as f32)
            .collect();
        same_bits(&format!("{what}: scale"), &scaled, &want);
    }
}

#[test]
fn add_and_mul_same_shape_and_broadcast() {
    let gpu = Device::gpu().unwrap();
    let paged = Device::gpu_with(&GpuOptions {
        max_page_bytes: Some(4096),
        ..Default::default()
    })
    .unwrap();
    let shapes: [(Vec<usize>, Vec<usize>); 7] = [
        (vec![1], vec![1]),
        (vec![7], vec![7]),
        (vec![63, 65], vec![63, 65]),
        (vec![3, 7, 129], vec![129]),
        (vec![3, 7, 65], vec![7, 65]),
        (vec![65], vec![2, 65]),
        (vec![0, 5], vec![5]),
    ];
    for device in [Device::Cpu, gpu, paged] {
        for (s, (ad, bd)) in shapes.iter().enumerate() {
            let (na, nb) = (ad.iter().product(), bd.iter().product());
            let (av, bv) = (random_f32(na, s as u64), random_f32(nb, 50 + s as u64));
            let on = |name: &str, dims: &[usize], v: &[f32]| {
                Tensor::from_f32(name, dims.to_vec(), v)
                    .unwrap()
                    .to_device(&device)
                    .unwrap()
            };
            let (a, b) = (on("a", ad, &av), on("b", bd, &bv));
            let (big, small, out_dims) = if bd.len() <= ad.len() {
                (&av, &bv, ad)
            } else {
                (&bv, &av, bd)
            };
            type Op = fn(&Tensor, &Tensor) -> mlmf_core::Result<Tensor>;
            for (name, op, exact) in [
                (
                    "add",
                    elementwise::add as Op,
                    (|x: f64, y: f64| x + y) as fn(f64, f64) -> f64,
                ),
                ("mul", elementwise::mul, |x, y| x * y),
            ] {
                let got = op(&a, &b).unwrap();
                assert_eq!(got.shape().dims(), out_dims.as_slice());
                let want: Vec<f32> = big
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| exact(f64::from(x), f64::from(small[i % small.len()])) as f32)
                    .collect();
                let what = format!("{name} {ad:?} {bd:?} on {}", device.describe());
                same_bits(&what, &f32s(&got), &want);
                // The twin: the op on the CPU device.
                let cpu =
                    |n: &str, dims: &[usize], v: &[f32]| Tensor::from_f32(n, dims.to_vec(), v);
                let twin = op(&cpu("a", ad, &av).unwrap(), &cpu("b", bd, &bv).unwrap()).unwrap();
                same_bits(&format!("{what} (twin)"), &f32s(&twin), &want);
            }
        }
    }
}

/// Ops compose on the device: each returns a GPU tensor the next one takes, read back once.
#[test]
fn ops_compose_on_the_device() {
    let gpu = Device::gpu().unwrap();
    let (rows, inp, out) = (7, 65, 63);
    let x = random_f32(rows * inp, 1);
    let w = random_f32(out * inp, 2);
    let bias = random_f32(out, 3);
    let on = |d: &Device, name: &str, dims: Vec<usize>, v: &[f32]| {
        Tensor::from_f32(name, dims, v)
            .unwrap()
            .to_device(d)
            .unwrap()
    };
    let run = |d: &Device| {
        let y = linear(
            &on(d, "x", vec![rows, inp], &x),
            &on(d, "w", vec![out, inp], &w),
            None,
        )
        .unwrap();
        let y = elementwise::add(&y, &on(d, "bias", vec![out], &bias)).unwrap();
        let y = elementwise::gelu(&y).unwrap();
        let y = elementwise::scale(&y, 0.5).unwrap();
        assert_eq!(y.device().is_gpu(), d.is_gpu());
        f32s(&y)
    };
    let (g, c) = (run(&gpu), run(&Device::Cpu));
    // Equal up to the GPU's exp inside erf (1e-7 absolute on erf, see check_gelu).
    for (a, b) in g.iter().zip(&c) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn elementwise_bad_inputs_are_typed_errors() {
    let gpu = Device::gpu().unwrap();
    for device in [Device::Cpu, gpu.clone()] {
        let on = |dims: Vec<usize>| {
            let n = dims.iter().product();
            Tensor::from_f32("t", dims, &vec![0.0; n])
                .unwrap()
                .to_device(&device)
                .unwrap()
        };
        assert!(matches!(
            elementwise::add(&on(vec![2, 3]), &on(vec![2])),
            Err(Error::ShapeMismatch { op: "add", .. })
        ));
        assert!(matches!(
            elementwise::mul(&on(vec![2, 3]), &on(vec![3, 3])),
            Err(Error::ShapeMismatch { op: "mul", .. })
        ));
        let h = Tensor::from_bytes("h", DType::F16, Shape::new(vec![2]).unwrap(), vec![0; 4])
            .unwrap()
            .to_device(&device)
            .unwrap();
        assert!(matches!(
            elementwise::gelu(&h),
            Err(Error::OpDType { op: "gelu", .. })
        ));
        assert!(matches!(
            elementwise::add(&on(vec![2]), &h),
            Err(Error::OpDType { op: "add", .. })
        ));
    }
    let cpu = Tensor::from_f32("a", vec![2], &[0.0; 2]).unwrap();
    let on_gpu = cpu.to_device(&gpu).unwrap();
    assert!(matches!(
        elementwise::add(&cpu, &on_gpu),
        Err(Error::DeviceMismatch { op: "add", .. })
    ));
}

/// CI's lavapipe rounds every product and sum (`fma::fuses_multiply_add` finds no fusing), so
/// there the GPU-against-twin checks stay bit for bit.
#[test]
fn lavapipe_does_not_fuse_multiply_adds() {
    let gpu = Device::gpu().unwrap();
    if gpu.describe().contains("llvmpipe") {
        assert!(!fma::fuses_multiply_add(&gpu));
    }
    assert!(!fma::fuses_multiply_add(&Device::Cpu));
}
