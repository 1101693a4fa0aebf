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
//
// PyTorch's masks (nn.MultiheadAttention, scaled_dot_product_attention), through `mha_score`:
// a key is left out where key_mask[b][j] != 0 (key_padding_mask=True), where j > i under the
// causal flag (top-left aligned, as SDPA's is_causal), or where the additive mask holds -inf;
// any other additive value is added to the score. A left-out score is written as F32_LOWEST
// and no score that is kept is below ABOVE_LOWEST, so the softmax pass (with its
// ZERO_MASKED_ROWS override) can tell them apart and give rows with no key left all zeros.
//   mha_scores: the masked scores, for the three-pass path (then softmax, attention_weighted);
//   mha_fused:  the attention of one query row over one piece of the keys (one chunk of
//               FUSED_DIMS output columns) in one invocation with an online softmax: the scores
//               are never stored, so [batch, heads, seq_q, seq_k] need not fit anywhere. Per
//               kept key j in order:
//               m' = max(m, s_j); c = exp(m - m') (0 for the first, 1 while the maximum
//               stays); m = m'; e = exp(s_j - m); l = l c + e; acc = acc c + e v_j;
//               then out = acc / l (0 if l = 0) when the keys are one piece, else the record
//               (m, l, acc) of the piece;
//   mha_fused_combine: per output element, the pieces' records merged in order: M = max m_s
//               over pieces with l_s > 0, f_s = exp(m_s - M), out = sum acc_s f_s / sum l_s f_s.
// Cutting the keys (split-K, as flash-decoding) gives a few query rows (a decoder's one token)
// enough invocations to fill a device.

struct Params {
    batch: u32,
    heads: u32,
    seq_q: u32,
    seq_k: u32,
    head_dim: u32,
    // 1 when `mask` holds batch * seq_k flags, 0 when every key is attended.
    has_mask: u32,
    scale: f32,
    // Invocations in this pass: batch * heads * seq_q * seq_k, or batch * seq_q * hidden, or
    // (mha_fused) batch * heads * column chunks * seq_q.
    count: u32,
    // The mha_* entry points' masks: FLAG_KEY_MASK, FLAG_CAUSAL, FLAG_ADD_SHARED (an additive
    // mask [seq_q, seq_k]), FLAG_ADD_PER_HEAD (an additive mask [batch * heads, seq_q, seq_k]).
    flags: u32,
    // mha_fused: the key range is cut into `splits` pieces of `split_len` keys; with more than
    // one, each invocation writes a partial record that mha_fused_combine merges.
    splits: u32,
    split_len: u32,
    _pad0: u32,
}

const FLAG_KEY_MASK: u32 = 1u;
const FLAG_CAUSAL: u32 = 2u;
const FLAG_ADD_SHARED: u32 = 4u;
const FLAG_ADD_PER_HEAD: u32 = 8u;
// Output columns one mha_fused invocation accumulates (its private array).
const FUSED_DIMS: u32 = 64u;
// The f32 just above F32_LOWEST (bits 0xff7ffffe).
const ABOVE_LOWEST: f32 = -3.4028232e38;
// Bits of -inf in the additive mask.
const NEG_INF_BITS: u32 = 0xff800000u;
// Below this, exp is 0 in f32 (as softmax.wgsl).
const EXP_FLOOR: f32 = -200.0;

override WG: u32 = 64u;

const F32_LOWEST: f32 = -3.40282347e38;

@group(0) @binding(0) var<uniform> params: Params;
// q for the scores, the probabilities for the weighted sum.
@group(0) @binding(1) var<storage, read> a: array<f32>;
// k for the scores, v for the weighted sum.
@group(0) @binding(2) var<storage, read> b: array<f32>;
// v for mha_fused; a placeholder for the other entry points.
@group(0) @binding(3) var<storage, read> c: array<f32>;
// Per batch item and key position: attention_scores: 0 for a padded key, anything else to
// attend; mha_*: nonzero for a padded key (PyTorch's key_padding_mask).
@group(0) @binding(4) var<storage, read> mask: array<u32>;
// The additive mask's f32 bits (mha_*; a placeholder without one).
@group(0) @binding(5) var<storage, read> amask: array<u32>;
@group(0) @binding(6) var<storage, read_write> dst: array<f32>;

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

// What the masks say of query qi and key j of head h in batch item bb: left out, or the value
// added to the score.
struct Bias {
    out: bool,
    add: f32,
}

fn mha_bias(bb: u32, h: u32, qi: u32, j: u32) -> Bias {
    let f = params.flags;
    if (f & FLAG_KEY_MASK) != 0u && mask[bb * params.seq_k + j] != 0u {
        return Bias(true, 0.0);
    }
    if (f & FLAG_CAUSAL) != 0u && j > qi {
        return Bias(true, 0.0);
    }
    if (f & (FLAG_ADD_SHARED | FLAG_ADD_PER_HEAD)) != 0u {
        var at = qi * params.seq_k + j;
        if (f & FLAG_ADD_PER_HEAD) != 0u {
            at += (bb * params.heads + h) * params.seq_q * params.seq_k;
        }
        let bits = amask[at];
        return Bias(bits == NEG_INF_BITS, bitcast<f32>(bits));
    }
    return Bias(false, 0.0);
}

