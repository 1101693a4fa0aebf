//! Whisper's log-mel spectrogram (the encoder's input), as faster-whisper's `FeatureExtractor`
//! and openai-whisper's `log_mel_spectrogram` compute it, for 16 kHz mono samples in [-1, 1]:
//!
//! 1. `pad_or_trim`: the samples cut into 30 s windows of [`WINDOW_SAMPLES`], the last one padded
//!    with zeros (an empty input gives one window of silence);
//! 2. per window, centred frames: 200 samples of reflect padding at each end, frames of
//!    [`N_FFT`] every [`HOP`] samples under the periodic Hann window, the power `|STFT|^2` of the
//!    [`BINS`] bins, the last of the 3001 frames dropped ([`FRAMES`] kept);
//! 3. the Slaney mel filterbank ([`mel_filters`], computed here as `librosa.filters.mel` with
//!    `htk=False, norm="slaney"`), `log10(max(x, 1e-10))`, then `max(x, m - 8)` with `m` the
//!    window's maximum, then `(x + 4) / 4`.
//!
//! The result is `[windows, mels, 3000]`. The STFT is a direct DFT (201 bins x 400 taps) with
//! the Hann-windowed twiddles computed on the host in f64 and rounded once to f32; every sum
//! runs in f32 in index order, on the GPU (`shaders/mel.wgsl`) and in the CPU twin ([`cpu`]).

use super::launch;
use crate::device::kernels::{Kernel, PipelineKey};
use crate::device::Device;
use crate::tensor::{Storage, Tensor};
use mlmf_core::{DType, Error, Result, Shape};

const OP: &str = "mel";
const WORKGROUP: u32 = 64;

/// The sample rate Whisper's features are defined at.
pub const SAMPLE_RATE: u32 = 16_000;
/// DFT length (25 ms).
pub const N_FFT: usize = 400;
/// Frame step (10 ms).
pub const HOP: usize = 160;
/// Frequency bins of one frame: `N_FFT / 2 + 1`.
pub const BINS: usize = N_FFT / 2 + 1;
/// Samples of one 30 s window.
pub const WINDOW_SAMPLES: usize = 480_000;
/// Frames of one window (the 3001st is dropped, as Whisper does).
pub const FRAMES: usize = WINDOW_SAMPLES / HOP;
/// Reflect padding at each end of a window (centred frames).
const PAD: usize = N_FFT / 2;

/// Uniform parameters of `mel.wgsl`, fields in WGSL order.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    frames: u32,
    bins: u32,
    n_fft: u32,
    hop: u32,
    mels: u32,
    window: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Mel.params_bytes());

/// How many 30 s windows `samples` samples make: `ceil(samples / 480000)`, at least one.
pub fn windows(samples: usize) -> usize {
    samples.div_ceil(WINDOW_SAMPLES).max(1)
}

/// Slaney's mel scale (librosa's `hz_to_mel` with `htk=False`): linear below 1 kHz, logarithmic
/// above.
fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= 1000.0 {
        1000.0 / f_sp + (hz / 1000.0).ln() / logstep
    } else {
        hz / f_sp
    }
}

/// The inverse of [`hz_to_mel`].
fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_mel = 1000.0 / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        1000.0 * (logstep * (mel - min_log_mel)).exp()
    } else {
        mel * f_sp
    }
}

/// The Slaney mel filterbank `[mels, BINS]` (row-major) for 16 kHz and n_fft 400, as
/// `librosa.filters.mel(sr=16000, n_fft=400, n_mels=mels)` computes it (`fmin` 0, `fmax` 8 kHz,
/// Slaney scale, each triangle scaled by `2 / (f[m + 2] - f[m])`), in f64, rounded once.
pub fn mel_filters(mels: usize) -> Vec<f32> {
    let sr = f64::from(SAMPLE_RATE);
    let fft_hz: Vec<f64> = (0..BINS).map(|k| k as f64 * sr / N_FFT as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let points = mels + 2;
    let mel_hz: Vec<f64> = (0..points)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (points - 1) as f64))
        .collect();
    let mut w = Vec::with_capacity(mels * BINS);
    for m in 0..mels {
        let (left, centre, right) = (mel_hz[m], mel_hz[m + 1], mel_hz[m + 2]);
        let enorm = 2.0 / (right - left);
        for &f in &fft_hz {
            let lower = (f - left) / (centre - left);
            let upper = (right - f) / (right - centre);
            w.push((lower.min(upper).max(0.0) * enorm) as f32);
        }
    }
    w
}

