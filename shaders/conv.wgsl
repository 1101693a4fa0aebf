// 2-D convolution and global average pooling, NCHW f32 (torch.nn.functional.conv2d with
// dilation 1, and adaptive_avg_pool2d(x, 1) flattened):
//   conv2d: y[n][o][oy][ox] = bias[o] + sum_{c, ky, kx} w[o][c][ky][kx]
//             * x[n][g * cin_g + c][oy * stride + ky - pad][ox * stride + kx - pad]
//     with g = o / cout_g the group of output channel o, cin_g = c_in / groups, cout_g =
//     c_out / groups, w [c_out, cin_g, kh, kw], and zero outside the input (symmetric padding).
//     Summed over c, then ky, then kx, in index order.
//   avg_pool: y[n][c] = (sum of x[n][c] over h * w in index order) / (h * w).
// One invocation per output element. The CPU twin is `cpu` in src/ops/conv.rs.
//
// conv2d_1x1 is the same function for 1x1 kernels with stride 1, no padding and one group
// (pointwise convolutions: a matrix product per image), computing OC_BLOCK output channels of
// one pixel per invocation so each input value is loaded once for all of them.

struct Params {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    groups: u32,
    has_bias: u32,
    // Invocations in this dispatch.
    count: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 64u;
// Output channels per invocation of conv2d_1x1.
const OC_BLOCK: u32 = 4u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// The weights (conv2d); unused by avg_pool.
@group(0) @binding(2) var<storage, read> weight: array<f32>;
// [c_out] when has_bias; otherwise the launcher binds the weights here again.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG)
fn conv2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.count {
        return;
    }
    let ox = i % params.ow;
    var t = i / params.ow;
    let oy = t % params.oh;
    t /= params.oh;
    let o = t % params.c_out;
    let n = t / params.c_out;
    let cin_g = params.c_in / params.groups;
    let g = o / (params.c_out / params.groups);
    // Signed: the window's top-left corner lies outside the input where padding applies.
    let y0 = i32(oy * params.stride) - i32(params.pad);
    let x0 = i32(ox * params.stride) - i32(params.pad);
    let h = i32(params.h);
    let w = i32(params.w);
    var s = 0.0;
    for (var c = 0u; c < cin_g; c++) {
        let xplane = (n * params.c_in + g * cin_g + c) * params.h * params.w;
        let wbase = (o * cin_g + c) * params.kh * params.kw;
        for (var ky = 0u; ky < params.kh; ky++) {
            let iy = y0 + i32(ky);
            if iy < 0 || iy >= h {
                continue;
            }
            for (var kx = 0u; kx < params.kw; kx++) {
                let ix = x0 + i32(kx);
                if ix < 0 || ix >= w {
                    continue;
                }
                s += weight[wbase + ky * params.kw + kx] * x[xplane + u32(iy) * params.w + u32(ix)];
            }
        }
    }
    if params.has_bias != 0u {
        s += bias[o];
    }
    dst[i] = s;
}

@compute @workgroup_size(WG)
fn conv2d_1x1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    // Invocation i: pixel p of image n, output channels ob * OC_BLOCK .. + OC_BLOCK (the
    // launcher takes this path only when c_out is a multiple of OC_BLOCK).
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.count {
        return;
    }
    let plane = params.h * params.w;
    let p = i % plane;
    var t = i / plane;
    let blocks = params.c_out / OC_BLOCK;
    let ob = t % blocks;
    let n = t / blocks;
    let o0 = ob * OC_BLOCK;
    let cin = params.c_in;
    var s = vec4<f32>(0.0);
    let xbase = n * cin * plane + p;
    for (var c = 0u; c < cin; c++) {
        let v = x[xbase + c * plane];
        s += vec4<f32>(weight[o0 * cin + c], weight[(o0 + 1u) * cin + c], weight[(o0 + 2u) * cin + c], weight[(o0 + 3u) * cin + c]) * v;
    }
    if params.has_bias != 0u {
        s += vec4<f32>(bias[o0], bias[o0 + 1u], bias[o0 + 2u], bias[o0 + 3u]);
    }
    let out = (n * params.c_out + o0) * plane + p;
    dst[out] = s.x;
    dst[out + plane] = s.y;
    dst[out + 2u * plane] = s.z;
    dst[out + 3u * plane] = s.w;
}

@compute @workgroup_size(WG)
fn avg_pool(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.count {
        return;
    }
    let plane = params.h * params.w;
    let base = i * plane;
    var s = 0.0;
    for (var k = 0u; k < plane; k++) {
        s += x[base + k];
    }
    dst[i] = s / f32(plane);
}
