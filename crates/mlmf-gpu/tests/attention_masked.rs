//! `ops::attention::masked`: PyTorch's masks (key padding, causal, additive with -inf), the
//! weights, and the fused path, on the GPU and the CPU twins, each against exact f64 attention
//! within the bounds of `ops::attention::masked`'s doc; the fused path also on a shape whose
//! scores do not fit one storage binding.

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::random_f32;

use mlmf_core::Error;
use mlmf_gpu::ops::attention::{self, AttnMask, AttnPath, Dims, MaskedOptions};
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

/// The masks of one case, as the test states them.
#[derive(Clone, Copy, Default)]
struct Masks<'a> {
    key_padding: Option<&'a [bool]>,
    causal: bool,
    /// Values and whether they are per batch item and head.
    additive: Option<(&'a [f32], bool)>,
}

/// Exact attention and weights with their bounds: (output, its bound, weights, their bound),
/// for the three-pass path or (`fused`) the fused one.
struct Reference {
    out: Vec<f64>,
    out_bound: Vec<f64>,
    weights: Vec<f64>,
    weights_bound: Vec<f64>,
}

fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    m: Masks,
    d: Dims,
    scale: f32,
    fused: bool,
) -> Reference {
    let hidden = d.heads * d.head_dim;
    let n = d.seq_k as f64;
    let mut r = Reference {
        out: vec![0.0; d.batch * d.seq_q * hidden],
        out_bound: vec![0.0; d.batch * d.seq_q * hidden],
        weights: Vec::new(),
        weights_bound: Vec::new(),
    };
    let scale = f64::from(scale);
    for b in 0..d.batch {
        for h in 0..d.heads {
            for i in 0..d.seq_q {
                let qrow = &q[(b * d.seq_q + i) * hidden + h * d.head_dim..][..d.head_dim];
                // None where the pair is left out.
                let mut s: Vec<Option<f64>> = vec![None; d.seq_k];
                let mut ds = vec![0.0f64; d.seq_k];
                for j in 0..d.seq_k {
                    if m.key_padding.is_some_and(|p| p[b * d.seq_k + j]) || (m.causal && j > i) {
                        continue;
                    }
                    let mut add = 0.0;
                    if let Some((a, per_head)) = m.additive {
                        let at = i * d.seq_k
                            + j
                            + if per_head {
                                (b * d.heads + h) * d.seq_q * d.seq_k
                            } else {
                                0
                            };
                        if a[at] == f32::NEG_INFINITY {
                            continue;
                        }
                        add = f64::from(a[at]);
                    }
                    let krow = &k[(b * d.seq_k + j) * hidden + h * d.head_dim..][..d.head_dim];
                    let (mut dot, mut abs) = (0.0, 0.0);
                    for (x, y) in qrow.iter().zip(krow) {
                        dot += f64::from(*x) * f64::from(*y);
                        abs += (f64::from(*x) * f64::from(*y)).abs();
                    }
                    let sj = dot * scale + add;
                    s[j] = Some(sj);
                    ds[j] =
                        (d.head_dim as f64 + 2.0) * EPS * scale.abs() * abs + 2.0 * EPS * sj.abs();
                }
                let mx = s.iter().flatten().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let e: Vec<f64> = s
                    .iter()
                    .map(|x| x.map_or(0.0, |x| (x - mx).exp()))
                    .collect();
                let total: f64 = e.iter().sum();
                if total == 0.0 {
                    // Every key left out: exact zeros.
                    r.weights.extend(std::iter::repeat_n(0.0, d.seq_k));
                    r.weights_bound.extend(std::iter::repeat_n(0.0, d.seq_k));
                    continue;
                }
                let p: Vec<f64> = e.iter().map(|e| e / total).collect();
                let t: Vec<f64> = s
                    .iter()
                    .map(|x| x.map_or(0.0, |x| (x - mx).abs()))
                    .collect();
                let mean_ds: f64 = p.iter().zip(&ds).map(|(p, d)| p * d).sum();
                let dp: Vec<f64> = if fused {
                    let spread: f64 = p
                        .iter()
                        .zip(&t)
                        .map(|(p, t)| p * (5.0 * n + 4.0 + 3.0 * t))
                        .sum();
                    (0..d.seq_k)
                        .map(|j| {
                            EPS * p[j] * (7.0 * n + 4.0 + 3.0 * t[j] + spread)
                                + f64::from(f32::MIN_POSITIVE)
                        })
                        .collect()
                } else {
                    let spread: f64 = p.iter().zip(&t).map(|(p, t)| p * (4.0 + 3.0 * t)).sum();
                    (0..d.seq_k)
                        .map(|j| {
                            EPS * p[j] * (n + 8.0 + 3.0 * t[j] + spread)
                                + f64::from(f32::MIN_POSITIVE)
                        })
                        .collect()
                };
                let last = if fused { 2.0 * n + 4.0 } else { n + 1.0 };
                for j in 0..d.seq_k {
                    r.weights.push(p[j]);
                    r.weights_bound
                        .push(2.0 * (p[j] * (ds[j] + mean_ds) + dp[j]));
                }
                for e in 0..d.head_dim {
                    let at = (b * d.seq_q + i) * hidden + h * d.head_dim + e;
                    let (mut acc, mut spread, mut weighted) = (0.0, 0.0, 0.0);
                    for j in 0..d.seq_k {
                        let vj = f64::from(v[(b * d.seq_k + j) * hidden + h * d.head_dim + e]);
                        acc += p[j] * vj;
                        spread += vj.abs() * (p[j] * (ds[j] + mean_ds) + dp[j]);
                        weighted += p[j] * vj.abs();
                    }
                    r.out[at] = acc;
                    r.out_bound[at] = 2.0 * spread + last * EPS * weighted;
                }
            }
        }
    }
    r
}

