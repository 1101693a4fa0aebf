// Dequantize GGML block types (the GROUPED rows of src/ops/quant_decode.rs: Q4_0 .. IQ4_NL and
// MXFP4 in blocks of 32 elements, Q2_K .. IQ4_XS, TQ1_0 and TQ2_0 in super-blocks of 256) to
// f32, straight from the block
// bytes as the GGUF file stores them: the input is the raw byte stream read as u32 words, and
// each field (an f16 scale at byte 0 of an 18-byte Q4_0 block, a u32 of high bits at byte 2 of a
// 22-byte Q5_0 block) is read at its byte offset. Each invocation decodes one group of 32
// elements (a legacy block, or an eighth of a super-block) with quant_decode.wgsl's
// `decode_group`, ggml's dequantize_row_* in float32; GPU, CPU twin and gguf-py agree bit for
// bit. One entry point; the launcher (src/ops/dequant.rs) sets TYPE and the block geometry.

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
// Bytes and elements per block of TYPE (dtype.rs's table, through the launcher).
override BLOCK_BYTES: u32;
override BLOCK_ELEMS: u32;

// The output element type. The F16 variant of this family (kernels.rs, `Variant::F16`) turns
// this line into `alias Out = f16;` and enables f16; values are computed in f32 either way and
// rounded once on the store.
alias Out = f32;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
// The output as quads: the launcher (src/ops/paged.rs, `out_align`) splits output pages at
// multiples of 16 bytes, and input pages hold whole blocks, so every dispatch starts and ends at
// a multiple of 4 elements and each quad a decoder emits lies wholly inside or outside it. One
// vec4 store costs lavapipe about what one scalar store does.
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<Out>>;
// The i-quant grid and sign tables quant_decode.wgsl reads (src/ops/iq_grids).
@group(0) @binding(3) var<storage, read> grids: array<u32>;

// Groups are counted from the start of the input page, so the first and last group of a
// dispatch may be partly outside it.

// The group being decoded, counted from the dispatch's first element (wrapping below it).
var<private> group_first: u32;

// Elements i .. i + 3 of the group (quant_decode.wgsl's decoders call this), stored if they lie
// in this dispatch.
fn emit4(i: u32, x: vec4<f32>) {
    let e = group_first + i;
    if e < params.count {
        dst[(params.out_offset + e) >> 2u] = vec4<Out>(x);
    }
}

@compute @workgroup_size(WG)
fn dequant(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    // This invocation's group, and one past the dispatch's last.
    let g = params.in_offset / GROUP + flat_index(wg, nwg, l, WG);
    let end = params.in_offset + params.count;
    if g < end / GROUP + select(0u, 1u, end % GROUP != 0u) {
        group_first = g * GROUP - params.in_offset;
        let per_block = BLOCK_ELEMS / GROUP;
        decode_group((g / per_block) * BLOCK_BYTES, g % per_block);
    }
}
