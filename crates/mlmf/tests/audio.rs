//! Audio decoding against `fixtures/media/audio`: each file's samples as ffmpeg decoded them
//! (`<file>.samples.safetensors`, F32 `[channels, n]`, metadata `sample_rate`), with the bars of
//! the fixture README: WAV and FLAC bit-exact, MP3 within 1e-5, Vorbis within 1e-6, the same n
//! everywhere. Then broken inputs: typed errors, no panic.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use mlmf::multimodal::audio::{decode_audio, Audio};
use mlmf::Error;
use safetensors::SafeTensors;

fn dir() -> PathBuf {
    common::fixtures().join("media/audio")
}

/// The expected samples per channel and the sample rate of `<name>.samples.safetensors`.
fn expected(name: &str) -> (Vec<Vec<f32>>, u32) {
    let bytes = std::fs::read(dir().join(format!("{name}.samples.safetensors"))).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let rate: u32 = meta.metadata().as_ref().unwrap()["sample_rate"]
        .parse()
        .unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("samples").unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    let (ch, n) = (view.shape()[0], view.shape()[1]);
    let flat: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(flat.len(), ch * n);
    (flat.chunks(n).map(<[f32]>::to_vec).collect(), rate)
}

/// Decodes `name` and compares it with the fixture; returns the largest difference.
fn check(name: &str, bar: f32) -> (Audio, f32) {
    let got = decode_audio(&dir().join(name)).unwrap();
    let (want, rate) = expected(name);
    assert_eq!(got.sample_rate, rate, "{name}: sample rate");
    assert_eq!(got.num_channels(), want.len(), "{name}: channels");
    let mut max = 0f32;
    for (c, (g, w)) in got.channels.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len(), "{name}: samples in channel {c}");
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            let d = (a - b).abs();
            assert!(d <= bar, "{name}: channel {c} sample {i}: {a} vs {b}");
            max = max.max(d);
        }
    }
    println!("{name}: n {} max abs {max:e}", got.len());
    (got, max)
}

#[test]
fn flac_is_bit_exact() {
    let (got, max) = check("jfk.flac", 0.0);
    assert_eq!(max, 0.0);
    assert_eq!(got.len(), 62400);
    // The FLAC holds jfk.wav[:62400] as 16-bit: every sample is an exact multiple of 2^-15.
    assert!(got.channels[0].iter().all(|s| (s * 32768.0).fract() == 0.0));
}

#[test]
fn wav_s24_stereo_is_bit_exact_and_mono_is_the_mean() {
    let (got, max) = check("jfk_stereo_44k_s24.wav", 0.0);
    assert_eq!(max, 0.0);
    assert_eq!((got.num_channels(), got.len()), (2, 33075));
    let mono = got.mono();
    assert_eq!(mono.len(), 33075);
    for (i, m) in mono.iter().enumerate() {
        let (l, r) = (got.channels[0][i], got.channels[1][i]);
        // 24-bit samples / 2^23: their sum and half are exact in f32.
        assert_eq!(*m, (l + r) / 2.0, "sample {i}");
        // The file's right channel is (left + 1) >> 1 on the 24-bit integers.
        let li = (l * 8_388_608.0) as i32;
        assert_eq!((r * 8_388_608.0) as i32, (li + 1) >> 1, "sample {i}");
    }
}

#[test]
fn mp3_is_trimmed_to_the_gapless_length_within_1e5() {
    let (got, _) = check("jfk.mp3", 1e-5);
    assert_eq!(got.len(), 62400);
}

#[test]
fn vorbis_within_1e6_and_trimmed_by_granule_position() {
    let (got, _) = check("jfk.ogg", 1e-6);
    assert_eq!(got.len(), 62400);
    let (got, _) = check("audio-channel-front-center.oga", 1e-6);
    assert_eq!((got.sample_rate, got.len()), (48000, 68545));
}

