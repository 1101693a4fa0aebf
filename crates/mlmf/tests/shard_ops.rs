//! Split linears (`mlmf::shard::ops`) on real weights, over 1, 2 and 4 logical GPU devices on one
//! adapter and over CPU devices (the twins), with uneven ranges:
//!
//! - a row split equals the single-device product on the same kind of device bit for bit;
//! - a column split is within `2 * in * f32::EPSILON * (sum_k |W[r][k] x[k]| + |b[r]|)` of the
//!   exact (f64) product, as the single-device product is;
//! - each part reads only its bytes (the parts' bytes add up to the tensor's);
//! - a column range through a quantized block is `Error::BadSlice` naming the tensor, and ranges
//!   that do not cover the dimension in order are `Error::BadPlan`.
//!
//! Weights: all-MiniLM-L6-v2's F32 dense layers (and an F16 copy of them written here), read
//! for the exact product with the `safetensors` crate; gemma-3-270m's Q4_K, Q6_K, Q5_0 and Q8_0
//! matrices, decoded for the exact product by gguf-py 0.19.0, and two of them copied into a GGUF
//! written here with an F32 and an F16 bias.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use mlmf::ops::{convert, elementwise, matmul, qmatmul};
use mlmf::shard::ops::{gather_rows, ranges_by_ratio, sum_partials, Cut, LinearPart, SplitLinear};
use mlmf::{DType, Device, Error, GgufWriter, Metadata, ModelFile, Tensor, TensorSource};

const MINILM_UP: &str = "encoder.layer.0.intermediate.dense"; // [1536, 384]
const MINILM_DOWN: &str = "encoder.layer.0.output.dense"; // [384, 1536]
const GEMMA_MATRICES: [(&str, DType); 4] = [
    ("blk.0.attn_output.weight", DType::Q4_K), // [640, 1024]
    ("blk.0.ffn_down.weight", DType::Q6_K),    // [640, 2048]
    ("blk.0.attn_q.weight", DType::Q5_0),      // [1024, 640]
    ("blk.0.attn_v.weight", DType::Q8_0),      // [256, 640]
];
/// Batches: one vector (mat-vec) and a batch of rows.
const BATCHES: [usize; 2] = [1, 8];

/// Four logical GPU devices on the one adapter, opened once for every test here.
fn gpus() -> &'static [Device] {
    static GPUS: OnceLock<Vec<Device>> = OnceLock::new();
    GPUS.get_or_init(|| (0..4).map(|_| Device::gpu().unwrap()).collect())
}

/// The device sets each split runs on, with the ratios of its parts: 1, 2 (3:1) and 4 (uneven)
/// GPU devices, and 2 and 4 CPU devices.
fn device_sets() -> Vec<(String, Vec<Device>, Vec<u32>)> {
    let g = gpus();
    vec![
        ("1 gpu".into(), g[..1].to_vec(), vec![1]),
        ("2 gpus 3:1".into(), g[..2].to_vec(), vec![3, 1]),
        ("4 gpus 3:1:2:2".into(), g.to_vec(), vec![3, 1, 2, 2]),
        ("2 cpus 3:1".into(), vec![Device::Cpu; 2], vec![3, 1]),
        (
            "4 cpus 1:2:1:4".into(),
            vec![Device::Cpu; 4],
            vec![1, 2, 1, 4],
        ),
    ]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn minilm() -> ModelFile {
    ModelFile::open(common::model(common::MINILM)).unwrap()
}

fn gemma() -> ModelFile {
    ModelFile::open(common::model(common::GEMMA3)).unwrap()
}

/// `(weight, bias)` names of a MiniLM dense layer.
fn names(layer: &str) -> (String, String) {
    (format!("{layer}.weight"), format!("{layer}.bias"))
}

/// The single-device product with the existing ops, the input a vector `[in]` when `n` is 1:
/// `linear` for float weights, `qmatmul` then `add` for block types.
fn one_device(
    device: &Device,
    file: &ModelFile,
    weight: &str,
    bias: Option<&str>,
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    let w = device.load(file, weight).unwrap();
    let inp = w.shape().dims()[1];
    let dims = if n == 1 { vec![inp] } else { vec![n, inp] };
    let x = Tensor::from_f32("x", dims, x)
        .unwrap()
        .to_device(device)
        .unwrap();
    let b = bias.map(|b| device.load(file, b).unwrap());
    let y = if matches!(w.dtype(), DType::F32 | DType::F16) {
        matmul::linear(&x, &w, b.as_ref()).unwrap()
    } else {
        let y = qmatmul::matmul(&w, &x).unwrap();
        match &b {
            // `add` takes F32: a 16-bit bias is widened first (exactly).
            Some(b) if b.dtype() != DType::F32 => {
                elementwise::add(&y, &convert::to_f32(b).unwrap()).unwrap()
            }
            Some(b) => elementwise::add(&y, b).unwrap(),
            None => y,
        }
    };
    y.to_f32_vec().unwrap()
}

/// The parts computed one by one (as ranks would) and combined with the free collective
/// functions: must be `forward`'s result bit for bit.
fn by_parts(split: &SplitLinear, x: &[f32], n: usize) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = split
        .parts()
        .iter()
        .map(|p| p.forward(x, n).unwrap())
        .collect();
    match split.parts()[0].split() {
        Cut::Rows => gather_rows(&parts, n).unwrap(),
        Cut::Cols => {
            let mut y = sum_partials(&parts).unwrap();
            split.parts()[0].add_bias(&mut y).unwrap();
            y
        }
    }
}

