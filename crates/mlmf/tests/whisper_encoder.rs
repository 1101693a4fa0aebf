//! Whisper tiny.en's encoder from the CTranslate2 `model.bin` against
//! `../shared/fixtures/whisper/jfk.safetensors` (CTranslate2 4.8.5's `encoder_out`, float32):
//! max abs error 1e-3 (the README's bar), on lavapipe and on the CPU twins, both from the
//! fixture's `mel` and from `jfk.wav` through `ops::mel::log_mel` (per window, the fixture's
//! way). Bad files and inputs are typed errors.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlmf::models::whisper::{EncoderConfig, WhisperEncoder};
use mlmf::multimodal::audio::decode_audio;
use mlmf::ops::mel;
use mlmf::{Device, Error, ModelFile, Tensor};
use safetensors::{Dtype, SafeTensors};

/// The README's bar on `encoder_out`.
const BAR: f32 = 1e-3;

fn whisper_fixtures() -> PathBuf {
    common::fixtures().join("whisper")
}

fn fixture(key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(whisper_fixtures().join("jfk.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(key).unwrap();
    assert_eq!(view.dtype(), Dtype::F32);
    let v = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (view.shape().to_vec(), v)
}

fn max_abs(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn model_bin() -> PathBuf {
    common::model("whisper-tiny.en-ct2/model.bin")
}

fn check_jfk(file: &Path, device: &Device) {
    let file = ModelFile::open(file).unwrap();
    let encoder = WhisperEncoder::load(&file, device).unwrap();
    assert_eq!(
        *encoder.config(),
        EncoderConfig {
            mels: 80,
            d_model: 384,
            heads: 6,
            layers: 4,
            ffn: 1536,
            positions: 1500,
        }
    );
    let (shape, want) = fixture("encoder_out");
    assert_eq!(shape, [1500, 384]);
    let (mel_shape, mel_values) = fixture("mel");
    assert_eq!(mel_shape, [80, 3000]);

    // The fixture's own encoder input.
    let mel_t = Tensor::from_f32("mel", vec![1, 80, 3000], &mel_values)
        .unwrap()
        .to_device(device)
        .unwrap();
    let out = encoder.forward(&mel_t).unwrap();
    assert_eq!(out.shape().dims(), &[1, 1500, 384]);
    let err = max_abs(&out.to_f32_vec().unwrap(), &want);
    println!(
        "{}: encoder_out from the fixture's mel: max abs error {err:e}",
        device.describe()
    );
    assert!(err <= BAR, "max abs error {err} > {BAR}");

    // From the audio: jfk.wav (16 kHz) through the log-mel of this device.
    let audio = decode_audio(&common::fixtures().join("preprocess/audio/jfk.wav")).unwrap();
    assert_eq!(audio.sample_rate, mel::SAMPLE_RATE);
    let mel_t = mel::log_mel(&audio.mono(), 80, device).unwrap();
    assert_eq!(mel_t.shape().dims(), &[1, 80, 3000]);
    let out = encoder.forward(&mel_t).unwrap();
    let err = max_abs(&out.to_f32_vec().unwrap(), &want);
    println!(
        "{}: encoder_out from jfk.wav: max abs error {err:e}",
        device.describe()
    );
    assert!(err <= BAR, "max abs error {err} > {BAR}");
}

#[test]
fn encoder_matches_ctranslate2_on_the_gpu() {
    check_jfk(&model_bin(), &Device::gpu().unwrap());
}

#[test]
fn encoder_matches_ctranslate2_on_the_cpu_twins() {
    check_jfk(&model_bin(), &Device::Cpu);
}

// ---- bad files and inputs ---------------------------------------------------------------------

type Vars = HashMap<String, (Vec<usize>, Dtype, Vec<u8>)>;

/// `vars` as a CTranslate2 `model.bin` of binary version 6 with spec `spec` (the layout of the
/// fixture README: variables sorted by name, no aliases), written here byte by byte.
fn ct2_file(dir: &Path, spec: &str, vars: &Vars) -> PathBuf {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u16 + 1).to_le_bytes());
        out.extend(s.as_bytes());
        out.push(0);
    }
    let mut out = Vec::new();
    out.extend(6u32.to_le_bytes());
    string(&mut out, spec);
    out.extend(3u32.to_le_bytes());
    out.extend((vars.len() as u32).to_le_bytes());
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let (dims, dtype, bytes) = &vars[name];
        string(&mut out, name);
        out.push(dims.len() as u8);
        for d in dims {
            out.extend((*d as u32).to_le_bytes());
        }
        out.push(match dtype {
            Dtype::F32 => 0,
            Dtype::I16 => 2,
            Dtype::I32 => 3,
            other => panic!("no CTranslate2 id for {other:?} here"),
        });
        out.extend((bytes.len() as u32).to_le_bytes());
        out.extend(bytes);
    }
    out.extend(0u32.to_le_bytes());
    let path = dir.join("model.bin");
    std::fs::write(&path, out).unwrap();
    path
}

