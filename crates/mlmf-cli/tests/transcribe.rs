//! `mlmf transcribe` on the cached Whisper tiny.en against `../shared/fixtures/whisper`
//! (CTranslate2's tokens and transcript of jfk.wav, read with the `safetensors` crate), its
//! `--attention-png` read back with the `image` crate, and its errors on bad audio and bad model
//! directories.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod run;

use run::{mlmf, run};
use std::path::{Path, PathBuf};

/// The fixture's transcript (`whisper/README.md`).
const TEXT: &str = "And so my fellow Americans ask not what your country can do for you, ask what you can do for your country.";

/// A failing run: non-zero exit, a message on stderr (returned), no panic.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "mlmf {args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("mlmf: "), "{stderr}");
    stderr
}

fn jfk_wav() -> PathBuf {
    common::fixtures().join("preprocess/audio/jfk.wav")
}

/// jfk.wav samples [0, 62400) (`media/README.md`).
fn jfk_flac() -> PathBuf {
    common::fixtures().join("media/audio/jfk.flac")
}

/// The cached model directory (fails with the fetch command when it is missing).
fn model_dir() -> PathBuf {
    common::model(common::WHISPER_CT2)
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The fixture's `tokens` (I64), CTranslate2's greedy ids without prompt and end-of-text.
fn fixture_tokens() -> Vec<u64> {
    let bytes = std::fs::read(common::fixtures().join("whisper/jfk.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("tokens").unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::I64);
    view.data()
        .chunks_exact(8)
        .map(|c| u64::try_from(i64::from_le_bytes(c.try_into().unwrap())).unwrap())
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// On lavapipe: two files in one call give two objects in argument order; jfk.wav's tokens are
/// exactly CTranslate2's and its text the fixture's.
#[test]
fn json_on_gpu_lists_each_file_in_order_with_the_fixture_tokens() {
    let (flac, wav) = (jfk_flac(), jfk_wav());
    let out = mlmf(&["transcribe", "--device", "gpu", "--json", s(&flac), s(&wav)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let (first, second) = (&list[0], &list[1]);
    assert_eq!(first["audio"], s(&flac));
    assert_eq!(second["audio"], s(&wav));
    // 62400 and 176000 samples at 16 kHz.
    assert_eq!(first["audio_seconds"].as_f64(), Some(3.9));
    assert_eq!(second["audio_seconds"].as_f64(), Some(11.0));
    assert_eq!(second["text"], TEXT);
    let tokens: Vec<u64> = second["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(tokens, fixture_tokens());
    // The excerpt's own transcript: some tokens, none of them the prompt or end-of-text.
    let excerpt = first["tokens"].as_array().unwrap();
    assert!(!excerpt.is_empty());
    assert!(excerpt.iter().all(|t| t.as_u64().unwrap() < 50256));
    assert!(!first["text"].as_str().unwrap().is_empty());
    for item in list {
        assert!(item["seconds"].as_f64().unwrap() > 0.0);
        let keys: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys.len(), 5, "{keys:?}");
    }
}

/// On lavapipe: the text line of one file, and the cross-attention heatmap of the layout
/// `mlmf::fusion::heatmap` documents: 8 px cells, a row per generated token, a column per 10
/// encoder frames (0.2 s) of the audio (jfk.wav: 176000 samples, one frame per 320), a column
/// label ("0s" .. "10s") every 5.
#[test]
fn text_and_attention_png_on_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("attention.png");
    let wav = jfk_wav();
    let out = mlmf(&["transcribe", "--attention-png", s(&png), s(&wav)]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{TEXT}\n"));

    let img = image::open(&png).unwrap().to_rgb8();
    let (cell, margin, glyph) = (8u32, 4u32, 8u32);
    let rows = fixture_tokens().len() as u32;
    let columns = 176000u32.div_ceil(320).div_ceil(10);
    let top = glyph * 3 + 2 * margin; // the longest column label, "10s"
    assert_eq!(img.height(), top + rows * cell + margin);
    // The left margin holds the longest token label: 1 to 16 glyphs.
    let fixed = columns * cell + 3 * margin;
    let left_labels = img.width() - fixed;
    assert!(
        left_labels.is_multiple_of(glyph) && (1..=16).contains(&(left_labels / glyph)),
        "width {}",
        img.width()
    );
    let left = left_labels + 2 * margin;
    let at = |r: u32, c: u32| {
        img.get_pixel(left + c * cell + cell / 2, top + r * cell + cell / 2)
            .0
    };
    // Colours are scaled to the largest weight: its cell is the darkest blue, and no cell is
    // darker in any channel.
    let cells: Vec<[u8; 3]> = (0..rows)
        .flat_map(|r| (0..columns).map(move |c| (r, c)))
        .map(|(r, c)| at(r, c))
        .collect();
    assert!(cells.contains(&[8, 48, 107]));
    assert!(cells.iter().all(|p| p[0] >= 8 && p[1] >= 48 && p[2] >= 107));
    // Every token attends somewhere in the audio, and the speech runs forward: the last token's
    // darkest column lies after the first token's.
    let darkest = |r: u32| {
        (0..columns)
            .min_by_key(|&c| at(r, c).iter().map(|&v| u32::from(v)).sum::<u32>())
            .unwrap()
    };
    for r in 0..rows {
        assert!(
            (0..columns).any(|c| at(r, c) != [255; 3]),
            "row {r} is white"
        );
    }
    assert!(darkest(0) < darkest(rows - 1));
}

/// On the CPU twins: several files print one line each, after the path.
#[test]
fn text_on_cpu_prefixes_the_path_with_several_files() {
    let (wav, flac) = (jfk_wav(), jfk_flac());
    let out = mlmf(&["transcribe", "--device", "cpu", s(&wav), s(&flac)]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0], format!("{}: {TEXT}", s(&wav)));
    assert!(lines[1].starts_with(&format!("{}: ", s(&flac))), "{stdout}");
}

/// A WAV header declaring no samples: 16 kHz mono s16.
fn empty_wav(path: &Path) {
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&36u32.to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&16000u32.to_le_bytes());
    b.extend_from_slice(&32000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&0u32.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

#[test]
fn bad_audio_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.wav");
    let msg = fails(&["transcribe", "--device", "cpu", s(&missing)]);
    assert!(msg.contains(s(&missing)), "{msg}");

    let empty = dir.path().join("empty.wav");
    empty_wav(&empty);
    let msg = fails(&["transcribe", "--device", "cpu", s(&empty)]);
    assert!(
        msg.contains(s(&empty)) && msg.contains("no samples"),
        "{msg}"
    );

    // One picture names one file: refused before any work.
    let png = dir.path().join("a.png");
    let wav = jfk_wav();
    let msg = fails(&["transcribe", "--attention-png", s(&png), s(&wav), s(&wav)]);
    assert!(msg.contains("--attention-png"), "{msg}");
    assert!(!png.exists());
}

/// A model directory with the cached config.json and tokenizer.json, and `model` as model.bin
/// when given (a symbolic link where the platform has them, else a copy).
fn model_with(dir: &Path, model: Option<&Path>) {
    for name in ["config.json", "tokenizer.json"] {
        std::fs::copy(model_dir().join(name), dir.join(name)).unwrap();
    }
    if let Some(model) = model {
        #[cfg(unix)]
        std::os::unix::fs::symlink(model, dir.join("model.bin")).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(model, dir.join("model.bin")).unwrap();
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16 + 1).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A CTranslate2 model.bin (binary version 6, as `model_spec.py` writes it) of spec
/// `TransformerSpec` holding one f32 variable.
fn other_spec_ct2(path: &Path) {
    let mut b = Vec::new();
    b.extend_from_slice(&6u32.to_le_bytes());
    put_str(&mut b, "TransformerSpec");
    b.extend_from_slice(&1u32.to_le_bytes()); // spec revision
    b.extend_from_slice(&1u32.to_le_bytes()); // variables
    put_str(&mut b, "encoder/layer_norm/gamma");
    b.push(1); // rank
    b.extend_from_slice(&2u32.to_le_bytes());
    b.push(0); // float32
    b.extend_from_slice(&8u32.to_le_bytes()); // bytes
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&0u32.to_le_bytes()); // aliases
    std::fs::write(path, b).unwrap();
}

#[test]
fn bad_model_directories_fail_naming_the_file() {
    let wav = jfk_wav();
    let transcribe =
        |dir: &Path| fails(&["transcribe", "--device", "cpu", "--model", s(dir), s(&wav)]);

    let root = tempfile::tempdir().unwrap();
    let no_bin = root.path().join("no-model-bin");
    std::fs::create_dir(&no_bin).unwrap();
    model_with(&no_bin, None);
    let msg = transcribe(&no_bin);
    assert!(
        msg.contains(s(&no_bin)) && msg.contains("model.bin"),
        "{msg}"
    );

    // A sentence-transformers directory from the cache: no model.bin either.
    let minilm = common::model(common::MINILM)
        .parent()
        .unwrap()
        .to_path_buf();
    let msg = transcribe(&minilm);
    assert!(msg.contains(s(&minilm)), "{msg}");

    // A GGUF language model as model.bin.
    let gguf = root.path().join("gguf");
    std::fs::create_dir(&gguf).unwrap();
    model_with(&gguf, Some(&common::model(common::SMOLLM2)));
    let msg = transcribe(&gguf);
    assert!(msg.contains(s(&gguf.join("model.bin"))), "{msg}");

    // A CTranslate2 file of another spec.
    let other = root.path().join("other-spec");
    std::fs::create_dir(&other).unwrap();
    model_with(&other, None);
    other_spec_ct2(&other.join("model.bin"));
    let msg = transcribe(&other);
    assert!(
        msg.contains(s(&other.join("model.bin"))) && msg.contains("TransformerSpec"),
        "{msg}"
    );
}
