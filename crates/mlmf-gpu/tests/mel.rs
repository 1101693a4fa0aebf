//! Whisper's log-mel spectrogram (`ops::mel`) against the fixtures in `preprocess/audio/`
//! (see the fixtures README for how each was computed): the Slaney filterbank against librosa's
//! within 1e-6; the 30 s log-mel of jfk.wav from the GPU (lavapipe here) and from the CPU twin
//! against faster-whisper's within 1e-4 (max abs), and against each other (80 and 128 bands);
//! audio longer than 30 s gives one window per started 30 s.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use mlmf_gpu::ops::mel::{self, FRAMES, WINDOW_SAMPLES};
use mlmf_gpu::{Device, Tensor};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::DecoderOptions;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

fn values(t: &Tensor) -> Vec<f32> {
    common::f32s(&t.to_bytes().unwrap())
}

/// The f32 tensor `key` of a safetensors file, with its shape.
fn fixture(path: &Path, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(key).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    let v = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (view.shape().to_vec(), v)
}

/// The samples of a mono s16 WAV file as `int16 / 32768`, decoded by symphonia.
fn wav_samples(path: &Path) -> Vec<f32> {
    let file = std::fs::File::open(path).unwrap();
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    hint.with_extension("wav");
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .unwrap();
    let mut format = probed.format;
    let track = format.default_track().unwrap();
    assert_eq!(track.codec_params.sample_rate, Some(16_000));
    assert_eq!(track.codec_params.channels.map(|c| c.count()), Some(1));
    let id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .unwrap();
    let mut samples = Vec::new();
    while let Ok(packet) = format.next_packet() {
        if packet.track_id() != id {
            continue;
        }
        let decoded = decoder.decode(&packet).unwrap();
        let mut buf = SampleBuffer::<i16>::new(decoded.capacity() as u64, *decoded.spec());
        buf.copy_interleaved_ref(decoded);
        samples.extend(buf.samples().iter().map(|&s| f32::from(s) / 32768.0));
    }
    samples
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

fn audio() -> std::path::PathBuf {
    common::fixtures().join("preprocess/audio")
}

#[test]
fn filterbank_matches_librosa() {
    let (shape, expected) = fixture(&audio().join("mel_filters.safetensors"), "mel_filters");
    assert_eq!(shape, [80, mel::BINS]);
    let got = mel::mel_filters(80);
    let err = max_abs(&got, &expected);
    println!("mel filters (80): max abs error {err:e}");
    assert!(err <= 1e-6, "max abs error {err:e}");
    // 128 bands: same construction; every row a non-empty triangle with positive area.
    let f128 = mel::mel_filters(128);
    assert_eq!(f128.len(), 128 * mel::BINS);
    assert!(f128.iter().all(|v| v.is_finite() && *v >= 0.0));
    for row in f128.chunks_exact(mel::BINS) {
        assert!(row.iter().any(|&v| v > 0.0));
    }
}

#[test]
fn jfk_log_mel_matches_faster_whisper() {
    let samples = wav_samples(&audio().join("jfk.wav"));
    assert_eq!(samples.len(), 176_000);
    let (shape, expected) = fixture(&audio().join("jfk.mel.safetensors"), "mel_30s");
    assert_eq!(shape, [80, FRAMES]);

    let cpu = mel::log_mel(&samples, 80, &Device::Cpu).unwrap();
    assert_eq!(cpu.shape().dims(), [1, 80, FRAMES]);
    let cpu = values(&cpu);
    let err_cpu = max_abs(&cpu, &expected);

    let gpu = mel::log_mel(&samples, 80, &Device::gpu().unwrap()).unwrap();
    assert_eq!(gpu.shape().dims(), [1, 80, FRAMES]);
    let gpu = values(&gpu);
    let err_gpu = max_abs(&gpu, &expected);
    let err_twin = max_abs(&gpu, &cpu);
    println!(
        "jfk log-mel: CPU twin max abs error {err_cpu:e}, GPU {err_gpu:e}, GPU vs twin {err_twin:e}"
    );
    assert!(err_cpu <= 1e-4, "CPU twin: max abs error {err_cpu:e}");
    assert!(err_gpu <= 1e-4, "GPU: max abs error {err_gpu:e}");
    assert!(err_twin <= 1e-4, "GPU vs twin: max abs error {err_twin:e}");
}

#[test]
fn jfk_log_mel_128_bands_gpu_matches_twin() {
    // No reference array for 128 bands: the GPU against its twin, and the floor Whisper sets.
    let samples = wav_samples(&audio().join("jfk.wav"));
    let cpu = mel::log_mel(&samples, 128, &Device::Cpu).unwrap();
    let gpu = mel::log_mel(&samples, 128, &Device::gpu().unwrap()).unwrap();
    assert_eq!(cpu.shape().dims(), [1, 128, FRAMES]);
    assert_eq!(gpu.shape().dims(), [1, 128, FRAMES]);
    let (cpu, gpu) = (values(&cpu), values(&gpu));
    let err = max_abs(&gpu, &cpu);
    println!("jfk log-mel, 128 bands: GPU vs twin max abs {err:e}");
    assert!(err <= 1e-4, "GPU vs twin: max abs error {err:e}");
    // Every value lies within 2 (8 / 4) below the window's maximum.
    let top = cpu.iter().copied().fold(f32::MIN, f32::max);
    assert!(cpu.iter().all(|&v| v >= top - 2.0 - 1e-6));
}

/// Random samples in [-1, 1) (white noise, a shape no recording has), 1.3 s and 80 and 128
/// bands: the GPU against its twin, within the bar the jfk tests use.
#[test]
fn random_samples_gpu_matches_twin() {
    let samples = common::random_f32(20_800, 13);
    let gpu_device = Device::gpu().unwrap();
    for mels in [80, 128] {
        let cpu = values(&mel::log_mel(&samples, mels, &Device::Cpu).unwrap());
        let gpu = values(&mel::log_mel(&samples, mels, &gpu_device).unwrap());
        assert_eq!(cpu.len(), mels * FRAMES);
        let err = max_abs(&gpu, &cpu);
        println!("random samples, {mels} bands: GPU vs twin max abs {err:e}");
        assert!(
            err <= 1e-4,
            "{mels} bands: GPU vs twin max abs error {err:e}"
        );
    }
}

#[test]
fn long_audio_is_cut_into_30s_windows() {
    assert_eq!(mel::windows(0), 1);
    assert_eq!(mel::windows(1), 1);
    assert_eq!(mel::windows(WINDOW_SAMPLES), 1);
    assert_eq!(mel::windows(WINDOW_SAMPLES + 1), 2);
    assert_eq!(mel::windows(3 * WINDOW_SAMPLES - 5), 3);

    // 31 s of jfk.wav repeated: two windows; the first is the log-mel of the first 30 s alone,
    // the second that of the last second padded with zeros.
    let jfk = wav_samples(&audio().join("jfk.wav"));
    let n = WINDOW_SAMPLES + 16_000;
    let samples: Vec<f32> = jfk.iter().copied().cycle().take(n).collect();
    for device in [Device::Cpu, Device::gpu().unwrap()] {
        let both = mel::log_mel(&samples, 80, &device).unwrap();
        assert_eq!(both.shape().dims(), [2, 80, FRAMES]);
        let both = values(&both);
        let first = values(&mel::log_mel(&samples[..WINDOW_SAMPLES], 80, &device).unwrap());
        let second = values(&mel::log_mel(&samples[WINDOW_SAMPLES..], 80, &device).unwrap());
        assert_eq!(both[..80 * FRAMES], first[..], "{}", device.describe());
        assert_eq!(both[80 * FRAMES..], second[..], "{}", device.describe());
    }
}

#[test]
fn zero_mels_is_refused() {
    assert!(matches!(
        mel::log_mel(&[0.0; 10], 0, &Device::Cpu),
        Err(mlmf_core::Error::OpArgument {
            argument: "mels",
            ..
        })
    ));
}

/// faster-whisper's extractor (`scripts/mel_faster_whisper.py`, which runs faster-whisper
/// 1.2.1's `feature_extractor.py` unmodified) on `samples` in `mode`: `[windows, mels, 3000]`.
fn faster_whisper(samples: &[f32], mels: usize, mode: &str) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.f32"), dir.path().join("out.f32"));
    let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).unwrap();
    let out = std::process::Command::new(common::python())
        .arg(common::workspace_dir().join("scripts/mel_faster_whisper.py"))
        .args([&input, std::path::Path::new(&mels.to_string())])
        .arg(mode)
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::f32s(&std::fs::read(&output).unwrap())
}