/// The parts' weight bytes add up to the whole tensor's: each read only its own.
fn assert_parts_cover_bytes(file: &ModelFile, weight: &str, split: &SplitLinear) {
    let whole = file.tensor(weight).unwrap().byte_len();
    let parts: u64 = split.parts().iter().map(|p| p.weight().byte_len()).sum();
    assert_eq!(parts, whole, "{weight}: bytes of the parts");
}

/// Row splits of `weight` over every device set equal the single-device product bit for bit.
fn check_rows(file: &ModelFile, weight: &str, bias: Option<&str>, seed: u64) {
    let info = file.tensor(weight).unwrap();
    let &[out, inp] = info.shape.dims() else {
        panic!("{weight}: not a matrix");
    };
    for n in BATCHES {
        let x = common::random_f32(n * inp, seed + n as u64);
        let want_gpu = one_device(&gpus()[0], file, weight, bias, &x, n);
        let want_cpu = one_device(&Device::Cpu, file, weight, bias, &x, n);
        for (what, devices, ratios) in device_sets() {
            let ranges = ranges_by_ratio(out, &ratios, 1).unwrap();
            let split = SplitLinear::rows(&devices, file, weight, bias, &ranges).unwrap();
            assert_parts_cover_bytes(file, weight, &split);
            let got = split.forward(&x, n).unwrap();
            let want = if devices[0].is_gpu() {
                &want_gpu
            } else {
                &want_cpu
            };
            assert_eq!(got.len(), n * out);
            assert_eq!(
                bits(&got),
                bits(want),
                "{weight} rows {ranges:?} on {what}, n = {n}"
            );
            assert_eq!(
                bits(&by_parts(&split, &x, n)),
                bits(&got),
                "{weight} by parts"
            );
        }
    }
}

