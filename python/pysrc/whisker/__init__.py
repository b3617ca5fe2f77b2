"""whisker for Python: pretrained image backbones exact to PyTorch, on whisker's CPU engine.

    import whisker
    m = whisker.Model.pretrained("efficientnet_lite0")     # weights: `whisker weights fetch`
    X = m.extract(["cat.jpg", "dog.png"])                  # float32 [2, 1280]
    P = whisker.Model.load("run").predict(batch_uint8)     # float32 [N, classes]

Images are a uint8 NumPy batch (N×H×W×3 RGB, or one H×W×3), or a list of paths, encoded
image bytes or H×W×3 arrays; each is decoded, resized and cropped as the model's weights
expect (``cropped=True``: images already at the input size, decoded but not resized). The GIL is released while the
model runs; ``threads=`` gives a model its own thread pool; models pickle by their
construction arguments (for Ray and Spark workers).
"""

from ._native import Model, __version__, models

__all__ = ["Model", "models", "__version__"]
