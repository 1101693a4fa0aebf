//! `mlmf audio` and `mlmf mel` against the fixtures (`media/README.md`, section Audio, and
//! `README.md`, section `preprocess/audio`), their outputs read with the `safetensors` crate.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod run;

use run::{mlmf, run};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The F32 tensor `key` of a safetensors file: shape, values, and the file's metadata.
fn read(
    path: &Path,
    key: &str,
) -> (
    Vec<usize>,
    Vec<f32>,
    std::collections::HashMap<String, String>,
) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(key).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    let values = common::f32s(view.data());
    let metadata = meta.metadata().clone().unwrap_or_default();
    (view.shape().to_vec(), values, metadata)
}

fn media(name: &str) -> PathBuf {
    common::fixtures().join("media/audio").join(name)
}

fn preprocess(name: &str) -> PathBuf {
    common::fixtures().join("preprocess/audio").join(name)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn audio_writes_the_samples_per_channel_and_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.safetensors");
    let wav = media("jfk_stereo_44k_s24.wav");
    let (shape, expected, _) = read(
        &media("jfk_stereo_44k_s24.wav.samples.safetensors"),
        "samples",
    );
    assert_eq!(shape, [2, 33075]);

    mlmf(&["audio", wav.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let (shape, got, meta) = read(&out, "samples");
    assert_eq!(shape, [2, 33075]);
    assert_eq!(meta["sample_rate"], "44100");
    assert_eq!(got, expected, "24-bit PCM is exact");

    mlmf(&[
        "audio",
        wav.to_str().unwrap(),
        "--mono",
        "-o",
        out.to_str().unwrap(),
    ]);
    let (shape, got, _) = read(&out, "samples");
    assert_eq!(shape, [1, 33075]);
    let (left, right) = expected.split_at(33075);
    let mean: Vec<f32> = left.iter().zip(right).map(|(l, r)| (l + r) / 2.0).collect();
    assert_eq!(got, mean);

    // FLAC at its own rate: --rate equal to the file's changes nothing.
    let flac = media("jfk.flac");
    mlmf(&[
        "audio",
        flac.to_str().unwrap(),
        "--rate",
        "16000",
        "-o",
        out.to_str().unwrap(),
    ]);
    let (shape, got, meta) = read(&out, "samples");
    let (_, expected, _) = read(&media("jfk.flac.samples.safetensors"), "samples");
    assert_eq!(shape, [1, 62400]);
    assert_eq!(meta["sample_rate"], "16000");
    assert_eq!(got, expected);
}

#[test]
fn audio_resamples_to_the_fixture_bar() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.safetensors");
    let wav = preprocess("Front_Center.wav");
    mlmf(&[
        "audio",
        wav.to_str().unwrap(),
        "--rate",
        "16000",
        "-o",
        out.to_str().unwrap(),
    ]);
    let (shape, got, meta) = read(&out, "samples");
    let (_, expected, _) = read(
        &preprocess("Front_Center.resampled_16k.safetensors"),
        "resampled_16k",
    );
    assert_eq!(shape, [1, 22849]);
    assert_eq!(meta["sample_rate"], "16000");
    let signal: f64 = expected.iter().map(|&v| f64::from(v).powi(2)).sum();
    let noise: f64 = got
        .iter()
        .zip(&expected)
        .map(|(&g, &e)| f64::from(g - e).powi(2))
        .sum();
    let snr = 10.0 * (signal / noise).log10();
    let err = max_abs(&got, &expected);
    println!("mlmf audio --rate 16000: SNR {snr:.1} dB, max abs {err:e}");
    assert!(snr >= 30.0 && err <= 0.03, "SNR {snr} dB, max abs {err}");
}

#[test]
fn mel_of_jfk_matches_faster_whisper_on_both_devices() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mel.safetensors");
    let wav = preprocess("jfk.wav");
    let (_, expected, _) = read(&preprocess("jfk.mel.safetensors"), "mel_30s");
    for device in ["cpu", "gpu"] {
        let args = [
            "mel",
            wav.to_str().unwrap(),
            "--device",
            device,
            "-o",
            out.to_str().unwrap(),
        ];
        mlmf(&args);
        let (shape, got, meta) = read(&out, "mel");
        assert_eq!(shape, [80, 3000]);
        assert_eq!(meta["windowing"], "per-window");
        let err = max_abs(&got, &expected);
        println!("mlmf mel --device {device}: max abs error {err:e}");
        assert!(err <= 1e-4, "{device}: {err:e}");
    }
    // 128 bands: the shape.
    mlmf(&[
        "mel",
        wav.to_str().unwrap(),
        "--mels",
        "128",
        "--device",
        "cpu",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(read(&out, "mel").0, [128, 3000]);
}

/// A 16-bit 16 kHz mono WAV of `samples` (integers), written by Python's `wave` module.
fn write_wav(path: &Path, samples: &[i16]) {
    let raw = path.with_extension("raw");
    let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&raw, bytes).unwrap();
    let script = "import sys, wave\nw = wave.open(sys.argv[2], 'wb')\nw.setnchannels(1)\nw.setsampwidth(2)\nw.setframerate(16000)\nw.writeframes(open(sys.argv[1], 'rb').read())\nw.close()\n";
    let out = Command::new(common::python())
        .args(["-c", script])
        .arg(&raw)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mel_of_longer_audio_has_one_window_per_30s_as_faster_whisper_cuts_it() {
    let dir = tempfile::tempdir().unwrap();
    // 40 s of jfk.wav repeated, as 16-bit integers.
    let (_, jfk, _) = read(&media("jfk.flac.samples.safetensors"), "samples");
    let ints: Vec<i16> = jfk
        .iter()
        .map(|&v| (v * 32768.0) as i16)
        .cycle()
        .take(640_000)
        .collect();
    let wav = dir.path().join("long.wav");
    write_wav(&wav, &ints);
    let out = dir.path().join("mel.safetensors");
    let args = [
        "mel",
        wav.to_str().unwrap(),
        "--windowing",
        "continuous",
        "--device",
        "cpu",
    ];
    mlmf(&[&args[..], &["-o", out.to_str().unwrap()]].concat());
    let (shape, got, meta) = read(&out, "mel");
    assert_eq!(shape, [2, 80, 3000]);
    assert_eq!(meta["windowing"], "continuous");

    // faster-whisper's own extractor on the same samples (int16 / 32768).
    let samples: Vec<u8> = ints
        .iter()
        .flat_map(|&v| (f32::from(v) / 32768.0).to_le_bytes())
        .collect();
    let (input, expected) = (dir.path().join("in.f32"), dir.path().join("out.f32"));
    std::fs::write(&input, samples).unwrap();
    let status = Command::new(common::python())
        .arg(common::workspace_dir().join("scripts/mel_faster_whisper.py"))
        .arg(&input)
        .args(["80", "continuous"])
        .arg(&expected)
        .status()
        .unwrap();
    assert!(status.success());
    let expected = common::f32s(&std::fs::read(&expected).unwrap());
    let err = max_abs(&got, &expected);
    println!("mlmf mel, 40 s, continuous: max abs error {err:e}");
    assert!(err <= 1e-4, "{err:e}");
    // The second window holds 10 s of content (1000 frames), then zeros.
    assert!(got[80 * 3000..]
        .chunks(3000)
        .all(|row| row[1000..].iter().all(|&v| v == 0.0)));
}

#[test]
fn bad_arguments_and_files_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let wav = preprocess("jfk.wav");
    let o = out.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["mel", wav.to_str().unwrap(), "--mels", "64", "-o", o],
            "80 or 128",
        ),
        (&["audio", "/nonexistent.wav", "-o", o], "nonexistent"),
        (
            &["audio", wav.to_str().unwrap(), "--rate", "0", "-o", o],
            "rate",
        ),
    ];
    for (args, expected) in cases {
        let result = run(args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!out.exists());
    }
    // Not audio at all: a safetensors file.
    let not_audio = preprocess("jfk.mel.safetensors");
    let result = run(&["audio", not_audio.to_str().unwrap(), "-o", o]);
    assert_eq!(result.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&result.stderr).contains("jfk.mel.safetensors"));
}