/// Column splits of `weight` over every device set, with ranges on multiples of `align`, are
/// within the product bound of the exact product of `decoded` (W as f32 `[out, in]`) plus the
/// bias, as the single-device products are.
fn check_cols(
    file: &ModelFile,
    weight: &str,
    bias: Option<&str>,
    decoded: &[f32],
    bias_values: Option<&[f32]>,
    align: usize,
    seed: u64,
) {
    let info = file.tensor(weight).unwrap();
    let &[out, inp] = info.shape.dims() else {
        panic!("{weight}: not a matrix");
    };
    assert_eq!(decoded.len(), out * inp);
    for n in BATCHES {
        let x = common::random_f32(n * inp, seed + n as u64);
        let (mut exact, mut abs) = common::exact_product(decoded, &x, inp);
        if let Some(b) = bias_values {
            for (i, (e, a)) in exact.iter_mut().zip(abs.iter_mut()).enumerate() {
                *e += f64::from(b[i % out]);
                *a += f64::from(b[i % out]).abs();
            }
        }
        for device in [&gpus()[0], &Device::Cpu] {
            let what = format!("{weight} on one {}, n = {n}", device.describe());
            let y = one_device(device, file, weight, bias, &x, n);
            common::assert_within_product_bound(&what, &y, &exact, &abs, inp);
        }
        for (what, devices, ratios) in device_sets() {
            // Q4_K's 1024 columns are 4 blocks: four devices get one each, whatever the ratios.
            let ranges = ranges_by_ratio(inp, &ratios, align)
                .or_else(|_| ranges_by_ratio(inp, &vec![1; ratios.len()], align))
                .unwrap();
            let split = SplitLinear::cols(&devices, file, weight, bias, &ranges).unwrap();
            assert_parts_cover_bytes(file, weight, &split);
            let got = split.forward(&x, n).unwrap();
            let what = format!("{weight} columns {ranges:?} on {what}, n = {n}");
            let worst = common::assert_within_product_bound(&what, &got, &exact, &abs, inp);
            println!("{what}: largest error {worst:.2e} of the bound");
            assert_eq!(
                bits(&by_parts(&split, &x, n)),
                bits(&got),
                "{what} by parts"
            );
        }
    }
}

/// A tensor of a safetensors file as f32, read with the `safetensors` crate (F32 or F16).
fn safetensors_f32(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    match t.dtype() {
        safetensors::Dtype::F32 => common::f32s(t.data()),
        safetensors::Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => panic!("{name}: {other:?}"),
    }
}

/// GGUF tensors decoded to f32 by gguf-py (`gguf.quants.dequantize`), numpy order, in the order
/// asked. One run for all: gguf-py takes seconds to read gemma's vocabulary.
fn gguf_py_f32(path: &Path, names: &[&str]) -> Vec<Vec<f32>> {
    let script = "import sys, gguf\n\
        from gguf.quants import dequantize\n\
        r = gguf.GGUFReader(sys.argv[1])\n\
        ts = {t.name: t for t in r.tensors}\n\
        for name in sys.argv[2:]:\n\
        \x20   t = ts[name]\n\
        \x20   sys.stdout.buffer.write(dequantize(t.data, t.tensor_type).astype('<f4').tobytes())\n";
    let out = Command::new(common::python())
        .args(["-c", script])
        .arg(path)
        .args(names)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gguf-py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = ModelFile::open(path).unwrap();
    let mut values = common::f32s(&out.stdout).into_iter();
    names
        .iter()
        .map(|n| {
            let count = file.tensor(n).unwrap().shape.elem_count() as usize;
            let v: Vec<f32> = values.by_ref().take(count).collect();
            assert_eq!(v.len(), count, "{n}: gguf-py's values");
            v
        })
        .collect()
}

/// MiniLM's two dense layers of `layer 0` converted to F16 (weights and biases), written with
/// the `safetensors` crate into `dir`.
fn write_f16_minilm(dir: &Path) -> std::path::PathBuf {
    let src = common::model(common::MINILM);
    let bytes = std::fs::read(&src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = Vec::new();
    for layer in [MINILM_UP, MINILM_DOWN] {
        let (w, b) = names(layer);
        for name in [w, b] {
            let t = st.tensor(&name).unwrap();
            let f16: Vec<u8> = common::f32s(t.data())
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect();
            tensors.push((name, t.shape().to_vec(), f16));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, dims, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, dims.clone(), bytes)
                    .unwrap();
            (n.clone(), view)
        })
        .collect();
    let path = dir.join("minilm-f16.safetensors");
    safetensors::tensor::serialize_to_file(views, None, &path).unwrap();
    path
}

#[test]
fn row_split_f32_minilm_equals_one_device_bit_for_bit() {
    let file = minilm();
    let (w, b) = names(MINILM_UP);
    check_rows(&file, &w, Some(&b), 1);
    let (w, b) = names(MINILM_DOWN);
    check_rows(&file, &w, Some(&b), 2);
}

#[test]
fn col_split_f32_minilm_is_within_the_product_bound() {
    let file = minilm();
    let path = common::model(common::MINILM);
    for (layer, seed) in [(MINILM_DOWN, 3), (MINILM_UP, 4)] {
        let (w, b) = names(layer);
        let decoded = safetensors_f32(&path, &w);
        let bias = safetensors_f32(&path, &b);
        check_cols(&file, &w, Some(&b), &decoded, Some(&bias), 1, seed);
    }
}

