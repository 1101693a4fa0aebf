// Scaled dot-product attention over q [batch, seq_q, heads * head_dim] and k, v [batch, seq_k,
// heads * head_dim] (the layout of BERT's query/key/value projections; head h is columns
// h * head_dim .. (h + 1) * head_dim), in three passes the launcher (src/ops/attention.rs)
// records in one command encoder:
//   attention_scores:   s[b][h][i][j] = scale * sum_d q[b][i][h, d] * k[b][j][h, d], or the f32
//                       minimum where mask[b][j] == 0 (a padded key; as transformers' BERT adds
//                       finfo(float32).min, which absorbs any score below 2^103);
//   softmax over j:     shaders/softmax.wgsl, scores to probabilities p;
//   attention_weighted: out[b][i][h, d] = sum_j p[b][h][i][j] * v[b][j][h, d].
// One invocation per score and per output element; sums run in index order. The CPU twin is
// `cpu` in src/ops/attention.rs.

struct Params {
    batch: u32,
    heads: u32,
    seq_q: u32,
    seq_k: u32,
    head_dim: u32,
    // 1 when `mask` holds batch * seq_k flags, 0 when every key is attended.
    has_mask: u32,
    scale: f32,
    // Invocations in this pass: batch * heads * seq_q * seq_k, or batch * seq_q * hidden.
    count: u32,
}

override WG: u32 = 64u;

const F32_LOWEST: f32 = -3.40282347e38;

@group(0) @binding(0) var<uniform> params: Params;
// q for the scores, the probabilities for the weighted sum.
@group(0) @binding(1) var<storage, read> a: array<f32>;
// k for the scores, v for the weighted sum.
@group(0) @binding(2) var<storage, read> b: array<f32>;
// Per batch item and key position: 0 for a padded key, anything else to attend.
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG)
fn attention_scores(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.count {
        return;
    }
    let j = i % params.seq_k;
    var t = i / params.seq_k;
    let qi = t % params.seq_q;
    t /= params.seq_q;
    let h = t % params.heads;
    let bb = t / params.heads;
    let hidden = params.heads * params.head_dim;
    if params.has_mask != 0u && mask[bb * params.seq_k + j] == 0u {
        dst[i] = F32_LOWEST;
        return;
    }
    let qbase = (bb * params.seq_q + qi) * hidden + h * params.head_dim;
    let kbase = (bb * params.seq_k + j) * hidden + h * params.head_dim;
    var s = 0.0;
    for (var d = 0u; d < params.head_dim; d++) {
        s += a[qbase + d] * b[kbase + d];
    }
    dst[i] = s * params.scale;
}

@compute @workgroup_size(WG)
fn attention_weighted(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.count {
        return;
    }
    let hidden = params.heads * params.head_dim;
    let c = i % hidden;
    let h = c / params.head_dim;
    let t = i / hidden;
    let qi = t % params.seq_q;
    let bb = t / params.seq_q;
    let pbase = ((bb * params.heads + h) * params.seq_q + qi) * params.seq_k;
    let vbase = bb * params.seq_k * hidden + c;
    var s = 0.0;
    for (var j = 0u; j < params.seq_k; j++) {
        s += a[pbase + j] * b[vbase + j * hidden];
    }
    dst[i] = s;
}
