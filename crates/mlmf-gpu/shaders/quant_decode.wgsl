// Element decoders for every weight type the block-reading families (dequant, qmatmul,
// embedding) read, shared by them (kernels.rs prepends this file after common.wgsl). Each family
// declares the bindings these functions read, `src: array<u32>`, holding the tensor's bytes
// exactly as the file stores them, and `grids: array<u32>`, the i-quant tables (its last
// binding; the launchers bind it, see src/ops/iq_grids); WGSL module-scope declarations are order-independent, so the
// functions here may name it.
//
// `decode_<type>(b, j)` is element j of the block whose first byte is at byte b of `src`. Block
// layouts are ggml-common.h's; element order and arithmetic are ggml's dequantize_row_*
// (ggml-quants.c) in float32: scales from f16 first (exactly, subnormals included), products
// grouped as written there. Every product is exact in f32 (an f16 significand has 11 bits, a
// quant at most 7, a K-quant sub-block scale at most 6 more; MXFP4's values are built from bits,
// see mxfp4_4), so the only rounding is the one
// add or subtract of a min in Q4_1, Q5_1, Q2_K, Q4_K and Q5_K, and a compiler that contracts it
// with the product into a fused multiply-add gets the same bits. The CPU twins, and the table of
// types these mirror, are in src/ops/quant_decode.rs.

// The weight type a pipeline decodes, and whether that type has a group decoder (the block
// types): the launchers set both from the table in src/ops/quant_decode.rs. A switch on an
// override folds away when the pipeline is built, so each pipeline holds one type's decoder.
override TYPE: u32;
override GROUPED: bool;

// Type codes, one per row of that table (the naga test checks they agree).
const T_F32: u32 = 0u;
const T_F16: u32 = 1u;
const T_BF16: u32 = 2u;
const T_Q4_0: u32 = 3u;
const T_Q4_1: u32 = 4u;
const T_Q5_0: u32 = 5u;
const T_Q5_1: u32 = 6u;
const T_Q8_0: u32 = 7u;
const T_IQ4_NL: u32 = 8u;
const T_Q2_K: u32 = 9u;
const T_Q3_K: u32 = 10u;
const T_Q4_K: u32 = 11u;
const T_Q5_K: u32 = 12u;
const T_Q6_K: u32 = 13u;
const T_IQ4_XS: u32 = 14u;
const T_MXFP4: u32 = 15u;
const T_TQ1_0: u32 = 16u;
const T_TQ2_0: u32 = 17u;
// The i-quants on grids (their section below).
const T_IQ2_XXS: u32 = 18u;
const T_IQ2_XS: u32 = 19u;
const T_IQ3_XXS: u32 = 20u;
const T_IQ1_S: u32 = 21u;
const T_IQ3_S: u32 = 22u;
const T_IQ2_S: u32 = 23u;
const T_IQ1_M: u32 = 24u;

// Element j of the block of type TYPE at byte b of `src`.
fn decode(b: u32, j: u32) -> f32 {
    switch TYPE {
        case T_F32: { return decode_f32(b, j); }
        case T_F16: { return decode_f16(b, j); }
        case T_BF16: { return decode_bf16(b, j); }
        case T_Q4_0: { return decode_q4_0(b, j); }
        case T_Q4_1: { return decode_q4_1(b, j); }
        case T_Q5_0: { return decode_q5_0(b, j); }
        case T_Q5_1: { return decode_q5_1(b, j); }
        case T_Q8_0: { return decode_q8_0(b, j); }
        case T_IQ4_NL: { return decode_iq4_nl(b, j); }
        case T_Q2_K: { return decode_q2_k(b, j); }
        case T_Q3_K: { return decode_q3_k(b, j); }
        case T_Q4_K: { return decode_q4_k(b, j); }
        case T_Q5_K: { return decode_q5_k(b, j); }
        case T_Q6_K: { return decode_q6_k(b, j); }
        case T_IQ4_XS: { return decode_iq4_xs(b, j); }
        case T_MXFP4: { return decode_mxfp4(b, j); }
        case T_TQ1_0: { return decode_tq1_0(b, j); }
        case T_TQ2_0: { return decode_tq2_0(b, j); }
        case T_IQ2_XXS: { return decode_iq2_xxs(b, j); }
        case T_IQ2_XS: { return decode_iq2_xs(b, j); }
        case T_IQ3_XXS: { return decode_iq3_xxs(b, j); }
        case T_IQ1_S: { return decode_iq1_s(b, j); }
        case T_IQ3_S: { return decode_iq3_s(b, j); }
        case T_IQ2_S: { return decode_iq2_s(b, j); }
        case T_IQ1_M: { return decode_iq1_m(b, j); }
        default: { return 0.0; }
    }
}

// Group g of the block of type TYPE at byte b of `src`, handed to `emit4` (GROUPED types only;
// see group_<type> below).
fn decode_group(b: u32, g: u32) {
    switch TYPE {
        case T_Q4_0: { group_q4_0(b, g); }
        case T_Q4_1: { group_q4_1(b, g); }
        case T_Q5_0: { group_q5_0(b, g); }
        case T_Q5_1: { group_q5_1(b, g); }
        case T_Q8_0: { group_q8_0(b, g); }
        case T_IQ4_NL: { group_iq4_nl(b, g); }
        case T_Q2_K: { group_q2_k(b, g); }
        case T_Q3_K: { group_q3_k(b, g); }
        case T_Q4_K: { group_q4_k(b, g); }
        case T_Q5_K: { group_q5_k(b, g); }
        case T_Q6_K: { group_q6_k(b, g); }
        case T_IQ4_XS: { group_iq4_xs(b, g); }
        case T_MXFP4: { group_mxfp4(b, g); }
        case T_TQ1_0: { group_tq1_0(b, g); }
        case T_TQ2_0: { group_tq2_0(b, g); }
        case T_IQ2_XXS: { group_iq2_xxs(b, g); }
        case T_IQ2_XS: { group_iq2_xs(b, g); }
        case T_IQ3_XXS: { group_iq3_xxs(b, g); }
        case T_IQ1_S: { group_iq1_s(b, g); }
        case T_IQ3_S: { group_iq3_s(b, g); }
        case T_IQ2_S: { group_iq2_s(b, g); }
        case T_IQ1_M: { group_iq1_m(b, g); }
        default: {}
    }
}

// The non-linear 4-bit grid of IQ4_NL and IQ4_XS (kvalues_iq4nl in ggml-common.h).
const KVALUES_IQ4NL = array<i32, 16>(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);

// Byte loaders over `src` at byte offset `i`.
fn src_byte(i: u32) -> u32 {
    return byte_of(src[i >> 2u], i);
}