/// The variables of a tiny encoder (mels 4, width 8, 2 heads, 1 layer, FFN 16, 5 positions)
/// with the CTranslate2 names, with `edit` applied.
fn tiny_vars(edit: impl FnOnce(&mut Vars)) -> Vars {
    let (mels, d, ffn, positions) = (4usize, 8usize, 16usize, 5usize);
    let mut vars: Vars = HashMap::new();
    let mut seed = 1;
    let mut f32s = |name: &str, dims: Vec<usize>| {
        let n = dims.iter().product();
        let bytes = common::random_f32(n, seed)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        seed += 1;
        vars.insert(name.to_string(), (dims, Dtype::F32, bytes));
    };
    f32s("encoder/conv1/weight", vec![d, mels, 3]);
    f32s("encoder/conv1/bias", vec![d]);
    f32s("encoder/conv2/weight", vec![d, d, 3]);
    f32s("encoder/conv2/bias", vec![d]);
    f32s("encoder/position_encodings/encodings", vec![positions, d]);
    let p = "encoder/layer_0";
    for n in ["self_attention", "ffn"] {
        f32s(&format!("{p}/{n}/layer_norm/gamma"), vec![d]);
        f32s(&format!("{p}/{n}/layer_norm/beta"), vec![d]);
    }
    f32s(
        &format!("{p}/self_attention/linear_0/weight"),
        vec![3 * d, d],
    );
    f32s(&format!("{p}/self_attention/linear_0/bias"), vec![3 * d]);
    f32s(&format!("{p}/self_attention/linear_1/weight"), vec![d, d]);
    f32s(&format!("{p}/self_attention/linear_1/bias"), vec![d]);
    f32s(&format!("{p}/ffn/linear_0/weight"), vec![ffn, d]);
    f32s(&format!("{p}/ffn/linear_0/bias"), vec![ffn]);
    f32s(&format!("{p}/ffn/linear_1/weight"), vec![d, ffn]);
    f32s(&format!("{p}/ffn/linear_1/bias"), vec![d]);
    f32s("encoder/layer_norm/gamma", vec![d]);
    f32s("encoder/layer_norm/beta", vec![d]);
    vars.insert(
        "encoder/num_heads".to_string(),
        (vec![], Dtype::I16, 2i16.to_le_bytes().to_vec()),
    );
    edit(&mut vars);
    vars
}

/// [`tiny_vars`] as a safetensors file.
fn tiny_file(dir: &Path, edit: impl FnOnce(&mut Vars)) -> PathBuf {
    let vars = tiny_vars(edit);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = vars
        .iter()
        .map(|(k, (dims, dtype, bytes))| {
            let view = safetensors::tensor::TensorView::new(*dtype, dims.clone(), bytes).unwrap();
            (k.clone(), view)
        })
        .collect();
    let path = dir.join("tiny.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}

#[test]
fn bad_files_and_inputs_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = Device::Cpu;
    let load = |path: &Path| WhisperEncoder::load(&ModelFile::open(path).unwrap(), &cpu);

    // The tiny file itself is good: its sizes are read from it, and it encodes [1, 4, 10].
    let encoder = load(&tiny_file(dir.path(), |_| {})).unwrap();
    assert_eq!(
        *encoder.config(),
        EncoderConfig {
            mels: 4,
            d_model: 8,
            heads: 2,
            layers: 1,
            ffn: 16,
            positions: 5,
        }
    );
    let mel = |dims: Vec<usize>| {
        let n = dims.iter().product();
        Tensor::from_f32("mel", dims, &common::random_f32(n, 99)).unwrap()
    };
    let out = encoder.forward(&mel(vec![2, 4, 10])).unwrap();
    assert_eq!(out.shape().dims(), &[2, 5, 8]);
    assert!(out.to_f32_vec().unwrap().iter().all(|v| v.is_finite()));
    // Inputs of the wrong length, band count or rank.
    for dims in [vec![1, 4, 12], vec![1, 5, 10]] {
        let err = encoder.forward(&mel(dims)).err().unwrap();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    }
    let err = encoder.forward(&mel(vec![4, 10])).err().unwrap();
    assert!(matches!(err, Error::OpRank { .. }), "{err}");

    // The same variables in a CTranslate2 file load when its spec is Whisper's, and are a
    // BadModel naming the spec otherwise.
    let encoder = load(&ct2_file(dir.path(), "WhisperSpec", &tiny_vars(|_| {}))).unwrap();
    assert_eq!(encoder.config().d_model, 8);
    let err = load(&ct2_file(dir.path(), "TransformerSpec", &tiny_vars(|_| {})))
        .err()
        .unwrap();
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    assert!(err.to_string().contains("TransformerSpec"), "{err}");

    // A missing variable.
    let path = tiny_file(dir.path(), |v| {
        v.remove("encoder/layer_0/ffn/linear_1/bias");
    });
    let err = load(&path).err().unwrap();
    assert!(
        matches!(&err, Error::TensorNotFound { tensor, .. } if tensor == "encoder/layer_0/ffn/linear_1/bias"),
        "{err}"
    );
    // A variable of the wrong shape, a wrong dtype, a head count that does not divide the width.
    let name = "encoder/layer_0/self_attention/linear_1/weight";
    let path = tiny_file(dir.path(), |v| {
        v.insert(
            name.to_string(),
            (vec![8, 7], Dtype::F32, vec![0; 8 * 7 * 4]),
        );
    });
    let err = load(&path).err().unwrap();
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    assert!(err.to_string().contains(name), "{err}");
    let path = tiny_file(dir.path(), |v| {
        v.insert(
            name.to_string(),
            (vec![8, 8], Dtype::I32, vec![0; 8 * 8 * 4]),
        );
    });
    let err = load(&path).err().unwrap();
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    assert!(err.to_string().contains(name), "{err}");
    let path = tiny_file(dir.path(), |v| {
        v.insert(
            "encoder/num_heads".to_string(),
            (vec![], Dtype::I16, 3i16.to_le_bytes().to_vec()),
        );
    });
    let err = load(&path).err().unwrap();
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    assert!(err.to_string().contains("num_heads"), "{err}");
}
