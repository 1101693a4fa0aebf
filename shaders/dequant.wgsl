// Dequantize GGML's legacy blocks of 32 elements (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) to f32,
// straight from the block bytes as the GGUF file stores them: the input is the raw byte stream
// read as u32 words, and each field (an f16 scale at byte 0 of an 18-byte Q4_0 block, a u32 of
// high bits at byte 2 of a 22-byte Q5_0 block) is read at its byte offset. One invocation per
// output element; one entry point per block type.
//
// The arithmetic is ggml's dequantize_row_* (ggml-quants.c) in float32: scales converted from
// f16 first (exactly, subnormals included), products grouped as written there. Every product
// here is exact in f32 (an f16 significand has 11 bits, a quant at most 7), so the only rounding
// is the one addition of Q4_1 and Q5_1, and a compiler that contracts `d * q + m` into a fused
// multiply-add gets the same bits. The CPU twin is `cpu` in src/ops/dequant.rs.

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

// Elements per block, and bytes per block of each type (ggml-common.h; asserted equal to
// dtype.rs in tests/shaders.rs).
const BLOCK_ELEMS: u32 = 32u;
const Q4_0_BYTES: u32 = 18u;
const Q4_1_BYTES: u32 = 20u;
const Q5_0_BYTES: u32 = 22u;
const Q5_1_BYTES: u32 = 24u;
const Q8_0_BYTES: u32 = 34u;
const IQ4_NL_BYTES: u32 = 18u;

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

fn src_u32(i: u32) -> u32 {
    if (i & 3u) == 0u {
        return src[i >> 2u];
    }
    return u32_across(src[i >> 2u], src[(i >> 2u) + 1u], i);
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

// The 4-bit quant of element j of a block whose 16 quant bytes start at byte q: element j < 16
// is the low nibble of byte j, element j >= 16 the high nibble of byte j - 16.
fn nibble(q: u32, j: u32) -> u32 {
    return (src_byte(q + (j & 15u)) >> ((j >> 4u) * 4u)) & 15u;
}

// Q4_0: d (f16), qs[16]. x = d * (q - 8).
@compute @workgroup_size(WG)
fn dequant_q4_0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, Q4_0_BYTES);
    let d = src_f16(at.x);
    let q = i32(nibble(at.x + 2u, at.y)) - 8;
    dst[at.z] = Out(d * f32(q));
}

// Q4_1: d, m (f16), qs[16]. x = d * q + m.
@compute @workgroup_size(WG)
fn dequant_q4_1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, Q4_1_BYTES);
    let d = src_f16(at.x);
    let m = src_f16(at.x + 2u);
    let q = nibble(at.x + 4u, at.y);
    dst[at.z] = Out(d * f32(q) + m);
}

// Q5_0: d (f16), qh (u32: bit j is the fifth bit of element j), qs[16]. x = d * (q - 16).
@compute @workgroup_size(WG)
fn dequant_q5_0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, Q5_0_BYTES);
    let d = src_f16(at.x);
    let qh = src_u32(at.x + 2u);
    let q = nibble(at.x + 6u, at.y) | (((qh >> at.y) & 1u) << 4u);
    dst[at.z] = Out(d * f32(i32(q) - 16));
}

// Q5_1: d, m (f16), qh (u32), qs[16]. x = d * q + m.
@compute @workgroup_size(WG)
fn dequant_q5_1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, Q5_1_BYTES);
    let d = src_f16(at.x);
    let m = src_f16(at.x + 2u);
    let qh = src_u32(at.x + 4u);
    let q = nibble(at.x + 8u, at.y) | (((qh >> at.y) & 1u) << 4u);
    dst[at.z] = Out(d * f32(q) + m);
}

// Q8_0: d (f16), qs[32] (int8). x = q * d.
@compute @workgroup_size(WG)
fn dequant_q8_0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, Q8_0_BYTES);
    let d = src_f16(at.x);
    let q = i32(src_byte(at.x + 2u + at.y) << 24u) >> 24u;
    dst[at.z] = Out(f32(q) * d);
}

// IQ4_NL: d (f16), qs[16] indexing the non-linear grid. x = d * kvalues[q].
@compute @workgroup_size(WG)
fn dequant_iq4_nl(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if !in_range(wg, nwg, l) { return; }
    let at = locate(wg, nwg, l, IQ4_NL_BYTES);
    let d = src_f16(at.x);
    let q = nibble(at.x + 2u, at.y);
    dst[at.z] = Out(d * f32(KVALUES_IQ4NL[q]));
}
