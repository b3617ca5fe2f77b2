"""The Python package against the CLI's files and Pillow: features of paths, encoded bytes,
decoded uint8 arrays and already-cropped arrays agree; predictions; errors raised or returned;
pickling; thread pools; the GIL released while the model runs.

Run by tools/test.sh: WHISKER_BIN (the CLI) and WHISKER_TESTDATA must be set.
"""

import os
import pickle
import subprocess
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import whisker

TESTDATA = os.environ["WHISKER_TESTDATA"]
WEIGHTS = os.path.join(TESTDATA, "efficientnet-lite0-57934424.pth")
PHOTOS = [os.path.join(TESTDATA, n) for n in ("astronaut.png", "chelsea.png", "coffee.png")]


@pytest.fixture(scope="module")
def model():
    return whisker.Model.pretrained("efficientnet_lite0", weights=WEIGHTS)


@pytest.fixture(scope="module")
def cli_features(tmp_path_factory):
    """`whisker extract` of the photos (a .txt list): path → embedding."""
    d = tmp_path_factory.mktemp("cli")
    lst = d / "photos.txt"
    lst.write_text("\n".join(PHOTOS) + "\n")
    subprocess.run(
        [os.environ["WHISKER_BIN"], "-q", "extract", str(lst), "--out", str(d / "out"),
         "--weights", WEIGHTS],
        check=True, env={**os.environ, "WHISKER_HOME": str(d / "home")},
    )
    t = pq.read_table(d / "out" / "part-00000.parquet")
    return {p: np.asarray(e, np.float32) for p, e in zip(t["path"].to_pylist(), t["embedding"].to_pylist())}


def test_paths_bytes_and_arrays_give_the_clis_features(model, cli_features):
    want = np.stack([cli_features[p] for p in PHOTOS])
    by_path = model.extract(PHOTOS)
    assert by_path.dtype == np.float32 and by_path.shape == (3, 1280)
    assert np.abs(by_path - want).max() <= 1e-6
    by_bytes = model.extract([open(p, "rb").read() for p in PHOTOS], batch_size=2)
    assert np.abs(by_bytes - want).max() <= 1e-6
    # Pillow's decoding as arrays: one H×W×3 at a time, and a list of them
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in PHOTOS]
    assert np.abs(model.extract(arrays[1]) - want[1:2]).max() <= 1e-6
    assert np.abs(model.extract(arrays) - want).max() <= 1e-6
    # an N×H×W×3 batch (non-contiguous: a flipped view, flipped back)
    batch = np.stack([arrays[1]] * 4)[:, ::-1][:, ::-1]
    out = model.extract(batch)
    assert out.shape == (4, 1280) and np.abs(out - want[1]).max() <= 1e-6
    out[0, 0] = 1.0  # the array is the caller's to change


def test_already_cropped_arrays_skip_the_resize(model, cli_features, tmp_path):
    # torchvision's preprocessing with Pillow: shorter side to 256 (bilinear), centre 224 crop
    crops = []
    for p in PHOTOS:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        # (torchvision truncates the longer side: int(256 * long / short))
        size = (int(256 * w / h), 256) if w > h else (256, int(256 * h / w))
        im = im.resize(size, Image.BILINEAR)
        w, h = im.size
        left, top = round((w - 224) / 2.0), round((h - 224) / 2.0)
        crops.append(np.asarray(im.crop((left, top, left + 224, top + 224))))
    got = model.extract(np.stack(crops), cropped=True)
    want = np.stack([cli_features[p] for p in PHOTOS])
    assert np.abs(got - want).max() <= 1e-5
    with pytest.raises(ValueError, match="224"):
        model.extract(np.zeros((100, 100, 3), np.uint8), cropped=True)
    # the same crops as PNG files and as encoded bytes: decoded, not resized again
    files = []
    for i, c in enumerate(crops):
        files.append(str(tmp_path / f"crop{i}.png"))
        Image.fromarray(c).save(files[-1])
    assert np.abs(model.extract(files, cropped=True) - want).max() <= 1e-5
    encoded = [open(f, "rb").read() for f in files]
    assert np.abs(model.extract(encoded, cropped=True) - want).max() <= 1e-5
    # a photo that is not at the input size is refused by name, not resized
    with pytest.raises(ValueError, match=r"astronaut\.png: 512×512 pixels, but cropped=True needs the model.s input size 224×224"):
        model.extract(PHOTOS, cropped=True)


def test_predictions_layers_and_metadata(model):
    p = model.predict(PHOTOS[1])
    assert p.shape == (1, 1000) and abs(p.sum() - 1) < 1e-5
    assert int(p.argmax()) == 282 and model.classes[282] == "tiger cat"
    assert abs(float(p[0, 282]) - 0.3789) < 1e-3
    f = model.extract(PHOTOS, layer="_blocks.6", pool="max")
    assert f.shape == (3, 80)
    assert "_blocks.6" in model.layers()
    assert model.dim == 1280 and model.name == "efficientnet_lite0"
    assert model.weights_sha256.startswith("579344248a93")
    assert model.preprocessing == {"resize": 256, "crop": 224, "interpolation": "bilinear", "normalization": "tf"}
    with pytest.raises(ValueError, match="no layer"):
        model.extract(PHOTOS, layer="_blocks.66")


def test_errors_raise_or_come_back_with_the_rows(model):
    images = [PHOTOS[0], b"\x89PNG\r\n\x1a\n broken", PHOTOS[2]]
    with pytest.raises(ValueError, match="image 1"):
        model.extract(images)
    x, errors = model.extract(images, errors="return")
    assert x.shape == (3, 1280) and np.isnan(x[1]).all() and np.isfinite(x[[0, 2]]).all()
    assert errors[0] is None and errors[2] is None and "image 1" in errors[1]
    with pytest.raises(TypeError, match="uint8"):
        model.extract(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="N×H×W×3"):
        model.extract(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError):
        model.extract(PHOTOS, batch_size=0)
    # a file that cannot be read is an image that failed, as a corrupt one
    with pytest.raises(ValueError, match="no-such-file.png"):
        model.extract([os.path.join(TESTDATA, "no-such-file.png")])
    with pytest.raises(ValueError, match="unknown backbone"):
        whisker.Model.pretrained("resnet5O", weights=WEIGHTS)


def test_pickled_models_and_thread_pools(model, cli_features):
    m1 = whisker.Model.pretrained("efficientnet_lite0", weights=WEIGHTS, threads=1)
    m2 = pickle.loads(pickle.dumps(m1))
    assert m2.threads == 1 and repr(m2) == repr(m1)
    want = np.stack([cli_features[p] for p in PHOTOS])
    assert np.abs(m2.extract(PHOTOS) - want).max() <= 1e-6
    with pytest.raises(ValueError, match="threads"):
        whisker.Model.pretrained("efficientnet_lite0", weights=WEIGHTS, threads=0)


def test_the_gil_is_released_while_the_model_runs(model):
    # a Python thread keeps running while two others are inside extract
    stop = threading.Event()
    ticks = [0]

    def count():
        while not stop.is_set():
            ticks[0] += 1

    outs = []
    workers = [threading.Thread(target=lambda: outs.append(model.extract(PHOTOS * 4))) for _ in range(2)]
    counter = threading.Thread(target=count)
    counter.start()
    for w in workers:
        w.start()
    before = ticks[0]
    for w in workers:
        w.join()
    during = ticks[0] - before
    stop.set()
    counter.join()
    assert len(outs) == 2 and np.array_equal(outs[0], outs[1])
    assert during > 1000, f"the counting thread ran {during} times while extract ran"
