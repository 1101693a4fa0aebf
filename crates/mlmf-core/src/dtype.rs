//! Element types: plain numbers, the sub-byte floats safetensors defines, and every GGML block
//! type. One `const` table holds each type's facts (block geometry, GGML id, safetensors name),
//! so nothing has to agree by hand (see ggml.c `type_traits[]`).

use std::fmt;

/// What kind of number a dtype holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Bool,
    Int,
    Float,
    /// Packed blocks that need a decoder (GGML quant types, sub-byte floats).
    Block,
}

/// An element type. Block types store `block_elems` elements in `block_bytes` bytes.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DType {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    BF16,
    F32,
    F64,
    C64,
    F8_E4M3,
    F8_E5M2,
    F8_E8M0,
    F8_E4M3FNUZ,
    F8_E5M2FNUZ,
    F4,
    F6_E2M3,
    F6_E3M2,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    IQ1_M,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// The facts about one dtype.
#[derive(Debug)]
pub struct DTypeInfo {
    pub dtype: DType,
    /// Name as llama.cpp and safetensors print it (`Q4_K`, `BF16`, `F8_E4M3`).
    pub name: &'static str,
    pub kind: Kind,
    /// Elements per block (1 for plain numbers).
    pub block_elems: u64,
    /// Bytes per block.
    pub block_bytes: u64,
    /// The `ggml_type` id in GGUF files, if GGML has this type.
    pub ggml_id: Option<u32>,
    /// The dtype string in a safetensors header, if safetensors has this type.
    pub safetensors: Option<&'static str>,
}

const QK_K: u64 = 256;

macro_rules! row {
    ($dt:ident, $kind:ident, $be:expr, $bb:expr, $ggml:expr, $st:expr) => {
        DTypeInfo {
            dtype: DType::$dt,
            name: stringify!($dt),
            kind: Kind::$kind,
            block_elems: $be,
            block_bytes: $bb,
            ggml_id: $ggml,
            safetensors: $st,
        }
    };
}

