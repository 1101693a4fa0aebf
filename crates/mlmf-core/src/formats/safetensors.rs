//! safetensors files: an 8-byte little-endian header length, a JSON header, then the data.
//!
//! Validation follows the `safetensors` crate: the header must fit in the file, every tensor's
//! byte length must equal what its dtype and shape need, and the tensors must cover the data
//! section exactly, without gaps or overlaps.
//!
//! We keep this parser rather than the crate's `SafeTensors::read_metadata` because its errors
//! do not say which check failed where: one `InvalidOffset(name)` for a gap, an overlap or
//! reversed offsets, and no tensor, offset or sizes for out-of-bounds data, a byte length that
//! disagrees with the shape or an overflowing shape. Our errors need those, and we need our
//! `DType`. The fuzzer (`tests/fuzz.rs`) compares the two verdicts on every case and reports
//! any difference. One is known: a header that starts with whitespace, which the crate accepts
//! and we do not (detection by content wants `{` at byte 8).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{Format, Metadata, Parsed, TensorInfo, Value};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;

/// The `safetensors` crate refuses headers above 100 MB; so do we.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The header's entries in file order, read in one pass as the `safetensors` crate reads them:
/// every entry must be well formed where it stands (a field given twice is an error, so is a
/// second `__metadata__`), and `__metadata__` may be null. Reading into a map of JSON values
/// first would let a later key hide an earlier, broken one.
#[derive(Default)]
struct RawHeader {
    metadata: Option<BTreeMap<String, String>>,
    tensors: Vec<(String, RawTensor)>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = RawHeader;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                use serde::de::Error as _;
                let mut header = RawHeader::default();
                let mut seen_metadata = false;
                while let Some(name) = map.next_key::<String>()? {
                    if name == "__metadata__" {
                        if std::mem::replace(&mut seen_metadata, true) {
                            return Err(A::Error::duplicate_field("__metadata__"));
                        }
                        header.metadata = map
                            .next_value()
                            .map_err(|e| A::Error::custom(format!("__metadata__: {e}")))?;
                    } else {
                        let t = map
                            .next_value()
                            .map_err(|e| A::Error::custom(format!("tensor '{name}': {e}")))?;
                        header.tensors.push((name, t));
                    }
                }
                Ok(header)
            }
        }
        d.deserialize_map(Entries)
    }
}

/// Read the header of a safetensors file held in `bytes`.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let file_len = bytes.len() as u64;
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Truncated {
            path: path.to_path_buf(),
            what: "header length".into(),
            offset: 0,
            needed: 8,
            available: file_len,
        })?;
    let header_len = u64::from_le_bytes(head);
    let limit = (file_len - 8).min(MAX_HEADER_LEN);
    if header_len > limit {
        return Err(Error::LengthOutOfRange {
            path: path.to_path_buf(),
            what: "header length".into(),
            offset: 0,
            value: header_len,
            limit,
        });
    }
    let data_start = 8 + header_len;
    let header = &bytes[8..data_start as usize];
    let text = std::str::from_utf8(header).map_err(|e| Error::BadUtf8 {
        path: path.to_path_buf(),
        what: "header".into(),
        offset: 8 + e.valid_up_to() as u64,
    })?;
    if !text.starts_with('{') {
        return Err(bad_header(path, "the header is not a JSON object".into()));
    }
    let raw: RawHeader = serde_json::from_str(text).map_err(|e| bad_header(path, e.to_string()))?;
    let metadata = Metadata {
        entries: (raw.metadata.into_iter().flatten())
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    };
    // As in the crate, whose dtype enum refuses an unknown name wherever it stands, every
    // entry's dtype must be known; a name given twice keeps its later entry.
    let mut by_name = BTreeMap::new();
    for (name, t) in raw.tensors {
        let Some(dtype) = DType::from_safetensors(&t.dtype) else {
            return Err(Error::UnknownDType {
                path: path.to_path_buf(),
                tensor: name,
                dtype: t.dtype,
            });
        };
        by_name.insert(name, (dtype, t));
    }
    let mut tensors = Vec::with_capacity(by_name.len());
    for (name, (dtype, t)) in by_name {
        tensors.push(tensor_info(path, name, dtype, t, data_start)?);
    }
    check_coverage(path, &mut tensors, data_start, file_len)?;
    Ok(Parsed {
        format: Format::Safetensors,
        version: None,
        tensors,
        metadata,
    })
}

