// Softmax over the last axis of x [rows, cols], numerically stable (torch.softmax(x, -1)):
//   y[k] = exp(x[k] - m) / sum_j exp(x[j] - m), m = max_j x[j].
// Each exponent is clamped below at EXP_FLOOR first: exp(-200) is 0 in f32 anyway, and the
// clamp keeps exp's argument in range for masked entries (attention writes the f32 minimum
// there, whose exp would otherwise go through an infinite intermediate, which WGSL leaves
// indeterminate). Rows of any length; the CPU twin is `cpu` in src/ops/softmax.rs.
//
// One workgroup per row: the row maximum and the sum meet in workgroup reductions
// (shaders/reduce.wgsl); each thread writes exp(x - m) for its elements (l, l + WG, ...), then
// divides those same elements by the sum, so no thread reads another's output. With
// ROW_PER_INVOCATION (CPU-based adapters) one invocation does a whole row in index order.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 64u;
override ROW_PER_INVOCATION: bool = false;
// Attention's masked rows (src/ops/attention.rs): a row whose maximum is F32_LOWEST has every
// entry masked and becomes all zeros instead of uniform.
override ZERO_MASKED_ROWS: bool = false;

// Below this, exp(x - m) is 0 in f32 (the smallest subnormal is exp(-103.3)).
const EXP_FLOOR: f32 = -200.0;
// The f32 minimum: what a thread with no elements contributes to the row maximum.
const F32_LOWEST: f32 = -3.40282347e38;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

fn softmax_alone(r: u32) {
    if r >= params.rows || params.cols == 0u {
        return;
    }
    let n = params.cols;
    let base = r * n;
    var m = x[base];
    for (var k = 1u; k < n; k++) {
        m = max(m, x[base + k]);
    }
    var s = 0.0;
    for (var k = 0u; k < n; k++) {
        let e = exp(max(x[base + k] - m, EXP_FLOOR));
        dst[base + k] = e;
        s += e;
    }
    let empty = ZERO_MASKED_ROWS && m == F32_LOWEST;
    for (var k = 0u; k < n; k++) {
        dst[base + k] = select(dst[base + k] / s, 0.0, empty);
    }
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if ROW_PER_INVOCATION {
        softmax_alone(flat_index(wg, nwg, l, WG));
        return;
    }
    let r = wg.y * nwg.x + wg.x;
    if r >= params.rows {
        return;
    }
    let n = params.cols;
    let base = r * n;
    var m = F32_LOWEST;
    for (var k = l; k < n; k += WG) {
        m = max(m, x[base + k]);
    }
    m = workgroup_max(m, l);
    var s = 0.0;
    for (var k = l; k < n; k += WG) {
        let e = exp(max(x[base + k] - m, EXP_FLOOR));
        dst[base + k] = e;
        s += e;
    }
    s = workgroup_sum(s, l);
    let empty = ZERO_MASKED_ROWS && m == F32_LOWEST;
    for (var k = l; k < n; k += WG) {
        dst[base + k] = select(dst[base + k] / s, 0.0, empty);
    }
}
