"""Goldens for whisker's antialiased resize: Pillow's Image.resize with BILINEAR and BICUBIC
(the filters of torchvision's and timm's transforms) on real photos, downscaling and
upscaling, to exact sizes and by the shorter side, as sha256 of the RGB bytes.

Needs only Pillow. Usage:
    python tools/reference/make_resize_golden.py TESTDATA_DIR crates/whisker/tests/golden/resize.json
"""
import hashlib
import json
import os
import sys

from PIL import Image

PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
# (width, height) exact targets, and shorter-side targets (timm: 235 for 224 crops at 0.95,
# DINOv2: 256 then 224, 518 for the native grid)
EXACT = [(224, 224), (97, 61), (640, 427), (1000, 7), (3, 300)]
SHORTER = [224, 235, 256, 518]
# (shorter side, crop): torchvision's Resize(s, interpolation) + CenterCrop(c), the whole
# preprocessing (torchvision 256/224, timm's crop_pct 0.9 and 0.95, DINOv2 256/224)
SHORTER_CROP = [(256, 224), (248, 224), (235, 224), (292, 260)]


def shorter(w, h, size):
    # torchvision's Resize(int): the shorter side to `size`, the longer scaled, truncated
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def center_crop(img, c):
    # torchvision's CenterCrop: offsets round((size - crop) / 2), Python's round (half to even)
    w, h = img.size
    x, y = int(round((w - c) / 2.0)), int(round((h - c) / 2.0))
    return img.crop((x, y, x + c, y + c))


def main(data, out):
    cases = []
    for name in PHOTOS:
        path = os.path.join(data, name)
        if not os.path.exists(path):
            continue
        img = Image.open(path).convert("RGB")
        w, h = img.size
        # Pillow 13 runs the vertical pass first when the height shrinks by more than twice
        # as many pixels as the width: targets on both sides of that rule
        relative = [(w - 3, h // 2), (w + 40, h - 30), (w // 2, h // 5), (w - 10, h - 25)]
        targets = EXACT + relative + [shorter(w, h, s) for s in SHORTER]
        for filt, code in [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)]:
            for tw, th in targets:
                r = img.resize((tw, th), code)
                cases.append(
                    {
                        "file": name,
                        "filter": filt,
                        "size": [tw, th],
                        "sha256": hashlib.sha256(r.tobytes()).hexdigest(),
                    }
                )
        for filt, code in [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)]:
            for s, c in SHORTER_CROP:
                r = center_crop(img.resize(shorter(w, h, s), code), c)
                cases.append(
                    {
                        "file": name,
                        "filter": filt,
                        "shorter_crop": [s, c],
                        "size": [c, c],
                        "sha256": hashlib.sha256(r.tobytes()).hexdigest(),
                    }
                )
    meta = {"pillow": Image.__version__, "cases": cases}
    with open(out, "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{len(cases)} cases -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
