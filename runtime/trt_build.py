"""TensorRT engines built the same way on TensorRT 10.x and 11.x, with Polygraphy's loaders.

TensorRT 11 has no ``BuilderFlag.FP16``: its networks are strongly typed, each tensor keeps the
type the ONNX graph gives it. edgert's graphs already carry their precision (``--precision fp16``
converts the ONNX; norms and softmax stay fp32 where parity was checked), so every engine is built
strongly typed wherever TensorRT offers it (10.0 on; the plugins need 10.3 anyway) and the FP16
flag is set only on a TensorRT without strong typing that still has the flag. One availability
check for the backend, the decoder engines and ``export --engine``. tensorrt and polygraphy
are imported lazily: they are the ``trt`` extra, absent on most machines.
"""

from __future__ import annotations

from pathlib import Path

from .errors import EdgertError, first_line

EXTRA = "pip install 'edgert[trt]'"


def require_tensorrt(what: str = "building a TensorRT engine"):
    """The tensorrt module, or one line saying what is missing (``what`` names the feature)."""
    try:
        import polygraphy  # noqa: F401
        import tensorrt
    except ImportError as err:
        raise EdgertError(f"{what} needs the 'tensorrt' and 'polygraphy' packages ({EXTRA}): {err}") from None
    return tensorrt


def precision_options(trt, fp16: bool) -> dict:
    """Polygraphy's keywords for a network in the graph's own types: ``strongly_typed`` for
    NetworkFromOnnxPath, ``fp16`` for CreateConfig."""
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        return {"strongly_typed": True, "fp16": False}
    return {"strongly_typed": False, "fp16": bool(fp16) and hasattr(trt.BuilderFlag, "FP16")}


def loaders(onnx: str | Path | bytes, shapes: dict[str, tuple[list, list, list]], options: dict, preview_features=()):
    """Polygraphy's network and config loaders (lazy: nothing runs until called). ``onnx``: a path,
    or the model's bytes as a bundle read and checked them; ``shapes``: input name -> (min, opt,
    max), one optimisation profile; ``options``: :func:`precision_options`."""
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxBytes, NetworkFromOnnxPath, Profile

    profile = Profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    if isinstance(onnx, bytes):
        network = NetworkFromOnnxBytes(onnx, strongly_typed=options["strongly_typed"])
    else:
        network = NetworkFromOnnxPath(str(onnx), strongly_typed=options["strongly_typed"])
    config = CreateConfig(fp16=options["fp16"], profiles=[profile], preview_features=list(preview_features) or None)
    return network, config


def build_serialized(onnx: str | Path | bytes, shapes: dict[str, tuple[list, list, list]], fp16: bool = False,
                     preview_features: tuple = (), name: str | None = None) -> bytes:
    """Parse ``onnx`` (a path or bytes) and build it (see :func:`loaders`). Plugins the graph uses
    must be registered first. ``name``: the file, for messages."""
    trt = require_tensorrt()
    from polygraphy.backend.trt import EngineBytesFromNetwork

    if name is None:
        name = "graph" if isinstance(onnx, bytes) else Path(onnx).name
    network, config = loaders(onnx, shapes, precision_options(trt, fp16), preview_features)
    try:
        return bytes(EngineBytesFromNetwork(network, config=config)())
    except Exception as err:  # Polygraphy raises its own exceptions with the parser's or builder's log
        raise EdgertError(f"{name}: TensorRT engine build failed: {first_line(err)}") from None