/// One row per dtype, in `DType` order. Block sizes are written as ggml-common.h's formulas.
pub const DTYPES: [DTypeInfo; 46] = [
    row!(Bool, Bool, 1, 1, None, Some("BOOL")),
    row!(U8, Int, 1, 1, None, Some("U8")),
    row!(I8, Int, 1, 1, Some(24), Some("I8")),
    row!(U16, Int, 1, 2, None, Some("U16")),
    row!(I16, Int, 1, 2, Some(25), Some("I16")),
    row!(U32, Int, 1, 4, None, Some("U32")),
    row!(I32, Int, 1, 4, Some(26), Some("I32")),
    row!(U64, Int, 1, 8, None, Some("U64")),
    row!(I64, Int, 1, 8, Some(27), Some("I64")),
    row!(F16, Float, 1, 2, Some(1), Some("F16")),
    row!(BF16, Float, 1, 2, Some(30), Some("BF16")),
    row!(F32, Float, 1, 4, Some(0), Some("F32")),
    row!(F64, Float, 1, 8, Some(28), Some("F64")),
    // complex64: two f32.
    row!(C64, Float, 1, 8, None, Some("C64")),
    row!(F8_E4M3, Float, 1, 1, None, Some("F8_E4M3")),
    row!(F8_E5M2, Float, 1, 1, None, Some("F8_E5M2")),
    row!(F8_E8M0, Float, 1, 1, None, Some("F8_E8M0")),
    row!(F8_E4M3FNUZ, Float, 1, 1, None, Some("F8_E4M3FNUZ")),
    row!(F8_E5M2FNUZ, Float, 1, 1, None, Some("F8_E5M2FNUZ")),
    // Sub-byte floats: 2 x 4 bits in a byte, 4 x 6 bits in 3 bytes.
    row!(F4, Block, 2, 1, None, Some("F4")),
    row!(F6_E2M3, Block, 4, 3, None, Some("F6_E2M3")),
    row!(F6_E3M2, Block, 4, 3, None, Some("F6_E3M2")),
    // Legacy GGML blocks of 32: f16 scale (and f16 min), then packed quants.
    row!(Q4_0, Block, 32, 2 + 32 / 2, Some(2), None),
    row!(Q4_1, Block, 32, 2 * 2 + 32 / 2, Some(3), None),
    row!(Q5_0, Block, 32, 2 + 4 + 32 / 2, Some(6), None),
    row!(Q5_1, Block, 32, 2 * 2 + 4 + 32 / 2, Some(7), None),
    row!(Q8_0, Block, 32, 2 + 32, Some(8), None),
    row!(Q8_1, Block, 32, 2 * 2 + 32, Some(9), None),
    // K-quants: super-blocks of QK_K = 256.
    row!(
        Q2_K,
        Block,
        QK_K,
        2 * 2 + QK_K / 16 + QK_K / 4,
        Some(10),
        None
    ),
    row!(
        Q3_K,
        Block,
        QK_K,
        2 + QK_K / 4 + QK_K / 8 + 12,
        Some(11),
        None
    ),
    row!(Q4_K, Block, QK_K, 2 * 2 + 12 + QK_K / 2, Some(12), None),
    row!(
        Q5_K,
        Block,
        QK_K,
        2 * 2 + 12 + QK_K / 8 + QK_K / 2,
        Some(13),
        None
    ),
    row!(
        Q6_K,
        Block,
        QK_K,
        2 + QK_K / 16 + 3 * QK_K / 4,
        Some(14),
        None
    ),
    row!(Q8_K, Block, QK_K, 4 + QK_K + QK_K / 16 * 2, Some(15), None),
    // i-quants.
    row!(IQ2_XXS, Block, QK_K, 2 + QK_K / 8 * 2, Some(16), None),
    row!(
        IQ2_XS,
        Block,
        QK_K,
        2 + QK_K / 8 * 2 + QK_K / 32,
        Some(17),
        None
    ),
    row!(IQ3_XXS, Block, QK_K, 2 + 3 * (QK_K / 8), Some(18), None),
    row!(IQ1_S, Block, QK_K, 2 + QK_K / 8 + QK_K / 16, Some(19), None),
    row!(IQ4_NL, Block, 32, 2 + 32 / 2, Some(20), None),
    row!(
        IQ3_S,
        Block,
        QK_K,
        2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + QK_K / 64,
        Some(21),
        None
    ),
    row!(IQ2_S, Block, QK_K, 2 + QK_K / 4 + QK_K / 16, Some(22), None),
    row!(
        IQ4_XS,
        Block,
        QK_K,
        2 + 2 + QK_K / 64 + QK_K / 2,
        Some(23),
        None
    ),
    row!(
        IQ1_M,
        Block,
        QK_K,
        QK_K / 8 + QK_K / 16 + QK_K / 32,
        Some(29),
        None
    ),
    // Ternary and microscaling types.
    row!(
        TQ1_0,
        Block,
        QK_K,
        2 + (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64,
        Some(34),
        None
    ),
    row!(TQ2_0, Block, QK_K, 2 + QK_K / 4, Some(35), None),
    row!(MXFP4, Block, 32, 1 + 32 / 2, Some(39), None),
];

impl DType {
    /// Every dtype, in table order.
    pub fn all() -> impl Iterator<Item = DType> {
        DTYPES.iter().map(|row| row.dtype)
    }

    pub fn info(self) -> &'static DTypeInfo {
        &DTYPES[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn kind(self) -> Kind {
        self.info().kind
    }

    pub fn block_elems(self) -> u64 {
        self.info().block_elems
    }

    pub fn block_bytes(self) -> u64 {
        self.info().block_bytes
    }

    pub fn is_quantized(self) -> bool {
        self.info().ggml_id.is_some() && self.kind() == Kind::Block
    }

    /// Bytes that `elems` elements occupy, or `None` when `elems` is not a whole number of
    /// blocks or the product overflows.
    pub fn byte_len(self, elems: u64) -> Option<u64> {
        let info = self.info();
        if !elems.is_multiple_of(info.block_elems) {
            return None;
        }
        (elems / info.block_elems).checked_mul(info.block_bytes)
    }

    /// The smallest byte count GPU pages of this dtype are split at: whole blocks, and a
    /// multiple of 4 (wgpu copies move 4-byte words).
    pub fn page_unit(self) -> u64 {
        lcm4(self.block_bytes())
    }

    /// The byte count GPU pages of a tensor of this dtype with rows of `row_len` elements are
    /// split at: whole rows where a row (rounded to 4 bytes) is at most `max_row_bytes`, so
    /// kernels that work row by row (matrix products) never see a row cut in two; whole blocks
    /// otherwise.
    pub fn row_page_unit(self, row_len: u64, max_row_bytes: u64) -> u64 {
        match self.byte_len(row_len) {
            Some(row) if row > 0 && lcm4(row) <= max_row_bytes => lcm4(row),
            _ => self.page_unit(),
        }
    }

    pub fn from_ggml_id(id: u32) -> Option<DType> {
        DTYPES
            .iter()
            .find(|row| row.ggml_id == Some(id))
            .map(|row| row.dtype)
    }

    pub fn from_safetensors(name: &str) -> Option<DType> {
        DTYPES
            .iter()
            .find(|row| row.safetensors == Some(name))
            .map(|row| row.dtype)
    }

    /// Parse a name as printed by [`DType::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<DType> {
        DTYPES
            .iter()
            .find(|row| row.name.eq_ignore_ascii_case(name))
            .map(|row| row.dtype)
    }
}

/// The least common multiple of `n` and 4.
fn lcm4(n: u64) -> u64 {
    let gcd = if n.is_multiple_of(4) {
        4
    } else if n.is_multiple_of(2) {
        2
    } else {
        1
    };
    n * 4 / gcd
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_enum_order() {
        for (i, row) in DTYPES.iter().enumerate() {
            assert_eq!(row.dtype as usize, i, "{}", row.name);
            assert_eq!(format!("{:?}", row.dtype), row.name);
        }
    }

    #[test]
    fn ggml_ids_and_names_are_unique() {
        for a in &DTYPES {
            for b in &DTYPES {
                if a.dtype != b.dtype {
                    assert!(a.ggml_id.is_none() || a.ggml_id != b.ggml_id);
                    assert!(a.safetensors.is_none() || a.safetensors != b.safetensors);
                }
            }
        }
    }

    /// Block sizes as ggml-common.h's static asserts and the fixture README state them.
    #[test]
    fn ggml_block_bytes() {
        let expected = [
            (DType::Q4_0, 18),
            (DType::Q4_1, 20),
            (DType::Q5_0, 22),
            (DType::Q5_1, 24),
            (DType::Q8_0, 34),
            (DType::Q8_1, 36),
            (DType::Q2_K, 84),
            (DType::Q3_K, 110),
            (DType::Q4_K, 144),
            (DType::Q5_K, 176),
            (DType::Q6_K, 210),
            (DType::Q8_K, 292),
            (DType::IQ2_XXS, 66),
            (DType::IQ2_XS, 74),
            (DType::IQ3_XXS, 98),
            (DType::IQ1_S, 50),
            (DType::IQ4_NL, 18),
            (DType::IQ3_S, 110),
            (DType::IQ2_S, 82),
            (DType::IQ4_XS, 136),
            (DType::IQ1_M, 56),
            (DType::TQ1_0, 54),
            (DType::TQ2_0, 66),
            (DType::MXFP4, 17),
        ];
        for (dt, bytes) in expected {
            assert_eq!(dt.block_bytes(), bytes, "{dt}");
        }
    }

    #[test]
    fn pages_split_at_rows_when_rows_are_small() {
        // A Q4_1 row of 576 elements is 18 blocks of 20 bytes = 360 bytes.
        assert_eq!(DType::Q4_1.row_page_unit(576, 1 << 20), 360);
        // Q4_0 rows of 32 are 18 bytes: whole rows, rounded to whole words (2 rows).
        assert_eq!(DType::Q4_0.row_page_unit(32, 1 << 20), 36);
        // Rows longer than allowed, or not whole blocks: whole blocks.
        assert_eq!(DType::Q4_1.row_page_unit(576, 100), DType::Q4_1.page_unit());
        assert_eq!(
            DType::Q4_1.row_page_unit(33, 1 << 20),
            DType::Q4_1.page_unit()
        );
        assert_eq!(DType::Q6_K.page_unit(), 420);
    }

    #[test]
    fn byte_len_checks_blocks_and_overflow() {
        assert_eq!(DType::Q4_0.byte_len(64), Some(36));
        assert_eq!(DType::Q4_0.byte_len(33), None);
        assert_eq!(DType::F4.byte_len(3), None);
        assert_eq!(DType::F64.byte_len(u64::MAX), None);
    }
}