#[test]
fn format_is_found_by_content_not_extension() {
    let tmp = tempfile::tempdir().unwrap();
    let renamed = tmp.path().join("really_flac.mp3");
    std::fs::copy(dir().join("jfk.flac"), &renamed).unwrap();
    let got = decode_audio(&renamed).unwrap();
    let (want, _) = expected("jfk.flac");
    assert_eq!(got.channels, want);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A 16-bit mono PCM WAV header declaring `data_len` bytes of samples, followed by `data`.
fn wav(data_len: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // PCM
    v.extend_from_slice(&1u16.to_le_bytes()); // mono
    v.extend_from_slice(&16000u32.to_le_bytes());
    v.extend_from_slice(&32000u32.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn a_small_wav_decodes_to_int_over_32768() {
    let tmp = tempfile::tempdir().unwrap();
    let ints: [i16; 4] = [0, 1, -32768, 32767];
    let data: Vec<u8> = ints.iter().flat_map(|s| s.to_le_bytes()).collect();
    let p = write(tmp.path(), "x", &wav(8, &data));
    let got = decode_audio(&p).unwrap();
    assert_eq!(got.sample_rate, 16000);
    let want: Vec<f32> = ints.iter().map(|&s| f32::from(s) / 32768.0).collect();
    assert_eq!(got.channels, vec![want]);
}

#[test]
fn zero_length_audio_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = write(tmp.path(), "empty.wav", b"");
    assert!(
        matches!(decode_audio(&empty), Err(Error::EmptyAudio { path }) if path == empty),
        "a zero-byte file"
    );
    let no_samples = write(tmp.path(), "no_samples.wav", &wav(0, &[]));
    let err = decode_audio(&no_samples).unwrap_err();
    assert!(
        matches!(&err, Error::EmptyAudio { path } if *path == no_samples),
        "{err}"
    );
}

#[test]
fn garbage_is_unsupported() {
    let tmp = tempfile::tempdir().unwrap();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let p = write(tmp.path(), "junk.wav", &junk);
    let err = decode_audio(&p).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedAudio { path, .. } if *path == p),
        "{err}"
    );
    let text = write(tmp.path(), "text.flac", b"this is not audio at all\n");
    let err = decode_audio(&text).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedAudio { path, .. } if *path == text),
        "{err}"
    );
}

#[test]
fn truncated_files_are_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["jfk.flac", "jfk_stereo_44k_s24.wav", "jfk.mp3", "jfk.ogg"] {
        let bytes = std::fs::read(dir().join(name)).unwrap();
        let cut = write(tmp.path(), name, &bytes[..bytes.len() / 2]);
        let err = decode_audio(&cut).unwrap_err();
        assert!(
            matches!(&err, Error::CorruptAudio { path, .. } if *path == cut),
            "{name}: {err}"
        );
        println!("{name} cut in half: {err}");
    }
}

#[test]
fn corrupted_flac_frames_are_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(dir().join("jfk.flac")).unwrap();
    // Past the headers: flip bytes inside the audio frames (the frame CRCs catch it).
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let p = write(tmp.path(), "flipped.flac", &bytes);
    let err = decode_audio(&p).unwrap_err();
    assert!(
        matches!(&err, Error::CorruptAudio { path, .. } if *path == p),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo.wav");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(decode_audio(&fifo).is_err());
}