/// Audio longer than 30 s, both ways of cutting it, GPU and twin against faster-whisper's own
/// extractor: 75 s (the last window half content: zeros after it in `Continuous`) and 60 s plus
/// 100 samples, loudest at its very end (6000 content frames fill two windows exactly; the
/// extractor's extra frame, in no window, holds the maximum; per window: 3 windows, the last of
/// 100 samples).
#[test]
fn long_audio_matches_faster_whisper_both_ways() {
    use mel::Windowing;
    let jfk = wav_samples(&audio().join("jfk.wav"));
    let long: Vec<f32> = jfk.iter().copied().cycle().take(75 * 16_000).collect();
    let mut loud_end: Vec<f32> = jfk.iter().copied().cycle().take(960_100).collect();
    // A full-scale 1 kHz tone over the last 300 samples.
    for (i, v) in loud_end.iter_mut().rev().take(300).enumerate() {
        *v = 0.99 * (std::f32::consts::TAU * i as f32 / 16.0).sin();
    }
    let gpu = Device::gpu().unwrap();
    // Windows per way: ceil(samples / 480000), and ceil((samples / 160) / 3000).
    for (name, samples, counts) in [
        ("75 s", &long, [3, 3]),
        ("60 s + loud end", &loud_end, [3, 2]),
    ] {
        for (windowing, mode, windows) in [
            (Windowing::PerWindow, "per-window", counts[0]),
            (Windowing::Continuous, "continuous", counts[1]),
        ] {
            let expected = faster_whisper(samples, 80, mode);
            assert_eq!(expected.len(), windows * 80 * FRAMES, "{name} {mode}");
            if name != "75 s" && mode == "continuous" {
                // The extra frame's maximum (2.27, against 2.05 in the windows) sets the floor.
                let floor = expected.iter().copied().fold(f32::MAX, f32::min);
                assert!(
                    (floor - (2.2731879 - 4.0) / 4.0).abs() < 1e-4,
                    "floor {floor}"
                );
            }
            for device in [&Device::Cpu, &gpu] {
                let got = mel::log_mel_with(samples, 80, windowing, device).unwrap();
                assert_eq!(got.shape().dims(), [windows, 80, FRAMES]);
                let got = values(&got);
                let err = max_abs(&got, &expected);
                println!(
                    "{name}, {mode}, {}: max abs error {err:e}",
                    device.describe()
                );
                assert!(err <= 1e-4, "{name} {mode} {}: {err:e}", device.describe());
            }
        }
    }
    // The two ways differ where they should: not at all on exactly 30 s of one window...
    let exact = &long[..WINDOW_SAMPLES];
    let a = values(&mel::log_mel_with(exact, 80, Windowing::PerWindow, &Device::Cpu).unwrap());
    let b = values(&mel::log_mel_with(exact, 80, Windowing::Continuous, &Device::Cpu).unwrap());
    // ...but for the frames near the end, which see the appended zeros instead of a reflection.
    let near_end = |v: &[f32]| -> Vec<f32> { v.chunks(FRAMES).map(|r| r[FRAMES - 1]).collect() };
    assert!(max_abs(&a, &b) > 1e-3);
    assert_ne!(near_end(&a), near_end(&b));
    let head =
        |v: &[f32]| -> Vec<f32> { v.chunks(FRAMES).flat_map(|r| r[..2990].to_vec()).collect() };
    assert!(max_abs(&head(&a), &head(&b)) <= 1e-6);
}

/// Nine windows (more than the launcher records before it submits and waits): the GPU against
/// faster-whisper's extractor, continuous (one maximum across all nine) and per window.
#[test]
fn nine_windows_on_the_gpu_match_faster_whisper() {
    use mel::Windowing;
    let jfk = wav_samples(&audio().join("jfk.wav"));
    let n = 8 * WINDOW_SAMPLES + 20_000;
    // jfk.wav repeated, louder in each window, so each window's own maximum differs.
    let samples: Vec<f32> = jfk
        .iter()
        .copied()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, v)| v * (0.2 + 0.1 * (i / WINDOW_SAMPLES) as f32))
        .collect();
    let gpu = Device::gpu().unwrap();
    for (windowing, mode) in [
        (Windowing::Continuous, "continuous"),
        (Windowing::PerWindow, "per-window"),
    ] {
        let expected = faster_whisper(&samples, 80, mode);
        let got = mel::log_mel_with(&samples, 80, windowing, &gpu).unwrap();
        assert_eq!(got.shape().dims(), [9, 80, FRAMES]);
        let err = max_abs(&values(&got), &expected);
        println!("nine windows, {mode}, GPU: max abs error {err:e}");
        assert!(err <= 1e-4, "{mode}: {err:e}");
    }
}
