// Embedding lookup: dst[i][k] = table[ids[i]][k] for a table [vocab, dim] in any type
// shaders/quant_decode.wgsl decodes (F32, F16, BF16, GGML blocks), read as stored, and dst
// [n, dim] f32. The launcher (src/ops/embedding.rs) checks every id against vocab on the host
// before dispatch and sets the table's type (quant_decode.wgsl's TYPE); the CPU twin is `cpu`
// there.
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
// The i-quant grid and sign tables quant_decode.wgsl reads (src/ops/iq_grids).
@group(0) @binding(4) var<storage, read> grids: array<u32>;

@compute @workgroup_size(WG)
fn embedding(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.count {
        return;
    }
    let row = i / params.dim;
    let k = i % params.dim;
    let block = ids[row] * params.row_blocks + k / params.block_elems;
    if block < params.first_block || block - params.first_block >= params.page_blocks {
        return;
    }
    dst[i] = decode((block - params.first_block) * params.block_bytes, k % params.block_elems);
}

// quant_decode.wgsl's group decoders hand their values to `emit4`, which every family that
// includes it must define. This family gathers element by element with `decode` and never calls
// the group decoders.
fn emit4(i: u32, x: vec4<f32>) {}
