// Whisper's log-mel spectrogram of one 30 s window (the CPU twin is `cpu` in src/ops/mel.rs).
// The host hands over the window already padded: 480000 samples (pad_or_trim) with 200 samples
// of reflect padding at each end, and the DFT table: for bin k and tap t,
// hann[t] cos(2 pi k t / n_fft) at k * n_fft + t, then the sines after all the cosines, each
// computed in f64 and rounded once. Three passes:
//   power:    one invocation per (frame, bin): |sum_t x[f hop + t] w[t] e^{-2 pi i k t / n}|^2;
//   mel_log:  one invocation per (mel, frame): log10(max(sum_b filters[m, b] power[f, b], 1e-10)),
//             written at the window's place in the output;
//   finish:   one workgroup for the window: its maximum m, then every value becomes
//             (max(x, m - 8) + 4) / 4.
// Sums run in index order, as the twin's.

struct Params {
    frames: u32,
    bins: u32,
    n_fft: u32,
    hop: u32,
    mels: u32,
    // Index of the window in the output [windows, mels, frames].
    window: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 64u;

const LOG10_2: f32 = 0.30102999566398120;
const F32_LOWEST: f32 = -3.40282347e38;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> signal: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read> filters: array<f32>;
@group(0) @binding(4) var<storage, read_write> power: array<f32>;
@group(0) @binding(5) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG)
fn power_spectrum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.frames * params.bins {
        return;
    }
    let f = i / params.bins;
    let k = i % params.bins;
    let n = params.n_fft;
    let start = f * params.hop;
    let sines = params.bins * n;
    var re = 0.0;
    var im = 0.0;
    for (var t = 0u; t < n; t++) {
        let x = signal[start + t];
        re += x * table[k * n + t];
        im += x * table[sines + k * n + t];
    }
    power[i] = re * re + im * im;
}

@compute @workgroup_size(WG)
fn mel_log(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wg, nwg, l, WG);
    if i >= params.mels * params.frames {
        return;
    }
    let m = i / params.frames;
    let f = i % params.frames;
    var s = 0.0;
    for (var b = 0u; b < params.bins; b++) {
        s += filters[m * params.bins + b] * power[f * params.bins + b];
    }
    dst[params.window * params.mels * params.frames + i] = log2(max(s, 1e-10)) * LOG10_2;
}

@compute @workgroup_size(WG)
fn finish(@builtin(local_invocation_index) l: u32) {
    let count = params.mels * params.frames;
    let base = params.window * count;
    var m = F32_LOWEST;
    for (var i = l; i < count; i += WG) {
        m = max(m, dst[base + i]);
    }
    let lo = workgroup_max(m, l) - 8.0;
    for (var i = l; i < count; i += WG) {
        dst[base + i] = (max(dst[base + i], lo) + 4.0) / 4.0;
    }
}
