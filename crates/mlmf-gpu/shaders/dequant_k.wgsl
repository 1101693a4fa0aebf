// Dequantize GGML's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and IQ4_XS, super-blocks of 256
// elements, to f32, straight from the block bytes as the GGUF file stores them (read as u32
// words; fields at their byte offsets). Each invocation decodes one group of 32 elements (an
// eighth of a super-block); one entry point per block type. The per-type arithmetic is
// shaders/quant_decode.wgsl's (shared with qmatmul), ggml's dequantize_row_* in float32; GPU,
// CPU twin (`cpu` in src/ops/dequant_k.rs) and gguf-py agree bit for bit.

// Elements per super-block (QK_K), and bytes per block of each type (ggml-common.h; asserted
// equal to dtype.rs in tests/shaders.rs).
const BLOCK_ELEMS: u32 = 256u;
const Q2_K_BYTES: u32 = 84u;
const Q3_K_BYTES: u32 = 110u;
const Q4_K_BYTES: u32 = 144u;
const Q5_K_BYTES: u32 = 176u;
const Q6_K_BYTES: u32 = 210u;
const IQ4_XS_BYTES: u32 = 136u;

// Q2_K: scales[16], qs[64] (2-bit quants), d, dmin (f16). x = (d * sc) * q - (dmin * m).
@compute @workgroup_size(WG)
fn dequant_q2_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_q2_k(block_byte(g, Q2_K_BYTES), g % 8u);
    }
}

// Q3_K: hmask[32], qs[64], scales[12], d. x = (d * (sc - 32)) * q, q in -4..3.
@compute @workgroup_size(WG)
fn dequant_q3_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_q3_k(block_byte(g, Q3_K_BYTES), g % 8u);
    }
}

// Q4_K: d, dmin (f16), scales[12], qs[128]. x = (d * sc) * q - (dmin * m).
@compute @workgroup_size(WG)
fn dequant_q4_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_q4_k(block_byte(g, Q4_K_BYTES), g % 8u);
    }
}

// Q5_K: d, dmin (f16), scales[12], qh[32], qs[128]. x = (d * sc) * q - (dmin * m).
@compute @workgroup_size(WG)
fn dequant_q5_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_q5_k(block_byte(g, Q5_K_BYTES), g % 8u);
    }
}

// Q6_K: ql[128], qh[64], scales[16] (int8), d (f16). x = (d * sc) * (q - 32).
@compute @workgroup_size(WG)
fn dequant_q6_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_q6_k(block_byte(g, Q6_K_BYTES), g % 8u);
    }
}

// IQ4_XS: d (f16), scales_h (u16), scales_l[4], qs[128]. x = (d * (ls - 32)) * kvalues[q].
@compute @workgroup_size(WG)
fn dequant_iq4_xs(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_iq4_xs(block_byte(g, IQ4_XS_BYTES), g % 8u);
    }
}
