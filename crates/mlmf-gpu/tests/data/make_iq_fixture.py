#!/usr/bin/env python3
"""Write a GGUF of random i-quant blocks and gguf-py's decoding of them, the oracle that
tests/block_types_iq.rs reads. The test runs this into a temporary directory:
`make_iq_fixture.py OUT.gguf`.

For each type T of IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M:

* `T`: ne = [COLS, ROWS] (numpy [ROWS, COLS]), raw blocks drawn with numpy `default_rng(SEED)`,
  then each scale field in SCALES made finite: an f16 whose exponent is 31 (infinity or NaN)
  has the top bit of its exponent cleared, so zero, subnormal, negative and large scales remain.
* `T.dequant`: F32 [ROWS, COLS], `gguf.quants.dequantize` of those bytes.

Needs gguf==0.19.0 and numpy. Byte for byte the same each run.
"""

import sys
from importlib.metadata import version

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

assert version("gguf") == "0.19.0", version("gguf")

ROWS, COLS, SEED = 32, 2048, 20261206

# Where each type's scales are (ggml-common.h): "f16", an f16 at that byte of the block;
# "f16_top_nibbles", the f16 spread over the top nibbles of the four u16 starting there (IQ1_M:
# bits 12..15 of scales[0..4] are bits 0..3, 4..7, 8..11, 12..15 of d).
SCALES = {
    T.IQ2_XXS: [("f16", 0)],
    T.IQ2_XS: [("f16", 0)],
    T.IQ2_S: [("f16", 0)],
    T.IQ3_XXS: [("f16", 0)],
    T.IQ3_S: [("f16", 0)],
    T.IQ1_S: [("f16", 0)],
    T.IQ1_M: [("f16_top_nibbles", 48)],
}


def make_finite(blocks, kind, at):
    if kind == "f16":
        # The high byte holds the exponent in bits 2..6.
        hi = blocks[:, at + 1]
        infinite = (hi & 0x7C) == 0x7C
        blocks[infinite, at + 1] &= np.uint8(0xBF)
    elif kind == "f16_top_nibbles":
        # d's high byte is the top nibbles of the third and fourth u16 (bytes at + 5, at + 7);
        # its exponent's top bit is bit 6 of byte at + 7.
        hi = (blocks[:, at + 5] >> 4) | (blocks[:, at + 7] & 0xF0)
        infinite = (hi & 0x7C) == 0x7C
        blocks[infinite, at + 7] &= np.uint8(0xBF)
    else:
        raise ValueError(kind)


rng = np.random.default_rng(SEED)
w = gguf.GGUFWriter(sys.argv[1], "iq_oracle")
w.add_string("iq_oracle.tool", "gguf-py 0.19.0 gguf.quants.dequantize")
for qt, fields in SCALES.items():
    block, size = gguf.GGML_QUANT_SIZES[qt]
    blocks = rng.integers(0, 256, size=(ROWS * COLS // block, size), dtype=np.uint8)
    for kind, at in fields:
        make_finite(blocks, kind, at)
    raw = blocks.reshape(ROWS, -1)
    values = dequantize(raw, qt).astype(np.float32)
    assert values.shape == (ROWS, COLS) and np.isfinite(values).all(), qt.name
    w.add_tensor(qt.name, raw, raw_dtype=qt)
    w.add_tensor(qt.name + ".dequant", values)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
