"""edgert: PyTorch video models and LLM decoders to ONNX / TensorRT, and a small runtime.

Public API for apps: :func:`load` (open a bundle), :data:`hookimpl` (for plugin authors).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    from .runtime import EdgertError, load
except ModuleNotFoundError as err:  # the clone's edgert/ folder on the path, edgert itself not installed
    if err.name != "edgert.runtime":
        raise
    raise SystemExit("edgert: error: edgert is not installed in this Python (the clone's edgert/ folder alone is "
                     "not the package): run `make demo` and use .venv/bin/edgert, or `pip install -e .`") from None
from .runtime.hookspecs import hookimpl

try:
    __version__ = version("edgert")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["load", "hookimpl", "EdgertError", "__version__"]
