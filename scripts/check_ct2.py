#!/usr/bin/env python3
"""An independent reading of a CTranslate2 model.bin for mlmf's tests, written from the layout in
../shared/fixtures/whisper/README.md ("model.bin layout"), not from mlmf's reader.

Usage: check_ct2.py MODEL.BIN NAME...  prints JSON: the header, every variable's name, dims,
dtype and data offset, the aliases, and the first and last 4096 values of each named variable
(floats widened by numpy, integers as ints): `values[name] = {"head": [...], "tail": [...]}`.
"""
import json
import struct
import sys

import numpy as np

DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16"}


def main() -> None:
    path, wanted = sys.argv[1], set(sys.argv[2:])
    data = open(path, "rb").read()
    pos = 0

    def take(n):
        nonlocal pos
        out = data[pos:pos + n]
        assert len(out) == n, f"short read at {pos}"
        pos += n
        return out

    def u8():
        return take(1)[0]

    def u16():
        return struct.unpack("<H", take(2))[0]

    def u32():
        return struct.unpack("<I", take(4))[0]

    def string():
        raw = take(u16())
        assert raw[-1] == 0
        return raw[:-1].decode("utf-8")

    out = {"binary_version": u32(), "spec": string(), "spec_revision": u32()}
    variables, values = [], {}
    for _ in range(u32()):
        name = string()
        dims = [u32() for _ in range(u8())]
        dtype = DTYPES[u8()]
        nbytes = u32()
        offset = pos
        raw = take(nbytes)
        variables.append({"name": name, "dims": dims, "dtype": dtype, "offset": offset})
        if name in wanted:
            arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
            arr = arr.astype(np.float64 if dtype.startswith("float") else np.int64)
            values[name] = {"head": arr[:4096].tolist(), "tail": arr[-4096:].tolist()}
    out["aliases"] = [[string(), string()] for _ in range(u32())]
    assert pos == len(data), "trailing bytes"
    out["variables"] = variables
    out["values"] = values
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
