#!/usr/bin/env python3
"""PyTorch baseline for benches/models.rs (group `models`), run only where torch is installed.

Usage:
  bench_models_torch.py minilm MODEL_DIR DEVICE SENTENCE...
      all-MiniLM-L6-v2 through transformers' BertModel (MODEL_DIR holds config.json,
      model.safetensors and tokenizer.json): tokenization with the `tokenizers` package (padded
      to the longest sentence), forward, mean pooling over the attention mask, L2
      normalisation, as sentence-transformers does; one batch of all sentences per iteration.
  bench_models_torch.py mobilenet PTH INPUT DEVICE
      torchvision's mobilenet_v2 with the state dict in PTH, fed INPUT (raw little-endian f32,
      [1, 3, 224, 224], the tensor mlmf's preprocessing made), forward to logits on the host.

DEVICE is cpu or cuda. After loading, the script reads iteration counts from stdin, one per
line, and for each count N prints one JSON line: {"model", "device", "iters", "seconds" (N
iterations, timed alone, after two warm-up ones at the start), "threads" (torch's intra-op
threads), "torch" (its version)}, so one process serves every sample of a benchmark. It starts by
printing {"ready": true}, or exits with status 3 after printing {"unavailable": why} when
torch (or, for MiniLM, transformers and tokenizers; for MobileNetV2, torchvision) cannot be
imported, or DEVICE is cuda and no CUDA device is visible; the benchmark then leaves the column out.
"""
import json
import sys
import time


def unavailable(why: str) -> None:
    print(json.dumps({"unavailable": why}))
    sys.exit(3)


try:
    import torch
except ImportError as e:
    unavailable(f"torch: {e}")


def pick(device: str):
    if device == "cuda" and not torch.cuda.is_available():
        unavailable("no CUDA device")
    return torch.device(device)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def serve(step, device, kind: str, device_name: str) -> None:
    """Warm up, then time each count read from stdin."""
    with torch.inference_mode():
        for _ in range(2):
            step()
        sync(device)
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            iters = int(line)
            start = time.perf_counter()
            for _ in range(iters):
                step()
            sync(device)
            seconds = time.perf_counter() - start
            print(json.dumps({"model": kind, "device": device_name, "iters": iters,
                              "seconds": seconds, "threads": torch.get_num_threads(),
                              "torch": torch.__version__}), flush=True)


def minilm(model_dir: str, device: str, sentences):
    try:
        from tokenizers import Tokenizer
        from transformers import BertModel
    except ImportError as e:
        unavailable(f"transformers/tokenizers: {e}")
    dev = pick(device)
    tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).to(dev).eval()

    def step():
        enc = tokenizer.encode_batch(sentences)
        ids = torch.tensor([e.ids for e in enc], device=dev)
        mask = torch.tensor([e.attention_mask for e in enc], device=dev)
        types = torch.tensor([e.type_ids for e in enc], device=dev)
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    return step, dev


def mobilenet(pth: str, input_path: str, device: str):
    try:
        import numpy as np
        import torchvision
    except ImportError as e:
        unavailable(f"torchvision: {e}")
    dev = pick(device)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
    model = model.to(dev).eval()
    x = torch.from_numpy(np.fromfile(input_path, dtype="<f4").reshape(1, 3, 224, 224)).to(dev)

    def step():
        return model(x).cpu()

    return step, dev


def main() -> None:
    kind = sys.argv[1]
    if kind == "minilm":
        device = sys.argv[3]
        step, dev = minilm(sys.argv[2], device, sys.argv[4:])
    elif kind == "mobilenet":
        device = sys.argv[4]
        step, dev = mobilenet(sys.argv[2], sys.argv[3], device)
    else:
        sys.exit(f"unknown model {kind!r} (minilm or mobilenet)")
    serve(step, dev, kind, device)


if __name__ == "__main__":
    main()
