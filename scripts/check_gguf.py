#!/usr/bin/env python3
"""Open a GGUF file with gguf-py's GGUFReader and print a JSON summary of it, so that a test can
compare it with what it wrote (tests/gguf_writer.rs):

    {"version", "header_end", "alignment", "data_offset", "file_size",
     "kv": [{"key": ..., "value": TYPED}, ...],             in file order
     "tensors": [{"name", "type", "ne", "offset", "n_bytes", "sha256"}, ...]}

TYPED is {"type": "UINT8".."FLOAT64", "value": v} for a scalar (floats as their IEEE bit
pattern, "bits", so NaN and -0.0 survive JSON), and {"type": "ARRAY", "elem": TYPE, "items":
[TYPED, ...]} for an array. gguf-py's ReaderField flattens nested arrays in `contents()`; the
nesting is rebuilt here from the parts GGUFReader decoded, in the order it decoded them.
`ne` is in GGUF order (fastest first), `offset` is absolute, `sha256` is of the stored bytes.

Usage: check_gguf.py FILE   (needs gguf==0.19.0; scripts/test.sh makes a venv with it)
"""

import hashlib
import json
import os
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType


def scalar(part, vtype):
    v = part[0]
    if vtype == GGUFValueType.FLOAT32:
        return {"type": vtype.name, "bits": int(part.view(np.uint32)[0])}
    if vtype == GGUFValueType.FLOAT64:
        return {"type": vtype.name, "bits": int(part.view(np.uint64)[0])}
    if vtype == GGUFValueType.BOOL:
        return {"type": vtype.name, "value": bool(v)}
    return {"type": vtype.name, "value": int(v)}


def typed(parts, i, vtype):
    """The value of type `vtype` whose parts start at parts[i]; returns it and the next index."""
    if vtype == GGUFValueType.STRING:
        # A string is two parts: its u64 length and its bytes.
        return {"type": vtype.name, "value": bytes(parts[i + 1]).decode("utf-8")}, i + 2
    if vtype == GGUFValueType.ARRAY:
        elem = GGUFValueType(int(parts[i][0]))
        count = int(parts[i + 1][0])
        i += 2
        items = []
        for _ in range(count):
            item, i = typed(parts, i, elem)
            items.append(item)
        return {"type": vtype.name, "elem": elem.name, "items": items}, i
    return scalar(parts[i], vtype), i + 1


def main():
    path = sys.argv[1]
    reader = GGUFReader(path)
    fields = list(reader.fields.values())
    # The first three fields are the header (GGUF.version, GGUF.tensor_count, GGUF.kv_count).
    version = int(fields[0].parts[0][0])
    kv = []
    for field in fields[3:]:
        # parts: key length, key bytes, value type, then the value's own parts.
        vtype = GGUFValueType(int(field.parts[2][0]))
        value, end = typed(field.parts, 3, vtype)
        assert end == len(field.parts), f"{field.name}: {len(field.parts) - end} parts left over"
        assert vtype == field.types[0]
        kv.append({"key": field.name, "value": value})
    tensors = []
    for t in reader.tensors:
        raw = reader.data[t.data_offset : t.data_offset + t.n_bytes]
        assert len(raw) == t.n_bytes, f"{t.name}: data runs past the end of the file"
        tensors.append(
            {
                "name": t.name,
                "type": t.tensor_type.name,
                "ne": [int(d) for d in t.shape],
                "offset": int(t.data_offset),
                "n_bytes": int(t.n_bytes),
                "sha256": hashlib.sha256(raw.tobytes()).hexdigest(),
            }
        )
    # Where the header ends (the padding before the data section starts): the end of the last
    # tensor info, else of the last key/value pair, else of the 24-byte fixed header.
    last = reader.tensors[-1].field if reader.tensors else fields[-1]
    header_end = last.offset + sum(int(p.nbytes) for p in last.parts)
    json.dump(
        {
            "version": version,
            "header_end": header_end,
            "alignment": int(reader.alignment),
            "data_offset": int(reader.data_offset),
            "file_size": os.path.getsize(path),
            "kv": kv,
            "tensors": tensors,
        },
        sys.stdout,
        ensure_ascii=False,
    )


if __name__ == "__main__":
    main()
