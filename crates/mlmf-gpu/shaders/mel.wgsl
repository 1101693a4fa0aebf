// Whisper's log-mel spectrogram, 30 s window by window (the launcher and the CPU twin are
// src/ops/mel.rs). The host hands over each window's signal already padded (480400 samples: the
// 3000 frames of 400 samples every 160), and the table: the periodic Hann window (400), the
// twiddles e^{-2 pi i m / 400} as (re, im) pairs (400), then per mel band the first and one past
// the last bin where its filter is not zero (u32 bits). Four entry points:
//   frames_log_mel: FPW frames per workgroup: the windowed frame through a 400-point complex FFT
//                   in workgroup memory (Stockham autosort, radices 4, 4, 5, 5: natural order in,
//                   natural order out, no bit reversal), then per (frame, band)
//                   log10(max(sum_b filters[m, b] |X_b|^2, 1e-10)) over the band's non-zero
//                   bins (the zeros outside add nothing), written at the window's place in dst;
//   window_max:     one workgroup: the maximum of the window's first `counted` frames;
//   global_max:     one workgroup: the maximum of the window maxima and `extra_max`;
//   finish:         every value of every window: (max(x, m - 8) + 4) / 4, m the window's maximum
//                   or the global one, and 0 for the frames past `content`.
// The FFT needs 400 * 4 + 400 * 4 complex multiply-adds per frame instead of a direct DFT's
// 201 * 400 * 2 real ones: the DFT ran lane by lane on lavapipe (BENCHMARKS.md).

struct Params {
    // Frames of one window (3000).
    frames: u32,
    mels: u32,
    // Index of the window in the output [windows, mels, frames].
    window: u32,
    windows: u32,
    // Frames, counted from the first window's first, that are kept; later ones become 0.
    content: u32,
    // Frames, counted likewise, that enter the maxima.
    counted: u32,
    // 1: one maximum over all windows (maxes[windows]); 0: each window's own (maxes[window]).
    global: u32,
    // A maximum from frames outside every window (the host computes it), or the lowest f32.
    extra_max: f32,
}

override WG: u32 = 64u;
// Frames per workgroup of frames_log_mel, and its invocations (any count; 40 runs the 200
// radix-4 and 160 radix-5 butterflies of two frames in 5 and 4 rounds).
override FPW: u32 = 2u;
override FFT_WG: u32 = 40u;

const N: u32 = 400u;
const HOP: u32 = 160u;
const BINS: u32 = 201u;
const TABLE_TWIDDLES: u32 = 400u;
const TABLE_RANGES: u32 = 1200u;
const LOG10_2: f32 = 0.30102999566398120;
const F32_LOWEST: f32 = -3.40282347e38;
// cos and sin of 2 pi / 5 and 4 pi / 5, for the radix-5 butterfly.
const C1: f32 = 0.30901699437494742;
const S1: f32 = 0.95105651629515357;
const C2: f32 = -0.80901699437494742;
const S2: f32 = 0.58778525229247313;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> signal: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read> filters: array<f32>;
@group(0) @binding(4) var<storage, read_write> maxes: array<f32>;
@group(0) @binding(5) var<storage, read_write> dst: array<f32>;

// Two halves (ping and pong) of FPW frames of N complex values each.
var<workgroup> fft: array<vec2<f32>, 2u * FPW * N>;

fn twiddle(m: u32) -> vec2<f32> {
    let i = TABLE_TWIDDLES + 2u * (m % N);
    return vec2<f32>(table[i], table[i + 1u]);
}

fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

// -i z
fn mul_neg_i(z: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(z.y, -z.x);
}