fn bad_header(path: &Path, reason: String) -> Error {
    Error::BadHeader {
        path: path.to_path_buf(),
        offset: 8,
        reason,
    }
}

fn tensor_info(
    path: &Path,
    name: String,
    dtype: DType,
    t: RawTensor,
    data_start: u64,
) -> Result<TensorInfo> {
    let shape = Shape::from_u64(&t.shape).ok_or_else(|| Error::ShapeOverflow {
        path: path.to_path_buf(),
        tensor: name.clone(),
        shape: t.shape.clone(),
    })?;
    let (begin, end) = t.data_offsets;
    if end < begin {
        return Err(Error::BadHeader {
            path: path.to_path_buf(),
            offset: 8,
            reason: format!("tensor '{name}': data_offsets [{begin}, {end}] run backwards"),
        });
    }
    let found = end - begin;
    let expected = dtype.byte_len(shape.elem_count());
    if expected != Some(found) {
        return Err(Error::ByteLengthMismatch {
            path: path.to_path_buf(),
            tensor: name,
            expected: expected.unwrap_or(u64::MAX),
            found,
        });
    }
    let (Some(start), Some(stop)) = (data_start.checked_add(begin), data_start.checked_add(end))
    else {
        return Err(Error::TensorOutOfBounds {
            path: path.to_path_buf(),
            tensor: name,
            start: begin,
            end,
            len: 0,
        });
    };
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        file: 0,
        range: start..stop,
        strides: None,
    })
}

