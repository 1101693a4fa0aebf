//! Whisper tiny.en's decoder and greedy transcription against
//! `../shared/fixtures/whisper/jfk.safetensors` (CTranslate2 4.8.5, float32):
//! - `step_logits` within the README's bar (max abs 1e-3 per row, same argmax), the decoder fed
//!   the fixture's `encoder_out`, both one token per step through the KV cache and the whole
//!   sequence at once (causal), on lavapipe and on the CPU twins;
//! - the 24 `tokens` exactly, and the text, from `encoder_out` and from jfk.wav end to end;
//! - the FLAC cut (the WAV's first 62400 samples) exactly the tokens of the WAV cut there, the
//!   Ogg and MP3 cuts the same text (and tokens); audio over 30 s cut into windows and joined;
//! - bad directories, files and inputs are typed errors.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mlmf::models::whisper::{self, TranscribeOptions, Whisper};
use mlmf::multimodal::audio::decode_audio;
use mlmf::{Device, Error, Tensor};
use safetensors::{Dtype, SafeTensors};

/// The README's bar on `step_logits`.
const BAR: f32 = 1e-3;
const TEXT: &str = "And so my fellow Americans ask not what your country can do for you, ask what you can do for your country.";

fn model_dir() -> PathBuf {
    common::model(common::WHISPER_CT2)
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixture(key: &str) -> (Vec<usize>, Vec<u8>, Dtype) {
    let bytes = std::fs::read(common::fixtures().join("whisper/jfk.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(key).unwrap();
    (view.shape().to_vec(), view.data().to_vec(), view.dtype())
}

fn fixture_f32(key: &str) -> (Vec<usize>, Vec<f32>) {
    let (shape, data, dtype) = fixture(key);
    assert_eq!(dtype, Dtype::F32);
    (shape, common::f32s(&data))
}

fn fixture_ids(key: &str) -> Vec<u32> {
    let (_, data, dtype) = fixture(key);
    assert_eq!(dtype, Dtype::I64);
    data.chunks_exact(8)
        .map(|c| u32::try_from(i64::from_le_bytes(c.try_into().unwrap())).unwrap())
        .collect()
}

/// One GPU device for the whole test binary, so that the tests share [`whisper`]'s model.
fn gpu() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| Device::gpu().expect("a Vulkan adapter (lavapipe in CI)"))
        .clone()
}

/// One model per device for the whole test binary (loading takes a while on lavapipe).
fn whisper(device: &Device) -> &'static Whisper {
    static GPU: OnceLock<Whisper> = OnceLock::new();
    static CPU: OnceLock<Whisper> = OnceLock::new();
    let cell = if device.is_gpu() { &GPU } else { &CPU };
    cell.get_or_init(|| Whisper::load(&model_dir(), device).unwrap())
}

fn encoder_out(device: &Device) -> Tensor {
    let (shape, values) = fixture_f32("encoder_out");
    assert_eq!(shape, [1500, 384]);
    Tensor::from_f32("encoder_out", vec![1, 1500, 384], &values)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

fn check_row(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}");
    let err = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    println!("{what}: max abs error {err:e}");
    assert!(err <= BAR, "{what}: max abs error {err} > {BAR}");
    assert_eq!(argmax(got), argmax(want), "{what}: argmax");
}

/// `step_logits`, fed one token per step through the cache and all five at once.
fn check_step_logits(device: &Device) {
    let w = whisper(device);
    let d = w.decoder();
    let (shape, want) = fixture_f32("step_logits");
    let vocab = d.config().vocab;
    assert_eq!(shape, [4, vocab]);
    let prompt = fixture_ids("prompt");
    assert_eq!(prompt, w.prompt());
    let tokens = fixture_ids("tokens");
    let cross = d.cross_kv(&encoder_out(device)).unwrap();
    let name = device.describe();

    let mut cache = d.new_cache().unwrap();
    let mut feeds = vec![prompt.clone()];
    feeds.extend(tokens[..3].iter().map(|&t| vec![t]));
    for (s, feed) in feeds.iter().enumerate() {
        let step = d.step(feed, &mut cache, &cross, false).unwrap();
        let logits = step.logits.to_f32_vec().unwrap();
        assert_eq!(step.logits.shape().dims(), &[1, feed.len(), vocab]);
        check_row(
            &format!("{name}: step {s}, cached"),
            &logits[logits.len() - vocab..],
            &want[s * vocab..(s + 1) * vocab],
        );
    }
    assert_eq!(cache.len(0), 5);

    // The whole sequence at once, and its last token again over a cache of four: the causal
    // and the offset masks.
    let mut seq = prompt.clone();
    seq.extend(&tokens[..3]);
    let mut cache = d.new_cache().unwrap();
    let logits = d
        .step(&seq, &mut cache, &cross, false)
        .unwrap()
        .logits
        .to_f32_vec()
        .unwrap();
    for s in 0..4 {
        check_row(
            &format!("{name}: step {s}, one pass"),
            &logits[(s + 1) * vocab..(s + 2) * vocab],
            &want[s * vocab..(s + 1) * vocab],
        );
    }
    let mut cache = d.new_cache().unwrap();
    d.step(&seq[..2], &mut cache, &cross, false).unwrap();
    let logits = d
        .step(&seq[2..], &mut cache, &cross, false)
        .unwrap()
        .logits
        .to_f32_vec()
        .unwrap();
    for s in 1..4 {
        check_row(
            &format!("{name}: step {s}, after a cached prompt"),
            &logits[(s - 1) * vocab..s * vocab],
            &want[s * vocab..(s + 1) * vocab],
        );
    }
}

