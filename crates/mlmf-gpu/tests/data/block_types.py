#!/usr/bin/env python3
"""Write a GGUF file of random valid blocks, and gguf-py's decoding of them, for the block types
tests/block_types.rs (and the CLI's dump test) check: `block_types.py OUT.gguf TYPE...`.

For each TYPE, all [ROWS, COLS] (numpy order):

* `TYPE.random`: raw blocks of random bytes drawn with numpy `default_rng(seed)`, each scale field
  of SCALES[TYPE] then overwritten with a finite value: an f16 whose exponent is 31 (infinity or
  NaN) has the top bit of its exponent cleared (zero, subnormal, negative and large scales
  remain; IQ1_M's f16 is spread over the top nibbles of its four u16 scales, and the same bit
  is cleared there); an E8M0 exponent is drawn from 0..=252 (2^(e-128) * 12 overflows f32
  above that), with the first blocks forced to 0, 1 and 2 (the subnormal scales and the first
  normal one) and 252.
* `TYPE.narrow`: the same for matrix products, whose sums must stay finite: E8M0 exponents drawn
  from 112..=144; f16 scales as above.
* `TYPE.quantized`: `gguf.quants.quantize` of random normal f32 data (types gguf-py can
  quantize; the others get `TYPE.narrow`'s blocks again under this name).
* `TYPE.random.dequant`, `TYPE.narrow.dequant`, `TYPE.quantized.dequant`: F32,
  `gguf.quants.dequantize` of those bytes.

Needs gguf==0.19.0 and numpy (`$MLMF_PYTHON`). The same arguments give the same bytes each run.
"""

import sys
from importlib.metadata import version

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

assert version("gguf") == "0.19.0", version("gguf")

ROWS, COLS = 64, 4096

# The scale fields of each block type: (byte offset in the block, kind). Kinds: "f16" (an IEEE
# half), "e8m0" (an 8-bit power-of-two exponent, MXFP4's shared scale), "f16_top_nibbles" (an
# f16 spread over the top nibbles of the four u16 starting there: IQ1_M, whose bits 12..15 of
# scales[0..4] are bits 0..3, 4..7, 8..11, 12..15 of d). Layouts: ggml-common.h.
SCALES = {
    "MXFP4": [(0, "e8m0")],
    "TQ1_0": [(52, "f16")],
    "TQ2_0": [(64, "f16")],
    "IQ2_XXS": [(0, "f16")],
    "IQ2_XS": [(0, "f16")],
    "IQ2_S": [(0, "f16")],
    "IQ3_XXS": [(0, "f16")],
    "IQ3_S": [(0, "f16")],
    "IQ1_S": [(0, "f16")],
    "IQ1_M": [(48, "f16_top_nibbles")],
}

# Types whose quantizer gguf-py 0.19.0 has.
QUANTIZABLE = {"MXFP4", "TQ1_0", "TQ2_0"}


def random_blocks(rng, qt, name, e8m0_range):
    block, size = gguf.GGML_QUANT_SIZES[qt]
    n = ROWS * COLS // block
    blocks = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for at, kind in SCALES[name]:
        if kind == "f16":
            infinite = (blocks[:, at + 1] & 0x7C) == 0x7C
            blocks[infinite, at + 1] &= np.uint8(0xBF)
        elif kind == "f16_top_nibbles":
            # d's high byte is the top nibbles of the third and fourth u16 (bytes at + 5, at + 7);
            # its exponent's top bit is bit 6 of byte at + 7.
            hi = (blocks[:, at + 5] >> 4) | (blocks[:, at + 7] & 0xF0)
            infinite = (hi & 0x7C) == 0x7C
            blocks[infinite, at + 7] &= np.uint8(0xBF)
        elif kind == "e8m0":
            lo, hi = e8m0_range
            blocks[:, at] = rng.integers(lo, hi + 1, size=n, dtype=np.uint8)
            if lo == 0:
                blocks[:4, at] = [0, 1, 2, hi]
        else:
            raise ValueError(kind)
    return blocks.reshape(ROWS, -1)


def main():
    out, names = sys.argv[1], sys.argv[2:]
    w = gguf.GGUFWriter(out, "block_types")
    w.add_string("block_types.tool", "gguf-py 0.19.0 gguf.quants")
    for i, name in enumerate(names):
        qt = T[name]
        rng = np.random.default_rng(20260 + i)
        raw = random_blocks(rng, qt, name, (0, 252))
        narrow = random_blocks(rng, qt, name, (112, 144))
        if name in QUANTIZABLE:
            data = rng.standard_normal((ROWS, COLS), dtype=np.float32)
            quantized = quantize(data, qt)
        else:
            quantized = narrow
        for suffix, blocks in (("random", raw), ("narrow", narrow), ("quantized", quantized)):
            values = dequantize(blocks, qt).astype(np.float32)
            assert values.shape == (ROWS, COLS) and np.isfinite(values).all(), (name, suffix)
            w.add_tensor(f"{name}.{suffix}", blocks, raw_dtype=qt)
            w.add_tensor(f"{name}.{suffix}.dequant", values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
