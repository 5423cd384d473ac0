"""edgert: PyTorch video models and LLM decoders to ONNX / TensorRT, and a small runtime.

Public API for apps: :func:`load` (open a bundle), :data:`hookimpl` (for plugin authors).
"""

from importlib.metadata import PackageNotFoundError, version

from .runtime import EdgertError, load
from .runtime.hookspecs import hookimpl

try:
    __version__ = version("edgert")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["load", "hookimpl", "EdgertError", "__version__"]
