#!/usr/bin/env python3
"""Write a PEFT adapter directory with `adapter_model.bin` (torch.save's zip layout) holding the
same tensors as a fixture adapter's `adapter_model.safetensors`, for tests/lora.rs.

Usage: peft_adapter_bin.py ADAPTER_DIR OUT_DIR

PEFT wrote `adapter_model.bin` with torch.save before it switched to safetensors; torch is not
installed here, so the bytes come from make_pytorch_fixtures.py's stand-ins (plain pickle and
zipfile, torch.save's layout). `adapter_config.json` is copied unchanged.
"""
import collections
import json
import os
import shutil
import struct
import sys

# The torch.save writer lives with the PyTorch reader's test data in mlmf-core.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../mlmf-core/tests/data"))
import make_pytorch_fixtures as pt  # noqa: E402


def main():
    src, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(src, "adapter_model.safetensors"), "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    sd = collections.OrderedDict()
    for key, (name, t) in enumerate(sorted((k, v) for k, v in header.items() if k != "__metadata__")):
        assert t["dtype"] == "F32", name
        b, e = t["data_offsets"]
        storage = pt.Storage(pt.FloatStorage, str(key), body[b:e])
        sd[name] = pt.tensor(storage, tuple(t["shape"]))
    with open(os.path.join(out, "adapter_model.bin"), "wb") as f:
        f.write(pt.zip_checkpoint(sd))
    shutil.copyfile(os.path.join(src, "adapter_config.json"), os.path.join(out, "adapter_config.json"))


if __name__ == "__main__":
    main()
