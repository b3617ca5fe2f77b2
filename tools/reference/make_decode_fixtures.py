#!/usr/bin/env python3
"""Small images in every format/mode whisker must decode, plus what Pillow decodes them to.

    /tmp/ref/bin/python tools/reference/make_decode_fixtures.py --data .testdata \
        --out crates/whisker/tests/fixtures/decode

Writes ~20 KB of images cut from chelsea.png and `pillow.json`: for each file, the size and the
sha256 of `Image.open(f).convert("RGB").tobytes()`.
"""
import argparse
import hashlib
import json
import os

import numpy as np
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".testdata")
    ap.add_argument("--out", default="crates/whisker/tests/fixtures/decode")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    src = Image.open(os.path.join(a.data, "chelsea.png")).convert("RGB").crop((180, 60, 244, 108))
    files = {}

    def save(name, img, **kw):
        p = os.path.join(a.out, name)
        img.save(p, **kw)
        files[name] = p

    save("baseline.jpg", src, quality=90)
    save("progressive.jpg", src, quality=90, progressive=True)
    save("gray.jpg", src.convert("L"), quality=90)
    save("cmyk.jpg", src.convert("CMYK"), quality=95)
    save("rgba.png", src.convert("RGBA").copy())
    rgba = src.convert("RGBA")
    alpha = Image.fromarray((np.arange(64 * 48).reshape(48, 64) % 256).astype(np.uint8))
    rgba.putalpha(alpha)
    save("alpha.png", rgba)
    save("palette.png", src.convert("P", palette=Image.ADAPTIVE, colors=32))
    arr16 = (np.asarray(src).astype(np.uint16) * 257 + np.arange(3, dtype=np.uint16) * 91)
    # 16-bit RGB PNG: written with raw bytes through Pillow's I;16 is awkward; use a
    # grey 16-bit image and an 8-bit-per-sample-expanded RGB via the png module-free path.
    save("gray16.png", Image.fromarray(arr16[:, :, 0].astype(np.uint16)).convert("I;16"))
    save("first_frame.gif", src.convert("P", palette=Image.ADAPTIVE, colors=64),
         save_all=True, append_images=[src.transpose(Image.FLIP_LEFT_RIGHT).convert("P", palette=Image.ADAPTIVE, colors=64)])
    save("image.bmp", src)
    save("lossless.webp", src, lossless=True)
    save("lossy.webp", src, quality=80)
    # a PNG with a .jpg name: formats are recognised by content
    p = os.path.join(a.out, "png_named.jpg")
    src.save(p, format="PNG")
    files["png_named.jpg"] = p
    out = {}
    for name, p in sorted(files.items()):
        im = Image.open(p)
        rgb = im.convert("RGB")
        out[name] = {"mode": im.mode, "size": list(rgb.size),
                     "sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
                     }
        data = rgb.tobytes()
        if im.mode == "I;16":
            # Pillow clips 16-bit grey to 255 when converting to RGB (most such images turn
            # white); whisker keeps the high byte, as Pillow itself does for 16-bit RGB.
            hi = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
            data = np.repeat(hi[:, :, None], 3, axis=2).tobytes()
            out[name]["note"] = "expected = high byte (Pillow would clip to 255)"
        with open(p + ".rgb", "wb") as f:
            f.write(data)
    json.dump(out, open(os.path.join(a.out, "pillow.json"), "w"), indent=1)
    print(json.dumps({k: v["mode"] for k, v in out.items()}))


if __name__ == "__main__":
    main()
