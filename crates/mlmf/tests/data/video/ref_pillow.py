"""The reference frames of GIFs as Pillow 13.0.0 composites them (the recipe of
shared/fixtures/media/README.md): sha256 of each frame's RGB8 bytes, durations in ms. Writes json
to stdout: python ref_pillow.py FILE.gif ... > gifs.json
"""
import hashlib, json, sys
import numpy as np
from PIL import Image, ImageSequence
import PIL
out = {}
for n in sys.argv[1:]:
    im = Image.open(n)
    frames = []
    t = 0
    for i, fr in enumerate(ImageSequence.Iterator(im)):
        a = np.ascontiguousarray(np.asarray(fr.convert("RGB")))
        d = fr.info.get("duration", 0)
        frames.append({"index": i, "pts_ms": t, "duration_ms": d, "sha256": hashlib.sha256(a.tobytes()).hexdigest(), "mode": fr.mode})
        t += d
    out[n] = {"width": im.width, "height": im.height, "frames": frames, "file_sha256": hashlib.sha256(open(n,'rb').read()).hexdigest()}
out["reference"] = f"Pillow {PIL.__version__}: [np.asarray(f.convert('RGB')) for f in ImageSequence.Iterator(Image.open(path))]"
json.dump(out, sys.stdout, indent=1)
