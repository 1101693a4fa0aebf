//! Real headers with random bytes changed: every parse either succeeds or returns an error,
//! never panics or allocates by an unchecked number. The parsers are pure over `&[u8]`, so each
//! case mutates a copy of the file's first bytes in memory.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use proptest::prelude::*;

/// The first `len` bytes of a real file (the header and some data).
fn head(name: &str, len: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(common::model(name)).unwrap();
    bytes.truncate(len);
    bytes
}

fn check(original: &[u8], edits: &[(usize, u8)], cut: Option<usize>) {
    let mut bytes = original.to_vec();
    for &(at, value) in edits {
        let at = at % bytes.len();
        bytes[at] = value;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    // Ok or Err are both fine; a panic fails the test.
    let _ = mlmf_core::formats::parse(&bytes, Path::new("mutated"));
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((0usize..1 << 20, any::<u8>()), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_header(edits in edits(), cut in prop::option::of(0usize..1 << 20)) {
        // MiniLM's header is about 12 KiB; mutate inside it.
        static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let bytes = BYTES.get_or_init(|| head(common::MINILM, 16 << 10));
        let edits: Vec<_> = edits.into_iter().map(|(a, v)| (a % (14 << 10), v)).collect();
        check(bytes, &edits, cut);
    }

    #[test]
    fn gguf_header(edits in edits(), cut in prop::option::of(0usize..1 << 22)) {
        static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let bytes = BYTES.get_or_init(|| head(common::SMOLLM2, 4 << 20));
        // Bias edits towards the fixed header and the first KV pairs, where counts live.
        let edits: Vec<_> = edits.into_iter().map(|(a, v)| (if a % 2 == 0 { a % 512 } else { a }, v)).collect();
        check(bytes, &edits, cut);
    }

    #[test]
    fn pytorch_legacy_header(edits in edits(), cut in prop::option::of(0usize..1 << 20)) {
        static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let bytes = BYTES.get_or_init(|| std::fs::read(common::model(common::MOBILENET)).unwrap());
        let edits: Vec<_> = edits.into_iter().map(|(a, v)| (a % (64 << 10), v)).collect();
        check(bytes, &edits, cut);
    }
}

#[test]
fn empty_and_tiny_files_are_errors() {
    for bytes in [
        &b""[..],
        b"G",
        b"GGUF",
        b"PK\x03\x04",
        b"\x80\x02",
        &[0u8; 9],
    ] {
        assert!(
            mlmf_core::formats::parse(bytes, Path::new("tiny")).is_err(),
            "{bytes:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        mlmf_core::ModelFile::open(&empty),
        Err(mlmf_core::Error::UnknownFormat { .. })
    ));
}

/// A file in `tests/data` (written by `make_pytorch_fixtures.py`).
fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Nine levels of dicts, each referring twice to the next (pickle's memo): 9 KB that flattened
/// to 512 tensor names of 36 KB each (18 MB) before the flattened names were capped.
#[test]
fn shared_dicts_do_not_multiply_names() {
    let err = mlmf_core::ModelFile::open(data("pytorch_bad_shared_names.pt")).unwrap_err();
    assert!(
        matches!(&err, mlmf_core::Error::BadPickle { reason, .. } if reason.contains("shared references")),
        "{err}"
    );
}

/// `OrderedDict(pairs)` called 400 times on one memoized list of 4000 pairs: 11 KB that built
/// 26 MB of copied pairs (quadratic in the file) before the copies were capped.
#[test]
fn ordered_dict_calls_do_not_copy_without_bound() {
    let err = mlmf_core::ModelFile::open(data("pytorch_bad_ordered_dict_copies.pt")).unwrap_err();
    assert!(
        matches!(&err, mlmf_core::Error::BadPickle { reason, .. } if reason.contains("OrderedDict")),
        "{err}"
    );
}

/// One tensor with a 3 KB storage key under 500 names: 18 KB whose 500 leaves each carried a
/// copy of the key (1.5 MB) before the key was counted with the flattened names.
#[test]
fn shared_tensors_do_not_multiply_storage_keys() {
    let err = mlmf_core::ModelFile::open(data("pytorch_bad_shared_storage_key.pt")).unwrap_err();
    assert!(
        matches!(&err, mlmf_core::Error::BadPickle { reason, .. } if reason.contains("shared references")),
        "{err}"
    );
}

/// About 9 KB whose pickle makes 8000 throwaway objects (raising the old cap of four visits per
/// object) and then a list of 300 references to a list of 100 references to one tensor: 30,000
/// tensors from a few hundred bytes of memo reuse, in both layouts. The memory budget (128 bytes
/// per pickle byte plus 1 MiB) stops the flattening and names itself, the file and the offset.
#[test]
fn memo_reuse_is_bounded_by_the_pickle_budget() {
    for name in [
        "pytorch_bad_amplified_zip.pt",
        "pytorch_bad_amplified_legacy.pt",
    ] {
        let path = data(name);
        let err = mlmf_core::ModelFile::open(&path).unwrap_err();
        let mlmf_core::Error::PickleBudget {
            path: at,
            what,
            limit,
            pickle_bytes,
            per_byte,
            floor,
            offset,
        } = &err
        else {
            panic!("{name}: {err}");
        };
        assert_eq!(at, &path);
        assert_eq!(*what, "the tensors", "{err}");
        assert_eq!((*per_byte, *floor), (128, 1 << 20));
        assert_eq!(*limit, pickle_bytes * per_byte + floor);
        // The pickle is most of the file; the budget is far below the 30,000 tensors' leaves.
        let file_len = std::fs::metadata(&path).unwrap().len();
        assert!(*pickle_bytes > 8000 && *pickle_bytes < file_len, "{err}");
        assert!(*offset > 0 && *offset < file_len, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(name) && text.contains(&limit.to_string()),
            "{text}"
        );
    }
}

/// Headers on which the fuzzer (seed 4) found our verdict and the `safetensors` crate's apart,
/// because we read the header into a map of JSON values first, where a later key hides an
/// earlier one: a tensor field given twice, a tensor name whose first entry is incomplete or
/// has an unknown dtype, two `__metadata__`, and a null `__metadata__` (which the crate
/// allows). Now both agree on each. `T` stands for a valid entry of 4 bytes at offset 0.
#[test]
fn safetensors_repeated_keys_read_as_the_crate_reads_them() {
    let cases = [
        (
            r#"{"a":{"dtype":"U8","shape":[4],"dtype":"U8","data_offsets":[0,4]}}"#,
            false,
        ),
        (r#"{"a":{"shape":[4],"data_offsets":[0,4]},"a":T}"#, false),
        (
            r#"{"a":{"dtype":"F31","shape":[4],"data_offsets":[0,4]},"a":T}"#,
            false,
        ),
        (
            r#"{"__metadata__":{},"__metadata__":{"k":"v"},"a":T}"#,
            false,
        ),
        (r#"{"__metadata__":null,"a":T}"#, true),
        (r#"{"a":T,"a":T}"#, true),
    ];
    for (header, accepted) in cases {
        let header = header.replace('T', r#"{"dtype":"U8","shape":[4],"data_offsets":[0,4]}"#);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[7; 4]);
        let ours = mlmf_core::formats::parse(&bytes, Path::new("h.safetensors"));
        let theirs = safetensors::SafeTensors::read_metadata(&bytes);
        assert_eq!(theirs.is_ok(), accepted, "{header}");
        match ours {
            Ok(p) => {
                assert!(accepted, "{header}");
                assert_eq!(p.tensors.len(), 1);
            }
            Err(e) => assert!(
                !accepted
                    && matches!(
                        e,
                        mlmf_core::Error::BadHeader { .. } | mlmf_core::Error::UnknownDType { .. }
                    ),
                "{header}: {e}"
            ),
        }
    }
}
