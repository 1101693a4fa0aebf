#!/usr/bin/env python3
"""Oracle and baseline for mlmf_gpu::ops::mel: faster-whisper 1.2.1's numpy FeatureExtractor
(vendored unmodified in scripts/vendor/) on 16 kHz f32 samples.

Usage:
  mel_faster_whisper.py SAMPLES.f32 MELS MODE OUT.f32
      SAMPLES.f32: raw little-endian f32 samples. MODE:
      per-window: each 30 s window padded with zeros to 480000 samples (Whisper's pad_or_trim)
                  and passed alone with padding=0, as the fixture jfk.mel.safetensors was made;
      continuous: what faster-whisper's WhisperModel.transcribe feeds the encoder: features of
                  the whole input with the default padding=160, content_frames = frames - 1,
                  windows features[:, seek:seek + min(3000, content_frames - seek)] for seek =
                  0, 3000, ... through pad_or_trim (faster_whisper/audio.py: zeros after).
      Writes [windows, MELS, 3000] raw f32 to OUT.f32.
  mel_faster_whisper.py --bench ITERS
      Prints one JSON line {"iters", "seconds"}: ITERS extractor calls on 30 s of the chirp the
      bench uses (benches/mel.rs), in per-window mode, without start-up.
"""
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor"))
from faster_whisper_feature_extractor import FeatureExtractor  # noqa: E402

N_SAMPLES = 480000
N_FRAMES = 3000


def pad_or_trim(array, length=N_FRAMES, axis=-1):
    # faster_whisper/audio.py pad_or_trim (that module imports PyAV, so it is copied here).
    if array.shape[axis] > length:
        array = array.take(indices=range(length), axis=axis)
    if array.shape[axis] < length:
        pad_widths = [(0, 0)] * array.ndim
        pad_widths[axis] = (0, length - array.shape[axis])
        array = np.pad(array, pad_widths)
    return array


def per_window(extractor, audio):
    windows = max(1, -(-len(audio) // N_SAMPLES))
    out = []
    for w in range(windows):
        chunk = audio[w * N_SAMPLES:(w + 1) * N_SAMPLES]
        chunk = np.pad(chunk, (0, N_SAMPLES - len(chunk)))
        out.append(extractor(chunk, padding=0)[:, :N_FRAMES])
    return np.stack(out)


def continuous(extractor, audio):
    features = extractor(audio)
    content_frames = features.shape[-1] - 1
    out = []
    seek = 0
    while seek < content_frames:
        size = min(N_FRAMES, content_frames - seek)
        out.append(pad_or_trim(features[:, seek:seek + size]))
        seek += size
    return np.stack(out)


def main():
    if sys.argv[1] == "--bench":
        iters = int(sys.argv[2])
        t = np.arange(N_SAMPLES, dtype=np.float32) / np.float32(16000)
        audio = (0.5 * np.sin(t * (200.0 + 50.0 * t) * np.float32(2 * np.pi))).astype(np.float32)
        extractor = FeatureExtractor(feature_size=80)
        per_window(extractor, audio)
        start = time.perf_counter()
        for _ in range(iters):
            per_window(extractor, audio)
        print(json.dumps({"iters": iters, "seconds": time.perf_counter() - start}))
        return
    path, mels, mode, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    audio = np.fromfile(path, dtype="<f4")
    extractor = FeatureExtractor(feature_size=mels)
    result = {"per-window": per_window, "continuous": continuous}[mode](extractor, audio)
    result.astype("<f4").tofile(out)


if __name__ == "__main__":
    main()
