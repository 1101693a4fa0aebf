// Fused matrix products with a weight matrix in any type shaders/quant_decode.wgsl decodes:
// Y[b][r] = sum_k W[r][k] * X[b][k] (ggml's mul_mat, PyTorch's Linear), W [rows, cols] read
// straight from its stored bytes (no dequantized copy), X [batch, cols] and Y [batch, rows] f32.
//
// One workgroup per row of W. Its WG threads stride over the row's elements (thread l takes
// elements l, l + WG, ...), decode each weight once and multiply it into every batch column,
// keeping one partial sum per (batch column, thread) in workgroup memory; a tree reduction then
// adds the WG partial sums of each batch column and thread 0 writes them. A dispatch covers up
// to MAX_BATCH batch columns and a run of rows that lie whole in the bound buffer of W; the
// launcher (src/ops/qmatmul.rs) loops over batch chunks and pages, and sets the weight type
// (quant_decode.wgsl's TYPE).
//
// With ROW_PER_INVOCATION (the launcher sets it for CPU-based adapters such as lavapipe), each
// invocation instead sums one whole row alone, with no workgroup memory and no barriers: a CPU
// driver runs a workgroup's invocations as SIMD lanes and pays for every barrier by switching
// between them. That path decodes block types 32 weights at a time (quant_decode.wgsl's
// group_<type>, which hand the weights to `emit4` below).
// The CPU twin is `cpu` in src/ops/qmatmul.rs.

struct Params {
    // Rows of W in this dispatch, and the row of Y the first of them writes.
    rows: u32,
    row0: u32,
    // Elements per row of W (columns of X), and rows of W in all (the row stride of Y).
    cols: u32,
    out_rows: u32,
    // Byte offset of this dispatch's first row in the bound W buffer, and bytes per row.
    w_offset: u32,
    row_bytes: u32,
    // Bytes and elements per block of W's type (dtype.rs's table).
    block_bytes: u32,
    block_elems: u32,
    // Batch columns in this dispatch, 1..=MAX_BATCH.
    batch: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Threads per workgroup: a power of two (the reduction halves it).
override WG: u32 = 64u;
// Most batch columns one dispatch computes (at most ROW_BATCH_LIMIT with ROW_PER_INVOCATION).
override MAX_BATCH: u32 = 8u;
// One row per invocation instead of one per workgroup.
override ROW_PER_INVOCATION: bool = false;
// Size of the per-invocation accumulators of the row-per-invocation path.
const ROW_BATCH_LIMIT: u32 = 16u;

@group(0) @binding(0) var<uniform> params: Params;
// The bytes of W as stored, read as u32 words (the name the decoders read).
@group(0) @binding(1) var<storage, read> src: array<u32>;
// X's batch columns of this dispatch, [batch, cols], as quads (the launcher pads the buffer to
// 16 bytes): the row path reads four columns with one load, which costs lavapipe about what a
// scalar load does.
@group(0) @binding(2) var<storage, read> x4: array<vec4<f32>>;
// Y's batch columns of this dispatch, [batch, out_rows].
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
// The i-quant grid and sign tables quant_decode.wgsl reads (src/ops/iq_grids).
@group(0) @binding(4) var<storage, read> grids: array<u32>;

var<workgroup> partial: array<f32, WG * MAX_BATCH>;

// Element i of X's batch columns.
fn x(i: u32) -> f32 {
    return x4[i >> 2u][i & 3u];
}

// The row path's sums, one per batch column, and where the group being decoded sits: its
// first column, and the batch columns to multiply it into.
var<private> acc: array<f32, ROW_BATCH_LIMIT>;
var<private> emit_col: u32;
var<private> emit_batch: u32;

// Weights i .. i + 3 of the group being decoded (the group decoders call this): multiplied
// into every batch column's sum, in column order.
fn emit4(i: u32, w: vec4<f32>) {
    let k = emit_col + i;
    for (var b = 0u; b < emit_batch; b++) {
        let o = b * params.cols + k;
        // o is a multiple of 4: block types have cols a multiple of 32, and plain types come here
        // only when cols is a multiple of 4 or o is a column of the first batch column.
        let xs = x4[o >> 2u];
        var s = acc[b];
        s += w.x * xs.x;
        s += w.y * xs.y;
        s += w.z * xs.z;
        s += w.w * xs.w;
        acc[b] = s;
    }
}

// Row r of this dispatch, summed by one invocation: block types a group of 32 weights at a
// time (each block's scales decoded once per group), plain types four at a time.
fn matmul_row(r: u32) {
    if r >= params.rows {
        return;
    }
    let batch = min(params.batch, ROW_BATCH_LIMIT);
    let cols = params.cols;
    let base = params.w_offset + r * params.row_bytes;
    if GROUPED {
        emit_batch = batch;
        let per_block = params.block_elems / GROUP;
        for (var g = 0u; g < cols / GROUP; g++) {
            emit_col = g * GROUP;
            decode_group(base + (g / per_block) * params.block_bytes, g % per_block);
        }
    } else {
        // Plain types (a block is one element): quads of columns through emit4 where every batch
        // column's quad is a vec4 of X, then the rest one column at a time.
        emit_batch = batch;
        let bytes = params.block_bytes;
        var k = 0u;
        if cols % 4u == 0u || batch == 1u {
            for (; k + 4u <= cols; k += 4u) {
                emit_col = k;
                let at = base + k * bytes;
                emit4(0u, vec4<f32>(decode(at, 0u), decode(at + bytes, 0u), decode(at + 2u * bytes, 0u), decode(at + 3u * bytes, 0u)));
            }
        }
        for (; k < cols; k++) {
            let w = decode(base + k * bytes, 0u);
            for (var b = 0u; b < batch; b++) {
                acc[b] += w * x(b * cols + k);
            }
        }
    }
    for (var b = 0u; b < batch; b++) {
        dst[b * params.out_rows + params.row0 + r] = acc[b];
    }
}

@compute @workgroup_size(WG)
fn qmatmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    if ROW_PER_INVOCATION {
        matmul_row(flat_index(wg, nwg, l, WG));
        return;
    }
    // The workgroup's row: the same for every thread of the workgroup.
    let r = wg.y * nwg.x + wg.x;
    if r >= params.rows {
        return;
    }
    let batch = params.batch;
    let cols = params.cols;
    let base = params.w_offset + r * params.row_bytes;
    for (var b = 0u; b < batch; b++) {
        partial[b * WG + l] = 0.0;
    }
    for (var k = l; k < cols; k += WG) {
        let w = decode(base + (k / params.block_elems) * params.block_bytes, k % params.block_elems);
        for (var b = 0u; b < batch; b++) {
            partial[b * WG + l] += w * x(b * cols + k);
        }
    }
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if l < s {
            for (var b = 0u; b < batch; b++) {
                partial[b * WG + l] += partial[b * WG + l + s];
            }
        }
    }
    if l == 0u {
        for (var b = 0u; b < batch; b++) {
            dst[b * params.out_rows + params.row0 + r] = partial[b * WG];
        }
    }
}