// An f16 at an even byte offset, widened exactly to f32.
fn src_f16(i: u32) -> f32 {
    return bitcast<f32>(f16_to_f32_bits(half_of(src[i >> 2u], i)));
}

fn src_u32(i: u32) -> u32 {
    if (i & 3u) == 0u {
        return src[i >> 2u];
    }
    return u32_across(src[i >> 2u], src[(i >> 2u) + 1u], i);
}

// ---- plain numbers: a "block" is one element, j is always 0 -----------------------------------

fn decode_f32(b: u32, j: u32) -> f32 {
    return bitcast<f32>(src[(b >> 2u) + j]);
}

fn decode_f16(b: u32, j: u32) -> f32 {
    return src_f16(b + 2u * j);
}

fn decode_bf16(b: u32, j: u32) -> f32 {
    let i = b + 2u * j;
    return bitcast<f32>(half_of(src[i >> 2u], i) << 16u);
}

// ---- legacy blocks of 32 elements -------------------------------------------------------------

// The 4-bit quant of element j of a block whose 16 quant bytes start at byte q: element j < 16
// is the low nibble of byte j, element j >= 16 the high nibble of byte j - 16.
fn nibble(q: u32, j: u32) -> u32 {
    return (src_byte(q + (j & 15u)) >> ((j >> 4u) * 4u)) & 15u;
}

// Q4_0: d (f16), qs[16]. x = d * (q - 8).
fn decode_q4_0(b: u32, j: u32) -> f32 {
    let d = src_f16(b);
    let q = i32(nibble(b + 2u, j)) - 8;
    return d * f32(q);
}

// Q4_1: d, m (f16), qs[16]. x = d * q + m.
fn decode_q4_1(b: u32, j: u32) -> f32 {
    let d = src_f16(b);
    let m = src_f16(b + 2u);
    let q = nibble(b + 4u, j);
    return d * f32(q) + m;
}

// Q5_0: d (f16), qh (u32: bit j is the fifth bit of element j), qs[16]. x = d * (q - 16).
fn decode_q5_0(b: u32, j: u32) -> f32 {
    let d = src_f16(b);
    let qh = src_u32(b + 2u);
    let q = nibble(b + 6u, j) | (((qh >> j) & 1u) << 4u);
    return d * f32(i32(q) - 16);
}

// Q5_1: d, m (f16), qh (u32), qs[16]. x = d * q + m.
fn decode_q5_1(b: u32, j: u32) -> f32 {
    let d = src_f16(b);
    let m = src_f16(b + 2u);
    let qh = src_u32(b + 4u);
    let q = nibble(b + 8u, j) | (((qh >> j) & 1u) << 4u);
    return d * f32(q) + m;
}

// Q8_0: d (f16), qs[32] (int8). x = q * d.
fn decode_q8_0(b: u32, j: u32) -> f32 {
    let d = src_f16(b);
    let q = i32(src_byte(b + 2u + j) << 24u) >> 24u;
    return f32(q) * d;
}

// IQ4_NL: d (f16), qs[16] indexing the non-linear grid. x = d * kvalues[q].
fn decode_iq4_nl(b: u32, j: u32) -> f32 {
    let d = src_f16(b);
    let q = nibble(b + 2u, j);
    return d * f32(KVALUES_IQ4NL[q]);
}

// ---- K-quant super-blocks of 256 elements -----------------------------------------------------

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
fn decode_q2_k(b: u32, j: u32) -> f32 {
    let d = src_f16(b + 80u);
    let dmin = src_f16(b + 82u);
    let sc = src_byte(b + j / 16u);
    let q = (src_byte(b + 16u + 32u * (j / 128u) + j % 32u) >> (2u * ((j % 128u) / 32u))) & 3u;
    let dl = d * f32(sc & 15u);
    let ml = dmin * f32(sc >> 4u);
    return dl * f32(q) - ml;
}

// Q3_K: hmask[32] (high bits), qs[64] (low 2 bits), scales[12] (16 packed 6-bit scales), d.
// Element j: sub-block j / 16; low bits as Q2_K; high bit j / 32 of hmask[j % 32], and a clear
// high bit subtracts 4. x = (d * (sc - 32)) * q with q in -4..3.
fn decode_q3_k(b: u32, j: u32) -> f32 {
    let d = src_f16(b + 108u);
    // Scale s: low 4 bits from nibble s / 8 of byte s % 8, high 2 bits from bits 2 * (s / 4)
    // of byte 8 + s % 4.
    let s = j / 16u;
    let sc_lo = (src_byte(b + 96u + s % 8u) >> (4u * (s / 8u))) & 15u;
    let sc_hi = (src_byte(b + 104u + s % 4u) >> (2u * (s / 4u))) & 3u;
    let sc = i32(sc_lo | (sc_hi << 4u)) - 32;
    let lo = (src_byte(b + 32u + 32u * (j / 128u) + j % 32u) >> (2u * ((j % 128u) / 32u))) & 3u;
    let hi = (src_byte(b + j % 32u) >> (j / 32u)) & 1u;
    let q = i32(lo) - select(4, 0, hi == 1u);
    let dl = d * f32(sc);
    return dl * f32(q);
}

// Q4_K: d, dmin (f16), scales[12] (8 packed 6-bit scales and mins), qs[128] (4-bit quants).
// Element j: sub-block j / 32; quant byte 32 * (j / 64) + j % 32, low nibble for even
// sub-blocks, high for odd. x = (d * sc) * q - (dmin * m).
fn decode_q4_k(b: u32, j: u32) -> f32 {
    let d = src_f16(b);
    let dmin = src_f16(b + 2u);
    let sm = scale_min_k4(b + 4u, j / 32u);
    let q = (src_byte(b + 16u + 32u * (j / 64u) + j % 32u) >> (4u * ((j / 32u) & 1u))) & 15u;
    let dl = d * f32(sm.x);
    let ml = dmin * f32(sm.y);
    return dl * f32(q) - ml;
}

// Q5_K: d, dmin (f16), scales[12], qh[32] (fifth bits), qs[128]. Low 4 bits as Q4_K; the fifth
// bit is bit j / 32 of qh[j % 32]. x = (d * sc) * q - (dmin * m).
fn decode_q5_k(b: u32, j: u32) -> f32 {
    let d = src_f16(b);
    let dmin = src_f16(b + 2u);
    let sm = scale_min_k4(b + 4u, j / 32u);
    let lo = (src_byte(b + 48u + 32u * (j / 64u) + j % 32u) >> (4u * ((j / 32u) & 1u))) & 15u;
    let hi = (src_byte(b + 16u + j % 32u) >> (j / 32u)) & 1u;
    let q = lo | (hi << 4u);
    let dl = d * f32(sm.x);
    let ml = dmin * f32(sm.y);
    return dl * f32(q) - ml;
}

// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d (f16).
// Element j = 128 * n + 32 * k + i: low nibble (k < 2) or high nibble (k >= 2) of
// ql[64 * n + 32 * (k % 2) + i], high bits 2 * k of qh[32 * n + i], scale j / 16.
// x = (d * sc) * (q - 32).
fn decode_q6_k(b: u32, j: u32) -> f32 {
    let n = j / 128u;
    let k = (j % 128u) / 32u;
    let i = j % 32u;
    let d = src_f16(b + 208u);
    let sc = i32(src_byte(b + 192u + j / 16u) << 24u) >> 24u;
    let lo = (src_byte(b + 64u * n + 32u * (k % 2u) + i) >> (4u * (k / 2u))) & 15u;
    let hi = (src_byte(b + 128u + 32u * n + i) >> (2u * k)) & 3u;
    let q = i32(lo | (hi << 4u)) - 32;
    let dl = d * f32(sc);
    return dl * f32(q);
}

// IQ4_XS: d (f16), scales_h (u16: 2 high bits per sub-block), scales_l[4] (4 low bits per
// sub-block), qs[128] indexing the non-linear grid. Element j: sub-block j / 32, quant byte
// 16 * (j / 32) + j % 16, low nibble for j % 32 < 16. x = (d * (ls - 32)) * kvalues[q].
fn decode_iq4_xs(b: u32, j: u32) -> f32 {
    let ib = j / 32u;
    let d = src_f16(b);
    let scales_h = half_of(src[(b + 2u) >> 2u], b + 2u);
    let ls_lo = (src_byte(b + 4u + ib / 2u) >> (4u * (ib % 2u))) & 15u;
    let ls_hi = (scales_h >> (2u * ib)) & 3u;
    let ls = i32(ls_lo | (ls_hi << 4u)) - 32;
    let q = (src_byte(b + 8u + 16u * ib + j % 16u) >> (4u * ((j % 32u) / 16u))) & 15u;
    let dl = d * f32(ls);
    return dl * f32(KVALUES_IQ4NL[q]);
}

// ---- groups of 32 elements ----------------------------------------------------------------------
//
// `group_<type>(b, g)` decodes elements 32 * g .. 32 * g + 31 of the block at byte b (g is 0 for
// blocks of 32, 0..8 for a super-block of 256) and hands them to `emit4(i, x)`, four
// consecutive elements i .. i + 3 at a time (i a multiple of 4), in no particular order. Each
// family that includes this file defines `emit4`: dequant stores x, qmatmul multiplies it into
// its sums, embedding never calls these. Same values, same arithmetic as decode_<type>, component by
// component, but each scale is decoded once per group and each quant word is read once: on
// lavapipe every load or store of a storage buffer is a loop over the SIMD lanes, so the number
// of loads and stores is most of the cost.

// Elements per group.
const GROUP: u32 = 32u;

// The four bytes of a little-endian word, lowest first.
fn bytes4(w: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
}

// The u32 at even byte offset i of `src`, from words i / 4 (lo) and i / 4 + 1 (hi); `unaligned`
// is i % 4 == 2. Blocks of 18, 22, 34, 110 and 210 bytes start at 2 mod 4 every other block, and
// every multi-byte field starts at an even byte. Loops over a run of words carry hi over as the
// next lo, so a run of n words costs n + 1 loads.
fn even_word(lo: u32, hi: u32, unaligned: bool) -> u32 {
    return select(lo, (lo >> 16u) | (hi << 16u), unaligned);
}

fn f16_lo(w: u32) -> f32 {
    return bitcast<f32>(f16_to_f32_bits(w & 0xffffu));
}

fn f16_hi(w: u32) -> f32 {
    return bitcast<f32>(f16_to_f32_bits(w >> 16u));
}

// Legacy blocks: quant word k (bytes 4k .. 4k + 3 of qs) holds the low nibbles of elements
// 4k .. 4k + 3 and the high nibbles of elements 16 + 4k .. 19 + 4k.

fn group_q4_0(b: u32, g: u32) {
    let d = src_f16(b);
    let qi = b + 2u;
    let w = qi >> 2u;
    let un = (qi & 2u) != 0u;
    var lo = src[w];
    for (var k = 0u; k < 4u; k++) {
        let hi = src[w + k + 1u];
        let q = bytes4(even_word(lo, hi, un));
        lo = hi;
        emit4(4u * k, d * vec4<f32>(vec4<i32>(q & vec4<u32>(15u)) - 8));
        emit4(16u + 4u * k, d * vec4<f32>(vec4<i32>(q >> vec4<u32>(4u)) - 8));
    }
}

fn group_q4_1(b: u32, g: u32) {
    let w = b >> 2u;
    let dm = src[w];
    let d = f16_lo(dm);
    let m = f16_hi(dm);
    for (var k = 0u; k < 4u; k++) {
        let q = bytes4(src[w + 1u + k]);
        emit4(4u * k, d * vec4<f32>(q & vec4<u32>(15u)) + m);
        emit4(16u + 4u * k, d * vec4<f32>(q >> vec4<u32>(4u)) + m);
    }
}

