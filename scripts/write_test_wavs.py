#!/usr/bin/env python3
"""Oracle for crates/mlmf/tests/audio.rs: WAV files of every PCM width and float32, mono and
multichannel, written independently of mlmf (Python's `wave` module for PCM with the plain
WAVE_FORMAT_PCM header, `struct` for WAVE_FORMAT_IEEE_FLOAT and WAVE_FORMAT_EXTENSIBLE), each
with the samples it should decode to.

Usage: write_test_wavs.py DIR
Writes DIR/<name>.bin (the WAV, under a misleading extension) and DIR/<name>.f32 (expected
samples, little-endian f32, planar [channels, n]: int / 2^(bits-1), 8-bit (u - 128) / 128, float
as stored), and prints one JSON line: [{"name", "channels", "n", "rate", "bits", "format"}].
"""
import json
import os
import struct
import sys
import wave

import numpy as np

PCM_GUID = bytes([1, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71])
FLOAT_GUID = bytes([3]) + PCM_GUID[1:]


def ints(bits, channels, n, seed):
    """Interleaved integers [n, channels] covering the extremes of the width."""
    rng = np.random.default_rng(seed)
    if bits == 8:
        lo, hi = 0, 255
    else:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    x = rng.integers(lo, hi, size=(n, channels), endpoint=True, dtype=np.int64)
    x[0, :] = lo
    x[1, :] = hi
    x[2, :] = 0 if bits > 8 else 128
    return x


def pcm_bytes(x, bits):
    if bits == 8:
        return x.astype(np.uint8).tobytes()
    if bits == 24:
        v = x.astype("<i4").reshape(-1).view(np.uint8).reshape(-1, 4)[:, :3]
        return v.tobytes()
    return x.astype({16: "<i2", 32: "<i4"}[bits]).tobytes()


def expected_pcm(x, bits):
    if bits == 8:
        return (x.astype(np.float64) - 128) / 128
    return x.astype(np.float64) / 2.0 ** (bits - 1)


def write_wave_module(path, x, bits, rate):
    with wave.open(path, "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(bits // 8)
        w.setframerate(rate)
        w.writeframes(pcm_bytes(x, bits))


def write_struct(path, data, channels, bits, rate, tag, extensible):
    block = channels * bits // 8
    if extensible:
        mask = (1 << channels) - 1
        guid = FLOAT_GUID if tag == 3 else PCM_GUID
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, mask) + guid
    else:
        fmt = struct.pack("<HHIIHHH", tag, channels, rate, rate * block, block, bits, 0)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if tag == 3:
        chunks += b"fact" + struct.pack("<II", 4, len(data) // block)
    chunks += b"data" + struct.pack("<I", len(data)) + data
    if len(data) % 2:
        chunks += b"\0"
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)


def main():
    out = sys.argv[1]
    cases = []
    seed = 0
    # (name, bits, channels, writer)
    for name, bits, channels, how in [
        ("u8_mono", 8, 1, "wave"),
        ("u8_stereo", 8, 2, "wave"),
        ("s16_mono", 16, 1, "wave"),
        ("s16_stereo", 16, 2, "wave"),
        ("s24_mono", 24, 1, "wave"),
        ("s32_stereo", 32, 2, "wave"),
        ("s16_3ch_extensible", 16, 3, "extensible"),
        ("s24_6ch_extensible", 24, 6, "extensible"),
        ("s32_4ch_extensible", 32, 4, "extensible"),
        ("f32_mono", 32, 1, "float"),
        ("f32_stereo", 32, 2, "float"),
        ("f32_3ch_extensible", 32, 3, "float-extensible"),
    ]:
        seed += 1
        n, rate = 1001, 22050
        path = os.path.join(out, name + ".bin")
        if how.startswith("float"):
            rng = np.random.default_rng(seed)
            x = rng.uniform(-1.0, 1.0, size=(n, channels)).astype("<f4")
            x[0, :] = -1.0
            x[1, :] = 1.0
            x[2, :] = 1e-30  # a tiny value, decoded as stored
            write_struct(path, x.tobytes(), channels, 32, rate, 3, how == "float-extensible")
            expected = x.astype(np.float64)
        else:
            x = ints(bits, channels, n, seed)
            if how == "wave":
                write_wave_module(path, x, bits, rate)
            else:
                write_struct(path, pcm_bytes(x, bits), channels, bits, rate, 1, True)
            expected = expected_pcm(x, bits)
        expected.T.astype("<f4").tofile(os.path.join(out, name + ".f32"))
        cases.append({"name": name, "channels": channels, "n": n, "rate": rate, "bits": bits, "format": how})
    print(json.dumps(cases))


if __name__ == "__main__":
    main()
