// Tiled matrix products C = op(A) · op(B) (+ bias), batched. The launcher and the CPU twin are
// src/ops/matmul.rs.
//
// Per batch: op(A) is [m, k] (A stored [m, k], or [k, m] when TRANS_A), op(B) is [k, n] (B stored
// [k, n], or [n, k] when TRANS_B: nn.Linear's x · Wᵀ), C is f32 [m, n], and with HAS_BIAS
// C[i][j] += bias[j] (bias[i] when BIAS_PER_ROW: a 1x1 convolution's per-channel bias, C being
// [c_out, h w] per image). Operands are read as u32 words so F32, F16 and BF16 need no special
// buffer types or shader-f16 (A_TYPE, B_TYPE, BIAS_TYPE: 0 f32, 1 f16, 2 bf16); products and
// sums are in f32.
//
// One workgroup computes a TILE_M x TILE_N block of C: per step of TK along k it copies the
// TILE_M x TK block of op(A) and the TK x TILE_N block of op(B) into workgroup memory (zeros past
// the edges, so no shape needs to be a multiple of a tile), then each invocation accumulates a
// TM x TN = 8 x 8 block of C (rows ly * TM.., columns lx * TN..) in sixteen vec4 registers.
// Tiles are held as vec4 (4 rows of A, or 4 columns of B, at one step of k) because lavapipe
// runs each invocation's memory access as its own scalar access per component while its
// arithmetic is vectorised across invocations: per step of k an invocation reads 4 vec4 and does
// 64 multiply-adds. Sizes measured on lavapipe (src/ops/matmul.rs). The sum over k runs in index
// order, one product added at a time; steps past k add products of zeros.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Elements between consecutive batches of A and of B (0: one matrix broadcast over the batch).
    a_batch_stride: u32,
    b_batch_stride: u32,
    // First batch and first tile row / column of this dispatch (grids larger than the
    // per-dimension workgroup limit run as several dispatches).
    batch0: u32,
    tile_row0: u32,
    tile_col0: u32,
}

override WG_X: u32 = 8u;
override WG_Y: u32 = 8u;
override TK: u32 = 32u;
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override HAS_BIAS: bool = false;
override BIAS_PER_ROW: bool = false;
override A_TYPE: u32 = 0u;
override B_TYPE: u32 = 0u;
override BIAS_TYPE: u32 = 0u;

// The register block of one invocation, written out as sixteen vec4 accumulators in `matmul`
// (so consts, not overrides); the workgroup shape and TK are overrides.
const TM: u32 = 8u;
const TN: u32 = 8u;

override TILE_M: u32 = WG_Y * TM;
override TILE_N: u32 = WG_X * TN;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
// The bias [n] ([m] when BIAS_PER_ROW) when HAS_BIAS; any buffer otherwise.
@group(0) @binding(3) var<storage, read> bias: array<u32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// op(A)'s tile, k-major: rows 4 * r4.. at step kk in vec4 kk * TILE_M / 4 + r4.
var<workgroup> a_tile: array<vec4<f32>, TK * TILE_M / 4u>;
// op(B)'s tile: columns 4 * c4.. at step kk in vec4 kk * TILE_N / 4 + c4.
var<workgroup> b_tile: array<vec4<f32>, TK * TILE_N / 4u>;

// Element e of a stream of `ty` numbers held in u32 words `w` (`w[e]` for f32, the word that
// holds e for 16-bit types).
fn widen(ty: u32, word: u32, e: u32) -> f32 {
    if ty == 1u {
        return bitcast<f32>(f16_to_f32_bits((word >> ((e & 1u) * 16u)) & 0xffffu));
    }
    if ty == 2u {
        return bitcast<f32>(((word >> ((e & 1u) * 16u)) & 0xffffu) << 16u);
    }
    return bitcast<f32>(word);
}

fn word_index(ty: u32, e: u32) -> u32 {
    return select(e, e >> 1u, ty != 0u);
}

fn load_a(e: u32) -> f32 {
    return widen(A_TYPE, a[word_index(A_TYPE, e)], e);
}

fn load_b(e: u32) -> f32 {
    return widen(B_TYPE, b[word_index(B_TYPE, e)], e);
}

// op(A)[row][kg] of the current batch (base a_base), 0 past the last row.
fn a_at(a_base: u32, row: u32, kg: u32) -> f32 {
    if row >= params.m {
        return 0.0;
    }
    if TRANS_A {
        return load_a(a_base + kg * params.m + row);
    }
    return load_a(a_base + row * params.k + kg);
}

// op(B)[kg][col] of the current batch (base b_base), 0 past the last column.
fn b_at(b_base: u32, kg: u32, col: u32) -> f32 {
    if col >= params.n {
        return 0.0;
    }
    if TRANS_B {
        return load_b(b_base + col * params.k + kg);
    }
    return load_b(b_base + kg * params.n + col);
}

