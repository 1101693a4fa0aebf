"""GGUF files made from the PEFT LoRA fixture with gguf-py, for tests/lora.rs.

Usage: lora_gguf.py FIXTURE_DIR OUT_DIR   (FIXTURE_DIR: ../shared/fixtures/lora/standard)

Writes to OUT_DIR:
- adapter-qwen2.gguf: the fixture's adapter as llama.cpp's convert_lora_to_gguf.py lays one out
  (general.type=adapter, adapter.type=lora, adapter.lora.alpha, `<gguf tensor>.lora_a` [r, in]
  and `.lora_b` [out, r]), for architecture qwen2, which llama.cpp does not permute.
- base-llama.gguf: the fixture's base as a llama GGUF with 4 heads; q_proj weight and bias rows
  permuted as convert_hf_to_gguf.py's LlamaModel.permute does.
- merged-llama.gguf: the fixture's merged.safetensors (peft's merge_and_unload) laid out the same
  way, the expected result of merging the PEFT adapter into base-llama.gguf.
"""
import json
import os
import struct
import sys

import numpy as np
import gguf

N_HEAD = 4
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.v_proj": "attn_v",
    "mlp.down_proj": "ffn_down",
}


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", name
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(body[b:e], dtype="<f4").reshape(t["shape"]).copy()
    return out


def gguf_name(hf):
    # model.layers.N.<module>.<weight|bias>
    parts = hf.split(".")
    layer, module, kind = parts[2], ".".join(parts[3:5]), parts[5]
    return f"blk.{layer}.{GGUF_NAMES[module]}.{kind}"


def permute(weights, n_head, n_head_kv):
    # convert_hf_to_gguf.py, LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_model(path, tensors):
    w = gguf.GGUFWriter(path, "llama")
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    for name in sorted(tensors):
        data = tensors[name]
        if "q_proj" in name:
            data = permute(data, N_HEAD, N_HEAD)
        w.add_tensor(gguf_name(name), np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    fixture, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(fixture, "adapter", "adapter_config.json")) as f:
        config = json.load(f)
    adapter = load(os.path.join(fixture, "adapter", "adapter_model.safetensors"))

    w = gguf.GGUFWriter(os.path.join(out, "adapter-qwen2.gguf"), "qwen2")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(config["lora_alpha"]))
    for name in sorted(adapter):
        # base_model.model.<module>.lora_A.weight
        module = name[len("base_model.model.") : -len(".lora_A.weight")]
        suffix = ".lora_a" if ".lora_A." in name else ".lora_b"
        w.add_tensor(gguf_name(module + ".weight") + suffix, adapter[name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    write_model(os.path.join(out, "base-llama.gguf"), load(os.path.join(fixture, "base.safetensors")))
    write_model(
        os.path.join(out, "merged-llama.gguf"), load(os.path.join(fixture, "merged.safetensors"))
    )


if __name__ == "__main__":
    main()
