// Helpers shared by every kernel family; prepended to each family's source.

// A flat invocation index for 2-D dispatches: the x dimension holds at most
// max_compute_workgroups_per_dimension workgroups, y counts rows of those.
fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, local: u32, wg_size: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * wg_size + local;
}

// Byte `i % 4` of the little-endian u32 word that holds byte `i` of a byte stream. WGSL cannot
// pass storage pointers to functions, so callers load the word (`words[i >> 2u]`) themselves.
fn byte_of(word: u32, i: u32) -> u32 {
    return (word >> ((i & 3u) * 8u)) & 0xffu;
}

// The 16-bit half at even byte offset `i` of a little-endian byte stream, from the u32 word that
// holds it (`words[i >> 2u]`). A half at an even offset never straddles two words.
fn half_of(word: u32, i: u32) -> u32 {
    return (word >> ((i & 2u) * 8u)) & 0xffffu;
}

// The little-endian u32 at any byte offset `i` of a byte stream, from the word that holds byte
// `i` (`lo = words[i >> 2u]`) and the word after it (`hi`, unused when `i` is a multiple of 4).
fn u32_across(lo: u32, hi: u32, i: u32) -> u32 {
    let s = (i & 3u) * 8u;
    if s == 0u {
        return lo;
    }
    return (lo >> s) | (hi << (32u - s));
}

// Bits of x >> s for a 64-bit x = hi:lo, s in 0..63, as (hi, lo).
fn shr64(hi: u32, lo: u32, s: u32) -> vec2<u32> {
    if s == 0u {
        return vec2<u32>(hi, lo);
    }
    if s < 32u {
        return vec2<u32>(hi >> s, (lo >> s) | (hi << (32u - s)));
    }
    return vec2<u32>(0u, hi >> (s - 32u));
}

// True when any of the lowest s bits of hi:lo is set (s in 0..64).
fn low_bits_set(hi: u32, lo: u32, s: u32) -> bool {
    if s == 0u {
        return false;
    }
    if s < 32u {
        return (lo & ((1u << s) - 1u)) != 0u;
    }
    if s == 32u {
        return lo != 0u;
    }
    if s < 64u {
        return lo != 0u || (hi & ((1u << (s - 32u)) - 1u)) != 0u;
    }
    return lo != 0u || hi != 0u;
}

// (hi:lo) >> s rounded to nearest, ties to even; the result must fit in 32 bits. s in 0..63.
fn shr_round_even(hi: u32, lo: u32, s: u32) -> u32 {
    if s == 0u {
        return lo;
    }
    let q = shr64(hi, lo, s).y;
    let half = (shr64(hi, lo, s - 1u).y & 1u) == 1u;
    let sticky = low_bits_set(hi, lo, s - 1u);
    if half && (sticky || (q & 1u) == 1u) {
        return q + 1u;
    }
    return q;
}

// f32 bits of the unsigned 64-bit integer hi:lo, rounded to nearest even (like Rust's `as`).
fn u64_to_f32_bits(hi: u32, lo: u32) -> u32 {
    if hi == 0u && lo == 0u {
        return 0u;
    }
    var top: u32;
    if hi != 0u {
        top = 63u - countLeadingZeros(hi);
    } else {
        top = 31u - countLeadingZeros(lo);
    }
    if top <= 23u {
        // Exact: the whole value fits in the 24-bit significand.
        return ((top + 127u) << 23u) + ((lo << (23u - top)) & 0x7fffffu);
    }
    // Adding the rounded significand to the exponent field lets a carry bump the exponent.
    let sig = shr_round_even(hi, lo, top - 23u);
    return ((top + 126u) << 23u) + sig;
}

// f32 bits of the f16 with bits h (exact; subnormals and infinities included; NaN keeps its
// payload and is made quiet, as the half crate does).
fn f16_to_f32_bits(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let exp = (h >> 10u) & 0x1fu;
    let man = h & 0x3ffu;
    if exp == 0x1fu {
        return sign | 0x7f800000u | select(0u, 0x400000u | (man << 13u), man != 0u);
    }
    if exp != 0u {
        return sign | ((exp + 112u) << 23u) | (man << 13u);
    }
    if man == 0u {
        return sign;
    }
    // Subnormal f16: normalise into an f32 exponent.
    let top = 31u - countLeadingZeros(man);
    return sign | ((top + 103u) << 23u) | ((man << (23u - top)) & 0x7fffffu);
}
