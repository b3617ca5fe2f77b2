#!/usr/bin/env python3
"""Tiny checkpoint fixtures for whisker's weights-reader tests (committed, a few KB).

    /tmp/ref/bin/python tools/reference/make_fixtures.py --out crates/whisker/tests/fixtures

- tiny_zip.pth     torch.save (zip format) of three formula tensors + num_batches_tracked
- tiny_nested.pth  the same under {"state_dict": ..., "epoch": 3}
- tiny_f16.pth     the same tensors in float16
- tiny_zip21.pth   tiny_zip.pth saved as a file with a 21-character stem (PyTorch names the
                   archive's folder after it): an archive the zip reader of PyTorch's loader
                   misreads (whisker rewrites it under another folder name)
- evil.pth         a zip-format checkpoint whose pickle calls os.system: must be refused
"""
import argparse
import io
import os
import pickle
import sys
import zipfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from make_golden import formula  # noqa: E402


def tensors():
    keys = {"_conv_stem.weight": (32, 3, 3, 3), "_bn0.weight": (32,), "_bn0.running_var": (32,)}
    d = {k: torch.from_numpy(formula(k, s)) for k, s in keys.items()}
    d["_bn0.num_batches_tracked"] = torch.tensor(7)
    return d


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/whisker_pwned",))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="crates/whisker/tests/fixtures")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    t = tensors()
    torch.save(t, os.path.join(a.out, "tiny_zip.pth"))
    torch.save({"state_dict": t, "epoch": 3}, os.path.join(a.out, "tiny_nested.pth"))
    folder21 = os.path.join(a.out, "tiny_zip21_archive_xy.pth")  # a 21-character stem
    torch.save(t, folder21)
    os.replace(folder21, os.path.join(a.out, "tiny_zip21.pth"))
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in t.items()},
               os.path.join(a.out, "tiny_f16.pth"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
        z.writestr("evil/version", "3\n")
    open(os.path.join(a.out, "evil.pth"), "wb").write(buf.getvalue())


if __name__ == "__main__":
    main()
