"""Writes the four APNGs of this directory with Pillow 13.0.0 (numpy 2): 24x16 RGBA, 6 frames,
a moving 5x4 patch with alpha 0, 128 or 255 and a transparent corner; blend OVER with dispose
NONE, BACKGROUND and PREVIOUS (Pillow writes partial frame rectangles there), and PREVIOUS with
blend SOURCE (full frames). Run in an empty directory:
    python gen_apngs.py && python ref_pillow.py blend_over.apng dispose_background.apng dispose_previous.apng dispose_previous_source.apng > apngs.json
"""
import numpy as np
from PIL import Image, PngImagePlugin as P

def frames(n, w, h, seed, alpha):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = np.zeros((h, w, 4), np.uint8)
        a[..., :3] = 40 + 10 * i
        a[..., 3] = 255
        x0, y0 = (i * 3) % (w - 5), (i * 2) % (h - 4)
        a[y0:y0+4, x0:x0+5, :3] = rng.integers(0, 256, (4, 5, 3))
        if alpha:
            a[y0:y0+4, x0:x0+5, 3] = rng.choice([0, 128, 255], (4, 5))
            a[: h // 2, : w // 3, 3] = 0
        out.append(Image.fromarray(a, "RGBA"))
    return out

cases = {
  "blend_over.apng": dict(disposal=P.Disposal.OP_NONE, blend=P.Blend.OP_OVER),
  "dispose_background.apng": dict(disposal=P.Disposal.OP_BACKGROUND, blend=P.Blend.OP_OVER),
  "dispose_previous.apng": dict(disposal=P.Disposal.OP_PREVIOUS, blend=P.Blend.OP_OVER),
  "dispose_previous_source.apng": dict(disposal=P.Disposal.OP_PREVIOUS, blend=P.Blend.OP_SOURCE),
}
for name, kw in cases.items():
    fr = frames(6, 24, 16, len(name), True)
    fr[0].save(name, save_all=True, append_images=fr[1:], duration=[30, 40, 50, 60, 70, 80], loop=0, **kw)
