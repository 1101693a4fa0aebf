//! Whisper's log-mel spectrogram (the encoder's input), as faster-whisper's `FeatureExtractor`
//! and openai-whisper's `log_mel_spectrogram` compute it, for 16 kHz mono samples in [-1, 1]:
//!
//! 1. the samples cut into 30 s windows of [`FRAMES`] frames, in one of two ways ([`Windowing`]):
//!    each window padded on its own (Whisper's `pad_or_trim` then the spectrogram; the default),
//!    or one spectrogram of the whole input cut at 3000-frame steps (faster-whisper's
//!    `transcribe`);
//! 2. centred frames of [`N_FFT`] samples every [`HOP`] under the periodic Hann window (reflect
//!    padding of 200 samples at the signal's ends), the power `|STFT|^2` of the [`BINS`] bins;
//! 3. the Slaney mel filterbank ([`mel_filters`], computed here as `librosa.filters.mel` with
//!    `htk=False, norm="slaney"`), `log10(max(x, 1e-10))`, then `max(x, m - 8)` with `m` the
//!    maximum (the window's, or the whole input's), then `(x + 4) / 4`.
//!
//! The result is `[windows, mels, 3000]`. The GPU (`shaders/mel.wgsl`) takes each frame's DFT by
//! a mixed-radix FFT in workgroup memory; the CPU twin ([`cpu`]) by a direct DFT (201 bins x 400
//! taps, the Hann-windowed twiddles computed in f64 and rounded once), every sum in f32 in index
//! order.

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
    mels: u32,
    window: u32,
    windows: u32,
    content: u32,
    counted: u32,
    global: u32,
    extra_max: f32,
}
const _: () = assert!(std::mem::size_of::<Params>() == Kernel::Mel.params_bytes());

/// Frames per workgroup of the FFT entry point, and its invocations (see `shaders/mel.wgsl`).
const FFT_FRAMES: u32 = 2;
const FFT_WORKGROUP: u32 = 40;
/// Windows whose commands are recorded before the encoder is submitted and waited for.
const WINDOWS_PER_SUBMIT: usize = 8;

/// How samples become 30 s windows: both give `[windows, mels, 3000]` and agree on a single
/// window of exactly 30 s; they differ at the windows' edges and in the normalisation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Windowing {
    /// Each window on its own, as Whisper's `log_mel_spectrogram(pad_or_trim(audio))` computes
    /// an encoder input (and the fixture `jfk.mel.safetensors`): the window's 480000 samples
    /// (zeros past the end of the audio), reflect padding at the window's own edges, its own
    /// maximum for `max(x, m - 8)`. Windows are `ceil(samples / 480000)`, at least one.
    #[default]
    PerWindow,
    /// What faster-whisper's `WhisperModel.transcribe` feeds its encoder: one spectrogram of the
    /// whole input (`FeatureExtractor.__call__` with its default `padding=160`: 160 zeros
    /// appended, reflect padding at the ends of the whole signal, `n / 160 + 1` frames), one
    /// maximum over all of those frames, and its first `n / 160` frames (`content_frames`) cut
    /// at seek 0, 3000, 6000, ... with `pad_or_trim`: the last window's frames past the content
    /// are 0. A frame at a window edge sees the neighbouring window's samples. Windows are
    /// `ceil((n / 160) / 3000)`, at least one (all 0 for fewer than 160 samples).
    Continuous,
}

/// Where the windows' frames come from and which of them count: see [`Windowing`].
pub(crate) struct Plan {
    windows: usize,
    /// Frames kept, from the first window's first.
    content: usize,
    /// Frames in the maxima, likewise.
    counted: usize,
    /// One maximum over all windows.
    global: bool,
}

impl Plan {
    fn new(samples: usize, windowing: Windowing) -> Plan {
        match windowing {
            Windowing::PerWindow => {
                let windows = windows(samples);
                Plan {
                    windows,
                    content: windows * FRAMES,
                    counted: windows * FRAMES,
                    global: false,
                }
            }
            Windowing::Continuous => {
                let content = samples / HOP;
                let windows = content.div_ceil(FRAMES).max(1);
                Plan {
                    windows,
                    content,
                    // The extractor's frames: the content and one more.
                    counted: (content + 1).min(windows * FRAMES),
                    global: true,
                }
            }
        }
    }
}

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

