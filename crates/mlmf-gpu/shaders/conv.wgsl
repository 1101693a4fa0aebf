// 2-D convolution and global average pooling, NCHW f32 (torch.nn.functional.conv2d with
// dilation 1, and adaptive_avg_pool2d(x, 1) flattened):
//   conv2d: y[n][o][oy][ox] = bias[o] + sum_{c, ky, kx} w[o][c][ky][kx]
//             * x[n][g * cin_g + c][oy * stride + ky - pad_h][ox * stride + kx - pad]
//     with g = o / cout_g the group of output channel o, cin_g = c_in / groups, cout_g =
//     c_out / groups, w [c_out, cin_g, kh, kw], and zero outside the input (symmetric padding:
//     pad_h rows, pad columns). Summed over c, then ky, then kx, in index order.
//   conv1d (torch's conv1d) is conv2d with h = kh = 1 and pad_h = 0: the launcher passes x
//     [n, c_in, l] as [n, c_in, 1, l] and w [c_out, c_in, k] as [c_out, c_in, 1, k].
//   avg_pool: y[n][c] = (sum of x[n][c] over h * w in index order) / (h * w).
// One invocation per output element. The CPU twin is `cpu` in src/ops/conv.rs. Pointwise (1x1)
// convolutions do not come here: the launcher runs them as matrix products (matmul.wgsl).

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
    // Zero rows above and below (`pad` is the columns'): conv2d pads both alike, conv1d (one
    // row, a 1 x k kernel) pads only the columns.
    pad_h: u32,
    // 1: the output is stored channels last, [n, oh, ow, c_out], what Whisper's encoder feeds its
    // transformer ([1500, 384] from a conv1d); 0: [n, c_out, oh, ow].
    channels_last: u32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// The weights (conv2d); unused by avg_pool.
@group(0) @binding(2) var<storage, read> weight: array<f32>;
// [c_out] when has_bias; otherwise the launcher binds the weights here again.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

// Output row `row` of the output [n, c_out, oh, ow] (rows numbered in storage order): its y,
// channel, image, and the group of the channel.
struct OutputRow {
    oy: u32,
    o: u32,
    n: u32,
    g: u32,
}

// Where output `i` (numbered in [n, c_out, oh, ow] order) is stored.
fn out_index(i: u32) -> u32 {
    if params.channels_last == 0u {
        return i;
    }
    let ox = i % params.ow;
    let t = i / params.ow;
    let oy = t % params.oh;
    let t2 = t / params.oh;
    let o = t2 % params.c_out;
    let n = t2 / params.c_out;
    return ((n * params.oh + oy) * params.ow + ox) * params.c_out + o;
}

fn output_row(row: u32) -> OutputRow {
    let oy = row % params.oh;
    let t = row / params.oh;
    let o = t % params.c_out;
    return OutputRow(oy, o, t / params.c_out, o / (params.c_out / params.groups));
}

@compute @workgroup_size(WG)
fn conv2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.count {
        return;
    }
    let ox = i % params.ow;
    let r = output_row(i / params.ow);
    let cin_g = params.c_in / params.groups;
    // Signed: the window's top-left corner lies outside the input where padding applies.
    let y0 = i32(r.oy * params.stride) - i32(params.pad_h);
    let x0 = i32(ox * params.stride) - i32(params.pad);
    let h = i32(params.h);
    let w = i32(params.w);
    var s = 0.0;
    for (var c = 0u; c < cin_g; c++) {
        let xplane = (r.n * params.c_in + r.g * cin_g + c) * params.h * params.w;
        let wbase = (r.o * cin_g + c) * params.kh * params.kw;
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
        s += bias[r.o];
    }
    dst[out_index(i)] = s;
}

// conv2d_rows: the same sums, ROW_BLOCK horizontally adjacent outputs of one output row per
// invocation. The kernel width and the stride are pipeline constants (KW, STRIDE), so the input
// columns that one kernel row of the block reads (SPAN of them) are loaded once into registers
// and each weight once for the block: for a 3x3 kernel 13 loads per eight outputs and kernel
// row at stride 1, where conv2d makes 48. Each output sums over (c, ky, kx) in index order and
// skips the padding, as conv2d does. The launcher takes it when SPAN <= MAX_SPAN.
override KW: u32 = 3u;
override STRIDE: u32 = 1u;
const ROW_BLOCK: u32 = 8u;
const MAX_SPAN: u32 = 24u;
override SPAN: u32 = (ROW_BLOCK - 1u) * STRIDE + KW;

@compute @workgroup_size(WG)
fn conv2d_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.count {
        return;
    }
    let blocks = (params.ow + ROW_BLOCK - 1u) / ROW_BLOCK;
    let ox0 = (i % blocks) * ROW_BLOCK;
    let r = output_row(i / blocks);
    let cin_g = params.c_in / params.groups;
    let y0 = i32(r.oy * STRIDE) - i32(params.pad_h);
    let x0 = i32(ox0 * STRIDE) - i32(params.pad);
    let h = i32(params.h);
    let w = i32(params.w);
    var s = array<f32, ROW_BLOCK>();
    var row: array<f32, MAX_SPAN>;
    var inside: array<bool, MAX_SPAN>;
    for (var c = 0u; c < cin_g; c++) {
        let xplane = (r.n * params.c_in + r.g * cin_g + c) * params.h * params.w;
        let wbase = (r.o * cin_g + c) * params.kh * KW;
        for (var ky = 0u; ky < params.kh; ky++) {
            let iy = y0 + i32(ky);
            if iy < 0 || iy >= h {
                continue;
            }
            let xrow = xplane + u32(iy) * params.w;
            for (var j = 0u; j < SPAN; j++) {
                let ix = x0 + i32(j);
                inside[j] = ix >= 0 && ix < w;
                if inside[j] {
                    row[j] = x[xrow + u32(ix)];
                }
            }
            for (var kx = 0u; kx < KW; kx++) {
                let wv = weight[wbase + ky * KW + kx];
                for (var q = 0u; q < ROW_BLOCK; q++) {
                    let j = q * STRIDE + kx;
                    if inside[j] {
                        s[q] += wv * row[j];
                    }
                }
            }
        }
    }
    // The first output of the output row.
    let out = (i / blocks) * params.ow;
    for (var q = 0u; q < ROW_BLOCK; q++) {
        if ox0 + q < params.ow {
            var v = s[q];
            if params.has_bias != 0u {
                v += bias[r.o];
            }
            dst[out_index(out + ox0 + q)] = v;
        }
    }
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