#[test]
fn step_logits_match_ctranslate2_on_the_gpu() {
    check_step_logits(&gpu());
}

#[test]
fn step_logits_match_ctranslate2_on_the_cpu_twins() {
    check_step_logits(&Device::Cpu);
}

fn jfk_wav() -> PathBuf {
    common::fixtures().join("preprocess/audio/jfk.wav")
}

fn check_jfk(device: &Device) {
    let w = whisper(device);
    let want = fixture_ids("tokens");
    let decoded = w
        .decode(&encoder_out(device), &TranscribeOptions::default())
        .unwrap();
    assert_eq!(
        decoded.tokens, want,
        "tokens from the fixture's encoder_out"
    );
    assert_eq!(w.text(&decoded.tokens).unwrap(), TEXT);

    let t = w
        .transcribe_file(&jfk_wav(), &TranscribeOptions::default())
        .unwrap();
    assert_eq!(t.tokens, want, "tokens from jfk.wav");
    assert_eq!(t.text, TEXT);
    assert_eq!(t.audio_seconds, 11.0);
    assert!(t.attention.is_none());
    println!("{}: {:?}", device.describe(), t.timing);
}

#[test]
fn jfk_tokens_and_text_on_the_gpu() {
    check_jfk(&gpu());
}

#[test]
fn jfk_tokens_and_text_on_the_cpu_twins() {
    check_jfk(&Device::Cpu);
}

/// 16 kHz mono samples of a file the fixtures hold.
fn samples(path: &Path) -> Vec<f32> {
    let audio = decode_audio(path).unwrap();
    assert_eq!(audio.sample_rate, whisper::SAMPLE_RATE);
    audio.mono()
}

#[test]
fn lossless_and_lossy_cuts_of_jfk() {
    let device = gpu();
    let w = whisper(&device);
    let options = TranscribeOptions::default();
    let cut = samples(&jfk_wav())[..62400].to_vec();
    let want = w.transcribe(&cut, &options).unwrap();
    println!(
        "jfk.wav cut to 62400 samples: {:?} {:?}",
        want.text, want.tokens
    );
    let dir = common::fixtures().join("media/audio");
    let flac = w.transcribe_file(&dir.join("jfk.flac"), &options).unwrap();
    assert_eq!(flac.tokens, want.tokens, "FLAC: {}", flac.text);
    for name in ["jfk.ogg", "jfk.mp3"] {
        let t = w.transcribe_file(&dir.join(name), &options).unwrap();
        println!("{name}: {:?} {:?}", t.text, t.tokens);
        assert_eq!(t.text, want.text, "{name}");
        // The lossy decodes change no token either (measured: the same six ids).
        assert_eq!(t.tokens, want.tokens, "{name}");
    }
}

#[test]
fn audio_over_30_seconds_is_cut_into_windows() {
    // jfk.wav, 19 s of silence, jfk.wav again: the first window is jfk.wav padded to 30 s by
    // its own zeros (the fixture's input), the second jfk.wav alone, padded the same way.
    let device = gpu();
    let w = whisper(&device);
    let jfk = samples(&jfk_wav());
    let mut audio = jfk.clone();
    audio.resize(30 * 16_000, 0.0);
    audio.extend(&jfk);
    let options = TranscribeOptions { attention: true };
    let t = w.transcribe(&audio, &options).unwrap();
    let want = fixture_ids("tokens");
    assert_eq!(t.tokens, [want.clone(), want].concat());
    assert_eq!(t.text, format!("{TEXT} {TEXT}"));
    assert_eq!(t.audio_seconds, 41.0);
    let a = t.attention.unwrap();
    assert_eq!((a.rows, a.frames), (48, 1500));
    assert_eq!(a.values.len(), 48 * 1500);
    assert_eq!(a.labels.len(), 48);
    assert_eq!(a.labels[0], " And");
    // Each row is a mean of softmax rows over the 1500 frames: it sums to 1.
    for r in 0..a.rows {
        let sum: f32 = a.values[r * 1500..(r + 1) * 1500].iter().sum();
        assert!((sum - 1.0).abs() < 1e-3, "row {r} sums to {sum}");
    }
}

