// Dequantize GGML's legacy blocks of 32 elements (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) to f32,
// straight from the block bytes as the GGUF file stores them: the input is the raw byte stream
// read as u32 words, and each field (an f16 scale at byte 0 of an 18-byte Q4_0 block, a u32 of
// high bits at byte 2 of a 22-byte Q5_0 block) is read at its byte offset. Each invocation
// decodes one group of 32 elements; one entry point per block type. The per-type arithmetic is
// shaders/quant_decode.wgsl's (shared with qmatmul), ggml's dequantize_row_* in float32; GPU,
// CPU twin (`cpu` in src/ops/dequant.rs) and gguf-py agree bit for bit.

// Elements per block, and bytes per block of each type (ggml-common.h; asserted equal to
// dtype.rs in tests/shaders.rs).
const BLOCK_ELEMS: u32 = 32u;
const Q4_0_BYTES: u32 = 18u;
const Q4_1_BYTES: u32 = 20u;
const Q5_0_BYTES: u32 = 22u;
const Q5_1_BYTES: u32 = 24u;
const Q8_0_BYTES: u32 = 34u;
const IQ4_NL_BYTES: u32 = 18u;

// Q4_0: d (f16), qs[16]. x = d * (q - 8).
@compute @workgroup_size(WG)
fn dequant_q4_0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_q4_0(block_byte(g, Q4_0_BYTES), 0u);
    }
}

// Q4_1: d, m (f16), qs[16]. x = d * q + m.
@compute @workgroup_size(WG)
fn dequant_q4_1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_q4_1(block_byte(g, Q4_1_BYTES), 0u);
    }
}

// Q5_0: d (f16), qh (u32), qs[16]. x = d * (q - 16).
@compute @workgroup_size(WG)
fn dequant_q5_0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_q5_0(block_byte(g, Q5_0_BYTES), 0u);
    }
}

// Q5_1: d, m (f16), qh (u32), qs[16]. x = d * q + m.
@compute @workgroup_size(WG)
fn dequant_q5_1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_q5_1(block_byte(g, Q5_1_BYTES), 0u);
    }
}

// Q8_0: d (f16), qs[32] (int8). x = q * d.
@compute @workgroup_size(WG)
fn dequant_q8_0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_q8_0(block_byte(g, Q8_0_BYTES), 0u);
    }
}

// IQ4_NL: d (f16), qs[16] indexing the non-linear grid. x = d * kvalues[q].
@compute @workgroup_size(WG)
fn dequant_iq4_nl(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = group_index(wg, nwg, l);
    if g < groups_end() {
        start_group(g);
        group_iq4_nl(block_byte(g, IQ4_NL_BYTES), 0u);
    }
}
