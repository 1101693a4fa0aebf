// LoRA: merging an adapter into a weight, and applying several adapters at once to a batch
// (BGMV, as in Punica and S-LoRA). The launcher and the CPU twin are src/ops/lora.rs; both
// compute in f32 in the same order, so that they agree bit for bit where the compiler does not
// contract a product and an add into a fused multiply-add.
//
// lora_merge_<dtype>: W'[o][i] = round(W[o][i] + scale * sum_k B[o][k] * A[k][i]), W [out, in]
// (or [in, out] with fan_in_fan_out, PEFT's Conv1D layout) in f32, f16 or bf16, A f32 [r, in],
// B f32 [out, r]. The sum runs k = 0..r in order, is then multiplied by scale and added to W
// widened to f32 (PEFT: `W + (B @ A) * scaling`). Rounding to f16 and bf16 is done by hand on the
// f32 bits, round to nearest even exactly as the half crate's `from_f32`, so no shader-f16 is
// needed; a 16-bit invocation owns one u32 word (two elements) of the output, so no two
// invocations write the same word. One dispatch per overlap of a page of W with a page of W'.
//
// lora_shrink then lora_expand, for a batch whose row b uses adapter slot s = rows[b] of stacked
// A [slots, r_max, in] and B [slots, out, r_max] (or none, NO_ADAPTER):
//   shrink  v[b][k] = sum_i A[s][k][i] * x[b][i]                      (i in order)
//   expand  Y'[b][o] = (y[b][o] + bias[o]) + scales[s] * sum_k B[s][o][k] * v[b][k]   (k in order)
// One invocation per output element, no workgroup memory and no barriers.

struct Params {
    // Invocation work items: merge, elements of this piece; shrink, batch * r_max;
    // expand, batch * out.
    count: u32,
    // Merge: the piece's first element counted from the start of W's page and of W''s page, and
    // from the start of W (even for 16-bit types: pages hold whole u32 words).
    in_offset: u32,
    out_offset: u32,
    first: u32,
    // Row length of W [out, in], A and x; rows of B and of y; the rank (r, or r_max).
    inp: u32,
    outp: u32,
    rank: u32,
    // Merge: 1 when W is [in, out] (fan_in_fan_out). Expand: 1 when a bias is bound.
    flags: u32,
    // Merge: the adapter's scale.
    scale: f32,
    // Shrink and expand: batch rows, and adapter slots (where the scales start in `aux`).
    batch: u32,
    slots: u32,
    _pad: u32,
}

override WG: u32 = 64u;

// Rows of the batch that use no adapter (mlmf::ops::lora::NO_ADAPTER).
const NO_ADAPTER: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> params: Params;
// Merge: W's page, as stored. Shrink: x [batch, in]. Expand: y [batch, out].
@group(0) @binding(1) var<storage, read> src: array<u32>;
// Merge: A [r, in]. Shrink: the A stack [slots, r_max, in]. Expand: v [batch, r_max].
@group(0) @binding(2) var<storage, read> lhs: array<f32>;
// Merge: B [out, r]. Expand: the B stack [slots, out, r_max]. Shrink: unused.
@group(0) @binding(3) var<storage, read> rhs: array<f32>;
// Shrink and expand: rows [batch] (slot indices), then scales [slots] (f32 bits), then, when
// flags is 1, bias [out] (f32 bits). Merge: unused.
@group(0) @binding(4) var<storage, read> aux: array<u32>;
// Merge: W''s page. Shrink: v [batch, r_max]. Expand: Y' [batch, out].
@group(0) @binding(5) var<storage, read_write> dst: array<u32>;

// ---- rounding f32 to 16 bits, as the half crate's f32_to_f16_fallback and f32_to_bf16 ------

// f16 bits of the f32 with bits x, round to nearest even. NaN stays NaN (quiet, payload's top
// bits kept), overflow gives infinity, small values become f16 subnormals or signed zero.
fn f32_to_f16_bits(x: u32) -> u32 {
    let sign = (x >> 16u) & 0x8000u;
    let exp = x & 0x7f800000u;
    let man = x & 0x007fffffu;
    if exp == 0x7f800000u {
        return sign | 0x7c00u | select(0u, 0x0200u, man != 0u) | (man >> 13u);
    }
    let half_exp = i32(exp >> 23u) - 127 + 15;
    if half_exp >= 0x1f {
        return sign | 0x7c00u;
    }
    if half_exp <= 0 {
        // Subnormal f16 (or zero): shift the significand with its hidden bit into place.
        let shift = u32(14 - half_exp);
        if shift > 24u {
            return sign;
        }
        let m = man | 0x00800000u;
        let round_bit = 1u << (shift - 1u);
        var half_man = m >> shift;
        if (m & round_bit) != 0u && (m & (3u * round_bit - 1u)) != 0u {
            half_man += 1u;
        }
        return sign | half_man;
    }
    // A carry out of the significand bumps the exponent, up to infinity: the right result.
    let bits = sign | (u32(half_exp) << 10u) | (man >> 13u);
    if (man & 0x1000u) != 0u && (man & 0x2fffu) != 0u {
        return bits + 1u;
    }
    return bits;
}