#[test]
fn resampled_to_16k_against_soxr_hq() {
    let pre = common::fixtures().join("preprocess/audio");
    let audio = decode_audio(&pre.join("Front_Center.wav")).unwrap();
    assert_eq!((audio.sample_rate, audio.len()), (48000, 68545));
    let got = mlmf::multimodal::resample(&audio.mono(), 48000, 16000).unwrap();
    let bytes = std::fs::read(pre.join("Front_Center.resampled_16k.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let want: Vec<f32> = st
        .tensor("resampled_16k")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // ceil(68545 * 16000 / 48000)
    assert_eq!((got.len(), want.len()), (22849, 22849));
    let (mut sig, mut err, mut max) = (0f64, 0f64, 0f32);
    for (g, w) in got.iter().zip(&want) {
        sig += f64::from(*w).powi(2);
        err += f64::from(g - w).powi(2);
        max = max.max((g - w).abs());
    }
    let snr = 10.0 * (sig / err).log10();
    println!("Front_Center 48k -> 16k vs soxr HQ: SNR {snr:.2} dB, max abs {max:e}");
    assert!(snr >= 30.0, "SNR {snr} dB");
    assert!(max <= 0.03, "max abs {max}");
}

#[test]
fn resample_lengths_and_zero_rates() {
    use mlmf::multimodal::resample;
    assert_eq!(resample(&[0.5; 10], 44100, 16000).unwrap().len(), 4); // ceil(10 * 16000 / 44100)
    assert_eq!(resample(&[0.5; 3], 16000, 48000).unwrap().len(), 9);
    assert_eq!(
        resample(&[0.25, 0.5], 16000, 16000).unwrap(),
        vec![0.25, 0.5]
    );
    assert!(matches!(
        resample(&[0.5], 0, 16000),
        Err(Error::BadPreprocess { .. })
    ));
}

#[test]
fn resampling_keeps_a_pass_band_sine() {
    // A 440 Hz sine, down 48k -> 16k and up 16k -> 44.1k (and down from an odd rate), against the same sine evaluated at the
    // output instants (away from the zero-padded ends).
    let sine = |rate: f64, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / rate).sin()) as f32)
            .collect()
    };
    // 44101 -> 16000 has 16000 phases: weights computed per sample instead of tabulated.
    for (from, to) in [(48000u32, 16000u32), (16000, 44100), (44101, 16000)] {
        let n = from as usize / 2;
        let got = mlmf::multimodal::resample(&sine(f64::from(from), n), from, to).unwrap();
        let want = sine(f64::from(to), got.len());
        let edge = got.len() / 8;
        let max = got[edge..got.len() - edge]
            .iter()
            .zip(&want[edge..])
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        println!("sine {from} -> {to}: max abs {max:e}");
        assert!(max < 1e-4, "{from} -> {to}: max abs {max}");
    }
}