/// The DFT table the kernels read: `hann[t] cos(2 pi k t / N_FFT)` at `k * N_FFT + t`, then the
/// sines likewise, in f64 (the angle reduced exactly, `k t mod N_FFT`) and rounded once. The
/// window is the periodic Hann window, `np.hanning(401)[:-1]`.
fn dft_table() -> Vec<f32> {
    let n = N_FFT as f64;
    let hann: Vec<f64> = (0..N_FFT)
        .map(|t| 0.5 - 0.5 * (std::f64::consts::TAU * t as f64 / n).cos())
        .collect();
    let angle = |k: usize, t: usize| std::f64::consts::TAU * ((k * t) % N_FFT) as f64 / n;
    let mut table = Vec::with_capacity(2 * BINS * N_FFT);
    for k in 0..BINS {
        table.extend((0..N_FFT).map(|t| (hann[t] * angle(k, t).cos()) as f32));
    }
    for k in 0..BINS {
        table.extend((0..N_FFT).map(|t| (hann[t] * angle(k, t).sin()) as f32));
    }
    table
}

/// Window `w` of `samples`: its 480000 samples (zeros past the end) with 200 samples of reflect
/// padding at each end (numpy's `reflect`: the edge sample is not repeated).
fn padded_window(samples: &[f32], w: usize) -> Vec<f32> {
    let start = (w * WINDOW_SAMPLES).min(samples.len());
    let end = (start + WINDOW_SAMPLES).min(samples.len());
    let mut x = vec![0.0f32; WINDOW_SAMPLES];
    x[..end - start].copy_from_slice(&samples[start..end]);
    let mut padded = Vec::with_capacity(WINDOW_SAMPLES + 2 * PAD);
    padded.extend((1..=PAD).rev().map(|i| x[i]));
    padded.extend_from_slice(&x);
    padded.extend((1..=PAD).map(|i| x[WINDOW_SAMPLES - 1 - i]));
    padded
}

