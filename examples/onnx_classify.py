"""Classify a photo with a model `whisker export` wrote, with ONNX Runtime alone.

    whisker export run/ --out model.onnx
    python examples/onnx_classify.py model.onnx photo.jpg

The preprocessing is the one in the model's metadata (whisker's and torchvision's: the shorter
side resized with Pillow, the centre crop); prints the top 5 classes with their probabilities.
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def preprocess(path, pre):
    """RGB in [0, 1], 1×3×crop×crop: as whisker and torchvision's Resize + CenterCrop do."""
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    im = Image.open(path).convert("RGB")
    w, h = im.size
    size, crop = pre["resize"], pre["crop"]
    # the shorter side to `resize`, the longer one truncated as torchvision does
    im = im.resize((size, int(size * h / w)) if w <= h else (int(size * w / h), size), filters[pre["interpolation"]])
    w, h = im.size
    left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
    im = im.crop((left, top, left + crop, top + crop))
    return (np.asarray(im, np.float32) / 255).transpose(2, 0, 1)[None]


def main(model, photo):
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = s.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["whisker.classes"])
    (logits,) = s.run(["logits"], {"pixels": preprocess(photo, json.loads(meta["whisker.preprocessing"]))})
    p = np.exp(logits[0] - logits[0].max())
    p /= p.sum()
    for i in np.argsort(-p)[:5]:
        print(f"{p[i]:.4f} {classes[i]}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
