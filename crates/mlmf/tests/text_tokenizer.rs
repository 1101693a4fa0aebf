//! all-MiniLM-L6-v2's tokenizer.json through the `tokenizers` crate against the ids, masks and
//! word pieces transformers produced for ../shared/fixtures/models/minilm.

#[path = "../../../tests/common/mod.rs"]
mod common;

use mlmf::multimodal::preprocess::text::TextTokenizer;
use mlmf::{Device, ModelFile};

fn i64s(file: &ModelFile, name: &str) -> Vec<i64> {
    let t = Device::Cpu.load(file, name).unwrap();
    t.to_bytes()
        .unwrap()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn minilm_ids_masks_and_pieces_match_transformers() {
    let dir = common::fixtures().join("models/minilm");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("info.json")).unwrap()).unwrap();
    let sentences: Vec<&str> = info["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let expected = ModelFile::open(dir.join("expected.safetensors")).unwrap();
    let tok =
        TextTokenizer::open(common::models_dir().join("all-MiniLM-L6-v2/tokenizer.json")).unwrap();
    let enc = tok.encode_batch(&sentences).unwrap();
    assert_eq!((enc.batch, enc.len), (4, 16));
    let as_i64 = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    assert_eq!(as_i64(&enc.ids), i64s(&expected, "input_ids"));
    assert_eq!(
        as_i64(&enc.attention_mask),
        i64s(&expected, "attention_mask")
    );
    assert_eq!(as_i64(&enc.type_ids), i64s(&expected, "token_type_ids"));
    for (i, pieces) in info["tokens"].as_array().unwrap().iter().enumerate() {
        let want: Vec<&str> = pieces
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(&enc.tokens[i][..want.len()], &want[..], "sentence {i}");
    }
}