// The fifth bits of elements i .. i + 3 from qh, in bit 4.
fn high4(qh: u32, i: u32) -> vec4<u32> {
    return ((vec4<u32>(qh >> i) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) << vec4<u32>(4u);
}

fn group_q5_0(b: u32, g: u32) {
    let d = src_f16(b);
    // qh at byte 2, then qs: one run of 5 words.
    let qi = b + 2u;
    let w = qi >> 2u;
    let un = (qi & 2u) != 0u;
    var lo = src[w];
    var hi = src[w + 1u];
    let qh = even_word(lo, hi, un);
    for (var k = 0u; k < 4u; k++) {
        lo = hi;
        hi = src[w + k + 2u];
        let q = bytes4(even_word(lo, hi, un));
        let q0 = (q & vec4<u32>(15u)) | high4(qh, 4u * k);
        let q1 = (q >> vec4<u32>(4u)) | high4(qh, 16u + 4u * k);
        emit4(4u * k, d * vec4<f32>(vec4<i32>(q0) - 16));
        emit4(16u + 4u * k, d * vec4<f32>(vec4<i32>(q1) - 16));
    }
}

fn group_q5_1(b: u32, g: u32) {
    let w = b >> 2u;
    let dm = src[w];
    let d = f16_lo(dm);
    let m = f16_hi(dm);
    let qh = src[w + 1u];
    for (var k = 0u; k < 4u; k++) {
        let q = bytes4(src[w + 2u + k]);
        let q0 = (q & vec4<u32>(15u)) | high4(qh, 4u * k);
        let q1 = (q >> vec4<u32>(4u)) | high4(qh, 16u + 4u * k);
        emit4(4u * k, d * vec4<f32>(q0) + m);
        emit4(16u + 4u * k, d * vec4<f32>(q1) + m);
    }
}

fn group_q8_0(b: u32, g: u32) {
    let d = src_f16(b);
    let qi = b + 2u;
    let w = qi >> 2u;
    let un = (qi & 2u) != 0u;
    var lo = src[w];
    for (var k = 0u; k < 8u; k++) {
        let hi = src[w + k + 1u];
        let q = even_word(lo, hi, un);
        lo = hi;
        // The four bytes, sign-extended.
        let x = vec4<i32>(vec4<u32>(q) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
        emit4(4u * k, vec4<f32>(x) * d);
    }
}

fn iq4nl4(q: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(f32(KVALUES_IQ4NL[q.x]), f32(KVALUES_IQ4NL[q.y]), f32(KVALUES_IQ4NL[q.z]), f32(KVALUES_IQ4NL[q.w]));
}

fn group_iq4_nl(b: u32, g: u32) {
    let d = src_f16(b);
    let qi = b + 2u;
    let w = qi >> 2u;
    let un = (qi & 2u) != 0u;
    var lo = src[w];
    for (var k = 0u; k < 4u; k++) {
        let hi = src[w + k + 1u];
        let q = bytes4(even_word(lo, hi, un));
        lo = hi;
        emit4(4u * k, d * iq4nl4(q & vec4<u32>(15u)));
        emit4(16u + 4u * k, d * iq4nl4(q >> vec4<u32>(4u)));
    }
}

// Group g of a Q2_K block covers sub-blocks 2g and 2g + 1; its quants are bits 2 * (g % 4) of
// qs[32 * (g / 4) .. + 32].
fn group_q2_k(b: u32, g: u32) {
    let w = b >> 2u;
    let dd = src[w + 20u];
    let d = f16_lo(dd);
    let dmin = f16_hi(dd);
    // scales[2g] and scales[2g + 1].
    let sc2 = half_of(src[w + g / 2u], 2u * g);
    let dl0 = d * f32(sc2 & 15u);
    let ml0 = dmin * f32((sc2 >> 4u) & 15u);
    let dl1 = d * f32((sc2 >> 8u) & 15u);
    let ml1 = dmin * f32(sc2 >> 12u);
    let qw = w + 4u + 8u * (g / 4u);
    let shift = 2u * (g % 4u);
    for (var k = 0u; k < 8u; k++) {
        let q = (bytes4(src[qw + k]) >> vec4<u32>(shift)) & vec4<u32>(3u);
        let dl = select(dl0, dl1, k >= 4u);
        let ml = select(ml0, ml1, k >= 4u);
        emit4(4u * k, dl * vec4<f32>(q) - ml);
    }
}

// Scale s (0..16) of the Q3_K block at byte b: low 4 bits from nibble s / 8 of scales[s % 8],
// high 2 bits from bits 2 * (s / 4) of scales[8 + s % 4], minus 32.
fn q3_k_scale(b: u32, s: u32) -> i32 {
    let sc_lo = (src_byte(b + 96u + s % 8u) >> (4u * (s / 8u))) & 15u;
    let sc_hi = (src_byte(b + 104u + s % 4u) >> (2u * (s / 4u))) & 3u;
    return i32(sc_lo | (sc_hi << 4u)) - 32;
}

// Group g of a Q3_K block: sub-blocks 2g and 2g + 1, high bits g of hmask, low bits as Q2_K.
fn group_q3_k(b: u32, g: u32) {
    let d = src_f16(b + 108u);
    let dl0 = d * f32(q3_k_scale(b, 2u * g));
    let dl1 = d * f32(q3_k_scale(b, 2u * g + 1u));
    let odd = (b & 2u) != 0u;
    let hw = b >> 2u;
    let qw = (b + 32u + 32u * (g / 4u)) >> 2u;
    var hlo = src[hw];
    var qlo = src[qw];
    let shift = 2u * (g % 4u);
    for (var k = 0u; k < 8u; k++) {
        let hhi = src[hw + k + 1u];
        let qhi = src[qw + k + 1u];
        let hm = (bytes4(even_word(hlo, hhi, odd)) >> vec4<u32>(g)) & vec4<u32>(1u);
        let lo = (bytes4(even_word(qlo, qhi, odd)) >> vec4<u32>(shift)) & vec4<u32>(3u);
        hlo = hhi;
        qlo = qhi;
        // A clear high bit subtracts 4.
        let q = vec4<i32>(lo) - vec4<i32>(4) + vec4<i32>(hm << vec4<u32>(2u));
        emit4(4u * k, select(dl0, dl1, k >= 4u) * vec4<f32>(q));
    }
}

// Scale and min of sub-block j (0..8) from the 12 scale bytes as three words (scale_min_k4).
fn scale_min_k4_words(s0: u32, s1: u32, s2: u32, j: u32) -> vec2<u32> {
    if j < 4u {
        return vec2<u32>(byte_of(s0, j) & 63u, byte_of(s1, j) & 63u);
    }
    let lo = byte_of(s2, j);
    return vec2<u32>((lo & 15u) | ((byte_of(s0, j) >> 6u) << 4u), (lo >> 4u) | ((byte_of(s1, j) >> 6u) << 4u));
}

// Group g of a Q4_K block is sub-block g: nibble g % 2 of qs[32 * (g / 2) .. + 32].
fn group_q4_k(b: u32, g: u32) {
    let w = b >> 2u;
    let dd = src[w];
    let d = f16_lo(dd);
    let dmin = f16_hi(dd);
    let sm = scale_min_k4_words(src[w + 1u], src[w + 2u], src[w + 3u], g);
    let dl = d * f32(sm.x);
    let ml = dmin * f32(sm.y);
    let qw = w + 4u + 8u * (g / 2u);
    let shift = 4u * (g & 1u);
    for (var k = 0u; k < 8u; k++) {
        let q = (bytes4(src[qw + k]) >> vec4<u32>(shift)) & vec4<u32>(15u);
        emit4(4u * k, dl * vec4<f32>(q) - ml);
    }
}

// Group g of a Q5_K block is sub-block g: low bits as Q4_K, fifth bit g of qh.
fn group_q5_k(b: u32, g: u32) {
    let w = b >> 2u;
    let dd = src[w];
    let d = f16_lo(dd);
    let dmin = f16_hi(dd);
    let sm = scale_min_k4_words(src[w + 1u], src[w + 2u], src[w + 3u], g);
    let dl = d * f32(sm.x);
    let ml = dmin * f32(sm.y);
    let qw = w + 12u + 8u * (g / 2u);
    let shift = 4u * (g & 1u);
    for (var k = 0u; k < 8u; k++) {
        let lo = (bytes4(src[qw + k]) >> vec4<u32>(shift)) & vec4<u32>(15u);
        let hi = (bytes4(src[w + 4u + k]) >> vec4<u32>(g)) & vec4<u32>(1u);
        emit4(4u * k, dl * vec4<f32>(lo | (hi << vec4<u32>(4u))) - ml);
    }
}

// Group g = 4n + k of a Q6_K block: sub-blocks 2g and 2g + 1, nibble k / 2 of
// ql[64n + 32(k % 2) .. + 32], bits 2k of qh[32n .. + 32].
fn group_q6_k(b: u32, g: u32) {
    let n = g / 4u;
    let kk = g % 4u;
    let d = src_f16(b + 208u);
    // scales[2g] and scales[2g + 1], int8.
    let sc2 = half_of(src[(b + 192u + 2u * g) >> 2u], b + 192u + 2u * g);
    let dl0 = d * f32(i32(sc2 << 24u) >> 24u);
    let dl1 = d * f32(i32(sc2 << 16u) >> 24u);
    let odd = (b & 2u) != 0u;
    let lw = (b + 64u * n + 32u * (kk % 2u)) >> 2u;
    let hw = (b + 128u + 32u * n) >> 2u;
    var llo = src[lw];
    var hlo = src[hw];
    let lshift = 4u * (kk / 2u);
    let hshift = 2u * kk;
    for (var k = 0u; k < 8u; k++) {
        let lhi = src[lw + k + 1u];
        let hhi = src[hw + k + 1u];
        let ql = (bytes4(even_word(llo, lhi, odd)) >> vec4<u32>(lshift)) & vec4<u32>(15u);
        let qh = (bytes4(even_word(hlo, hhi, odd)) >> vec4<u32>(hshift)) & vec4<u32>(3u);
        llo = lhi;
        hlo = hhi;
        let q = vec4<i32>(ql | (qh << vec4<u32>(4u))) - 32;
        emit4(4u * k, select(dl0, dl1, k >= 4u) * vec4<f32>(q));
    }
}

// Group g of an IQ4_XS block is sub-block g: qs[16g .. + 16], low nibbles first.
fn group_iq4_xs(b: u32, g: u32) {
    let w = b >> 2u;
    let dh = src[w];
    let d = f16_lo(dh);
    let ls_lo = byte_of(src[w + 1u], g / 2u) >> (4u * (g % 2u));
    let ls_hi = (dh >> (16u + 2u * g)) & 3u;
    let dl = d * f32(i32((ls_lo & 15u) | (ls_hi << 4u)) - 32);
    let qw = w + 2u + 4u * g;
    for (var k = 0u; k < 4u; k++) {
        let q = bytes4(src[qw + k]);
        emit4(4u * k, dl * iq4nl4(q & vec4<u32>(15u)));
        emit4(16u + 4u * k, dl * iq4nl4(q >> vec4<u32>(4u)));
    }
}

// ---- microscaling and ternary types: MXFP4 (blocks of 32), TQ1_0 and TQ2_0 (256) ---------------

// The doubled E2M1 values of four MXFP4 codes (kvalues_mxfp4 in ggml-common.h: 0, 1, 2, 3, 4, 6,
// 8, 12, then the same negated), computed rather than looked up (lavapipe copies a constant
// array indexed at run time into each invocation's memory): the low three bits m give m for
// m < 4, else (2 + m % 2) << (m / 2 - 1); bit 3 is the sign, and code 8 is +0 as in ggml.
fn mxfp4_k4(q: vec4<u32>) -> vec4<i32> {
    let m = q & vec4<u32>(7u);
    let big = (vec4<u32>(2u) + (m & vec4<u32>(1u))) << ((m >> vec4<u32>(1u)) - vec4<u32>(1u));
    let mag = vec4<i32>(select(m, big, m >= vec4<u32>(4u)));
    return select(mag, -mag, (q & vec4<u32>(8u)) != vec4<u32>(0u));
}

// k * 2^(e - 128) built from its bits, for a nonzero |k| <= 12: exact, since |k| has at most
// two significant bits, so a subnormal result loses none; above f32's range it is infinity,
// as the product is.
fn mxfp4_bits(k: i32, e: u32) -> f32 {
    if k == 0 {
        return 0.0;
    }
    let m = bitcast<u32>(f32(abs(k)));
    let sign = select(0u, 0x80000000u, k < 0);
    let exp = i32(m >> 23u) + i32(e) - 128;
    if exp >= 255 {
        return bitcast<f32>(sign | 0x7f800000u);
    }
    if exp >= 1 {
        return bitcast<f32>(sign | (u32(exp) << 23u) | (m & 0x7fffffu));
    }
    return bitcast<f32>(sign | (((m & 0x7fffffu) | 0x800000u) >> u32(1 - exp)));
}

// Four MXFP4 values at E8M0 scale e: kvalues_mxfp4[q] * GGML_E8M0_TO_FP32_HALF(e), that is
// k * 2^(e - 128). For e in 2..=252 the scale is a normal float and the product is exact and
// finite. e = 0 and 1 give subnormal scales (and results), which a GPU may flush to zero in
// arithmetic (lavapipe does), and e >= 253 may overflow, which WGSL leaves to the
// implementation: those rare blocks are built from bits.
fn mxfp4_4(q: vec4<u32>, e: u32) -> vec4<f32> {
    let k = mxfp4_k4(q);
    if e >= 2u && e <= 252u {
        return vec4<f32>(k) * bitcast<f32>((e - 1u) << 23u);
    }
    return vec4<f32>(mxfp4_bits(k.x, e), mxfp4_bits(k.y, e), mxfp4_bits(k.z, e), mxfp4_bits(k.w, e));
}

// MXFP4: e (E8M0), qs[16] as Q4_0's (element j < 16 the low nibble of qs[j], j >= 16 the high
// nibble of qs[j - 16]). 17-byte blocks start at any byte. x = kvalues[q] * 2^(e - 128).
fn decode_mxfp4(b: u32, j: u32) -> f32 {
    return mxfp4_4(vec4<u32>(nibble(b + 1u, j)), src_byte(b)).x;
}

// 3^n for n in 0..5 (no run-time indexed constant array; see mxfp4_k4).
fn pow3(n: u32) -> u32 {
    return select(select(select(select(1u, 3u, n == 1u), 9u, n == 2u), 27u, n == 3u), 81u, n == 4u);
}

// Trit n (0..4) of a TQ1_0 byte q, as -1, 0 or 1: the byte holds five base-3 digits as a
// fixed-point fraction; (q * 3^n mod 256) * 3 >> 8 is digit n (dequantize_row_tq1_0).
fn trit(q: u32, n: u32) -> i32 {
    let p = (q * pow3(n)) & 255u;
    return i32((p * 3u) >> 8u) - 1;
}

fn trits4(q: vec4<u32>, n: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(((((q * pow3(n)) & vec4<u32>(255u)) * 3u) >> vec4<u32>(8u))) - 1);
}

// TQ1_0: qs[48] (five trits a byte), qh[4] (four trits a byte), d (f16 at byte 52).
// Element j < 160: digit j / 32 of qs[j % 32]; j < 240: digit (j - 160) / 16 of
// qs[32 + j % 16]; else digit (j - 240) / 4 of qh[j % 4]. x = (t - 1) * d.
fn decode_tq1_0(b: u32, j: u32) -> f32 {
    let d = src_f16(b + 52u);
    var byte: u32;
    var n: u32;
    if j < 160u {
        byte = src_byte(b + j % 32u);
        n = j / 32u;
    } else if j < 240u {
        byte = src_byte(b + 32u + j % 16u);
        n = (j - 160u) / 16u;
    } else {
        byte = src_byte(b + 48u + j % 4u);
        n = (j - 240u) / 4u;
    }
    return f32(trit(byte, n)) * d;
}

// TQ2_0: qs[64] (four 2-bit values a byte), d (f16 at byte 64). Element j: bits
// 2 * ((j % 128) / 32) of qs[32 * (j / 128) + j % 32]. x = (q - 1) * d.
fn decode_tq2_0(b: u32, j: u32) -> f32 {
    let d = src_f16(b + 64u);
    let q = (src_byte(b + 32u * (j / 128u) + j % 32u) >> (2u * ((j % 128u) / 32u))) & 3u;
    return f32(i32(q) - 1) * d;
}

// An MXFP4 block is one group. Its quant bytes start at b + 1, at any alignment: each quant
// word is read across two words of `src`.
fn group_mxfp4(b: u32, g: u32) {
    let e = src_byte(b);
    let qi = b + 1u;
    let w = qi >> 2u;
    var lo = src[w];
    for (var k = 0u; k < 4u; k++) {
        let hi = src[w + k + 1u];
        let q = bytes4(u32_across(lo, hi, qi));
        lo = hi;
        emit4(4u * k, mxfp4_4(q & vec4<u32>(15u), e));
        emit4(16u + 4u * k, mxfp4_4(q >> vec4<u32>(4u), e));
    }
}

// Groups 0..4 of a TQ1_0 block are digit g of qs[0..32]; groups 5 and 6 digits 2(g - 5) and
// 2(g - 5) + 1 of qs[32..48]; group 7 digit 4 of qs[32..48], then the 16 trits of qh.
fn group_tq1_0(b: u32, g: u32) {
    let d = src_f16(b + 52u);
    let un = (b & 2u) != 0u;
    if g < 5u {
        let w = b >> 2u;
        var lo = src[w];
        for (var k = 0u; k < 8u; k++) {
            let hi = src[w + k + 1u];
            let q = bytes4(even_word(lo, hi, un));
            lo = hi;
            emit4(4u * k, trits4(q, g) * d);
        }
        return;
    }
    let n = 2u * (g - 5u);
    let w = (b + 32u) >> 2u;
    var lo = src[w];
    for (var k = 0u; k < 4u; k++) {
        let hi = src[w + k + 1u];
        let q = bytes4(even_word(lo, hi, un));
        lo = hi;
        emit4(4u * k, trits4(q, n) * d);
        if g < 7u {
            emit4(16u + 4u * k, trits4(q, n + 1u) * d);
        }
    }
    if g == 7u {
        // lo is now the word at byte b + 48 (qh) when b is 4-aligned, its low half otherwise.
        let qh = bytes4(even_word(lo, src[w + 5u], un));
        for (var m = 0u; m < 4u; m++) {
            emit4(16u + 4u * m, trits4(qh, m) * d);
        }
    }
}

// Group g of a TQ2_0 block: bits 2 * (g % 4) of qs[32 * (g / 4) .. + 32].
fn group_tq2_0(b: u32, g: u32) {
    let d = src_f16(b + 64u);
    let qi = b + 32u * (g / 4u);
    let w = qi >> 2u;
    let un = (qi & 2u) != 0u;
    let shift = 2u * (g % 4u);
    var lo = src[w];
    for (var k = 0u; k < 8u; k++) {
        let hi = src[w + k + 1u];
        let q = (bytes4(even_word(lo, hi, un)) >> vec4<u32>(shift)) & vec4<u32>(3u);
        lo = hi;
        emit4(4u * k, vec4<f32>(vec4<i32>(q) - 1) * d);
    }
}

// ---- i-quant super-blocks of 256 elements, on grids -------------------------------------------
//
// IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M. Runs of 8 (or 4) elements are one entry
// of a grid, its bytes (lowest first) the magnitudes, with signs from ksigns_iq2xs (7 stored
// bits, the eighth their parity) or stored whole, times a scale per 32 (or 16) elements. The
// grids are ggml-common.h's tables, held once in Rust (src/ops/iq_grids) and bound as `grids`
// by each family that includes this file, each table at the word below (the naga test checks
// these against iq_grids::OFFSETS): a u64 grid entry i is words 2i (elements 0..3) and 2i + 1
// (elements 4..7), a u32 entry one word, ksigns one word per entry. A storage buffer, not a
// WGSL const array: naga copies a const array indexed at run time into a local per call.
// Every product is exact in f32 (an 11-bit f16 significand times scales and grid values of at
// most 6 bits each, or IQ1's grid value ± 1/8), so the order of the products cannot matter.
const GRID_IQ2XXS: u32 = 0u;
const GRID_IQ2XS: u32 = 512u;
const GRID_IQ2S: u32 = 1536u;
const GRID_IQ3XXS: u32 = 3584u;
const GRID_IQ3S: u32 = 3840u;
const GRID_IQ1S: u32 = 4352u;
const GRID_KSIGNS: u32 = 8448u;

// Byte k (0..8) of u64 grid entry i of the table at word t.
fn grid8_byte(t: u32, i: u32, k: u32) -> u32 {
    return byte_of(grids[t + 2u * i + k / 4u], k);
}

// The 8 sign bits of ksigns_iq2xs[i].
fn ksigns(i: u32) -> u32 {
    return grids[GRID_KSIGNS + i];
}

// -1 where bit k of `signs` is set, else 1.
fn sign1(signs: u32, k: u32) -> f32 {
    return select(1.0, -1.0, ((signs >> k) & 1u) != 0u);
}

// The same for bits k .. k + 3.
fn sign4(signs: u32, k: u32) -> vec4<f32> {
    let bits = (vec4<u32>(signs >> k) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u);
    return select(vec4<f32>(1.0), vec4<f32>(-1.0), bits != vec4<u32>(0u));
}

// The four bytes of a word as magnitudes, and as IQ1_S grid values (int8: -1, 0, 1).
fn grid4(w: u32) -> vec4<f32> {
    return vec4<f32>(bytes4(w));
}

fn grid4_i8(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

fn i8_of(b: u32) -> f32 {
    return f32(i32(b << 24u) >> 24u);
}

// The scale of IQ2_XXS, IQ2_XS, IQ2_S from 4-bit s: d * (0.5 + s) * 0.25 (IQ3_XXS: * 0.5).
fn iq2_scale(d: f32, s: u32) -> f32 {
    return d * (0.5 + f32(s)) * 0.25;
}

// IQ2_XXS: d (f16), then per 32 elements two words: four grid indices (bytes), and four 7-bit
// sign indices with a 4-bit scale on top. x = (d * (0.5 + s) * 0.25) * grid * sign.
fn decode_iq2_xxs(b: u32, j: u32) -> f32 {
    let g = j / 32u;
    let l = (j % 32u) / 8u;
    let k = j % 8u;
    let aux = src_u32(b + 6u + 8u * g);
    let db = iq2_scale(src_f16(b), aux >> 28u);
    let q = grid8_byte(GRID_IQ2XXS, src_byte(b + 2u + 8u * g + l), k);
    return db * f32(q) * sign1(ksigns((aux >> (7u * l)) & 127u), k);
}

// IQ2_XS: d (f16), qs (u16[32]: 9-bit grid index, 7-bit sign index) at byte 2, scales[8] (two
// 4-bit scales per 32 elements) at byte 66.
fn decode_iq2_xs(b: u32, j: u32) -> f32 {
    let g = j / 32u;
    let l = (j % 32u) / 8u;
    let k = j % 8u;
    let sc = src_byte(b + 66u + g) >> (4u * (l / 2u));
    let db = iq2_scale(src_f16(b), sc & 15u);
    let i = b + 2u + 8u * g + 2u * l;
    let q = half_of(src[i >> 2u], i);
    return db * f32(grid8_byte(GRID_IQ2XS, q & 511u, k)) * sign1(ksigns(q >> 9u), k);
}

// IQ2_S: d (f16), qs[32] (grid index low bits) at byte 2, signs[32] at 34, qh[8] (bits 8 and 9
// of four indices) at 66, scales[8] at 74.
fn decode_iq2_s(b: u32, j: u32) -> f32 {
    let g = j / 32u;
    let l = (j % 32u) / 8u;
    let k = j % 8u;
    let sc = src_byte(b + 74u + g) >> (4u * (l / 2u));
    let db = iq2_scale(src_f16(b), sc & 15u);
    let idx = src_byte(b + 2u + 4u * g + l) | ((src_byte(b + 66u + g) << (8u - 2u * l)) & 0x300u);
    return db * f32(grid8_byte(GRID_IQ2S, idx, k)) * sign1(src_byte(b + 34u + 4u * g + l), k);
}

// IQ3_XXS: d (f16), qs[64] (grid indices of 4 elements) at byte 2, then per 32 elements a word
// of four 7-bit sign indices and a 4-bit scale at byte 66. x = (d * (0.5 + s) * 0.5) * grid * sign.
fn decode_iq3_xxs(b: u32, j: u32) -> f32 {
    let g = j / 32u;
    let l = (j % 32u) / 8u;
    let k = j % 8u;
    let aux = src_u32(b + 66u + 4u * g);
    let db = src_f16(b) * (0.5 + f32(aux >> 28u)) * 0.5;
    let idx = src_byte(b + 2u + 8u * g + 2u * l + k / 4u);
    let q = byte_of(grids[GRID_IQ3XXS + idx], k);
    return db * f32(q) * sign1(ksigns((aux >> (7u * l)) & 127u), k);
}

// IQ3_S: d (f16), qs[64] (grid index low bits) at byte 2, qh[8] (bit 8 of eight indices) at
// 66, signs[32] at 74, scales[4] (two 4-bit scales per 64 elements) at 106.
// x = (d * (1 + 2 s)) * grid * sign.
fn decode_iq3_s(b: u32, j: u32) -> f32 {
    let g = j / 32u;
    let l = (j % 32u) / 8u;
    let k = j % 8u;
    let s = (src_byte(b + 106u + g / 2u) >> (4u * (g % 2u))) & 15u;
    let db = src_f16(b) * f32(1u + 2u * s);
    let n = 2u * l + k / 4u;
    let idx = src_byte(b + 2u + 8u * g + n) | ((src_byte(b + 66u + g) << (8u - n)) & 256u);
    let q = byte_of(grids[GRID_IQ3S + idx], k);
    return db * f32(q) * sign1(src_byte(b + 74u + 4u * g + l), k);
}

// IQ1_S: d (f16), qs[32] (grid index low bits) at byte 2, qh (u16[8]: per 32 elements four
// 3-bit index highs, a 3-bit scale, the sign of the shift) at 34. x = (d * (2 s + 1)) *
// (grid ± 1/8).
fn decode_iq1_s(b: u32, j: u32) -> f32 {
    let g = j / 32u;
    let l = (j % 32u) / 8u;
    let i = b + 34u + 2u * g;
    let qh = half_of(src[i >> 2u], i);
    let dl = src_f16(b) * f32(2u * ((qh >> 12u) & 7u) + 1u);
    let delta = select(0.125, -0.125, (qh & 0x8000u) != 0u);
    let idx = src_byte(b + 2u + 4u * g + l) | (((qh >> (3u * l)) & 7u) << 8u);
    return dl * (i8_of(grid8_byte(GRID_IQ1S, idx, j % 8u)) + delta);
}

// IQ1_M's d: the top nibbles of its four u16 scales (bytes 48..56; blocks are 56 bytes, so
// whole words).
fn iq1_m_d(b: u32) -> f32 {
    let s01 = src[(b + 48u) >> 2u];
    let s23 = src[(b + 52u) >> 2u];
    let bits = ((s01 >> 12u) & 0xfu) | ((s01 >> 24u) & 0xf0u) | ((s23 >> 4u) & 0xf00u) | ((s23 >> 16u) & 0xf000u);
    return bitcast<f32>(f16_to_f32_bits(bits));
}

// IQ1_M: qs[32] (grid index low bits), qh[16] (per 8 elements a 3-bit index high and the
// shift's sign) at byte 32, scales (u16[4]: 3-bit scales per 16 elements, d in the top
// nibbles) at 48. x = (d * (2 s + 1)) * (grid ± 1/8).
fn decode_iq1_m(b: u32, j: u32) -> f32 {
    let g = j / 32u;
    let l = (j % 32u) / 8u;
    let i = b + 48u + 2u * (g / 2u);
    let s = (half_of(src[i >> 2u], i) >> (6u * (g % 2u) + 3u * (l / 2u))) & 7u;
    let dl = iq1_m_d(b) * f32(2u * s + 1u);
    let h = src_byte(b + 32u + 2u * g + l / 2u) >> (4u * (l % 2u));
    let delta = select(0.125, -0.125, (h & 8u) != 0u);
    let idx = src_byte(b + 4u * g + l) | ((h & 7u) << 8u);
    return dl * (i8_of(grid8_byte(GRID_IQ1S, idx, j % 8u)) + delta);
}

// Groups: group g of an i-quant block is elements 32g .. 32g + 31.

fn group_iq2_xxs(b: u32, g: u32) {
    let idx = src_u32(b + 2u + 8u * g);
    let aux = src_u32(b + 6u + 8u * g);
    let db = iq2_scale(src_f16(b), aux >> 28u);
    for (var l = 0u; l < 4u; l++) {
        let e = GRID_IQ2XXS + 2u * ((idx >> (8u * l)) & 255u);
        let s = ksigns((aux >> (7u * l)) & 127u);
        emit4(8u * l, db * grid4(grids[e]) * sign4(s, 0u));
        emit4(8u * l + 4u, db * grid4(grids[e + 1u]) * sign4(s, 4u));
    }
}

fn group_iq2_xs(b: u32, g: u32) {
    let sc = src_byte(b + 66u + g);
    let d = src_f16(b);
    let db0 = iq2_scale(d, sc & 15u);
    let db1 = iq2_scale(d, sc >> 4u);
    let qa = src_u32(b + 2u + 8u * g);
    let qb = src_u32(b + 6u + 8u * g);
    for (var l = 0u; l < 4u; l++) {
        let q = (select(qa, qb, l >= 2u) >> (16u * (l % 2u))) & 0xffffu;
        let db = select(db0, db1, l >= 2u);
        let e = GRID_IQ2XS + 2u * (q & 511u);
        let s = ksigns(q >> 9u);
        emit4(8u * l, db * grid4(grids[e]) * sign4(s, 0u));
        emit4(8u * l + 4u, db * grid4(grids[e + 1u]) * sign4(s, 4u));
    }
}

fn group_iq2_s(b: u32, g: u32) {
    let sc = src_byte(b + 74u + g);
    let d = src_f16(b);
    let db0 = iq2_scale(d, sc & 15u);
    let db1 = iq2_scale(d, sc >> 4u);
    let qs = src_u32(b + 2u + 4u * g);
    let signs = src_u32(b + 34u + 4u * g);
    let qh = src_byte(b + 66u + g);
    for (var l = 0u; l < 4u; l++) {
        let idx = ((qs >> (8u * l)) & 255u) | ((qh << (8u - 2u * l)) & 0x300u);
        let db = select(db0, db1, l >= 2u);
        let e = GRID_IQ2S + 2u * idx;
        let s = (signs >> (8u * l)) & 255u;
        emit4(8u * l, db * grid4(grids[e]) * sign4(s, 0u));
        emit4(8u * l + 4u, db * grid4(grids[e + 1u]) * sign4(s, 4u));
    }
}

fn group_iq3_xxs(b: u32, g: u32) {
    let qa = src_u32(b + 2u + 8u * g);
    let qb = src_u32(b + 6u + 8u * g);
    let aux = src_u32(b + 66u + 4u * g);
    let db = src_f16(b) * (0.5 + f32(aux >> 28u)) * 0.5;
    for (var l = 0u; l < 4u; l++) {
        let q = select(qa, qb, l >= 2u) >> (16u * (l % 2u));
        let s = ksigns((aux >> (7u * l)) & 127u);
        emit4(8u * l, db * grid4(grids[GRID_IQ3XXS + (q & 255u)]) * sign4(s, 0u));
        emit4(8u * l + 4u, db * grid4(grids[GRID_IQ3XXS + ((q >> 8u) & 255u)]) * sign4(s, 4u));
    }
}

fn group_iq3_s(b: u32, g: u32) {
    let s = (src_byte(b + 106u + g / 2u) >> (4u * (g % 2u))) & 15u;
    let db = src_f16(b) * f32(1u + 2u * s);
    let qa = src_u32(b + 2u + 8u * g);
    let qb = src_u32(b + 6u + 8u * g);
    let qh = src_byte(b + 66u + g);
    let signs = src_u32(b + 74u + 4u * g);
    for (var l = 0u; l < 4u; l++) {
        let q = select(qa, qb, l >= 2u) >> (16u * (l % 2u));
        let i1 = (q & 255u) | ((qh << (8u - 2u * l)) & 256u);
        let i2 = ((q >> 8u) & 255u) | ((qh << (7u - 2u * l)) & 256u);
        let sg = (signs >> (8u * l)) & 255u;
        emit4(8u * l, db * grid4(grids[GRID_IQ3S + i1]) * sign4(sg, 0u));
        emit4(8u * l + 4u, db * grid4(grids[GRID_IQ3S + i2]) * sign4(sg, 4u));
    }
}

fn group_iq1_s(b: u32, g: u32) {
    let i = b + 34u + 2u * g;
    let qh = half_of(src[i >> 2u], i);
    let dl = src_f16(b) * f32(2u * ((qh >> 12u) & 7u) + 1u);
    let delta = select(0.125, -0.125, (qh & 0x8000u) != 0u);
    let qs = src_u32(b + 2u + 4u * g);
    for (var l = 0u; l < 4u; l++) {
        let e = GRID_IQ1S + 2u * (((qs >> (8u * l)) & 255u) | (((qh >> (3u * l)) & 7u) << 8u));
        emit4(8u * l, dl * (grid4_i8(grids[e]) + delta));
        emit4(8u * l + 4u, dl * (grid4_i8(grids[e + 1u]) + delta));
    }
}

fn group_iq1_m(b: u32, g: u32) {
    let d = iq1_m_d(b);
    let i = b + 48u + 2u * (g / 2u);
    let s = half_of(src[i >> 2u], i) >> (6u * (g % 2u));
    let dl1 = d * f32(2u * (s & 7u) + 1u);
    let dl2 = d * f32(2u * ((s >> 3u) & 7u) + 1u);
    let qs = src_u32(b + 4u * g);
    let h2 = half_of(src[(b + 32u + 2u * g) >> 2u], b + 32u + 2u * g);
    for (var l = 0u; l < 4u; l++) {
        let h = h2 >> (4u * l);
        let delta = select(0.125, -0.125, (h & 8u) != 0u);
        let e = GRID_IQ1S + 2u * (((qs >> (8u * l)) & 255u) | ((h & 7u) << 8u));
        let dl = select(dl1, dl2, l >= 2u);
        emit4(8u * l, dl * (grid4_i8(grids[e]) + delta));
        emit4(8u * l + 4u, dl * (grid4_i8(grids[e + 1u]) + delta));
    }
}
