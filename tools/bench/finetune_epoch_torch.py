#!/usr/bin/env python3
"""PyTorch twin of one `whisker train DIR --mode finetune --unfreeze all --freeze-epochs 0
--epochs 1 --no-augment [--train-bn]` epoch, on the same images: the split whisker saved
(RUN/split.json), the same backbone and weights file (EfficientNet-Lite0 by default, or a
torchvision model: resnet18/50, mobilenet_v2, mobilenet_v3_large), a new linear head on the
same features, every parameter trainable, BatchNorm in eval mode (or, with `--bn train`,
normalising with batch statistics), AdamW (head lr 1e-3, backbone lr 1e-4, weight decay
1e-2), batch 16, resize 256 + centre crop 224, a DataLoader with 2 workers; then the
validation and test predictions. Prints one JSON line: seconds (from before the model is
built to the last prediction; imports excluded), test accuracy, peak resident MB.

    python tools/bench/finetune_epoch_torch.py --data DIR --run RUN --weights efficientnet-lite0-57934424.pth
    python tools/bench/finetune_epoch_torch.py --model resnet18 --weights resnet18.pth --bn train ...
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from make_golden import EfficientNetLite  # noqa: E402


class Images(torch.utils.data.Dataset):
    def __init__(self, root, entries, imagenet):
        self.imagenet = imagenet
        self.items = [(os.path.join(root, e["path"]), e["label"]) for e in entries]
        self.t = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BILINEAR),
                            T.CenterCrop(224), T.PILToTensor()])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        p, y = self.items[i]
        x = self.t(Image.open(p).convert("RGB")).float()
        if self.imagenet:
            mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
            return (x / 255.0 - mean) / std, y
        return (x - 127.0) / 128.0, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--bn", choices=["eval", "train"], default="eval")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(True)
    split = json.load(open(os.path.join(a.run, "split.json")))
    k = len(split["classes"])
    t0 = time.perf_counter()
    state = torch.load(a.weights, map_location="cpu", weights_only=True)
    if a.model == "efficientnet_lite0":
        m = EfficientNetLite(1.0, 1.0)
        m.load_state_dict(state, strict=True)
        m._fc = nn.Linear(1280, k)
        head_mod, out = m._fc, lambda y: y[1]
    else:
        import torchvision
        m = getattr(torchvision.models, a.model)(weights=None)
        m.load_state_dict(state, strict=True)
        # a new linear head on whisker's features (resnet: pooled; mobilenet_v2: pooled;
        # mobilenet_v3: after classifier.0 + hardswish)
        if a.model.startswith("resnet"):
            m.fc = nn.Linear(m.fc.in_features, k)
            head_mod = m.fc
        elif a.model == "mobilenet_v2":
            m.classifier[1] = nn.Linear(1280, k)
            head_mod = m.classifier[1]
        else:
            m.classifier[3] = nn.Linear(m.classifier[3].in_features, k)
            head_mod = m.classifier[3]
        out = lambda y: y  # noqa: E731
    m.eval()  # BatchNorm with its running statistics (whisker's default), dropout off
    if a.bn == "train":
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.train()
    head = list(head_mod.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in m.parameters() if id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": head, "lr": 1e-3}, {"params": body, "lr": 1e-4}],
                            weight_decay=1e-2)
    loader = lambda part, shuffle: torch.utils.data.DataLoader(  # noqa: E731
        Images(a.data, split[part], a.model != "efficientnet_lite0"), batch_size=16,
        shuffle=shuffle, num_workers=2)
    for x, y in loader("train", True):
        loss = F.cross_entropy(out(m(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    correct = n = 0
    m.eval()
    with torch.no_grad():
        for part in ("val", "test"):
            for x, y in loader(part, False):
                p = out(m(x)).argmax(1)
                if part == "test":
                    correct += int((p == y).sum())
                    n += len(y)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "torch", "model": a.model, "bn": a.bn, "seconds": round(secs, 2), "test_accuracy": correct / max(n, 1),
                      "train": len(split["train"]), "val": len(split["val"]), "test": len(split["test"]),
                      "peak_rss_mb_main_process": round(peak, 1), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
