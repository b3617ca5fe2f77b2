"""Fault injection for the cluster checks (tools/py/check_clusters.py): with this folder on
PYTHONPATH and WHISKER_DIE_ONCE set to a file path, the first process that calls a whisker
model's extract() creates that file and dies at once (os._exit, as a killed worker), so the
engine's recovery is exercised on the recipes as users run them. Without the variable, nothing
changes.
"""

import os

if os.environ.get("WHISKER_DIE_ONCE"):
    import whisker as _whisker

    _Native = _whisker.Model

    def _die_once():
        try:
            fd = os.open(os.environ["WHISKER_DIE_ONCE"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(17)

    class _Dying:
        def __init__(self, inner):
            self._inner = inner

        def extract(self, *args, **kwargs):
            _die_once()
            return self._inner.extract(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    class Model:
        @staticmethod
        def pretrained(*args, **kwargs):
            return _Dying(_Native.pretrained(*args, **kwargs))

        @staticmethod
        def load(*args, **kwargs):
            return _Dying(_Native.load(*args, **kwargs))

    _whisker.Model = Model
