// Dequantize GGML's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and IQ4_XS, super-blocks of 256
// elements, to f32, straight from the block bytes as the GGUF file stores them (read as u32
// words; fields at their byte offsets). One invocation per output element; one entry point per
// block type. Block layouts are ggml-common.h's; element order and arithmetic are ggml's
// dequantize_row_* (ggml-quants.c) in float32: scales from f16 first, products grouped as
// written there. Every product is exact in f32: an f16 significand (11 bits) times a sub-block
// scale times a quant or grid value has at most 23 significant bits (Q6_K: 11 + 7 + 5, IQ4_XS:
// 11 + 5 + 7), so the only rounding is the one subtraction of the min in Q2_K, Q4_K and Q5_K,
// and a compiler that contracts `dl * q - ml` into a fused multiply-add gets the same bits. The
// CPU twin is `cpu` in src/ops/dequant_k.rs.

struct Params {
    // Elements to decode in this dispatch.
    count: u32,
    // First element of this dispatch, counted from the start of the input page (which begins at
    // a block boundary) and from the start of the output page.
    in_offset: u32,
    out_offset: u32,
    _pad: u32,
}

override WG: u32 = 64u;

// Elements per super-block (QK_K), and bytes per block of each type (ggml-common.h; asserted
// equal to dtype.rs in tests/shaders.rs).
const BLOCK_ELEMS: u32 = 256u;
const Q2_K_BYTES: u32 = 84u;
const Q3_K_BYTES: u32 = 110u;
const Q4_K_BYTES: u32 = 144u;
const Q5_K_BYTES: u32 = 176u;
const Q6_K_BYTES: u32 = 210u;
const IQ4_XS_BYTES: u32 = 136u;

// The non-linear 4-bit grid of IQ4_NL and IQ4_XS (kvalues_iq4nl in ggml-common.h).
const KVALUES_IQ4NL = array<i32, 16>(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);

// The output element type. The F16 variant of this family (kernels.rs, `Variant::F16`) turns
// this line into `alias Out = f16;` and enables f16; values are computed in f32 either way and
// rounded once on the store.
alias Out = f32;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<Out>;

// Byte loaders over `src` at byte offset `i` of the input page.
fn src_byte(i: u32) -> u32 {
    return byte_of(src[i >> 2u], i);
}

// An f16 at an even byte offset, widened exactly to f32.
fn src_f16(i: u32) -> f32 {
    return bitcast<f32>(f16_to_f32_bits(half_of(src[i >> 2u], i)));
}

// Where element `i` of this dispatch sits: x = first byte of its block in the input page,
// y = its index in the block, z = its index in the output page.
fn locate(wg: vec3<u32>, nwg: vec3<u32>, local: u32, block_bytes: u32) -> vec3<u32> {
    let i = flat_index(wg, nwg, local, WG);
    let e = params.in_offset + i;
    return vec3<u32>((e / BLOCK_ELEMS) * block_bytes, e % BLOCK_ELEMS, params.out_offset + i);
}

fn in_range(wg: vec3<u32>, nwg: vec3<u32>, local: u32) -> bool {
    return flat_index(wg, nwg, local, WG) < params.count;
}

// Scale and min of sub-block j (0..8) from the 12 packed 6-bit values starting at byte s
// (get_scale_min_k4 in ggml-quants.c), as (scale, min).
fn scale_min_k4(s: u32, j: u32) -> vec2<u32> {
    if j < 4u {
        return vec2<u32>(src_byte(s + j) & 63u, src_byte(s + j + 4u) & 63u);
    }
    let lo = src_byte(s + j + 4u);
    return vec2<u32>((lo & 15u) | ((src_byte(s + j - 4u) >> 6u) << 4u), (lo >> 4u) | ((src_byte(s + j) >> 6u) << 4u));
}

// Q2_K: scales[16] (4-bit scale | 4-bit min << 4), qs[64] (2-bit quants), d, dmin (f16).
// Element j: sub-block j / 16; quant byte 32 * (j / 128) + j % 32, shift 2 * (j % 128 / 32).
// x = (d * sc) * q - (dmin * m).
@compute @workgroup_size(WG)
fn dequant_q2_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, Q2_K_BYTES);
    let j = at.y;
    let d = src_f16(at.x + 80u);
    let dmin = src_f16(at.x + 82u);
    let sc = src_byte(at.x + j / 16u);
    let q = (src_byte(at.x + 16u + 32u * (j / 128u) + j % 32u) >> (2u * ((j % 128u) / 32u))) & 3u;
    let dl = d * f32(sc & 15u);
    let ml = dmin * f32(sc >> 4u);
    dst[at.z] = Out(dl * f32(q) - ml);
}

