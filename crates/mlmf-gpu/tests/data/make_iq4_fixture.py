#!/usr/bin/env python3
"""Write `iq4_gguf_py.gguf`, the IQ4_NL and IQ4_XS oracle tests/dequant_files.rs reads.

The shared quantization oracle (fixtures/quant) covers Q4_0..Q6_K but not the i-quants, so this
file pairs random IQ4_NL and IQ4_XS blocks with gguf-py's decoding of them:

* `IQ4_NL`, `IQ4_XS`: ne = [512, 4] (numpy [4, 512]), raw blocks drawn with numpy
  `default_rng(20250)`; every f16 scale with exponent 31 (infinity or NaN) has the top bit of its
  exponent cleared, so all scales are finite (zero, subnormal, negative and large ones remain).
* `IQ4_NL.dequant`, `IQ4_XS.dequant`: F32 [4, 512], `gguf.quants.dequantize` of those bytes.

Needs gguf==0.19.0 (the version the shared fixtures name) and numpy:
`python3 -m venv /tmp/g && /tmp/g/bin/pip install gguf==0.19.0 && /tmp/g/bin/python
tests/data/make_iq4_fixture.py`. It rewrites the file beside it, byte for byte the same each run.
"""

import os
from importlib.metadata import version

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

assert version("gguf") == "0.19.0", version("gguf")

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS, ROW = 4, 512

rng = np.random.default_rng(20250)
w = gguf.GGUFWriter(os.path.join(HERE, "iq4_gguf_py.gguf"), "iq4_oracle")
w.add_string("iq4_oracle.tool", "gguf-py 0.19.0 gguf.quants.dequantize")
for qt in (T.IQ4_NL, T.IQ4_XS):
    block, size = gguf.GGML_QUANT_SIZES[qt]
    blocks = rng.integers(0, 256, size=(ROWS * ROW // block, size), dtype=np.uint8)
    # The f16 scale d is the first two bytes of both block types.
    infinite = (blocks[:, 1] & 0x7C) == 0x7C
    blocks[infinite, 1] &= np.uint8(0xBF)
    raw = blocks.reshape(ROWS, -1)
    values = dequantize(raw, qt).astype(np.float32)
    assert values.shape == (ROWS, ROW) and np.isfinite(values).all()
    w.add_tensor(qt.name, raw, raw_dtype=qt)
    w.add_tensor(qt.name + ".dequant", values)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
