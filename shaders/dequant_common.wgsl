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
@group(0) @binding(2) var<storage, read_write> dst: array<Out>;

// Elements per invocation: each workgroup covers WG * EPT consecutive elements, because
// lavapipe pays a fixed cost per workgroup; in each step its invocations touch WG consecutive
// elements.
override EPT: u32 = 16u;

// The first element of this workgroup's run, and one past its last.
fn run_start(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wg.y * nwg.x + wg.x) * WG * EPT;
}

fn run_end(start: u32) -> u32 {
    return min(params.count, start + WG * EPT);
}

// Where element `i` of this dispatch sits: x = first byte of its block in the input page,
// y = its index in the block, z = its index in the output page.
fn locate(i: u32, block_bytes: u32) -> vec3<u32> {
    let e = params.in_offset + i;
    return vec3<u32>((e / BLOCK_ELEMS) * block_bytes, e % BLOCK_ELEMS, params.out_offset + i);
}