/// The periodic Hann window, `np.hanning(401)[:-1]`, in f64.
fn hann() -> Vec<f64> {
    let n = N_FFT as f64;
    (0..N_FFT)
        .map(|t| 0.5 - 0.5 * (std::f64::consts::TAU * t as f64 / n).cos())
        .collect()
}

/// The twin's DFT table: `hann[t] cos(2 pi k t / N_FFT)` at `k * N_FFT + t`, then the sines
/// likewise, in f64 (the angle reduced exactly, `k t mod N_FFT`) and rounded once.
fn dft_table() -> Vec<f32> {
    let n = N_FFT as f64;
    let hann = hann();
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

/// The kernel's table (layout in `shaders/mel.wgsl`): the Hann window, the twiddles
/// `e^{-2 pi i m / N_FFT}` as (re, im), each in f64 rounded once, then per band the first and
/// one past the last bin of `filters` that is not zero, as u32 bits.
fn gpu_table(filters: &[f32], mels: usize) -> Vec<u32> {
    let mut table: Vec<u32> = hann().iter().map(|&h| (h as f32).to_bits()).collect();
    for m in 0..N_FFT {
        let angle = std::f64::consts::TAU * m as f64 / N_FFT as f64;
        table.push((angle.cos() as f32).to_bits());
        table.push((-angle.sin() as f32).to_bits());
    }
    for m in 0..mels {
        let row = &filters[m * BINS..][..BINS];
        let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
        let end = row.iter().rposition(|&w| w != 0.0).map_or(first, |b| b + 1);
        table.extend([first as u32, end as u32]);
    }
    table
}

/// numpy's `reflect` index into a signal of `len` samples (`len > 0`) for any `i`: the signal
/// mirrored at its first and last sample (which are not repeated), as often as needed.
fn reflect(i: i64, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as i64 - 1);
    let m = i.rem_euclid(period);
    (if m >= len as i64 { period - m } else { m }) as usize
}