struct Case {
    d: Dims,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Case {
    fn new(d: Dims, seed: u64) -> Case {
        let hidden = d.heads * d.head_dim;
        let scaled = |n, s| {
            random_f32(n, s)
                .iter()
                .map(|v| v * 2.0)
                .collect::<Vec<f32>>()
        };
        Case {
            d,
            q: scaled(d.batch * d.seq_q * hidden, seed),
            k: scaled(d.batch * d.seq_k * hidden, seed + 1),
            v: random_f32(d.batch * d.seq_k * hidden, seed + 2),
        }
    }

    /// Both paths on `device` against the reference; the weights too.
    fn run(&self, device: &Device, m: Masks, what: &str) {
        let d = self.d;
        let hidden = d.heads * d.head_dim;
        let q = on(device, "q", vec![d.batch, d.seq_q, hidden], &self.q);
        let k = on(device, "k", vec![d.batch, d.seq_k, hidden], &self.k);
        let v = on(device, "v", vec![d.batch, d.seq_k, hidden], &self.v);
        let add = m.additive.map(|(a, per_head)| {
            let dims = if per_head {
                vec![d.batch * d.heads, d.seq_q, d.seq_k]
            } else {
                vec![d.seq_q, d.seq_k]
            };
            on(device, "attn_mask", dims, a)
        });
        let mask = match (&add, m.causal) {
            (Some(a), _) => AttnMask::Additive(a),
            (None, true) => AttnMask::Causal,
            (None, false) => AttnMask::None,
        };
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let what = format!("{what} {d:?} on {}", device.describe());
        let options = MaskedOptions {
            key_padding: m.key_padding,
            mask,
            weights: true,
            path: AttnPath::ThreePass,
            ..Default::default()
        };
        let three = attention::masked(&q, &k, &v, d.heads, &options).unwrap();
        let r = reference(&self.q, &self.k, &self.v, m, d, scale, false);
        assert_eq!(three.output.shape().dims(), &[d.batch, d.seq_q, hidden]);
        check(
            &format!("{what} three-pass output"),
            &values(&three.output),
            &r.out,
            &r.out_bound,
        );
        let w = three.weights.expect("weights asked for");
        assert_eq!(w.shape().dims(), &[d.batch, d.heads, d.seq_q, d.seq_k]);
        check(
            &format!("{what} weights"),
            &values(&w),
            &r.weights,
            &r.weights_bound,
        );

        let options = MaskedOptions {
            weights: false,
            path: AttnPath::Auto,
            ..options
        };
        let fused = attention::masked(&q, &k, &v, d.heads, &options).unwrap();
        assert!(fused.weights.is_none());
        let r = reference(&self.q, &self.k, &self.v, m, d, scale, true);
        check(
            &format!("{what} fused output"),
            &values(&fused.output),
            &r.out,
            &r.out_bound,
        );
    }
}

fn devices() -> Vec<Device> {
    let paged = Device::gpu_with(&GpuOptions {
        max_page_bytes: Some(4096),
        ..GpuOptions::default()
    })
    .unwrap();
    vec![Device::gpu().unwrap(), Device::Cpu, paged]
}

#[test]
fn masked_paths_within_their_bounds() {
    let d = Dims {
        batch: 3,
        heads: 3,
        seq_q: 5,
        seq_k: 11,
        head_dim: 8,
    };
    let case = Case::new(d, 200);
    // Item 0 attends everywhere, item 1 has its last 4 keys padded, item 2 all of them.
    let mut padding = vec![false; 33];
    padding[11 + 7..22].fill(true);
    padding[22..].fill(true);
    // A shared additive mask with -inf holes (row 3 left with none) and finite biases.
    let mut shared = random_f32(5 * 11, 210);
    for (at, x) in shared.iter_mut().enumerate() {
        if at % 4 == 1 || (33..44).contains(&at) {
            *x = f32::NEG_INFINITY;
        }
    }
    let mut per_head = random_f32(9 * 5 * 11, 211);
    for (at, x) in per_head.iter_mut().enumerate() {
        if at % 3 == 0 {
            *x = f32::NEG_INFINITY;
        }
    }
    for device in devices() {
        case.run(&device, Masks::default(), "no mask");
        let m = Masks {
            key_padding: Some(&padding),
            ..Default::default()
        };
        case.run(&device, m, "key padding");
        case.run(&device, Masks { causal: true, ..m }, "key padding + causal");
        case.run(
            &device,
            Masks {
                additive: Some((&shared, false)),
                ..m
            },
            "key padding + shared additive",
        );
        case.run(
            &device,
            Masks {
                additive: Some((&per_head, true)),
                ..Default::default()
            },
            "per-head additive",
        );
    }
    // Few query rows over many keys: the fused path cuts the keys into pieces, some of them
    // with no key left (padding, causal).
    let d = Dims {
        batch: 2,
        heads: 2,
        seq_q: 4,
        seq_k: 300,
        head_dim: 16,
    };
    let case = Case::new(d, 225);
    let mut padding = vec![false; 600];
    padding[300 + 100..].fill(true);
    for device in devices() {
        let m = Masks {
            key_padding: Some(&padding),
            ..Default::default()
        };
        case.run(&device, m, "pieces, padding");
        case.run(
            &device,
            Masks { causal: true, ..m },
            "pieces, padding + causal",
        );
    }
    // Heads wider than one fused chunk (64 columns), and a workgroup's worth of keys.
    let d = Dims {
        batch: 1,
        heads: 2,
        seq_q: 3,
        seq_k: 70,
        head_dim: 80,
    };
    let case = Case::new(d, 220);
    for device in devices() {
        case.run(&device, Masks::default(), "wide heads");
    }
}

/// A row whose keys are all left out is zeros (not NaN, not uniform), in the output and weights.
#[test]
fn fully_masked_rows_are_zeros() {
    let d = Dims {
        batch: 2,
        heads: 2,
        seq_q: 3,
        seq_k: 4,
        head_dim: 4,
    };
    let case = Case::new(d, 230);
    let mut padding = vec![false; 8];
    padding[4..].fill(true);
    for device in devices() {
        let q = on(&device, "q", vec![2, 3, 8], &case.q);
        let k = on(&device, "k", vec![2, 4, 8], &case.k);
        let v = on(&device, "v", vec![2, 4, 8], &case.v);
        for path in [AttnPath::ThreePass, AttnPath::Fused] {
            let a = attention::masked(
                &q,
                &k,
                &v,
                2,
                &MaskedOptions {
                    key_padding: Some(&padding),
                    weights: path == AttnPath::ThreePass,
                    path,
                    ..Default::default()
                },
            )
            .unwrap();
            let out = values(&a.output);
            assert!(out[..24].iter().any(|&x| x != 0.0));
            assert!(out[24..].iter().all(|&x| x == 0.0), "{path:?}: {out:?}");
            if let Some(w) = a.weights {
                let w = values(&w);
                assert!(w[24..].iter().all(|&x| x == 0.0), "{w:?}");
                for row in w[..24].chunks(4) {
                    assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{row:?}");
                }
            }
        }
    }
}

/// The fused path where the scores `[batch, heads, seq_q, seq_k]` are larger than one storage
/// binding (the three-pass path refuses with a typed error): against the CPU twin and exact
/// attention within its bound.
#[test]
fn fused_runs_past_one_storage_binding() {
    let gpu = Device::gpu().unwrap();
    let Device::Gpu(g) = &gpu else { unreachable!() };
    let binding = g
        .limits()
        .max_storage_buffer_binding_size
        .min(g.limits().max_buffer_size);
    // Narrow heads, long keys: k and v (seq_k * 8 floats) fit, the scores (36 * seq_k) do not.
    let (heads, head_dim, seq_q) = (4, 2, 9);
    let seq_k = (binding / (4 * (heads * seq_q) as u64) + 1024) as usize;
    let d = Dims {
        batch: 1,
        heads,
        seq_q,
        seq_k,
        head_dim,
    };
    assert!((heads * seq_q * seq_k * 4) as u64 > binding);
    let case = Case::new(d, 240);
    let mut padding = vec![false; seq_k];
    padding[seq_k - 1000..].fill(true);
    let hidden = heads * head_dim;
    let q = on(&gpu, "q", vec![1, seq_q, hidden], &case.q);
    let k = on(&gpu, "k", vec![1, seq_k, hidden], &case.k);
    let v = on(&gpu, "v", vec![1, seq_k, hidden], &case.v);
    let options = MaskedOptions {
        key_padding: Some(&padding),
        ..Default::default()
    };
    let three = attention::masked(
        &q,
        &k,
        &v,
        heads,
        &MaskedOptions {
            path: AttnPath::ThreePass,
            ..options
        },
    );
    assert!(matches!(three, Err(Error::DeviceLimit { .. })), "{three:?}");
    let fused = values(
        &attention::masked(&q, &k, &v, heads, &options)
            .unwrap()
            .output,
    );
    let m = Masks {
        key_padding: Some(&padding),
        ..Default::default()
    };
    let scale = 1.0 / (head_dim as f32).sqrt();
    let r = reference(&case.q, &case.k, &case.v, m, d, scale, true);
    check("fused past one binding (GPU)", &fused, &r.out, &r.out_bound);
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    let twin = attention::masked(&cpu(&q), &cpu(&k), &cpu(&v), heads, &options).unwrap();
    check(
        "fused past one binding (twin)",
        &values(&twin.output),
        &r.out,
        &r.out_bound,
    );
}

#[test]
fn bad_masks_are_typed_errors() {
    for device in [Device::gpu().unwrap(), Device::Cpu] {
        let t = |name: &str, dims: Vec<usize>| {
            let n = dims.iter().product();
            on(&device, name, dims, &random_f32(n, 250))
        };
        let (q, k) = (t("q", vec![2, 3, 8]), t("k", vec![2, 5, 8]));
        let run = |o: MaskedOptions| attention::masked(&q, &k, &k, 2, &o);
        let r = run(MaskedOptions {
            key_padding: Some(&[false; 9]),
            ..Default::default()
        });
        assert!(
            matches!(r, Err(Error::ShapeMismatch { ref left, .. }) if left == "key_padding_mask"),
            "{r:?}"
        );
        let bad = t("attn_mask", vec![3, 4]);
        let r = run(MaskedOptions {
            mask: AttnMask::Additive(&bad),
            ..Default::default()
        });
        assert!(
            matches!(r, Err(Error::ShapeMismatch { ref left, .. }) if left == "attn_mask"),
            "{r:?}"
        );
        let r = run(MaskedOptions {
            weights: true,
            path: AttnPath::Fused,
            ..Default::default()
        });
        assert!(
            matches!(
                r,
                Err(Error::OpArgument {
                    argument: "weights",
                    ..
                })
            ),
            "{r:?}"
        );
        let r = run(MaskedOptions::default());
        assert!(r.is_ok(), "{r:?}");
    }
}

/// No queries: an empty output; no keys: zeros (every row has all of its keys left out), on
/// both paths and devices.
#[test]
fn empty_shapes() {
    for device in [Device::gpu().unwrap(), Device::Cpu] {
        let t = |name: &str, dims: Vec<usize>| {
            let n = dims.iter().product();
            on(&device, name, dims, &random_f32(n, 260))
        };
        for path in [AttnPath::ThreePass, AttnPath::Fused] {
            let options = MaskedOptions {
                weights: path == AttnPath::ThreePass,
                path,
                ..Default::default()
            };
            let (q, k) = (t("q", vec![2, 0, 8]), t("k", vec![2, 5, 8]));
            let a = attention::masked(&q, &k, &k, 2, &options).unwrap();
            assert_eq!(a.output.shape().dims(), &[2, 0, 8]);
            assert!(values(&a.output).is_empty());
            let (q, k) = (t("q", vec![2, 3, 8]), t("k", vec![2, 0, 8]));
            let a = attention::masked(&q, &k, &k, 2, &options).unwrap();
            assert_eq!(
                values(&a.output),
                vec![0.0; 48],
                "{path:?} on {}",
                device.describe()
            );
            if let Some(w) = a.weights {
                assert_eq!(w.shape().dims(), &[2, 2, 3, 0]);
            }
        }
    }
}

/// Query rows enough that the fused path keeps the keys in one piece, over more keys than one
/// lavapipe invocation may loop over (llvmpipe ends an invocation's loops after 65535 iterations
/// in all; before the pieces were bounded, these shapes came back with most columns 0): GPU and
/// twin within the fused bound of exact attention.
#[test]
fn fused_keys_past_one_invocations_loop_budget() {
    let gpu = Device::gpu().unwrap();
    for (heads, head_dim, seq_q, seq_k) in [(6, 64, 64, 512), (1, 64, 64, 4096), (2, 128, 32, 2000)]
    {
        let d = Dims {
            batch: 1,
            heads,
            seq_q,
            seq_k,
            head_dim,
        };
        let case = Case::new(d, 31);
        let hidden = heads * head_dim;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let r = reference(&case.q, &case.k, &case.v, Masks::default(), d, scale, true);
        for device in [gpu.clone(), Device::Cpu] {
            let q = on(&device, "q", vec![1, seq_q, hidden], &case.q);
            let k = on(&device, "k", vec![1, seq_k, hidden], &case.k);
            let v = on(&device, "v", vec![1, seq_k, hidden], &case.v);
            let options = MaskedOptions {
                path: AttnPath::Fused,
                ..Default::default()
            };
            let out = attention::masked(&q, &k, &v, heads, &options).unwrap();
            check(
                &format!("fused {heads}x{head_dim}, {seq_q} over {seq_k} keys on {device:?}"),
                &values(&out.output),
                &r.out,
                &r.out_bound,
            );
        }
    }
}
