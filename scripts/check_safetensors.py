#!/usr/bin/env python3
"""Open safetensors files with the Python `safetensors` package (the reference implementation)
and print a JSON summary, so that a test can compare it with what mlmf wrote:

    {"metadata": {...} or null, "tensors": {name: {"dtype", "shape", "sha256"}}}

`safetensors.deserialize` returns every tensor's raw bytes, for every dtype (numpy has no
bfloat16 or float8). With several FILEs (the shards of one checkpoint) the tensors are merged
and "metadata" is the first file's.

Usage: check_safetensors.py FILE...   (needs safetensors==0.6.2; scripts/test.sh makes a venv)
"""

import hashlib
import json
import struct
import sys

from safetensors import deserialize


def main() -> None:
    tensors = {}
    metadata = None
    for i, path in enumerate(sys.argv[1:]):
        with open(path, "rb") as f:
            data = f.read()
        if i == 0:
            n = struct.unpack("<Q", data[:8])[0]
            metadata = json.loads(data[8 : 8 + n]).get("__metadata__")
        for name, t in deserialize(data):
            assert name not in tensors, name
            tensors[name] = {
                "dtype": t["dtype"],
                "shape": list(t["shape"]),
                "sha256": hashlib.sha256(bytes(t["data"])).hexdigest(),
            }
    print(json.dumps({"metadata": metadata, "tensors": tensors}))


if __name__ == "__main__":
    main()
