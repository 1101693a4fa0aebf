// The harness shared by the two dequant families (dequant.wgsl, dequant_k.wgsl), prepended to
// each after quant_decode.wgsl: parameters, bindings, and which element each invocation decodes.
// Each family declares BLOCK_ELEMS (32 or QK_K = 256) and its *_BYTES constants.

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

// The output element type. The F16 variant of this family (kernels.rs, `Variant::F16`) turns
// this line into `alias Out = f16;` and enables f16; values are computed in f32 either way and
// rounded once on the store.
alias Out = f32;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
// The output as quads: the launcher (src/ops/paged.rs, `out_unit`) splits output pages at
// multiples of 16 bytes, and input pages hold whole blocks, so every dispatch starts and ends at
// a multiple of 4 elements and each quad a decoder emits lies wholly inside or outside it. One
// vec4 store costs lavapipe about what one scalar store does.
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<Out>>;

// Each invocation decodes one group of GROUP (32) elements, reading its block's scales once
// (quant_decode.wgsl's group_<type>). Groups are counted from the start of the input page, so
// the first and last group of a dispatch may be partly outside it.

// The group of this invocation, or one past the dispatch's last (then it has nothing to do).
fn group_index(wg: vec3<u32>, nwg: vec3<u32>, l: u32) -> u32 {
    return params.in_offset / GROUP + flat_index(wg, nwg, l, WG);
}

// One past the last group of the dispatch.
fn groups_end() -> u32 {
    let end = params.in_offset + params.count;
    return end / GROUP + select(0u, 1u, end % GROUP != 0u);
}

// Byte of the block that holds group g of the input page, for blocks of `block_bytes` bytes.
fn block_byte(g: u32, block_bytes: u32) -> u32 {
    return (g / (BLOCK_ELEMS / GROUP)) * block_bytes;
}

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

// Decoders of group g of the input page call `emit4`.
fn start_group(g: u32) {
    group_first = g * GROUP - params.in_offset;
}
