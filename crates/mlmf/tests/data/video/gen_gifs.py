"""Writes the three GIFs of this directory with Pillow 13.0.0 (numpy 2): 24x16, 6 frames, a 5x4
patch of random palette indices moving over index 7 (the transparent one), disposal 2, 3 and
mixed, so that Pillow writes partial frame rectangles. Run in an empty directory:
    python gen_gifs.py && python ref_pillow.py *.gif > gifs.json
"""
import hashlib, json, sys
from PIL import Image, ImageSequence
import numpy as np

def frames_p(n, w, h, seed):
    rng = np.random.default_rng(seed)
    pal = [0,0,0, 255,0,0, 0,255,0, 0,0,255, 255,255,0, 0,255,255, 255,0,255, 200,200,200]
    out = []
    for i in range(n):
        a = np.full((h, w), 7, np.uint8)  # index 7 = transparent below
        x0, y0 = (i * 3) % (w - 5), (i * 2) % (h - 4)
        a[y0:y0+4, x0:x0+5] = rng.integers(0, 7, (4, 5))
        im = Image.fromarray(a, "P"); im.putpalette(pal + [0]*(768-len(pal)))
        out.append(im)
    return out

cases = {
  "disposal2_transparent.gif": dict(disposal=2, transparency=7),
  "disposal3_transparent.gif": dict(disposal=3, transparency=7),
  "disposal_mixed.gif": dict(disposal=[1,2,3,1,2,1], transparency=7),
}
for name, kw in cases.items():
    fr = frames_p(6, 24, 16, len(name))
    fr[0].save(name, save_all=True, append_images=fr[1:], duration=[30,40,50,60,70,80], loop=0, background=3, optimize=False, **kw)
