#!/usr/bin/env python3
"""gguf-py 0.19.0's quantization of raw little-endian f32 rows, for tests/quantize.rs:
`quantize_gguf_py.py IN.f32 TYPE ROW_LEN OUT.bin` writes `gguf.quants.quantize` of the rows
(numpy warnings about overflow in the scale search silenced; the bytes are what gguf-py writes).
"""

import sys
from importlib.metadata import version

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize

assert version("gguf") == "0.19.0", version("gguf")

src, name, row_len, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
x = np.fromfile(src, dtype="<f4").reshape(-1, row_len)
with np.errstate(all="ignore"):
    q = quantize(x, T[name])
q.tofile(out)
