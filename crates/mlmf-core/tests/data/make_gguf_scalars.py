#!/usr/bin/env python3
"""Write gguf_py_scalars.gguf with gguf-py 0.19.0 (scripts/test.sh's venv): a GGUF file whose
tensors include numpy 0-d arrays, which gguf-py writes with n_dims = 0 (no `ne` at all), beside
a 1-D and a 2-D tensor. llama.cpp's reader takes n_dims = 0 as ne = [1, 1, 1, 1]; ggml itself
never writes it (`ggml_n_dims` is at least 1).

Run: $MLMF_PYTHON tests/data/make_gguf_scalars.py   (rewrites the file beside it, byte for byte
the same each run)
"""

import os

import numpy as np
from gguf import GGUFWriter

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gguf_py_scalars.gguf")


def main():
    w = GGUFWriter(OUT, "llama")
    w.add_string("general.name", "scalars")
    w.add_tensor("scale", np.array(0.07, dtype=np.float32))
    w.add_tensor("bn.num_batches_tracked", np.array(1234, dtype=np.int64))
    w.add_tensor("v", np.arange(5, dtype=np.float32))
    w.add_tensor("m", np.arange(6, dtype=np.float16).reshape(2, 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{OUT}: {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