/// Sort tensors by offset and check they tile the data section exactly.
fn check_coverage(
    path: &Path,
    tensors: &mut [TensorInfo],
    data_start: u64,
    file_len: u64,
) -> Result<()> {
    tensors.sort_by_key(|t| (t.range.start, t.range.end));
    let data_len = file_len - data_start;
    let mut cursor = data_start;
    for i in 0..tensors.len() {
        let t = &tensors[i];
        if t.range.end > file_len {
            return Err(Error::TensorOutOfBounds {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                start: t.range.start - data_start,
                end: t.range.end - data_start,
                len: data_len,
            });
        }
        if t.range.start < cursor {
            return Err(Error::OverlappingTensors {
                path: path.to_path_buf(),
                first: tensors[i - 1].name.clone(),
                second: t.name.clone(),
                offset: t.range.start,
            });
        }
        if t.range.start > cursor {
            return Err(Error::DataNotCovered {
                path: path.to_path_buf(),
                offset: cursor,
            });
        }
        cursor = t.range.end;
    }
    if cursor != file_len {
        return Err(Error::DataNotCovered {
            path: path.to_path_buf(),
            offset: cursor,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(7u8, data_len));
        out
    }

    fn open(bytes: &[u8]) -> Result<Parsed> {
        parse(bytes, Path::new("x.safetensors"))
    }

    #[test]
    fn reads_what_the_safetensors_crate_writes() {
        use safetensors::tensor::{Dtype, TensorView};
        let a: Vec<u8> = (0..24u8).collect();
        let b: Vec<u8> = (0..3u8).collect();
        let views = vec![
            ("a", TensorView::new(Dtype::F32, vec![2, 3], &a).unwrap()),
            ("b", TensorView::new(Dtype::F6_E2M3, vec![4], &b).unwrap()),
        ];
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(views, Some(meta)).unwrap();
        let parsed = open(&bytes).unwrap();
        assert_eq!(parsed.tensors.len(), 2);
        let a_info = parsed.tensors.iter().find(|t| t.name == "a").unwrap();
        assert_eq!(a_info.dtype, DType::F32);
        assert_eq!(a_info.shape.dims(), &[2, 3]);
        let range = a_info.range.start as usize..a_info.range.end as usize;
        assert_eq!(&bytes[range], &a[..]);
        assert_eq!(
            parsed.metadata.get("format"),
            Some(&Value::String("pt".into()))
        );
    }

    #[test]
    fn every_safetensors_dtype_is_known() {
        for name in [
            "BOOL",
            "F4",
            "F6_E2M3",
            "F6_E3M2",
            "U8",
            "I8",
            "F8_E5M2",
            "F8_E4M3",
            "F8_E8M0",
            "F8_E4M3FNUZ",
            "F8_E5M2FNUZ",
            "I16",
            "U16",
            "F16",
            "BF16",
            "I32",
            "U32",
            "F32",
            "C64",
            "F64",
            "I64",
            "U64",
        ] {
            assert!(DType::from_safetensors(name).is_some(), "{name}");
        }
    }

    #[test]
    fn truncated_file() {
        assert!(matches!(open(&[1, 2, 3]), Err(Error::Truncated { .. })));
    }

    #[test]
    fn header_length_beyond_file() {
        let mut bytes = file("{}", 0);
        bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(matches!(
            open(&bytes),
            Err(Error::LengthOutOfRange { value: 1000, .. })
        ));
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(open(&bytes), Err(Error::LengthOutOfRange { .. })));
    }

    #[test]
    fn header_not_json() {
        assert!(matches!(
            open(&file("{not json", 0)),
            Err(Error::BadHeader { .. })
        ));
        assert!(matches!(open(&file("[]", 0)), Err(Error::BadHeader { .. })));
    }

    #[test]
    fn header_bad_utf8() {
        let mut bytes = file(r#"{"__metadata__":{"k":"vv"}}"#, 0);
        bytes[8 + 22] = 0xff;
        assert!(matches!(
            open(&bytes),
            Err(Error::BadUtf8 { offset: 30, .. })
        ));
    }

    #[test]
    fn tensor_past_the_end() {
        let h = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#;
        assert!(matches!(
            open(&file(h, 4)),
            Err(Error::TensorOutOfBounds { .. })
        ));
    }

    #[test]
    fn overlapping_tensors() {
        let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
        assert!(matches!(
            open(&file(h, 6)),
            Err(Error::OverlappingTensors { .. })
        ));
    }

    #[test]
    fn gap_or_trailing_bytes() {
        let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
        assert!(matches!(
            open(&file(h, 6)),
            Err(Error::DataNotCovered { .. })
        ));
        let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            open(&file(h, 6)),
            Err(Error::DataNotCovered { .. })
        ));
    }

    #[test]
    fn shape_product_overflows() {
        let h = r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            open(&file(h, 4)),
            Err(Error::ShapeOverflow { .. })
        ));
    }

    #[test]
    fn byte_length_disagrees_with_shape() {
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            open(&file(h, 4)),
            Err(Error::ByteLengthMismatch {
                expected: 8,
                found: 4,
                ..
            })
        ));
    }

    #[test]
    fn unknown_dtype() {
        let h = r#"{"a":{"dtype":"Q9","shape":[4],"data_offsets":[0,4]}}"#;
        assert!(matches!(open(&file(h, 4)), Err(Error::UnknownDType { .. })));
    }

    #[test]
    fn offsets_near_u64_max() {
        let h = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[18446744073709551614,18446744073709551616]}}"#;
        assert!(open(&file(h, 4)).is_err());
        let h = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}}"#;
        assert!(matches!(
            open(&file(h, 4)),
            Err(Error::TensorOutOfBounds { .. })
        ));
    }
}