#[test]
fn bad_directories_files_and_inputs_are_typed_errors() {
    let cpu = Device::Cpu;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let link = |from: &Path, name: &str| std::os::unix::fs::symlink(from, dir.join(name)).unwrap();

    // No model.bin.
    let err = Whisper::load(dir, &cpu).err().unwrap();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("model.bin"), "{err}");
    // A model that is not Whisper: the encoder's first variable is missing.
    link(&common::model(common::MINILM), "model.bin");
    let err = Whisper::load(dir, &cpu).err().unwrap();
    assert!(
        matches!(&err, Error::TensorNotFound { tensor, .. } if tensor == "encoder/conv1/weight"),
        "{err}"
    );
    // The real model without its config, then with a config without suppress ids, then a
    // tokenizer that does not parse.
    std::fs::remove_file(dir.join("model.bin")).unwrap();
    link(&model_dir().join("model.bin"), "model.bin");
    let err = Whisper::load(dir, &cpu).err().unwrap();
    assert!(
        matches!(&err, Error::Io { path, .. } if path.ends_with("config.json")),
        "{err}"
    );
    std::fs::write(dir.join("config.json"), r#"{"suppress_ids": [1, "x"]}"#).unwrap();
    let err = Whisper::load(dir, &cpu).err().unwrap();
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    assert!(err.to_string().contains("suppress_ids"), "{err}");
    std::fs::write(
        dir.join("config.json"),
        r#"{"suppress_ids": [1], "suppress_ids_begin": [99999]}"#,
    )
    .unwrap();
    let err = Whisper::load(dir, &cpu).err().unwrap();
    assert!(err.to_string().contains("99999"), "{err}");
    link(&model_dir().join("config.json"), "config.json.real");
    std::fs::rename(dir.join("config.json.real"), dir.join("config.json")).unwrap();
    std::fs::write(dir.join("tokenizer.json"), b"{ not json").unwrap();
    let err = Whisper::load(dir, &cpu).err().unwrap();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err}");

    // Audio with no samples: as samples, and as a WAV file holding none.
    let w = whisper(&cpu);
    let options = TranscribeOptions::default();
    let err = w.transcribe(&[], &options).err().unwrap();
    assert!(matches!(err, Error::EmptyAudio { .. }), "{err}");
    let wav = dir.join("empty.wav");
    let mut bytes = b"RIFF".to_vec();
    bytes.extend(36u32.to_le_bytes());
    bytes.extend(b"WAVEfmt ");
    bytes.extend(16u32.to_le_bytes());
    bytes.extend(1u16.to_le_bytes()); // PCM
    bytes.extend(1u16.to_le_bytes()); // mono
    bytes.extend(16_000u32.to_le_bytes());
    bytes.extend(32_000u32.to_le_bytes());
    bytes.extend(2u16.to_le_bytes());
    bytes.extend(16u16.to_le_bytes());
    bytes.extend(b"data");
    bytes.extend(0u32.to_le_bytes());
    std::fs::write(&wav, bytes).unwrap();
    let err = w.transcribe_file(&wav, &options).err().unwrap();
    assert!(
        matches!(&err, Error::EmptyAudio { path } if path == &wav),
        "{err}"
    );
    // More than one window to encode; an encoder output of another shape.
    let err = w.encode(&vec![0.0; 480_001]).err().unwrap();
    assert!(matches!(err, Error::OpArgument { .. }), "{err}");
    let d = w.decoder();
    let small = Tensor::from_f32("enc", vec![1, 10, 383], &vec![0.0; 3830]).unwrap();
    let err = d.cross_kv(&small).err().unwrap();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // A token past the vocabulary; positions past the decoder's 448.
    let enc = Tensor::from_f32("enc", vec![1, 10, 384], &vec![0.0; 3840]).unwrap();
    let cross = d.cross_kv(&enc).unwrap();
    let mut cache = d.new_cache().unwrap();
    let err = d.step(&[51864], &mut cache, &cross, false).err().unwrap();
    assert!(matches!(err, Error::OpIndex { .. }), "{err}");
    let err = d
        .step(&vec![0; 449], &mut cache, &cross, false)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::OpIndex {
                index: 448,
                len: 448,
                ..
            }
        ),
        "{err}"
    );
    let err = d.step(&[], &mut cache, &cross, false).err().unwrap();
    assert!(matches!(err, Error::OpArgument { .. }), "{err}");
}