// Q3_K: hmask[32] (high bits), qs[64] (low 2 bits), scales[12] (16 packed 6-bit scales), d.
// Element j: sub-block j / 16; low bits as Q2_K; high bit j / 32 of hmask[j % 32], and a clear
// high bit subtracts 4. x = (d * (sc - 32)) * q with q in -4..3.
@compute @workgroup_size(WG)
fn dequant_q3_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, Q3_K_BYTES);
    let j = at.y;
    let d = src_f16(at.x + 108u);
    // Scale s: low 4 bits from nibble s / 8 of byte s % 8, high 2 bits from bits 2 * (s / 4)
    // of byte 8 + s % 4.
    let s = j / 16u;
    let sc_lo = (src_byte(at.x + 96u + s % 8u) >> (4u * (s / 8u))) & 15u;
    let sc_hi = (src_byte(at.x + 104u + s % 4u) >> (2u * (s / 4u))) & 3u;
    let sc = i32(sc_lo | (sc_hi << 4u)) - 32;
    let lo = (src_byte(at.x + 32u + 32u * (j / 128u) + j % 32u) >> (2u * ((j % 128u) / 32u))) & 3u;
    let hi = (src_byte(at.x + j % 32u) >> (j / 32u)) & 1u;
    let q = i32(lo) - select(4, 0, hi == 1u);
    let dl = d * f32(sc);
    dst[at.z] = Out(dl * f32(q));
}

// Q4_K: d, dmin (f16), scales[12] (8 packed 6-bit scales and mins), qs[128] (4-bit quants).
// Element j: sub-block j / 32; quant byte 32 * (j / 64) + j % 32, low nibble for even
// sub-blocks, high for odd. x = (d * sc) * q - (dmin * m).
@compute @workgroup_size(WG)
fn dequant_q4_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, Q4_K_BYTES);
    let j = at.y;
    let d = src_f16(at.x);
    let dmin = src_f16(at.x + 2u);
    let sm = scale_min_k4(at.x + 4u, j / 32u);
    let q = (src_byte(at.x + 16u + 32u * (j / 64u) + j % 32u) >> (4u * ((j / 32u) & 1u))) & 15u;
    let dl = d * f32(sm.x);
    let ml = dmin * f32(sm.y);
    dst[at.z] = Out(dl * f32(q) - ml);
}

// Q5_K: d, dmin (f16), scales[12], qh[32] (fifth bits), qs[128]. Low 4 bits as Q4_K; the fifth
// bit is bit j / 32 of qh[j % 32]. x = (d * sc) * q - (dmin * m).
@compute @workgroup_size(WG)
fn dequant_q5_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, Q5_K_BYTES);
    let j = at.y;
    let d = src_f16(at.x);
    let dmin = src_f16(at.x + 2u);
    let sm = scale_min_k4(at.x + 4u, j / 32u);
    let lo = (src_byte(at.x + 48u + 32u * (j / 64u) + j % 32u) >> (4u * ((j / 32u) & 1u))) & 15u;
    let hi = (src_byte(at.x + 16u + j % 32u) >> (j / 32u)) & 1u;
    let q = lo | (hi << 4u);
    let dl = d * f32(sm.x);
    let ml = dmin * f32(sm.y);
    dst[at.z] = Out(dl * f32(q) - ml);
}

// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d (f16).
// Element j = 128 * n + 32 * k + i: low nibble (k < 2) or high nibble (k >= 2) of
// ql[64 * n + 32 * (k % 2) + i], high bits 2 * k of qh[32 * n + i], scale j / 16.
// x = (d * sc) * (q - 32).
@compute @workgroup_size(WG)
fn dequant_q6_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, Q6_K_BYTES);
    let j = at.y;
    let n = j / 128u;
    let k = (j % 128u) / 32u;
    let i = j % 32u;
    let d = src_f16(at.x + 208u);
    let sc = i32(src_byte(at.x + 192u + j / 16u) << 24u) >> 24u;
    let lo = (src_byte(at.x + 64u * n + 32u * (k % 2u) + i) >> (4u * (k / 2u))) & 15u;
    let hi = (src_byte(at.x + 128u + 32u * n + i) >> (2u * k)) & 3u;
    let q = i32(lo | (hi << 4u)) - 32;
    let dl = d * f32(sc);
    dst[at.z] = Out(dl * f32(q));
}

// IQ4_XS: d (f16), scales_h (u16: 2 high bits per sub-block), scales_l[4] (4 low bits per
// sub-block), qs[128] indexing the non-linear grid. Element j: sub-block j / 32, quant byte
// 16 * (j / 32) + j % 16, low nibble for j % 32 < 16. x = (d * (ls - 32)) * kvalues[q].
@compute @workgroup_size(WG)
fn dequant_iq4_xs(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, IQ4_XS_BYTES);
    let j = at.y;
    let ib = j / 32u;
    let d = src_f16(at.x);
    let scales_h = half_of(src[(at.x + 2u) >> 2u], at.x + 2u);
    let ls_lo = (src_byte(at.x + 4u + ib / 2u) >> (4u * (ib % 2u))) & 15u;
    let ls_hi = (scales_h >> (2u * ib)) & 3u;
    let ls = i32(ls_lo | (ls_hi << 4u)) - 32;
    let q = (src_byte(at.x + 8u + 16u * ib + j % 16u) >> (4u * ((j % 32u) / 16u))) & 15u;
    let dl = d * f32(ls);
    dst[at.z] = Out(dl * f32(KVALUES_IQ4NL[q]));
}
