#!/usr/bin/env python3
"""The reference for whisker's decoding on Pillow's own test images.

For every file of the Pillow sdist's `Tests/images` folder whose format whisker reads or
should read (JPEG, PNG, GIF, BMP, WebP, TIFF, the Netpbm family, TGA, ICO), this records what
`Image.open(p).convert("RGB")` gives: its size and the sha256 of the RGB bytes, or that Pillow
refuses the file. The table is committed (crates/whisker/tests/golden/pillow_images.tsv); the
images are not: `tools/fetch-testdata.sh` unpacks them from the sdist, and
`crates/whisker/tests/pillow_folder.rs` compares whisker's decoding with the table.

    python3 -m venv /tmp/pv && /tmp/pv/bin/pip install pillow==13.0.0
    /tmp/pv/bin/python tools/pillow_reference.py $WHISKER_TESTDATA/pillow-images \
        > crates/whisker/tests/golden/pillow_images.tsv
"""
import hashlib
import os
import sys
import warnings

import PIL
from PIL import Image

# the formats whisker decodes, by Pillow's name for them
FORMATS = {"JPEG", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "PPM", "TGA", "ICO"}

warnings.simplefilter("ignore")
Image.MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default: a warning below 2x, an error above


def main(folder):
    print(f"# Pillow {PIL.__version__}: Image.open(p).convert('RGB') on Tests/images")
    print("# file\tformat\tstatus\twidth\theight\tsha256 of the RGB bytes (first 16 digits)")
    names = sorted(
        os.path.relpath(os.path.join(d, f), folder)
        for d, _, files in os.walk(folder)
        for f in files
    )
    for name in names:
        p = os.path.join(folder, name)
        try:
            with Image.open(p) as im:
                fmt = im.format
                if fmt not in FORMATS:
                    continue
                try:
                    rgb = im.convert("RGB")
                    rgb.load()
                except Exception as e:  # noqa: BLE001 - any refusal is a refusal
                    print(f"{name}\t{fmt}\trefused\t0\t0\t{type(e).__name__}")
                    continue
        except Exception:  # noqa: BLE001 - not an image Pillow identifies: not in the table
            continue
        h = hashlib.sha256(rgb.tobytes()).hexdigest()[:16]
        print(f"{name}\t{fmt}\tok\t{rgb.width}\t{rgb.height}\t{h}")


if __name__ == "__main__":
    main(sys.argv[1])