// The score of query qi against key j of head h in batch item bb, or F32_LOWEST where masked.
fn mha_score(bb: u32, h: u32, qi: u32, j: u32) -> f32 {
    let bias = mha_bias(bb, h, qi, j);
    if bias.out {
        return F32_LOWEST;
    }
    let hidden = params.heads * params.head_dim;
    let qbase = (bb * params.seq_q + qi) * hidden + h * params.head_dim;
    let kbase = (bb * params.seq_k + j) * hidden + h * params.head_dim;
    var s = 0.0;
    for (var d = 0u; d < params.head_dim; d++) {
        s += a[qbase + d] * b[kbase + d];
    }
    return max(s * params.scale + bias.add, ABOVE_LOWEST);
}

@compute @workgroup_size(WG)
fn mha_scores(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.count {
        return;
    }
    let j = i % params.seq_k;
    var t = i / params.seq_k;
    let qi = t % params.seq_q;
    t /= params.seq_q;
    dst[i] = mha_score(t / params.heads, t % params.heads, qi, j);
}

// Consecutive invocations are consecutive query rows of one head, piece and column chunk, so
// they read the same keys and values at the same time. A record is 2 + head_dim floats: m, l,
// then the accumulators.
@compute @workgroup_size(WG)
fn mha_fused(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li, WG);
    if i >= params.count {
        return;
    }
    let chunks = (params.head_dim + FUSED_DIMS - 1u) / FUSED_DIMS;
    let qi = i % params.seq_q;
    var t = i / params.seq_q;
    let piece = t % params.splits;
    t /= params.splits;
    let chunk = t % chunks;
    t /= chunks;
    let h = t % params.heads;
    let bb = t / params.heads;
    let d0 = chunk * FUSED_DIMS;
    let dn = min(FUSED_DIMS, params.head_dim - d0);
    let hidden = params.heads * params.head_dim;
    let j0 = piece * params.split_len;
    let j1 = min(params.seq_k, j0 + params.split_len);
    var acc: array<f32, FUSED_DIMS>;
    // The query row, held privately when it fits (the same sums as mha_score's).
    let qbase = (bb * params.seq_q + qi) * hidden + h * params.head_dim;
    let held = params.head_dim <= FUSED_DIMS;
    var qr: array<f32, FUSED_DIMS>;
    if held {
        for (var d = 0u; d < params.head_dim; d++) {
            qr[d] = a[qbase + d];
        }
    }
    var m = F32_LOWEST;
    var l = 0.0;
    for (var j = j0; j < j1; j++) {
        var s = F32_LOWEST;
        if held {
            let bias = mha_bias(bb, h, qi, j);
            if bias.out {
                continue;
            }
            let kbase = (bb * params.seq_k + j) * hidden + h * params.head_dim;
            var dot = 0.0;
            for (var d = 0u; d < params.head_dim; d++) {
                dot += qr[d] * b[kbase + d];
            }
            s = max(dot * params.scale + bias.add, ABOVE_LOWEST);
        } else {
            s = mha_score(bb, h, qi, j);
            if s == F32_LOWEST {
                continue;
            }
        }
        // Without a branch on s > m (f is exactly 1 while the maximum stays, 0 before the first
        // kept key), so that every key costs the same loop iterations: lavapipe ends the loops
        // of an invocation after 65535 iterations in all, and fused_splits keeps a piece within
        // that (see LOOP_ITERATIONS in ops/attention.rs).
        let m_new = max(m, s);
        var f = 0.0;
        if l > 0.0 {
            f = exp(max(m - m_new, EXP_FLOOR));
        }
        m = m_new;
        let e = exp(max(s - m, EXP_FLOOR));
        l = l * f + e;
        let vbase = (bb * params.seq_k + j) * hidden + h * params.head_dim + d0;
        for (var d = 0u; d < dn; d++) {
            acc[d] = acc[d] * f + e * c[vbase + d];
        }
    }
    if params.splits == 1u {
        let obase = (bb * params.seq_q + qi) * hidden + h * params.head_dim + d0;
        for (var d = 0u; d < dn; d++) {
            if l > 0.0 {
                dst[obase + d] = acc[d] / l;
            } else {
                dst[obase + d] = 0.0;
            }
        }
        return;
    }
    let record = (((bb * params.heads + h) * params.seq_q + qi) * params.splits + piece) * (params.head_dim + 2u);
    if chunk == 0u {
        dst[record] = m;
        dst[record + 1u] = l;
    }
    for (var d = 0u; d < dn; d++) {
        dst[record + 2u + d0 + d] = acc[d];
    }
}

@compute @workgroup_size(WG)
fn mha_fused_combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li, WG);
    if i >= params.count {
        return;
    }
    let hidden = params.heads * params.head_dim;
    let col = i % hidden;
    let h = col / params.head_dim;
    let d = col % params.head_dim;
    let t = i / hidden;
    let qi = t % params.seq_q;
    let bb = t / params.seq_q;
    let size = params.head_dim + 2u;
    let first = ((bb * params.heads + h) * params.seq_q + qi) * params.splits;
    var m = F32_LOWEST;
    for (var p = 0u; p < params.splits; p++) {
        let r = (first + p) * size;
        if a[r + 1u] > 0.0 {
            m = max(m, a[r]);
        }
    }
    var l = 0.0;
    var acc = 0.0;
    for (var p = 0u; p < params.splits; p++) {
        let r = (first + p) * size;
        if a[r + 1u] > 0.0 {
            let f = exp(max(a[r] - m, EXP_FLOOR));
            l += a[r + 1u] * f;
            acc += a[r + 2u + d] * f;
        }
    }
    if l > 0.0 {
        dst[i] = acc / l;
    } else {
        dst[i] = 0.0;
    }
}
