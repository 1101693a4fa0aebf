// Convert a tensor of plain numbers to f32, bit-exactly as Rust's `as f32` and half's
// `to_f32` do (round to nearest even). One entry point per source dtype; the input is read
// as u32 words so 1-, 2- and 8-byte elements need no special buffer types.

struct Params {
    // Elements to convert in this dispatch.
    count: u32,
    // First element of the input page and of the output page this dispatch covers.
    in_offset: u32,
    out_offset: u32,
    _pad: u32,
}

override WG: u32 = 64u;
// Elements per invocation. lavapipe pays a fixed cost per workgroup, so each workgroup covers
// WG * EPT consecutive elements; in each step its invocations touch WG consecutive elements.
override EPT: u32 = 16u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

// The first element of this workgroup's run, and one past its last.
fn run_start(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wg.y * nwg.x + wg.x) * WG * EPT;
}

fn run_end(start: u32) -> u32 {
    return min(params.count, start + WG * EPT);
}

// The 16-bit half of the word that holds element i.
fn half_word(i: u32) -> u32 {
    return (src[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
}

fn i64_bits(hi: u32, lo: u32) -> u32 {
    if (hi & 0x80000000u) == 0u {
        return u64_to_f32_bits(hi, lo);
    }
    // Two's complement magnitude, then the sign.
    let nlo = ~lo + 1u;
    let nhi = ~hi + select(0u, 1u, nlo == 0u);
    return 0x80000000u | u64_to_f32_bits(nhi, nlo);
}

@compute @workgroup_size(WG)
fn f16_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        dst[params.out_offset + i] = f16_to_f32_bits(half_word(params.in_offset + i));
    }
}

@compute @workgroup_size(WG)
fn bf16_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        dst[params.out_offset + i] = half_word(params.in_offset + i) << 16u;
    }
}

@compute @workgroup_size(WG)
fn f32_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        dst[params.out_offset + i] = src[params.in_offset + i];
    }
}

@compute @workgroup_size(WG)
fn f64_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        let j = params.in_offset + i;
        let lo = src[2u * j];
        let hi = src[2u * j + 1u];
        let sign = hi & 0x80000000u;
        let exp = (hi >> 20u) & 0x7ffu;
        let man_hi = hi & 0xfffffu;
        var bits: u32;
        if exp == 0x7ffu {
            // Infinity, or NaN made quiet with the top of its payload kept.
            let nan = man_hi != 0u || lo != 0u;
            bits = 0x7f800000u | select(0u, 0x400000u | (man_hi << 3u) | (lo >> 29u), nan);
        } else if exp == 0u {
            // f64 subnormals are far below the smallest f32 subnormal.
            bits = 0u;
        } else {
            // 53-bit significand with its implicit bit; e is the f32 biased exponent.
            let sig_hi = man_hi | 0x100000u;
            let e = i32(exp) - 1023 + 127;
            if e >= 255 {
                bits = 0x7f800000u;
            } else if e >= 1 {
                // Normal f32: round 52 mantissa bits to 23; a carry rolls into the exponent (and
                // up to infinity), as IEEE rounding does.
                bits = (u32(e - 1) << 23u) + shr_round_even(sig_hi, lo, 29u);
            } else if e >= -24 {
                // Subnormal f32 (or rounds up to the smallest normal).
                bits = shr_round_even(sig_hi, lo, u32(29 + 1 - e));
            } else {
                bits = 0u;
            }
        }
        dst[params.out_offset + i] = sign | bits;
    }
}

@compute @workgroup_size(WG)
fn i64_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        let j = params.in_offset + i;
        dst[params.out_offset + i] = i64_bits(src[2u * j + 1u], src[2u * j]);
    }
}

@compute @workgroup_size(WG)
fn u64_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        let j = params.in_offset + i;
        dst[params.out_offset + i] = u64_to_f32_bits(src[2u * j + 1u], src[2u * j]);
    }
}

@compute @workgroup_size(WG)
fn i32_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        let w = src[params.in_offset + i];
        dst[params.out_offset + i] = i64_bits(select(0u, 0xffffffffu, (w & 0x80000000u) != 0u), w);
    }
}

@compute @workgroup_size(WG)
fn u32_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        dst[params.out_offset + i] = u64_to_f32_bits(0u, src[params.in_offset + i]);
    }
}

// Small integers are exact in f32, so WGSL's own conversion is enough for them.
@compute @workgroup_size(WG)
fn i16_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        let v = i32(half_word(params.in_offset + i) << 16u) >> 16u;
        dst[params.out_offset + i] = bitcast<u32>(f32(v));
    }
}

@compute @workgroup_size(WG)
fn u16_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        dst[params.out_offset + i] = bitcast<u32>(f32(half_word(params.in_offset + i)));
    }
}

@compute @workgroup_size(WG)
fn i8_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        let j = params.in_offset + i;
        let v = i32(byte_of(src[j >> 2u], j) << 24u) >> 24u;
        dst[params.out_offset + i] = bitcast<u32>(f32(v));
    }
}

// Also used for BOOL (0 or 1).
@compute @workgroup_size(WG)
fn u8_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let start = run_start(wg, nwg);
    for (var i = start + l; i < run_end(start); i += WG) {
        let j = params.in_offset + i;
        dst[params.out_offset + i] = bitcast<u32>(f32(byte_of(src[j >> 2u], j)));
    }
}
