// Embedding lookup: dst[i][k] = table[ids[i]][k] for a table [vocab, dim] in any type
// shaders/quant_decode.wgsl decodes (F32, F16, BF16, GGML blocks), read as stored, and dst
// [n, dim] f32. The launcher (src/ops/embedding.rs) checks every id against vocab on the host
// before dispatch; the CPU twin is `cpu` there.
//
// One invocation per output element. A table may span pages, each holding whole blocks; the
// launcher dispatches once per page and an invocation writes its element only when the element's
// block lies in the bound page, so every element is written exactly once.

struct Params {
    // Output elements, n * dim.
    count: u32,
    dim: u32,
    // Blocks per table row, and bytes and elements per block (dtype.rs's table).
    row_blocks: u32,
    block_bytes: u32,
    block_elems: u32,
    // The table's blocks in the bound page: first_block .. first_block + page_blocks.
    first_block: u32,
    page_blocks: u32,
    _pad: u32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
// One page of the table, as stored (the name the decoders read).
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

// Table types, as each entry point names its own (the same numbering as qmatmul.wgsl).
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

// Element j of the block of type `t` at byte b of `src`; each entry point passes a constant t,
// so the switch folds away.
fn decode(t: u32, b: u32, j: u32) -> f32 {
    switch t {
        case 0u: { return decode_f32(b, j); }
        case 1u: { return decode_f16(b, j); }
        case 2u: { return decode_bf16(b, j); }
        case 3u: { return decode_q4_0(b, j); }
        case 4u: { return decode_q4_1(b, j); }
        case 5u: { return decode_q5_0(b, j); }
        case 6u: { return decode_q5_1(b, j); }
        case 7u: { return decode_q8_0(b, j); }
        case 8u: { return decode_iq4_nl(b, j); }
        case 9u: { return decode_q2_k(b, j); }
        case 10u: { return decode_q3_k(b, j); }
        case 11u: { return decode_q4_k(b, j); }
        case 12u: { return decode_q5_k(b, j); }
        case 13u: { return decode_q6_k(b, j); }
        case 14u: { return decode_iq4_xs(b, j); }
        default: { return 0.0; }
    }
}

fn gather(t: u32, i: u32) {
    if i >= params.count {
        return;
    }
    let row = i / params.dim;
    let k = i % params.dim;
    let block = ids[row] * params.row_blocks + k / params.block_elems;
    if block < params.first_block || block - params.first_block >= params.page_blocks {
        return;
    }
    dst[i] = decode(t, (block - params.first_block) * params.block_bytes, k % params.block_elems);
}

@compute @workgroup_size(WG)
fn embedding_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_F32, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_F16, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_bf16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_BF16, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_q4_0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_Q4_0, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_q4_1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_Q4_1, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_q5_0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_Q5_0, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_q5_1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_Q5_1, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_q8_0(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_Q8_0, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_iq4_nl(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_IQ4_NL, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_q2_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_Q2_K, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_q3_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_Q3_K, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_q4_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_Q4_K, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_q5_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_Q5_K, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_q6_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_Q6_K, flat_index(wg, nwg, l, WG));
}

@compute @workgroup_size(WG)
fn embedding_iq4_xs(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    gather(T_IQ4_XS, flat_index(wg, nwg, l, WG));
}

// quant_decode.wgsl's group decoders hand their values to `emit4`, which every family that
// includes it must define. This family gathers element by element with `decode_<type>` and never
// calls the group decoders.
fn emit4(i: u32, x: vec4<f32>) {}