#[test]
fn f16_weights_split_by_rows_and_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_f16_minilm(dir.path());
    let file = ModelFile::open(&path).unwrap();
    for (layer, seed) in [(MINILM_UP, 5), (MINILM_DOWN, 6)] {
        let (w, b) = names(layer);
        assert_eq!(file.tensor(&w).unwrap().dtype, DType::F16);
        check_rows(&file, &w, Some(&b), seed);
        let decoded = safetensors_f32(&path, &w);
        let bias = safetensors_f32(&path, &b);
        check_cols(&file, &w, Some(&b), &decoded, Some(&bias), 1, seed);
    }
}

#[test]
fn row_split_quantized_equals_one_device_bit_for_bit() {
    let file = gemma();
    for (i, (name, dtype)) in GEMMA_MATRICES.into_iter().enumerate() {
        assert_eq!(file.tensor(name).unwrap().dtype, dtype, "{name}");
        check_rows(&file, name, None, 10 + i as u64);
    }
}

#[test]
fn col_split_quantized_is_within_the_product_bound() {
    let file = gemma();
    let path = common::model(common::GEMMA3);
    let decoded = gguf_py_f32(&path, &GEMMA_MATRICES.map(|(name, _)| name));
    for (i, ((name, dtype), decoded)) in GEMMA_MATRICES.into_iter().zip(decoded).enumerate() {
        assert_eq!(file.tensor(name).unwrap().dtype, dtype, "{name}");
        let align = dtype.block_elems() as usize;
        check_cols(&file, name, None, &decoded, None, align, 20 + i as u64);
    }
}

#[test]
fn quantized_weights_with_f32_and_f16_biases() {
    // gemma's Q8_0 and Q5_0 matrices copied into a GGUF of their own with a bias each (GGUF
    // models seldom have biases on these): F32 for one, F16 (widened for `add`) for the other.
    let gemma = gemma();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("biased.gguf");
    let v = gemma.tensor("blk.0.attn_v.weight").unwrap(); // Q8_0 [256, 640]
    let q = gemma.tensor("blk.0.attn_q.weight").unwrap(); // Q5_0 [1024, 640]
    let v_bias = common::random_f32(256, 30);
    let q_bias: Vec<half::f16> = common::random_f32(1024, 31)
        .into_iter()
        .map(half::f16::from_f32)
        .collect();
    let v_bytes: Vec<u8> = v_bias.iter().flat_map(|b| b.to_le_bytes()).collect();
    let q_bytes: Vec<u8> = q_bias.iter().flat_map(|b| b.to_le_bytes()).collect();
    let mut writer = GgufWriter::new(Metadata::default());
    writer
        .add_tensor("v", v.dtype, v.shape.dims(), TensorSource::File(&gemma, v))
        .add_tensor("v.bias", DType::F32, &[256], &v_bytes[..])
        .add_tensor("q", q.dtype, q.shape.dims(), TensorSource::File(&gemma, q))
        .add_tensor("q.bias", DType::F16, &[1024], &q_bytes[..]);
    writer.write(&path).unwrap();
    let file = ModelFile::open(&path).unwrap();
    let decoded = gguf_py_f32(&path, &["v", "q"]);
    let q_bias: Vec<f32> = q_bias.iter().map(|b| b.to_f32()).collect();
    for ((name, bias), (decoded, seed)) in [("v", &v_bias), ("q", &q_bias)]
        .into_iter()
        .zip(decoded.iter().zip([40, 41]))
    {
        let bias_name = format!("{name}.bias");
        check_rows(&file, name, Some(&bias_name), seed);
        let align = file.tensor(name).unwrap().dtype.block_elems() as usize;
        check_cols(
            &file,
            name,
            Some(&bias_name),
            decoded,
            Some(bias),
            align,
            seed,
        );
    }
}

