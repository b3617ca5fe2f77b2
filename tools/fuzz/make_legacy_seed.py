#!/usr/bin/env python3
"""A tiny checkpoint in PyTorch's legacy (pre-1.6, non-zip) format, written without torch,
as a seed for the checkpoint-reader fuzz test (crates/whisker/tests/fuzz.rs).

    python3 tools/fuzz/make_legacy_seed.py crates/whisker/tests/fixtures/tiny_legacy.pth

The layout is torch.serialization._legacy_save's: five pickles (magic number, protocol
version, system info, the state dict with tensors as persistent storage references, the
storage keys) followed by each storage as a little-endian u64 element count and raw f32s.
"""
import collections
import pickle
import struct
import sys
import types

# stand-ins for the globals the pickle must name: torch.FloatStorage and
# torch._utils._rebuild_tensor_v2
torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")


class FloatStorage:
    pass


FloatStorage.__module__ = "torch"


def _rebuild_tensor_v2(*args):
    raise NotImplementedError


_rebuild_tensor_v2.__module__ = "torch._utils"
torch.FloatStorage = FloatStorage
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


class Storage:
    def __init__(self, key, values):
        self.key, self.values = key, values


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        return (_rebuild_tensor_v2,
                (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))


def main(out):
    a = Storage("0", [0.5 * i - 1.0 for i in range(6)])
    b = Storage("1", [0.25, -0.75])
    state = collections.OrderedDict([("conv.weight", Tensor(a, [2, 3])), ("conv.bias", Tensor(b, [2]))])
    with open(out, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001,
                    {"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(obj, f, protocol=2)
        p = pickle.Pickler(f, protocol=2)
        p.persistent_id = lambda o: (("storage", FloatStorage, o.key, "cpu", len(o.values), None)
                                     if isinstance(o, Storage) else None)
        p.dump(state)
        pickle.dump(["0", "1"], f, protocol=2)
        for s in (a, b):
            f.write(struct.pack("<q", len(s.values)))
            f.write(struct.pack("<%df" % len(s.values), *s.values))


if __name__ == "__main__":
    main(sys.argv[1])