// One Stockham stage of radix r (4 or 5) for the FPW frames: from the half at `src` to the one
// at `dst`, ns the product of the radices before it. Butterfly j of a frame reads its inputs
// j + p N / r, twists them by e^{-2 pi i p (j mod ns) / (ns r)}, takes their r-point DFT and
// writes output q at (j / ns) ns r + (j mod ns) + q ns.
fn stage(r: u32, ns: u32, src: u32, dst: u32, l: u32) {
    let per_frame = N / r;
    let step = N / (ns * r);
    for (var i = l; i < FPW * per_frame; i += FFT_WG) {
        let f = i / per_frame;
        let j = i % per_frame;
        let jm = j % ns;
        let s = src + f * N + j;
        let d = dst + f * N + (j / ns) * ns * r + jm;
        let v0 = fft[s];
        let v1 = cmul(fft[s + per_frame], twiddle(jm * step));
        let v2 = cmul(fft[s + 2u * per_frame], twiddle(2u * jm * step));
        let v3 = cmul(fft[s + 3u * per_frame], twiddle(3u * jm * step));
        if r == 4u {
            let a = v0 + v2;
            let b = v0 - v2;
            let c = v1 + v3;
            let e = mul_neg_i(v1 - v3);
            fft[d] = a + c;
            fft[d + ns] = b + e;
            fft[d + 2u * ns] = a - c;
            fft[d + 3u * ns] = b - e;
        } else {
            let v4 = cmul(fft[s + 4u * per_frame], twiddle(4u * jm * step));
            let a1 = v1 + v4;
            let b1 = v1 - v4;
            let a2 = v2 + v3;
            let b2 = v2 - v3;
            let re1 = v0 + C1 * a1 + C2 * a2;
            let re2 = v0 + C2 * a1 + C1 * a2;
            // -i (S1 b1 + S2 b2) and -i (S2 b1 - S1 b2)
            let im1 = mul_neg_i(S1 * b1 + S2 * b2);
            let im2 = mul_neg_i(S2 * b1 - S1 * b2);
            fft[d] = v0 + a1 + a2;
            fft[d + ns] = re1 + im1;
            fft[d + 2u * ns] = re2 + im2;
            fft[d + 3u * ns] = re2 - im2;
            fft[d + 4u * ns] = re1 - im1;
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(FFT_WG)
fn frames_log_mel(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let frame0 = (wg.y * nwg.x + wg.x) * FPW;
    let half = FPW * N;
    for (var i = l; i < FPW * N; i += FFT_WG) {
        let f = i / N;
        let t = i % N;
        var x = 0.0;
        if frame0 + f < params.frames {
            x = signal[(frame0 + f) * HOP + t] * table[t];
        }
        fft[i] = vec2<f32>(x, 0.0);
    }
    workgroupBarrier();
    stage(4u, 1u, 0u, half, l);
    stage(4u, 4u, half, 0u, l);
    stage(5u, 16u, 0u, half, l);
    stage(5u, 80u, half, 0u, l);
    let mels = params.mels;
    let base = params.window * mels * params.frames;
    for (var i = l; i < FPW * mels; i += FFT_WG) {
        let f = i / mels;
        let m = i % mels;
        let frame = frame0 + f;
        if frame < params.frames {
            let first = bitcast<u32>(table[TABLE_RANGES + 2u * m]);
            let end = bitcast<u32>(table[TABLE_RANGES + 2u * m + 1u]);
            var s = 0.0;
            for (var b = first; b < end; b++) {
                let z = fft[f * N + b];
                s += filters[m * BINS + b] * (z.x * z.x + z.y * z.y);
            }
            dst[base + m * params.frames + frame] = log2(max(s, 1e-10)) * LOG10_2;
        }
    }
}

// Frames of window `w` that are counted (or kept): `total` frames from the first window's first.
fn frames_of(total: u32, w: u32) -> u32 {
    let start = w * params.frames;
    return min(params.frames, total - min(total, start));
}

@compute @workgroup_size(WG)
fn window_max(@builtin(local_invocation_index) l: u32) {
    let count = params.mels * params.frames;
    let base = params.window * count;
    let counted = frames_of(params.counted, params.window);
    var m = F32_LOWEST;
    for (var i = l; i < count; i += WG) {
        if i % params.frames < counted {
            m = max(m, dst[base + i]);
        }
    }
    let top = workgroup_max(m, l);
    if l == 0u {
        maxes[params.window] = top;
    }
}

@compute @workgroup_size(WG)
fn global_max(@builtin(local_invocation_index) l: u32) {
    var m = params.extra_max;
    for (var i = l; i < params.windows; i += WG) {
        m = max(m, maxes[i]);
    }
    let top = workgroup_max(m, l);
    if l == 0u {
        maxes[params.windows] = top;
    }
}

@compute @workgroup_size(WG)
fn finish(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    let count = params.mels * params.frames;
    if i >= params.windows * count {
        return;
    }
    let w = i / count;
    if i % params.frames >= frames_of(params.content, w) {
        dst[i] = 0.0;
        return;
    }
    let lo = select(maxes[w], maxes[params.windows], params.global != 0u) - 8.0;
    dst[i] = (max(dst[i], lo) + 4.0) / 4.0;
}