/// The samples window `w`'s frames read: `FRAMES * HOP + N_FFT` of them, frame `f` at `f * HOP`
/// (see [`Windowing`]).
fn padded_window(samples: &[f32], w: usize, windowing: Windowing) -> Vec<f32> {
    match windowing {
        Windowing::PerWindow => {
            // The window's 480000 samples (zeros past the end), reflect padding at its edges.
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
        Windowing::Continuous => {
            // The whole input with HOP zeros appended, reflect-padded by PAD at both ends, from
            // the window's first frame on (zeros past its end: frames no window keeps).
            let len = samples.len() + HOP;
            let at = |j: usize| samples.get(j).copied().unwrap_or(0.0);
            let first = (w * FRAMES * HOP) as i64 - PAD as i64;
            (0..WINDOW_SAMPLES + 2 * PAD)
                .map(|i| {
                    let j = first + i as i64;
                    if j >= (len + PAD) as i64 {
                        0.0
                    } else {
                        at(reflect(j, len))
                    }
                })
                .collect()
        }
    }
}

/// The largest log-mel value (before the clamp to `m - 8`) of the frames that enter the maximum
/// but lie in no window (the extractor's extra frame when the content fills its last window),
/// or the lowest f32. Computed by the twin's code on every device: one frame.
fn extra_max(samples: &[f32], plan: &Plan, filters: &[f32], mels: usize) -> f32 {
    if !plan.global || plan.content < plan.windows * FRAMES {
        return f32::MIN;
    }
    // The frame at index `content`: the first frame of the window after the last.
    let signal = padded_window(samples, plan.windows, Windowing::Continuous);
    let raw = cpu::raw_log_mel(&signal[..N_FFT], 1, &dft_table(), filters, mels);
    raw.into_iter().fold(f32::MIN, f32::max)
}

/// Whisper's log-mel spectrogram of 16 kHz `samples` with `mels` bands, each 30 s window on its
/// own ([`Windowing::PerWindow`]); see [`log_mel_with`].
pub fn log_mel(samples: &[f32], mels: usize, device: &Device) -> Result<Tensor> {
    log_mel_with(samples, mels, Windowing::PerWindow, device)
}

/// Whisper's log-mel spectrogram of 16 kHz `samples` with `mels` bands (80 or 128 for Whisper's
/// models; any positive count works), cut into windows as `windowing` says: an F32 tensor
/// `[windows, mels, 3000]` named `mel` on `device` (see the module doc). Errors: `mels` is 0
/// ([`Error::OpArgument`]); an output larger than one storage binding ([`Error::DeviceLimit`]).
pub fn log_mel_with(
    samples: &[f32],
    mels: usize,
    windowing: Windowing,
    device: &Device,
) -> Result<Tensor> {
    if mels == 0 {
        return Err(Error::OpArgument {
            op: OP,
            argument: "mels",
            value: 0,
            expected: "at least one band",
        });
    }
    let plan = Plan::new(samples.len(), windowing);
    let windows = plan.windows;
    let dims = vec![windows, mels, FRAMES];
    let shape = Shape::new(dims).ok_or(Error::OpArgument {
        op: OP,
        argument: "mels",
        value: mels as u64,
        expected: "an output [windows, mels, 3000] whose size fits in u64",
    })?;
    let filters = mel_filters(mels);
    let extra = extra_max(samples, &plan, &filters, mels);
    let storage = match device {
        Device::Cpu => {
            let table = dft_table();
            let mut out = Vec::with_capacity(windows * mels * FRAMES);
            for w in 0..windows {
                let signal = padded_window(samples, w, windowing);
                out.extend(cpu::raw_log_mel(&signal, FRAMES, &table, &filters, mels));
            }
            cpu::finish(&mut out, mels, &plan, extra);
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
            let table_buf = launch::words_buffer(gpu, "mel table", &gpu_table(&filters, mels))?;
            let filters_buf = f32_buffer(gpu, "mel filters", &filters)?;
            let maxes = launch::scratch(gpu, "mel maxima", (windows as u64 + 1) * 4)?;
            let mut encoder = gpu.record(OP);
            let key = |entry| {
                PipelineKey::new(Kernel::Mel, entry)
                    .with("WG", f64::from(WORKGROUP))
                    .with("FPW", f64::from(FFT_FRAMES))
                    .with("FFT_WG", f64::from(FFT_WORKGROUP))
            };
            let frames_log_mel = gpu.pipeline(&key("frames_log_mel"))?;
            let window_max = gpu.pipeline(&key("window_max"))?;
            let global_max = gpu.pipeline(&key("global_max"))?;
            let finish = gpu.pipeline(&key("finish"))?;
            let u32_of = |v: usize, what: &str| launch::to_u32(&host, v as u64, what);
            let mut params = Params {
                frames: FRAMES as u32,
                mels: u32_of(mels, "the mel count")?,
                window: 0,
                windows: u32_of(windows, "the window count")?,
                content: u32_of(plan.content, "the frame count")?,
                counted: u32_of(plan.counted, "the frame count")?,
                global: u32::from(plan.global),
                extra_max: extra,
            };
            let fft_groups = FRAMES.div_ceil(FFT_FRAMES as usize) as u64;
            for w in 0..windows {
                if w > 0 && w % WINDOWS_PER_SUBMIT == 0 {
                    // Long audio: the windows' signals (1.9 MB each) live until their commands
                    // are done; submit and wait every few windows so they do not all pile up.
                    encoder.submit();
                    gpu.wait(OP)?;
                    encoder = gpu.record(OP);
                }
                params.window = w as u32;
                let signal = f32_buffer(gpu, "mel window", &padded_window(samples, w, windowing))?;
                let all = [&signal, &table_buf, &filters_buf, &maxes, out.buffer()];
                let group = launch::bind(
                    &mut encoder,
                    &frames_log_mel,
                    OP,
                    bytemuck::bytes_of(&params),
                    &all,
                )?;
                let invocations = fft_groups * u64::from(FFT_WORKGROUP);
                gpu.dispatch(
                    &mut encoder,
                    &frames_log_mel,
                    &group,
                    invocations,
                    FFT_WORKGROUP,
                );
                let group = launch::bind(
                    &mut encoder,
                    &window_max,
                    OP,
                    bytemuck::bytes_of(&params),
                    &all,
                )?;
                gpu.dispatch(
                    &mut encoder,
                    &window_max,
                    &group,
                    u64::from(WORKGROUP),
                    WORKGROUP,
                );
            }
            // A placeholder signal for the passes that do not read one.
            let none = launch::scratch(gpu, "mel no signal", 4)?;
            let all = [&none, &table_buf, &filters_buf, &maxes, out.buffer()];
            let group = launch::bind(
                &mut encoder,
                &global_max,
                OP,
                bytemuck::bytes_of(&params),
                &all,
            )?;
            gpu.dispatch(
                &mut encoder,
                &global_max,
                &group,
                u64::from(WORKGROUP),
                WORKGROUP,
            );
            let group = launch::bind(&mut encoder, &finish, OP, bytemuck::bytes_of(&params), &all)?;
            let count = (windows * mels * FRAMES) as u64;
            gpu.dispatch(&mut encoder, &finish, &group, count, WORKGROUP);
            let storage = out.finish(&mut encoder);
            encoder.finish();
            Storage::Gpu(storage)
        }
    };
    Ok(Tensor::new(OP.to_string(), DType::F32, shape, storage))
}

/// A read-only storage buffer holding `values`.
fn f32_buffer(
    gpu: &crate::device::Gpu,
    label: &str,
    values: &[f32],
) -> Result<std::sync::Arc<crate::device::Block>> {
    let words: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
    launch::words_buffer(gpu, label, &words)
}

/// The CPU twin of `shaders/mel.wgsl`: the same function, with a direct DFT (the reference the
/// kernel's FFT is checked against) and every sum in index order.
pub(crate) mod cpu {
    use super::{Plan, BINS, FRAMES, HOP, N_FFT};

    /// `log10(max(mel, 1e-10))` `[mels, frames]` of the first `frames` frames of `signal`
    /// (frame `f` at `f * HOP`), before the clamp to the maximum.
    pub fn raw_log_mel(
        signal: &[f32],
        frames: usize,
        table: &[f32],
        filters: &[f32],
        mels: usize,
    ) -> Vec<f32> {
        let (cosines, sines) = table.split_at(BINS * N_FFT);
        let mut power = vec![0.0f32; frames * BINS];
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
        let mut out = Vec::with_capacity(mels * frames);
        for m in 0..mels {
            let w = &filters[m * BINS..][..BINS];
            for f in 0..frames {
                let p = &power[f * BINS..][..BINS];
                let mut s = 0.0f32;
                for b in 0..BINS {
                    s += w[b] * p[b];
                }
                out.push(s.max(1e-10).log10());
            }
        }
        out
    }

    /// Clamps `out` (`[windows, mels, FRAMES]` raw values) to `max(x, m - 8)` and maps it to
    /// `(x + 4) / 4`, `m` each window's maximum or the global one (with `extra`), over the
    /// frames the plan counts; frames past its content become 0.
    pub fn finish(out: &mut [f32], mels: usize, plan: &Plan, extra: f32) {
        let frames_of = |total: usize, w: usize| total.saturating_sub(w * FRAMES).min(FRAMES);
        let maxes: Vec<f32> = out
            .chunks_exact(mels * FRAMES)
            .enumerate()
            .map(|(w, window)| {
                let counted = frames_of(plan.counted, w);
                window
                    .chunks_exact(FRAMES)
                    .flat_map(|row| &row[..counted])
                    .copied()
                    .fold(f32::MIN, f32::max)
            })
            .collect();
        let global = maxes.iter().copied().fold(extra, f32::max);
        for (w, window) in out.chunks_exact_mut(mels * FRAMES).enumerate() {
            let lo = if plan.global { global } else { maxes[w] } - 8.0;
            let content = frames_of(plan.content, w);
            for row in window.chunks_exact_mut(FRAMES) {
                for (f, v) in row.iter_mut().enumerate() {
                    *v = if f < content {
                        (v.max(lo) + 4.0) / 4.0
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}
