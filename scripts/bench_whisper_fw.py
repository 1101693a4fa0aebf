#!/usr/bin/env python3
"""Baseline for crates/mlmf/benches/whisper.rs: faster-whisper (CTranslate2 on the CPU, float32,
2 threads, greedy) on the same Whisper model files mlmf reads, timed in parts.

Run with the python of scripts/faster_whisper_venv.sh (faster-whisper 1.2.1, ctranslate2 4.8.5).
The model is loaded once with WhisperModel(DIR, device="cpu", compute_type="float32",
cpu_threads=2); each part then runs once to warm up and ITERS times in its own loop (start-up,
model loading and the warm-up are not timed):

- transcribe: model.transcribe(FILE, beam_size=1, temperature=0, without_timestamps=True,
  language="en", condition_on_previous_text=False, vad_filter=False) with its segments generator
  consumed (WAV decoding included, as faster-whisper does it);
- features: faster-whisper's log-mel of FILE's samples (in memory) and pad_or_trim of its first
  30-s window, as transcribe does (mlmf's Whisper::encode includes this step);
- encode: model.model.encode on those features, to_cpu=True so the output is complete when it
  returns;
- decode: model.model.generate on that encoder output with prompt [50257, 50362] (start of
  transcript, no timestamps), beam_size=1, max_length=448, the model's config.json suppress_ids
  (equal to faster-whisper's get_suppressed_tokens(tokenizer, [-1])), suppress_blank=True;
- first_token_decode: the same generate with max_length=2, for which CTranslate2 runs exactly
  one decoding step (it runs min(max_length // 2, max_length - 1) steps for Whisper): the prompt
  through the decoder and the first token's argmax;
- first_token: what mlmf's Timing::first_token measures, from samples in memory to the first
  token: log-mel + pad_or_trim + encode + first_token_decode.

Note that faster-whisper pads the log-mel (with 0.0) to 30 s where Whisper pads the audio, so on
jfk.wav it emits 23 tokens (no comma) where mlmf and the fixture emit 24
(/work/shared/fixtures/whisper/README.md).

Usage: bench_whisper_fw.py FILE ITERS [--model DIR] [--serve]
   (DIR defaults to $MLMF_MODELS or ~/.cache/mlmf, then whisper-tiny.en-ct2)
Prints one JSON line: {"iters", "audio_seconds", "seconds": {part: all ITERS}, "per_run":
{part: seconds per run}, "text", "tokens" (ids of the decode part), "n_tokens",
"transcribe_text", "faster_whisper", "ctranslate2", "cpu_threads", "model"}.
With --serve it then reads lines "PART N" from stdin and answers each with one JSON line
{"part", "iters": N, "seconds"} (N runs of PART in their own loop), so one process, with its
model loaded once, serves every sample of the Rust bench.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import ctranslate2
import faster_whisper
import numpy as np
from faster_whisper import WhisperModel, decode_audio
from faster_whisper.audio import pad_or_trim

PROMPT = [50257, 50362]
SAMPLE_RATE = 16000


def default_model():
    cache = os.environ.get("MLMF_MODELS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlmf")
    return os.path.join(cache, "whisper-tiny.en-ct2")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("iters", type=int)
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--serve", action="store_true")
    args = ap.parse_args()

    model = WhisperModel(args.model, device="cpu", compute_type="float32", cpu_threads=2)
    suppress = json.loads((Path(args.model) / "config.json").read_text())["suppress_ids"]
    audio = decode_audio(args.file, sampling_rate=SAMPLE_RATE)

    def transcribe():
        segments, _ = model.transcribe(
            args.file, beam_size=1, temperature=0.0, without_timestamps=True, language="en",
            condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segments)

    def features():
        # As WhisperModel.transcribe: the log-mel of the whole audio, its last frame dropped
        # (content_frames), the first window padded or trimmed to 3000 frames.
        mel = model.feature_extractor(audio)
        window = pad_or_trim(mel[:, : min(mel.shape[-1] - 1, 3000)])
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(window[None]))

    def encode(feats):
        return model.model.encode(feats, to_cpu=True)

    def generate(encoded, max_length):
        return model.model.generate(
            encoded, [PROMPT], beam_size=1, max_length=max_length, suppress_tokens=suppress,
            suppress_blank=True, return_scores=False)[0].sequences_ids[0]

    feats = features()
    encoded = encode(feats)
    parts = {
        "transcribe": transcribe,
        "features": features,
        "encode": lambda: encode(feats),
        "decode": lambda: generate(encoded, 448),
        "first_token_decode": lambda: generate(encoded, 2),
        "first_token": lambda: generate(encode(features()), 2),
    }
    def timed(run, iters):
        start = time.perf_counter()
        for _ in range(iters):
            run()
        return time.perf_counter() - start

    seconds, results = {}, {}
    for name, run in parts.items():
        results[name] = run()  # warm-up
        seconds[name] = timed(run, args.iters)
    assert len(results["first_token_decode"]) == 1, results["first_token_decode"]

    tokens = results["decode"]
    text = model.hf_tokenizer.decode([t for t in tokens if t < 50256]).strip()
    print(json.dumps({
        "iters": args.iters, "audio_seconds": len(audio) / SAMPLE_RATE, "seconds": seconds,
        "per_run": {k: v / args.iters for k, v in seconds.items()}, "text": text,
        "tokens": tokens, "n_tokens": len(tokens), "transcribe_text": results["transcribe"],
        "faster_whisper": faster_whisper.__version__, "ctranslate2": ctranslate2.__version__,
        "cpu_threads": 2, "model": args.model,
    }), flush=True)
    if args.serve:
        for line in sys.stdin:
            part, iters = line.split()
            iters = int(iters)
            print(json.dumps({
                "part": part, "iters": iters, "seconds": timed(parts[part], iters),
            }), flush=True)


if __name__ == "__main__":
    main()
