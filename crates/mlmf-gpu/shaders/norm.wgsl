// Normalisation over the last axis of x [rows, cols], one row at a time:
//   layer_norm: y = (x - mean) / sqrt(var + eps) * weight + bias, var the biased variance
//     mean((x - mean)^2) (torch.nn.functional.layer_norm), computed in two passes (mean, then
//     the squared deviations) rather than as mean(x^2) - mean^2, which cancels;
//   rms_norm: y = x / sqrt(mean(x^2) + eps) * weight (LLaMA's RMSNorm).
// weight and bias are [cols]. The CPU twin is `cpu` in src/ops/norm.rs.
//
// One workgroup per row: thread l takes elements l, l + WG, ... and the partial sums meet in a
// workgroup reduction (shaders/reduce.wgsl). With ROW_PER_INVOCATION (the launcher sets it for
// CPU-based adapters such as lavapipe) each invocation normalises one whole row alone, with no
// barriers, summing in index order as the twin does.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

// Threads per workgroup: a power of two.
override WG: u32 = 64u;
// One row per invocation instead of one per workgroup.
override ROW_PER_INVOCATION: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
// rms_norm has no bias; the launcher binds weight here again.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

fn layer_norm_alone(r: u32) {
    if r >= params.rows {
        return;
    }
    let n = params.cols;
    let base = r * n;
    var s = 0.0;
    for (var k = 0u; k < n; k++) {
        s += x[base + k];
    }
    let mean = s / f32(n);
    var q = 0.0;
    for (var k = 0u; k < n; k++) {
        let d = x[base + k] - mean;
        q += d * d;
    }
    let inv = inverseSqrt(q / f32(n) + params.eps);
    for (var k = 0u; k < n; k++) {
        dst[base + k] = (x[base + k] - mean) * inv * weight[k] + bias[k];
    }
}

fn rms_norm_alone(r: u32) {
    if r >= params.rows {
        return;
    }
    let n = params.cols;
    let base = r * n;
    var q = 0.0;
    for (var k = 0u; k < n; k++) {
        let v = x[base + k];
        q += v * v;
    }
    let inv = inverseSqrt(q / f32(n) + params.eps);
    for (var k = 0u; k < n; k++) {
        dst[base + k] = x[base + k] * inv * weight[k];
    }
}

@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if ROW_PER_INVOCATION {
        layer_norm_alone(flat_index(wg, nwg, l, WG));
        return;
    }
    // The workgroup's row: the same for every thread of the workgroup.
    let r = wg.y * nwg.x + wg.x;
    if r >= params.rows {
        return;
    }
    let n = params.cols;
    let base = r * n;
    var s = 0.0;
    for (var k = l; k < n; k += WG) {
        s += x[base + k];
    }
    let mean = workgroup_sum(s, l) / f32(n);
    var q = 0.0;
    for (var k = l; k < n; k += WG) {
        let d = x[base + k] - mean;
        q += d * d;
    }
    let inv = inverseSqrt(workgroup_sum(q, l) / f32(n) + params.eps);
    for (var k = l; k < n; k += WG) {
        dst[base + k] = (x[base + k] - mean) * inv * weight[k] + bias[k];
    }
}

@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if ROW_PER_INVOCATION {
        rms_norm_alone(flat_index(wg, nwg, l, WG));
        return;
    }
    let r = wg.y * nwg.x + wg.x;
    if r >= params.rows {
        return;
    }
    let n = params.cols;
    let base = r * n;
    var q = 0.0;
    for (var k = l; k < n; k += WG) {
        let v = x[base + k];
        q += v * v;
    }
    let inv = inverseSqrt(workgroup_sum(q, l) / f32(n) + params.eps);
    for (var k = l; k < n; k += WG) {
        dst[base + k] = x[base + k] * inv * weight[k];
    }
}