// bf16 bits of the f32 with bits x, round to nearest even; NaN stays NaN (made quiet).
fn f32_to_bf16_bits(x: u32) -> u32 {
    if (x & 0x7fffffffu) > 0x7f800000u {
        return (x >> 16u) | 0x0040u;
    }
    if (x & 0x8000u) != 0u && (x & 0x17fffu) != 0u {
        return (x >> 16u) + 1u;
    }
    return x >> 16u;
}

// ---- merge ----------------------------------------------------------------------------------

// W' of element e of W (counted from the start of W), given W's value w widened to f32.
fn merged(e: u32, w: f32) -> f32 {
    var o: u32;
    var i: u32;
    if params.flags == 1u {
        // W is [in, out]: the delta goes in transposed.
        i = e / params.outp;
        o = e % params.outp;
    } else {
        o = e / params.inp;
        i = e % params.inp;
    }
    var acc = 0.0;
    for (var k = 0u; k < params.rank; k++) {
        acc += rhs[o * params.rank + k] * lhs[k * params.inp + i];
    }
    return w + acc * params.scale;
}

@compute @workgroup_size(WG)
fn lora_merge_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let j = flat_index(wg, nwg, l, WG);
    if j >= params.count {
        return;
    }
    let w = bitcast<f32>(src[params.in_offset + j]);
    dst[params.out_offset + j] = bitcast<u32>(merged(params.first + j, w));
}

// Elements 2t and 2t + 1 of the piece: one word of W and of W'. The high half of the last word
// of an odd-sized W is padding and is written as zero.
fn merge_words(t: u32, bf16: bool) {
    let j = 2u * t;
    if j >= params.count {
        return;
    }
    let word = src[(params.in_offset + j) >> 1u];
    var out = 0u;
    for (var h = 0u; h < 2u; h++) {
        if j + h < params.count {
            let bits = (word >> (16u * h)) & 0xffffu;
            var w: f32;
            if bf16 {
                w = bitcast<f32>(bits << 16u);
            } else {
                w = bitcast<f32>(f16_to_f32_bits(bits));
            }
            let m = bitcast<u32>(merged(params.first + j + h, w));
            var r: u32;
            if bf16 {
                r = f32_to_bf16_bits(m);
            } else {
                r = f32_to_f16_bits(m);
            }
            out |= r << (16u * h);
        }
    }
    dst[(params.out_offset + j) >> 1u] = out;
}

@compute @workgroup_size(WG)
fn lora_merge_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    merge_words(flat_index(wg, nwg, l, WG), false);
}

@compute @workgroup_size(WG)
fn lora_merge_bf16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    merge_words(flat_index(wg, nwg, l, WG), true);
}

// ---- batched gathered application (BGMV) ----------------------------------------------------

@compute @workgroup_size(WG)
fn lora_shrink(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let t = flat_index(wg, nwg, l, WG);
    if t >= params.count {
        return;
    }
    let b = t / params.rank;
    let k = t % params.rank;
    let s = aux[b];
    var acc = 0.0;
    if s != NO_ADAPTER {
        let a0 = (s * params.rank + k) * params.inp;
        let x0 = b * params.inp;
        for (var i = 0u; i < params.inp; i++) {
            acc += lhs[a0 + i] * bitcast<f32>(src[x0 + i]);
        }
    }
    dst[t] = bitcast<u32>(acc);
}

@compute @workgroup_size(WG)
fn lora_expand(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let t = flat_index(wg, nwg, l, WG);
    if t >= params.count {
        return;
    }
    let b = t / params.outp;
    let o = t % params.outp;
    var out = bitcast<f32>(src[t]);
    if params.flags == 1u {
        out += bitcast<f32>(aux[params.batch + params.slots + o]);
    }
    let s = aux[b];
    if s != NO_ADAPTER {
        let b0 = (s * params.outp + o) * params.rank;
        let v0 = b * params.rank;
        var acc = 0.0;
        for (var k = 0u; k < params.rank; k++) {
            acc += rhs[b0 + k] * lhs[v0 + k];
        }
        out += bitcast<f32>(aux[params.batch + s]) * acc;
    }
    dst[t] = bitcast<u32>(out);
}
