// Element-wise arithmetic and activations on f32 tensors. The launcher and the CPU twin are
// src/ops/elementwise.rs; the twin computes the same formulas (with fma where these use fma).
//
// Binary (add, mul): out[i] = a[a_offset + i] op b[j], j = b_offset + i, or (b_offset + i) % b_len
// when BROADCAST is set in flags (b's shape is a trailing part of a's: a bias [n] over [.., n]).
// Unary (scale, gelu, gelu_tanh, relu6, tanh): out[i] = f(a[a_offset + i]); binding 2 is unused.
// One dispatch per page of the output; each workgroup covers WG * EPT consecutive elements.

struct Params {
    // Elements in this dispatch.
    count: u32,
    // First element of the dispatch in a's page, in b (its page, or all of b when broadcast),
    // and in the output's page.
    a_offset: u32,
    b_offset: u32,
    out_offset: u32,
    // Elements of b (the period of the broadcast).
    b_len: u32,
    flags: u32,
    // The factor of `scale`.
    factor: f32,
    _pad: u32,
}

const BROADCAST: u32 = 1u;

override WG: u32 = 64u;
// Elements per invocation: lavapipe pays a fixed cost per workgroup (see convert.wgsl).
override EPT: u32 = 16u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn run_start(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wg.y * nwg.x + wg.x) * WG * EPT;
}

fn run_end(start: u32) -> u32 {
    return min(params.count, start + WG * EPT);
}

fn b_at(i: u32) -> f32 {
    if (params.flags & BROADCAST) != 0u {
        return b[(params.b_offset + i) % params.b_len];
    }
    return b[params.b_offset + i];
}

// erf in f32 (Norbert Juffa's erff, "Implementation of erff", Stack Overflow 2015): a minimax
// polynomial in x² below |x| = 0.927734375, and 1 - exp(polynomial) above. With a correctly
// rounded exp its error is within 1 ulp; WGSL's exp may be off by 3 + 2|x| ulp (Vulkan's bound),
// which only touches |x| > 0.93, where erf > 0.8 and exp's argument is below -1.7: at most about
// 1e-7 absolute there. Past |x| = 4 the f32 result is ±1.
fn erf_f32(x: f32) -> f32 {
    let t = abs(x);
    let s = x * x;
    if t > 0.927734375 {
        var r = fma(-1.72853470e-5, t, 3.83197126e-4);
        let u = fma(-3.88396438e-3, t, 2.42546219e-2);
        r = fma(r, s, u);
        r = fma(r, t, -1.06777877e-1);
        r = fma(r, t, -6.34846687e-1);
        r = fma(r, t, -1.28717512e-1);
        r = fma(r, t, -t);
        // exp(r) < 0.19 here and underflows harmlessly to 0 for large |x|.
        let e = 1.0 - exp(r);
        return select(e, -e, x < 0.0);
    }
    var r = -5.96761703e-4;
    r = fma(r, s, 4.99119423e-3);
    r = fma(r, s, -2.67681349e-2);
    r = fma(r, s, 1.12819925e-1);
    r = fma(r, s, -3.76125336e-1);
    r = fma(r, s, 1.28379166e-1);
    return fma(r, x, x);
}

// tanh as 1 - 2 / (exp(2u) + 1): exp overflowing to infinity gives 1, underflowing gives -1, so
// no input makes NaN (WGSL's tanh has no such guarantee on every implementation).
fn tanh_f32(u: f32) -> f32 {
    return 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        out[params.out_offset + i] = a[params.a_offset + i] + b_at(i);
    }
}

@compute @workgroup_size(WG)
fn mul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        out[params.out_offset + i] = a[params.a_offset + i] * b_at(i);
    }
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        out[params.out_offset + i] = a[params.a_offset + i] * params.factor;
    }
}

// torch's default gelu: x / 2 * (1 + erf(x / sqrt(2))).
@compute @workgroup_size(WG)
fn gelu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        let x = a[params.a_offset + i];
        out[params.out_offset + i] = 0.5 * x * (1.0 + erf_f32(x * 0.70710678118654752));
    }
}

// torch's gelu(approximate="tanh"): x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x³))).
@compute @workgroup_size(WG)
fn gelu_tanh(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        let x = a[params.a_offset + i];
        let u = 0.79788456080286536 * (x + 0.044715 * x * x * x);
        out[params.out_offset + i] = 0.5 * x * (1.0 + tanh_f32(u));
    }
}

// min(max(x, 0), 6), torch's relu6 (hardtanh(0, 6)).
@compute @workgroup_size(WG)
fn relu6(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        out[params.out_offset + i] = min(max(a[params.a_offset + i], 0.0), 6.0);
    }
}

// tanh(x) through tanh_f32 (above).
@compute @workgroup_size(WG)
fn tanh(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        out[params.out_offset + i] = tanh_f32(a[params.a_offset + i]);
    }
}