/// Whisper's log-mel spectrogram of 16 kHz `samples` with `mels` bands (80 or 128 for Whisper's
/// models; any positive count works): an F32 tensor `[windows, mels, 3000]` named `mel` on
/// `device` (see the module doc). Errors: `mels` is 0 ([`Error::OpArgument`]); an output larger
/// than one storage binding ([`Error::DeviceLimit`]).
pub fn log_mel(samples: &[f32], mels: usize, device: &Device) -> Result<Tensor> {
    if mels == 0 {
        return Err(Error::OpArgument {
            op: OP,
            argument: "mels",
            value: 0,
            expected: "at least one band",
        });
    }
    let windows = windows(samples.len());
    let dims = vec![windows, mels, FRAMES];
    let shape = Shape::new(dims).ok_or(Error::OpArgument {
        op: OP,
        argument: "mels",
        value: mels as u64,
        expected: "an output [windows, mels, 3000] whose size fits in u64",
    })?;
    let filters = mel_filters(mels);
    let table = dft_table();
    let storage = match device {
        Device::Cpu => {
            let mut out = Vec::with_capacity(windows * mels * FRAMES);
            for w in 0..windows {
                out.extend(cpu::log_mel(
                    &padded_window(samples, w),
                    &table,
                    &filters,
                    mels,
                ));
            }
            Storage::Cpu(launch::f32_bytes(&out))
        }
        Device::Gpu(gpu) => {
            let host = Tensor::new(
                OP.to_string(),
                DType::F32,
                shape.clone(),
                Storage::Cpu(Vec::new()),
            );
            let out = launch::Output::new(gpu, &host, &shape)?;
            let table_buf = f32_buffer(gpu, "mel dft table", &table);
            let filters_buf = f32_buffer(gpu, "mel filters", &filters);
            let power = launch::scratch(gpu, "mel power", (FRAMES * BINS * 4) as u64);
            let mut encoder = gpu
                .wgpu_device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(OP) });
            let entries = ["power_spectrum", "mel_log", "finish"];
            let mut pipelines = Vec::with_capacity(entries.len());
            for entry in entries {
                let key = PipelineKey::new(Kernel::Mel, entry).with("WG", f64::from(WORKGROUP));
                pipelines.push(gpu.pipeline(&key)?);
            }
            for w in 0..windows {
                let signal = f32_buffer(gpu, "mel window", &padded_window(samples, w));
                let params = Params {
                    frames: FRAMES as u32,
                    bins: BINS as u32,
                    n_fft: N_FFT as u32,
                    hop: HOP as u32,
                    mels: launch::to_u32(&host, mels as u64, "the mel count")?,
                    window: w as u32,
                    _pad: [0; 2],
                };
                let invocations = [(FRAMES * BINS) as u64, (mels * FRAMES) as u64, 1];
                for (pipeline, n) in pipelines.iter().zip(invocations) {
                    let group = launch::bind(
                        gpu,
                        pipeline,
                        OP,
                        bytemuck::bytes_of(&params),
                        &[&signal, &table_buf, &filters_buf, &power, out.buffer()],
                    );
                    gpu.dispatch(&mut encoder, pipeline, &group, n, WORKGROUP);
                }
            }
            let storage = out.finish(&mut encoder);
            gpu.wgpu_queue().submit([encoder.finish()]);
            Storage::Gpu(storage)
        }
    };
    Ok(Tensor::new(OP.to_string(), DType::F32, shape, storage))
}

/// A read-only storage buffer holding `values`.
fn f32_buffer(gpu: &crate::device::Gpu, label: &str, values: &[f32]) -> wgpu::Buffer {
    let words: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
    launch::words_buffer(gpu, label, &words)
}

/// The CPU twin of `shaders/mel.wgsl`: the same passes, sums in the same order.
pub(crate) mod cpu {
    use super::{BINS, FRAMES, HOP, N_FFT};

    /// The log-mel spectrogram `[mels, FRAMES]` of one padded window (see `padded_window`).
    pub fn log_mel(signal: &[f32], table: &[f32], filters: &[f32], mels: usize) -> Vec<f32> {
        let (cosines, sines) = table.split_at(BINS * N_FFT);
        let mut power = vec![0.0f32; FRAMES * BINS];
        for (f, row) in power.chunks_exact_mut(BINS).enumerate() {
            let x = &signal[f * HOP..f * HOP + N_FFT];
            for (k, p) in row.iter_mut().enumerate() {
                let (c, s) = (&cosines[k * N_FFT..][..N_FFT], &sines[k * N_FFT..][..N_FFT]);
                let (mut re, mut im) = (0.0f32, 0.0f32);
                for t in 0..N_FFT {
                    re += x[t] * c[t];
                    im += x[t] * s[t];
                }
                *p = re * re + im * im;
            }
        }
        let mut out = Vec::with_capacity(mels * FRAMES);
        for m in 0..mels {
            let w = &filters[m * BINS..][..BINS];
            for f in 0..FRAMES {
                let p = &power[f * BINS..][..BINS];
                let mut s = 0.0f32;
                for b in 0..BINS {
                    s += w[b] * p[b];
                }
                out.push(s.max(1e-10).log10());
            }
        }
        let top = out.iter().copied().fold(f32::MIN, f32::max);
        for v in &mut out {
            *v = (v.max(top - 8.0) + 4.0) / 4.0;
        }
        out
    }
}