/// WAV files of every PCM width (8-bit unsigned, 16, 24, 32) and float32, mono and up to six
/// channels, plain and WAVE_FORMAT_EXTENSIBLE, written by `scripts/write_test_wavs.py` (Python's
/// `wave` and `struct`, not mlmf) under a `.bin` extension, with the samples they hold
/// (`int / 2^(bits-1)`, 8-bit `(u - 128) / 128`): every sample equal.
#[test]
fn wav_of_every_width_and_layout_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::python())
        .arg(common::workspace_dir().join("scripts/write_test_wavs.py"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let channels = case["channels"].as_u64().unwrap() as usize;
        let n = case["n"].as_u64().unwrap() as usize;
        let got = decode_audio(&tmp.path().join(format!("{name}.bin")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(u64::from(got.sample_rate), case["rate"].as_u64().unwrap());
        assert_eq!((got.num_channels(), got.len()), (channels, n), "{name}");
        let want = common::f32s(&std::fs::read(tmp.path().join(format!("{name}.f32"))).unwrap());
        for (c, (g, w)) in got.channels.iter().zip(want.chunks(n)).enumerate() {
            // Bit-exact, compared as bits (a -0.0 would be a difference too).
            let g: Vec<u32> = g.iter().map(|v| v.to_bits()).collect();
            let w: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
            assert!(g == w, "{name}: channel {c} differs");
        }
        println!("{name}: {channels} ch x {n}, exact");
    }
}

/// A RIFF/WAVE file: the 16-byte PCM fmt chunk given by its fields, then `chunks` (whole, with
/// their headers), the RIFF size as `riff_len` (or the true size).
fn riff(fmt: [u32; 6], chunks: &[u8], riff_len: Option<u32>) -> Vec<u8> {
    let [tag, channels, rate, byte_rate, block, bits] = fmt;
    let mut body = b"WAVEfmt ".to_vec();
    body.extend_from_slice(&16u32.to_le_bytes());
    body.extend_from_slice(&(tag as u16).to_le_bytes());
    body.extend_from_slice(&(channels as u16).to_le_bytes());
    body.extend_from_slice(&rate.to_le_bytes());
    body.extend_from_slice(&byte_rate.to_le_bytes());
    body.extend_from_slice(&(block as u16).to_le_bytes());
    body.extend_from_slice(&(bits as u16).to_le_bytes());
    body.extend_from_slice(chunks);
    let mut v = b"RIFF".to_vec();
    v.extend_from_slice(&riff_len.unwrap_or(body.len() as u32).to_le_bytes());
    v.extend_from_slice(&body);
    v
}

fn chunk(tag: &[u8; 4], declared: u32, body: &[u8]) -> Vec<u8> {
    let mut v = tag.to_vec();
    v.extend_from_slice(&declared.to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// Broken WAV files: every one a typed error naming the file, no panic; sizes the header claims
/// (a data chunk or a LIST chunk of nearly 4 GiB in a file of a hundred bytes) are checked
/// against the file before anything is read or allocated by them.
#[test]
fn broken_wav_files_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let pcm16 = [1, 1, 16000, 32000, 2, 16];
    let data = chunk(b"data", 8, &[1, 0, 2, 0, 3, 0, 4, 0]);
    let good = riff(pcm16, &data, None);
    assert_eq!(
        decode_audio(&write(tmp.path(), "good.bin", &good))
            .unwrap()
            .len(),
        4
    );
    let huge_list = [
        chunk(b"LIST", 0xFFFF_FF00, b"INFOINAM"),
        0xFFFF_FE00u32.to_le_bytes().to_vec(),
        b"title".to_vec(),
        data.clone(),
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("cut_in_riff_header.bin", good[..10].to_vec()),
        ("cut_in_fmt.bin", good[..30].to_vec()),
        ("cut_in_data_header.bin", good[..40].to_vec()),
        ("cut_mid_sample.bin", good[..good.len() - 1].to_vec()),
        (
            "data_claims_4gib.bin",
            riff(pcm16, &chunk(b"data", 0xFFFF_FFF0, &[1, 0, 2, 0]), None),
        ),
        (
            "riff_and_data_claim_4gib.bin",
            riff(
                pcm16,
                &chunk(b"data", 0xFFFF_FFF0, &[1, 0]),
                Some(0xFFFF_FFF0),
            ),
        ),
        (
            "list_claims_4gib.bin",
            riff(pcm16, &huge_list, Some(0xFFFF_FFFF)),
        ),
        (
            "zero_channels.bin",
            riff([1, 0, 16000, 32000, 2, 16], &data, None),
        ),
        (
            "65535_channels.bin",
            riff([1, 65535, 16000, 32000, 2, 16], &data, None),
        ),
        ("zero_rate.bin", riff([1, 1, 0, 0, 2, 16], &data, None)),
        (
            "zero_block_align.bin",
            riff([1, 1, 16000, 32000, 0, 16], &data, None),
        ),
        ("12_bit.bin", riff([1, 1, 16000, 32000, 2, 12], &data, None)),
        (
            "float_16_bit.bin",
            riff([3, 1, 16000, 32000, 2, 16], &data, None),
        ),
        (
            "unknown_tag.bin",
            riff([0x1234, 1, 16000, 32000, 2, 16], &data, None),
        ),
        ("no_data_chunk.bin", riff(pcm16, &[], None)),
    ];
    for (name, bytes) in cases {
        let p = write(tmp.path(), name, &bytes);
        let err = decode_audio(&p).unwrap_err();
        let typed = match &err {
            Error::CorruptAudio { path, .. }
            | Error::UnsupportedAudio { path, .. }
            | Error::EmptyAudio { path } => *path == p,
            _ => false,
        };
        assert!(typed, "{name}: {err:?}");
        println!("{name}: {err}");
    }
}
