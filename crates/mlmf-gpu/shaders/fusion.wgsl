// What the fusion modules need beside matmul, softmax and the element-wise ops: concatenation
// along the last axis and a weighted sum over modalities. The launcher and the CPU twin are
// src/ops/fusion.rs. One invocation per element of the input x ([rows, cols]); one dispatch per
// input, in order, so several dispatches write one output.
//
// concat:       out[r * out_cols + col_offset + c] = x[r * cols + c]
// weighted_sum: out[i] = w[r * w_stride + m] * x[i]            (the first input, m = 0)
//               out[i] = out[i] + w[r * w_stride + m] * x[i]   (ACCUMULATE: the later ones)
//               with r = i / cols; w_stride is 0 when the weights are shared by every row.

struct Params {
    rows: u32,
    cols: u32,
    out_cols: u32,
    col_offset: u32,
    m: u32,
    w_stride: u32,
    flags: u32,
    _pad: u32,
}

const ACCUMULATE: u32 = 1u;

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// The weights of weighted_sum; concat binds a placeholder.
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn concat(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.rows * params.cols {
        return;
    }
    let r = i / params.cols;
    let c = i % params.cols;
    out[r * params.out_cols + params.col_offset + c] = x[i];
}

@compute @workgroup_size(WG)
fn weighted_sum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.rows * params.cols {
        return;
    }
    let r = i / params.cols;
    let term = w[r * params.w_stride + params.m] * x[i];
    if (params.flags & ACCUMULATE) != 0u {
        out[i] = out[i] + term;
    } else {
        out[i] = term;
    }
}