// C[row][col + q] = v[q] (+ bias[col + q], or bias[row]) for the q inside C.
fn store4(c_base: u32, row: u32, col: u32, v: vec4<f32>) {
    if row >= params.m {
        return;
    }
    for (var q = 0u; q < 4u; q++) {
        let cq = col + q;
        if cq < params.n {
            var x = v[q];
            if HAS_BIAS {
                let e = select(cq, row, BIAS_PER_ROW);
                x = x + widen(BIAS_TYPE, bias[word_index(BIAS_TYPE, e)], e);
            }
            c[c_base + row * params.n + cq] = x;
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let batch = params.batch0 + wg.z;
    let row0 = (params.tile_row0 + wg.y) * TILE_M;
    let col0 = (params.tile_col0 + wg.x) * TILE_N;
    let a_base = batch * params.a_batch_stride;
    let b_base = batch * params.b_batch_stride;
    let threads = WG_X * WG_Y;

    var acc0_0 = vec4<f32>();
    var acc0_1 = vec4<f32>();
    var acc1_0 = vec4<f32>();
    var acc1_1 = vec4<f32>();
    var acc2_0 = vec4<f32>();
    var acc2_1 = vec4<f32>();
    var acc3_0 = vec4<f32>();
    var acc3_1 = vec4<f32>();
    var acc4_0 = vec4<f32>();
    var acc4_1 = vec4<f32>();
    var acc5_0 = vec4<f32>();
    var acc5_1 = vec4<f32>();
    var acc6_0 = vec4<f32>();
    var acc6_1 = vec4<f32>();
    var acc7_0 = vec4<f32>();
    var acc7_1 = vec4<f32>();
    for (var k0 = 0u; k0 < k; k0 += TK) {
        // op(A)'s block, a vec4 of 4 rows at a time; consecutive invocations take consecutive
        // elements of A's stored rows (k, or m when transposed).
        for (var t = li; t < TK * TILE_M / 4u; t += threads) {
            var r4: u32;
            var kk: u32;
            if TRANS_A {
                r4 = t % (TILE_M / 4u);
                kk = t / (TILE_M / 4u);
            } else {
                kk = t % TK;
                r4 = t / TK;
            }
            let kg = k0 + kk;
            var v = vec4<f32>();
            if kg < k {
                let row = row0 + r4 * 4u;
                v = vec4<f32>(a_at(a_base, row, kg), a_at(a_base, row + 1u, kg), a_at(a_base, row + 2u, kg), a_at(a_base, row + 3u, kg));
            }
            a_tile[kk * (TILE_M / 4u) + r4] = v;
        }
        // op(B)'s block, a vec4 of 4 columns at a time.
        for (var t = li; t < TK * TILE_N / 4u; t += threads) {
            var c4: u32;
            var kk: u32;
            if TRANS_B {
                kk = t % TK;
                c4 = t / TK;
            } else {
                c4 = t % (TILE_N / 4u);
                kk = t / (TILE_N / 4u);
            }
            let kg = k0 + kk;
            var v = vec4<f32>();
            if kg < k {
                let cg = col0 + c4 * 4u;
                v = vec4<f32>(b_at(b_base, kg, cg), b_at(b_base, kg, cg + 1u), b_at(b_base, kg, cg + 2u), b_at(b_base, kg, cg + 3u));
            }
            b_tile[kk * (TILE_N / 4u) + c4] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let av0 = a_tile[(kk * TILE_M) / 4u + lid.y * 2u + 0u];
            let av1 = a_tile[(kk * TILE_M) / 4u + lid.y * 2u + 1u];
            let bv0 = b_tile[(kk * TILE_N) / 4u + lid.x * 2u + 0u];
            let bv1 = b_tile[(kk * TILE_N) / 4u + lid.x * 2u + 1u];
            acc0_0 = acc0_0 + av0[0] * bv0;
            acc0_1 = acc0_1 + av0[0] * bv1;
            acc1_0 = acc1_0 + av0[1] * bv0;
            acc1_1 = acc1_1 + av0[1] * bv1;
            acc2_0 = acc2_0 + av0[2] * bv0;
            acc2_1 = acc2_1 + av0[2] * bv1;
            acc3_0 = acc3_0 + av0[3] * bv0;
            acc3_1 = acc3_1 + av0[3] * bv1;
            acc4_0 = acc4_0 + av1[0] * bv0;
            acc4_1 = acc4_1 + av1[0] * bv1;
            acc5_0 = acc5_0 + av1[1] * bv0;
            acc5_1 = acc5_1 + av1[1] * bv1;
            acc6_0 = acc6_0 + av1[2] * bv0;
            acc6_1 = acc6_1 + av1[2] * bv1;
            acc7_0 = acc7_0 + av1[3] * bv0;
            acc7_1 = acc7_1 + av1[3] * bv1;
        }
        workgroupBarrier();
    }
    let c_base = batch * m * n;
    let r = row0 + lid.y * TM;
    let cl = col0 + lid.x * TN;
    store4(c_base, r, cl, acc0_0);
    store4(c_base, r, cl + 4u, acc0_1);
    store4(c_base, r + 1u, cl, acc1_0);
    store4(c_base, r + 1u, cl + 4u, acc1_1);
    store4(c_base, r + 2u, cl, acc2_0);
    store4(c_base, r + 2u, cl + 4u, acc2_1);
    store4(c_base, r + 3u, cl, acc3_0);
    store4(c_base, r + 3u, cl + 4u, acc3_1);
    store4(c_base, r + 4u, cl, acc4_0);
    store4(c_base, r + 4u, cl + 4u, acc4_1);
    store4(c_base, r + 5u, cl, acc5_0);
    store4(c_base, r + 5u, cl + 4u, acc5_1);
    store4(c_base, r + 6u, cl, acc6_0);
    store4(c_base, r + 6u, cl + 4u, acc6_1);
    store4(c_base, r + 7u, cl, acc7_0);
    store4(c_base, r + 7u, cl + 4u, acc7_1);
}