#[test]
fn col_split_cutting_a_block_is_bad_slice_naming_the_tensor() {
    let file = gemma();
    let name = "blk.0.attn_output.weight"; // Q4_K [640, 1024]: blocks of 256 columns
    let err = SplitLinear::cols(&gpus()[..2], &file, name, None, &[0..300, 300..1024]).unwrap_err();
    assert!(
        matches!(&err, Error::BadSlice { tensor, .. } if tensor == name),
        "{err}"
    );
    let err = LinearPart::load(
        &Device::Cpu,
        &file,
        name,
        None,
        Cut::Cols,
        &[0..768, 768..1024],
        0,
    )
    .map(|_| ())
    .and_then(|_| {
        LinearPart::load(
            &Device::Cpu,
            &file,
            name,
            None,
            Cut::Cols,
            &[0..100, 100..1024],
            1,
        )
        .map(|_| ())
    })
    .unwrap_err();
    assert!(
        matches!(&err, Error::BadSlice { tensor, .. } if tensor == name),
        "{err}"
    );
    // Rows of a quantized matrix are whole blocks: any row range loads.
    let split = SplitLinear::rows(
        &[Device::Cpu, Device::Cpu],
        &file,
        name,
        None,
        &[0..1, 1..640],
    );
    assert!(split.is_ok());
}

#[test]
fn ranges_that_do_not_cover_in_order_are_bad_plans() {
    let file = minilm();
    let (w, b) = names(MINILM_UP); // [1536, 384]
    let cpus = [Device::Cpu, Device::Cpu];
    for ranges in [
        vec![0..1000, 1001..1536],
        vec![0..1000, 999..1536],
        vec![0..1000, 1000..1535],
        vec![0..1536, 1536..1536],
    ] {
        let err = SplitLinear::rows(&cpus, &file, &w, Some(&b), &ranges).unwrap_err();
        assert!(
            matches!(&err, Error::BadPlan { reason } if reason.contains(&w)),
            "{ranges:?}: {err}"
        );
    }
    // Two devices, one range.
    let whole = ranges_by_ratio(384, &[1], 1).unwrap();
    let err = SplitLinear::cols(&cpus, &file, &w, Some(&b), &whole).unwrap_err();
    assert!(matches!(err, Error::BadPlan { .. }), "{err}");
    let err = SplitLinear::cols(&cpus, &file, &w, Some(&b), &[0..200, 200..385]).unwrap_err();
    assert!(matches!(err, Error::BadPlan { .. }), "{err}");
    // A bias that is not [out].
    let (_, other_bias) = names(MINILM_DOWN);
    let err = SplitLinear::rows(&cpus, &file, &w, Some(&other_bias), &[0..2, 2..1536]).unwrap_err();
    assert!(matches!(err, Error::BadPlan { .. }), "{err}");
    // An input of the wrong length.
    let split = SplitLinear::rows(&cpus, &file, &w, Some(&b), &[0..2, 2..1536]).unwrap();
    let err = split.forward(&[0.0; 383], 1).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

#[test]
fn a_column_part_takes_its_own_columns_of_x() {
    // Megatron's pairing: the row split's output stays split and feeds the column split.
    let file = minilm();
    let (up_w, up_b) = names(MINILM_UP);
    let (down_w, down_b) = names(MINILM_DOWN);
    let devices = &gpus()[..2];
    let ranges = ranges_by_ratio(1536, &[3, 1], 1).unwrap();
    let up = SplitLinear::rows(devices, &file, &up_w, Some(&up_b), &ranges).unwrap();
    let down = SplitLinear::cols(devices, &file, &down_w, Some(&down_b), &ranges).unwrap();
    let n = 3;
    let x = common::random_f32(n * 384, 7);
    let hidden: Vec<Vec<f32>> = up
        .parts()
        .iter()
        .map(|p| p.forward(&x, n).unwrap())
        .collect();
    let partials: Vec<Vec<f32>> = down
        .parts()
        .iter()
        .zip(&hidden)
        .map(|(p, h)| p.forward_local(h, n).unwrap())
        .collect();
    let mut y = sum_partials(&partials).unwrap();
    down.parts()[0].add_bias(&mut y).unwrap();
    let whole_hidden = gather_rows(&hidden, n).unwrap();
    assert_eq!(bits(&y), bits(&down.forward(&whole_hidden, n).unwrap()));
}
